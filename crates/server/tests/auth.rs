//! Bearer tokens over TCP: requests without a valid token are refused; a member submits only to
//! their team's queues and sees only their team's jobs; queue and quota edits are admin-only.

use std::sync::Arc;

use gantry_api::gantry::v1 as pb;
use gantry_server::auth::{Auth, BearerToken};
use gantry_server::{Config, Server};
use tonic::transport::Channel;

type Jobs = pb::jobs_client::JobsClient<
    tonic::service::interceptor::InterceptedService<Channel, BearerToken>,
>;
type Queues = pb::queues_client::QueuesClient<
    tonic::service::interceptor::InterceptedService<Channel, BearerToken>,
>;

const TOKENS: &str = "tokens:
  - {token: tok-alice, user: alice, teams: [team-a], role: member}
  - {token: tok-bob, user: bob, teams: [team-b], role: member}
  - {token: tok-root, user: root, role: admin}
";

fn job(name: &str, queue: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec_json: format!(
            r#"{{"name": "{name}", "queue": "{queue}", "tasks": [{{"count": 1}}]}}"#
        ),
        command: vec!["true".into()],
        env: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_stay_in_their_teams_and_only_admins_edit_queues() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut config = Config::new(dir.path());
    config.auth = Some(Arc::new(
        Auth::from_yaml(TOKENS, "tokens.yaml").expect("tokens"),
    ));
    let running = Server::start(config).await.expect("start");
    let ch = Channel::from_shared(format!("http://{}", running.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let as_ = |t: Option<&str>| BearerToken::new(t).expect("token");
    let jobs = |t: Option<&str>| -> Jobs {
        pb::jobs_client::JobsClient::with_interceptor(ch.clone(), as_(t))
    };
    let queues = |t: Option<&str>| -> Queues {
        pb::queues_client::QueuesClient::with_interceptor(ch.clone(), as_(t))
    };

    // No token, or an unknown one: refused.
    for t in [None, Some("forged")] {
        let e = jobs(t)
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    }

    // Queue edits: admin only.
    for q in ["team-a", "team-b"] {
        let req = pb::QueueRequest {
            spec_json: format!(r#"{{"name": "{q}", "quotas": {{"h100-80gb": {{"nominal": 8}}}}}}"#),
        };
        let e = queues(Some("tok-alice"))
            .create_queue(req.clone())
            .await
            .expect_err("member");
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
        queues(Some("tok-root"))
            .create_queue(req)
            .await
            .expect("admin creates");
    }
    let quota = pb::QueueRequest {
        spec_json: r#"{"name": "team-a", "quotas": {"h100-80gb": {"nominal": 64}}}"#.into(),
    };
    let e = queues(Some("tok-alice"))
        .update_queue(quota.clone())
        .await
        .expect_err("member");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    queues(Some("tok-root"))
        .update_queue(quota)
        .await
        .expect("admin edits quota");
    let e = queues(Some("tok-bob"))
        .delete_queue(pb::DeleteQueueRequest {
            name: "team-a".into(),
        })
        .await
        .expect_err("member");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    // Submissions: own team's queue only; nothing stored for the refused one.
    jobs(Some("tok-alice"))
        .submit_job(job("a1", "team-a"))
        .await
        .expect("own queue");
    let e = jobs(Some("tok-alice"))
        .submit_job(job("a2", "team-b"))
        .await
        .expect_err("other team");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.message().starts_with("spec_json.queue"),
        "{}",
        e.message()
    );
    jobs(Some("tok-bob"))
        .submit_job(job("b1", "team-b"))
        .await
        .expect("bob's own");

    // Reading: members see their team's jobs only; admins see all.
    let names = |r: pb::ListJobsResponse| r.jobs.into_iter().map(|j| j.name).collect::<Vec<_>>();
    let alice = jobs(Some("tok-alice"))
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("list");
    assert_eq!(names(alice.into_inner()), ["a1"]);
    let root = jobs(Some("tok-root"))
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("list");
    assert_eq!(names(root.into_inner()), ["a1", "b1"]);
    for call in ["get", "explain", "cancel"] {
        let mut c = jobs(Some("tok-bob"));
        let e = match call {
            "get" => c
                .get_job(pb::GetJobRequest { name: "a1".into() })
                .await
                .map(|_| ()),
            "explain" => c
                .explain_job(pb::ExplainJobRequest { name: "a1".into() })
                .await
                .map(|_| ()),
            _ => c
                .cancel_job(pb::CancelJobRequest { name: "a1".into() })
                .await
                .map(|_| ()),
        }
        .expect_err(call);
        assert_eq!(e.code(), tonic::Code::PermissionDenied, "{call}: {e:?}");
    }
    jobs(Some("tok-alice"))
        .get_job(pb::GetJobRequest { name: "a1".into() })
        .await
        .expect("own job");

    // Watching: a member's stream carries only their teams' jobs. Alice's event comes first,
    // so if bob could see it, it would be the first thing his stream yields.
    let mut bob_watch = jobs(Some("tok-bob"))
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    jobs(Some("tok-alice"))
        .submit_job(job("a2", "team-a"))
        .await
        .expect("alice's second");
    jobs(Some("tok-bob"))
        .submit_job(job("b2", "team-b"))
        .await
        .expect("bob's second");
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), bob_watch.message())
        .await
        .expect("an event within 20 s")
        .expect("stream")
        .expect("event");
    assert_eq!(first.job, "b2", "bob saw another team's job: {first:?}");

    // Priority classes are admin-only too.
    let e = queues(Some("tok-alice"))
        .set_priority_classes(pb::SetPriorityClassesRequest {
            classes_json: r#"[{"name": "vip", "value": 9000, "preemptible": false}]"#.into(),
        })
        .await
        .expect_err("member");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");

    // Node calls are for agents holding an admin token.
    let mut nodes =
        pb::nodes_client::NodesClient::with_interceptor(ch.clone(), as_(Some("tok-alice")));
    let e = nodes
        .register_node(pb::RegisterNodeRequest {
            node_json: r#"{"name": "n", "cpu": 1, "memory": "1Gi"}"#.into(),
            instance: "test-agent".into(),
            previous_instance: String::new(),
            address: String::new(),
        })
        .await
        .expect_err("member");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = nodes
        .heartbeat(pb::HeartbeatRequest {
            instance: "test-agent".into(),
            node: "n".into(),
            running: Vec::new(),
            leaving: false,
            wait_ms: 0,
            replicas: Vec::new(),
        })
        .await
        .expect_err("member heartbeat");
    assert_eq!(e.code(), tonic::Code::PermissionDenied);

    drop((ch, nodes));
    running.shutdown().await.expect("shutdown");
}
