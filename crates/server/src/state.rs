//! The server's in-memory state: the records (queues, jobs, nodes) and the engine's
//! [`Snapshot`], kept in step. Every method is synchronous and returns the store [`Op`]s that
//! make its change durable; the caller hands them to the writer while it still holds the state
//! lock (so the store sees changes in the order they happened) and awaits them afterwards.
//!
//! The snapshot is rebuilt from the records when the node set or the queue tree changes
//! (`Snapshot::new` takes a whole cluster): every active job is submitted again in submission
//! order and every running job's recorded tasks are put back with `Snapshot::restore`, which
//! refuses a device taken twice. A job whose node or devices are gone is requeued whole.
//! Rebuild cost is O(jobs); node joins and queue edits are rare next to cycles.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use gantry_engine::{schedule, JobId, Profile, Snapshot};
use gantry_model::queue::check_name;
use gantry_model::{
    Cluster, ClusterSpec, JobSpec, Node, PriorityClass, QueueSpec, QueueTree, QueuesSpec,
};

use crate::record::{JobRecord, JobState, NodeRecord, TaskPhase, TaskRecord};
use crate::store::{Op, Table};
use crate::ServerError;

/// A task an agent must stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop {
    /// Job name.
    pub job: String,
    /// Group.
    pub group: u16,
    /// Replica.
    pub index: u32,
    /// Run of the job.
    pub attempt: u32,
    /// Why (preempted, cancelled, node lost, gang member failed).
    pub why: String,
}

/// A task an agent must run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Job name.
    pub job: String,
    /// Group.
    pub group: u16,
    /// Replica.
    pub index: u32,
    /// Run of the job.
    pub attempt: u32,
    /// Node.
    pub node: String,
    /// GPU or MIG uuids.
    pub devices: Vec<String>,
    /// Shared fraction (thousandths), 0 otherwise.
    pub gpu_milli: u32,
    /// Millicores.
    pub cpu_milli: u32,
    /// MiB.
    pub memory_mib: u64,
    /// argv.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// An inference replica's port, 0 otherwise.
    pub port: u16,
    /// What the agent probes on an inference replica.
    pub probe: Option<crate::services::Probe>,
}

/// A task an agent reports on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey {
    /// Job name.
    pub job: String,
    /// Group.
    pub group: u16,
    /// Replica.
    pub index: u32,
    /// Run.
    pub attempt: u32,
}

/// Ports a gang's rank 0 listens on for rendezvous (`MASTER_PORT`): 29500 is torchrun's default.
pub const RENDEZVOUS_PORTS: std::ops::Range<u16> = 29_500..30_500;

/// What an agent says about a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The process started.
    Started,
    /// The process ended (exit status; signals as 128 + n).
    Exited(i32),
    /// The process could not be started (the agent's error, e.g. `No such file or directory`).
    FailedToStart(String),
}

/// Something that happened to a job (for `WatchJobs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Job name.
    pub job: String,
    /// The job's queue when it happened (who may watch it is decided by this, not by whichever
    /// job holds the name when the event is delivered).
    pub queue: String,
    /// `submitted`, `started`, `preempted`, `requeued`, `succeeded`, `failed`, `cancelled`.
    pub kind: &'static str,
    /// Details.
    pub message: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// State after the event.
    pub state: JobState,
}

/// A job in memory.
#[derive(Debug, Clone)]
pub struct JobEntry {
    /// The record, as last written.
    pub rec: JobRecord,
    /// Its id in the current snapshot (active jobs only).
    pub id: Option<JobId>,
    /// How many of `rec.tasks` are durable and so may be handed to agents.
    pub published: usize,
}

/// A node in memory.
#[derive(Debug, Clone)]
pub struct NodeEntry {
    /// The record.
    pub rec: NodeRecord,
    /// Heartbeating within its lease.
    pub ready: bool,
    /// Last heartbeat seen by this process (a restarted server gives every node a fresh lease).
    pub last_seen_ms: u64,
    /// The agent process that holds this node (see [`State::claim`]); unknown after a server
    /// restart until the node's agent registers or heartbeats again.
    pub instance: Option<String>,
}

/// Counters for status and metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Cycles run.
    pub cycles: u64,
    /// Duration of the last cycle.
    pub last_cycle_us: u64,
    /// Preemptions applied.
    pub preemptions: u64,
    /// Jobs requeued because their node was lost.
    pub lost_requeues: u64,
    /// Pending jobs after the last cycle.
    pub last_pending: u64,
    /// Jobs bound (started or grown) by the last cycle.
    pub last_binds: u64,
    /// Jobs evicted by the last cycle.
    pub last_evictions: u64,
    /// Submissions accepted (durable) by this process.
    pub submitted: u64,
    /// Jobs that finished in this process: succeeded, failed, cancelled.
    pub succeeded: u64,
    /// See `succeeded`.
    pub failed: u64,
    /// See `succeeded`.
    pub cancelled: u64,
}

/// The state. See the module docs.
#[derive(Debug)]
pub struct State {
    /// Queue specs by name.
    pub queues: BTreeMap<String, QueueSpec>,
    /// Priority classes set through the API; none: the defaults. Part of [`State::tree`].
    pub priority_classes: Option<Vec<PriorityClass>>,
    /// The validated tree (with the priority classes).
    pub tree: QueueTree,
    /// Registered nodes.
    pub nodes: BTreeMap<String, NodeEntry>,
    /// Jobs by name.
    pub jobs: HashMap<String, JobEntry>,
    /// Job names by submission sequence.
    pub order: BTreeMap<u64, String>,
    /// Running jobs (for agents' assignments without scanning every job).
    pub running: BTreeSet<String>,
    /// Names of submissions being made durable (not yet in `jobs`).
    reserved: HashSet<String>,
    /// The engine's view.
    pub snap: Snapshot,
    /// The snapshot must be rebuilt before it is used.
    pub(crate) dirty: bool,
    /// Stops waiting for each node's next heartbeat.
    pub(crate) stops: HashMap<String, Vec<Stop>>,
    /// Next submission sequence number.
    pub next_seq: u64,
    /// Scheduling policy.
    pub profile: Profile,
    /// Events not yet broadcast.
    pub events: Vec<Event>,
    /// Counters.
    pub counters: Counters,
    /// What agents' probes last said about each inference replica (memory only).
    pub replicas: HashMap<TaskKey, crate::services::ReplicaLoad>,
    /// Each autoscaled service's autoscaler (memory only; its desired count is durable).
    pub scalers: HashMap<String, crate::services::Scaler>,
    /// Replicas of each service that ended since one was last seen ready (memory only).
    pub replica_exits: HashMap<String, u32>,
}

fn tree_of(
    queues: &BTreeMap<String, QueueSpec>,
    priority_classes: &Option<Vec<PriorityClass>>,
) -> Result<QueueTree, ServerError> {
    QueuesSpec {
        queues: queues.values().cloned().collect(),
        priority_classes: priority_classes.clone(),
    }
    .build()
    .map_err(|e| ServerError::from_model("spec_json", e))
}

fn cluster_of<'a>(nodes: impl Iterator<Item = &'a Node>) -> Result<Cluster, ServerError> {
    ClusterSpec {
        nodes: nodes.cloned().collect(),
        ..ClusterSpec::default()
    }
    .build()
    .map_err(|e| ServerError::from_model("node_json", e))
}

impl State {
    /// State from what the store held. Every node gets a fresh lease from `now`; running jobs
    /// get their recorded devices back, or are requeued (the returned ops record that).
    ///
    /// # Errors
    /// Stored queues that no longer form a valid tree (not expected: they were validated).
    pub fn recover(
        queues: Vec<QueueSpec>,
        priority_classes: Option<Vec<PriorityClass>>,
        jobs: Vec<JobRecord>,
        nodes: Vec<NodeRecord>,
        profile: Profile,
        now: u64,
    ) -> Result<(State, Vec<Op>), ServerError> {
        let queues: BTreeMap<String, QueueSpec> =
            queues.into_iter().map(|q| (q.name.clone(), q)).collect();
        let tree = tree_of(&queues, &priority_classes)?;
        let snap = Snapshot::new(&Cluster::default(), &tree)?;
        let mut s = State {
            queues,
            priority_classes,
            tree,
            nodes: nodes
                .into_iter()
                .map(|rec| {
                    let e = NodeEntry {
                        rec,
                        ready: true,
                        last_seen_ms: now,
                        instance: None,
                    };
                    (e.rec.node.name.clone(), e)
                })
                .collect(),
            jobs: HashMap::new(),
            order: BTreeMap::new(),
            running: BTreeSet::new(),
            reserved: HashSet::new(),
            snap,
            dirty: true,
            stops: HashMap::new(),
            next_seq: 1,
            profile,
            events: Vec::new(),
            counters: Counters::default(),
            replicas: HashMap::new(),
            scalers: HashMap::new(),
            replica_exits: HashMap::new(),
        };
        for rec in jobs {
            s.next_seq = s.next_seq.max(rec.seq + 1);
            s.order.insert(rec.seq, rec.name.clone());
            if rec.state == JobState::Running {
                s.running.insert(rec.name.clone());
            }
            let published = rec.tasks.len();
            s.jobs.insert(
                rec.name.clone(),
                JobEntry {
                    rec,
                    id: None,
                    published,
                },
            );
        }
        let ops = s.rebuild(now);
        Ok((s, ops))
    }

    /// Rebuild the snapshot if something made it stale.
    pub fn ensure_fresh(&mut self, now: u64) -> Vec<Op> {
        if self.dirty {
            self.rebuild(now)
        } else {
            Vec::new()
        }
    }

    fn rebuild(&mut self, now: u64) -> Vec<Op> {
        let cluster = match cluster_of(self.nodes.values().map(|n| &n.rec.node)) {
            Ok(c) => c,
            Err(e) => {
                // Each node was validated with the others when it registered; keep going
                // with no nodes rather than stop scheduling altogether.
                tracing::error!(error = %e, "registered nodes no longer form a valid cluster");
                Cluster::default()
            }
        };
        let mut snap = match Snapshot::new(&cluster, &self.tree) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot build a snapshot of the registered nodes");
                match Snapshot::new(&Cluster::default(), &self.tree) {
                    Ok(s) => s,
                    Err(_) => return Vec::new(),
                }
            }
        };
        for (name, n) in &self.nodes {
            if !n.ready {
                if let Some(id) = snap.node_by_name(name) {
                    snap.set_node_ready(id, false);
                }
            }
        }
        let mut ops = Vec::new();
        let names: Vec<String> = self.order.values().cloned().collect();
        for name in names {
            let Some(e) = self.jobs.get_mut(&name) else {
                continue;
            };
            e.id = None;
            if !e.rec.state.is_active() || crate::services::at_zero(&e.rec) {
                continue;
            }
            let job = match e.rec.spec.validate(&self.tree, None) {
                Ok(j) => j,
                Err(err) => {
                    e.rec.state = JobState::Failed;
                    e.rec.finished_ms = Some(now);
                    e.rec.reason = format!("no longer valid: {err}");
                    ops.push(Op::job(&e.rec));
                    continue;
                }
            };
            let id = match snap.submit(&job, e.rec.submitted_ms) {
                Ok(id) => id,
                Err(err) => {
                    e.rec.state = JobState::Failed;
                    e.rec.finished_ms = Some(now);
                    e.rec.reason = format!("engine refused it: {err}");
                    ops.push(Op::job(&e.rec));
                    continue;
                }
            };
            e.id = Some(id);
            if e.rec.state == JobState::Running {
                let allocs: Option<Vec<_>> =
                    e.rec.tasks.iter().map(|t| t.to_alloc(&snap)).collect();
                let restored = match allocs {
                    Some(a) => snap
                        .restore(id, a, e.rec.started_ms.unwrap_or(now))
                        .map_err(|err| err.to_string()),
                    None => Err("its node or devices are gone".to_string()),
                };
                if let Err(why) = restored {
                    tracing::warn!(job = %name, queue = %e.rec.spec.queue, %why, "requeued on rebuild");
                    let why = format!("requeued: {why}");
                    requeue_record(e, &why, &mut self.stops, &mut self.events, now);
                    self.running.remove(&name);
                    ops.push(Op::job(&e.rec));
                }
            }
        }
        self.snap = snap;
        self.dirty = false;
        ops
    }

    // ------------------------------------------------------------------ queues

    fn check_tree(&self, queues: &BTreeMap<String, QueueSpec>) -> Result<QueueTree, ServerError> {
        let tree = tree_of(queues, &self.priority_classes)?;
        if !self.reserved.is_empty() {
            // A submission validated against the current tree is being made durable; it must
            // not find its queue turned into a cohort when it lands.
            return Err(ServerError::Conflict(
                "submissions are in flight; try the queue change again".into(),
            ));
        }
        for e in self.jobs.values().filter(|e| e.rec.state.is_active()) {
            let q = &e.rec.spec.queue;
            match tree.find(q) {
                Some(i) if tree.queues[i].is_leaf() => {}
                _ => {
                    return Err(ServerError::Conflict(format!(
                        "queue {q:?} holds job {:?}: it must stay a leaf queue",
                        e.rec.name
                    )))
                }
            }
        }
        Ok(tree)
    }

    /// Create a queue.
    ///
    /// # Errors
    /// A bad spec, a taken name, or a change that would turn a queue with jobs into a cohort.
    pub fn create_queue(&mut self, spec: QueueSpec) -> Result<Vec<Op>, ServerError> {
        check_name("spec_json.name", &spec.name).map_err(|e| ServerError::from_model("", e))?;
        if self.queues.contains_key(&spec.name) {
            return Err(ServerError::AlreadyExists {
                kind: "queue",
                name: spec.name,
            });
        }
        self.put_queue(spec)
    }

    /// Replace a queue's spec.
    ///
    /// # Errors
    /// An unknown queue, a bad spec, or a change that would turn a queue with jobs into a cohort.
    pub fn update_queue(&mut self, spec: QueueSpec) -> Result<Vec<Op>, ServerError> {
        if !self.queues.contains_key(&spec.name) {
            return Err(ServerError::NotFound {
                kind: "queue",
                name: spec.name,
            });
        }
        self.put_queue(spec)
    }

    fn put_queue(&mut self, spec: QueueSpec) -> Result<Vec<Op>, ServerError> {
        let mut queues = self.queues.clone();
        queues.insert(spec.name.clone(), spec.clone());
        self.tree = self.check_tree(&queues)?;
        self.queues = queues;
        self.dirty = true;
        Ok(vec![Op::queue(&spec)])
    }

    /// Delete a queue with no active jobs and no children.
    ///
    /// # Errors
    /// An unknown queue, one with children, or one with pending or running jobs.
    pub fn delete_queue(&mut self, name: &str) -> Result<Vec<Op>, ServerError> {
        if !self.queues.contains_key(name) {
            return Err(ServerError::NotFound {
                kind: "queue",
                name: name.to_string(),
            });
        }
        if let Some(child) = self
            .queues
            .values()
            .find(|q| q.parent.as_deref() == Some(name))
        {
            return Err(ServerError::Conflict(format!(
                "queue {name:?} is the parent of {:?}; delete or move its children first",
                child.name
            )));
        }
        if self.reserved.iter().next().is_some()
            || self
                .jobs
                .values()
                .any(|e| e.rec.state.is_active() && e.rec.spec.queue == name)
        {
            return Err(ServerError::Conflict(format!(
                "queue {name:?} has pending or running jobs (or submissions in flight)"
            )));
        }
        let mut queues = self.queues.clone();
        queues.remove(name);
        self.tree = self.check_tree(&queues)?;
        self.queues = queues;
        self.dirty = true;
        Ok(vec![Op::Delete(Table::Queues, name.to_string())])
    }

    /// Replace the priority classes (all of them). Jobs are re-prioritised from the next
    /// cycle on (the snapshot is rebuilt with the new values).
    ///
    /// # Errors
    /// An empty list, a bad or duplicate name (`classes_json[i].name`), or a class missing
    /// that a pending or running job uses (by name or as its kind's default).
    pub fn set_priority_classes(
        &mut self,
        classes: Vec<PriorityClass>,
    ) -> Result<Vec<Op>, ServerError> {
        if classes.is_empty() {
            return Err(ServerError::Invalid {
                field: "classes_json".into(),
                reason: "at least one priority class is needed".into(),
            });
        }
        let mut seen = HashSet::new();
        for (i, c) in classes.iter().enumerate() {
            let field = format!("classes_json[{i}].name");
            check_name(&field, &c.name).map_err(|e| ServerError::from_model("", e))?;
            if !seen.insert(c.name.as_str()) {
                return Err(ServerError::Invalid {
                    field,
                    reason: format!("duplicate priority class {:?}", c.name),
                });
            }
        }
        let classes = Some(classes);
        let tree = tree_of(&self.queues, &classes)?;
        if !self.reserved.is_empty() {
            return Err(ServerError::Conflict(
                "submissions are in flight; try the priority-class change again".into(),
            ));
        }
        let mut active: Vec<&JobEntry> = self
            .jobs
            .values()
            .filter(|e| e.rec.state.is_active())
            .collect();
        active.sort_by_key(|e| e.rec.seq);
        for e in active {
            let class = e
                .rec
                .spec
                .priority_class
                .as_deref()
                .unwrap_or(e.rec.spec.kind.default_priority_class());
            if !tree.priority_classes.contains_key(class) {
                return Err(ServerError::Conflict(format!(
                    "job {:?} ({:?}) uses priority class {class:?}, which the new classes lack",
                    e.rec.name, e.rec.state
                )));
            }
        }
        let ops = vec![Op::priority_classes(classes.as_deref().unwrap_or_default())];
        self.tree = tree;
        self.priority_classes = classes;
        self.dirty = true;
        Ok(ops)
    }

    // ------------------------------------------------------------------ jobs

    /// Validate a submission and reserve its name. Nothing changes but the reservation; the
    /// caller makes the returned record durable, then calls [`State::finish_submit`].
    ///
    /// # Errors
    /// An invalid spec (field path under `spec_json`), an unknown queue, a request no node could
    /// ever satisfy (checked once at least one node has registered), an over-long name, or a
    /// name in use by an active job.
    pub fn begin_submit(
        &mut self,
        spec: JobSpec,
        command: Vec<String>,
        env: BTreeMap<String, String>,
        now: u64,
    ) -> Result<JobRecord, ServerError> {
        let catalog = (!self.nodes.is_empty()).then(|| {
            cluster_of(self.nodes.values().map(|n| &n.rec.node))
                .map(|c| c.catalog())
                .unwrap_or_default()
        });
        spec.validate(&self.tree, catalog.as_ref())
            .map_err(|e| ServerError::from_model("spec_json", e))?;
        if command.is_empty() {
            return Err(ServerError::Invalid {
                field: "command".into(),
                reason: "must name the program each task runs".into(),
            });
        }
        for (k, _) in env.iter() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ServerError::Invalid {
                    field: format!("env[{k:?}]"),
                    reason: "not a valid environment variable name".into(),
                });
            }
        }
        let taken = self.reserved.contains(&spec.name)
            || self
                .jobs
                .get(&spec.name)
                .is_some_and(|e| e.rec.state.is_active());
        if taken {
            return Err(ServerError::AlreadyExists {
                kind: "job",
                name: spec.name,
            });
        }
        // A name may be reused once its job has finished. Tasks are known to agents by
        // (job, group, index, attempt), so the new job continues the old one's attempts: a
        // process of the old job still stopping, or its late exit report, can never be taken
        // for the new job's.
        let attempt = self
            .jobs
            .get(&spec.name)
            .map_or(0, |e| e.rec.attempt.saturating_add(1));
        self.reserved.insert(spec.name.clone());
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(JobRecord {
            name: spec.name.clone(),
            seq,
            spec,
            command,
            env,
            state: JobState::Pending,
            submitted_ms: now,
            started_ms: None,
            finished_ms: None,
            attempt,
            requeues: 0,
            tasks: Vec::new(),
            reason: "waiting for the next scheduling cycle".into(),
            exit_code: 0,
            port: 0,
            user: String::new(),
            scale: None,
        })
    }

    /// The submission's record is durable (`ok`) or failed to be: add it or drop the reservation.
    pub fn finish_submit(&mut self, rec: JobRecord, ok: bool) {
        self.reserved.remove(&rec.name);
        if !ok {
            return;
        }
        self.counters.submitted += 1;
        let mut id = None;
        if !self.dirty {
            match rec.spec.validate(&self.tree, None) {
                Ok(job) => match self.snap.submit(&job, rec.submitted_ms) {
                    Ok(i) => id = Some(i),
                    Err(_) => self.dirty = true,
                },
                Err(_) => self.dirty = true,
            }
        }
        if let Some(old) = self.jobs.get(&rec.name) {
            self.order.remove(&old.rec.seq);
        }
        self.order.insert(rec.seq, rec.name.clone());
        tracing::info!(job = %rec.name, queue = %rec.spec.queue, seq = rec.seq, "submitted");
        self.events.push(Event {
            job: rec.name.clone(),
            queue: rec.spec.queue.clone(),
            kind: "submitted",
            message: format!("queue {}", rec.spec.queue),
            at_ms: rec.submitted_ms,
            state: JobState::Pending,
        });
        self.jobs.insert(
            rec.name.clone(),
            JobEntry {
                rec,
                id,
                published: 0,
            },
        );
    }

    /// Cancel a pending or running job; its tasks are told to stop.
    ///
    /// # Errors
    /// An unknown or finished job.
    pub fn cancel(&mut self, name: &str, now: u64) -> Result<(JobState, Vec<Op>), ServerError> {
        let mut ops = self.ensure_fresh(now);
        let e = self
            .jobs
            .get_mut(name)
            .ok_or_else(|| ServerError::NotFound {
                kind: "job",
                name: name.to_string(),
            })?;
        if !e.rec.state.is_active() {
            return Err(ServerError::Conflict(format!(
                "job {name:?} has already finished ({:?})",
                e.rec.state
            )));
        }
        if let Some(id) = e.id.take() {
            self.snap.cancel(id)?;
        }
        stop_tasks(e, "cancelled", &mut self.stops);
        tracing::info!(job = %name, queue = %e.rec.spec.queue, attempt = e.rec.attempt, "cancelled");
        e.rec.state = JobState::Cancelled;
        self.counters.cancelled += 1;
        e.rec.finished_ms = Some(now);
        e.rec.reason.clear();
        self.running.remove(name);
        self.events.push(Event {
            job: name.to_string(),
            queue: e.rec.spec.queue.clone(),
            kind: "cancelled",
            message: String::new(),
            at_ms: now,
            state: JobState::Cancelled,
        });
        ops.push(Op::job(&e.rec));
        Ok((JobState::Cancelled, ops))
    }

    /// Run one scheduling cycle and apply its plan: binds become task records (handed to agents
    /// once durable: see [`State::publish`]), victims are requeued with their tasks told to
    /// stop, and reasons are stored on the waiting jobs.
    pub fn cycle(&mut self, now: u64) -> Vec<Op> {
        let mut ops = self.ensure_fresh(now);
        let t0 = std::time::Instant::now();
        let plan = schedule(&mut self.snap, &self.profile, now);
        self.counters.cycles += 1;
        self.counters.last_cycle_us = t0.elapsed().as_micros() as u64;
        let mut changed: BTreeSet<String> = BTreeSet::new();
        for p in &plan.preemptions {
            let victim = self.snap.job_name(p.victim).to_string();
            let by = self.snap.job_name(p.preemptor).to_string();
            if let Some(e) = self.jobs.get_mut(&victim) {
                let why = format!("preempted by {by} ({:?})", p.cause);
                tracing::info!(
                    job = %victim,
                    queue = %e.rec.spec.queue,
                    attempt = e.rec.attempt,
                    by = %by,
                    cause = ?p.cause,
                    "preempted"
                );
                requeue_record(e, &why, &mut self.stops, &mut self.events, now);
                self.running.remove(&victim);
                self.counters.preemptions += 1;
                changed.insert(victim);
            }
        }
        for b in &plan.binds {
            let name = self.snap.job_name(b.job).to_string();
            let fresh = self
                .jobs
                .get(&name)
                .is_some_and(|e| e.rec.state == JobState::Pending);
            let mut records: Vec<TaskRecord> = b
                .tasks
                .iter()
                .map(|t| TaskRecord::from_alloc(&self.snap, t))
                .collect();
            self.assign_replica_ports(&name, &mut records);
            let port = if fresh {
                records
                    .iter()
                    .min_by_key(|t| (t.group, t.index))
                    .map(|t| self.rendezvous_port(&name, &t.node))
            } else {
                None
            };
            let Some(e) = self.jobs.get_mut(&name) else {
                continue;
            };
            e.rec.tasks.extend(records);
            if let Some(p) = port {
                e.rec.port = p;
            }
            let nodes: BTreeSet<&str> = b
                .tasks
                .iter()
                .map(|t| self.snap.node_name(t.node))
                .collect();
            let nodes = nodes.into_iter().collect::<Vec<_>>().join(",");
            tracing::info!(
                job = %name,
                queue = %e.rec.spec.queue,
                attempt = e.rec.attempt,
                tasks = b.tasks.len(),
                nodes = %nodes,
                "bound"
            );
            if e.rec.state == JobState::Pending {
                e.rec.state = JobState::Running;
                e.rec.started_ms = Some(now);
                self.events.push(Event {
                    job: name.clone(),
                    queue: e.rec.spec.queue.clone(),
                    kind: "started",
                    message: match e.rec.tasks.len() {
                        1 => "1 task placed".to_string(),
                        n => format!("{n} tasks placed"),
                    },
                    at_ms: now,
                    state: JobState::Running,
                });
            }
            e.rec.reason.clear();
            self.running.insert(name.clone());
            changed.insert(name);
        }
        for (id, _) in &plan.reasons {
            let name = self.snap.job_name(*id).to_string();
            if let (Some(e), Some(w)) = (self.jobs.get_mut(&name), self.snap.why(*id)) {
                e.rec.reason = w.text;
                changed.insert(name);
            }
        }
        for name in changed {
            if let Some(e) = self.jobs.get(&name) {
                ops.push(Op::job(&e.rec));
            }
        }
        self.counters.last_binds = plan.binds.len() as u64;
        self.counters.last_evictions = plan.preemptions.len() as u64;
        self.counters.last_pending = self
            .jobs
            .values()
            .filter(|e| e.rec.state == JobState::Pending)
            .count() as u64;
        ops
    }

    /// After the ops of a cycle are durable: hand every job's tasks to agents.
    pub fn publish(&mut self, jobs: &[(String, u32, usize)]) {
        for (name, attempt, n) in jobs {
            if let Some(e) = self.jobs.get_mut(name) {
                if e.rec.attempt == *attempt && e.rec.tasks.len() >= *n {
                    e.published = e.published.max(*n);
                }
            }
        }
    }

    /// What [`State::publish`] needs for jobs in `ops`.
    pub fn publish_marks(&self, ops: &[Op]) -> Vec<(String, u32, usize)> {
        ops.iter()
            .filter_map(|op| match op {
                Op::Put(Table::Jobs, name, _) => self
                    .jobs
                    .get(name)
                    .map(|e| (name.clone(), e.rec.attempt, e.rec.tasks.len())),
                _ => None,
            })
            .collect()
    }

    // ------------------------------------------------------------------ nodes

    /// Register (or re-register) a node with its inventory. A new or changed inventory makes
    /// the snapshot stale; it is rebuilt before the next use.
    ///
    /// # Errors
    /// A bad node name or an inventory that does not fit with the other nodes (duplicate device
    /// uuids, unknown MIG geometry, more than 64 devices).
    pub fn register(
        &mut self,
        node: Node,
        now: u64,
    ) -> Result<(Vec<Assignment>, Vec<Op>), ServerError> {
        check_name("node_json.name", &node.name).map_err(|e| ServerError::from_model("", e))?;
        let mut ops = Vec::new();
        let same = self
            .nodes
            .get(&node.name)
            .is_some_and(|n| n.rec.node == node);
        if !same {
            let others = self.nodes.values().filter(|n| n.rec.node.name != node.name);
            let cluster = cluster_of(others.map(|n| &n.rec.node).chain(std::iter::once(&node)))?;
            Snapshot::new(&cluster, &self.tree).map_err(|e| ServerError::Invalid {
                field: "node_json.devices".into(),
                reason: e.to_string(),
            })?;
            let registered_ms = self
                .nodes
                .get(&node.name)
                .map_or(now, |n| n.rec.registered_ms);
            let address = self
                .nodes
                .get(&node.name)
                .map(|n| n.rec.address.clone())
                .unwrap_or_default();
            let rec = NodeRecord {
                node: node.clone(),
                registered_ms,
                last_heartbeat_ms: now,
                address,
            };
            ops.push(Op::node(&rec));
            self.nodes.insert(
                node.name.clone(),
                NodeEntry {
                    rec,
                    ready: true,
                    last_seen_ms: now,
                    instance: self.nodes.get(&node.name).and_then(|n| n.instance.clone()),
                },
            );
            self.dirty = true;
        } else {
            self.mark_seen(&node.name, now);
        }
        ops.extend(self.ensure_fresh(now));
        Ok((self.assignments(&node.name, &BTreeSet::new()), ops))
    }

    /// Whether the agent process `instance` may register node `name` (it changes nothing: see
    /// [`State::hold`]). Refused (a [`ServerError::Conflict`]) while another instance holds the
    /// node within its lease, unless that instance is `previous`: the agent restarted from the
    /// same state directory (which only one live agent can hold), so the holder is dead.
    ///
    /// # Errors
    /// An empty instance, or a node held by another live agent.
    pub fn claim(
        &self,
        name: &str,
        instance: &str,
        previous: &str,
        now: u64,
        lease_ms: u64,
    ) -> Result<(), ServerError> {
        if instance.is_empty() {
            return Err(ServerError::Invalid {
                field: "instance".into(),
                reason: "required: a fresh id of the agent process".into(),
            });
        }
        let Some(n) = self.nodes.get(name) else {
            return Ok(());
        };
        if let Some(cur) = &n.instance {
            let age = now.saturating_sub(n.last_seen_ms);
            let live = n.ready && age <= lease_ms;
            if cur != instance && live && cur != previous {
                return Err(ServerError::Conflict(format!(
                    "node {name:?} is held by another live agent (instance {cur}, last heartbeat \
                     {age} ms ago): two agents with one node name would both run its tasks; give \
                     this one another name (--node-name) or stop the other"
                )));
            }
        }
        Ok(())
    }

    /// Make `instance` the holder of node `name` (after [`State::claim`] and a registration).
    pub fn hold(&mut self, name: &str, instance: &str) {
        if let Some(n) = self.nodes.get_mut(name) {
            if n.instance.as_deref() != Some(instance) {
                if let Some(old) = &n.instance {
                    tracing::info!(node = %name, old = %old, new = %instance, "a new agent instance holds the node");
                }
                n.instance = Some(instance.to_string());
            }
        }
    }

    /// A heartbeat's instance check: the node's holder, or the first to beat after a server
    /// restart (which then holds it).
    ///
    /// # Errors
    /// Another instance holds the node: this agent must stop its tasks.
    pub fn check_instance(&mut self, name: &str, instance: &str) -> Result<(), ServerError> {
        let Some(n) = self.nodes.get_mut(name) else {
            return Ok(());
        };
        match &n.instance {
            Some(cur) if cur != instance => Err(ServerError::Conflict(format!(
                "node {name:?} is held by another agent (instance {cur}), not by instance \
                 {instance}: this agent must stop its tasks"
            ))),
            Some(_) => Ok(()),
            None => {
                n.instance = Some(instance.to_string());
                Ok(())
            }
        }
    }

    fn mark_seen(&mut self, name: &str, now: u64) {
        if let Some(n) = self.nodes.get_mut(name) {
            n.last_seen_ms = now;
            if !n.ready {
                n.ready = true;
                if let Some(id) = self.snap.node_by_name(name) {
                    self.snap.set_node_ready(id, true);
                }
                tracing::info!(node = %name, "node is back");
            }
        }
    }

    /// A heartbeat: renew the lease; answer with tasks to start and tasks to stop.
    ///
    /// # Errors
    /// An unregistered node (the agent registers again).
    pub fn heartbeat(
        &mut self,
        node: &str,
        running: &BTreeSet<TaskKey>,
        now: u64,
    ) -> Result<(Vec<Assignment>, Vec<Stop>), ServerError> {
        if !self.nodes.contains_key(node) {
            return Err(ServerError::NotFound {
                kind: "node",
                name: node.to_string(),
            });
        }
        self.mark_seen(node, now);
        let starts = self.assignments(node, running);
        let mut stops = self.stops.remove(node).unwrap_or_default();
        for k in running {
            let known = self.jobs.get(&k.job).is_some_and(|e| {
                e.rec.state == JobState::Running
                    && e.rec.attempt == k.attempt
                    && e.rec.tasks.iter().any(|t| {
                        t.group == k.group
                            && t.index == k.index
                            && t.node == node
                            && !matches!(t.phase, TaskPhase::Exited(_))
                    })
            });
            let queued = stops.iter().any(|s| {
                s.job == k.job && s.group == k.group && s.index == k.index && s.attempt == k.attempt
            });
            if !known && !queued {
                stops.push(Stop {
                    job: k.job.clone(),
                    group: k.group,
                    index: k.index,
                    attempt: k.attempt,
                    why: "not assigned to this node by the server".into(),
                });
            }
        }
        Ok((starts, stops))
    }

    /// Durable tasks assigned to `node` that it does not report running.
    pub fn assignments(&self, node: &str, running: &BTreeSet<TaskKey>) -> Vec<Assignment> {
        let node_recs: BTreeMap<String, NodeRecord> = self
            .nodes
            .get(node)
            .map(|n| (node.to_string(), n.rec.clone()))
            .into_iter()
            .collect();
        let mut out = Vec::new();
        for name in &self.running {
            let Some(e) = self.jobs.get(name) else {
                continue;
            };
            for t in e.rec.tasks.iter().take(e.published) {
                if t.node != node || matches!(t.phase, TaskPhase::Exited(_)) {
                    continue;
                }
                let key = TaskKey {
                    job: name.clone(),
                    group: t.group,
                    index: t.index,
                    attempt: e.rec.attempt,
                };
                if running.contains(&key) {
                    continue;
                }
                let (devices, gpu_milli) = t.visible_devices(&node_recs);
                out.push(Assignment {
                    job: name.clone(),
                    group: t.group,
                    index: t.index,
                    attempt: e.rec.attempt,
                    node: node.to_string(),
                    devices,
                    gpu_milli,
                    cpu_milli: t.cpu_milli,
                    memory_mib: t.memory_mib,
                    command: e.rec.command.clone(),
                    env: {
                        let mut env = crate::services::replica_env(t);
                        env.extend(self.rendezvous_env(e, t.group, t.index));
                        env
                    },
                    port: t.port,
                    probe: (t.port != 0).then(|| self.probe_of(name)).flatten(),
                });
            }
        }
        out
    }

    /// A rendezvous port for `job` whose rank 0 runs on `node`: from [`RENDEZVOUS_PORTS`],
    /// starting at a spot given by the job's name, skipping ports of gantry's other running
    /// jobs whose rank 0 is on the same node.
    fn rendezvous_port(&self, job: &str, node: &str) -> u16 {
        let taken: BTreeSet<u16> = self
            .running
            .iter()
            .filter(|j| j.as_str() != job)
            .filter_map(|j| self.jobs.get(j))
            .filter(|e| {
                e.rec
                    .tasks
                    .iter()
                    .min_by_key(|t| (t.group, t.index))
                    .is_some_and(|t| t.node == node)
            })
            .map(|e| e.rec.port)
            .collect();
        let (lo, n) = (RENDEZVOUS_PORTS.start, RENDEZVOUS_PORTS.len() as u32);
        // FNV-1a of the name: a stable spread, so jobs rarely probe.
        let h = job.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        });
        (0..n)
            .map(|k| lo + ((h.wrapping_add(k)) % n) as u16)
            .find(|p| !taken.contains(p))
            .unwrap_or(lo)
    }

    /// The environment a task gets for rendezvous (torchrun, DeepSpeed, JAX): `WORLD_SIZE`,
    /// `RANK` (its index over all the job's tasks, group by group), `LOCAL_RANK` (among the
    /// job's tasks on its node), `MASTER_ADDR`/`MASTER_PORT` (rank 0's node and the job's
    /// port), `GANTRY_NUM_NODES`, `GANTRY_NODE_RANK` and `GANTRY_HOSTS` (its nodes' addresses in
    /// order of their first rank). The job's own `env` wins over these.
    fn rendezvous_env(&self, e: &JobEntry, group: u16, index: u32) -> BTreeMap<String, String> {
        let offsets: Vec<u32> = e
            .rec
            .spec
            .tasks
            .iter()
            .scan(0u32, |acc, g| {
                let o = *acc;
                *acc += g.count;
                Some(o)
            })
            .collect();
        let world: u32 = e.rec.spec.tasks.iter().map(|g| g.count).sum();
        let rank_of = |g: u16, i: u32| offsets.get(usize::from(g)).copied().unwrap_or(0) + i;
        let mut placed: Vec<(u32, &str)> = e
            .rec
            .tasks
            .iter()
            .map(|t| (rank_of(t.group, t.index), t.node.as_str()))
            .collect();
        placed.sort_unstable();
        let rank = rank_of(group, index);
        let my_node = placed
            .iter()
            .find(|(r, _)| *r == rank)
            .map_or("", |(_, n)| *n);
        let address = |n: &str| {
            self.nodes
                .get(n)
                .map(|x| x.rec.address.as_str())
                .filter(|a| !a.is_empty())
                .unwrap_or(n)
                .to_string()
        };
        let mut hosts: Vec<&str> = Vec::new();
        for (_, n) in &placed {
            if !hosts.contains(n) {
                hosts.push(n);
            }
        }
        let local_rank = placed
            .iter()
            .filter(|(r, n)| *n == my_node && *r < rank)
            .count();
        let master = placed.first().map_or(my_node, |(_, n)| *n);
        let mut env = BTreeMap::new();
        env.insert("WORLD_SIZE".into(), world.to_string());
        env.insert("RANK".into(), rank.to_string());
        env.insert("LOCAL_RANK".into(), local_rank.to_string());
        env.insert("MASTER_ADDR".into(), address(master));
        env.insert("MASTER_PORT".into(), e.rec.port.to_string());
        env.insert("GANTRY_NUM_NODES".into(), hosts.len().to_string());
        env.insert(
            "GANTRY_NODE_RANK".into(),
            hosts
                .iter()
                .position(|n| *n == my_node)
                .unwrap_or(0)
                .to_string(),
        );
        env.insert(
            "GANTRY_HOSTS".into(),
            hosts
                .iter()
                .map(|n| address(n))
                .collect::<Vec<_>>()
                .join(","),
        );
        env.extend(e.rec.env.clone());
        env
    }

    /// Where node `name`'s peers reach it; written to the store when it changes.
    pub fn set_address(&mut self, name: &str, address: &str) -> Vec<Op> {
        match self.nodes.get_mut(name) {
            Some(n) if !address.is_empty() && n.rec.address != address => {
                n.rec.address = address.to_string();
                vec![Op::node(&n.rec)]
            }
            _ => Vec::new(),
        }
    }

    /// An agent's report on a task. Reports about older runs, other nodes or unknown tasks are
    /// ignored (they are late or duplicated). A non-zero exit fails the job and stops its other
    /// tasks; the job succeeds when every task exited with 0.
    pub fn report(&mut self, node: &str, key: &TaskKey, what: Report, now: u64) -> Vec<Op> {
        let mut ops = self.ensure_fresh(now);
        let Some(e) = self.jobs.get_mut(&key.job) else {
            return ops;
        };
        if e.rec.state != JobState::Running || e.rec.attempt != key.attempt {
            return ops;
        }
        let Some(t) = e
            .rec
            .tasks
            .iter_mut()
            .find(|t| t.group == key.group && t.index == key.index && t.node == node)
        else {
            return ops;
        };
        let task = match e
            .rec
            .spec
            .tasks
            .get(usize::from(key.group))
            .and_then(|g| g.name.as_deref())
        {
            Some(g) => format!("task {g}-{}", key.index),
            None => format!("task {}/{}", key.group, key.index),
        };
        let (code, failure) = match what {
            Report::Started => {
                if t.phase == TaskPhase::Assigned {
                    t.phase = TaskPhase::Running;
                    ops.push(Op::job(&e.rec));
                }
                return ops;
            }
            Report::Exited(c) => (c, format!("{task} exited with code {c}{}", signal_name(c))),
            Report::FailedToStart(why) => {
                let why = if why.is_empty() {
                    "the agent gave no reason".into()
                } else {
                    why
                };
                (127, format!("{task} failed to start: {why}"))
            }
        };
        if matches!(t.phase, TaskPhase::Exited(_)) {
            return ops;
        }
        t.phase = TaskPhase::Exited(code);
        let service = e.rec.spec.replicas.is_some();
        if service {
            // An inference replica that ends is replaced and the service goes on, unless its
            // replicas keep ending without one becoming ready in between (a crash loop).
            let n = self.replica_exits.entry(key.job.clone()).or_insert(0);
            *n += 1;
            if *n < crate::services::MAX_REPLICA_EXITS {
                return self.replica_ended(key, failure, now, ops);
            }
        }
        let Some(e) = self.jobs.get_mut(&key.job) else {
            return ops;
        };
        let failure = if service {
            format!(
                "{failure} ({} replicas in a row ended before one became ready)",
                crate::services::MAX_REPLICA_EXITS
            )
        } else {
            failure
        };
        let wanted: u32 = e.rec.spec.tasks.iter().map(|g| g.count).sum();
        let all_done = e.rec.tasks.len() as u32 >= wanted
            && e.rec.tasks.iter().all(|t| t.phase == TaskPhase::Exited(0));
        let outcome = if code != 0 || service {
            Some((JobState::Failed, "failed", failure))
        } else if all_done {
            Some((JobState::Succeeded, "succeeded", String::new()))
        } else {
            None
        };
        if let Some((state, kind, message)) = outcome {
            if let Some(id) = e.id.take() {
                if let Err(err) = self.snap.complete(id) {
                    tracing::error!(job = %key.job, error = %err, "engine did not know the job");
                }
            }
            stop_tasks(e, &message, &mut self.stops);
            tracing::info!(
                job = %key.job,
                queue = %e.rec.spec.queue,
                attempt = e.rec.attempt,
                state = kind,
                exit_code = code,
                "finished"
            );
            e.rec.state = state;
            e.rec.exit_code = code;
            match state {
                JobState::Succeeded => self.counters.succeeded += 1,
                _ => self.counters.failed += 1,
            }
            // A finished job's reason is its outcome (shown by `jobs` and `explain`).
            e.rec.reason = message.clone();
            e.rec.finished_ms = Some(now);
            self.running.remove(&key.job);
            self.events.push(Event {
                job: key.job.clone(),
                queue: e.rec.spec.queue.clone(),
                kind,
                message,
                at_ms: now,
                state,
            });
        }
        ops.push(Op::job(&e.rec));
        ops
    }

    /// Forget finished jobs (succeeded, failed, cancelled) that ended more than `retain_ms` ago:
    /// out of memory and deleted from the store. 0 keeps them forever.
    pub fn forget_finished(&mut self, now: u64, retain_ms: u64) -> Vec<Op> {
        if retain_ms == 0 {
            return Vec::new();
        }
        let old: Vec<(String, u64)> = self
            .jobs
            .values()
            .filter(|e| {
                matches!(
                    e.rec.state,
                    JobState::Succeeded | JobState::Failed | JobState::Cancelled
                ) && e
                    .rec
                    .finished_ms
                    .is_some_and(|f| now.saturating_sub(f) > retain_ms)
            })
            .map(|e| (e.rec.name.clone(), e.rec.seq))
            .collect();
        let mut ops = Vec::with_capacity(old.len());
        for (name, seq) in old {
            self.jobs.remove(&name);
            self.order.remove(&seq);
            ops.push(Op::Delete(Table::Jobs, name));
        }
        ops
    }

    /// Mark nodes whose lease ran out as lost and requeue their jobs whole (tasks on other
    /// nodes are told to stop).
    pub fn reap(&mut self, now: u64, lease_ms: u64) -> Vec<Op> {
        let mut ops = self.ensure_fresh(now);
        let lost: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.ready && now.saturating_sub(n.last_seen_ms) > lease_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for name in lost {
            tracing::warn!(node = %name, "lease expired: node lost");
            ops.extend(self.lose_node(&name, &format!("node {name} was lost"), now));
        }
        ops
    }

    /// A new agent process registered node `name` (see [`State::claim`]) while jobs were
    /// recorded running there: the old process is gone and its tasks were killed (the new one
    /// reaps them from its state dir before registering). Requeue those jobs whole with a new
    /// attempt and an event saying why, rather than handing the same attempt out again.
    pub fn agent_restarted(&mut self, name: &str, instance: &str, now: u64) -> Vec<Op> {
        let new_process = self
            .nodes
            .get(name)
            .is_some_and(|n| n.instance.as_deref() != Some(instance));
        let has_tasks = self.running.iter().any(|j| {
            self.jobs
                .get(j)
                .is_some_and(|e| e.rec.tasks.iter().any(|t| t.node == name))
        });
        if !new_process || !has_tasks {
            return Vec::new();
        }
        let mut ops = self.ensure_fresh(now);
        ops.extend(self.lose_node(
            name,
            &format!("the agent on node {name} restarted, which stopped its tasks"),
            now,
        ));
        self.mark_seen(name, now);
        ops
    }

    /// The agent of node `name` said it is stopping (its tasks are killed): lose the node now
    /// rather than after its lease.
    pub fn agent_left(&mut self, name: &str, now: u64) -> Vec<Op> {
        if !self.nodes.get(name).is_some_and(|n| n.ready) {
            return Vec::new();
        }
        tracing::info!(node = %name, "the agent stopped: node lost");
        let mut ops = self.ensure_fresh(now);
        ops.extend(self.lose_node(name, &format!("the agent on node {name} stopped"), now));
        ops
    }

    /// Mark a node not ready and requeue the jobs placed on it, whole, saying `why`.
    fn lose_node(&mut self, name: &str, why: &str, now: u64) -> Vec<Op> {
        let mut ops = Vec::new();
        if let Some(n) = self.nodes.get_mut(name) {
            n.ready = false;
        }
        let Some(id) = self.snap.node_by_name(name) else {
            return ops;
        };
        for job in self.snap.set_node_ready(id, false) {
            let jname = self.snap.job_name(job).to_string();
            if let Err(err) = self.snap.requeue(job) {
                tracing::error!(job = %jname, error = %err, "requeue failed");
                continue;
            }
            if let Some(e) = self.jobs.get_mut(&jname) {
                tracing::info!(
                    job = %jname,
                    queue = %e.rec.spec.queue,
                    attempt = e.rec.attempt,
                    node = %name,
                    why,
                    "requeued"
                );
                requeue_record(e, why, &mut self.stops, &mut self.events, now);
                self.running.remove(&jname);
                self.counters.lost_requeues += 1;
                ops.push(Op::job(&e.rec));
            }
        }
        ops
    }

    /// Forget a lost node: its record goes, and with it its place in `nodes` and its
    /// inventory in the snapshot. A node whose agent still heartbeats is refused (it would only
    /// register again); its jobs were requeued when it was lost.
    ///
    /// # Errors
    /// [`ServerError::NotFound`] for an unknown node, [`ServerError::Conflict`] for a ready one.
    pub fn forget_node(&mut self, name: &str) -> Result<Vec<Op>, ServerError> {
        let n = self.nodes.get(name).ok_or_else(|| ServerError::NotFound {
            kind: "node",
            name: name.to_string(),
        })?;
        if n.ready {
            return Err(ServerError::Conflict(format!(
                "node {name:?} is ready (its agent heartbeats); stop its agent first: only a lost \
                 node can be forgotten"
            )));
        }
        self.nodes.remove(name);
        self.dirty = true;
        Ok(vec![Op::Delete(Table::Nodes, name.to_string())])
    }

    /// An active job's id in the current snapshot (rebuilding it first if stale).
    pub fn job_id(&mut self, name: &str, now: u64) -> (Option<JobId>, Vec<Op>) {
        let ops = self.ensure_fresh(now);
        (self.jobs.get(name).and_then(|e| e.id), ops)
    }
}

/// ` (SIGKILL)` and the like for exit codes 128 + n of common signals.
fn signal_name(code: i32) -> &'static str {
    match code {
        129 => " (SIGHUP)",
        130 => " (SIGINT)",
        134 => " (SIGABRT)",
        137 => " (SIGKILL, e.g. out of memory)",
        139 => " (SIGSEGV)",
        143 => " (SIGTERM)",
        _ => "",
    }
}

/// Tell the job's unfinished tasks to stop.
fn stop_tasks(e: &JobEntry, why: &str, stops: &mut HashMap<String, Vec<Stop>>) {
    for t in e.rec.tasks.iter().take(e.published) {
        if matches!(t.phase, TaskPhase::Exited(_)) {
            continue;
        }
        stops.entry(t.node.clone()).or_default().push(Stop {
            job: e.rec.name.clone(),
            group: t.group,
            index: t.index,
            attempt: e.rec.attempt,
            why: why.to_string(),
        });
    }
}

/// Put a job's record back to pending: its tasks are told to stop and the next run gets a new
/// attempt number. (The caller has requeued it in the snapshot.)
pub(crate) fn requeue_record(
    e: &mut JobEntry,
    why: &str,
    stops: &mut HashMap<String, Vec<Stop>>,
    events: &mut Vec<Event>,
    now: u64,
) {
    stop_tasks(e, why, stops);
    e.rec.tasks.clear();
    e.published = 0;
    e.rec.attempt += 1;
    e.rec.requeues += 1;
    e.rec.state = JobState::Pending;
    e.rec.started_ms = None;
    e.rec.reason = why.to_string();
    events.push(Event {
        job: e.rec.name.clone(),
        queue: e.rec.spec.queue.clone(),
        kind: "requeued",
        message: why.to_string(),
        at_ms: now,
        state: JobState::Pending,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::GpuRecord;

    pub(crate) fn node(name: &str, gpus: u32) -> Node {
        let devices: Vec<String> = (0..gpus)
            .map(|i| {
                format!(
                    r#"{{"uuid": "GPU-{name}-{i}", "model": "h100-80gb", "memory_mib": 81559}}"#
                )
            })
            .collect();
        serde_json::from_str(&format!(
            r#"{{"name": "{name}", "cpu": 64, "memory": "512Gi", "devices": [{}]}}"#,
            devices.join(",")
        ))
        .expect("node")
    }

    fn spec(json: &str) -> JobSpec {
        serde_json::from_str(json).expect("spec")
    }

    #[test]
    fn one_live_agent_instance_per_node_name() {
        let mut s = state();
        let lease = 10_000;
        // n0 registered before any instance was known (as after a server restart): the first
        // to claim holds it.
        s.claim("n0", "a", "", 100, lease).expect("unknown holder");
        s.hold("n0", "a");
        s.claim("n0", "a", "", 200, lease)
            .expect("the holder again");
        s.check_instance("n0", "a").expect("the holder's heartbeat");
        // Another live instance is refused and changes nothing.
        let e = s.claim("n0", "b", "", 300, lease).expect_err("a duplicate");
        assert!(
            matches!(e, ServerError::Conflict(ref m) if m.contains("--node-name")),
            "{e}"
        );
        assert!(s.check_instance("n0", "b").is_err());
        assert_eq!(s.nodes["n0"].instance.as_deref(), Some("a"));
        // A restart from the same state dir names its predecessor: taken over at once.
        s.claim("n0", "c", "a", 400, lease).expect("a restart");
        s.hold("n0", "c");
        assert!(
            s.check_instance("n0", "a").is_err(),
            "the old instance is fenced"
        );
        // Once the holder's lease ran out, anyone may take the node.
        s.reap(lease + 1_000, lease);
        s.claim("n0", "d", "", lease + 1_000, lease)
            .expect("after the lease");
        // A new node has no holder yet; an empty instance is bad input naming the field.
        s.claim("n9", "x", "", 0, lease).expect("new node");
        let e = s.claim("n9", "", "", 0, lease).expect_err("empty");
        assert!(e.to_string().starts_with("instance: required"), "{e}");
    }

    fn team_queue() -> QueueSpec {
        serde_json::from_str(r#"{"name": "team-a", "quotas": {"h100-80gb": {"nominal": 16}}}"#)
            .expect("queue")
    }

    fn state() -> State {
        let (mut s, _) = State::recover(
            vec![team_queue()],
            None,
            vec![],
            vec![],
            Profile::gantry(),
            0,
        )
        .expect("recover");
        s.register(node("n0", 8), 0).expect("n0");
        s.register(node("n1", 8), 0).expect("n1");
        s
    }

    fn submit(s: &mut State, json: &str) -> Result<(), ServerError> {
        let rec = s.begin_submit(spec(json), vec!["true".into()], BTreeMap::new(), 1)?;
        s.finish_submit(rec, true);
        Ok(())
    }

    /// Cycle and pretend the ops became durable.
    fn cycle(s: &mut State, now: u64) {
        let ops = s.cycle(now);
        let marks = s.publish_marks(&ops);
        s.publish(&marks);
    }

    fn devices(s: &State, job: &str) -> Vec<String> {
        let mut v: Vec<String> = s.jobs[job]
            .rec
            .tasks
            .iter()
            .flat_map(|t| match &t.gpu {
                GpuRecord::Whole(u) => u.clone(),
                _ => vec![],
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn gangs_whose_rank_0_shares_a_node_get_their_own_rendezvous_ports() {
        let mut s = state();
        // Eight jobs with rank 0 on n0 get eight distinct ports (a clash of their hash spots
        // is resolved by probing).
        for i in 0..8 {
            submit(
                &mut s,
                &format!(
                    r#"{{"name": "j{i}", "queue": "team-a", "tasks": [{{"count": 1, "gpus": 1}}]}}"#
                ),
            )
            .expect("submit");
        }
        cycle(&mut s, 5);
        let ports: BTreeSet<u16> = (0..8).map(|i| s.jobs[&format!("j{i}")].rec.port).collect();
        assert_eq!(ports.len(), 8, "{ports:?}");
        assert!(ports.iter().all(|p| RENDEZVOUS_PORTS.contains(p)));
        let a = &s.assignments("n0", &BTreeSet::new());
        let j0 = a.iter().find(|a| a.job == "j0").expect("j0");
        assert_eq!(j0.env["WORLD_SIZE"], "1");
        assert_eq!(j0.env["MASTER_PORT"], s.jobs["j0"].rec.port.to_string());
        // Without an address the node's name stands in.
        assert_eq!(j0.env["MASTER_ADDR"], "n0");
    }

    #[test]
    fn finished_jobs_are_forgotten_after_their_retention_only() {
        let mut s = state();
        for n in ["done", "live"] {
            submit(
                &mut s,
                &format!(
                    r#"{{"name": "{n}", "queue": "team-a", "tasks": [{{"count": 1, "gpus": 1}}]}}"#
                ),
            )
            .expect("submit");
        }
        cycle(&mut s, 5);
        let key = TaskKey {
            job: "done".into(),
            group: 0,
            index: 0,
            attempt: 0,
        };
        s.report("n0", &key, Report::Exited(0), 100);
        assert_eq!(s.jobs["done"].rec.state, JobState::Succeeded);
        assert!(s.forget_finished(100 + 999, 1_000).is_empty(), "not yet");
        assert!(s.forget_finished(10_000, 0).is_empty(), "0 keeps them");
        let ops = s.forget_finished(100 + 1_001, 1_000);
        assert_eq!(ops, vec![Op::Delete(Table::Jobs, "done".into())]);
        assert!(!s.jobs.contains_key("done"));
        assert!(s.jobs.contains_key("live"), "a running job stays");
        assert!(s.order.values().all(|n| n != "done"));
    }

    #[test]
    fn bad_submissions_name_the_field_and_store_nothing() {
        let mut s = state();
        let cases = [
            (
                r#"{"name": "a", "queue": "nope", "tasks": [{"count": 1, "gpus": 1}]}"#,
                "spec_json.queue",
            ),
            (
                r#"{"name": "a", "queue": "team-a", "tasks": [{"count": 1, "gpus": 9}]}"#,
                "spec_json.tasks[0].gpus",
            ),
            (
                r#"{"name": "a b", "queue": "team-a", "tasks": [{"count": 1, "gpus": 1}]}"#,
                "spec_json.name",
            ),
        ];
        for (json, field) in cases {
            let e = submit(&mut s, json).expect_err(json);
            assert!(
                matches!(&e, ServerError::Invalid { field: f, .. } if f == field),
                "{e}"
            );
        }
        let long = "x".repeat(300);
        let e = submit(
            &mut s,
            &format!(r#"{{"name": "{long}", "queue": "team-a", "tasks": [{{"count": 1}}]}}"#),
        )
        .expect_err("long");
        assert!(
            e.to_string().starts_with("spec_json.name: 300 characters"),
            "{e}"
        );
        assert!(s.jobs.is_empty() && s.reserved.is_empty() && s.next_seq == 1);
    }

    #[test]
    fn a_job_runs_on_durable_assignments_and_succeeds_when_every_task_exits_0() {
        let mut s = state();
        submit(
            &mut s,
            r#"{"name": "g", "queue": "team-a", "tasks": [{"count": 2, "gpus": 8}]}"#,
        )
        .expect("submit");
        let ops = s.cycle(10);
        assert!(!ops.is_empty());
        assert_eq!(s.jobs["g"].rec.state, JobState::Running);
        // Not yet durable: agents get nothing.
        assert!(s
            .heartbeat("n0", &BTreeSet::new(), 11)
            .expect("hb")
            .0
            .is_empty());
        let marks = s.publish_marks(&ops);
        s.publish(&marks);
        let (a0, _) = s.heartbeat("n0", &BTreeSet::new(), 12).expect("hb");
        let (a1, _) = s.heartbeat("n1", &BTreeSet::new(), 12).expect("hb");
        assert_eq!((a0.len(), a1.len()), (1, 1), "the gang spans both nodes");
        assert_eq!(a0[0].devices.len(), 8);
        for a in a0.iter().chain(&a1) {
            let key = TaskKey {
                job: a.job.clone(),
                group: a.group,
                index: a.index,
                attempt: a.attempt,
            };
            s.report(&a.node, &key, Report::Started, 13);
            s.report(&a.node, &key, Report::Exited(0), 14);
        }
        assert_eq!(s.jobs["g"].rec.state, JobState::Succeeded);
        assert_eq!(s.snap.gpu_totals().allocated_milli, 0, "devices released");
    }

    #[test]
    fn a_lost_node_requeues_the_gang_whole_and_stops_its_other_tasks() {
        let mut s = state();
        submit(
            &mut s,
            r#"{"name": "g", "queue": "team-a", "tasks": [{"count": 2, "gpus": 8}]}"#,
        )
        .expect("submit");
        cycle(&mut s, 10);
        assert_eq!(s.jobs["g"].rec.state, JobState::Running);
        s.heartbeat("n0", &BTreeSet::new(), 5_000).expect("hb");
        let ops = s.reap(12_000, 10_000);
        assert!(!ops.is_empty());
        let g = &s.jobs["g"].rec;
        assert_eq!((g.state, g.attempt, g.requeues), (JobState::Pending, 1, 1));
        assert!(g.tasks.is_empty());
        assert!(g.reason.contains("node n1 was lost"), "{}", g.reason);
        let (_, stops) = s.heartbeat("n0", &BTreeSet::new(), 12_001).expect("hb");
        assert_eq!(stops.len(), 1, "n0's half of the gang is stopped");
        // One 8-GPU node left: the 2x8 gang waits, with a reason.
        cycle(&mut s, 12_100);
        assert_eq!(s.jobs["g"].rec.state, JobState::Pending);
        // n1 comes back: the gang runs again, as attempt 1.
        s.heartbeat("n1", &BTreeSet::new(), 12_200).expect("back");
        cycle(&mut s, 12_300);
        assert_eq!(s.jobs["g"].rec.state, JobState::Running);
        assert_eq!(s.jobs["g"].rec.tasks.len(), 2);
    }

    #[test]
    fn recovery_gives_running_jobs_their_devices_back_and_never_twice() {
        let mut s = state();
        submit(
            &mut s,
            r#"{"name": "a", "queue": "team-a", "tasks": [{"count": 1, "gpus": 4}]}"#,
        )
        .expect("a");
        cycle(&mut s, 10);
        let before = devices(&s, "a");
        assert_eq!(before.len(), 4);
        // What the store holds, as a restarted server reads it.
        let jobs: Vec<JobRecord> = s.jobs.values().map(|e| e.rec.clone()).collect();
        let nodes: Vec<NodeRecord> = s.nodes.values().map(|n| n.rec.clone()).collect();
        let (mut r, ops) = State::recover(
            vec![team_queue()],
            None,
            jobs,
            nodes,
            Profile::gantry(),
            100,
        )
        .expect("recover");
        assert!(ops.is_empty(), "nothing to requeue");
        assert_eq!(r.jobs["a"].rec.state, JobState::Running);
        assert_eq!(devices(&r, "a"), before);
        assert_eq!(r.snap.gpu_totals().allocated_milli, 4000);
        // 12 GPUs are free; a 12-GPU request must not reuse a's devices.
        submit(
            &mut r,
            r#"{"name": "b", "queue": "team-a", "tasks": [{"count": 3, "gpus": 4}]}"#,
        )
        .expect("b");
        cycle(&mut r, 200);
        let b = devices(&r, "b");
        assert_eq!(b.len(), 12);
        assert!(b.iter().all(|d| !before.contains(d)), "{b:?} vs {before:?}");
    }

    #[test]
    fn a_node_whose_devices_vanished_gets_its_jobs_requeued_on_rebuild() {
        let mut s = state();
        submit(
            &mut s,
            r#"{"name": "a", "queue": "team-a", "tasks": [{"count": 1, "gpus": 8}]}"#,
        )
        .expect("a");
        cycle(&mut s, 10);
        let on = s.jobs["a"].rec.tasks[0].node.clone();
        let (_, ops) = s.register(node(&on, 2), 20).expect("smaller inventory");
        assert!(ops.len() >= 2, "node and the requeued job are recorded");
        assert_eq!(s.jobs["a"].rec.state, JobState::Pending);
        assert_eq!(s.jobs["a"].rec.attempt, 1);
    }

    #[test]
    fn cancel_stops_tasks_and_queue_edits_keep_jobs_valid() {
        let mut s = state();
        submit(
            &mut s,
            r#"{"name": "a", "queue": "team-a", "tasks": [{"count": 1, "gpus": 1}]}"#,
        )
        .expect("a");
        cycle(&mut s, 10);
        let e = s.delete_queue("team-a").expect_err("has a job");
        assert!(matches!(e, ServerError::Conflict(_)), "{e}");
        let mut child = team_queue();
        child.name = "sub".into();
        child.parent = Some("team-a".into());
        let e = s
            .create_queue(child)
            .expect_err("team-a would become a cohort");
        assert!(e.to_string().contains("must stay a leaf"), "{e}");
        let (state, _) = s.cancel("a", 20).expect("cancel");
        assert_eq!(state, JobState::Cancelled);
        let node = s.jobs["a"].rec.tasks[0].node.clone();
        let (_, stops) = s.heartbeat(&node, &BTreeSet::new(), 21).expect("hb");
        assert_eq!(stops.len(), 1);
        assert!(s.cancel("a", 22).is_err());
        s.delete_queue("team-a").expect("empty now");
    }

    #[test]
    fn a_name_reused_after_cancel_is_never_confused_with_the_old_job() {
        let mut s = state();
        let a = r#"{"name": "a", "queue": "team-a", "tasks": [{"count": 1, "gpus": 8}]}"#;
        submit(&mut s, a).expect("a");
        // The other node is full, so the new "a" lands where the old one ran.
        submit(
            &mut s,
            r#"{"name": "filler", "queue": "team-a", "tasks": [{"count": 1, "gpus": 8}]}"#,
        )
        .expect("filler");
        cycle(&mut s, 10);
        let node = s.jobs["a"].rec.tasks[0].node.clone();
        let old = TaskKey {
            job: "a".into(),
            group: 0,
            index: 0,
            attempt: s.jobs["a"].rec.attempt,
        };
        s.cancel("a", 20).expect("cancel");
        submit(&mut s, a).expect("the name is free again");
        assert_eq!(s.jobs["a"].rec.attempt, old.attempt + 1);
        cycle(&mut s, 30);
        assert_eq!(s.jobs["a"].rec.tasks[0].node, node);
        // The old process still runs (its grace period): the new task is handed out all the
        // same, under its own attempt, and the old exit is not taken for the new job's.
        let running: BTreeSet<TaskKey> = [old.clone()].into();
        let (starts, _) = s.heartbeat(&node, &running, 31).expect("hb");
        assert_eq!(starts.len(), 1, "{starts:?}");
        assert_eq!(starts[0].attempt, old.attempt + 1);
        s.report(&node, &old, Report::Exited(143), 32);
        assert_eq!(s.jobs["a"].rec.state, JobState::Running);
    }
}
