//! Jobs: what users submit. A job has a queue, a priority class, a kind and one or more task
//! groups; each task asks for cpu, memory and GPUs (whole GPUs of allowed models, a fraction of one
//! shared GPU, or one MIG slice). A gang (`min_available`) must start all together, optionally
//! inside one node, one NVLink domain or one value of a topology label.
//!
//! [`JobSpec`] is the written form; [`JobSpec::validate`] turns it into a [`Job`] and refuses what
//! could never run, naming the field: `jobs[0].tasks[1].gpus: 9 requested but no flavor offers
//! more than 8 per node`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::cluster::{normalize_model, Catalog};
use crate::eligibility::{NodeConstraints, SelectorTerm, Toleration};
use crate::quantity::Quantity;
use crate::queue::{check_name, PriorityClass, QueueTree};
use crate::ModelError;

/// Most tasks one job may have (over all its groups): larger requests are refused with the
/// field named, so no sum of counts can overflow and no one job can take the scheduler over.
pub const MAX_TASKS: u32 = 100_000;

/// What kind of work a job is; it picks the default priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Finite batch work.
    #[default]
    Batch,
    /// A training run, usually a gang.
    Training,
    /// A long-running inference service with `min..max` replicas.
    Inference,
}

impl JobKind {
    /// The default priority class name for this kind.
    pub fn default_priority_class(self) -> &'static str {
        match self {
            JobKind::Batch => "batch",
            JobKind::Training => "training",
            JobKind::Inference => "inference",
        }
    }
}

/// One task group as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskGroupSpec {
    /// Name (defaults to `group<i>`).
    #[serde(default)]
    pub name: Option<String>,
    /// Replicas in the group.
    #[serde(default = "one")]
    pub count: u32,
    /// CPU per task (`8`, `500m`).
    #[serde(default)]
    pub cpu: Option<Quantity>,
    /// Memory per task (`64Gi`).
    #[serde(default)]
    pub memory: Option<Quantity>,
    /// Whole GPUs per task.
    #[serde(default)]
    pub gpus: Option<u32>,
    /// A fraction of one shared GPU per task, in (0, 1).
    #[serde(default)]
    pub gpu_fraction: Option<f64>,
    /// One MIG slice per task: `1g.10gb`, or `h100-80gb/1g.10gb` to pin the model.
    #[serde(default)]
    pub mig: Option<String>,
    /// Allowed GPU models; empty = any. The engine scores every allowed model together and
    /// takes the best-packing node, so the order does not matter.
    #[serde(default)]
    pub gpu_models: Vec<String>,
    /// Keep a multi-GPU task's GPUs inside one NVLink domain.
    #[serde(default)]
    pub nvlink: bool,
    /// Labels a node must carry with exactly these values (`{disktype: ssd}`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Required node affinity: `[{match_expressions: [{key, operator, values}]}]`, terms ORed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_affinity: Vec<SelectorTerm>,
    /// Taints the tasks tolerate: `[{key, operator: Equal|Exists, value, effect}]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

fn one() -> u32 {
    1
}

impl Default for TaskGroupSpec {
    /// One task asking for nothing.
    fn default() -> Self {
        TaskGroupSpec {
            name: None,
            count: 1,
            cpu: None,
            memory: None,
            gpus: None,
            gpu_fraction: None,
            mig: None,
            gpu_models: Vec::new(),
            nvlink: false,
            node_selector: BTreeMap::new(),
            node_affinity: Vec::new(),
            tolerations: Vec::new(),
        }
    }
}

/// `min..max` replicas of an inference service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replicas {
    /// Replicas that must run together for the service to be up.
    pub min: u32,
    /// Most replicas the autoscaler may ask for.
    pub max: u32,
}

/// A job as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique name.
    pub name: String,
    /// Leaf queue.
    pub queue: String,
    /// Kind; default `batch`.
    #[serde(default)]
    pub kind: JobKind,
    /// Priority class; default from the kind.
    #[serde(default)]
    pub priority_class: Option<String>,
    /// Task groups.
    pub tasks: Vec<TaskGroupSpec>,
    /// Gang size: tasks that must start together. Default: all of them (for inference: `replicas.min`).
    #[serde(default)]
    pub min_available: Option<u32>,
    /// `node`, `nvlink-domain`, or `label:<key>` (e.g. `label:rack`).
    #[serde(default)]
    pub placement: Option<String>,
    /// Expected runtime (`2h`), used for backfill and start-time estimates.
    #[serde(default)]
    pub expected_runtime: Option<Quantity>,
    /// Inference services: replica range.
    #[serde(default)]
    pub replicas: Option<Replicas>,
    /// Inference services: `node` (one replica per node) or `label:<key>` (spread over its values).
    #[serde(default)]
    pub spread: Option<String>,
    /// What each task runs (argv), for `gantry serve`'s agents. Not part of scheduling: `gantry
    /// plan`, the simulator and Kubernetes mode (whose pods carry their own) ignore it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Environment of each task, for `gantry serve`'s agents (as `command`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Inference services: how the replica count follows load ([`crate::service`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<crate::service::AutoscaleSpec>,
    /// Inference services: the port each replica listens on (`PORT`): this one, or the next
    /// free one on the replica's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Inference services: an HTTP path on `PORT` that answers 2xx when the replica is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<String>,
}

/// A document of jobs.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsSpec {
    /// The jobs.
    pub jobs: Vec<JobSpec>,
}

/// What one task asks of GPUs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GpuDemand {
    /// No GPU.
    None,
    /// `count` whole GPUs of one of `models` (empty = any).
    Whole {
        /// GPUs per task.
        count: u32,
        /// Allowed models.
        models: Vec<String>,
    },
    /// A share of one GPU, in thousandths (1..=999).
    Shared {
        /// Thousandths of a GPU.
        milli: u32,
        /// Allowed models.
        models: Vec<String>,
    },
    /// One MIG slice of `profile`.
    Mig {
        /// Profile name.
        profile: String,
        /// Allowed models.
        models: Vec<String>,
    },
}

/// What one task asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Demand {
    /// Millicores.
    pub cpu_milli: u32,
    /// MiB.
    pub memory_mib: u64,
    /// GPUs.
    pub gpu: GpuDemand,
    /// Multi-GPU task inside one NVLink domain.
    pub nvlink: bool,
    /// Where the task may run (selector, affinity, tolerations).
    #[serde(default, skip_serializing_if = "NodeConstraints::is_empty")]
    pub constraints: NodeConstraints,
}

/// A validated task group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskGroup {
    /// Name.
    pub name: String,
    /// Replicas.
    pub count: u32,
    /// Per task.
    pub demand: Demand,
}

/// Where a gang's tasks must land together.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Placement {
    /// Anywhere.
    #[default]
    Any,
    /// All on one node.
    Node,
    /// All GPUs in one NVLink domain.
    NvlinkDomain,
    /// All on nodes that share one value of this label.
    Label(String),
}

/// How inference replicas spread.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Spread {
    /// No spreading.
    #[default]
    None,
    /// At most one replica per node.
    Node,
    /// Prefer label values with the fewest replicas.
    Label(String),
}

/// A validated job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Name.
    pub name: String,
    /// Leaf queue name.
    pub queue: String,
    /// Kind.
    pub kind: JobKind,
    /// Resolved priority class.
    pub priority: PriorityClass,
    /// Task groups.
    pub groups: Vec<TaskGroup>,
    /// Tasks that must start in the same cycle.
    pub min_available: u32,
    /// Gang placement constraint.
    pub placement: Placement,
    /// Expected runtime in ms.
    pub expected_runtime_ms: Option<u64>,
    /// Replica range for inference services.
    pub replicas: Option<Replicas>,
    /// Spread policy.
    pub spread: Spread,
}

impl Job {
    /// Tasks over all groups.
    pub fn total_tasks(&self) -> u32 {
        self.groups.iter().map(|g| g.count).sum()
    }
}

fn parse_scope(field: &str, s: &str, allow_domain: bool) -> Result<Placement, ModelError> {
    match s {
        "node" => Ok(Placement::Node),
        "nvlink-domain" if allow_domain => Ok(Placement::NvlinkDomain),
        _ => match s.strip_prefix("label:") {
            Some(key) if !key.is_empty() => Ok(Placement::Label(key.to_string())),
            _ => Err(ModelError::invalid(
                field,
                format!(
                    "{s:?} is not a scope; use node{}, or label:<key>",
                    if allow_domain { ", nvlink-domain" } else { "" }
                ),
            )),
        },
    }
}

impl JobSpec {
    /// What the job asks for, in words, as written: `2 tasks × 8 GPUs (h100-80gb), NVLink;
    /// all or nothing`. For people (dashboards); not parsed back.
    pub fn request_summary(&self) -> String {
        let q = |v: &Quantity| match v {
            Quantity::Number(n) => format!("{n}"),
            Quantity::Text(t) => t.clone(),
        };
        let mut parts: Vec<String> = self
            .tasks
            .iter()
            .map(|g| {
                let plural = |n: u32, one: &str, many: &str| {
                    format!("{n} {}", if n == 1 { one } else { many })
                };
                let mut t = plural(g.count, "task", "tasks");
                match (g.gpus, g.gpu_fraction, &g.mig) {
                    (Some(n), _, _) if n > 0 => t += &format!(" × {}", plural(n, "GPU", "GPUs")),
                    (_, Some(f), _) => t += &format!(" × {f} of a GPU"),
                    (_, _, Some(m)) => t += &format!(" × MIG {m}"),
                    _ => {}
                }
                if !g.gpu_models.is_empty() {
                    t += &format!(" ({})", g.gpu_models.join(" or "));
                }
                if g.nvlink {
                    t += ", NVLink";
                }
                let mut more = Vec::new();
                if let Some(c) = &g.cpu {
                    more.push(format!("cpu {}", q(c)));
                }
                if let Some(m) = &g.memory {
                    more.push(format!("memory {}", q(m)));
                }
                for (k, v) in &g.node_selector {
                    more.push(format!("on {k}={v}"));
                }
                if !g.node_affinity.is_empty() {
                    more.push("with node affinity".into());
                }
                if !g.tolerations.is_empty() {
                    more.push(format!("tolerating {} taint(s)", g.tolerations.len()));
                }
                if !more.is_empty() {
                    t += &format!(", {}", more.join(", "));
                }
                t
            })
            .collect();
        let total: u32 = self.tasks.iter().map(|g| g.count).sum();
        match self.min_available {
            Some(m) if m < total => parts.push(format!("starts with {m} of {total} tasks")),
            _ if total > 1 && self.kind != JobKind::Inference => {
                parts.push("all or nothing".into())
            }
            _ => {}
        }
        if let Some(r) = &self.replicas {
            parts.push(format!("{}–{} replicas", r.min, r.max));
        }
        if let Some(p) = &self.placement {
            parts.push(format!("placement {p}"));
        }
        if let Some(c) = &self.priority_class {
            parts.push(format!("priority {c}"));
        }
        if let Some(r) = &self.expected_runtime {
            parts.push(format!("expected to run {}", q(r)));
        }
        parts.join("; ")
    }

    /// Validate against the queue tree and, when given, what the cluster can offer.
    ///
    /// # Errors
    /// A [`ModelError::Invalid`] whose field is relative to the job (`tasks[1].gpus`); callers
    /// add their prefix with [`ModelError::within`].
    pub fn validate(
        &self,
        queues: &QueueTree,
        catalog: Option<&Catalog>,
    ) -> Result<Job, ModelError> {
        check_name("name", &self.name)?;
        check_name("queue", &self.queue)?;
        match queues.find(&self.queue) {
            None => {
                return Err(ModelError::invalid(
                    "queue",
                    format!("unknown queue {:?}", self.queue),
                ))
            }
            Some(q) if !queues.queues[q].is_leaf() => {
                return Err(ModelError::invalid(
                    "queue",
                    format!(
                        "{:?} is a cohort; submit to one of its leaf queues",
                        self.queue
                    ),
                ))
            }
            Some(_) => {}
        }
        let class_name = self
            .priority_class
            .as_deref()
            .unwrap_or(self.kind.default_priority_class());
        let Some(priority) = queues.priority_classes.get(class_name).cloned() else {
            let known: Vec<&str> = queues.priority_classes.keys().map(String::as_str).collect();
            return Err(ModelError::invalid(
                "priority_class",
                format!(
                    "unknown priority class {class_name:?} (known: {})",
                    known.join(", ")
                ),
            ));
        };
        if self.tasks.is_empty() {
            return Err(ModelError::invalid(
                "tasks",
                "a job needs at least one task group",
            ));
        }
        let placement = match &self.placement {
            None => Placement::Any,
            Some(s) => parse_scope("placement", s, true)?,
        };
        if let (Placement::Label(key), Some(cat)) = (&placement, catalog) {
            if !cat.label_keys.contains(key) {
                return Err(ModelError::invalid(
                    "placement",
                    format!("no node has label {key:?}"),
                ));
            }
        }
        let mut groups = Vec::with_capacity(self.tasks.len());
        let mut names = BTreeSet::new();
        for (i, t) in self.tasks.iter().enumerate() {
            let g = validate_group(t, i, catalog).map_err(|e| e.within(&format!("tasks[{i}]")))?;
            if !names.insert(g.name.clone()) {
                return Err(ModelError::invalid(
                    format!("tasks[{i}].name"),
                    format!("duplicate task group {:?}", g.name),
                ));
            }
            groups.push(g);
        }
        let total64: u64 = groups.iter().map(|g| u64::from(g.count)).sum();
        if total64 > u64::from(MAX_TASKS) {
            return Err(ModelError::invalid(
                "tasks",
                format!("{total64} tasks in all is more than the limit of {MAX_TASKS} per job"),
            ));
        }
        let total = total64 as u32;
        if self.replicas.is_some() && self.kind != JobKind::Inference {
            return Err(ModelError::invalid(
                "replicas",
                "only inference services have replicas",
            ));
        }
        let service_only = [
            ("autoscale", self.autoscale.is_some()),
            ("port", self.port.is_some()),
            ("readiness", self.readiness.is_some()),
        ];
        if let Some((field, _)) = service_only
            .iter()
            .find(|(_, set)| *set && self.replicas.is_none())
        {
            return Err(ModelError::invalid(
                *field,
                "only inference services (kind: inference with replicas) have it",
            ));
        }
        if let Some(a) = &self.autoscale {
            a.validate().map_err(|e| e.within("autoscale"))?;
            if self.port.is_none() {
                return Err(ModelError::invalid(
                    "port",
                    "an autoscaled service needs a port to scrape its replicas' metrics on",
                ));
            }
        }
        if self.port == Some(0) {
            return Err(ModelError::invalid("port", "must be between 1 and 65535"));
        }
        if let Some(p) = &self.readiness {
            crate::service::check_readiness(p)?;
            if self.port.is_none() {
                return Err(ModelError::invalid(
                    "port",
                    "a readiness path needs a port to probe it on",
                ));
            }
        }
        let mut min_available = total;
        if let Some(r) = self.replicas {
            if r.max == 0 || r.min > r.max {
                return Err(ModelError::invalid(
                    "replicas",
                    format!(
                        "need min <= max and max >= 1, got min {} max {}",
                        r.min, r.max
                    ),
                ));
            }
            let activation = self
                .autoscale
                .as_ref()
                .is_some_and(|a| a.activation.is_some());
            if r.min == 0 && !activation {
                return Err(ModelError::invalid(
                    "replicas",
                    "min 0 needs autoscale.activation: with no replica running, only a queue in \
                     front of the service (a router's metric) can say that requests wait",
                ));
            }
            if groups.len() != 1 {
                return Err(ModelError::invalid(
                    "tasks",
                    "an inference service has exactly one task group (its replica template)",
                ));
            }
            // A running service has at least one replica: at zero it is not in the engine at
            // all (the driver keeps it aside until requests queue).
            let least = r.min.max(1);
            if !(least..=r.max).contains(&groups[0].count) {
                // The desired count starts at min unless the spec says otherwise.
                groups[0].count = groups[0].count.clamp(least, r.max);
            }
            min_available = least;
        }
        if let Some(m) = self.min_available {
            let total: u32 = groups.iter().map(|g| g.count).sum();
            if m == 0 || m > total {
                return Err(ModelError::invalid(
                    "min_available",
                    format!("must be between 1 and the job's {total} tasks, got {m}"),
                ));
            }
            min_available = m;
        }
        if placement == Placement::Node {
            if let Some(cat) = catalog {
                let cpu: u64 = groups
                    .iter()
                    .map(|g| g.demand.cpu_milli as u64 * g.count as u64)
                    .sum();
                if cpu > cat.max_cpu_milli as u64 {
                    return Err(ModelError::invalid(
                        "placement",
                        format!(
                            "all tasks on one node need {} cpu but the largest node has {}",
                            cpu as f64 / 1000.0,
                            cat.max_cpu_milli as f64 / 1000.0
                        ),
                    ));
                }
            }
        }
        if matches!(placement, Placement::Node | Placement::NvlinkDomain) {
            if let Some(cat) = catalog {
                let gpus: u32 = groups
                    .iter()
                    .map(|g| match &g.demand.gpu {
                        GpuDemand::Whole { count, .. } => count * g.count,
                        _ => 0,
                    })
                    .sum();
                let best = cat
                    .models
                    .values()
                    .map(|m| {
                        if placement == Placement::Node {
                            m.max_per_node
                        } else {
                            m.max_per_domain
                        }
                    })
                    .max()
                    .unwrap_or(0);
                // Multi-node NVLink domains are possible; only the single-node limit is checked here.
                if placement == Placement::Node && gpus > best {
                    return Err(ModelError::invalid(
                        "placement",
                        format!("all tasks on one node need {gpus} GPUs but no node has more than {best}"),
                    ));
                }
            }
        }
        let expected_runtime_ms = self
            .expected_runtime
            .as_ref()
            .map(|q| {
                q.duration_ms()
                    .map_err(|r| ModelError::invalid("expected_runtime", r))
            })
            .transpose()?;
        let spread = match &self.spread {
            None => Spread::None,
            Some(s) => match parse_scope("spread", s, false)? {
                Placement::Node => Spread::Node,
                Placement::Label(k) => Spread::Label(k),
                _ => Spread::None,
            },
        };
        Ok(Job {
            name: self.name.clone(),
            queue: self.queue.clone(),
            kind: self.kind,
            priority,
            groups,
            min_available,
            placement,
            expected_runtime_ms,
            replicas: self.replicas,
            spread,
        })
    }
}

fn validate_group(
    t: &TaskGroupSpec,
    i: usize,
    catalog: Option<&Catalog>,
) -> Result<TaskGroup, ModelError> {
    let name = match &t.name {
        Some(n) => {
            check_name("name", n)?;
            n.clone()
        }
        None => format!("group{i}"),
    };
    if t.count == 0 {
        return Err(ModelError::invalid("count", "must be at least 1"));
    }
    if t.count > MAX_TASKS {
        return Err(ModelError::invalid(
            "count",
            format!(
                "{} is more than the limit of {MAX_TASKS} tasks per job",
                t.count
            ),
        ));
    }
    let cpu_milli = t
        .cpu
        .as_ref()
        .map(|q| q.cpu_milli().map_err(|r| ModelError::invalid("cpu", r)))
        .transpose()?
        .unwrap_or(0);
    let memory_mib = t
        .memory
        .as_ref()
        .map(|q| q.memory_mib().map_err(|r| ModelError::invalid("memory", r)))
        .transpose()?
        .unwrap_or(0);
    if let Some(cat) = catalog {
        if cpu_milli > cat.max_cpu_milli {
            return Err(ModelError::invalid(
                "cpu",
                format!(
                    "{} requested but no node has more than {}",
                    cpu_milli as f64 / 1000.0,
                    cat.max_cpu_milli as f64 / 1000.0
                ),
            ));
        }
        if memory_mib > cat.max_memory_mib {
            return Err(ModelError::invalid(
                "memory",
                format!(
                    "{memory_mib}Mi requested but no node has more than {}Mi",
                    cat.max_memory_mib
                ),
            ));
        }
    }
    let mut models: Vec<String> = t.gpu_models.iter().map(|m| normalize_model(m)).collect();
    let asks = [t.gpus.is_some(), t.gpu_fraction.is_some(), t.mig.is_some()];
    if asks.iter().filter(|&&a| a).count() > 1 {
        return Err(ModelError::invalid(
            "gpus",
            "ask for one of gpus, gpu_fraction or mig, not several",
        ));
    }
    if let Some(cat) = catalog {
        if let Some(unknown) = models.iter().find(|m| !cat.models.contains_key(*m)) {
            let known: Vec<&str> = cat.models.keys().map(String::as_str).collect();
            return Err(ModelError::invalid(
                "gpu_models",
                format!(
                    "no node has model {unknown:?} (known: {})",
                    known.join(", ")
                ),
            ));
        }
    }
    let offered = |cat: &Catalog, f: &dyn Fn(&crate::cluster::ModelCaps) -> u32| -> u32 {
        cat.models
            .iter()
            .filter(|(m, _)| models.is_empty() || models.contains(m))
            .map(|(_, c)| f(c))
            .max()
            .unwrap_or(0)
    };
    let gpu = if let Some(n) = t.gpus {
        if n == 0 {
            GpuDemand::None
        } else {
            if let Some(cat) = catalog {
                let per_node = offered(cat, &|c| c.max_per_node);
                if n > per_node {
                    return Err(ModelError::invalid(
                        "gpus",
                        format!("{n} requested but no flavor offers more than {per_node} per node"),
                    ));
                }
                if t.nvlink && n > 1 {
                    let per_domain = offered(cat, &|c| c.max_per_domain);
                    if n > per_domain {
                        return Err(ModelError::invalid(
                            "gpus",
                            format!("{n} requested in one NVLink domain but no flavor has a domain of more than {per_domain}"),
                        ));
                    }
                }
            }
            GpuDemand::Whole { count: n, models }
        }
    } else if let Some(f) = t.gpu_fraction {
        if !(f > 0.0 && f < 1.0) {
            return Err(ModelError::invalid(
                "gpu_fraction",
                format!(
                    "must be between 0 and 1 (exclusive), got {f}; ask for whole GPUs with gpus"
                ),
            ));
        }
        let milli = ((f * 1000.0).round() as u32).clamp(1, 999);
        if let Some(cat) = catalog {
            if offered(cat, &|c| c.devices) == 0 {
                return Err(ModelError::invalid(
                    "gpu_fraction",
                    "no allowed model has a non-MIG GPU to share",
                ));
            }
        }
        GpuDemand::Shared { milli, models }
    } else if let Some(m) = &t.mig {
        let profile = match m.split_once('/') {
            Some((model, profile)) => {
                let model = normalize_model(model);
                if !models.is_empty() && !models.contains(&model) {
                    return Err(ModelError::invalid(
                        "mig",
                        format!("model {model:?} is not among gpu_models"),
                    ));
                }
                models = vec![model];
                profile.to_string()
            }
            None => m.clone(),
        };
        if profile.is_empty() {
            return Err(ModelError::invalid(
                "mig",
                "name a MIG profile such as 1g.10gb",
            ));
        }
        if let Some(cat) = catalog {
            let any = cat
                .models
                .iter()
                .filter(|(mo, _)| models.is_empty() || models.contains(mo))
                .any(|(_, c)| c.mig_profiles.contains(&profile));
            if !any {
                return Err(ModelError::invalid(
                    "mig",
                    format!("no MIG device of an allowed model offers profile {profile:?}"),
                ));
            }
        }
        GpuDemand::Mig { profile, models }
    } else {
        GpuDemand::None
    };
    let constraints = NodeConstraints {
        node_selector: t.node_selector.clone(),
        node_affinity: t.node_affinity.clone(),
        tolerations: t.tolerations.clone(),
    };
    constraints.validate()?;
    Ok(TaskGroup {
        name,
        count: t.count,
        demand: Demand {
            cpu_milli,
            memory_mib,
            gpu,
            nvlink: t.nvlink,
            constraints,
        },
    })
}

impl JobsSpec {
    /// Validate every job; errors are prefixed `jobs[i]`.
    ///
    /// # Errors
    /// The first invalid job's error, or a duplicate job name.
    pub fn validate(
        &self,
        queues: &QueueTree,
        catalog: Option<&Catalog>,
    ) -> Result<Vec<Job>, ModelError> {
        let mut seen = BTreeSet::new();
        self.jobs
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let job = j
                    .validate(queues, catalog)
                    .map_err(|e| e.within(&format!("jobs[{i}]")))?;
                if !seen.insert(job.name.clone()) {
                    return Err(ModelError::invalid(
                        format!("jobs[{i}].name"),
                        format!("duplicate job name {:?}", job.name),
                    ));
                }
                Ok(job)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ClusterSpec;
    use crate::doc::from_yaml;
    use crate::queue::QueuesSpec;

    fn setup() -> (QueueTree, Catalog) {
        let c: ClusterSpec = from_yaml(
            r#"
pools:
  - {name: dgx, count: 2, gpu_model: h100-80gb, gpus_per_node: 8, nvlink_domains_per_node: 2, cpu: 200, memory: 2Ti, nodes_per_rack: 1}
  - {name: mig, count: 1, gpu_model: a100-80gb, gpus_per_node: 2, cpu: 64, memory: 512Gi, mig: {}}
"#,
            "c",
        )
        .expect("parse");
        let q: QueuesSpec =
            from_yaml("queues: [{name: root}, {name: team-a, parent: root}]", "q").expect("parse");
        (q.build().expect("q"), c.build().expect("c").catalog())
    }

    fn job(yaml: &str) -> Result<Vec<Job>, ModelError> {
        let (q, cat) = setup();
        from_yaml::<JobsSpec>(yaml, "jobs.yaml")?.validate(&q, Some(&cat))
    }

    #[test]
    fn a_request_reads_as_written() {
        let spec: JobsSpec = from_yaml(
            r#"
jobs:
  - {name: g, queue: q, tasks: [{count: 2, gpus: 8, gpu_models: [h100-80gb], nvlink: true, node_selector: {disktype: ssd}}], expected_runtime: 2h}
  - {name: f, queue: q, tasks: [{count: 2, gpu_fraction: 0.5}], min_available: 1}
  - {name: m, queue: q, tasks: [{mig: 1g.10gb, cpu: 4}]}
"#,
            "j",
        )
        .expect("parse");
        let s: Vec<String> = spec.jobs.iter().map(JobSpec::request_summary).collect();
        assert_eq!(
            s[0],
            "2 tasks × 8 GPUs (h100-80gb), NVLink, on disktype=ssd; all or nothing; expected to run 2h"
        );
        assert_eq!(s[1], "2 tasks × 0.5 of a GPU; starts with 1 of 2 tasks");
        assert_eq!(s[2], "1 task × MIG 1g.10gb, cpu 4");
    }

    #[test]
    fn a_gang_validates() {
        let jobs = job(
            r#"
jobs:
  - name: train
    queue: team-a
    kind: training
    placement: label:rack
    expected_runtime: 2h
    tasks: [{name: worker, count: 4, cpu: 16, memory: 64Gi, gpus: 4, nvlink: true, gpu_models: [H100-80GB]}]
"#,
        )
        .expect("valid");
        let j = &jobs[0];
        assert_eq!(j.min_available, 4);
        assert_eq!(j.priority.name, "training");
        assert_eq!(j.placement, Placement::Label("rack".into()));
        assert_eq!(j.expected_runtime_ms, Some(7_200_000));
        assert_eq!(
            j.groups[0].demand.gpu,
            GpuDemand::Whole {
                count: 4,
                models: vec!["h100-80gb".into()]
            }
        );
    }

    #[test]
    fn refusals_name_field_and_reason() {
        let base = "jobs:\n  - {name: j, queue: team-a, tasks: [TASK]}\n  - {name: k, queue: QUEUE, tasks: [{gpus: 1}]}\n";
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "{gpus: 9}",
                "team-a",
                "jobs[0].tasks[0].gpus",
                "9 requested but no flavor offers more than 8 per node",
            ),
            (
                "{gpus: 5, nvlink: true}",
                "team-a",
                "jobs[0].tasks[0].gpus",
                "no flavor has a domain of more than 4",
            ),
            (
                "{gpu_fraction: 1.5}",
                "team-a",
                "jobs[0].tasks[0].gpu_fraction",
                "between 0 and 1",
            ),
            (
                "{mig: 5g.50gb}",
                "team-a",
                "jobs[0].tasks[0].mig",
                "offers profile",
            ),
            (
                "{gpus: 1, mig: 1g.10gb}",
                "team-a",
                "jobs[0].tasks[0].gpus",
                "not several",
            ),
            (
                "{gpus: 1, gpu_models: [b200]}",
                "team-a",
                "jobs[0].tasks[0].gpu_models",
                "b200",
            ),
            (
                "{count: 0}",
                "team-a",
                "jobs[0].tasks[0].count",
                "at least 1",
            ),
            (
                "{count: 4000000000}",
                "team-a",
                "jobs[0].tasks[0].count",
                "limit of 100000 tasks per job",
            ),
            (
                "{cpu: 500}",
                "team-a",
                "jobs[0].tasks[0].cpu",
                "no node has more than 200",
            ),
            ("{gpus: 1}", "nope", "jobs[1].queue", "unknown queue"),
            ("{gpus: 1}", "root", "jobs[1].queue", "is a cohort"),
        ];
        for (task, queue, field, reason) in cases {
            let y = base.replace("TASK", task).replace("QUEUE", queue);
            let err = job(&y).expect_err(field);
            assert_eq!(err.field(), Some(*field), "{err}");
            assert!(err.to_string().contains(reason), "{err}");
        }
    }

    #[test]
    fn the_documented_example_message() {
        let err = job("jobs:\n  - {name: a, queue: team-a, tasks: [{gpus: 1}, {gpus: 9}]}\n")
            .expect_err("9");
        assert_eq!(
            err.to_string(),
            "jobs[0].tasks[1].gpus: 9 requested but no flavor offers more than 8 per node"
        );
    }

    #[test]
    fn inference_replicas_and_spread() {
        let jobs = job(
            "jobs:\n  - {name: svc, queue: team-a, kind: inference, replicas: {min: 2, max: 6}, spread: node, tasks: [{mig: a100-80gb/1g.10gb}]}\n",
        )
        .expect("valid");
        let j = &jobs[0];
        assert_eq!(j.min_available, 2);
        assert_eq!(j.groups[0].count, 2);
        assert_eq!(j.spread, Spread::Node);
        assert_eq!(j.priority.name, "inference");
        let err = job("jobs:\n  - {name: svc, queue: team-a, replicas: {min: 2, max: 6}, tasks: [{gpus: 1}]}\n").expect_err("batch");
        assert_eq!(err.field(), Some("jobs[0].replicas"));
    }

    #[test]
    fn unknown_fields_are_refused_with_a_line() {
        let (q, cat) = setup();
        let err = from_yaml::<JobsSpec>(
            "jobs:\n  - name: a\n    queue: team-a\n    tasks: [{gpu: 1}]\n",
            "jobs.yaml",
        )
        .and_then(|s| s.validate(&q, Some(&cat)))
        .expect_err("unknown");
        let msg = err.to_string();
        assert!(
            msg.contains("jobs[0].tasks[0]")
                && msg.contains("unknown field `gpu`")
                && msg.contains("line 4"),
            "{msg}"
        );
    }
}
