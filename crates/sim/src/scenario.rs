//! gantry scenarios: YAML in the spirit of kube-scheduler's `scheduler_perf` — a list of
//! operations run on a virtual clock, with named size variants.
//!
//! ```yaml
//! name: mixed-training
//! seed: 7
//! variants:                      # `$name` anywhere below is replaced by the variant's value
//!   small: {nodes: 4, jobs: 40}
//!   large: {nodes: 512, jobs: 20000}
//! queues:                        # a queues document (optional: one unlimited queue `default`)
//!   queues:
//!     - {name: research}
//!     - {name: team-a, parent: research, quotas: {h100-80gb: {nominal: 16}}}
//!     - {name: team-b, parent: research, quotas: {h100-80gb: {nominal: 16}}}
//! ops:
//!   - add_nodes: {name: dgx, count: $nodes, gpu_model: h100-80gb, gpus_per_node: 8, nodes_per_rack: 8, cpu: 224, memory: 2Ti}
//!   - submit:
//!       count: $jobs
//!       interarrival: {exp: 2m}
//!       queue: {choice: {team-a: 2, team-b: 1}}
//!       tasks: {choice: {"1": 6, "2": 2, "4": 1}}   # tasks per job: a gang
//!       gpus: {choice: {"1": 3, "8": 1}}            # whole GPUs per task
//!       runtime: {lognormal: {median: 20m, sigma: 1}}
//!   - advance: 2h
//!   - fail_node: dgx-1
//!   - advance: 30m
//!   - recover_node: dgx-1
//!   - churn: {every: 10m, for: 4h, downtime: 5m}
//! ```
//!
//! Operations, in order, on a clock that starts at 0:
//! - `add_nodes`: a node pool (the cluster spec's pool fields). Nodes added after time 0 exist
//!   from the start but are down until the current time (the engine's node readiness).
//! - `submit`: `count` jobs whose arrivals start at the current time, spaced by `interarrival`;
//!   each draws its queue, gang size (`tasks`), GPUs per task (`gpus`, or `fraction` of one
//!   shared GPU, or a `mig` profile), `runtime`, and optional `cpu`, `memory`, `gpu_models`,
//!   `nvlink`, `placement`, `kind`, `priority_class`. The runtime is also the expected runtime.
//! - `churn`: from the current time, every `every` for `for`, a random up node fails and comes
//!   back `downtime` later; its jobs are requeued whole.
//! - `advance`: move the clock. Only `advance` moves it: `submit` and `churn` run from the
//!   current time in the background.
//! - `fail_node`, `recover_node`: a node by name, at the current time.
//!
//! Distributions: `{const: X}`, `{uniform: [a, b]}`, `{exp: mean}`, `{lognormal: {median, sigma}}`
//! and `{choice: {value: weight, …}}`; durations take units (`90s`, `30m`, `2h`). All draws come
//! from the scenario's `seed`, so a scenario replays identically.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use gantry_model::doc::from_yaml;
use gantry_model::quantity::Quantity;
use gantry_model::{ClusterSpec, JobKind, JobSpec, NodePool, QueueTree, QueuesSpec, TaskGroupSpec};
use serde::Deserialize;

use crate::error::{Result, SimError};
use crate::rng::Rng;
use crate::workload::{NodeOp, TraceJob, Workload};

/// A distribution as written: a map with exactly one key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct DistSpec {
    #[serde(default, rename = "const")]
    constant: Option<Quantity>,
    #[serde(default)]
    uniform: Option<[Quantity; 2]>,
    #[serde(default)]
    exp: Option<Quantity>,
    #[serde(default)]
    lognormal: Option<LogNormal>,
    #[serde(default)]
    choice: Option<BTreeMap<String, f64>>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogNormal {
    median: Quantity,
    sigma: f64,
}

impl TryFrom<DistSpec> for Dist {
    type Error = String;
    fn try_from(d: DistSpec) -> std::result::Result<Dist, String> {
        let mut v = Vec::new();
        if let Some(c) = d.constant {
            v.push(Dist::Const(c));
        }
        if let Some(u) = d.uniform {
            v.push(Dist::Uniform(u));
        }
        if let Some(e) = d.exp {
            v.push(Dist::Exp(e));
        }
        if let Some(l) = d.lognormal {
            v.push(Dist::Lognormal {
                median: l.median,
                sigma: l.sigma,
            });
        }
        if let Some(c) = d.choice {
            v.push(Dist::Choice(c));
        }
        match v.len() {
            1 => Ok(v.remove(0)),
            _ => Err("a distribution is one of {const: x}, {uniform: [a, b]}, {exp: mean}, {lognormal: {median: m, sigma: s}}, {choice: {value: weight}}".into()),
        }
    }
}

/// A distribution.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "DistSpec")]
pub enum Dist {
    /// Always this value.
    Const(Quantity),
    /// Uniform between two values.
    Uniform([Quantity; 2]),
    /// Exponential with this mean.
    Exp(Quantity),
    /// Log-normal with this median and shape.
    Lognormal {
        /// Median.
        median: Quantity,
        /// Shape (standard deviation of the log).
        sigma: f64,
    },
    /// One of the keys, with the values as weights.
    Choice(BTreeMap<String, f64>),
}

/// One `submit` operation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// Jobs to submit.
    pub count: u32,
    /// Time between arrivals (default 0: all at once).
    #[serde(default)]
    pub interarrival: Option<Dist>,
    /// Queue of each job (default `default`).
    #[serde(default)]
    pub queue: Option<Dist>,
    /// Tasks per job; all must start together (default 1).
    #[serde(default)]
    pub tasks: Option<Dist>,
    /// Whole GPUs per task.
    #[serde(default)]
    pub gpus: Option<Dist>,
    /// A fraction of one shared GPU per task, in (0, 1).
    #[serde(default)]
    pub fraction: Option<Dist>,
    /// A MIG profile per task (`1g.10gb`).
    #[serde(default)]
    pub mig: Option<Dist>,
    /// How long each job runs.
    pub runtime: Dist,
    /// CPU per task.
    #[serde(default)]
    pub cpu: Option<Quantity>,
    /// Memory per task.
    #[serde(default)]
    pub memory: Option<Quantity>,
    /// Allowed models.
    #[serde(default)]
    pub gpu_models: Vec<String>,
    /// Multi-GPU tasks inside one NVLink domain.
    #[serde(default)]
    pub nvlink: bool,
    /// Gang placement (`node`, `nvlink-domain`, `label:rack`).
    #[serde(default)]
    pub placement: Option<String>,
    /// Job kind (default batch).
    #[serde(default)]
    pub kind: JobKind,
    /// Priority class (default from the kind).
    #[serde(default)]
    pub priority_class: Option<String>,
}

/// Node churn.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Churn {
    /// Time between failures.
    pub every: Quantity,
    /// How long churn goes on.
    #[serde(rename = "for")]
    pub duration: Quantity,
    /// How long a failed node stays down.
    pub downtime: Quantity,
}

/// One operation as written: a map with exactly one key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpSpec {
    #[serde(default)]
    add_nodes: Option<NodePool>,
    #[serde(default)]
    submit: Option<Box<Submit>>,
    #[serde(default)]
    advance: Option<Quantity>,
    #[serde(default)]
    fail_node: Option<String>,
    #[serde(default)]
    recover_node: Option<String>,
    #[serde(default)]
    churn: Option<Churn>,
}

impl TryFrom<OpSpec> for Op {
    type Error = String;
    fn try_from(o: OpSpec) -> std::result::Result<Op, String> {
        let mut ops = Vec::new();
        if let Some(p) = o.add_nodes {
            ops.push(Op::AddNodes(p));
        }
        if let Some(s) = o.submit {
            ops.push(Op::Submit(s));
        }
        if let Some(a) = o.advance {
            a.duration_ms().map_err(|r| format!("advance: {r}"))?;
            ops.push(Op::Advance(a));
        }
        if let Some(n) = o.fail_node {
            ops.push(Op::FailNode(n));
        }
        if let Some(n) = o.recover_node {
            ops.push(Op::RecoverNode(n));
        }
        if let Some(c) = o.churn {
            ops.push(Op::Churn(c));
        }
        match ops.len() {
            1 => Ok(ops.remove(0)),
            0 => Err("an operation needs one of add_nodes, submit, advance, fail_node, recover_node, churn".into()),
            _ => Err("one operation per list item: split these keys into separate items".into()),
        }
    }
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "OpSpec")]
pub enum Op {
    /// Add a node pool.
    AddNodes(NodePool),
    /// Submit jobs.
    Submit(Box<Submit>),
    /// Move the clock.
    Advance(Quantity),
    /// A node fails.
    FailNode(String),
    /// A node comes back.
    RecoverNode(String),
    /// Random node failures.
    Churn(Churn),
}

/// A scenario document.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Name.
    pub name: String,
    /// Seed of every draw.
    #[serde(default)]
    pub seed: u64,
    /// Size variants: name → variables.
    #[serde(default)]
    pub variants: BTreeMap<String, BTreeMap<String, serde_yaml::Value>>,
    /// The variant used when none is asked for (default: the first by name).
    #[serde(default)]
    pub default_variant: Option<String>,
    /// Nodes present from the start (optional).
    #[serde(default)]
    pub cluster: Option<ClusterSpec>,
    /// Queues (optional: one unlimited queue `default`).
    #[serde(default)]
    pub queues: Option<QueuesSpec>,
    /// Operations.
    pub ops: Vec<Op>,
}

#[derive(Debug, Deserialize)]
struct Variants {
    #[serde(default)]
    variants: BTreeMap<String, BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    default_variant: Option<String>,
}

/// 1-based line and column of the first occurrence of `needle` at or after line `from`.
fn locate(text: &str, needle: &str, from: usize) -> (usize, usize) {
    for (i, l) in text.lines().enumerate().skip(from.saturating_sub(1)) {
        if let Some(c) = l.find(needle) {
            return (i + 1, l[..c].chars().count() + 1);
        }
    }
    (1, 1)
}

/// 1-based line of the `i`-th item of the top-level `ops:` list (1 when not found).
fn op_line(text: &str, i: usize) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.starts_with("ops:")) else {
        return 1;
    };
    let mut indent = None;
    let mut k = 0;
    for (n, l) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = l.trim_start();
        if !trimmed.starts_with("- ") {
            continue;
        }
        let ind = l.len() - trimmed.len();
        if *indent.get_or_insert(ind) != ind {
            continue;
        }
        if k == i {
            return n + 1;
        }
        k += 1;
    }
    1
}

/// An error about op `i` (or the document when `i` is `None`), positioned at `needle`.
fn at_op(
    file: &str,
    text: &str,
    i: usize,
    needle: &str,
    field: String,
    reason: impl Into<String>,
) -> SimError {
    let from = op_line(text, i);
    let (line, column) = locate(text, needle, from);
    SimError::Scenario {
        file: format!("{file}:{line}:{column}"),
        field,
        reason: reason.into(),
    }
}

fn at(file: &str, text: &str, needle: &str, field: String, reason: impl Into<String>) -> SimError {
    let (line, column) = locate(text, needle, 1);
    SimError::Scenario {
        file: format!("{file}:{line}:{column}"),
        field,
        reason: reason.into(),
    }
}

/// Replace `$var` with the variant's values; unknown variables are errors with their position.
fn substitute(
    file: &str,
    text: &str,
    vars: &BTreeMap<String, serde_yaml::Value>,
    variant: &str,
) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    for (li, line) in text.lines().enumerate() {
        // Comments are left alone.
        let (code, comment) = match line.find('#') {
            Some(p) => line.split_at(p),
            None => (line, ""),
        };
        let mut rest = code;
        while let Some(p) = rest.find('$') {
            out.push_str(&rest[..p]);
            let after = &rest[p + 1..];
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..end];
            let Some(v) = vars.get(name) else {
                let col = code.len() - rest.len() + p;
                let known: Vec<&str> = vars.keys().map(String::as_str).collect();
                return Err(SimError::Scenario {
                    file: format!("{file}:{}:{}", li + 1, code[..col].chars().count() + 1),
                    field: format!("${name}"),
                    reason: format!(
                        "unknown variable; variant {variant:?} defines: {}",
                        if known.is_empty() {
                            "nothing".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                });
            };
            let s = match v {
                serde_yaml::Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            };
            out.push_str(&s);
            rest = &after[end..];
        }
        out.push_str(rest);
        out.push_str(comment);
        out.push('\n');
    }
    Ok(out)
}

fn dur(q: &Quantity) -> std::result::Result<f64, String> {
    q.duration_ms().map(|v| v as f64)
}

fn num(q: &Quantity) -> std::result::Result<f64, String> {
    match q {
        Quantity::Number(v) => Ok(*v),
        Quantity::Text(s) => s
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("{s:?} is not a number")),
    }
}

impl Dist {
    /// Check a distribution of numbers read by `conv` (durations or plain numbers).
    fn check(
        &self,
        conv: fn(&Quantity) -> std::result::Result<f64, String>,
    ) -> std::result::Result<(), String> {
        match self {
            Dist::Const(q) | Dist::Exp(q) => conv(q).map(|_| ()),
            Dist::Uniform([a, b]) => {
                let (a, b) = (conv(a)?, conv(b)?);
                if a > b {
                    return Err(format!("uniform: {a} is above {b}"));
                }
                Ok(())
            }
            Dist::Lognormal { median, sigma } => {
                conv(median)?;
                if !(sigma.is_finite() && *sigma >= 0.0) {
                    return Err(format!(
                        "lognormal: sigma must be a non-negative number, got {sigma}"
                    ));
                }
                Ok(())
            }
            Dist::Choice(m) => {
                if m.is_empty()
                    || m.values().any(|w| !(w.is_finite() && *w >= 0.0))
                    || m.values().sum::<f64>() <= 0.0
                {
                    return Err("choice: give at least one value with a positive weight, and no negative weight".into());
                }
                for k in m.keys() {
                    conv(&Quantity::Text(k.clone()))?;
                }
                Ok(())
            }
        }
    }

    fn check_names(&self) -> std::result::Result<(), String> {
        match self {
            Dist::Const(Quantity::Text(_)) => Ok(()),
            Dist::Choice(_) => self.check(|_| Ok(0.0)),
            _ => Err("draw names with {choice: {name: weight}} or {const: name}".into()),
        }
    }

    fn sample(
        &self,
        rng: &mut Rng,
        conv: fn(&Quantity) -> std::result::Result<f64, String>,
    ) -> f64 {
        let c = |q: &Quantity| conv(q).unwrap_or(0.0);
        match self {
            Dist::Const(q) => c(q),
            Dist::Uniform([a, b]) => c(a) + (c(b) - c(a)) * rng.f64(),
            Dist::Exp(m) => -c(m) * (1.0 - rng.f64()).ln(),
            Dist::Lognormal { median, sigma } => c(median) * (sigma * rng.normal()).exp(),
            Dist::Choice(_) => conv(&Quantity::Text(self.sample_name(rng))).unwrap_or(0.0),
        }
    }

    fn sample_name(&self, rng: &mut Rng) -> String {
        match self {
            Dist::Const(Quantity::Text(s)) => s.clone(),
            Dist::Const(Quantity::Number(v)) => v.to_string(),
            Dist::Choice(m) => {
                let total: f64 = m.values().sum();
                let mut x = rng.f64() * total;
                for (k, w) in m {
                    if x < *w {
                        return k.clone();
                    }
                    x -= w;
                }
                m.keys().next_back().cloned().unwrap_or_default()
            }
            _ => String::new(),
        }
    }
}

/// Load a scenario file with a variant.
///
/// # Errors
/// Unreadable file, YAML errors (with line and column), unknown variables or variants, and
/// operations that cannot be carried out (named by their field and position).
pub fn load(path: &Path, variant: Option<&str>) -> Result<Workload> {
    let text = std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))?;
    parse(&path.display().to_string(), &text, variant)
}

/// Build a workload from scenario text.
///
/// # Errors
/// See [`load`].
pub fn parse(file: &str, text: &str, variant: Option<&str>) -> Result<Workload> {
    let pre: Variants = from_yaml(text, file)?;
    let chosen = variant
        .map(str::to_string)
        .or(pre.default_variant.clone())
        .or_else(|| pre.variants.keys().next().cloned());
    let vars = match &chosen {
        None => BTreeMap::new(),
        Some(v) => pre.variants.get(v).cloned().ok_or_else(|| {
            let known: Vec<&str> = pre.variants.keys().map(String::as_str).collect();
            at(
                file,
                text,
                "variants",
                "variants".into(),
                format!("no variant {v:?} (known: {})", known.join(", ")),
            )
        })?,
    };
    let text = substitute(file, text, &vars, chosen.as_deref().unwrap_or(""))?;
    let spec: ScenarioSpec = from_yaml(&text, file)?;
    build(file, &text, spec, chosen)
}

fn build(file: &str, text: &str, spec: ScenarioSpec, variant: Option<String>) -> Result<Workload> {
    let mut rng = Rng::new(spec.seed);
    let mut cluster_spec = spec.cluster.clone().unwrap_or_default();
    let queues: QueueTree = match spec.queues.clone() {
        Some(q) => q
            .build()
            .map_err(|e| at(file, text, "queues", "queues".into(), e.to_string()))?,
        None => QueueTree::unlimited("default", Vec::<String>::new()),
    };
    let mut now = 0u64;
    let mut late_pools: Vec<(usize, u64)> = Vec::new();
    // First pass: nodes, so that submits can be validated against the whole cluster.
    for (i, op) in spec.ops.iter().enumerate() {
        match op {
            Op::AddNodes(p) => {
                if now > 0 {
                    late_pools.push((cluster_spec.pools.len(), now));
                }
                cluster_spec.pools.push(p.clone());
                let _ = i;
            }
            Op::Advance(q) => {
                now += q
                    .duration_ms()
                    .map_err(|r| at_op(file, text, i, "advance", format!("ops[{i}].advance"), r))?;
            }
            _ => {}
        }
    }
    let explicit = cluster_spec.nodes.len();
    let pool_counts: Vec<(String, u32)> = cluster_spec
        .pools
        .iter()
        .map(|p| (p.name.clone(), p.count))
        .collect();
    let cluster = cluster_spec
        .build()
        .map_err(|e| at(file, text, "add_nodes", "add_nodes".into(), e.to_string()))?;
    // Nodes of pools added later: down until their time.
    let mut initially_down = Vec::new();
    let mut node_ops = Vec::new();
    {
        let mut start = explicit;
        for (pi, (_, count)) in pool_counts.iter().enumerate() {
            let range = start..start + *count as usize;
            if let Some(&(_, t)) = late_pools.iter().find(|(p, _)| *p == pi) {
                for n in &cluster.nodes[range.clone()] {
                    initially_down.push(n.name.clone());
                    node_ops.push(NodeOp {
                        at_ms: t,
                        node: n.name.clone(),
                        ready: true,
                    });
                }
            }
            start = range.end;
        }
    }
    let catalog = cluster.catalog();
    let names: BTreeSet<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    let mut down: BTreeSet<String> = BTreeSet::new();
    let mut jobs = Vec::new();
    now = 0;
    for (i, op) in spec.ops.iter().enumerate() {
        let field = |k: &str| format!("ops[{i}].{k}");
        match op {
            Op::AddNodes(_) => {}
            Op::Advance(q) => now += q.duration_ms().unwrap_or(0),
            Op::FailNode(n) | Op::RecoverNode(n) => {
                let ready = matches!(op, Op::RecoverNode(_));
                let key = if ready { "recover_node" } else { "fail_node" };
                if !names.contains(n.as_str()) {
                    return Err(at_op(
                        file,
                        text,
                        i,
                        n,
                        field(key),
                        format!("no node named {n:?}"),
                    ));
                }
                if ready {
                    down.remove(n);
                } else {
                    down.insert(n.clone());
                }
                node_ops.push(NodeOp {
                    at_ms: now,
                    node: n.clone(),
                    ready,
                });
            }
            Op::Churn(c) => {
                let every = c
                    .every
                    .duration_ms()
                    .map_err(|r| at_op(file, text, i, "every", field("churn.every"), r))?;
                let span = c
                    .duration
                    .duration_ms()
                    .map_err(|r| at_op(file, text, i, "churn", field("churn.for"), r))?;
                let downtime = c
                    .downtime
                    .duration_ms()
                    .map_err(|r| at_op(file, text, i, "downtime", field("churn.downtime"), r))?;
                if every == 0 {
                    return Err(at_op(
                        file,
                        text,
                        i,
                        "every",
                        field("churn.every"),
                        "must be more than 0",
                    ));
                }
                let all: Vec<&str> = names.iter().copied().collect();
                let mut t = now;
                // Nodes that churn itself took down, with their recovery times.
                let mut churned: Vec<(u64, String)> = Vec::new();
                while t < now + span && !all.is_empty() {
                    churned.retain(|(back, _)| *back > t);
                    let up: Vec<&str> = all
                        .iter()
                        .copied()
                        .filter(|n| !down.contains(*n) && !churned.iter().any(|(_, c)| c == n))
                        .collect();
                    if !up.is_empty() {
                        let n = up[rng.below(up.len() as u64) as usize].to_string();
                        node_ops.push(NodeOp {
                            at_ms: t,
                            node: n.clone(),
                            ready: false,
                        });
                        node_ops.push(NodeOp {
                            at_ms: t + downtime,
                            node: n.clone(),
                            ready: true,
                        });
                        churned.push((t + downtime, n));
                    }
                    t += every;
                }
            }
            Op::Submit(s) => {
                let f = field("submit");
                let chk = |d: &Option<Dist>,
                           k: &str,
                           conv: fn(&Quantity) -> std::result::Result<f64, String>|
                 -> Result<()> {
                    if let Some(d) = d {
                        d.check(conv).map_err(|r| {
                            at_op(
                                file,
                                text,
                                i,
                                k,
                                format!("{f}.{}", k.trim_end_matches(':')),
                                r,
                            )
                        })?;
                    }
                    Ok(())
                };
                chk(&s.interarrival, "interarrival:", dur)?;
                chk(&s.tasks, "tasks:", num)?;
                chk(&s.gpus, "gpus:", num)?;
                chk(&s.fraction, "fraction:", num)?;
                s.runtime
                    .check(dur)
                    .map_err(|r| at_op(file, text, i, "runtime", format!("{f}.runtime"), r))?;
                for (k, d) in [("queue:", &s.queue), ("mig:", &s.mig)] {
                    if let Some(d) = d {
                        d.check_names().map_err(|r| {
                            at_op(
                                file,
                                text,
                                i,
                                k,
                                format!("{f}.{}", k.trim_end_matches(':')),
                                r,
                            )
                        })?;
                    }
                }
                let asks = [s.gpus.is_some(), s.fraction.is_some(), s.mig.is_some()];
                if asks.iter().filter(|a| **a).count() > 1 {
                    return Err(at_op(
                        file,
                        text,
                        i,
                        "submit",
                        f,
                        "ask for one of gpus, fraction or mig",
                    ));
                }
                let mut t = now;
                for k in 0..s.count {
                    if k > 0 {
                        if let Some(d) = &s.interarrival {
                            t += d.sample(&mut rng, dur).max(0.0).round() as u64;
                        }
                    }
                    let queue = s
                        .queue
                        .as_ref()
                        .map_or("default".to_string(), |d| d.sample_name(&mut rng));
                    let tasks = s
                        .tasks
                        .as_ref()
                        .map_or(1.0, |d| d.sample(&mut rng, num))
                        .round()
                        .max(1.0) as u32;
                    let gpus = s
                        .gpus
                        .as_ref()
                        .map(|d| d.sample(&mut rng, num).round().max(0.0) as u32);
                    let fraction = s.fraction.as_ref().map(|d| d.sample(&mut rng, num));
                    let mig = s.mig.as_ref().map(|d| d.sample_name(&mut rng));
                    let runtime = s.runtime.sample(&mut rng, dur).max(0.0).round() as u64;
                    let js = JobSpec {
                        name: format!("op{i}-{k}"),
                        queue,
                        kind: s.kind,
                        priority_class: s.priority_class.clone(),
                        tasks: vec![TaskGroupSpec {
                            node_selector: Default::default(),
                            node_affinity: Vec::new(),
                            tolerations: Vec::new(),
                            name: None,
                            count: tasks,
                            cpu: s.cpu.clone(),
                            memory: s.memory.clone(),
                            gpus,
                            gpu_fraction: fraction,
                            mig,
                            gpu_models: s.gpu_models.clone(),
                            nvlink: s.nvlink,
                        }],
                        min_available: None,
                        placement: s.placement.clone(),
                        expected_runtime: Some(Quantity::Text(format!("{runtime}ms"))),
                        replicas: None,
                        spread: None,
                        command: Vec::new(),
                        env: Default::default(),
                        autoscale: None,
                        port: None,
                        readiness: None,
                    };
                    let job = js.validate(&queues, Some(&catalog)).map_err(|e| {
                        at(
                            file,
                            text,
                            "submit",
                            format!("{f} (job {k} of {})", s.count),
                            e.to_string(),
                        )
                    })?;
                    jobs.push(TraceJob {
                        job,
                        arrival_ms: t,
                        runtime_ms: Some(runtime),
                    });
                }
            }
        }
    }
    let mut w = Workload {
        name: match &variant {
            Some(v) => format!("{}-{v}", spec.name),
            None => spec.name.clone(),
        },
        cluster,
        queues,
        jobs,
        node_ops,
        initially_down,
        fill: None,
    };
    w.sort_jobs();
    Ok(w)
}
