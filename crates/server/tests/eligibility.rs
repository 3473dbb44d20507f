//! Where tasks may run and why they wait, through `gantry serve`'s API: in-quota work before a
//! borrower (no bind that the next cycle reclaims), node selectors and taints of registered
//! nodes, reasons that name them, and an estimated start in `explain`.

mod common;

use common::*;
use gantry_api::gantry::v1 as pb;
use gantry_server::{Config, Server};
use pb::jobs_client::JobsClient;
use pb::queues_client::QueuesClient;

async fn start(dir: &std::path::Path) -> (gantry_server::Running, tonic::transport::Channel) {
    let mut c = Config::new(dir);
    c.debounce_ms = 5;
    let running = Server::start(c).await.expect("start");
    let ch = channel(running.addr).await;
    (running, ch)
}

fn submit(name: &str, queue: &str, tasks: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec_json: format!(r#"{{"name": "{name}", "queue": "{queue}", "tasks": [{tasks}]}}"#),
        command: vec!["sleep".into(), "1000".into()],
        env: Default::default(),
    }
}

async fn queue(q: &mut QueuesClient<tonic::transport::Channel>, json: &str) {
    q.create_queue(pb::QueueRequest {
        spec_json: json.into(),
    })
    .await
    .expect("queue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_quota_job_goes_before_a_borrower_and_nothing_is_reclaimed() {
    let dir = tempfile::tempdir().expect("tmp");
    let (running, ch) = start(dir.path()).await;
    let mut queues = QueuesClient::new(ch.clone());
    queue(&mut queues, r#"{"name": "lab"}"#).await;
    queue(
        &mut queues,
        r#"{"name": "team-a", "parent": "lab", "quotas": {"h100-80gb": {"nominal": 7}}}"#,
    )
    .await;
    queue(
        &mut queues,
        r#"{"name": "team-b", "parent": "lab", "quotas": {"h100-80gb": {"nominal": 1}}}"#,
    )
    .await;
    pb::nodes_client::NodesClient::new(ch.clone())
        .register_node(register_request(node_json("n0", 8)))
        .await
        .expect("register");
    let mut jobs = JobsClient::new(ch.clone());
    // team-b borrows the whole node; then its own 1-GPU job and team-a's 2 × 4 gang (which
    // would borrow 1) wait for it.
    jobs.submit_job(submit("busy", "team-b", r#"{"count": 1, "gpus": 8}"#))
        .await
        .expect("busy");
    wait_state(&mut jobs, "busy", pb::JobState::Running).await;
    jobs.submit_job(submit("small", "team-b", r#"{"count": 1, "gpus": 1}"#))
        .await
        .expect("small");
    jobs.submit_job(submit("hello", "team-a", r#"{"count": 2, "gpus": 4}"#))
        .await
        .expect("hello");
    wait_state(&mut jobs, "hello", pb::JobState::Pending).await;
    // The node frees up: before, the gang was bound (team-a's share is lower) and reclaimed
    // for `small` one cycle later. Now `small` is placed and the gang waits, never started.
    jobs.cancel_job(pb::CancelJobRequest {
        name: "busy".into(),
    })
    .await
    .expect("cancel");
    wait_state(&mut jobs, "small", pb::JobState::Running).await;
    // Let a few more cycles run, then check the gang was never started nor requeued.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let hello = jobs
        .get_job(pb::GetJobRequest {
            name: "hello".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(hello.state, pb::JobState::Pending as i32);
    assert_eq!(hello.requeues, 0, "the gang was bound and reclaimed");
    assert_eq!(hello.started_ms, 0, "the gang was started");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_and_taints_of_registered_nodes_decide_and_explain() {
    let dir = tempfile::tempdir().expect("tmp");
    let (running, ch) = start(dir.path()).await;
    let mut nodes = pb::nodes_client::NodesClient::new(ch.clone());
    let mut qa: serde_json::Value = serde_json::from_str(&node_json("qa", 4)).expect("json");
    qa["labels"] = serde_json::json!({"disktype": "ssd"});
    qa["taints"] =
        serde_json::json!([{"key": "qa-dedicated", "value": "yes", "effect": "NoSchedule"}]);
    for n in [qa.to_string(), node_json("plain", 4)] {
        nodes
            .register_node(register_request(n))
            .await
            .expect("register");
    }
    let mut jobs = JobsClient::new(ch.clone());
    // The default queue allows every flavor; `ssd` needs the tainted node and does not
    // tolerate it; `ssd-ok` does; `plain` may not go to the tainted node.
    for (name, task) in [
        (
            "ssd",
            r#"{"gpus": 1, "node_selector": {"disktype": "ssd"}}"#,
        ),
        (
            "ssd-ok",
            r#"{"gpus": 1, "node_selector": {"disktype": "ssd"}, "tolerations": [{"key": "qa-dedicated", "operator": "Exists"}]}"#,
        ),
        ("plain", r#"{"gpus": 4}"#),
        ("plain-2", r#"{"gpus": 4}"#),
    ] {
        jobs.submit_job(submit(name, "default", task))
            .await
            .expect(name);
    }
    let ok = wait_state(&mut jobs, "ssd-ok", pb::JobState::Running).await;
    assert_eq!(ok.tasks[0].node, "qa");
    let plain = wait_state(&mut jobs, "plain", pb::JobState::Running).await;
    assert_eq!(plain.tasks[0].node, "plain");
    let x = jobs
        .explain_job(pb::ExplainJobRequest { name: "ssd".into() })
        .await
        .expect("explain")
        .into_inner();
    assert_eq!(
        x.reason,
        "no h100-80gb node can run a task of 1 h100-80gb GPU: 2 of 2 h100-80gb nodes excluded: 1 with taint qa-dedicated=yes:NoSchedule, 1 not matching node_selector disktype=ssd"
    );
    assert!(x.unresolvable);
    // plain-2 may have been submitted after the cycle that placed plain: wait for its own.
    let x = loop {
        let x = jobs
            .explain_job(pb::ExplainJobRequest {
                name: "plain-2".into(),
            })
            .await
            .expect("explain")
            .into_inner();
        if x.reason != "waiting for the next scheduling cycle" {
            break x;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(!x.unresolvable);
    assert!(
        x.reason
            .ends_with("1 of 2 h100-80gb nodes excluded: 1 with taint qa-dedicated=yes:NoSchedule"),
        "{}",
        x.reason
    );
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_estimates_a_start_from_expected_runtimes() {
    let dir = tempfile::tempdir().expect("tmp");
    let (running, ch) = start(dir.path()).await;
    pb::nodes_client::NodesClient::new(ch.clone())
        .register_node(register_request(node_json("n0", 4)))
        .await
        .expect("register");
    let mut jobs = JobsClient::new(ch.clone());
    let with_runtime = |name: &str| pb::SubmitJobRequest {
        spec_json: format!(
            r#"{{"name": "{name}", "queue": "default", "expected_runtime": "1h", "tasks": [{{"gpus": 4}}]}}"#
        ),
        command: vec!["sleep".into(), "1000".into()],
        env: Default::default(),
    };
    jobs.submit_job(with_runtime("first")).await.expect("first");
    let first = wait_state(&mut jobs, "first", pb::JobState::Running).await;
    jobs.submit_job(with_runtime("second"))
        .await
        .expect("second");
    wait_state(&mut jobs, "second", pb::JobState::Pending).await;
    let x = jobs
        .explain_job(pb::ExplainJobRequest {
            name: "second".into(),
        })
        .await
        .expect("explain")
        .into_inner();
    // It starts when the first ends: its start plus one hour.
    assert_eq!(x.eta_ms, first.started_ms + 3_600_000, "{x:?}");
    running.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_for_a_flavor_no_node_offers_is_kept_with_a_warning() {
    let dir = tempfile::tempdir().expect("tmp");
    let (running, ch) = start(dir.path()).await;
    let mut queues = QueuesClient::new(ch.clone());
    let typo = r#"{"name": "early", "quotas": {"h100-80g": {"nominal": 4}}}"#;
    // Before any node registered, nothing is known to compare with.
    let q = queues
        .create_queue(pb::QueueRequest {
            spec_json: typo.into(),
        })
        .await
        .expect("queue")
        .into_inner();
    assert!(q.warnings.is_empty(), "{:?}", q.warnings);
    let mut nodes = pb::nodes_client::NodesClient::new(ch.clone());
    nodes
        .register_node(register_request(node_json("n1", 4)))
        .await
        .expect("register");
    let q = queues
        .create_queue(pb::QueueRequest {
            spec_json: typo.replace("early", "team-a"),
        })
        .await
        .expect("a quota for hardware not there yet is still accepted")
        .into_inner();
    assert_eq!(
        q.warnings,
        vec![
            "queue team-a: quota flavor \"h100-80g\" is offered by no registered node, so \
             nothing can use it until such a node joins; did you mean h100-80gb?"
        ]
    );
    let q = queues
        .update_queue(pb::QueueRequest {
            spec_json: r#"{"name": "team-a", "quotas": {"b200": {"nominal": 4}, "h100-80gb": {"nominal": 4}}}"#.into(),
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(q.warnings.len(), 1, "{:?}", q.warnings);
    assert!(
        q.warnings[0].ends_with("offered: h100-80gb"),
        "{:?}",
        q.warnings
    );
    // Listing says it too, for every queue it applies to.
    let listed = queues
        .list_queues(pb::ListQueuesRequest {})
        .await
        .expect("list")
        .into_inner();
    let warned: Vec<&str> = listed
        .queues
        .iter()
        .filter(|q| !q.warnings.is_empty())
        .map(|q| q.name.as_str())
        .collect();
    assert_eq!(warned, ["early", "team-a"]);
    // A queue listing no quota that does not allow unlisted flavors can run no GPU job: a
    // user's `{name: scratch}` looked like `default` and admitted nothing.
    let q = queues
        .create_queue(pb::QueueRequest {
            spec_json: r#"{"name": "scratch"}"#.into(),
        })
        .await
        .expect("scratch")
        .into_inner();
    assert_eq!(
        q.warnings,
        vec![
            "queue scratch: lists no quota and does not allow unlisted flavors, so no job that \
             asks for a GPU can run in it (add quotas, or set unlisted_flavors: allow)"
        ]
    );
    running.shutdown().await.expect("shutdown");
}
