//! End to end against a real API server. Runs only when `KUBECONFIG` is set (otherwise it says
//! so and passes without touching anything): `../shared/kube-apiserver/start.sh` gives one (no
//! kubelet: binding does not need one), and so does kind (see `deploy/README.md`).
//!
//! It installs the CRDs, creates three Nodes of its own (an H100 node, an A100 node, and an H100
//! node tainted `qa-dedicated=yes:NoSchedule`) with `NodeInventory`s of fake GPUs, a cohort with
//! one queue that has H100 quota only, and runs the controller in-process. Then:
//! - a PodGroup of 2 pods × 2 GPUs is bound whole, with disjoint `gantry.dev/devices`;
//! - a pod selecting the H100 product label is bound to the H100 node, never the A100 one;
//! - pods whose selector nobody matches, whose only node is tainted, or that ask for A100s the
//!   queue has no quota for stay Pending with a `PodScheduled=False` message saying why.
//!
//! It prints `kubectl get queues,podgroups`-style lines, then deletes everything it created.

use std::collections::BTreeSet;
use std::time::Duration;

use gantry_kube::crd::{crds, NodeInventory, NodeInventorySpec, PodGroup, Queue};
use gantry_kube::{ControllerConfig, Metrics};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// A namespace of its own per run (namespaces never finish deleting on an API server without a
/// controller-manager).
fn ns() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("gantry-e2e-{t}")
}

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
    remove_old_pods(&client).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let inv_api: Api<NodeInventory> = Api::all(client.clone());
    let product = "NVIDIA-H100-80GB-HBM3";
    let made = [
        ("e2e-h100", "h100-80gb", product, json!([])),
        ("e2e-a100", "a100-80gb", "NVIDIA-A100-SXM4-80GB", json!([])),
        (
            "e2e-qa",
            "h100-80gb",
            product,
            json!([{"key": "qa-dedicated", "value": "yes", "effect": "NoSchedule"}]),
        ),
    ];
    for (name, model, label, taints) in &made {
        let _ = nodes.delete(name, &DeleteParams::default()).await;
        let n: Node = obj(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name,
                                                  "nvidia.com/gpu.product": label}},
            "spec": {"taints": taints},
            "status": {"allocatable": {"cpu": "64", "memory": "512Gi"},
                       "capacity": {"cpu": "64", "memory": "512Gi"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }));
        nodes
            .create(&PostParams::default(), &n)
            .await
            .expect("node");
        // The API server's admission taints a new node not-ready until a node lifecycle
        // controller clears it; there is none here: clear it the same way.
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": taints}})),
            )
            .await
            .expect("taints");
        let devices: Vec<gantry_model::Device> = (0..8)
            .map(|i| obj(json!({"uuid": format!("GPU-{name}-{i}"), "model": model, "nvlink_domain": format!("{name}-nvl")})))
            .collect();
        let inv = NodeInventory::new(name, NodeInventorySpec::new(devices, None));
        inv_api
            .patch(name, &ssa, &Patch::Apply(&inv))
            .await
            .expect("inventory");
    }
    let q_api: Api<Queue> = Api::all(client.clone());
    for q in [
        json!({"apiVersion": "gantry.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "e2e-research"}, "spec": {}}),
        json!({"apiVersion": "gantry.dev/v1alpha1", "kind": "Queue", "metadata": {"name": "e2e-team-a"},
               "spec": {"parent": "e2e-research", "quotas": {"h100-80gb": {"nominal": 12}}}}),
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
    let ns_name = ns();
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let _ = ns_api
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": ns_name}})),
        )
        .await;
    #[allow(non_snake_case)]
    let NS = ns_name.as_str();
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
    eligibility(&pods, NS, product).await;
    let g = pg_api.get("train").await.expect("podgroup");
    let st = g.status.unwrap_or_default();
    println!(
        "podgroup/train  queue e2e-team-a  min 2  running {}  phase {}",
        st.running,
        st.phase.as_str()
    );
    let _ = stop.send(());
    let _ = ctl.await;
    // Clean up everything created here (the CRDs stay: other users may rely on them). With no
    // kubelet, pods are deleted at once (grace period 0), or they stay Terminating.
    remove_old_pods(&client).await;
    let _ = ns_api.delete(NS, &DeleteParams::default()).await;
    for q in ["e2e-team-a", "e2e-team-b", "e2e-research"] {
        let _ = q_api.delete(q, &DeleteParams::default()).await;
    }
    for (name, ..) in &made {
        let _ = inv_api.delete(name, &DeleteParams::default()).await;
        let _ = nodes.delete(name, &DeleteParams::default()).await;
    }
}

/// Delete (grace period 0) every pod in this test's namespaces, from this run or an earlier one
/// that stopped half-way: they would hold the test nodes' GPUs.
async fn remove_old_pods(client: &Client) {
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let Ok(list) = ns_api.list(&Default::default()).await else {
        return;
    };
    for n in list.items {
        let name = n.metadata.name.unwrap_or_default();
        if !name.starts_with("gantry-e2e") {
            continue;
        }
        let pods: Api<Pod> = Api::namespaced(client.clone(), &name);
        let _ = pods
            .delete_collection(
                &DeleteParams::default().grace_period(0),
                &Default::default(),
            )
            .await;
    }
}

/// Lone pods with node constraints: where they are bound, or why they wait.
async fn eligibility(pods: &Api<Pod>, ns: &str, product: &str) {
    let lone = |name: &str, spec: serde_json::Value, annotations: serde_json::Value| -> Pod {
        let mut p = json!({"metadata": {"name": name, "namespace": ns,
                "labels": {"gantry.dev/queue": "e2e-team-a"}, "annotations": annotations},
            "spec": {"schedulerName": "gantry", "restartPolicy": "Never", "containers": [{
                "name": "main", "image": "busybox", "command": ["sleep", "30"],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                              "limits": {"nvidia.com/gpu": "1"}}}]}});
        for (k, v) in spec.as_object().expect("object") {
            p["spec"][k] = v.clone();
        }
        obj(p)
    };
    let make = [
        lone(
            "h100-only",
            json!({"nodeSelector": {"nvidia.com/gpu.product": product}}),
            json!({}),
        ),
        lone(
            "ssd",
            json!({"nodeSelector": {"disktype": "ssd"}}),
            json!({}),
        ),
        lone(
            "untolerated",
            json!({"nodeSelector": {"kubernetes.io/hostname": "e2e-qa"}}),
            json!({}),
        ),
        lone(
            "a100",
            json!({}),
            json!({"gantry.dev/gpu-models": "a100-80gb"}),
        ),
    ];
    for p in &make {
        pods.create(&PostParams::default(), p).await.expect("pod");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let waiting = |p: &Pod| -> Option<String> {
        p.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            .and_then(|c| c.message.clone())
    };
    loop {
        let h = pods.get("h100-only").await.expect("pod");
        let mut msgs = Vec::new();
        for name in ["ssd", "untolerated", "a100"] {
            msgs.push(waiting(&pods.get(name).await.expect("pod")));
        }
        let bound = h.spec.as_ref().and_then(|s| s.node_name.clone());
        if bound.is_some() && msgs.iter().all(Option::is_some) {
            assert_eq!(bound.as_deref(), Some("e2e-h100"), "the H100-only pod");
            let msgs: Vec<String> = msgs.into_iter().flatten().collect();
            println!("pod/ssd          {}", msgs[0]);
            println!("pod/untolerated  {}", msgs[1]);
            println!("pod/a100         {}", msgs[2]);
            assert!(
                msgs[0].contains("not matching node_selector disktype=ssd"),
                "{}",
                msgs[0]
            );
            assert!(
                msgs[1].contains("with taint qa-dedicated=yes:NoSchedule"),
                "{}",
                msgs[1]
            );
            assert_eq!(
                msgs[2],
                "queue e2e-team-a has no quota for a100-80gb (list it in the queue's quotas, or set unlisted_flavors: allow)"
            );
            for name in ["ssd", "untolerated", "a100"] {
                let p = pods.get(name).await.expect("pod");
                assert!(
                    p.spec.and_then(|s| s.node_name).is_none(),
                    "{name} was bound"
                );
            }
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the constrained pods were not settled within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
