//! Leader election with a `coordination.k8s.io/v1` Lease, so that only one replica reconciles.
//!
//! A replica becomes leader by writing its identity into the Lease `strait-operator-leader` and
//! stays leader by renewing `renewTime`. Every write is an update guarded by the Lease's
//! `resourceVersion` (or a create), so two replicas racing for it cannot both win: the loser gets
//! 409 Conflict. A replica considers the current holder gone when the Lease record has not
//! changed for `leaseDurationSeconds` *as measured by its own clock* since it first saw that
//! record (client-go's approach: no trust in other machines' clocks).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

/// The leader Lease's name.
pub const LEASE_NAME: &str = "strait-operator-leader";

/// Timing and identity of one candidate.
#[derive(Debug, Clone)]
pub struct Config {
    /// This replica's identity (pod name, or host name and pid).
    pub identity: String,
    /// How long a renewal holds the Lease.
    pub lease_duration: Duration,
    /// How often the leader renews (and a standby retries).
    pub renew_interval: Duration,
}

/// A candidate for leadership: remembers what it last saw of the Lease and when.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    cfg: Config,
    observed: Option<(String, Instant)>,
}

impl Elector {
    /// A candidate using the Lease in `api`'s namespace.
    pub fn new(api: Api<Lease>, cfg: Config) -> Self {
        Self {
            api,
            cfg,
            observed: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// One attempt to become or stay leader. `Ok(true)`: this replica holds the Lease now.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = MicroTime(Timestamp::now());
        let secs = i32::try_from(self.cfg.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.cfg.identity.clone()),
                    lease_duration_seconds: Some(secs),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return conflict_is_false(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != self.cfg.identity && !holder.is_empty() {
            // Someone else holds it: take over only once their record has stood still for a
            // whole lease duration on our clock.
            let record = format!(
                "{holder}/{:?}/{:?}",
                spec.renew_time.as_ref().map(|t| t.0),
                lease.metadata.resource_version
            );
            let held_for = Duration::from_secs(
                u64::try_from(spec.lease_duration_seconds.unwrap_or(secs).max(1)).unwrap_or(1),
            );
            match &self.observed {
                Some((seen, at)) if *seen == record => {
                    if at.elapsed() < held_for {
                        return Ok(false);
                    }
                }
                _ => {
                    self.observed = Some((record, Instant::now()));
                    return Ok(false);
                }
            }
            tracing::info!(previous = %holder, "leader Lease expired; taking over");
        }
        if holder != self.cfg.identity {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
            spec.holder_identity = Some(self.cfg.identity.clone());
        }
        spec.renew_time = Some(now);
        spec.lease_duration_seconds = Some(secs);
        // `replace` sends metadata.resourceVersion: a concurrent writer makes this fail with 409.
        conflict_is_false(
            self.api
                .replace(LEASE_NAME, &PostParams::default(), &lease)
                .await,
        )
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once instead of after expiry.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(LEASE_NAME).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        self.api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

fn conflict_is_false<T>(r: Result<T, kube::Error>) -> Result<bool, kube::Error> {
    match r {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
