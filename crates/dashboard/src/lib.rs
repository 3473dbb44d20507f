//! gantry's web dashboard, shared by both drivers.
//!
//! A tour:
//! - [`Board`] is the view model: nodes with every GPU, fraction and MIG slice and who holds
//!   it, the queue tree with quota, borrowing, lending and fair share, jobs with why they wait,
//!   their place in line and estimated start, events, inference services and a day of history.
//!   A driver fills it from its engine snapshot ([`nodes_from`], [`queues_from`],
//!   [`waiting_of`]) plus what only it knows (who submitted a job, exit codes, output, events);
//!   so `gantry serve` and the Kubernetes controller show the same numbers.
//! - [`render`] turns a board into HTML pages: server-rendered, no JavaScript framework, no build
//!   step, colours with a pattern or a letter as well (never colour alone) and a legend each.
//! - [`web`] serves them with axum beside `/metrics`: the routes, sign-in with a token kept in
//!   an `HttpOnly; SameSite=Strict` cookie, and live updates by long polling with ETags (a page
//!   asks for its content again; the server answers once a change makes it differ, so an idle
//!   page costs one held request).
//! - [`History`] keeps a bounded day of samples (GPUs held, wanted by waiting jobs, capacity).
//!
//! A [`web::Source`] is what a driver implements: build a board for a page and a viewer, say
//! when something changed, and check tokens. Kubernetes mode's source is read-only.

use std::collections::BTreeMap;

use gantry_engine::{JobId, JobPhase, Profile, Snapshot};

pub mod history;
pub mod render;
pub mod web;

pub use history::{History, Sample};

/// Everything a page may show.
#[derive(Debug, Clone, Default)]
pub struct Board {
    /// Which driver serves it (`gantry serve`, `Kubernetes controller`), for the header.
    pub driver: String,
    /// No changes can be made from here (Kubernetes mode); said in the header.
    pub read_only: bool,
    /// When it was built (ms since the epoch).
    pub now_ms: u64,
    /// Nodes in name order.
    pub nodes: Vec<NodeView>,
    /// Queues, parents before children.
    pub queues: Vec<QueueView>,
    /// Jobs, newest first.
    pub jobs: Vec<JobView>,
    /// Inference services (`None`: this driver has none to show).
    pub services: Option<Vec<ServiceView>>,
    /// Recent events of all jobs, newest first.
    pub events: Vec<EventView>,
    /// A day of samples, oldest first.
    pub history: Vec<Sample>,
    /// Said at the top of every page (a standby replica, a queue left out).
    pub notes: Vec<String>,
}

/// One node and its GPUs.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// Name.
    pub name: String,
    /// Takes new work.
    pub ready: bool,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// GPUs in local order.
    pub devices: Vec<DeviceView>,
}

/// A job holding (part of) a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The job's key (its page is `/jobs/KEY`).
    pub job: String,
    /// Its queue (a member of another team sees "another team").
    pub queue: String,
    /// Thousandths of the device: 1000 whole.
    pub milli: u16,
}

/// One GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    /// Device uuid.
    pub uuid: String,
    /// Model.
    pub model: String,
    /// Healthy.
    pub healthy: bool,
    /// Who holds it (whole: one holder at 1000; shared: several fractions).
    pub holders: Vec<Holder>,
    /// MIG mode: instances at their memory-slice starts.
    pub mig: Option<Vec<SliceView>>,
}

/// One MIG instance.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceView {
    /// Profile (`1g.10gb`).
    pub profile: String,
    /// First memory slice (of 8).
    pub start: u8,
    /// Memory slices it spans.
    pub size: u8,
    /// The job holding it.
    pub holder: Option<Holder>,
    /// Not marked unhealthy.
    pub healthy: bool,
}

/// A queue with its numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueView {
    /// The engine's numbers.
    pub report: gantry_engine::QueueReport,
    /// Things its owner should know (a quota no node can use).
    pub warnings: Vec<String>,
}

/// One task of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskView {
    /// How the driver names it (`0.1`, a pod's name).
    pub name: String,
    /// Node (empty while unplaced).
    pub node: String,
    /// Devices it holds (uuids; slices as the driver names them).
    pub devices: Vec<String>,
    /// What it is doing.
    pub phase: String,
}

/// Something that happened to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventView {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// The job's key.
    pub job: String,
    /// Its queue.
    pub queue: String,
    /// One word (`submitted`, `Scheduled`, `preempted`).
    pub kind: String,
    /// Details.
    pub message: String,
    /// A warning rather than news.
    pub warning: bool,
}

/// Why a job waits, from the engine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Waiting {
    /// In words with numbers.
    pub reason: String,
    /// 1-based place among its queue's waiting jobs.
    pub position: Option<usize>,
    /// Jobs waiting in its queue.
    pub queue_length: usize,
    /// Estimated start (ms since the epoch), when the replay can tell.
    pub estimated_start_ms: Option<u64>,
    /// Waiting will not help.
    pub unresolvable: bool,
}

/// One job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobView {
    /// Its key: unique, URL-safe (`/jobs/KEY`).
    pub key: String,
    /// What users call it (`train-7`, `ns/podgroup`).
    pub name: String,
    /// Leaf queue.
    pub queue: String,
    /// Who submitted it (empty when the driver cannot tell).
    pub user: String,
    /// `batch`, `training`, `inference`, `pod group`, `pod`.
    pub kind: String,
    /// `pending`, `running`, `succeeded`, `failed`, `cancelled`.
    pub state: String,
    /// Run number (0 for the first).
    pub attempt: u32,
    /// While pending: why, where in line, when.
    pub waiting: Option<Waiting>,
    /// Why it ended, or a driver's note.
    pub reason: String,
    /// Exit code of a finished job, where known.
    pub exit_code: Option<i32>,
    /// Submitted (ms since the epoch).
    pub submitted_ms: u64,
    /// Started.
    pub started_ms: Option<u64>,
    /// Finished.
    pub finished_ms: Option<u64>,
    /// Tasks it asks for.
    pub tasks_wanted: u32,
    /// Whole GPUs it asks for, in thousandths (a fraction as its share).
    pub gpu_milli: u64,
    /// MIG slices it asks for.
    pub slices: u32,
    /// What it asks for, in words (`2 tasks × 8 GPUs (h100-80gb), all or nothing`).
    pub request: String,
    /// Its tasks (placed ones at least).
    pub tasks: Vec<TaskView>,
    /// Its events, oldest first.
    pub events: Vec<EventView>,
    /// The tail of each task's output: (task, text). Only on its own page.
    pub output: Vec<(String, String)>,
}

/// An inference service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceView {
    /// The job key.
    pub key: String,
    /// Queue.
    pub queue: String,
    /// State.
    pub state: String,
    /// Replica bounds, desire and counts.
    pub min: u32,
    /// Desired replicas.
    pub desired: u32,
    /// Running replicas.
    pub running: u32,
    /// Ready replicas.
    pub ready: u32,
    /// Most replicas.
    pub max: u32,
    /// Load per ready replica.
    pub per_replica: Option<f64>,
    /// Target per replica.
    pub target: f64,
    /// The metric.
    pub metric: String,
    /// The last scaling decision, in words.
    pub last_decision: String,
    /// `host:port` per replica, with readiness.
    pub endpoints: Vec<(String, bool)>,
}

impl Board {
    /// Keep only what a viewer may see: queues, jobs, services and events of the queues
    /// `visible` accepts; a device held by another team's job keeps its colour but loses the
    /// job's name.
    pub fn restrict(&mut self, visible: &dyn Fn(&str) -> bool) {
        let hide = |h: &mut Holder| {
            if !visible(&h.queue) {
                h.job.clear();
            }
        };
        for n in &mut self.nodes {
            for d in &mut n.devices {
                d.holders.iter_mut().for_each(hide);
                for s in d.mig.iter_mut().flatten() {
                    s.holder.iter_mut().for_each(hide);
                }
            }
        }
        self.queues.retain(|q| visible(&q.report.name));
        self.jobs.retain(|j| visible(&j.queue));
        if let Some(s) = self.services.as_mut() {
            s.retain(|s| visible(&s.queue));
        }
        self.events.retain(|e| visible(&e.queue));
    }

    /// The job with this key.
    pub fn job(&self, key: &str) -> Option<&JobView> {
        self.jobs.iter().find(|j| j.key == key)
    }
}

/// Per model: (GPUs, GPUs held at all, capacity left on partly used GPUs in thousandths:
/// fractions of shared GPUs and free memory slices of MIG GPUs, which a whole-GPU job cannot
/// use). Only healthy GPUs of ready nodes count.
pub fn gpu_totals<'a>(nodes: impl IntoIterator<Item = &'a NodeView>) -> BTreeMap<String, GpuTotal> {
    let mut out: BTreeMap<String, GpuTotal> = BTreeMap::new();
    for n in nodes {
        let mut models: Vec<&str> = Vec::new();
        for d in &n.devices {
            let t = match out.get_mut(d.model.as_str()) {
                Some(t) => t,
                None => out.entry(d.model.clone()).or_default(),
            };
            if !models.contains(&d.model.as_str()) {
                models.push(&d.model);
                t.nodes += 1;
            }
            t.gpus += 1;
            if !n.ready || !d.healthy {
                t.unavailable += 1;
                continue;
            }
            match &d.mig {
                Some(slices) => {
                    let used: u32 = slices
                        .iter()
                        .filter(|s| s.holder.is_some() || !s.healthy)
                        .map(|s| u32::from(s.size))
                        .sum();
                    if used > 0 {
                        t.held += 1;
                        t.fragmented_milli += (8u32.saturating_sub(used)) * 125;
                    } else {
                        t.free += 1;
                    }
                }
                None => {
                    let milli: u32 = d.holders.iter().map(|h| u32::from(h.milli)).sum();
                    if milli == 0 {
                        t.free += 1;
                    } else {
                        t.held += 1;
                        t.fragmented_milli += 1000u32.saturating_sub(milli);
                    }
                }
            }
        }
    }
    out
}

/// GPUs of one model, counted by [`gpu_totals`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuTotal {
    /// Nodes with at least one.
    pub nodes: u32,
    /// All of them.
    pub gpus: u32,
    /// Held in whole or in part.
    pub held: u32,
    /// Nothing on them, healthy, node ready.
    pub free: u32,
    /// Unhealthy, or on a node that is not ready.
    pub unavailable: u32,
    /// Capacity left on partly used GPUs (thousandths of a GPU).
    pub fragmented_milli: u32,
}

/// The snapshot's nodes as views; `key` names a job (its page key) and its queue.
pub fn nodes_from(snap: &Snapshot, key: &dyn Fn(JobId) -> String) -> Vec<NodeView> {
    let holder = |j: JobId, milli: u16| Holder {
        job: key(j),
        queue: snap.queue_name(snap.job_queue(j)).to_string(),
        milli,
    };
    let mut nodes: Vec<NodeView> = snap
        .gpu_report()
        .into_iter()
        .map(|n| NodeView {
            name: n.name,
            ready: n.ready,
            labels: n.labels,
            devices: n
                .devices
                .into_iter()
                .map(|d| DeviceView {
                    uuid: d.uuid,
                    model: d.model,
                    healthy: d.healthy,
                    holders: d.holders.iter().map(|&(j, m)| holder(j, m)).collect(),
                    mig: d.mig.map(|slices| {
                        slices
                            .into_iter()
                            .map(|s| SliceView {
                                holder: s.job.map(|j| holder(j, 1000)),
                                profile: s.profile,
                                start: s.start,
                                size: s.size,
                                healthy: s.healthy,
                            })
                            .collect()
                    }),
                })
                .collect(),
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// The snapshot's queue tree as views (no warnings).
pub fn queues_from(snap: &Snapshot) -> Vec<QueueView> {
    snap.queue_report()
        .into_iter()
        .map(|report| QueueView {
            report,
            warnings: Vec::new(),
        })
        .collect()
}

/// Most engine cycles a start estimate looks ahead.
pub const ESTIMATE_CYCLES: usize = 64;

/// Why each of `jobs` waits, where it stands and, with a profile, when it should start (one
/// replay of the engine for all of them). Jobs that do not wait get `None`.
pub fn waiting_of(
    snap: &Snapshot,
    jobs: &[JobId],
    profile: Option<&Profile>,
    now_ms: u64,
) -> Vec<Option<Waiting>> {
    let pending: Vec<JobId> = jobs
        .iter()
        .copied()
        .filter(|&j| snap.job_phase(j) == JobPhase::Pending)
        .collect();
    let mut estimates: BTreeMap<u32, Option<u64>> = BTreeMap::new();
    if let Some(p) = profile {
        for (j, e) in pending
            .iter()
            .zip(snap.estimate_starts(&pending, p, now_ms, ESTIMATE_CYCLES))
        {
            estimates.insert(j.0, e);
        }
    }
    jobs.iter()
        .map(|&j| {
            if snap.job_phase(j) != JobPhase::Pending {
                return None;
            }
            let x = snap.explain(j)?;
            let why = snap.why(j);
            Some(Waiting {
                reason: why
                    .as_ref()
                    .map(|w| w.text.clone())
                    .or(x.reason)
                    .unwrap_or_default(),
                position: x.position,
                queue_length: x.queue_length,
                estimated_start_ms: x
                    .estimated_start
                    .or_else(|| estimates.get(&j.0).copied().flatten()),
                unresolvable: x.unresolvable || why.is_some_and(|w| w.unresolvable),
            })
        })
        .collect()
}

/// HTML-escape text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests;
