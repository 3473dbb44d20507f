//! `gantry serve`: the standalone control plane on this machine (see `gantry-server`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use gantry_engine::Profile;
use gantry_server::{Config, Server};

/// Flags of `gantry serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where the store lives (created if missing).
    #[arg(long, default_value = "gantry-data")]
    data_dir: PathBuf,
    /// Address of the gRPC API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:7071")]
    metrics_listen: SocketAddr,
    /// Milliseconds without a heartbeat after which a node is lost and its jobs requeued.
    #[arg(long, default_value_t = 10_000)]
    lease_ms: u64,
    /// Scheduling cycles start at most once per this many milliseconds; a change after a
    /// quiet spell starts one at once, changes within the period wait for its end.
    #[arg(long, default_value_t = 20)]
    debounce_ms: u64,
    /// Milliseconds a stopped task gets between SIGTERM and SIGKILL.
    #[arg(long, default_value_t = 10_000)]
    grace_ms: u64,
    /// Engine profile: gantry, best-fit or fifo.
    #[arg(long, default_value = "gantry")]
    profile: String,
    /// Do not create the `default` queue (no quota) in an empty store.
    #[arg(long)]
    no_default_queue: bool,
    /// Do not run a node agent in this process (nodes then join with `gantry agent`).
    #[arg(long)]
    no_local_agent: bool,
    /// Bearer tokens file (users, teams, roles); without it every request is allowed.
    #[arg(long)]
    tokens: Option<PathBuf>,
    /// GPUs of the local agent when NVML finds no driver (or always, when given): `8xH100-80GB`.
    #[arg(long)]
    fake_gpus: Option<String>,
    /// Serve the API over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA certificate (PEM) the local agent checks the server's certificate against (default:
    /// --tls-cert itself, right for a self-signed certificate).
    // No `GANTRY_TLS_CA` here: that variable is for clients, and a shell that exports it must
    // still be able to start a plain-text server.
    #[arg(long, requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
    /// Submit a few built-in example jobs (short sleeps: a single task, a gang, and a job that
    /// waits on its queue's quota) so something is scheduled with no other setup.
    #[arg(long)]
    demo: bool,
    /// Hours a finished job (succeeded, failed, cancelled) is kept before it is deleted from the
    /// store (0: forever).
    #[arg(long, default_value_t = 168)]
    retain_finished_hours: u64,
    /// The server keeps a copy of each task run's output (under `<data dir>/logs`, for
    /// `gantry logs`) up to this many MiB; past that it rotates once (so at most twice this).
    #[arg(long, default_value_t = 16, value_name = "MIB")]
    log_max_mib: u64,
    /// Open API connections one IP address may hold; more are closed at once.
    #[arg(long, default_value_t = 256)]
    max_conns_per_peer: usize,
    /// Milliseconds a new API connection may stay silent before it is closed.
    #[arg(long, default_value_t = 10_000)]
    silent_conn_timeout_ms: u64,
}

/// The built-in demo: a queue with a small quota and a handful of jobs.
const DEMO: &str = include_str!("demo/demo.yaml");

#[derive(serde::Deserialize)]
struct Demo {
    queues: Vec<gantry_model::QueueSpec>,
    jobs: Vec<gantry_model::JobSpec>,
}

/// A request as the local admin makes it (with the admin token when tokens are checked).
fn local_request<T>(msg: T, token: Option<&str>) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    Ok(req)
}

/// Create the demo queue and submit the demo jobs through the server's own services;
/// returns what happened to each job.
async fn submit_demo(
    server: &gantry_server::Server,
    token: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    use gantry_api::gantry::v1 as pb;
    use pb::jobs_server::Jobs;
    use pb::queues_server::Queues;
    let demo: Demo = serde_yaml::from_str(DEMO).context("the built-in demo does not parse")?;
    for q in demo.queues {
        let req = pb::QueueRequest {
            spec_json: serde_json::to_string(&q)?,
        };
        match server.create_queue(local_request(req, token)?).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::AlreadyExists => {}
            Err(s) => anyhow::bail!("demo queue {}: {}", q.name, s.message()),
        }
    }
    let mut out = Vec::new();
    for spec in demo.jobs {
        let name = spec.name.clone();
        let req = crate::remote::job_request(spec)?;
        match server.submit_job(local_request(req, token)?).await {
            Ok(_) => out.push(format!("{name} submitted")),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                out.push(format!("{name} already there"))
            }
            Err(s) => out.push(format!("{name} refused: {}", s.message())),
        }
    }
    Ok(out)
}

/// Say something to the person who started the server: a plain line on stderr, or, with
/// `--log-format json`, an info event (so every line of stderr is one JSON object).
macro_rules! say {
    ($json:expr, $($arg:tt)*) => {
        if $json {
            tracing::info!("{}", format!($($arg)*));
        } else {
            eprintln!($($arg)*);
        }
    };
}

/// Run until interrupted. With `json_logs`, what it says goes through `tracing` as JSON.
pub fn run(args: ServeArgs, json_logs: bool) -> anyhow::Result<()> {
    let profile = Profile::named(&args.profile)
        .with_context(|| format!("--profile: unknown profile {:?}", args.profile))?;
    let data_dir = args.data_dir.clone();
    // The local agent records its tasks' process groups here, so a restart after `kill -9`
    // stops what the dead server's agent left running before any task is handed out again.
    let agent_state = std::path::absolute(&args.data_dir)
        .with_context(|| format!("--data-dir {}", args.data_dir.display()))?
        .join("agent-tasks");
    let mut config = Config::new(args.data_dir.clone());
    config.listen = args.listen;
    if args.max_conns_per_peer == 0 {
        anyhow::bail!("--max-conns-per-peer: must be at least 1");
    }
    if args.silent_conn_timeout_ms == 0 {
        anyhow::bail!("--silent-conn-timeout-ms: must be at least 1");
    }
    config.retain_finished_ms = args.retain_finished_hours.saturating_mul(3_600_000);
    config.log_cap_bytes = args.log_max_mib.saturating_mul(1 << 20);
    config.conn_limits = gantry_server::conn::ConnLimits {
        per_peer: args.max_conns_per_peer,
        first_byte: std::time::Duration::from_millis(args.silent_conn_timeout_ms),
    };
    // systemd's default soft limit (1,024 files) is what idle connections used to exhaust.
    match gantry_server::conn::raise_nofile() {
        Ok((before, after)) if after > before => {
            tracing::info!(before, after, "raised the open-file limit")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    config.lease_ms = args.lease_ms;
    config.debounce_ms = args.debounce_ms;
    config.grace_ms = args.grace_ms;
    config.profile = profile;
    config.default_queue = !args.no_default_queue;
    config.metrics_listen = Some(args.metrics_listen);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(gantry_server::TlsIdentity {
            cert_pem: crate::remote::read_pem("--tls-cert", cert)?,
            key_pem: crate::remote::read_pem("--tls-key", key)?,
        });
    }
    let local_ca = match (&args.tls_ca, &config.tls) {
        (Some(p), _) => Some(crate::remote::read_pem("--tls-ca", p)?),
        (None, Some(id)) => Some(id.cert_pem.clone()),
        (None, None) => None,
    };
    if let Some(path) = &args.tokens {
        config.auth = Some(std::sync::Arc::new(gantry_server::auth::Auth::load(path)?));
    }
    let local_token = config
        .auth
        .as_ref()
        .and_then(|a| a.admin_token().map(str::to_string));
    let demo_token = local_token.clone();
    let tls_on = config.tls.is_some();
    let log_cap_bytes = config.log_cap_bytes;
    // The local agent keeps its copy of task output as long as the server keeps the records.
    let log_retention = std::time::Duration::from_millis(config.retain_finished_ms.max(3_600_000));
    if config.auth.is_some() && !tls_on && !config.listen.ip().is_loopback() {
        say!(
            json_logs,
            "gantry serve: warning: --tokens without TLS on {}: bearer tokens cross the network in clear text; add --tls-cert/--tls-key",
            config.listen
        );
    }
    if config.auth.is_some() && config.metrics_listen.is_some_and(|m| !m.ip().is_loopback()) {
        say!(
            json_logs,
            "gantry serve: warning: --tokens with the dashboard on {} (plain HTTP): the session cookie crosses the network in clear text; keep --metrics-listen on loopback behind a TLS proxy",
            args.metrics_listen
        );
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let running = Server::start(config).await?;
        say!(json_logs, "gantry serve: listening on {}", running.addr);
        let dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
        say!(
            json_logs,
            "gantry serve: data dir {} (store {})",
            dir.display(),
            dir.join("gantry.redb").display()
        );
        if let Some(m) = running.metrics_addr {
            say!(json_logs, "gantry serve: metrics on http://{m}/metrics");
            say!(json_logs, "gantry serve: dashboard on http://{m}/");
        }
        let mut local_agent = None;
        if !args.no_local_agent {
            let name = crate::agent::host_name();
            let node = match &args.fake_gpus {
                Some(spec) => crate::agent::fake_gpus(&name, spec)?,
                None => match crate::agent::inventory(&name, None, None) {
                    Ok(n) => n,
                    Err(e) => {
                        say!(
                            json_logs,
                            "gantry serve: {}; the local agent uses 8 fake H100-80GB GPUs (--fake-gpus sets others)",
                            e.to_string().split(": use --fake-gpus").next().unwrap_or_default()
                        );
                        crate::agent::fake_gpus(&name, "8xH100-80GB")?
                    }
                },
            };
            let mut addr = running.addr;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            say!(
                json_logs,
                "gantry serve: local agent {} with {} GPUs",
                node.name,
                node.devices.len()
            );
            let cfg = gantry_server::agent::AgentConfig {
                server: gantry_server::client::uri(&addr.to_string(), local_ca.is_some())?,
                node,
                token: local_token,
                tls_ca: local_ca,
                state_dir: Some(agent_state),
                advertise: None,
                log_cap_bytes,
                log_retention,
            };
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let stopped = async {
                    let _ = stopped.await;
                };
                if let Err(e) = gantry_server::agent::run_agent(cfg, stopped).await {
                    tracing::error!(error = %e, "gantry serve: local agent stopped");
                }
            });
            local_agent = Some((stop, task));
        }
        if args.demo {
            for line in submit_demo(&running.server, demo_token.as_deref()).await? {
                say!(json_logs, "gantry serve: demo: {line}");
            }
        }
        if !json_logs {
            let at = if running.addr == SocketAddr::from(([127, 0, 0, 1], 7070)) {
                String::new()
            } else {
                format!(" --server {}", running.addr)
            };
            let tls = if tls_on { " --tls-ca CA.pem" } else { "" };
            eprintln!(
                "\nNext, in another terminal:\n  \
                 gantry submit JOB.yaml{at}{tls}    submit a job file (see crates/server/README.md)\n  \
                 gantry jobs{at}{tls}               what runs, what waits and why\n  \
                 gantry explain JOB{at}{tls}        why a job waits and when it should start\n  \
                 gantry top{at}{tls}                a live view (Ctrl-C quits)\n\
                 Ctrl-C (or SIGTERM) stops the server; its state stays in the data dir.\n"
            );
        }
        let fatal = tokio::select! {
            sig = crate::signal::terminated() => {
                say!(json_logs, "gantry serve: {sig}, stopping");
                None
            }
            e = running.fatal() => {
                say!(json_logs, "gantry serve: {e}");
                Some(e)
            }
        };
        // The local agent stops its tasks' whole process trees before the server goes
        // (dropping it would kill only each task's first process).
        if let Some((stop, task)) = local_agent {
            let _ = stop.send(());
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), task).await;
        }
        running.shutdown().await?;
        match fatal {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    })
}
