//! Task output on the node: each task's stdout and stderr go into one pipe (interleaved as
//! written, like `2>&1`), which the agent reads into the run's capped, rotating file under
//! `<state dir>/logs` and hands to the [`Shipper`], which pushes it to the server in batches.
//!
//! The node's file is the complete copy (within its cap). The shipper holds at most
//! [`SHIP_BUDGET`] bytes while the server cannot be reached; past that it drops the oldest
//! output, and the server's copy says how many bytes are missing.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use gantry_api::gantry::v1 as pb;
use tokio::sync::mpsc;

use super::{pb_ref, NodesClient};
use crate::state::TaskKey;
use crate::tasklog::LogFile;

/// Output held for the server while it cannot be reached, at most.
pub const SHIP_BUDGET: usize = 8 << 20;

/// Bytes sent in one `PushLogs` call, at most.
const BATCH: usize = 1 << 20;

/// How long the shipper waits for more output before it sends what it has.
const LINGER: Duration = Duration::from_millis(50);

/// Where and how much output a node keeps.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    /// The node's files (`<state dir>/logs`); none: output is only sent to the server.
    pub dir: Option<PathBuf>,
    /// Per-run cap of the node's file (it rotates once, so at most twice this).
    pub cap_bytes: u64,
    /// A job's files are deleted once none was written for this long.
    pub retention: Duration,
}

/// The pipe a task writes to; `stdio()` gives its two ends for the child.
#[derive(Debug)]
pub struct Pipe {
    reader: std::io::PipeReader,
    writer: std::io::PipeWriter,
}

impl Pipe {
    /// A fresh pipe.
    ///
    /// # Errors
    /// No file descriptors left.
    pub fn new() -> std::io::Result<Pipe> {
        let (reader, writer) = std::io::pipe()?;
        Ok(Pipe { reader, writer })
    }

    /// The child's stdout and stderr (both the pipe's write end).
    ///
    /// # Errors
    /// No file descriptors left.
    pub fn stdio(&self) -> std::io::Result<(std::process::Stdio, std::process::Stdio)> {
        Ok((
            self.writer.try_clone()?.into(),
            self.writer.try_clone()?.into(),
        ))
    }
}

/// Read a started task's output until every process holding the pipe closed it: into the
/// node's file, and to the shipper. The write end this agent holds is closed here, so the end
/// of output is seen when the task's processes are gone.
pub fn capture(key: TaskKey, pipe: Pipe, config: &OutputConfig, ship: Shipper) {
    let Pipe { reader, writer } = pipe;
    drop(writer);
    let path = config
        .dir
        .as_ref()
        .map(|d| crate::tasklog::path_of(d, &key));
    let cap = config.cap_bytes;
    tokio::spawn(async move {
        let mut file = path.and_then(|p| match LogFile::open(p.clone(), cap) {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(path = %p.display(), error = %e, "task output file cannot be opened; output goes to the server only");
                None
            }
        });
        let mut offset = file.as_ref().map_or(0, LogFile::end);
        let rx = match tokio::net::unix::pipe::Receiver::from_owned_fd(OwnedFd::from(reader)) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(job = %key.job, error = %e, "task output cannot be read");
                ship.send(key, offset, Vec::new(), true);
                return;
            }
        };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if rx.readable().await.is_err() {
                break;
            }
            match rx.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let data = buf[..n].to_vec();
                    if let Some(f) = &mut file {
                        if let Err(e) = f.append(&data) {
                            tracing::warn!(job = %key.job, error = %e, "task output file cannot be written; output goes to the server only");
                            file = None;
                        }
                    }
                    ship.send(key.clone(), offset, data, false);
                    offset += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            }
        }
        ship.send(key, offset, Vec::new(), true);
    });
}

/// Delete the node's output of jobs not written to for the retention period.
pub fn prune(config: &OutputConfig) {
    if let Some(dir) = &config.dir {
        let n = crate::tasklog::prune(dir, config.retention);
        if n > 0 {
            tracing::info!(jobs = n, dir = %dir.display(), "deleted old task output");
        }
    }
}

/// Hands output to the shipping task.
#[derive(Debug, Clone)]
pub struct Shipper {
    tx: mpsc::UnboundedSender<pb::LogChunk>,
}

impl Shipper {
    /// Start the shipping task for node `node`; it ends once every [`Shipper`] is dropped and
    /// what they sent is shipped (or could not be).
    pub fn spawn(nodes: NodesClient, node: String) -> (Shipper, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Shipper { tx }, tokio::spawn(ship(nodes, node, rx)))
    }

    fn send(&self, key: TaskKey, offset: u64, data: Vec<u8>, eof: bool) {
        let _ = self.tx.send(pb::LogChunk {
            task: Some(pb_ref(&key)),
            offset,
            data,
            eof,
        });
    }
}

/// Bytes queued.
fn held(queue: &VecDeque<pb::LogChunk>) -> usize {
    queue.iter().map(|c| c.data.len()).sum()
}

/// Drop the oldest output until the queue holds at most [`SHIP_BUDGET`] bytes (ends of output
/// are kept); returns the bytes dropped.
fn trim(queue: &mut VecDeque<pb::LogChunk>) -> usize {
    let mut over = held(queue).saturating_sub(SHIP_BUDGET);
    let mut dropped = 0;
    for c in queue.iter_mut() {
        if over == 0 {
            break;
        }
        let n = c.data.len();
        if n > 0 {
            c.data.clear();
            over = over.saturating_sub(n);
            dropped += n;
        }
    }
    queue.retain(|c| !c.data.is_empty() || c.eof);
    dropped
}

/// Take from the front of the queue up to [`BATCH`] bytes, joining consecutive chunks of one
/// run.
fn batch(queue: &VecDeque<pb::LogChunk>) -> (usize, Vec<pb::LogChunk>) {
    let mut out: Vec<pb::LogChunk> = Vec::new();
    let mut bytes = 0;
    let mut taken = 0;
    for c in queue {
        if bytes > 0 && bytes + c.data.len() > BATCH {
            break;
        }
        bytes += c.data.len();
        taken += 1;
        match out.last_mut() {
            Some(last)
                if last.task == c.task
                    && !last.eof
                    && last.offset + last.data.len() as u64 == c.offset =>
            {
                last.data.extend_from_slice(&c.data);
                last.eof = c.eof;
            }
            _ => out.push(c.clone()),
        }
    }
    (taken, out)
}

async fn ship(mut nodes: NodesClient, node: String, mut rx: mpsc::UnboundedReceiver<pb::LogChunk>) {
    let mut queue: VecDeque<pb::LogChunk> = VecDeque::new();
    let mut open = true;
    let mut failing = false;
    loop {
        if queue.is_empty() {
            match rx.recv().await {
                Some(c) => queue.push_back(c),
                None => return,
            }
        }
        // Gather what comes within the linger (or until a batch is full).
        let until = tokio::time::Instant::now() + LINGER;
        while open && held(&queue) < BATCH {
            tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => queue.push_back(c),
                    None => open = false,
                },
                _ = tokio::time::sleep_until(until) => break,
            }
        }
        let dropped = trim(&mut queue);
        if dropped > 0 {
            tracing::warn!(bytes = dropped, "the server has not taken task output for a while: dropped the oldest (the node's files keep it)");
        }
        let (taken, chunks) = batch(&queue);
        let call = nodes.push_logs(pb::PushLogsRequest {
            node: node.clone(),
            chunks,
        });
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(_)) => {
                queue.drain(..taken);
                failing = false;
            }
            Ok(Err(s)) if s.code() == tonic::Code::InvalidArgument => {
                tracing::warn!(error = %s.message(), "task output refused by the server; dropped");
                queue.drain(..taken);
            }
            r => {
                if !failing {
                    let why = match r {
                        Ok(Err(s)) => s.message().to_string(),
                        _ => "no answer within 5 s".into(),
                    };
                    tracing::warn!(error = %why, "task output could not be sent; will retry");
                }
                failing = true;
                if !open {
                    // Stopping, and the server does not take it: the node's files keep it.
                    return;
                }
                // Keep taking output meanwhile, so the pipes never fill up and stall tasks.
                let until = tokio::time::Instant::now() + Duration::from_secs(1);
                loop {
                    tokio::select! {
                        c = rx.recv() => match c {
                            Some(c) => queue.push_back(c),
                            None => { open = false; break; }
                        },
                        _ = tokio::time::sleep_until(until) => break,
                    }
                }
            }
        }
        if !open && queue.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(job: &str, offset: u64, data: &[u8], eof: bool) -> pb::LogChunk {
        pb::LogChunk {
            task: Some(pb::TaskRef {
                job: job.into(),
                group: 0,
                index: 0,
                attempt: 0,
            }),
            offset,
            data: data.to_vec(),
            eof,
        }
    }

    #[test]
    fn a_batch_joins_consecutive_output_of_one_run() {
        let q: VecDeque<_> = [
            chunk("a", 0, b"he", false),
            chunk("a", 2, b"llo", false),
            chunk("b", 0, b"x", false),
            chunk("a", 5, b"", true),
        ]
        .into();
        let (taken, out) = batch(&q);
        assert_eq!(taken, 4);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].data, b"hello");
        assert_eq!((out[2].offset, out[2].eof), (5, true));
    }

    #[test]
    fn over_budget_the_oldest_output_goes_and_ends_stay() {
        let big = vec![b'x'; SHIP_BUDGET / 2 + 1];
        let mut q: VecDeque<_> = [
            chunk("a", 0, &big, true),
            chunk("b", 0, &big, false),
            chunk("b", big.len() as u64, b"tail", false),
        ]
        .into();
        let dropped = trim(&mut q);
        assert_eq!(dropped, big.len());
        assert_eq!(q.len(), 3);
        assert!(q[0].data.is_empty() && q[0].eof);
        assert_eq!(q[2].data, b"tail");
    }
}
