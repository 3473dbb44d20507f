//! Crash safety of `gantry serve` with SIGKILL: while clients stream submissions over gRPC, the
//! server (with its local agent on 8 fake GPUs) is killed with `kill -9` and restarted on the
//! same data directory, again and again. After every restart, and just before every kill:
//! - every submission the server acknowledged is present;
//! - no device uuid is held by two running tasks at once (compared by uuid), neither in the
//!   server's records nor among the task processes actually alive: each task writes its pid and
//!   devices to a file, and the live ones are checked, so a task left running by the killed
//!   server and started again by the restarted one would be caught.
//!
//! `cargo test` runs 5 kills; `GANTRY_CRASH_KILLS=50 cargo test -p gantry --test crash --
//! --nocapture` runs more and prints the figures.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{poll, serve};
use gantry_api::gantry::v1 as pb;
use pb::jobs_client::JobsClient;

/// Concurrent submitters.
const CLIENTS: usize = 8;

/// What the store gave back, checked against the acknowledgements.
#[derive(Debug, Default)]
struct Check {
    jobs: usize,
    running_tasks: usize,
    devices_held: usize,
}

/// Devices held by two task processes that are alive right now, or a job with two live
/// processes (its task runs twice at once); returns how many live processes were seen.
fn live_processes_share_no_gpu(out: &std::path::Path) -> usize {
    let mut holder: BTreeMap<String, u32> = BTreeMap::new();
    let mut jobs: BTreeMap<String, u32> = BTreeMap::new();
    let mut live = 0;
    for e in std::fs::read_dir(out).expect("out dir").flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let mut parts = text.split_whitespace();
        let Some(pid) = parts.next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !common::alive(pid) {
            continue;
        }
        live += 1;
        // Files are named <job>.<attempt>.<pid>; every job here has one task.
        let file = e.file_name().to_string_lossy().into_owned();
        if let Some(job) = file.split('.').next() {
            if let Some(other) = jobs.insert(job.to_string(), pid) {
                let stat =
                    |p: u32| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
                panic!(
                    "job {job} runs twice at once: live processes {other} and {pid} ({file}); {} / {}",
                    stat(other),
                    stat(pid)
                );
            }
        }
        for d in parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|d| !d.is_empty())
        {
            if let Some(other) = holder.insert(d.to_string(), pid) {
                panic!("device {d} is used by two live task processes: {other} and {pid}");
            }
        }
    }
    live
}

async fn check(addr: &str, acked: &[String], gpus: usize) -> Result<Check, String> {
    let mut c = JobsClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let jobs = c
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .map_err(|e| format!("list: {e}"))?
        .into_inner()
        .jobs;
    let names: BTreeSet<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|n| !names.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged submissions are missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let mut holder: BTreeMap<&str, String> = BTreeMap::new();
    let mut out = Check {
        jobs: jobs.len(),
        ..Check::default()
    };
    for j in &jobs {
        if j.state != pb::JobState::Running as i32 {
            continue;
        }
        for t in &j.tasks {
            out.running_tasks += 1;
            for d in &t.devices {
                let me = format!("{}/{}/{}", j.name, t.group, t.index);
                if let Some(other) = holder.insert(d.as_str(), me.clone()) {
                    panic!("device {d} is held by two running tasks: {other} and {me}");
                }
            }
        }
    }
    out.devices_held = holder.len();
    assert!(out.devices_held <= gpus, "{out:?}: only {gpus} GPUs exist");
    Ok(out)
}

/// Clients streaming submissions until told to stop or the server dies under them.
struct Submitters {
    stop: Arc<AtomicBool>,
    acked_here: Arc<AtomicUsize>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Submitters {
    fn start(
        rt: &tokio::runtime::Runtime,
        addr: &str,
        acked: &Arc<Mutex<Vec<String>>>,
        prefix: &str,
        script: &str,
    ) -> Submitters {
        let stop = Arc::new(AtomicBool::new(false));
        let acked_here = Arc::new(AtomicUsize::new(0));
        let workers = (0..CLIENTS)
            .map(|w| {
                let (addr, acked, stop, acked_here, script) = (
                    addr.to_string(),
                    acked.clone(),
                    stop.clone(),
                    acked_here.clone(),
                    script.to_string(),
                );
                let prefix = format!("{prefix}-c{w}");
                rt.spawn(async move {
                    let Ok(mut c) = JobsClient::connect(format!("http://{addr}")).await else {
                        return;
                    };
                    let mut i = 0;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let name = format!("{prefix}-{i}");
                        let req = pb::SubmitJobRequest {
                            spec_json: format!(
                                r#"{{"name": "{name}", "queue": "default", "tasks": [{{"count": 1, "gpus": 1}}]}}"#
                            ),
                            command: vec!["sh".into(), "-c".into(), script.clone()],
                            env: Default::default(),
                        };
                        match c.submit_job(req).await {
                            Ok(_) => {
                                acked.lock().expect("acked").push(name);
                                acked_here.fetch_add(1, Ordering::Relaxed);
                            }
                            // The server is gone (killed): unacknowledged, not counted.
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        Submitters {
            stop,
            acked_here,
            workers,
        }
    }

    /// Wait until `n` submissions were acknowledged since the start.
    fn wait_for(&self, n: usize) {
        poll("submissions acknowledged in this round", || {
            let k = self.acked_here.load(Ordering::Relaxed);
            if k >= n {
                Ok(())
            } else {
                Err(k)
            }
        });
    }

    fn stop(self, rt: &tokio::runtime::Runtime) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            rt.block_on(w).expect("worker");
        }
    }
}

#[test]
fn acknowledged_submissions_survive_kill_9_and_no_gpu_is_held_twice() {
    let kills: usize = std::env::var("GANTRY_CRASH_KILLS")
        .ok()
        .map(|v| v.parse().expect("GANTRY_CRASH_KILLS: a number"))
        .unwrap_or(5);
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    // Each task records "<pid> <devices>" (renamed into place whole), then sleeps a few
    // seconds in the same process, so tasks outlive kills.
    let script = format!(
        "f={dir}/$GANTRY_JOB.$GANTRY_ATTEMPT.$$; echo \"$$ $CUDA_VISIBLE_DEVICES\" > $f.tmp && mv $f.tmp $f; exec sleep 3",
        dir = out.path().display()
    );
    let (mut most_live, mut live_checks) = (0usize, 0usize);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (mut checks, mut most_running, mut stored) = (0usize, 0usize, 0usize);
    for round in 0..=kills {
        let (mut server, addr) = serve(
            data.path(),
            &[
                "--fake-gpus",
                "8xH100-80GB",
                "--lease-ms",
                "3000",
                "--grace-ms",
                "200",
                "--debounce-ms",
                "5",
            ],
        );
        let snapshot = acked.lock().expect("acked").clone();
        let c = poll("the restarted server answers", || {
            rt.block_on(check(&addr, &snapshot, 8))
        });
        checks += 1;
        most_running = most_running.max(c.running_tasks);
        stored = c.jobs;
        most_live = most_live.max(live_processes_share_no_gpu(out.path()));
        live_checks += 1;
        if round == kills {
            break;
        }
        let subs = Submitters::start(&rt, &addr, &acked, &format!("r{round}"), &script);
        // Kill at a different point in each round.
        let target = 20 + (round * 37) % 60;
        subs.wait_for(target);
        let snapshot = acked.lock().expect("acked").clone();
        let c = rt
            .block_on(check(&addr, &snapshot, 8))
            .expect("check while running");
        checks += 1;
        most_running = most_running.max(c.running_tasks);
        most_live = most_live.max(live_processes_share_no_gpu(out.path()));
        live_checks += 1;
        server.kill9();
        subs.stop(&rt);
    }
    let n = acked.lock().expect("acked").len();
    println!(
        "crash test: {kills} kill -9 of gantry serve; {n} acknowledged submissions, all present \
         at each of {checks} checks ({stored} jobs stored at the end); at most {most_running} \
         running tasks at once, no GPU held twice; at most {most_live} live task processes at \
         {live_checks} process checks, none sharing a GPU"
    );
    assert!(n > 0);
}

/// The crash loop with a second node and every way a process goes away: each round one of
/// `kill -9` of serve (with its local agent), `kill -9` of the remote agent restarted at once
/// from another working directory (its state dir is found through `XDG_STATE_HOME`, not the
/// cwd), and SIGTERM to serve (graceful). After every restart and before every kill: every
/// acknowledged submission is present, no GPU is held twice in the records, and among the task
/// processes alive no GPU is shared and no job runs twice.
#[test]
fn agents_and_serve_killed_or_stopped_in_turn_never_run_a_task_twice() {
    let kills: usize = std::env::var("GANTRY_CRASH_KILLS")
        .ok()
        .map(|v| v.parse().expect("GANTRY_CRASH_KILLS: a number"))
        .unwrap_or(6);
    let data = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let xdg = tempfile::tempdir().expect("xdg");
    let script = format!(
        "f={dir}/$GANTRY_JOB.$GANTRY_ATTEMPT.$$; echo \"$$ $CUDA_VISIBLE_DEVICES\" > $f.tmp && mv $f.tmp $f; exec sleep 3",
        dir = out.path().display()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let serve_args = [
        "--fake-gpus",
        "8xH100-80GB",
        "--lease-ms",
        "3000",
        "--grace-ms",
        "200",
        "--debounce-ms",
        "5",
    ];
    let agent = |addr: &str, round: usize| {
        let cwd = tempfile::tempdir().expect("cwd");
        let mut cmd = common::gantry();
        cmd.current_dir(cwd.path())
            .env("XDG_STATE_HOME", xdg.path())
            .args(["agent", "--server", addr, "--node-name", "n2"])
            .args(["--fake-gpus", "4xH100-80GB"]);
        (
            common::Proc::spawn(&format!("agent round {round}"), cmd),
            cwd,
        )
    };
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (mut server, mut addr) = serve(data.path(), &serve_args);
    let mut remote = agent(&addr, 0);
    let (mut checks, mut most_live, mut how) = (0usize, 0usize, BTreeMap::<&str, usize>::new());
    for round in 0..kills {
        let snapshot = acked.lock().expect("acked").clone();
        poll("the server answers", || {
            rt.block_on(check(&addr, &snapshot, 12))
        });
        most_live = most_live.max(live_processes_share_no_gpu(out.path()));
        checks += 1;
        let subs = Submitters::start(&rt, &addr, &acked, &format!("r{round}"), &script);
        subs.wait_for(20 + (round * 37) % 60);
        let snapshot = acked.lock().expect("acked").clone();
        rt.block_on(check(&addr, &snapshot, 12))
            .expect("check while running");
        most_live = most_live.max(live_processes_share_no_gpu(out.path()));
        checks += 1;
        match round % 3 {
            0 => {
                server.kill9();
                subs.stop(&rt);
                *how.entry("kill -9 serve").or_default() += 1;
                (server, addr) = serve(data.path(), &serve_args);
            }
            1 => {
                remote.0.kill9();
                most_live = most_live.max(live_processes_share_no_gpu(out.path()));
                // The remote agent still points at the server's address; restart it at once,
                // from another directory.
                remote = agent(&addr, round);
                subs.stop(&rt);
                *how.entry("kill -9 agent, restart elsewhere").or_default() += 1;
            }
            _ => {
                std::process::Command::new("kill")
                    .args(["-TERM", &server.child.id().to_string()])
                    .status()
                    .expect("kill");
                poll("serve stops on SIGTERM", || match server.child.try_wait() {
                    Ok(Some(s)) => Ok(s),
                    _ => Err(()),
                });
                subs.stop(&rt);
                *how.entry("SIGTERM serve").or_default() += 1;
                (server, addr) = serve(data.path(), &serve_args);
            }
        }
        if round % 3 != 1 {
            // The remote agent dialled the old address: point a new one at the new server.
            remote.0.kill9();
            remote = agent(&addr, round);
        }
        most_live = most_live.max(live_processes_share_no_gpu(out.path()));
    }
    let snapshot = acked.lock().expect("acked").clone();
    poll("the last server answers", || {
        rt.block_on(check(&addr, &snapshot, 12))
    });
    live_processes_share_no_gpu(out.path());
    drop(remote);
    println!(
        "crash test with agents: {kills} rounds ({how:?}); {} acknowledged submissions, all \
         present at each of {checks} checks; at most {most_live} live task processes at once, \
         no GPU shared, no job running twice",
        snapshot.len()
    );
}
