//! `gantry store`: check a server's store file, or copy it, while `gantry serve` is stopped.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use gantry_server::store::Store;

/// Check or back up the embedded store.
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    command: StoreCommand,
}

#[derive(Debug, Subcommand)]
enum StoreCommand {
    /// Open the store and parse every record; print what it holds, or what is wrong and where.
    Check {
        /// The server's data directory (holds gantry.redb).
        #[arg(long, default_value = "gantry-data")]
        data_dir: PathBuf,
    },
    /// Copy every record into a new store file (one consistent read). Restore by stopping the
    /// server and putting the copy in place of DATA_DIR/gantry.redb.
    Backup {
        /// The server's data directory (holds gantry.redb).
        #[arg(long, default_value = "gantry-data")]
        data_dir: PathBuf,
        /// The new file (must not exist).
        #[arg(long)]
        to: PathBuf,
    },
}

fn open(dir: &std::path::Path) -> anyhow::Result<Store> {
    let file = dir.join("gantry.redb");
    if !file.exists() {
        anyhow::bail!(
            "--data-dir {}: no store here ({} does not exist)",
            dir.display(),
            file.display()
        );
    }
    let (store, _) = Store::open(dir).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("already open") || msg.contains("lock") {
            anyhow::anyhow!("{msg}\n(is `gantry serve` running on this data dir? stop it first)")
        } else {
            anyhow::anyhow!(msg)
        }
    })?;
    Ok(store)
}

/// Run `gantry store …`.
pub fn run(args: StoreArgs) -> anyhow::Result<()> {
    match args.command {
        StoreCommand::Check { data_dir } => {
            let store = open(&data_dir)?;
            let c = store.check()?;
            println!(
                "{}: ok: {} queues, {} jobs, {} nodes",
                store.path().display(),
                c.queues,
                c.jobs,
                c.nodes
            );
        }
        StoreCommand::Backup { data_dir, to } => {
            let store = open(&data_dir)?;
            let c = store
                .backup(&to)
                .with_context(|| format!("backup of {}", store.path().display()))?;
            println!(
                "{} -> {}: {} queues, {} jobs, {} nodes",
                store.path().display(),
                to.display(),
                c.queues,
                c.jobs,
                c.nodes
            );
        }
    }
    Ok(())
}
