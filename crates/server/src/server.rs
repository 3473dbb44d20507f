//! The tokio side of `gantry serve`: start-up with recovery, the debounced scheduling loop,
//! the node-lease reaper, and the `gantry.v1` services over TCP.
//!
//! Every change follows one path (`Server::apply`): take the state lock, change the state,
//! hand the resulting store ops to the writer, drop the lock, await durability, then publish
//! (tasks become visible to agents, events go to watchers) and wake the scheduling loop.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gantry_api::gantry::v1 as pb;
use gantry_engine::Profile;
use gantry_model::{JobSpec, Node, QueueSpec};
use tokio::sync::{broadcast, oneshot, Notify};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::auth::Caller;
use crate::error::parse_json;
use crate::record::{JobRecord, JobState};
use crate::state::{Assignment, Event, Report, State, Stop, TaskKey};
use crate::store::{durable, Op, Store, Writer, WriterStats};
use crate::ServerError;

mod dashboard;
mod services_api;

/// How many cycles `explain` runs the engine forward to estimate a start.
const ESTIMATE_CYCLES: usize = 64;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Address of the gRPC API (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// A node that has not heartbeated for this long is lost and its jobs are requeued.
    pub lease_ms: u64,
    /// Cycles start at most once per this period, so a burst of changes makes one cycle; a
    /// change after a quiet spell starts one at once.
    pub debounce_ms: u64,
    /// Time a stopped task gets between SIGTERM and SIGKILL (sent to agents).
    pub grace_ms: u64,
    /// Scheduling policy.
    pub profile: Profile,
    /// Create a queue `default` without quota (every flavor unlimited) when the store has none.
    pub default_queue: bool,
    /// Address of `/metrics`, `/healthz` and `/readyz` (plain HTTP); none: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Bearer tokens; none: every request is allowed (a lab on a trusted network).
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// Serve the API over TLS with this certificate and key; none: plain HTTP/2.
    pub tls: Option<TlsIdentity>,
    /// Connections per peer and how long a new one may stay silent.
    pub conn_limits: crate::conn::ConnLimits,
    /// Finished jobs older than this are deleted (0: kept forever).
    pub retain_finished_ms: u64,
    /// The server's copy of each task run's output is capped at this many bytes (it rotates
    /// once, so a run keeps at most twice this).
    pub log_cap_bytes: u64,
}

/// The server's TLS certificate chain and private key, both PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    /// Certificate chain (PEM), leaf first.
    pub cert_pem: Vec<u8>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("TlsIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults for a data directory: loopback on a free port, 10 s leases, 20 ms debounce.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            lease_ms: 10_000,
            debounce_ms: 20,
            grace_ms: 10_000,
            profile: Profile::gantry(),
            default_queue: true,
            metrics_listen: None,
            auth: None,
            tls: None,
            conn_limits: crate::conn::ConnLimits::default(),
            retain_finished_ms: 7 * 24 * 3_600_000,
            log_cap_bytes: crate::logs::DEFAULT_CAP,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Shared {
    /// The records and the snapshot. A std mutex: it is never held across an await.
    state: Mutex<State>,
    writer: Writer,
    /// Wakes the scheduling loop after a change.
    kick: Notify,
    /// Wakes heartbeats held open for work (`wait_ms`) after a durable change.
    work: Notify,
    /// Job events for `WatchJobs`, sent after they are durable.
    events: broadcast::Sender<Event>,
    config: Config,
    stats: Arc<WriterStats>,
    metrics: crate::metrics::Metrics,
    /// The server's copy of task output.
    logs: Arc<crate::logs::LogStore>,
    /// The dashboard's history: one sample a minute for a day.
    history: gantry_dashboard::History,
    /// Recent job events, for the dashboard.
    recent_events: Mutex<std::collections::VecDeque<Event>>,
    /// Bumped after every durable change (and replica readiness): held dashboard requests
    /// look again.
    changes: tokio::sync::watch::Sender<u64>,
}

/// The server: cheap to clone; every clone serves the same state.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("data_dir", &self.shared.config.data_dir)
            .finish_non_exhaustive()
    }
}

/// A started server.
#[derive(Debug)]
pub struct Running {
    /// Where the gRPC API listens.
    pub addr: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if they are.
    pub metrics_addr: Option<SocketAddr>,
    /// The server (for in-process inspection).
    pub server: Server,
    shutdown: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stop serving: stop accepting, give open calls up to 5 s to finish (a `WatchJobs` stream
    /// never does), then drop the connections, commit what is in flight and close the store
    /// (the data directory can be opened again as soon as this returns).
    ///
    /// # Errors
    /// The transport's error.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for b in &self.background {
            b.abort();
        }
        let finished = tokio::time::timeout(Duration::from_secs(5), &mut self.join).await;
        let result = match finished {
            Err(_) => {
                self.join.abort();
                Ok(())
            }
            Ok(Ok(r)) => r.map_err(|e| ServerError::Transport(e.to_string())),
            Ok(Err(e)) => Err(ServerError::Store(format!("server task: {e}"))),
        };
        self.server.shared.writer.close().await;
        result
    }

    /// Resolves once the store failed for good (a commit that fails even after reopening the
    /// database, e.g. a full disk): the server's memory may then hold changes the store does
    /// not. Stop the server and exit non-zero, so a supervisor restarts it from the store.
    pub async fn fatal(&self) -> ServerError {
        let stats = &self.server.shared.stats;
        loop {
            let notified = stats.fatal.notified();
            if stats.failed.load(std::sync::atomic::Ordering::Relaxed) {
                return ServerError::Store(format!(
                    "{}: a commit failed even after reopening the store; stopping so that nothing \
                     unrecorded is acted on (restart once the disk has room)",
                    self.server
                        .shared
                        .config
                        .data_dir
                        .join("gantry.redb")
                        .display()
                ));
            }
            notified.await;
        }
    }

    /// Wait until the server stops (it does not, unless the transport fails).
    ///
    /// # Errors
    /// The transport's error.
    pub async fn wait(mut self) -> Result<(), ServerError> {
        match (&mut self.join).await {
            Ok(r) => r.map_err(|e| ServerError::Store(format!("transport: {e}"))),
            Err(e) => Err(ServerError::Store(format!("server task: {e}"))),
        }
    }
}

impl Server {
    /// Open the store, recover, and serve on `config.listen`.
    ///
    /// # Errors
    /// The store cannot be opened, or the address cannot be bound.
    pub async fn start(config: Config) -> Result<Running, ServerError> {
        // Refuse a bad certificate or key before touching the store.
        // Dead peers of established connections are found by HTTP/2 pings.
        let mut builder = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if let Some(tls) = &config.tls {
            for (field, pem, marker) in [
                ("tls_cert", &tls.cert_pem, "CERTIFICATE-----"),
                ("tls_key", &tls.key_pem, "PRIVATE KEY-----"),
            ] {
                if !String::from_utf8_lossy(pem).contains(marker) {
                    return Err(ServerError::Invalid {
                        field: field.into(),
                        reason: format!("not PEM (no BEGIN ...{marker} block)"),
                    });
                }
            }
            let identity = tonic::transport::Identity::from_pem(&tls.cert_pem, &tls.key_pem);
            builder = builder
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .map_err(|e| ServerError::Invalid {
                    field: "tls_cert".into(),
                    reason: format!("certificate and key are not usable: {e}"),
                })?;
        }
        let dir = config.data_dir.clone();
        let (store, rec) = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|e| ServerError::Store(e.to_string()))??;
        let stats = Arc::new(WriterStats::default());
        let writer = Writer::spawn(store, stats.clone());
        let now = now_ms();
        let (jobs, nodes) = (rec.jobs.len(), rec.nodes.len());
        let (mut state, mut ops) = State::recover(
            rec.queues,
            rec.priority_classes,
            rec.jobs,
            rec.nodes,
            config.profile.clone(),
            now,
        )?;
        if state.queues.is_empty() && config.default_queue {
            ops.extend(state.create_queue(QueueSpec {
                name: "default".into(),
                parent: None,
                weight: 1.0,
                quotas: BTreeMap::new(),
                // The out-of-the-box queue limits nothing: every flavor, up to capacity.
                unlisted_flavors: Some(gantry_model::UnlistedFlavors::Allow),
            })?);
            ops.extend(state.ensure_fresh(now));
        }
        durable(writer.write(ops)).await?;
        tracing::info!(jobs, nodes, queues = state.queues.len(), "recovered");
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| ServerError::Listen {
                addr: config.listen.to_string(),
                reason: e.to_string(),
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| ServerError::Store(e.to_string()))?;
        let (events, _) = broadcast::channel(4096);
        let config_logs_dir = config.data_dir.join("logs");
        let config_log_cap = config.log_cap_bytes;
        let server = Server {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                writer,
                kick: Notify::new(),
                work: Notify::new(),
                events,
                config,
                stats,
                metrics: crate::metrics::Metrics::new(),
                logs: Arc::new(crate::logs::LogStore::new(config_logs_dir, config_log_cap)),
                history: gantry_dashboard::History::default(),
                recent_events: Mutex::new(std::collections::VecDeque::new()),
                changes: tokio::sync::watch::Sender::new(0),
            }),
        };
        let mut metrics_addr = None;
        let mut background = Vec::new();
        if let Some(at) = server.shared.config.metrics_listen {
            let l = tokio::net::TcpListener::bind(at)
                .await
                .map_err(|e| ServerError::Listen {
                    addr: at.to_string(),
                    reason: e.to_string(),
                })?;
            metrics_addr = Some(
                l.local_addr()
                    .map_err(|e| ServerError::Store(e.to_string()))?,
            );
            let s = server.clone();
            let stats = server.shared.stats.clone();
            background.push(tokio::spawn(async move {
                // Ready as soon as this runs (`start` serves only after recovery), until the store
                // fails for good.
                let ready = move || !stats.failed.load(std::sync::atomic::Ordering::Relaxed);
                let pages = dashboard::router(s.clone());
                if let Err(e) =
                    gantry_metrics::serve(l, move || s.render_metrics(), ready, pages).await
                {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            }));
        }
        background.push(tokio::spawn(server.clone().scheduling_loop()));
        background.push(tokio::spawn(server.clone().reaper()));
        background.push(tokio::spawn(server.clone().autoscaler()));
        server.shared.kick.notify_one();
        let (tx, rx) = oneshot::channel::<()>();
        let s = server.clone();
        let tls = server.shared.config.tls.is_some();
        let limits = server.shared.config.conn_limits;
        let join = tokio::spawn(async move {
            builder
                .add_service(pb::queues_server::QueuesServer::new(s.clone()))
                .add_service(pb::jobs_server::JobsServer::new(s.clone()))
                .add_service(pb::nodes_server::NodesServer::new(s.clone()))
                .add_service(pb::services_server::ServicesServer::new(s.clone()))
                .add_service(pb::cluster_server::ClusterServer::new(s))
                .serve_with_incoming_shutdown(crate::conn::incoming(listener, limits), async {
                    let _ = rx.await;
                })
                .await
        });
        tracing::info!(%addr, tls, "serving gantry.v1");
        Ok(Running {
            addr,
            metrics_addr,
            server,
            shutdown: Some(tx),
            join,
            background,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the state as it was at the panic; serving on
        // is better than refusing every request.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Commit counters of the store's writer.
    pub fn writer_stats(&self) -> &WriterStats {
        &self.shared.stats
    }

    /// The prometheus text exposition of the current state.
    pub fn render_metrics(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let (c, w, e) = (
            self.shared.stats.commits.load(Relaxed),
            self.shared.stats.writes.load(Relaxed),
            self.shared.stats.errors.load(Relaxed),
        );
        let st = self.lock();
        self.shared.metrics.render(&st, c, w, e)
    }

    /// Apply a change: see the module docs.
    async fn apply<T>(
        &self,
        f: impl FnOnce(&mut State) -> Result<(T, Vec<Op>), ServerError>,
    ) -> Result<T, ServerError> {
        let (value, wait, marks, events) = {
            let mut st = self.lock();
            let (value, ops) = f(&mut st)?;
            let marks = st.publish_marks(&ops);
            let events = std::mem::take(&mut st.events);
            let wait = (!ops.is_empty()).then(|| self.shared.writer.write(ops));
            (value, wait, marks, events)
        };
        let changed = wait.is_some();
        if let Some(w) = wait {
            durable(w).await?;
        }
        if !marks.is_empty() {
            self.lock().publish(&marks);
        }
        if changed {
            self.shared.work.notify_waiters();
            self.shared.changes.send_modify(|v| *v += 1);
        }
        self.keep_events(&events);
        for e in events {
            let _ = self.shared.events.send(e);
        }
        if changed {
            self.shared.kick.notify_one();
        }
        Ok(value)
    }

    async fn scheduling_loop(self) {
        let debounce = Duration::from_millis(self.shared.config.debounce_ms);
        let mut last = tokio::time::Instant::now();
        loop {
            // A periodic cycle too: estimates and reservations move with the clock.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.kick.notified()).await;
            // At most one cycle per debounce period, but a change after a quiet spell (a task
            // exit freeing a GPU, one submission) is acted on at once: the wait is only what is
            // left of the period since the last cycle began.
            tokio::time::sleep_until(last + debounce).await;
            last = tokio::time::Instant::now();
            let span = tracing::info_span!(
                "cycle",
                cycle = tracing::field::Empty,
                pending = tracing::field::Empty,
                binds = tracing::field::Empty,
                evictions = tracing::field::Empty,
                duration_us = tracing::field::Empty,
            );
            let t0 = std::time::Instant::now();
            let r = self
                .apply(|st| {
                    span.record("cycle", st.counters.cycles + 1);
                    let _g = span.enter();
                    let ops = st.cycle(now_ms());
                    let c = st.counters;
                    span.record("pending", c.last_pending);
                    span.record("binds", c.last_binds);
                    span.record("evictions", c.last_evictions);
                    Ok((c, ops))
                })
                .await;
            let took = t0.elapsed();
            self.shared.metrics.cycle.observe(took.as_secs_f64());
            let _g = span.enter();
            span.record("duration_us", took.as_micros() as u64);
            match r {
                // Engine run plus the durable plan. Quiet cycles (nothing bound or evicted; one
                // a second) are logged at debug level only.
                Ok(c) if c.last_binds > 0 || c.last_evictions > 0 => tracing::info!(
                    cycle = c.cycles,
                    pending = c.last_pending,
                    binds = c.last_binds,
                    evictions = c.last_evictions,
                    duration_us = took.as_micros() as u64,
                    "cycle"
                ),
                Ok(c) => tracing::debug!(
                    cycle = c.cycles,
                    pending = c.last_pending,
                    duration_us = took.as_micros() as u64,
                    "cycle"
                ),
                Err(e) => tracing::error!(error = %e, "cycle could not be recorded"),
            }
        }
    }

    /// Inference services' autoscalers, each at its own interval (see [`State::autoscale`]).
    async fn autoscaler(self) {
        let mut sampled: Option<std::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if sampled.is_none_or(|t| t.elapsed() >= gantry_dashboard::history::SAMPLE_EVERY) {
                sampled = Some(std::time::Instant::now());
                self.sample_history();
            }
            if let Err(e) = self.apply(|st| Ok(((), st.autoscale(now_ms())))).await {
                tracing::error!(error = %e, "a scaling decision could not be recorded");
            }
            // Services at zero: read the queue in front of each (a router's gauge).
            let due = self.lock().activations_due(now_ms());
            for (name, host_port, path, metric) in due {
                let queued = match crate::agent::probe::http_get(&host_port, &path).await {
                    Ok((200..=299, body)) => crate::agent::probe::metric_value(&body, &metric),
                    Ok((code, _)) => {
                        tracing::warn!(service = %name, url = %format!("http://{host_port}{path}"), code, "activation queue answered with an error");
                        None
                    }
                    Err(e) => {
                        tracing::warn!(service = %name, url = %format!("http://{host_port}{path}"), error = %e, "activation queue cannot be read");
                        None
                    }
                };
                if let Err(e) = self
                    .apply(|st| Ok(((), st.activate(&name, queued, now_ms()))))
                    .await
                {
                    tracing::error!(service = %name, error = %e, "a scaling decision could not be recorded");
                }
            }
        }
    }

    async fn reaper(self) {
        let lease = self.shared.config.lease_ms;
        let every = Duration::from_millis((lease / 4).max(10));
        // Finished jobs are looked over once a minute (a scan of every job).
        let mut forgot = std::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            if let Err(e) = self.apply(|st| Ok(((), st.reap(now_ms(), lease)))).await {
                tracing::error!(error = %e, "lost nodes could not be recorded");
            }
            if forgot.elapsed() < Duration::from_secs(60) {
                continue;
            }
            forgot = std::time::Instant::now();
            let retain = self.shared.config.retain_finished_ms;
            if let Err(e) = self
                .apply(|st| Ok(((), st.forget_finished(now_ms(), retain))))
                .await
            {
                tracing::error!(error = %e, "old finished jobs could not be forgotten");
            }
            // Their output goes with them.
            let (server, logs) = (self.clone(), self.shared.logs.clone());
            let _ = tokio::task::spawn_blocking(move || {
                logs.retain_jobs(|j| server.lock().jobs.contains_key(j))
            })
            .await;
        }
    }

    /// Submit a job: validated, made durable, then handed to the engine.
    ///
    /// # Errors
    /// See [`State::begin_submit`]; [`ServerError::Store`] when it could not be made durable.
    pub async fn submit(
        &self,
        spec: JobSpec,
        command: Vec<String>,
        env: BTreeMap<String, String>,
    ) -> Result<u64, ServerError> {
        self.submit_as(spec, command, env, "").await
    }

    /// [`Server::submit`] on behalf of `user` (kept in the record).
    ///
    /// # Errors
    /// As for [`Server::submit`].
    pub async fn submit_as(
        &self,
        spec: JobSpec,
        command: Vec<String>,
        env: BTreeMap<String, String>,
        user: &str,
    ) -> Result<u64, ServerError> {
        // Output left by a forgotten or replaced (finished) job of the same name must not show
        // as this one's. An active job's name is refused below, and its output kept.
        let free = self
            .lock()
            .jobs
            .get(&spec.name)
            .is_none_or(|e| !e.rec.state.is_active());
        if free {
            self.shared.logs.forget_job(&spec.name);
        }
        let mut rec = self.lock().begin_submit(spec, command, env, now_ms())?;
        rec.user = user.to_string();
        let result = durable(self.shared.writer.write(vec![Op::job(&rec)])).await;
        let seq = rec.seq;
        let events = {
            let mut st = self.lock();
            st.finish_submit(rec, result.is_ok());
            std::mem::take(&mut st.events)
        };
        result?;
        self.keep_events(&events);
        for e in events {
            let _ = self.shared.events.send(e);
        }
        self.shared.changes.send_modify(|v| *v += 1);
        self.shared.kick.notify_one();
        Ok(seq)
    }

    /// The caller, when tokens are configured.
    fn who<T>(&self, req: &Request<T>) -> Result<Option<Caller>, Status> {
        match &self.shared.config.auth {
            None => Ok(None),
            Some(a) => a.caller(req.metadata()).map(Some),
        }
    }

    fn admin<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        if let Some(c) = self.who(req)? {
            c.require_admin(what)?;
        }
        Ok(())
    }

    /// A job's record, if the caller may see it.
    fn visible_job(&self, who: &Option<Caller>, name: &str) -> Result<JobRecord, Status> {
        let rec = self.job_record(name)?;
        if let Some(c) = who {
            let st = self.lock();
            if !c.may_use(&st.queues, &rec.spec.queue) {
                return Err(Status::permission_denied(format!(
                    "job {name:?} is in queue {:?}, which is not one of {}'s teams' queues",
                    rec.spec.queue, c.user
                )));
            }
        }
        Ok(rec)
    }

    fn job_record(&self, name: &str) -> Result<JobRecord, ServerError> {
        self.lock()
            .jobs
            .get(name)
            .map(|e| e.rec.clone())
            .ok_or_else(|| ServerError::NotFound {
                kind: "job",
                name: name.to_string(),
            })
    }
}

// ---------------------------------------------------------------- conversions

fn pb_state(s: JobState) -> pb::JobState {
    match s {
        JobState::Pending => pb::JobState::Pending,
        JobState::Running => pb::JobState::Running,
        JobState::Succeeded => pb::JobState::Succeeded,
        JobState::Failed => pb::JobState::Failed,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

fn pb_job(rec: &JobRecord, st: &State) -> pb::Job {
    let nodes: BTreeMap<_, _> = st
        .nodes
        .iter()
        .map(|(k, n)| (k.clone(), n.rec.clone()))
        .collect();
    pb::Job {
        name: rec.name.clone(),
        queue: rec.spec.queue.clone(),
        kind: format!("{:?}", rec.spec.kind).to_lowercase(),
        priority: st
            .tree
            .priority_classes
            .get(
                rec.spec
                    .priority_class
                    .as_deref()
                    .unwrap_or(rec.spec.kind.default_priority_class()),
            )
            .map_or(0, |c| c.value),
        state: pb_state(rec.state) as i32,
        seq: rec.seq,
        submitted_ms: rec.submitted_ms,
        started_ms: rec.started_ms.unwrap_or(0),
        finished_ms: rec.finished_ms.unwrap_or(0),
        tasks_wanted: rec.spec.tasks.iter().map(|g| g.count).sum(),
        tasks: rec
            .tasks
            .iter()
            .map(|t| {
                let (devices, gpu_milli) = t.visible_devices(&nodes);
                pb::TaskAssignment {
                    job: rec.name.clone(),
                    group: u32::from(t.group),
                    index: t.index,
                    node: t.node.clone(),
                    devices,
                    gpu_milli,
                    cpu_milli: t.cpu_milli,
                    memory_mib: t.memory_mib,
                    attempt: rec.attempt,
                    command: Vec::new(),
                    env: Default::default(),
                    port: u32::from(t.port),
                    probe: None,
                }
            })
            .collect(),
        // A pending job's reason comes from the engine as of now (a queue skipped whole, for
        // example one out of quota, stores its reason once for the queue, not on each job).
        reason: st
            .jobs
            .get(&rec.name)
            .filter(|e| e.rec.state == JobState::Pending && e.rec.attempt == rec.attempt)
            .and_then(|e| e.id)
            .and_then(|id| st.snap.why(id))
            .map_or_else(|| rec.reason.clone(), |w| w.text),
        requeues: rec.requeues,
        command: rec.command.clone(),
        spec_json: serde_json::to_string(&rec.spec).unwrap_or_default(),
        exit_code: rec.exit_code,
        attempt: rec.attempt,
    }
}

fn pb_assignment(a: Assignment) -> pb::TaskAssignment {
    pb::TaskAssignment {
        job: a.job,
        group: u32::from(a.group),
        index: a.index,
        node: a.node,
        devices: a.devices,
        gpu_milli: a.gpu_milli,
        cpu_milli: a.cpu_milli,
        memory_mib: a.memory_mib,
        attempt: a.attempt,
        command: a.command,
        env: a.env.into_iter().collect(),
        port: u32::from(a.port),
        probe: a.probe.map(|p| pb::ReplicaProbe {
            readiness_path: p.readiness,
            metric: p.metric,
            metric_path: p.metric_path,
            rate: p.rate,
            interval_ms: p.interval_ms,
        }),
    }
}

fn pb_stop(s: Stop, grace_ms: u64) -> pb::StopTask {
    pb::StopTask {
        task: Some(pb::TaskRef {
            job: s.job,
            group: u32::from(s.group),
            index: s.index,
            attempt: s.attempt,
        }),
        grace_ms,
        why: s.why,
    }
}

fn task_key(r: &pb::TaskRef) -> Result<TaskKey, ServerError> {
    Ok(TaskKey {
        job: r.job.clone(),
        group: u16::try_from(r.group).map_err(|_| ServerError::Invalid {
            field: "task.group".into(),
            reason: format!("{} is not a task group index", r.group),
        })?,
        index: r.index,
        attempt: r.attempt,
    })
}

fn pb_event(e: &Event) -> pb::JobEvent {
    pb::JobEvent {
        job: e.job.clone(),
        kind: e.kind.to_string(),
        message: e.message.clone(),
        at_ms: e.at_ms,
        state: pb_state(e.state) as i32,
    }
}

/// Quota flavors of `spec` that no registered node offers, each with the nearest offered name
/// when one is close (a typo). Nothing is said before any node has registered.
fn flavor_warnings(spec: &QueueSpec, st: &State) -> Vec<String> {
    // A leaf listing no quota that does not allow unlisted flavors can run no GPU job at all
    // (unlike `default`, which allows them): say so rather than let jobs wait there.
    let mut out = Vec::new();
    if let Some(i) = st.tree.find(&spec.name) {
        let q = &st.tree.queues[i];
        if q.is_leaf() && spec.quotas.is_empty() && !q.allow_unlisted {
            out.push(format!(
                "queue {}: lists no quota and does not allow unlisted flavors, so no job that asks \
                 for a GPU can run in it (add quotas, or set unlisted_flavors: allow)",
                spec.name
            ));
        }
    }
    let offered: BTreeSet<String> = st
        .nodes
        .values()
        .flat_map(|n| n.rec.node.flavors())
        .collect();
    if offered.is_empty() {
        return out;
    }
    out.extend(spec.quotas
        .keys()
        .filter(|f| !offered.contains(*f))
        .map(|f| {
            let near = offered
                .iter()
                .map(|o| (edit_distance(f, o), o))
                .filter(|(d, _)| *d <= 2)
                .min();
            let hint = match near {
                Some((_, o)) => format!("; did you mean {o}?"),
                None => format!(
                    "; offered: {}",
                    offered.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            };
            format!(
                "queue {}: quota flavor {f:?} is offered by no registered node, so nothing can use it \
                 until such a node joins{hint}",
                spec.name
            )
        }));
    out
}

/// Levenshtein distance (names are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let here = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(here + 1);
            prev = here;
        }
    }
    row[b.len()]
}

fn pb_queue(spec: &QueueSpec, st: &State) -> pb::Queue {
    let leaf = st
        .tree
        .find(&spec.name)
        .is_some_and(|i| st.tree.queues[i].is_leaf());
    let (mut pending, mut running) = (0u64, 0u64);
    for e in st.jobs.values() {
        if e.rec.spec.queue == spec.name {
            match e.rec.state {
                JobState::Pending => pending += 1,
                JobState::Running => running += 1,
                _ => {}
            }
        }
    }
    let quotas = match st.snap.queue_by_name(&spec.name) {
        Some(q) => spec
            .quotas
            .keys()
            .filter_map(|f| {
                st.snap.flavor_by_name(f).map(|fid| pb::QuotaUsage {
                    flavor: f.clone(),
                    // A cohort's quota is its members' together (with its own), as the
                    // dashboard shows it: its usage counts theirs too.
                    nominal_milli: if leaf {
                        st.snap.queue_nominal(q, fid)
                    } else {
                        st.snap.queue_quota_total(q, fid)
                    },
                    used_milli: st.snap.queue_usage(q, fid),
                })
            })
            .collect(),
        None => Vec::new(),
    };
    pb::Queue {
        name: spec.name.clone(),
        parent: spec.parent.clone().unwrap_or_default(),
        leaf,
        weight: spec.weight,
        spec_json: serde_json::to_string(spec).unwrap_or_default(),
        pending_jobs: pending,
        running_jobs: running,
        quotas,
        warnings: flavor_warnings(spec, st),
    }
}

fn pb_classes(st: &State) -> pb::PriorityClasses {
    let mut classes: Vec<pb::PriorityClass> = st
        .tree
        .priority_classes
        .values()
        .map(|c| pb::PriorityClass {
            name: c.name.clone(),
            value: c.value,
            preemptible: c.preemptible,
        })
        .collect();
    classes.sort_by(|a, b| b.value.cmp(&a.value).then_with(|| a.name.cmp(&b.name)));
    pb::PriorityClasses {
        classes,
        defaults: st.priority_classes.is_none(),
    }
}

// ---------------------------------------------------------------- services

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<pb::TaskLogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::queues_server::Queues for Server {
    async fn create_queue(
        &self,
        req: Request<pb::QueueRequest>,
    ) -> Result<Response<pb::Queue>, Status> {
        self.admin(&req, "creating queues")?;
        let spec: QueueSpec = parse_json("spec_json", &req.get_ref().spec_json)?;
        let s = spec.clone();
        self.apply(|st| Ok(((), st.create_queue(s)?))).await?;
        let st = self.lock();
        Ok(Response::new(pb_queue(&spec, &st)))
    }

    async fn update_queue(
        &self,
        req: Request<pb::QueueRequest>,
    ) -> Result<Response<pb::Queue>, Status> {
        self.admin(&req, "changing queues and quotas")?;
        let spec: QueueSpec = parse_json("spec_json", &req.get_ref().spec_json)?;
        let s = spec.clone();
        self.apply(|st| Ok(((), st.update_queue(s)?))).await?;
        let st = self.lock();
        Ok(Response::new(pb_queue(&spec, &st)))
    }

    async fn delete_queue(
        &self,
        req: Request<pb::DeleteQueueRequest>,
    ) -> Result<Response<pb::DeleteQueueResponse>, Status> {
        self.admin(&req, "deleting queues")?;
        let name = req.into_inner().name;
        self.apply(|st| Ok(((), st.delete_queue(&name)?))).await?;
        Ok(Response::new(pb::DeleteQueueResponse {}))
    }

    async fn list_queues(
        &self,
        req: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        self.who(&req)?;
        let ops = {
            let mut st = self.lock();
            st.ensure_fresh(now_ms())
        };
        if !ops.is_empty() {
            durable(self.shared.writer.write(ops)).await?;
        }
        let st = self.lock();
        Ok(Response::new(pb::ListQueuesResponse {
            queues: st.queues.values().map(|q| pb_queue(q, &st)).collect(),
        }))
    }

    async fn set_priority_classes(
        &self,
        req: Request<pb::SetPriorityClassesRequest>,
    ) -> Result<Response<pb::PriorityClasses>, Status> {
        self.admin(&req, "changing priority classes")?;
        let classes: Vec<gantry_model::PriorityClass> =
            parse_json("classes_json", &req.get_ref().classes_json)?;
        self.apply(|st| Ok(((), st.set_priority_classes(classes)?)))
            .await?;
        tracing::info!("priority classes replaced");
        let st = self.lock();
        Ok(Response::new(pb_classes(&st)))
    }

    async fn list_priority_classes(
        &self,
        req: Request<pb::ListPriorityClassesRequest>,
    ) -> Result<Response<pb::PriorityClasses>, Status> {
        self.who(&req)?;
        let st = self.lock();
        Ok(Response::new(pb_classes(&st)))
    }
}

#[tonic::async_trait]
impl pb::jobs_server::Jobs for Server {
    async fn submit_job(
        &self,
        req: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let t0 = std::time::Instant::now();
        let who = self.who(&req)?;
        let req = req.into_inner();
        let mut spec: JobSpec = parse_json("spec_json", &req.spec_json)?;
        // The command and environment may come in the spec (as in a job file) or beside it;
        // beside it wins. They are kept beside the spec in the record.
        let command = match std::mem::take(&mut spec.command) {
            c if req.command.is_empty() => c,
            _ => req.command,
        };
        let mut env: BTreeMap<String, String> = std::mem::take(&mut spec.env);
        env.extend(req.env);
        if let Some(c) = &who {
            let st = self.lock();
            // An unknown queue is left to validation, which names the field.
            if st.queues.contains_key(&spec.queue) && !c.may_use(&st.queues, &spec.queue) {
                return Err(Status::permission_denied(format!(
                    "spec_json.queue: {:?} is not one of {}'s teams' queues",
                    spec.queue, c.user
                )));
            }
        }
        let name = spec.name.clone();
        let user = who.as_ref().map_or("", |c| c.user.as_str());
        let seq = self.submit_as(spec, command, env, user).await?;
        self.shared
            .metrics
            .submit_latency
            .observe(t0.elapsed().as_secs_f64());
        Ok(Response::new(pb::SubmitJobResponse { name, seq }))
    }

    async fn cancel_job(
        &self,
        req: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::CancelJobResponse>, Status> {
        let who = self.who(&req)?;
        let name = req.into_inner().name;
        let seq = self.visible_job(&who, &name)?.seq;
        // The permission was checked on job #seq; cancel that job only, not one submitted under
        // the same name (perhaps by another team) in between.
        let state = self
            .apply(|st| {
                if st.jobs.get(&name).map(|e| e.rec.seq) != Some(seq) {
                    return Err(ServerError::Conflict(format!(
                        "job {name:?} was replaced while the cancel was being checked; try again"
                    )));
                }
                st.cancel(&name, now_ms())
            })
            .await?;
        Ok(Response::new(pb::CancelJobResponse {
            state: pb_state(state) as i32,
        }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let who = self.who(&req)?;
        let rec = self.visible_job(&who, &req.get_ref().name)?;
        let st = self.lock();
        Ok(Response::new(pb_job(&rec, &st)))
    }

    async fn list_jobs(
        &self,
        req: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let who = self.who(&req)?;
        let req = req.into_inner();
        let states: BTreeSet<i32> = req.states.iter().copied().collect();
        let st = self.lock();
        let mut jobs = Vec::new();
        for name in st.order.values() {
            let Some(e) = st.jobs.get(name) else { continue };
            if !req.queue.is_empty() && e.rec.spec.queue != req.queue {
                continue;
            }
            if who
                .as_ref()
                .is_some_and(|c| !c.may_use(&st.queues, &e.rec.spec.queue))
            {
                continue;
            }
            if !states.is_empty() && !states.contains(&(pb_state(e.rec.state) as i32)) {
                continue;
            }
            jobs.push(pb_job(&e.rec, &st));
            if req.limit > 0 && jobs.len() >= req.limit as usize {
                break;
            }
        }
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    type WatchJobsStream = EventStream;

    async fn watch_jobs(
        &self,
        req: Request<pb::WatchJobsRequest>,
    ) -> Result<Response<Self::WatchJobsStream>, Status> {
        let who = self.who(&req)?;
        let only = req.into_inner().name;
        let rx = self.shared.events.subscribe();
        let server = self.clone();
        let visible = move |queue: &str| {
            who.as_ref().is_none_or(|c| {
                let st = server.lock();
                c.may_use(&st.queues, queue)
            })
        };
        let stream =
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |r| match r {
                Ok(e) if (only.is_empty() || e.job == only) && visible(&e.queue) => {
                    Some(Ok(pb_event(&e)))
                }
                Ok(_) => None,
                Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(n)) => {
                    Some(Err(Status::data_loss(format!(
                        "watcher fell behind: {n} events dropped"
                    ))))
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    type TaskLogsStream = LogStream;

    async fn task_logs(
        &self,
        req: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::TaskLogsStream>, Status> {
        let who = self.who(&req)?;
        let req = req.into_inner();
        let rec = self.visible_job(&who, &req.name)?;
        let group = req
            .group
            .map(|g| {
                u16::try_from(g).map_err(|_| ServerError::Invalid {
                    field: "group".into(),
                    reason: format!("{g} is not a task group index"),
                })
            })
            .transpose()?;
        let attempt = req.attempt.unwrap_or(rec.attempt);
        if attempt > rec.attempt {
            return Err(ServerError::Invalid {
                field: "attempt".into(),
                reason: format!(
                    "job {:?} has had runs 0 to {} so far, not {attempt}",
                    rec.name, rec.attempt
                ),
            }
            .into());
        }
        let want = crate::logs::Wanted {
            job: rec.name.clone(),
            attempt,
            group,
            task: req.task,
            follow: req.follow,
            tail_bytes: req.tail_bytes,
        };
        // The run is over once the job finished or was put back in its queue (a new run).
        let server = self.clone();
        let over: crate::logs::RunOver = Box::new(move || {
            let st = server.lock();
            match st.jobs.get(&rec.name) {
                None => Some(None),
                Some(e) if e.rec.attempt != attempt => Some(None),
                Some(e) if !e.rec.state.is_active() => Some(e.rec.finished_ms),
                Some(_) => None,
            }
        });
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(crate::logs::serve(self.shared.logs.clone(), want, over, tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn explain_job(
        &self,
        req: Request<pb::ExplainJobRequest>,
    ) -> Result<Response<pb::Explanation>, Status> {
        let who = self.who(&req)?;
        let name = req.into_inner().name;
        let rec = self.visible_job(&who, &name)?;
        let mut out = pb::Explanation {
            job: name.clone(),
            state: pb_state(rec.state) as i32,
            reason: rec.reason.clone(),
            position: 0,
            eta_ms: 0,
            unresolvable: false,
            exit_code: rec.exit_code,
        };
        let (id, ops) = self.lock().job_id(&name, now_ms());
        if !ops.is_empty() {
            durable(self.shared.writer.write(ops)).await?;
        }
        if let Some(id) = id {
            let st = self.lock();
            if let Some(x) = st.snap.explain(id) {
                out.position = x.position.map_or(0, |p| p as u32);
                // Backfill's reservation when it made one, else the engine run forward over
                // expected runtimes (bounded: at most ESTIMATE_CYCLES cycles ahead).
                out.eta_ms = x
                    .estimated_start
                    .or_else(|| {
                        (x.phase == gantry_engine::JobPhase::Pending)
                            .then(|| {
                                st.snap
                                    .estimate_start(id, &st.profile, now_ms(), ESTIMATE_CYCLES)
                            })
                            .flatten()
                    })
                    .unwrap_or(0);
                out.unresolvable = x.unresolvable;
                if let Some(r) = x.reason {
                    out.reason = r;
                }
            }
        }
        Ok(Response::new(out))
    }
}

#[tonic::async_trait]
impl pb::nodes_server::Nodes for Server {
    async fn register_node(
        &self,
        req: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::RegisterNodeResponse>, Status> {
        self.admin(&req, "registering nodes")?;
        let node: Node = parse_json("node_json", &req.get_ref().node_json)?;
        let name = node.name.clone();
        let instance = req.get_ref().instance.clone();
        let previous = req.get_ref().previous_instance.clone();
        let address = match req.get_ref().address.trim() {
            "" => req
                .remote_addr()
                .map(|a| a.ip().to_string())
                .unwrap_or_default(),
            a => a.to_string(),
        };
        let lease_ms = self.shared.config.lease_ms;
        let starts = self
            .apply(|st| {
                let now = now_ms();
                st.claim(&name, &instance, &previous, now, lease_ms)?;
                let (_, mut ops) = st.register(node, now)?;
                ops.extend(st.agent_restarted(&name, &instance, now));
                ops.extend(st.set_address(&name, &address));
                st.hold(&name, &instance);
                Ok((st.assignments(&name, &BTreeSet::new()), ops))
            })
            .await
            .inspect_err(|e| {
                if matches!(e, ServerError::Conflict(_)) {
                    tracing::warn!(node = %name, instance = %instance, error = %e, "registration refused");
                }
            })?;
        tracing::info!(node = %name, instance = %instance, "registered");
        Ok(Response::new(pb::RegisterNodeResponse {
            node: name,
            lease_ms: self.shared.config.lease_ms,
            start: starts.into_iter().map(pb_assignment).collect(),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        self.admin(&req, "heartbeating for a node")?;
        let req = req.into_inner();
        let running = req
            .running
            .iter()
            .map(task_key)
            .collect::<Result<BTreeSet<_>, _>>()?;
        if req.leaving {
            let (node, instance) = (req.node.clone(), req.instance.clone());
            self.apply(|st| {
                st.check_instance(&node, &instance)?;
                Ok(((), st.agent_left(&node, now_ms())))
            })
            .await?;
            return Ok(Response::new(pb::HeartbeatResponse {
                lease_ms: self.shared.config.lease_ms,
                start: Vec::new(),
                stop: Vec::new(),
            }));
        }
        if !req.replicas.is_empty() {
            let reports = req
                .replicas
                .iter()
                .filter_map(|r| {
                    let key = task_key(r.task.as_ref()?).ok()?;
                    Some((key, r.ready, r.measured.then_some(r.value)))
                })
                .collect::<Vec<_>>();
            let flipped = {
                let mut st = self.lock();
                st.check_instance(&req.node, &req.instance)?;
                st.record_replicas(&req.node, reports, now_ms())
            };
            if flipped {
                self.shared.changes.send_modify(|v| *v += 1);
            }
        }
        let beat = |s: &Self| -> Result<_, ServerError> {
            let mut st = s.lock();
            st.check_instance(&req.node, &req.instance)?;
            st.heartbeat(&req.node, &running, now_ms())
        };
        // Armed before the first look, so a change between the look and the wait still wakes it.
        let woken = self.shared.work.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let (mut starts, mut stops) = beat(self)?;
        let wait =
            Duration::from_millis(u64::from(req.wait_ms).min(self.shared.config.lease_ms / 2));
        if starts.is_empty() && stops.is_empty() && !wait.is_zero() {
            let end = tokio::time::Instant::now() + wait;
            loop {
                if tokio::time::timeout_at(end, woken.as_mut()).await.is_err() {
                    break;
                }
                woken.set(self.shared.work.notified());
                woken.as_mut().enable();
                (starts, stops) = beat(self)?;
                if !starts.is_empty() || !stops.is_empty() {
                    break;
                }
            }
        }
        let grace = self.shared.config.grace_ms;
        Ok(Response::new(pb::HeartbeatResponse {
            lease_ms: self.shared.config.lease_ms,
            start: starts.into_iter().map(pb_assignment).collect(),
            stop: stops.into_iter().map(|s| pb_stop(s, grace)).collect(),
        }))
    }

    async fn report_task(
        &self,
        req: Request<pb::ReportTaskRequest>,
    ) -> Result<Response<pb::ReportTaskResponse>, Status> {
        self.admin(&req, "reporting tasks for a node")?;
        let req = req.into_inner();
        let key = task_key(req.task.as_ref().ok_or_else(|| ServerError::Invalid {
            field: "task".into(),
            reason: "required".into(),
        })?)?;
        let what = match pb::TaskPhase::try_from(req.phase) {
            Ok(pb::TaskPhase::Started) => Report::Started,
            Ok(pb::TaskPhase::Exited) | Ok(pb::TaskPhase::Stopped) => Report::Exited(req.exit_code),
            Ok(pb::TaskPhase::FailedToStart) => Report::FailedToStart(req.message.clone()),
            _ => {
                return Err(ServerError::Invalid {
                    field: "phase".into(),
                    reason: format!("{} is not a task phase", req.phase),
                }
                .into())
            }
        };
        self.apply(|st| Ok(((), st.report(&req.node, &key, what, now_ms()))))
            .await?;
        Ok(Response::new(pb::ReportTaskResponse {}))
    }

    async fn push_logs(
        &self,
        req: Request<pb::PushLogsRequest>,
    ) -> Result<Response<pb::PushLogsResponse>, Status> {
        self.admin(&req, "pushing task output for a node")?;
        let req = req.into_inner();
        let mut chunks = Vec::with_capacity(req.chunks.len());
        for c in req.chunks {
            let key = task_key(c.task.as_ref().ok_or_else(|| ServerError::Invalid {
                field: "chunks.task".into(),
                reason: "required".into(),
            })?)?;
            gantry_model::check_name("job", &key.job)
                .map_err(|e| ServerError::from_model("chunks.task", e))?;
            // Output of a job the server does not know (forgotten, or never) is dropped.
            if !self.lock().jobs.contains_key(&key.job) {
                continue;
            }
            chunks.push(crate::logs::Pushed {
                key,
                offset: c.offset,
                data: c.data,
                eof: c.eof,
            });
        }
        let logs = self.shared.logs.clone();
        let written = tokio::task::spawn_blocking(move || logs.receive(chunks))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if let Err(e) = written {
            tracing::warn!(node = %req.node, dir = %self.shared.logs.dir().display(), error = %e, "task output could not be written");
            return Err(Status::resource_exhausted(format!(
                "task output could not be written under {}: {e}",
                self.shared.logs.dir().display()
            )));
        }
        Ok(Response::new(pb::PushLogsResponse {}))
    }

    async fn delete_node(
        &self,
        req: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeResponse>, Status> {
        self.admin(&req, "forgetting nodes")?;
        let name = req.into_inner().name;
        self.apply(|st| Ok(((), st.forget_node(&name)?))).await?;
        tracing::info!(node = %name, "forgotten");
        Ok(Response::new(pb::DeleteNodeResponse {}))
    }

    async fn list_nodes(
        &self,
        req: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.who(&req)?;
        let st = self.lock();
        let mut used: BTreeMap<&str, (u32, u32)> = BTreeMap::new();
        for name in &st.running {
            if let Some(e) = st.jobs.get(name) {
                for t in &e.rec.tasks {
                    used.entry(t.node.as_str()).or_default().1 += 1;
                }
            }
        }
        // GPUs held in whole or in part, each counted once (two halves of one GPU are one),
        // from the snapshot as the dashboard counts them.
        let held: BTreeMap<String, u32> = st
            .snap
            .gpu_report()
            .into_iter()
            .map(|n| {
                let k = n.gpus_held();
                (n.name, k)
            })
            .collect();
        for (node, k) in &held {
            if let Some(u) = used.get_mut(node.as_str()) {
                u.0 = *k;
            }
        }
        let nodes = st
            .nodes
            .iter()
            .map(|(name, n)| {
                let models: BTreeSet<String> =
                    n.rec.node.devices.iter().map(|d| d.model.clone()).collect();
                let (gpus_used, tasks) = used.get(name.as_str()).copied().unwrap_or_default();
                pb::NodeStatus {
                    name: name.clone(),
                    ready: n.ready,
                    gpus: n.rec.node.devices.len() as u32,
                    gpus_used,
                    models: models.into_iter().collect(),
                    last_heartbeat_ms: n.last_seen_ms,
                    running_tasks: tasks,
                }
            })
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Server {
    async fn get_status(
        &self,
        req: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.who(&req)?;
        let st = self.lock();
        let totals = st.snap.gpu_totals();
        let running = st.running.len() as u64;
        let pending = st
            .jobs
            .values()
            .filter(|e| e.rec.state == JobState::Pending)
            .count() as u64;
        Ok(Response::new(pb::ClusterStatus {
            nodes: st.nodes.len() as u32,
            nodes_ready: st.nodes.values().filter(|n| n.ready).count() as u32,
            gpus: totals.devices,
            gpus_allocated_milli: totals.allocated_milli,
            pending_jobs: pending,
            running_jobs: running,
            cycles: st.counters.cycles,
            last_cycle_us: st.counters.last_cycle_us,
        }))
    }
}
