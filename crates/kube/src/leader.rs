//! Leader election with a `coordination.k8s.io/v1` Lease, so two scheduler replicas can run
//! and only one binds.
//!
//! The rules are client-go's: a replica holds the lease while it renews it within
//! `leaseDurationSeconds`; another replica takes it over only after it has watched the lease
//! record stay unchanged for a whole lease duration **on its own clock** (so clock skew
//! between machines does not matter); every write carries the `resourceVersion` it read, so two
//! replicas racing for an expired lease cannot both win (the loser gets 409 Conflict).
//! [`decide`] is the pure rule; [`LeaseLock`] does the API calls.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;

use crate::error::KubeError;

/// What a replica should do with the lease it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// No lease exists: create it, holding it.
    Create,
    /// It holds the lease: renew it.
    Renew,
    /// The holder let it expire (or released it): take it over.
    TakeOver,
    /// Someone else holds it.
    Follow,
}

/// Decide from the lease's holder, whether the record changed since this replica last looked
/// (`observed_at`: when it last saw it change), and the lease duration.
pub fn decide(
    lease: Option<&LeaseSpec>,
    me: &str,
    observed_at: Instant,
    now: Instant,
    duration: Duration,
) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::TakeOver,
        Some(_) if now.saturating_duration_since(observed_at) > duration => Decision::TakeOver,
        Some(_) => Decision::Follow,
    }
}

/// The lease record a replica watches for change: holder and renew time.
type Record = (Option<String>, Option<String>);

fn record(spec: Option<&LeaseSpec>) -> Record {
    (
        spec.and_then(|s| s.holder_identity.clone()),
        spec.and_then(|s| s.renew_time.as_ref())
            .map(|t| t.0.to_string()),
    )
}

/// One replica's handle on the lease.
#[derive(Debug)]
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    observed: Option<(Record, Instant)>,
}

impl LeaseLock {
    /// The lease `namespace/name`, held as `identity` for `duration` at a time.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaseLock {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            observed: None,
        }
    }

    fn spec(&self, transitions: i32, acquired: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            // Rounded up: a standby must never wait less than the holder assumes.
            lease_duration_seconds: Some(self.duration.as_secs_f64().ceil().max(1.0) as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Read the lease and create, renew or take it over when the rules allow. Returns whether
    /// this replica holds the lease now.
    ///
    /// # Errors
    /// The API failed (other than a lost race, which is `Ok(false)`).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, KubeError> {
        let now = Instant::now();
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| KubeError::api(format!("read lease {}", self.name), e))?;
        let rec = record(current.as_ref().and_then(|l| l.spec.as_ref()));
        let observed_at = match &self.observed {
            Some((r, at)) if *r == rec => *at,
            _ => {
                self.observed = Some((rec, now));
                now
            }
        };
        // The holder's own lease duration, as it wrote it, decides when it has expired.
        let duration = current
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.lease_duration_seconds)
            .filter(|s| *s > 0)
            .map_or(self.duration, |s| Duration::from_secs(s as u64));
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            observed_at,
            now,
            duration,
        );
        let result = match (decision, current) {
            (Decision::Follow, _) => return Ok(false),
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(0, None)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (d, Some(mut lease)) => {
                let old = lease.spec.clone().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0);
                lease.spec = Some(if d == Decision::Renew {
                    self.spec(transitions, old.acquire_time)
                } else {
                    self.spec(transitions + 1, None)
                });
                // `replace` sends the resourceVersion it read: a concurrent writer makes it 409.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
            (_, None) => return Ok(false),
        };
        match result {
            Ok(l) => {
                if decision != Decision::Renew {
                    tracing::info!(identity = %self.identity, lease = %self.name, "became leader");
                }
                self.observed = Some((record(l.spec.as_ref()), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(KubeError::api(format!("write lease {}", self.name), e)),
        }
    }

    /// Give the lease up (on shutdown) so a standby takes over at once.
    ///
    /// # Errors
    /// The API failed.
    pub async fn release(&mut self) -> Result<(), KubeError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| KubeError::api(format!("read lease {}", self.name), e))?
        else {
            return Ok(());
        };
        let mine = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.identity.as_str());
        if !mine {
            return Ok(());
        }
        if let Some(s) = lease.spec.as_mut() {
            s.holder_identity = None;
        }
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(KubeError::api(format!("release lease {}", self.name), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_follow_client_go() {
        let d = Duration::from_secs(15);
        let t0 = Instant::now();
        let held = |who: &str| LeaseSpec {
            holder_identity: Some(who.into()),
            ..LeaseSpec::default()
        };
        let cases = [
            (None, t0, Decision::Create),
            (Some(held("me")), t0, Decision::Renew),
            (
                Some(held("other")),
                t0 + Duration::from_secs(10),
                Decision::Follow,
            ),
            (
                Some(held("other")),
                t0 + Duration::from_secs(16),
                Decision::TakeOver,
            ),
            (Some(held("")), t0, Decision::TakeOver),
            (Some(LeaseSpec::default()), t0, Decision::TakeOver),
        ];
        for (lease, now, want) in cases {
            assert_eq!(decide(lease.as_ref(), "me", t0, now, d), want, "{lease:?}");
        }
    }
}
