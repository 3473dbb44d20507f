//! `gantry agent`: the node agent. Finds this node's GPUs with the device plugin's inventory
//! (NVML, or a fake one from a YAML file or `--fake-gpus 8xH100-80GB`), registers them with
//! `gantry serve`, and runs the tasks assigned here (see `gantry_server::agent`).

use std::path::PathBuf;

use anyhow::Context;
use gantry_device_plugin::fake::FakeInventory;
use gantry_device_plugin::inventory::Inventory;
use gantry_device_plugin::nvml::NvmlInventory;
use gantry_model::Node;
use gantry_server::agent::{run_agent, AgentConfig};

/// Flags of `gantry agent`.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    /// Address of `gantry serve`.
    #[arg(long, env = "GANTRY_SERVER", default_value = "127.0.0.1:7070")]
    server: String,
    /// Node name (default: the host name, or the node a --fake-inventory file names).
    #[arg(long)]
    node_name: Option<String>,
    /// Fake GPUs instead of NVML: `<count>x<model>`, e.g. `8xH100-80GB`.
    #[arg(long, conflicts_with = "fake_inventory")]
    fake_gpus: Option<String>,
    /// Fake inventory file (the device plugin's fake YAML) instead of NVML.
    #[arg(long)]
    fake_inventory: Option<PathBuf>,
    /// Bearer token (an admin's) when the server checks tokens.
    #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) of a server that serves TLS; the agent then connects with https.
    #[arg(long, env = "GANTRY_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Where the agent records its tasks' process groups (in a subdirectory per node name); on
    /// start it kills those a crashed agent of the same node left running, whatever directory
    /// it is started from. Default: $XDG_STATE_HOME/gantry/agent if set, else
    /// /var/lib/gantry/agent as root, else ~/.local/state/gantry/agent.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Where this node's peers reach it (a gang's MASTER_ADDR when its rank 0 runs here);
    /// default: the address the server sees this agent connect from.
    #[arg(long, value_name = "HOST")]
    advertise_addr: Option<String>,
    /// A label on this node (`--label disktype=ssd`; repeat for more): job task groups select
    /// it with `node_selector` or `node_affinity`.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// A taint on this node (`--taint qa-dedicated=yes:NoSchedule`; repeat for more): only task
    /// groups that tolerate it run here.
    #[arg(long = "taint", value_name = "KEY=VALUE:EFFECT")]
    taints: Vec<String>,
    /// Each task run's output (stdout and stderr) is kept on this node under
    /// `<state dir>/logs`, up to this many MiB; past that it rotates once (so at most twice
    /// this). It is also sent to the server for `gantry logs`.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    log_max_mib: u64,
    /// A job's output on this node is deleted once not written to for this many hours.
    #[arg(long, default_value_t = 168, value_name = "HOURS")]
    log_retention_hours: u64,
}

/// Add `--label` and `--taint` values to a node, naming the flag and the value when one is bad.
pub fn add_labels_and_taints(
    node: &mut Node,
    labels: &[String],
    taints: &[String],
) -> anyhow::Result<()> {
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .filter(|(k, _)| !k.is_empty())
            .with_context(|| format!("--label {l:?}: expected KEY=VALUE, e.g. disktype=ssd"))?;
        node.labels.insert(k.to_string(), v.to_string());
    }
    for t in taints {
        let taint: gantry_model::Taint = t
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--taint {t:?}: {e}"))?;
        node.taints.push(taint);
    }
    Ok(())
}

/// The agent's default state directory, an absolute path that does not depend on the working
/// directory: `$XDG_STATE_HOME/gantry/agent` when that is set, else `/var/lib/gantry/agent` as
/// root, else `$HOME/.local/state/gantry/agent`.
pub fn default_state_dir() -> anyhow::Result<PathBuf> {
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    if xdg.is_none() && nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/gantry/agent"));
    }
    let base = xdg
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".local/state"))
        })
        .context("--state-dir: no default (neither XDG_STATE_HOME nor HOME is an absolute path); give one")?;
    Ok(base.join("gantry/agent"))
}

/// The host name, or `local`.
pub fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "local".to_string())
}

/// A fake inventory for `<count>x<model>` (`8xH100-80GB`).
pub fn fake_gpus(node: &str, spec: &str) -> anyhow::Result<Node> {
    let (count, model) = spec.split_once(['x', 'X']).with_context(|| {
        format!("--fake-gpus {spec:?}: expected <count>x<model>, e.g. 8xH100-80GB")
    })?;
    let count: u32 = count
        .parse()
        .with_context(|| format!("--fake-gpus {spec:?}: {count:?} is not a count"))?;
    let gb: u64 = model
        .to_ascii_lowercase()
        .rsplit(['-', '_'])
        .next()
        .and_then(|w| w.strip_suffix("gb"))
        .and_then(|n| n.parse().ok())
        .with_context(|| {
            format!("--fake-gpus {spec:?}: the model must end in its memory, e.g. H100-80GB")
        })?;
    let yaml = format!(
        "node: {node}\ncpu: {cpu}\nmemory: {mem}Gi\ngpus:\n  - {{name: \"NVIDIA {model}\", memory_mib: {mib}, count: {count}}}\nnvlink: {{switch_links: 18}}\n",
        cpu = 16 * count.max(1),
        mem = 128 * u64::from(count.max(1)),
        mib = gb * 1024,
    );
    let inv = FakeInventory::from_yaml(&yaml, "--fake-gpus")?;
    Ok(inv.discover()?.to_model_node())
}

/// This node's inventory: a fake file, `--fake-gpus`, or NVML.
pub fn inventory(
    node: &str,
    fake: Option<&str>,
    fake_file: Option<&std::path::Path>,
) -> anyhow::Result<Node> {
    if let Some(path) = fake_file {
        return Ok(FakeInventory::load(path)?.discover()?.to_model_node());
    }
    if let Some(spec) = fake {
        return fake_gpus(node, spec);
    }
    let nvml = NvmlInventory::open(None, node.to_string()).map_err(|e| {
        // The device plugin's own advice names its flag (--fake FILE); this command's differ.
        let msg = e.to_string();
        let why = msg.split("; use --fake").next().unwrap_or(&msg);
        anyhow::anyhow!(
            "NVML is not available ({why}; no NVIDIA driver?): use --fake-gpus 8xH100-80GB or --fake-inventory FILE"
        )
    })?;
    Ok(nvml.discover()?.to_model_node())
}

/// An explicit node name replaces the one an inventory file gave.
fn rename(node: &mut Node, explicit: Option<&str>) {
    if let Some(n) = explicit {
        node.name = n.to_string();
    }
}

/// Run the agent until interrupted.
pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    let name = args.node_name.clone().unwrap_or_else(host_name);
    let mut node = inventory(
        &name,
        args.fake_gpus.as_deref(),
        args.fake_inventory.as_deref(),
    )?;
    // A fake inventory file names its node; an explicit --node-name wins (a user's `mig0`
    // registered as the file's `dgx-a100-0`).
    rename(&mut node, args.node_name.as_deref());
    add_labels_and_taints(&mut node, &args.labels, &args.taints)?;
    let tls_ca = match &args.tls_ca {
        Some(p) => Some(crate::remote::read_pem("--tls-ca", p)?),
        None => None,
    };
    let server = gantry_server::client::uri(&args.server, tls_ca.is_some())?;
    eprintln!(
        "gantry agent: node {} with {} GPUs, server {server}",
        node.name,
        node.devices.len()
    );
    let state_dir = match &args.state_dir {
        Some(d) => {
            std::path::absolute(d).with_context(|| format!("--state-dir {}", d.display()))?
        }
        None => default_state_dir()?,
    }
    .join(&node.name);
    eprintln!("gantry agent: state dir {}", state_dir.display());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        run_agent(
            AgentConfig {
                server,
                node,
                token: args.token,
                tls_ca,
                state_dir: Some(state_dir),
                advertise: args.advertise_addr,
                log_cap_bytes: args.log_max_mib.saturating_mul(1 << 20),
                log_retention: std::time::Duration::from_secs(
                    args.log_retention_hours.saturating_mul(3600),
                ),
            },
            async {
                crate::signal::terminated().await;
            },
        )
        .await
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fake_gpus_flag_makes_a_node() {
        let n = fake_gpus("box", "8xH100-80GB").expect("node");
        assert_eq!(n.name, "box");
        assert_eq!(n.devices.len(), 8);
        assert_eq!(n.devices[0].model, "h100-80gb");
        assert!(fake_gpus("box", "eight").is_err());
        assert!(fake_gpus("box", "2xH100").is_err());
    }

    #[test]
    fn an_explicit_node_name_wins_over_the_fake_inventory_file() {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../device-plugin/examples/dgx-a100.yaml");
        let mut n = inventory("ignored", None, Some(&file)).expect("inventory");
        assert_eq!(n.name, "dgx-a100-0", "the file's name by default");
        rename(&mut n, Some("mig0"));
        assert_eq!(n.name, "mig0");
        rename(&mut n, None);
        assert_eq!(n.name, "mig0");
    }

    #[test]
    fn labels_and_taints_flags() {
        let mut n = fake_gpus("box", "1xH100-80GB").expect("node");
        add_labels_and_taints(
            &mut n,
            &["disktype=ssd".into()],
            &["qa-dedicated=yes:NoSchedule".into()],
        )
        .expect("valid");
        assert_eq!(n.labels["disktype"], "ssd");
        assert_eq!(n.taints[0].to_string(), "qa-dedicated=yes:NoSchedule");
        let e = add_labels_and_taints(&mut n, &["nokey".into()], &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--label \"nokey\": expected KEY=VALUE"),
            "{e}"
        );
        let e = add_labels_and_taints(&mut n, &[], &["a=b:Often".into()]).unwrap_err();
        assert!(e.to_string().contains("--taint \"a=b:Often\""), "{e}");
    }
}
