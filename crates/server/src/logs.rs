//! The server's copy of task output, and `TaskLogs`: what `gantry logs` reads.
//!
//! Agents capture each task's stdout and stderr on their node ([`crate::tasklog`]) and push it
//! here (`Nodes.PushLogs`) as it comes. The server keeps one capped, rotating file per task run
//! under `<data dir>/logs`, so output stays readable after the node is gone and a user needs no
//! access to the node. These files are not in the store: output is kept on a best-effort basis
//! (a crash loses what was not yet written, a full disk drops output), job records never are.
//!
//! A job's output is deleted when its record is (`--retain-finished-hours`), and when a new job
//! takes a forgotten job's name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_api::gantry::v1 as pb;
use tokio::sync::{mpsc, Notify};
use tonic::Status;

use crate::state::TaskKey;
use crate::tasklog::{self, LogFile};

/// Per-task cap of the server's copy, by default (a run keeps at most twice this).
pub const DEFAULT_CAP: u64 = 16 << 20;

/// Files held open for appends before all are closed (they reopen on the next write).
const MAX_OPEN: usize = 512;

/// How long a follower waits, after a run ended, for output its agent has not sent yet.
const FINAL_OUTPUT_WAIT_MS: u64 = 3_000;

/// The server's copy of every task run's output.
#[derive(Debug)]
pub struct LogStore {
    dir: PathBuf,
    cap: u64,
    open: Mutex<HashMap<TaskKey, LogFile>>,
    /// Runs whose output is closed (the agent sent its end).
    closed: Mutex<HashSet<TaskKey>>,
    /// Woken on every push, for followers.
    changed: Notify,
}

/// One chunk of pushed output.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// Whose.
    pub key: TaskKey,
    /// The agent's offset of `data`.
    pub offset: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// Nothing more will come for this run.
    pub eof: bool,
}

impl LogStore {
    /// A store under `dir` (created on the first write), `cap` bytes per file.
    pub fn new(dir: PathBuf, cap: u64) -> LogStore {
        LogStore {
            dir,
            cap,
            open: Mutex::new(HashMap::new()),
            closed: Mutex::new(HashSet::new()),
            changed: Notify::new(),
        }
    }

    /// Where the files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Write pushed chunks (blocking file I/O: call it off the async threads).
    ///
    /// # Errors
    /// A file cannot be written (the chunks before it were).
    pub fn receive(&self, chunks: Vec<Pushed>) -> std::io::Result<()> {
        let result = (|| {
            let mut open = Self::lock(&self.open);
            for c in chunks {
                if !c.data.is_empty() {
                    if !open.contains_key(&c.key) {
                        if open.len() >= MAX_OPEN {
                            open.clear();
                        }
                        let f = LogFile::open(tasklog::path_of(&self.dir, &c.key), self.cap)?;
                        open.insert(c.key.clone(), f);
                    }
                    if let Some(f) = open.get_mut(&c.key) {
                        f.receive(c.offset, &c.data)?;
                    }
                }
                if c.eof {
                    open.remove(&c.key);
                    Self::lock(&self.closed).insert(c.key);
                }
            }
            Ok(())
        })();
        self.changed.notify_waiters();
        result
    }

    /// Delete a job's output (its record is gone, or a new job takes its name).
    pub fn forget_job(&self, job: &str) {
        Self::lock(&self.open).retain(|k, _| k.job != job);
        Self::lock(&self.closed).retain(|k| k.job != job);
        tasklog::remove_job(&self.dir, job);
    }

    /// Delete the output of every job `keep` says no to; returns how many jobs.
    pub fn retain_jobs(&self, keep: impl Fn(&str) -> bool) -> usize {
        let gone: Vec<String> = tasklog::jobs(&self.dir)
            .into_iter()
            .filter(|j| !keep(j))
            .collect();
        for j in &gone {
            self.forget_job(j);
        }
        gone.len()
    }

    fn is_closed(&self, key: &TaskKey) -> bool {
        Self::lock(&self.closed).contains(key)
    }
}

/// Which output a reader wants.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// The job.
    pub job: String,
    /// The run.
    pub attempt: u32,
    /// Only this group.
    pub group: Option<u16>,
    /// Only this task index.
    pub task: Option<u32>,
    /// Keep going until the run ends.
    pub follow: bool,
    /// Start this many bytes before each task's end (0: from its start).
    pub tail_bytes: u64,
}

/// Whether a run is over: `Some(ms since the epoch it ended, when known)`.
pub type RunOver = Box<dyn Fn() -> Option<Option<u64>> + Send>;

/// Most bytes in one chunk sent to a reader.
const CHUNK: usize = 256 * 1024;

/// Send the wanted output to `tx` until it is all sent (or, following, until the run ended
/// and its output is complete), or the reader goes away.
pub async fn serve(
    store: Arc<LogStore>,
    want: Wanted,
    over: RunOver,
    tx: mpsc::Sender<Result<pb::TaskLogChunk, Status>>,
) {
    // Per task run: the next offset to send.
    let mut next: BTreeMap<(u16, u32), u64> = BTreeMap::new();
    let mut ended_at: Option<u64> = None;
    let mut finishing = false;
    loop {
        let changed = store.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let runs: Vec<(u16, u32)> = tasklog::runs(&store.dir, &want.job)
            .into_iter()
            .filter(|&(g, i, a)| {
                a == want.attempt
                    && want.group.is_none_or(|w| w == g)
                    && want.task.is_none_or(|w| w == i)
            })
            .map(|(g, i, _)| (g, i))
            .collect();
        // Read what is new for every run, off the async threads.
        let dir = store.dir.clone();
        let (job, attempt, tail) = (want.job.clone(), want.attempt, want.tail_bytes);
        let mut cursor = next.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (g, i) in runs {
                let path = tasklog::path_of(
                    &dir,
                    &TaskKey {
                        job: job.clone(),
                        group: g,
                        index: i,
                        attempt,
                    },
                );
                let from = *cursor
                    .entry((g, i))
                    .or_insert_with(|| match tail {
                        0 => 0,
                        n => tasklog::end_of(&path).saturating_sub(n),
                    });
                match tasklog::read_at(&path, from, CHUNK) {
                    Ok((start, data)) => out.push(((g, i), from, start, data)),
                    Err(e) => tracing::warn!(path = %path.display(), error = %e, "task output cannot be read"),
                }
            }
            out
        })
        .await
        .unwrap_or_default();
        let mut more = false;
        for ((g, i), from, start, data) in read {
            // Bytes not shown before these: on a run's first read, everything before its start
            // (a tail, or output rotated away); later, what rotated away under the reader.
            let skipped = if next.contains_key(&(g, i)) {
                start - from
            } else {
                start
            };
            next.insert((g, i), start + data.len() as u64);
            if data.is_empty() && skipped == 0 {
                continue;
            }
            // Read again until nothing is new: a read stops at the end of a rotated file.
            more |= !data.is_empty();
            let chunk = pb::TaskLogChunk {
                group: u32::from(g),
                index: i,
                attempt: want.attempt,
                data,
                skipped,
            };
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
        if more {
            continue;
        }
        if !want.follow || finishing {
            return;
        }
        if let Some(ended) = over() {
            let now = crate::server::now_ms();
            let ended = *ended_at.get_or_insert(ended.unwrap_or(now));
            let all_closed = !next.is_empty()
                && next.keys().all(|&(g, i)| {
                    store.is_closed(&TaskKey {
                        job: want.job.clone(),
                        group: g,
                        index: i,
                        attempt: want.attempt,
                    })
                });
            if all_closed || now.saturating_sub(ended) >= FINAL_OUTPUT_WAIT_MS {
                // One last read picks up what the final push brought.
                finishing = true;
                continue;
            }
        }
        tokio::select! {
            _ = &mut changed => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tx.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(index: u32) -> TaskKey {
        TaskKey {
            job: "j".into(),
            group: 0,
            index,
            attempt: 0,
        }
    }

    fn pushed(index: u32, offset: u64, data: &str, eof: bool) -> Pushed {
        Pushed {
            key: key(index),
            offset,
            data: data.as_bytes().to_vec(),
            eof,
        }
    }

    async fn read_all(store: &Arc<LogStore>, want: Wanted, over: RunOver) -> Vec<(u32, String)> {
        let (tx, mut rx) = mpsc::channel(16);
        let reader = tokio::spawn(serve(store.clone(), want, over, tx));
        let mut got = Vec::new();
        while let Some(c) = rx.recv().await {
            let c = c.expect("chunk");
            got.push((c.index, String::from_utf8(c.data).expect("utf-8")));
        }
        reader.await.expect("reader");
        got
    }

    fn want(follow: bool) -> Wanted {
        Wanted {
            job: "j".into(),
            attempt: 0,
            group: None,
            task: None,
            follow,
            tail_bytes: 0,
        }
    }

    #[tokio::test]
    async fn a_follower_gets_output_as_it_comes_and_stops_when_the_run_has_ended() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(LogStore::new(dir.path().join("logs"), 1 << 20));
        store
            .receive(vec![pushed(0, 0, "a\n", false), pushed(1, 0, "b\n", false)])
            .expect("write");
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let e = ended.clone();
        let over: RunOver = Box::new(move || {
            e.load(std::sync::atomic::Ordering::SeqCst)
                .then_some(Some(crate::server::now_ms()))
        });
        let (s, e) = (store.clone(), ended.clone());
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            s.receive(vec![pushed(0, 2, "c\n", true)]).expect("write");
            e.store(true, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            // The last of task 1 comes after the run ended, before its end of output.
            s.receive(vec![pushed(1, 2, "d\n", true)]).expect("write");
        });
        let got = read_all(&store, want(true), over).await;
        writer.await.expect("writer");
        let text: String = got.iter().map(|(i, t)| format!("{i}:{t}")).collect();
        assert!(text.contains("0:a\n") && text.contains("1:b\n"), "{text}");
        assert!(text.contains("0:c\n") && text.contains("1:d\n"), "{text}");
    }

    #[tokio::test]
    async fn a_run_whose_agent_never_closes_its_output_ends_after_the_wait() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(LogStore::new(dir.path().join("logs"), 1 << 20));
        store
            .receive(vec![pushed(0, 0, "a\n", false)])
            .expect("write");
        // Ended long ago; the node was lost, so no end of output will come.
        let over: RunOver = Box::new(|| Some(Some(1)));
        let got = read_all(&store, want(true), over).await;
        assert_eq!(got, vec![(0, "a\n".to_string())]);
    }

    #[test]
    fn a_forgotten_jobs_output_is_deleted() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LogStore::new(dir.path().join("logs"), 1 << 20);
        store
            .receive(vec![pushed(0, 0, "a\n", true)])
            .expect("write");
        let mut other = pushed(0, 0, "x\n", false);
        other.key.job = "keep".into();
        store.receive(vec![other]).expect("write");
        assert_eq!(store.retain_jobs(|j| j == "keep"), 1);
        assert!(tasklog::runs(store.dir(), "j").is_empty());
        assert_eq!(tasklog::runs(store.dir(), "keep"), vec![(0, 0, 0)]);
    }
}
