//! Property tests over random clusters and job streams, driving the engine only through its
//! public API. After every step the snapshot's independent audit must hold:
//! no device or MIG memory slice is allocated twice, quota usage stays within nominal +
//! borrowing limits (and no tree lends more than it has), and gangs are all or nothing.
//! Every cycle is also run on a clone to check the same input gives the same plan.

use std::collections::BTreeMap;

use gantry_engine::testing::{JobBuilder, QueueBuilder};
use gantry_engine::{schedule, JobId, JobPhase, NodeId, Profile, Snapshot};
use gantry_model::{ClusterSpec, Health, MigLayout, NodePool, QueueTree};
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct PoolGen {
    count: u32,
    gpus: u32,
    model: &'static str,
    domains: u32,
    mig: bool,
}

fn pool() -> impl Strategy<Value = PoolGen> {
    (
        1u32..4,
        1u32..=8,
        prop::sample::select(vec!["h100-80gb", "a100-80gb"]),
        1u32..=2,
        prop::bool::weighted(0.25),
    )
        .prop_map(|(count, gpus, model, domains, mig)| {
            let gpus = if domains == 2 && gpus % 2 == 1 {
                gpus + 1
            } else {
                gpus
            };
            PoolGen {
                count,
                gpus: gpus.min(8),
                model,
                domains,
                mig: mig && model == "a100-80gb",
            }
        })
}

#[derive(Debug, Clone)]
enum Gpu {
    None,
    Whole(u32),
    Fraction(f64),
    Mig(&'static str),
}

#[derive(Debug, Clone)]
struct JobGen {
    queue: usize,
    tasks: u32,
    min: Option<u32>,
    gpu: Gpu,
    nvlink: bool,
    placement: Option<&'static str>,
    class: &'static str,
    runtime: Option<u32>,
    cpu: u32,
}

fn job() -> impl Strategy<Value = JobGen> {
    let gpu = prop_oneof![
        1 => Just(Gpu::None),
        6 => (1u32..=8).prop_map(Gpu::Whole),
        2 => prop::sample::select(vec![0.25, 0.5, 0.3, 0.75]).prop_map(Gpu::Fraction),
        2 => prop::sample::select(vec!["1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb"]).prop_map(Gpu::Mig),
    ];
    (
        0usize..3,
        1u32..=4,
        prop::option::of(1u32..=4),
        gpu,
        any::<bool>(),
        prop::option::of(prop::sample::select(vec![
            "node",
            "nvlink-domain",
            "label:rack",
        ])),
        prop::sample::select(vec!["batch", "training", "inference"]),
        prop::option::of(1u32..200),
        0u32..80,
    )
        .prop_map(
            |(queue, tasks, min, gpu, nvlink, placement, class, runtime, cpu)| JobGen {
                queue,
                tasks,
                min: min.map(|m| m.min(tasks)),
                gpu,
                nvlink,
                placement,
                class,
                runtime,
                cpu,
            },
        )
}

#[derive(Debug, Clone)]
enum Op {
    Submit(JobGen),
    Cycle,
    Complete(usize),
    Cancel(usize),
    NodeReady(usize, bool),
    DeviceHealth(usize, bool),
    Advance(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => job().prop_map(Op::Submit),
        4 => Just(Op::Cycle),
        2 => any::<usize>().prop_map(Op::Complete),
        1 => any::<usize>().prop_map(Op::Cancel),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(n, r)| Op::NodeReady(n, r)),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(d, h)| Op::DeviceHealth(d, h)),
        2 => (1u32..100).prop_map(Op::Advance),
    ]
}

type QuotaRow = (f64, Option<f64>, Option<f64>);

fn tree(quotas: &[QuotaRow; 3]) -> QueueTree {
    let mut b = QueueBuilder::new().cohort("org");
    for (i, &(n, bl, ll)) in quotas.iter().enumerate() {
        let ll = ll.map(|l| l.min(n));
        b = b.queue_with(
            &format!("q{i}"),
            "org",
            1.0 + i as f64,
            &[
                ("h100-80gb", n, bl, ll),
                ("a100-80gb", n, bl, ll),
                ("a100-80gb/1g.10gb", n, None, None),
                ("a100-80gb/3g.40gb", n / 2.0, None, None),
            ],
        );
    }
    b.build()
}

fn quota_row() -> impl Strategy<Value = QuotaRow> {
    (
        (0u32..24).prop_map(f64::from),
        prop::option::of((0u32..8).prop_map(f64::from)),
        prop::option::of((0u32..8).prop_map(f64::from)),
    )
}

fn build_job(name: &str, g: &JobGen, q: &QueueTree) -> gantry_model::Job {
    let mut b = JobBuilder::new(name)
        .queue(&format!("q{}", g.queue))
        .tasks(g.tasks)
        .priority(g.class)
        .cpu_mem(g.cpu as f64, 1024.0);
    b = match g.gpu {
        Gpu::None => b,
        Gpu::Whole(n) => b.gpus(n),
        Gpu::Fraction(f) => b.fraction(f),
        Gpu::Mig(p) => b.mig(p),
    };
    if g.nvlink {
        b = b.nvlink();
    }
    if let Some(m) = g.min {
        b = b.min_available(m);
    }
    if let Some(p) = g.placement {
        b = b.placement(p);
    }
    if let Some(r) = g.runtime {
        b = b.runtime_s(r as f64);
    }
    b.build(q)
}

fn run(
    pools: Vec<PoolGen>,
    quotas: [QuotaRow; 3],
    ops: Vec<Op>,
    profile: Profile,
) -> Result<(), TestCaseError> {
    let mut spec = ClusterSpec::default();
    for (i, p) in pools.iter().enumerate() {
        spec.pools.push(NodePool {
            taints: Vec::new(),
            name: format!("p{i}"),
            count: p.count,
            gpu_model: Some(p.model.into()),
            gpus_per_node: p.gpus,
            gpu_memory: None,
            nvlink_domains_per_node: if p.gpus % p.domains == 0 {
                p.domains
            } else {
                1
            },
            nodes_per_rack: 2,
            cpu: 64_000,
            memory: 512 * 1024,
            labels: BTreeMap::new(),
            mig: p.mig.then(MigLayout::default),
        });
    }
    let cluster = spec.build().expect("generated cluster is valid");
    let q = tree(&quotas);
    let mut s = Snapshot::new(&cluster, &q).expect("snapshot");
    let mut now = 0u64;
    let mut submitted: Vec<JobId> = Vec::new();
    let devices: usize = cluster.nodes.iter().map(|n| n.devices.len()).sum();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Submit(g) => {
                let job = build_job(&format!("j{i}"), g, &q);
                // A MIG profile no node offers is refused, not scheduled.
                if let Ok(id) = s.submit(&job, now) {
                    submitted.push(id);
                }
            }
            Op::Cycle => {
                let mut copy = s.clone();
                let before: Vec<(JobId, u32)> = submitted
                    .iter()
                    .map(|&j| (j, s.job_task_counts(j).1))
                    .collect();
                let plan = schedule(&mut s, &profile, now);
                let again = schedule(&mut copy, &profile, now);
                prop_assert_eq!(&plan, &again, "same input, same plan");
                for b in &plan.binds {
                    let (_, running_before) = before
                        .iter()
                        .find(|(j, _)| *j == b.job)
                        .copied()
                        .unwrap_or((b.job, 0));
                    let (total, running) = s.job_task_counts(b.job);
                    prop_assert!(running <= total);
                    if running_before == 0 {
                        // A gang starts whole: at least min_available tasks in this one plan.
                        prop_assert!(
                            b.tasks.len() as u32 == running,
                            "bind {:?} vs running {running}",
                            b.tasks.len()
                        );
                    }
                }
                for p in &plan.preemptions {
                    prop_assert_eq!(
                        s.job_task_counts(p.victim).1 == 0
                            || s.job_phase(p.victim) == JobPhase::Running,
                        true
                    );
                }
            }
            Op::Complete(k) | Op::Cancel(k) => {
                let running: Vec<JobId> = submitted
                    .iter()
                    .copied()
                    .filter(|&j| s.job_phase(j) != JobPhase::Done)
                    .collect();
                if !running.is_empty() {
                    let j = running[k % running.len()];
                    if matches!(op, Op::Complete(_)) {
                        s.complete(j).expect("complete");
                    } else {
                        s.cancel(j).expect("cancel");
                    }
                }
            }
            Op::NodeReady(n, ready) => {
                if s.node_count() > 0 {
                    let affected = s.set_node_ready(NodeId((n % s.node_count()) as u32), *ready);
                    if !ready {
                        for j in affected {
                            s.requeue(j).expect("requeue");
                        }
                    }
                }
            }
            Op::DeviceHealth(d, healthy) => {
                if devices > 0 {
                    let dev = gantry_engine::DeviceId((d % devices) as u32);
                    s.set_device_health(
                        dev,
                        if *healthy {
                            Health::Healthy
                        } else {
                            Health::Unhealthy
                        },
                    );
                    if !healthy {
                        for j in s.jobs_on_device(dev) {
                            s.requeue(j).expect("requeue");
                        }
                    }
                }
            }
            Op::Advance(secs) => now += *secs as u64 * 1000,
        }
        if let Err(e) = s.audit() {
            return Err(TestCaseError::fail(format!("after op {i} ({op:?}): {e}")));
        }
    }
    Ok(())
}

fn profile() -> impl Strategy<Value = Profile> {
    prop::sample::select(vec![
        Profile::gantry(),
        Profile::best_fit(),
        Profile::fifo(),
    ])
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_over_random_streams(
        pools in prop::collection::vec(pool(), 1..4),
        quotas in [quota_row(), quota_row(), quota_row()],
        ops in prop::collection::vec(op(), 1..80),
        profile in profile(),
    ) {
        run(pools, quotas, ops, profile)?;
    }
}
