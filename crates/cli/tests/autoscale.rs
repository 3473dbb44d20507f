//! An inference service that autoscales, end to end with real processes: `gantry serve`, two
//! `gantry agent`s with 4 fake GPUs each, a training gang holding 6 of the 8 GPUs, and a service
//! (min 1, max 4) whose replicas are real HTTP processes exposing a Prometheus gauge that this
//! test (the load generator) drives, spreading the load over the ready replicas as a balancer
//! would.
//!
//! The load rises: the service reaches 4 ready replicas and the training gang is preempted whole
//! and requeued. A replica killed with `kill -9` is replaced under a new index while the service
//! keeps running. The load falls: the service holds its replicas for the scale-down window, then
//! returns to 1, and the training gang runs again.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{client_json, gantry, poll, serve, Proc};

/// The replica process the test starts through the agents: it serves `/health` and `/metrics`
/// (`inflight <value>`, the value read from `LOAD_FILE`) on `PORT` until it is stopped.
#[test]
#[ignore = "the replica process of the autoscaling test, not a test on its own"]
fn replica_process() {
    let (Ok(port), Ok(load_file)) = (std::env::var("PORT"), std::env::var("LOAD_FILE")) else {
        return;
    };
    let listener = std::net::TcpListener::bind(("127.0.0.1", port.parse::<u16>().expect("PORT")))
        .expect("bind PORT");
    let pid_file = Path::new(&load_file).with_file_name(format!("replica-{port}.pid"));
    std::fs::write(pid_file, std::process::id().to_string()).expect("pid file");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut first = String::new();
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        if reader.read_line(&mut first).is_err() {
            continue;
        }
        // Drain the headers.
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
            line.clear();
        }
        let path = first.split_whitespace().nth(1).unwrap_or("");
        let (status, body) = match path {
            "/health" => ("200 OK", "ok\n".to_string()),
            "/metrics" => {
                let load: f64 = std::fs::read_to_string(&load_file)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0.0);
                (
                    "200 OK",
                    format!("# TYPE inflight gauge\ninflight{{replica=\"{port}\"}} {load}\n"),
                )
            }
            _ => ("404 Not Found", String::new()),
        };
        let _ = write!(
            stream,
            "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    }
}

fn agent(addr: &str, node: &str, state: &Path) -> Proc {
    let mut cmd = gantry();
    cmd.args(["agent", "--server", addr, "--node-name", node])
        .args(["--fake-gpus", "4xH100-80GB", "--state-dir"])
        .arg(state.join(node));
    let mut p = Proc::spawn(node, cmd);
    p.wait_line("registered", |l| l.contains("registered").then_some(()));
    p
}

fn submit(addr: &str, dir: &Path, spec: &serde_json::Value) {
    let file = dir.join(format!("{}.json", spec["name"].as_str().expect("name")));
    std::fs::write(&file, spec.to_string()).expect("write");
    client_json(addr, &["submit", file.to_str().expect("utf-8")]);
}

fn service(addr: &str) -> serde_json::Value {
    client_json(addr, &["services"])
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "chat")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

fn training(addr: &str) -> serde_json::Value {
    common::job(addr, "train").expect("train")
}

#[test]
fn a_service_scales_up_under_load_preempting_training_and_back_down_after_its_window() {
    const WINDOW_MS: u64 = 3_000;
    let data = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("dir");
    let (_server, addr) = serve(
        data.path(),
        &[
            "--no-local-agent",
            "--grace-ms",
            "500",
            "--debounce-ms",
            "5",
        ],
    );
    let _a = agent(&addr, "n1", dir.path());
    let _b = agent(&addr, "n2", dir.path());

    submit(
        &addr,
        dir.path(),
        &serde_json::json!({
            "name": "train", "queue": "default", "kind": "training",
            "tasks": [{"count": 2, "gpus": 3}],
            "command": ["sleep", "600"],
        }),
    );
    poll("training running", || {
        let t = training(&addr);
        (t["state"] == "running").then_some(()).ok_or(t)
    });

    let load_file = dir.path().join("load");
    std::fs::write(&load_file, "0").expect("write");
    let port = 20_000 + (std::process::id() % 20_000) as u16;
    let exe = std::env::current_exe().expect("test binary");
    submit(
        &addr,
        dir.path(),
        &serde_json::json!({
            "name": "chat", "queue": "default", "kind": "inference",
            "replicas": {"min": 1, "max": 4},
            "tasks": [{"gpus": 1}],
            "port": port,
            "readiness": "/health",
            "autoscale": {
                "metric": "inflight", "target": 10, "interval": "200ms",
                "scale_up_window": "0s", "scale_down_window": format!("{WINDOW_MS}ms"),
            },
            "env": {"LOAD_FILE": load_file.to_str().expect("utf-8")},
            "command": [exe.to_str().expect("utf-8"), "replica_process", "--exact", "--ignored", "--nocapture"],
        }),
    );
    poll("one ready replica beside the training gang", || {
        let s = service(&addr);
        (s["ready"] == 1).then_some(()).ok_or(s)
    });
    assert_eq!(training(&addr)["state"], "running");

    // The load generator: `total` in-flight requests spread over the ready replicas.
    let total = std::sync::Arc::new(std::sync::Mutex::new(35.0_f64));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let generator = {
        let (total, stop, addr, load_file) =
            (total.clone(), stop.clone(), addr.clone(), load_file.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let ready = service(&addr)["ready"].as_u64().unwrap_or(0).max(1);
                let per = *total.lock().expect("total") / ready as f64;
                let tmp = load_file.with_extension("tmp");
                std::fs::write(&tmp, per.to_string()).expect("write");
                std::fs::rename(&tmp, &load_file).expect("rename");
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };

    // Load rises to 3.5 times one replica's target: 4 replicas, training preempted whole.
    let up = Instant::now();
    let s = poll("4 ready replicas", || {
        let s = service(&addr);
        (s["ready"] == 4).then_some(s.clone()).ok_or(s)
    });
    let scale_up = up.elapsed();
    assert_eq!(s["desired"], 4, "{s}");
    let decision = s["last_decision"].as_str().unwrap_or_default();
    assert!(decision.starts_with("scale up 1 -> 4: "), "{decision}");
    let t = training(&addr);
    assert_eq!(t["state"], "pending", "{t}");
    assert!(t["placements"].as_array().is_some_and(Vec::is_empty), "{t}");
    assert_eq!(t["attempt"], 1, "preempted whole once and requeued: {t}");
    let endpoints = client_json(&addr, &["endpoints", "chat"]);
    let ends = endpoints.as_array().expect("endpoints");
    assert_eq!(ends.len(), 4, "{endpoints}");
    let mut ports: Vec<(String, u64)> = ends
        .iter()
        .map(|e| {
            (
                e["node"].as_str().unwrap_or_default().to_string(),
                e["port"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ports.sort();
    ports.dedup();
    assert_eq!(
        ports.len(),
        4,
        "each replica its own port on its node: {endpoints}"
    );

    // A replica dies (kill -9): it is replaced under a new index; the service goes on and the
    // training gang stays preempted.
    let victim = ends
        .iter()
        .find(|e| e["index"] != 0)
        .expect("a replica besides the first");
    let pid: i32 = std::fs::read_to_string(dir.path().join(format!(
        "replica-{}.pid",
        victim["port"].as_u64().expect("port")
    )))
    .expect("pid file")
    .trim()
    .parse()
    .expect("pid");
    let killed_index = victim["index"].as_u64().expect("index");
    assert!(std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill")
        .success());
    let s = poll("4 ready replicas again, one of them new", || {
        let s = service(&addr);
        let indexes: Vec<u64> = s["endpoints"]
            .as_array()
            .map(|e| e.iter().filter_map(|x| x["index"].as_u64()).collect())
            .unwrap_or_default();
        (s["ready"] == 4 && !indexes.contains(&killed_index) && indexes.contains(&4))
            .then_some(s.clone())
            .ok_or(s)
    });
    assert_eq!(s["state"], "running", "{s}");
    assert_eq!(training(&addr)["state"], "pending");

    // Load falls: one replica is enough, but only after the scale-down window.
    *total.lock().expect("total") = 5.0;
    let down = Instant::now();
    let s = poll("back to 1 replica", || {
        let s = service(&addr);
        (s["running"] == 1 && s["desired"] == 1)
            .then_some(s.clone())
            .ok_or(s)
    });
    let scale_down = down.elapsed();
    assert!(
        scale_down >= Duration::from_millis(WINDOW_MS),
        "scaled down after {scale_down:?}, inside the {WINDOW_MS} ms window"
    );
    let decision = s["last_decision"].as_str().unwrap_or_default();
    assert!(decision.starts_with("scale down 4 -> 1: "), "{decision}");
    poll("training running again", || {
        let t = training(&addr);
        (t["state"] == "running" && t["attempt"] == 1)
            .then_some(())
            .ok_or(t)
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    generator.join().expect("generator");
    eprintln!(
        "autoscale e2e: 1 -> 4 ready replicas {:.1} s after the load rose (interval 200 ms, no \
         up window); 4 -> 1 {:.1} s after it fell (down window {} s)",
        scale_up.as_secs_f64(),
        scale_down.as_secs_f64(),
        WINDOW_MS / 1000
    );
}

/// A router in front of the service, as the test plays it: `/metrics` says how many requests
/// wait (`router_queued`).
fn router(queued: std::sync::Arc<std::sync::atomic::AtomicU32>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = format!(
                "router_queued{{service=\"chat\"}} {}\n",
                queued.load(std::sync::atomic::Ordering::SeqCst)
            );
            let _ = write!(
                stream,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn a_service_with_min_0_goes_to_zero_when_idle_and_comes_back_when_requests_queue() {
    let data = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("dir");
    let (_server, addr) = serve(
        data.path(),
        &[
            "--fake-gpus",
            "2xH100-80GB",
            "--grace-ms",
            "500",
            "--debounce-ms",
            "5",
        ],
    );
    let queued = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let router_port = router(queued.clone());
    let load_file = dir.path().join("load");
    std::fs::write(&load_file, "0").expect("write");
    let exe = std::env::current_exe().expect("test binary");
    let port = 20_000 + (std::process::id() % 20_000) as u16 + 7;
    submit(
        &addr,
        dir.path(),
        &serde_json::json!({
            "name": "chat", "queue": "default", "kind": "inference",
            "replicas": {"min": 0, "max": 2},
            "tasks": [{"gpus": 1}],
            "port": port,
            "readiness": "/health",
            "autoscale": {
                "metric": "inflight", "target": 10, "interval": "200ms",
                "scale_down_window": "1s",
                "activation": {"url": format!("http://127.0.0.1:{router_port}/metrics"), "metric": "router_queued"},
            },
            "env": {"LOAD_FILE": load_file.to_str().expect("utf-8")},
            "command": [exe.to_str().expect("utf-8"), "replica_process", "--exact", "--ignored", "--nocapture"],
        }),
    );
    // It starts with one replica; idle, it goes to zero after the window.
    poll("one ready replica", || {
        let s = service(&addr);
        (s["ready"] == 1).then_some(()).ok_or(s)
    });
    let s = poll("scaled to zero", || {
        let s = service(&addr);
        (s["desired"] == 0 && s["running"] == 0)
            .then_some(s.clone())
            .ok_or(s)
    });
    assert!(
        s["last_decision"]
            .as_str()
            .unwrap_or_default()
            .starts_with("scale down 1 -> 0: "),
        "{s}"
    );
    let j = common::job(&addr, "chat").expect("chat");
    assert_eq!(j["state"], "pending", "{j}");
    assert!(
        j["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("scaled to zero"),
        "{j}"
    );
    // Requests queue at the router: it comes back, sized for them.
    queued.store(15, std::sync::atomic::Ordering::SeqCst);
    let s = poll("back from zero with 2 ready replicas", || {
        let s = service(&addr);
        (s["ready"] == 2).then_some(s.clone()).ok_or(s)
    });
    let why = s["last_decision"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("scale up 0 -> 2: 15 requests queued"),
        "{s}"
    );
}
