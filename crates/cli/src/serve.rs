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
    /// Milliseconds between a change and the scheduling cycle it triggers.
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
    #[arg(long, env = "GANTRY_TLS_CA", requires = "tls_cert")]
    tls_ca: Option<PathBuf>,
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
    let mut config = Config::new(args.data_dir);
    config.listen = args.listen;
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
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let running = Server::start(config).await?;
        say!(json_logs, "gantry serve: listening on {}", running.addr);
        if let Some(m) = running.metrics_addr {
            say!(json_logs, "gantry serve: metrics on http://{m}/metrics");
        }
        if !args.no_local_agent {
            let name = crate::agent::host_name();
            let node = match &args.fake_gpus {
                Some(spec) => crate::agent::fake_gpus(&name, spec)?,
                None => match crate::agent::inventory(&name, None, None) {
                    Ok(n) => n,
                    Err(e) => {
                        say!(
                            json_logs,
                            "gantry serve: {e:#}; the local agent uses 8 fake H100-80GB GPUs"
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
            };
            tokio::spawn(async move {
                if let Err(e) = gantry_server::agent::run_agent(cfg, std::future::pending()).await {
                    tracing::error!(error = %e, "gantry serve: local agent stopped");
                }
            });
        }
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                r?;
                say!(json_logs, "gantry serve: interrupted, stopping");
                running.shutdown().await?;
            }
        }
        Ok(())
    })
}
