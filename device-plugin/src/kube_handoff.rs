//! The Kubernetes hand-off source (feature `kube`): the scheduler's device choice read from pod
//! annotations with kube-rs, following the contract in [`crate::handoff`].
//!
//! `pending` lists the pods bound to this node that are still `Pending`
//! (`fieldSelector=spec.nodeName=<node>,status.phase=Pending`) and applies
//! [`handoffs_from_pods`]; `consume` adds the resource to the pod's
//! [`ALLOCATED_ANNOTATION`] with a merge patch. The kubelet calls the plugin from async gRPC
//! handlers while [`HandoffSource`] is synchronous, so the calls run with
//! `tokio::task::block_in_place` and need the multi-threaded runtime (the binary's).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::handoff::{handoffs_from_pods, Handoff, HandoffSource, PodView, ALLOCATED_ANNOTATION};
use crate::resources::Snapshot;
use crate::PluginError;

/// Reads hand-offs from pod annotations.
#[derive(Clone)]
pub struct KubeHandoff {
    client: kube::Client,
    node: String,
    timeout: Duration,
}

impl std::fmt::Debug for KubeHandoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeHandoff")
            .field("node", &self.node)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn err(message: impl Into<String>) -> PluginError {
    PluginError::Handoff {
        origin: "kubernetes API".to_string(),
        message: message.into(),
    }
}

fn block<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, PluginError>>,
) -> Result<T, PluginError> {
    let handle = tokio::runtime::Handle::try_current()
        .map_err(|_| err("the Kubernetes hand-off needs a tokio runtime"))?;
    if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
        return Err(err(
            "the Kubernetes hand-off needs the multi-threaded tokio runtime",
        ));
    }
    tokio::task::block_in_place(|| {
        handle.block_on(async {
            tokio::time::timeout(timeout, f)
                .await
                .map_err(|_| err(format!("no answer within {timeout:?}")))?
        })
    })
}

impl KubeHandoff {
    /// A source for `node` using `client`; each API call gives up after `timeout`.
    pub fn new(client: kube::Client, node: impl Into<String>, timeout: Duration) -> Self {
        KubeHandoff {
            client,
            node: node.into(),
            timeout,
        }
    }

    /// The pods bound to this node that are still Pending, as [`PodView`]s.
    ///
    /// # Errors
    /// The API call failed.
    pub async fn pending_pods(&self) -> Result<Vec<PodView>, PluginError> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let lp = ListParams::default()
            .fields(&format!("spec.nodeName={},status.phase=Pending", self.node));
        let list = api
            .list(&lp)
            .await
            .map_err(|e| err(format!("list pods: {e}")))?;
        Ok(list
            .items
            .into_iter()
            .map(|p| PodView {
                namespace: p.metadata.namespace.unwrap_or_default(),
                name: p.metadata.name.unwrap_or_default(),
                node_name: p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                phase: p
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_default(),
                annotations: p.metadata.annotations.unwrap_or_default(),
            })
            .collect())
    }

    /// Record that `task`'s hand-off for `resource` was allocated.
    ///
    /// # Errors
    /// `task` is not `namespace/name`, or an API call failed.
    pub async fn mark_allocated(&self, task: &str, resource: &str) -> Result<(), PluginError> {
        let (ns, name) = task
            .split_once('/')
            .ok_or_else(|| err(format!("task {task:?} is not namespace/name")))?;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = api
            .get(name)
            .await
            .map_err(|e| err(format!("get pod {task}: {e}")))?;
        let mut done: Vec<String> = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ALLOCATED_ANNOTATION))
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        if !done.iter().any(|d| d == resource) {
            done.push(resource.to_string());
        }
        let mut ann = BTreeMap::new();
        ann.insert(ALLOCATED_ANNOTATION.to_string(), done.join(","));
        let patch = serde_json::json!({ "metadata": { "annotations": ann } });
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| err(format!("annotate pod {task}: {e}")))?;
        Ok(())
    }
}

impl HandoffSource for KubeHandoff {
    fn pending(&self, resource: &str, node: &Snapshot) -> Result<Vec<Handoff>, PluginError> {
        let pods = block(self.timeout, self.pending_pods())?;
        let (handoffs, errors) = handoffs_from_pods(&self.node, &pods, |id| {
            node.resource_of(id).map(String::from)
        });
        for e in errors {
            tracing::warn!(error = %e, "ignoring a pod's hand-off");
        }
        Ok(handoffs
            .into_iter()
            .filter(|h| h.resource == resource)
            .collect())
    }

    fn consume(&self, task: &str, resource: &str) -> Result<(), PluginError> {
        block(self.timeout, self.mark_allocated(task, resource))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeInventory;
    use crate::inventory::Inventory;
    use crate::kube_test::respond;
    use crate::resources::MigStrategy;
    use http::{Request, Response};
    use kube::client::Body;

    fn pod_json(name: &str, ann: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ml", "annotations": ann},
            "spec": {"nodeName": "n1", "containers": []},
            "status": {"phase": "Pending"}
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_annotations_and_marks_allocation() {
        let y = "node: n1\ngpus:\n  - {name: NVIDIA H100 80GB HBM3, memory_mib: 81559, count: 4}\n";
        let inv = FakeInventory::from_yaml(y, "t")
            .expect("ok")
            .discover()
            .expect("d");
        let ids: Vec<String> = inv.gpus.iter().map(|g| g.uuid.clone()).collect();
        let snap = Snapshot::build(inv, MigStrategy::None).expect("snap");
        let chosen = serde_json::to_string(&[&ids[3], &ids[1]]).expect("json");

        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(svc, "default");
        let pods = serde_json::json!({
            "apiVersion": "v1", "kind": "PodList", "metadata": {},
            "items": [
                pod_json("a", serde_json::json!({"gantry.dev/devices": chosen})),
                pod_json("b", serde_json::json!({"gantry.dev/devices": "[\"GPU-unknown\"]"})),
            ]
        });
        let pods_c = pods.clone();
        let server = tokio::spawn(async move {
            // 1: the list, with the node and phase field selector.
            let (req, send) = handle.next_request().await.expect("list request");
            assert_eq!(req.method(), "GET");
            assert_eq!(req.uri().path(), "/api/v1/pods");
            let q = req.uri().query().unwrap_or_default().to_string();
            assert!(
                q.contains("fieldSelector=spec.nodeName%3Dn1%2Cstatus.phase%3DPending"),
                "{q}"
            );
            send.send_response(respond(&pods_c));
            // 2 and 3: consume = get the pod, then merge-patch the annotation.
            let (req, send) = handle.next_request().await.expect("get request");
            assert_eq!(req.uri().path(), "/api/v1/namespaces/ml/pods/a");
            send.send_response(respond(&pods_c["items"][0]));
            let (req, send) = handle.next_request().await.expect("patch request");
            assert_eq!(req.method(), "PATCH");
            assert_eq!(req.uri().path(), "/api/v1/namespaces/ml/pods/a");
            let body = req.into_body().collect_bytes().await.expect("body");
            let v: serde_json::Value = serde_json::from_slice(&body).expect("json patch");
            assert_eq!(
                v["metadata"]["annotations"]["gantry.dev/allocated"],
                "nvidia.com/gpu"
            );
            send.send_response(respond(&pods_c["items"][0]));
        });
        let source = KubeHandoff::new(client, "n1", Duration::from_secs(5));
        let pending = source.pending("nvidia.com/gpu", &snap).expect("pending");
        assert_eq!(
            pending,
            vec![Handoff {
                task: "ml/a".into(),
                resource: "nvidia.com/gpu".into(),
                device_ids: vec![ids[3].clone(), ids[1].clone()],
            }]
        );
        source.consume("ml/a", "nvidia.com/gpu").expect("consume");
        server.await.expect("mock server assertions");
        assert!(source.consume("no-slash", "nvidia.com/gpu").is_err());
    }
}
