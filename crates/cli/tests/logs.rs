//! `gantry logs` over TCP with tokens, real processes: a remote `gantry agent` captures its
//! tasks' stdout and stderr into capped files on its node and pushes them to `gantry serve`,
//! which serves them to the job's team only; `-f` follows a running job and ends with it.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};

use common::{gantry, poll, serve, Proc};

const TOKENS: &str = "tokens:
  - {token: tok-alice, user: alice, teams: [team-a], role: member}
  - {token: tok-bob, user: bob, teams: [team-b], role: member}
  - {token: tok-root, user: root, role: admin}
";

/// Run a client command as the holder of `token`.
fn as_user(addr: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = gantry();
    cmd.args(args)
        .args(["--server", addr])
        .env_remove("GANTRY_TOKEN")
        .stdin(Stdio::null());
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    cmd.output().expect("run gantry")
}

fn ok(addr: &str, token: &str, args: &[&str]) -> String {
    let out = as_user(addr, Some(token), args);
    assert!(
        out.status.success(),
        "gantry {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn submit(addr: &str, dir: &Path, spec: serde_json::Value) {
    let file = dir.join(format!("{}.json", spec["name"].as_str().expect("name")));
    std::fs::write(&file, spec.to_string()).expect("write");
    ok(
        addr,
        "tok-alice",
        &["submit", file.to_str().expect("utf-8"), "-o", "json"],
    );
}

fn state(addr: &str, name: &str) -> String {
    let jobs: serde_json::Value =
        serde_json::from_str(&ok(addr, "tok-root", &["jobs", "-o", "json"])).expect("json");
    jobs.as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["name"] == name)
        .map_or(String::new(), |j| {
            j["state"].as_str().unwrap_or_default().to_string()
        })
}

#[test]
fn logs_of_a_remote_agents_tasks_reach_their_team_and_follow_a_running_job() {
    let data = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("dir");
    let state_dir = tempfile::tempdir().expect("state");
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(&tokens, TOKENS).expect("write");
    let (_server, addr) = serve(
        data.path(),
        &[
            "--no-local-agent",
            "--no-default-queue",
            "--tokens",
            tokens.to_str().expect("utf-8"),
            "--log-max-mib",
            "1",
        ],
    );
    let queues = dir.path().join("queues.yaml");
    std::fs::write(
        &queues,
        "queues:\n  - {name: team-a, quotas: {h100-80gb: {nominal: 4}}}\n  - {name: team-b, quotas: {h100-80gb: {nominal: 4}}}\n",
    )
    .expect("write");
    ok(
        &addr,
        "tok-root",
        &["queues", "--apply", queues.to_str().expect("utf-8")],
    );
    let mut agent = gantry();
    agent
        .args(["agent", "--server", &addr, "--token", "tok-root"])
        .args(["--node-name", "remote", "--fake-gpus", "4xH100-80GB"])
        .args(["--log-max-mib", "1"])
        .arg("--state-dir")
        .arg(state_dir.path());
    let _agent = Proc::spawn("agent", agent);

    // A two-task job writing to both streams.
    submit(
        &addr,
        dir.path(),
        serde_json::json!({
            "name": "hello",
            "queue": "team-a",
            "tasks": [{"name": "w", "count": 2, "gpus": 1}],
            "command": ["sh", "-c",
                "echo \"out $GANTRY_TASK_INDEX one\"; echo \"err $GANTRY_TASK_INDEX\" >&2; \
                 echo \"out $GANTRY_TASK_INDEX two\""],
        }),
    );
    poll("hello finished", || {
        let s = state(&addr, "hello");
        if s == "succeeded" {
            Ok(())
        } else {
            Err(s)
        }
    });
    // Every task's lines, whole and prefixed by its index; the order within a task is kept.
    let all = poll("both tasks' output at the server", || {
        let text = ok(&addr, "tok-alice", &["logs", "hello"]);
        if text.lines().count() == 6 {
            Ok(text)
        } else {
            Err(text)
        }
    });
    for i in 0..2 {
        let mine: Vec<&str> = all
            .lines()
            .filter(|l| l.starts_with(&format!("[{i}] ")))
            .collect();
        assert_eq!(
            mine,
            [
                format!("[{i}] out {i} one"),
                format!("[{i}] err {i}"),
                format!("[{i}] out {i} two")
            ],
            "{all}"
        );
    }
    // One task: its output as written.
    assert_eq!(
        ok(&addr, "tok-alice", &["logs", "hello", "--task", "1"]),
        "out 1 one\nerr 1\nout 1 two\n"
    );
    let json = ok(
        &addr,
        "tok-alice",
        &["logs", "hello", "--task", "0", "-o", "json"],
    );
    let first: serde_json::Value =
        serde_json::from_str(json.lines().next().expect("a line")).expect("json line");
    assert_eq!(first["line"], "out 0 one");
    assert_eq!(first["index"], 0);
    // The node keeps its own copy.
    let node_copy = state_dir.path().join("remote/logs/hello/0.1.0.log");
    assert_eq!(
        std::fs::read_to_string(&node_copy).expect("node's file"),
        "out 1 one\nerr 1\nout 1 two\n"
    );

    // Only the job's team (and admins) may read it.
    let bob = as_user(&addr, Some("tok-bob"), &["logs", "hello"]);
    assert!(!bob.status.success());
    let said = String::from_utf8_lossy(&bob.stderr);
    assert!(
        said.contains("PermissionDenied") && said.contains("team-a"),
        "{said}"
    );
    assert!(bob.stdout.is_empty());
    let nobody = as_user(&addr, None, &["logs", "hello"]);
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("Unauthenticated"));
    assert!(ok(&addr, "tok-root", &["logs", "hello"]).contains("out 0 one"));

    // Following a running job: output arrives as written, and the command ends with the job.
    let go = dir.path().join("go");
    submit(
        &addr,
        dir.path(),
        serde_json::json!({
            "name": "slow",
            "queue": "team-a",
            "tasks": [{"count": 1, "gpus": 1}],
            "command": ["sh", "-c", format!(
                "echo started; while [ ! -e {go} ]; do sleep 0.05; done; echo finished",
                go = go.display())],
        }),
    );
    let mut follow = gantry();
    follow
        .args([
            "logs",
            "slow",
            "-f",
            "--server",
            &addr,
            "--token",
            "tok-alice",
        ])
        .env_remove("GANTRY_TOKEN");
    let mut follower = Proc::spawn("logs -f", follow);
    follower.wait_line("the first line, while the job runs", |l| {
        (l == "started").then_some(())
    });
    assert_eq!(state(&addr, "slow"), "running");
    std::fs::write(&go, "").expect("write");
    follower.wait_line("the last line", |l| (l == "finished").then_some(()));
    let status = poll("logs -f ends once the job has", || {
        follower.child.try_wait().expect("wait").ok_or(())
    });
    assert!(status.success(), "{}", follower.tail());

    // Output past the cap: the node and the server each keep at most two generations of
    // 1 MiB, and the end is there.
    submit(
        &addr,
        dir.path(),
        serde_json::json!({
            "name": "chatty",
            "queue": "team-a",
            "tasks": [{"count": 1, "gpus": 1}],
            "command": ["sh", "-c", "head -c 3000000 /dev/zero | tr '\\0' x; echo; echo END"],
        }),
    );
    let tail = poll("chatty's end at the server", || {
        let t = ok(&addr, "tok-alice", &["logs", "chatty", "--tail-bytes", "6"]);
        if t == "\nEND\n" || t == "x\nEND\n" {
            Ok(t)
        } else {
            Err(t)
        }
    });
    assert!(tail.ends_with("END\n"));
    for d in [
        state_dir.path().join("remote/logs/chatty"),
        data.path().join("logs/chatty"),
    ] {
        let bytes: u64 = std::fs::read_dir(&d)
            .expect("output dir")
            .flatten()
            .map(|e| e.metadata().expect("meta").len())
            .sum();
        assert!(
            bytes <= 2 * 1024 * 1024 + 64,
            "{}: {bytes} bytes",
            d.display()
        );
    }
    // Reading from the start says what was rotated away.
    let out = as_user(&addr, Some("tok-alice"), &["logs", "chatty"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("are no longer kept"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("xx\nEND\n"),
        "{} bytes, ending {:?}",
        text.len(),
        &text[text.len().saturating_sub(40)..]
    );

    // A finished job's name taken by a new job: the old output does not show as the new one's.
    submit(
        &addr,
        dir.path(),
        serde_json::json!({
            "name": "hello",
            "queue": "team-a",
            "tasks": [{"count": 1, "gpus": 1}],
            "command": ["echo", "again"],
        }),
    );
    poll("the new hello's own output", || {
        let t = ok(&addr, "tok-alice", &["logs", "hello"]);
        if t == "again\n" {
            Ok(())
        } else {
            Err(t)
        }
    });
}
