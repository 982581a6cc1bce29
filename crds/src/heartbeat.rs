//! The agent heartbeat contract: how the operator knows an agent is alive.
//!
//! Each agent holds a `coordination.k8s.io/v1` Lease named `strait-agent-<node>` in the operator's
//! namespace. It renews it (sets `spec.renewTime` to now) every [`DEFAULT_RENEW_INTERVAL`], with
//! `spec.holderIdentity` = the node name and `spec.leaseDurationSeconds` = how long the operator
//! may trust one renewal. The agent is alive while `renewTime + leaseDurationSeconds` is in the
//! future. An agent that stops cleanly calls [`release`]: the Lease loses its holder and vouches
//! for nothing from then on, so the operator fails over at once instead of after the lease runs
//! out (or, worse, not at all when a replacement pod renews it within the lease). [`renew`] and
//! [`release`] are the agent side, [`is_alive`] the operator's: all live here, in the crate both
//! binaries share, so neither links the other.
//!
//! The comparison uses the agent's `renewTime` against the operator's clock, so node clocks must
//! be synchronised to well under the lease duration (NTP), as for kubelet's own node leases.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{Patch, PatchParams};

/// Lease names are this prefix followed by the node name.
pub const LEASE_PREFIX: &str = "strait-agent-";
/// How long one renewal keeps an agent alive, unless the agent says otherwise.
pub const DEFAULT_LEASE_DURATION_SECONDS: i32 = 15;
/// How often an agent renews its lease.
pub const DEFAULT_RENEW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// Label set on agent leases, so they are easy to list.
pub const LEASE_LABEL: (&str, &str) = ("app.kubernetes.io/component", "strait-agent-heartbeat");

/// The heartbeat Lease name of the agent on `node`.
pub fn lease_name(node: &str) -> String {
    format!("{LEASE_PREFIX}{node}")
}

/// The node a heartbeat Lease belongs to, or `None` for any other Lease.
pub fn node_of_lease(lease_name: &str) -> Option<&str> {
    lease_name
        .strip_prefix(LEASE_PREFIX)
        .filter(|node| !node.is_empty())
}

/// When the lease stops vouching for its agent: the last renewal (or acquisition) plus the lease
/// duration. `None` when the lease was never renewed, has no duration or no holder (released):
/// that agent is not alive.
pub fn expires_at(lease: &Lease) -> Option<Timestamp> {
    let spec = lease.spec.as_ref()?;
    spec.holder_identity.as_deref().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref().or(spec.acquire_time.as_ref())?.0;
    let secs = spec.lease_duration_seconds.filter(|s| *s > 0)?;
    renewed
        .checked_add(SignedDuration::from_secs(i64::from(secs)))
        .ok()
}

/// Whether the agent behind `lease` is alive at `now`.
pub fn is_alive(lease: &Lease, now: Timestamp) -> bool {
    expires_at(lease).is_some_and(|t| t > now)
}

/// Agent side: creates or renews the heartbeat Lease of `node` (server-side apply under the field
/// manager [`crate::contract::agent_field_manager`]). Call it every [`DEFAULT_RENEW_INTERVAL`].
pub async fn renew(
    leases: &Api<Lease>,
    node: &str,
    lease_duration_seconds: i32,
) -> Result<(), kube::Error> {
    apply(leases, node, Some(node), lease_duration_seconds).await
}

/// Applies the Lease of `node` as the agent's field manager: `holder` (left out when `None`,
/// which server-side apply then removes), the duration and `renewTime` = now.
async fn apply(
    leases: &Api<Lease>,
    node: &str,
    holder: Option<&str>,
    lease_duration_seconds: i32,
) -> Result<(), kube::Error> {
    let name = lease_name(node);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(Timestamp::now());
    let mut spec =
        serde_json::json!({"leaseDurationSeconds": lease_duration_seconds, "renewTime": now});
    if let (Some(h), Some(m)) = (holder, spec.as_object_mut()) {
        m.insert("holderIdentity".into(), h.into());
    }
    let body = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "labels": {LEASE_LABEL.0: LEASE_LABEL.1}},
        "spec": spec,
    });
    let pp = PatchParams::apply(&crate::contract::agent_field_manager(node)).force();
    leases.patch(&name, &pp, &Patch::Apply(&body)).await?;
    Ok(())
}

/// Agent side, on a clean stop: the Lease of `node` keeps a renewal time but loses its holder,
/// so it vouches for nothing from now on. The same field manager as [`renew`] applies it without
/// `holderIdentity`, which server-side apply therefore removes.
pub async fn release(leases: &Api<Lease>, node: &str) -> Result<(), kube::Error> {
    apply(leases, node, None, 1).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(renewed: Option<Timestamp>, secs: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: Some("gw-1".into()),
                renew_time: renewed.map(MicroTime),
                lease_duration_seconds: secs,
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(lease_name("gw-1"), "strait-agent-gw-1");
        assert_eq!(node_of_lease("strait-agent-gw-1"), Some("gw-1"));
        assert_eq!(node_of_lease("strait-agent-"), None);
        assert_eq!(node_of_lease("strait-operator-leader"), None);
    }

    #[test]
    fn alive_until_renewal_plus_duration() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let l = lease(Some(t0), Some(10));
        assert!(is_alive(&l, t0 + SignedDuration::from_secs(9)));
        assert!(!is_alive(&l, t0 + SignedDuration::from_secs(10)));
        assert!(!is_alive(&lease(None, Some(10)), t0));
        assert!(!is_alive(&lease(Some(t0), None), t0));
        assert!(!is_alive(&lease(Some(t0), Some(0)), t0));
        assert!(!is_alive(&Lease::default(), t0));
        // released: a renewal time, but no holder
        let mut released = lease(Some(t0), Some(10));
        if let Some(spec) = released.spec.as_mut() {
            spec.holder_identity = None;
        }
        assert!(!is_alive(&released, t0));
    }
}
