//! A task never runs twice, with real processes: `gantry serve` and `gantry agent` on loopback.
//!
//! - A second live agent under a node name already held (the host name, which `serve`'s local
//!   agent also uses) is refused with a clear error, and the node's task is not started again.
//! - An agent restarted after `kill -9` from the same state directory takes its node over at
//!   once; a second agent on a state directory in use is refused.
//! - Stopping `gantry serve` with SIGTERM stops its local tasks' whole process trees.
//! - An agent restarted after `kill -9` from another working directory, with its default state
//!   directory, still finds and kills the task its predecessor left running.
//! - A restart is counted: the job goes back with a new attempt and says why, instead of the
//!   same attempt starting again in silence.
//! - An agent that cannot reach the server for a whole lease stops its tasks (fencing), then
//!   registers again, and the job runs again under a new attempt: never two copies at once.
//! - A task's whole process group dies with its agent, even a `kill -9` of it, without waiting
//!   for a restart; a process that left the group (`setsid`) is killed by the next agent.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{alive, client_json, gantry, poll, serve, Proc};

/// Submit a one-GPU job running `script` under `sh -c`.
fn submit(addr: &str, dir: &Path, name: &str, script: &str) {
    let spec = serde_json::json!({
        "name": name,
        "queue": "default",
        "tasks": [{"count": 1, "gpus": 1}],
        "command": ["sh", "-c", script],
    });
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_string(&spec).expect("json")).expect("write");
    client_json(addr, &["submit", file.to_str().expect("utf-8 path")]);
}

/// A script that records each start (one line per process) and leaves a child running: its pid
/// lands in `<dir>/child` once written.
fn starts_and_child(dir: &Path) -> String {
    format!(
        "echo $$ >> {d}/starts; sleep 600 & echo $! > {d}/child.tmp && mv {d}/child.tmp {d}/child; wait",
        d = dir.display()
    )
}

fn child_pid(dir: &Path) -> u32 {
    poll("the task's child started", || {
        std::fs::read_to_string(dir.join("child"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or(())
    })
}

fn starts(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("starts"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

/// Wait for a process to exit; its status, or a failure naming what it printed.
fn exits(p: &mut Proc, what: &str) -> std::process::ExitStatus {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(s)) = p.child.try_wait() {
            return s;
        }
        assert!(
            Instant::now() < end,
            "{what}: {} still runs:\n{}",
            p.name,
            p.tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_agent_with_a_held_node_name_is_refused_and_runs_nothing() {
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let (_server, addr) = serve(data.path(), &["--fake-gpus", "2xH100-80GB"]);
    submit(&addr, out.path(), "hello", &starts_and_child(out.path()));
    child_pid(out.path());
    assert_eq!(starts(out.path()), 1);
    // No --node-name: the host name, the same as serve's local agent.
    let state = tempfile::tempdir().expect("state");
    let mut cmd = gantry();
    cmd.args(["agent", "--server", &addr, "--fake-gpus", "8xH100-80GB"])
        .arg("--state-dir")
        .arg(state.path());
    let mut dup = Proc::spawn("duplicate agent", cmd);
    let status = exits(&mut dup, "a duplicate node name is refused");
    assert!(!status.success(), "the duplicate agent must fail");
    let said = dup.lines().join("\n");
    assert!(
        said.contains("held by another live agent") && said.contains("--node-name"),
        "the refusal says why and what to do: {said}"
    );
    // Give a merged node time to start the task again (it would within a heartbeat or two).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(starts(out.path()), 1, "the task was started a second time");
    let nodes = client_json(&addr, &["nodes"]);
    let gpus: u64 = nodes
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["gpus"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        gpus, 2,
        "the refused agent's inventory replaced the node's: {nodes}"
    );
}

#[test]
fn a_restarted_agent_takes_its_node_over_and_a_second_on_its_state_dir_is_refused() {
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let state = tempfile::tempdir().expect("state");
    let (_server, addr) = serve(data.path(), &["--no-local-agent"]);
    let agent = || {
        let mut cmd = gantry();
        cmd.args(["agent", "--server", &addr, "--node-name", "n1"])
            .args(["--fake-gpus", "2xH100-80GB", "--state-dir"])
            .arg(state.path());
        cmd
    };
    let mut first = Proc::spawn("agent", agent());
    first.wait_line("registered", |l| l.contains("registered").then_some(()));
    submit(&addr, out.path(), "hello", &starts_and_child(out.path()));
    let orphan = child_pid(out.path());
    first.kill9();
    // Within the dead agent's lease: the restart is recognised by its state dir.
    let mut second = Proc::spawn("restarted agent", agent());
    second.wait_line("registered again", |l| {
        l.contains("registered").then_some(())
    });
    assert!(
        !alive(orphan),
        "the restart killed what the dead agent left running"
    );
    // The job runs again, counted: a new attempt, and the reason on record.
    let j = poll("the job back under a new attempt", || {
        let j = common::job(&addr, "hello").ok_or(None)?;
        if j["attempt"] == 1 && j["state"] == "running" {
            Ok(j)
        } else {
            Err(Some(j))
        }
    });
    assert_eq!(j["requeues"], 1, "{j}");
    poll("a second start, not two at once", || {
        if starts(out.path()) == 2 {
            Ok(())
        } else {
            Err(starts(out.path()))
        }
    });
    // Another agent on the same state dir while the restarted one runs.
    let mut third = Proc::spawn("agent on a used state dir", agent());
    let status = exits(&mut third, "a second agent on one state dir is refused");
    assert!(!status.success());
    let said = third.lines().join("\n");
    assert!(
        said.contains("another gantry agent") && said.contains("is using it"),
        "the refusal names the state dir's holder: {said}"
    );
    assert!(
        matches!(second.child.try_wait(), Ok(None)),
        "the restarted agent still runs:\n{}",
        second.tail()
    );
}

#[test]
fn sigterm_to_serve_stops_its_local_tasks_whole_process_trees() {
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let (mut server, addr) = serve(data.path(), &["--fake-gpus", "2xH100-80GB"]);
    submit(&addr, out.path(), "tree", &starts_and_child(out.path()));
    let child = child_pid(out.path());
    assert!(alive(child));
    Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill");
    let status = exits(&mut server, "serve stops on SIGTERM");
    assert!(
        status.success(),
        "serve exits 0 on SIGTERM:\n{}",
        server.tail()
    );
    poll("the task's child stopped with serve", || {
        if alive(child) {
            Err(child)
        } else {
            Ok(())
        }
    });
}

#[test]
fn an_agent_restarted_from_another_directory_still_kills_its_orphans() {
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let xdg = tempfile::tempdir().expect("xdg");
    let (cwd1, cwd2) = (
        tempfile::tempdir().expect("cwd1"),
        tempfile::tempdir().expect("cwd2"),
    );
    let (_server, addr) = serve(data.path(), &["--no-local-agent"]);
    let agent = |cwd: &Path| {
        let mut cmd = gantry();
        cmd.current_dir(cwd)
            .env("XDG_STATE_HOME", xdg.path())
            .args(["agent", "--server", &addr, "--node-name", "n1"])
            .args(["--fake-gpus", "2xH100-80GB"]);
        cmd
    };
    let mut first = Proc::spawn("agent", agent(cwd1.path()));
    first.wait_line("registered", |l| l.contains("registered").then_some(()));
    // The child leaves the task's process group (a daemon would), so only the next agent's
    // search for its marked processes can find it.
    let script = format!(
        "setsid sleep 600 & echo $! > {d}/child.tmp && mv {d}/child.tmp {d}/child; wait",
        d = out.path().display()
    );
    submit(&addr, out.path(), "hello", &script);
    let orphan = child_pid(out.path());
    first.also_kill.push(orphan);
    first.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(orphan),
        "a process outside the task's group outlives a kill -9 of the agent"
    );
    let mut second = Proc::spawn("agent from elsewhere", agent(cwd2.path()));
    second.wait_line("registered", |l| l.contains("registered").then_some(()));
    assert!(
        !alive(orphan),
        "the orphan survived an agent restarted from another working directory"
    );
    assert!(xdg.path().join("gantry/agent/n1").is_dir());
    assert!(
        std::fs::read_dir(cwd1.path())
            .expect("cwd1")
            .next()
            .is_none(),
        "the agent wrote into its working directory"
    );
}

/// `gantry agent` for node n1 (2 fake GPUs) on `state`, once it has registered.
fn registered_agent(addr: &str, state: &Path) -> Proc {
    let mut cmd = gantry();
    cmd.args(["agent", "--server", addr, "--node-name", "n1"])
        .args(["--fake-gpus", "2xH100-80GB", "--state-dir"])
        .arg(state);
    let mut agent = Proc::spawn("agent", cmd);
    agent.wait_line("registered", |l| l.contains("registered").then_some(()));
    agent
}

#[test]
fn an_agent_cut_off_for_a_lease_stops_its_tasks_and_the_job_runs_again_once() {
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let state = tempfile::tempdir().expect("state");
    let (server, addr) = serve(data.path(), &["--no-local-agent", "--lease-ms", "2000"]);
    let mut agent = registered_agent(&addr, state.path());
    submit(&addr, out.path(), "hello", &starts_and_child(out.path()));
    let first = child_pid(out.path());
    std::fs::remove_file(out.path().join("child")).expect("rm");
    // The server stops answering (as if the network were cut): after a lease the agent fences.
    let pid = server.child.id().to_string();
    Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("stop");
    let cut = Instant::now();
    poll("the task fenced while the server is silent", || {
        if alive(first) {
            Err(first)
        } else {
            Ok(())
        }
    });
    let fenced_after = cut.elapsed();
    assert_eq!(starts(out.path()), 1, "nothing new started while cut off");
    Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .expect("cont");
    agent.wait_line("registered again", |l| {
        l.contains("registered again").then_some(())
    });
    let second = child_pid(out.path());
    assert_ne!(second, first);
    let j = common::job(&addr, "hello").expect("job");
    assert!(j["attempt"].as_u64() >= Some(1), "a new attempt: {j}");
    assert_eq!(starts(out.path()), 2);
    eprintln!(
        "fenced {:.1} s after the server went silent (lease 2 s)",
        fenced_after.as_secs_f64()
    );
    drop(server);
}

#[test]
fn an_agent_stopped_gracefully_has_its_jobs_requeued_at_once() {
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let state = tempfile::tempdir().expect("state");
    // A lease far longer than the test: only the agent's goodbye can requeue the job.
    let (_server, addr) = serve(data.path(), &["--no-local-agent", "--lease-ms", "600000"]);
    let mut agent = registered_agent(&addr, state.path());
    submit(&addr, out.path(), "hello", &starts_and_child(out.path()));
    let child = child_pid(out.path());
    Command::new("kill")
        .args(["-TERM", &agent.child.id().to_string()])
        .status()
        .expect("kill");
    let status = exits(&mut agent, "the agent stops on SIGTERM");
    assert!(status.success(), "{}", agent.tail());
    assert!(!alive(child), "the task's tree stopped with its agent");
    let j = poll("the job requeued without waiting for the lease", || {
        let j = common::job(&addr, "hello").ok_or(None)?;
        if j["state"] == "pending" && j["attempt"] == 1 {
            Ok(j)
        } else {
            Err(Some(j))
        }
    });
    let nodes = client_json(&addr, &["nodes"]);
    assert_eq!(nodes[0]["ready"], false, "{nodes}");
    eprintln!("{}", j["reason"]);
}

#[test]
fn a_killed_agents_tasks_die_with_it_without_a_restart() {
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let state = tempfile::tempdir().expect("state");
    let (_server, addr) = serve(data.path(), &["--no-local-agent"]);
    let mut agent = registered_agent(&addr, state.path());
    submit(&addr, out.path(), "hello", &starts_and_child(out.path()));
    let child = child_pid(out.path());
    let task: u32 = std::fs::read_to_string(out.path().join("starts"))
        .expect("starts")
        .trim()
        .parse()
        .expect("pid");
    agent.also_kill.extend([task, child]);
    assert!(alive(task) && alive(child));
    agent.kill9();
    // Nothing restarts the agent: the task and the child it left in its group go by themselves.
    poll("the task and its child gone with their agent", || {
        if alive(task) || alive(child) {
            Err((alive(task), alive(child)))
        } else {
            Ok(())
        }
    });
}
