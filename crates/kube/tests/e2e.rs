//! End to end against a real cluster. Runs only when `KUBECONFIG` is set (otherwise it says so
//! and passes without touching anything); see `deploy/README.md` for kind.
//!
//! It installs the CRDs, creates two queues in a cohort and a `NodeInventory` with 8 fake H100s
//! for one schedulable node (no GPUs are needed: binding does not need the kubelet to admit
//! the pod), runs the controller in-process, creates a PodGroup of 2 pods × 2 GPUs, and waits
//! until both pods are bound with disjoint `gantry.dev/devices` annotations. It prints
//! `kubectl get queues,podgroups`-style lines, then deletes everything it created.

use std::collections::BTreeSet;
use std::time::Duration;

use gantry_kube::crd::{crds, NodeInventory, NodeInventorySpec, PodGroup, Queue};
use gantry_kube::{ControllerConfig, Metrics};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const NS: &str = "gantry-e2e";

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_and_a_gang_on_a_real_cluster() {
    if std::env::var_os("KUBECONFIG").is_none() {
        eprintln!("KUBECONFIG is not set: skipping the end-to-end test against a real cluster");
        return;
    }
    let client = Client::try_default().await.expect("kube client");
    let ssa = PatchParams::apply("gantry-e2e").force();
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for c in crds() {
        let name = c.metadata.name.clone().unwrap();
        crd_api
            .patch(&name, &ssa, &Patch::Apply(&c))
            .await
            .expect("install CRD");
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // let the CRDs become established
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .list(&Default::default())
        .await
        .expect("nodes")
        .items
        .into_iter()
        .find(|n| n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true))
        .expect("a schedulable node");
    let node_name = node.metadata.name.clone().unwrap();
    let devices: Vec<gantry_model::Device> = (0..8)
        .map(|i| obj(json!({"uuid": format!("GPU-e2e-{i}"), "model": "h100-80gb", "nvlink_domain": "e2e"})))
        .collect();
    let inv_api: Api<NodeInventory> = Api::all(client.clone());
    let inv = NodeInventory::new(&node_name, NodeInventorySpec::new(devices, None));
    inv_api
        .patch(&node_name, &ssa, &Patch::Apply(&inv))
        .await
        .expect("inventory");
    let q_api: Api<Queue> = Api::all(client.clone());
    for q in [
        json!({"apiVersion": "gantry.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "e2e-research"}, "spec": {}}),
        json!({"apiVersion": "gantry.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "e2e-team-a"},
               "spec": {"parent": "e2e-research", "quotas": {"h100-80gb": {"nominal": 4}}}}),
        json!({"apiVersion": "gantry.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "e2e-team-b"},
               "spec": {"parent": "e2e-research", "quotas": {"h100-80gb": {"nominal": 4}}}}),
    ] {
        let q: Queue = obj(q);
        let name = q.metadata.name.clone().unwrap();
        q_api
            .patch(&name, &ssa, &Patch::Apply(&q))
            .await
            .expect("queue");
    }
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let _ = ns_api
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": NS}})),
        )
        .await;
    let mut cfg = ControllerConfig::new("e2e");
    cfg.leader_elect = false;
    let ctl_client = client.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ctl = tokio::spawn(async move {
        gantry_kube::run(ctl_client, cfg, Metrics::new(), async {
            let _ = stopped.await;
        })
        .await
    });
    let pg_api: Api<PodGroup> = Api::namespaced(client.clone(), NS);
    let pg: PodGroup = obj(
        json!({"apiVersion": "gantry.dev/v1alpha1", "kind": "PodGroup",
        "metadata": {"name": "train", "namespace": NS},
        "spec": {"minMember": 2, "queue": "e2e-team-a", "priorityClassName": "training"}}),
    );
    pg_api
        .patch("train", &ssa, &Patch::Apply(&pg))
        .await
        .expect("podgroup");
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    for i in 0..2 {
        let p: Pod = obj(
            json!({"metadata": {"name": format!("train-{i}"), "namespace": NS,
                "labels": {"gantry.dev/pod-group": "train"}},
            "spec": {"schedulerName": "gantry", "restartPolicy": "Never", "containers": [{
                "name": "main", "image": "busybox", "command": ["sleep", "30"],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                              "limits": {"nvidia.com/gpu": "2"}}}]}}),
        );
        let _ = pods.create(&PostParams::default(), &p).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen = BTreeSet::new();
    loop {
        let mut bound = 0;
        seen.clear();
        for i in 0..2 {
            let p = pods.get(&format!("train-{i}")).await.expect("pod");
            if p.spec.as_ref().and_then(|s| s.node_name.clone()).is_some() {
                bound += 1;
                let ann = p.metadata.annotations.unwrap_or_default();
                let devs: Vec<String> = serde_json::from_str(
                    ann.get("gantry.dev/devices")
                        .map(String::as_str)
                        .unwrap_or("[]"),
                )
                .expect("devices annotation");
                assert_eq!(devs.len(), 2);
                for d in devs {
                    assert!(seen.insert(d), "a device handed out twice");
                }
            }
        }
        if bound == 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gang was not bound within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // statuses
    println!("NAME           PARENT         PENDING   ADMITTED   SHARE   USAGE");
    for q in q_api.list(&Default::default()).await.expect("queues").items {
        let name = q.metadata.name.clone().unwrap_or_default();
        if !name.starts_with("e2e-") {
            continue;
        }
        let st = q.status.unwrap_or_default();
        println!(
            "queue/{name:<14} {:<14} {:<9} {:<10} {:<7} {}",
            q.spec.parent.unwrap_or_default(),
            st.pending,
            st.admitted,
            st.share,
            st.summary
        );
    }
    let g = pg_api.get("train").await.expect("podgroup");
    let st = g.status.unwrap_or_default();
    println!(
        "podgroup/train  queue e2e-team-a  min 2  running {}  phase {}",
        st.running,
        st.phase.as_str()
    );
    let _ = stop.send(());
    let _ = ctl.await;
    // Clean up everything created here (the CRDs stay: other users may rely on them).
    let _ = ns_api.delete(NS, &DeleteParams::default()).await;
    for q in ["e2e-team-a", "e2e-team-b", "e2e-research"] {
        let _ = q_api.delete(q, &DeleteParams::default()).await;
    }
    let _ = inv_api.delete(&node_name, &DeleteParams::default()).await;
}
