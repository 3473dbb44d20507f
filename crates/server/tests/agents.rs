//! Two node agents on loopback with real processes: a gang spans both, each task sees exactly
//! its assigned GPUs in `CUDA_VISIBLE_DEVICES`; exit statuses reach the job; when one agent
//! goes away its lease runs out and the gang is requeued whole (the other half is stopped).
//! The gang's tasks get the rendezvous environment (`WORLD_SIZE`, `RANK`, `MASTER_ADDR`, …),
//! with `MASTER_ADDR` the address rank 0's node advertised (or registered from).

use std::time::Duration;

use gantry_api::gantry::v1 as pb;
use gantry_server::agent::{run_agent, AgentConfig};
use gantry_server::{Config, Server};
use pb::jobs_client::JobsClient;
use tonic::transport::Channel;

fn node(name: &str, gpus: u32) -> gantry_model::Node {
    let devices: Vec<String> = (0..gpus)
        .map(|i| {
            format!(r#"{{"uuid": "GPU-{name}-{i}", "model": "h100-80gb", "memory_mib": 81559}}"#)
        })
        .collect();
    serde_json::from_str(&format!(
        r#"{{"name": "{name}", "cpu": 16, "memory": "64Gi", "devices": [{}]}}"#,
        devices.join(",")
    ))
    .expect("node")
}

async fn job_until(
    jobs: &mut JobsClient<Channel>,
    name: &str,
    ok: impl Fn(&pb::Job) -> bool,
) -> pb::Job {
    for _ in 0..500 {
        let j = jobs
            .get_job(pb::GetJobRequest { name: name.into() })
            .await
            .expect("get")
            .into_inner();
        if ok(&j) {
            return j;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job {name} never got there");
}

fn submit(name: &str, count: u32, gpus: u32, script: &str) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        spec_json: format!(
            r#"{{"name": "{name}", "queue": "default", "tasks": [{{"count": {count}, "gpus": {gpus}}}]}}"#
        ),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_run_a_gang_and_a_lost_agent_requeues_it_whole() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = tempfile::tempdir().expect("out");
    let mut config = Config::new(dir.path());
    config.lease_ms = 600;
    config.debounce_ms = 5;
    config.grace_ms = 200;
    let running = Server::start(config).await.expect("start");
    let uri = format!("http://{}", running.addr);
    let mut agents = Vec::new();
    for n in ["n0", "n1"] {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = AgentConfig {
            server: uri.clone(),
            node: node(n, 2),
            token: None,
            tls_ca: None,
            state_dir: None,
            // n0 says where its peers reach it; n1 is reached where it connects from.
            advertise: (n == "n0").then(|| "10.1.0.1".to_string()),
            log_cap_bytes: gantry_server::agent::DEFAULT_LOG_CAP,
            log_retention: gantry_server::agent::DEFAULT_LOG_RETENTION,
        };
        let h = tokio::spawn(run_agent(cfg, async {
            let _ = rx.await;
        }));
        agents.push((tx, h));
    }
    let ch = Channel::from_shared(uri.clone())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut jobs = JobsClient::new(ch.clone());
    // Wait for both registrations.
    let mut nodes = pb::nodes_client::NodesClient::new(ch.clone());
    for _ in 0..200 {
        let n = nodes
            .list_nodes(pb::ListNodesRequest {})
            .await
            .expect("nodes")
            .into_inner();
        if n.nodes.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Exit statuses: 0 succeeds, 3 fails with 3.
    jobs.submit_job(submit("ok", 1, 1, "exit 0"))
        .await
        .expect("ok");
    jobs.submit_job(submit("bad", 1, 1, "exit 3"))
        .await
        .expect("bad");
    let ok = job_until(&mut jobs, "ok", |j| {
        j.state == pb::JobState::Succeeded as i32
    })
    .await;
    assert_eq!(ok.exit_code, 0);
    let bad = job_until(&mut jobs, "bad", |j| j.state == pb::JobState::Failed as i32).await;
    assert_eq!(bad.exit_code, 3);

    // A gang of two 2-GPU tasks spans both nodes; each process sees its own two GPUs.
    let envs = tempfile::tempdir().expect("envs");
    let script = format!(
        "env | grep -E '^(WORLD_SIZE|RANK|LOCAL_RANK|MASTER_ADDR|MASTER_PORT|GANTRY_NUM_NODES|GANTRY_NODE_RANK|GANTRY_HOSTS)=' | sort > {}/$GANTRY_TASK_INDEX; \
         echo \"$CUDA_VISIBLE_DEVICES $NVIDIA_VISIBLE_DEVICES\" > {}/$GANTRY_JOB-$GANTRY_TASK_INDEX-$GANTRY_ATTEMPT; exec sleep 60",
        envs.path().display(),
        out.path().display()
    );
    jobs.submit_job(submit("gang", 2, 2, &script))
        .await
        .expect("gang");
    let g = job_until(&mut jobs, "gang", |j| {
        j.state == pb::JobState::Running as i32
    })
    .await;
    let mut seen = Vec::new();
    for _ in 0..300 {
        seen = std::fs::read_dir(out.path())
            .expect("dir")
            .map(|e| std::fs::read_to_string(e.expect("e").path()).expect("read"))
            .collect();
        if seen.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen.sort();
    let mut want: Vec<String> = g
        .tasks
        .iter()
        .map(|t| format!("{} {}\n", t.devices.join(","), t.devices.join(",")))
        .collect();
    want.sort();
    assert_eq!(seen, want, "each task sees exactly its assigned GPUs");
    assert!(
        seen.iter().any(|s| s.contains("GPU-n0-")) && seen.iter().any(|s| s.contains("GPU-n1-"))
    );
    // Rendezvous: one task per node, so node rank = rank.
    let addr = |node: &str| {
        if node == "n0" {
            "10.1.0.1"
        } else {
            "127.0.0.1"
        }
    };
    let node_of = |i: u32| {
        g.tasks
            .iter()
            .find(|t| t.index == i)
            .map(|t| t.node.clone())
            .expect("placed")
    };
    let (r0, r1) = (node_of(0), node_of(1));
    let mut ports = Vec::new();
    for rank in 0..2u32 {
        let text = std::fs::read_to_string(envs.path().join(rank.to_string())).expect("env file");
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("{k} missing in {text}"))
                .to_string()
        };
        assert_eq!(get("WORLD_SIZE"), "2");
        assert_eq!(get("RANK"), rank.to_string());
        assert_eq!(get("LOCAL_RANK"), "0");
        assert_eq!(get("MASTER_ADDR"), addr(&r0), "{text}");
        assert_eq!(get("GANTRY_NUM_NODES"), "2");
        assert_eq!(get("GANTRY_NODE_RANK"), rank.to_string());
        assert_eq!(get("GANTRY_HOSTS"), format!("{},{}", addr(&r0), addr(&r1)));
        ports.push(get("MASTER_PORT").parse::<u16>().expect("port"));
    }
    assert_eq!(ports[0], ports[1], "one rendezvous port per job");
    assert!(gantry_server::state::RENDEZVOUS_PORTS.contains(&ports[0]));

    // n1's agent goes away: after its lease the gang is requeued whole and n0's half is stopped.
    let (tx, h) = agents.pop().expect("n1");
    let _ = tx.send(());
    h.await.expect("join").expect("agent n1");
    let g = job_until(&mut jobs, "gang", |j| j.requeues == 1).await;
    assert_eq!(
        g.state,
        pb::JobState::Pending as i32,
        "2x2 GPUs do not fit on n0 alone"
    );
    assert!(g.tasks.is_empty());
    assert!(
        g.reason.contains("n1") || !g.reason.is_empty(),
        "{}",
        g.reason
    );
    for _ in 0..300 {
        let n = nodes
            .list_nodes(pb::ListNodesRequest {})
            .await
            .expect("nodes")
            .into_inner();
        let n0 = n.nodes.iter().find(|n| n.name == "n0").expect("n0");
        let n1 = n.nodes.iter().find(|n| n.name == "n1").expect("n1");
        if n0.running_tasks == 0 && !n1.ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (tx, h) = agents.pop().expect("n0");
    let _ = tx.send(());
    h.await.expect("join").expect("agent n0");
    drop((jobs, nodes, ch));
    running.shutdown().await.expect("shutdown");
}
