//! Scores: how good a node is for one task, for each packing policy.
//!
//! Every policy scores a node *state* (a [`Sig`]), never a node, so a score is computed once per
//! class of identical nodes (see `classes`). A [`Choice`] holds the score as a key compared
//! lexicographically (higher is better) and, for a shared GPU, which devices of the node the
//! task may take (by their free thousandths). Equal keys go to the lowest node index.
//!
//! Two fragmentation measures of a node against the learned workload ([`frag`]), both exact
//! integers (parts per million × thousandths of a GPU), `L` being the node's free GPU:
//! - [`Measure::OnePod`], the FGD paper's: for each shape of the workload, the free GPU that one
//!   more pod of the shape could not use: all of `L` for a CPU-only shape, a shape that may not
//!   use the node's models, or one that does not fit (too few devices with enough free, or too
//!   little cpu); otherwise `L` minus the free of the devices it could take.
//! - [`Measure::Stream`], gantry's: the free GPU that pods of the shape, placed one after
//!   another, could not use: the devices they fit in, but only as far as the node's cpu
//!   carries them (`⌊cpu/cpu_m⌋` pods). It sees the GPUs that cpu will strand long before the
//!   last pod fails, which the one-pod measure only notices when the very next pod fails.
//!
//! Policies:
//! - **Fragmentation** (the `gantry` profile): first the FGD score of the one-pod change (its
//!   integer buckets of about 40 thousandths keep noise in the learned workload from deciding),
//!   then the exact change of the stream measure, then the node that keeps the least GPU free.
//!   Shared fractions take the device value with the best key.
//! - **Fgd**: the FGD artifact: `trunc(100·σ(Δ/1000))` of the one-pod change; shared fractions
//!   on the first device reaching the best score, whole GPUs on the lowest free devices.
//! - **BestFit**: the paper's BestFit baseline: `trunc(100·(1 − raw))` with
//!   `raw = ½·cpu_left/max_cpu + ½·gpu_left/max_gpu` after placing; shared fractions on the
//!   fitting device with the least left.
//! - **FirstFit**: no score (the lowest node that fits); shared fractions on the least free
//!   device that fits.

use crate::classes::{PartKey, Sig};
use crate::profile::Packing;
use crate::workload::Target;

/// What one task asks of a node, as the scorers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// `k` whole GPUs; `nvlink`: inside one NVLink domain partition.
    Whole { k: u32, nvlink: bool },
    /// A fraction of one GPU.
    Shared { milli: u16 },
    /// No GPU.
    Cpu,
}

/// The best way one node state takes one task on one model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Choice {
    /// Compared lexicographically; higher is better.
    pub key: [i64; 3],
    /// Shared GPUs: the free thousandths a device may have to be taken, best first.
    pub values: [u16; 8],
    pub nvalues: u8,
}

/// Why a node state cannot take a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoFit {
    /// Not enough GPU of the model.
    Gpu,
    /// GPUs would fit, cpu or memory does not.
    CpuMem,
}

/// The workload's shapes as they apply to one layout: a constant share of `L` (CPU-only shapes
/// and shapes that cannot use any of its models) and, per GPU shape, the partitions it may use.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayoutTargets {
    pub epoch: u32,
    pub constant: i64,
    pub gpu: Vec<GpuTarget>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct GpuTarget {
    pub ppm: i64,
    pub cpu: u32,
    pub milli: u16,
    pub count: u32,
    /// Partitions (bit per partition of the layout) of models the shape may use.
    pub parts: u64,
}

impl LayoutTargets {
    pub fn build(epoch: u32, parts: &[PartKey], targets: &[Target]) -> LayoutTargets {
        let mut lt = LayoutTargets {
            epoch,
            ..LayoutTargets::default()
        };
        for t in targets {
            if t.shape.count == 0 {
                lt.constant += t.ppm;
                continue;
            }
            let mut mask = 0u64;
            for (i, p) in parts.iter().enumerate().take(64) {
                if t.shape.models.is_empty() || t.shape.models.binary_search(&p.model).is_ok() {
                    mask |= 1 << i;
                }
            }
            if mask == 0 {
                lt.constant += t.ppm;
            } else {
                lt.gpu.push(GpuTarget {
                    ppm: t.ppm,
                    cpu: t.shape.cpu,
                    milli: t.shape.milli,
                    count: t.shape.count,
                    parts: mask,
                });
            }
        }
        lt
    }
}

/// Which fragmentation measure (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Measure {
    OnePod,
    Stream,
}

/// Expected fragmentation of a node state, in parts per million × thousandths of a GPU.
pub(crate) fn frag(
    parts: &[PartKey],
    cpu: u32,
    free: &[u16],
    lt: &LayoutTargets,
    measure: Measure,
) -> i64 {
    let total: i64 = free.iter().map(|&v| v as i64).sum();
    if total == 0 {
        return 0;
    }
    let mut f = lt.constant * total;
    for t in &lt.gpu {
        if cpu < t.cpu {
            f += t.ppm * total;
            continue;
        }
        // Devices the shape may use with enough free: how many, and their free.
        let (mut count, mut usable) = (0u32, 0i64);
        let mut at = 0usize;
        for (i, p) in parts.iter().enumerate() {
            let range = &free[at..at + p.size as usize];
            at += p.size as usize;
            if i < 64 && t.parts & (1 << i) == 0 {
                continue;
            }
            for &v in range {
                if v < t.milli || v == 0 {
                    break; // sorted descending
                }
                count += 1;
                usable += v as i64;
            }
        }
        let unusable = if count < t.count {
            total
        } else {
            match measure {
                Measure::OnePod => total - usable,
                Measure::Stream => {
                    let by_cpu = cpu.checked_div(t.cpu).map_or(i64::MAX, i64::from);
                    total - usable.min(by_cpu.saturating_mul(t.count as i64 * t.milli as i64))
                }
            }
        };
        f += t.ppm * unusable;
    }
    f
}

/// Cluster-wide constants some policies normalise by.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Spec {
    /// Largest node cpu (millicores).
    pub max_cpu: u32,
    /// Largest node GPU count × 1000.
    pub max_gpu: u32,
}

/// Evaluate a node state for a task on `model`'s partitions. `frag_before` gives the state's
/// own fragmentation (cached per class by the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) fn evaluate(
    packing: Packing,
    parts: &[PartKey],
    model: Option<crate::snapshot::FlavorId>,
    sig: &Sig,
    ask: Ask,
    cpu: u32,
    mem: u64,
    lt: Option<&LayoutTargets>,
    frag_before: &mut dyn FnMut(Measure) -> i64,
    spec: Spec,
) -> Result<Choice, NoFit> {
    let in_model = |i: usize| model.is_some_and(|m| parts[i].model == m);
    let mut ranges = Vec::with_capacity(parts.len());
    let mut at = 0usize;
    for p in parts {
        ranges.push(at..at + p.size as usize);
        at += p.size as usize;
    }
    // GPU feasibility first (cheap), then cpu and memory.
    match ask {
        Ask::Cpu => {}
        Ask::Whole { k, nvlink } => {
            let mut total = 0u32;
            let mut in_domain = false;
            for (i, r) in ranges.iter().enumerate() {
                if !in_model(i) {
                    continue;
                }
                let c = sig.free[r.clone()].iter().filter(|&&v| v == 1000).count() as u32;
                total += c;
                in_domain |= parts[i].domain && c >= k;
            }
            if total < k || (nvlink && k > 1 && !in_domain) {
                return Err(NoFit::Gpu);
            }
        }
        Ask::Shared { milli } => {
            let any = ranges
                .iter()
                .enumerate()
                .any(|(i, r)| in_model(i) && sig.free[r.clone()].iter().any(|&v| v >= milli));
            if !any {
                return Err(NoFit::Gpu);
            }
        }
    }
    if sig.cpu < cpu || sig.mem < mem {
        return Err(NoFit::CpuMem);
    }
    let total: i64 = sig.free.iter().map(|&v| v as i64).sum();
    let cpu_left = (sig.cpu - cpu) as i64;
    let taken = match ask {
        Ask::Whole { k, .. } => k as i64 * 1000,
        Ask::Shared { milli } => milli as i64,
        Ask::Cpu => 0,
    };
    let gpu_left = total - taken;
    let mut choice = Choice {
        key: [0; 3],
        values: [0; 8],
        nvalues: 0,
    };
    // The distinct free values of the model's devices a shared task fits in, least free first.
    let shared_values = |milli: u16| -> Vec<u16> {
        let mut v: Vec<u16> = ranges
            .iter()
            .enumerate()
            .filter(|(i, _)| in_model(*i))
            .flat_map(|(_, r)| sig.free[r.clone()].iter().copied())
            .filter(|&v| v >= milli)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    // The node's free GPU after placing (a shared task on a device with `value` free).
    let after = |value: Option<u16>| -> Vec<u16> {
        let mut free = sig.free.to_vec();
        match ask {
            Ask::Cpu => {}
            Ask::Whole { mut k, .. } => {
                for (i, r) in ranges.iter().enumerate() {
                    if !in_model(i) || k == 0 {
                        continue;
                    }
                    for v in free[r.clone()].iter_mut().filter(|v| **v == 1000) {
                        if k > 0 {
                            *v = 0;
                            k -= 1;
                        }
                    }
                    free[r.clone()].sort_unstable_by(|a, b| b.cmp(a));
                }
            }
            Ask::Shared { milli } => {
                let value = value.unwrap_or(1000);
                let part = ranges
                    .iter()
                    .enumerate()
                    .find(|(i, r)| in_model(*i) && free[(*r).clone()].contains(&value));
                if let Some((_, r)) = part {
                    if let Some(v) = free[r.clone()].iter_mut().find(|v| **v == value) {
                        *v -= milli;
                    }
                    free[r.clone()].sort_unstable_by(|a, b| b.cmp(a));
                }
            }
        }
        free
    };
    match (packing, ask) {
        (Packing::FirstFit, Ask::Shared { milli }) => choice.push(shared_values(milli)[0]),
        (Packing::FirstFit, _) => {}
        (Packing::BestFit, _) => {
            let spec_cpu = spec.max_cpu.max(1) as f64;
            let spec_gpu = spec.max_gpu.max(1) as f64;
            let raw = 0.5 * cpu_left as f64 / spec_cpu + 0.5 * gpu_left as f64 / spec_gpu;
            choice.key[0] = (100.0 * (1.0 - raw)) as i64;
            if let Ask::Shared { milli } = ask {
                choice.push(shared_values(milli)[0]);
            }
        }
        (Packing::Fgd | Packing::Fragmentation, _) => {
            // Without a learned workload yet, every node scores alike: the tie-breaks decide.
            let Some(lt) = lt else {
                return Ok(choice);
            };
            let one = frag_before(Measure::OnePod);
            let stream = if packing == Packing::Fragmentation {
                frag_before(Measure::Stream)
            } else {
                0
            };
            let key_of = |value: Option<u16>| -> [i64; 3] {
                let free = after(value);
                let one_after = frag(parts, sig.cpu - cpu, &free, lt, Measure::OnePod);
                let score = fgd_score(one - one_after);
                if packing == Packing::Fgd {
                    return [score, 0, 0];
                }
                let stream_after = frag(parts, sig.cpu - cpu, &free, lt, Measure::Stream);
                [score, stream - stream_after, -gpu_left]
            };
            match ask {
                Ask::Shared { milli } => {
                    let scored: Vec<(u16, [i64; 3])> = shared_values(milli)
                        .into_iter()
                        .map(|v| (v, key_of(Some(v))))
                        .collect();
                    let best = scored.iter().map(|s| s.1).max().expect("a fitting value");
                    choice.key = best;
                    // FGD takes the first device (in index order) reaching the best score; gantry
                    // the least free value with the best key (the first of `scored`).
                    for (v, k) in scored {
                        if k == best && (packing == Packing::Fgd || choice.nvalues == 0) {
                            choice.push(v);
                        }
                    }
                }
                _ => choice.key = key_of(None),
            }
        }
    }
    Ok(choice)
}

impl Choice {
    fn push(&mut self, v: u16) {
        if (self.nvalues as usize) < self.values.len() {
            self.values[self.nvalues as usize] = v;
            self.nvalues += 1;
        }
    }

    /// Whether a device with `free` thousandths may be taken.
    pub fn accepts(&self, free: u16) -> bool {
        self.values[..self.nvalues as usize].contains(&free)
    }
}

/// The artifact's score: `trunc(100 / (1 + e^(−Δ/1000)))` with Δ in thousandths of a GPU
/// (here in parts per million × thousandths).
pub(crate) fn fgd_score(delta_ppm: i64) -> i64 {
    let x = delta_ppm as f64 / 1e6 / 1000.0;
    (100.0 / (1.0 + (-x).exp())) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classes::Free;
    use crate::snapshot::FlavorId;
    use crate::workload::{Target, TaskShape};

    const G: FlavorId = FlavorId(0);

    fn target(cpu: u32, milli: u16, count: u32, ppm: i64) -> Target {
        Target {
            shape: TaskShape {
                cpu,
                milli,
                count,
                models: Box::new([]),
            },
            ppm,
        }
    }

    /// gantry's choice for `ask` (with `cpu` asked) on a one-model node state.
    fn gantry_choice(
        parts: &[PartKey],
        lt: &LayoutTargets,
        sig: &Sig,
        model: Option<FlavorId>,
        ask: Ask,
        cpu: u32,
    ) -> Choice {
        let mut before = |m| frag(parts, sig.cpu, &sig.free, lt, m);
        evaluate(
            Packing::Fragmentation,
            parts,
            model,
            sig,
            ask,
            cpu,
            0,
            Some(lt),
            &mut before,
            Spec::default(),
        )
        .expect("fits")
    }

    fn one_part(size: u8) -> Vec<PartKey> {
        vec![PartKey {
            model: G,
            domain: false,
            size,
        }]
    }

    #[test]
    fn fragmentation_counts_what_each_shape_cannot_use() {
        // Workload: half the tasks want 1 whole GPU with 4 cpu, a quarter want 0.5 GPU with 2 cpu,
        // a quarter are CPU-only.
        let targets = [
            target(4000, 1000, 1, 500_000),
            target(2000, 500, 1, 250_000),
            target(1000, 0, 0, 250_000),
        ];
        let parts = one_part(4);
        let lt = LayoutTargets::build(1, &parts, &targets);
        // Free [1000, 1000, 300, 0] = 2300 with 16 cpu:
        // - whole: can use the two free GPUs (2000), fragment 300;
        // - half: can use 1000+1000 (not the 300), fragment 300;
        // - CPU-only: all 2300.
        // F = 0.5·300 + 0.25·300 + 0.25·2300 = 150 + 75 + 575 = 800 thousandths.
        assert_eq!(
            frag(&parts, 16_000, &[1000, 1000, 300, 0], &lt, Measure::OnePod),
            800 * 1_000_000
        );
        // With 3 cpu left the whole-GPU shape lacks cpu and counts all 2300:
        // 0.5·2300 + 0.25·300 + 0.25·2300 = 1150 + 75 + 575 = 1800.
        assert_eq!(
            frag(&parts, 3_000, &[1000, 1000, 300, 0], &lt, Measure::OnePod),
            1800 * 1_000_000
        );
        // No free GPU: nothing to fragment.
        assert_eq!(frag(&parts, 16_000, &[0, 0, 0, 0], &lt, Measure::OnePod), 0);
    }

    #[test]
    fn the_artifact_golden_vector_of_a_single_cpu_starved_type() {
        // FGD.md section 8: a single type (6000m, 465, 1, p=0.0933) on free [200,1000,1000,500]
        // with 1000m cpu left is case d (lacks cpu): F = 0.0933 × 2700 = 251.91.
        let targets = [target(6000, 465, 1, 93_300)];
        let parts = one_part(4);
        let lt = LayoutTargets::build(1, &parts, &targets);
        let f = frag(&parts, 1000, &[1000, 1000, 500, 200], &lt, Measure::OnePod);
        assert_eq!(f, 93_300 * 2700);
        assert!((f as f64 / 1e6 - 251.91).abs() < 1e-9);
    }

    #[test]
    fn the_stream_measure_sees_gpus_that_cpu_will_strand() {
        // Workload: 1-GPU pods with 8 cpu each. A node with 8 free GPUs and 24 cpu left:
        // - one-pod: a pod fits (8 devices, 24 >= 8 cpu): fragment 8000 - 8000 = 0;
        // - stream: cpu carries only 24 / 8 = 3 pods, so 3000 of the 8000 are usable:
        //   fragment 5000.
        let targets = [target(8000, 1000, 1, 1_000_000)];
        let parts = one_part(8);
        let lt = LayoutTargets::build(1, &parts, &targets);
        let free = [1000u16; 8];
        assert_eq!(frag(&parts, 24_000, &free, &lt, Measure::OnePod), 0);
        assert_eq!(
            frag(&parts, 24_000, &free, &lt, Measure::Stream),
            5000 * 1_000_000
        );
        // So a CPU-only task of 16 cpu on this node costs 2 more stranded GPUs under the stream
        // measure (24 -> 8 cpu: 1 pod, fragment 7000), and nothing under the one-pod measure
        // (8 cpu still fits one pod).
        let sig = Sig {
            layout: 0,
            cpu: 24_000,
            mem: 100,
            free: Free::new(&free),
        };
        let c = gantry_choice(&parts, &lt, &sig, None, Ask::Cpu, 16_000);
        assert_eq!(c.key, [50, -2000 * 1_000_000, -8000]);
    }

    #[test]
    fn fgd_scores_truncate_the_sigmoid() {
        assert_eq!(fgd_score(0), 50);
        // Δ = +40 thousandths moves one point: σ(0.04) = 0.50999..., so still 50; +41 gives 51.
        assert_eq!(fgd_score(40 * 1_000_000), 50);
        assert_eq!(fgd_score(41 * 1_000_000), 51);
        assert_eq!(fgd_score(-4700 * 1_000_000), 0);
        assert_eq!(fgd_score(4600 * 1_000_000), 99);
    }

    #[test]
    fn a_shared_task_goes_where_its_remainder_still_serves_the_workload() {
        // Workload: only half-GPU tasks (no cpu). Free [1000, 700].
        // A 0.2 task: before, both devices host a half (fragment 0); after on the 700
        // ([1000, 500]) or on the 1000 ([800, 700]) both still do: Δ = 0 under both measures,
        // FGD score 50. Equal keys: the least free value (700), which leaves exactly a half.
        let targets = [target(0, 500, 1, 1_000_000)];
        let parts = one_part(2);
        let lt = LayoutTargets::build(1, &parts, &targets);
        let sig = Sig {
            layout: 0,
            cpu: 8000,
            mem: 100,
            free: Free::new(&[1000, 700]),
        };
        let c = gantry_choice(&parts, &lt, &sig, Some(G), Ask::Shared { milli: 200 }, 0);
        assert!(c.accepts(700) && !c.accepts(1000));
        assert_eq!(c.key, [50, 0, -1500]);
        // A 0.3 task: on the 700 it leaves 400, which no half can use (one-pod fragment 400:
        // score trunc(100·σ(-0.4)) = 40); on the 1000 it leaves 700 and 700, both usable
        // (score 50). So it goes on the free GPU.
        let c = gantry_choice(&parts, &lt, &sig, Some(G), Ask::Shared { milli: 300 }, 0);
        assert!(c.accepts(1000) && !c.accepts(700));
        assert_eq!(c.key[0], 50);
        assert_eq!(fgd_score(-400 * 1_000_000), 40);
    }
}
