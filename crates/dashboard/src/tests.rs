//! Boards built from a real engine snapshot, rendered.

use gantry_engine::testing::{cluster, ClusterBuilder, Harness, JobBuilder, QueueBuilder};
use gantry_engine::JobId;

use crate::render::{content, Page, Query};
use crate::*;

/// A board of everything the harness's snapshot knows, as a driver would build it.
fn board_of(h: &Harness, names: &[&str]) -> Board {
    let key = |j: JobId| h.snap.job_name(j).to_string();
    let ids: Vec<JobId> = names
        .iter()
        .map(|n| h.snap.job_by_name(n).expect("job"))
        .collect();
    let waiting = waiting_of(&h.snap, &ids, Some(&h.profile), h.now);
    let jobs = ids
        .iter()
        .zip(waiting)
        .map(|(&j, waiting)| {
            let (wanted, placed) = h.snap.job_task_counts(j);
            JobView {
                key: key(j),
                name: key(j),
                queue: h.snap.queue_name(h.snap.job_queue(j)).to_string(),
                state: if waiting.is_some() {
                    "pending"
                } else {
                    "running"
                }
                .into(),
                waiting,
                tasks_wanted: wanted,
                tasks: (0..placed)
                    .map(|i| TaskView {
                        name: format!("0.{i}"),
                        node: "n".into(),
                        devices: Vec::new(),
                        phase: "running".into(),
                    })
                    .collect(),
                ..JobView::default()
            }
        })
        .collect();
    Board {
        driver: "test".into(),
        now_ms: h.now,
        nodes: nodes_from(&h.snap, &key),
        queues: queues_from(&h.snap),
        jobs,
        ..Board::default()
    }
}

fn mixed() -> (Harness, Vec<&'static str>) {
    let c = ClusterBuilder::new()
        .pool("dgx", 2, 8, "h100-80gb")
        .pool_with("mig", 1, 2, "a100-80gb", 1, Some(vec![]))
        .build();
    let q = QueueBuilder::new()
        .cohort("org")
        .queue_with(
            "team-a",
            "org",
            1.0,
            &[
                ("h100-80gb", 4.0, None, None),
                ("a100-80gb/1g.10gb", 4.0, None, None),
            ],
        )
        .queue("team-b", "org", "h100-80gb", 12)
        .build();
    let mut h = Harness::new(&c, &q);
    h.submit(
        JobBuilder::new("whole")
            .queue("team-a")
            .gpus(8)
            .runtime_s(600.0),
    );
    h.submit(JobBuilder::new("half").queue("team-b").fraction(0.5));
    h.submit(JobBuilder::new("slice").queue("team-a").mig("1g.10gb"));
    h.cycle();
    h.submit(
        JobBuilder::new("big")
            .queue("team-b")
            .gpus(8)
            .runtime_s(60.0),
    );
    h.submit(
        JobBuilder::new("huge")
            .queue("team-b")
            .gpus(1)
            .selector("zone", "nowhere"),
    );
    h.cycle();
    (h, vec!["whole", "half", "slice", "big", "huge"])
}

#[test]
fn the_gpu_map_shows_every_device_and_its_holder() {
    let (h, names) = mixed();
    let b = board_of(&h, &names);
    let page = content(&Page::Gpus, &b, &Query::new());
    for n in &b.nodes {
        for d in &n.devices {
            assert!(
                page.contains(&format!("data-uuid=\"{}\"", d.uuid)),
                "{}",
                d.uuid
            );
        }
    }
    assert_eq!(page.matches("used by whole").count(), 8, "{page}");
    assert_eq!(
        page.matches("<a href=\"/jobs/whole\" class=\"dev used\"")
            .count(),
        8,
        "each of its GPUs links to the job: {page}"
    );
    assert!(page.contains("shared, 50% used: half 50%"), "{page}");
    let slice = h.snap.job_by_name("slice").expect("slice");
    let start = match &h.snap.job_tasks(slice)[0].gpu {
        gantry_engine::GpuAlloc::Mig { start, .. } => *start,
        other => panic!("{other:?}"),
    };
    assert!(
        page.contains(&format!(
            "left:{}px;width:8px\" title=\"1g.10gb at memory slice {start}: used by slice",
            u32::from(start) * 8
        )),
        "the MIG instance at the start the engine chose: {page}"
    );
    let totals = gpu_totals(&b.nodes);
    assert_eq!(totals["h100-80gb"].held, 9);
    assert_eq!(totals["h100-80gb"].fragmented_milli, 500);
    assert_eq!(
        totals["a100-80gb"].fragmented_milli, 875,
        "7 of 8 slices free"
    );
    // Filters.
    let mut q = Query::new();
    q.insert("model".into(), "a100-80gb".into());
    let only = content(&Page::Gpus, &b, &q);
    assert!(only.contains("1 node, page 1 of 1"), "{only}");
    assert!(!only.contains("used by whole"));
}

#[test]
fn a_member_sees_other_teams_devices_but_not_their_jobs() {
    let (h, names) = mixed();
    let mut b = board_of(&h, &names);
    b.restrict(&|q| q == "team-a");
    assert!(b.jobs.iter().all(|j| j.queue == "team-a"));
    let page = content(&Page::Gpus, &b, &Query::new());
    assert!(page.contains("used by whole"));
    assert!(page.contains("another team 50%"), "{page}");
    assert!(!page.contains("half"), "{page}");
    assert!(
        page.contains("<span class=\"dev shared\"") && !page.contains("href=\"/jobs/half"),
        "no link to another team's job"
    );
    let jobs = content(&Page::Jobs, &b, &Query::new());
    assert!(!jobs.contains("huge") && jobs.contains("slice"), "{jobs}");
}

#[test]
fn waiting_jobs_show_reason_position_and_estimated_start() {
    let (h, names) = mixed();
    let b = board_of(&h, &names);
    let big = b.job("big").expect("big");
    let w = big.waiting.as_ref().expect("big waits");
    assert_eq!((w.position, w.queue_length), (Some(1), 2));
    assert_eq!(
        w.estimated_start_ms,
        Some(600_000),
        "when whole's 600 s end: {w:?}"
    );
    let huge = b.job("huge").and_then(|j| j.waiting.clone()).expect("huge");
    assert!(huge.unresolvable, "{huge:?}");
    let jobs = content(&Page::Jobs, &b, &Query::new());
    assert!(jobs.contains("1 of 2"), "{jobs}");
    assert!(jobs.contains("data-ms=\"600000\""), "{jobs}");
    assert!(jobs.contains("⚠ will not fit as asked"), "{jobs}");
    let page = content(&Page::Job("big".into()), &b, &Query::new());
    assert!(
        page.contains("Why it waits:") && page.contains(&w.reason),
        "{page}"
    );
    assert!(
        page.contains("Position in its queue: <b>1</b> of 2"),
        "{page}"
    );
    let none = content(&Page::Job("nope".into()), &b, &Query::new());
    assert!(none.contains("No such job here"));
}

#[test]
fn the_queue_tree_shows_borrowing_lending_and_share() {
    let (h, names) = mixed();
    let b = board_of(&h, &names);
    let page = content(&Page::Queues, &b, &Query::new());
    // team-a uses 8 of 4 h100s: 4 borrowed, lent by team-b (which uses 0.5 of 12).
    let row = page
        .split("<tr data-queue=\"team-a\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .expect("team-a row");
    assert!(
        row.contains("h100-80gb") && row.contains("8 / 4 · 4 · 0"),
        "{row}"
    );
    assert!(row.contains("2.00"), "share 8/4: {row}");
    let b_row = page
        .split("<tr data-queue=\"team-b\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .expect("team-b row");
    assert!(
        b_row.contains("0.5 / 12 · 0 · 4"),
        "lends what team-a borrows: {b_row}"
    );
    assert!(page.find("data-queue=\"org\"") < page.find("data-queue=\"team-a\""));
}

#[test]
fn five_thousand_nodes_page_and_aggregate() {
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
    let b = board_of(&h, &[]);
    let page = content(&Page::Gpus, &b, &Query::new());
    assert!(page.contains("5000 nodes, page 1 of 50"), "paged");
    assert!(
        page.contains("<td class=\"num\">5000</td><td class=\"num\">40000</td><td class=\"num\">24000</td><td class=\"num\">16000</td>"),
        "the aggregate counts every node"
    );
    assert_eq!(page.matches("class=\"node\"").count(), NODES_PER_PAGE_CHECK);
    assert!(
        page.len() < 200_000,
        "one page stays small at 5,000 nodes: {} bytes",
        page.len()
    );
    let mut q = Query::new();
    q.insert("page".into(), "49".into());
    q.insert("free".into(), "1".into());
    let last = content(&Page::Gpus, &b, &q);
    assert!(
        last.contains("3000 nodes, page 30 of 30"),
        "clamped, filtered"
    );
}

const NODES_PER_PAGE_CHECK: usize = crate::render::NODES_PER_PAGE;

#[test]
fn times_are_absolute_utc() {
    assert!(render::when(0).contains("1970-01-01 00:00:00 UTC"));
    assert!(render::when(1_796_047_323_000).contains("2026-11-30 14:02:03 UTC"));
    assert!(render::when(951_782_400_000).contains("2000-02-29 00:00:00 UTC"));
}

#[test]
fn bad_filters_are_said_and_pages_count_from_one() {
    let (h, names) = mixed();
    let b = board_of(&h, &names);
    let q = |pairs: &[(&str, &str)]| -> Query {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let page = content(&Page::Gpus, &b, &q(&[("label", "noequals")]));
    assert!(page.contains("takes <code>key=value</code>"), "{page}");
    let page = content(&Page::Gpus, &b, &q(&[("model", "b200")]));
    assert!(page.contains("No GPU of model b200 here"), "{page}");
    let page = content(&Page::Jobs, &b, &q(&[("queue", "nosuch")]));
    assert!(page.contains("No queue named nosuch"), "{page}");
    assert!(page.contains("<option selected>nosuch</option>"), "{page}");
    // States: any case, several at once; an unknown one is said.
    let page = content(&Page::Jobs, &b, &q(&[("state", "PENDING,Running")]));
    assert!(page.contains("5 jobs"), "{page}");
    let page = content(&Page::Jobs, &b, &q(&[("state", "waiting")]));
    assert!(page.contains("Unknown state waiting"), "{page}");
    // Markup in a parameter stays text.
    let page = content(&Page::Gpus, &b, &q(&[("node", "<script>x</script>")]));
    assert!(!page.contains("<script>x"), "{page}");
    // Pages count from 1 in the URL, as shown; out of range is clamped.
    let mut big = b.clone();
    big.jobs = (0..250)
        .map(|i| JobView {
            key: format!("j{i}"),
            name: format!("j{i}"),
            state: "running".into(),
            ..JobView::default()
        })
        .collect();
    let first = content(&Page::Jobs, &big, &Query::new());
    assert!(
        first.contains("page 1 of 3") && first.contains("href=\"/jobs?page=2\""),
        "{first}"
    );
    let second = content(&Page::Jobs, &big, &q(&[("page", "2")]));
    assert!(second.contains("page 2 of 3"), "{second}");
    assert!(
        second.contains("href=\"/jobs?page=1\">previous"),
        "{second}"
    );
    for bad in ["0", "-1", "abc", "99"] {
        let p = content(&Page::Jobs, &big, &q(&[("page", bad)]));
        assert!(p.contains("of 3"), "page={bad}");
    }
}

#[test]
fn mig_slices_are_not_counted_as_gpus() {
    let j = |gpu_milli, slices| JobView {
        key: "k".into(),
        name: "k".into(),
        state: "running".into(),
        gpu_milli,
        slices,
        ..JobView::default()
    };
    let b = Board {
        jobs: vec![j(0, 3)],
        ..Board::default()
    };
    assert!(content(&Page::Jobs, &b, &Query::new()).contains(">3 MIG<"));
    let b = Board {
        jobs: vec![j(1500, 2)],
        ..Board::default()
    };
    assert!(content(&Page::Jobs, &b, &Query::new()).contains(">1.5 + 2 MIG<"));
}

#[test]
fn repeated_events_fold_into_one_row() {
    let ev = |at_ms, kind: &str| EventView {
        at_ms,
        job: "a".into(),
        queue: "q".into(),
        kind: kind.into(),
        message: "m".into(),
        warning: false,
    };
    let mut events = vec![ev(1_000, "submitted")];
    for i in 0..300 {
        events.push(ev(2_000 + i * 2, "started"));
        events.push(ev(2_001 + i * 2, "requeued"));
    }
    events.push(ev(9_000, "requeued"));
    events.push(ev(9_001, "requeued"));
    let b = Board {
        jobs: vec![JobView {
            key: "a".into(),
            name: "a".into(),
            events,
            ..JobView::default()
        }],
        ..Board::default()
    };
    let page = content(&Page::Job("a".into()), &b, &Query::new());
    assert!(
        page.contains("requeued <b>×3</b>"),
        "the last run folds: {page}"
    );
    assert!(page.contains("501 earlier rows not shown"), "{page}");
    assert!(page.len() < 40_000, "{} bytes", page.len());
}

#[test]
fn a_queue_page_shows_its_line_in_order_and_a_cohort_its_members_jobs() {
    let (h, names) = mixed();
    let b = board_of(&h, &names);
    let page = content(&Page::Queue("team-b".into()), &b, &Query::new());
    assert!(
        page.contains("in <a href=\"/queues/org\">org</a>"),
        "{page}"
    );
    let line = page
        .split("<table class=\"line\">")
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .expect("the waiting line");
    let big = line.find("data-job=\"big\"").expect("big waits");
    let huge = line.find("data-job=\"huge\"").expect("huge waits");
    assert!(big < huge, "in the order the scheduler looks: {line}");
    assert!(line.contains("⚠ will not fit as asked"), "{line}");
    assert!(
        page.contains("Running (1)") && page.contains("/jobs/half"),
        "{page}"
    );
    // The cohort: its members, and their jobs together.
    let org = content(&Page::Queue("org".into()), &b, &Query::new());
    assert!(
        org.contains("Members: <a href=\"/queues/team-a\">team-a</a>"),
        "{org}"
    );
    assert!(
        org.contains("Waiting (2)") && org.contains("Running (3)"),
        "{org}"
    );
    let none = content(&Page::Queue("nosuch".into()), &b, &Query::new());
    assert!(none.contains("No such queue here"));
}
