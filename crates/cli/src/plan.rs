//! `gantry plan`: one engine cycle over spec files, rendered.

use std::path::PathBuf;

use anyhow::Context;
use gantry_engine::{fmt_time, schedule, GpuAlloc, Profile, Snapshot};
use gantry_model::doc::from_file;
use gantry_model::{ClusterSpec, JobsSpec, QueuesSpec};
use serde::Serialize;

use crate::output::{print_doc, table, Format};

/// Flags of `gantry plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Cluster spec (YAML or JSON).
    #[arg(long)]
    cluster: PathBuf,
    /// Queues and priority classes.
    #[arg(long)]
    queues: PathBuf,
    /// Jobs, submitted in file order one second apart.
    #[arg(long)]
    jobs: PathBuf,
    /// Engine profile: gantry, best-fit or fifo.
    #[arg(long, default_value = "gantry")]
    profile: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Format::Table)]
    output: Format,
}

#[derive(Debug, Serialize)]
struct TaskOut {
    job: String,
    queue: String,
    group: u16,
    index: u32,
    node: String,
    devices: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PendingOut {
    job: String,
    queue: String,
    position: Option<usize>,
    reason_label: Option<String>,
    reason: Option<String>,
    estimated_start: Option<String>,
}

#[derive(Debug, Serialize)]
struct PlanOut {
    profile: String,
    started: Vec<TaskOut>,
    preempted: Vec<String>,
    pending: Vec<PendingOut>,
    gpus_allocated: f64,
    gpus_total: u64,
}

/// Run `gantry plan`.
pub fn run(args: PlanArgs) -> anyhow::Result<()> {
    let profile = Profile::named(&args.profile).with_context(|| {
        format!(
            "--profile: unknown profile {:?} (use gantry, best-fit or fifo)",
            args.profile
        )
    })?;
    let cluster = from_file::<ClusterSpec>(&args.cluster)?
        .build()
        .with_context(|| format!("{}", args.cluster.display()))?;
    let queues = from_file::<QueuesSpec>(&args.queues)?
        .build()
        .with_context(|| format!("{}", args.queues.display()))?;
    let jobs = from_file::<JobsSpec>(&args.jobs)?
        .validate(&queues, Some(&cluster.catalog()))
        .with_context(|| format!("{}", args.jobs.display()))?;
    let mut snap = Snapshot::new(&cluster, &queues)?;
    let mut now = 0;
    for job in &jobs {
        snap.submit(job, now)?;
        now += 1000;
    }
    let plan = schedule(&mut snap, &profile, now);
    tracing::info!(
        binds = plan.binds.len(),
        preemptions = plan.preemptions.len(),
        "cycle done"
    );

    let started: Vec<TaskOut> = plan
        .binds
        .iter()
        .flat_map(|b| {
            let snap = &snap;
            b.tasks.iter().map(move |t| TaskOut {
                job: snap.job_name(b.job).to_string(),
                queue: snap.queue_name(snap.job_queue(b.job)).to_string(),
                group: t.group,
                index: t.index,
                node: snap.node_name(t.node).to_string(),
                devices: match &t.gpu {
                    GpuAlloc::None => vec![],
                    GpuAlloc::Whole(d) => {
                        d.iter().map(|d| snap.device_uuid(*d).to_string()).collect()
                    }
                    GpuAlloc::Shared { device, milli } => {
                        vec![format!("{} ({}/1000)", snap.device_uuid(*device), milli)]
                    }
                    GpuAlloc::Mig {
                        device,
                        profile,
                        start,
                    } => vec![format!(
                        "{} {}@{}",
                        snap.device_uuid(*device),
                        snap.mig_profile_name(*device, *profile),
                        start
                    )],
                },
            })
        })
        .collect();
    let mut pending = Vec::new();
    for job in &jobs {
        let Some(id) = snap.job_by_name(&job.name) else {
            continue;
        };
        let Some(x) = snap.explain(id) else { continue };
        if x.position.is_none() {
            continue;
        }
        // The backfill reservation's start, else the engine replayed forward on a copy.
        let estimate = x
            .estimated_start
            .or_else(|| snap.estimate_start(id, &profile, now, 1_000));
        pending.push(PendingOut {
            job: x.job,
            queue: x.queue,
            position: x.position,
            reason_label: x.reason_label,
            reason: x.reason,
            estimated_start: estimate.map(fmt_time),
        });
    }
    let totals = snap.gpu_totals();
    let out = PlanOut {
        profile: profile.name.clone(),
        started,
        preempted: plan
            .preemptions
            .iter()
            .map(|p| snap.job_name(p.victim).to_string())
            .collect(),
        pending,
        gpus_allocated: totals.allocated_milli as f64 / 1000.0,
        gpus_total: totals.devices,
    };
    if args.output != Format::Table {
        return print_doc(args.output, &out);
    }
    let mut t = table(&["job", "queue", "task", "node", "devices"]);
    for s in &out.started {
        t.add_row(vec![
            s.job.clone(),
            s.queue.clone(),
            format!("{}/{}", s.group, s.index),
            s.node.clone(),
            s.devices.join("\n"),
        ]);
    }
    println!(
        "Started ({} tasks, profile {}):\n{t}",
        out.started.len(),
        out.profile
    );
    if !out.preempted.is_empty() {
        println!("Preempted: {}", out.preempted.join(", "));
    }
    let mut t = table(&["job", "queue", "#", "why it waits", "estimated start"]);
    for p in &out.pending {
        t.add_row(vec![
            p.job.clone(),
            p.queue.clone(),
            p.position.map_or(String::new(), |x| x.to_string()),
            p.reason.clone().unwrap_or_default(),
            p.estimated_start.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("\nPending ({}):\n{t}", out.pending.len());
    println!(
        "\nWhole GPUs allocated: {:.2} of {} (MIG devices not counted)",
        out.gpus_allocated, out.gpus_total
    );
    Ok(())
}
