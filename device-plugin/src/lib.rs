//! # gantry-device-plugin
//!
//! gantry's node side: the only part of gantry that touches NVIDIA hardware. It finds the GPUs
//! and MIG slices of a node, watches their health, advertises them to the kubelet through the
//! device-plugin API v1beta1, honours the central scheduler's exact device choice at allocation
//! time, and publishes the node's inventory for the scheduler.
//!
//! A tour, bottom up:
//! - [`inventory`]: the [`Inventory`] trait ("what devices are here, and their health events")
//!   and the detailed [`NodeInventory`], reducible to the scheduler's [`gantry_model::Node`].
//!   Two implementations: [`nvml::NvmlInventory`] (the driver, loaded at run time; raw calls
//!   where nvml-wrapper has gaps) and [`fake::FakeInventory`] (a YAML file with DGX-style
//!   topologies, MIG layouts and scripted health events).
//! - [`health`]: XID and double-bit ECC events make devices Unhealthy; a quiet period plus a
//!   successful probe makes them Healthy again. Every change becomes a new [`Snapshot`].
//! - [`resources`]: MIG strategies `none` / `single` / `mixed` and NVIDIA's resource names
//!   (`nvidia.com/gpu`, `nvidia.com/mig-1g.10gb`); the [`Snapshot`] everything above reads.
//! - [`prefer`]: the NVLink-aware GetPreferredAllocation that honours `must_include`.
//! - [`handoff`]: the [`HandoffSource`] trait — which devices did the scheduler choose for the
//!   task being admitted — with the standalone [`handoff::AssignmentBook`] and the Kubernetes
//!   annotation contract ([`handoff::POD_ANNOTATION`]); with feature `kube`,
//!   `kube_handoff::KubeHandoff` reads those annotations with kube-rs.
//! - [`plugin`]: the DevicePlugin gRPC service of one resource (ListAndWatch, Allocate, ...).
//! - [`kubelet`]: one socket per resource, registration, and re-registration when the kubelet
//!   restarts.
//! - [`labels`]: GPU-feature-discovery-style node labels, a pure function.
//! - [`publish`]: the [`Publisher`] trait (implemented by the standalone agent and Kubernetes
//!   mode) with stdout and file publishers.
//!
//! [`serve`] wires it all together; the `gantry-device-plugin` binary is a thin CLI over it.

pub mod error;
pub mod fake;
pub mod handoff;
pub mod health;
pub mod inventory;
#[cfg(feature = "kube")]
pub mod kube_handoff;
#[cfg(feature = "kube")]
pub mod kube_publish;
#[cfg(all(test, feature = "kube"))]
mod kube_test {
    //! What the mock Kubernetes API server answers in the kube tests.
    use http::Response;
    use kube::client::Body;

    /// A 200 with `v` as the JSON body.
    pub(crate) fn respond(v: &serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(v).expect("json")))
            .expect("response")
    }
}
pub mod kubelet;
pub mod labels;
pub mod nvml;
pub mod plugin;
pub mod prefer;
pub mod publish;
pub mod resources;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

pub use error::PluginError;
pub use handoff::{Handoff, HandoffSource};
pub use health::HealthConfig;
pub use inventory::{Inventory, NodeInventory};
pub use kubelet::KubeletConfig;
pub use plugin::AllocateOptions;
pub use publish::Publisher;
pub use resources::{MigStrategy, Snapshot};

/// Everything [`serve`] needs besides the inventory.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where and how to meet the kubelet.
    pub kubelet: KubeletConfig,
    /// How MIG slices are advertised.
    pub strategy: MigStrategy,
    /// Health rules.
    pub health: HealthConfig,
    /// What Allocate returns.
    pub allocate: AllocateOptions,
    /// How often the publisher reports that this plugin is alive even when nothing changed
    /// (zero: never). The scheduler treats a node whose inventory stops heartbeating as stale.
    pub heartbeat: std::time::Duration,
}

/// Discover the devices and build the first snapshot.
///
/// # Errors
/// Discovery failed, or the devices cannot be advertised under `strategy`.
pub fn initial_snapshot(
    inventory: &dyn Inventory,
    strategy: MigStrategy,
) -> Result<Snapshot, PluginError> {
    Snapshot::build(inventory.discover()?, strategy)
}

/// Run the device plugin until `shutdown` resolves: discover, watch health, serve and register
/// every resource with the kubelet, and publish the inventory on every change.
///
/// `on_state` receives the node-state channel once it exists (tests use it to watch health).
///
/// # Errors
/// Discovery, the MIG strategy, or the device-plugin directory failed.
pub async fn serve(
    inventory: Arc<dyn Inventory>,
    settings: Settings,
    handoff: Arc<dyn HandoffSource>,
    publisher: Option<Arc<dyn Publisher>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PluginError> {
    let first = initial_snapshot(inventory.as_ref(), settings.strategy)?;
    tracing::info!(
        source = %inventory.describe(),
        gpus = first.inventory.gpus.len(),
        resources = ?first.resources.iter().map(|r| (r.name.as_str(), r.devices.len())).collect::<Vec<_>>(),
        "inventory discovered"
    );
    let initial_inv = first.inventory.clone();
    let (tx, rx) = watch::channel(Arc::new(first));
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = health::spawn_monitor(
        inventory,
        settings.health.clone(),
        settings.strategy,
        initial_inv,
        tx,
        stop.clone(),
    )
    .map_err(|e| PluginError::io("start the health thread", e))?;
    let heartbeat = settings.heartbeat;
    let publisher_task =
        publisher.map(|p| tokio::spawn(publish::run_publisher(rx.clone(), p, heartbeat)));
    let manager = kubelet::Manager::new(settings.kubelet, rx, handoff, settings.allocate);
    let result = manager.run(shutdown).await;
    stop.store(true, Ordering::Relaxed);
    // The monitor wakes at least every 200 ms; joining ends the state channel's sender, which
    // ends the publisher.
    let _ = tokio::task::spawn_blocking(move || monitor.join()).await;
    if let Some(t) = publisher_task {
        let _ = t.await;
    }
    result
}
