//! "When will my job start?" — answered by running the engine itself forward in time.
//!
//! [`Snapshot::estimate_start`] clones the snapshot and replays what is already known: running
//! jobs end at their start plus expected runtime, jobs the replay starts end the same way, and a
//! cycle runs at each end time with the given profile. The first time the job is placed is its
//! estimate. Because it is the production engine deciding, the estimate honours fair share,
//! quota, gangs, topology, preemption and backfill exactly as a real cycle would.
//!
//! It assumes no new arrivals and that jobs run as long as they said. A job blocked only by
//! work without an expected runtime gets no estimate (`None`) rather than an invented one.

use crate::snapshot::{JobId, JobPhase, Snapshot, Time};
use crate::{schedule, Profile};

impl Snapshot {
    /// Estimated start of pending job `job`, looking at most `max_cycles` cycles ahead.
    /// `Some(now)` if it would start in a cycle right now; `None` when the replay cannot tell
    /// (blocking work has no expected runtime, or it is further away than `max_cycles`).
    pub fn estimate_start(
        &self,
        job: JobId,
        profile: &Profile,
        now: Time,
        max_cycles: usize,
    ) -> Option<Time> {
        self.estimate_starts(&[job], profile, now, max_cycles)
            .pop()
            .flatten()
    }

    /// [`Snapshot::estimate_start`] for several jobs at once, in one replay: the answer for
    /// each, in order (`None` for unknown jobs too).
    pub fn estimate_starts(
        &self,
        jobs: &[JobId],
        profile: &Profile,
        now: Time,
        max_cycles: usize,
    ) -> Vec<Option<Time>> {
        let mut out: Vec<Option<Time>> = jobs
            .iter()
            .map(|j| {
                self.jobs.get(j.idx()).and_then(|s| {
                    if s.phase == JobPhase::Pending {
                        None
                    } else {
                        s.start
                    }
                })
            })
            .collect();
        let mut waiting: Vec<usize> = (0..jobs.len())
            .filter(|&i| {
                self.jobs
                    .get(jobs[i].idx())
                    .is_some_and(|s| s.phase == JobPhase::Pending)
            })
            .collect();
        if waiting.is_empty() {
            return out;
        }
        let mut s = self.clone();
        let mut t = now;
        for _ in 0..max_cycles {
            schedule(&mut s, profile, t);
            waiting.retain(|&i| {
                let started = s.jobs[jobs[i].idx()].phase != JobPhase::Pending;
                if started {
                    out[i] = Some(t);
                }
                !started
            });
            if waiting.is_empty() {
                break;
            }
            // Jump to the next event: an expected end of a running job (complete what is due
            // then), or the end of a victim's protection from preemption (a refused eviction
            // backs off for seconds, not until the victim ends).
            let protection = s.protection_ends.filter(|&p| p > t);
            let Some(next) = [s.next_end(now), protection].into_iter().flatten().min() else {
                break;
            };
            t = next;
            s.finish_due(t, now);
        }
        out
    }

    /// The earliest expected end (start + runtime, not before `floor`) among running jobs.
    fn next_end(&self, floor: Time) -> Option<Time> {
        self.queues
            .iter()
            .flat_map(|q| q.running.iter())
            .filter_map(|&r| {
                let j = &self.jobs[r as usize];
                j.start.zip(j.runtime).map(|(st, rt)| (st + rt).max(floor))
            })
            .min()
    }

    /// Complete running jobs whose expected end (start + runtime, not before `floor`) is at or
    /// before `t`.
    fn finish_due(&mut self, t: Time, floor: Time) {
        let due: Vec<u32> = self
            .queues
            .iter()
            .flat_map(|q| q.running.iter().copied())
            .filter(|&r| {
                let j = &self.jobs[r as usize];
                j.start
                    .zip(j.runtime)
                    .is_some_and(|(st, rt)| (st + rt).max(floor) <= t)
            })
            .collect();
        for r in due {
            let _ = self.complete(JobId(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{cluster, queues, Harness, JobBuilder};

    #[test]
    fn estimates_follow_the_engine_forward() {
        let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 64)]));
        let q = |n: &str| JobBuilder::new(n).queue("team-a");
        h.submit(q("a").gpus(8).runtime_s(100.0));
        h.cycle();
        h.submit(q("b").gpus(4).runtime_s(50.0));
        h.submit(q("c").gpus(4).runtime_s(10.0));
        h.submit(q("d").gpus(8).runtime_s(10.0));
        h.cycle();
        let p = h.profile.clone();
        let est = |h: &Harness, n: &str| {
            h.snap
                .estimate_start(h.snap.job_by_name(n).expect("j"), &p, h.now, 100)
        };
        assert_eq!(est(&h, "b"), Some(100_000), "when a ends");
        assert_eq!(est(&h, "c"), Some(100_000), "alongside b");
        assert_eq!(est(&h, "d"), Some(150_000), "when b (the longer) ends");
        let ids: Vec<_> = ["d", "a", "b", "c"]
            .iter()
            .map(|n| h.snap.job_by_name(n).expect("j"))
            .collect();
        assert_eq!(
            h.snap.estimate_starts(&ids, &p, h.now, 100),
            [Some(150_000), Some(0), Some(100_000), Some(100_000)],
            "one replay answers for all, running jobs with their start"
        );
        // Work without an expected runtime blocks any estimate.
        let mut h2 = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 64)]));
        h2.submit(q("forever").gpus(8));
        h2.submit(q("x").gpus(1).runtime_s(5.0));
        h2.cycle();
        assert_eq!(est(&h2, "x"), None);
        // A victim protected from preemption for a while (a refused eviction backing off):
        // the preemptor starts when the protection ends, not when the victim would end.
        let mut h3 = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 64)]));
        h3.submit(q("victim").gpus(8).runtime_s(3600.0).priority("batch"));
        h3.cycle();
        let victim = h3.snap.job_by_name("victim").expect("victim");
        h3.snap.protect(victim, 10_000);
        h3.submit(q("urgent").gpus(8).priority("training"));
        h3.cycle();
        assert!(!h3.running("urgent"), "the victim is protected now");
        assert_eq!(est(&h3, "urgent"), Some(10_000), "when the protection ends");
    }
}
