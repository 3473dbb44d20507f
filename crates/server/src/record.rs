//! What the store keeps: one record per queue, job and node, serialised as JSON. Allocations
//! are written with names and uuids (never engine indexes), so a restarted server, or one whose
//! node set changed, maps them back onto a fresh snapshot with `Snapshot::restore`.

use std::collections::BTreeMap;

use gantry_engine::{NamedAlloc, NamedGpu, Snapshot, TaskAlloc};
use gantry_model::{JobSpec, Node};
use serde::{Deserialize, Serialize};

/// Where a job is in its life, as the server tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    /// Waiting in its queue.
    Pending,
    /// Its gang is placed.
    Running,
    /// Every task exited with status 0.
    Succeeded,
    /// A task exited with a non-zero status or could not start.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl JobState {
    /// Pending or running.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Pending | JobState::Running)
    }
}

/// What one task holds, by uuid (the engine's by-name form, shared with Kubernetes mode).
pub type GpuRecord = NamedGpu;

/// How far a task got on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskPhase {
    /// Assigned; the agent has not said it started.
    Assigned,
    /// The agent started the process.
    Running,
    /// The process ended with this status.
    Exited(i32),
}

/// One placed task: the engine's by-name allocation (stored flat, as before) and how far the
/// task got on its node. Reads of the allocation's fields go through `Deref`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Node, devices and quota charged, by name.
    #[serde(flatten)]
    pub alloc: NamedAlloc,
    /// Progress.
    pub phase: TaskPhase,
    /// An inference replica's port (`PORT`) on its node; 0 for other tasks.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u16,
}

impl std::ops::Deref for TaskRecord {
    type Target = NamedAlloc;
    fn deref(&self) -> &NamedAlloc {
        &self.alloc
    }
}

impl TaskRecord {
    /// Record an engine allocation by names.
    pub fn from_alloc(snap: &Snapshot, t: &TaskAlloc) -> TaskRecord {
        TaskRecord {
            alloc: NamedAlloc::from_alloc(snap, t),
            phase: TaskPhase::Assigned,
            port: 0,
        }
    }

    /// The uuids the task's process may see (`CUDA_VISIBLE_DEVICES`), and its shared fraction.
    pub fn visible_devices(&self, nodes: &BTreeMap<String, NodeRecord>) -> (Vec<String>, u32) {
        let devices = nodes
            .get(&self.alloc.node)
            .map(|n| n.node.devices.as_slice())
            .unwrap_or(&[]);
        self.alloc.visible_uuids(devices)
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Name (the key).
    pub name: String,
    /// Submission sequence number.
    pub seq: u64,
    /// The spec as submitted.
    pub spec: JobSpec,
    /// What each task runs.
    pub command: Vec<String>,
    /// Extra environment for each task.
    pub env: BTreeMap<String, String>,
    /// Life cycle.
    pub state: JobState,
    /// Milliseconds since the epoch.
    pub submitted_ms: u64,
    /// Last start.
    pub started_ms: Option<u64>,
    /// End.
    pub finished_ms: Option<u64>,
    /// Run number, bumped on every requeue; agents' reports of older runs are ignored.
    pub attempt: u32,
    /// Times requeued.
    pub requeues: u32,
    /// Placed tasks of the current run.
    pub tasks: Vec<TaskRecord>,
    /// Why it waits (the last cycle's explanation).
    pub reason: String,
    /// Exit status of a finished job.
    pub exit_code: i32,
    /// The current run's rendezvous port (`MASTER_PORT`) on its rank-0 task's node, unique
    /// among gantry's running jobs there; 0 before the job first runs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub port: u16,
    /// Who submitted it (the token's user; empty without tokens).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// An inference service's last scaling decision (its desired count is the spec's task
    /// count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleRecord>,
}

/// A scaling decision as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleRecord {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// Desired before.
    pub from: u32,
    /// Desired after.
    pub to: u32,
    /// In words, with its inputs.
    pub why: String,
}

fn is_zero(p: &u16) -> bool {
    *p == 0
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its inventory.
    pub node: Node,
    /// First registration.
    pub registered_ms: u64,
    /// Last heartbeat (or registration).
    pub last_heartbeat_ms: u64,
    /// Where the node's peers reach it (`MASTER_ADDR` of gangs whose rank 0 runs here): the
    /// agent's `--advertise-addr`, else the address it registered from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
}
