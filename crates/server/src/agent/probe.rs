//! Probes of inference replicas on this node: at the service's interval, an HTTP GET of the
//! readiness path (2xx: ready) and of the metrics path, whose Prometheus text gives the load
//! metric (summed over its series; for a `rate` metric, its per-second increase since the last
//! scrape). What was found goes to the server with the next heartbeat.
//!
//! The HTTP client is deliberately small: HTTP/1.0 over loopback TCP (the replica runs on this
//! node), a 2 s limit per request, bodies up to 4 MiB, chunked bodies decoded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_api::gantry::v1 as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::pb_ref;
use crate::state::TaskKey;

/// The latest finding per replica, shared with the heartbeat.
pub type Reports = Arc<Mutex<HashMap<TaskKey, pb::ReplicaReport>>>;

fn lock(r: &Reports) -> std::sync::MutexGuard<'_, HashMap<TaskKey, pb::ReplicaReport>> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the heartbeat sends.
pub fn snapshot(r: &Reports) -> Vec<pb::ReplicaReport> {
    lock(r).values().cloned().collect()
}

/// A running probe; dropping it stops the probe and forgets its replica.
#[derive(Debug)]
pub struct ProbeHandle {
    task: tokio::task::JoinHandle<()>,
    key: TaskKey,
    reports: Reports,
}

impl Drop for ProbeHandle {
    fn drop(&mut self) {
        self.task.abort();
        lock(&self.reports).remove(&self.key);
    }
}

/// Probe the replica `key` listening on `port` as `probe` says, until the handle is dropped.
pub fn spawn(key: TaskKey, port: u16, probe: pb::ReplicaProbe, reports: Reports) -> ProbeHandle {
    let (k, r) = (key.clone(), reports.clone());
    let task = tokio::spawn(async move {
        let every = Duration::from_millis(u64::from(probe.interval_ms.max(100)));
        let addr = format!("127.0.0.1:{port}");
        let mut last_counter: Option<(f64, tokio::time::Instant)> = None;
        loop {
            let ready = if probe.readiness_path.is_empty() {
                true
            } else {
                matches!(
                    http_get(&addr, &probe.readiness_path).await,
                    Ok((200..=299, _))
                )
            };
            let mut value = None;
            if ready && !probe.metric.is_empty() {
                if let Ok((200..=299, body)) = http_get(&addr, &probe.metric_path).await {
                    let read = metric_value(&body, &probe.metric);
                    value = match (probe.rate, read) {
                        (false, v) => v,
                        (true, Some(now)) => {
                            let t = tokio::time::Instant::now();
                            let rate = last_counter.and_then(|(before, at)| {
                                let dt = t.duration_since(at).as_secs_f64();
                                // A counter that went down was reset: no rate this time.
                                (dt > 0.0 && now >= before).then(|| (now - before) / dt)
                            });
                            last_counter = Some((now, t));
                            rate
                        }
                        (true, None) => None,
                    };
                }
            }
            lock(&r).insert(
                k.clone(),
                pb::ReplicaReport {
                    task: Some(pb_ref(&k)),
                    ready,
                    measured: value.is_some(),
                    value: value.unwrap_or(0.0),
                },
            );
            tokio::time::sleep(every).await;
        }
    });
    ProbeHandle { task, key, reports }
}

/// GET `path` from `host_port` (`127.0.0.1:8000`, `router:9090`): the status code and the body.
///
/// # Errors
/// No connection, no answer within 2 s, or not an HTTP response.
pub async fn http_get(host_port: &str, path: &str) -> std::io::Result<(u16, String)> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(host_port).await?;
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: {host_port}\r\nAccept: text/plain\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        (&mut s).take(4 << 20).read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(2), fetch)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer within 2 s"))??;
    parse_response(&raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}

fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// The sum of `metric`'s samples in Prometheus text (none when it has none).
pub fn metric_value(text: &str, metric: &str) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(|c: char| c == '{' || c.is_whitespace())
            .unwrap_or(line.len());
        if &line[..name_end] != metric {
            continue;
        }
        let rest = &line[name_end..];
        let after_labels = if rest.starts_with('{') {
            // Label values may hold '}' inside quotes: find the closing brace outside them.
            let mut quoted = false;
            let mut escaped = false;
            let mut close = None;
            for (i, c) in rest.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => quoted = !quoted,
                    '}' if !quoted => {
                        close = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            &rest[close? + 1..]
        } else {
            rest
        };
        let v: f64 = match after_labels.split_whitespace().next()? {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            t => t.parse().ok()?,
        };
        if v.is_finite() {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_is_summed_over_series() {
        let text = "# HELP vllm:num_requests_running Number of requests running.\n\
                    # TYPE vllm:num_requests_running gauge\n\
                    vllm:num_requests_running{model_name=\"a}b\"} 3.0\n\
                    vllm:num_requests_running{model_name=\"c\"} 2\n\
                    vllm:num_requests_running_total 100\n\
                    vllm:num_requests_waiting 7 1700000000000\n";
        assert_eq!(metric_value(text, "vllm:num_requests_running"), Some(5.0));
        assert_eq!(metric_value(text, "vllm:num_requests_waiting"), Some(7.0));
        assert_eq!(metric_value(text, "absent"), None);
    }

    #[test]
    fn responses_plain_and_chunked() {
        let plain = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nload 3\n";
        assert_eq!(parse_response(plain), Some((200, "load 3\n".into())));
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnot \r\n5\r\nready\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked), Some((503, "not ready".into())));
        assert_eq!(parse_response(b"garbage"), None);
    }
}
