//! Kubernetes mode end to end, as a cluster would run it, against a real API server.
//!
//! Runs only when `KUBECONFIG` is set (it says so and passes otherwise); `.ci/run` starts
//! `../shared/kube-apiserver/` (a real kube-apiserver and etcd, no kubelet, no
//! controller-manager) and sets it. The test plays the missing parts: it creates the Nodes, it
//! creates the pods an Indexed Job or a Deployment would, and it force-deletes pods a kubelet
//! would have stopped. Everything gantry does runs as shipped:
//!
//! 1. The CRDs (`deploy/crds`), the namespace and RBAC (`deploy/scheduler`,
//!    `deploy/device-plugin`) are applied; tokens for the two ServiceAccounts come from the
//!    TokenRequest API and each process runs with a kubeconfig holding only its own token.
//! 2. Five `gantry-device-plugin` processes (four fake DGX H100, one fake DGX A100 with MIG) publish
//!    their NodeInventories, owned by their Nodes, with heartbeats, and label their Nodes.
//! 3. Two `gantry kube controller` processes elect a leader through a Lease.
//! 4. The examples in `deploy/examples/kube/` are applied (queues, the training gang, the MIG
//!    inference Deployment) and their pods bound: the gang whole on three nodes, devices never
//!    handed out twice; `Scheduled` events name the node and are found the way `kubectl describe`
//!    finds them (by the object's uid).
//! 5. A PodDisruptionBudget refuses the eviction a higher-priority gang needs: the preemptor's
//!    PodGroup says it waits on the budget, a `PreemptionBlocked` event is written, and an
//!    unrelated pod is still bound meanwhile. The leader's read-only dashboard, opened in a
//!    real headless Chromium, shows the gang's GPUs, the MIG slices, the queue tree and the
//!    preemptor's reason and events. Once the budget is gone the preemptor runs.
//! 6. The leader is killed (`kill -9`) in the middle of a throttled batch; the standby takes the
//!    Lease and finishes the batch; the killed one is restarted, the new leader is killed in
//!    turn, and the restarted one schedules. No device is ever held by two live pods.
//!
//! Everything it created is deleted at the end (the CRDs and RBAC stay).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{gantry, Proc};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod, ServiceAccount};
use kube::api::{
    Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};

const H100_NODES: [&str; 4] = [
    "e2e-dgx-h100-0",
    "e2e-dgx-h100-1",
    "e2e-dgx-h100-2",
    "e2e-dgx-h100-3",
];
const A100_NODE: &str = "e2e-dgx-a100-0";
/// How long one condition may take before the test fails (the machine may be busy).
const DEADLINE: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The YAML documents of a manifest file, as JSON values.
fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).expect("valid YAML");
            (!v.is_null()).then_some(v)
        })
        .collect()
}

/// Server-side apply one object of any kind (namespaced ones into `ns` unless they name one).
async fn apply(client: &Client, ns: &str, mut v: Value) -> Value {
    let api_version = v["apiVersion"].as_str().expect("apiVersion").to_string();
    let kind = v["kind"].as_str().expect("kind").to_string();
    let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
    let gvk = GroupVersionKind::gvk(group, version, &kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("discover {api_version} {kind}: {e}"));
    let name = v["metadata"]["name"].as_str().expect("name").to_string();
    let api: Api<DynamicObject> = if caps.scope == kube::discovery::Scope::Namespaced {
        let ns = v["metadata"]["namespace"]
            .as_str()
            .unwrap_or(ns)
            .to_string();
        v["metadata"]["namespace"] = json!(ns);
        Api::namespaced_with(client.clone(), &ns, &ar)
    } else {
        Api::all_with(client.clone(), &ar)
    };
    let obj: DynamicObject = serde_json::from_value(v).expect("object");
    let done = api
        .patch(
            &name,
            &PatchParams::apply("gantry-e2e").force(),
            &Patch::Apply(&obj),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    serde_json::to_value(done).expect("json")
}

/// Poll `f` until it gives `Some`, failing after [`DEADLINE`] with `what` and the last value.
async fn until<T, L: std::fmt::Debug, F: std::future::Future<Output = Result<T, L>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < end,
                "{what}: not reached within {DEADLINE:?}; last seen: {last:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The API resource of a kind the server serves.
async fn resource(
    client: &Client,
    group: &str,
    version: &str,
    kind: &str,
) -> kube::discovery::ApiResource {
    kube::discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind))
        .await
        .unwrap_or_else(|e| panic!("{group}/{version} {kind}: {e}"))
        .0
}

/// The node `name` is bound to, once it is.
async fn bound_node(pods: &Api<Pod>, name: &str, what: &str) -> String {
    until(what, || async {
        let p = pods.get(name).await.map_err(|e| e.to_string())?;
        node_of(&p).ok_or("not bound".to_string())
    })
    .await
}

/// A PodGroup of one pod and its pod.
async fn gang_of_one(client: &Client, ns: &str, name: &str, queue: &str, class: &str, gpus: u32) {
    apply(
        client,
        ns,
        json!({"apiVersion": "gantry.dev/v1alpha1", "kind": "PodGroup",
        "metadata": {"name": name},
        "spec": {"minMember": 1, "queue": queue, "priorityClassName": class}}),
    )
    .await;
    let mut p = lone_pod(&format!("{name}-0"), queue, class, gpus);
    p["metadata"]["labels"] = json!({"gantry.dev/pod-group": name});
    apply(client, ns, p).await;
}

/// A kubeconfig like the admin's, authenticating with `token` only.
fn kubeconfig_for(admin: &Path, token: &str, out: &Path) {
    let mut cfg: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(admin).expect("kubeconfig")).expect("yaml");
    let users = cfg["users"].as_sequence_mut().expect("users");
    for u in users {
        u["user"] = serde_yaml::to_value(BTreeMap::from([("token", token)])).expect("yaml");
    }
    std::fs::write(out, serde_yaml::to_string(&cfg).expect("yaml")).expect("write kubeconfig");
}

/// A token for a ServiceAccount of `gantry-system`, from the TokenRequest API.
async fn token(client: &Client, sa: &str) -> String {
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), "gantry-system");
    let req = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                     "spec": {"expirationSeconds": 3600}});
    let r: Value = api
        .create_subresource("token", sa, &PostParams::default(), &req)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {sa}: {e}"));
    r["status"]["token"].as_str().expect("token").to_string()
}

fn devices(p: &Pod) -> Vec<String> {
    p.annotations()
        .get("gantry.dev/devices")
        .map(|d| serde_json::from_str(d).expect("gantry.dev/devices is a JSON list"))
        .unwrap_or_default()
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone())
}

/// Every live (not terminating) bound pod of the namespace; fails if a device is held by two.
async fn live_bound(pods: &Api<Pod>) -> Vec<Pod> {
    let all = pods.list(&ListParams::default()).await.expect("pods").items;
    let live: Vec<Pod> = all
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && node_of(p).is_some())
        .collect();
    let mut seen = BTreeMap::new();
    for p in &live {
        for d in devices(p) {
            if let Some(other) = seen.insert(d.clone(), p.name_any()) {
                panic!("device {d} is held by {other} and {} at once", p.name_any());
            }
        }
    }
    live
}

/// What a kubelet would do with pods being deleted: remove them (grace period 0).
async fn finish_deletions(pods: &Api<Pod>) {
    for p in pods.list(&ListParams::default()).await.expect("pods").items {
        if p.metadata.deletion_timestamp.is_some() {
            let _ = pods
                .delete(&p.name_any(), &DeleteParams::default().grace_period(0))
                .await;
        }
    }
}

/// What a kubelet would do with bound pods: start them (`status.phase: Running`). The Eviction
/// API checks PodDisruptionBudgets only for running pods.
async fn start_bound(pods: &Api<Pod>) {
    for p in pods.list(&ListParams::default()).await.expect("pods").items {
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if node_of(&p).is_some() && !running && p.metadata.deletion_timestamp.is_none() {
            let st = json!({"status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"},
                {"type": "PodScheduled", "status": "True"}]}});
            pods.patch_status(&p.name_any(), &PatchParams::default(), &Patch::Merge(&st))
                .await
                .expect("pod status");
        }
    }
}

/// Events of one object found the way `kubectl describe` finds them.
async fn events_of(client: &Client, ns: &str, kind: &str, name: &str, uid: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let sel = format!(
        "involvedObject.kind={kind},involvedObject.name={name},involvedObject.namespace={ns},involvedObject.uid={uid}"
    );
    api.list(&ListParams::default().fields(&sel))
        .await
        .expect("events")
        .items
}

/// A pod as the Job or Deployment controller would make it from `template`.
fn pod_from(template: &Value, name: &str, extra_labels: Value) -> Value {
    let mut meta = template["metadata"].clone();
    if meta.is_null() {
        meta = json!({});
    }
    meta["name"] = json!(name);
    let mut labels = meta["labels"].as_object().cloned().unwrap_or_default();
    if let Some(extra) = extra_labels.as_object() {
        labels.extend(extra.clone());
    }
    meta["labels"] = Value::Object(labels);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"].clone()})
}

fn lone_pod(name: &str, queue: &str, class: &str, gpus: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"gantry.dev/queue": queue,
                                              "gantry.dev/priority-class": class}},
        "spec": {"schedulerName": "gantry", "restartPolicy": "Never",
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"],
                "resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                              "limits": {"nvidia.com/gpu": gpus.to_string()}}}]}})
}

struct Controller {
    proc: Proc,
    identity: String,
}

fn start_controller(identity: &str, kubeconfig: &Path) -> Controller {
    let mut cmd = gantry();
    cmd.env("KUBECONFIG", kubeconfig)
        .env("GANTRY_LOG", "info")
        .args([
            "kube",
            "controller",
            "--leader-elect",
            "--identity",
            identity,
        ])
        .args([
            "--lease-duration-secs",
            "4",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        // A slow client throttle so a batch takes seconds and a kill lands in its middle.
        .args([
            "--qps",
            "8",
            "--burst",
            "2",
            "--inventory-stale-after-secs",
            "60",
        ]);
    Controller {
        proc: Proc::spawn(identity, cmd),
        identity: identity.to_string(),
    }
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("gantry-scheduler")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec.and_then(|s| s.holder_identity))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_mode_as_deployed() {
    let Some(admin_cfg) = std::env::var_os("KUBECONFIG").map(PathBuf::from) else {
        eprintln!("KUBECONFIG is not set: skipping Kubernetes mode end to end (start ../shared/kube-apiserver/start.sh)");
        return;
    };
    let plugin_bin = Path::new(env!("CARGO_BIN_EXE_gantry")).with_file_name("gantry-device-plugin");
    assert!(
        plugin_bin.exists(),
        "{} is missing: `cargo test --workspace` builds it (or cargo build -p gantry-device-plugin)",
        plugin_bin.display()
    );
    let client = Client::try_default().await.expect("kube client");
    let work = tempfile::tempdir().expect("tempdir");

    // 1. CRDs, namespace, RBAC, ServiceAccount tokens.
    for d in docs(&read("deploy/crds/gantry.dev.yaml")) {
        apply(&client, "default", d).await;
    }
    for f in [
        "deploy/scheduler/00-namespace.yaml",
        "deploy/scheduler/10-rbac.yaml",
        "deploy/device-plugin/10-rbac.yaml",
    ] {
        for d in docs(&read(f)) {
            apply(&client, "gantry-system", d).await;
        }
    }
    let ctl_cfg = work.path().join("scheduler.kubeconfig");
    let dp_cfg = work.path().join("device-plugin.kubeconfig");
    kubeconfig_for(
        &admin_cfg,
        &token(&client, "gantry-scheduler").await,
        &ctl_cfg,
    );
    kubeconfig_for(
        &admin_cfg,
        &token(&client, "gantry-device-plugin").await,
        &dp_cfg,
    );
    // Wait for the CRDs to be served.
    until("the CRDs served", || async {
        kube::discovery::pinned_kind(
            &client,
            &GroupVersionKind::gvk("gantry.dev", "v1alpha1", "PodGroup"),
        )
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    })
    .await;
    // Pods an earlier run left behind (it failed half-way) would hold the same fake devices.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for old in namespaces
        .list(&ListParams::default())
        .await
        .expect("namespaces")
        .items
    {
        let old = old.name_any();
        if old.starts_with("gantry-e2e-suite-") {
            let _ = Api::<Pod>::namespaced(client.clone(), &old)
                .delete_collection(
                    &DeleteParams::default().grace_period(0),
                    &ListParams::default(),
                )
                .await;
        }
    }
    let ns = format!(
        "gantry-e2e-suite-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    );
    apply(
        &client,
        "",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), "gantry-system");
    let _ = leases
        .delete("gantry-scheduler", &DeleteParams::default())
        .await;

    let inv_ar = resource(&client, "gantry.dev", "v1alpha1", "NodeInventory").await;
    let inventories: Api<DynamicObject> = Api::all_with(client.clone(), &inv_ar);

    // 2. Nodes (what kubelets would register), device plugins as their ServiceAccount.
    let mut plugins = Vec::new();
    for (name, fake, mig) in H100_NODES
        .iter()
        .map(|n| (*n, "device-plugin/examples/dgx-h100.yaml", "none"))
        .chain([(A100_NODE, "device-plugin/examples/dgx-a100.yaml", "mixed")])
    {
        let _ = nodes.delete(name, &DeleteParams::default()).await;
        let _ = inventories.delete(name, &DeleteParams::default()).await;
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]},
            "status": {"allocatable": {"cpu": "224", "memory": "2Ti", "pods": "110"},
                       "capacity": {"cpu": "224", "memory": "2Ti", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .expect("node");
        nodes
            .create(&PostParams::default(), &node)
            .await
            .expect("create node");
        // Admission taints a new Node not-ready until the node lifecycle controller clears it.
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": [
                    {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]}})),
            )
            .await
            .expect("taints");
        let dir = work.path().join(name);
        std::fs::create_dir_all(&dir).expect("plugin dir");
        let mut cmd = Command::new(&plugin_bin);
        cmd.env("KUBECONFIG", &dp_cfg)
            .args([
                "--fake",
                &repo().join(fake).to_string_lossy(),
                "--node-name",
                name,
                "run",
            ])
            .args([
                "--device-plugin-dir",
                &dir.to_string_lossy(),
                "--mig-strategy",
                mig,
            ])
            .args(["--publish", "kube", "--heartbeat", "2s"]);
        plugins.push(Proc::spawn(name, cmd));
    }
    for name in H100_NODES.iter().chain([&A100_NODE]) {
        let inv = until(
            &format!("{name}: NodeInventory with a heartbeat"),
            || async {
                let i = inventories.get_opt(name).await.map_err(|e| e.to_string())?;
                let i = i.ok_or("no inventory yet".to_string())?;
                let beat = i.data["status"]["heartbeatTime"].clone();
                if beat.is_null() {
                    return Err("no heartbeat yet".to_string());
                }
                Ok(i)
            },
        )
        .await;
        let owner = inv.metadata.owner_references.clone().unwrap_or_default();
        assert!(
            owner.iter().any(|o| o.kind == "Node" && &o.name == name),
            "{name}: the NodeInventory is not owned by its Node: {owner:?}"
        );
        let labels = nodes.get(name).await.expect("node").labels().clone();
        assert!(
            labels.contains_key("nvidia.com/gpu.product"),
            "{name}: the plugin did not label its Node: {labels:?}"
        );
    }

    // 3. Two controllers, one leader.
    let mut ctl = [
        start_controller("ctl-a", &ctl_cfg),
        start_controller("ctl-b", &ctl_cfg),
    ];
    let first = until("a leader", || async {
        holder(&leases).await.ok_or("no holder")
    })
    .await;
    eprintln!("leader: {first}");

    // 4. The shipped examples.
    for d in docs(&read("deploy/examples/kube/queues.yaml")) {
        apply(&client, &ns, d).await;
    }
    let mut made = Vec::new();
    for (file, expand) in [
        ("deploy/examples/kube/training-gang.yaml", true),
        ("deploy/examples/kube/inference-mig.yaml", true),
    ] {
        for d in docs(&read(file)) {
            let kind = d["kind"].as_str().unwrap_or_default().to_string();
            let name = d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let applied = apply(&client, &ns, d.clone()).await;
            if !expand {
                continue;
            }
            // The controllers this API server lacks: make the pods from the templates.
            match kind.as_str() {
                "Job" => {
                    let n = d["spec"]["completions"].as_u64().expect("completions");
                    for i in 0..n {
                        let mut p = pod_from(
                            &d["spec"]["template"],
                            &format!("{name}-{i}"),
                            json!({"batch.kubernetes.io/job-completion-index": i.to_string(),
                                   "job-name": name}),
                        );
                        p["spec"]["hostname"] = json!(format!("{name}-{i}"));
                        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "batch/v1",
                            "kind": "Job", "name": name, "uid": applied["metadata"]["uid"]}]);
                        made.push(apply(&client, &ns, p).await);
                    }
                }
                "Deployment" => {
                    let n = d["spec"]["replicas"].as_u64().expect("replicas");
                    for i in 0..n {
                        let p = pod_from(&d["spec"]["template"], &format!("{name}-{i}"), json!({}));
                        made.push(apply(&client, &ns, p).await);
                    }
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        made.len(),
        6,
        "3 gang pods and 3 inference pods from the examples"
    );
    let bound = until("the examples' pods bound", || async {
        let live = live_bound(&pods).await;
        if live.len() == 6 {
            Ok(live)
        } else {
            Err(format!("{} of 6 bound", live.len()))
        }
    })
    .await;
    let mut gang_nodes = BTreeSet::new();
    for p in &bound {
        let name = p.name_any();
        let node = node_of(p).expect("bound");
        if name.starts_with("llm-pretrain-") {
            assert!(H100_NODES.contains(&node.as_str()), "{name} on {node}");
            assert_eq!(devices(p).len(), 8, "{name}: 8 GPUs");
            gang_nodes.insert(node);
        } else {
            assert_eq!(node, A100_NODE, "{name}: MIG slices are on the A100 node");
            assert_eq!(devices(p).len(), 1, "{name}: one 1g.10gb slice");
        }
    }
    assert_eq!(
        gang_nodes.len(),
        3,
        "the 3 × 8 gang fills three whole nodes"
    );
    start_bound(&pods).await;
    // Inference replicas carry a pod-deletion-cost, so a scale-down deletes the one on the
    // freest node first (a real merge patch of pods, allowed by the shipped RBAC).
    until("the inference replicas' pod-deletion-cost", || async {
        let listed = pods
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let missing: Vec<String> = listed
            .items
            .iter()
            .filter(|p| p.name_any().starts_with("chat-svc"))
            .filter(|p| {
                !p.annotations()
                    .contains_key("controller.kubernetes.io/pod-deletion-cost")
            })
            .map(|p| p.name_any())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("not yet on {missing:?}"))
        }
    })
    .await;
    // Events, the way `kubectl describe pod llm-pretrain-0` finds them.
    let p0 = bound
        .iter()
        .find(|p| p.name_any() == "llm-pretrain-0")
        .expect("rank 0");
    let p0_node = node_of(p0).expect("bound");
    let ev = until("a Scheduled event for llm-pretrain-0", || async {
        let ev = events_of(
            &client,
            &ns,
            "Pod",
            "llm-pretrain-0",
            &p0.uid().unwrap_or_default(),
        )
        .await;
        ev.into_iter()
            .find(|e| e.reason.as_deref() == Some("Scheduled"))
            .ok_or("none yet")
    })
    .await;
    let msg = ev.message.unwrap_or_default();
    assert!(
        msg.contains(&p0_node),
        "the Scheduled event names the node: {msg}"
    );
    let pg_ar = resource(&client, "gantry.dev", "v1alpha1", "PodGroup").await;
    let groups: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &pg_ar);
    let gang = groups.get("llm-pretrain").await.expect("podgroup");
    let gang_uid = gang.uid().unwrap_or_default();
    until("events on the PodGroup", || async {
        let ev = events_of(&client, &ns, "PodGroup", "llm-pretrain", &gang_uid).await;
        if ev.iter().any(|e| e.reason.as_deref() == Some("Scheduled")) {
            Ok(())
        } else {
            Err(ev.iter().map(|e| e.reason.clone()).collect::<Vec<_>>())
        }
    })
    .await;
    until("the gang's PodGroup Running with 3", || async {
        let g = groups
            .get("llm-pretrain")
            .await
            .map_err(|e| e.to_string())?;
        let st = &g.data["status"];
        if st["phase"] == "Running" && st["running"] == 3 {
            Ok(())
        } else {
            Err(st.to_string())
        }
    })
    .await;

    // 5. A PodDisruptionBudget blocks the preemption a higher-priority gang needs.
    gang_of_one(&client, &ns, "victim", "team-b", "batch", 8).await;
    bound_node(
        &pods,
        "victim-0",
        "the victim bound on the fourth H100 node",
    )
    .await;
    start_bound(&pods).await;
    apply(&client, &ns, json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "protect-training"},
        "spec": {"minAvailable": 4, "selector": {"matchExpressions": [
            {"key": "gantry.dev/pod-group", "operator": "In", "values": ["llm-pretrain", "victim"]}]}}}))
    .await;
    gang_of_one(&client, &ns, "urgent", "team-b", "training", 8).await;
    let why = until("the preemptor says it waits on the budget", || async {
        let g = groups.get("urgent").await.map_err(|e| e.to_string())?;
        let m = g.data["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if m.contains("PodDisruptionBudget") {
            Ok(m)
        } else {
            Err(g.data["status"].to_string())
        }
    })
    .await;
    eprintln!("podgroup/urgent: {why}");
    let urgent_uid = groups
        .get("urgent")
        .await
        .expect("urgent")
        .uid()
        .unwrap_or_default();
    until("a PreemptionBlocked event on the preemptor", || async {
        let ev = events_of(&client, &ns, "PodGroup", "urgent", &urgent_uid).await;
        ev.iter()
            .find(|e| e.reason.as_deref() == Some("PreemptionBlocked"))
            .map(|_| ())
            .ok_or(ev.iter().map(|e| e.reason.clone()).collect::<Vec<_>>())
    })
    .await;
    // The read-only dashboard on the leader's metrics port, in a real headless Chromium: the
    // gang's GPUs, the MIG slices, the queue tree, the preemptor's reason and events.
    let leader_now = holder(&leases).await.expect("a leader");
    let web = ctl
        .iter_mut()
        .find(|c| c.identity == leader_now)
        .expect("the leader's process")
        .proc
        .wait_line("the dashboard address", |l| {
            l.split("dashboard=http://")
                .nth(1)
                .and_then(|r| r.split('/').next())
                .map(str::to_string)
        });
    let urgent_key = format!("pg_{ns}_urgent");
    // The first look asks the loop for boards; wait until the preemptor's reason is on one.
    until("the dashboard showing the preemptor", || async {
        let page = common::http_get(&web, &format!("/jobs/{urgent_key}"));
        if page.contains("PodDisruptionBudget") && page.contains("PreemptionBlocked") {
            Ok(())
        } else {
            Err(page.chars().take(400).collect::<String>())
        }
    })
    .await;
    match common::chromium() {
        None => eprintln!("SKIPPED the dashboard in a browser: no Chromium on PATH"),
        Some(browser) => {
            let gang_uuids: Vec<String> = bound
                .iter()
                .filter(|p| p.name_any().starts_with("llm-pretrain-"))
                .flat_map(devices)
                .collect();
            let pages = [
                (
                    "kube-overview",
                    "/".to_string(),
                    vec![
                        "gantry kube controller · read-only".to_string(),
                        "h100-80gb GPUs allocated".into(),
                    ],
                ),
                ("kube-gpus", "/gpus".into(), {
                    let mut w = vec![
                        format!("used by pg_{ns}_llm-pretrain"),
                        "1g.10gb at memory slice".into(),
                        A100_NODE.to_string(),
                    ];
                    w.extend(gang_uuids.iter().take(3).cloned());
                    w
                }),
                (
                    "kube-queues",
                    "/queues".into(),
                    vec![
                        "data-queue=\"team-a\"".into(),
                        "data-queue=\"team-b\"".into(),
                        "cohort".into(),
                    ],
                ),
                (
                    "kube-jobs",
                    "/jobs".into(),
                    vec![
                        format!("{ns}/urgent"),
                        format!("{ns}/llm-pretrain"),
                        "PodDisruptionBudget".into(),
                    ],
                ),
                (
                    "kube-job",
                    format!("/jobs/{urgent_key}"),
                    vec![
                        "Why it waits:".into(),
                        "PreemptionBlocked".into(),
                        "urgent-0".into(),
                    ],
                ),
            ];
            for (name, path, want) in &pages {
                let url = format!("http://{web}{path}?live=0");
                let html = tokio::task::block_in_place(|| common::dom(&browser, &url));
                for w in want {
                    assert!(html.contains(w.as_str()), "{path}: no {w:?} in\n{html}");
                }
                assert!(
                    !html.contains("/services"),
                    "no Services page in Kubernetes mode"
                );
                tokio::task::block_in_place(|| common::screenshot(&browser, &url, name));
            }
        }
    }
    // An unrelated pod is bound while the preemptor waits.
    let mut side = pod_from(
        &docs(&read("deploy/examples/kube/inference-mig.yaml"))[0]["spec"]["template"],
        "chat-svc-extra",
        json!({}),
    );
    side["apiVersion"] = json!("v1");
    apply(&client, &ns, side).await;
    let t = Instant::now();
    bound_node(
        &pods,
        "chat-svc-extra",
        "an unrelated pod bound while the preemption is blocked",
    )
    .await;
    eprintln!(
        "unrelated pod bound {:.1} s after creation, the preemptor still waiting",
        t.elapsed().as_secs_f64()
    );
    let urgent = pods.get("urgent-0").await.expect("urgent-0");
    assert!(
        node_of(&urgent).is_none(),
        "the preemptor was bound through a PodDisruptionBudget"
    );
    assert!(
        live_bound(&pods)
            .await
            .iter()
            .any(|p| p.name_any() == "victim-0"),
        "the protected victim is still there"
    );
    // The budget goes: the eviction goes through on its next try, the kubelet's part is played,
    // and the preemptor is bound.
    let pdbs: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &resource(&client, "policy", "v1", "PodDisruptionBudget").await,
    );
    pdbs.delete("protect-training", &DeleteParams::default())
        .await
        .expect("delete pdb");
    until("the preemptor bound once the budget is gone", || async {
        finish_deletions(&pods).await;
        let p = pods.get("urgent-0").await.map_err(|e| e.to_string())?;
        node_of(&p).ok_or("not bound".to_string())
    })
    .await;
    live_bound(&pods).await;

    // 6. kill -9 the leader in the middle of a batch; restart it; kill the next leader.
    pods.delete_collection(
        &DeleteParams::default().grace_period(0),
        &ListParams::default(),
    )
    .await
    .expect("clear pods");
    until("the namespace's pods gone", || async {
        let n = pods
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} left"))
        }
    })
    .await;
    let leader = holder(&leases).await.expect("a leader");
    for i in 0..24 {
        apply(
            &client,
            &ns,
            lone_pod(&format!("batch-{i}"), "team-a", "batch", 1),
        )
        .await;
    }
    let at_kill = until("the batch started", || async {
        let n = live_bound(&pods).await.len();
        if n >= 1 {
            Ok(n)
        } else {
            Err(n)
        }
    })
    .await;
    let i = ctl
        .iter()
        .position(|c| c.identity == leader)
        .expect("leader is ours");
    ctl[i].proc.kill9();
    eprintln!("killed {leader} with {at_kill} of 24 bound");
    assert!(
        at_kill < 24,
        "the kill should land mid-batch (qps 8, burst 2)"
    );
    let next = until("the standby takes the Lease", || async {
        match holder(&leases).await {
            Some(h) if h != leader => Ok(h),
            other => Err(other),
        }
    })
    .await;
    until("the batch finished by the new leader", || async {
        let n = live_bound(&pods).await.len();
        if n == 24 {
            Ok(())
        } else {
            Err(n)
        }
    })
    .await;
    ctl[i] = start_controller(&leader, &ctl_cfg);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holder(&leases).await.as_deref(),
        Some(next.as_str()),
        "the restarted replica waits"
    );
    let j = ctl
        .iter()
        .position(|c| c.identity == next)
        .expect("next is ours");
    ctl[j].proc.kill9();
    for i in 24..28 {
        apply(
            &client,
            &ns,
            lone_pod(&format!("batch-{i}"), "team-a", "batch", 1),
        )
        .await;
    }
    until("the restarted replica leads and binds", || async {
        let n = live_bound(&pods).await.len();
        let h = holder(&leases).await;
        if n == 28 && h.as_deref() == Some(leader.as_str()) {
            Ok(())
        } else {
            Err((n, h))
        }
    })
    .await;

    // Clean up what this test created.
    drop(ctl);
    drop(plugins);
    let _ = pods
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default(),
        )
        .await;
    let qa = resource(&client, "gantry.dev", "v1alpha1", "Queue").await;
    for q in ["team-a", "team-b", "research"] {
        let _ = Api::<DynamicObject>::all_with(client.clone(), &qa)
            .delete(q, &DeleteParams::default())
            .await;
    }
    for name in H100_NODES.iter().chain([&A100_NODE]) {
        let _ = inventories.delete(name, &DeleteParams::default()).await;
        let _ = nodes.delete(name, &DeleteParams::default()).await;
    }
    let _ = leases
        .delete("gantry-scheduler", &DeleteParams::default())
        .await;
}

/// Every key `deploy/examples/kube/kind-values.yaml` sets is one the chart defines (a misspelt
/// key is silently ignored by Helm), and `kind.yaml` gives the device plugin enough workers its
/// node selector matches for the training gang. Needs no cluster.
#[test]
fn the_kind_example_fits_the_chart() {
    fn paths(v: &serde_yaml::Value, prefix: &str, out: &mut Vec<String>) {
        if let Some(m) = v.as_mapping() {
            for (k, v) in m {
                let key = format!("{prefix}{}", k.as_str().expect("string keys"));
                out.push(key.clone());
                // Label maps are free-form: only their own key must exist.
                if !key.ends_with("nodeSelector") {
                    paths(v, &format!("{key}."), out);
                }
            }
        }
    }
    fn get<'a>(v: &'a serde_yaml::Value, path: &str) -> Option<&'a serde_yaml::Value> {
        path.split('.').try_fold(v, |v, k| v.get(k))
    }
    let chart: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/helm/gantry/values.yaml")).expect("values.yaml");
    let kind_values: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/examples/kube/kind-values.yaml")).expect("kind-values");
    let mut keys = Vec::new();
    paths(&kind_values, "", &mut keys);
    for k in &keys {
        assert!(
            get(&chart, k).is_some(),
            "kind-values.yaml sets {k}, which the chart does not define"
        );
    }
    let selector = get(&kind_values, "devicePlugin.nodeSelector")
        .and_then(|s| s.as_mapping())
        .expect("a device plugin node selector");
    let cluster: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/examples/kube/kind.yaml")).expect("kind.yaml");
    let matching = cluster["nodes"]
        .as_sequence()
        .expect("nodes")
        .iter()
        .filter(|n| n["role"] == "worker")
        .filter(|n| {
            selector.iter().all(|(k, v)| {
                v.is_null() || n["labels"].get(k.as_str().unwrap_or_default()) == Some(v)
            })
        })
        .count();
    let gang = docs(&read("deploy/examples/kube/training-gang.yaml"));
    let pods = gang
        .iter()
        .find(|d| d["kind"] == "Job")
        .and_then(|j| j["spec"]["completions"].as_u64())
        .expect("the gang's Job");
    assert!(
        matching as u64 >= pods,
        "kind.yaml has {matching} workers for the device plugin; the gang needs {pods}"
    );
}
