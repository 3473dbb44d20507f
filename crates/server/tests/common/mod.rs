//! Helpers shared by the server's integration tests: a node document, a channel, and waiting for
//! a job's state (bounded by polls, not by a timed assertion).
#![allow(dead_code)]

use gantry_api::gantry::v1 as pb;
use pb::jobs_client::JobsClient;
use tonic::transport::Channel;

/// A node `name` with `gpus` H100s, as the JSON the Nodes API takes.
pub fn node_json(name: &str, gpus: u32) -> String {
    let devices: Vec<String> = (0..gpus)
        .map(|i| {
            format!(r#"{{"uuid": "GPU-{name}-{i}", "model": "h100-80gb", "memory_mib": 81559}}"#)
        })
        .collect();
    format!(
        r#"{{"name": "{name}", "cpu": 64, "memory": "512Gi", "devices": [{}]}}"#,
        devices.join(",")
    )
}

/// A registration of `node_json` by one agent instance (`test-agent`), as an agent sends it.
pub fn register_request(node_json: String) -> pb::RegisterNodeRequest {
    pb::RegisterNodeRequest {
        node_json,
        instance: "test-agent".into(),
        ..Default::default()
    }
}

/// A plain-text channel to a server.
pub async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// Poll `name` until it is in `state` (at most 2,000 polls 10 ms apart).
pub async fn wait_state(
    jobs: &mut JobsClient<Channel>,
    name: &str,
    state: pb::JobState,
) -> pb::Job {
    for _ in 0..2000 {
        let j = jobs
            .get_job(pb::GetJobRequest { name: name.into() })
            .await
            .expect("get")
            .into_inner();
        if j.state == state as i32 {
            return j;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("job {name} never reached {state:?}");
}
