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
//! - A failed commit (a full disk, an I/O error) is never half-applied and never acknowledged.
//!   redb refuses every later write once one failed ("Previous I/O error occurred"), so the
//!   writer closes the database, opens it again (redb repairs it to its last commit) and retries
//!   the same batch, a few times over about 3 s. If it still fails, the waiters get the error,
//!   [`WriterStats::failed`] is set for good and the server stops (see `Running::fatal`): its
//!   memory may now hold changes the store does not, and a restart from the store is the only
//!   state that is true.
//! - Opening refuses, with the file's path and what to do, a zero-length file (never start empty
//!   over a store that was truncated), a file redb cannot read (a text file, a truncated or
//!   corrupt one; redb's own panics are caught), and records that do not parse.

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

/// What to do about a store file that cannot be used.
const ADVICE: &str = "run `gantry store check --data-dir DIR` for details; restore a copy made \
     with `gantry store backup`, or move the file away to start with an empty store";

/// Run `f`, turning a panic (redb panics on some corrupt files) into an error, without the
/// panic message on stderr.
fn no_panic<T>(f: impl FnOnce() -> Result<T, ServerError>) -> Result<T, ServerError> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    r.unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        Err(ServerError::Store(format!(
            "the file is corrupt (redb: {what})"
        )))
    })
}

/// Open the database file, refusing one that is empty or unreadable.
fn open_db(path: &Path) -> Result<Database, ServerError> {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
        return Err(ServerError::Store(format!(
            "{}: the file is empty (0 bytes): its records are gone (a truncated file?) and gantry \
             will not start empty over it; {ADVICE}",
            path.display()
        )));
    }
    no_panic(|| Database::create(path).map_err(db_err))
        .map_err(|e| ServerError::Store(format!("{}: {}; {ADVICE}", path.display(), strip(&e))))
}

/// The message of a store error without its `store: ` prefix.
fn strip(e: &ServerError) -> String {
    match e {
        ServerError::Store(m) => m.clone(),
        other => other.to_string(),
    }
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

/// How many records a store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Queues.
    pub queues: usize,
    /// Jobs (any state).
    pub jobs: usize,
    /// Nodes.
    pub nodes: usize,
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
        let db = open_db(&path)?;
        let store = Store {
            db: Arc::new(db),
            path: path.clone(),
        };
        let rec = no_panic(|| {
            let tx = store.db.begin_write().map_err(db_err)?;
            for t in [QUEUES, JOBS, NODES, SETTINGS] {
                tx.open_table(t).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            let mut rec = Recovered {
                queues: store.read_all(Table::Queues)?,
                jobs: store.read_all(Table::Jobs)?,
                nodes: store.read_all(Table::Nodes)?,
                priority_classes: store.read_setting(PRIORITY_CLASSES)?,
            };
            rec.jobs.sort_by_key(|j| j.seq);
            Ok(rec)
        })
        .map_err(|e| ServerError::Store(format!("{}: {}; {ADVICE}", path.display(), strip(&e))))?;
        Ok((store, rec))
    }

    /// Close the database and open it again (after a failed commit, redb refuses every write
    /// until then). Needs every other handle to this store dropped.
    fn reopen(self) -> Result<Store, ServerError> {
        let path = self.path.clone();
        drop(self);
        Ok(Store {
            db: Arc::new(open_db(&path)?),
            path,
        })
    }

    /// Read every record (a consistency check) and copy them into a new store file at `to`
    /// (which must not exist), in one read transaction: a consistent copy.
    ///
    /// # Errors
    /// [`ServerError::Store`] naming the file.
    pub fn backup(&self, to: &Path) -> Result<Counts, ServerError> {
        if to.exists() {
            return Err(ServerError::Store(format!(
                "{}: exists; give a new file",
                to.display()
            )));
        }
        let counts = self.check()?;
        let copy = Database::create(to)
            .map_err(|e| ServerError::Store(format!("{}: {}", to.display(), strip(&db_err(e)))))?;
        no_panic(|| {
            let rx = self.db.begin_read().map_err(db_err)?;
            let wx = copy.begin_write().map_err(db_err)?;
            for t in [QUEUES, JOBS, NODES, SETTINGS] {
                let src = rx.open_table(t).map_err(db_err)?;
                let mut dst = wx.open_table(t).map_err(db_err)?;
                for row in src.iter().map_err(db_err)? {
                    let (k, v) = row.map_err(db_err)?;
                    dst.insert(k.value(), v.value()).map_err(db_err)?;
                }
            }
            wx.commit().map_err(db_err)
        })?;
        Ok(counts)
    }

    /// Read and parse every record.
    ///
    /// # Errors
    /// [`ServerError::Store`] naming the first record that does not parse.
    pub fn check(&self) -> Result<Counts, ServerError> {
        no_panic(|| {
            Ok(Counts {
                queues: self.read_all::<QueueSpec>(Table::Queues)?.len(),
                jobs: self.read_all::<JobRecord>(Table::Jobs)?.len(),
                nodes: self.read_all::<NodeRecord>(Table::Nodes)?.len(),
            })
        })
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
    /// Commits that failed (each retry counts).
    pub errors: std::sync::atomic::AtomicU64,
    /// Set for good once a batch could not be committed even after reopening: the server's
    /// memory may hold changes the store does not.
    pub failed: std::sync::atomic::AtomicBool,
    /// Notified when `failed` is set.
    pub fatal: tokio::sync::Notify,
}

/// Pauses before each retry of a failed commit (each after reopening the database).
const RETRY_MS: [u64; 3] = [200, 1_000, 2_000];

/// Commit `ops`; on failure reopen the database and retry (see the module docs).
async fn commit_recovering(
    slot: &mut Option<Store>,
    path: &Path,
    ops: Vec<Op>,
    stats: &WriterStats,
) -> Result<(), ServerError> {
    use std::sync::atomic::Ordering::Relaxed;
    let ops = Arc::new(ops);
    let mut last = stopped();
    for attempt in 0..=RETRY_MS.len() {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(RETRY_MS[attempt - 1])).await;
            let old = slot.take();
            let p = path.to_path_buf();
            let reopened = tokio::task::spawn_blocking(move || match old {
                Some(s) => s.reopen(),
                None => open_db(&p).map(|db| Store {
                    db: Arc::new(db),
                    path: p,
                }),
            })
            .await
            .unwrap_or_else(|e| Err(ServerError::Store(format!("reopen panicked: {e}"))));
            match reopened {
                Ok(s) => *slot = Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot reopen the store");
                    last = e;
                    continue;
                }
            }
        }
        let Some(s) = slot.clone() else { continue };
        let o = ops.clone();
        let r = tokio::task::spawn_blocking(move || s.commit(&o))
            .await
            .unwrap_or_else(|e| Err(ServerError::Store(format!("writer panicked: {e}"))));
        match r {
            Ok(()) => {
                if attempt > 0 {
                    tracing::warn!(
                        attempt,
                        "the store was reopened and the commit went through"
                    );
                }
                return Ok(());
            }
            Err(e) => {
                stats.errors.fetch_add(1, Relaxed);
                tracing::error!(error = %e, attempt, path = %path.display(), "commit failed");
                last = e;
            }
        }
    }
    stats.failed.store(true, Relaxed);
    stats.fatal.notify_waiters();
    stats.fatal.notify_one();
    Err(ServerError::Store(format!(
        "{}: {}; writes stop here (nothing unrecorded is acted on)",
        path.display(),
        strip(&last)
    )))
}

fn stopped() -> ServerError {
    ServerError::Store("the writer has stopped".into())
}

impl Writer {
    /// Start the writer task on the current tokio runtime.
    pub fn spawn(store: Store, stats: Arc<WriterStats>) -> Writer {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let path = store.path.clone();
        let mut store = Some(store);
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
                use std::sync::atomic::Ordering::Relaxed;
                let result = if stats.failed.load(Relaxed) {
                    Err(ServerError::Store(format!(
                        "{}: a commit failed earlier; the server is stopping",
                        path.display()
                    )))
                } else {
                    commit_recovering(&mut store, &path, ops, &stats).await
                };
                if result.is_ok() {
                    stats.commits.fetch_add(1, Relaxed);
                    stats.writes.fetch_add(batch.len() as u64, Relaxed);
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

    /// A store with `n` queues, closed.
    fn filled(dir: &Path, n: usize) {
        let (store, _) = Store::open(dir).expect("open");
        let ops: Vec<Op> = (0..n)
            .map(|i| {
                let s: QueueSpec = serde_json::from_str(&format!(
                    r#"{{"name": "q{i}", "quotas": {{"h100-80gb": {{"nominal": 8}}}}}}"#
                ))
                .expect("spec");
                Op::queue(&s)
            })
            .collect();
        store.commit(&ops).expect("commit");
    }

    fn refused(dir: &Path) -> String {
        match Store::open(dir) {
            Ok(_) => panic!("opened a bad store"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_zero_length_or_foreign_file_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("gantry.redb");
        std::fs::write(&file, b"").expect("empty");
        let e = refused(dir.path());
        assert!(
            e.contains(&file.display().to_string()) && e.contains("empty"),
            "{e}"
        );
        assert!(e.contains("gantry store backup"), "says what to do: {e}");
        assert_eq!(
            std::fs::metadata(&file).expect("file").len(),
            0,
            "left as it was"
        );
        std::fs::write(&file, "queues:\n  - team-a\n").expect("text");
        let e = refused(dir.path());
        assert!(e.contains(&file.display().to_string()), "{e}");
    }

    #[test]
    fn truncated_or_scribbled_stores_give_errors_not_panics() {
        let src = tempfile::tempdir().expect("tmp");
        filled(src.path(), 300);
        let good = std::fs::read(src.path().join("gantry.redb")).expect("read");
        let cases: Vec<(String, Vec<u8>)> = vec![
            ("truncated to half".into(), good[..good.len() / 2].to_vec()),
            ("truncated to 100 bytes".into(), good[..100].to_vec()),
            ("header zeroed".into(), {
                let mut b = good.clone();
                b[..64].fill(0);
                b
            }),
        ]
        .into_iter()
        .chain((1..8).map(|k| {
            let mut b = good.clone();
            let at = b.len() * k / 8;
            for (i, x) in b[at..(at + 512).min(good.len())].iter_mut().enumerate() {
                *x = (i as u8).wrapping_mul(31) ^ 0xa5;
            }
            (format!("512 bytes scribbled at {k}/8"), b)
        }))
        .collect();
        for (what, bytes) in cases {
            let dir = tempfile::tempdir().expect("tmp");
            let file = dir.path().join("gantry.redb");
            std::fs::write(&file, &bytes).expect("write");
            // Never a panic: either it opens (the damage hit free space) and every record
            // parses, or the error names the file.
            match Store::open(dir.path()) {
                Ok((store, _)) => {
                    let _ = store.check();
                }
                Err(e) => assert!(
                    e.to_string().contains(&file.display().to_string()),
                    "{what}: {e}"
                ),
            }
        }
    }

    #[test]
    fn a_backup_holds_every_record_and_opens() {
        let src = tempfile::tempdir().expect("tmp");
        filled(src.path(), 50);
        let (store, _) = Store::open(src.path()).expect("open");
        let dst = tempfile::tempdir().expect("dst");
        let to = dst.path().join("gantry.redb");
        let c = store.backup(&to).expect("backup");
        assert_eq!(c.queues, 50);
        assert!(store.backup(&to).is_err(), "never overwrites");
        drop(store);
        let (copy, rec) = Store::open(dst.path()).expect("the copy opens");
        assert_eq!(rec.queues.len(), 50);
        assert_eq!(copy.check().expect("check"), c);
    }

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
