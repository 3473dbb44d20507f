//! The `gantry` binary as a user runs it: real process, real files.

use std::path::PathBuf;
use std::process::Command;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples")
}

fn gantry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(args)
        .output()
        .expect("run gantry")
}

fn plan_args(jobs: &str, output: &str) -> Vec<String> {
    let e = examples();
    vec![
        "plan".into(),
        "--cluster".into(),
        e.join("cluster.yaml").display().to_string(),
        "--queues".into(),
        e.join("queues.yaml").display().to_string(),
        "--jobs".into(),
        jobs.into(),
        "--output".into(),
        output.into(),
    ]
}

#[test]
fn plan_on_the_examples_prints_binds_and_reasons() {
    let jobs = examples().join("jobs.yaml").display().to_string();
    let args = plan_args(&jobs, "json");
    let out = gantry(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let started: Vec<&str> = v["started"]
        .as_array()
        .expect("started")
        .iter()
        .map(|t| t["job"].as_str().unwrap_or(""))
        .collect();
    assert!(started.contains(&"llm-pretrain"), "{started:?}");
    assert_eq!(
        started.iter().filter(|j| **j == "chat-svc").count(),
        3,
        "three inference replicas on MIG slices"
    );
    let pending = v["pending"].as_array().expect("pending");
    assert!(
        pending.iter().any(|p| p["reason_label"] == "quota"),
        "{pending:?}"
    );

    let args = plan_args(&jobs, "table");
    let out = gantry(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("why it waits") && text.contains("llm-pretrain"),
        "{text}"
    );
}

#[test]
fn a_bad_job_file_names_the_field_and_fails() {
    let dir = std::env::temp_dir().join(format!("gantry-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "jobs:\n  - name: x\n    queue: team-a\n    tasks: [{gpus: 1}, {gpus: 9}]\n",
    )
    .expect("write");
    let args = plan_args(&bad.display().to_string(), "table");
    let out = gantry(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "jobs[0].tasks[1].gpus: 9 requested but no flavor offers more than 8 per node"
        ),
        "{err}"
    );
    let unknown = gantry(&[
        "plan",
        "--cluster",
        "/nonexistent.yaml",
        "--queues",
        "q",
        "--jobs",
        "j",
    ]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("/nonexistent.yaml: cannot read"));
}

#[test]
fn kube_crds_prints_the_three_definitions_and_writes_them_with_out() {
    let out = gantry(&["kube", "crds"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    for name in [
        "queues.gantry.dev",
        "podgroups.gantry.dev",
        "nodeinventories.gantry.dev",
    ] {
        assert!(text.contains(&format!("name: {name}")), "{name} missing");
    }
    let dir = tempfile::tempdir().expect("dir");
    let out = gantry(&["kube", "crds", "--out", &dir.path().display().to_string()]);
    assert!(out.status.success());
    let written = std::fs::read_to_string(dir.path().join("gantry.dev.yaml")).expect("file");
    assert_eq!(written, text);
}

#[test]
fn kube_controller_refuses_bad_flags_by_name_before_connecting() {
    for (args, needle) in [
        (vec!["--qps=-1"], "--qps"),
        (vec!["--burst", "0"], "--burst"),
        (vec!["--profile", "random"], "--profile"),
    ] {
        let mut all = vec!["kube", "controller"];
        all.extend(args);
        let out = gantry(&all);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn a_bad_job_file_is_reported_at_its_own_line_before_any_server_is_asked() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: hello\nqueue: default\ntasks:\n  - name: worker\n    count: two\ncommand: [\"true\"]\n",
    )
    .expect("write");
    let typo = dir.path().join("typo.yaml");
    std::fs::write(
        &typo,
        "name: hello\nqueue: default\ntasks: [{count: 1}]\ncomand: [\"true\"]\n",
    )
    .expect("write");
    // Nothing listens on port 9: the errors come from the file alone.
    for (file, want) in [
        (
            &bad,
            "tasks[0].count: invalid type: string \"two\", expected u32 at line 5 column 12",
        ),
        (&typo, "unknown field `comand`"),
    ] {
        let out = gantry(&[
            "submit",
            file.to_str().expect("utf-8"),
            "--server",
            "127.0.0.1:9",
        ]);
        assert!(!out.status.success());
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains(want), "{said}");
        assert!(said.contains(file.to_str().expect("utf-8")), "{said}");
    }
    let said = String::from_utf8_lossy(
        &gantry(&[
            "submit",
            typo.to_str().expect("utf-8"),
            "--server",
            "127.0.0.1:9",
        ])
        .stderr,
    )
    .into_owned();
    assert!(
        said.contains("`command`, `env`") && said.contains("at line 4 column 1"),
        "the hint lists every field a job file may have: {said}"
    );
}
