//! # gantry-model
//!
//! The words gantry speaks, as data. Everything here is plain data with serde and validation; no
//! scheduling logic lives in this crate.
//!
//! A tour:
//! - [`cluster`]: nodes, devices (whole GPUs with NVLink domain, NUMA node and health) and MIG
//!   slices; [`ClusterSpec`] expands node pools and validates into a [`Cluster`], whose
//!   [`Catalog`] summarises what the hardware can offer.
//! - [`mig`]: MIG geometry — each profile's memory-slice size and legal starts, as bitmasks —
//!   built in for A100-40/80, H100-80 and H200, or loaded from what NVML reports.
//! - [`queue`]: the queue tree (leaves hold jobs, inner nodes are cohorts) with per-flavor
//!   nominal quota, borrowing and lending limits, and weights; priority classes.
//! - [`job`]: jobs, task groups, GPU demands (whole, shared fraction, MIG profile), gangs,
//!   placement constraints and inference replicas.
//! - [`service`]: inference services' autoscaling (a metric scraped from each replica, a target
//!   per replica, stabilization windows, tolerance), their port and readiness path.
//! - [`eligibility`]: where a task may run — node selectors, required node affinity, taints and
//!   tolerations, with Kubernetes' semantics.
//! - [`quantity`] and [`doc`]: parsing of `64Gi`, `500m`, `2h`, and of YAML/JSON documents, with
//!   errors that name the field (`jobs[0].tasks[1].gpus: 9 requested but no flavor offers more
//!   than 8 per node`) or the file, line and column.
//!
//! A **flavor** is a GPU model for whole devices (`h100-80gb`) or a model's MIG profile
//! (`h100-80gb/1g.10gb`); quota is written per flavor in GPUs (or slices) and kept in thousandths.

pub mod cluster;
pub mod doc;
pub mod eligibility;
mod error;
pub mod job;
pub mod mig;
pub mod quantity;
pub mod queue;
pub mod service;

pub use cluster::{
    normalize_model, Catalog, Cluster, ClusterSpec, Device, Health, MigLayout, Node, NodePool,
    Slice,
};
pub use eligibility::{
    Exclusion, NodeConstraints, SelectorOp, SelectorRequirement, SelectorTerm, Taint, TaintEffect,
    Toleration, TolerationOp,
};
pub use error::ModelError;
pub use job::{
    Demand, GpuDemand, Job, JobKind, JobSpec, JobsSpec, Placement, Replicas, Spread, TaskGroup,
    TaskGroupSpec,
};
pub use mig::{MigGeometry, MigProfile, ReportedProfile};
pub use queue::{
    check_name, default_priority_classes, PriorityClass, QueueDef, QueueSpec, QueueTree,
    QueuesSpec, Quota, QuotaSpec, UnlistedFlavors,
};

/// The flavor name of a MIG profile on a model: `h100-80gb/1g.10gb`.
pub fn mig_flavor(model: &str, profile: &str) -> String {
    format!("{model}/{profile}")
}
