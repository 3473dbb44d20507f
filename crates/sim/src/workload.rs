//! What a replay consumes: a cluster, a queue tree, jobs with arrival times and actual runtimes,
//! and timed node operations. Every input format (openb, Philly, scenario YAML) is turned into a
//! [`Workload`]; the driver knows nothing about formats.

use gantry_model::{Cluster, Job, QueueTree};

use crate::error::{Result, SimError};

/// One job of a trace.
#[derive(Debug, Clone)]
pub struct TraceJob {
    /// The job as the engine gets it. `expected_runtime_ms` is set from the trace's runtime
    /// (used by the `gantry` profile's backfill and by start-time estimates).
    pub job: Job,
    /// When it is submitted (ms on the virtual clock).
    pub arrival_ms: u64,
    /// How long it runs once started (from the trace); `None`: it never leaves (fill experiment).
    pub runtime_ms: Option<u64>,
}

/// A node operation at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeOp {
    /// When (ms).
    pub at_ms: u64,
    /// Node name.
    pub node: String,
    /// `true`: the node comes (back) up; `false`: it fails and its jobs are requeued whole.
    pub ready: bool,
}

/// The fill experiment of the FGD paper: jobs arrive one by one and never leave; a job that does
/// not fit when it arrives is dropped (counted as failed), as in the paper's simulator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fill {
    /// Arrivals stop once arrived GPU demand reaches this multiple of capacity.
    pub multiple: f64,
    /// Seed of the shuffle and of the extra copies.
    pub seed: u64,
}

/// Everything a replay needs.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Shown in reports (`openb-default`, `philly`, a scenario's name).
    pub name: String,
    /// The hardware.
    pub cluster: Cluster,
    /// Queues and priority classes.
    pub queues: QueueTree,
    /// Jobs, in arrival order (ties keep file order).
    pub jobs: Vec<TraceJob>,
    /// Node failures and recoveries (and late additions: nodes listed here with `ready: true`
    /// and in `initially_down` join at that time).
    pub node_ops: Vec<NodeOp>,
    /// Nodes that are not ready when the replay starts.
    pub initially_down: Vec<String>,
    /// Fill-experiment semantics, if set.
    pub fill: Option<Fill>,
}

impl Workload {
    /// GPUs of the cluster (whole devices, MIG-enabled ones included), all nodes counted.
    pub fn gpu_capacity(&self) -> u64 {
        self.cluster
            .nodes
            .iter()
            .map(|n| n.devices.len() as u64)
            .sum()
    }

    /// Replace the queue tree (what-if runs). Every queue a job names must be a leaf of the
    /// new tree.
    ///
    /// # Errors
    /// A job's queue is missing from, or a cohort in, the new tree.
    pub fn with_queues(mut self, queues: QueueTree) -> Result<Workload> {
        for j in &self.jobs {
            let ok = queues
                .find(&j.job.queue)
                .is_some_and(|i| queues.queues[i].is_leaf());
            if !ok {
                return Err(SimError::Config(format!(
                    "the proposed queues have no leaf queue {:?}, which jobs of {} use",
                    j.job.queue, self.name
                )));
            }
        }
        self.queues = queues;
        Ok(self)
    }

    /// Sort jobs by arrival (stable) — loaders call this once.
    pub(crate) fn sort_jobs(&mut self) {
        self.jobs.sort_by_key(|j| j.arrival_ms);
        self.node_ops.sort_by_key(|o| o.at_ms);
    }
}

/// GPU demand of a job in thousandths (whole GPUs 1000 each, shared fractions as asked, MIG
/// slices 1000 each), over all its tasks.
pub fn job_gpu_demand_milli(job: &Job) -> u64 {
    use gantry_model::GpuDemand;
    job.groups
        .iter()
        .map(|g| {
            let per = match &g.demand.gpu {
                GpuDemand::None => 0,
                GpuDemand::Whole { count, .. } => *count as u64 * 1000,
                GpuDemand::Shared { milli, .. } => *milli as u64,
                GpuDemand::Mig { .. } => 1000,
            };
            per * g.count as u64
        })
        .sum()
}
