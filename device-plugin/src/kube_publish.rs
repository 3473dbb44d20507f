//! Publishing the node's inventory to Kubernetes (feature `kube`).
//!
//! The scheduler in Kubernetes mode reads each node's exact GPU inventory — devices, NVLink
//! domains and peers, health of each device and MIG slice, MIG layout — from a `NodeInventory`
//! object (group `gantry.dev`, named after the node; the CRD is `gantry_crd::NodeInventory`),
//! written with server-side apply under the field manager [`FIELD_MANAGER`].
//!
//! - The object names its Node as owner (`ownerReferences`, with the Node's uid), so the garbage
//!   collector deletes it with the Node.
//! - Its status carries `heartbeatTime`, written on every publish and every `--heartbeat`: a
//!   plugin that is gone stops it, and the scheduler stops placing new pods on that node.
//! - A merge patch of the Node sets labels in the spirit of GPU feature discovery
//!   ([`crate::labels::node_labels`]: product, memory, count, MIG strategy), so ordinary
//!   `nodeSelector`s work too. Labels this plugin set before and no longer computes (a MIG
//!   profile that went away) are removed.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use gantry_crd::{NodeInventory as KubeInventory, NodeInventorySpec};
use gantry_model::Node;
use k8s_openapi::api::core::v1::Node as KubeNode;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};

use crate::inventory::NodeInventory;
use crate::labels::node_labels;
use crate::publish::Publisher;
use crate::resources::MigStrategy;
use crate::PluginError;

/// Field manager of the plugin's server-side applies.
pub const FIELD_MANAGER: &str = "gantry-device-plugin";

/// Writes the node's `NodeInventory` and the GPU labels of its Kubernetes Node object.
pub struct KubeNodePublisher {
    client: kube::Client,
    node: String,
    strategy: MigStrategy,
    timeout: Duration,
    /// Labels set by the previous patch, so ones that disappear can be removed (a merge patch
    /// with `null`). A mutex because publishing runs on a blocking thread.
    last_labels: Mutex<BTreeMap<String, String>>,
}

impl std::fmt::Debug for KubeNodePublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeNodePublisher")
            .field("node", &self.node)
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

fn err(message: impl Into<String>) -> PluginError {
    PluginError::Publish {
        target: "kubernetes Node".to_string(),
        message: message.into(),
    }
}

impl KubeNodePublisher {
    /// Publish for Kubernetes node `node`; each API call gives up after `timeout`.
    pub fn new(
        client: kube::Client,
        node: impl Into<String>,
        strategy: MigStrategy,
        timeout: Duration,
    ) -> Self {
        KubeNodePublisher {
            client,
            node: node.into(),
            strategy,
            timeout,
            last_labels: Mutex::new(BTreeMap::new()),
        }
    }

    /// The Node merge patch for an inventory: the labels, and `null` for labels published
    /// before that are gone now.
    pub fn patch_for(
        &self,
        inventory: &NodeInventory,
        node: &Node,
        previous: &BTreeMap<String, String>,
    ) -> Result<(serde_json::Value, BTreeMap<String, String>), PluginError> {
        let labels = node_labels(inventory, self.strategy);
        let mut label_patch = serde_json::Map::new();
        for k in previous.keys().filter(|k| !labels.contains_key(*k)) {
            label_patch.insert(k.clone(), serde_json::Value::Null);
        }
        for (k, v) in &labels {
            label_patch.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        let _ = node;
        let patch = serde_json::json!({ "metadata": { "labels": label_patch } });
        Ok((patch, labels))
    }

    /// Apply the patch for `inventory` to the Node.
    ///
    /// # Errors
    /// The API call failed or timed out.
    pub async fn apply(&self, inventory: &NodeInventory, node: &Node) -> Result<(), PluginError> {
        let previous = self
            .last_labels
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default();
        let (patch, labels) = self.patch_for(inventory, node, &previous)?;
        let api: Api<KubeNode> = Api::all(self.client.clone());
        let patched = self
            .call(
                "patch node",
                api.patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?;
        if let Ok(mut l) = self.last_labels.lock() {
            *l = labels;
        }
        let mut object = KubeInventory::new(
            &self.node,
            NodeInventorySpec::new(node.devices.clone(), inventory.driver.clone()),
        );
        // Owned by the Node: deleted with it.
        if let Some(uid) = patched.metadata.uid.clone() {
            object.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: self.node.clone(),
                uid,
                ..OwnerReference::default()
            }]);
        }
        let api: Api<KubeInventory> = Api::all(self.client.clone());
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        self.call(
            "apply NodeInventory",
            api.patch(&self.node, &apply, &Patch::Apply(&object)),
        )
        .await?;
        self.beat().await
    }

    /// One API call, bounded by the timeout; errors say what was attempted.
    async fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, PluginError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| {
                err(format!(
                    "{what} {}: no answer within {:?}",
                    self.node, self.timeout
                ))
            })?
            .map_err(|e| err(format!("{what} {}: {e}", self.node)))
    }

    /// Write `status.heartbeatTime` = now (server-side apply on the status subresource).
    ///
    /// # Errors
    /// The API call failed or timed out.
    pub async fn beat(&self) -> Result<(), PluginError> {
        let api: Api<KubeInventory> = Api::all(self.client.clone());
        let status = serde_json::json!({
            "apiVersion": "gantry.dev/v1alpha1",
            "kind": "NodeInventory",
            "status": {"heartbeatTime": k8s_openapi::jiff::Timestamp::now().to_string()},
        });
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        self.call(
            "heartbeat NodeInventory",
            api.patch_status(&self.node, &apply, &Patch::Apply(&status)),
        )
        .await?;
        Ok(())
    }
}

impl Publisher for KubeNodePublisher {
    fn publish(&self, _node: &Node) -> Result<(), PluginError> {
        Err(err(
            "the Kubernetes publisher needs the raw inventory; call publish_inventory",
        ))
    }

    fn publish_inventory(&self, inventory: &NodeInventory, node: &Node) -> Result<(), PluginError> {
        // Runs on a blocking thread (see `run_publisher`), so it may wait on the runtime.
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| err("needs a tokio runtime"))?;
        handle.block_on(self.apply(inventory, node))
    }

    fn heartbeat(&self) -> Result<(), PluginError> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| err("needs a tokio runtime"))?;
        handle.block_on(self.beat())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeInventory;
    use crate::inventory::Inventory;
    use crate::kube_test::respond;
    use http::{Request, Response};
    use kube::client::Body;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn applies_the_inventory_patches_labels_and_removes_stale_labels() {
        let y = "node: n1\ngpus:\n  - {name: NVIDIA A100-SXM4-80GB, memory_mib: 81920, count: 2}\nmig:\n  1:\n    slices: [{profile: 3g.40gb, start: 0}]\n";
        let inv = FakeInventory::from_yaml(y, "t")
            .expect("ok")
            .discover()
            .expect("d");
        let node = inv.to_model_node();
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let publisher =
            KubeNodePublisher::new(client, "n1", MigStrategy::Mixed, Duration::from_secs(5));
        let want_node = node.clone();
        let server = tokio::spawn(async move {
            let mut bodies = Vec::new();
            let mut applied = Vec::new();
            for _ in 0..2 {
                let (req, send) = handle.next_request().await.expect("patch");
                assert_eq!(req.method(), "PATCH");
                assert_eq!(req.uri().path(), "/api/v1/nodes/n1");
                let body = req.into_body().collect_bytes().await.expect("body");
                let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
                bodies.push(v);
                send.send_response(respond(&serde_json::json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": "n1", "uid": "node-uid-1"}
                })));
                let (req, send) = handle.next_request().await.expect("apply");
                assert_eq!(req.method(), "PATCH");
                assert_eq!(
                    req.uri().path(),
                    "/apis/gantry.dev/v1alpha1/nodeinventories/n1"
                );
                let q = req.uri().query().unwrap_or_default().to_string();
                assert!(
                    q.contains("fieldManager=gantry-device-plugin") && q.contains("force=true"),
                    "{q}"
                );
                assert_eq!(
                    req.headers()["content-type"],
                    "application/apply-patch+yaml"
                );
                let body = req.into_body().collect_bytes().await.expect("body");
                let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
                send.send_response(respond(&v));
                applied.push(v);
                // Then the heartbeat, on the status subresource.
                let (req, send) = handle.next_request().await.expect("heartbeat");
                assert_eq!(req.method(), "PATCH");
                assert_eq!(
                    req.uri().path(),
                    "/apis/gantry.dev/v1alpha1/nodeinventories/n1/status"
                );
                let body = req.into_body().collect_bytes().await.expect("body");
                let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
                assert!(v["status"]["heartbeatTime"].is_string(), "{v}");
                let mut echo = v.clone();
                echo["metadata"] = serde_json::json!({"name": "n1"});
                echo["spec"] = serde_json::json!({});
                send.send_response(respond(&echo));
            }
            let inv: KubeInventory = serde_json::from_value(applied[0].clone()).expect("inventory");
            assert_eq!(inv.spec.devices, want_node.devices);
            let owner = &inv.metadata.owner_references.as_ref().expect("owned")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
                ("Node", "n1", "node-uid-1")
            );
            assert_eq!(inv.spec.gpus, 2);
            assert_eq!(inv.spec.models, "a100-80gb");
            let first = &bodies[0]["metadata"];
            assert!(first.get("annotations").is_none(), "{first}");
            assert_eq!(first["labels"]["nvidia.com/gpu.count"], "2");
            assert_eq!(first["labels"]["nvidia.com/mig.strategy"], "mixed");
            assert_eq!(first["labels"]["nvidia.com/mig-3g.40gb.count"], "1");
            // The second inventory has no MIG slice left: its count label is deleted.
            let second = &bodies[1]["metadata"]["labels"];
            assert!(second["nvidia.com/mig-3g.40gb.count"].is_null(), "{second}");
            assert!(second
                .as_object()
                .expect("labels")
                .contains_key("nvidia.com/mig-3g.40gb.count"));
        });
        let p = std::sync::Arc::new(publisher);
        let (p1, inv1, node1) = (p.clone(), inv.clone(), node.clone());
        tokio::task::spawn_blocking(move || p1.publish_inventory(&inv1, &node1))
            .await
            .expect("join")
            .expect("first publish");
        let mut inv2 = inv.clone();
        for g in &mut inv2.gpus {
            if let Some(m) = g.mig.as_mut() {
                m.slices.clear();
            }
        }
        let node2 = inv2.to_model_node();
        let p2 = p.clone();
        tokio::task::spawn_blocking(move || p2.publish_inventory(&inv2, &node2))
            .await
            .expect("join")
            .expect("second publish");
        server.await.expect("mock API server assertions");
    }
}
