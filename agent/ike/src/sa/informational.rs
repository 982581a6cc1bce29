//! Requests and responses on an established IKE SA (RFC 7296 §1.4): DELETE of IKE and CHILD
//! SAs, liveness checks, error notifications; CREATE_CHILD_SA goes to [`super::rekey`].

use super::child::ChildState;
use super::established::{Established, Next, child_delete_event};
use super::{Common, Ctx, RequestKind};
use crate::codec::message::notifies;
use crate::codec::{Delete, ExchangeType, Notify, NotifyType, Payload, ProtocolId};
use crate::reason::Reason;

/// Handles a new request from the peer on an established SA.
pub(crate) fn on_request(
    e: &mut Established,
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    exchange: ExchangeType,
    id: u32,
    payloads: &[Payload],
) -> Next {
    if exchange == ExchangeType::CREATE_CHILD_SA {
        return super::rekey::on_request(e, c, ctx, id, payloads);
    }
    if exchange != ExchangeType::INFORMATIONAL {
        // An exchange that has no place here (e.g. a second IKE_AUTH).
        let n = [Payload::Notify(Notify::empty(NotifyType::INVALID_SYNTAX))];
        c.send_response_or_drop(ctx, &e.keys, exchange, id, &n);
        return Next::Stay;
    }
    let mut delete_ike = false;
    let mut ours = Vec::new();
    for p in payloads {
        let Payload::Delete(d) = p else { continue };
        if d.protocol == ProtocolId::IKE {
            delete_ike = true;
        } else if d.protocol == ProtocolId::ESP || d.protocol == ProtocolId::AH {
            for spi in &d.spis {
                let Ok(spi) = <[u8; 4]>::try_from(spi.as_slice()) else {
                    continue;
                };
                if let Some(pos) = e.children.iter().position(|ch| ch.spi_out == spi) {
                    let ch = e.children.remove(pos);
                    ctx.events.push_back(child_delete_event(c, &ch));
                    // Deletes that crossed: our own request already names it (§1.4.1).
                    if ch.state != ChildState::Deleting {
                        ours.push(ch.spi_in);
                    }
                }
            }
        }
    }
    let auth_failed = notifies(payloads).any(|n| n.ty == NotifyType::AUTHENTICATION_FAILED);
    if delete_ike && let Some(next) = super::rekey::adopt_on_delete(e, c, ctx, exchange, id) {
        return next;
    }
    if delete_ike || auth_failed {
        c.send_response_or_drop(ctx, &e.keys, exchange, id, &[]);
        e.delete_all_children(c, ctx);
        c.down(
            ctx,
            if delete_ike {
                Reason::DeletedByPeer
            } else {
                Reason::AuthenticationFailed
            },
        );
        c.win.abandon();
        return Next::Close;
    }
    let answer = if ours.is_empty() {
        Vec::new()
    } else {
        vec![Payload::Delete(Delete::child(ProtocolId::ESP, &ours))]
    };
    c.send_response_or_drop(ctx, &e.keys, exchange, id, &answer);
    Next::Stay
}

/// Handles the answer to one of our requests on an established SA.
pub(crate) fn on_response(
    e: &mut Established,
    c: &mut Common,
    ctx: &mut Ctx<'_>,
    kind: RequestKind,
    payloads: &[Payload],
) -> Next {
    match kind {
        RequestKind::DeleteIke => Next::Gone,
        RequestKind::RekeyChild { .. } => {
            super::rekey::on_child_response(e, c, ctx, payloads);
            Next::Stay
        }
        RequestKind::CreateChild { .. } => {
            super::rekey::on_create_response(e, c, ctx, payloads);
            Next::Stay
        }
        RequestKind::RekeyIke { .. } => super::rekey::on_ike_response(e, c, ctx, payloads),
        RequestKind::DeleteChild(spis) => {
            // Our Delete is answered: the peer stopped using them, so they go now.
            for spi in spis {
                if let Some(pos) = e
                    .children
                    .iter()
                    .position(|ch| ch.spi_in == spi && ch.state == ChildState::Deleting)
                {
                    let ch = e.children.remove(pos);
                    ctx.events.push_back(child_delete_event(c, &ch));
                }
            }
            Next::Stay
        }
        RequestKind::Dpd | RequestKind::Notify | RequestKind::Init | RequestKind::Auth => {
            if notifies(payloads).any(|n| n.ty == NotifyType::AUTHENTICATION_FAILED) {
                e.delete_all_children(c, ctx);
                c.down(ctx, Reason::AuthenticationFailed);
                return Next::Close;
            }
            Next::Stay
        }
    }
}
