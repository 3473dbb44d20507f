//! Engine profiles: the policies are configurations of one engine, never separate engines.
//!
//! - [`Profile::gantry`] (default): weighted dominant-share fair ordering with optional decayed
//!   history, fragmentation-aware best-fit packing, gangs, preemption and backfill.
//! - [`Profile::best_fit`]: global submit order, best-fit packing, no backfill or preemption.
//! - [`Profile::fgd`]: global submit order with the FGD paper's packing, as its artifact does it:
//!   the reference gantry's packing is measured against.
//! - [`Profile::fifo`]: strict FIFO (the first job that does not fit blocks everyone), first fit.

use serde::{Deserialize, Serialize};

/// In which order queues hand jobs to the cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// The queue with the lowest weighted dominant share goes next.
    FairShare,
    /// The queue whose head job was submitted first goes next (global FIFO).
    Submit,
}

/// How nodes and devices are chosen. Every policy scores all feasible (node, GPU model) pairs a
/// task allows; whole GPUs inside a node go to the NVLink domain with the fewest free devices
/// that holds them, MIG slices to the start that destroys the fewest future placements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Packing {
    /// Lowest-numbered node that fits.
    FirstFit,
    /// The FGD paper's BestFit: the node with the least cpu and GPU left after placing
    /// (`½·cpu/max_cpu + ½·gpu/max_gpu`), ties at random; shared GPUs by least remaining.
    BestFit,
    /// The FGD paper's fragmentation gradient descent, as its artifact implements it.
    Fgd,
    /// gantry's own: the least increase of expected fragmentation against the learned workload,
    /// exact, ties to the node that keeps the least GPU and cpu free (so whole nodes stay free).
    Fragmentation,
}

/// Time-decayed historical usage blended into the fair share.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Half-life of the decay, in ms.
    pub half_life_ms: u64,
    /// Weight of history versus current usage, in [0, 1].
    pub weight: f64,
}

/// One engine configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Name shown in reports.
    pub name: String,
    /// Queue order.
    pub ordering: Ordering,
    /// Placement.
    pub packing: Packing,
    /// Stop the cycle at the first job that does not fit (strict FIFO).
    pub head_of_line_blocking: bool,
    /// Reserve capacity for blocked queue heads and let only non-delaying jobs backfill.
    pub backfill: bool,
    /// Most reservations per cycle.
    pub max_reservations: u32,
    /// Evict lower-priority or borrowing jobs for blocked ones.
    pub preemption: bool,
    /// Most jobs per cycle for which a victim search is attempted.
    pub max_preemption_attempts: u32,
    /// Reclaim patience: a job that could reclaim borrowed quota first looks (with expected
    /// runtimes) at when it would start anyway; if that is within this many ms it waits, with a
    /// reservation, instead of evicting work. 0 reclaims at once. Priority preemption never waits.
    #[serde(default)]
    pub reclaim_patience_ms: u64,
    /// Decayed history in the share, if any.
    pub history: Option<History>,
}

impl Profile {
    /// The default profile.
    pub fn gantry() -> Profile {
        Profile {
            name: "gantry".into(),
            ordering: Ordering::FairShare,
            packing: Packing::Fragmentation,
            head_of_line_blocking: false,
            backfill: true,
            max_reservations: 16,
            preemption: true,
            max_preemption_attempts: 8,
            reclaim_patience_ms: 30 * 60 * 1000,
            history: None,
        }
    }

    /// Global submit order with best-fit packing; no reservations, no preemption.
    pub fn best_fit() -> Profile {
        Profile {
            name: "best-fit".into(),
            ordering: Ordering::Submit,
            packing: Packing::BestFit,
            head_of_line_blocking: false,
            backfill: false,
            max_reservations: 0,
            preemption: false,
            max_preemption_attempts: 0,
            reclaim_patience_ms: 0,
            history: None,
        }
    }

    /// Global submit order with FGD packing; no reservations, no preemption.
    pub fn fgd() -> Profile {
        Profile {
            name: "fgd".into(),
            packing: Packing::Fgd,
            ..Profile::best_fit()
        }
    }

    /// Strict FIFO with first fit.
    pub fn fifo() -> Profile {
        Profile {
            name: "fifo".into(),
            ordering: Ordering::Submit,
            packing: Packing::FirstFit,
            head_of_line_blocking: true,
            backfill: false,
            max_reservations: 0,
            preemption: false,
            max_preemption_attempts: 0,
            reclaim_patience_ms: 0,
            history: None,
        }
    }

    /// A profile by name: `gantry`, `best-fit`, `fgd` or `fifo`.
    pub fn named(name: &str) -> Option<Profile> {
        match name {
            "gantry" => Some(Profile::gantry()),
            "best-fit" | "bestfit" => Some(Profile::best_fit()),
            "fgd" => Some(Profile::fgd()),
            "fifo" => Some(Profile::fifo()),
            _ => None,
        }
    }
}

impl Default for Profile {
    fn default() -> Self {
        Profile::gantry()
    }
}
