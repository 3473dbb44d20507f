//! # gantry-sim
//!
//! `gantry sim`: replay real GPU-cluster traces through the production engine. The simulator is
//! a *driver*: it keeps a [`gantry_engine::Snapshot`] up to date on a virtual clock and calls
//! [`gantry_engine::schedule`], so every figure it reports is the engine's.
//!
//! A tour:
//! - [`workload`]: what a replay consumes — a cluster, a queue tree, jobs with arrival times and
//!   actual runtimes, timed node operations, and optionally the fill experiment's rules.
//! - Inputs: [`openb`] (Alibaba's GPU trace, replay with departures or the FGD paper's fill
//!   experiment), [`philly`] (Microsoft's Philly job table on its default 64 × 8 cluster, one
//!   queue per virtual cluster) and [`scenario`] (YAML in the style of kube-scheduler's
//!   `scheduler_perf`: add nodes, submit from seeded distributions, churn, advance time, fail and
//!   recover nodes, with named size variants).
//! - [`driver`]: the discrete-event loop. Arrivals, completions and node operations at one
//!   timestamp are applied, then one cycle runs if anything changed. Preemption victims are
//!   already requeued by the engine; the driver drops their stale completions with a per-job
//!   generation. The trace's runtime is given to the engine as the expected runtime (used by the
//!   `gantry` profile's backfill and estimates); the actual runtime also comes from the trace.
//! - [`metrics`]: wait and JCT, allocation over time, unallocated GPUs at saturation,
//!   fragmentation, per-queue share versus entitlement, preemptions, engine time per cycle and
//!   replay wall time.
//! - [`compare`]: several profiles on one workload, with ratios against the first, and the
//!   what-if comparison of queue waits under current and proposed quotas.
//! - [`seeds`]: the fill experiment over several seeds: mean and spread per policy, the ratio
//!   to `fgd` in the same runs, and the FGD paper's published means for the pod list.
//! - [`report`]: a folder with SVG plots and an `index.html`.
//!
//! ```
//! use gantry_engine::Profile;
//! use gantry_sim::{driver, philly};
//!
//! let text = "timestamp,duration,num_gpus,gpu_time,cluster\n\
//!             2017-10-09 07:00:00,3600,8,28800,a\n\
//!             2017-10-09 07:00:00,600,4,2400,b\n";
//! let jobs = philly::parse("philly.csv", text).unwrap();
//! let w = philly::workload("tiny", &jobs, philly::default_cluster_of(1), philly::default_queues(&jobs, 8));
//! let r = driver::replay(&w, &Profile::gantry(), &driver::Options::default(), &mut |_| {}).unwrap();
//! assert_eq!(r.completed, 2);
//! ```

pub mod compare;
mod csv;
pub mod driver;
pub mod error;
pub mod inference;
pub mod metrics;
pub mod openb;
pub mod philly;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod seeds;
pub mod workload;

pub use error::{Result, SimError};
pub use metrics::RunResult;
pub use workload::{TraceJob, Workload};
