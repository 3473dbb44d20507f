//! Shared setup for the benchmarks: clusters, queues and job streams at the sizes the issues
//! name, built through the same public API a driver uses.

use gantry_engine::testing::{ClusterBuilder, JobBuilder, QueueBuilder};
use gantry_engine::{schedule, JobId, Profile, Snapshot};
use gantry_model::{Job, QueueTree};

/// `nodes` × 8 H100 (one NVLink domain per node) with one leaf queue `q0` whose quota covers it.
pub fn flat(nodes: u32) -> (Snapshot, QueueTree) {
    let c = ClusterBuilder::new()
        .pool("n", nodes, 8, "h100-80gb")
        .build();
    let q = QueueBuilder::new()
        .queue("q0", "", "h100-80gb", nodes * 8)
        .build();
    (Snapshot::new(&c, &q).expect("snapshot"), q)
}

/// `count` jobs named `<prefix><i>` from a builder template.
pub fn jobs(
    q: &QueueTree,
    prefix: &str,
    count: usize,
    template: impl Fn(JobBuilder) -> JobBuilder,
) -> Vec<Job> {
    (0..count)
        .map(|i| template(JobBuilder::new(&format!("{prefix}{i}"))).build(q))
        .collect()
}

/// Submit jobs one millisecond apart starting at `t0`.
pub fn submit_all(s: &mut Snapshot, jobs: &[Job], t0: u64) -> Vec<JobId> {
    jobs.iter()
        .enumerate()
        .map(|(i, j)| s.submit(j, t0 + i as u64).expect("submit"))
        .collect()
}

/// The incremental scenario: `nodes` × 8 GPUs filled by 8-GPU jobs, `queues` leaf queues in one
/// cohort, and `pending` more jobs (1, 2, 4 or 8 GPUs) waiting across the queues. Returns the
/// snapshot after its first (full) cycle and the running jobs.
pub fn loaded(nodes: u32, queues: u32, pending: usize) -> (Snapshot, QueueTree, Vec<JobId>) {
    let c = ClusterBuilder::new()
        .pool("n", nodes, 8, "h100-80gb")
        .build();
    let mut qb = QueueBuilder::new().queue_with(
        "org",
        "",
        1.0,
        &[("h100-80gb", (nodes * 8) as f64, None, None)],
    );
    for i in 0..queues {
        qb = qb.queue_with(
            &format!("q{i}"),
            "org",
            1.0 + (i % 3) as f64,
            &[("h100-80gb", 0.0, None, None)],
        );
    }
    let q = qb.build();
    let mut s = Snapshot::new(&c, &q).expect("snapshot");
    let fill = jobs(&q, "fill", nodes as usize, |b| b.queue("q0").gpus(8));
    let mut running = submit_all(&mut s, &fill, 0);
    let waiting: Vec<Job> = (0..pending)
        .map(|i| {
            JobBuilder::new(&format!("wait{i}"))
                .queue(&format!("q{}", i % queues as usize))
                .tasks(1 + (i % 2) as u32)
                .gpus([1, 2, 4, 8][i % 4])
                .build(&q)
        })
        .collect();
    submit_all(&mut s, &waiting, 1_000_000);
    let plan = schedule(&mut s, &Profile::gantry(), 2_000_000);
    running.retain(|id| {
        plan.binds.iter().any(|b| b.job == *id)
            || s.job_phase(*id) == gantry_engine::JobPhase::Running
    });
    (s, q, running)
}
