//! Durable submissions per second and submit latency over loopback gRPC.
//!
//! `cargo run --release -p gantry-server --example submit_bench -- [jobs] [clients]`
//! (defaults 20000 and 64). A server with no nodes (jobs stay pending) starts on a temporary data
//! directory; `clients` connections submit concurrently; every answered submit is durable
//! (committed with fsync). Prints throughput, p50/p99 latency, and how many writes shared a
//! commit.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use gantry_api::gantry::v1 as pb;
use gantry_server::{Config, Server};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let clients: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let running = Server::start(Config::new(dir.path())).await?;
    let uri = format!("http://{}", running.addr);
    let per = jobs / clients;
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let uri = uri.clone();
        handles.push(tokio::spawn(async move {
            let ch = tonic::transport::Channel::from_shared(uri)?.connect().await?;
            let mut jobs = pb::jobs_client::JobsClient::new(ch);
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let req = pb::SubmitJobRequest {
                    spec_json: format!(
                        r#"{{"name": "j{c}-{i}", "queue": "default", "tasks": [{{"count": 1, "gpus": 1}}]}}"#
                    ),
                    command: vec!["true".into()],
                    env: Default::default(),
                };
                let s = Instant::now();
                jobs.submit_job(req).await?;
                lat.push(s.elapsed());
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(lat)
        }));
    }
    let mut lat: Vec<Duration> = Vec::new();
    for h in handles {
        lat.extend(h.await?.map_err(|e| e.to_string())?);
    }
    let wall = t0.elapsed();
    lat.sort();
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let stats = running.server.writer_stats();
    let (writes, commits) = (stats.writes.load(Relaxed), stats.commits.load(Relaxed));
    println!(
        "{} durable submissions by {clients} clients in {:.2} s: {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {writes} writes in {commits} commits",
        lat.len(),
        wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64(),
        q(0.50).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3,
    );
    running.shutdown().await?;
    Ok(())
}
