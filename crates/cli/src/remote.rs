//! Client commands of a running `gantry serve`: `submit`, `jobs`, `queues`, `explain`,
//! `cancel`, `nodes`. Each connects to `--server`, makes one call, and renders a table
//! (default), JSON or YAML.

use std::path::PathBuf;

use anyhow::Context;
use gantry_api::gantry::v1 as pb;
use serde::Serialize;
use tonic::transport::Channel;

use crate::output::{print_doc, table, Format};
use gantry_server::auth::BearerToken;

/// Where the server is and how to reach it.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Address of `gantry serve`.
    #[arg(long, env = "GANTRY_SERVER", default_value = "127.0.0.1:7070")]
    pub server: String,
    /// Bearer token, when the server checks tokens.
    #[arg(long, env = "GANTRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) of a server that serves TLS (`gantry serve --tls-cert`); the
    /// connection then uses https.
    #[arg(long, env = "GANTRY_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

/// Flags every client command takes.
#[derive(Debug, clap::Args)]
pub struct Conn {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    pub(crate) output: Format,
}

/// Read a PEM file named by a flag.
pub fn read_pem(flag: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

/// `gantry submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Job spec (YAML or JSON): the fields of `gantry plan`'s jobs, plus `command` (argv) and
    /// `env` (a map) for the processes the agents start.
    file: PathBuf,
    #[command(flatten)]
    conn: Conn,
}

/// `gantry jobs`.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Only this queue's jobs.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs in these states (pending, running, succeeded, failed, cancelled).
    #[arg(long, value_delimiter = ',')]
    state: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

/// `gantry queues`.
#[derive(Debug, clap::Args)]
pub struct QueuesArgs {
    /// Create or update the queues of this file (a queues spec, as for `gantry plan`) first;
    /// its `priority_classes`, when given, replace the server's.
    #[arg(long)]
    apply: Option<PathBuf>,
    /// Delete this queue first (admin; refused while it has children or active jobs).
    #[arg(long, value_name = "QUEUE")]
    delete: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

/// `gantry explain` and `gantry cancel`.
#[derive(Debug, clap::Args)]
pub struct JobArgs {
    /// The job's name.
    job: String,
    #[command(flatten)]
    conn: Conn,
}

/// `gantry nodes`.
#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    /// Forget this lost node first (admin): its record and inventory go. Refused while its
    /// agent heartbeats; an agent that comes back registers it again.
    #[arg(long, value_name = "NODE")]
    delete: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connect(conn: &Conn) -> anyhow::Result<(Channel, BearerToken)> {
    connect_target(&conn.target).await
}

/// Dial the server with the target's TLS settings; the token goes into every call.
pub(crate) async fn connect_target(t: &Target) -> anyhow::Result<(Channel, BearerToken)> {
    let bearer = BearerToken::new(t.token.as_deref())?;
    let ca = match &t.tls_ca {
        Some(p) => Some(read_pem("--tls-ca", p)?),
        None => None,
    };
    let ch = gantry_server::client::connect(&t.server, ca.as_deref()).await?;
    Ok((ch, bearer))
}

pub(crate) fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", e.message(), e.code())
}

pub(crate) fn state_name(s: i32) -> &'static str {
    match pb::JobState::try_from(s) {
        Ok(pb::JobState::Pending) => "pending",
        Ok(pb::JobState::Running) => "running",
        Ok(pb::JobState::Succeeded) => "succeeded",
        Ok(pb::JobState::Failed) => "failed",
        Ok(pb::JobState::Cancelled) => "cancelled",
        _ => "unknown",
    }
}

/// Split a job file into the spec (as JSON for the server) and the command and environment.
fn read_job(path: &std::path::Path) -> anyhow::Result<pb::SubmitJobRequest> {
    // Parsed here first, so a mistake is reported at its line in the user's own file.
    let spec: gantry_model::JobSpec = gantry_model::doc::from_file(path)?;
    job_request(spec)
}

/// A job document (spec plus `command` and `env`) as a submission.
pub(crate) fn job_request(mut spec: gantry_model::JobSpec) -> anyhow::Result<pb::SubmitJobRequest> {
    let command = std::mem::take(&mut spec.command);
    let env = std::mem::take(&mut spec.env);
    Ok(pb::SubmitJobRequest {
        spec_json: serde_json::to_string(&spec)?,
        command,
        env: env.into_iter().collect(),
    })
}

/// `gantry submit FILE`.
pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let req = read_job(&args.file)?;
    runtime()?.block_on(async {
        let mut c = {
            let (ch, b) = connect(&args.conn).await?;
            pb::jobs_client::JobsClient::with_interceptor(ch, b)
        };
        let r = c.submit_job(req).await.map_err(status)?.into_inner();
        #[derive(Serialize)]
        struct Out {
            job: String,
            seq: u64,
        }
        match args.conn.output {
            Format::Table => println!("job {} submitted (#{})", r.name, r.seq),
            f => print_doc(
                f,
                &Out {
                    job: r.name,
                    seq: r.seq,
                },
            )?,
        }
        Ok(())
    })
}

#[derive(Debug, Serialize)]
struct JobOut {
    name: String,
    queue: String,
    state: &'static str,
    tasks: String,
    nodes: Vec<String>,
    requeues: u32,
    /// Run number (0 for the first run, bumped on every requeue).
    attempt: u32,
    /// Why it waits; for a finished job, how it ended.
    reason: String,
    /// A finished job's exit code (its first failing task's; 0 when it succeeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
    /// Where each placed task runs and the device uuids it holds.
    placements: Vec<PlacementOut>,
}

#[derive(Debug, Serialize)]
struct PlacementOut {
    group: u32,
    index: u32,
    node: String,
    devices: Vec<String>,
    /// Thousandths of a shared device, 0 for whole devices.
    gpu_milli: u32,
}

/// `gantry jobs`.
pub fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let mut states = Vec::new();
    for s in &args.state {
        let v = pb::JobState::from_str_name(&format!("JOB_STATE_{}", s.to_uppercase()))
            .with_context(|| format!("--state: unknown state {s:?}"))?;
        states.push(v as i32);
    }
    runtime()?.block_on(async {
        let mut c = {
            let (ch, b) = connect(&args.conn).await?;
            pb::jobs_client::JobsClient::with_interceptor(ch, b)
        };
        let r = c
            .list_jobs(pb::ListJobsRequest {
                queue: args.queue.clone().unwrap_or_default(),
                states,
                limit: 0,
            })
            .await
            .map_err(status)?
            .into_inner();
        let rows: Vec<JobOut> = r
            .jobs
            .into_iter()
            .map(|j| {
                let mut nodes: Vec<String> = j.tasks.iter().map(|t| t.node.clone()).collect();
                nodes.sort();
                nodes.dedup();
                JobOut {
                    name: j.name,
                    queue: j.queue,
                    state: state_name(j.state),
                    tasks: format!("{}/{}", j.tasks.len(), j.tasks_wanted),
                    nodes,
                    requeues: j.requeues,
                    attempt: j.attempt,
                    exit_code: finished(state_name(j.state)).then_some(j.exit_code),
                    reason: j.reason,
                    placements: j
                        .tasks
                        .into_iter()
                        .map(|t| PlacementOut {
                            group: t.group,
                            index: t.index,
                            node: t.node,
                            devices: t.devices,
                            gpu_milli: t.gpu_milli,
                        })
                        .collect(),
                }
            })
            .collect();
        if args.conn.output != Format::Table {
            return print_doc(args.conn.output, &rows);
        }
        let mut t = table(&[
            "job", "queue", "state", "tasks", "nodes", "requeues", "exit", "reason",
        ]);
        for r in rows {
            t.add_row(vec![
                r.name,
                r.queue,
                r.state.to_string(),
                r.tasks,
                r.nodes.join(" "),
                r.requeues.to_string(),
                r.exit_code.map_or(String::new(), |c| c.to_string()),
                r.reason,
            ]);
        }
        println!("{t}");
        Ok(())
    })
}

#[derive(Debug, Serialize)]
struct QueueOut {
    name: String,
    parent: String,
    leaf: bool,
    weight: f64,
    pending: u64,
    running: u64,
    quotas: Vec<QuotaOut>,
    /// E.g. a quota for a flavor no registered node offers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
struct QuotaOut {
    flavor: String,
    /// GPUs (or slices) in use, the queue's subtree included.
    used: f64,
    /// Its nominal quota.
    nominal: f64,
}

/// `gantry queues [--apply FILE]`.
pub fn queues(args: QueuesArgs) -> anyhow::Result<()> {
    let apply = match &args.apply {
        Some(p) => Some(gantry_model::doc::from_file::<gantry_model::QueuesSpec>(p)?),
        None => None,
    };
    runtime()?.block_on(async {
        let mut c = {
            let (ch, b) = connect(&args.conn).await?;
            pb::queues_client::QueuesClient::with_interceptor(ch, b)
        };
        for name in &args.delete {
            c.delete_queue(pb::DeleteQueueRequest { name: name.clone() })
                .await
                .map_err(status)
                .with_context(|| format!("--delete {name}"))?;
            eprintln!("queue {name} deleted");
        }
        if let Some(classes) = apply.as_ref().and_then(|s| s.priority_classes.as_ref()) {
            c.set_priority_classes(pb::SetPriorityClassesRequest {
                classes_json: serde_json::to_string(classes)?,
            })
            .await
            .map_err(status)?;
        }
        if let Some(spec) = apply {
            let existing: Vec<String> = c
                .list_queues(pb::ListQueuesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .queues
                .into_iter()
                .map(|q| q.name)
                .collect();
            // Parents first, so each create finds its cohort.
            let mut todo = spec.queues;
            let mut done: Vec<String> = existing.clone();
            while !todo.is_empty() {
                let before = todo.len();
                let mut rest = Vec::new();
                for q in todo {
                    if q.parent.as_ref().is_some_and(|p| !done.contains(p)) {
                        rest.push(q);
                        continue;
                    }
                    let req = pb::QueueRequest {
                        spec_json: serde_json::to_string(&q)?,
                    };
                    let answer = if existing.contains(&q.name) {
                        c.update_queue(req).await
                    } else {
                        c.create_queue(req).await
                    };
                    // Its warnings show with the listing below.
                    answer.map_err(status)?;
                    done.push(q.name);
                }
                todo = rest;
                anyhow::ensure!(
                    todo.len() < before,
                    "queues with unknown parents: {:?}",
                    todo.iter().map(|q| &q.name).collect::<Vec<_>>()
                );
            }
        }
        let r = c
            .list_queues(pb::ListQueuesRequest {})
            .await
            .map_err(status)?
            .into_inner();
        let rows: Vec<QueueOut> = r
            .queues
            .into_iter()
            .map(|q| QueueOut {
                name: q.name,
                parent: q.parent,
                leaf: q.leaf,
                weight: q.weight,
                pending: q.pending_jobs,
                running: q.running_jobs,
                quotas: q
                    .quotas
                    .iter()
                    .map(|u| QuotaOut {
                        flavor: u.flavor.clone(),
                        used: u.used_milli as f64 / 1000.0,
                        nominal: u.nominal_milli as f64 / 1000.0,
                    })
                    .collect(),
                warnings: q.warnings,
            })
            .collect();
        for w in rows.iter().flat_map(|r| &r.warnings) {
            eprintln!("warning: {w}");
        }
        if args.conn.output != Format::Table {
            return print_doc(args.conn.output, &rows);
        }
        let mut t = table(&[
            "queue",
            "parent",
            "weight",
            "pending",
            "running",
            "quota used/nominal",
        ]);
        for r in rows {
            t.add_row(vec![
                r.name,
                r.parent,
                r.weight.to_string(),
                r.pending.to_string(),
                r.running.to_string(),
                r.quotas
                    .iter()
                    .map(|u| format!("{} {}/{}", u.flavor, u.used, u.nominal))
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
        }
        println!("{t}");
        let classes = c
            .list_priority_classes(pb::ListPriorityClassesRequest {})
            .await
            .map_err(status)?
            .into_inner();
        let list: Vec<String> = classes
            .classes
            .iter()
            .map(|p| {
                format!(
                    "{} {}{}",
                    p.name,
                    p.value,
                    if p.preemptible {
                        ""
                    } else {
                        " (not preemptible)"
                    }
                )
            })
            .collect();
        println!(
            "priority classes{}: {}",
            if classes.defaults { " (defaults)" } else { "" },
            list.join(", ")
        );
        Ok(())
    })
}

#[derive(Debug, Serialize)]
struct ExplainOut {
    job: String,
    state: &'static str,
    position: Option<u32>,
    reason: String,
    estimated_start_ms: Option<u64>,
    unresolvable: bool,
    /// A finished job's exit code (its first failing task's; 0 when it succeeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<i32>,
}

/// Whether a job state (as named by [`state_name`]) is final.
fn finished(state: &str) -> bool {
    matches!(state, "succeeded" | "failed")
}

/// `gantry explain JOB`.
pub fn explain(args: JobArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut c = {
            let (ch, b) = connect(&args.conn).await?;
            pb::jobs_client::JobsClient::with_interceptor(ch, b)
        };
        let x = c
            .explain_job(pb::ExplainJobRequest {
                name: args.job.clone(),
            })
            .await
            .map_err(status)?
            .into_inner();
        let out = ExplainOut {
            job: x.job,
            state: state_name(x.state),
            position: (x.position > 0).then_some(x.position),
            reason: x.reason,
            estimated_start_ms: (x.eta_ms > 0).then_some(x.eta_ms),
            unresolvable: x.unresolvable,
            exit_code: finished(state_name(x.state)).then_some(x.exit_code),
        };
        if args.conn.output != Format::Table {
            return print_doc(args.conn.output, &out);
        }
        println!("job {}: {}", out.job, out.state);
        if let Some(p) = out.position {
            println!("position in its queue: {p}");
        }
        if let Some(code) = out.exit_code {
            println!("exit code: {code}");
        }
        if !out.reason.is_empty() {
            let label = if out.exit_code.is_some() { "why" } else { "why it waits" };
            println!("{label}: {}", out.reason);
        }
        if out.unresolvable {
            println!("unresolvable: waiting will not help; change the job, the queue's quota or the cluster");
        }
        if let Some(t) = out.estimated_start_ms {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            println!(
                "estimated start: in {}",
                gantry_engine::fmt_time(t.saturating_sub(now))
            );
        }
        Ok(())
    })
}

/// `gantry cancel JOB`.
pub fn cancel(args: JobArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut c = {
            let (ch, b) = connect(&args.conn).await?;
            pb::jobs_client::JobsClient::with_interceptor(ch, b)
        };
        let r = c
            .cancel_job(pb::CancelJobRequest {
                name: args.job.clone(),
            })
            .await
            .map_err(status)?
            .into_inner();
        #[derive(Serialize)]
        struct Out<'a> {
            job: &'a str,
            state: &'static str,
        }
        let out = Out {
            job: &args.job,
            state: state_name(r.state),
        };
        match args.conn.output {
            Format::Table => println!("job {} {}", out.job, out.state),
            f => print_doc(f, &out)?,
        }
        Ok(())
    })
}

#[derive(Debug, Serialize)]
struct NodeOut {
    name: String,
    ready: bool,
    models: Vec<String>,
    gpus: u32,
    gpus_used: u32,
    tasks: u32,
}

/// `gantry nodes`.
pub fn nodes(args: NodesArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut c = {
            let (ch, b) = connect(&args.conn).await?;
            pb::nodes_client::NodesClient::with_interceptor(ch, b)
        };
        for name in &args.delete {
            c.delete_node(pb::DeleteNodeRequest { name: name.clone() })
                .await
                .map_err(status)
                .with_context(|| format!("--delete {name}"))?;
            eprintln!("node {name} forgotten");
        }
        let r = c
            .list_nodes(pb::ListNodesRequest {})
            .await
            .map_err(status)?
            .into_inner();
        let rows: Vec<NodeOut> = r
            .nodes
            .into_iter()
            .map(|n| NodeOut {
                name: n.name,
                ready: n.ready,
                models: n.models,
                gpus: n.gpus,
                gpus_used: n.gpus_used,
                tasks: n.running_tasks,
            })
            .collect();
        if args.conn.output != Format::Table {
            return print_doc(args.conn.output, &rows);
        }
        let mut t = table(&["node", "ready", "models", "gpus used/total", "tasks"]);
        for r in rows {
            t.add_row(vec![
                r.name,
                if r.ready { "yes" } else { "LOST" }.to_string(),
                r.models.join(" "),
                format!("{}/{}", r.gpus_used, r.gpus),
                r.tasks.to_string(),
            ]);
        }
        println!("{t}");
        Ok(())
    })
}
