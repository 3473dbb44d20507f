//! Inference services in `gantry serve`: replica ports, what agents' probes report, the
//! autoscaler loop and the bounds users set.
//!
//! - Each replica of a service with a `port` gets `PORT`: that port, or the next one free among
//!   gantry's replicas on its machine (nodes registered from one address count as one), kept in
//!   its task record.
//! - Agents probe each replica's readiness path and scrape its metric at the service's interval
//!   and send what they found with their heartbeats ([`State::record_replicas`]); this is held in
//!   memory only.
//! - [`State::autoscale`] runs each autoscaled service's [`Autoscaler`] at its interval over the
//!   load of its ready replicas. A change is written into the spec's replica count (durable, so a
//!   restart keeps it), handed to the engine (`Snapshot::set_desired_replicas`), stored as the
//!   job's last decision and sent as a `scaled` event with its inputs. Replicas removed by a
//!   scale-down are stopped with the server's grace period, so in-flight requests can drain.

use std::collections::{BTreeMap, BTreeSet};

use gantry_engine::autoscale::{Autoscaler, ScalePolicy};
use gantry_model::service::{Autoscale, MetricType};

use crate::record::{JobState, ScaleRecord, TaskPhase, TaskRecord};
use crate::state::{Event, State, Stop, TaskKey};
use crate::store::Op;
use crate::ServerError;

/// What an agent last said about one replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicaLoad {
    /// Its readiness probe passed (or it has none and runs).
    pub ready: bool,
    /// Its metric, when read.
    pub value: Option<f64>,
    /// When the server heard it.
    pub at_ms: u64,
}

/// One autoscaled service's autoscaler and when it runs next.
#[derive(Debug, Clone)]
pub struct Scaler {
    /// The algorithm's state.
    pub autoscaler: Autoscaler,
    /// Next evaluation.
    pub next_ms: u64,
}

/// Replicas of a service that may end in a row, with none becoming ready in between, before
/// the service fails (a crash loop: a bad command or model).
pub const MAX_REPLICA_EXITS: u32 = 5;

/// How far from its preferred port a replica's port may be.
const PORT_SPAN: u16 = 1000;

/// What an agent probes on a replica.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Probe {
    /// Readiness path; empty: ready once started.
    pub readiness: String,
    /// Metric name; empty: none.
    pub metric: String,
    /// Metrics path.
    pub metric_path: String,
    /// A counter's rate rather than a gauge.
    pub rate: bool,
    /// Interval.
    pub interval_ms: u32,
}

/// A service as `gantry services` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceView {
    /// Name.
    pub name: String,
    /// Queue.
    pub queue: String,
    /// Job state.
    pub state: JobState,
    /// Bounds.
    pub min: u32,
    /// Bounds.
    pub max: u32,
    /// Desired replicas.
    pub desired: u32,
    /// Placed replicas.
    pub running: u32,
    /// Ready replicas.
    pub ready: u32,
    /// Metric and target (empty and 0 when not autoscaled).
    pub metric: String,
    /// Target per ready replica.
    pub target: f64,
    /// Load per ready replica, when measured.
    pub per_replica: Option<f64>,
    /// Last decision.
    pub last: Option<ScaleRecord>,
    /// Replicas: (index, node, host, port, ready).
    pub endpoints: Vec<(u32, String, String, u16, bool)>,
}

/// The autoscaler's policy of a service.
fn policy_of(r: gantry_model::job::Replicas, a: &Autoscale) -> ScalePolicy {
    ScalePolicy {
        min: r.min,
        max: r.max,
        target: a.target,
        tolerance: a.tolerance,
        up_window_ms: a.scale_up_window_ms,
        down_window_ms: a.scale_down_window_ms,
    }
}

/// Take the tasks `gone` says of out a job's record, keeping `published` (a prefix of the
/// tasks) pointing at the same durable ones; returns the tasks taken out.
fn take_tasks(
    e: &mut crate::state::JobEntry,
    gone: impl Fn(&TaskRecord) -> bool,
) -> Vec<TaskRecord> {
    let (mut kept, mut taken) = (Vec::new(), Vec::new());
    let mut published = 0;
    for (i, t) in std::mem::take(&mut e.rec.tasks).into_iter().enumerate() {
        if gone(&t) {
            taken.push(t);
        } else {
            if i < e.published {
                published += 1;
            }
            kept.push(t);
        }
    }
    e.rec.tasks = kept;
    e.published = published;
    taken
}

/// A service scaled to zero (kept out of the engine until it is activated).
pub fn at_zero(rec: &crate::record::JobRecord) -> bool {
    rec.scale.as_ref().is_some_and(|s| s.to == 0)
}

fn autoscale_of(spec: &gantry_model::JobSpec) -> Option<Autoscale> {
    spec.autoscale.as_ref().and_then(|a| a.validate().ok())
}

/// Reports older than this many intervals (at least 3 s) no longer count.
fn stale_after(interval_ms: u64) -> u64 {
    (3 * interval_ms).max(3_000)
}

impl State {
    /// Give each of `records` (new tasks of `job`) its port, when `job` is a service with one.
    pub(crate) fn assign_replica_ports(&self, job: &str, records: &mut [TaskRecord]) {
        let Some(preferred) = self.jobs.get(job).and_then(|e| e.rec.spec.port) else {
            return;
        };
        // Nodes registered from one address are one machine (several agents may split its
        // GPUs): ports are unique per address.
        let host = |node: &str| -> String {
            self.nodes
                .get(node)
                .map(|n| n.rec.address.clone())
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| node.to_string())
        };
        let mut taken: BTreeSet<(String, u16)> = self
            .running
            .iter()
            .filter_map(|j| self.jobs.get(j))
            .flat_map(|e| e.rec.tasks.iter())
            .filter(|t| t.port != 0 && !matches!(t.phase, TaskPhase::Exited(_)))
            .map(|t| (host(&t.node), t.port))
            .collect();
        for r in records {
            let h = host(&r.node);
            let port = (0..PORT_SPAN)
                .filter_map(|k| preferred.checked_add(k))
                .find(|p| !taken.contains(&(h.clone(), *p)))
                .unwrap_or(preferred);
            taken.insert((h, port));
            r.port = port;
        }
    }

    /// What the agent probes on a replica of `job` (none for other tasks).
    pub(crate) fn probe_of(&self, job: &str) -> Option<Probe> {
        let spec = &self.jobs.get(job)?.rec.spec;
        spec.port?;
        let a = autoscale_of(spec);
        Some(Probe {
            readiness: spec.readiness.clone().unwrap_or_default(),
            metric: a.as_ref().map(|a| a.metric.clone()).unwrap_or_default(),
            metric_path: a.as_ref().map(|a| a.path.clone()).unwrap_or_default(),
            rate: a
                .as_ref()
                .is_some_and(|a| a.metric_type == MetricType::Rate),
            interval_ms: a.as_ref().map_or(5_000, |a| a.interval_ms) as u32,
        })
    }

    /// Keep what `node`'s agent found on its replicas (reports about other nodes' tasks, or
    /// tasks the server does not know, are ignored). True when a replica's readiness changed.
    pub fn record_replicas(
        &mut self,
        node: &str,
        reports: impl IntoIterator<Item = (TaskKey, bool, Option<f64>)>,
        now: u64,
    ) -> bool {
        let mut flipped = false;
        for (key, ready, value) in reports {
            let known = self.jobs.get(&key.job).is_some_and(|e| {
                e.rec.attempt == key.attempt
                    && e.rec
                        .tasks
                        .iter()
                        .any(|t| t.node == node && t.group == key.group && t.index == key.index)
            });
            if known {
                if ready {
                    self.replica_exits.remove(&key.job);
                }
                flipped |= self.replicas.get(&key).is_none_or(|r| r.ready != ready);
                self.replicas.insert(
                    key,
                    ReplicaLoad {
                        ready,
                        value: value.filter(|v| v.is_finite()),
                        at_ms: now,
                    },
                );
            }
        }
        flipped
    }

    /// Ready replicas of a service and their summed load (none when no ready replica reported
    /// its metric).
    fn measure(&self, name: &str, interval_ms: u64, now: u64) -> (u32, Option<f64>) {
        let Some(e) = self.jobs.get(name) else {
            return (0, None);
        };
        let (mut ready, mut load, mut measured) = (0u32, 0.0, false);
        for t in &e.rec.tasks {
            let key = TaskKey {
                job: name.to_string(),
                group: t.group,
                index: t.index,
                attempt: e.rec.attempt,
            };
            if let Some(r) = self.replicas.get(&key) {
                if r.ready && now.saturating_sub(r.at_ms) <= stale_after(interval_ms) {
                    ready += 1;
                    if let Some(v) = r.value {
                        load += v;
                        measured = true;
                    }
                }
            }
        }
        (ready, measured.then_some(load))
    }

    /// Run every autoscaled service's autoscaler that is due. Returns the store ops of the
    /// decisions.
    pub fn autoscale(&mut self, now: u64) -> Vec<Op> {
        // Reports of replicas that are gone (scaled down, requeued, finished) are dropped.
        let jobs = &self.jobs;
        self.replicas.retain(|k, _| {
            jobs.get(&k.job).is_some_and(|e| {
                e.rec.attempt == k.attempt
                    && e.rec
                        .tasks
                        .iter()
                        .any(|t| t.group == k.group && t.index == k.index)
            })
        });
        let jobs = &self.jobs;
        let running = &self.running;
        self.scalers.retain(|name, _| {
            running.contains(name) || jobs.get(name).is_some_and(|e| at_zero(&e.rec))
        });
        let services: Vec<(String, Autoscale, ScalePolicy, u32)> = self
            .running
            .iter()
            .filter_map(|name| {
                let spec = &self.jobs.get(name)?.rec.spec;
                let a = autoscale_of(spec)?;
                let policy = policy_of(spec.replicas?, &a);
                Some((name.clone(), a, policy, spec.tasks.first()?.count))
            })
            .collect();
        let mut ops = Vec::new();
        for (name, a, policy, desired) in services {
            let (ready, load) = self.measure(&name, a.interval_ms, now);
            let s = self.scalers.entry(name.clone()).or_insert_with(|| Scaler {
                autoscaler: Autoscaler::new(desired),
                next_ms: now,
            });
            if now < s.next_ms {
                continue;
            }
            s.next_ms = now + a.interval_ms;
            if let Some(d) = s.autoscaler.observe(&policy, now, ready, load) {
                tracing::info!(service = %name, from = d.from, to = d.to, ready, load = ?load, "{}", d.why);
                ops.extend(self.set_replicas(&name, d.to, &d.why, now));
            }
        }
        ops
    }

    /// Set a service's desired replicas: its spec, the engine, the record's last decision and a
    /// `scaled` event; replicas removed are told to stop.
    fn set_replicas(&mut self, name: &str, to: u32, why: &str, now: u64) -> Vec<Op> {
        if to == 0 {
            return self.scale_to_zero(name, why, now);
        }
        let Some(e) = self.jobs.get_mut(name) else {
            return Vec::new();
        };
        let Some(g) = e.rec.spec.tasks.first_mut() else {
            return Vec::new();
        };
        let from = g.count;
        g.count = to;
        e.rec.scale = Some(ScaleRecord {
            at_ms: now,
            from,
            to,
            why: why.to_string(),
        });
        if let Some(id) = e.id {
            match self.snap.set_desired_replicas(id, to) {
                Ok(_) => {
                    let kept: BTreeSet<(u16, u32)> = self
                        .snap
                        .job_tasks(id)
                        .iter()
                        .map(|t| (t.group, t.index))
                        .collect();
                    let attempt = e.rec.attempt;
                    let stops: Vec<(String, Stop)> =
                        take_tasks(e, |t| !kept.contains(&(t.group, t.index)))
                            .into_iter()
                            .filter(|t| !matches!(t.phase, TaskPhase::Exited(_)))
                            .map(|t| {
                                let stop = Stop {
                                    job: name.to_string(),
                                    group: t.group,
                                    index: t.index,
                                    attempt,
                                    why: format!("scaled down: {why}"),
                                };
                                (t.alloc.node, stop)
                            })
                            .collect();
                    for (node, s) in stops {
                        self.stops.entry(node).or_default().push(s);
                    }
                }
                Err(err) => {
                    tracing::error!(service = %name, error = %err, "the engine refused a scale")
                }
            }
        }
        self.scaled_event(name, why.to_string(), now);
        vec![Op::job(&self.jobs[name].rec)]
    }

    /// Send a `scaled` event for service `name`.
    fn scaled_event(&mut self, name: &str, message: String, now: u64) {
        if let Some(e) = self.jobs.get(name) {
            self.events.push(Event {
                job: name.to_string(),
                queue: e.rec.spec.queue.clone(),
                kind: "scaled",
                message,
                at_ms: now,
                state: e.rec.state,
            });
        }
    }

    /// An idle service with `min` 0 goes to zero: its replicas are stopped and it leaves the
    /// engine, waiting (pending, with its reason) until its activation queue shows requests.
    fn scale_to_zero(&mut self, name: &str, why: &str, now: u64) -> Vec<Op> {
        let Some(e) = self.jobs.get_mut(name) else {
            return Vec::new();
        };
        let from = e.rec.spec.tasks.first().map_or(0, |g| g.count);
        if let Some(id) = e.id.take() {
            if let Err(err) = self.snap.cancel(id) {
                tracing::error!(service = %name, error = %err, "the engine did not know the service");
            }
        }
        if e.rec.state == JobState::Running {
            crate::state::requeue_record(e, why, &mut self.stops, &mut self.events, now);
        }
        e.rec.scale = Some(ScaleRecord {
            at_ms: now,
            from,
            to: 0,
            why: why.to_string(),
        });
        e.rec.reason =
            format!("scaled to zero; starts again when requests queue in front of it ({why})");
        self.running.remove(name);
        self.scaled_event(name, why.to_string(), now);
        vec![Op::job(&self.jobs[name].rec)]
    }

    /// Services at zero replicas whose activation queue is due a look: (name, `host:port`,
    /// path, metric).
    pub fn activations_due(&mut self, now: u64) -> Vec<(String, String, String, String)> {
        let mut out = Vec::new();
        for (name, e) in &self.jobs {
            if !at_zero(&e.rec) || !e.rec.state.is_active() {
                continue;
            }
            let Some(a) = autoscale_of(&e.rec.spec) else {
                continue;
            };
            let Some(act) = a.activation else { continue };
            let s = self.scalers.entry(name.clone()).or_insert_with(|| Scaler {
                autoscaler: Autoscaler::new(0),
                next_ms: now,
            });
            if now < s.next_ms {
                continue;
            }
            s.next_ms = now + a.interval_ms;
            out.push((name.clone(), act.host_port, act.path, act.metric));
        }
        out
    }

    /// What the activation queue of a service at zero showed: requests waiting bring it back.
    pub fn activate(&mut self, name: &str, queued: Option<f64>, now: u64) -> Vec<Op> {
        let Some(e) = self.jobs.get(name) else {
            return Vec::new();
        };
        if !at_zero(&e.rec) {
            return Vec::new();
        }
        let (Some(a), Some(r)) = (autoscale_of(&e.rec.spec), e.rec.spec.replicas) else {
            return Vec::new();
        };
        let policy = policy_of(r, &a);
        let Some(s) = self.scalers.get_mut(name) else {
            return Vec::new();
        };
        let Some(d) = s.autoscaler.observe_queued(&policy, now, queued) else {
            return Vec::new();
        };
        tracing::info!(service = %name, to = d.to, "{}", d.why);
        let e = self.jobs.get_mut(name).expect("checked above");
        if let Some(g) = e.rec.spec.tasks.first_mut() {
            g.count = d.to;
        }
        e.rec.scale = Some(ScaleRecord {
            at_ms: now,
            from: 0,
            to: d.to,
            why: d.why.clone(),
        });
        e.rec.reason = "waiting for the next scheduling cycle".into();
        // Back into the engine with the next rebuild.
        self.dirty = true;
        self.scaled_event(name, d.why, now);
        vec![Op::job(&self.jobs[name].rec)]
    }

    /// A replica of a running service ended (`failure` says how). It is replaced: the engine
    /// places a new one under a new index. When the service would fall below its `min`, it is
    /// requeued whole instead, as a gang that lost a member.
    pub(crate) fn replica_ended(
        &mut self,
        key: &TaskKey,
        failure: String,
        now: u64,
        mut ops: Vec<Op>,
    ) -> Vec<Op> {
        let id = self.jobs.get(&key.job).and_then(|e| e.id);
        let replaced = id.is_some_and(|id| {
            self.snap
                .replace_task(id, key.group, key.index)
                .unwrap_or(false)
        });
        let Some(e) = self.jobs.get_mut(&key.job) else {
            return ops;
        };
        if replaced {
            take_tasks(e, |t| t.group == key.group && t.index == key.index);
            let message = format!("{failure}; a new replica replaces it");
            tracing::warn!(service = %key.job, index = key.index, "{message}");
            self.events.push(Event {
                job: key.job.clone(),
                queue: e.rec.spec.queue.clone(),
                kind: "replica-replaced",
                message,
                at_ms: now,
                state: e.rec.state,
            });
        } else {
            if let Some(id) = id {
                if let Err(err) = self.snap.requeue(id) {
                    tracing::error!(service = %key.job, error = %err, "requeue failed");
                }
            }
            let why =
                format!("{failure}; fewer than min replicas left, so the service starts again");
            crate::state::requeue_record(e, &why, &mut self.stops, &mut self.events, now);
            self.running.remove(&key.job);
        }
        ops.push(Op::job(&self.jobs[&key.job].rec));
        ops
    }

    /// Change a service's replica bounds (`gantry scale`). The desired count is brought within
    /// them at once; the autoscaler starts over from it.
    ///
    /// # Errors
    /// An unknown job, one that is not an inference service, or bounds that are not
    /// `1 <= min <= max`.
    pub fn scale_service(
        &mut self,
        name: &str,
        min: Option<u32>,
        max: Option<u32>,
        now: u64,
    ) -> Result<Vec<Op>, ServerError> {
        let e = self.jobs.get(name).ok_or_else(|| ServerError::NotFound {
            kind: "service",
            name: name.to_string(),
        })?;
        let Some(r) = e.rec.spec.replicas else {
            return Err(ServerError::Invalid {
                field: "name".into(),
                reason: format!("job {name:?} is not an inference service (it has no replicas)"),
            });
        };
        if !e.rec.state.is_active() {
            return Err(ServerError::Conflict(format!(
                "service {name:?} has finished ({:?})",
                e.rec.state
            )));
        }
        let (min, max) = (min.unwrap_or(r.min), max.unwrap_or(r.max));
        if min == 0 || min > max {
            return Err(ServerError::Invalid {
                field: if min == 0 { "min" } else { "max" }.into(),
                reason: format!("need 1 <= min <= max, got min {min} max {max}"),
            });
        }
        let desired = e.rec.spec.tasks.first().map_or(min, |g| g.count);
        let to = desired.clamp(min, max);
        let why = format!(
            "bounds set to {min}..{max} (were {}..{}); desired {desired} -> {to}",
            r.min, r.max
        );
        let mut ops = Vec::new();
        if to < desired {
            // Scale down under the old bounds first, so the engine stops the extra replicas.
            ops.extend(self.set_replicas(name, to, &why, now));
        }
        let e = self.jobs.get_mut(name).expect("checked above");
        e.rec.spec.replicas = Some(gantry_model::job::Replicas { min, max });
        if let Some(g) = e.rec.spec.tasks.first_mut() {
            g.count = to;
        }
        e.rec.scale = Some(ScaleRecord {
            at_ms: now,
            from: desired,
            to,
            why: why.clone(),
        });
        ops.push(Op::job(&e.rec));
        if let Some(s) = self.scalers.get_mut(name) {
            s.autoscaler.reset(to);
        }
        // The engine takes the new gang size (min) from a rebuild, which keeps running replicas.
        self.dirty = true;
        self.scaled_event(name, why, now);
        Ok(ops)
    }

    /// Inference services (all, or the one named), in submission order.
    pub fn services(&self, only: &str, now: u64) -> Vec<ServiceView> {
        let mut out = Vec::new();
        for name in self.order.values() {
            if !only.is_empty() && name != only {
                continue;
            }
            let Some(e) = self.jobs.get(name) else {
                continue;
            };
            let Some(r) = e.rec.spec.replicas else {
                continue;
            };
            let a = autoscale_of(&e.rec.spec);
            let interval = a.as_ref().map_or(5_000, |a| a.interval_ms);
            let probed = e.rec.spec.port.is_some();
            let mut endpoints = Vec::new();
            for t in &e.rec.tasks {
                if matches!(t.phase, TaskPhase::Exited(_)) {
                    continue;
                }
                let key = TaskKey {
                    job: name.clone(),
                    group: t.group,
                    index: t.index,
                    attempt: e.rec.attempt,
                };
                let ready = if probed {
                    self.replicas.get(&key).is_some_and(|l| {
                        l.ready && now.saturating_sub(l.at_ms) <= stale_after(interval)
                    })
                } else {
                    t.phase == TaskPhase::Running
                };
                let host = self
                    .nodes
                    .get(&t.node)
                    .map(|n| n.rec.address.clone())
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| t.node.clone());
                endpoints.push((t.index, t.node.clone(), host, t.port, ready));
            }
            let (ready, load) = self.measure(name, interval, now);
            let ready = if probed {
                ready
            } else {
                endpoints.iter().filter(|x| x.4).count() as u32
            };
            out.push(ServiceView {
                name: name.clone(),
                queue: e.rec.spec.queue.clone(),
                state: e.rec.state,
                min: r.min,
                max: r.max,
                desired: if at_zero(&e.rec) {
                    0
                } else {
                    e.rec.spec.tasks.first().map_or(0, |g| g.count)
                },
                running: endpoints.len() as u32,
                ready,
                metric: a.as_ref().map(|a| a.metric.clone()).unwrap_or_default(),
                target: a.as_ref().map_or(0.0, |a| a.target),
                per_replica: load.filter(|_| ready > 0).map(|l| l / f64::from(ready)),
                last: e.rec.scale.clone(),
                endpoints,
            });
        }
        out
    }
}

/// The environment a replica gets: `PORT`, and `GANTRY_REPLICA` (its index).
pub(crate) fn replica_env(t: &TaskRecord) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if t.port != 0 {
        env.insert("PORT".into(), t.port.to_string());
        env.insert("GANTRY_REPLICA".into(), t.index.to_string());
    }
    env
}
