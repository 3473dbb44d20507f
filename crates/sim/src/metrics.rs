//! What a replay measures, and the result it hands back.
//!
//! Definitions (all times on the virtual clock unless said otherwise):
//! - **wait**: first start − arrival (queueing delay; a preempted job's later waits are not
//!   added, its lost work shows in JCT); **JCT**: completion − arrival. Both over completed jobs;
//!   mean, p50 and p95 (nearest rank).
//! - **allocation (utilization)**: allocated GPU thousandths ÷ GPUs on ready nodes, integrated
//!   over time between events (exact, not sampled); a shared task counts its fraction, a MIG
//!   slice its compute share (`3g` = 3/7).
//! - **unallocated GPUs at saturation**: time-weighted mean of unallocated GPUs while at least
//!   one job waits (for the fill experiment: unallocated GPUs at the end).
//! - **fragmentation**: at each sample while GPU jobs wait, the free GPU capacity that none of
//!   the waiting jobs could use by GPU count alone — a node's free whole GPUs fewer than every
//!   waiting whole-GPU task of that model asks for (and no waiting shared task could take them),
//!   or a shared GPU's remaining fraction smaller than every waiting shared task asks for.
//!   Reported as the time-weighted mean over samples with waiting jobs.
//! - **share vs entitlement**: a queue's allocated GPUs ÷ capacity, time-weighted, against its
//!   nominal quota of whole-GPU flavors ÷ capacity (1.0 for an unlimited queue; MIG quota, written
//!   in slices, is left out of the entitlement). **Deprived time**: the share of time
//!   a queue had waiting jobs while holding less than its entitlement.
//! - **engine time**: wall time of each `schedule` call, measured by the driver.

use std::time::Duration;

use gantry_engine::{Profile, Snapshot};
use serde::Serialize;

use crate::driver::{smallest_ask, Devices, JobRec, State};
use crate::workload::Workload;

/// Mean, p50 and p95 of a set of durations, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stats {
    /// Values counted.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median (nearest rank).
    pub p50: f64,
    /// 95th percentile (nearest rank).
    pub p95: f64,
    /// Largest.
    pub max: f64,
}

impl Stats {
    /// From values in ms (sorted here).
    pub fn of_ms(v: &mut [u64]) -> Stats {
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_unstable();
        let rank = |p: f64| {
            let k = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
            v[k - 1] as f64 / 1000.0
        };
        Stats {
            count: v.len() as u64,
            mean: v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64 / 1000.0,
            p50: rank(0.5),
            p95: rank(0.95),
            max: v[v.len() - 1] as f64 / 1000.0,
        }
    }
}

/// Engine time per cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct EngineTime {
    /// Cycles run.
    pub cycles: u64,
    /// Sum, ms.
    pub total_ms: f64,
    /// Mean, µs.
    pub mean_us: f64,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Slowest, µs.
    pub max_us: f64,
    /// Jobs examined over all cycles.
    pub jobs_examined: u64,
    /// Jobs skipped by the engine's same-shape failure memo, over all cycles.
    pub memo_skips: u64,
    /// Cycles that looked only at newly arrived jobs.
    pub incremental_cycles: u64,
    /// Victim searches attempted.
    pub preemption_attempts: u64,
    /// Binds a cycle took back so in-quota work could have the room (never started).
    pub taken_back: u64,
}

/// One queue's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueResult {
    /// Leaf queue name.
    pub name: String,
    /// Nominal quota ÷ capacity (1.0 when unlimited).
    pub entitlement: f64,
    /// Time-weighted allocated share of capacity.
    pub mean_share: f64,
    /// Share of the replay's time it had waiting jobs and held less than its entitlement.
    pub deprived_time: f64,
    /// Jobs that arrived.
    pub jobs: u64,
    /// Waits of its completed jobs.
    pub wait: Stats,
    /// JCTs of its completed jobs.
    pub jct: Stats,
    /// Jobs of this queue evicted by preemption.
    pub preempted: u64,
}

/// The fill experiment's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FillResult {
    /// Arrivals stopped at this multiple of capacity.
    pub multiple: f64,
    /// Shuffle seed.
    pub seed: u64,
    /// GPUs in the cluster.
    pub capacity_gpus: f64,
    /// GPU demand that arrived.
    pub arrived_gpus: f64,
    /// GPUs allocated at the end.
    pub allocated_gpus: f64,
    /// Allocated ÷ capacity, %.
    pub allocated_pct_of_capacity: f64,
    /// Allocated ÷ arrived demand, %.
    pub allocated_pct_of_arrived: f64,
    /// Capacity − allocated, GPUs.
    pub unallocated_gpus: f64,
    /// Of the unallocated GPUs: devices with nothing on them (on ready nodes).
    pub unallocated_whole_gpus: f64,
    /// Of the unallocated GPUs: the remaining fractions of partly shared devices.
    pub unallocated_in_shared_gpus: f64,
    /// Pods that did not fit when they arrived (dropped).
    pub dropped_pods: u64,
    /// Why the dropped pods did not fit (the engine's reason labels).
    pub dropped_reasons: std::collections::BTreeMap<String, u64>,
    /// Allocated % of capacity at arrived demand = 2%, 4%, … of capacity (up to the multiple).
    pub curve: Vec<(f64, f64)>,
}

/// Time series kept for plots.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Series {
    /// Sample times, hours since the first arrival.
    pub hours: Vec<f64>,
    /// Allocated ÷ capacity.
    pub allocation: Vec<f64>,
    /// Jobs waiting.
    pub pending: Vec<u64>,
    /// Fragmented GPUs (see the module docs).
    pub fragmented_gpus: Vec<f64>,
    /// Per leaf queue (in [`RunResult::queues`] order): share of capacity.
    pub queue_share: Vec<Vec<f64>>,
}

/// Everything one replay measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// Workload name.
    pub workload: String,
    /// Engine profile.
    pub policy: String,
    /// Jobs in the workload.
    pub jobs: u64,
    /// Jobs that completed.
    pub completed: u64,
    /// Jobs still waiting or running when events ran out (they never fit, or never leave).
    pub unfinished: u64,
    /// Wait, seconds.
    pub wait: Stats,
    /// JCT, seconds.
    pub jct: Stats,
    /// Time-weighted allocated share of capacity.
    pub utilization: f64,
    /// Mean unallocated GPUs while jobs wait (fill: at the end).
    pub unallocated_gpus_at_saturation: f64,
    /// Mean fragmented GPUs over samples with waiting GPU jobs.
    pub fragmented_gpus: f64,
    /// Share of time some job was waiting.
    pub saturated_time: f64,
    /// GPUs at the start.
    pub capacity_gpus: u64,
    /// Evictions by priority.
    pub preemptions_priority: u64,
    /// Evictions reclaiming borrowed quota.
    pub preemptions_reclaim: u64,
    /// Jobs requeued because their node failed.
    pub node_requeues: u64,
    /// First arrival to last event, hours.
    pub makespan_hours: f64,
    /// Engine time per cycle.
    pub engine: EngineTime,
    /// Wall time of the whole replay, ms.
    pub wall_ms: f64,
    /// Per leaf queue.
    pub queues: Vec<QueueResult>,
    /// Fill experiment, when run.
    pub fill: Option<FillResult>,
    /// Time series.
    pub series: Series,
    /// JCT of every completed job, seconds (for CDF plots; not serialised).
    #[serde(skip)]
    pub jct_samples: Vec<f64>,
    /// Every job's outcome, in arrival order (written as CSV in reports; not serialised).
    #[serde(skip)]
    pub outcomes: Vec<JobOutcome>,
}

/// What happened to one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobOutcome {
    /// Job name.
    pub name: String,
    /// Leaf queue.
    pub queue: String,
    /// GPU demand, thousandths.
    pub gpu_milli: u64,
    /// Arrival, ms.
    pub arrival_ms: u64,
    /// First start, ms.
    pub start_ms: Option<u64>,
    /// Completion, ms.
    pub end_ms: Option<u64>,
    /// Times evicted by preemption.
    pub preempted: u32,
    /// `done`, `waiting`, `running`, `dropped` or `not-arrived` when the replay ended.
    pub state: &'static str,
}

/// Keep the even-indexed points.
fn thin<T: Copy>(v: &mut Vec<T>) {
    let mut i = 0;
    v.retain(|_| {
        i += 1;
        i % 2 == 1
    });
}

/// Accumulates measurements during a replay.
#[derive(Debug)]
pub(crate) struct Recorder {
    start: u64,
    interval: u64,
    next_sample: u64,
    last_t: u64,
    alloc: i64,
    capacity: u64,
    capacity0: u64,
    /// Leaf queues: (tree index, name, entitlement in thousandths).
    leaves: Vec<(u32, String, u64)>,
    leaf_of: Vec<Option<usize>>,
    queue_alloc: Vec<i64>,
    queue_pending: Vec<i64>,
    pending_total: i64,
    share_int: Vec<f64>,
    deprived: Vec<f64>,
    util_int: f64,
    cap_int: f64,
    sat_time: f64,
    unalloc_sat_int: f64,
    frag_sum: f64,
    frag_n: u64,
    max_samples: usize,
    cycle_ns: Vec<u64>,
    examined: u64,
    memo_skips: u64,
    incremental: u64,
    preemption_attempts: u64,
    taken_back: u64,
    preempt_priority: u64,
    preempt_reclaim: u64,
    queue_preempted: Vec<u64>,
    pub node_requeues: u64,
    series: Series,
    fill_points: Vec<(u64, u64)>,
    drop_reasons: std::collections::BTreeMap<String, u64>,
    /// Per job: smallest GPU ask (whole count, shared milli, model mask).
    asks: Vec<Option<(u32, u32, u64)>>,
}

impl Recorder {
    pub fn new(
        w: &Workload,
        snap: &Snapshot,
        devices: &Devices,
        start: u64,
        span: u64,
        samples: usize,
    ) -> Recorder {
        let capacity = devices.capacity();
        let mut leaves = Vec::new();
        let mut leaf_of = vec![None; snap.queue_count()];
        for (i, q) in w.queues.queues.iter().enumerate() {
            if !q.is_leaf() {
                continue;
            }
            // Whole-GPU flavors only: MIG quota is in slices, not GPUs.
            let nominal: u64 = q
                .quotas
                .iter()
                .filter(|(f, _)| !f.contains('/'))
                .map(|(_, x)| x.nominal)
                .fold(0u64, |a, b| a.saturating_add(b));
            let ent = nominal.min(capacity * 1000);
            leaf_of[i] = Some(leaves.len());
            leaves.push((i as u32, q.name.clone(), ent));
        }
        let nleaves = leaves.len();
        let asks = w
            .jobs
            .iter()
            .map(|j| {
                smallest_ask(&j.job).map(|(c, m, models)| {
                    let mask = if models.is_empty() {
                        u64::MAX
                    } else {
                        models
                            .iter()
                            .filter_map(|n| devices.model_index(n))
                            .fold(0u64, |a, i| a | (1u64 << (i % 64)))
                    };
                    (c, m, mask)
                })
            })
            .collect();
        let interval = (span / samples.max(1) as u64).max(1000);
        Recorder {
            start,
            interval,
            next_sample: start,
            last_t: start,
            alloc: 0,
            capacity,
            capacity0: capacity,
            leaves,
            leaf_of,
            queue_alloc: vec![0; snap.queue_count()],
            queue_pending: vec![0; snap.queue_count()],
            pending_total: 0,
            share_int: vec![0.0; nleaves],
            deprived: vec![0.0; nleaves],
            util_int: 0.0,
            cap_int: 0.0,
            sat_time: 0.0,
            unalloc_sat_int: 0.0,
            frag_sum: 0.0,
            frag_n: 0,
            max_samples: samples.max(2),
            cycle_ns: Vec::new(),
            examined: 0,
            memo_skips: 0,
            incremental: 0,
            preemption_attempts: 0,
            taken_back: 0,
            preempt_priority: 0,
            preempt_reclaim: 0,
            queue_preempted: vec![0; snap.queue_count()],
            node_requeues: 0,
            series: Series {
                queue_share: vec![Vec::new(); nleaves],
                ..Series::default()
            },
            fill_points: Vec::new(),
            drop_reasons: Default::default(),
            asks,
        }
    }

    pub fn alloc_delta(&mut self, queue: u32, delta: i64) {
        self.alloc += delta;
        if let Some(q) = self.queue_alloc.get_mut(queue as usize) {
            *q += delta;
        }
    }

    pub fn pending_delta(&mut self, queue: u32, delta: i64) {
        self.pending_total += delta;
        if let Some(q) = self.queue_pending.get_mut(queue as usize) {
            *q += delta;
        }
    }

    pub fn capacity_changed(&mut self, gpus: u64) {
        self.capacity = gpus;
    }

    pub fn completed(&mut self, _now: u64) {}

    pub fn cycle(&mut self, took: Duration, stats: &gantry_engine::CycleStats) {
        self.cycle_ns.push(took.as_nanos() as u64);
        self.examined += stats.examined;
        self.memo_skips += stats.memo_skips;
        self.incremental += stats.incremental as u64;
        self.preemption_attempts += stats.preemption_attempts;
        self.taken_back += stats.unadmitted;
    }

    pub fn preempted(&mut self, queue: u32, reclaim: bool) {
        if reclaim {
            self.preempt_reclaim += 1;
        } else {
            self.preempt_priority += 1;
        }
        if let Some(q) = self.queue_preempted.get_mut(queue as usize) {
            *q += 1;
        }
    }

    pub fn dropped(&mut self, label: &str) {
        *self.drop_reasons.entry(label.to_string()).or_default() += 1;
    }

    pub fn fill_point(&mut self, arrived_demand: u64) {
        self.fill_points
            .push((arrived_demand, self.alloc.max(0) as u64));
    }

    /// The state held from the last event until `t`: integrate it and take due samples.
    pub fn advance(
        &mut self,
        t: u64,
        snap: &Snapshot,
        devices: &Devices,
        jobs: &[JobRec],
        pending: &std::collections::BTreeSet<u32>,
    ) {
        let _ = snap;
        while self.next_sample <= t {
            self.sample(self.next_sample, devices, jobs, pending);
            self.next_sample += self.interval;
        }
        let dt = t.saturating_sub(self.last_t) as f64;
        if dt > 0.0 {
            let cap = self.capacity as f64 * 1000.0;
            let alloc = self.alloc.max(0) as f64;
            self.util_int += alloc * dt;
            self.cap_int += cap * dt;
            if self.pending_total > 0 {
                self.sat_time += dt;
                self.unalloc_sat_int += (cap - alloc).max(0.0) * dt;
            }
            for (k, (q, _, ent)) in self.leaves.iter().enumerate() {
                let a = self.queue_alloc[*q as usize].max(0);
                self.share_int[k] += a as f64 * dt;
                if self.queue_pending[*q as usize] > 0 && (a as u64) < *ent {
                    self.deprived[k] += dt;
                }
            }
        }
        self.last_t = self.last_t.max(t);
    }

    fn sample(
        &mut self,
        t: u64,
        devices: &Devices,
        jobs: &[JobRec],
        pending: &std::collections::BTreeSet<u32>,
    ) {
        let cap = (self.capacity as f64 * 1000.0).max(1.0);
        self.series
            .hours
            .push((t - self.start) as f64 / 3_600_000.0);
        self.series.allocation.push(self.alloc.max(0) as f64 / cap);
        self.series.pending.push(self.pending_total.max(0) as u64);
        for (k, (q, _, _)) in self.leaves.iter().enumerate() {
            self.series.queue_share[k].push(self.queue_alloc[*q as usize].max(0) as f64 / cap);
        }
        let frag = self.fragmented(devices, jobs, pending);
        if let Some(f) = frag {
            // Weighted by the interval, which doubles when the series is thinned.
            self.frag_sum += f * self.interval as f64;
            self.frag_n += self.interval;
        }
        self.series.fragmented_gpus.push(frag.unwrap_or(0.0));
        // Waiting can make a replay run far past its no-wait length: keep the series bounded
        // by dropping every other point and sampling half as often.
        if self.series.hours.len() >= 2 * self.max_samples {
            let s = &mut self.series;
            thin(&mut s.hours);
            thin(&mut s.allocation);
            thin(&mut s.pending);
            thin(&mut s.fragmented_gpus);
            s.queue_share.iter_mut().for_each(thin);
            self.interval *= 2;
        }
    }

    /// Free GPUs no waiting job could use (see the module docs); `None` when no GPU job waits.
    fn fragmented(
        &self,
        devices: &Devices,
        jobs: &[JobRec],
        pending: &std::collections::BTreeSet<u32>,
    ) -> Option<f64> {
        let nm = devices.model_names.len().min(64);
        let mut min_whole = vec![u32::MAX; nm];
        let mut min_shared = vec![u32::MAX; nm];
        let mut any = false;
        for &i in pending {
            if jobs[i as usize].state != State::Pending {
                continue;
            }
            let Some((c, m, mask)) = self.asks[i as usize] else {
                continue;
            };
            any = true;
            for (k, (w, s)) in min_whole.iter_mut().zip(min_shared.iter_mut()).enumerate() {
                if mask & (1u64 << k) == 0 {
                    continue;
                }
                if c > 0 {
                    *w = (*w).min(c);
                } else {
                    *s = (*s).min(m);
                }
            }
        }
        if !any {
            return None;
        }
        let mut frag = 0u64;
        for (n, &(first, count)) in devices.node_devs.iter().enumerate() {
            if !devices.node_ready[n] {
                continue;
            }
            let range = first as usize..(first + count) as usize;
            // Free whole devices per model on this node.
            let mut free = [0u32; 64];
            for d in range.clone() {
                if !devices.mig[d] && devices.used[d] == 0 {
                    free[devices.model[d] as usize % 64] += 1;
                }
            }
            for d in range {
                if devices.mig[d] {
                    continue;
                }
                let m = devices.model[d] as usize % 64;
                let used = devices.used[d] as u32;
                if used == 0 {
                    let usable = min_whole[m] <= free[m] || min_shared[m] <= 1000;
                    if !usable {
                        frag += 1000;
                    }
                } else if used < 1000 && min_shared[m] > 1000 - used {
                    frag += (1000 - used) as u64;
                }
            }
        }
        Some(frag as f64 / 1000.0)
    }

    pub fn finish(
        mut self,
        w: &Workload,
        profile: &Profile,
        jobs: &[JobRec],
        devices: &Devices,
        wall_ms: f64,
    ) -> RunResult {
        let mut waits = Vec::new();
        let mut jcts = Vec::new();
        let nleaves = self.leaves.len();
        let mut q_waits = vec![Vec::new(); nleaves];
        let mut q_jcts = vec![Vec::new(); nleaves];
        let mut q_jobs = vec![0u64; nleaves];
        let (mut completed, mut unfinished, mut dropped) = (0u64, 0u64, 0u64);
        for (tj, r) in w.jobs.iter().zip(jobs) {
            let leaf = self.leaf_of.get(r.queue as usize).copied().flatten();
            if r.state != State::NotArrived {
                if let Some(k) = leaf {
                    q_jobs[k] += 1;
                }
            }
            match r.state {
                State::Done => {
                    completed += 1;
                    let (Some(s), Some(e)) = (r.first_start, r.end) else {
                        continue;
                    };
                    let wait = s - tj.arrival_ms;
                    let jct = e - tj.arrival_ms;
                    waits.push(wait);
                    jcts.push(jct);
                    if let Some(k) = leaf {
                        q_waits[k].push(wait);
                        q_jcts[k].push(jct);
                    }
                }
                State::Dropped => dropped += 1,
                State::Pending | State::Running | State::NotArrived => unfinished += 1,
            }
        }
        let span = self.last_t.saturating_sub(self.start) as f64;
        let cap0 = self.capacity0 as f64;
        let queues = self
            .leaves
            .iter()
            .enumerate()
            .map(|(k, (q, name, ent))| QueueResult {
                name: name.clone(),
                entitlement: *ent as f64 / (cap0 * 1000.0).max(1.0),
                mean_share: if span > 0.0 {
                    self.share_int[k] / span / (cap0 * 1000.0).max(1.0)
                } else {
                    0.0
                },
                deprived_time: if span > 0.0 {
                    self.deprived[k] / span
                } else {
                    0.0
                },
                jobs: q_jobs[k],
                wait: Stats::of_ms(&mut q_waits[k]),
                jct: Stats::of_ms(&mut q_jcts[k]),
                preempted: self.queue_preempted[*q as usize],
            })
            .collect();
        let (mut whole_free, mut shared_left) = (0u64, 0u64);
        for (d, &used) in devices.used.iter().enumerate() {
            if devices.mig[d] || !devices.node_ready[devices.node[d] as usize] {
                continue;
            }
            match used {
                0 => whole_free += 1,
                u if u < 1000 => shared_left += 1000 - u as u64,
                _ => {}
            }
        }
        let fill = w.fill.map(|f| {
            let capm = cap0 * 1000.0;
            let (arrived, alloc) = self.fill_points.last().copied().unwrap_or((0, 0));
            let mut curve = Vec::new();
            let mut step = 1u64;
            for &(a, al) in &self.fill_points {
                while a as f64 >= step as f64 * 0.02 * capm {
                    curve.push((step as f64 * 2.0, al as f64 / capm * 100.0));
                    step += 1;
                }
            }
            FillResult {
                multiple: f.multiple,
                seed: f.seed,
                capacity_gpus: cap0,
                arrived_gpus: arrived as f64 / 1000.0,
                allocated_gpus: alloc as f64 / 1000.0,
                allocated_pct_of_capacity: alloc as f64 / capm * 100.0,
                allocated_pct_of_arrived: if arrived > 0 {
                    alloc as f64 / arrived as f64 * 100.0
                } else {
                    0.0
                },
                unallocated_gpus: cap0 - alloc as f64 / 1000.0,
                unallocated_whole_gpus: whole_free as f64,
                unallocated_in_shared_gpus: shared_left as f64 / 1000.0,
                dropped_pods: dropped,
                dropped_reasons: std::mem::take(&mut self.drop_reasons),
                curve,
            }
        });
        let mut ns = std::mem::take(&mut self.cycle_ns);
        ns.sort_unstable();
        let pick = |p: f64| -> f64 {
            if ns.is_empty() {
                return 0.0;
            }
            let k = ((p * ns.len() as f64).ceil() as usize).clamp(1, ns.len());
            ns[k - 1] as f64 / 1000.0
        };
        let total_ns: u64 = ns.iter().sum();
        let engine = EngineTime {
            cycles: ns.len() as u64,
            total_ms: total_ns as f64 / 1e6,
            mean_us: if ns.is_empty() {
                0.0
            } else {
                total_ns as f64 / ns.len() as f64 / 1000.0
            },
            p50_us: pick(0.5),
            p99_us: pick(0.99),
            max_us: pick(1.0),
            jobs_examined: self.examined,
            memo_skips: self.memo_skips,
            incremental_cycles: self.incremental,
            preemption_attempts: self.preemption_attempts,
            taken_back: self.taken_back,
        };
        let unalloc = match &fill {
            Some(f) => f.unallocated_gpus,
            None if self.sat_time > 0.0 => self.unalloc_sat_int / self.sat_time / 1000.0,
            None => 0.0,
        };
        let jct_samples = jcts.iter().map(|&x| x as f64 / 1000.0).collect();
        let outcomes = w
            .jobs
            .iter()
            .zip(jobs)
            .map(|(tj, r)| JobOutcome {
                name: tj.job.name.clone(),
                queue: tj.job.queue.clone(),
                gpu_milli: crate::workload::job_gpu_demand_milli(&tj.job),
                arrival_ms: tj.arrival_ms,
                start_ms: r.first_start,
                end_ms: r.end,
                preempted: r.preempted,
                state: match r.state {
                    State::Done => "done",
                    State::Pending => "waiting",
                    State::Running => "running",
                    State::Dropped => "dropped",
                    State::NotArrived => "not-arrived",
                },
            })
            .collect();
        RunResult {
            workload: w.name.clone(),
            policy: profile.name.clone(),
            jobs: w.jobs.len() as u64,
            completed,
            unfinished,
            wait: Stats::of_ms(&mut waits),
            jct: Stats::of_ms(&mut jcts),
            utilization: match &fill {
                Some(f) => f.allocated_pct_of_capacity / 100.0,
                None if self.cap_int > 0.0 => self.util_int / self.cap_int,
                None => 0.0,
            },
            unallocated_gpus_at_saturation: unalloc,
            fragmented_gpus: if self.frag_n > 0 {
                self.frag_sum / self.frag_n as f64
            } else {
                0.0
            },
            saturated_time: if span > 0.0 {
                self.sat_time / span
            } else {
                0.0
            },
            capacity_gpus: self.capacity0,
            preemptions_priority: self.preempt_priority,
            preemptions_reclaim: self.preempt_reclaim,
            node_requeues: self.node_requeues,
            makespan_hours: span / 3_600_000.0,
            engine,
            wall_ms,
            queues,
            fill,
            series: self.series,
            jct_samples,
            outcomes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=20).map(|x| x * 1000).collect();
        let s = Stats::of_ms(&mut v);
        assert_eq!(s.count, 20);
        assert_eq!(s.mean, 10.5);
        assert_eq!(s.p50, 10.0);
        assert_eq!(s.p95, 19.0);
        assert_eq!(s.max, 20.0);
        assert_eq!(Stats::of_ms(&mut []), Stats::default());
    }
}
