//! Publishing the node's exact inventory for the scheduler.
//!
//! A [`Publisher`] receives the node as a [`gantry_model::Node`] whenever it changes (devices,
//! health of devices and MIG slices, MIG layout), and a heartbeat in between. Here are the
//! trait and the stdout and file publishers; with feature `kube`,
//! `kube_publish::KubeNodePublisher` writes the node's `NodeInventory` object (owned by its
//! Node, with the heartbeat in its status) and GPU-feature-discovery labels on the Node. The
//! standalone node agent (gantry gRPC API) implements the trait in its own crate.
//! [`run_publisher`] drives one from the node state.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use gantry_model::Node;
use tokio::sync::watch;

use crate::inventory::NodeInventory;
use crate::resources::Snapshot;
use crate::PluginError;

/// Text formats for inventories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// JSON (one document; pretty-printed).
    #[default]
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// Render a node.
    ///
    /// # Errors
    /// Serialisation failed (not expected for [`Node`]).
    pub fn render(self, node: &Node) -> Result<String, String> {
        match self {
            Format::Json => serde_json::to_string_pretty(node)
                .map(|s| s + "\n")
                .map_err(|e| e.to_string()),
            Format::Yaml => serde_yaml::to_string(node).map_err(|e| e.to_string()),
        }
    }
}

/// Something that tells the scheduler what this node has.
pub trait Publisher: Send + Sync + fmt::Debug {
    /// Publish the node's current inventory (called on start and on every change).
    ///
    /// # Errors
    /// [`PluginError::Publish`]; the caller logs it and publishes again on the next change.
    fn publish(&self, node: &Node) -> Result<(), PluginError>;

    /// Publish with the raw inventory at hand too (for publishers that derive more from it,
    /// such as node labels). Defaults to [`Publisher::publish`].
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    fn publish_inventory(&self, inventory: &NodeInventory, node: &Node) -> Result<(), PluginError> {
        let _ = inventory;
        self.publish(node)
    }

    /// Say this plugin is alive though nothing changed (default: nothing to do).
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    fn heartbeat(&self) -> Result<(), PluginError> {
        Ok(())
    }
}

/// Writes each inventory to standard output.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdoutPublisher {
    /// The format.
    pub format: Format,
}

impl Publisher for StdoutPublisher {
    fn publish(&self, node: &Node) -> Result<(), PluginError> {
        use std::io::Write;
        let text = self
            .format
            .render(node)
            .map_err(|message| PluginError::Publish {
                target: "stdout".into(),
                message,
            })?;
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|_| out.flush())
            .map_err(|e| PluginError::Publish {
                target: "stdout".into(),
                message: e.to_string(),
            })
    }
}

/// Replaces a file with each inventory (written to a temporary file, then renamed, so readers
/// never see half a document).
#[derive(Debug, Clone)]
pub struct FilePublisher {
    /// The file.
    pub path: PathBuf,
    /// The format.
    pub format: Format,
}

impl Publisher for FilePublisher {
    fn publish(&self, node: &Node) -> Result<(), PluginError> {
        let err = |message: String| PluginError::Publish {
            target: self.path.display().to_string(),
            message,
        };
        let text = self.format.render(node).map_err(err)?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, text).map_err(|e| err(format!("write {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| err(format!("rename: {e}")))
    }
}

/// Publish the node now and after every change of `state`, and heartbeat every `heartbeat`
/// (zero: never) in between, until the state's sender is dropped. A publish that failed is
/// tried again at the next heartbeat.
pub async fn run_publisher(
    mut state: watch::Receiver<Arc<Snapshot>>,
    publisher: Arc<dyn Publisher>,
    heartbeat: std::time::Duration,
) {
    let mut last: Option<Node> = None;
    let mut beat = (!heartbeat.is_zero()).then(|| {
        let mut i = tokio::time::interval(heartbeat);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    loop {
        let inventory = state.borrow_and_update().inventory.clone();
        let node = inventory.to_model_node();
        if last.as_ref() != Some(&node) {
            let p = publisher.clone();
            let n = node.clone();
            match tokio::task::spawn_blocking(move || p.publish_inventory(&inventory, &n)).await {
                Ok(Ok(())) => last = Some(node),
                Ok(Err(e)) => tracing::warn!(error = %e, "publish failed"),
                Err(e) => tracing::error!(error = %e, "publisher panicked"),
            }
        }
        let ticked = async {
            match beat.as_mut() {
                Some(i) => {
                    i.tick().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = ticked => {
                if last.is_some() {
                    let p = publisher.clone();
                    match tokio::task::spawn_blocking(move || p.heartbeat()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat failed"),
                        Err(e) => tracing::error!(error = %e, "publisher panicked"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeInventory;
    use crate::inventory::Inventory;

    #[test]
    fn file_publisher_writes_a_parseable_node() {
        let y = "node: n\ncpu: 8\nmemory: 64Gi\ngpus:\n  - {name: NVIDIA H200, memory_mib: 143771, count: 2}\nnvlink: {switch_links: 18}\n";
        let inv = FakeInventory::from_yaml(y, "t")
            .expect("ok")
            .discover()
            .expect("d");
        let dir = tempfile::tempdir().expect("tmp");
        for format in [Format::Json, Format::Yaml] {
            let path = dir.path().join("node.out");
            let p = FilePublisher {
                path: path.clone(),
                format,
            };
            p.publish(&inv.to_model_node()).expect("publish");
            let text = std::fs::read_to_string(&path).expect("read");
            let back: Node = gantry_model::doc::from_yaml(&text, "node.out").expect("parse back");
            assert_eq!(back, inv.to_model_node());
            assert_eq!(back.devices[0].model, "h200-141gb");
            assert_eq!(back.devices[0].nvlink_peers.len(), 1);
        }
        let bad = FilePublisher {
            path: dir.path().join("no/such/dir/x"),
            format: Format::Json,
        };
        let err = bad.publish(&inv.to_model_node()).expect_err("no dir");
        assert!(err.to_string().starts_with("publish to "), "{err}");
    }
}
