//! The Alibaba "openb" trace (cluster-trace-gpu-v2023, as published with the FGD paper).
//!
//! Mapping, column by column:
//! - node list `sn,cpu_milli,memory_mib,gpu,model` → one node per row with `gpu` devices of
//!   `model` (normalised to lower case: `G2` → `g2`), its cpu and memory; no NVLink domains (the
//!   trace does not say) and no racks;
//! - pod list: `num_gpu` → whole GPUs per task; `gpu_milli` below 1000 (with `num_gpu == 1`) → a
//!   shared fraction of one GPU; `gpu_spec` (`|`-separated) → allowed models; `creation_time`
//!   (seconds) → arrival; `deletion_time − creation_time` → runtime; `qos` → priority class
//!   (`Guaranteed` 400 and `LS` 300 not preemptible, `Burstable` 200 and `BE` 100 preemptible);
//!   `cpu_milli` and `memory_mib` → the task's cpu and memory. Every pod is a one-task job in one
//!   queue, `openb`, whose quota does not limit anything (the trace has no tenants).
//! - `pod_phase` and `scheduled_time` describe what Alibaba's scheduler did and are not used.
//!
//! Files without time columns (`openb_pod_list_multigpu50.csv`) only support the fill experiment.

use std::collections::BTreeMap;
use std::path::Path;

use gantry_model::{
    Cluster, ClusterSpec, Demand, Device, GpuDemand, Health, Job, JobKind, Node, Placement,
    PriorityClass, QueueTree, Spread, TaskGroup,
};

use crate::csv::Csv;
use crate::error::{Result, SimError};
use crate::rng::Rng;
use crate::workload::{job_gpu_demand_milli, Fill, TraceJob, Workload};

/// The priority classes `qos` maps to.
pub fn qos_classes() -> Vec<PriorityClass> {
    [
        ("guaranteed", 400, false),
        ("ls", 300, false),
        ("burstable", 200, true),
        ("be", 100, true),
    ]
    .into_iter()
    .map(|(n, v, p)| PriorityClass {
        name: n.into(),
        value: v,
        preemptible: p,
    })
    .collect()
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))
}

/// Parse a node list.
///
/// # Errors
/// Malformed rows (`file:line:column: reason`) or an invalid cluster (duplicate names).
pub fn parse_nodes(file: &str, text: &str) -> Result<Cluster> {
    let csv = Csv::new(
        file,
        text,
        &["sn", "cpu_milli", "memory_mib", "gpu", "model"],
    )?;
    let c = |n: &str| csv.col(n).unwrap_or_default();
    let (sn, cpu, mem, gpu, model) = (
        c("sn"),
        c("cpu_milli"),
        c("memory_mib"),
        c("gpu"),
        c("model"),
    );
    let mut nodes = Vec::new();
    for row in csv.rows() {
        let row = row?;
        let name = row.raw(sn);
        if name.is_empty() {
            return Err(row.err(sn, "empty node name"));
        }
        let cpu_milli = row.u64(cpu)?;
        let cpu_milli = u32::try_from(cpu_milli).map_err(|_| row.err(cpu, "too large"))?;
        let memory_mib = row.u64(mem)?;
        let gpus = row.u64(gpu)?;
        if gpus > 64 {
            return Err(row.err(
                gpu,
                format!("{gpus} GPUs on one node; at most 64 are supported"),
            ));
        }
        let m = gantry_model::normalize_model(row.raw(model));
        if gpus > 0 && m.is_empty() {
            return Err(row.err(model, format!("{gpus} GPUs but no model")));
        }
        let devices = (0..gpus)
            .map(|_| Device {
                uuid: String::new(),
                model: m.clone(),
                memory_mib: 0,
                numa: None,
                nvlink_domain: None,
                nvlink_peers: Vec::new(),
                health: Health::Healthy,
                mig: None,
            })
            .collect();
        nodes.push(Node {
            taints: Vec::new(),
            name: name.to_string(),
            cpu_milli,
            memory_mib,
            labels: BTreeMap::new(),
            devices,
        });
    }
    let spec = ClusterSpec {
        nodes,
        ..ClusterSpec::default()
    };
    spec.build().map_err(|e| {
        match e {
            gantry_model::ModelError::Invalid { field, reason } => {
                gantry_model::ModelError::Parse {
                    origin: file.to_string(),
                    message: format!("{field}: {reason}"),
                }
            }
            other => other,
        }
        .into()
    })
}

/// One row of a pod list.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    /// `name`.
    pub name: String,
    /// `cpu_milli`.
    pub cpu_milli: u32,
    /// `memory_mib`.
    pub memory_mib: u64,
    /// `num_gpu`.
    pub num_gpu: u32,
    /// `gpu_milli`.
    pub gpu_milli: u32,
    /// `gpu_spec`, normalised.
    pub models: Vec<String>,
    /// Priority class name from `qos`.
    pub class: &'static str,
    /// `creation_time`, seconds.
    pub creation_s: Option<u64>,
    /// `deletion_time − creation_time`, seconds.
    pub runtime_s: Option<u64>,
}

impl Pod {
    /// The pod as a one-task job in queue `openb`.
    pub fn to_job(&self, name: String, with_runtime: bool) -> Job {
        let gpu = if self.num_gpu == 0 {
            GpuDemand::None
        } else if self.gpu_milli < 1000 {
            GpuDemand::Shared {
                milli: self.gpu_milli,
                models: self.models.clone(),
            }
        } else {
            GpuDemand::Whole {
                count: self.num_gpu,
                models: self.models.clone(),
            }
        };
        let classes = qos_classes();
        let priority = classes
            .into_iter()
            .find(|c| c.name == self.class)
            .unwrap_or_else(|| qos_classes().remove(1));
        Job {
            name,
            queue: "openb".into(),
            kind: JobKind::Batch,
            priority,
            groups: vec![TaskGroup {
                name: "pod".into(),
                count: 1,
                demand: Demand {
                    constraints: Default::default(),
                    cpu_milli: self.cpu_milli,
                    memory_mib: self.memory_mib,
                    gpu,
                    nvlink: false,
                },
            }],
            min_available: 1,
            placement: Placement::Any,
            expected_runtime_ms: if with_runtime {
                self.runtime_s.map(|s| s * 1000)
            } else {
                None
            },
            replicas: None,
            spread: Spread::None,
        }
    }
}

/// Parse a pod list.
///
/// # Errors
/// Malformed rows: a non-numeric field, `gpu_milli` above 1000 or fractional with more than one
/// GPU, a deletion before the creation, an unknown `qos`.
pub fn parse_pods(file: &str, text: &str) -> Result<Vec<Pod>> {
    let csv = Csv::new(
        file,
        text,
        &["name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"],
    )?;
    let c = |n: &str| csv.col(n).unwrap_or_default();
    let (name, cpu, mem, ngpu, milli) = (
        c("name"),
        c("cpu_milli"),
        c("memory_mib"),
        c("num_gpu"),
        c("gpu_milli"),
    );
    let (spec, qos, created, deleted) = (
        csv.col("gpu_spec"),
        csv.col("qos"),
        csv.col("creation_time"),
        csv.col("deletion_time"),
    );
    let mut pods = Vec::new();
    for row in csv.rows() {
        let row = row?;
        let n = row.raw(name);
        if n.is_empty() {
            return Err(row.err(name, "empty pod name"));
        }
        let cpu_milli = u32::try_from(row.u64(cpu)?).map_err(|_| row.err(cpu, "too large"))?;
        let memory_mib = row.u64(mem)?;
        let num_gpu = row.u64(ngpu)?;
        if num_gpu > 64 {
            return Err(row.err(ngpu, format!("{num_gpu} GPUs; at most 64 per task")));
        }
        let num_gpu = num_gpu as u32;
        let gpu_milli = row.u64(milli)?;
        if gpu_milli > 1000 {
            return Err(row.err(milli, format!("{gpu_milli} is more than one GPU (1000)")));
        }
        let gpu_milli = gpu_milli as u32;
        if num_gpu == 1 && gpu_milli == 0 {
            return Err(row.err(milli, "a GPU task must ask for more than 0 thousandths"));
        }
        if num_gpu > 1 && gpu_milli != 1000 {
            return Err(row.err(
                milli,
                format!("{num_gpu} GPUs with a fraction of {gpu_milli}/1000: fractions are for one GPU only"),
            ));
        }
        let models = match spec {
            Some(i) if !row.raw(i).is_empty() => row
                .raw(i)
                .split('|')
                .map(gantry_model::normalize_model)
                .filter(|m| !m.is_empty())
                .collect(),
            _ => Vec::new(),
        };
        let class = match qos.map(|i| row.raw(i)) {
            None | Some("") | Some("LS") => "ls",
            Some("BE") => "be",
            Some("Burstable") => "burstable",
            Some("Guaranteed") => "guaranteed",
            Some(other) => {
                return Err(row.err(
                    qos.unwrap_or_default(),
                    format!("unknown qos {other:?} (LS, BE, Burstable, Guaranteed)"),
                ))
            }
        };
        let (creation_s, runtime_s) = match (created, deleted) {
            (Some(ci), Some(di)) => {
                let cr = row.u64(ci)?;
                let de = row.u64(di)?;
                if de < cr {
                    return Err(row.err(
                        di,
                        format!("deletion_time {de} is before creation_time {cr}"),
                    ));
                }
                (Some(cr), Some(de - cr))
            }
            _ => (None, None),
        };
        pods.push(Pod {
            name: n.to_string(),
            cpu_milli,
            memory_mib,
            num_gpu,
            gpu_milli,
            models,
            class,
            creation_s,
            runtime_s,
        });
    }
    Ok(pods)
}

/// The one queue of openb workloads, unlimited, with the qos priority classes.
pub fn queues(cluster: &Cluster) -> QueueTree {
    let mut models: Vec<String> = cluster
        .nodes
        .iter()
        .flat_map(|n| n.devices.iter().map(|d| d.model.clone()))
        .collect();
    models.sort();
    models.dedup();
    let mut t = QueueTree::unlimited("openb", models);
    t.priority_classes = qos_classes()
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    t
}

/// Load a node list and a pod list from files.
///
/// # Errors
/// Unreadable files and malformed rows.
pub fn load(nodes: &Path, pods: &Path) -> Result<(Cluster, Vec<Pod>)> {
    let cluster = parse_nodes(&nodes.display().to_string(), &read(nodes)?)?;
    let pods = parse_pods(&pods.display().to_string(), &read(pods)?)?;
    Ok((cluster, pods))
}

/// A replay with departures: pods arrive at `creation_time` and leave after their runtime.
///
/// # Errors
/// The pod list has no `creation_time`/`deletion_time` columns.
pub fn replay(name: &str, cluster: Cluster, pods: &[Pod]) -> Result<Workload> {
    let mut jobs = Vec::with_capacity(pods.len());
    for p in pods {
        let (Some(c), Some(r)) = (p.creation_s, p.runtime_s) else {
            return Err(SimError::Config(format!(
                "{name}: the pod list has no creation_time/deletion_time columns; use the fill experiment"
            )));
        };
        jobs.push(TraceJob {
            job: p.to_job(p.name.clone(), true),
            arrival_ms: c * 1000,
            runtime_ms: Some(r * 1000),
        });
    }
    let mut w = Workload {
        name: name.to_string(),
        queues: queues(&cluster),
        cluster,
        jobs,
        node_ops: Vec::new(),
        initially_down: Vec::new(),
        fill: None,
    };
    w.sort_jobs();
    Ok(w)
}

/// The FGD paper's fill experiment: the pods in a seeded shuffled order, then extra copies of
/// randomly drawn pods, arriving one per second and never leaving, until the arrived GPU demand
/// reaches `multiple` × the cluster's GPUs. As in the paper's artifact, `qos` is ignored: every
/// pod gets the same priority class (`ls`), so no pod preempts another and the figure measures
/// packing alone.
///
/// # Errors
/// A multiple that is not positive, or a pod list with no GPU demand.
pub fn fill(
    name: &str,
    cluster: Cluster,
    pods: &[Pod],
    multiple: f64,
    seed: u64,
) -> Result<Workload> {
    if !(multiple.is_finite() && multiple > 0.0) {
        return Err(SimError::Config(format!(
            "fill multiple must be a positive number, got {multiple}"
        )));
    }
    let capacity: u64 = cluster
        .nodes
        .iter()
        .map(|n| n.devices.len() as u64)
        .sum::<u64>()
        * 1000;
    let target = (capacity as f64 * multiple).ceil() as u64;
    let same_priority = qos_classes().remove(1);
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..pods.len()).collect();
    rng.shuffle(&mut order);
    let demand_of = |p: &Pod| job_gpu_demand_milli(&p.to_job(String::new(), false));
    if pods.iter().all(|p| demand_of(p) == 0) {
        return Err(SimError::Config(format!(
            "{name}: no pod asks for a GPU; the fill experiment needs GPU demand"
        )));
    }
    let mut jobs = Vec::new();
    let mut arrived = 0u64;
    let mut i = 0usize;
    while arrived < target {
        let (idx, copy) = if i < order.len() {
            (order[i], None)
        } else {
            (rng.below(pods.len() as u64) as usize, Some(i - order.len()))
        };
        let p = &pods[idx];
        let jname = match copy {
            None => p.name.clone(),
            Some(k) => format!("{}-copy{k}", p.name),
        };
        let mut job = p.to_job(jname, false);
        job.priority = same_priority.clone();
        arrived += job_gpu_demand_milli(&job);
        jobs.push(TraceJob {
            job,
            arrival_ms: i as u64 * 1000,
            runtime_ms: None,
        });
        i += 1;
    }
    Ok(Workload {
        name: name.to_string(),
        queues: queues(&cluster),
        cluster,
        jobs,
        node_ops: Vec::new(),
        initially_down: Vec::new(),
        fill: Some(Fill { multiple, seed }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\nn1,96000,393216,8,G2\nc0,32000,1000,0,\n";
    const PODS: &str = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
p0,1000,1024,1,460,,LS,Running,0,100,0\n\
p1,1000,1024,2,1000,G2|T4,BE,Running,5,10,5\n\
p2,1000,1024,0,0,,Burstable,Running,7,7,7\n";

    #[test]
    fn nodes_and_pods_map_as_documented() {
        let c = parse_nodes("n.csv", NODES).expect("nodes");
        assert_eq!(c.nodes.len(), 3);
        assert_eq!(c.nodes[1].devices.len(), 8);
        assert_eq!(c.nodes[1].devices[0].model, "g2");
        assert_eq!(c.nodes[1].cpu_milli, 96_000);
        let pods = parse_pods("p.csv", PODS).expect("pods");
        let j0 = pods[0].to_job("p0".into(), true);
        assert_eq!(
            j0.groups[0].demand.gpu,
            GpuDemand::Shared {
                milli: 460,
                models: vec![]
            }
        );
        assert_eq!(j0.priority.name, "ls");
        assert!(!j0.priority.preemptible);
        assert_eq!(j0.expected_runtime_ms, Some(100_000));
        let j1 = pods[1].to_job("p1".into(), true);
        assert_eq!(
            j1.groups[0].demand.gpu,
            GpuDemand::Whole {
                count: 2,
                models: vec!["g2".into(), "t4".into()]
            }
        );
        assert_eq!(j1.priority.value, 100);
        let w = replay("t", c, &pods).expect("replay");
        assert_eq!(w.jobs[1].arrival_ms, 5000);
        assert_eq!(w.jobs[1].runtime_ms, Some(5000));
        assert_eq!(w.jobs[2].runtime_ms, Some(0));
    }

    #[test]
    fn malformed_rows_name_line_column_and_reason() {
        let cases = [
            (
                "p0,1000,1024,1,1460,,LS,Running,0,100,0",
                "p.csv:2:16: column gpu_milli: 1460 is more than one GPU (1000)",
            ),
            (
                "p0,1000,1024,x,1000,,LS,Running,0,100,0",
                "p.csv:2:14: column num_gpu: \"x\" is not a non-negative integer",
            ),
            (
                "p0,1000,1024,1,1000,,XX,Running,0,100,0",
                "p.csv:2:22: column qos: unknown qos \"XX\"",
            ),
            (
                "p0,1000,1024,1,1000,,LS,Running,50,10,0",
                "p.csv:2:36: column deletion_time: deletion_time 10 is before creation_time 50",
            ),
            (
                "p0,1000,1024,2,500,,LS,Running,0,10,0",
                "p.csv:2:16: column gpu_milli: 2 GPUs with a fraction",
            ),
            ("p0,1000,1024,1,1000,,LS,Running,0", "p.csv:2:"),
        ];
        let header = PODS.lines().next().expect("header");
        for (row, want) in cases {
            let text = format!("{header}\n{row}\n");
            let err = parse_pods("p.csv", &text).expect_err(row).to_string();
            assert!(err.starts_with(want), "{err}\n wanted {want}");
        }
        let err = parse_nodes("n.csv", "sn,cpu_milli,memory_mib,gpu,model\nn0,1,1,2,\n")
            .expect_err("no model")
            .to_string();
        assert_eq!(err, "n.csv:2:10: column model: 2 GPUs but no model");
    }

    #[test]
    fn fill_stops_at_the_multiple_and_is_seeded() {
        let c = parse_nodes("n.csv", NODES).expect("nodes");
        let pods = parse_pods("p.csv", PODS).expect("pods");
        // 10 GPUs; 1.3× = 13,000 milli of demand.
        let w = fill("t", c.clone(), &pods, 1.3, 1).expect("fill");
        let total: u64 = w.jobs.iter().map(|j| job_gpu_demand_milli(&j.job)).sum();
        let last = job_gpu_demand_milli(&w.jobs.last().expect("one").job);
        assert!(total >= 13_000 && total - last < 13_000, "{total}");
        assert!(w.jobs.iter().all(|j| j.runtime_ms.is_none()));
        let names: Vec<_> = w.jobs.iter().map(|j| j.job.name.clone()).collect();
        let again: Vec<_> = fill("t", c.clone(), &pods, 1.3, 1)
            .expect("fill")
            .jobs
            .iter()
            .map(|j| j.job.name.clone())
            .collect();
        assert_eq!(names, again);
        let other: Vec<_> = fill("t", c, &pods, 1.3, 2)
            .expect("fill")
            .jobs
            .iter()
            .map(|j| j.job.name.clone())
            .collect();
        assert_ne!(names, other);
    }
}
