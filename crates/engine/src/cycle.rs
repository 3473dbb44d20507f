//! One scheduling cycle: order queues, admit as many jobs per queue as fit, preempt, reserve.
//!
//! The cycle pops the queue that should go next (lowest weighted dominant share, or earliest
//! head job under `Ordering::Submit`), walks its pending jobs in (priority, submit time) order
//! and admits every one that fits — there is no one-head-per-queue-per-cycle limit. A queue goes
//! back on the heap with its new share after each admission.
//!
//! Cost control, so a cycle over 100,000 pending jobs stays in milliseconds:
//! - a failure memo: jobs of the same shape (same demands, counts, constraints) fail the same way
//!   within a cycle, because capacity and quota only shrink as the cycle admits; capacity misses
//!   are remembered per shape, quota misses per (queue, shape);
//! - incremental cycles: when nothing was freed since the last cycle (no completion, eviction,
//!   recovery), old pending jobs still cannot fit, so only jobs that arrived since are examined.

use crate::fast::{HashMap, HashSet};
use gantry_model::JobKind;
use std::cmp::Reverse;
use std::ops::Bound;

use priority_queue::PriorityQueue;

use crate::explain::Reason;
use crate::place::{Reservations, Tx};
use crate::plan::{Bind, Plan};
use crate::profile::{Ordering, Profile};
use crate::snapshot::{JobId, JobPhase, PendingKey, Snapshot, Time, NONE};

/// Run one cycle at `now`. The snapshot ends up with the plan applied (binds become running
/// tasks, victims are back in their queues); the plan says what the driver must do.
///
/// # Guarantees
/// - Deterministic: the same snapshot, profile and `now` give the same plan.
/// - Every gang is placed whole (at least `min_available` tasks) or not at all.
/// - No device or MIG memory slice is handed out twice; no queue exceeds what its quota,
///   borrowing and lending limits allow.
pub fn schedule(s: &mut Snapshot, profile: &Profile, now: Time) -> Plan {
    let mut c = Cycle::new(s, profile, now);
    c.run();
    c.plan
}

enum Source {
    /// All pending jobs after `last`.
    Full(Option<PendingKey>),
    /// Only these (fresh) jobs, in order.
    Fresh(Vec<PendingKey>, usize),
}

pub(crate) struct Cycle<'a> {
    pub s: &'a mut Snapshot,
    pub p: &'a Profile,
    pub now: Time,
    pub plan: Plan,
    pub reservations: Reservations,
    /// (queue or NONE, shape) → (smallest expected end that failed, highest priority tried, reason)
    memo: HashMap<(u32, u32), (Time, i32, Reason)>,
    reserved_queues: HashSet<u32>,
    pub preempt_attempts: u32,
    /// Jobs this cycle admitted (or grew): never victims in the same cycle — a plan must not
    /// start a job and evict it at once.
    pub admitted: HashSet<u32>,
    /// Of those, the jobs this cycle started (pending before it): a bind the cycle may still
    /// take back.
    pub started: HashSet<u32>,
    /// Jobs this cycle admitted by evicting others: never taken back (their victims' evictions
    /// are in the plan).
    pub preemptors: HashSet<u32>,
    /// A victim search was cut short (same-cycle admissions, or the attempt budget): the next
    /// cycle must look at the jobs that failed again, even if it is incremental.
    pub retry_next: bool,
    /// Jobs that failed this cycle, one per (queue, priority), for the end-of-cycle check
    /// whether one of them could preempt a job admitted in this cycle.
    failed: HashMap<(u32, i32), u32>,
    /// Lowest priority among preemptible running jobs at the start of the cycle: a job at or
    /// below it can only preempt by reclaiming quota, which rules most searches out in O(1).
    pub lowest_victim_priority: Option<i32>,
}

impl<'a> Cycle<'a> {
    fn new(s: &'a mut Snapshot, p: &'a Profile, now: Time) -> Self {
        Cycle {
            s,
            p,
            now,
            plan: Plan {
                now,
                ..Plan::default()
            },
            reservations: Reservations::default(),
            memo: HashMap::default(),
            reserved_queues: HashSet::default(),
            preempt_attempts: 0,
            admitted: HashSet::default(),
            started: HashSet::default(),
            preemptors: HashSet::default(),
            retry_next: false,
            failed: HashMap::default(),
            lowest_victim_priority: None,
        }
    }

    fn update_history(&mut self) {
        let Some(h) = self.p.history else { return };
        let last = self.s.last_history_update.replace(self.now);
        let Some(last) = last else { return };
        let dt = self.now.saturating_sub(last) as f64;
        if dt <= 0.0 || h.half_life_ms == 0 {
            return;
        }
        let decay = 0.5f64.powf(dt / h.half_life_ms as f64);
        for q in 0..self.s.queues.len() {
            for f in 0..self.s.quota.flavors() {
                let u = self.s.quota.usage(q as u32, f as u32) as f64;
                let hist = &mut self.s.queues[q].history[f];
                *hist = *hist * decay + u * (1.0 - decay);
            }
        }
    }

    /// Weighted dominant share of a queue: max over flavors of usage / entitlement, divided by
    /// the weight. Entitlement is the nominal quota, or one unit where there is none.
    pub(crate) fn share(&self, q: u32) -> f64 {
        let w = self.p.history.map_or(0.0, |h| h.weight.clamp(0.0, 1.0));
        let mut d: f64 = 0.0;
        for f in 0..self.s.quota.flavors() {
            let u = self.s.quota.usage(q, f as u32) as f64;
            let u = if w > 0.0 {
                (1.0 - w) * u + w * self.s.queues[q as usize].history[f]
            } else {
                u
            };
            if u <= 0.0 {
                continue;
            }
            let nominal = self.s.quota.nominal(q, f as u32);
            let e = if nominal > 0 { nominal as f64 } else { 1000.0 };
            d = d.max(u / e);
        }
        d / self.s.quota.weight(q)
    }

    fn peek(&self, q: u32, src: &Source) -> Option<PendingKey> {
        match src {
            Source::Full(last) => {
                let set = &self.s.queues[q as usize].pending;
                match last {
                    None => set.iter().next().copied(),
                    Some(k) => set
                        .range((Bound::Excluded(*k), Bound::Unbounded))
                        .next()
                        .copied(),
                }
            }
            Source::Fresh(v, i) => v.get(*i).copied(),
        }
    }

    fn advance(src: &mut Source, key: PendingKey) {
        match src {
            Source::Full(last) => *last = Some(key),
            Source::Fresh(_, i) => *i += 1,
        }
    }

    fn heap_key(&self, q: u32, src: &Source) -> Option<Reverse<(u64, u64, u32)>> {
        let head = self.peek(q, src)?;
        Some(Reverse(match self.p.ordering {
            Ordering::FairShare => (
                (self.share(q) * 1e9).min(u64::MAX as f64 / 2.0) as u64,
                0,
                q,
            ),
            Ordering::Submit => (head.1, head.2 as u64, q),
        }))
    }

    fn run(&mut self) {
        self.update_history();
        self.s.workload.refresh();
        let freed = std::mem::take(&mut self.s.freed) | self.s.protection_ended(self.now);
        let fresh = std::mem::take(&mut self.s.fresh);
        // A reservation whose start has passed (its blockers overran their expected runtime)
        // would hold its devices against everyone: recompute everything instead.
        let stale_reservation = self
            .s
            .reservations
            .devices
            .values()
            .any(|&(start, _)| start <= self.now);
        let incremental = !freed
            && !stale_reservation
            && self.s.last_cycle_complete
            && !self.p.head_of_line_blocking;
        self.plan.stats.incremental = incremental;
        if incremental {
            // Reservations stay as they were: nothing they depend on has been freed. Their
            // queues keep their one reservation each, so an incremental cycle cannot pile more on.
            self.reservations = std::mem::take(&mut self.s.reservations);
            for &(_, holder) in self.reservations.devices.values() {
                self.reserved_queues
                    .insert(self.s.jobs[holder as usize].queue);
            }
        }
        self.s.blocked_head = None;
        if self.p.preemption {
            self.lowest_victim_priority = self.s.victim_priorities.keys().next().copied();
        }
        let nq = self.s.quota.len();
        let mut sources: Vec<Source> = Vec::with_capacity(nq);
        if incremental {
            let mut per_queue: Vec<Vec<PendingKey>> = vec![Vec::new(); nq];
            for j in fresh {
                let job = &self.s.jobs[j as usize];
                if job.has_unplaced() {
                    per_queue[job.queue as usize].push(job.order_key(j));
                }
            }
            for mut v in per_queue {
                v.sort_unstable();
                v.dedup();
                sources.push(Source::Fresh(v, 0));
            }
        } else {
            sources.extend((0..nq).map(|_| Source::Full(None)));
        }
        let complete = self.drain(&mut sources);
        self.s.last_cycle_complete = complete;
        if self.retry_next || (self.p.preemption && self.failed_could_preempt_admitted()) {
            // Hand the first failed job of each (queue, priority) to the next cycle as if it
            // had just arrived: an incremental cycle then retries the victim search for them
            // without re-examining every pending job.
            let mut again: Vec<u32> = self.failed.values().copied().collect();
            again.sort_unstable();
            self.s.fresh.extend(again);
        }
        self.s.reservations = std::mem::take(&mut self.reservations);
        let mut res: Vec<_> = self.s.reservations.by_job().into_iter().collect();
        res.sort_by_key(|r| r.job);
        self.plan.reservations = res;
    }

    /// Hand every queue's jobs from `sources` to [`Cycle::consider`] in queue order. Returns
    /// false when strict FIFO stopped at a job that did not fit.
    fn drain(&mut self, sources: &mut [Source]) -> bool {
        let nq = sources.len();
        let mut heap: PriorityQueue<u32, Reverse<(u64, u64, u32)>> = PriorityQueue::new();
        for q in 0..nq as u32 {
            if let Some(k) = self.heap_key(q, &sources[q as usize]) {
                heap.push(q, k);
            }
        }
        while let Some((q, _)) = heap.pop() {
            if let Some(reason) = self.queue_exhausted(q) {
                // Nothing any of its jobs could use is left: skip them all at once.
                self.s.queues[q as usize].skipped = Some(reason);
                self.plan.stats.queues_skipped += 1;
                continue;
            }
            self.s.queues[q as usize].skipped = None;
            if self.skip_by_shapes(q) {
                self.plan.stats.queues_skipped += 1;
                continue;
            }
            self.s.queues[q as usize].shape_skip.clear();
            while let Some(key) = self.peek(q, &sources[q as usize]) {
                Self::advance(&mut sources[q as usize], key);
                let job = key.2;
                if !self.s.jobs[job as usize].has_unplaced() {
                    continue;
                }
                let memo_before = self.memo.len();
                let admitted = self.consider(job);
                if !admitted && self.p.head_of_line_blocking {
                    self.s.blocked_head = Some(job);
                    return false;
                }
                // A new failure memo may have closed the last open shape of this queue.
                if !admitted && self.memo.len() > memo_before && self.skip_by_shapes(q) {
                    break;
                }
                if admitted || self.p.ordering == Ordering::Submit {
                    if let Some(k) = self.heap_key(q, &sources[q as usize]) {
                        heap.push(q, k);
                    }
                    break;
                }
            }
        }
        true
    }

    /// A reason when no pending job of queue `q` can start this cycle, checked without looking
    /// at the jobs: for every flavor they may use, the queue has no quota left (and cannot
    /// reclaim any), or — for whole GPUs — no node has a free GPU of that model; and none of its
    /// jobs outranks a preemptible running job.
    fn queue_exhausted(&self, q: u32) -> Option<Reason> {
        if self.p.head_of_line_blocking {
            return None;
        }
        let qs = &self.s.queues[q as usize];
        if qs.unmaskable || (qs.whole_flavors | qs.other_flavors) == 0 {
            return None;
        }
        let top = qs.pending.first()?.0 .0;
        if self.p.preemption && self.lowest_victim_priority.is_some_and(|low| top > low) {
            return None;
        }
        let mut reason = None;
        let mut bits = qs.whole_flavors | qs.other_flavors;
        while bits != 0 {
            let f = bits.trailing_zeros();
            bits &= bits - 1;
            let quota = &self.s.quota;
            if !quota.may_use(q, f) {
                return None; // its jobs get their own reason (no quota for the flavor)
            }
            if self.p.preemption
                && quota.is_managed(q, f)
                && quota.usage(q, f) < quota.nominal(q, f)
            {
                return None; // it may reclaim
            }
            if quota.available(q, f) == 0 {
                reason.get_or_insert(Reason::Quota {
                    queue: q,
                    flavor: f,
                    used: quota.usage(q, f),
                    nominal: quota.nominal(q, f),
                    requested: 0,
                    available: 0,
                    cohort: quota.cohort_available(q, f),
                });
                continue;
            }
            let whole_only = qs.other_flavors & (1 << f) == 0;
            let by_count = &self.s.models[f as usize].nodes.by_count;
            if whole_only && by_count.iter().skip(1).all(Vec::is_empty) {
                reason.get_or_insert(Reason::NoFreeGpu { flavor: f });
                continue;
            }
            return None;
        }
        reason
    }

    /// The memo entry that rules out every waiting job of `shape` in queue `q`, if one does.
    fn shape_blocked(&self, q: u32, shape: u32, st: &crate::snapshot::ShapeStat) -> Option<Reason> {
        let end = self.now.saturating_add(st.min_runtime);
        [(NONE, shape), (q, shape)].iter().find_map(|k| {
            let &(failed_end, tried, reason) = self.memo.get(k)?;
            let preempt = self.p.preemption && st.max_priority > tried;
            (end >= failed_end && !preempt).then_some(reason)
        })
    }

    /// Skip queue `q` when a job of every shape it holds has already failed this cycle (and
    /// none of its jobs is partly placed). Records each shape's reason for explanations.
    fn skip_by_shapes(&mut self, q: u32) -> bool {
        if self.memo.is_empty() || self.p.head_of_line_blocking {
            return false;
        }
        let qs = &self.s.queues[q as usize];
        if qs.partial > 0 || qs.shapes.is_empty() {
            return false;
        }
        let mut reasons =
            crate::fast::HashMap::with_capacity_and_hasher(qs.shapes.len(), Default::default());
        for (&shape, st) in &qs.shapes {
            match self.shape_blocked(q, shape, st) {
                Some(r) => {
                    reasons.insert(shape, r);
                }
                None => return false,
            }
        }
        self.s.queues[q as usize].shape_skip = reasons;
        true
    }

    /// Look at one job (see [`Cycle::consider_once`]). An inference service scaled up may place
    /// part of its new replicas where room is free and need the rest from lower-priority work:
    /// it is looked at again while that places more replicas, so the rest may preempt.
    fn consider(&mut self, job: u32) -> bool {
        let admitted = self.consider_once(job);
        if admitted && self.s.jobs[job as usize].kind == JobKind::Inference && self.p.preemption {
            loop {
                let j = &self.s.jobs[job as usize];
                if !j.has_unplaced() {
                    break;
                }
                let before = j.running_tasks();
                if !self.consider_once(job) || self.s.jobs[job as usize].running_tasks() == before {
                    break;
                }
            }
        }
        admitted
    }

    /// Look at one job: memo, placement, then preemption or a reservation. Returns whether it
    /// was admitted.
    fn consider_once(&mut self, job: u32) -> bool {
        self.plan.stats.examined += 1;
        let (queue, shape, priority, end, fresh_gang) = {
            let j = &self.s.jobs[job as usize];
            (
                j.queue,
                j.shape,
                j.priority,
                j.expected_end(self.now),
                j.running_tasks() == 0,
            )
        };
        if fresh_gang {
            for key in [(NONE, shape), (queue, shape)] {
                if let Some(&(failed_end, tried_prio, reason)) = self.memo.get(&key) {
                    let preempt_possible = self.p.preemption && priority > tried_prio;
                    if end >= failed_end && !preempt_possible {
                        self.plan.stats.memo_skips += 1;
                        self.set_reason(job, Some(reason), None);
                        return false;
                    }
                }
            }
        }
        let mut tx = Tx::default();
        let result = self.place(job, &mut tx);
        match result {
            Ok(_) => {
                self.commit(job, tx);
                true
            }
            Err(reason) => {
                let capacity_miss = !matches!(
                    reason,
                    Reason::Quota { .. }
                        | Reason::Reservation { .. }
                        | Reason::NoFlavor
                        | Reason::NotInQuota { .. }
                );
                let reservation_free = self.p.backfill
                    && !self.reserved_queues.contains(&queue)
                    && (self.reserved_queues.len() as u32) < self.p.max_reservations;
                let can_reserve = reservation_free && capacity_miss;
                let mut eta = None;
                let mut reserved = false;
                if self.p.preemption {
                    self.failed.entry((queue, priority)).or_insert(job);
                }
                if self.p.preemption
                    && self.preempt_attempts >= self.p.max_preemption_attempts
                    && self.lowest_victim_priority.is_some()
                {
                    self.retry_next = true;
                }
                if self.p.preemption && self.preempt_attempts < self.p.max_preemption_attempts {
                    // Reclaim patience: if the job starts soon anyway, wait rather than evict.
                    // A reclaim is usually blocked by quota (others borrowed the pool), so
                    // quota misses count here too: ending jobs free quota as well as GPUs.
                    let patient = self.p.reclaim_patience_ms > 0
                        && reservation_free
                        && (capacity_miss || matches!(reason, Reason::Quota { .. }))
                        && self.reclaims(job);
                    if patient {
                        self.reserved_queues.insert(queue);
                        eta = self.reserve(job);
                        reserved = true;
                    }
                    let horizon = self.now.saturating_add(self.p.reclaim_patience_ms);
                    let wait = patient && eta.is_some_and(|t| t <= horizon);
                    if patient && !wait && !capacity_miss {
                        // Not soon: a quota-blocked job holds no reservation (as without patience).
                        self.reservations.remove_job(self.s, job);
                        self.reserved_queues.remove(&queue);
                        eta = None;
                        reserved = false;
                    }
                    if !wait && self.try_preempt(job, &reason) {
                        self.reservations.remove_job(self.s, job);
                        return true;
                    }
                }
                if can_reserve && !reserved {
                    self.reserved_queues.insert(queue);
                    eta = self.reserve(job);
                }
                if fresh_gang {
                    // Quota reasons depend on the queue; capacity ones do not.
                    let key = if matches!(reason, Reason::Quota { .. } | Reason::NotInQuota { .. })
                    {
                        (queue, shape)
                    } else {
                        (NONE, shape)
                    };
                    let e = self.memo.entry(key).or_insert((end, priority, reason));
                    e.0 = e.0.min(end);
                    e.1 = e.1.max(priority);
                }
                self.set_reason(job, Some(reason), eta);
                false
            }
        }
    }

    /// Jobs admitted this cycle were not victims in it. If a job that failed could preempt one
    /// of them (same queue and lower priority, or a borrowing queue it may reclaim from or
    /// outranks), the next cycle must look at the failed jobs again.
    fn failed_could_preempt_admitted(&self) -> bool {
        let mut admitted: HashMap<u32, i32> = HashMap::default();
        for &j in &self.admitted {
            let job = &self.s.jobs[j as usize];
            if job.preemptible && !job.tasks.is_empty() {
                let e = admitted.entry(job.queue).or_insert(job.priority);
                *e = (*e).min(job.priority);
            }
        }
        if admitted.is_empty() || self.failed.is_empty() {
            return false;
        }
        if admitted.len() * self.failed.len() > 100_000 {
            return true; // too many to check cheaply: be safe
        }
        self.failed.iter().any(|(&(qj, pj), &j)| {
            admitted.iter().any(|(&qv, &pv)| {
                if qv == qj {
                    pv < pj
                } else {
                    let borrowing = (0..self.s.quota.flavors() as u32)
                        .any(|f| self.s.quota.is_borrowing(qv, f));
                    // Conservative: this only asks for another look next cycle.
                    borrowing && (pv < pj || self.reclaims(j))
                }
            })
        })
    }

    pub(crate) fn set_reason(&mut self, job: u32, reason: Option<Reason>, eta: Option<Time>) {
        let j = &mut self.s.jobs[job as usize];
        j.eta = eta;
        if j.reason != reason {
            j.reason = reason;
            if let Some(r) = reason {
                self.plan.reasons.push((JobId(job), r));
            }
        }
    }

    /// Make a staged placement real: record tasks on the job, start it, and add the bind.
    pub(crate) fn commit(&mut self, job: u32, tx: Tx) {
        let mut tasks = Vec::new();
        {
            let j = &mut self.s.jobs[job as usize];
            for (owner, mut t, applied) in tx.into_ops() {
                debug_assert!(
                    applied && owner == job,
                    "commit takes only the job's own placements"
                );
                let g = &mut j.groups[t.group as usize];
                t.index = g.next_index.max(g.running);
                g.next_index = t.index + 1;
                g.running += 1;
                j.tasks.push(t.clone());
                tasks.push(t);
            }
            if j.phase == JobPhase::Pending {
                j.phase = JobPhase::Running;
                j.start = Some(self.now);
                self.started.insert(job);
            }
            j.reason = None;
            j.eta = None;
        }
        self.s.mark_running(job, true);
        self.s.sync_pending(job);
        self.admitted.insert(job);
        self.plan.stats.admitted += 1;
        self.plan.stats.tasks_placed += tasks.len() as u64;
        self.plan.binds.push(Bind {
            job: JobId(job),
            tasks,
        });
    }
}
