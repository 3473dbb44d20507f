//! The controller, whole (watches, mirror, engine, applier, leader election), against a fake
//! API server over a `tower-test` mock transport. Each test is one named scenario.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use gantry_kube::{ControllerConfig, Metrics};
use serde_json::{json, Value};
use tokio::sync::oneshot;

struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn config(identity: &str, leader_elect: bool) -> ControllerConfig {
    let mut cfg = ControllerConfig::new(identity);
    cfg.leader_elect = leader_elect;
    cfg.qps = 0.0;
    cfg.debounce = Duration::from_millis(10);
    cfg.tick = Duration::from_millis(200);
    cfg.lease_duration = Duration::from_millis(1500);
    cfg.renew_every = Duration::from_millis(200);
    cfg
}

fn start(api: &FakeApi, cfg: ControllerConfig) -> Running {
    start_with(api.client(), cfg)
}

fn start_with(client: kube::Client, cfg: ControllerConfig) -> Running {
    start_with_metrics(client, cfg, Metrics::new())
}

fn start_with_metrics(client: kube::Client, cfg: ControllerConfig, metrics: Metrics) -> Running {
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        gantry_kube::run(client, cfg, metrics, async {
            let _ = rx.await;
        })
        .await
        .expect("controller");
    });
    Running {
        stop: Some(tx),
        task,
    }
}

fn cluster(api: &FakeApi, nodes: &[&str], unhealthy: &[u32]) {
    for (i, n) in nodes.iter().enumerate() {
        api.apply(CORE, "nodes", node(n, &format!("r{}", i / 2)));
        api.apply(GANTRY, "nodeinventories", inventory(n, 8, unhealthy));
    }
}

fn queues(api: &FakeApi, nominal: Option<f64>) {
    api.apply(GANTRY, "queues", queue("research", None, None));
    api.apply(GANTRY, "queues", queue("team-a", Some("research"), nominal));
    api.apply(GANTRY, "queues", queue("team-b", Some("research"), nominal));
}

/// A PodGroup `name` in namespace `ml` with `n` pods of `gpus` GPUs each; the pods' names.
fn gang(api: &FakeApi, name: &str, n: u32, gpus: u32, queue: &str, class: &str) -> Vec<String> {
    api.apply(GANTRY, "podgroups", pod_group("ml", name, n, queue, class));
    let names: Vec<String> = (0..n).map(|i| format!("{name}-{i}")).collect();
    for p in &names {
        api.apply(CORE, "pods", pod("ml", p, gpus, Some(name), None));
    }
    names
}

fn bound(api: &FakeApi, ns: &str, names: &[String]) -> usize {
    names
        .iter()
        .filter(|n| node_of(api, ns, n).is_some())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gang_of_4_is_bound_only_when_all_4_fit() {
    let api = FakeApi::default();
    cluster(&api, &["n0", "n1"], &[]);
    queues(&api, None);
    let ctl = start(&api, config("a", false));
    let names = gang(&api, "llm", 4, 8, "team-a", "training");
    // Two 8-GPU nodes hold two of the four: nothing may be bound, and the group says why.
    let st = api
        .wait_for(20, "the group to wait in its queue with a reason", |a| {
            let g = a.get(GANTRY, "podgroups", "ml", "llm")?;
            (g["status"]["phase"] == "Inqueue" && g["status"]["message"] != "")
                .then_some(g["status"].clone())
        })
        .await;
    assert_eq!(
        bound(&api, "ml", &names),
        0,
        "a partial gang was bound: {st}"
    );
    // Two more nodes join: the whole gang is bound, one pod per node, disjoint devices.
    cluster(&api, &["n0", "n1", "n2", "n3"], &[]);
    api.wait_for(20, "all four bound", |a| {
        (bound(a, "ml", &names) == 4).then_some(())
    })
    .await;
    let nodes: BTreeSet<_> = names
        .iter()
        .filter_map(|n| node_of(&api, "ml", n))
        .collect();
    assert_eq!(nodes.len(), 4);
    let mut seen = BTreeSet::new();
    for n in &names {
        let devs = devices_of(&api, "ml", n);
        assert_eq!(devs.len(), 8, "{n}: {devs:?}");
        let node = node_of(&api, "ml", n).unwrap();
        for d in devs {
            assert!(
                d.starts_with(&format!("GPU-{node}-")),
                "{d} is not on {node}"
            );
            assert!(seen.insert(d.clone()), "{d} handed out twice");
        }
    }
    // One request per pod: the binding carries the annotations, so no pod is ever bound
    // without them.
    let writes = api.writes();
    for n in &names {
        assert!(writes.contains(&format!("POST /api/v1/namespaces/ml/pods/{n}/binding")));
        assert!(!writes.contains(&format!("PATCH /api/v1/namespaces/ml/pods/{n}")));
    }
    api.wait_for(20, "the group Running", |a| {
        let g = a.get(GANTRY, "podgroups", "ml", "llm")?;
        (g["status"]["phase"] == "Running" && g["status"]["running"] == 4).then_some(())
    })
    .await;
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_evicts_a_whole_gang_and_binds_only_once_it_is_gone() {
    let api = FakeApi::default();
    api.graceful_evictions();
    cluster(&api, &["n0", "n1"], &[]);
    queues(&api, None);
    let ctl = start(&api, config("a", false));
    let low = gang(&api, "sweep", 2, 8, "team-a", "batch");
    api.wait_for(20, "the batch gang bound", |a| {
        (bound(a, "ml", &low) == 2).then_some(())
    })
    .await;
    // A PodDisruptionBudget refuses one victim's eviction at first.
    api.refuse_evict("sweep-1", true);
    let high = gang(&api, "train", 2, 8, "team-a", "training");
    api.wait_for(20, "an eviction refused", |a| {
        a.writes()
            .contains(&"POST /api/v1/namespaces/ml/pods/sweep-1/eviction".to_string())
            .then_some(())
    })
    .await;
    // While a victim runs (refused) or terminates, the training gang must wait, and says it
    // waits on the disruption budget.
    let msg = api
        .wait_for(20, "the preemptor blocked by the budget", |a| {
            let g = a.get(GANTRY, "podgroups", "ml", "train")?;
            let msg = g["status"]["message"].as_str()?.to_string();
            msg.contains("PodDisruptionBudget").then_some(msg)
        })
        .await;
    assert!(msg.contains("evicting ml/sweep-1 was refused"), "{msg}");
    assert_eq!(
        bound(&api, "ml", &high),
        0,
        "bound onto GPUs a victim still holds"
    );
    assert!(api.devices_held_twice().is_empty());
    let events = api.list("apis/events.k8s.io/v1", "events");
    assert!(
        events
            .iter()
            .any(|e| e["reason"] == "PreemptionBlocked" && e["regarding"]["name"] == "train"),
        "{events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e["reason"] == "Preempted" && e["regarding"]["name"] == "sweep-1"),
        "Preempted written for a refused eviction: {events:#?}"
    );
    // The budget allows it now; both victims terminate (grace period): still nothing bound.
    api.refuse_evict("sweep-1", false);
    api.wait_for(20, "both victims terminating", |a| {
        low.iter()
            .all(|n| {
                a.get(CORE, "pods", "ml", n)
                    .is_some_and(|p| p["metadata"]["deletionTimestamp"].is_string())
            })
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        bound(&api, "ml", &high),
        0,
        "bound during the victims' grace period"
    );
    // The kubelet finishes them: the training gang is bound, whole, on their GPUs.
    for n in &low {
        api.delete(CORE, "pods", "ml", n);
    }
    api.wait_for(20, "the training gang bound", |a| {
        (bound(a, "ml", &high) == 2).then_some(())
    })
    .await;
    assert!(api.devices_held_twice().is_empty());
    let events = api.list("apis/events.k8s.io/v1", "events");
    assert!(
        events.iter().any(|e| e["reason"] == "Preempted"),
        "no Preempted event: {events:#?}"
    );
    ctl.stop().await;
}

/// The 451-second freeze: the eviction of a victim covered by a PodDisruptionBudget is refused
/// with 429, and kube-client's default retry (what `Client::try_default()` builds) keeps
/// retrying it. No bind for anyone may wait on that call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_eviction_never_holds_up_other_binds() {
    let api = FakeApi::default();
    cluster(&api, &["n0", "n1"], &[]);
    api.apply(CORE, "nodes", node_with("t0", json!({}), json!([])));
    api.apply(GANTRY, "nodeinventories", inventory_of("t0", 8, "t4"));
    queues(&api, None);
    let mut cfg = config("a", false);
    cfg.api_timeout = Duration::from_secs(3);
    let metrics = Metrics::new();
    let ctl = start_with_metrics(api.client_with_default_retry(), cfg, metrics.clone());
    let low = gang(&api, "sweep", 2, 8, "team-a", "batch");
    api.wait_for(20, "the batch gang bound", |a| {
        (bound(a, "ml", &low) == 2).then_some(())
    })
    .await;
    api.refuse_evict("sweep-1", true);
    let high = gang(&api, "train", 2, 8, "team-a", "training");
    api.wait_for(20, "an eviction refused", |a| {
        a.writes()
            .contains(&"POST /api/v1/namespaces/ml/pods/sweep-1/eviction".to_string())
            .then_some(())
    })
    .await;
    // While that eviction is being retried, unrelated pods arrive and must bind at once.
    let t0 = std::time::Instant::now();
    let mut lone = Vec::new();
    for i in 0..4 {
        let name = format!("infer-{i}");
        let mut p = pod("ml", &name, 1, None, Some("team-a"));
        p["metadata"]["annotations"] = json!({"gantry.dev/gpu-models": "t4"});
        api.apply(CORE, "pods", p);
        lone.push(name);
    }
    api.wait_for(2, "the unrelated pods bound within 2 s", |a| {
        (bound(a, "ml", &lone) == 4).then_some(())
    })
    .await;
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(metrics.is_healthy(), "/readyz failed while the loop runs");
    // The eviction call gives up at the call timeout: the gang waits with a reason, and the
    // victim keeps its devices (no requeue against the preemptor's nomination).
    let st = api
        .wait_for(20, "the preemptor says why it waits", |a| {
            let g = a.get(GANTRY, "podgroups", "ml", "train")?;
            let msg = g["status"]["message"].as_str()?.to_string();
            (g["status"]["phase"] == "Inqueue" && msg.contains("evicting ml/sweep-1"))
                .then_some(msg)
        })
        .await;
    assert!(st.contains("no answer within 3000 ms"), "{st}");
    assert_eq!(bound(&api, "ml", &high), 0);
    assert!(api.devices_held_twice().is_empty());
    let events = api.list("apis/events.k8s.io/v1", "events");
    assert!(
        !events
            .iter()
            .any(|e| e["reason"] == "Preempted" && e["regarding"]["name"] == "sweep-1"),
        "a Preempted event for a pod that was not evicted: {events:#?}"
    );
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_devices_are_avoided() {
    let api = FakeApi::default();
    cluster(&api, &["n0"], &[2, 5]);
    queues(&api, None);
    let ctl = start(&api, config("a", false));
    api.apply(CORE, "pods", pod("ml", "big", 8, None, Some("team-a")));
    api.apply(CORE, "pods", pod("ml", "six", 6, None, Some("team-a")));
    api.wait_for(20, "six bound", |a| node_of(a, "ml", "six"))
        .await;
    let devs: BTreeSet<String> = devices_of(&api, "ml", "six").into_iter().collect();
    assert_eq!(devs.len(), 6);
    assert!(
        !devs.contains("GPU-n0-2") && !devs.contains("GPU-n0-5"),
        "{devs:?}"
    );
    // Eight GPUs do not exist healthy on the node: the pod waits and says so.
    let msg = api
        .wait_for(20, "big's PodScheduled=False", |a| {
            let p = a.get(CORE, "pods", "ml", "big")?;
            p["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")
                .map(|c| c["message"].as_str().unwrap_or("").to_string())
        })
        .await;
    assert!(node_of(&api, "ml", "big").is_none());
    assert!(!msg.is_empty());
    // The device recovers: an inventory update flips its health and the 8-GPU pod... still
    // waits, because "six" holds six of them; free "six" and it binds on all eight.
    api.apply(GANTRY, "nodeinventories", inventory("n0", 8, &[]));
    api.delete(CORE, "pods", "ml", "six");
    api.wait_for(20, "big bound after recovery", |a| node_of(a, "ml", "big"))
        .await;
    assert_eq!(devices_of(&api, "ml", "big").len(), 8);
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_reasons_are_written_to_the_pods_and_the_pod_group() {
    let api = FakeApi::default();
    cluster(&api, &["n0", "n1"], &[]);
    // team-a has 8 H100s of quota; team-b has none to lend (it has no quota either).
    api.apply(GANTRY, "queues", queue("research", None, None));
    api.apply(
        GANTRY,
        "queues",
        queue("team-a", Some("research"), Some(8.0)),
    );
    let mut b = queue("team-b", Some("research"), Some(0.0));
    b["spec"]["quotas"]["h100-80gb"]["lendingLimit"] = json!(0);
    api.apply(GANTRY, "queues", b);
    let ctl = start(&api, config("a", false));
    gang(&api, "big", 2, 8, "team-a", "training");
    let status = api
        .wait_for(20, "the group waiting with a reason", |a| {
            let g = a.get(GANTRY, "podgroups", "ml", "big")?;
            (g["status"]["phase"] == "Inqueue" && g["status"]["message"] != "")
                .then_some(g["status"].clone())
        })
        .await;
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("quota"), "{message}");
    let cond = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Scheduled")
        .unwrap();
    assert_eq!(cond["status"], "False");
    assert_eq!(cond["reason"], "Inqueue");
    assert_eq!(cond["message"].as_str(), Some(message));
    for i in 0..2 {
        let pod_cond = api
            .wait_for(20, "the pod's condition", |a| {
                let p = a.get(CORE, "pods", "ml", &format!("big-{i}"))?;
                p["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "PodScheduled")
                    .cloned()
            })
            .await;
        assert_eq!(pod_cond["reason"], "Unschedulable");
        assert_eq!(pod_cond["message"].as_str(), Some(message));
        assert!(
            pod_cond["lastTransitionTime"].is_string(),
            "PodScheduled=False without a transition time: {pod_cond}"
        );
    }
    // Events `kubectl describe` finds: about each pod and the group, by uid, with
    // kube-scheduler's reason word.
    let group_uid = api.get(GANTRY, "podgroups", "ml", "big").unwrap()["metadata"]["uid"].clone();
    let pod_uid = api.get(CORE, "pods", "ml", "big-0").unwrap()["metadata"]["uid"].clone();
    let events = api
        .wait_for(
            20,
            "FailedScheduling events on the pods and the group",
            |a| {
                let events = a.list("apis/events.k8s.io/v1", "events");
                let about = |uid: &serde_json::Value| {
                    events.iter().any(|e| {
                        e["reason"] == "FailedScheduling"
                            && e["regarding"]["uid"] == *uid
                            && e["note"].as_str() == Some(message)
                    })
                };
                (about(&group_uid) && about(&pod_uid)).then_some(events.clone())
            },
        )
        .await;
    assert!(
        events.iter().all(|e| e["regarding"]["uid"].is_string()),
        "an event without the uid of what it is about: {events:#?}"
    );
    // A pod with a malformed request is told what is wrong with it.
    let mut bad = pod("ml", "half", 1, None, Some("team-a"));
    bad["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = json!("0.5");
    api.apply(CORE, "pods", bad);
    let msg = api
        .wait_for(20, "the malformed pod's condition", |a| {
            let p = a.get(CORE, "pods", "ml", "half")?;
            p["status"]["conditions"][0]["message"]
                .as_str()
                .map(str::to_string)
        })
        .await;
    assert!(
        msg.contains("nvidia.com/gpu") && msg.contains("whole number"),
        "{msg}"
    );
    // Queue status shows usage and pending work.
    api.wait_for(20, "team-a status", |a| {
        let q = a.get(GANTRY, "queues", "", "team-a")?;
        (q["status"]["pending"] == 1).then_some(())
    })
    .await;
    ctl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_hands_over() {
    let api = FakeApi::default();
    cluster(&api, &["n0"], &[]);
    queues(&api, None);
    let (client_a, cable_a) = api.client_with_switch();
    let a = start_with(client_a, config("replica-a", true));
    api.wait_for(20, "replica-a to hold the lease", |f| {
        let l = f.get(LEASES, "leases", "gantry-system", "gantry-scheduler")?;
        (l["spec"]["holderIdentity"] == "replica-a").then_some(())
    })
    .await;
    let b = start(&api, config("replica-b", true));
    api.apply(CORE, "pods", pod("ml", "one", 1, None, Some("team-a")));
    api.wait_for(20, "one bound", |f| node_of(f, "ml", "one"))
        .await;
    // Replica b follows: the lease stays with a while a renews.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let l = api
        .get(LEASES, "leases", "gantry-system", "gantry-scheduler")
        .unwrap();
    assert_eq!(l["spec"]["holderIdentity"], "replica-a");
    // Replica a dies without a word: its connection goes first, so it cannot release the lease.
    cable_a.store(true, std::sync::atomic::Ordering::SeqCst);
    let crashed = tokio::time::Instant::now();
    a.task.abort();
    let transitions = api
        .wait_for(20, "replica-b to take the lease", |f| {
            let l = f.get(LEASES, "leases", "gantry-system", "gantry-scheduler")?;
            (l["spec"]["holderIdentity"] == "replica-b")
                .then_some(l["spec"]["leaseTransitions"].clone())
        })
        .await;
    // b took over on its own clock: only after the record stood still for the lease duration a
    // wrote (1.5 s, written rounded up as 2 s; a renewed at most one renew period, 0.2 s, before
    // it died).
    let waited = crashed.elapsed();
    assert!(
        waited >= Duration::from_millis(1_700),
        "took over after {waited:?}, before the lease expired"
    );
    assert_eq!(transitions, 1);
    api.apply(CORE, "pods", pod("ml", "two", 1, None, Some("team-a")));
    api.wait_for(20, "two bound by the new leader", |f| {
        node_of(f, "ml", "two")
    })
    .await;
    let d1: BTreeSet<_> = devices_of(&api, "ml", "one").into_iter().collect();
    let d2: BTreeSet<_> = devices_of(&api, "ml", "two").into_iter().collect();
    assert!(
        d1.is_disjoint(&d2),
        "the new leader reused a device: {d1:?} {d2:?}"
    );
    // Stopping b releases the lease at once.
    b.stop().await;
    let l = api
        .get(LEASES, "leases", "gantry-system", "gantry-scheduler")
        .unwrap();
    assert!(l["spec"]["holderIdentity"].is_null(), "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bind_rolls_the_rest_of_the_gang_back() {
    let api = FakeApi::default();
    cluster(&api, &["n0", "n1"], &[]);
    queues(&api, None);
    api.refuse_bind("pair-1");
    let ctl = start(&api, config("a", false));
    let names = gang(&api, "pair", 2, 8, "team-a", "training");
    // pair-0 is bound in the same batch as pair-1, whose binding the API refuses: pair-0 is then
    // evicted, so the gang never runs half.
    api.wait_for(20, "the bound member rolled back", |a| {
        let evicted = a
            .writes()
            .contains(&"POST /api/v1/namespaces/ml/pods/pair-0/eviction".to_string());
        (evicted && a.get(CORE, "pods", "ml", "pair-0").is_none()).then_some(())
    })
    .await;
    assert_eq!(bound(&api, "ml", &names), 0);
    ctl.stop().await;
}

/// The PodScheduled condition of a pod, once written: (reason, message).
async fn scheduled_condition(api: &FakeApi, ns: &str, name: &str) -> (String, String) {
    api.wait_for(20, "the pod's PodScheduled condition", |a| {
        let p = a.get(CORE, "pods", ns, name)?;
        let c = p["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "PodScheduled" && c["status"] == "False")?
            .clone();
        Some((
            c["reason"].as_str()?.to_string(),
            c["message"].as_str()?.to_string(),
        ))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_affinity_taints_and_gpu_models_are_honoured_with_reasons() {
    let api = FakeApi::default();
    let h100 = "NVIDIA-H100-80GB-HBM3";
    api.apply(
        CORE,
        "nodes",
        node_with("n-h100", json!({"nvidia.com/gpu.product": h100}), json!([])),
    );
    api.apply(
        GANTRY,
        "nodeinventories",
        inventory_of("n-h100", 8, "h100-80gb"),
    );
    api.apply(
        CORE,
        "nodes",
        node_with(
            "n-a100",
            json!({"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}),
            json!([]),
        ),
    );
    api.apply(
        GANTRY,
        "nodeinventories",
        inventory_of("n-a100", 8, "a100-80gb"),
    );
    api.apply(
        CORE,
        "nodes",
        node_with(
            "n-qa",
            json!({"nvidia.com/gpu.product": h100}),
            json!([{"key": "qa-dedicated", "value": "yes", "effect": "NoSchedule"}]),
        ),
    );
    api.apply(
        GANTRY,
        "nodeinventories",
        inventory_of("n-qa", 8, "h100-80gb"),
    );
    // team-a has H100 quota only: the A100s are not its to use.
    api.apply(
        GANTRY,
        "queues",
        json!({"apiVersion": "gantry.dev/v1alpha1", "kind": "Queue",
        "metadata": {"name": "research"}, "spec": {"quotas": {}}}),
    );
    api.apply(
        GANTRY,
        "queues",
        queue("team-a", Some("research"), Some(16.0)),
    );
    let ctl = start(&api, config("a", false));
    let lone = |name: &str, gpus: u32, spec: Value, annotations: Value| {
        let mut p = pod("ml", name, gpus, None, Some("team-a"));
        for (k, v) in spec.as_object().expect("object") {
            p["spec"][k] = v.clone();
        }
        p["metadata"]["annotations"] = annotations;
        api.apply(CORE, "pods", p);
    };
    lone(
        "ssd",
        1,
        json!({"nodeSelector": {"disktype": "ssd"}}),
        json!({}),
    );
    lone(
        "h100-only",
        4,
        json!({"nodeSelector": {"nvidia.com/gpu.product": h100}}),
        json!({}),
    );
    lone("any", 4, json!({}), json!({}));
    lone(
        "qa",
        1,
        json!({"nodeSelector": {"kubernetes.io/hostname": "n-qa"},
               "tolerations": [{"key": "qa-dedicated", "operator": "Exists", "effect": "NoSchedule"}]}),
        json!({}),
    );
    lone(
        "untolerated",
        1,
        json!({"nodeSelector": {"kubernetes.io/hostname": "n-qa"}}),
        json!({}),
    );
    lone(
        "nowhere",
        1,
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["does-not-exist"]}]}]}}}}),
        json!({}),
    );
    lone(
        "a100",
        1,
        json!({}),
        json!({"gantry.dev/gpu-models": "a100-80gb"}),
    );
    api.wait_for(20, "the placeable pods bound", |a| {
        ["h100-only", "any", "qa"]
            .iter()
            .all(|n| node_of(a, "ml", n).is_some())
            .then_some(())
    })
    .await;
    assert_eq!(node_of(&api, "ml", "h100-only").as_deref(), Some("n-h100"));
    assert_eq!(
        node_of(&api, "ml", "any").as_deref(),
        Some("n-h100"),
        "no A100 quota, n-qa tainted"
    );
    assert_eq!(node_of(&api, "ml", "qa").as_deref(), Some("n-qa"));
    let (reason, msg) = scheduled_condition(&api, "ml", "ssd").await;
    assert_eq!(reason, "Unschedulable");
    assert_eq!(msg, "no h100-80gb node can run a task of 1 h100-80gb GPU: 2 of 2 h100-80gb nodes excluded: 1 with taint qa-dedicated=yes:NoSchedule, 1 not matching node_selector disktype=ssd");
    let (_, msg) = scheduled_condition(&api, "ml", "untolerated").await;
    assert_eq!(msg, "no h100-80gb node can run a task of 1 h100-80gb GPU: 2 of 2 h100-80gb nodes excluded: 1 with taint qa-dedicated=yes:NoSchedule, 1 not matching node_selector kubernetes.io/hostname=n-qa");
    let (_, msg) = scheduled_condition(&api, "ml", "nowhere").await;
    assert_eq!(msg, "no h100-80gb node can run a task of 1 h100-80gb GPU: 2 of 2 h100-80gb nodes excluded: 1 with taint qa-dedicated=yes:NoSchedule, 1 not matching node affinity");
    let (_, msg) = scheduled_condition(&api, "ml", "a100").await;
    assert_eq!(msg, "queue team-a has no quota for a100-80gb (list it in the queue's quotas, or set unlisted_flavors: allow)");
    for p in ["ssd", "untolerated", "nowhere", "a100"] {
        assert_eq!(node_of(&api, "ml", p), None, "{p} was bound");
    }
    ctl.stop().await;
}
