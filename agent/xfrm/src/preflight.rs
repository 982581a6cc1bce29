//! Preflight: find out, before the first tunnel, whether this kernel can carry ESP at all and
//! with which algorithms, and say so in words an operator can act on.
//!
//! The probe installs a throwaway SA carrying our reserved probe reqid (so a crash between add
//! and delete leaves something our next sweep removes) with a reserved SPI between two
//! documentation addresses, and deletes it at once. Nothing routes to those addresses, and no
//! policy references the SA, so it never touches a packet. A bounded number of requests, no
//! retries.

use std::net::{IpAddr, Ipv4Addr};

use crate::Xfrm;
use crate::error::{Error, Result, Unsupported};
use crate::ownership::PROBE_REQID;
use crate::sa::{Integrity, Key, Mode, Sa, SaCrypto, SaId, Transform};

/// SPI of the probe SA.
const PROBE_SPI: u32 = 0x5AFF_FFFF;
/// TEST-NET-1 addresses (RFC 5737): never routed.
const PROBE_SRC: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254));
const PROBE_DST: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 255));

/// The transform used to ask "is there ESP at all?": the most widely built one.
const BASELINE: Transform = Transform::AesCbc {
    key_bits: 128,
    integrity: Integrity::HmacSha256,
};

/// What the kernel can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightReport {
    /// The requested transforms the kernel accepted.
    pub supported: Vec<Transform>,
}

fn probe_crypto(t: Transform) -> Result<SaCrypto> {
    match t {
        Transform::AesGcm16 { key_bits } => {
            SaCrypto::aes_gcm16(Key::new(vec![0x5a; usize::from(key_bits / 8) + 4]))
        }
        Transform::AesCbc {
            key_bits,
            integrity,
        } => SaCrypto::aes_cbc(
            Key::new(vec![0x5a; usize::from(key_bits / 8)]),
            integrity,
            Key::new(vec![0x5a; integrity.key_len()]),
        ),
    }
}

impl Xfrm {
    /// Checks that this kernel (in this network namespace, with our privileges) can install
    /// ESP SAs with every transform in `transforms`. Errors:
    /// [`Unsupported::Esp`] (no ESP at all), [`Unsupported::Algorithm`] (a transform is
    /// missing), [`Error::PermissionDenied`] (no CAP_NET_ADMIN).
    pub async fn preflight(&self, transforms: &[Transform]) -> Result<PreflightReport> {
        // Permission and netlink health first: a lookup that should find nothing.
        self.get_sa(&SaId::esp(PROBE_DST, PROBE_SPI)).await?;

        let mut candidates: Vec<Transform> = transforms.to_vec();
        if !candidates.contains(&BASELINE) {
            candidates.push(BASELINE);
        }
        let mut supported = Vec::new();
        let mut missing = None;
        let mut esp_seen = false;
        for t in candidates {
            match self.probe(t).await {
                Ok(()) => {
                    esp_seen = true;
                    if transforms.contains(&t) {
                        supported.push(t);
                    }
                }
                // The kernel checks algorithms before it looks for ESP, so an algorithm error
                // alone does not tell whether ESP exists: keep looking.
                Err(Error::Unsupported(Unsupported::Algorithm(name))) => {
                    if transforms.contains(&t) && missing.is_none() {
                        missing = Some(Unsupported::Algorithm(format!("{} ({name})", t.name())));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        match missing {
            Some(m) => Err(Error::Unsupported(m)),
            None if !esp_seen => Err(Error::Unsupported(Unsupported::Algorithm(format!(
                "{} (the ESP probe itself)",
                BASELINE.name()
            )))),
            None => Ok(PreflightReport { supported }),
        }
    }

    async fn probe(&self, t: Transform) -> Result<()> {
        let sa = Sa::new(
            PROBE_SRC,
            PROBE_DST,
            PROBE_SPI,
            PROBE_REQID,
            Mode::Transport,
            probe_crypto(t)?,
        );
        match self.add_sa(&sa).await {
            Ok(()) => {}
            Err(Error::AlreadyExists { .. }) => {
                // Left over by a probe that was interrupted: ours (checked), replace it.
                self.delete_sa(&sa.id()).await?;
                self.add_sa(&sa).await?;
            }
            Err(e) => return Err(e),
        }
        self.delete_sa_unchecked("delete preflight probe SA", &sa.id())
            .await
    }
}
