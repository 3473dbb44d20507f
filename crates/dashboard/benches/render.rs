//! Building and rendering the dashboard at 5,000 nodes × 8 GPUs with 2,000 running jobs: the
//! board from the engine snapshot, the GPU map page and the overview.

use criterion::{criterion_group, criterion_main, Criterion};
use gantry_dashboard::render::{content, Page, Query};
use gantry_dashboard::{nodes_from, queues_from, Board};
use gantry_engine::testing::{cluster, Harness, JobBuilder, QueueBuilder};

fn bench(c: &mut Criterion) {
    let mut h = Harness::new(
        &cluster(5_000, 8, "h100-80gb"),
        &QueueBuilder::new()
            .cohort("org")
            .queue("team-a", "org", "h100-80gb", 40_000)
            .build(),
    );
    for i in 0..2_000 {
        h.submit(JobBuilder::new(&format!("j{i}")).queue("team-a").gpus(8));
    }
    h.cycle();
    let build = || Board {
        nodes: nodes_from(&h.snap, &|j| h.snap.job_name(j).to_string()),
        queues: queues_from(&h.snap),
        ..Board::default()
    };
    c.bench_function("board_5000_nodes", |b| b.iter(build));
    let board = build();
    c.bench_function("gpu_map_5000_nodes", |b| {
        b.iter(|| content(&Page::Gpus, &board, &Query::new()))
    });
    c.bench_function("overview_5000_nodes", |b| {
        b.iter(|| content(&Page::Overview, &board, &Query::new()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
