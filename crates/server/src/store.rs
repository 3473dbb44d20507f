//! The embedded store: one [redb] file in the data directory, with a table per kind of record
//! (queues, jobs, nodes) holding JSON values keyed by name, and a `settings` table for
//! cluster-wide documents (the priority classes).
//!
//! # Guarantees
//! - Every write goes through one writer task ([`Writer`]), in the order it was handed over, and
//!   is acknowledged only after its transaction committed with redb's default durability
//!   (`fsync` before `commit` returns). A submission is answered only after that.
//! - Group commit: while one transaction commits, new writes queue up; the writer then takes
//!   all that are waiting (up to [`MAX_BATCH`]) into the next single transaction. Under load one
//!   fsync covers many submissions; with no load a write commits alone, at once.
//! - A crash loses only unacknowledged writes: redb commits are atomic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use crate::record::{JobRecord, NodeRecord};
use crate::ServerError;
use gantry_model::{PriorityClass, QueueSpec};

/// Most writes one transaction takes.
pub const MAX_BATCH: usize = 4096;

/// The tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Queue specs by name.
    Queues,
    /// Job records by name.
    Jobs,
    /// Node records by name.
    Nodes,
    /// Cluster-wide settings by key ([`PRIORITY_CLASSES`]).
    Settings,
}

/// Key of the priority classes (a JSON list of `PriorityClass`) in [`Table::Settings`]; absent:
/// the defaults.
pub const PRIORITY_CLASSES: &str = "priority_classes";

const QUEUES: TableDefinition<&str, &[u8]> = TableDefinition::new("queues");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

impl Table {
    fn def(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Table::Queues => QUEUES,
            Table::Jobs => JOBS,
            Table::Nodes => NODES,
            Table::Settings => SETTINGS,
        }
    }
}

/// One change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Insert or replace.
    Put(Table, String, Vec<u8>),
    /// Remove (absent is fine).
    Delete(Table, String),
}

impl Op {
    /// Put a job record.
    pub fn job(rec: &JobRecord) -> Op {
        Op::Put(Table::Jobs, rec.name.clone(), to_json(rec))
    }
    /// Put a node record.
    pub fn node(rec: &NodeRecord) -> Op {
        Op::Put(Table::Nodes, rec.node.name.clone(), to_json(rec))
    }
    /// Put a queue spec.
    pub fn queue(spec: &QueueSpec) -> Op {
        Op::Put(Table::Queues, spec.name.clone(), to_json(spec))
    }
    /// Put the priority classes.
    pub fn priority_classes(classes: &[PriorityClass]) -> Op {
        Op::Put(Table::Settings, PRIORITY_CLASSES.into(), to_json(&classes))
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // The records are plain data (strings, numbers, maps with string keys): serialising them
    // cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn db_err(e: impl Into<redb::Error>) -> ServerError {
    ServerError::Store(e.into().to_string())
}

/// What was in the store when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Queue specs.
    pub queues: Vec<QueueSpec>,
    /// Job records, in submission order.
    pub jobs: Vec<JobRecord>,
    /// Node records.
    pub nodes: Vec<NodeRecord>,
    /// Priority classes set through the API; none: the defaults.
    pub priority_classes: Option<Vec<PriorityClass>>,
}

/// The open database.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl Store {
    /// Open (or create) `dir/gantry.redb` and read everything back.
    ///
    /// # Errors
    /// [`ServerError::Store`] when the directory or file cannot be opened, or a record does
    /// not parse.
    pub fn open(dir: &Path) -> Result<(Store, Recovered), ServerError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ServerError::Store(format!("create {}: {e}", dir.display())))?;
        let path = dir.join("gantry.redb");
        let db = Database::create(&path).map_err(db_err)?;
        let tx = db.begin_write().map_err(db_err)?;
        for t in [QUEUES, JOBS, NODES, SETTINGS] {
            tx.open_table(t).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        let store = Store {
            db: Arc::new(db),
            path,
        };
        let mut rec = Recovered {
            queues: store.read_all(Table::Queues)?,
            jobs: store.read_all(Table::Jobs)?,
            nodes: store.read_all(Table::Nodes)?,
            priority_classes: store.read_setting(PRIORITY_CLASSES)?,
        };
        rec.jobs.sort_by_key(|j| j.seq);
        Ok((store, rec))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_all<T: serde::de::DeserializeOwned>(&self, t: Table) -> Result<Vec<T>, ServerError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(t.def()).map_err(db_err)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db_err)? {
            let (k, v) = row.map_err(db_err)?;
            let value = serde_json::from_slice(v.value()).map_err(|e| {
                ServerError::Store(format!(
                    "record {:?} of {t:?} does not parse: {e}",
                    k.value()
                ))
            })?;
            out.push(value);
        }
        Ok(out)
    }

    fn read_setting<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, ServerError> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(SETTINGS).map_err(db_err)?;
        let Some(v) = table.get(key).map_err(db_err)? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| ServerError::Store(format!("setting {key:?} does not parse: {e}")))
    }

    /// Apply `ops` in one durable transaction.
    ///
    /// # Errors
    /// [`ServerError::Store`].
    pub fn commit(&self, ops: &[Op]) -> Result<(), ServerError> {
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut q = tx.open_table(QUEUES).map_err(db_err)?;
            let mut j = tx.open_table(JOBS).map_err(db_err)?;
            let mut n = tx.open_table(NODES).map_err(db_err)?;
            let mut s = tx.open_table(SETTINGS).map_err(db_err)?;
            for op in ops {
                let (t, key) = match op {
                    Op::Put(t, k, _) | Op::Delete(t, k) => (*t, k.as_str()),
                };
                let table = match t {
                    Table::Queues => &mut q,
                    Table::Jobs => &mut j,
                    Table::Nodes => &mut n,
                    Table::Settings => &mut s,
                };
                match op {
                    Op::Put(_, _, v) => {
                        table.insert(key, v.as_slice()).map_err(db_err)?;
                    }
                    Op::Delete(..) => {
                        table.remove(key).map_err(db_err)?;
                    }
                }
            }
        }
        tx.commit().map_err(db_err)
    }
}

struct Request {
    ops: Vec<Op>,
    done: oneshot::Sender<Result<(), ServerError>>,
}

enum Msg {
    Write(Request),
    /// Commit what came before, close the database, then answer.
    Close(oneshot::Sender<()>),
}

/// The handle to the writer task. Cloning is cheap; the task ends when every handle is dropped
/// or [`Writer::close`] is called.
#[derive(Debug, Clone)]
pub struct Writer {
    // Unbounded so that handing over a write never blocks: callers hand writes over while they
    // hold the server's state lock, which fixes the store's order to the order of the changes.
    tx: mpsc::UnboundedSender<Msg>,
}

/// Commit counters, for metrics and the benchmark.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: std::sync::atomic::AtomicU64,
    /// Writes (requests) committed.
    pub writes: std::sync::atomic::AtomicU64,
}

fn stopped() -> ServerError {
    ServerError::Store("the writer has stopped".into())
}

impl Writer {
    /// Start the writer task on the current tokio runtime.
    pub fn spawn(store: Store, stats: Arc<WriterStats>) -> Writer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        tokio::spawn(async move {
            let mut close = None;
            while close.is_none() {
                let Some(first) = rx.recv().await else { break };
                let mut batch = Vec::new();
                match first {
                    Msg::Write(r) => batch.push(r),
                    Msg::Close(c) => close = Some(c),
                }
                while close.is_none() && batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(Msg::Write(r)) => batch.push(r),
                        Ok(Msg::Close(c)) => close = Some(c),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                let ops: Vec<Op> = batch.iter_mut().flat_map(|r| r.ops.drain(..)).collect();
                let s = store.clone();
                let result = tokio::task::spawn_blocking(move || s.commit(&ops))
                    .await
                    .unwrap_or_else(|e| Err(ServerError::Store(format!("writer panicked: {e}"))));
                use std::sync::atomic::Ordering::Relaxed;
                stats.commits.fetch_add(1, Relaxed);
                stats.writes.fetch_add(batch.len() as u64, Relaxed);
                if let Err(e) = &result {
                    tracing::error!(error = %e, writes = batch.len(), "commit failed");
                }
                for r in batch {
                    let _ = r.done.send(result.clone());
                }
            }
            // Closed: refuse what arrived after the close, release the database file, answer.
            rx.close();
            while let Ok(m) = rx.try_recv() {
                match m {
                    Msg::Write(r) => {
                        let _ = r.done.send(Err(stopped()));
                    }
                    Msg::Close(c) => {
                        let _ = c.send(());
                    }
                }
            }
            drop(store);
            if let Some(c) = close {
                let _ = c.send(());
            }
        });
        Writer { tx }
    }

    /// Hand `ops` over (never blocks); await the result for durability.
    pub fn write(&self, ops: Vec<Op>) -> oneshot::Receiver<Result<(), ServerError>> {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Msg::Write(r))) =
            self.tx.send(Msg::Write(Request { ops, done }))
        {
            let _ = r.done.send(Err(stopped()));
        }
        rx
    }

    /// Commit every write handed over before this call, then close the database (the file can
    /// be opened again once this returns). Later writes fail with [`ServerError::Store`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Await a write handed to [`Writer::write`].
///
/// # Errors
/// The commit's error, or [`ServerError::Store`] when the writer went away.
pub async fn durable(rx: oneshot::Receiver<Result<(), ServerError>>) -> Result<(), ServerError> {
    rx.await
        .map_err(|_| ServerError::Store("the writer has stopped".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_survive_reopening_and_batch_under_load() {
        let dir = tempfile::tempdir().expect("tmp");
        let (store, rec) = Store::open(dir.path()).expect("open");
        assert!(rec.jobs.is_empty() && rec.queues.is_empty() && rec.nodes.is_empty());
        let stats = Arc::new(WriterStats::default());
        let w = Writer::spawn(store.clone(), stats.clone());
        let spec: QueueSpec =
            serde_json::from_str(r#"{"name": "team-a", "quotas": {"h100-80gb": {"nominal": 8}}}"#)
                .expect("spec");
        let waits: Vec<_> = (0..200)
            .map(|i| {
                let mut s = spec.clone();
                s.name = format!("q{i}");
                w.write(vec![Op::queue(&s)])
            })
            .collect();
        for r in waits {
            durable(r).await.expect("durable");
        }
        durable(w.write(vec![Op::Delete(Table::Queues, "q7".into())]))
            .await
            .expect("delete");
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(stats.writes.load(Relaxed), 201);
        assert!(
            stats.commits.load(Relaxed) < 201,
            "200 writes handed over at once share commits: {}",
            stats.commits.load(Relaxed)
        );
        drop(store);
        w.close().await;
        let e = durable(w.write(vec![Op::Delete(Table::Queues, "q8".into())]))
            .await
            .expect_err("closed");
        assert_eq!(e, stopped());
        let (_, rec) = Store::open(dir.path()).expect("reopen");
        assert_eq!(rec.queues.len(), 199);
        assert!(rec.queues.iter().all(|q| q.name != "q7"));
    }
}
