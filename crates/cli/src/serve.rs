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
}

/// Run until interrupted.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let profile = Profile::named(&args.profile)
        .with_context(|| format!("--profile: unknown profile {:?}", args.profile))?;
    let mut config = Config::new(args.data_dir);
    config.listen = args.listen;
    config.lease_ms = args.lease_ms;
    config.debounce_ms = args.debounce_ms;
    config.grace_ms = args.grace_ms;
    config.profile = profile;
    config.default_queue = !args.no_default_queue;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let running = Server::start(config).await?;
        eprintln!("gantry serve: listening on {}", running.addr);
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                r?;
                eprintln!("gantry serve: interrupted, stopping");
                running.shutdown().await?;
            }
        }
        Ok(())
    })
}
