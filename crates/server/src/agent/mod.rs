//! The node agent's library side: register a node's inventory with `gantry serve`, heartbeat
//! within the lease, start each assigned task as a real process with `CUDA_VISIBLE_DEVICES` and
//! `NVIDIA_VISIBLE_DEVICES` set to its assigned uuids, report its exit status, and stop it
//! (SIGTERM, then SIGKILL after the grace period) when the server says so.
//!
//! The inventory comes in as a [`gantry_model::Node`]; `gantry agent` gets it from the device
//! plugin's `Inventory` (NVML, or a fake one).
//!
//! - Each task runs in its own process group, and stops and kills go to the whole group, so a
//!   `sh -c '…; python train.py'` takes its children down with it.
//! - A task is not started on a device a stopping task still holds (its grace period): the
//!   server offers it again on the next heartbeat, and it starts once the device is free.
//! - An exit report that does not reach the server is kept and sent again each heartbeat; until
//!   it is, the task still counts as running here, so the server never hands it out again.
//! - With a state directory, each task's process group and start time are written to a file;
//!   an agent starting over a crashed one kills those groups (when the pid still names the same
//!   process) before it registers, so a task never runs twice on one node. The directory is
//!   locked (`agent.lock`) while an agent runs, so two agents never share one.
//! - Every agent process registers with a fresh instance id. The server refuses a second live
//!   agent with the same node name (it would run the node's tasks again); an agent restarted
//!   from the same state directory names its predecessor (`instance` file there) and takes over
//!   at once. An agent whose heartbeat is refused because another instance now holds its node
//!   stops its tasks and exits.
//! - A task dies with its agent, however the agent dies: it starts under a small shell guard
//!   (`GUARD`) that kills the task's group once a pipe from the agent closes.
//! - Each task's stdout and stderr are captured ([`output`]): into a capped, rotating file per
//!   run under `<state dir>/logs` on the node, and pushed to the server for `gantry logs`.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use gantry_api::gantry::v1 as pb;
use gantry_model::Node;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;

use crate::state::TaskKey;
use crate::ServerError;

pub mod output;
pub mod probe;

/// The agent's client of the server's `Nodes` service.
pub type NodesClient = pb::nodes_client::NodesClient<
    tonic::service::interceptor::InterceptedService<Channel, crate::auth::BearerToken>,
>;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// `http://host:port` of `gantry serve`.
    pub server: String,
    /// This node and its devices.
    pub node: Node,
    /// Bearer token (an admin's) when the server checks tokens.
    pub token: Option<String>,
    /// CA certificate (PEM) of a server that serves TLS; none: plain HTTP/2.
    pub tls_ca: Option<Vec<u8>>,
    /// Where the agent records the process group of every task it runs, so that after a crash
    /// (`kill -9` of the agent, or of `gantry serve` with its local agent) the next start kills
    /// what the dead agent left running before taking any work. None: not recorded.
    pub state_dir: Option<std::path::PathBuf>,
    /// Where this node's peers reach it (a gang's `MASTER_ADDR` when its rank 0 runs here);
    /// none: the address the server sees the agent connect from.
    pub advertise: Option<String>,
    /// Per-run cap of the node's copy of task output (`<state dir>/logs`).
    pub log_cap_bytes: u64,
    /// The node's copy of a job's output is deleted once not written to for this long.
    pub log_retention: Duration,
}

impl AgentConfig {
    /// Where task output is kept on this node, and how much.
    pub fn output(&self) -> output::OutputConfig {
        output::OutputConfig {
            dir: self.state_dir.as_ref().map(|d| d.join("logs")),
            cap_bytes: self.log_cap_bytes,
            retention: self.log_retention,
        }
    }
}

/// Per-run cap of a node's copy of task output, by default.
pub const DEFAULT_LOG_CAP: u64 = 64 << 20;

/// How long a node keeps a job's output, by default (a week, like the server's records).
pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

fn key_of(r: &pb::TaskRef) -> TaskKey {
    TaskKey {
        job: r.job.clone(),
        group: r.group as u16,
        index: r.index,
        attempt: r.attempt,
    }
}

fn pb_ref(k: &TaskKey) -> pb::TaskRef {
    pb::TaskRef {
        job: k.job.clone(),
        group: u32::from(k.group),
        index: k.index,
        attempt: k.attempt,
    }
}

fn transport(e: impl std::fmt::Display) -> ServerError {
    ServerError::Transport(format!("agent: {e}"))
}

/// A process the agent started; `stop` asks its watcher to stop it within a grace period.
#[derive(Debug)]
struct Task {
    stop: Option<oneshot::Sender<Duration>>,
    /// Process group (the task's pid), for the kill at shutdown.
    pgid: Option<i32>,
    /// The uuids it was given.
    devices: Vec<String>,
    /// An inference replica's probe (stopped when the task goes).
    _probe: Option<probe::ProbeHandle>,
}

fn signal_group(pgid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig);
}

/// A process's start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`), which
/// tells a live task from an unrelated process that reused its pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // After the command name: state is field 3, so start time (22) is the 20th from here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn record_task(dir: &std::path::Path, pgid: i32) {
    if let Some(t) = start_time(pgid) {
        let _ = std::fs::create_dir_all(dir);
        let _ = std::fs::write(dir.join(pgid.to_string()), t.to_string());
    }
}

fn forget_task(dir: &std::path::Path, pgid: i32) {
    let _ = std::fs::remove_file(dir.join(pgid.to_string()));
}

/// The variable every task process (and so its whole tree) gets, naming its agent's state
/// directory: an orphan is found by it even when the agent died between starting the process
/// and recording it.
pub const STATE_ENV: &str = "GANTRY_AGENT_STATE";

/// Kill every live process whose environment names `dir` as its agent's state directory (and
/// its process group); returns how many processes.
fn reap_marked(dir: &std::path::Path) -> usize {
    let marker = format!("{STATE_ENV}={}", dir.display());
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut killed = 0;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        let Ok(env) = std::fs::read(p.path().join("environ")) else {
            continue;
        };
        if env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
            // The process group too: a task's tree shares its leader's group.
            if let Some(pgrp) = std::fs::read_to_string(p.path().join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(2)?
                        .parse::<i32>()
                        .ok()
                })
                .filter(|g| *g > 1)
            {
                signal_group(pgrp, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            killed += 1;
        }
    }
    killed
}

/// Kill what a previous agent on `dir` left running: the process groups it recorded, and any
/// process marked with [`STATE_ENV`] for `dir` (one it started but did not get to record).
/// Returns how many groups or processes were killed.
pub fn reap_orphans(dir: &std::path::Path) -> usize {
    let recorded = reap_recorded(dir);
    recorded + reap_marked(dir)
}

fn reap_recorded(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut killed = 0;
    for e in entries.flatten() {
        let path = e.path();
        // Task records are named by their process group; the lock and instance files are not.
        let Some(g) = path
            .file_name()
            .and_then(|n| n.to_str()?.parse::<i32>().ok())
        else {
            continue;
        };
        let recorded: Option<u64> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        if let Some(t) = recorded {
            if start_time(g) == Some(t) {
                signal_group(g, nix::sys::signal::Signal::SIGKILL);
                killed += 1;
            }
        }
        let _ = std::fs::remove_file(&path);
    }
    killed
}

/// How every task starts: `/bin/sh -c GUARD gantry-task ARGV...`. Its stdin is the read end
/// of a pipe only the agent writes to. A background subshell (in the task's process group)
/// waits for that pipe to close, which happens when the agent drops its end after the task
/// exited, or when the agent dies however it dies; it then kills the whole group. The shell
/// itself becomes the task (`exec`), so the task keeps the pid the agent watches, with stdin
/// from /dev/null as before.
const GUARD: &str = r#"exec 3<&0; (read _ <&3; kill -KILL 0) & exec "$@" </dev/null 3<&-"#;

/// Whether `program` can be started: a path to an executable file, or a name found in `path`
/// (the task's PATH, else the agent's). Errors read as a failed `execve` would.
fn find_program(program: &str, path: Option<&str>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let not_found = || std::io::Error::from_raw_os_error(nix::errno::Errno::ENOENT as i32);
    let check = |p: &std::path::Path| -> std::io::Result<()> {
        let m = std::fs::metadata(p)?;
        if m.is_dir() || m.permissions().mode() & 0o111 == 0 {
            return Err(std::io::Error::from_raw_os_error(
                nix::errno::Errno::EACCES as i32,
            ));
        }
        Ok(())
    };
    if program.is_empty() {
        return Err(not_found());
    }
    if program.contains('/') {
        return check(std::path::Path::new(program));
    }
    let agent_path =
        std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
    let path = path.unwrap_or(&agent_path);
    let mut denied = None;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        match check(&std::path::Path::new(dir).join(program)) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => denied = Some(e),
            Err(_) => {}
        }
    }
    Err(denied.unwrap_or_else(not_found))
}

/// Start one task's process and watch it; its exit status goes to `exits`.
fn start(
    a: &pb::TaskAssignment,
    exits: mpsc::UnboundedSender<(TaskKey, i32, bool, String)>,
    state_dir: Option<std::path::PathBuf>,
    out: &(output::OutputConfig, output::Shipper),
    reports: &probe::Reports,
) -> Task {
    let key = key_of_assignment(a);
    let (stop_tx, stop_rx) = oneshot::channel::<Duration>();
    let visible = if a.devices.is_empty() {
        "void".to_string()
    } else {
        a.devices.join(",")
    };
    let program = a.command.first().map_or("", String::as_str);
    // A program that cannot be started fails here, with the system's own words, rather than
    // as the guard shell's exit 127.
    let checked = find_program(program, a.env.get("PATH").map(String::as_str));
    // The lifeline: the task's guard (see GUARD) holds its read end and this agent its write
    // end, so the task's whole group dies with the agent, even a `kill -9` of it.
    let lifeline = checked.and_then(|()| std::io::pipe());
    let (life_in, life_out) = match lifeline {
        Ok(p) => p,
        Err(e) => {
            let why = format!("{program:?}: {e}");
            tracing::warn!(job = %a.job, error = %why, "task failed to start");
            let _ = exits.send((key, 127, false, why));
            return Task {
                stop: Some(stop_tx),
                pgid: None,
                devices: a.devices.clone(),
                _probe: None,
            };
        }
    };
    let mut cmd = tokio::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(GUARD)
        .arg("gantry-task")
        .args(&a.command)
        .envs(a.env.iter())
        .env(
            "CUDA_VISIBLE_DEVICES",
            if a.devices.is_empty() { "" } else { &visible },
        )
        .env("NVIDIA_VISIBLE_DEVICES", &visible)
        .env("GANTRY_JOB", &a.job)
        .env("GANTRY_TASK_GROUP", a.group.to_string())
        .env("GANTRY_TASK_INDEX", a.index.to_string())
        .env("GANTRY_ATTEMPT", a.attempt.to_string())
        .envs(state_dir.iter().map(|d| (STATE_ENV, d.as_os_str())))
        .stdin(std::process::Stdio::from(life_in))
        .process_group(0)
        .kill_on_drop(true);
    let pipe = output::Pipe::new().and_then(|p| p.stdio().map(|io| (p, io)));
    let pipe = match pipe {
        Ok((p, (stdout, stderr))) => {
            cmd.stdout(stdout).stderr(stderr);
            Some(p)
        }
        Err(e) => {
            tracing::warn!(job = %a.job, error = %e, "no pipe for the task's output; it is discarded");
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            None
        }
    };
    let mut pgid = None;
    let spawned = cmd.spawn();
    // The command holds copies of the pipe's write end: closed now, so the end of the task's
    // output is seen once its own processes close theirs.
    drop(cmd);
    if let (Some(p), Ok(_)) = (pipe, &spawned) {
        output::capture(key.clone(), p, &out.0, out.1.clone());
    }
    match spawned {
        Err(e) => {
            let why = format!("{program:?}: {e}");
            tracing::warn!(job = %a.job, error = %why, "task failed to start");
            let _ = exits.send((key, 127, false, why));
        }
        Ok(mut child) => {
            pgid = child.id().map(|p| p as i32);
            if let (Some(dir), Some(g)) = (&state_dir, pgid) {
                record_task(dir, g);
            }
            tracing::info!(job = %a.job, index = a.index, devices = %visible, "task started");
            tokio::spawn(async move {
                let status = tokio::select! {
                    s = child.wait() => s,
                    grace = stop_rx => {
                        let grace = grace.unwrap_or(Duration::ZERO);
                        let group = child.id().map(|p| p as i32);
                        if let Some(g) = group {
                            signal_group(g, nix::sys::signal::Signal::SIGTERM);
                        }
                        let s = match tokio::time::timeout(grace, child.wait()).await {
                            Ok(s) => s,
                            Err(_) => {
                                let _ = child.start_kill();
                                child.wait().await
                            }
                        };
                        // Whatever the leader left behind in its group goes too.
                        if let Some(g) = group {
                            signal_group(g, nix::sys::signal::Signal::SIGKILL);
                        }
                        s
                    }
                };
                // The guard kills what the task left behind in its group, and goes.
                drop(life_out);
                if let (Some(dir), Some(g)) = (&state_dir, pgid) {
                    forget_task(dir, g);
                }
                let code = match status {
                    Ok(s) => s.code().unwrap_or_else(|| {
                        use std::os::unix::process::ExitStatusExt;
                        128 + s.signal().unwrap_or(0)
                    }),
                    Err(_) => 255,
                };
                let _ = exits.send((key, code, true, String::new()));
            });
        }
    }
    let port = u16::try_from(a.port).unwrap_or(0);
    let probe = match (&a.probe, pgid) {
        (Some(p), Some(_)) if port != 0 => Some(probe::spawn(
            key_of_assignment(a),
            port,
            p.clone(),
            reports.clone(),
        )),
        _ => None,
    };
    Task {
        stop: Some(stop_tx),
        pgid,
        devices: a.devices.clone(),
        _probe: probe,
    }
}

/// A fresh id for this agent process: its pid and the time it started, in hex.
fn new_instance() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{t:x}", std::process::id())
}

/// The state directory held by this agent process: locked so no other agent uses it at once.
struct StateDir {
    dir: std::path::PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl StateDir {
    /// Create and lock `dir`; refuses when another live agent holds it.
    fn lock(dir: &std::path::Path) -> Result<StateDir, ServerError> {
        let store = |what: &str, e: &dyn std::fmt::Display| {
            ServerError::Store(format!("agent state dir {}: {what}: {e}", dir.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| store("create", &e))?;
        let path = dir.join("agent.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| store("open agent.lock", &e))?;
        let mut lock =
            match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    let pid = std::fs::read_to_string(&path).unwrap_or_default();
                    return Err(ServerError::Conflict(format!(
                    "agent state dir {}: another gantry agent (pid {}) is using it: one agent per \
                     node and state dir",
                    dir.display(),
                    pid.trim()
                )));
                }
                Err((_, e)) => return Err(store("lock agent.lock", &e)),
            };
        use std::io::{Seek, Write};
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = write!(lock, "{}", std::process::id());
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// The instance that last registered from this directory.
    fn previous_instance(&self) -> String {
        std::fs::read_to_string(self.dir.join("instance"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    fn set_instance(&self, instance: &str) {
        if let Err(e) = std::fs::write(self.dir.join("instance"), instance) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot record the agent instance");
        }
    }
}

/// Run the agent until `shutdown` resolves (its processes are then killed).
///
/// # Errors
/// The server cannot be reached at start, or refuses the node's inventory; another agent holds
/// the state directory or (alive, under the same node name) the node; or another instance took
/// the node over while this one ran (its tasks are stopped first).
pub async fn run_agent(
    config: AgentConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let state = match &config.state_dir {
        Some(dir) => Some(StateDir::lock(dir)?),
        None => None,
    };
    if let Some(dir) = &config.state_dir {
        let n = reap_orphans(dir);
        if n > 0 {
            tracing::warn!(killed = n, dir = %dir.display(), "killed tasks a previous agent left running");
        }
    }
    let mut instance = new_instance();
    let previous = state
        .as_ref()
        .map(StateDir::previous_instance)
        .unwrap_or_default();
    // Every call is bounded: a server that hangs (stopped, overloaded) must not hold the loop
    // that fences this node's tasks when the lease runs out.
    let ep = crate::client::endpoint(&config.server, config.tls_ca.as_deref())?
        .timeout(Duration::from_secs(5));
    let uri = ep.uri().to_string();
    let channel = ep
        .connect()
        .await
        .map_err(|e| ServerError::Transport(format!("cannot reach gantry serve at {uri}: {e}")))?;
    let bearer = crate::auth::BearerToken::new(config.token.as_deref())?;
    let mut nodes = pb::nodes_client::NodesClient::with_interceptor(channel, bearer);
    let node_json = serde_json::to_string(&config.node).map_err(transport)?;
    let name = config.node.name.clone();
    type Client = NodesClient;
    let advertise = config.advertise.clone().unwrap_or_default();
    let register = |mut c: Client, json: String, instance: String, previous: String| {
        let advertise = advertise.clone();
        async move {
            c.register_node(pb::RegisterNodeRequest {
                node_json: json,
                instance,
                previous_instance: previous,
                address: advertise,
            })
            .await
            .map(|r| r.into_inner())
        }
    };
    let reg = register(nodes.clone(), node_json.clone(), instance.clone(), previous)
        .await
        .map_err(|s| match s.code() {
            tonic::Code::FailedPrecondition => ServerError::Conflict(s.message().to_string()),
            _ => transport(s.message()),
        })?;
    if let Some(st) = &state {
        st.set_instance(&instance);
    }
    tracing::info!(node = %name, instance = %instance, "registered");
    let mut lease = Duration::from_millis(reg.lease_ms.max(30));
    // Fencing: when no heartbeat went through for a whole lease, the server counts this node
    // lost and requeues its jobs elsewhere, so the tasks here are stopped (their exits are not
    // reported: the server has moved on) and the agent registers again as a new instance once
    // the server answers.
    let mut last_ok = tokio::time::Instant::now();
    let mut fenced: BTreeSet<TaskKey> = BTreeSet::new();
    let mut rejoin = false;
    let (exits_tx, mut exits) = mpsc::unbounded_channel();
    let output_config = config.output();
    output::prune(&output_config);
    let mut pruned = tokio::time::Instant::now();
    let (shipper, shipping) = output::Shipper::spawn(nodes.clone(), name.clone());
    let out = (output_config, shipper);
    let reports: probe::Reports = Default::default();
    let mut tasks: HashMap<TaskKey, Task> = HashMap::new();
    // Exits the server has not acknowledged yet: (phase, code), sent again every heartbeat.
    let mut unreported: HashMap<TaskKey, (pb::TaskPhase, i32, String)> = HashMap::new();
    for a in &reg.start {
        tasks.insert(
            key_of_assignment(a),
            start(
                a,
                exits_tx.clone(),
                config.state_dir.clone(),
                &out,
                &reports,
            ),
        );
    }
    tokio::pin!(shutdown);
    // The heartbeat in flight. It is held open by the server while there is nothing to do
    // (`wait_ms`) and answers as soon as there is: work is pushed, not picked up on a timer.
    type Beat = std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<tonic::Response<pb::HeartbeatResponse>, tonic::Status>,
                > + Send,
        >,
    >;
    let mut in_flight: Option<Beat> = None;
    let mut next_beat = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(first) = exits.recv() => {
                // Every exit already waiting goes in the same flush.
                let mut batch = vec![first];
                while let Ok(more) = exits.try_recv() {
                    batch.push(more);
                }
                for (key, code, started, why) in batch {
                    tasks.remove(&key);
                    if fenced.remove(&key) {
                        continue;
                    }
                    let phase = if started { pb::TaskPhase::Exited } else { pb::TaskPhase::FailedToStart };
                    unreported.insert(key, (phase, code, why));
                }
                flush_reports(&nodes, &name, &mut unreported).await;
            }
            _ = tokio::time::sleep_until(next_beat), if in_flight.is_none() => {
                next_beat = tokio::time::Instant::now() + beat(lease);
                if rejoin {
                    let fresh = new_instance();
                    match register(nodes.clone(), node_json.clone(), fresh.clone(), instance.clone()).await {
                        Ok(reg) => {
                            instance = fresh;
                            if let Some(st) = &state {
                                st.set_instance(&instance);
                            }
                            rejoin = false;
                            last_ok = tokio::time::Instant::now();
                            tracing::warn!(node = %name, instance = %instance, "registered again after stopping every task");
                            for a in &reg.start {
                                tasks.entry(key_of_assignment(a)).or_insert_with(|| start(a, exits_tx.clone(), config.state_dir.clone(), &out, &reports));
                            }
                        }
                        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                            return Err(ServerError::Conflict(s.message().to_string()));
                        }
                        Err(e) => tracing::warn!(error = %e, "register again failed; will retry"),
                    }
                    continue;
                }
                flush_reports(&nodes, &name, &mut unreported).await;
                let running: BTreeSet<TaskKey> =
                    tasks.keys().chain(unreported.keys()).cloned().collect();
                let wait = beat(lease);
                let req = pb::HeartbeatRequest {
                    node: name.clone(),
                    running: running.iter().map(pb_ref).collect(),
                    instance: instance.clone(),
                    leaving: false,
                    wait_ms: wait.as_millis() as u32,
                    replicas: probe::snapshot(&reports),
                };
                let mut c = nodes.clone();
                let limit = wait + lease / 2;
                in_flight = Some(Box::pin(async move {
                    tokio::time::timeout(limit, c.heartbeat(req))
                        .await
                        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within half the lease")))
                }));
            }
            hb = async { in_flight.as_mut().expect("guarded by the condition").await }, if in_flight.is_some() => {
                in_flight = None;
                match hb {
                    Ok(r) => {
                        last_ok = tokio::time::Instant::now();
                        // Straight back: the next heartbeat waits at the server.
                        next_beat = last_ok;
                        let r = r.into_inner();
                        lease = Duration::from_millis(r.lease_ms.max(30));
                        if pruned.elapsed() > Duration::from_secs(3600) {
                            pruned = tokio::time::Instant::now();
                            output::prune(&out.0);
                        }
                        for s in &r.stop {
                            if let Some(t) = s.task.as_ref().and_then(|k| tasks.get_mut(&key_of(k))) {
                                tracing::info!(job = %s.task.as_ref().map_or("", |k| k.job.as_str()), why = %s.why, "stopping task");
                                if let Some(tx) = t.stop.take() {
                                    let _ = tx.send(Duration::from_millis(s.grace_ms));
                                }
                            }
                        }
                        // Devices still held by tasks told to stop (their grace period).
                        let stopping: BTreeSet<&str> = tasks
                            .values()
                            .filter(|t| t.stop.is_none())
                            .flat_map(|t| t.devices.iter().map(String::as_str))
                            .collect();
                        let deferred: BTreeSet<TaskKey> = r
                            .start
                            .iter()
                            .filter(|a| a.devices.iter().any(|d| stopping.contains(d.as_str())))
                            .map(key_of_assignment)
                            .collect();
                        for a in &r.start {
                            let k = key_of_assignment(a);
                            if deferred.contains(&k) {
                                tracing::info!(job = %a.job, index = a.index, "start deferred: a stopping task still holds its devices");
                                continue;
                            }
                            if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(k) {
                                slot.insert(start(a, exits_tx.clone(), config.state_dir.clone(), &out, &reports));
                                // Informational (the task counts as running either way): sent
                                // without holding up the next start or exit.
                                let mut c = nodes.clone();
                                let req = pb::ReportTaskRequest {
                                    node: name.clone(),
                                    task: Some(pb::TaskRef { job: a.job.clone(), group: a.group, index: a.index, attempt: a.attempt }),
                                    phase: pb::TaskPhase::Started as i32,
                                    exit_code: 0,
                                    message: String::new(),
                                };
                                tokio::spawn(async move {
                                    let _ = c.report_task(req).await;
                                });
                            }
                        }
                    }
                    Err(s) if s.code() == tonic::Code::NotFound => {
                        // The server lost us (a fresh store): register again.
                        if let Err(e) = register(nodes.clone(), node_json.clone(), instance.clone(), instance.clone()).await {
                            tracing::warn!(error = %e, "register again failed");
                        }
                    }
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        // Another agent holds this node now: whatever runs here may run there
                        // too. Stop everything (fencing) and leave.
                        tracing::error!(node = %name, error = %s.message(), "another agent holds this node: stopping every task");
                        kill_all(&tasks);
                        return Err(ServerError::Conflict(s.message().to_string()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed");
                        if last_ok.elapsed() > lease && !tasks.is_empty() {
                            tracing::error!(
                                node = %name,
                                tasks = tasks.len(),
                                silent_ms = last_ok.elapsed().as_millis() as u64,
                                "no heartbeat went through for a whole lease: the server has requeued this node's jobs; stopping every task here"
                            );
                            for (k, t) in tasks.iter_mut() {
                                if let Some(tx) = t.stop.take() {
                                    let _ = tx.send(Duration::ZERO);
                                }
                                fenced.insert(k.clone());
                            }
                            rejoin = true;
                        }
                    }
                }
            }
        }
    }
    kill_all(&tasks);
    // Tell the server, so the node's jobs are requeued now rather than after the lease.
    drop(in_flight);
    let bye = nodes.heartbeat(pb::HeartbeatRequest {
        node: name.clone(),
        running: Vec::new(),
        instance: instance.clone(),
        leaving: true,
        wait_ms: 0,
        replicas: Vec::new(),
    });
    match tokio::time::timeout(Duration::from_secs(2), bye).await {
        Ok(Ok(_)) => tracing::info!(node = %name, "stopped; the server requeues this node's jobs"),
        Ok(Err(e)) => {
            tracing::warn!(node = %name, error = %e, "stopped; could not tell the server (its lease will run out)")
        }
        Err(_) => {
            tracing::warn!(node = %name, "stopped; the server did not answer (its lease will run out)")
        }
    }
    // The last output of the killed tasks, if the server takes it quickly.
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(1), shipping).await;
    Ok(())
}

/// Kill every task's whole process group, not only its leader (kill_on_drop reaches only the
/// leader).
fn kill_all(tasks: &HashMap<TaskKey, Task>) {
    for t in tasks.values() {
        if let Some(g) = t.pgid {
            signal_group(g, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Send the exits the server has not acknowledged; keep the ones that fail for the next try.
async fn flush_reports(
    nodes: &NodesClient,
    node: &str,
    unreported: &mut HashMap<TaskKey, (pb::TaskPhase, i32, String)>,
) {
    let pending: Vec<(TaskKey, (pb::TaskPhase, i32, String))> = unreported
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // All at once: the server commits reports that arrive together in one transaction.
    let calls = pending.into_iter().map(|(key, (phase, code, message))| {
        let mut c = nodes.clone();
        let req = pb::ReportTaskRequest {
            node: node.to_string(),
            task: Some(pb_ref(&key)),
            phase: phase as i32,
            exit_code: code,
            message,
        };
        async move { (key, c.report_task(req).await) }
    });
    for (key, r) in futures::future::join_all(calls).await {
        match r {
            Ok(_) => {
                unreported.remove(&key);
            }
            // The server no longer knows the task (finished, requeued, a fresh store): nothing
            // to keep for it.
            Err(s)
                if matches!(
                    s.code(),
                    tonic::Code::NotFound | tonic::Code::InvalidArgument
                ) =>
            {
                unreported.remove(&key);
            }
            Err(e) => tracing::warn!(error = %e, job = %key.job, "report failed; will retry"),
        }
    }
}

/// Heartbeat period: a third of the lease, and at most 500 ms, because new assignments ride on
/// heartbeat answers (a task starts within one period of being placed).
fn beat(lease: Duration) -> Duration {
    (lease / 3).min(Duration::from_millis(500))
}

fn key_of_assignment(a: &pb::TaskAssignment) -> TaskKey {
    TaskKey {
        job: a.job.clone(),
        group: a.group as u16,
        index: a.index,
        attempt: a.attempt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn programs_that_cannot_start_are_told_apart_before_the_guard_runs() {
        assert!(find_program("sh", None).is_ok());
        assert!(find_program("/bin/sh", None).is_ok());
        let e = find_program("no-such-program-here", Some("/usr/bin:/bin")).unwrap_err();
        assert!(e.to_string().contains("No such file or directory"), "{e}");
        let dir = tempfile::tempdir().expect("dir");
        let script = dir.path().join("train.sh");
        std::fs::write(&script, "#!/bin/sh\n").expect("write");
        let e = find_program(script.to_str().expect("utf-8"), None).unwrap_err();
        assert!(e.to_string().contains("Permission denied"), "{e}");
        // The task's own PATH is searched, not only the agent's.
        let e = find_program("train.sh", dir.path().to_str()).unwrap_err();
        assert!(e.to_string().contains("Permission denied"), "{e}");
        assert!(find_program("", None).is_err());
    }

    #[test]
    fn a_restarted_agent_kills_the_recorded_groups_and_only_those() {
        let dir = tempfile::tempdir().expect("dir");
        let mut orphan = std::process::Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pid = orphan.id() as i32;
        record_task(dir.path(), pid);
        // A record whose pid now names another process (a different start time) is left alone.
        let mut bystander = std::process::Command::new("sleep")
            .arg("600")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let other = bystander.id() as i32;
        std::fs::write(dir.path().join(other.to_string()), "1").expect("stale record");
        assert_eq!(reap_orphans(dir.path()), 1);
        let status = orphan.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
        assert!(
            bystander.try_wait().expect("try").is_none(),
            "killed a bystander"
        );
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
        let _ = bystander.kill();
        let _ = bystander.wait();
    }
}
