//! The plan: what one cycle decided. Drivers apply it — bind tasks to the exact devices or
//! slices named, evict victims, record reservations and explanations.

use serde::{Deserialize, Serialize};

use crate::explain::Reason;
use crate::snapshot::{DeviceId, JobId, TaskAlloc, Time};

/// Tasks of one job that start now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bind {
    /// The job.
    pub job: JobId,
    /// Its newly placed tasks, with exact nodes and devices.
    pub tasks: Vec<TaskAlloc>,
}

/// Why a job was evicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PreemptCause {
    /// A higher-priority job needed the room.
    Priority,
    /// A queue within its nominal quota took back what the victim's queue borrowed.
    Reclaim,
}

/// A job evicted (all its tasks: gangs are evicted whole) and put back in its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preemption {
    /// The evicted job, now pending again.
    pub victim: JobId,
    /// The job it made room for.
    pub preemptor: JobId,
    /// Why.
    pub cause: PreemptCause,
}

/// Capacity held for a blocked job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// The job.
    pub job: JobId,
    /// When it is expected to start (from expected runtimes).
    pub start: Time,
    /// The devices it will take.
    pub devices: Vec<DeviceId>,
}

/// Counters of one cycle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleStats {
    /// Jobs looked at.
    pub examined: u64,
    /// Jobs skipped because a job of the same shape already failed this cycle.
    pub memo_skips: u64,
    /// Queues skipped whole: no quota or capacity left for anything they hold, or a job of
    /// every shape they hold already failed this cycle.
    pub queues_skipped: u64,
    /// Jobs that started (or grew).
    pub admitted: u64,
    /// Binds this cycle took back so that a job within its queue's nominal quota could have
    /// the room another queue was borrowing in the same cycle (in-quota work goes first).
    #[serde(default)]
    pub unadmitted: u64,
    /// Tasks placed.
    pub tasks_placed: u64,
    /// Victim searches attempted.
    pub preemption_attempts: u64,
    /// Whether the cycle looked only at jobs that arrived since the last one.
    pub incremental: bool,
}

/// The output of one cycle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The cycle's clock.
    pub now: Time,
    /// Tasks to start, in decision order.
    pub binds: Vec<Bind>,
    /// Jobs to evict, before the binds that need their room.
    pub preemptions: Vec<Preemption>,
    /// Capacity held for blocked jobs.
    pub reservations: Vec<Reservation>,
    /// Pending jobs whose reason changed this cycle.
    pub reasons: Vec<(JobId, Reason)>,
    /// Counters.
    pub stats: CycleStats,
}
