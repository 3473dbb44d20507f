//! `gantry-device-plugin`: run the device plugin, or print the node's inventory or labels.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gantry_device_plugin::fake::FakeInventory;
use gantry_device_plugin::handoff::{AssignmentBook, HandoffSource, MismatchPolicy, NoHandoff};
use gantry_device_plugin::nvml::NvmlInventory;
use gantry_device_plugin::plugin::DeviceListStrategy;
use gantry_device_plugin::publish::{FilePublisher, Format, Publisher, StdoutPublisher};
use gantry_device_plugin::{
    initial_snapshot, labels, serve, AllocateOptions, HealthConfig, Inventory, KubeletConfig,
    MigStrategy, Settings,
};
use gantry_model::quantity::Quantity;

#[derive(Debug, Parser)]
#[command(
    name = "gantry-device-plugin",
    version,
    about = "gantry's GPU device plugin: NVML or fake inventory, health, kubelet API v1beta1, scheduler hand-off"
)]
struct Cli {
    /// Use a fake inventory from this YAML file instead of NVML (development and tests).
    #[arg(long, global = true, value_name = "FILE")]
    fake: Option<PathBuf>,
    /// Path of the NVML library (default: libnvidia-ml.so.1 from the loader path).
    #[arg(long, global = true, value_name = "PATH")]
    nvml_lib: Option<OsString>,
    /// Node name (default: $NODE_NAME, else the host name). With --fake, an explicit name or
    /// $NODE_NAME replaces the file's `node` (and so its uuids); otherwise the file's is used.
    #[arg(long, global = true)]
    node_name: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the kubelet device-plugin API until SIGINT/SIGTERM.
    Run(Box<RunArgs>),
    /// Print the node's exact inventory as the scheduler sees it (a gantry Node).
    Inventory {
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Print the node labels (GPU-feature-discovery style).
    Labels {
        /// MIG strategy the labels describe.
        #[arg(long, value_enum, default_value_t = MigStrategy::None)]
        mig_strategy: MigStrategy,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Json,
    Yaml,
    Table,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ListStrategy {
    /// NVIDIA_VISIBLE_DEVICES=<ids>
    Env,
    /// CDI device names in the Allocate response
    Cdi,
}

fn duration(s: &str) -> Result<Duration, String> {
    Quantity::from(s).duration_ms().map(Duration::from_millis)
}

/// A comma-separated XID list (a newtype so clap takes it as one value, not many).
#[derive(Debug, Clone)]
struct XidList(Vec<u64>);

fn xids(s: &str) -> Result<XidList, String> {
    if s.trim().is_empty() {
        return Ok(XidList(Vec::new()));
    }
    s.split(',')
        .map(|x| {
            x.trim()
                .parse::<u64>()
                .map_err(|_| format!("{x:?} is not an XID number"))
        })
        .collect::<Result<Vec<u64>, String>>()
        .map(XidList)
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The kubelet's device-plugin directory.
    #[arg(long, default_value = "/var/lib/kubelet/device-plugins")]
    device_plugin_dir: PathBuf,
    /// How MIG slices are advertised.
    #[arg(long, value_enum, default_value_t = MigStrategy::None)]
    mig_strategy: MigStrategy,
    /// How Allocate names devices to the runtime.
    #[arg(long, value_enum, default_value_t = ListStrategy::Env)]
    device_list_strategy: ListStrategy,
    /// CDI kind for --device-list-strategy cdi.
    #[arg(long, default_value = "nvidia.com/gpu")]
    cdi_kind: String,
    /// Do not return device nodes (/dev/nvidia*) in Allocate.
    #[arg(long)]
    no_device_specs: bool,
    /// Host directory of the device nodes.
    #[arg(long, default_value = "/dev")]
    dev_root: String,
    /// XIDs that do not make a device unhealthy (comma-separated; empty for none).
    #[arg(long, value_parser = xids, default_value = "13,31,43,45,68,109")]
    ignored_xids: XidList,
    /// Quiet time after the last event before a device is probed and returned to Healthy.
    #[arg(long, value_parser = duration, default_value = "60s")]
    quiet_period: Duration,
    /// How often a failing recovery probe is retried.
    #[arg(long, value_parser = duration, default_value = "5s")]
    probe_interval: Duration,
    /// How often the devices are read again to notice MIG reconfiguration (0 = only at start).
    #[arg(long, value_parser = duration, default_value = "60s")]
    rediscover_interval: Duration,
    /// How often kubelet.sock and our sockets are checked (re-registration).
    #[arg(long, value_parser = duration, default_value = "1s")]
    watch_interval: Duration,
    /// Standalone hand-off: JSON file of the scheduler's assignments (written by the node agent).
    #[arg(long, value_name = "FILE")]
    assignments: Option<PathBuf>,
    /// Kubernetes hand-off: read the scheduler's choice from the `gantry.dev/devices` annotation of
    /// this node's pending pods (needs the `kube` feature; in-cluster config or kubeconfig).
    #[arg(long)]
    kube_handoff: bool,
    /// What Allocate does when the kubelet's devices differ from a pending hand-off.
    #[arg(long, value_enum, default_value_t = MismatchPolicy::Reject)]
    handoff_mismatch: MismatchPolicy,
    /// Publish the inventory on every change: `stdout`, `kube` (the `NodeInventory` object named
    /// after this node, and GPU labels on its Kubernetes Node; needs the `kube` feature) or a
    /// file path.
    #[arg(long, value_name = "stdout|kube|FILE")]
    publish: Option<String>,
    /// Format of published inventories.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    publish_format: Format,
    /// How often `--publish kube` reports this plugin alive in the NodeInventory's status
    /// (`0s`: never). The scheduler stops placing new pods on a node whose inventory has not
    /// heartbeated for its `--inventory-stale-after-secs` (default 90 s).
    #[arg(long, value_parser = duration, default_value = "30s")]
    heartbeat: Duration,
}

fn node_name(cli: &Cli) -> String {
    cli.node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn open_inventory(cli: &Cli) -> Result<Arc<dyn Inventory>> {
    Ok(match &cli.fake {
        Some(path) => {
            let explicit = cli
                .node_name
                .clone()
                .or_else(|| std::env::var("NODE_NAME").ok());
            Arc::new(FakeInventory::load_as(path, explicit.as_deref())?)
        }
        None => Arc::new(NvmlInventory::open(
            cli.nvml_lib.as_deref(),
            node_name(cli),
        )?),
    })
}

fn print_table(node: &gantry_model::Node, inv: &gantry_device_plugin::NodeInventory) {
    let mut t = comfy_table::Table::new();
    t.set_header([
        "#",
        "uuid",
        "model",
        "memory",
        "numa",
        "pci",
        "nvlink peers",
        "mig",
        "health",
    ]);
    for (g, d) in inv.gpus.iter().zip(&node.devices) {
        let mig = match &g.mig {
            None => "-".to_string(),
            Some(m) => {
                let mode = match (m.current, m.pending) {
                    (true, true) => "on",
                    (false, false) => "off",
                    (true, false) => "on (off after reset)",
                    (false, true) => "off (on after reset)",
                };
                let slices: Vec<String> = m
                    .slices
                    .iter()
                    .map(|s| format!("{}@{}", s.profile, s.start))
                    .collect();
                if slices.is_empty() {
                    mode.to_string()
                } else {
                    format!("{mode}: {}", slices.join(" "))
                }
            }
        };
        t.add_row([
            g.index.to_string(),
            g.uuid.clone(),
            g.model.clone(),
            format!("{} MiB", g.memory_mib),
            g.numa.map_or("-".into(), |n| n.to_string()),
            g.pci_bus_id.clone(),
            d.nvlink_peers.len().to_string(),
            mig,
            format!("{:?}", g.health),
        ]);
    }
    println!(
        "node {} ({} GPUs, {} mCPU, {} MiB){}",
        node.name,
        inv.gpus.len(),
        node.cpu_milli,
        node.memory_mib,
        inv.driver
            .as_deref()
            .map(|d| format!(", driver {d}"))
            .unwrap_or_default()
    );
    println!("{t}");
}

#[cfg(feature = "kube")]
fn kube_handoff(rt: &tokio::runtime::Runtime, node: String) -> Result<Arc<dyn HandoffSource>> {
    let client = rt
        .block_on(kube::Client::try_default())
        .context("connect to the Kubernetes API for --kube-handoff")?;
    Ok(Arc::new(
        gantry_device_plugin::kube_handoff::KubeHandoff::new(client, node, Duration::from_secs(5)),
    ))
}

#[cfg(feature = "kube")]
fn kube_publisher(
    rt: &tokio::runtime::Runtime,
    node: String,
    strategy: MigStrategy,
) -> Result<Arc<dyn Publisher>> {
    let client = rt
        .block_on(kube::Client::try_default())
        .context("connect to the Kubernetes API for --publish kube")?;
    Ok(Arc::new(
        gantry_device_plugin::kube_publish::KubeNodePublisher::new(
            client,
            node,
            strategy,
            Duration::from_secs(5),
        ),
    ))
}

#[cfg(not(feature = "kube"))]
fn kube_publisher(
    _: &tokio::runtime::Runtime,
    _: String,
    _: MigStrategy,
) -> Result<Arc<dyn Publisher>> {
    anyhow::bail!("--publish kube needs a build with `--features kube`")
}

#[cfg(not(feature = "kube"))]
fn kube_handoff(_: &tokio::runtime::Runtime, _: String) -> Result<Arc<dyn HandoffSource>> {
    anyhow::bail!("--kube-handoff needs a build with `--features kube`")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let sub = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => sub.init(),
        LogFormat::Json => sub.json().init(),
    }
    let inventory = open_inventory(&cli)?;
    match &cli.command {
        Command::Inventory { output } => {
            let snap = initial_snapshot(inventory.as_ref(), MigStrategy::None)?;
            let node = snap.inventory.to_model_node();
            match output {
                Output::Json => print!(
                    "{}",
                    Format::Json.render(&node).map_err(anyhow::Error::msg)?
                ),
                Output::Yaml => print!(
                    "{}",
                    Format::Yaml.render(&node).map_err(anyhow::Error::msg)?
                ),
                Output::Table => print_table(&node, &snap.inventory),
            }
            Ok(())
        }
        Command::Labels { mig_strategy } => {
            let inv = inventory.discover()?;
            for (k, v) in labels::node_labels(&inv, *mig_strategy) {
                println!("{k}={v}");
            }
            Ok(())
        }
        Command::Run(args) => {
            let mut kubelet = KubeletConfig::new(&args.device_plugin_dir);
            kubelet.watch_interval = args.watch_interval;
            let settings = Settings {
                kubelet,
                strategy: args.mig_strategy,
                health: HealthConfig {
                    ignored_xids: args.ignored_xids.0.iter().copied().collect(),
                    quiet_period: args.quiet_period,
                    probe_interval: args.probe_interval,
                    rediscover_interval: (!args.rediscover_interval.is_zero())
                        .then_some(args.rediscover_interval),
                },
                allocate: AllocateOptions {
                    device_list: match args.device_list_strategy {
                        ListStrategy::Env => DeviceListStrategy::Env,
                        ListStrategy::Cdi => DeviceListStrategy::Cdi {
                            kind: args.cdi_kind.clone(),
                        },
                    },
                    device_specs: !args.no_device_specs,
                    dev_root: args.dev_root.clone(),
                    mismatch: args.handoff_mismatch,
                },
                heartbeat: args.heartbeat,
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("start the async runtime")?;
            let handoff: Arc<dyn HandoffSource> = match (&args.assignments, args.kube_handoff) {
                (Some(_), true) => {
                    anyhow::bail!("--assignments and --kube-handoff exclude each other")
                }
                (Some(p), false) => Arc::new(AssignmentBook::with_file(p)),
                (None, true) => kube_handoff(&rt, node_name(&cli))?,
                (None, false) => Arc::new(NoHandoff),
            };
            let publisher: Option<Arc<dyn Publisher>> = match args.publish.as_deref() {
                None => None,
                Some("stdout") | Some("-") => Some(Arc::new(StdoutPublisher {
                    format: args.publish_format,
                })),
                Some("kube") => Some(kube_publisher(&rt, node_name(&cli), args.mig_strategy)?),
                Some(path) => Some(Arc::new(FilePublisher {
                    path: PathBuf::from(path),
                    format: args.publish_format,
                })),
            };
            rt.block_on(serve(
                inventory,
                settings,
                handoff,
                publisher,
                shutdown_signal(),
            ))?;
            Ok(())
        }
    }
}
