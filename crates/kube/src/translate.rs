//! Pure translation between Kubernetes objects and the engine's model. No client, no I/O: every
//! function here takes objects and returns values, so it is tested with tables of objects.
//!
//! - [`pod_info`]: what the scheduler needs of a pod (its gang or queue, its demand, where it is
//!   bound and with which devices).
//! - [`node_of`]: a Kubernetes Node plus its [`NodeInventory`](crate::crd::NodeInventory) →
//!   the model's node and whether it can take new pods.
//! - [`queue_specs`]: Queue objects → the model's queue specs.
//! - [`job_spec`]: the pods of one gang (or one lone pod) → a job spec whose tasks map back to
//!   pods.

use std::collections::BTreeMap;

use gantry_engine::NamedAlloc;
use gantry_model::quantity::Quantity;
use gantry_model::{
    JobKind, JobSpec, Node, NodeConstraints, QueueSpec, QueueTree, QueuesSpec, QuotaSpec,
    SelectorOp, SelectorRequirement, SelectorTerm, Taint, TaintEffect, TaskGroupSpec, Toleration,
    TolerationOp,
};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as KubeQuantity;

use crate::crd::{
    NodeInventorySpec, PodGroupSpec, Queue, DEVICES_ANNOTATION, POD_GROUP_LABEL,
    PRIORITY_CLASS_LABEL, QUEUE_LABEL,
};

/// Annotation holding the scheduler's full allocation of a bound pod (node, devices, flavor),
/// so a restarted controller gives running pods their devices back.
pub const ALLOCATION_ANNOTATION: &str = "gantry.dev/allocation";
/// Resource name of whole GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Prefix of MIG resources in the device plugin's mixed strategy (`nvidia.com/mig-1g.10gb`).
pub const MIG_RESOURCE_PREFIX: &str = "nvidia.com/mig-";
/// Pod annotation naming the GPU models a pod may use (`h100-80gb,a100-80gb`).
pub const GPU_MODELS_ANNOTATION: &str = "gantry.dev/gpu-models";
/// Taints the node lifecycle sets; gantry reads them as readiness, not as taints.
const LIFECYCLE_TAINTS: [&str; 2] = [
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/not-ready",
];

fn effect_of(e: &str, field: &str) -> Result<TaintEffect, String> {
    match e {
        "NoSchedule" => Ok(TaintEffect::NoSchedule),
        "PreferNoSchedule" => Ok(TaintEffect::PreferNoSchedule),
        "NoExecute" => Ok(TaintEffect::NoExecute),
        other => Err(format!(
            "{field}: {other:?} is not a taint effect (NoSchedule, PreferNoSchedule, NoExecute)"
        )),
    }
}

/// Where a pod may run: `spec.nodeSelector`, `spec.affinity.nodeAffinity.
/// requiredDuringSchedulingIgnoredDuringExecution` (match expressions and the `metadata.name`
/// match field) and `spec.tolerations`. Preferred node affinity is a scoring hint that gantry
/// does not read.
fn constraints_of(pod: &Pod) -> Result<NodeConstraints, String> {
    let Some(spec) = &pod.spec else {
        return Ok(NodeConstraints::default());
    };
    let mut c = NodeConstraints {
        node_selector: spec
            .node_selector
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        ..Default::default()
    };
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    if let Some(req) = required {
        for (i, term) in req.node_selector_terms.iter().enumerate() {
            let field = format!("spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[{i}]");
            let mut exprs = Vec::new();
            let all = term
                .match_expressions
                .iter()
                .flatten()
                .map(|e| ("matchExpressions", e.key.clone(), e))
                .chain(
                    term.match_fields
                        .iter()
                        .flatten()
                        .map(|e| ("matchFields", "metadata.name".to_string(), e)),
                );
            for (j, (kind, key, e)) in all.enumerate() {
                if kind == "matchFields" && e.key != "metadata.name" {
                    return Err(format!(
                        "{field}.matchFields: only metadata.name can be matched, not {:?}",
                        e.key
                    ));
                }
                let operator = match e.operator.as_str() {
                    "In" => SelectorOp::In,
                    "NotIn" => SelectorOp::NotIn,
                    "Exists" => SelectorOp::Exists,
                    "DoesNotExist" => SelectorOp::DoesNotExist,
                    "Gt" => SelectorOp::Gt,
                    "Lt" => SelectorOp::Lt,
                    other => {
                        return Err(format!(
                            "{field}.{kind}[{j}].operator: {other:?} is not In, NotIn, Exists, DoesNotExist, Gt or Lt"
                        ))
                    }
                };
                exprs.push(SelectorRequirement {
                    key,
                    operator,
                    values: e.values.clone().unwrap_or_default(),
                });
            }
            c.node_affinity.push(SelectorTerm {
                match_expressions: exprs,
            });
        }
    }
    for (i, t) in spec.tolerations.iter().flatten().enumerate() {
        let field = format!("spec.tolerations[{i}]");
        let operator = match t.operator.as_deref() {
            None | Some("") | Some("Equal") => TolerationOp::Equal,
            Some("Exists") => TolerationOp::Exists,
            Some(other) => {
                return Err(format!(
                    "{field}.operator: {other:?} is not Equal or Exists"
                ))
            }
        };
        let effect = match t.effect.as_deref() {
            None | Some("") => None,
            Some(e) => Some(effect_of(e, &format!("{field}.effect"))?),
        };
        c.tolerations.push(Toleration {
            key: t.key.clone().filter(|k| !k.is_empty()),
            operator,
            value: t.value.clone().filter(|v| !v.is_empty()),
            effect,
        });
    }
    c.validate().map_err(|e| format!("spec: {e}"))?;
    Ok(c)
}

/// A pod's namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    /// Namespace.
    pub ns: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ns, self.name)
    }
}

/// The unit the engine schedules: a pod group, or a pod outside any group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum JobKey {
    /// A `PodGroup` (namespace, name).
    Group(String, String),
    /// A lone pod.
    Pod(PodKey),
}

impl JobKey {
    /// The job's name in the engine: unique, and made of characters the model accepts
    /// (Kubernetes names never contain `_`, so the parts cannot run into each other).
    pub fn engine_name(&self) -> String {
        match self {
            JobKey::Group(ns, name) => format!("pg_{ns}_{name}"),
            JobKey::Pod(p) => format!("pod_{}_{}", p.ns, p.name),
        }
    }

    /// Namespace of the job's pods.
    pub fn namespace(&self) -> &str {
        match self {
            JobKey::Group(ns, _) => ns,
            JobKey::Pod(p) => &p.ns,
        }
    }
}

impl std::fmt::Display for JobKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobKey::Group(ns, name) => write!(f, "podgroup {ns}/{name}"),
            JobKey::Pod(p) => write!(f, "pod {p}"),
        }
    }
}

/// A pod's lifecycle as far as scheduling cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodState {
    /// Not bound, or bound and not finished.
    Live,
    /// Bound and being deleted: its containers may still run, so it holds its devices until the
    /// delete event arrives.
    Terminating,
    /// Exited 0 (phase Succeeded).
    Succeeded,
    /// Failed (its containers are stopped), or deleted before it was bound.
    Gone,
}

impl PodState {
    /// Holds (or will hold) devices: live, or bound and still terminating.
    pub fn holds(self) -> bool {
        matches!(self, PodState::Live | PodState::Terminating)
    }
}

/// What one pod asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PodDemand {
    /// CPU request, millicores.
    pub cpu_milli: u32,
    /// Memory request, MiB (rounded up).
    pub memory_mib: u64,
    /// Whole GPUs.
    pub gpus: u32,
    /// A MIG profile (`1g.10gb`), from an `nvidia.com/mig-<profile>` resource.
    pub mig: Option<String>,
    /// Allowed GPU models, from the `gantry.dev/gpu-models` annotation (comma-separated).
    pub gpu_models: Vec<String>,
    /// `spec.nodeSelector`, required node affinity and `spec.tolerations`.
    pub constraints: NodeConstraints,
}

/// What the scheduler needs of one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInfo {
    /// Namespace and name.
    pub key: PodKey,
    /// `metadata.uid`: a pod re-created under the same name is another pod.
    pub uid: String,
    /// The job it belongs to.
    pub job: JobKey,
    /// Queue of a lone pod (`gantry.dev/queue`); groups take theirs from the PodGroup.
    pub queue: Option<String>,
    /// Priority class of a lone pod (`gantry.dev/priority-class`).
    pub priority_class: Option<String>,
    /// Its demand.
    pub demand: PodDemand,
    /// `spec.nodeName`, once bound.
    pub node: Option<String>,
    /// The allocation the scheduler recorded on it, once bound by gantry.
    pub allocation: Option<NamedAlloc>,
    /// Lifecycle.
    pub state: PodState,
    /// Creation time, ms since the epoch (orders lone pods in their queue).
    pub created_ms: u64,
    /// Its labels (what sibling pods' spread constraints select on).
    pub labels: BTreeMap<String, String>,
    /// Its `topologySpreadConstraints` on `kubernetes.io/hostname` that must hold.
    pub spread: Vec<HostSpread>,
    /// Its `controller.kubernetes.io/pod-deletion-cost` annotation, as written.
    pub deletion_cost: Option<String>,
}

/// The annotation a ReplicaSet reads to choose which pods to delete first (lowest first).
pub const DELETION_COST_ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The label key of a node's name.
pub const HOSTNAME_KEY: &str = "kubernetes.io/hostname";

/// A `topologySpreadConstraint` on `kubernetes.io/hostname` with `whenUnsatisfiable:
/// DoNotSchedule`: among the nodes, the pods matching `match_labels` (in the pod's namespace)
/// may differ by at most `max_skew` from the node with the fewest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpread {
    /// `maxSkew`.
    pub max_skew: u32,
    /// `labelSelector.matchLabels`.
    pub match_labels: BTreeMap<String, String>,
}

impl HostSpread {
    /// Whether a pod with `labels` counts for this constraint.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// A pod's spread constraints gantry enforces: those on `kubernetes.io/hostname` that must hold
/// (`DoNotSchedule`, the default). `ScheduleAnyway` ones are preferences and other topology keys
/// are not read.
///
/// # Errors
/// A constraint gantry would have to enforce but cannot read: a `matchExpressions` selector or
/// a `maxSkew` below 1, naming the field.
fn spread_of(pod: &Pod) -> Result<Vec<HostSpread>, String> {
    let mut out = Vec::new();
    let Some(spec) = &pod.spec else {
        return Ok(out);
    };
    for (i, c) in spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .enumerate()
    {
        if c.topology_key != HOSTNAME_KEY || c.when_unsatisfiable == "ScheduleAnyway" {
            continue;
        }
        let field = format!("spec.topologySpreadConstraints[{i}]");
        if c.max_skew < 1 {
            return Err(format!(
                "{field}.maxSkew: must be at least 1, got {}",
                c.max_skew
            ));
        }
        let selector = c.label_selector.as_ref();
        if selector
            .and_then(|s| s.match_expressions.as_ref())
            .is_some_and(|e| !e.is_empty())
        {
            return Err(format!(
                "{field}.labelSelector.matchExpressions: gantry reads matchLabels only"
            ));
        }
        out.push(HostSpread {
            max_skew: c.max_skew as u32,
            match_labels: selector
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default()
                .into_iter()
                .collect(),
        });
    }
    Ok(out)
}

/// Nodes a pod may not go to under its host spread constraints: those where one more matching
/// pod would put the node more than `max_skew` above the node with the fewest. `counts` holds,
/// per constraint, the matching pods already on each of `nodes` (the nodes the pod may use).
pub fn spread_excluded(
    spread: &[HostSpread],
    nodes: &[String],
    counts: &[BTreeMap<String, u32>],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (c, count) in spread.iter().zip(counts) {
        let of = |n: &String| count.get(n).copied().unwrap_or(0);
        let Some(min) = nodes.iter().map(of).min() else {
            continue;
        };
        for n in nodes {
            if of(n) + 1 - min > c.max_skew && !out.contains(n) {
                out.push(n.clone());
            }
        }
    }
    out.sort();
    out
}

/// Kubernetes CPU quantity (`2`, `500m`, `1.5`) in millicores.
///
/// # Errors
/// Not a Kubernetes quantity.
pub fn cpu_milli(q: &str) -> Result<u32, String> {
    let v = quantity_value(q)?;
    Ok((v * 1000.0).ceil().min(f64::from(u32::MAX)) as u32)
}

/// Kubernetes memory quantity (`64Gi`, `512M`, `1073741824`: bytes) in MiB, rounded up.
///
/// # Errors
/// Not a Kubernetes quantity.
pub fn memory_mib(q: &str) -> Result<u64, String> {
    let v = quantity_value(q)?;
    Ok((v / (1024.0 * 1024.0)).ceil() as u64)
}

/// The value of a Kubernetes quantity in base units.
fn quantity_value(q: &str) -> Result<f64, String> {
    let s = q.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{q:?} is not a Kubernetes quantity"))?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..]
                .parse()
                .map_err(|_| format!("{q:?} has a bad exponent"))?;
            10f64.powi(exp)
        }
        other => return Err(format!("{q:?} has an unknown suffix {other:?}")),
    };
    let v = v * scale;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{q:?} must be a finite, non-negative quantity"));
    }
    Ok(v)
}

fn whole(q: &KubeQuantity, what: &str) -> Result<u32, String> {
    let v = quantity_value(&q.0).map_err(|e| format!("{what}: {e}"))?;
    if v.fract() != 0.0 {
        return Err(format!("{what}: {} is not a whole number", q.0));
    }
    Ok(v as u32)
}

/// Sum the pod's containers' requests (limits when a request is absent, as Kubernetes
/// defaults them), take the larger of that and any init container's, and read the GPU
/// resources from limits.
fn demand_of(pod: &Pod) -> Result<PodDemand, String> {
    let Some(spec) = &pod.spec else {
        return Err("spec: missing".into());
    };
    let mut d = PodDemand::default();
    let mut migs: BTreeMap<String, u32> = BTreeMap::new();
    let mut init = PodDemand::default();
    let all = spec
        .containers
        .iter()
        .map(|c| (false, c))
        .chain(spec.init_containers.iter().flatten().map(|c| (true, c)));
    for (is_init, c) in all {
        let res = c.resources.as_ref();
        let get = |name: &str| {
            res.and_then(|r| r.requests.as_ref().and_then(|m| m.get(name)))
                .or_else(|| res.and_then(|r| r.limits.as_ref().and_then(|m| m.get(name))))
        };
        let field = |what: &str| format!("spec.containers[{}].resources.{what}", c.name);
        let cpu = get("cpu")
            .map(|q| cpu_milli(&q.0).map_err(|e| format!("{}: {e}", field("cpu"))))
            .transpose()?
            .unwrap_or(0);
        let mem = get("memory")
            .map(|q| memory_mib(&q.0).map_err(|e| format!("{}: {e}", field("memory"))))
            .transpose()?
            .unwrap_or(0);
        let target = if is_init { &mut init } else { &mut d };
        if is_init {
            target.cpu_milli = target.cpu_milli.max(cpu);
            target.memory_mib = target.memory_mib.max(mem);
        } else {
            target.cpu_milli += cpu;
            target.memory_mib += mem;
        }
        for (name, q) in res.and_then(|r| r.limits.as_ref()).into_iter().flatten() {
            if name == GPU_RESOURCE {
                d.gpus += whole(q, &field(&format!("limits[{name}]")))?;
            } else if let Some(profile) = name.strip_prefix(MIG_RESOURCE_PREFIX) {
                *migs.entry(profile.to_string()).or_default() +=
                    whole(q, &field(&format!("limits[{name}]")))?;
            }
        }
    }
    d.cpu_milli = d.cpu_milli.max(init.cpu_milli);
    d.memory_mib = d.memory_mib.max(init.memory_mib);
    migs.retain(|_, n| *n > 0);
    match (migs.len(), d.gpus) {
        (0, _) => {}
        (1, 0) => {
            let (profile, n) = migs.into_iter().next().unwrap_or_default();
            if n != 1 {
                return Err(format!(
                    "spec.containers: {n} {MIG_RESOURCE_PREFIX}{profile} requested; gantry places one MIG slice per pod"
                ));
            }
            d.mig = Some(profile);
        }
        _ => {
            return Err(format!(
                "spec.containers: asks for {} and MIG slices together; a pod takes whole GPUs or one MIG slice",
                if d.gpus > 0 { "whole GPUs" } else { "several MIG profiles" }
            ))
        }
    }
    Ok(d)
}

fn label<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

/// An object's creation time in ms since the epoch (0 when unset).
pub fn created_ms(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.as_millisecond().max(0) as u64)
        .unwrap_or(0)
}

/// Read a pod.
///
/// # Errors
/// A reason naming the field: no name, a malformed resource quantity, a demand gantry cannot
/// place (several MIG slices), or a malformed allocation annotation.
pub fn pod_info(pod: &Pod) -> Result<PodInfo, String> {
    let name = pod
        .metadata
        .name
        .clone()
        .ok_or_else(|| "metadata.name: missing".to_string())?;
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let key = PodKey { ns, name };
    let job = match label(pod, POD_GROUP_LABEL) {
        Some(g) => JobKey::Group(key.ns.clone(), g.to_string()),
        None => JobKey::Pod(key.clone()),
    };
    let mut demand = demand_of(pod)?;
    demand.constraints = constraints_of(pod)?;
    demand.gpu_models = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(GPU_MODELS_ANNOTATION))
        .map(|v| {
            v.split(',')
                .map(gantry_model::normalize_model)
                .filter(|m| !m.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty());
    let allocation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOCATION_ANNOTATION))
        .map(|v| {
            serde_json::from_str::<NamedAlloc>(v).map_err(|e| {
                format!("metadata.annotations[{ALLOCATION_ANNOTATION}]: malformed: {e}")
            })
        })
        .transpose()?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let state = match (
        phase,
        pod.metadata.deletion_timestamp.is_some(),
        node.is_some(),
    ) {
        (Some("Failed"), _, _) => PodState::Gone,
        (Some("Succeeded"), _, _) => PodState::Succeeded,
        (_, true, true) => PodState::Terminating,
        (_, true, false) => PodState::Gone,
        _ => PodState::Live,
    };
    let created_ms = created_ms(&pod.metadata);
    Ok(PodInfo {
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        queue: label(pod, QUEUE_LABEL).map(str::to_string),
        priority_class: label(pod, PRIORITY_CLASS_LABEL).map(str::to_string),
        key,
        job,
        demand,
        node,
        allocation,
        state,
        created_ms,
        labels: pod
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        spread: spread_of(pod)?,
        deletion_cost: pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(DELETION_COST_ANNOTATION).cloned()),
    })
}

/// A node as the engine sees it, and whether it may take new pods.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeView {
    /// The model node (devices from the inventory; none without one).
    pub node: Node,
    /// Ready, schedulable and not tainted `NoSchedule`/`NoExecute` by the node lifecycle.
    pub ready: bool,
}

/// A Kubernetes Node and its inventory → the engine's node.
///
/// Allocatable CPU and memory come from the Node's status, labels from its labels, devices
/// from the inventory, taints from `spec.taints`. A node is not ready when its `Ready` condition
/// is not `True`, when it is cordoned (`spec.unschedulable`), or when it carries the
/// `node.kubernetes.io/unreachable` or `not-ready` taints (read as readiness, not as taints).
///
/// # Errors
/// A malformed allocatable quantity, naming the field.
pub fn node_of(node: &KubeNode, inventory: Option<&NodeInventorySpec>) -> Result<NodeView, String> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let alloc = node.status.as_ref().and_then(|s| s.allocatable.as_ref());
    let cpu = alloc
        .and_then(|a| a.get("cpu"))
        .map(|q| cpu_milli(&q.0).map_err(|e| format!("status.allocatable.cpu: {e}")))
        .transpose()?
        .unwrap_or(0);
    let mem = alloc
        .and_then(|a| a.get("memory"))
        .map(|q| memory_mib(&q.0).map_err(|e| format!("status.allocatable.memory: {e}")))
        .transpose()?
        .unwrap_or(0);
    let ready_condition = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True");
    let cordoned = node
        .spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false);
    let all_taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .cloned()
        .unwrap_or_default();
    let lifecycle_taint = all_taints
        .iter()
        .any(|t| LIFECYCLE_TAINTS.contains(&t.key.as_str()));
    let mut taints = Vec::new();
    for (i, t) in all_taints.iter().enumerate() {
        if LIFECYCLE_TAINTS.contains(&t.key.as_str()) {
            continue;
        }
        taints.push(Taint {
            key: t.key.clone(),
            value: t.value.clone().unwrap_or_default(),
            effect: effect_of(&t.effect, &format!("spec.taints[{i}].effect"))?,
        });
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    Ok(NodeView {
        node: Node {
            name,
            cpu_milli: cpu,
            memory_mib: mem,
            labels: labels.into_iter().collect(),
            taints,
            devices: inventory.map(|i| i.devices.clone()).unwrap_or_default(),
        },
        ready: ready_condition && !cordoned && !lifecycle_taint,
    })
}

/// Queue objects → queue specs (validation is the model's, when the tree is built).
pub fn queue_specs<'a>(queues: impl IntoIterator<Item = &'a Queue>) -> Vec<QueueSpec> {
    queues
        .into_iter()
        .map(|q| QueueSpec {
            name: q.metadata.name.clone().unwrap_or_default(),
            parent: q.spec.parent.clone(),
            weight: q.spec.weight.unwrap_or(1.0),
            unlisted_flavors: q.spec.unlisted_flavors,
            quotas: q
                .spec
                .quotas
                .iter()
                .map(|(flavor, fq)| {
                    (
                        flavor.clone(),
                        QuotaSpec {
                            nominal: Quantity::Number(fq.nominal),
                            borrowing_limit: fq.borrowing_limit.map(Quantity::Number),
                            lending_limit: fq.lending_limit.map(Quantity::Number),
                        },
                    )
                })
                .collect(),
        })
        .collect()
}

/// A model field path of the queue at `index` (`queues[3].quotas.h100-80gb.lending_limit`) as
/// the Queue object names it (`spec.quotas.h100-80gb.lendingLimit`).
fn crd_field(rest: &str) -> String {
    let rest = rest.trim_start_matches('.');
    let camel: Vec<String> = rest
        .split('.')
        .map(|part| {
            let mut out = String::new();
            let mut up = false;
            for c in part.chars() {
                if c == '_' {
                    up = true;
                } else if up {
                    out.extend(c.to_uppercase());
                    up = false;
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect();
    match camel.join(".").as_str() {
        "" => "spec".to_string(),
        "name" => "metadata.name".to_string(),
        other => format!("spec.{other}"),
    }
}

/// Queue objects → the queue tree, leaving out every Queue that is not valid (and the queues
/// under it) instead of refusing the whole tree: one bad Queue must not freeze every other
/// Queue's changes. Returns the tree and, per Queue left out, why, naming it and its field
/// (`Queue team-b: spec.weight: must be a positive number, got -1`).
pub fn queue_tree<'a>(
    queues: impl IntoIterator<Item = &'a Queue>,
) -> (QueueTree, BTreeMap<String, String>) {
    let mut specs = queue_specs(queues);
    let mut invalid: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let built = QueuesSpec {
            queues: specs.clone(),
            priority_classes: None,
        }
        .build();
        let err = match built {
            Ok(tree) => return (tree, invalid),
            Err(e) => e,
        };
        // The field names the queue by its index: `queues[3].weight`.
        let field = err.field().unwrap_or_default().to_string();
        let index = field
            .strip_prefix("queues[")
            .and_then(|r| r.split_once(']'))
            .and_then(|(i, rest)| i.parse::<usize>().ok().map(|i| (i, rest.to_string())));
        let Some((i, rest)) = index.filter(|(i, _)| *i < specs.len()) else {
            // Not about one queue (not expected): keep no queue rather than loop.
            let reason = err.to_string();
            for q in specs.drain(..) {
                invalid.insert(q.name.clone(), reason.clone());
            }
            continue;
        };
        let bad = specs.remove(i);
        let reason = match &err {
            gantry_model::ModelError::Invalid { reason, .. } => reason.clone(),
            other => other.to_string(),
        };
        invalid.insert(
            bad.name.clone(),
            format!("Queue {}: {}: {reason}", bad.name, crd_field(&rest)),
        );
    }
}

/// A job spec for the live pods of one job, and for each task (group, index) the pod it is.
#[derive(Debug, Clone, PartialEq)]
pub struct JobTranslation {
    /// The spec to validate and submit.
    pub spec: JobSpec,
    /// `tasks[group][index]` is the pod of that task.
    pub tasks: Vec<Vec<PodKey>>,
    /// Submission time for queue order: the group's (or pod's) creation time.
    pub submitted_ms: u64,
}

impl JobTranslation {
    /// The task (group, index) a pod is, if it is one.
    pub fn task_of(&self, pod: &PodKey) -> Option<(u16, u32)> {
        self.tasks.iter().enumerate().find_map(|(g, pods)| {
            pods.iter()
                .position(|p| p == pod)
                .map(|i| (g as u16, i as u32))
        })
    }
}

/// Translate the live pods of a job (sorted by name for stable task indexes). Pods with the
/// same demand form one task group; a group job's gang size is its `minMember`.
///
/// # Errors
/// A reason naming the field when the job cannot be a spec: a group pod before its PodGroup
/// exists, a lone pod without a queue label, or no pods.
pub fn job_spec(
    key: &JobKey,
    pods: &[&PodInfo],
    group: Option<(&PodGroupSpec, u64)>,
) -> Result<JobTranslation, String> {
    if pods.is_empty() {
        return Err("no live pods".into());
    }
    let mut by_demand: BTreeMap<&PodDemand, Vec<&PodInfo>> = BTreeMap::new();
    for p in pods {
        by_demand.entry(&p.demand).or_default().push(p);
    }
    let mut tasks = Vec::new();
    let mut groups = Vec::new();
    for (i, (d, mut ps)) in by_demand.into_iter().enumerate() {
        ps.sort_by(|a, b| a.key.cmp(&b.key));
        groups.push(TaskGroupSpec {
            name: Some(format!("g{i}")),
            count: ps.len() as u32,
            cpu: (d.cpu_milli > 0).then(|| Quantity::Text(format!("{}m", d.cpu_milli))),
            memory: (d.memory_mib > 0).then(|| Quantity::Text(format!("{}Mi", d.memory_mib))),
            gpus: (d.gpus > 0).then_some(d.gpus),
            gpu_fraction: None,
            mig: d.mig.clone(),
            gpu_models: d.gpu_models.clone(),
            nvlink: false,
            node_selector: d.constraints.node_selector.clone(),
            node_affinity: d.constraints.node_affinity.clone(),
            tolerations: d.constraints.tolerations.clone(),
        });
        tasks.push(ps.iter().map(|p| p.key.clone()).collect());
    }
    let first = pods[0];
    let (queue, kind, priority_class, min_available, placement, runtime, submitted_ms) =
        match (key, group) {
            (JobKey::Group(..), Some((g, created))) => (
                g.queue.clone(),
                JobKind::Training,
                g.priority_class_name.clone(),
                Some(g.min_member.min(pods.len() as u32).max(1)),
                g.placement.clone(),
                g.expected_runtime_seconds,
                created,
            ),
            (JobKey::Group(ns, name), None) => {
                return Err(format!(
                    "metadata.labels[{POD_GROUP_LABEL}]: PodGroup {ns}/{name} does not exist"
                ))
            }
            (JobKey::Pod(_), _) => (
                first.queue.clone().ok_or_else(|| {
                    format!("metadata.labels[{QUEUE_LABEL}]: missing; a pod outside a PodGroup names its queue")
                })?,
                JobKind::Batch,
                first.priority_class.clone(),
                None,
                None,
                None,
                first.created_ms,
            ),
        };
    Ok(JobTranslation {
        spec: JobSpec {
            name: key.engine_name(),
            queue,
            kind,
            priority_class,
            tasks: groups,
            min_available,
            placement,
            expected_runtime: runtime.map(|s| Quantity::Text(format!("{s}s"))),
            replicas: None,
            spread: None,
            command: Vec::new(),
            env: Default::default(),
            autoscale: None,
            port: None,
            readiness: None,
        },
        tasks,
        submitted_ms,
    })
}

/// The annotations a bound pod carries: its full allocation (for recovery) and the uuids its
/// containers may see (for the device plugin's hand-off).
///
/// # Errors
/// Encoding failed (not expected).
pub fn bind_annotations(
    alloc: &NamedAlloc,
    devices: &[gantry_model::Device],
) -> Result<BTreeMap<String, String>, String> {
    let (uuids, _) = alloc.visible_uuids(devices);
    let mut out = BTreeMap::new();
    out.insert(
        ALLOCATION_ANNOTATION.to_string(),
        serde_json::to_string(alloc).map_err(|e| e.to_string())?,
    );
    if !uuids.is_empty() {
        out.insert(
            DEVICES_ANNOTATION.to_string(),
            serde_json::to_string(&uuids).map_err(|e| e.to_string())?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(v: serde_json::Value) -> Queue {
        serde_json::from_value(v).expect("queue")
    }

    #[test]
    fn a_bad_queue_is_left_out_by_name_and_the_rest_of_the_tree_stands() {
        let queues = [
            q(serde_json::json!({"metadata": {"name": "research"}, "spec": {}})),
            q(serde_json::json!({"metadata": {"name": "team-a"},
                "spec": {"parent": "research", "quotas": {"h100-80gb": {"nominal": 8}}}})),
            q(serde_json::json!({"metadata": {"name": "team-b"},
                "spec": {"parent": "research", "weight": -1.0}})),
            q(serde_json::json!({"metadata": {"name": "team-c"},
                "spec": {"parent": "research",
                         "quotas": {"h100-80gb": {"nominal": 2, "lendingLimit": 4}}}})),
            q(serde_json::json!({"metadata": {"name": "sub-b"}, "spec": {"parent": "team-b"}})),
        ];
        let (tree, invalid) = queue_tree(&queues);
        let names: Vec<&str> = tree.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(names, ["research", "team-a"]);
        assert_eq!(
            invalid["team-b"],
            "Queue team-b: spec.weight: must be a positive number, got -1"
        );
        assert!(
            invalid["team-c"].starts_with("Queue team-c: spec.quotas.h100-80gb.lendingLimit: "),
            "{}",
            invalid["team-c"]
        );
        assert_eq!(
            invalid["sub-b"],
            "Queue sub-b: spec.parent: unknown queue \"team-b\""
        );
    }
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn gpu_pod(name: &str, labels: serde_json::Value, limits: serde_json::Value) -> Pod {
        pod(json!({
            "metadata": {"name": name, "namespace": "ml", "labels": labels,
                         "creationTimestamp": "2026-11-21T10:00:00Z"},
            "spec": {"schedulerName": "gantry", "containers": [
                {"name": "main", "resources": {"requests": {"cpu": "4", "memory": "32Gi"}, "limits": limits}}
            ]}
        }))
    }

    #[test]
    fn quantities_follow_kubernetes_units() {
        // (quantity, millicores, MiB); `Err(())` where it must be refused.
        type Case = (&'static str, Result<u32, ()>, Result<u64, ()>);
        let cases: &[Case] = &[
            ("2", Ok(2000), Ok(1)),
            ("500m", Ok(500), Ok(1)),
            ("1.5", Ok(1500), Ok(1)),
            ("64Gi", Ok(u32::MAX), Ok(65536)),
            ("128974848", Ok(u32::MAX), Ok(123)),
            ("1e9", Ok(u32::MAX), Ok(954)),
            ("512M", Ok(u32::MAX), Ok(489)),
            ("12x", Err(()), Err(())),
            ("", Err(()), Err(())),
        ];
        for (q, cpu, mem) in cases {
            assert_eq!(cpu_milli(q).map_err(|_| ()), *cpu, "cpu {q}");
            assert_eq!(memory_mib(q).map_err(|_| ()), *mem, "memory {q}");
        }
    }

    #[test]
    fn pods_translate_to_demands_jobs_and_errors_that_name_the_field() {
        type Case = (&'static str, Pod, Result<(JobKey, PodDemand), &'static str>);
        let cases: Vec<Case> = vec![
            (
                "gang member with 8 GPUs",
                gpu_pod(
                    "w-0",
                    json!({POD_GROUP_LABEL: "llm"}),
                    json!({"nvidia.com/gpu": "8"}),
                ),
                Ok((
                    JobKey::Group("ml".into(), "llm".into()),
                    PodDemand {
                        cpu_milli: 4000,
                        memory_mib: 32768,
                        gpus: 8,
                        mig: None,
                        ..Default::default()
                    },
                )),
            ),
            (
                "lone pod with a MIG slice",
                gpu_pod(
                    "svc",
                    json!({QUEUE_LABEL: "team-b"}),
                    json!({"nvidia.com/mig-1g.10gb": "1"}),
                ),
                Ok((
                    JobKey::Pod(PodKey {
                        ns: "ml".into(),
                        name: "svc".into(),
                    }),
                    PodDemand {
                        cpu_milli: 4000,
                        memory_mib: 32768,
                        gpus: 0,
                        mig: Some("1g.10gb".into()),
                        ..Default::default()
                    },
                )),
            ),
            (
                "fractional GPU",
                gpu_pod("x", json!({}), json!({"nvidia.com/gpu": "0.5"})),
                Err("limits[nvidia.com/gpu]: 0.5 is not a whole number"),
            ),
            (
                "whole GPUs and MIG together",
                gpu_pod(
                    "x",
                    json!({}),
                    json!({"nvidia.com/gpu": "1", "nvidia.com/mig-1g.10gb": "1"}),
                ),
                Err("a pod takes whole GPUs or one MIG slice"),
            ),
            (
                "two MIG slices",
                gpu_pod("x", json!({}), json!({"nvidia.com/mig-1g.10gb": "2"})),
                Err("one MIG slice per pod"),
            ),
            (
                "bad cpu",
                pod(json!({"metadata": {"name": "x"}, "spec": {"containers": [
                    {"name": "c", "resources": {"requests": {"cpu": "lots"}}}]}})),
                Err("spec.containers[c].resources.cpu"),
            ),
        ];
        for (what, p, want) in cases {
            let got = pod_info(&p);
            match (got, want) {
                (Ok(info), Ok((job, demand))) => {
                    assert_eq!(info.job, job, "{what}");
                    assert_eq!(info.demand, demand, "{what}");
                    assert_eq!(info.state, PodState::Live, "{what}");
                }
                (Err(e), Err(needle)) => assert!(e.contains(needle), "{what}: {e}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn init_containers_count_by_their_maximum_and_phases_map_to_states() {
        let p = pod(json!({
            "metadata": {"name": "x", "deletionTimestamp": "2026-11-21T10:00:00Z"},
            "spec": {"containers": [
                {"name": "a", "resources": {"requests": {"cpu": "1"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1"}}}],
              "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "3"}}}]}
        }));
        let info = pod_info(&p).unwrap();
        assert_eq!(info.demand.cpu_milli, 3000);
        assert_eq!(info.state, PodState::Gone, "deleted before it was bound");
        let mut bound = p.clone();
        bound.spec.as_mut().unwrap().node_name = Some("n0".into());
        assert_eq!(
            pod_info(&bound).unwrap().state,
            PodState::Terminating,
            "bound and deleted: still holds its devices"
        );
        let mut done = p.clone();
        done.metadata.deletion_timestamp = None;
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        assert_eq!(pod_info(&done).unwrap().state, PodState::Succeeded);
    }

    #[test]
    fn nodes_are_ready_only_when_ready_uncordoned_and_untainted() {
        let base = json!({
            "metadata": {"name": "n1", "labels": {"rack": "r1"}},
            "spec": {},
            "status": {"allocatable": {"cpu": "96", "memory": "1Ti"},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let cases = [
            (json!({}), true),
            (json!({"spec": {"unschedulable": true}}), false),
            (
                json!({"spec": {"taints": [{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]}}),
                false,
            ),
            (
                json!({"status": {"allocatable": {"cpu": "96", "memory": "1Ti"},
                               "conditions": [{"type": "Ready", "status": "Unknown"}]}}),
                false,
            ),
        ];
        for (patch, ready) in cases {
            let mut v = base.clone();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            let n: KubeNode = serde_json::from_value(v).unwrap();
            let view = node_of(&n, None).unwrap();
            assert_eq!(view.ready, ready, "{patch}");
            assert_eq!(view.node.cpu_milli, 96_000);
            assert_eq!(view.node.memory_mib, 1024 * 1024);
            assert_eq!(view.node.labels["rack"], "r1");
        }
    }

    #[test]
    fn a_gang_becomes_one_job_with_task_groups_by_demand() {
        let mut infos: Vec<PodInfo> = (0..4)
            .map(|i| {
                pod_info(&gpu_pod(
                    &format!("w-{i}"),
                    json!({POD_GROUP_LABEL: "llm"}),
                    json!({"nvidia.com/gpu": if i == 0 { "1" } else { "8" }}),
                ))
                .unwrap()
            })
            .collect();
        infos.reverse();
        let refs: Vec<&PodInfo> = infos.iter().collect();
        let key = JobKey::Group("ml".into(), "llm".into());
        let pg = PodGroupSpec {
            min_member: 4,
            queue: "team-a".into(),
            placement: Some("nvlink-domain".into()),
            ..Default::default()
        };
        let t = job_spec(&key, &refs, Some((&pg, 5))).unwrap();
        assert_eq!(t.spec.name, "pg_ml_llm");
        assert_eq!(t.spec.min_available, Some(4));
        assert_eq!(t.spec.tasks.len(), 2);
        assert_eq!(t.spec.tasks[0].gpus, Some(1));
        assert_eq!(t.spec.tasks[1].count, 3);
        assert_eq!(
            t.task_of(&PodKey {
                ns: "ml".into(),
                name: "w-2".into()
            }),
            Some((1, 1))
        );
        let no_group = job_spec(&key, &refs, None).unwrap_err();
        assert!(
            no_group.contains("PodGroup ml/llm does not exist"),
            "{no_group}"
        );
        let lone = pod_info(&gpu_pod("solo", json!({}), json!({}))).unwrap();
        let e = job_spec(&lone.job, &[&lone], None).unwrap_err();
        assert!(e.starts_with("metadata.labels[gantry.dev/queue]"), "{e}");
    }
}
