//! `gantry`: the command-line front door.
//!
//! Subcommands are modules of this binary; each parses its flags with clap, calls the library
//! crates, and renders tables (default), JSON or YAML. Errors are `anyhow` here and only here.

mod agent;
mod kube;
mod logs;
mod output;
mod plan;
mod remote;
mod serve;
mod services;
mod signal;
mod sim;
mod store;
mod top;

use clap::{Parser, Subcommand};

/// gantry: a GPU-aware batch and ML workload scheduler.
#[derive(Debug, Parser)]
#[command(name = "gantry", version, about, long_about = None)]
struct Cli {
    /// Log format for diagnostics on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one scheduling cycle over a cluster, queues and jobs, and show the plan and why
    /// each waiting job waits.
    Plan(plan::PlanArgs),
    /// Run the standalone control plane (gRPC API, durable store, scheduling loop).
    Serve(serve::ServeArgs),
    /// Run the node agent: register this node's GPUs and run the tasks assigned to it.
    Agent(agent::AgentArgs),
    /// Submit a job file to a running server.
    Submit(remote::SubmitArgs),
    /// List jobs.
    Jobs(remote::JobsArgs),
    /// List queues (and create or update them with --apply).
    Queues(remote::QueuesArgs),
    /// Why a job waits, where it stands in its queue, and when it should start.
    Explain(remote::JobArgs),
    /// Cancel a job.
    Cancel(remote::JobArgs),
    /// What a job's tasks wrote to stdout and stderr (`-f`: follow until the run ends).
    Logs(logs::LogsArgs),
    /// List nodes.
    Nodes(remote::NodesArgs),
    /// List inference services: replicas (min/desired/running/ready/max), load against target,
    /// the last scaling decision.
    Services(services::ServicesArgs),
    /// The ready replicas of an inference service (host:port), for a router to follow.
    Endpoints(services::EndpointsArgs),
    /// Change an inference service's replica bounds.
    Scale(services::ScaleArgs),
    /// A live view of the cluster, queues, jobs and latest events (`--once`: one frame).
    Top(top::TopArgs),
    /// Replay a trace (openb, Philly) or a scenario through the engine under one or more
    /// policies; print a summary and write a report with plots.
    Sim(sim::SimArgs),
    /// Kubernetes mode: print the CRDs, or run gantry as a secondary scheduler.
    Kube(kube::KubeArgs),
    /// Check the embedded store, or back it up (with `gantry serve` stopped).
    Store(store::StoreArgs),
}

/// Diagnostics on stderr, filtered by `GANTRY_LOG` (tracing's `EnvFilter` syntax). Without it,
/// the long-running commands (`serve`, `agent`) log at info level (job events, cycles that
/// change something), the others only warnings.
fn init_tracing(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: never escape codes in a log file or a journal.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Serve(_) | Command::Agent(_) | Command::Kube(_) => {
            "info,h2=warn,hyper=warn,tower=warn,kube=warn,rustls=warn"
        }
        _ => "warn",
    };
    init_tracing(cli.log_format, default_filter);
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    let result = match cli.command {
        Command::Plan(args) => plan::run(args),
        Command::Serve(args) => serve::run(args, json_logs),
        Command::Agent(args) => agent::run(args),
        Command::Submit(args) => remote::submit(args),
        Command::Jobs(args) => remote::jobs(args),
        Command::Queues(args) => remote::queues(args),
        Command::Explain(args) => remote::explain(args),
        Command::Cancel(args) => remote::cancel(args),
        Command::Logs(args) => logs::run(args),
        Command::Nodes(args) => remote::nodes(args),
        Command::Services(args) => services::services(args),
        Command::Endpoints(args) => services::endpoints(args),
        Command::Scale(args) => services::scale(args),
        Command::Top(args) => top::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Kube(args) => kube::run(args),
        Command::Store(args) => store::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
