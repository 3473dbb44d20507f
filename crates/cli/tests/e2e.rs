//! End to end with real processes on loopback: `gantry serve --no-local-agent`, two
//! `gantry agent` processes with four fake GPUs each, and a 2×4-GPU gang that only fits by
//! spanning both. Every task process must see exactly its assigned uuids; then one agent is
//! killed with SIGKILL and the whole gang must be requeued (the surviving half stopped, the job
//! pending again with its attempt bumped).

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{alive, client_json, client_text, gantry, job, poll, serve, Proc};

fn agent(addr: &str, node: &str, state: &Path) -> Proc {
    let mut cmd = gantry();
    cmd.args([
        "agent",
        "--server",
        addr,
        "--node-name",
        node,
        "--fake-gpus",
        "4xH100-80GB",
    ])
    .arg("--state-dir")
    .arg(state);
    Proc::spawn(node, cmd)
}

/// What a task process wrote: its `CUDA_VISIBLE_DEVICES` and its pid.
fn seen(out: &Path, index: u64) -> Option<(BTreeSet<String>, u32)> {
    let text = std::fs::read_to_string(out.join(format!("task-{index}-attempt-0"))).ok()?;
    let (devices, pid) = text.trim().split_once(' ')?;
    Some((
        devices.split(',').map(str::to_string).collect(),
        pid.parse().ok()?,
    ))
}

#[test]
fn a_gang_spans_two_agent_processes_and_a_killed_agent_requeues_it_whole() {
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let (_server, addr) = serve(
        data.path(),
        &[
            "--no-local-agent",
            "--lease-ms",
            "1500",
            "--grace-ms",
            "300",
            "--debounce-ms",
            "5",
        ],
    );
    let mut agents = [
        agent(&addr, "e2e-a0", data.path()),
        agent(&addr, "e2e-a1", data.path()),
    ];
    poll("both agents registered and ready", || {
        let nodes = client_json(&addr, &["nodes"]);
        let ready = nodes
            .as_array()
            .expect("list")
            .iter()
            .filter(|n| n["ready"] == true && n["gpus"] == 4)
            .count();
        if ready == 2 {
            Ok(())
        } else {
            Err(nodes)
        }
    });

    // Each task writes "<CUDA_VISIBLE_DEVICES> <pid>" atomically, then becomes a long sleep
    // (exec keeps the pid, so the agent's SIGTERM reaches the sleep itself).
    let script = format!(
        "f={dir}/task-$GANTRY_TASK_INDEX-attempt-$GANTRY_ATTEMPT; \
         echo \"$CUDA_VISIBLE_DEVICES $$\" > $f.tmp && mv $f.tmp $f; exec sleep 600",
        dir = out.path().display()
    );
    let spec = serde_json::json!({
        "name": "gang",
        "queue": "default",
        "tasks": [{"count": 2, "gpus": 4}],
        "command": ["sh", "-c", script],
    });
    let file = out.path().join("gang.yaml");
    std::fs::write(&file, serde_json::to_string(&spec).expect("json")).expect("write");
    let submitted = client_json(&addr, &["submit", file.to_str().expect("utf-8 path")]);
    assert_eq!(submitted["job"], "gang");

    let running = poll("the gang running on both nodes", || {
        let j = job(&addr, "gang").ok_or(serde_json::Value::Null)?;
        if j["state"] == "running" && j["placements"].as_array().is_some_and(|p| p.len() == 2) {
            Ok(j)
        } else {
            Err(j)
        }
    });
    assert_eq!(running["attempt"], 0);
    let placements = running["placements"].as_array().expect("placements");
    let nodes: BTreeSet<&str> = placements
        .iter()
        .map(|p| p["node"].as_str().expect("node"))
        .collect();
    assert_eq!(nodes.len(), 2, "the gang spans both agents: {placements:?}");

    // Every task process ran and saw exactly its own assigned uuids; the sets are disjoint.
    let mut pids = Vec::new();
    let mut all = BTreeSet::new();
    for p in placements {
        let index = p["index"].as_u64().expect("index");
        let assigned: BTreeSet<String> = p["devices"]
            .as_array()
            .expect("devices")
            .iter()
            .map(|d| d.as_str().expect("uuid").to_string())
            .collect();
        assert_eq!(assigned.len(), 4, "{p}");
        let (visible, pid) = poll(&format!("task {index} wrote what it sees"), || {
            seen(out.path(), index).ok_or(())
        });
        assert_eq!(visible, assigned, "task {index} sees its assigned GPUs");
        assert!(all.is_disjoint(&visible), "{visible:?} overlaps {all:?}");
        all.extend(visible);
        pids.push((p["node"].as_str().expect("node").to_string(), pid));
    }

    // kill -9 the agent of task 0. Its task process is orphaned (the agent never got to stop
    // it); the guard of the killed agent kills it at the end.
    let (victim_node, victim_task) = pids[0].clone();
    let (_, survivor_task) = pids[1].clone();
    let victim = agents
        .iter_mut()
        .find(|a| a.name == victim_node)
        .expect("the victim's agent");
    victim.kill9();
    victim.also_kill.push(victim_task);

    let requeued = poll("the whole gang requeued", || {
        let j = job(&addr, "gang").ok_or(serde_json::Value::Null)?;
        if j["state"] == "pending" {
            Ok(j)
        } else {
            Err(j)
        }
    });
    assert_eq!(requeued["attempt"], 1, "{requeued}");
    assert_eq!(requeued["requeues"], 1, "{requeued}");
    assert_eq!(requeued["placements"].as_array().map(Vec::len), Some(0));
    let why = requeued["reason"].as_str().unwrap_or_default();
    assert!(
        !why.is_empty(),
        "a requeued job says why it waits: {requeued}"
    );
    // The surviving agent stopped its half of the gang.
    poll("the surviving task process stopped", || {
        if alive(survivor_task) {
            Err(survivor_task)
        } else {
            Ok(())
        }
    });
    let nodes = client_json(&addr, &["nodes"]);
    let lost: Vec<&serde_json::Value> = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["ready"] == false)
        .collect();
    assert_eq!(lost.len(), 1, "{nodes}");
    assert_eq!(lost[0]["name"], victim_node.as_str());
    // With four GPUs left the 2×4 gang cannot run again: it stays pending.
    let still = job(&addr, "gang").expect("gang");
    assert_eq!(still["state"], "pending", "{still}");
    assert!(seen(out.path(), 0).is_some());
}

/// `gantry serve --log-format json`: every line on stderr is one JSON object, job events name
/// the job and its queue, and cycles that bind carry their counters.
#[test]
fn serve_logs_one_json_object_per_line_naming_the_job() {
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let (server, addr) = serve(
        data.path(),
        &["--log-format", "json", "--fake-gpus", "2xH100-80GB"],
    );
    let file = out.path().join("job.yaml");
    std::fs::write(
        &file,
        "name: logged\nqueue: default\ntasks: [{count: 1, gpus: 1}]\ncommand: [\"true\"]\n",
    )
    .expect("write");
    client_json(&addr, &["submit", file.to_str().expect("utf-8 path")]);
    poll("the job finished", || {
        let j = job(&addr, "logged").ok_or(serde_json::Value::Null)?;
        if j["state"] == "succeeded" {
            Ok(())
        } else {
            Err(j)
        }
    });
    let logged = |message: &str| {
        let lines = server.lines();
        lines.iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let f = &v["fields"];
            (f["job"] == "logged" && f["message"] == message).then(|| v.clone())
        })
    };
    for message in ["submitted", "bound", "finished"] {
        let v = poll(
            &format!("a JSON line for the job's {message:?} event"),
            || logged(message).ok_or_else(|| server.tail()),
        );
        assert_eq!(v["level"], "INFO", "{v}");
        assert_eq!(v["fields"]["queue"], "default", "{v}");
    }
    let bound = logged("bound").expect("bound");
    assert_eq!(
        bound["span"]["name"], "cycle",
        "bound inside its cycle: {bound}"
    );
    assert!(bound["span"]["cycle"].is_u64(), "{bound}");
    let cycle = server
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "cycle" && v["fields"]["binds"] == 1)
        .unwrap_or_else(|| panic!("no cycle line with one bind:\n{}", server.tail()));
    for field in ["cycle", "pending", "evictions", "duration_us"] {
        assert!(cycle["fields"][field].is_u64(), "{field} in {cycle}");
    }
    // Every line of the server's own output is JSON (the task printed nothing).
    for l in server.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(&l).is_ok(),
            "not JSON: {l}"
        );
    }
}

/// `gantry serve --tls-cert --tls-key`: the local agent and clients with `--tls-ca` connect over
/// TLS; a client without it is refused.
#[test]
fn serve_over_tls_with_its_local_agent_and_a_client_that_trusts_it() {
    let data = tempfile::tempdir().expect("tmp");
    let files = tempfile::tempdir().expect("files");
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).expect("certificate");
    let (cert, key) = (files.path().join("cert.pem"), files.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).expect("cert");
    std::fs::write(&key, ck.signing_key.serialize_pem()).expect("key");
    let (cert, key) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let (_server, addr) = serve(
        data.path(),
        &[
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--fake-gpus",
            "1xH100-80GB",
        ],
    );
    poll("the local agent registered over TLS", || {
        let nodes = client_json(&addr, &["nodes", "--tls-ca", cert]);
        match nodes.as_array().map(Vec::as_slice) {
            Some([n]) if n["ready"] == true && n["gpus"] == 1 => Ok(()),
            _ => Err(nodes),
        }
    });
    let plain = gantry()
        .args(["nodes", "--server", &addr])
        .env_remove("GANTRY_TLS_CA")
        .output()
        .expect("run");
    assert!(!plain.status.success(), "a plain-text client is refused");
    assert!(String::from_utf8_lossy(&plain.stderr).starts_with("error: "));
}

/// `gantry top --once` against a live server prints one frame: the cluster line, the queue,
/// the running job and its events.
#[test]
fn top_once_prints_one_frame_of_the_live_cluster() {
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let (_server, addr) = serve(data.path(), &["--fake-gpus", "2xH100-80GB"]);
    let file = out.path().join("job.yaml");
    std::fs::write(
        &file,
        "name: watched\nqueue: default\ntasks: [{count: 1, gpus: 2}]\ncommand: [sleep, \"600\"]\n",
    )
    .expect("write");
    client_json(&addr, &["submit", file.to_str().expect("utf-8 path")]);
    poll("the job running", || {
        let j = job(&addr, "watched").ok_or(serde_json::Value::Null)?;
        if j["state"] == "running" {
            Ok(())
        } else {
            Err(j)
        }
    });
    let frame = common::client_text(&addr, &["top", "--once"]);
    assert!(
        frame.contains("cluster: nodes 1/1 ready, GPUs 2/2 allocated, jobs 1 running"),
        "{frame}"
    );
    assert!(!frame.contains('\x1b'), "--once prints no escapes");
    let default_row = frame.lines().find(|l| l.contains("default"));
    assert!(
        default_row.is_some_and(|l| l.contains("2/unlimited")),
        "{frame}"
    );
    assert!(frame.contains("watched started"), "{frame}");
}

/// `gantry serve --demo`: says where its data is and what to try next, and the built-in jobs
/// are scheduled on the local agent, one waiting on its queue's quota with a reason.
#[test]
fn serve_demo_schedules_its_jobs_and_one_waits_on_quota() {
    let data = tempfile::tempdir().expect("tmp");
    let (mut server, addr) = serve(data.path(), &["--demo", "--fake-gpus", "8xH100-80GB"]);
    server.wait_line("the next commands", |l| {
        l.contains("gantry explain JOB").then_some(())
    });
    let lines = server.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("gantry serve: data dir ")),
        "{lines:?}"
    );
    for name in ["demo-hello", "demo-gang", "demo-train"] {
        poll(&format!("{name} running"), || {
            let j = job(&addr, name).ok_or(serde_json::Value::Null)?;
            if j["state"] == "running" {
                Ok(())
            } else {
                Err(j)
            }
        });
    }
    let x = poll("demo-waits-on-quota explained", || {
        let x = client_json(&addr, &["explain", "demo-waits-on-quota"]);
        if x["state"] == "pending" && x["reason"].as_str().is_some_and(|r| r.contains("quota")) {
            Ok(x)
        } else {
            Err(x)
        }
    });
    assert_eq!(x["position"], 1, "{x}");
}

#[test]
fn cancel_stops_a_task_s_whole_process_tree() {
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let (_server, addr) = serve(
        data.path(),
        &[
            "--fake-gpus",
            "2xH100-80GB",
            "--grace-ms",
            "300",
            "--debounce-ms",
            "5",
        ],
    );
    // The shell forks a child and waits for it, as `sh -c '…; python train.py'` does: the
    // child's pid is what must die, not only the shell's.
    let script = format!(
        "sleep 600 & echo $! > {dir}/child.tmp && mv {dir}/child.tmp {dir}/child; wait",
        dir = out.path().display()
    );
    let spec = serde_json::json!({
        "name": "tree",
        "queue": "default",
        "tasks": [{"count": 1, "gpus": 1}],
        "command": ["sh", "-c", script],
    });
    let file = out.path().join("tree.yaml");
    std::fs::write(&file, serde_json::to_string(&spec).expect("json")).expect("write");
    client_json(&addr, &["submit", file.to_str().expect("utf-8 path")]);
    let child: u32 = poll("the task's child started", || {
        std::fs::read_to_string(out.path().join("child"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(())
    });
    assert!(alive(child));
    client_text(&addr, &["cancel", "tree"]);
    poll("the task's child stopped with it", || {
        if alive(child) {
            Err(child)
        } else {
            Ok(())
        }
    });
}
