//! Backfill: when a queue's head job cannot start, hold capacity for it and let smaller jobs
//! use that capacity only if they finish before the head is due.
//!
//! The earliest start ("shadow time") comes from expected runtimes: running jobs are released
//! in a statement in the order they are expected to end, and the first moment the blocked job
//! fits is its start; the devices it would take then are reserved. A job whose expected end is
//! past the reservation start cannot use those devices; a job without an expected runtime never
//! can. Running jobs without an expected runtime never end in this computation, so a head
//! blocked only by such jobs gets no reservation (and no estimate) rather than a wrong one.

use crate::cycle::Cycle;
use crate::place::{Placer, Tx};
use crate::snapshot::{GpuAlloc, GpuNeed, Time, NONE};

/// Most running jobs released while searching for a start time.
const MAX_RELEASES: usize = 4096;

impl Cycle<'_> {
    /// Compute and record a reservation for `job`; returns its expected start.
    pub(crate) fn reserve(&mut self, job: u32) -> Option<Time> {
        // A job holds at most one reservation: recompute, never add a second.
        self.reservations.remove_job(self.s, job);
        // Flavors the job could use (models for whole/shared; the model of MIG options).
        let mut models: Vec<u32> = Vec::new();
        let mut whole_needed: u64 = 0;
        for g in self.s.jobs[job as usize].groups.iter() {
            let unplaced = (g.count - g.running) as u64;
            match &self.s.demands[g.demand as usize].gpu {
                GpuNeed::None => {}
                GpuNeed::Whole { count, models: m } => {
                    whole_needed += *count as u64 * unplaced;
                    models.extend(m.iter().map(|f| f.0));
                }
                GpuNeed::Shared { models: m, .. } => models.extend(m.iter().map(|f| f.0)),
                GpuNeed::Mig { options } => models.extend(options.iter().map(|o| o.1 .0)),
            }
        }
        models.sort_unstable();
        models.dedup();
        // Running jobs with a known end that hold something this job could use.
        let mut ending: Vec<(Time, u32)> = Vec::new();
        for q in &self.s.queues {
            for &v in &q.running {
                let vj = &self.s.jobs[v as usize];
                let (Some(start), Some(rt)) = (vj.start, vj.runtime) else {
                    continue;
                };
                let holds = vj.tasks.iter().any(|t| {
                    let model = match &t.gpu {
                        GpuAlloc::None => NONE,
                        GpuAlloc::Whole(d) => {
                            d.first().map_or(NONE, |d| self.s.devices[d.idx()].model.0)
                        }
                        GpuAlloc::Shared { device, .. } | GpuAlloc::Mig { device, .. } => {
                            self.s.devices[device.idx()].model.0
                        }
                    };
                    models.is_empty() || models.binary_search(&model).is_ok()
                });
                if holds {
                    ending.push(((start + rt).max(self.now), v));
                }
            }
        }
        ending.sort_unstable();
        ending.truncate(MAX_RELEASES);
        let free_now: u64 = models
            .iter()
            .map(|&m| {
                let mi = &self.s.models[m as usize];
                mi.nodes
                    .by_count
                    .iter()
                    .enumerate()
                    .map(|(c, v)| c as u64 * v.len() as u64)
                    .sum::<u64>()
            })
            .sum();
        let mut freed_whole: u64 = 0;
        let mut tx = Tx::default();
        let mut found: Option<(Time, Vec<u32>)> = None;
        let mut i = 0;
        while i < ending.len() {
            let t = ending[i].0;
            while i < ending.len() && ending[i].0 == t {
                let v = ending[i].1;
                for task in self.s.jobs[v as usize].tasks.clone() {
                    if let GpuAlloc::Whole(d) = &task.gpu {
                        freed_whole += d.len() as u64;
                    }
                    tx.release(self.s, v, task);
                }
                i += 1;
            }
            if free_now + freed_whole < whole_needed {
                continue;
            }
            let mark = tx.mark();
            let ok = {
                let mut placer = Placer {
                    s: self.s,
                    packing: self.p.packing,
                    reservations: &self.reservations,
                    now: t,
                    end_override: Some(Time::MAX),
                };
                placer.place_job(job, &mut tx).is_ok()
            };
            if ok {
                let mut devices = Vec::new();
                for task in tx.applied_since(mark) {
                    match &task.gpu {
                        GpuAlloc::None => {}
                        GpuAlloc::Whole(d) => devices.extend(d.iter().map(|d| d.0)),
                        GpuAlloc::Shared { device, .. } | GpuAlloc::Mig { device, .. } => {
                            devices.push(device.0)
                        }
                    }
                }
                found = Some((t, devices));
                break;
            }
        }
        tx.rollback_to(self.s, 0);
        let (start, devices) = found?;
        for d in devices {
            self.reservations.add(self.s, d, start, job);
        }
        Some(start)
    }
}
