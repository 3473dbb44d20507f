//! `gantry top`: a live view of a running `gantry serve`, redrawn every `--interval`: the
//! cluster line (nodes ready, GPUs allocated), the queues (pending, running, GPUs used against
//! nominal quota, share), the running jobs, the waiting jobs with their reasons, and the latest
//! job events. Each frame is a few unary calls (status, queues, jobs); the screen is cleared with
//! ANSI escapes. `--once` prints one frame without escapes and exits; Ctrl-C exits cleanly.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use gantry_api::gantry::v1 as pb;

use crate::output::table;
use crate::remote::{connect_target, state_name, Target};

/// Flags of `gantry top`.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Seconds between frames.
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Print one frame and exit.
    #[arg(long)]
    once: bool,
    /// Most jobs shown in each of the running and waiting lists.
    #[arg(long, default_value_t = 15)]
    rows: usize,
    #[command(flatten)]
    target: Target,
}

/// What one frame shows.
struct Frame {
    status: pb::ClusterStatus,
    queues: Vec<pb::Queue>,
    jobs: Vec<pb::Job>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn ago(now: u64, t: u64) -> String {
    format!("{} ago", gantry_engine::fmt_time(now.saturating_sub(t)))
}

/// GPUs a job's placed tasks hold, in thousandths.
fn gpu_milli(j: &pb::Job) -> u64 {
    j.tasks
        .iter()
        .map(|t| {
            if t.gpu_milli > 0 {
                u64::from(t.gpu_milli)
            } else {
                1000 * t.devices.len() as u64
            }
        })
        .sum()
}

fn gpus(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{:.1}", milli as f64 / 1000.0)
    }
}

fn render(f: &Frame, server: &str, rows: usize, now: u64) -> String {
    use std::fmt::Write;
    let s = &f.status;
    let mut out = String::new();
    let _ = writeln!(out, "gantry top: {server}");
    let _ = writeln!(
        out,
        "cluster: nodes {}/{} ready, GPUs {}/{} allocated, jobs {} running, {} pending, \
         cycle {} ({} µs)",
        s.nodes_ready,
        s.nodes,
        gpus(s.gpus_allocated_milli),
        s.gpus,
        s.running_jobs,
        s.pending_jobs,
        s.cycles,
        s.last_cycle_us
    );

    // GPUs held per queue, from the running jobs' placements (a queue without quota has none
    // to report in its quota usage).
    let mut used: BTreeMap<&str, u64> = BTreeMap::new();
    for j in &f.jobs {
        if j.state == pb::JobState::Running as i32 {
            *used.entry(j.queue.as_str()).or_default() += gpu_milli(j);
        }
    }
    let mut t = table(&["queue", "pending", "running", "GPUs used/nominal", "share"]);
    for q in f.queues.iter().filter(|q| q.leaf) {
        let nominal: u64 = q.quotas.iter().map(|u| u.nominal_milli).sum();
        // Weighted dominant share over the queue's quota flavors.
        let share = q
            .quotas
            .iter()
            .filter(|u| u.nominal_milli > 0)
            .map(|u| u.used_milli as f64 / u.nominal_milli as f64)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
            .map(|d| d / q.weight.max(f64::MIN_POSITIVE));
        t.add_row(vec![
            q.name.clone(),
            q.pending_jobs.to_string(),
            q.running_jobs.to_string(),
            format!(
                "{}/{}",
                gpus(used.get(q.name.as_str()).copied().unwrap_or(0)),
                if q.quotas.is_empty() {
                    "unlimited".to_string()
                } else {
                    gpus(nominal)
                }
            ),
            share.map_or("-".to_string(), |v| format!("{:.0}%", v * 100.0)),
        ]);
    }
    let _ = writeln!(out, "\n{t}");

    let running: Vec<&pb::Job> = f
        .jobs
        .iter()
        .filter(|j| j.state == pb::JobState::Running as i32)
        .collect();
    let mut t = table(&["running job", "queue", "tasks", "GPUs", "nodes", "started"]);
    for j in running.iter().take(rows) {
        let mut nodes: Vec<&str> = j.tasks.iter().map(|t| t.node.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        t.add_row(vec![
            j.name.clone(),
            j.queue.clone(),
            format!("{}/{}", j.tasks.len(), j.tasks_wanted),
            gpus(gpu_milli(j)),
            nodes.join(" "),
            ago(now, j.started_ms),
        ]);
    }
    let more = |n: usize| {
        if n > rows {
            format!(" ({} more not shown)", n - rows)
        } else {
            String::new()
        }
    };
    let _ = writeln!(out, "\n{t}{}", more(running.len()));

    let pending: Vec<&pb::Job> = f
        .jobs
        .iter()
        .filter(|j| j.state == pb::JobState::Pending as i32)
        .collect();
    let mut t = table(&[
        "waiting job",
        "queue",
        "waiting",
        "requeues",
        "why it waits",
    ]);
    for j in pending.iter().take(rows) {
        t.add_row(vec![
            j.name.clone(),
            j.queue.clone(),
            gantry_engine::fmt_time(now.saturating_sub(j.submitted_ms)),
            j.requeues.to_string(),
            j.reason.clone(),
        ]);
    }
    let _ = writeln!(out, "\n{t}{}", more(pending.len()));

    // The latest events, from the jobs' own timestamps.
    let mut events: Vec<(u64, &str, &str)> = Vec::new();
    for j in &f.jobs {
        events.push((j.submitted_ms, j.name.as_str(), "submitted"));
        if j.started_ms > 0 {
            events.push((j.started_ms, j.name.as_str(), "started"));
        }
        if j.finished_ms > 0 {
            events.push((j.finished_ms, j.name.as_str(), state_name(j.state)));
        }
    }
    events.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    let _ = writeln!(out, "\nlatest events:");
    if events.is_empty() {
        let _ = writeln!(out, "  (no jobs yet)");
    }
    for (t, job, what) in events.iter().take(8) {
        let _ = writeln!(out, "  {:>12}  {job} {what}", ago(now, *t));
    }
    out
}

async fn fetch(
    ch: &tonic::transport::Channel,
    bearer: &gantry_server::auth::BearerToken,
) -> anyhow::Result<Frame> {
    let mut cluster =
        pb::cluster_client::ClusterClient::with_interceptor(ch.clone(), bearer.clone());
    let mut queues = pb::queues_client::QueuesClient::with_interceptor(ch.clone(), bearer.clone());
    let mut jobs = pb::jobs_client::JobsClient::with_interceptor(ch.clone(), bearer.clone());
    let cluster_status = cluster
        .get_status(pb::GetStatusRequest {})
        .await
        .map_err(crate::remote::status)?
        .into_inner();
    let queues = queues
        .list_queues(pb::ListQueuesRequest {})
        .await
        .map_err(crate::remote::status)?
        .into_inner()
        .queues;
    let jobs = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .map_err(crate::remote::status)?
        .into_inner()
        .jobs;
    Ok(Frame {
        status: cluster_status,
        queues,
        jobs,
    })
}

/// `gantry top`.
pub fn run(args: TopArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.interval.is_finite() && args.interval >= 0.05,
        "--interval: {} is not a number of seconds ≥ 0.05",
        args.interval
    );
    let every = Duration::from_secs_f64(args.interval);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (ch, bearer) = connect_target(&args.target).await?;
        loop {
            let frame = fetch(&ch, &bearer).await.context("gantry top")?;
            let text = render(&frame, &args.target.server, args.rows, now_ms());
            if args.once {
                print!("{text}");
                return Ok(());
            }
            // Clear the screen, home the cursor, draw.
            print!(
                "\x1b[2J\x1b[H{text}\n(every {:.1}s; Ctrl-C quits)\n",
                args.interval
            );
            use std::io::Write;
            std::io::stdout().flush()?;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                r = tokio::signal::ctrl_c() => {
                    r?;
                    return Ok(());
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_shows_the_cluster_queues_jobs_and_events() {
        let job = |name: &str, state: pb::JobState, gpus: usize| pb::Job {
            name: name.into(),
            queue: "team-a".into(),
            state: state as i32,
            submitted_ms: 1_000,
            started_ms: if gpus > 0 { 2_000 } else { 0 },
            tasks_wanted: 1,
            tasks: (gpus > 0)
                .then(|| pb::TaskAssignment {
                    node: "n0".into(),
                    devices: (0..gpus).map(|i| format!("GPU-{i}")).collect(),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            reason: if gpus == 0 {
                "needs 8 h100-80gb".into()
            } else {
                String::new()
            },
            ..Default::default()
        };
        let f = Frame {
            status: pb::ClusterStatus {
                nodes: 2,
                nodes_ready: 1,
                gpus: 8,
                gpus_allocated_milli: 4000,
                running_jobs: 1,
                pending_jobs: 1,
                ..Default::default()
            },
            queues: vec![pb::Queue {
                name: "team-a".into(),
                leaf: true,
                weight: 1.0,
                pending_jobs: 1,
                running_jobs: 1,
                quotas: vec![pb::QuotaUsage {
                    flavor: "h100-80gb".into(),
                    nominal_milli: 8000,
                    used_milli: 4000,
                }],
                ..Default::default()
            }],
            jobs: vec![
                job("train", pb::JobState::Running, 4),
                job("big", pb::JobState::Pending, 0),
            ],
        };
        let text = render(&f, "h:1", 10, 5_000);
        assert!(
            text.contains("nodes 1/2 ready, GPUs 4/8 allocated"),
            "{text}"
        );
        let queue_row = text
            .lines()
            .find(|l| l.contains("team-a") && l.contains("50%"));
        assert!(queue_row.is_some_and(|l| l.contains("4/8")), "{text}");
        assert!(text.contains("needs 8 h100-80gb"), "{text}");
        assert!(text.contains("train started"), "{text}");
    }
}
