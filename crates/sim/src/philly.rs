//! The Philly-derived job table (`timestamp,duration,num_gpus,gpu_time,cluster`).
//!
//! Mapping:
//! - `timestamp` (`YYYY-MM-DD HH:MM:SS`) → arrival, relative to the earliest row;
//! - `duration` (seconds) → runtime, and the expected runtime the `gantry` profile's backfill uses;
//! - `num_gpus` ≤ 8 → one task with that many GPUs inside one NVLink domain; more than 8 → a gang
//!   of 8-GPU tasks (plus one task with the remainder, e.g. 12 = 8 + 4) that starts whole;
//! - `cluster` (the virtual cluster, a team) → a leaf queue `vc-<id>`;
//! - every job is of kind `training` (priority class `training`, preemptible).
//!
//! The default cluster ([`default_cluster`]): 64 nodes × 8 GPUs of model `gpu` (the table does not
//! say which), one NVLink domain per node, 8 nodes per rack. The default queues
//! ([`default_queues`]): one leaf per virtual cluster in one cohort `philly`, with a nominal quota
//! proportional to the VC's share of total GPU-time, in thousandths of a GPU, summing exactly to
//! the cluster's GPUs (largest remainder); borrowing is unlimited inside the cohort. On another
//! cluster ([`queues_for_cluster`]) the same split is made for each GPU model.

use std::collections::BTreeMap;
use std::path::Path;

use gantry_model::{
    default_priority_classes, Cluster, ClusterSpec, Demand, GpuDemand, Job, JobKind, NodePool,
    Placement, QueueDef, QueueTree, Quota, Spread, TaskGroup,
};

use crate::csv::Csv;
use crate::error::{Result, SimError};
use crate::workload::{TraceJob, Workload};

/// GPU model name of the default cluster.
pub const MODEL: &str = "gpu";

/// One row.
#[derive(Debug, Clone, PartialEq)]
pub struct PhillyJob {
    /// Submit time, seconds since the Unix epoch.
    pub submit_s: i64,
    /// Runtime, ms.
    pub duration_ms: u64,
    /// GPUs.
    pub gpus: u32,
    /// Virtual cluster id.
    pub vc: String,
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parse `YYYY-MM-DD HH:MM:SS` into Unix seconds.
fn parse_timestamp(s: &str) -> Option<i64> {
    let (date, time) = s.split_once(' ')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, se) = (t.next()??, t.next()??, t.next()??);
    if d.next().is_some() || t.next().is_some() {
        return None;
    }
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    Some(days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + se)
}

/// Parse the table.
///
/// # Errors
/// Malformed rows, named by file, line, column and reason.
pub fn parse(file: &str, text: &str) -> Result<Vec<PhillyJob>> {
    let csv = Csv::new(
        file,
        text,
        &["timestamp", "duration", "num_gpus", "cluster"],
    )?;
    let c = |n: &str| csv.col(n).unwrap_or_default();
    let (ts, dur, gpus, vc) = (c("timestamp"), c("duration"), c("num_gpus"), c("cluster"));
    let mut out = Vec::new();
    for row in csv.rows() {
        let row = row?;
        let t = row.raw(ts);
        let submit_s = parse_timestamp(t)
            .ok_or_else(|| row.err(ts, format!("{t:?} is not a time like 2017-10-09 07:01:55")))?;
        let d = row.f64(dur)?;
        let g = row.u64(gpus)?;
        if g == 0 || g > 4096 {
            return Err(row.err(gpus, format!("{g} GPUs; expected 1 to 4096")));
        }
        let v = row.raw(vc);
        if v.is_empty() {
            return Err(row.err(vc, "empty virtual cluster"));
        }
        out.push(PhillyJob {
            submit_s,
            duration_ms: (d * 1000.0).round() as u64,
            gpus: g as u32,
            vc: v.to_string(),
        });
    }
    Ok(out)
}

/// 64 nodes × 8 GPUs, one NVLink domain per node, 8 nodes per rack.
pub fn default_cluster() -> Cluster {
    default_cluster_of(64)
}

/// `nodes` × 8 GPUs, as [`default_cluster`].
pub fn default_cluster_of(nodes: u32) -> Cluster {
    ClusterSpec {
        pools: vec![NodePool {
            taints: Vec::new(),
            name: "philly".into(),
            count: nodes,
            gpu_model: Some(MODEL.into()),
            gpus_per_node: 8,
            gpu_memory: None,
            nvlink_domains_per_node: 1,
            nodes_per_rack: 8,
            cpu: 64_000,
            memory: 512 * 1024,
            labels: BTreeMap::new(),
            mig: None,
        }],
        ..ClusterSpec::default()
    }
    .build()
    .unwrap_or_default()
}

/// Queue name of a virtual cluster.
pub fn queue_name(vc: &str) -> String {
    format!("vc-{vc}")
}

/// One cohort `philly`, one leaf per VC with nominal quota proportional to its GPU-time; the
/// quotas (thousandths) add up to exactly `gpus × 1000`, in flavor [`MODEL`].
pub fn default_queues(jobs: &[PhillyJob], gpus: u64) -> QueueTree {
    queues_for(jobs, &[(MODEL.to_string(), gpus)])
}

/// [`default_queues`] for any cluster: each VC's quota is split over the cluster's GPU models
/// (non-MIG devices), per model in proportion to its GPU-time, so every model's quotas add up to
/// exactly that model's GPUs.
pub fn queues_for_cluster(jobs: &[PhillyJob], cluster: &Cluster) -> QueueTree {
    let mut models: BTreeMap<String, u64> = BTreeMap::new();
    for d in cluster.nodes.iter().flat_map(|n| &n.devices) {
        if d.mig.is_none() {
            *models.entry(d.model.clone()).or_default() += 1;
        }
    }
    let models: Vec<(String, u64)> = models.into_iter().collect();
    queues_for(jobs, &models)
}

fn queues_for(jobs: &[PhillyJob], models: &[(String, u64)]) -> QueueTree {
    let mut gpu_time: BTreeMap<&str, f64> = BTreeMap::new();
    for j in jobs {
        *gpu_time.entry(&j.vc).or_default() += j.duration_ms as f64 * j.gpus as f64;
    }
    let total: f64 = gpu_time.values().sum::<f64>().max(1.0);
    let vcs: Vec<&str> = gpu_time.keys().copied().collect();
    // Per model: largest-remainder split of its capacity (thousandths) over the VCs.
    let mut nominal: Vec<BTreeMap<String, u64>> = vec![BTreeMap::new(); vcs.len()];
    for (model, gpus) in models {
        let capacity = gpus * 1000;
        let exact: Vec<f64> = vcs
            .iter()
            .map(|vc| gpu_time[vc] / total * capacity as f64)
            .collect();
        let mut share: Vec<u64> = exact.iter().map(|e| e.floor() as u64).collect();
        let mut left = capacity.saturating_sub(share.iter().sum());
        let mut by_remainder: Vec<usize> = (0..exact.len()).collect();
        by_remainder.sort_by(|&a, &b| {
            let ra = exact[a] - exact[a].floor();
            let rb = exact[b] - exact[b].floor();
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        for &i in by_remainder.iter().cycle().take(exact.len() * 2) {
            if left == 0 {
                break;
            }
            share[i] += 1;
            left -= 1;
        }
        for (i, v) in share.into_iter().enumerate() {
            nominal[i].insert(model.clone(), v);
        }
    }
    let mut queues = vec![QueueDef {
        name: "philly".into(),
        parent: None,
        children: (1..=vcs.len()).collect(),
        weight: 1.0,
        quotas: BTreeMap::new(),
        allow_unlisted: false,
    }];
    for (i, vc) in vcs.iter().enumerate() {
        queues.push(QueueDef {
            name: queue_name(vc),
            parent: Some(0),
            children: Vec::new(),
            weight: 1.0,
            quotas: nominal[i]
                .iter()
                .map(|(m, &n)| {
                    (
                        m.clone(),
                        Quota {
                            nominal: n,
                            borrowing_limit: None,
                            lending_limit: None,
                        },
                    )
                })
                .collect(),
            allow_unlisted: false,
        });
    }
    QueueTree {
        queues,
        priority_classes: default_priority_classes()
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect(),
    }
}

/// A Philly row as a job named `name`.
pub fn to_job(j: &PhillyJob, name: String) -> Job {
    let task = |count: u32, gpus: u32| TaskGroup {
        name: if gpus == 8 {
            "worker".into()
        } else {
            format!("worker-{gpus}gpu")
        },
        count,
        demand: Demand {
            constraints: Default::default(),
            cpu_milli: 0,
            memory_mib: 0,
            gpu: GpuDemand::Whole {
                count: gpus,
                models: Vec::new(),
            },
            nvlink: gpus > 1,
        },
    };
    let mut groups = Vec::new();
    if j.gpus <= 8 {
        groups.push(task(1, j.gpus));
    } else {
        groups.push(task(j.gpus / 8, 8));
        if !j.gpus.is_multiple_of(8) {
            groups.push(task(1, j.gpus % 8));
        }
    }
    let min_available = groups.iter().map(|g| g.count).sum();
    let priority = default_priority_classes()
        .into_iter()
        .find(|c| c.name == "training")
        .unwrap_or_else(|| default_priority_classes().remove(0));
    Job {
        name,
        queue: queue_name(&j.vc),
        kind: JobKind::Training,
        priority,
        groups,
        min_available,
        placement: Placement::Any,
        expected_runtime_ms: Some(j.duration_ms),
        replicas: None,
        spread: Spread::None,
    }
}

/// The table on a cluster and queues: arrivals relative to the earliest row.
pub fn workload(name: &str, jobs: &[PhillyJob], cluster: Cluster, queues: QueueTree) -> Workload {
    let t0 = jobs.iter().map(|j| j.submit_s).min().unwrap_or(0);
    let mut w = Workload {
        name: name.to_string(),
        cluster,
        queues,
        jobs: jobs
            .iter()
            .enumerate()
            .map(|(i, j)| TraceJob {
                job: to_job(j, format!("philly-{i}")),
                arrival_ms: (j.submit_s - t0) as u64 * 1000,
                runtime_ms: Some(j.duration_ms),
            })
            .collect(),
        node_ops: Vec::new(),
        initially_down: Vec::new(),
        fill: None,
    };
    w.sort_jobs();
    w
}

/// Load the table from a file onto the default cluster and queues.
///
/// # Errors
/// Unreadable file or malformed rows.
pub fn load(path: &Path) -> Result<Workload> {
    let text = std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))?;
    let jobs = parse(&path.display().to_string(), &text)?;
    let cluster = default_cluster();
    let queues = default_queues(&jobs, 512);
    Ok(workload("philly", &jobs, cluster, queues))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_gangs_and_quotas() {
        assert_eq!(parse_timestamp("1970-01-02 00:00:01"), Some(86_401));
        assert_eq!(parse_timestamp("2017-10-09 07:01:55"), Some(1_507_532_515));
        assert_eq!(parse_timestamp("2017-13-09 07:01:55"), None);
        let text = "timestamp,duration,num_gpus,gpu_time,cluster\n\
2017-10-09 07:01:55,60.0,1,60.0,aa\n\
2017-10-09 07:00:55,10.5,12,126.0,bb\n\
2017-10-09 07:02:55,30,2,60,aa\n";
        let jobs = parse("p.csv", text).expect("parse");
        let w = workload("t", &jobs, default_cluster_of(2), default_queues(&jobs, 16));
        // Sorted by arrival; times relative to the earliest.
        assert_eq!(w.jobs[0].arrival_ms, 0);
        assert_eq!(w.jobs[0].runtime_ms, Some(10_500));
        let g = &w.jobs[0].job;
        assert_eq!(g.groups.len(), 2);
        assert_eq!((g.groups[0].count, g.groups[1].count), (1, 1));
        assert_eq!(g.min_available, 2);
        assert_eq!(w.jobs[1].arrival_ms, 60_000);
        // GPU-time: aa 60+60 = 120 s·GPU, bb 126; quotas in thousandths sum to 16 GPUs.
        let q = &w.queues;
        let a = q.queues[q.find("vc-aa").expect("aa")].quotas[MODEL].nominal;
        let b = q.queues[q.find("vc-bb").expect("bb")].quotas[MODEL].nominal;
        assert_eq!(a + b, 16_000);
        assert_eq!(a, (16_000.0f64 * 120.0 / 246.0).round() as u64);
        // Another cluster: the split is per model, each summing to that model's GPUs.
        let spec: ClusterSpec = gantry_model::doc::from_yaml(
            "pools: [{name: x, count: 1, gpu_model: h100-80gb, gpus_per_node: 8, cpu: 8, memory: 8Gi}, {name: y, count: 2, gpu_model: t4, gpus_per_node: 2, cpu: 8, memory: 8Gi}]",
            "c.yaml",
        )
        .expect("spec");
        let q = queues_for_cluster(&jobs, &spec.build().expect("cluster"));
        let sum = |m: &str| -> u64 {
            q.queues
                .iter()
                .filter_map(|d| d.quotas.get(m))
                .map(|x| x.nominal)
                .sum()
        };
        assert_eq!((sum("h100-80gb"), sum("t4")), (8_000, 4_000));
    }

    #[test]
    fn malformed_rows() {
        let h = "timestamp,duration,num_gpus,gpu_time,cluster\n";
        let err = parse("p.csv", &format!("{h}2017-10-09 07:01:55,-3,1,1,aa\n"))
            .expect_err("neg")
            .to_string();
        assert_eq!(
            err,
            "p.csv:2:21: column duration: \"-3\" is not a finite non-negative number"
        );
        let err = parse("p.csv", &format!("{h}2017-10-09,3,1,1,aa\n"))
            .expect_err("ts")
            .to_string();
        assert!(err.starts_with("p.csv:2:1: column timestamp:"), "{err}");
        let err = parse("p.csv", &format!("{h}2017-10-09 07:01:55,3,0,1,aa\n"))
            .expect_err("gpus")
            .to_string();
        assert!(
            err.starts_with("p.csv:2:23: column num_gpus: 0 GPUs"),
            "{err}"
        );
    }
}
