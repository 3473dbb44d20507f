//! Several profiles on one workload, and what-if queue comparisons.

use gantry_engine::Profile;
use serde::Serialize;

use crate::driver::{replay, Options, Progress};
use crate::error::{Result, SimError};
use crate::metrics::RunResult;
use crate::workload::Workload;

/// Parse `fifo,best-fit,fgd,gantry` into profiles.
///
/// # Errors
/// An unknown name or an empty list.
pub fn profiles(list: &str) -> Result<Vec<Profile>> {
    let v: Vec<Profile> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|n| {
            Profile::named(n).ok_or_else(|| {
                SimError::Config(format!(
                    "unknown policy {n:?}: use fifo, best-fit, fgd or gantry"
                ))
            })
        })
        .collect::<Result<_>>()?;
    if v.is_empty() {
        return Err(SimError::Config("no policy named".into()));
    }
    Ok(v)
}

/// Run every profile on the same workload, in order.
///
/// # Errors
/// See [`replay`].
pub fn run_all(
    w: &Workload,
    profiles: &[Profile],
    opts: &Options,
    progress: &mut dyn FnMut(&str, Progress),
) -> Result<Vec<RunResult>> {
    profiles
        .iter()
        .map(|p| replay(w, p, opts, &mut |pr| progress(&p.name, pr)))
        .collect()
}

/// A metric of one run against the same metric of the first run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    /// Metric name.
    pub metric: String,
    /// Policy.
    pub policy: String,
    /// Its value ÷ the first policy's (`None` when the first is 0).
    pub ratio: Option<f64>,
}

/// Reads one metric from a run.
pub type Metric = fn(&RunResult) -> f64;

/// The metrics compared, with how to read them from a run.
pub fn compared_metrics() -> Vec<(&'static str, Metric)> {
    vec![
        ("mean JCT", |r| r.jct.mean),
        ("p95 JCT", |r| r.jct.p95),
        ("mean wait", |r| r.wait.mean),
        ("p95 wait", |r| r.wait.p95),
        ("utilization", |r| r.utilization),
        ("unallocated GPUs", |r| r.unallocated_gpus_at_saturation),
    ]
}

/// Ratios of every run against the first.
pub fn ratios(runs: &[RunResult]) -> Vec<Ratio> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, f) in compared_metrics() {
        let base = f(first);
        for r in runs {
            out.push(Ratio {
                metric: name.to_string(),
                policy: r.policy.clone(),
                ratio: (base != 0.0).then(|| f(r) / base),
            });
        }
    }
    out
}

/// One queue under the current and the proposed quotas.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WhatIfQueue {
    /// Leaf queue.
    pub queue: String,
    /// Entitlement now and proposed.
    pub entitlement: (f64, f64),
    /// Mean wait (s) now and proposed.
    pub mean_wait: (f64, f64),
    /// p95 wait (s) now and proposed.
    pub p95_wait: (f64, f64),
    /// Mean share now and proposed.
    pub mean_share: (f64, f64),
}

/// Pair the queues of a run under current quotas with a run under proposed ones.
pub fn what_if(current: &RunResult, proposed: &RunResult) -> Vec<WhatIfQueue> {
    current
        .queues
        .iter()
        .map(|c| {
            let p = proposed.queues.iter().find(|q| q.name == c.name);
            let g = |f: fn(&crate::metrics::QueueResult) -> f64| (f(c), p.map_or(f64::NAN, f));
            WhatIfQueue {
                queue: c.name.clone(),
                entitlement: g(|q| q.entitlement),
                mean_wait: g(|q| q.wait.mean),
                p95_wait: g(|q| q.wait.p95),
                mean_share: g(|q| q.mean_share),
            }
        })
        .collect()
}
