//! Whole-cycle tests through the harness: each names one behaviour of the engine.

use crate::testing::{cluster, queues, ClusterBuilder, Harness, JobBuilder, QueueBuilder};
use crate::{GpuAlloc, JobPhase, PreemptCause, Profile, Reason};
use gantry_model::JobKind;

fn job(name: &str) -> JobBuilder {
    JobBuilder::new(name).queue("team-a")
}

fn whole_devices(h: &Harness, name: &str) -> Vec<u32> {
    let id = h.snap.job_by_name(name).expect("job");
    let mut v: Vec<u32> = h
        .snap
        .job_tasks(id)
        .iter()
        .flat_map(|t| match &t.gpu {
            GpuAlloc::Whole(d) => d.iter().map(|d| d.0).collect(),
            _ => vec![],
        })
        .collect();
    v.sort();
    v
}

#[test]
fn many_jobs_of_one_queue_start_in_one_cycle() {
    let mut h = Harness::new(&cluster(2, 8, "h100-80gb"), &queues(&[("team-a", 16)]));
    for i in 0..10 {
        h.submit(job(&format!("j{i}")).gpus(1));
    }
    let plan = h.cycle();
    assert_eq!(
        plan.binds.len(),
        10,
        "no one-head-per-queue-per-cycle limit"
    );
    h.snap.audit().expect("audit");
}

#[test]
fn best_fit_fills_the_fuller_node_first() {
    let mut h = Harness::new(&cluster(2, 8, "h100-80gb"), &queues(&[("team-a", 16)]));
    h.submit(job("big").gpus(5));
    h.cycle();
    h.submit(job("small").gpus(2));
    h.cycle();
    let big_node = h.snap.job_tasks(h.snap.job_by_name("big").expect("b"))[0].node;
    let small_node = h.snap.job_tasks(h.snap.job_by_name("small").expect("s"))[0].node;
    assert_eq!(
        big_node, small_node,
        "the 2-GPU task packs next to the 5-GPU one"
    );
    // An 8-GPU job still finds a whole node.
    h.submit(job("whole").gpus(8));
    assert_eq!(h.cycle().binds.len(), 1);
}

#[test]
fn nvlink_tasks_stay_in_one_domain_and_domains_are_kept_whole() {
    let c = ClusterBuilder::new()
        .pool_with("n", 1, 8, "h100-80gb", 2, None)
        .build();
    let mut h = Harness::new(&c, &queues(&[("team-a", 16)]));
    h.submit(job("one").gpus(1));
    h.submit(job("four").gpus(4).nvlink());
    h.cycle();
    // The 1-GPU task took domain 0; the 4-GPU task must use domain 1 whole.
    assert_eq!(whole_devices(&h, "four"), vec![4, 5, 6, 7]);
    h.submit(job("five").gpus(5).nvlink());
    h.cycle();
    let r = h
        .snap
        .reason(h.snap.job_by_name("five").expect("five"))
        .expect("reason");
    assert!(matches!(r, Reason::Domain { needed: 5, .. }), "{r:?}");
    // The node's domains hold 4 GPUs each: no waiting helps.
    let x = h
        .snap
        .explain(h.snap.job_by_name("five").expect("five"))
        .expect("x");
    assert_eq!(
        x.reason.as_deref(),
        Some("no eligible h100-80gb node can ever hold a task of 5 h100-80gb GPUs in one NVLink domain: the largest NVLink domain on one has 4 GPUs")
    );
    assert!(x.unresolvable);
    assert_eq!(x.reason_label.as_deref(), Some("unresolvable"));
}

#[test]
fn gangs_are_all_or_nothing() {
    let mut h = Harness::new(&cluster(2, 8, "h100-80gb"), &queues(&[("team-a", 32)]));
    h.submit(job("too-big").tasks(3).gpus(8));
    let plan = h.cycle();
    assert!(plan.binds.is_empty());
    assert_eq!(
        h.snap.gpu_totals().allocated_milli,
        0,
        "nothing staged survives a failed gang"
    );
    h.submit(job("fits").tasks(2).gpus(8));
    let plan = h.cycle();
    assert_eq!(plan.binds.len(), 1);
    assert_eq!(plan.binds[0].tasks.len(), 2);
    h.snap.audit().expect("audit");
}

#[test]
fn min_available_starts_the_gang_and_grows_later() {
    let mut h = Harness::new(&cluster(2, 8, "h100-80gb"), &queues(&[("team-a", 32)]));
    h.submit(job("blocker").gpus(8));
    h.cycle();
    h.submit(job("elastic").tasks(2).gpus(8).min_available(1));
    h.cycle();
    let id = h.snap.job_by_name("elastic").expect("e");
    assert_eq!(h.snap.job_task_counts(id), (2, 1));
    assert_eq!(h.snap.job_phase(id), JobPhase::Running);
    h.complete("blocker");
    h.cycle();
    assert_eq!(h.snap.job_task_counts(id), (2, 2));
    h.snap.audit().expect("audit");
}

#[test]
fn mig_slices_go_where_they_destroy_fewest_placements() {
    let c = ClusterBuilder::new()
        .pool_with("mig", 1, 2, "a100-80gb", 1, Some(vec![]))
        .build();
    let q = QueueBuilder::new()
        .cohort("root")
        .queue("team-a", "root", "a100-80gb/1g.10gb", 14)
        .build();
    let mut h = Harness::new(&c, &q);
    h.submit(job("s0").mig("1g.10gb"));
    h.cycle();
    let t = &h.snap.job_tasks(h.snap.job_by_name("s0").expect("s0"))[0];
    // Start 6 kills 4 open placements (1g@6, 1g.20gb@6, 3g@4, 7g@0); any other start kills more.
    assert!(
        matches!(t.gpu, GpuAlloc::Mig { start: 6, .. }),
        "{:?}",
        t.gpu
    );
    for i in 1..8 {
        h.submit(job(&format!("s{i}")).mig("1g.10gb"));
    }
    h.cycle();
    // Seven fit on the first device; the eighth opens the second.
    let mut per_dev = std::collections::BTreeMap::new();
    for i in 0..8 {
        for t in h
            .snap
            .job_tasks(h.snap.job_by_name(&format!("s{i}")).expect("s"))
        {
            if let GpuAlloc::Mig { device, .. } = t.gpu {
                *per_dev.entry(device.0).or_insert(0) += 1;
            }
        }
    }
    assert_eq!(per_dev.values().copied().collect::<Vec<_>>(), vec![7, 1]);
    h.snap.audit().expect("audit");
}

#[test]
fn fixed_mig_layouts_offer_only_their_slices() {
    let slices = vec![
        gantry_model::Slice {
            profile: "3g.40gb".into(),
            start: 4,
            uuid: String::new(),
            health: gantry_model::Health::Healthy,
        },
        gantry_model::Slice {
            profile: "2g.20gb".into(),
            start: 0,
            uuid: String::new(),
            health: gantry_model::Health::Healthy,
        },
    ];
    let c = ClusterBuilder::new()
        .pool_with("mig", 1, 1, "a100-80gb", 1, Some(slices))
        .build();
    let q = QueueBuilder::new()
        .queue("team-a", "", "h100-80gb", 0)
        .allow_unlisted()
        .build();
    let mut h = Harness::new(&c, &q);
    h.submit(job("a").mig("3g.40gb"));
    h.submit(job("b").mig("3g.40gb"));
    h.submit(job("c").mig("1g.10gb"));
    h.cycle();
    assert!(h.running("a"));
    assert!(!h.running("b"), "only one 3g slice exists");
    assert!(!h.running("c"), "no 1g slice exists in the fixed layout");
    h.snap.audit().expect("audit");
}

#[test]
fn an_unhealthy_mig_slice_is_not_offered_and_comes_back_when_it_recovers() {
    let slice = |start: u8, health| gantry_model::Slice {
        profile: "1g.10gb".into(),
        start,
        uuid: format!("MIG-{start}"),
        health,
    };
    // Two 1g slices; the one at start 0 had an XID.
    let slices = vec![
        slice(0, gantry_model::Health::Unhealthy),
        slice(1, gantry_model::Health::Healthy),
    ];
    let c = ClusterBuilder::new()
        .pool_with("mig", 1, 1, "a100-80gb", 1, Some(slices))
        .build();
    let q = QueueBuilder::new()
        .queue("team-a", "", "h100-80gb", 0)
        .allow_unlisted()
        .build();
    let mut h = Harness::new(&c, &q);
    h.submit(job("a").mig("1g.10gb"));
    h.submit(job("b").mig("1g.10gb"));
    h.cycle();
    let start_of =
        |h: &Harness, n: &str| match h.snap.job_tasks(h.snap.job_by_name(n).expect("j"))[0].gpu {
            GpuAlloc::Mig { start, .. } => start,
            ref g => panic!("{g:?}"),
        };
    assert!(h.running("a"));
    assert_eq!(start_of(&h, "a"), 1, "placed on the unhealthy slice");
    assert!(!h.running("b"), "only one healthy slice");
    // The slice recovers: b takes it. A slice id that does not exist is refused.
    let dev = crate::DeviceId(0);
    assert!(!h
        .snap
        .set_slice_health(dev, 5, gantry_model::Health::Healthy));
    assert!(h
        .snap
        .set_slice_health(dev, 0, gantry_model::Health::Healthy));
    h.cycle();
    assert!(h.running("b"));
    assert_eq!(start_of(&h, "b"), 0);
    h.snap.audit().expect("audit");
}

#[test]
fn a_protected_job_is_no_victim_until_its_time_passes() {
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 8)]));
    h.submit(job("low").gpus(8).priority("batch"));
    h.cycle();
    let low = h.snap.job_by_name("low").expect("low");
    // Its eviction was refused: no victim for 10 s.
    h.snap.protect(low, h.now + 10_000);
    h.submit(job("high").gpus(8).priority("training"));
    let plan = h.cycle();
    assert!(plan.preemptions.is_empty(), "{:?}", plan.preemptions);
    assert!(h.running("low") && !h.running("high"));
    h.advance(11);
    let plan = h.cycle();
    assert_eq!(plan.preemptions.len(), 1);
    assert!(h.running("high"));
}

fn shared_device(h: &Harness, n: &str) -> u32 {
    match h.snap.job_tasks(h.snap.job_by_name(n).expect("j"))[0].gpu {
        GpuAlloc::Shared { device, .. } => device.0,
        ref g => panic!("{g:?}"),
    }
}

#[test]
fn shared_gpus_go_where_the_remainder_still_serves_the_workload() {
    // One node with 2 T4s. a (0.5), b (0.3) and c (0.5) arrive together, so the learned
    // workload is 0.5 with p = 2/3 and 0.3 with p = 1/3.
    let q = QueueBuilder::new().queue("team-a", "", "t4", 2).build();
    let mut h = Harness::new(&cluster(1, 2, "t4"), &q);
    h.submit(job("a").fraction(0.5).models(&["t4"]));
    h.submit(job("b").fraction(0.3).models(&["t4"]));
    h.submit(job("c").fraction(0.5).models(&["t4"]));
    h.cycle();
    // a: both GPUs are empty and score alike; it takes the first.
    // b: next to a it would leave 0.2, which no shape of the workload can use (0.2 of
    //    fragmentation); on the empty GPU it leaves 0.7 and 0.5, both still usable (0).
    assert_ne!(shared_device(&h, "a"), shared_device(&h, "b"));
    // c: next to a it fills the GPU exactly (nothing left to waste); next to b it would leave
    //    0.2 (fragmentation 0.2).
    assert_eq!(shared_device(&h, "c"), shared_device(&h, "a"));
    h.snap.audit().expect("audit");

    // The best-fit profile packs by least remaining instead: b joins a (0.2 left) and c takes
    // the other GPU.
    let mut h = Harness::new(&cluster(1, 2, "t4"), &q).with_profile(Profile::best_fit());
    h.submit(job("a").fraction(0.5).models(&["t4"]));
    h.submit(job("b").fraction(0.3).models(&["t4"]));
    h.submit(job("c").fraction(0.5).models(&["t4"]));
    h.cycle();
    assert_eq!(shared_device(&h, "a"), shared_device(&h, "b"));
    assert_ne!(shared_device(&h, "a"), shared_device(&h, "c"));
    h.submit(job("d").fraction(0.2).models(&["t4"]));
    h.cycle();
    assert_eq!(
        shared_device(&h, "d"),
        shared_device(&h, "a"),
        "the device with least remaining that fits"
    );
    h.snap.audit().expect("audit");
}

#[test]
fn quota_blocks_with_a_reason_that_has_numbers() {
    let q = QueueBuilder::new()
        .queue("team-a", "", "h100-80gb", 16)
        .build();
    let mut h = Harness::new(&cluster(4, 8, "h100-80gb"), &q);
    h.submit(job("a").tasks(2).gpus(8));
    h.submit(job("b").gpus(8));
    h.cycle();
    assert!(h.running("a") && !h.running("b"));
    let x = h
        .snap
        .explain(h.snap.job_by_name("b").expect("b"))
        .expect("x");
    assert_eq!(x.reason_label.as_deref(), Some("quota"));
    let text = x.reason.expect("reason");
    assert!(
        text.starts_with("queue team-a: quota h100-80gb 16/16 used"),
        "{text}"
    );
    assert!(
        !text.contains("cohort"),
        "a queue at the root has no cohort: {text}"
    );
    assert_eq!(x.position, Some(1));
    assert!(!x.unresolvable, "b runs once a ends");
    // More than the queue's whole tree could ever give it: waiting does not help.
    h.submit(job("c").tasks(3).gpus(8));
    h.cycle();
    let x = h
        .snap
        .explain(h.snap.job_by_name("c").expect("c"))
        .expect("x");
    assert!(x.unresolvable, "{x:?}");
    assert!(
        x.reason.as_deref().is_some_and(|r| r
            .ends_with("it can never have more than 16 of it, so this job cannot run as asked")),
        "{x:?}"
    );
}

#[test]
fn borrowing_and_lending_limits_are_respected() {
    // (borrowing limit of a, lending limit of b, GPUs a gets)
    for (bl, ll, want) in [
        (None, None, 16),
        (Some(4.0), None, 12),
        (None, Some(2.0), 10),
        (Some(1.0), Some(2.0), 9),
    ] {
        let q = QueueBuilder::new()
            .cohort("root")
            .queue_with("team-a", "root", 1.0, &[("h100-80gb", 8.0, bl, None)])
            .queue_with("team-b", "root", 1.0, &[("h100-80gb", 8.0, None, ll)])
            .build();
        let mut h = Harness::new(&cluster(4, 8, "h100-80gb"), &q);
        for i in 0..20 {
            h.submit(job(&format!("a{i}")).gpus(1));
        }
        h.cycle();
        let a = h.snap.queue_by_name("team-a").expect("a");
        let f = h
            .snap
            .flavors()
            .find(|&f| h.snap.flavor_name(f) == "h100-80gb")
            .expect("f");
        assert_eq!(h.snap.queue_usage(a, f), want * 1000, "bl {bl:?} ll {ll:?}");
        h.snap.audit().expect("audit");
    }
}

fn two_team_cohort() -> gantry_model::QueueTree {
    QueueBuilder::new()
        .cohort("root")
        .queue("team-a", "root", "h100-80gb", 8)
        .queue("team-b", "root", "h100-80gb", 8)
        .build()
}

#[test]
fn a_queue_reclaims_what_others_borrowed() {
    let mut h = Harness::new(&cluster(2, 8, "h100-80gb"), &two_team_cohort());
    h.submit(job("a1").gpus(8));
    h.submit(job("a2").gpus(8));
    h.cycle();
    assert!(
        h.running("a1") && h.running("a2"),
        "team-a borrows team-b's idle quota"
    );
    h.advance(10);
    h.submit(JobBuilder::new("b1").queue("team-b").gpus(8));
    let plan = h.cycle();
    assert!(h.running("b1"));
    assert_eq!(plan.preemptions.len(), 1);
    assert_eq!(plan.preemptions[0].cause, PreemptCause::Reclaim);
    assert_eq!(
        h.snap.job_name(plan.preemptions[0].victim),
        "a2",
        "the most recently started borrower"
    );
    assert_eq!(
        h.snap.job_phase(plan.preemptions[0].victim),
        JobPhase::Pending,
        "the victim is requeued"
    );
    h.snap.audit().expect("audit");
}

/// Found by a user: a job in a queue without quota "reclaimed" from a borrower of another
/// quota tree, which outranked it and took its GPUs back: the two evicted each other every
/// cycle (336 times each in 15 s).
#[test]
fn a_queue_without_quota_never_reclaims_and_two_jobs_never_evict_each_other_in_turn() {
    let q = QueueBuilder::new()
        .cohort("lab")
        .queue_with("team-a", "lab", 1.0, &[("h100-80gb", 2.0, Some(2.0), None)])
        .queue_with("team-b", "lab", 1.0, &[("h100-80gb", 3.0, None, Some(1.0))])
        .cohort("default")
        .allow_unlisted()
        .build();
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &q);
    h.submit(job("a-train").gpus(3).priority("training"));
    h.cycle();
    assert!(h.running("a-train"), "team-a borrows one of team-b's");
    h.advance(1);
    h.submit(
        JobBuilder::new("cap-wait")
            .queue("default")
            .tasks(3)
            .gpus(2)
            .priority("batch"),
    );
    let mut preemptions = 0;
    for _ in 0..10 {
        h.advance(1);
        preemptions += h.cycle().preemptions.len();
    }
    assert_eq!(
        preemptions, 0,
        "a batch job without quota outranks no training job"
    );
    assert!(h.running("a-train") && !h.running("cap-wait"));
    h.snap.audit().expect("audit");

    // The other way round stays: a queue within its quota takes back capacity from work that
    // runs without any quota, once, and that work does not take it back.
    let q = QueueBuilder::new()
        .queue("team-a", "", "h100-80gb", 4)
        .cohort("default")
        .allow_unlisted()
        .build();
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &q);
    h.submit(JobBuilder::new("bulk").queue("default").gpus(8));
    h.cycle();
    h.advance(1);
    h.submit(job("mine").gpus(4));
    let mut causes = Vec::new();
    for _ in 0..10 {
        h.advance(1);
        causes.extend(h.cycle().preemptions.iter().map(|p| p.cause));
    }
    assert_eq!(causes, [PreemptCause::Reclaim], "one reclaim, no ping-pong");
    assert!(h.running("mine") && !h.running("bulk"));
}

#[test]
fn priority_preemption_takes_the_smallest_victim_set_and_whole_gangs() {
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 8)]));
    h.submit(job("gang").tasks(2).gpus(2).priority("batch"));
    h.advance(1);
    h.submit(job("solo").gpus(4).priority("batch"));
    h.cycle();
    h.advance(1);
    h.submit(job("urgent").gpus(4).priority("training"));
    let plan = h.cycle();
    assert!(h.running("urgent"));
    let victims: Vec<&str> = plan
        .preemptions
        .iter()
        .map(|p| h.snap.job_name(p.victim))
        .collect();
    assert_eq!(victims, vec!["solo"], "one victim suffices");
    h.advance(1);
    h.submit(job("urgent2").gpus(2).priority("training"));
    let plan = h.cycle();
    let victims: Vec<&str> = plan
        .preemptions
        .iter()
        .map(|p| h.snap.job_name(p.victim))
        .collect();
    assert_eq!(victims, vec!["gang"], "the gang is evicted whole");
    let gang = h.snap.job_by_name("gang").expect("g");
    assert_eq!(h.snap.job_task_counts(gang), (2, 0));
    h.snap.audit().expect("audit");
}

#[test]
fn preemption_respects_the_preemptible_flag() {
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 8)]));
    h.submit(job("svc").gpus(8).priority("inference"));
    h.cycle();
    let q = QueueBuilder::new()
        .cohort("root")
        .queue("team-a", "root", "h100-80gb", 8)
        .build();
    let mut classes = q.clone();
    classes.priority_classes.insert(
        "critical".into(),
        gantry_model::PriorityClass {
            name: "critical".into(),
            value: 5000,
            preemptible: false,
        },
    );
    h.queues = classes;
    h.submit(job("crit").gpus(8).priority("critical"));
    let plan = h.cycle();
    assert!(plan.preemptions.is_empty(), "inference is not preemptible");
    assert!(h.running("svc") && !h.running("crit"));
}

#[test]
fn no_queue_is_pushed_below_nominal_so_another_can_borrow() {
    let q = QueueBuilder::new()
        .cohort("root")
        .queue("team-a", "root", "h100-80gb", 0)
        .queue("team-b", "root", "h100-80gb", 8)
        .build();
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &q);
    h.submit(
        JobBuilder::new("b")
            .queue("team-b")
            .gpus(8)
            .priority("batch"),
    );
    h.cycle();
    h.submit(job("a").gpus(4).priority("training"));
    let plan = h.cycle();
    assert!(plan.preemptions.is_empty());
    assert!(h.running("b") && !h.running("a"));
}

#[test]
fn backfill_reserves_for_the_head_and_lets_only_short_jobs_through() {
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 64)]));
    h.submit(job("r1").gpus(4).runtime_s(100.0));
    h.submit(job("r2").gpus(4).runtime_s(1000.0));
    h.cycle();
    h.advance(100);
    h.complete("r1");
    h.submit(job("head").gpus(8).runtime_s(100.0));
    h.advance(1);
    h.submit(job("long").gpus(4).runtime_s(2000.0));
    h.advance(1);
    h.submit(job("short").gpus(4).runtime_s(500.0));
    let plan = h.cycle();
    let head = h.snap.job_by_name("head").expect("head");
    assert_eq!(plan.reservations.len(), 1);
    assert_eq!(plan.reservations[0].job, head);
    assert_eq!(
        plan.reservations[0].start, 1_000_000,
        "head starts when r2 ends"
    );
    assert!(h.running("short"), "ends at 602s, before the reservation");
    assert!(!h.running("long"), "would still run at 1000s");
    let x = h.snap.explain(head).expect("x");
    assert_eq!(x.estimated_start, Some(1_000_000));
    let long = h
        .snap
        .explain(h.snap.job_by_name("long").expect("l"))
        .expect("x");
    assert!(long
        .reason
        .expect("r")
        .starts_with("waiting behind reservation for job head"));

    // The best-fit profile has no backfill: the long job jumps ahead.
    let mut h2 = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 64)]))
        .with_profile(Profile::best_fit());
    h2.submit(job("r2").gpus(4).runtime_s(1000.0));
    h2.submit(job("head").gpus(8));
    h2.submit(job("long").gpus(4).runtime_s(2000.0));
    h2.cycle();
    assert!(h2.running("long"));
}

#[test]
fn fair_share_splits_by_weight() {
    for (wa, wb, want_a) in [(1.0, 1.0, 6), (2.0, 1.0, 8)] {
        // The pool belongs to the cohort; both teams borrow it, so only the weights decide.
        let q = QueueBuilder::new()
            .queue_with("root", "", 1.0, &[("h100-80gb", 12.0, None, None)])
            .queue_with("team-a", "root", wa, &[("h100-80gb", 0.0, None, None)])
            .queue_with("team-b", "root", wb, &[("h100-80gb", 0.0, None, None)])
            .build();
        let mut h = Harness::new(&cluster(1, 12, "h100-80gb"), &q);
        for i in 0..12 {
            h.submit(job(&format!("a{i}")).gpus(1));
            h.submit(JobBuilder::new(&format!("b{i}")).queue("team-b").gpus(1));
        }
        let plan = h.cycle();
        let order: Vec<&str> = plan.binds.iter().map(|b| h.snap.job_name(b.job)).collect();
        let a = h.snap.queue_by_name("team-a").expect("a");
        let f = h
            .snap
            .flavors()
            .find(|&f| h.snap.flavor_name(f) == "h100-80gb")
            .expect("f");
        assert_eq!(
            h.snap.queue_usage(a, f),
            want_a * 1000,
            "weights {wa}:{wb} order {order:?}"
        );
    }
}

#[test]
fn strict_fifo_blocks_behind_the_head_and_gantry_does_not() {
    for (profile, small_runs) in [(Profile::fifo(), false), (Profile::gantry(), true)] {
        let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 64)]))
            .with_profile(profile);
        h.submit(job("busy").gpus(4));
        h.cycle();
        h.submit(job("head").gpus(8));
        h.advance(1);
        h.submit(job("small").gpus(2));
        h.cycle();
        assert_eq!(h.running("small"), small_runs, "profile {}", h.profile.name);
        if !small_runs {
            let x = h
                .snap
                .explain(h.snap.job_by_name("small").expect("s"))
                .expect("x");
            assert_eq!(
                x.reason.as_deref(),
                Some("strict FIFO: waiting for earlier job head to start")
            );
        }
    }
}

#[test]
fn same_input_same_plan() {
    let mut h = Harness::new(&cluster(8, 8, "h100-80gb"), &two_team_cohort());
    for i in 0..40 {
        let q = if i % 2 == 0 { "team-a" } else { "team-b" };
        h.submit(
            JobBuilder::new(&format!("j{i}"))
                .queue(q)
                .tasks(1 + i % 3)
                .gpus(1 + i % 4),
        );
    }
    let mut copy = h.snap.clone();
    let p1 = h.cycle();
    let p2 = crate::schedule(&mut copy, &h.profile, h.now);
    assert_eq!(p1, p2);
}

#[test]
fn cycles_are_incremental_when_nothing_was_freed() {
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 64)]));
    h.submit(job("fill").gpus(8));
    for i in 0..50 {
        h.submit(job(&format!("wait{i}")).gpus(2));
    }
    let p = h.cycle();
    assert!(!p.stats.incremental);
    assert_eq!(
        p.stats.examined, 2,
        "after one 2-GPU job fails, its 48 twins are not looked at"
    );
    let x = h
        .snap
        .explain(h.snap.job_by_name("wait30").expect("w"))
        .expect("x");
    assert_eq!(
        x.reason_label.as_deref(),
        Some("capacity"),
        "skipped jobs still get their shape's reason"
    );
    h.submit(job("new").gpus(1));
    let p = h.cycle();
    assert!(p.stats.incremental);
    assert_eq!(p.stats.examined, 1);
    h.complete("fill");
    let p = h.cycle();
    assert!(
        !p.stats.incremental,
        "a completion frees capacity: look at everyone"
    );
    assert_eq!(p.binds.len(), 4);
}

#[test]
fn lost_nodes_and_sick_devices_take_no_work() {
    let mut h = Harness::new(&cluster(2, 8, "h100-80gb"), &queues(&[("team-a", 64)]));
    h.submit(job("gang").tasks(2).gpus(8));
    h.cycle();
    let affected = h.snap.set_node_ready(crate::NodeId(0), false);
    assert_eq!(affected.len(), 1);
    h.snap.requeue(affected[0]).expect("requeue");
    h.cycle();
    assert!(
        !h.running("gang"),
        "a 2-node gang does not fit on one ready node"
    );
    h.snap.set_node_ready(crate::NodeId(0), true);
    h.snap
        .set_device_health(crate::DeviceId(3), gantry_model::Health::Unhealthy);
    h.cycle();
    assert!(!h.running("gang"), "node 0 has only 7 healthy GPUs");
    h.submit(job("seven").gpus(7));
    h.cycle();
    assert!(h.running("seven"));
    assert!(!whole_devices(&h, "seven").contains(&3));
    h.snap.audit().expect("audit");
}

#[test]
fn label_scoped_gangs_stay_in_one_rack() {
    // 16 nodes, 8 per rack; fill 7 nodes of rack 0 so only rack 1 holds a 4-node gang.
    let mut h = Harness::new(&cluster(16, 8, "h100-80gb"), &queues(&[("team-a", 1000)]));
    for i in 0..7 {
        h.submit(job(&format!("fill{i}")).gpus(8));
    }
    h.cycle();
    h.submit(job("gang").tasks(4).gpus(8).placement("label:rack"));
    h.cycle();
    let id = h.snap.job_by_name("gang").expect("g");
    let racks: std::collections::BTreeSet<String> = h
        .snap
        .job_tasks(id)
        .iter()
        .map(|t| h.snap.node_name(t.node).to_string())
        .map(|n| {
            let i: u32 = n.trim_start_matches("node-").parse().expect("index");
            format!("r{}", i / 8)
        })
        .collect();
    assert_eq!(racks.len(), 1, "{racks:?}");
    h.submit(job("gang2").tasks(9).gpus(8).placement("label:rack"));
    h.cycle();
    let r = h
        .snap
        .reason(h.snap.job_by_name("gang2").expect("g"))
        .expect("r");
    assert!(matches!(r, Reason::Topology { needed: 72, .. }), "{r:?}");
}

#[test]
fn inference_replicas_spread_over_nodes_and_scale() {
    let mut h = Harness::new(&cluster(2, 8, "h100-80gb"), &queues(&[("team-a", 64)]));
    let id = h.submit(job("svc").gpus(1).service(2, 4, Some("node")));
    h.cycle();
    let nodes: std::collections::BTreeSet<u32> =
        h.snap.job_tasks(id).iter().map(|t| t.node.0).collect();
    assert_eq!(nodes.len(), 2, "two replicas on two nodes");
    h.snap.set_desired_replicas(id, 3).expect("scale");
    h.cycle();
    assert_eq!(
        h.snap.job_task_counts(id),
        (3, 2),
        "a third node does not exist"
    );
    assert!(matches!(h.snap.reason(id), Some(Reason::Spread { .. })));
    let stopped = h.snap.set_desired_replicas(id, 2).expect("scale down");
    assert_eq!(stopped, 0);
    h.snap.audit().expect("audit");
}

#[test]
fn a_replica_added_after_a_scale_down_never_reuses_a_stopped_ones_index() {
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 64)]));
    let id = h.submit(job("svc").gpus(1).service(1, 4, None));
    h.snap.set_desired_replicas(id, 3).expect("scale");
    h.cycle();
    let indexes = |h: &Harness| -> Vec<u32> {
        let mut v: Vec<u32> = h.snap.job_tasks(id).iter().map(|t| t.index).collect();
        v.sort_unstable();
        v
    };
    assert_eq!(indexes(&h), [0, 1, 2]);
    assert_eq!(h.snap.set_desired_replicas(id, 1).expect("down"), 2);
    assert_eq!(indexes(&h), [0]);
    h.snap.set_desired_replicas(id, 3).expect("up");
    h.cycle();
    // 1 and 2 may still be draining on their node under the same run: new ones are 3 and 4.
    assert_eq!(indexes(&h), [0, 3, 4]);
    h.snap.audit().expect("audit");
}

#[test]
fn cpu_and_memory_are_checked_on_the_node() {
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 64)]));
    h.submit(job("fat").gpus(1).cpu_mem(100.0, 1024.0));
    h.submit(job("fat2").gpus(1).cpu_mem(100.0, 1024.0));
    h.cycle();
    assert!(h.running("fat") && !h.running("fat2"));
    assert!(matches!(
        h.snap.reason(h.snap.job_by_name("fat2").expect("f")),
        Some(Reason::CpuMemory { .. })
    ));
}

#[test]
fn a_task_allowed_several_models_goes_where_it_packs_best_not_where_its_list_starts() {
    // One A100 node and one H100 node, 8 GPUs each. A 4-GPU task that may use either takes
    // half of the A100 node (equal scores: the lowest node). Then a 4-GPU task that lists
    // h100 first: taking the first model that fits (the old rule) would break the whole H100
    // node; scoring both models fills the A100 node and keeps the H100 node whole for the
    // 8-GPU job that follows.
    let c = ClusterBuilder::new()
        .pool("a", 1, 8, "a100-80gb")
        .pool("h", 1, 8, "h100-80gb")
        .build();
    let q = QueueBuilder::new()
        .queue_with(
            "team-a",
            "",
            1.0,
            &[
                ("h100-80gb", 16.0, None, None),
                ("a100-80gb", 16.0, None, None),
            ],
        )
        .build();
    let mut h = Harness::new(&c, &q);
    h.submit(job("first").gpus(4).models(&["a100-80gb", "h100-80gb"]));
    h.cycle();
    h.submit(job("either").gpus(4).models(&["h100-80gb", "a100-80gb"]));
    h.cycle();
    h.submit(job("whole").gpus(8).models(&["h100-80gb", "a100-80gb"]));
    h.cycle();
    let node = |n: &str| {
        h.snap
            .node_name(h.snap.job_tasks(h.snap.job_by_name(n).expect("j"))[0].node)
            .to_string()
    };
    assert_eq!(node("first"), "a-0");
    assert_eq!(node("either"), "a-0");
    assert_eq!(node("whole"), "h-0");
    h.snap.audit().expect("audit");
}

#[test]
fn restore_puts_recorded_tasks_back_and_refuses_a_device_twice() {
    let c = cluster(1, 8, "h100-80gb");
    let q = queues(&[("team-a", 16)]);
    let mut h = Harness::new(&c, &q);
    h.submit(job("a").tasks(2).gpus(2).gang());
    h.cycle();
    let a = h.snap.job_by_name("a").expect("a");
    let recorded = h.snap.job_tasks(a).to_vec();
    let taken = whole_devices(&h, "a");

    // A fresh snapshot (a restarted server) gets the same tasks back, exactly.
    let mut fresh = Harness::new(&c, &q);
    fresh.submit(job("a").tasks(2).gpus(2).gang());
    fresh.submit(job("b").gpus(2));
    let a2 = fresh.snap.job_by_name("a").expect("a");
    fresh
        .snap
        .restore(a2, recorded.clone(), 5)
        .expect("restore");
    assert_eq!(fresh.snap.job_phase(a2), JobPhase::Running);
    assert_eq!(fresh.snap.job_task_counts(a2), (2, 2));
    assert_eq!(whole_devices(&fresh, "a"), taken);
    fresh.snap.audit().expect("audit after restore");

    // Another job cannot be restored onto the same devices; nothing of it is applied.
    let b = fresh.snap.job_by_name("b").expect("b");
    let err = fresh
        .snap
        .restore(b, vec![recorded[0].clone()], 5)
        .expect_err("taken");
    assert!(err.to_string().contains("already taken"), "{err}");
    assert_eq!(fresh.snap.job_phase(b), JobPhase::Pending);
    fresh.snap.audit().expect("audit after refusal");

    // The next cycle places b elsewhere, never on a's devices.
    fresh.cycle();
    let b_devs = whole_devices(&fresh, "b");
    assert_eq!(b_devs.len(), 2);
    assert!(
        b_devs.iter().all(|d| !taken.contains(d)),
        "{b_devs:?} vs {taken:?}"
    );
    assert!(fresh.snap.flavor_by_name("h100-80gb").is_some());
}

#[test]
fn decayed_history_favours_the_queue_that_used_less_lately() {
    // (history weight, GPUs team-a gets of 8 after it alone used all 8 for an hour)
    for (weight, want_a) in [(None, 4), (Some(0.5), 2)] {
        let q = QueueBuilder::new()
            .queue_with("root", "", 1.0, &[("h100-80gb", 8.0, None, None)])
            .queue_with("team-a", "root", 1.0, &[("h100-80gb", 0.0, None, None)])
            .queue_with("team-b", "root", 1.0, &[("h100-80gb", 0.0, None, None)])
            .build();
        let mut profile = Profile::gantry();
        profile.history = weight.map(|w| crate::History {
            half_life_ms: 3_600_000,
            weight: w,
        });
        let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &q).with_profile(profile);
        h.submit(job("hog").gpus(8));
        h.cycle();
        h.advance(3600);
        h.cycle();
        h.complete("hog");
        for i in 0..8 {
            h.submit(job(&format!("a{i}")).gpus(1));
            h.submit(JobBuilder::new(&format!("b{i}")).queue("team-b").gpus(1));
        }
        h.cycle();
        let a = h.snap.queue_by_name("team-a").expect("a");
        let f = h
            .snap
            .flavors()
            .find(|&f| h.snap.flavor_name(f) == "h100-80gb")
            .expect("f");
        assert_eq!(
            h.snap.queue_usage(a, f),
            want_a * 1000,
            "history weight {weight:?}"
        );
    }
}

#[test]
fn reclaim_waits_when_the_job_would_start_soon_anyway() {
    // x (nominal 4) borrows 4 for an 8-GPU, 10-hour job; y (nominal 12) fills the rest with
    // 30-minute one-GPU jobs and then needs one more GPU.
    for (patience_s, evicts) in [(0u64, true), (1800, false)] {
        let q = QueueBuilder::new()
            .cohort("c")
            .queue("x", "c", "h100-80gb", 4)
            .queue("y", "c", "h100-80gb", 12)
            .build();
        let mut profile = Profile::gantry();
        profile.reclaim_patience_ms = patience_s * 1000;
        let mut h = Harness::new(&cluster(2, 8, "h100-80gb"), &q).with_profile(profile);
        h.submit(
            JobBuilder::new("big")
                .queue("x")
                .gpus(8)
                .runtime_s(36_000.0),
        );
        h.cycle();
        for i in 0..8 {
            h.submit(
                JobBuilder::new(&format!("y{i}"))
                    .queue("y")
                    .gpus(1)
                    .runtime_s(1800.0),
            );
        }
        h.cycle();
        h.advance(60);
        h.submit(JobBuilder::new("y8").queue("y").gpus(1).runtime_s(1800.0));
        let plan = h.cycle();
        assert_eq!(
            !plan.preemptions.is_empty(),
            evicts,
            "patience {patience_s}s"
        );
        assert_eq!(h.running("big"), !evicts);
        if !evicts {
            let y8 = h.snap.job_by_name("y8").expect("y8");
            assert_eq!(
                h.snap.explain(y8).expect("x").estimated_start,
                Some(1_800_000)
            );
        }
        h.snap.audit().expect("audit");
    }
}

#[test]
fn a_job_started_in_a_cycle_is_not_evicted_in_the_same_cycle() {
    // team-a (no quota) borrows the whole node first (equal shares, lower id); team-b's job is
    // within its nominal quota and could reclaim — but not from a job this very plan starts.
    let q = QueueBuilder::new()
        .cohort("root")
        .queue("team-a", "root", "h100-80gb", 0)
        .queue("team-b", "root", "h100-80gb", 8)
        .build();
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &q);
    h.submit(job("borrower").gpus(8));
    h.submit(JobBuilder::new("owner").queue("team-b").gpus(8));
    let first = h.cycle();
    let started: Vec<&str> = first.binds.iter().map(|b| h.snap.job_name(b.job)).collect();
    assert!(
        first.preemptions.is_empty(),
        "started {started:?}, evicted {:?}",
        first.preemptions
    );
    if started == ["borrower"] {
        // The next cycle reclaims (no expected runtimes, so no reason to wait).
        h.advance(1);
        let second = h.cycle();
        assert_eq!(second.preemptions.len(), 1);
        assert!(h.running("owner"));
    }
    h.snap.audit().expect("audit");
}

#[test]
fn a_job_naming_a_model_no_node_has_waits_instead_of_panicking() {
    // Drivers that do not validate against the cluster (the simulator's traces) can submit a
    // model the snapshot has never seen: it gets a flavor, no quota and no capacity.
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &queues(&[("team-a", 8)]));
    h.submit(job("odd").gpus(1).models(&["b300"]));
    h.submit(job("fine").gpus(1));
    let plan = h.cycle();
    assert!(h.running("fine"));
    assert!(!h.running("odd"));
    assert_eq!(plan.binds.len(), 1);
    let id = h.snap.job_by_name("odd").expect("odd");
    assert!(h.snap.explain(id).expect("explain").reason.is_some());
    h.snap.audit().expect("audit");
}

#[test]
fn a_service_scaling_up_preempts_a_training_gang_whole() {
    let mut h = Harness::new(&cluster(2, 4, "h100-80gb"), &queues(&[("team-a", 64)]));
    let train = h.submit(job("train").tasks(2).gpus(3).kind(JobKind::Training));
    h.cycle();
    assert!(h.running("train"));
    let svc = h.submit(job("svc").gpus(1).service(1, 4, None));
    h.cycle();
    assert_eq!(h.snap.job_task_counts(svc), (1, 1));
    h.snap.set_desired_replicas(svc, 4).expect("scale");
    for _ in 0..3 {
        h.cycle();
    }
    assert_eq!(
        h.snap.job_task_counts(svc),
        (4, 4),
        "the service got its replicas: {:?}",
        h.snap.reason(svc)
    );
    assert!(!h.running("train"), "training was preempted whole");
    assert!(h.snap.job_tasks(train).is_empty());
    h.snap.set_desired_replicas(svc, 1).expect("scale down");
    h.cycle();
    assert!(h.running("train"), "training runs again beside one replica");
    h.snap.audit().expect("audit");
}

#[test]
fn scaling_down_frees_whole_nodes_for_waiting_gangs() {
    // Node a holds the service's first replica and nothing else; node b is busy with `other`
    // and the newest replica. Stopping the newest (the old rule) would leave both nodes broken.
    let c = ClusterBuilder::new()
        .pool("a", 1, 4, "h100-80gb")
        .label("zone", "a")
        .pool("b", 1, 4, "h100-80gb")
        .label("zone", "b")
        .build();
    let mut h = Harness::new(&c, &queues(&[("team-a", 64)]));
    let svc = h.submit(job("svc").gpus(1).service(1, 2, None));
    h.cycle();
    h.submit(job("other").gpus(3).selector("zone", "b"));
    h.cycle();
    h.snap.set_desired_replicas(svc, 2).expect("scale");
    h.cycle();
    let node_of = |h: &Harness, index: u32| {
        h.snap
            .job_tasks(svc)
            .iter()
            .find(|t| t.index == index)
            .map(|t| h.snap.node_name(t.node).to_string())
    };
    let (a, b) = (
        node_of(&h, 0).expect("first"),
        node_of(&h, 1).expect("newest"),
    );
    assert_ne!(a, b, "the newest replica went beside `other`");
    h.snap.set_desired_replicas(svc, 1).expect("down");
    assert_eq!(
        node_of(&h, 1),
        Some(b),
        "the replica on the busy node stays"
    );
    h.submit(job("gang").gpus(4));
    h.cycle();
    assert!(
        h.running("gang"),
        "{:?}",
        h.snap.reason(h.snap.job_by_name("gang").expect("g"))
    );
    h.snap.audit().expect("audit");
}
