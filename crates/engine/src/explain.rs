//! Why a job is pending, where it stands, and when it should start.
//!
//! Every job the cycle could not start gets a [`Reason`]: a small value with the numbers that
//! matter, stored on the job (no strings on the hot path). [`Snapshot::why`] renders it with
//! names, the same text for every driver (`gantry explain`, `gantry jobs`, a pod's
//! `PodScheduled` condition, a PodGroup's conditions), e.g. `queue team-a: quota h100-80gb 16/16
//! used, 0 is available; cohort has 0 to lend`.
//!
//! When capacity is what is missing, the text comes from an account of the cluster as it is now
//! (see `account`), counted per task shape: how many more tasks the job needs, how many of them
//! the free capacity of eligible nodes holds, and which nodes are excluded and why (not ready,
//! tainted, not matching the selector or affinity, no healthy GPU). When no eligible node could
//! ever hold one task, the job is **unresolvable** (kube-scheduler's
//! `UnschedulableAndUnresolvable`): waiting will not help.
//!
//! [`Snapshot::explain`] adds the job's position in its queue and the estimated start that
//! backfill computed.

use serde::{Deserialize, Serialize};

use crate::snapshot::{JobId, JobPhase, Snapshot, Time, NONE};

/// Why a job did not start in the last cycle. Counts of GPUs are whole devices; quota amounts
/// are thousandths (as stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// Its queue has no quota left for the flavor, and the cohort cannot lend enough.
    Quota {
        /// Leaf queue.
        queue: u32,
        /// Flavor.
        flavor: u32,
        /// The queue's usage.
        used: u64,
        /// Its nominal quota.
        nominal: u64,
        /// What it asked for.
        requested: u64,
        /// What it could still get (own + borrowable).
        available: u64,
        /// What its cohort could still lend it.
        cohort: u64,
    },
    /// Not enough free GPUs of the flavor in any single node (for tasks of `per_task` GPUs).
    Capacity {
        /// Flavor.
        flavor: u32,
        /// GPUs per task.
        per_task: u32,
        /// Tasks that could not be placed.
        missing: u32,
        /// Most free GPUs of the flavor on one node.
        largest_free: u32,
    },
    /// A task needs its GPUs inside one NVLink domain, or the gang must share one.
    Domain {
        /// Flavor.
        flavor: u32,
        /// GPUs needed in one domain.
        needed: u32,
        /// Most free GPUs in one domain.
        largest_free: u32,
    },
    /// The gang must share one value of a topology label (one rack, say).
    Topology {
        /// Label key.
        key: u32,
        /// GPUs needed.
        needed: u32,
        /// Most free GPUs under one label value.
        largest_free: u32,
    },
    /// The gang must share one node.
    SameNode {
        /// GPUs needed.
        needed: u32,
        /// Most free GPUs of an allowed flavor on one node.
        largest_free: u32,
    },
    /// No free slice of the MIG profile at a legal start.
    Mig {
        /// MIG flavor.
        flavor: u32,
        /// Tasks not placed.
        missing: u32,
    },
    /// No shared GPU with enough remaining fraction and no free whole GPU.
    Shared {
        /// Flavor.
        flavor: u32,
        /// Thousandths asked.
        milli: u16,
    },
    /// GPUs would fit but cpu or memory on the candidate nodes does not.
    CpuMemory {
        /// Tasks not placed.
        missing: u32,
    },
    /// Capacity that fits is held for a blocked job with an earlier turn.
    Reservation {
        /// The job holding the reservation.
        job: u32,
        /// When it should start.
        start: Time,
    },
    /// Strict FIFO: an earlier job that does not fit blocks this one.
    HeadOfLine {
        /// The blocking job.
        job: u32,
    },
    /// No allowed flavor exists in the cluster (nothing can ever run it).
    NoFlavor,
    /// Fewer than `min_available` tasks fit.
    Gang {
        /// Tasks placed before giving up.
        placed: u32,
        /// Gang size.
        min_available: u32,
    },
    /// Spread over nodes needs more distinct nodes than have room.
    Spread {
        /// Replicas placed before giving up.
        placed: u32,
    },
    /// The queue's quota lists none of the flavors the task may use (and the queue does not
    /// allow unlisted flavors).
    NotInQuota {
        /// Leaf queue.
        queue: u32,
        /// The first flavor the task may use.
        flavor: u32,
        /// How many other flavors it may use (none listed either).
        others: u32,
    },
    /// No node has a free whole GPU of the flavor (a queue skipped whole).
    NoFreeGpu {
        /// Flavor.
        flavor: u32,
    },
    /// It was about to start by borrowing, and a job within its own queue's nominal quota took
    /// the room in the same cycle (it is looked at again next cycle).
    YieldedTo {
        /// The job that took the room.
        job: u32,
    },
}

impl Reason {
    /// `Unresolvable` verdicts: no amount of waiting or preemption helps with the current
    /// cluster (the job asks more than any node, domain or quota tree could ever hold).
    pub fn is_unresolvable(&self) -> bool {
        matches!(self, Reason::NoFlavor | Reason::NotInQuota { .. })
    }

    /// A short stable label, usable as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::Quota { .. } => "quota",
            Reason::Capacity { .. } => "capacity",
            Reason::Domain { .. } => "nvlink_domain",
            Reason::Topology { .. } => "topology",
            Reason::SameNode { .. } => "same_node",
            Reason::Mig { .. } => "mig",
            Reason::Shared { .. } => "shared_gpu",
            Reason::CpuMemory { .. } => "cpu_memory",
            Reason::Reservation { .. } => "reservation",
            Reason::HeadOfLine { .. } => "head_of_line",
            Reason::NoFlavor => "no_flavor",
            Reason::Gang { .. } => "gang",
            Reason::Spread { .. } => "spread",
            Reason::NotInQuota { .. } => "not_in_quota",
            Reason::NoFreeGpu { .. } => "capacity",
            Reason::YieldedTo { .. } => "reclaim",
        }
    }
}

fn gpus(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        format!("{}", milli / 1000)
    } else {
        // 0.5, not 0.500: as `gantry queues` prints it.
        format!("{:.3}", milli as f64 / 1000.0)
            .trim_end_matches('0')
            .to_string()
    }
}

/// A pending job's explanation, rendered with names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Explanation {
    /// Job name.
    pub job: String,
    /// Queue name.
    pub queue: String,
    /// Phase.
    pub phase: JobPhase,
    /// 1-based position among its queue's pending jobs (priority, then submit time).
    pub position: Option<usize>,
    /// Pending jobs in the queue.
    pub queue_length: usize,
    /// The machine-readable reason label (`quota`, `capacity`, …).
    pub reason_label: Option<String>,
    /// The reason, in words with numbers.
    pub reason: Option<String>,
    /// Estimated start, when backfill found one.
    pub estimated_start: Option<Time>,
    /// No node of the cluster could ever hold it as asked (or its queue cannot use any of its
    /// flavors): waiting will not help.
    #[serde(default)]
    pub unresolvable: bool,
}

/// Why a job waits, rendered: the stored reason, its text and whether it is unresolvable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Why {
    /// The reason the last cycle stored.
    pub reason: Reason,
    /// In words with numbers, the same in every driver.
    pub text: String,
    /// Waiting will not help.
    pub unresolvable: bool,
}

impl Snapshot {
    /// Render a reason with names.
    pub fn describe(&self, r: &Reason) -> String {
        let flavor = |f: u32| -> &str {
            if f == NONE {
                "gpu"
            } else {
                &self.flavors[f as usize].name
            }
        };
        match *r {
            Reason::Quota {
                queue,
                flavor: f,
                used,
                nominal,
                requested,
                available,
                cohort,
            } => {
                let limit = match self.quota.borrowing_limit(queue, f) {
                    Some(b) => format!(" (may borrow up to {})", gpus(b)),
                    None => String::new(),
                };
                let need = if requested > 0 {
                    format!("needs {} but only {} is available", gpus(requested), gpus(available))
                } else {
                    format!("{} is available", gpus(available))
                };
                // A queue at the root of its tree has no cohort to borrow from.
                let lend = if self.quota.parent(queue).is_some() {
                    format!("; cohort has {} to lend", gpus(cohort))
                } else {
                    String::new()
                };
                format!(
                    "queue {}: quota {} {}/{} used{limit}, {need}{lend}",
                    self.quota.name(queue),
                    flavor(f),
                    gpus(used),
                    gpus(nominal),
                )
            }
            Reason::Capacity {
                flavor: f,
                per_task,
                missing,
                largest_free,
            } => format!(
                "needs {missing} more task(s) of {per_task} {} GPU(s); the most free on one node is {largest_free}",
                flavor(f)
            ),
            Reason::Domain {
                flavor: f,
                needed,
                largest_free,
            } => format!(
                "needs {needed} {} GPUs in one NVLink domain; the largest free domain has {largest_free}",
                flavor(f)
            ),
            Reason::Topology {
                key,
                needed,
                largest_free,
            } => {
                let k = self.label_keys.get(key as usize).map_or("?", |k| &**k);
                format!("needs {needed} GPUs under one value of label {k}; the most free under one value is {largest_free}")
            }
            Reason::SameNode {
                needed,
                largest_free,
            } => format!("needs {needed} GPUs on one node; the most free on one node is {largest_free}"),
            Reason::Mig { flavor: f, missing } => format!(
                "no free {} slice at a legal start for {missing} task(s)",
                flavor(f)
            ),
            Reason::Shared { flavor: f, milli } => format!(
                "no {} GPU has {} of a GPU left and none is free",
                flavor(f),
                gpus(milli as u64)
            ),
            Reason::CpuMemory { missing } => {
                format!("GPUs fit but cpu or memory does not, for {missing} task(s)")
            }
            Reason::Reservation { job, start } => format!(
                "waiting behind reservation for job {} (expected to start at {})",
                self.jobs[job as usize].name,
                fmt_time(start)
            ),
            Reason::HeadOfLine { job } => format!(
                "strict FIFO: waiting for earlier job {} to start",
                self.jobs[job as usize].name
            ),
            Reason::NoFlavor => "no allowed GPU model or MIG profile exists in the cluster".to_string(),
            Reason::Gang {
                placed,
                min_available,
            } => format!("gang needs {min_available} tasks together; only {placed} fit"),
            Reason::Spread { placed } => format!(
                "one replica per node: only {placed} nodes have room"
            ),
            Reason::NotInQuota {
                queue,
                flavor: f,
                others,
            } => {
                let more = match others {
                    0 => String::new(),
                    1 => " or the other allowed model".to_string(),
                    n => format!(" or the {n} other allowed models"),
                };
                format!(
                    "queue {} has no quota for {}{more} (list it in the queue's quotas, or set unlisted_flavors: allow)",
                    self.quota.name(queue),
                    flavor(f)
                )
            }
            Reason::NoFreeGpu { flavor: f } => {
                format!("no {} GPU is free on any node", flavor(f))
            }
            Reason::YieldedTo { job } => {
                let j = &self.jobs[job as usize];
                format!(
                    "would borrow quota that job {} of queue {} (within its nominal quota) took in the same cycle",
                    j.name,
                    self.quota.name(j.queue)
                )
            }
        }
    }

    /// Explain a job: reason, queue position and estimated start.
    pub fn explain(&self, id: JobId) -> Option<Explanation> {
        let j = self.jobs.get(id.idx())?;
        let reason = self.reason(id);
        let q = &self.queues[j.queue as usize];
        let position = if j.has_unplaced() {
            let key = j.order_key(id.0);
            Some(q.pending.range(..key).count() + 1)
        } else {
            None
        };
        let why = reason.map(|r| self.why_of(id, r));
        Some(Explanation {
            job: j.name.to_string(),
            queue: self.quota.name(j.queue).to_string(),
            phase: j.phase,
            position,
            queue_length: q.pending.len(),
            reason_label: why.as_ref().map(|w| {
                if w.unresolvable {
                    "unresolvable".to_string()
                } else {
                    w.reason.label().to_string()
                }
            }),
            reason: why.as_ref().map(|w| w.text.clone()),
            estimated_start: j.eta,
            unresolvable: why.as_ref().is_some_and(|w| w.unresolvable),
        })
    }

    /// Why a waiting job waits: its reason in words, the same for every driver. `None` for a
    /// job that waits for nothing (running whole, or finished).
    pub fn why(&self, id: JobId) -> Option<Why> {
        self.reason(id).map(|r| self.why_of(id, r))
    }

    fn why_of(&self, id: JobId, r: Reason) -> Why {
        let j = &self.jobs[id.idx()];
        let (group, running) = j
            .groups
            .iter()
            .enumerate()
            .find(|(_, g)| g.running < g.count)
            .map_or((0, 0), |(i, g)| (i as u32, g.running));
        let key = (j.shape, j.queue, group, running, r);
        if let Some((v, w)) = self.why_cache.borrow().get(&key) {
            if *v == self.version {
                return w.clone();
            }
        }
        let w = self.render_why(id, r);
        let mut cache = self.why_cache.borrow_mut();
        if cache.len() > 65_536 {
            cache.clear();
        }
        cache.insert(key, (self.version, w.clone()));
        w
    }

    /// What a job's unplaced tasks would charge to flavor `f` (thousandths).
    fn unplaced_need(&self, id: JobId, f: u32) -> u64 {
        use crate::snapshot::GpuNeed;
        let j = &self.jobs[id.idx()];
        j.groups
            .iter()
            .map(|g| {
                let per = match &self.demands[g.demand as usize].gpu {
                    GpuNeed::None => 0,
                    GpuNeed::Whole { count, models } if models.iter().any(|m| m.0 == f) => {
                        u64::from(*count) * 1000
                    }
                    GpuNeed::Shared { milli, models } if models.iter().any(|m| m.0 == f) => {
                        u64::from(*milli)
                    }
                    GpuNeed::Mig { options } if options.iter().any(|o| o.0 .0 == f) => 1000,
                    _ => 0,
                };
                per * u64::from(g.count - g.running)
            })
            .sum()
    }

    fn render_why(&self, id: JobId, r: Reason) -> Why {
        let capacity = matches!(
            r,
            Reason::Capacity { .. }
                | Reason::Shared { .. }
                | Reason::Mig { .. }
                | Reason::CpuMemory { .. }
                | Reason::NoFreeGpu { .. }
                | Reason::Gang { .. }
        ) || matches!(r, Reason::Domain { .. })
            && self.jobs[id.idx()].placement != crate::snapshot::PlacementC::Domain;
        if capacity {
            if let Some(a) = self.account(id) {
                return Why {
                    reason: r,
                    text: a.text(self),
                    unresolvable: a.never,
                };
            }
        }
        // Beyond everything its quota tree could ever give it: no waiting helps.
        let mut text = self.describe(&r);
        let mut over_ceiling = false;
        if let Reason::Quota { queue, flavor, .. } = r {
            let ceiling = self.quota.ceiling(queue, flavor);
            if self.unplaced_need(id, flavor) > ceiling {
                over_ceiling = true;
                text.push_str(&format!(
                    "; it can never have more than {} of it, so this job cannot run as asked",
                    gpus(ceiling)
                ));
            }
        }
        Why {
            reason: r,
            text,
            unresolvable: r.is_unresolvable() || over_ceiling,
        }
    }

    /// Why a job waits: the reason the last cycle stored, or — under strict FIFO, where the
    /// cycle stops at the first job that does not fit — the job that blocks the line.
    pub fn reason(&self, id: JobId) -> Option<Reason> {
        let j = self.jobs.get(id.idx())?;
        if !j.has_unplaced() {
            return None;
        }
        let qs = &self.queues[j.queue as usize];
        if let Some(r) = qs.skipped.or_else(|| qs.shape_skip.get(&j.shape).copied()) {
            return Some(r);
        }
        if let (None, Some(head)) = (j.reason, self.blocked_head) {
            let h = &self.jobs[head as usize];
            if head != id.0 && (h.submit, head) < (j.submit, id.0) {
                return Some(Reason::HeadOfLine { job: head });
            }
        }
        j.reason
    }
}

/// Render a time on the driver's clock (ms) as `d+hh:mm:ss`.
pub fn fmt_time(t: Time) -> String {
    let s = t / 1000;
    let (d, h, m, sec) = (s / 86400, (s / 3600) % 24, (s / 60) % 60, s % 60);
    if d > 0 {
        format!("{d}d+{h:02}:{m:02}:{sec:02}")
    } else {
        format!("{h:02}:{m:02}:{sec:02}")
    }
}
