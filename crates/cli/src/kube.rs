//! `gantry kube`: Kubernetes mode. `crds` prints (or writes) the custom resource definitions;
//! `controller` runs gantry as a secondary scheduler in a cluster.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use gantry_engine::Profile;
use gantry_kube::{ControllerConfig, Metrics};

/// Kubernetes mode.
#[derive(Debug, Args)]
pub struct KubeArgs {
    #[command(subcommand)]
    command: KubeCommand,
}

#[derive(Debug, Subcommand)]
enum KubeCommand {
    /// Print the Queue, PodGroup and NodeInventory CRDs as YAML (or write them with --out).
    Crds {
        /// Write `gantry.dev.yaml` into this directory instead of printing.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the scheduler: watch pods with `schedulerName: gantry`, bind them, keep statuses.
    Controller(ControllerArgs),
}

/// Flags of `gantry kube controller`.
#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Pods with this `spec.schedulerName` are scheduled by gantry.
    #[arg(long, default_value = "gantry")]
    scheduler_name: String,
    /// Client-side throttle of API writes, requests per second (0: none).
    #[arg(long, default_value_t = 50.0)]
    qps: f64,
    /// Writes allowed at once above the QPS.
    #[arg(long, default_value_t = 100)]
    burst: u32,
    /// Events per second, a bucket of their own so events never delay a bind (0: none).
    #[arg(long, default_value_t = 50.0)]
    event_qps: f64,
    /// Events allowed at once above --event-qps.
    #[arg(long, default_value_t = 100)]
    event_burst: u32,
    /// Longest one API call may take, in ms, before it counts as failed.
    #[arg(long, default_value_t = 10_000)]
    api_timeout_ms: u64,
    /// Seconds the scheduling loop may go without turning before /readyz fails and the leader
    /// gives up its lease.
    #[arg(long, default_value_t = 30)]
    stall_after_secs: u64,
    /// Seconds a NodeInventory may go without a new heartbeat from its device plugin before its
    /// node takes no new pods (0: never).
    #[arg(long, default_value_t = 90)]
    inventory_stale_after_secs: u64,
    /// Hold a Lease so that only one replica schedules.
    #[arg(long)]
    leader_elect: bool,
    /// Namespace of the Lease.
    #[arg(long, default_value = "gantry-system")]
    lease_namespace: String,
    /// Name of the Lease.
    #[arg(long, default_value = "gantry-scheduler")]
    lease_name: String,
    /// Identity in the Lease (default: $POD_NAME, else the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Lease duration in seconds.
    #[arg(long, default_value_t = 15)]
    lease_duration_secs: u64,
    /// Quiet time after a change before a cycle, in ms.
    #[arg(long, default_value_t = 20)]
    debounce_ms: u64,
    /// Engine profile: gantry, best-fit or fifo.
    #[arg(long, default_value = "gantry")]
    profile: String,
    /// Where `/metrics`, `/healthz`, `/readyz` and the read-only web dashboard (`/`) listen.
    #[arg(long, default_value = "0.0.0.0:7071")]
    metrics_listen: String,
}

/// Run `gantry kube …`.
pub fn run(args: KubeArgs) -> anyhow::Result<()> {
    match args.command {
        KubeCommand::Crds { out } => {
            let yaml = gantry_kube::crd::crds_yaml()?;
            match out {
                None => print!("{yaml}"),
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("--out {}", dir.display()))?;
                    let path = dir.join("gantry.dev.yaml");
                    std::fs::write(&path, yaml)
                        .with_context(|| format!("--out: write {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
            }
            Ok(())
        }
        KubeCommand::Controller(a) => controller(a),
    }
}

fn controller(a: ControllerArgs) -> anyhow::Result<()> {
    let profile = Profile::named(&a.profile).with_context(|| {
        format!(
            "--profile: unknown profile {:?} (gantry, best-fit, fifo)",
            a.profile
        )
    })?;
    if a.burst == 0 {
        anyhow::bail!("--burst: must be at least 1");
    }
    if !a.qps.is_finite() || a.qps < 0.0 {
        anyhow::bail!("--qps: must be a non-negative number, got {}", a.qps);
    }
    if !a.event_qps.is_finite() || a.event_qps < 0.0 {
        anyhow::bail!(
            "--event-qps: must be a non-negative number, got {}",
            a.event_qps
        );
    }
    if a.event_burst == 0 {
        anyhow::bail!("--event-burst: must be at least 1");
    }
    if a.api_timeout_ms == 0 {
        anyhow::bail!("--api-timeout-ms: must be at least 1");
    }
    if a.stall_after_secs == 0 {
        anyhow::bail!("--stall-after-secs: must be at least 1");
    }
    let identity = a.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME").unwrap_or_else(|_| format!("gantry-{}", std::process::id()))
    });
    let mut cfg = ControllerConfig::new(identity);
    cfg.scheduler_name = a.scheduler_name;
    cfg.qps = a.qps;
    cfg.burst = a.burst;
    cfg.event_qps = a.event_qps;
    cfg.event_burst = a.event_burst;
    cfg.api_timeout = Duration::from_millis(a.api_timeout_ms);
    cfg.stall_after = Duration::from_secs(a.stall_after_secs);
    cfg.inventory_stale_after = Duration::from_secs(a.inventory_stale_after_secs);
    cfg.leader_elect = a.leader_elect;
    cfg.lease_namespace = a.lease_namespace;
    cfg.lease_name = a.lease_name;
    cfg.lease_duration = Duration::from_secs(a.lease_duration_secs.max(2));
    cfg.renew_every = cfg.lease_duration / 5;
    cfg.debounce = Duration::from_millis(a.debounce_ms);
    cfg.profile = profile;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let config = kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster service account or KUBECONFIG)")?;
        let client = gantry_kube::controller::client(config)?;
        let metrics = Metrics::new();
        let listener = tokio::net::TcpListener::bind(&a.metrics_listen)
            .await
            .with_context(|| format!("--metrics-listen {}", a.metrics_listen))?;
        let (pages, publisher) = gantry_kube::dashboard::channel();
        let web = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| a.metrics_listen.clone());
        tokio::spawn(gantry_kube::metrics::serve_with(
            listener,
            metrics.clone(),
            gantry_kube::dashboard::router(pages),
        ));
        tracing::info!(scheduler = %cfg.scheduler_name, identity = %cfg.identity, qps = cfg.qps, dashboard = %format!("http://{web}/"), "gantry kube controller starting");
        gantry_kube::run_with(client, cfg, metrics, Some(publisher), async {
            let sig = crate::signal::terminated().await;
            tracing::info!(signal = sig, "stopping; releasing the lease");
        })
        .await?;
        Ok(())
    })
}
