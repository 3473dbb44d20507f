//! Binds per second of the whole controller against a **real** API server.
//!
//! ```sh
//! KUBECONFIG=$(../shared/kube-apiserver/start.sh | tail -1) \
//!   cargo run --release -p gantry-kube --example bind_throughput -- \
//!   --nodes 5000 --pods 1000 --qps 0 --runs 3
//! ```
//!
//! It creates `--nodes` Nodes (label and taint `gantry.dev/bench=true`, which only its pods
//! tolerate; 8 H100s each through their NodeInventories) through the API once and reuses them on
//! later runs, a Queue `bench`, and per run `--pods` one-GPU pods in the namespace
//! `gantry-bench`. The controller runs in-process with its own client (`--qps`/`--burst` as
//! given, events on their own bucket, `--event-qps`/`--event-burst`), exactly as
//! `gantry kube controller` does. A separate watch records when each pod is
//! first seen bound. Two modes, each `--runs` times:
//!
//! - `before`: the pods exist before the controller starts; binds/s counts from the first bind
//!   to the last (the time to the first bind, which includes listing every Node and
//!   NodeInventory, is printed apart).
//! - `during`: the controller runs and has synced; the pods are then created as fast as the API
//!   takes them (64 creates in flight); binds/s counts from the first create to the last bind,
//!   and the first bind's delay after the first create is printed.
//!
//! `lag` is how long after the last create the last pod was bound (`during`): near zero means
//! the controller kept pace with the creates. The CPU seconds of this process (controller,
//! creates and watch together), the local `kube-apiserver` and `etcd` over each run show where
//! the machine's time went. Events go on their own bucket (`--event-qps 50 --event-burst 100`,
//! the shipped default, unless given). Medians over the runs are printed last. Inventories do
//! not heartbeat here, so staleness is off (`inventory_stale_after = 0`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use gantry_kube::crd::{crds, NodeInventory, NodeInventorySpec};
use gantry_kube::{ControllerConfig, Metrics};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::json;

const NS: &str = "gantry-bench";

#[derive(Debug, Clone)]
struct Args {
    nodes: usize,
    pods: usize,
    qps: f64,
    burst: u32,
    event_qps: f64,
    event_burst: u32,
    runs: usize,
    modes: Vec<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        nodes: 5000,
        pods: 1000,
        qps: 0.0,
        burst: 100,
        event_qps: 50.0,
        event_burst: 100,
        runs: 3,
        modes: vec!["before".into(), "during".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag}: needs a value"));
        match flag.as_str() {
            "--nodes" => a.nodes = value()?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--pods" => a.pods = value()?.parse().map_err(|e| format!("--pods: {e}"))?,
            "--qps" => a.qps = value()?.parse().map_err(|e| format!("--qps: {e}"))?,
            "--burst" => a.burst = value()?.parse().map_err(|e| format!("--burst: {e}"))?,
            "--event-qps" => {
                a.event_qps = value()?.parse().map_err(|e| format!("--event-qps: {e}"))?
            }
            "--event-burst" => {
                a.event_burst = value()?
                    .parse()
                    .map_err(|e| format!("--event-burst: {e}"))?
            }
            "--runs" => a.runs = value()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--modes" => a.modes = value()?.split(',').map(str::to_string).collect(),
            other => return Err(format!("{other}: unknown flag")),
        }
    }
    if a.modes.iter().any(|m| m != "before" && m != "during") {
        return Err("--modes: before, during or both (comma-separated)".into());
    }
    Ok(a)
}

async fn client() -> Result<Client, Box<dyn std::error::Error>> {
    let config = kube::Config::infer().await?;
    Ok(gantry_kube::controller::client(config)?)
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

/// CRDs, the Queue, the namespace and `n` Nodes with inventories (created once).
async fn setup(c: &Client, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let ssa = PatchParams::apply("gantry-bench").force();
    let crd_api: Api<CustomResourceDefinition> = Api::all(c.clone());
    for crd in crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        crd_api.patch(&name, &ssa, &Patch::Apply(&crd)).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let q: gantry_kube::crd::Queue = obj(json!({"apiVersion": "gantry.dev/v1alpha1",
        "kind": "Queue", "metadata": {"name": "bench"}, "spec": {"unlistedFlavors": "allow"}}));
    Api::<gantry_kube::crd::Queue>::all(c.clone())
        .patch("bench", &ssa, &Patch::Apply(&q))
        .await?;
    let ns: Namespace = obj(json!({"metadata": {"name": NS}}));
    let _ = Api::<Namespace>::all(c.clone())
        .create(&PostParams::default(), &ns)
        .await;
    let nodes: Api<Node> = Api::all(c.clone());
    let have: std::collections::BTreeSet<String> = nodes
        .list(&ListParams::default().labels("gantry.dev/bench=true"))
        .await?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    let missing: Vec<usize> = (0..n)
        .filter(|i| !have.contains(&format!("bench-n{i}")))
        .collect();
    if missing.is_empty() {
        eprintln!("{n} bench nodes exist");
        return Ok(());
    }
    eprintln!("creating {} nodes and inventories…", missing.len());
    let t0 = Instant::now();
    let inv_api: Api<NodeInventory> = Api::all(c.clone());
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    futures::stream::iter(missing.clone())
        .map(|i| {
            let (nodes, inv_api, ssa, done) =
                (nodes.clone(), inv_api.clone(), ssa.clone(), done.clone());
            async move {
                let name = format!("bench-n{i}");
                let node: Node = obj(json!({
                    "metadata": {"name": name, "labels": {"gantry.dev/bench": "true",
                        "kubernetes.io/hostname": name}},
                    "status": {"allocatable": {"cpu": "96", "memory": "1Ti"},
                               "capacity": {"cpu": "96", "memory": "1Ti"},
                               "conditions": [{"type": "Ready", "status": "True"}]}
                }));
                nodes.create(&PostParams::default(), &node).await?;
                // Admission taints a new Node not-ready until a lifecycle controller clears it;
                // there is none here. The bench's own taint keeps other tests' pods off these
                // nodes (only the bench's pods tolerate it).
                nodes
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"spec": {"taints": [
                            {"key": "gantry.dev/bench", "value": "true", "effect": "NoSchedule"}
                        ]}})),
                    )
                    .await?;
                let devices: Vec<gantry_model::Device> = (0..8)
                    .map(|d| {
                        obj(
                            json!({"uuid": format!("GPU-{name}-{d}"), "model": "h100-80gb",
                                    "nvlink_domain": format!("{name}-nvl")}),
                        )
                    })
                    .collect();
                let inv = NodeInventory::new(&name, NodeInventorySpec::new(devices, None));
                inv_api.patch(&name, &ssa, &Patch::Apply(&inv)).await?;
                let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if k % 500 == 0 {
                    eprintln!("  {k} nodes");
                }
                Ok::<(), kube::Error>(())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    eprintln!(
        "{} nodes created in {:.1} s",
        missing.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn pod(i: usize) -> Pod {
    obj(json!({
        "metadata": {"name": format!("p{i}"), "namespace": NS,
                     "labels": {"gantry.dev/queue": "bench"}},
        "spec": {"schedulerName": "gantry", "restartPolicy": "Never",
                 "tolerations": [{"key": "gantry.dev/bench", "operator": "Exists"}],
                 "containers": [{
            "name": "main", "image": "busybox",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                          "limits": {"nvidia.com/gpu": "1"}}}]}
    }))
}

async fn create_pods(c: &Client, n: usize) -> Result<(Instant, Instant), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
    let t0 = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &pod(i))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await?;
    Ok((t0, Instant::now()))
}

async fn clear_pods(c: &Client) {
    let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
    let _ = pods
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default(),
        )
        .await;
    for _ in 0..120 {
        match pods.list(&ListParams::default().limit(1)).await {
            Ok(l) if l.items.is_empty() => return,
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// When each pod was first seen bound.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

fn watch_binds(c: &Client) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen: Seen = Arc::new(Mutex::new(HashMap::new()));
    let s = seen.clone();
    let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
    let task = tokio::spawn(async move {
        let stream = watcher::watcher(pods, watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            let now = Instant::now();
            let pods: Vec<Pod> = match ev {
                Ok(watcher::Event::Apply(p)) | Ok(watcher::Event::InitApply(p)) => vec![p],
                _ => continue,
            };
            for p in pods {
                if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
                    if let Ok(mut m) = s.lock() {
                        m.entry(p.metadata.name.unwrap_or_default()).or_insert(now);
                    }
                }
            }
        }
    });
    (seen, task)
}

async fn wait_bound(seen: &Seen, n: usize, limit: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if seen.lock().map(|m| m.len()).unwrap_or(0) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

struct Controller {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    metrics: Metrics,
    started: Instant,
}

async fn start_controller(a: &Args) -> Result<Controller, Box<dyn std::error::Error>> {
    let c = client().await?;
    let mut cfg = ControllerConfig::new("bench");
    cfg.leader_elect = false;
    cfg.qps = a.qps;
    cfg.burst = a.burst;
    cfg.event_qps = a.event_qps;
    cfg.event_burst = a.event_burst;
    cfg.inventory_stale_after = Duration::ZERO;
    let metrics = Metrics::new();
    let m = metrics.clone();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(async move {
        let _ = gantry_kube::run(c, cfg, m, async {
            let _ = rx.await;
        })
        .await;
    });
    Ok(Controller {
        stop,
        task,
        metrics,
        started,
    })
}

/// Wait (at most 300 s) until `pods` pods were seen bound, stop the controller, and give the
/// times they were first seen bound.
async fn stop_when_bound(
    ctl: Controller,
    seen: &Seen,
    pods: usize,
) -> Result<Vec<Instant>, Box<dyn std::error::Error>> {
    let ok = wait_bound(seen, pods, Duration::from_secs(300)).await;
    let times: Vec<Instant> = seen
        .lock()
        .map(|m| m.values().copied().collect())
        .unwrap_or_default();
    let _ = ctl.stop.send(());
    let _ = ctl.task.await;
    if !ok {
        return Err(format!("only {} of {pods} pods bound within 300 s", times.len()).into());
    }
    Ok(times)
}

#[derive(Debug, Clone, Copy)]
struct RunResult {
    binds_per_s: f64,
    first_bind_s: f64,
    create_per_s: f64,
    /// How long after the last create the last pod was bound (`during` only).
    lag_s: f64,
    /// CPU seconds of this process (controller, creates, watch), the API server and etcd.
    cpu: [f64; 3],
}

async fn run_once(
    a: &Args,
    c: &Client,
    mode: &str,
) -> Result<RunResult, Box<dyn std::error::Error>> {
    clear_pods(c).await;
    let cpu0 = cpu_seconds();
    let (seen, watch) = watch_binds(c);
    let out = if mode == "before" {
        let (t0, t1) = create_pods(c, a.pods).await?;
        let create_per_s = a.pods as f64 / (t1 - t0).as_secs_f64();
        let ctl = start_controller(a).await?;
        let started = ctl.started;
        let times = stop_when_bound(ctl, &seen, a.pods).await?;
        let first = times.iter().min().copied().unwrap_or(started);
        let last = times.iter().max().copied().unwrap_or(started);
        RunResult {
            binds_per_s: a.pods as f64 / (last - first).as_secs_f64().max(1e-3),
            first_bind_s: (first - started).as_secs_f64(),
            create_per_s,
            lag_s: 0.0,
            cpu: [0.0; 3],
        }
    } else {
        let ctl = start_controller(a).await?;
        let t_sync = Instant::now();
        while !ctl.metrics.is_ready() && t_sync.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Let the first cycle build the snapshot of every node.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (t0, t1) = create_pods(c, a.pods).await?;
        let times = stop_when_bound(ctl, &seen, a.pods).await?;
        let first = times.iter().min().copied().unwrap_or(t0);
        let last = times.iter().max().copied().unwrap_or(t0);
        RunResult {
            binds_per_s: a.pods as f64 / (last - t0).as_secs_f64().max(1e-3),
            first_bind_s: first.saturating_duration_since(t0).as_secs_f64(),
            create_per_s: a.pods as f64 / (t1 - t0).as_secs_f64(),
            lag_s: last.saturating_duration_since(t1).as_secs_f64(),
            cpu: [0.0; 3],
        }
    };
    watch.abort();
    let cpu1 = cpu_seconds();
    Ok(RunResult {
        cpu: [cpu1[0] - cpu0[0], cpu1[1] - cpu0[1], cpu1[2] - cpu0[2]],
        ..out
    })
}

/// CPU seconds (user + system) so far of this process and of the `kube-apiserver` and `etcd`
/// processes on this machine (Linux `/proc`; zeros elsewhere): where a run's time went.
fn cpu_seconds() -> [f64; 3] {
    fn of(stat: &str) -> f64 {
        // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }
    let mut out = [0.0; 3];
    out[0] = std::fs::read_to_string("/proc/self/stat").map_or(0.0, |s| of(&s));
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let slot = match comm.trim() {
                "kube-apiserver" => 1,
                "etcd" => 2,
                _ => continue,
            };
            out[slot] += std::fs::read_to_string(e.path().join("stat")).map_or(0.0, |s| of(&s));
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args().map_err(|e| {
        eprintln!("{e}");
        e
    })?;
    let c = client().await?;
    setup(&c, a.nodes).await?;
    println!(
        "nodes {} (8 GPUs each), pods {}, --qps {} --burst {}, events --qps {} --burst {}",
        a.nodes, a.pods, a.qps, a.burst, a.event_qps, a.event_burst
    );
    println!(
        "mode     run  binds/s  first bind (s)  creates/s  lag (s)  cpu s: bench+controller  apiserver  etcd"
    );
    for mode in &a.modes {
        let mut rates = Vec::new();
        let mut firsts = Vec::new();
        for run in 0..a.runs {
            let r = run_once(&a, &c, mode).await?;
            println!(
                "{mode:<8} {run:<4} {:>7.0}  {:>14.3}  {:>9.0}  {:>7.3}  {:>22.1}  {:>9.1}  {:>4.1}",
                r.binds_per_s,
                r.first_bind_s,
                r.create_per_s,
                r.lag_s,
                r.cpu[0],
                r.cpu[1],
                r.cpu[2]
            );
            rates.push(r.binds_per_s);
            firsts.push(r.first_bind_s);
        }
        println!(
            "{mode:<8} median {:>5.0}  {:>14.3}",
            median(rates),
            median(firsts)
        );
    }
    clear_pods(&c).await;
    Ok(())
}
