//! gantry's Kubernetes mode.
//!
//! gantry runs beside the default scheduler and schedules the pods that ask for it
//! (`spec.schedulerName: gantry`), with the same engine as `gantry sim` and `gantry serve`.
//! A tour of the crate:
//!
//! - [`crd`]: the `Queue`, `PodGroup` and `NodeInventory` custom resources, and the labels and
//!   annotations pods carry.
//! - [`translate`]: pure functions between Kubernetes objects and the engine's model (pods to
//!   demands and jobs, Nodes plus inventories to nodes, Queues to the queue tree).
//! - [`mirror`]: the cluster as the watches show it, an engine snapshot kept in step one event
//!   at a time, and one cycle's plan turned into API writes ([`Actions`]).
//! - [`status`]: what the API shows of each job: pod conditions, PodGroup phases and
//!   conditions, Queue statuses.
//! - [`apply`]: the writes, outside the scheduling loop: binds, evictions (a refusal is a
//!   value), statuses, throttled by a client-side token bucket (`--qps`, `--burst`) and bounded
//!   by a call timeout; what came of them flows back to the loop.
//! - [`events`]: Events `kubectl describe` shows, written off the critical path.
//! - [`leader`]: Lease-based leader election.
//! - [`controller`]: the watches, the cycle loop and the leader's hand-over.
//! - [`dashboard`]: the read-only web dashboard, fed with boards the loop builds from the
//!   mirror while someone looks.
//! - [`metrics`]: Prometheus metrics and `/healthz`, `/readyz`.
//! - [`error`]: the crate's typed errors.
pub mod apply;
pub mod controller;
pub mod dashboard;
/// The custom resources, from `gantry-crd` (shared with the device plugin).
pub use gantry_crd as crd;
pub mod error;
pub mod events;
pub mod leader;
pub mod metrics;
pub mod mirror;
pub mod status;
pub mod translate;

pub use controller::{run, run_with, ControllerConfig};
pub use error::KubeError;
pub use metrics::Metrics;
pub use mirror::{Actions, Mirror};
