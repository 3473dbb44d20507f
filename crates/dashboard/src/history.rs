//! A bounded history for the overview's chart: one sample per interval, a day of them.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use crate::NodeView;

/// One point of the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// GPUs on ready nodes.
    pub gpus: u32,
    /// GPUs held in whole or in part.
    pub held: u32,
    /// GPUs asked for by waiting jobs.
    pub wanted: u32,
}

impl Sample {
    /// A sample of `nodes`, with `wanted` GPUs asked for by waiting jobs.
    pub fn of(nodes: &[NodeView], wanted: u32, at_ms: u64) -> Sample {
        let totals = crate::gpu_totals(nodes);
        Sample {
            at_ms,
            gpus: totals.values().map(|t| t.gpus - t.unavailable).sum(),
            held: totals.values().map(|t| t.held).sum(),
            wanted,
        }
    }
}

/// The samples, oldest first, at most `keep` of them.
#[derive(Debug)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
    keep: usize,
}

impl Default for History {
    fn default() -> Self {
        History::new(SAMPLES)
    }
}

/// How often a driver should take a sample.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(60);
/// A day of samples at [`SAMPLE_EVERY`].
pub const SAMPLES: usize = 24 * 60;

impl History {
    /// Keep at most `keep` samples.
    pub fn new(keep: usize) -> History {
        History {
            samples: Mutex::new(VecDeque::new()),
            keep: keep.max(1),
        }
    }

    /// Add a sample, dropping the oldest beyond the bound.
    pub fn push(&self, s: Sample) {
        if let Ok(mut h) = self.samples.lock() {
            h.push_back(s);
            while h.len() > self.keep {
                h.pop_front();
            }
        }
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }
}
