//! Device health: XID critical errors and double-bit ECC errors make a device Unhealthy; unlike
//! NVIDIA's plugin (k8s-device-plugin#189, #415), a device **returns to Healthy** once it has
//! been quiet for a configurable period and a probe succeeds.
//!
//! [`HealthTracker`] is the pure state machine (events and clock in, health changes out);
//! [`spawn_monitor`] runs it on a dedicated thread against an [`Inventory`] and publishes a new
//! [`Snapshot`] on every change, which the ListAndWatch streams and the publisher watch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_model::Health;
use tokio::sync::watch;

use crate::inventory::{EventKind, HealthEvent, Inventory, NodeInventory};
use crate::resources::{MigStrategy, Snapshot};

/// XIDs NVIDIA's plugin ignores by default: application errors, not device faults
/// (13 graphics engine exception, 31 memory page fault, 43 GPU stopped processing,
/// 45 preemptive cleanup, 68 video processor exception, 109 context switch timeout).
pub const DEFAULT_IGNORED_XIDS: [u64; 6] = [13, 31, 43, 45, 68, 109];

/// NVML's "no particular GPU instance" value in event data.
pub const ALL_INSTANCES: u32 = u32::MAX;

/// How health is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// XIDs that do not make a device Unhealthy.
    pub ignored_xids: BTreeSet<u64>,
    /// How long a device must be free of events before it is probed for recovery.
    pub quiet_period: Duration,
    /// How often a failing probe is retried.
    pub probe_interval: Duration,
    /// How often the inventory is read again to notice reconfiguration (MIG slices created or
    /// destroyed, a GPU gone); `None` reads it only at start.
    pub rediscover_interval: Option<Duration>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            ignored_xids: DEFAULT_IGNORED_XIDS.into_iter().collect(),
            quiet_period: Duration::from_secs(60),
            probe_interval: Duration::from_secs(5),
            rediscover_interval: Some(Duration::from_secs(60)),
        }
    }
}

/// What one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// An ignored XID.
    Ignored,
    /// The event names a GPU this node does not have.
    UnknownDevice,
    /// These device ids (GPU or MIG uuids) are Unhealthy now (some may already have been).
    Unhealthy(Vec<String>),
}

/// The health state machine.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    config: HealthConfig,
    /// Unhealthy device id (GPU or MIG uuid) → the earliest time to probe it.
    due: BTreeMap<String, Instant>,
}

impl HealthTracker {
    /// A tracker with nothing Unhealthy.
    pub fn new(config: HealthConfig) -> Self {
        HealthTracker {
            config,
            due: BTreeMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// Apply an event at `now`: the GPU (or, when the event names a GPU instance that exists,
    /// only that MIG slice) becomes Unhealthy and its quiet period starts again.
    pub fn on_event(&mut self, inv: &mut NodeInventory, ev: &HealthEvent, now: Instant) -> Verdict {
        if let EventKind::Xid(x) = ev.kind {
            if self.config.ignored_xids.contains(&x) {
                return Verdict::Ignored;
            }
        }
        let Some(gpu) = inv.gpus.iter_mut().find(|g| g.uuid == ev.gpu) else {
            return Verdict::UnknownDevice;
        };
        let slice = ev
            .gpu_instance
            .filter(|&gi| gi != ALL_INSTANCES)
            .and_then(|gi| {
                gpu.mig
                    .as_mut()
                    .filter(|m| m.current)
                    .and_then(|m| m.slices.iter_mut().find(|s| s.gpu_instance == gi))
            });
        let id = match slice {
            Some(s) => {
                s.health = Health::Unhealthy;
                s.uuid.clone()
            }
            None => {
                gpu.health = Health::Unhealthy;
                gpu.uuid.clone()
            }
        };
        self.due.insert(id.clone(), now + self.config.quiet_period);
        Verdict::Unhealthy(vec![id])
    }

    /// When the next recovery check is due, if any device is Unhealthy.
    pub fn next_check(&self) -> Option<Instant> {
        self.due.values().min().copied()
    }

    /// Probe every device whose quiet period is over; those whose GPU answers return to
    /// Healthy (returned), the others are retried after the probe interval.
    pub fn check(
        &mut self,
        inv: &mut NodeInventory,
        now: Instant,
        mut probe: impl FnMut(&str) -> bool,
    ) -> Vec<String> {
        let ready: Vec<String> = self
            .due
            .iter()
            .filter(|(_, &t)| t <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut recovered = Vec::new();
        for id in ready {
            // The device is a GPU, or a slice of one: probe the physical GPU.
            let mut target = None;
            for g in &inv.gpus {
                if g.uuid == id {
                    target = Some(g.uuid.clone());
                } else if let Some(m) = &g.mig {
                    if m.slices.iter().any(|s| s.uuid == id) {
                        target = Some(g.uuid.clone());
                    }
                }
            }
            let Some(gpu_uuid) = target else {
                // Gone from the inventory: nothing to recover.
                self.due.remove(&id);
                continue;
            };
            if probe(&gpu_uuid) {
                self.due.remove(&id);
                for g in &mut inv.gpus {
                    if g.uuid == id {
                        g.health = Health::Healthy;
                    }
                    if let Some(m) = &mut g.mig {
                        for s in m.slices.iter_mut().filter(|s| s.uuid == id) {
                            s.health = Health::Healthy;
                        }
                    }
                }
                recovered.push(id);
            } else {
                self.due.insert(id, now + self.config.probe_interval);
            }
        }
        recovered
    }
}

/// Carry the health of devices that still exist from `old` into a freshly discovered `new`.
pub fn carry_health(old: &NodeInventory, new: &mut NodeInventory) {
    for g in &mut new.gpus {
        let Some(o) = old.gpu(&g.uuid) else { continue };
        g.health = o.health;
        if let (Some(m), Some(om)) = (&mut g.mig, &o.mig) {
            for s in &mut m.slices {
                if let Some(os) = om.slices.iter().find(|x| x.uuid == s.uuid) {
                    s.health = os.health;
                }
            }
        }
    }
}

/// Run the health loop on its own thread until `stop` is set: wait for events, apply them,
/// probe devices whose quiet period is over, and send a new [`Snapshot`] on every change.
pub fn spawn_monitor(
    inventory_source: Arc<dyn Inventory>,
    config: HealthConfig,
    strategy: MigStrategy,
    initial: NodeInventory,
    tx: watch::Sender<Arc<Snapshot>>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("gantry-health".into())
        .spawn(move || {
            let poll = config.probe_interval.clamp(Duration::from_millis(1), Duration::from_millis(200));
            let rediscover = config.rediscover_interval;
            let mut tracker = HealthTracker::new(config);
            let mut inv = initial;
            let mut last_discovery = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                let wait = tracker
                    .next_check()
                    .map_or(poll, |t| t.saturating_duration_since(now).min(poll));
                let mut changed = false;
                match inventory_source.next_event(wait) {
                    Ok(Some(ev)) => match tracker.on_event(&mut inv, &ev, Instant::now()) {
                        Verdict::Ignored => {
                            tracing::info!(gpu = %ev.gpu, event = %ev.kind, "ignored health event");
                        }
                        Verdict::UnknownDevice => {
                            tracing::warn!(gpu = %ev.gpu, event = %ev.kind, "health event for an unknown GPU");
                        }
                        Verdict::Unhealthy(ids) => {
                            tracing::warn!(devices = ?ids, event = %ev.kind, "device unhealthy");
                            changed = true;
                        }
                    },
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "health event source failed");
                        std::thread::sleep(wait);
                    }
                }
                let recovered = tracker.check(&mut inv, Instant::now(), |uuid| {
                    inventory_source.probe(uuid).unwrap_or_else(|e| {
                        tracing::warn!(gpu = uuid, error = %e, "probe failed");
                        false
                    })
                });
                if !recovered.is_empty() {
                    tracing::info!(devices = ?recovered, "device healthy again after its quiet period");
                    changed = true;
                }
                if rediscover.is_some_and(|d| last_discovery.elapsed() >= d) {
                    last_discovery = Instant::now();
                    match inventory_source.discover() {
                        Ok(mut fresh) => {
                            carry_health(&inv, &mut fresh);
                            if fresh != inv {
                                tracing::info!(gpus = fresh.gpus.len(), "inventory changed");
                                inv = fresh;
                                changed = true;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "rediscovery failed"),
                    }
                }
                if changed {
                    match Snapshot::build(inv.clone(), strategy) {
                        Ok(s) => {
                            tx.send_replace(Arc::new(s));
                        }
                        Err(e) => tracing::error!(error = %e, "cannot rebuild resources"),
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeInventory;

    fn inv() -> NodeInventory {
        let y = "node: n\ngpus:\n  - {name: NVIDIA A100-SXM4-80GB, memory_mib: 81920, count: 2}\nmig:\n  1: {slices: [{profile: 3g.40gb, start: 0, gpu_instance: 2}, {profile: 3g.40gb, start: 4, gpu_instance: 1}]}\n";
        FakeInventory::from_yaml(y, "t")
            .expect("ok")
            .discover()
            .expect("d")
    }

    fn cfg(quiet_ms: u64) -> HealthConfig {
        HealthConfig {
            quiet_period: Duration::from_millis(quiet_ms),
            probe_interval: Duration::from_millis(10),
            ..HealthConfig::default()
        }
    }

    #[test]
    fn table_of_events() {
        let t0 = Instant::now();
        let base = inv();
        let g0 = base.gpus[0].uuid.clone();
        let g1 = base.gpus[1].uuid.clone();
        let s_gi1 = base.gpus[1].mig.as_ref().expect("mig").slices[1]
            .uuid
            .clone();
        let cases: Vec<(HealthEvent, Verdict)> = vec![
            (
                HealthEvent {
                    gpu: g0.clone(),
                    gpu_instance: None,
                    kind: EventKind::Xid(13),
                },
                Verdict::Ignored,
            ),
            (
                HealthEvent {
                    gpu: g0.clone(),
                    gpu_instance: None,
                    kind: EventKind::Xid(109),
                },
                Verdict::Ignored,
            ),
            (
                HealthEvent {
                    gpu: g0.clone(),
                    gpu_instance: None,
                    kind: EventKind::Xid(79),
                },
                Verdict::Unhealthy(vec![g0.clone()]),
            ),
            (
                HealthEvent {
                    gpu: g0.clone(),
                    gpu_instance: None,
                    kind: EventKind::EccDoubleBit,
                },
                Verdict::Unhealthy(vec![g0.clone()]),
            ),
            (
                HealthEvent {
                    gpu: "GPU-nope".into(),
                    gpu_instance: None,
                    kind: EventKind::Xid(79),
                },
                Verdict::UnknownDevice,
            ),
            (
                HealthEvent {
                    gpu: g1.clone(),
                    gpu_instance: Some(1),
                    kind: EventKind::Xid(94),
                },
                Verdict::Unhealthy(vec![s_gi1.clone()]),
            ),
            (
                HealthEvent {
                    gpu: g1.clone(),
                    gpu_instance: Some(ALL_INSTANCES),
                    kind: EventKind::Xid(94),
                },
                Verdict::Unhealthy(vec![g1.clone()]),
            ),
            (
                HealthEvent {
                    gpu: g1.clone(),
                    gpu_instance: Some(7),
                    kind: EventKind::Xid(94),
                },
                Verdict::Unhealthy(vec![g1.clone()]),
            ),
        ];
        for (ev, want) in cases {
            let mut i = base.clone();
            let mut t = HealthTracker::new(cfg(50));
            assert_eq!(t.on_event(&mut i, &ev, t0), want, "{ev:?}");
        }
    }

    #[test]
    fn ignored_list_is_configurable() {
        let mut i = inv();
        let g0 = i.gpus[0].uuid.clone();
        let mut c = cfg(50);
        c.ignored_xids = [79].into_iter().collect();
        let mut t = HealthTracker::new(c);
        let ev = |x| HealthEvent {
            gpu: g0.clone(),
            gpu_instance: None,
            kind: EventKind::Xid(x),
        };
        assert_eq!(
            t.on_event(&mut i, &ev(79), Instant::now()),
            Verdict::Ignored
        );
        assert!(matches!(
            t.on_event(&mut i, &ev(13), Instant::now()),
            Verdict::Unhealthy(_)
        ));
    }

    #[test]
    fn recovers_only_after_quiet_period_and_successful_probe() {
        let t0 = Instant::now();
        let mut i = inv();
        let g0 = i.gpus[0].uuid.clone();
        let mut t = HealthTracker::new(cfg(100));
        let ev = HealthEvent {
            gpu: g0.clone(),
            gpu_instance: None,
            kind: EventKind::Xid(79),
        };
        t.on_event(&mut i, &ev, t0);
        assert_eq!(i.gpus[0].health, Health::Unhealthy);
        // Too early: not even probed.
        let probed = std::cell::Cell::new(0);
        let r = t.check(&mut i, t0 + Duration::from_millis(99), |_| {
            probed.set(probed.get() + 1);
            true
        });
        assert!(r.is_empty());
        assert_eq!(probed.get(), 0);
        // A second event restarts the quiet period.
        t.on_event(&mut i, &ev, t0 + Duration::from_millis(50));
        assert!(t
            .check(&mut i, t0 + Duration::from_millis(120), |_| true)
            .is_empty());
        // Quiet long enough, but the probe fails: still Unhealthy, retried after the interval.
        assert!(t
            .check(&mut i, t0 + Duration::from_millis(150), |_| false)
            .is_empty());
        assert_eq!(i.gpus[0].health, Health::Unhealthy);
        assert_eq!(t.next_check(), Some(t0 + Duration::from_millis(160)));
        // Probe succeeds: Healthy again.
        let r = t.check(&mut i, t0 + Duration::from_millis(160), |u| u == g0);
        assert_eq!(r, vec![g0]);
        assert_eq!(i.gpus[0].health, Health::Healthy);
        assert_eq!(t.next_check(), None);
    }

    #[test]
    fn rediscovery_keeps_health_of_devices_that_remain() {
        let mut old = inv();
        old.gpus[0].health = Health::Unhealthy;
        old.gpus[1].mig.as_mut().expect("m").slices[1].health = Health::Unhealthy;
        let mut fresh = inv();
        fresh.gpus[1].mig.as_mut().expect("m").slices.remove(0);
        carry_health(&old, &mut fresh);
        assert_eq!(fresh.gpus[0].health, Health::Unhealthy);
        let slices = &fresh.gpus[1].mig.as_ref().expect("m").slices;
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0].health, Health::Unhealthy);
    }

    #[test]
    fn slice_recovery_probes_its_parent() {
        let t0 = Instant::now();
        let mut i = inv();
        let g1 = i.gpus[1].uuid.clone();
        let mut t = HealthTracker::new(cfg(0));
        t.on_event(
            &mut i,
            &HealthEvent {
                gpu: g1.clone(),
                gpu_instance: Some(2),
                kind: EventKind::Xid(94),
            },
            t0,
        );
        assert_eq!(
            i.gpus[1].mig.as_ref().expect("m").slices[0].health,
            Health::Unhealthy
        );
        assert_eq!(i.gpus[1].health, Health::Healthy);
        let mut asked = Vec::new();
        t.check(&mut i, t0, |u| {
            asked.push(u.to_string());
            true
        });
        assert_eq!(asked, vec![g1]);
        assert_eq!(
            i.gpus[1].mig.as_ref().expect("m").slices[0].health,
            Health::Healthy
        );
    }
}
