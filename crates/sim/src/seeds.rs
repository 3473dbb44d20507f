//! The fill experiment over several seeds, read the way the field reads it: the mean and spread
//! of allocated % of capacity per policy, next to the FGD paper's published means for the same
//! pod list, and the ratio of each policy to `fgd` measured in the same runs.
//!
//! Published figures (the artifact's expected results, 10 seeds each, % of GPU capacity
//! allocated when arrived demand reaches 100% and 130% of capacity): Weng et al., "Beware of
//! Fragmentation: Scheduling GPU-Sharing Workloads with Fragmentation Gradient Descent",
//! USENIX ATC 2023, and its artifact hkust-adsl/kubernetes-scheduler-simulator (Apache-2.0),
//! `experiments/analysis/expected_results/analysis_allo_discrete.csv`.

use serde::Serialize;

use crate::metrics::RunResult;

/// One published point: a policy's mean allocation at an arrived demand.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PaperPoint {
    /// The paper's policy name.
    pub policy: &'static str,
    /// Arrived demand, % of capacity.
    pub arrived_pct: f64,
    /// Mean allocated % of capacity over the artifact's 10 seeds.
    pub allocated_pct: f64,
}

/// The paper's published means for a pod list (`default`, `gpuspec33`, `multigpu50`,
/// `gpushare100`, `cpu250`), if it has them.
pub fn published(list: &str) -> Vec<PaperPoint> {
    /// (list, BestFit@100, BestFit@130, FGD@100, FGD@130, Random@130)
    type Row = (&'static str, f64, f64, f64, f64, Option<f64>);
    const T: [Row; 5] = [
        ("default", 92.86, 93.08, 95.23, 95.39, Some(87.47)),
        ("gpushare100", 84.62, 85.01, 86.64, 86.90, Some(79.44)),
        ("gpuspec33", 80.39, 93.09, 87.84, 94.55, Some(86.46)),
        ("multigpu50", 95.62, 95.74, 97.09, 97.18, Some(90.28)),
        ("cpu250", 91.21, 91.45, 93.20, 93.41, None),
    ];
    let Some(&(_, b100, b130, f100, f130, r130)) = T.iter().find(|t| t.0 == list) else {
        return Vec::new();
    };
    let p = |policy, arrived_pct, allocated_pct| PaperPoint {
        policy,
        arrived_pct,
        allocated_pct,
    };
    let mut v = vec![
        p("BestFit", 100.0, b100),
        p("BestFit", 130.0, b130),
        p("FGD", 100.0, f100),
        p("FGD", 130.0, f130),
    ];
    if let Some(r) = r130 {
        v.push(p("Random", 130.0, r));
    }
    v
}

/// The pod list a fill workload was drawn from (`openb-default-fill1.3` → `default`).
pub fn list_of(workload: &str) -> &str {
    let s = workload.strip_prefix("openb-").unwrap_or(workload);
    s.rsplit_once("-fill").map_or(s, |(l, _)| l)
}

/// One policy over all seeds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySummary {
    /// Profile name.
    pub policy: String,
    /// Allocated % of capacity at the end, per seed (in the order of `seeds`).
    pub allocated_pct: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// Their sample standard deviation.
    pub sd: f64,
    /// Smallest and largest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Mean over seeds of the unallocated GPUs at the end that are whole idle devices.
    pub unallocated_whole_gpus: f64,
    /// Mean over seeds of the unallocated GPUs at the end left inside partly used devices.
    pub unallocated_partial_gpus: f64,
    /// Median wall time of one replay, ms.
    pub wall_ms_median: f64,
    /// The allocation curve averaged over seeds: (arrived %, allocated %).
    pub curve: Vec<(f64, f64)>,
    /// Mean over seeds of this policy's allocation ÷ `fgd`'s in the same seed, when `fgd` ran.
    pub ratio_to_fgd: Option<f64>,
}

/// Several seeds of the fill experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedStudy {
    /// The pod list.
    pub list: String,
    /// The seeds, in run order.
    pub seeds: Vec<u64>,
    /// One row per policy, in the order they ran.
    pub policies: Vec<PolicySummary>,
    /// The paper's published means for the list (empty when unknown).
    pub published: Vec<PaperPoint>,
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Summarise `runs[seed][policy]` (every seed ran the same policies in the same order).
pub fn summarize(list: &str, seeds: &[u64], runs: &[Vec<RunResult>]) -> SeedStudy {
    let policies = runs.first().map_or(0, Vec::len);
    let fgd = runs
        .first()
        .and_then(|r| r.iter().position(|x| x.policy == "fgd"));
    let alloc = |r: &RunResult| r.fill.as_ref().map_or(0.0, |f| f.allocated_pct_of_capacity);
    let mut out = Vec::new();
    for p in 0..policies {
        let vals: Vec<f64> = runs.iter().map(|s| alloc(&s[p])).collect();
        let m = mean(&vals);
        let sd = if vals.len() > 1 {
            (vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (vals.len() - 1) as f64).sqrt()
        } else {
            0.0
        };
        let fills: Vec<&crate::metrics::FillResult> =
            runs.iter().filter_map(|s| s[p].fill.as_ref()).collect();
        let mut walls: Vec<f64> = runs.iter().map(|s| s[p].wall_ms).collect();
        walls.sort_by(f64::total_cmp);
        let points = fills.iter().map(|f| f.curve.len()).min().unwrap_or(0);
        let curve = (0..points)
            .map(|k| {
                let x = fills[0].curve[k].0;
                (
                    x,
                    mean(&fills.iter().map(|f| f.curve[k].1).collect::<Vec<_>>()),
                )
            })
            .collect();
        let ratio_to_fgd = fgd.map(|f| {
            mean(
                &runs
                    .iter()
                    .map(|s| alloc(&s[p]) / alloc(&s[f]).max(1e-9))
                    .collect::<Vec<_>>(),
            )
        });
        out.push(PolicySummary {
            policy: runs[0][p].policy.clone(),
            mean: m,
            sd,
            min: vals.iter().copied().fold(f64::INFINITY, f64::min),
            max: vals.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            allocated_pct: vals,
            unallocated_whole_gpus: mean(
                &fills
                    .iter()
                    .map(|f| f.unallocated_whole_gpus)
                    .collect::<Vec<_>>(),
            ),
            unallocated_partial_gpus: mean(
                &fills
                    .iter()
                    .map(|f| f.unallocated_in_shared_gpus)
                    .collect::<Vec<_>>(),
            ),
            wall_ms_median: walls.get(walls.len() / 2).copied().unwrap_or(0.0),
            curve,
            ratio_to_fgd,
        });
    }
    SeedStudy {
        list: list.to_string(),
        seeds: seeds.to_vec(),
        policies: out,
        published: published(list),
    }
}

/// Parse `42..51` (inclusive) or `42,43,50`.
///
/// # Errors
/// Anything else, or more than 1,000 seeds.
pub fn parse_seeds(s: &str) -> std::result::Result<Vec<u64>, String> {
    let bad = || format!("--seeds: {s:?} is not a range like 42..51 or a list like 42,43");
    let v: Vec<u64> = match s.split_once("..") {
        Some((a, b)) => {
            let a: u64 = a.trim().parse().map_err(|_| bad())?;
            let b: u64 = b
                .trim()
                .trim_start_matches('=')
                .parse()
                .map_err(|_| bad())?;
            if b < a {
                return Err(format!("--seeds: the range {s:?} is empty"));
            }
            if b - a >= 1000 {
                return Err(format!("--seeds: {s:?} is more than 1,000 seeds"));
            }
            (a..=b).collect()
        }
        None => s
            .split(',')
            .map(|x| x.trim().parse().map_err(|_| bad()))
            .collect::<std::result::Result<_, _>>()?,
    };
    if v.is_empty() || v.len() > 1000 {
        return Err(bad());
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_as_ranges_and_lists() {
        assert_eq!(parse_seeds("42..45"), Ok(vec![42, 43, 44, 45]));
        assert_eq!(parse_seeds("1,5,3"), Ok(vec![1, 5, 3]));
        assert!(parse_seeds("5..2").unwrap_err().contains("empty"));
        assert!(parse_seeds("a..b").unwrap_err().contains("not a range"));
        assert!(parse_seeds("0..5000").unwrap_err().contains("1,000"));
    }

    #[test]
    fn lists_and_published_points() {
        assert_eq!(list_of("openb-gpushare100-fill1.3"), "gpushare100");
        let p = published("default");
        assert!(p
            .iter()
            .any(|x| x.policy == "FGD" && x.arrived_pct == 130.0 && x.allocated_pct == 95.39));
        assert!(published("nope").is_empty());
    }
}
