//! # gantry-engine
//!
//! The scheduling engine: a pure library. A driver (the simulator, the standalone server, the
//! Kubernetes controller) keeps a [`Snapshot`] up to date with events and calls [`schedule`];
//! the engine returns a [`Plan`] — binds with exact devices and MIG slices, preemptions,
//! reservations and the reasons jobs wait. No I/O, no clocks, no threads, no tokio/tonic/kube:
//! the same snapshot, profile and time always give the same plan.
//!
//! A tour, in the order a cycle uses them:
//! - [`snapshot`]: arenas of nodes, devices, NVLink domains, queues and jobs with `u32` ids, and
//!   indexes kept incrementally (nodes and domains bucketed by free GPUs per model, shared GPUs
//!   by remaining fraction, pending jobs per queue in order).
//! - [`quota`](crate::quota) (internal): nominal quota, borrowing and lending over the queue tree.
//! - [`cycle`](crate::schedule): queue order by weighted dominant share (optionally blended with
//!   decayed history) or by submit time; many admissions per queue per cycle; a per-shape
//!   failure memo and incremental cycles keep 100k pending jobs cheap.
//! - the learned workload (internal, `workload`): task shapes from every submission in a decayed
//!   histogram — what fragmentation is measured against.
//! - node classes (internal, `classes`): ready nodes grouped by identical placement state, so a
//!   placement scores each distinct state once, not each node.
//! - placement (internal, `place`, `choose`, `score`): one score over every feasible (node, GPU
//!   model) pair a task allows — gantry's fragmentation-aware packing, the FGD paper's, BestFit or
//!   first fit — then NVLink-domain best fit inside the node, MIG slices at the start that
//!   destroys the fewest future placements, gang scopes (node, NVLink domain, label); all staged
//!   in a statement so gangs are all-or-nothing and roll back in O(tasks).
//! - preemption (internal): priority within a queue, reclaim of borrowed quota across queues,
//!   whole gangs only, a minimal victim set, never below a queue's nominal quota to let another borrow.
//! - backfill (internal): reservations for blocked queue heads with a start time from expected
//!   runtimes; other jobs use reserved GPUs only if they end before.
//! - [`explain`]: a [`Reason`] with numbers for every waiting job, its queue position and
//!   estimated start.
//! - [`profile`]: `gantry` (default), `fgd`, `best-fit` and `fifo` are configurations of this
//!   engine.
//! - [`autoscale`]: inference services' replica count from their measured load (Kubernetes'
//!   HPA algorithm with stabilization windows); a driver feeds its output to
//!   [`Snapshot::set_desired_replicas`].
//!
//! ```
//! use gantry_engine::{schedule, Profile, Snapshot};
//! use gantry_model::doc::from_yaml;
//! use gantry_model::{ClusterSpec, JobSpec, QueuesSpec};
//!
//! let cluster = from_yaml::<ClusterSpec>(
//!     "pools: [{name: dgx, count: 2, gpu_model: h100-80gb, gpus_per_node: 8, cpu: 224, memory: 2Ti}]",
//!     "cluster.yaml",
//! ).unwrap().build().unwrap();
//! let queues = from_yaml::<QueuesSpec>(
//!     "queues: [{name: team-a, quotas: {h100-80gb: {nominal: 16}}}]",
//!     "queues.yaml",
//! ).unwrap().build().unwrap();
//! let job = from_yaml::<JobSpec>(
//!     "{name: train, queue: team-a, kind: training, tasks: [{count: 2, gpus: 8, nvlink: true}]}",
//!     "job.yaml",
//! ).unwrap().validate(&queues, Some(&cluster.catalog())).unwrap();
//!
//! let mut snap = Snapshot::new(&cluster, &queues).unwrap();
//! snap.submit(&job, 0).unwrap();
//! let plan = schedule(&mut snap, &Profile::gantry(), 0);
//! assert_eq!(plan.binds[0].tasks.len(), 2); // the gang started whole, on two nodes
//! ```

mod account;
mod audit;
pub mod autoscale;
mod backfill;
mod choose;
mod classes;
mod cycle;
mod estimate;
pub mod explain;
mod fast;
pub mod named;
mod place;
pub mod plan;
mod preempt;
pub mod profile;
mod quota;
pub mod report;
mod score;
pub mod snapshot;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod workload;

pub use cycle::schedule;
pub use explain::{fmt_time, Explanation, Reason, Why};
pub use named::{NamedAlloc, NamedGpu};
pub use plan::{Bind, CycleStats, Plan, PreemptCause, Preemption, Reservation};
pub use profile::{History, Ordering, Packing, Profile};
pub use report::{DeviceReport, FlavorReport, NodeReport, QueueReport, SliceReport};
pub use snapshot::{
    DeviceId, FlavorId, GpuAlloc, GpuTotals, JobId, JobPhase, NodeId, QueueId, Snapshot, TaskAlloc,
    Time,
};

/// What the engine refuses. The variant names double as metric labels.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// A job name is already in use by a job that has not finished.
    #[error("job {name:?} already exists")]
    DuplicateJob {
        /// The name.
        name: String,
    },
    /// The queue does not exist or is a cohort.
    #[error("queue {queue:?} is not a leaf queue of this cluster")]
    UnknownQueue {
        /// The name.
        queue: String,
    },
    /// No such job, or it has finished.
    #[error("no running or pending job with id {id}")]
    UnknownJob {
        /// The id.
        id: u32,
    },
    /// Only single-group jobs (inference services) scale.
    #[error("job {id} has several task groups and cannot be scaled")]
    NotScalable {
        /// The id.
        id: u32,
    },
    /// A node with more devices than the engine's 64-bit masks hold.
    #[error("node {node:?} has {count} devices; at most 64 are supported")]
    TooManyDevices {
        /// Node name.
        node: String,
        /// Devices.
        count: usize,
    },
    /// A MIG device of a model without geometry.
    #[error("model {model:?} has MIG devices but no MIG geometry")]
    NoGeometry {
        /// Model.
        model: String,
    },
    /// A MIG profile no model in the cluster offers.
    #[error("no GPU model in the cluster offers MIG profile {profile:?}")]
    NoSuchProfile {
        /// Profile.
        profile: String,
    },
    /// Recorded tasks could not be put back (see `Snapshot::restore`).
    #[error("cannot restore job {job:?}: {reason}")]
    RestoreConflict {
        /// The job.
        job: String,
        /// What clashed.
        reason: String,
    },
}
#[cfg(test)]
mod reason_tests;
#[cfg(test)]
mod tests;
