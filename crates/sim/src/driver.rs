//! The discrete-event driver: a virtual clock around the production engine.
//!
//! Events are arrivals, completions, and node failures and recoveries. All events at one
//! timestamp are applied to the [`Snapshot`] first; then, if anything changed, one engine cycle
//! ([`gantry_engine::schedule`]) runs at that time and its [`Plan`](gantry_engine::Plan) is applied:
//! - a bind starts a job: its completion is due `runtime` later (the trace's actual runtime);
//! - a preemption has already put the victim back in its queue inside the snapshot: the driver
//!   bumps the victim's generation so that its pending completion event is ignored, and the job
//!   restarts from the beginning when it is bound again (no checkpoints);
//! - a node failure requeues every job with a task on the node (a gang restarts whole).
//!
//! The engine is never copied here: every decision is the engine's. The driver only measures —
//! allocation from the binds it applies, engine time with [`Instant`] around `schedule` (the
//! engine has no clock), and the wall time of the replay.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::Instant;

use gantry_engine::{
    schedule, GpuAlloc, JobId, NodeId, PreemptCause, Profile, Snapshot, TaskAlloc,
};
use gantry_model::GpuDemand;

use crate::error::{Result, SimError};
use crate::metrics::{Recorder, RunResult};
use crate::workload::{job_gpu_demand_milli, Workload};

/// Progress of a replay, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Jobs that have arrived.
    pub arrived: u64,
    /// Jobs in the workload.
    pub total: u64,
    /// The virtual clock (ms).
    pub now: u64,
}

/// Options of one replay.
#[derive(Debug, Clone)]
pub struct Options {
    /// Points of the time series (utilization, queue shares) kept for reports.
    pub samples: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { samples: 400 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// A job finished (job index, generation).
    Complete(u32, u32),
    /// A node goes down or comes up.
    Node(u32, bool),
    /// A job arrives.
    Arrive(u32),
}

/// Where a trace job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    NotArrived,
    Pending,
    Running,
    Done,
    /// Fill experiment: did not fit on arrival and was dropped.
    Dropped,
}

/// Per trace job bookkeeping.
#[derive(Debug, Clone)]
pub(crate) struct JobRec {
    pub state: State,
    pub id: Option<JobId>,
    pub generation: u32,
    pub first_start: Option<u64>,
    pub end: Option<u64>,
    pub preempted: u32,
    /// Allocation held now, in thousandths of a GPU.
    pub alloc_milli: u64,
    /// Tasks held now (the engine forgets a victim's tasks when it preempts).
    pub tasks: Vec<TaskAlloc>,
    pub queue: u32,
}

/// Device table built from the cluster, for allocation and fragmentation.
#[derive(Debug, Clone)]
pub(crate) struct Devices {
    /// Per device: model index, node, whether MIG-enabled.
    pub model: Vec<u16>,
    pub node: Vec<u32>,
    pub mig: Vec<bool>,
    /// Used thousandths per device (whole = 1000).
    pub used: Vec<u16>,
    /// Per node: first device and count.
    pub node_devs: Vec<(u32, u32)>,
    pub node_ready: Vec<bool>,
    pub model_names: Vec<String>,
}

impl Devices {
    fn new(w: &Workload) -> Devices {
        let mut d = Devices {
            model: Vec::new(),
            node: Vec::new(),
            mig: Vec::new(),
            used: Vec::new(),
            node_devs: Vec::new(),
            node_ready: Vec::new(),
            model_names: Vec::new(),
        };
        let mut ix: HashMap<&str, u16> = HashMap::new();
        for (ni, n) in w.cluster.nodes.iter().enumerate() {
            d.node_devs
                .push((d.model.len() as u32, n.devices.len() as u32));
            d.node_ready.push(true);
            for dev in &n.devices {
                let m = *ix.entry(dev.model.as_str()).or_insert_with(|| {
                    d.model_names.push(dev.model.clone());
                    (d.model_names.len() - 1) as u16
                });
                d.model.push(m);
                d.node.push(ni as u32);
                d.mig.push(dev.mig.is_some());
                d.used.push(0);
            }
        }
        d
    }

    /// GPUs on ready nodes.
    pub fn capacity(&self) -> u64 {
        self.node_devs
            .iter()
            .zip(&self.node_ready)
            .filter(|(_, r)| **r)
            .map(|((_, c), _)| *c as u64)
            .sum()
    }

    pub fn model_index(&self, name: &str) -> Option<u16> {
        self.model_names
            .iter()
            .position(|m| m == name)
            .map(|i| i as u16)
    }
}

/// Thousandths of a device a task holds, per device.
fn task_usage(snap: &Snapshot, t: &TaskAlloc, mut f: impl FnMut(u32, u16)) {
    match &t.gpu {
        GpuAlloc::None => {}
        GpuAlloc::Whole(ds) => ds.iter().for_each(|d| f(d.0, 1000)),
        GpuAlloc::Shared { device, milli } => f(device.0, *milli),
        GpuAlloc::Mig {
            device, profile, ..
        } => {
            // Count a slice as its compute share of the device: `3g.40gb` is 3/7.
            let name = snap.mig_profile_name(*device, *profile);
            let g: u16 = name
                .split('g')
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(1);
            f(device.0, (g * 1000 / 7).min(1000));
        }
    }
}

/// The replay of one workload under one profile.
#[derive(Debug)]
pub struct Sim<'w> {
    w: &'w Workload,
    profile: Profile,
    snap: Snapshot,
    pub(crate) jobs: Vec<JobRec>,
    /// Engine job id → trace index.
    by_id: HashMap<u32, u32>,
    events: BinaryHeap<Reverse<(u64, Ev)>>,
    pub(crate) devices: Devices,
    pub(crate) pending: BTreeSet<u32>,
    pub(crate) rec: Recorder,
    now: u64,
    arrived: u64,
    arrived_demand: u64,
}

impl<'w> Sim<'w> {
    /// Prepare a replay.
    ///
    /// # Errors
    /// The engine refuses the cluster or a node operation names an unknown node.
    pub fn new(w: &'w Workload, profile: Profile, opts: &Options) -> Result<Sim<'w>> {
        let mut snap = Snapshot::new(&w.cluster, &w.queues)?;
        let mut devices = Devices::new(w);
        let node_of = |name: &str| -> Result<u32> {
            w.cluster
                .nodes
                .iter()
                .position(|n| n.name == name)
                .map(|i| i as u32)
                .ok_or_else(|| SimError::Config(format!("{}: no node named {name:?}", w.name)))
        };
        for n in &w.initially_down {
            let i = node_of(n)?;
            snap.set_node_ready(NodeId(i), false);
            devices.node_ready[i as usize] = false;
        }
        let mut events = BinaryHeap::new();
        for (i, j) in w.jobs.iter().enumerate() {
            events.push(Reverse((j.arrival_ms, Ev::Arrive(i as u32))));
        }
        for op in &w.node_ops {
            events.push(Reverse((op.at_ms, Ev::Node(node_of(&op.node)?, op.ready))));
        }
        let start = w.jobs.first().map_or(0, |j| j.arrival_ms);
        // The time the replay would take if nothing waited: the sampling interval's base.
        let span = w
            .jobs
            .iter()
            .map(|j| j.arrival_ms.saturating_add(j.runtime_ms.unwrap_or(0)))
            .max()
            .unwrap_or(0)
            .saturating_sub(start);
        let rec = Recorder::new(w, &snap, &devices, start, span, opts.samples);
        Ok(Sim {
            w,
            profile,
            snap,
            jobs: w
                .jobs
                .iter()
                .map(|_| JobRec {
                    state: State::NotArrived,
                    id: None,
                    generation: 0,
                    first_start: None,
                    end: None,
                    preempted: 0,
                    alloc_milli: 0,
                    tasks: Vec::new(),
                    queue: 0,
                })
                .collect(),
            by_id: HashMap::with_capacity(w.jobs.len()),
            events,
            devices,
            pending: BTreeSet::new(),
            rec,
            now: start,
            arrived: 0,
            arrived_demand: 0,
        })
    }

    /// Run to the end: until no event is left.
    ///
    /// # Errors
    /// The engine refuses a job (a duplicate name, a queue that is not a leaf, a MIG profile no
    /// model offers).
    pub fn run(mut self, progress: &mut dyn FnMut(Progress)) -> Result<RunResult> {
        let wall = Instant::now();
        let total = self.w.jobs.len() as u64;
        let mut step = 0u64;
        while let Some(&Reverse((t, _))) = self.events.peek() {
            self.rec
                .advance(t, &self.snap, &self.devices, &self.jobs, &self.pending);
            self.now = t;
            let mut changed = false;
            while let Some(&Reverse((t2, ev))) = self.events.peek() {
                if t2 != t {
                    break;
                }
                self.events.pop();
                changed |= self.apply(ev)?;
                // The fill experiment schedules each arrival on its own, as the paper does.
                if self.w.fill.is_some() && matches!(ev, Ev::Arrive(_)) {
                    break;
                }
            }
            if changed {
                self.cycle();
            }
            step += 1;
            if step.is_multiple_of(512) {
                progress(Progress {
                    arrived: self.arrived,
                    total,
                    now: self.now,
                });
            }
        }
        progress(Progress {
            arrived: self.arrived,
            total,
            now: self.now,
        });
        let end = self.now;
        self.rec
            .advance(end, &self.snap, &self.devices, &self.jobs, &self.pending);
        let wall_ms = wall.elapsed().as_secs_f64() * 1000.0;
        Ok(self
            .rec
            .finish(self.w, &self.profile, &self.jobs, &self.devices, wall_ms))
    }

    /// Apply one event; returns whether the engine has something new to look at.
    fn apply(&mut self, ev: Ev) -> Result<bool> {
        match ev {
            Ev::Arrive(i) => {
                let tj = &self.w.jobs[i as usize];
                let id = self.snap.submit(&tj.job, self.now)?;
                self.by_id.insert(id.0, i);
                let q = self.snap.job_queue(id).0;
                let r = &mut self.jobs[i as usize];
                r.state = State::Pending;
                r.id = Some(id);
                r.queue = q;
                self.set_pending(i, true);
                self.arrived += 1;
                self.arrived_demand += job_gpu_demand_milli(&tj.job);
                Ok(true)
            }
            Ev::Complete(i, generation) => {
                let r = &self.jobs[i as usize];
                if r.generation != generation || r.state != State::Running {
                    return Ok(false); // preempted or lost since: a stale completion
                }
                let id = r.id.ok_or_else(|| {
                    SimError::Config("completion of a job never submitted".into())
                })?;
                self.snap.complete(id)?;
                self.release(i);
                let r = &mut self.jobs[i as usize];
                r.state = State::Done;
                r.end = Some(self.now);
                self.rec.completed(self.now);
                Ok(true)
            }
            Ev::Node(n, ready) => {
                let was = self.devices.node_ready[n as usize];
                self.devices.node_ready[n as usize] = ready;
                let lost = self.snap.set_node_ready(NodeId(n), ready);
                if !ready {
                    for id in lost {
                        if let Some(&i) = self.by_id.get(&id.0) {
                            self.snap.requeue(id)?;
                            self.back_to_pending(i);
                            self.rec.node_requeues += 1;
                        }
                    }
                }
                self.rec.capacity_changed(self.devices.capacity());
                Ok(was != ready)
            }
        }
    }

    fn release(&mut self, i: u32) {
        let tasks = std::mem::take(&mut self.jobs[i as usize].tasks);
        for t in &tasks {
            let used = &mut self.devices.used;
            task_usage(&self.snap, t, |d, m| {
                used[d as usize] = used[d as usize].saturating_sub(m)
            });
        }
        let r = &mut self.jobs[i as usize];
        self.rec.alloc_delta(r.queue, -(r.alloc_milli as i64));
        r.alloc_milli = 0;
    }

    fn back_to_pending(&mut self, i: u32) {
        self.release(i);
        let r = &mut self.jobs[i as usize];
        r.generation += 1;
        r.state = State::Pending;
        self.set_pending(i, true);
    }

    fn set_pending(&mut self, i: u32, pending: bool) {
        let q = self.jobs[i as usize].queue;
        let changed = if pending {
            self.pending.insert(i)
        } else {
            self.pending.remove(&i)
        };
        if changed {
            self.rec.pending_delta(q, if pending { 1 } else { -1 });
        }
    }

    fn cycle(&mut self) {
        let t0 = Instant::now();
        let plan = schedule(&mut self.snap, &self.profile, self.now);
        let took = t0.elapsed();
        self.rec.cycle(took, &plan.stats);
        for p in &plan.preemptions {
            if let Some(&i) = self.by_id.get(&p.victim.0) {
                self.back_to_pending(i);
                self.jobs[i as usize].preempted += 1;
                self.rec.preempted(
                    self.jobs[i as usize].queue,
                    p.cause == PreemptCause::Reclaim,
                );
            }
        }
        for b in plan.binds {
            let Some(&i) = self.by_id.get(&b.job.0) else {
                continue;
            };
            let mut milli = 0u64;
            for t in &b.tasks {
                let used = &mut self.devices.used;
                task_usage(&self.snap, t, |d, m| {
                    used[d as usize] = (used[d as usize] + m).min(1000);
                    milli += m as u64;
                });
            }
            let now = self.now;
            let r = &mut self.jobs[i as usize];
            r.tasks.extend(b.tasks);
            r.alloc_milli += milli;
            let q = r.queue;
            if r.state == State::Pending {
                r.state = State::Running;
                r.first_start.get_or_insert(now);
                let generation = r.generation;
                self.set_pending(i, false);
                if let Some(rt) = self.w.jobs[i as usize].runtime_ms {
                    self.events
                        .push(Reverse((now + rt, Ev::Complete(i, generation))));
                }
            }
            self.rec.alloc_delta(q, milli as i64);
        }
        if self.w.fill.is_some() {
            // The paper's simulator drops a pod that does not fit when it arrives.
            let dropped: Vec<u32> = self.pending.iter().copied().collect();
            for i in dropped {
                if let Some(id) = self.jobs[i as usize].id {
                    let label = self.snap.reason(id).map_or("none", |r| r.label());
                    self.rec.dropped(label);
                    let _ = self.snap.cancel(id);
                }
                self.jobs[i as usize].state = State::Dropped;
                self.set_pending(i, false);
            }
            self.rec.fill_point(self.arrived_demand);
        }
    }
}

/// Replay `w` under `profile`.
///
/// # Errors
/// See [`Sim::new`] and [`Sim::run`].
pub fn replay(
    w: &Workload,
    profile: &Profile,
    opts: &Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunResult> {
    Sim::new(w, profile.clone(), opts)?.run(progress)
}

/// The smallest GPU ask of a job per task, for fragmentation: `(whole count, shared milli,
/// allowed model names)`; `None` for CPU-only or MIG jobs.
pub(crate) fn smallest_ask(job: &gantry_model::Job) -> Option<(u32, u32, &[String])> {
    let mut best: Option<(u32, u32, &[String])> = None;
    for g in &job.groups {
        let cand = match &g.demand.gpu {
            GpuDemand::Whole { count, models } => (*count, 0, models.as_slice()),
            GpuDemand::Shared { milli, models } => (0, *milli, models.as_slice()),
            _ => continue,
        };
        let key = |c: &(u32, u32, &[String])| if c.0 > 0 { c.0 * 1000 } else { c.1 };
        if best.as_ref().is_none_or(|b| key(&cand) < key(b)) {
            best = Some(cand);
        }
    }
    best
}
