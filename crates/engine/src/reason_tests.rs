//! Where a task may run and why it waits: eligibility in placement, flavors a queue may use,
//! in-quota work before borrowing, and the exact text of every reason case.

use gantry_model::SelectorOp;

use crate::testing::{cluster, ClusterBuilder, Harness, JobBuilder, QueueBuilder};
use crate::{JobPhase, NodeId};

fn job(name: &str) -> JobBuilder {
    JobBuilder::new(name).queue("team-a")
}

fn team(flavor: &str, nominal: u32) -> gantry_model::QueueTree {
    QueueBuilder::new()
        .cohort("root")
        .queue("team-a", "root", flavor, nominal)
        .build()
}

fn why(h: &Harness, name: &str) -> (String, bool) {
    let x = h
        .snap
        .explain(h.snap.job_by_name(name).expect("job"))
        .expect("explain");
    (x.reason.unwrap_or_default(), x.unresolvable)
}

fn node_of(h: &Harness, name: &str) -> String {
    let id = h.snap.job_by_name(name).expect("job");
    h.snap.node_name(h.snap.job_tasks(id)[0].node).to_string()
}

#[test]
fn selectors_affinity_and_taints_decide_where_tasks_go() {
    let c = ClusterBuilder::new()
        .pool("plain", 1, 8, "h100-80gb")
        .pool("ssd", 1, 8, "h100-80gb")
        .label("disktype", "ssd")
        .pool("qa", 1, 8, "h100-80gb")
        .taint("qa-dedicated=yes:NoSchedule")
        .build();
    let mut h = Harness::new(&c, &team("h100-80gb", 24));
    h.submit(job("wants-ssd").gpus(1).selector("disktype", "ssd"));
    h.submit(
        job("not-ssd")
            .gpus(1)
            .affinity(&[("disktype", SelectorOp::DoesNotExist, &[])]),
    );
    h.submit(
        job("qa-only")
            .gpus(1)
            .tolerate("qa-dedicated=yes:NoSchedule")
            .affinity(&[("metadata.name", SelectorOp::In, &["qa-0"])]),
    );
    // Eight plain tasks fill the two untainted nodes first; none may go to the tainted one.
    for i in 0..8 {
        h.submit(job(&format!("p{i}")).gpus(2));
    }
    h.cycle();
    assert_eq!(node_of(&h, "wants-ssd"), "ssd-0");
    assert_eq!(node_of(&h, "not-ssd"), "plain-0");
    assert_eq!(node_of(&h, "qa-only"), "qa-0");
    for i in 0..8 {
        let id = h.snap.job_by_name(&format!("p{i}")).expect("p");
        if h.snap.job_phase(id) == JobPhase::Running {
            assert_ne!(
                node_of(&h, &format!("p{i}")),
                "qa-0",
                "p{i} went to the tainted node"
            );
        }
    }
    h.snap.audit().expect("audit");
}

#[test]
fn a_selector_nobody_matches_or_a_taint_nobody_tolerates_is_unresolvable_with_its_reason() {
    let c = ClusterBuilder::new()
        .pool("n", 2, 8, "h100-80gb")
        .taint("qa-dedicated=yes:NoSchedule")
        .build();
    let mut h = Harness::new(&c, &team("h100-80gb", 16));
    h.submit(
        job("ssd")
            .gpus(1)
            .selector("disktype", "ssd")
            .tolerate("qa-dedicated=yes:NoSchedule"),
    );
    h.submit(job("untolerated").gpus(1));
    h.submit(
        job("host")
            .gpus(1)
            .tolerate("qa-dedicated:NoSchedule")
            .affinity(&[(
                "kubernetes.io/hostname",
                SelectorOp::In,
                &["does-not-exist"],
            )]),
    );
    h.submit(job("tolerated").gpus(1).tolerate("qa-dedicated:NoSchedule"));
    h.cycle();
    assert!(h.running("tolerated"));
    assert_eq!(
        why(&h, "ssd"),
        (
            "no h100-80gb node can run a task of 1 h100-80gb GPU: 2 of 2 h100-80gb nodes excluded: 2 not matching node_selector disktype=ssd".into(),
            true
        )
    );
    assert_eq!(
        why(&h, "untolerated"),
        (
            "no h100-80gb node can run a task of 1 h100-80gb GPU: 2 of 2 h100-80gb nodes excluded: 2 with taint qa-dedicated=yes:NoSchedule".into(),
            true
        )
    );
    assert_eq!(
        why(&h, "host"),
        (
            "no h100-80gb node can run a task of 1 h100-80gb GPU: 2 of 2 h100-80gb nodes excluded: 2 not matching node affinity".into(),
            true
        )
    );
}

#[test]
fn capacity_is_counted_per_task_shape() {
    // One node of 8 H100s, full: every waiting job reads its own shape.
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &team("h100-80gb", 64));
    h.submit(job("fill").gpus(8));
    h.cycle();
    h.submit(job("one-by-4").gpus(4));
    h.submit(job("one-by-3").gpus(3));
    h.submit(job("two-by-5").tasks(2).gpus(5));
    h.cycle();
    assert_eq!(
        why(&h, "one-by-4").0,
        "needs 1 more task of 4 h100-80gb GPUs; the free capacity of eligible h100-80gb nodes holds 0 tasks now (the most free on one node: 0)"
    );
    assert_eq!(
        why(&h, "one-by-3").0,
        "needs 1 more task of 3 h100-80gb GPUs; the free capacity of eligible h100-80gb nodes holds 0 tasks now (the most free on one node: 0)"
    );
    // Two tasks of 5 that must run together on one node of 8: never, so it says so.
    assert_eq!(
        why(&h, "two-by-5"),
        (
            "all its 2 tasks of 5 h100-80gb GPUs must run together, and the eligible h100-80gb nodes can hold at most 1 at once even when empty".into(),
            true
        )
    );

    // 7 free on one node: a 2 × 4 gang fits one task, not two.
    let mut h = Harness::new(&cluster(2, 8, "h100-80gb"), &team("h100-80gb", 64));
    h.submit(job("big").gpus(8));
    h.submit(job("small").gpus(1));
    h.cycle();
    h.submit(job("gang").tasks(2).gpus(4));
    h.cycle();
    assert_eq!(
        why(&h, "gang").0,
        "needs 2 more tasks of 4 h100-80gb GPUs; the free capacity of eligible h100-80gb nodes holds 1 task now (the most free on one node: 7)"
    );
}

#[test]
fn nodes_that_are_not_ready_are_named_and_a_task_too_big_for_any_node_is_unresolvable() {
    let mut h = Harness::new(&cluster(2, 8, "h100-80gb"), &team("h100-80gb", 64));
    h.snap.set_node_ready(NodeId(1), false);
    h.submit(job("one").gpus(1));
    h.cycle();
    h.submit(job("eight").gpus(8));
    h.submit(job("nine").gpus(9));
    h.cycle();
    assert_eq!(
        why(&h, "eight"),
        (
            "needs 1 more task of 8 h100-80gb GPUs; the free capacity of eligible h100-80gb nodes holds 0 tasks now (the most free on one node: 7); 1 of 2 h100-80gb nodes excluded: 1 not ready".into(),
            false
        )
    );
    assert_eq!(
        why(&h, "nine"),
        (
            "no eligible h100-80gb node can ever hold a task of 9 h100-80gb GPUs: the largest has 8 GPUs; 1 of 2 h100-80gb nodes excluded: 1 not ready".into(),
            true
        )
    );
    // Every node lost (an agent restarting): waiting helps, the nodes may come back. Found by
    // a user whose job was called hopeless and ran 3 s later.
    h.snap.set_node_ready(NodeId(0), false);
    h.submit(job("later").gpus(8));
    h.cycle();
    let (text, unresolvable) = why(&h, "later");
    assert!(!unresolvable, "{text}");
    assert!(text.contains("2 not ready"), "{text}");
    assert!(
        why(&h, "nine").1,
        "still too big for any node, ready or not"
    );
}

#[test]
fn flavors_a_queue_does_not_list_are_unusable_and_never_named() {
    let c = ClusterBuilder::new()
        .pool("a", 1, 8, "a100-80gb")
        .pool("h", 1, 8, "h100-80gb")
        .build();
    // team-a lists only H100 (4 of them).
    let mut h = Harness::new(&c, &team("h100-80gb", 4));
    h.submit(job("any-1").gpus(4));
    h.submit(job("any-2").gpus(4));
    h.submit(job("a100-only").gpus(1).models(&["a100-80gb"]));
    h.cycle();
    // The first takes the H100 quota; the second may not borrow (no cohort quota) and must not
    // land on the A100s the queue has no quota for.
    assert_eq!(node_of(&h, "any-1"), "h-0");
    assert!(!h.running("any-2"));
    let (text, unresolvable) = why(&h, "any-2");
    assert!(
        text.starts_with("queue team-a: quota h100-80gb 4/4 used"),
        "{text}"
    );
    assert!(!text.contains("a100"), "{text}");
    assert!(!unresolvable);
    assert_eq!(
        why(&h, "a100-only"),
        (
            "queue team-a has no quota for a100-80gb (list it in the queue's quotas, or set unlisted_flavors: allow)".into(),
            true
        )
    );
    // With unlisted flavors allowed, the A100s are usable.
    let q = QueueBuilder::new()
        .cohort("root")
        .queue("team-a", "root", "h100-80gb", 4)
        .allow_unlisted()
        .build();
    let mut h = Harness::new(&c, &q);
    h.submit(job("a100-only").gpus(1).models(&["a100-80gb"]));
    h.cycle();
    assert!(h.running("a100-only"));
}

#[test]
fn the_cohort_lends_only_what_others_leave_idle() {
    // team-a's own 16 and team-b's 12 sit in the cohort's pool; team-a uses 20 (borrowing 4
    // of b's 12, leaving 8 more to lend), and asks for 16 more.
    let c = cluster(8, 8, "h100-80gb");
    let q = QueueBuilder::new()
        .cohort("root")
        .queue("team-a", "root", "h100-80gb", 16)
        .queue("team-b", "root", "h100-80gb", 12)
        .build();
    let mut h = Harness::new(&c, &q);
    h.submit(job("base").tasks(5).gpus(4));
    h.cycle();
    assert!(h.running("base"));
    h.submit(job("more").tasks(4).gpus(4));
    h.cycle();
    assert_eq!(
        why(&h, "more").0,
        "queue team-a: quota h100-80gb 20/16 used, needs 16 but only 8 is available; cohort has 8 to lend"
    );
}

#[test]
fn in_quota_work_is_placed_before_borrowing_work_in_one_cycle() {
    // 8 GPUs. team-b (nominal 1) waits with a 1-GPU job; team-a (nominal 7) then submits a
    // 2 × 4 gang that can only start by borrowing. Before, the gang was bound (team-a's share
    // was lower) and reclaimed for team-b's job one cycle later. Now team-b's job is placed
    // first and the gang waits, with no eviction.
    let q = QueueBuilder::new()
        .cohort("root")
        .queue("team-a", "root", "h100-80gb", 7)
        .queue("team-b", "root", "h100-80gb", 1)
        .build();
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &q);
    h.submit(
        JobBuilder::new("busy")
            .queue("team-b")
            .gpus(8)
            .runtime_s(10.0)
            .priority("inference"),
    );
    h.cycle();
    h.submit(JobBuilder::new("small").queue("team-b").gpus(1));
    h.submit(JobBuilder::new("hello").queue("team-a").tasks(2).gpus(4));
    h.cycle();
    h.advance(10);
    h.complete("busy");
    let p1 = h.cycle();
    // Same cycle: the gang was bound (team-a's share is lower), then taken back for `small`.
    assert_eq!(p1.stats.unadmitted, 1);
    assert!(p1.binds.iter().all(|b| h.snap.job_name(b.job) != "hello"));
    assert_eq!(
        why(&h, "hello").0,
        "would borrow quota that job small of queue team-b (within its nominal quota) took in the same cycle"
    );
    let p2 = h.cycle();
    assert!(h.running("small"));
    assert!(!h.running("hello"));
    assert!(
        p1.preemptions.is_empty() && p2.preemptions.is_empty(),
        "{:?} {:?}",
        p1.preemptions,
        p2.preemptions
    );
    h.snap.audit().expect("audit");
}

#[test]
fn the_same_reason_text_for_the_failure_memo_and_the_first_job_of_a_shape() {
    // Jobs of one shape after the first are skipped by the memo; their text is still theirs.
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &team("h100-80gb", 64));
    h.submit(job("fill").gpus(8));
    h.cycle();
    for i in 0..3 {
        h.submit(job(&format!("w{i}")).gpus(2));
    }
    h.cycle();
    let first = why(&h, "w0").0;
    assert_eq!(why(&h, "w2").0, first);
    assert!(
        first.starts_with("needs 1 more task of 2 h100-80gb GPUs"),
        "{first}"
    );
}

#[test]
fn a_flavor_one_queue_may_not_use_does_not_block_another_queue_with_the_same_jobs() {
    // team-a lists only A100s, team-b H100s; identical jobs asking for an H100.
    let c = ClusterBuilder::new()
        .pool("a", 1, 8, "a100-80gb")
        .pool("h", 1, 8, "h100-80gb")
        .build();
    let q = QueueBuilder::new()
        .cohort("root")
        .queue("team-a", "root", "a100-80gb", 8)
        .queue("team-b", "root", "h100-80gb", 8)
        .build();
    let mut h = Harness::new(&c, &q);
    h.submit(
        JobBuilder::new("ja")
            .queue("team-a")
            .gpus(1)
            .models(&["h100-80gb"]),
    );
    h.submit(
        JobBuilder::new("jb")
            .queue("team-b")
            .gpus(1)
            .models(&["h100-80gb"]),
    );
    h.cycle();
    assert!(
        h.running("jb"),
        "team-b's job was memo-skipped with team-a's reason"
    );
    assert!(why(&h, "ja")
        .0
        .starts_with("queue team-a has no quota for h100-80gb"));
}

/// Found by a user: a gang of 3 × 8 GPUs on a cluster of 8 GPUs was left waiting as if it
/// might run one day.
#[test]
fn a_gang_bigger_than_the_whole_cluster_is_unresolvable() {
    let mut h = Harness::new(&cluster(1, 8, "h100-80gb"), &team("h100-80gb", 64));
    h.submit(job("never").tasks(3).gpus(8));
    h.submit(job("fits").tasks(1).gpus(8));
    h.cycle();
    let (text, unresolvable) = why(&h, "never");
    assert!(unresolvable, "{text}");
    assert_eq!(
        text,
        "all its 3 tasks of 8 h100-80gb GPUs must run together, and the eligible h100-80gb nodes can hold at most 1 at once even when empty"
    );
    assert!(h.running("fits"));
}
