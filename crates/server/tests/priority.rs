//! Priority classes through the API: replaced by an admin, validated with field-named errors,
//! stored and recovered on restart, and used by the engine (a job of a higher custom class
//! preempts one of a lower class).

mod common;

use common::*;
use gantry_api::gantry::v1 as pb;
use gantry_server::{Config, Server};
use pb::jobs_client::JobsClient;
use pb::queues_client::QueuesClient;
use tonic::transport::Channel;

fn job(name: &str, class: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec_json: format!(
            r#"{{"name": "{name}", "queue": "default", "priority_class": "{class}", "tasks": [{{"count": 1, "gpus": 4}}]}}"#
        ),
        command: vec!["sleep".into(), "1000".into()],
        env: Default::default(),
    }
}

async fn start(dir: &std::path::Path) -> (gantry_server::Running, Channel) {
    let mut c = Config::new(dir);
    c.debounce_ms = 5;
    let running = Server::start(c).await.expect("start");
    let ch = Channel::from_shared(format!("http://{}", running.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    (running, ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_priority_classes_are_validated_stored_recovered_and_used() {
    let dir = tempfile::tempdir().expect("tmp");
    let (running, ch) = start(dir.path()).await;
    let mut queues = QueuesClient::new(ch.clone());
    let defaults = queues
        .list_priority_classes(pb::ListPriorityClassesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(defaults.defaults);
    assert_eq!(defaults.classes[0].name, "inference");

    // Refused, naming the field; nothing changes.
    for (json, field) in [
        (
            r#"[{"name": "a", "value": 1}, {"name": "a", "value": 2}]"#,
            "classes_json[1].name: duplicate",
        ),
        (r#"[{"name": "A B", "value": 1}]"#, "classes_json[0].name: "),
        (
            r#"[{"name": "a", "value": "high"}]"#,
            "classes_json[0].value: malformed",
        ),
        (r#"[]"#, "classes_json: at least one"),
    ] {
        let e = queues
            .set_priority_classes(pb::SetPriorityClassesRequest {
                classes_json: json.into(),
            })
            .await
            .expect_err(json);
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{json}: {e:?}");
        assert!(e.message().starts_with(field), "{json}: {}", e.message());
    }

    let custom = r#"[{"name": "urgent", "value": 900, "preemptible": false},
                     {"name": "scavenger", "value": 1},
                     {"name": "training", "value": 500}]"#;
    let set = queues
        .set_priority_classes(pb::SetPriorityClassesRequest {
            classes_json: custom.into(),
        })
        .await
        .expect("set")
        .into_inner();
    assert!(!set.defaults);
    let names: Vec<&str> = set.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["urgent", "training", "scavenger"]);

    // The engine uses them: a 4-GPU node, a scavenger job on it, then an urgent one.
    pb::nodes_client::NodesClient::new(ch.clone())
        .register_node(register_request(node_json("n0", 4)))
        .await
        .expect("register");
    let mut jobs = JobsClient::new(ch.clone());
    let e = jobs
        .submit_job(job("x", "batch"))
        .await
        .expect_err("batch is gone");
    assert!(e.message().contains("priority_class"), "{}", e.message());
    jobs.submit_job(job("low", "scavenger")).await.expect("low");
    let low = wait_state(&mut jobs, "low", pb::JobState::Running).await;
    assert_eq!(low.priority, 1);
    jobs.submit_job(job("high", "urgent")).await.expect("high");
    let high = wait_state(&mut jobs, "high", pb::JobState::Running).await;
    assert_eq!(high.priority, 900);
    let low = wait_state(&mut jobs, "low", pb::JobState::Pending).await;
    assert_eq!(low.requeues, 1, "preempted by the urgent job");

    // A class in use cannot go away.
    let e = queues
        .set_priority_classes(pb::SetPriorityClassesRequest {
            classes_json: r#"[{"name": "urgent", "value": 900}]"#.into(),
        })
        .await
        .expect_err("scavenger is in use");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("\"scavenger\""), "{}", e.message());

    // Stored and recovered.
    drop((queues, jobs, ch));
    running.shutdown().await.expect("shutdown");
    let (running, ch) = start(dir.path()).await;
    let back = QueuesClient::new(ch.clone())
        .list_priority_classes(pb::ListPriorityClassesRequest {})
        .await
        .expect("list")
        .into_inner();
    assert_eq!(back, set);
    let high = JobsClient::new(ch)
        .get_job(pb::GetJobRequest {
            name: "high".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(high.priority, 900);
    running.shutdown().await.expect("shutdown");
}
