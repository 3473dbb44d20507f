//! Why a job failed, as the user sees it: `gantry jobs` and `gantry explain` show a finished
//! job's exit code and how it ended, including start failures the agent met (real processes).

mod common;

use common::{client_json, client_text, job, poll, serve};

fn submit(addr: &str, dir: &std::path::Path, name: &str, command: serde_json::Value) {
    let spec = serde_json::json!({
        "name": name,
        "queue": "default",
        "tasks": [{"name": "worker", "count": 1, "gpus": 1}],
        "command": command,
    });
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_string(&spec).expect("json")).expect("write");
    client_json(addr, &["submit", file.to_str().expect("utf-8 path")]);
}

fn finished(addr: &str, name: &str) -> serde_json::Value {
    poll(&format!("{name} finished"), || {
        let j = job(addr, name).ok_or(None)?;
        if j["state"] == "failed" || j["state"] == "succeeded" {
            Ok(j)
        } else {
            Err(Some(j))
        }
    })
}

#[test]
fn jobs_and_explain_show_exit_codes_and_start_failures() {
    let data = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("dir");
    let (_server, addr) = serve(data.path(), &["--fake-gpus", "2xH100-80GB"]);
    submit(
        &addr,
        dir.path(),
        "three",
        serde_json::json!(["sh", "-c", "exit 3"]),
    );
    submit(
        &addr,
        dir.path(),
        "missing",
        serde_json::json!(["/no/such/program", "--flag"]),
    );
    submit(&addr, dir.path(), "fine", serde_json::json!(["true"]));

    let three = finished(&addr, "three");
    assert_eq!(three["state"], "failed");
    assert_eq!(three["exit_code"], 3, "{three}");
    assert_eq!(
        three["reason"], "task worker-0 exited with code 3",
        "{three}"
    );

    let missing = finished(&addr, "missing");
    assert_eq!(missing["exit_code"], 127, "{missing}");
    let why = missing["reason"].as_str().unwrap_or_default();
    assert!(
        why.starts_with("task worker-0 failed to start: \"/no/such/program\": ")
            && why.contains("No such file or directory"),
        "{why}"
    );

    let fine = finished(&addr, "fine");
    assert_eq!(fine["state"], "succeeded");
    assert_eq!(fine["exit_code"], 0);

    let text = client_text(&addr, &["explain", "three"]);
    assert!(text.contains("exit code: 3"), "{text}");
    assert!(
        text.contains("why: task worker-0 exited with code 3"),
        "{text}"
    );
    let table = client_text(&addr, &["jobs"]);
    assert!(table.contains("No such file or directory"), "{table}");
}

#[test]
fn a_port_in_use_is_named_plainly() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let data = tempfile::tempdir().expect("tmp");
    let out = common::gantry()
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--no-local-agent"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("serve");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        said.contains(&format!("cannot listen on 127.0.0.1:{port}")) && !said.contains("store:"),
        "{said}"
    );
}

#[test]
fn a_queue_is_deleted_from_the_cli_unless_it_has_jobs() {
    let data = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("dir");
    let (_server, addr) = serve(data.path(), &["--no-local-agent"]);
    let file = dir.path().join("queues.yaml");
    std::fs::write(
        &file,
        "queues:\n  - {name: spare}\n  - {name: busy, quotas: {h100-80gb: {nominal: 8}}}\n",
    )
    .expect("write");
    client_text(&addr, &["queues", "--apply", file.to_str().expect("utf-8")]);
    let spec = serde_json::json!({"name": "w", "queue": "busy", "tasks": [{"count": 1, "gpus": 1}],
                                  "command": ["true"]});
    let job = dir.path().join("w.json");
    std::fs::write(&job, spec.to_string()).expect("write");
    client_json(&addr, &["submit", job.to_str().expect("utf-8")]);
    client_text(&addr, &["queues", "--delete", "spare"]);
    let names: Vec<String> = client_json(&addr, &["queues"])
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| q["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(!names.contains(&"spare".to_string()), "{names:?}");
    let out = common::gantry()
        .args(["queues", "--delete", "busy", "--server", &addr])
        .output()
        .expect("gantry");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(said.contains("--delete busy"), "{said}");
}

#[test]
fn a_lost_node_is_forgotten_from_the_cli_and_a_live_one_is_not() {
    let data = tempfile::tempdir().expect("tmp");
    let state = tempfile::tempdir().expect("state");
    let (_server, addr) = serve(data.path(), &["--no-local-agent", "--lease-ms", "600"]);
    let mut cmd = common::gantry();
    cmd.args(["agent", "--server", &addr, "--node-name", "gone"])
        .args(["--fake-gpus", "2xH100-80GB", "--state-dir"])
        .arg(state.path());
    let mut agent = common::Proc::spawn("agent", cmd);
    agent.wait_line("registered", |l| l.contains("registered").then_some(()));
    let names = |addr: &str| -> Vec<(String, bool)> {
        client_json(addr, &["nodes"])
            .as_array()
            .expect("nodes")
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or_default().to_string(),
                    n["ready"] == true,
                )
            })
            .collect()
    };
    assert_eq!(names(&addr), [("gone".to_string(), true)]);
    let out = common::gantry()
        .args(["nodes", "--delete", "gone", "--server", &addr])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("--delete gone") && said.contains("stop its agent first"),
        "{said}"
    );
    agent.kill9();
    poll("the node lost", || match names(&addr).as_slice() {
        [(_, false)] => Ok(()),
        other => Err(other.to_vec()),
    });
    client_text(&addr, &["nodes", "--delete", "gone"]);
    assert!(names(&addr).is_empty());
    let out = common::gantry()
        .args(["nodes", "--delete", "gone", "--server", &addr])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("node \"gone\" not found"));
}

#[test]
fn a_service_whose_replicas_keep_exiting_fails_instead_of_looping() {
    let data = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("dir");
    let (_server, addr) = serve(data.path(), &["--fake-gpus", "2xH100-80GB"]);
    let spec = serde_json::json!({
        "name": "crashy", "queue": "default", "kind": "inference",
        "replicas": {"min": 1, "max": 2}, "tasks": [{"gpus": 1, "count": 2}],
        "port": 18_500, "readiness": "/health",
        "command": ["sh", "-c", "echo cannot load the model >&2; exit 2"],
    });
    let file = dir.path().join("crashy.json");
    std::fs::write(&file, spec.to_string()).expect("write");
    client_json(&addr, &["submit", file.to_str().expect("utf-8")]);
    let j = finished(&addr, "crashy");
    assert_eq!(j["state"], "failed", "{j}");
    let why = j["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("exited with code 2")
            && why.contains("5 replicas in a row ended before one became ready"),
        "{why}"
    );
    // What the replicas said is there to read.
    assert!(
        client_text(&addr, &["logs", "crashy", "--attempt", "0"]).contains("cannot load the model")
    );
}
