//! The target workload: what the cluster expects to be asked for next, learned online.
//!
//! Fragmentation only means something against a workload: 300 milli left on a GPU is waste if
//! every task asks for half a GPU, and room if many ask for a quarter. The FGD paper measures it
//! against the "target workload", the distribution of task shapes. Its artifact reads that
//! distribution off the whole trace before the run; a real scheduler cannot, so the engine
//! learns it from what is submitted:
//!
//! - every submitted task adds its shape `(cpu, milli per GPU, GPUs, allowed models)` to a
//!   histogram whose weights halve every [`HALF_LIFE_MS`] of the driver's clock, so the estimate
//!   follows a changing workload;
//! - the shapes are sorted by weight and two distributions are derived ([`Cut`]): the most
//!   popular shapes covering [`COVERAGE`] of the weight, renormalised (the FGD artifact's cut,
//!   for the `fgd` profile), and every shape up to [`MAX_SHAPES`] (gantry's: the cut drops rare
//!   but large shapes, such as 8-GPU tasks that are 3% of the tasks and 20% of the GPU-hours of
//!   Philly, and with them any reason to keep whole nodes free);
//! - the derived distribution is versioned ([`Workload::epoch`]); it is re-derived at the start of
//!   a cycle when enough new weight arrived, and the epoch only moves when the distribution
//!   changed by more than [`CHANGE`] (L1 distance), because every scorer's cache is keyed by it.
//!
//! Probabilities are stored in parts per million, so fragmentation sums are exact integers and a
//! change of zero is exactly zero.

use crate::fast::HashMap;

use crate::snapshot::{FlavorId, Time};

/// Half-life of a shape's weight in the histogram, in ms of the driver's clock (one week).
pub const HALF_LIFE_MS: u64 = 7 * 24 * 3600 * 1000;
/// Share of the weight the kept shapes cover.
pub const COVERAGE: f64 = 0.95;
/// Most shapes gantry's distribution keeps (the most popular ones): the cost of a
/// fragmentation measure grows with it.
pub const MAX_SHAPES: usize = 512;
/// Smallest L1 change of the distribution that moves the epoch.
pub const CHANGE: f64 = 0.02;
/// Re-derive when the weight added since the last derivation is this share of the total.
const REDERIVE_AFTER: f64 = 0.05;

/// One task shape as fragmentation sees it. `milli` is per GPU: 1000 for whole GPUs, 1..999 for
/// a shared fraction, 0 with `count == 0` for CPU-only tasks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TaskShape {
    pub cpu: u32,
    pub milli: u16,
    pub count: u32,
    /// Allowed models, sorted; empty means any.
    pub models: Box<[FlavorId]>,
}

/// A kept shape with its probability in parts per million.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub shape: TaskShape,
    pub ppm: i64,
}

/// Which distribution a scorer measures against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// The popular shapes covering [`COVERAGE`] of the weight (the FGD artifact).
    Popular = 0,
    /// Every shape, up to [`MAX_SHAPES`].
    All = 1,
}

/// The learned workload. See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// Weights are stored scaled by `2^((t - base) / half_life)`, so old entries decay without
    /// being touched; `base` moves (and everything is rescaled) before the scale overflows.
    weights: HashMap<TaskShape, f64>,
    base: Time,
    total: f64,
    added: f64,
    /// The derived distributions, most popular first, indexed by [`Cut`].
    pub targets: [Vec<Target>; 2],
    /// Bumped whenever `targets` changes.
    pub epoch: u32,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            weights: HashMap::default(),
            base: 0,
            total: 0.0,
            added: 0.0,
            targets: [Vec::new(), Vec::new()],
            epoch: 0,
        }
    }
}

fn scale(t: Time, base: Time) -> f64 {
    let dt = t.saturating_sub(base) as f64;
    (dt / HALF_LIFE_MS as f64).exp2()
}

impl Workload {
    /// Count `tasks` tasks of `shape` submitted at `now`.
    pub fn observe(&mut self, shape: TaskShape, tasks: u32, now: Time) {
        if tasks == 0 {
            return;
        }
        if self.total == 0.0 {
            self.base = now;
        }
        let mut w = scale(now, self.base) * tasks as f64;
        if w > 1e30 {
            // Rebase: divide everything by the current scale.
            let s = scale(now, self.base);
            for v in self.weights.values_mut() {
                *v /= s;
            }
            self.total /= s;
            self.added /= s;
            self.base = now;
            w = tasks as f64;
        }
        *self.weights.entry(shape).or_insert(0.0) += w;
        self.total += w;
        self.added += w;
    }

    /// Re-derive the kept shapes when enough weight arrived; returns whether the epoch moved.
    pub fn refresh(&mut self) -> bool {
        if self.total <= 0.0 {
            return false;
        }
        if !self.targets[0].is_empty() && self.added < REDERIVE_AFTER * self.total {
            return false;
        }
        self.added = 0.0;
        let mut all: Vec<(&TaskShape, f64)> = self.weights.iter().map(|(k, &w)| (k, w)).collect();
        // Most popular first; equal weights in descending key order (as the artifact sorts).
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| b.0.cmp(a.0)));
        let derive = |n: usize| -> Vec<Target> {
            let kept: f64 = all[..n].iter().map(|(_, w)| w).sum();
            let mut v: Vec<Target> = all[..n]
                .iter()
                .map(|(k, w)| Target {
                    shape: (*k).clone(),
                    ppm: (w / kept * 1e6).round() as i64,
                })
                .collect();
            v.retain(|t| t.ppm > 0);
            v
        };
        let mut kept = 0.0;
        let mut popular = 0;
        for (_, w) in &all {
            kept += w;
            popular += 1;
            if kept >= COVERAGE * self.total * (1.0 - 1e-12) {
                break;
            }
        }
        let fresh = [derive(popular), derive(all.len().min(MAX_SHAPES))];
        let change =
            distance(&self.targets[0], &fresh[0]).max(distance(&self.targets[1], &fresh[1]));
        if self.targets[0].is_empty() || change > CHANGE {
            self.targets = fresh;
            self.epoch = self.epoch.wrapping_add(1);
            true
        } else {
            false
        }
    }
}

/// L1 distance between two distributions, as a share (0..2).
fn distance(a: &[Target], b: &[Target]) -> f64 {
    let mut m: HashMap<&TaskShape, i64> =
        HashMap::with_capacity_and_hasher(a.len() + b.len(), Default::default());
    for t in a {
        *m.entry(&t.shape).or_default() += t.ppm;
    }
    for t in b {
        *m.entry(&t.shape).or_default() -= t.ppm;
    }
    m.values().map(|v| v.unsigned_abs()).sum::<u64>() as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(cpu: u32, milli: u16, count: u32) -> TaskShape {
        TaskShape {
            cpu,
            milli,
            count,
            models: Box::new([]),
        }
    }

    #[test]
    fn the_most_popular_shapes_covering_95_percent_are_kept_and_renormalised() {
        let mut w = Workload::default();
        // 60 + 30 + 6 + 4 = 100 tasks: the first three cover 96 >= 95, the last is cut.
        w.observe(shape(1000, 1000, 1), 60, 0);
        w.observe(shape(2000, 500, 1), 30, 0);
        w.observe(shape(4000, 0, 0), 6, 0);
        w.observe(shape(8000, 1000, 8), 4, 0);
        assert!(w.refresh());
        let got = |cut: Cut| -> Vec<(u32, i64)> {
            w.targets[cut as usize]
                .iter()
                .map(|t| (t.shape.cpu, t.ppm))
                .collect()
        };
        // 60/96, 30/96, 6/96 in parts per million.
        assert_eq!(
            got(Cut::Popular),
            vec![(1000, 625_000), (2000, 312_500), (4000, 62_500)]
        );
        // Every shape: the rare 8-GPU one too.
        assert_eq!(
            got(Cut::All),
            vec![
                (1000, 600_000),
                (2000, 300_000),
                (4000, 60_000),
                (8000, 40_000)
            ]
        );
    }

    #[test]
    fn weights_halve_every_half_life() {
        let mut w = Workload::default();
        w.observe(shape(1, 1000, 1), 100, 0);
        // One half-life later 100 old tasks weigh as much as 50 new ones.
        w.observe(shape(2, 1000, 1), 50, HALF_LIFE_MS);
        assert!(w.refresh());
        assert_eq!(w.targets[0][0].ppm, 500_000);
        assert_eq!(w.targets[0][1].ppm, 500_000);
    }

    #[test]
    fn the_epoch_moves_only_when_the_distribution_changes() {
        let mut w = Workload::default();
        w.observe(shape(1, 1000, 1), 1000, 0);
        assert!(w.refresh());
        let e = w.epoch;
        // Same shape again: re-derived, identical, epoch unchanged.
        w.observe(shape(1, 1000, 1), 1000, 0);
        assert!(!w.refresh());
        assert_eq!(w.epoch, e);
        // A new popular shape moves it.
        w.observe(shape(2, 500, 1), 1000, 0);
        assert!(w.refresh());
        assert_ne!(w.epoch, e);
    }
}
