//! Short jobs end to end: how many finish per second, and how long a GPU sits idle between two.
//!
//! `cargo run --release -p gantry-server --example jobs_throughput -- [jobs] [agents] [gpus]
//! [debounce_ms]` (defaults 2000, 4, 8, 20). A server with the shipped defaults (20 ms debounce
//! unless given, 10 s lease) and
//! `agents` node agents of `gpus` fake GPUs each run in this process over loopback gRPC; every
//! task is a real process, `sh -c` around `sleep 0.1`, that writes the time it started and
//! ended. All jobs are submitted at once (8 clients); the clock runs from the first submission
//! to the last job seen succeeded. The idle time of a GPU is, for two tasks that ran one after
//! the other on it, the later one's start minus the earlier one's end (process start included).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gantry_api::gantry::v1 as pb;
use gantry_server::agent::{run_agent, AgentConfig};
use gantry_server::{Config, Server};

fn node(name: &str, gpus: u32) -> Result<gantry_model::Node, serde_json::Error> {
    let devices: Vec<String> = (0..gpus)
        .map(|i| {
            format!(r#"{{"uuid": "GPU-{name}-{i}", "model": "h100-80gb", "memory_mib": 81559}}"#)
        })
        .collect();
    serde_json::from_str(&format!(
        r#"{{"name": "{name}", "cpu": 256, "memory": "1Ti", "devices": [{}]}}"#,
        devices.join(",")
    ))
}

fn nanos(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map_or(Ok(2000), |a| a.parse())?;
    let agents: usize = args.next().map_or(Ok(4), |a| a.parse())?;
    let gpus: u32 = args.next().map_or(Ok(8), |a| a.parse())?;
    let debounce_ms: u64 = args.next().map_or(Ok(20), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let mut config = Config::new(dir.path());
    config.debounce_ms = debounce_ms;
    let running = Server::start(config).await?;
    let uri = format!("http://{}", running.addr);
    let mut stops = Vec::new();
    for a in 0..agents {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = AgentConfig {
            server: uri.clone(),
            node: node(&format!("n{a}"), gpus)?,
            token: None,
            tls_ca: None,
            state_dir: None,
            advertise: None,
            log_cap_bytes: gantry_server::agent::DEFAULT_LOG_CAP,
            log_retention: gantry_server::agent::DEFAULT_LOG_RETENTION,
        };
        tokio::spawn(run_agent(cfg, async {
            let _ = rx.await;
        }));
        stops.push(tx);
    }
    let ch = tonic::transport::Channel::from_shared(uri.clone())?
        .connect()
        .await?;
    let mut nodes = pb::nodes_client::NodesClient::new(ch.clone());
    while nodes
        .list_nodes(pb::ListNodesRequest {})
        .await?
        .into_inner()
        .nodes
        .len()
        < agents
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let script = format!(
        "d={}/$GANTRY_JOB; echo \"$CUDA_VISIBLE_DEVICES $(date +%s%N)\" > $d.start; sleep 0.1; date +%s%N > $d.end",
        out.path().display()
    );
    let t0 = Instant::now();
    let clients = 8;
    let mut handles = Vec::new();
    for c in 0..clients {
        let (uri, script) = (uri.clone(), script.clone());
        handles.push(tokio::spawn(async move {
            let ch = tonic::transport::Channel::from_shared(uri)?.connect().await?;
            let mut jobs_c = pb::jobs_client::JobsClient::new(ch);
            for i in (c..jobs).step_by(clients) {
                jobs_c
                    .submit_job(pb::SubmitJobRequest {
                        spec_json: format!(
                            r#"{{"name": "j{i}", "queue": "default", "tasks": [{{"count": 1, "gpus": 1}}]}}"#
                        ),
                        command: vec!["sh".into(), "-c".into(), script.clone()],
                        env: Default::default(),
                    })
                    .await?;
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for h in handles {
        h.await?.map_err(|e| e.to_string())?;
    }
    let submitted = t0.elapsed();
    let mut jc = pb::jobs_client::JobsClient::new(ch.clone());
    loop {
        let done = jc
            .list_jobs(pb::ListJobsRequest {
                queue: String::new(),
                states: vec![pb::JobState::Succeeded as i32, pb::JobState::Failed as i32],
                limit: 0,
            })
            .await?
            .into_inner()
            .jobs
            .len();
        if done >= jobs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = t0.elapsed();
    // Idle gaps per GPU from what the tasks wrote.
    let mut runs: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for i in 0..jobs {
        let s = std::fs::read_to_string(out.path().join(format!("j{i}.start")))?;
        let e = std::fs::read_to_string(out.path().join(format!("j{i}.end")))?;
        let (gpu, start) = s.trim().split_once(' ').ok_or("bad start file")?;
        if let (Some(a), Some(b)) = (nanos(start), nanos(&e)) {
            runs.entry(gpu.to_string()).or_default().push((a, b));
        }
    }
    let mut gaps: Vec<f64> = Vec::new();
    for r in runs.values_mut() {
        r.sort_unstable();
        for w in r.windows(2) {
            gaps.push(w[1].0.saturating_sub(w[0].1) as f64 / 1e6);
        }
    }
    gaps.sort_by(f64::total_cmp);
    let q = |p: f64| {
        gaps.get(((gaps.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let slots = agents as f64 * f64::from(gpus);
    println!(
        "{jobs} jobs (sh -c 'sleep 0.1'), {agents} agents x {gpus} GPUs, debounce {debounce_ms} ms: submitted in {:.2} s, all finished in {:.2} s: {:.0} jobs/s (at most {:.0} with 0.1 s tasks on {} GPUs)",
        submitted.as_secs_f64(),
        took.as_secs_f64(),
        jobs as f64 / took.as_secs_f64(),
        slots / 0.1,
        slots
    );
    println!(
        "GPU idle between two tasks: median {:.1} ms, p90 {:.1} ms, p99 {:.1} ms ({} gaps)",
        q(0.5),
        q(0.9),
        q(0.99),
        gaps.len()
    );
    for tx in stops {
        let _ = tx.send(());
    }
    running.shutdown().await?;
    Ok(())
}
