//! The gantry.v1 API over a real TCP socket on loopback: agents register, a gang spans two
//! nodes, bad input is refused with the field named and nothing stored, explain and watch
//! work, and a restarted server gives running jobs the same devices back.

mod common;

use common::*;
use std::time::Duration;

use gantry_api::gantry::v1 as pb;
use gantry_server::{Config, Server};
use pb::jobs_client::JobsClient;
use pb::nodes_client::NodesClient;
use pb::queues_client::QueuesClient;

fn job(name: &str, count: u32, gpus: u32) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec_json: format!(
            r#"{{"name": "{name}", "queue": "team-a", "kind": "training", "tasks": [{{"count": {count}, "gpus": {gpus}}}]}}"#
        ),
        command: vec!["sleep".into(), "1000".into()],
        env: Default::default(),
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read");
    out
}

fn config(dir: &std::path::Path) -> Config {
    let mut c = Config::new(dir);
    c.debounce_ms = 5;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_over_tcp_schedules_refuses_bad_input_and_recovers() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut first = config(dir.path());
    first.metrics_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let running = Server::start(first).await.expect("start");
    let metrics_addr = running.metrics_addr.expect("metrics served");
    let ch = channel(running.addr).await;
    let (mut queues, mut jobs, mut nodes) = (
        QueuesClient::new(ch.clone()),
        JobsClient::new(ch.clone()),
        NodesClient::new(ch.clone()),
    );

    for n in ["n0", "n1"] {
        let r = nodes
            .register_node(register_request(node_json(n, 8)))
            .await
            .expect("register")
            .into_inner();
        assert_eq!(r.node, n);
        assert!(r.lease_ms > 0);
    }
    let bad = nodes
        .register_node(register_request(r#"{"name": "x", "cpu": "lots"}"#.into()))
        .await
        .expect_err("malformed node");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().starts_with("node_json.cpu"),
        "{}",
        bad.message()
    );

    let q = queues
        .create_queue(pb::QueueRequest {
            spec_json: r#"{"name": "team-a", "quotas": {"h100-80gb": {"nominal": 16}}}"#.into(),
        })
        .await
        .expect("queue")
        .into_inner();
    assert!(q.leaf);
    let bad = queues
        .create_queue(pb::QueueRequest {
            spec_json: r#"{"name": "b", "weight": -1}"#.into(),
        })
        .await
        .expect_err("bad weight");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(bad.message().contains("weight"), "{}", bad.message());

    // A gang of two 8-GPU tasks: one on each node.
    let r = jobs
        .submit_job(job("gang", 2, 8))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(r.name, "gang");
    let g = wait_state(&mut jobs, "gang", pb::JobState::Running).await;
    let mut on: Vec<&str> = g.tasks.iter().map(|t| t.node.as_str()).collect();
    on.sort();
    assert_eq!(on, ["n0", "n1"]);
    let hb = nodes
        .heartbeat(pb::HeartbeatRequest {
            instance: "test-agent".into(),
            node: "n0".into(),
            running: vec![],
            leaving: false,
            wait_ms: 0,
            replicas: Vec::new(),
        })
        .await
        .expect("hb")
        .into_inner();
    assert_eq!(hb.start.len(), 1);
    assert_eq!(hb.start[0].devices.len(), 8);
    assert_eq!(hb.start[0].command, ["sleep", "1000"]);

    // Bad input: the field is named, and nothing is stored.
    let long = "x".repeat(300);
    let cases: Vec<(pb::SubmitJobRequest, &str)> = vec![
        (
            pb::SubmitJobRequest {
                spec_json: r#"{"name": "a", "queue": "nope", "tasks": [{"count": 1}]}"#.into(),
                command: vec!["true".into()],
                env: Default::default(),
            },
            "spec_json.queue",
        ),
        (job("huge", 1, 9), "spec_json.tasks[0].gpus"),
        (job(&long, 1, 1), "spec_json.name"),
        (
            pb::SubmitJobRequest {
                spec_json: r#"{"name": "a", "queue": "team-a", "tasks": [{"count": "two"}]}"#
                    .into(),
                command: vec!["true".into()],
                env: Default::default(),
            },
            "spec_json.tasks[0].count",
        ),
        (
            pb::SubmitJobRequest {
                spec_json: "{not json".into(),
                command: vec!["true".into()],
                env: Default::default(),
            },
            "spec_json",
        ),
        (
            pb::SubmitJobRequest {
                command: vec![],
                ..job("nocmd", 1, 1)
            },
            "command",
        ),
        (job("gang", 1, 1), "job \"gang\" already exists"),
    ];
    for (req, field) in cases {
        let e = jobs.submit_job(req).await.expect_err(field);
        assert!(
            matches!(
                e.code(),
                tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
            ),
            "{e:?}"
        );
        assert!(e.message().starts_with(field), "{field}: {}", e.message());
    }
    let all = jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.jobs.len(), 1, "refused jobs are not stored");

    // A job that must wait: explain says why, with its place in the queue.
    let mut watch = jobs
        .watch_jobs(pb::WatchJobsRequest {
            name: "waits".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    jobs.submit_job(job("waits", 1, 8)).await.expect("submit");
    let x = async {
        loop {
            let x = jobs
                .explain_job(pb::ExplainJobRequest {
                    name: "waits".into(),
                })
                .await
                .expect("explain")
                .into_inner();
            if x.position > 0 && x.reason.contains("quota") {
                return x;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let x = tokio::time::timeout(Duration::from_secs(5), x)
        .await
        .expect("explained");
    assert_eq!(x.position, 1);
    assert!(x.reason.contains("h100-80gb"), "{}", x.reason);
    let e = watch.message().await.expect("stream").expect("event");
    assert_eq!((e.job.as_str(), e.kind.as_str()), ("waits", "submitted"));
    let c = jobs
        .cancel_job(pb::CancelJobRequest {
            name: "waits".into(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(c.state, pb::JobState::Cancelled as i32);
    let e = watch.message().await.expect("stream").expect("event");
    assert_eq!(e.kind, "cancelled");

    // Health and metrics over plain HTTP.
    assert!(http_get(metrics_addr, "/healthz")
        .await
        .starts_with("HTTP/1.1 200"));
    assert!(http_get(metrics_addr, "/readyz")
        .await
        .starts_with("HTTP/1.1 200"));
    let m = http_get(metrics_addr, "/metrics").await;
    for want in [
        "gantry_queue_pending_jobs{queue=\"team-a\"} 0",
        "gantry_queue_running_jobs{queue=\"team-a\"} 1",
        "gantry_gpus_allocated 16",
        "gantry_preemptions_total 0",
        "gantry_schedule_cycle_duration_seconds_bucket",
        "gantry_store_commits_total",
        "gantry_store_errors_total 0",
        "gantry_jobs_submitted_total",
        "gantry_jobs_finished_total{state=\"cancelled\"} 1",
        "gantry_submit_duration_seconds_count",
        "gantry_queue_gpus_used{",
        "gantry_queue_gpus_nominal{",
        "gantry_queue_gpus_borrowed{",
        "gantry_queue_share{queue=\"team-a\"}",
        "gantry_node_heartbeat_age_seconds{node=\"n0\"}",
        "gantry_node_gpus{",
        "gantry_node_gpus_used{node=\"n0\"}",
        "gantry_build_info{version=",
        "process_resident_memory_bytes",
    ] {
        assert!(m.contains(want), "{want} not in\n{m}");
    }

    // Restart on the same data directory: the gang keeps its devices.
    let before = g.tasks.clone();
    drop((queues, jobs, nodes, ch, watch));
    running.shutdown().await.expect("shutdown");
    let running = Server::start(config(dir.path())).await.expect("restart");
    let ch = channel(running.addr).await;
    let mut jobs = JobsClient::new(ch.clone());
    let mut nodes = NodesClient::new(ch.clone());
    let g2 = wait_state(&mut jobs, "gang", pb::JobState::Running).await;
    assert_eq!(g2.tasks, before, "same nodes, same devices, same attempt");
    let w = jobs
        .get_job(pb::GetJobRequest {
            name: "waits".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(w.state, pb::JobState::Cancelled as i32);
    let ns = nodes
        .list_nodes(pb::ListNodesRequest {})
        .await
        .expect("nodes")
        .into_inner();
    assert_eq!(ns.nodes.len(), 2);
    assert_eq!(ns.nodes.iter().map(|n| n.gpus_used).sum::<u32>(), 16);
    drop((jobs, nodes, ch));
    running.shutdown().await.expect("shutdown");
}
