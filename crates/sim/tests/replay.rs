//! Replays through the real engine: metrics checked by hand on tiny traces, determinism,
//! preemption and node failure handling.

use gantry_engine::Profile;
use gantry_model::doc::from_yaml;
use gantry_model::QueuesSpec;
use gantry_sim::driver::{replay, Options};
use gantry_sim::{openb, philly, scenario, RunResult, Workload};

fn tiny(rows: &str, nodes: u32, gpus: u64) -> Workload {
    let text = format!("timestamp,duration,num_gpus,gpu_time,cluster\n{rows}");
    let jobs = philly::parse("tiny.csv", &text).expect("parse");
    philly::workload(
        "tiny",
        &jobs,
        philly::default_cluster_of(nodes),
        philly::default_queues(&jobs, gpus),
    )
}

fn run(w: &Workload, p: &str) -> RunResult {
    replay(
        w,
        &Profile::named(p).expect("profile"),
        &Options::default(),
        &mut |_| {},
    )
    .expect("replay")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

/// One node of 8 GPUs. A: t=0, 6 GPUs, 100 s. B: t=10, 4 GPUs, 50 s. C: t=20, 2 GPUs, 30 s.
const THREE: &str = "2017-10-09 07:00:00,100,6,600,a\n2017-10-09 07:00:10,50,4,200,a\n2017-10-09 07:00:20,30,2,60,a\n";

#[test]
fn fifo_metrics_by_hand() {
    // FIFO: B does not fit next to A (2 free) and blocks C. At 100 A ends; B and C start.
    // Waits 0, 90, 80; JCTs 100, 140, 110. Allocation 6 GPUs on [0,130), 4 on [130,150):
    // (6·130 + 4·20) / (8·150) = 860/1200. Jobs wait on [10,100) with 2 GPUs free.
    let r = run(&tiny(THREE, 1, 8), "fifo");
    assert_eq!((r.completed, r.unfinished), (3, 0));
    assert!(close(r.wait.mean, 170.0 / 3.0), "{:?}", r.wait);
    assert_eq!((r.wait.p50, r.wait.p95, r.wait.max), (80.0, 90.0, 90.0));
    assert!(close(r.jct.mean, 350.0 / 3.0), "{:?}", r.jct);
    assert_eq!((r.jct.p50, r.jct.p95), (110.0, 140.0));
    assert!(close(r.utilization, 860.0 / 1200.0), "{}", r.utilization);
    assert!(
        close(r.unallocated_gpus_at_saturation, 2.0),
        "{}",
        r.unallocated_gpus_at_saturation
    );
    assert!(close(r.saturated_time, 90.0 / 150.0));
    assert!(close(r.makespan_hours * 3600.0, 150.0));
    // Fragmentation, sampled every second while jobs wait (11..=100 s; a sample shows the state
    // before that instant's events): until C arrives (11..=20 s) only B (4 GPUs) waits and the
    // 2 free GPUs are of no use to it; from then on C (2 GPUs) could use them. 10 × 2 / 90.
    assert!(
        close(r.fragmented_gpus, 20.0 / 90.0),
        "{}",
        r.fragmented_gpus
    );
    // One queue, entitled to all 8 GPUs, below that while jobs waited.
    let q = &r.queues[0];
    assert_eq!(q.name, "vc-a");
    assert!(close(q.entitlement, 1.0));
    assert!(close(q.mean_share, 860.0 / 1200.0));
    assert!(close(q.deprived_time, 90.0 / 150.0));
    assert_eq!(r.preemptions_priority + r.preemptions_reclaim, 0);
    assert!(r.engine.cycles >= 4, "{:?}", r.engine);
}

#[test]
fn best_fit_and_gantry_by_hand() {
    // Without head-of-line blocking C starts at 20 in the 2 free GPUs and ends at 50 (gantry:
    // C ends before B's reservation at 100, so it backfills). Waits 0, 90, 0; JCTs 100, 140, 30.
    // Unallocated while B waits ([10,100)): 2 on [10,20), 0 on [20,50), 2 on [50,100) → 120/90.
    // Fragmentation (1 s samples while B waits, 11..=100 s): 2 GPUs free that B (4) cannot use
    // in 60 of 90 samples → 120/90.
    for p in ["best-fit", "gantry"] {
        let r = run(&tiny(THREE, 1, 8), p);
        assert!(close(r.wait.mean, 30.0), "{p}: {:?}", r.wait);
        assert!(close(r.jct.mean, 90.0), "{p}: {:?}", r.jct);
        assert_eq!(r.jct.p50, 100.0);
        assert!(
            close(r.utilization, 860.0 / 1200.0),
            "{p}: {}",
            r.utilization
        );
        assert!(
            close(r.unallocated_gpus_at_saturation, 120.0 / 90.0),
            "{p}: {}",
            r.unallocated_gpus_at_saturation
        );
        assert!(
            close(r.fragmented_gpus, 120.0 / 90.0),
            "{p}: {}",
            r.fragmented_gpus
        );
    }
}

#[test]
fn reclaim_restarts_the_victim_and_its_old_completion_is_dropped() {
    // a1 (3 h) borrows team b's half of the node; b1 (within b's quota) would otherwise wait
    // longer than the profile's 30-minute reclaim patience, so it reclaims at 10. a1 is
    // requeued, restarts at 20 when b1 ends, and completes at 10,820 — not at 10,800, when its
    // first run would have ended (that completion event is stale).
    let w = tiny(
        "2017-10-09 07:00:00,10800,8,86400,a\n2017-10-09 07:00:10,10,4,40,b\n",
        1,
        8,
    );
    let q: QueuesSpec = from_yaml(
        "queues: [{name: philly}, {name: vc-a, parent: philly, quotas: {gpu: {nominal: 4}}}, {name: vc-b, parent: philly, quotas: {gpu: {nominal: 4}}}]",
        "q.yaml",
    )
    .expect("queues");
    let w = w
        .with_queues(q.build().expect("tree"))
        .expect("same leaves");
    let r = run(&w, "gantry");
    assert_eq!(r.preemptions_reclaim, 1, "{r:?}");
    assert_eq!(r.completed, 2);
    let a = r.queues.iter().find(|q| q.name == "vc-a").expect("a");
    let b = r.queues.iter().find(|q| q.name == "vc-b").expect("b");
    assert_eq!(a.preempted, 1);
    assert_eq!((a.wait.mean, a.jct.mean), (0.0, 10_820.0));
    assert_eq!((b.wait.mean, b.jct.mean), (0.0, 10.0));
    assert!(close(r.makespan_hours * 3600.0, 10_820.0));
    // FIFO never preempts: b1 waits for a1.
    let f = run(&w, "fifo");
    assert_eq!(f.preemptions_reclaim + f.preemptions_priority, 0);
    assert_eq!(f.jct.max, 10_800.0);
}

#[test]
fn a_failed_node_requeues_its_gang_whole() {
    let text = r#"
name: fail
ops:
  - add_nodes: {name: n, count: 2, gpu_model: h100-80gb, gpus_per_node: 8, cpu: 64, memory: 512Gi}
  - submit: {count: 1, tasks: {const: 2}, gpus: {const: 8}, runtime: {const: 100s}}
  - advance: 30s
  - fail_node: n-1
  - advance: 20s
  - recover_node: n-1
"#;
    let w = scenario::parse("fail.yaml", text, None).expect("scenario");
    let r = run(&w, "gantry");
    // Runs [0,30), lost with its node, restarts whole at 50 when the node is back, ends at 150.
    assert_eq!(r.node_requeues, 1);
    assert_eq!(r.completed, 1);
    assert_eq!(r.jct.mean, 150.0);
    assert_eq!(r.wait.mean, 0.0);
}

fn strip(mut r: RunResult) -> String {
    r.wall_ms = 0.0;
    r.engine.total_ms = 0.0;
    r.engine.mean_us = 0.0;
    r.engine.p50_us = 0.0;
    r.engine.p99_us = 0.0;
    r.engine.max_us = 0.0;
    serde_json::to_string(&r).expect("json")
}

fn sample() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/openb-sample")
}

#[test]
fn replays_are_deterministic() {
    let dir = sample();
    let (cluster, pods) = openb::load(
        &dir.join("openb_node_list_gpu_node.csv"),
        &dir.join("openb_pod_list_default.csv"),
    )
    .expect("bundled sample");
    let w = openb::replay("sample", cluster.clone(), &pods).expect("replay");
    let fill = openb::fill("sample-fill", cluster, &pods, 1.3, 5).expect("fill");
    let mixed = scenario::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/mixed.yaml"),
        Some("small"),
    )
    .expect("scenario");
    for w in [&w, &fill, &mixed] {
        for p in ["fifo", "best-fit", "gantry"] {
            let a = strip(run(w, p));
            let b = strip(run(w, p));
            assert_eq!(a, b, "{} under {p} differs between two replays", w.name);
        }
    }
    // And the figures are not trivial: jobs queue on the sample, and the policies differ.
    let f = run(&w, "fifo");
    let g = run(&w, "gantry");
    assert_eq!(f.completed, 383);
    assert!(f.wait.mean > 0.0);
    assert!(g.jct.mean < f.jct.mean, "{} vs {}", g.jct.mean, f.jct.mean);
    let fr = run(&fill, "best-fit").fill.expect("fill result");
    assert!(fr.arrived_gpus >= 1.3 * 24.0);
    assert!(
        fr.allocated_gpus <= 24.0 && fr.allocated_gpus > 12.0,
        "{fr:?}"
    );
    assert!(close(fr.unallocated_gpus, 24.0 - fr.allocated_gpus));
}

#[test]
fn the_fill_experiment_never_over_allocates_and_drops_what_does_not_fit() {
    // Two nodes of 2 GPUs; pods of 1 whole GPU and of 0.6 of one GPU.
    let nodes = "sn,cpu_milli,memory_mib,gpu,model\na,64000,262144,2,T4\nb,64000,262144,2,T4\n";
    let mut pods = String::from("name,cpu_milli,memory_mib,num_gpu,gpu_milli\n");
    for i in 0..6 {
        pods.push_str(&format!(
            "p{i},1000,1024,1,{}\n",
            if i % 2 == 0 { 1000 } else { 600 }
        ));
    }
    let c = openb::parse_nodes("n.csv", nodes).expect("nodes");
    let p = openb::parse_pods("p.csv", &pods).expect("pods");
    for policy in ["fifo", "best-fit", "gantry"] {
        let w = openb::fill("f", c.clone(), &p, 1.3, 1).expect("fill");
        let r = run(&w, policy);
        let f = r.fill.expect("fill");
        // Every GPU holds either one whole pod or one 0.6 pod (two 0.6 do not fit one GPU).
        assert!(f.allocated_gpus <= 4.0 + 1e-9);
        assert!(f.arrived_gpus >= 5.2);
        assert_eq!(
            f.dropped_pods + r.unfinished,
            w.jobs.len() as u64,
            "every pod either runs (never leaves) or was dropped"
        );
        assert!(f.dropped_pods > 0);
        // The curve: allocation once every further 2% of capacity has arrived, never
        // decreasing (pods never leave), never above the capacity.
        assert_eq!(f.curve.first().map(|c| c.0), Some(2.0));
        assert!(f.curve.last().is_some_and(|c| c.0 >= 130.0));
        for w in f.curve.windows(2) {
            assert!(w[1].1 >= w[0].1 && w[1].1 <= 100.0 + 1e-9, "{w:?}");
        }
    }
}

#[test]
fn time_series_stay_bounded_when_waiting_stretches_the_replay() {
    // Three jobs of 1 000 s on one 8-GPU node, each taking the whole node: the replay lasts
    // 3 000 s although the no-wait estimate is 1 000 s. With 4 points asked for, the series is
    // thinned (never 8 points or more) and stays in time order, covering the whole replay.
    let rows = "2017-10-09 07:00:00,1000,8,8000,a\n".repeat(3);
    let w = tiny(&rows, 1, 8);
    let r = replay(&w, &Profile::fifo(), &Options { samples: 4 }, &mut |_| {}).expect("replay");
    let h = &r.series.hours;
    assert!(h.len() < 8 && h.len() >= 3, "{h:?}");
    assert!(h.windows(2).all(|p| p[0] < p[1]), "{h:?}");
    assert!(h.last().is_some_and(|&x| x * 3600.0 >= 2000.0), "{h:?}");
    assert_eq!(r.series.allocation.len(), h.len());
    assert_eq!(r.series.queue_share[0].len(), h.len());
    assert_eq!(r.jct.max, 3000.0);
}

#[test]
fn nodes_added_later_join_at_their_time_and_churn_requeues() {
    let text = r#"
name: late
seed: 3
ops:
  - add_nodes: {name: a, count: 1, gpu_model: h100-80gb, gpus_per_node: 8, cpu: 64, memory: 512Gi}
  - submit: {count: 2, gpus: {const: 8}, runtime: {const: 100s}}
  - advance: 30s
  - add_nodes: {name: b, count: 1, gpu_model: h100-80gb, gpus_per_node: 8, cpu: 64, memory: 512Gi}
"#;
    let w = scenario::parse("late.yaml", text, None).expect("scenario");
    assert_eq!(w.initially_down, vec!["b-0".to_string()]);
    let r = run(&w, "best-fit");
    // One job runs on a at 0; the other waits for b, which joins at 30 s.
    assert_eq!(r.completed, 2);
    assert_eq!((r.wait.mean, r.wait.max), (15.0, 30.0));
    assert_eq!(r.jct.max, 130.0);

    let churn = r#"
name: churn
seed: 11
ops:
  - add_nodes: {name: n, count: 4, gpu_model: h100-80gb, gpus_per_node: 8, cpu: 64, memory: 512Gi}
  - submit: {count: 40, interarrival: {const: 1m}, gpus: {const: 8}, runtime: {const: 30m}}
  - churn: {every: 10m, for: 1h, downtime: 5m}
"#;
    let w = scenario::parse("churn.yaml", churn, None).expect("scenario");
    // Six failures (every 10 minutes for an hour), each followed by a recovery.
    assert_eq!(w.node_ops.iter().filter(|o| !o.ready).count(), 6);
    assert_eq!(w.node_ops.iter().filter(|o| o.ready).count(), 6);
    let r = run(&w, "gantry");
    assert_eq!(r.completed, 40);
    assert!(
        r.node_requeues > 0,
        "busy nodes failed, their jobs were requeued"
    );
    let again = run(&w, "gantry");
    assert_eq!(strip(r), strip(again));
}
