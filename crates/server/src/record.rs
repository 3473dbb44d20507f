//! What the store keeps: one record per queue, job and node, serialised as JSON. Allocations
//! are written with names and uuids (never engine indexes), so a restarted server, or one whose
//! node set changed, maps them back onto a fresh snapshot with `Snapshot::restore`.

use std::collections::BTreeMap;

use gantry_engine::{GpuAlloc, Snapshot, TaskAlloc};
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

/// What one task holds, by uuid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GpuRecord {
    /// No GPU.
    None,
    /// Whole devices.
    Whole(Vec<String>),
    /// A fraction of a device, in thousandths.
    Shared {
        /// Device uuid.
        uuid: String,
        /// Thousandths.
        milli: u16,
    },
    /// A MIG slice of a device.
    Mig {
        /// Parent device uuid.
        uuid: String,
        /// Profile index in the model's geometry.
        profile: u8,
        /// First memory slice.
        start: u8,
    },
}

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

/// One placed task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// Task group.
    pub group: u16,
    /// Replica index in the group.
    pub index: u32,
    /// Node name.
    pub node: String,
    /// Millicores.
    pub cpu_milli: u32,
    /// MiB.
    pub memory_mib: u64,
    /// GPUs.
    pub gpu: GpuRecord,
    /// Quota flavor charged, by name.
    pub flavor: Option<String>,
    /// Quota charged, thousandths.
    pub amount: u64,
    /// Progress.
    pub phase: TaskPhase,
}

impl TaskRecord {
    /// Record an engine allocation by names.
    pub fn from_alloc(snap: &Snapshot, t: &TaskAlloc) -> TaskRecord {
        let gpu = match &t.gpu {
            GpuAlloc::None => GpuRecord::None,
            GpuAlloc::Whole(ds) => GpuRecord::Whole(
                ds.iter()
                    .map(|&d| snap.device_uuid(d).to_string())
                    .collect(),
            ),
            GpuAlloc::Shared { device, milli } => GpuRecord::Shared {
                uuid: snap.device_uuid(*device).to_string(),
                milli: *milli,
            },
            GpuAlloc::Mig {
                device,
                profile,
                start,
            } => GpuRecord::Mig {
                uuid: snap.device_uuid(*device).to_string(),
                profile: *profile,
                start: *start,
            },
        };
        let flavor = (t.flavor.0 != u32::MAX).then(|| snap.flavor_name(t.flavor).to_string());
        TaskRecord {
            group: t.group,
            index: t.index,
            node: snap.node_name(t.node).to_string(),
            cpu_milli: t.cpu_milli,
            memory_mib: t.memory_mib,
            gpu,
            flavor,
            amount: t.amount,
            phase: TaskPhase::Assigned,
        }
    }

    /// Map back onto a snapshot; `None` when its node, a device or its flavor is gone.
    pub fn to_alloc(&self, snap: &Snapshot) -> Option<TaskAlloc> {
        let node = snap.node_by_name(&self.node)?;
        let gpu = match &self.gpu {
            GpuRecord::None => GpuAlloc::None,
            GpuRecord::Whole(us) => GpuAlloc::Whole(
                us.iter()
                    .map(|u| snap.device_by_uuid(u))
                    .collect::<Option<Vec<_>>>()?,
            ),
            GpuRecord::Shared { uuid, milli } => GpuAlloc::Shared {
                device: snap.device_by_uuid(uuid)?,
                milli: *milli,
            },
            GpuRecord::Mig {
                uuid,
                profile,
                start,
            } => GpuAlloc::Mig {
                device: snap.device_by_uuid(uuid)?,
                profile: *profile,
                start: *start,
            },
        };
        let flavor = match &self.flavor {
            None => gantry_engine::FlavorId(u32::MAX),
            Some(f) => snap.flavor_by_name(f)?,
        };
        Some(TaskAlloc {
            group: self.group,
            index: self.index,
            node,
            cpu_milli: self.cpu_milli,
            memory_mib: self.memory_mib,
            gpu,
            flavor,
            amount: self.amount,
        })
    }

    /// The uuids the task's process may see (`CUDA_VISIBLE_DEVICES`), and its shared fraction.
    pub fn visible_devices(&self, nodes: &BTreeMap<String, NodeRecord>) -> (Vec<String>, u32) {
        match &self.gpu {
            GpuRecord::None => (Vec::new(), 0),
            GpuRecord::Whole(us) => (us.clone(), 0),
            GpuRecord::Shared { uuid, milli } => (vec![uuid.clone()], u32::from(*milli)),
            GpuRecord::Mig { uuid, start, .. } => {
                // A fixed layout names each slice's uuid; slices created on demand have none
                // yet, so the parent device is named.
                let slice = nodes
                    .get(&self.node)
                    .and_then(|n| n.node.devices.iter().find(|d| &d.uuid == uuid))
                    .and_then(|d| d.mig.as_ref())
                    .and_then(|m| m.slices.iter().find(|s| s.start == *start))
                    .map(|s| s.uuid.clone())
                    .filter(|u| !u.is_empty());
                (vec![slice.unwrap_or_else(|| uuid.clone())], 0)
            }
        }
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
}
