//! Preemption: evict whole jobs (gangs included) so a blocked job can start.
//!
//! Who may be a victim of job `J` in queue `Q` (victims must be preemptible and hold a flavor `J`
//! can use):
//! - in `Q` itself: jobs of lower priority;
//! - in another queue `V`: only while `V` is borrowing (uses more than its nominal quota).
//!   When `Q` stays within its own nominal quota (of a flavor quota manages) after admitting
//!   `J`, and `V` is in `Q`'s quota tree or runs without quota, this is **reclaim** and any
//!   priority goes; otherwise
//!   the victim must have lower priority, and evicting it must not push `V` below its nominal
//!   quota (a queue is never pushed below nominal so another can borrow).
//!
//! The search is greedy then minimal: candidates in order (lowest priority, then most recently
//! started, so the least work is lost) are
//! evicted in a statement until `J` fits; then each chosen victim, most important first, is given
//! a reprieve if `J` still fits without evicting it.
//!
//! Reclaim patience (`Profile::reclaim_patience_ms`): before a reclaim, the cycle computes when
//! the job would start anyway from expected runtimes; if that is soon enough it gets a
//! reservation and waits. Without this, a queue that keeps a large borrowing job running sees it
//! evicted again and again for small jobs that would have started minutes later.

use crate::cycle::Cycle;
use crate::explain::Reason;
use crate::place::{Placer, Tx};
use crate::plan::{PreemptCause, Preemption};
use crate::snapshot::{FlavorId, GpuNeed, JobId, NONE};

/// Most candidates a victim search looks at.
const MAX_CANDIDATES: usize = 64;

impl Cycle<'_> {
    /// Flavors job `j` can be charged to, and its per-flavor amount if it ran whole.
    pub(crate) fn wanted_flavors(&self, job: u32) -> Vec<(FlavorId, u64)> {
        let j = &self.s.jobs[job as usize];
        let quota = &self.s.quota;
        let mut out: Vec<(FlavorId, u64)> = Vec::new();
        for g in j.groups.iter() {
            let unplaced = (g.count - g.running) as u64;
            let d = &self.s.demands[g.demand as usize];
            let mut add = |f: FlavorId, amt: u64| match out.iter_mut().find(|(x, _)| *x == f) {
                _ if !quota.may_use(j.queue, f.0) => {}
                Some((_, a)) => *a += amt,
                None => out.push((f, amt)),
            };
            match &d.gpu {
                GpuNeed::None => {}
                GpuNeed::Whole { count, models } => models
                    .iter()
                    .for_each(|&m| add(m, *count as u64 * 1000 * unplaced)),
                GpuNeed::Shared { milli, models } => models
                    .iter()
                    .for_each(|&m| add(m, *milli as u64 * unplaced)),
                GpuNeed::Mig { options } => options
                    .iter()
                    .for_each(|&(f, _, _)| add(f, 1000 * unplaced)),
            }
        }
        out
    }

    /// Whether admitting `job` would be reclaim (its queue stays within nominal quota).
    pub(crate) fn reclaims(&self, job: u32) -> bool {
        let q = self.s.jobs[job as usize].queue;
        let wanted = self.wanted_flavors(job);
        !wanted.is_empty() && self.within_nominal(q, &wanted)
    }

    /// Whether queue `q` stays within nominal quota for every wanted flavor after admitting.
    /// A flavor quota does not manage has no nominal quota to take back: never reclaim (a queue
    /// without quota that "reclaimed" from a borrower, which then outranked it back, would
    /// evict the two in turn every cycle).
    fn within_nominal(&self, q: u32, wanted: &[(FlavorId, u64)]) -> bool {
        wanted.iter().take(1).all(|&(f, amt)| {
            self.s.quota.is_managed(q, f.0)
                && self.s.quota.usage(q, f.0) + amt <= self.s.quota.nominal(q, f.0)
        })
    }

    /// Whether a reclaiming job of queue `q` may take back room from victim `v` of queue
    /// `vq`: `v` borrows in `q`'s own quota tree, or runs on flavors no quota manages (work
    /// without any quota uses capacity nobody guaranteed it). A borrower in another quota tree
    /// took nothing of `q`'s: only priority decides there.
    fn reclaimable(&self, q: u32, vq: u32, v: u32) -> bool {
        self.s.quota.root(q) == self.s.quota.root(vq)
            || self.s.jobs[v as usize]
                .tasks
                .iter()
                .any(|t| t.flavor.0 != NONE && !self.s.quota.is_managed(vq, t.flavor.0))
    }

    /// Stage `job`'s placement in `tx` with this cycle's reservations.
    pub(crate) fn place(&mut self, job: u32, tx: &mut Tx) -> Result<u32, Reason> {
        let mut placer = Placer {
            s: self.s,
            packing: self.p.packing,
            reservations: &self.reservations,
            now: self.now,
            end_override: None,
        };
        placer.place_job(job, tx)
    }

    /// Evict the victims in `set` (tentatively) and try to place `job`. Leaves `tx` rolled back.
    fn fits_with(&mut self, job: u32, set: &[u32], tx: &mut Tx) -> bool {
        let mark = tx.mark();
        for &v in set {
            for t in self.s.jobs[v as usize].tasks.clone() {
                tx.release(self.s, v, t);
            }
        }
        let ok = self.place(job, tx).is_ok();
        tx.rollback_to(self.s, mark);
        ok
    }

    /// A necessary condition, checked in O(nodes + candidates) before the costly greedy search:
    /// some node, with everything the candidates hold there freed, has the cpu, memory and
    /// whole GPUs of the job's largest task.
    fn some_node_could_fit(
        &self,
        job: u32,
        candidates: &[(i32, std::cmp::Reverse<u64>, std::cmp::Reverse<u32>)],
    ) -> bool {
        let j = &self.s.jobs[job as usize];
        let (mut cpu, mut mem, mut gpus) = (0u32, 0u64, 0u32);
        for g in j.groups.iter().filter(|g| g.running < g.count) {
            let d = &self.s.demands[g.demand as usize];
            cpu = cpu.max(d.cpu);
            mem = mem.max(d.mem);
            if let GpuNeed::Whole { count, .. } = d.gpu {
                gpus = gpus.max(count);
            }
        }
        let mut freed: crate::fast::HashMap<u32, (u64, u64, u32)> = crate::fast::HashMap::default();
        for &(_, _, std::cmp::Reverse(v)) in candidates {
            for t in &self.s.jobs[v as usize].tasks {
                let e = freed.entry(t.node.0).or_default();
                e.0 += t.cpu_milli as u64;
                e.1 += t.memory_mib;
                if let crate::snapshot::GpuAlloc::Whole(ds) = &t.gpu {
                    e.2 += ds.len() as u32;
                }
            }
        }
        self.s.nodes.iter().enumerate().any(|(n, node)| {
            if !node.ready {
                return false;
            }
            let (fc, fm, fg) = freed.get(&(n as u32)).copied().unwrap_or_default();
            node.cpu_free() as u64 + fc >= cpu as u64
                && node.mem_free() + fm >= mem
                && node.free_mask.count_ones() + fg >= gpus
        })
    }

    /// Take back a bind this cycle made: the job goes back to pending as if it had not been
    /// looked at, and the next cycle looks at it again.
    fn unadmit(&mut self, v: u32, job: u32) {
        if let Some(i) = self.plan.binds.iter().position(|b| b.job.0 == v) {
            let b = self.plan.binds.remove(i);
            self.plan.stats.admitted = self.plan.stats.admitted.saturating_sub(1);
            self.plan.stats.tasks_placed = self
                .plan
                .stats
                .tasks_placed
                .saturating_sub(b.tasks.len() as u64);
        }
        // The job is known and running, so requeue cannot fail.
        let _ = self.s.requeue(JobId(v));
        self.plan.stats.unadmitted += 1;
        self.set_reason(v, Some(Reason::YieldedTo { job }), None);
    }

    /// Try to admit `job` by evicting others. Returns whether it was admitted.
    pub(crate) fn try_preempt(&mut self, job: u32, reason: &Reason) -> bool {
        if matches!(
            reason,
            Reason::NoFlavor | Reason::Spread { .. } | Reason::NotInQuota { .. }
        ) {
            return false;
        }
        let (q, prio) = {
            let j = &self.s.jobs[job as usize];
            (j.queue, j.priority)
        };
        // Victims: jobs running since before the cycle, or started in it (taken back).
        let lowest = match self.lowest_victim_priority {
            Some(l) => l,
            None if self.started.is_empty() => return false,
            None => i32::MAX,
        };
        let wanted = self.wanted_flavors(job);
        let reclaim = !wanted.is_empty() && self.within_nominal(q, &wanted);
        if !reclaim && prio <= lowest {
            return false;
        }
        let relevant = |f: FlavorId| wanted.is_empty() || wanted.iter().any(|&(w, _)| w == f);
        let mut candidates: Vec<(i32, std::cmp::Reverse<u64>, std::cmp::Reverse<u32>)> = Vec::new();
        for vq in 0..self.s.queues.len() as u32 {
            for &v in &self.s.queues[vq as usize].running {
                if v == job {
                    continue;
                }
                let vj = &self.s.jobs[v as usize];
                if !vj.preemptible || vj.tasks.is_empty() || vj.protected_until > self.now {
                    continue;
                }
                if !vj
                    .tasks
                    .iter()
                    .any(|t| t.flavor.0 == NONE || relevant(t.flavor))
                {
                    continue;
                }
                let borrowing = vj
                    .tasks
                    .iter()
                    .any(|t| t.flavor.0 != NONE && self.s.quota.is_borrowing(vq, t.flavor.0));
                let reclaim_here = reclaim && self.reclaimable(q, vq, v);
                let ok = if vq == q {
                    vj.priority < prio
                } else {
                    borrowing && (reclaim_here || vj.priority < prio)
                };
                if ok && self.admitted.contains(&v) {
                    // Admitted in this cycle: a plan never starts a job and evicts it. But when
                    // this job reclaims quota that a later arrival borrowed in this very cycle,
                    // that one is simply not started (in-quota work goes before borrowing work).
                    // Only a borrower without an expected runtime (then the next cycle's
                    // reclaim is certain: patience cannot plan around its end) that did not
                    // arrive before the job. With runtimes, the next cycle's reclaim patience
                    // decides, as before: on the Philly trace, taking those binds back too
                    // costs 10 hours of p95 wait.
                    let take_back = reclaim_here
                        && vq != q
                        && self.started.contains(&v)
                        && !self.preemptors.contains(&v)
                        && vj.runtime.is_none()
                        && vj.submit >= self.s.jobs[job as usize].submit;
                    if !take_back {
                        // Not now: look again next cycle, when it is an ordinary candidate.
                        self.retry_next = true;
                        continue;
                    }
                }
                if ok {
                    // Lowest priority first, then the most recently started (the least work
                    // lost: on the Philly trace, preferring small victims instead restarted
                    // long-running jobs and made mean JCT ten times worse).
                    candidates.push((
                        vj.priority,
                        std::cmp::Reverse(vj.start.unwrap_or(0)),
                        std::cmp::Reverse(v),
                    ));
                }
            }
        }
        if candidates.is_empty() {
            return false;
        }
        self.preempt_attempts += 1;
        self.plan.stats.preemption_attempts += 1;
        candidates.sort_unstable();
        candidates.truncate(MAX_CANDIDATES);
        if !self.some_node_could_fit(job, &candidates) {
            return false;
        }

        // Greedy: evict in order until the job fits.
        let mut tx = Tx::default();
        let mut chosen: Vec<u32> = Vec::new();
        let mut fits = false;
        for &(_, _, std::cmp::Reverse(v)) in &candidates {
            let vq = self.s.jobs[v as usize].queue;
            let mark = tx.mark();
            for t in self.s.jobs[v as usize].tasks.clone() {
                tx.release(self.s, v, t);
            }
            // Never push another queue below its nominal quota so this one can borrow.
            let reclaim_here = reclaim && self.reclaimable(q, vq, v);
            if vq != q && !reclaim_here {
                let below = self.s.jobs[v as usize].tasks.iter().any(|t| {
                    t.flavor.0 != NONE
                        && self.s.quota.usage(vq, t.flavor.0) < self.s.quota.nominal(vq, t.flavor.0)
                });
                if below {
                    tx.rollback_to(self.s, mark);
                    continue;
                }
            }
            chosen.push(v);
            let m2 = tx.mark();
            let ok = self.place(job, &mut tx).is_ok();
            tx.rollback_to(self.s, m2);
            if ok {
                fits = true;
                break;
            }
        }
        tx.rollback_to(self.s, 0);
        if !fits {
            return false;
        }
        // Minimal: most important victims first, keep each one out of the set if the job still fits.
        let mut i = chosen.len();
        while i > 0 {
            i -= 1;
            let mut trial = chosen.clone();
            trial.remove(i);
            if self.fits_with(job, &trial, &mut tx) {
                chosen = trial;
            }
        }
        // Commit: requeue victims, then place the job for real. A victim admitted in this
        // cycle is un-admitted instead: its bind leaves the plan, it was never started.
        for &v in &chosen {
            if self.admitted.remove(&v) {
                self.started.remove(&v);
                self.unadmit(v, job);
                continue;
            }
            let vq = self.s.jobs[v as usize].queue;
            let cause = if vq != q && reclaim && self.reclaimable(q, vq, v) {
                PreemptCause::Reclaim
            } else {
                PreemptCause::Priority
            };
            // The job is known and running, so requeue cannot fail.
            let _ = self.s.requeue(JobId(v));
            self.plan.preemptions.push(Preemption {
                victim: JobId(v),
                preemptor: JobId(job),
                cause,
            });
        }
        let mut tx = Tx::default();
        match self.place(job, &mut tx) {
            Ok(_) => {
                self.commit(job, tx);
                self.preemptors.insert(job);
                true
            }
            Err(_) => {
                // Cannot happen: the same evictions made it fit a moment ago.
                debug_assert!(false, "job stopped fitting after its victims were evicted");
                false
            }
        }
    }
}
