//! Readable builders and a harness for tests and benchmarks (feature `testing`).
//!
//! ```
//! use gantry_engine::testing::{ClusterBuilder, Harness, JobBuilder, QueueBuilder};
//! let cluster = ClusterBuilder::new().pool("dgx", 4, 8, "h100-80gb").build();
//! let queues = QueueBuilder::new().cohort("org").queue("team-a", "org", "h100-80gb", 16).build();
//! let mut h = Harness::new(&cluster, &queues);
//! h.submit(JobBuilder::new("train").queue("team-a").tasks(2).gpus(8).nvlink());
//! let plan = h.cycle();
//! assert_eq!(plan.binds.len(), 1);
//! h.snap.audit().unwrap();
//! ```

use std::collections::BTreeMap;

use gantry_model::{
    Cluster, ClusterSpec, Job, JobKind, JobSpec, MigLayout, NodePool, QueueSpec, QueueTree,
    QueuesSpec, QuotaSpec, Replicas, TaskGroupSpec,
};

use crate::{schedule, Plan, Profile, Snapshot, Time};

/// Builds clusters from pools.
#[derive(Debug, Default)]
pub struct ClusterBuilder {
    spec: ClusterSpec,
}

impl ClusterBuilder {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// `count` nodes with `gpus` GPUs of `model` each, one NVLink domain per node, 8 nodes per
    /// rack, 128 cpu and 1 TiB memory.
    pub fn pool(self, name: &str, count: u32, gpus: u32, model: &str) -> Self {
        self.pool_with(name, count, gpus, model, 1, None)
    }

    /// A pool with `domains` NVLink domains per node and an optional MIG layout (`Some(vec![])`
    /// = dynamic slices).
    pub fn pool_with(
        mut self,
        name: &str,
        count: u32,
        gpus: u32,
        model: &str,
        domains: u32,
        mig: Option<Vec<gantry_model::Slice>>,
    ) -> Self {
        self.spec.pools.push(NodePool {
            name: name.into(),
            count,
            gpu_model: Some(model.into()),
            gpus_per_node: gpus,
            gpu_memory: None,
            nvlink_domains_per_node: domains,
            nodes_per_rack: 8,
            cpu: 128_000,
            memory: 1024 * 1024,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            mig: mig.map(|slices| MigLayout { slices }),
        });
        self
    }

    /// Taint every node of the last pool (`key=value:NoSchedule`).
    pub fn taint(mut self, taint: &str) -> Self {
        let t = taint.parse().expect("a taint");
        if let Some(p) = self.spec.pools.last_mut() {
            p.taints.push(t);
        }
        self
    }

    /// Label every node of the last pool.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        if let Some(p) = self.spec.pools.last_mut() {
            p.labels.insert(key.into(), value.into());
        }
        self
    }

    /// Validate.
    pub fn build(self) -> Cluster {
        self.spec.build().expect("test cluster is valid")
    }
}

/// `nodes` × `gpus` of `model`: the common case.
pub fn cluster(nodes: u32, gpus: u32, model: &str) -> Cluster {
    ClusterBuilder::new()
        .pool("node", nodes, gpus, model)
        .build()
}

/// Builds queue trees.
#[derive(Debug, Default)]
pub struct QueueBuilder {
    spec: QueuesSpec,
}

impl QueueBuilder {
    /// Empty.
    pub fn new() -> Self {
        Self::default()
    }

    /// A cohort (inner node) under no parent.
    pub fn cohort(mut self, name: &str) -> Self {
        self.spec.queues.push(QueueSpec {
            name: name.into(),
            parent: None,
            weight: 1.0,
            quotas: BTreeMap::new(),
            unlisted_flavors: None,
        });
        self
    }

    /// Let the last queue (and, for a cohort, its children) use flavors it does not list.
    pub fn allow_unlisted(mut self) -> Self {
        if let Some(q) = self.spec.queues.last_mut() {
            q.unlisted_flavors = Some(gantry_model::UnlistedFlavors::Allow);
        }
        self
    }

    /// A leaf with `nominal` GPUs of `flavor` under `parent` (empty parent: a root).
    pub fn queue(self, name: &str, parent: &str, flavor: &str, nominal: u32) -> Self {
        self.queue_with(name, parent, 1.0, &[(flavor, nominal as f64, None, None)])
    }

    /// A leaf with a weight and quotas `(flavor, nominal, borrowing_limit, lending_limit)`.
    pub fn queue_with(
        mut self,
        name: &str,
        parent: &str,
        weight: f64,
        quotas: &[(&str, f64, Option<f64>, Option<f64>)],
    ) -> Self {
        self.spec.queues.push(QueueSpec {
            name: name.into(),
            parent: (!parent.is_empty()).then(|| parent.into()),
            weight,
            unlisted_flavors: None,
            quotas: quotas
                .iter()
                .map(|&(f, n, b, l)| {
                    (
                        f.to_string(),
                        QuotaSpec {
                            nominal: n.into(),
                            borrowing_limit: b.map(Into::into),
                            lending_limit: l.map(Into::into),
                        },
                    )
                })
                .collect(),
        });
        self
    }

    /// Validate.
    pub fn build(self) -> QueueTree {
        self.spec.build().expect("test queues are valid")
    }
}

/// Leaf queues with `nominal` h100-80gb GPUs each, in one cohort `root`.
pub fn queues(leaves: &[(&str, u32)]) -> QueueTree {
    let mut b = QueueBuilder::new().cohort("root");
    for &(name, nominal) in leaves {
        b = b.queue(name, "root", "h100-80gb", nominal);
    }
    b.build()
}

/// Builds jobs.
#[derive(Debug, Clone)]
pub struct JobBuilder {
    spec: JobSpec,
}

impl JobBuilder {
    /// A batch job named `name` in queue `default` with one task and no GPU.
    pub fn new(name: &str) -> Self {
        JobBuilder {
            spec: JobSpec {
                name: name.into(),
                queue: "default".into(),
                kind: JobKind::Batch,
                priority_class: None,
                tasks: vec![TaskGroupSpec::default()],
                min_available: None,
                placement: None,
                expected_runtime: None,
                replicas: None,
                spread: None,
                command: Vec::new(),
                env: Default::default(),
                autoscale: None,
                port: None,
                readiness: None,
            },
        }
    }

    fn last(&mut self) -> &mut TaskGroupSpec {
        self.spec.tasks.last_mut().expect("a job has a task group")
    }

    /// A node selector label (last task group).
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.last().node_selector.insert(key.into(), value.into());
        self
    }

    /// Tolerate a taint (`key=value:Effect`, Equal; `key:Effect` with no value: Exists).
    pub fn tolerate(mut self, taint: &str) -> Self {
        let t: gantry_model::Taint = taint.parse().expect("a taint");
        let exists = t.value.is_empty();
        self.last().tolerations.push(gantry_model::Toleration {
            key: Some(t.key),
            operator: if exists {
                gantry_model::TolerationOp::Exists
            } else {
                gantry_model::TolerationOp::Equal
            },
            value: (!exists).then_some(t.value),
            effect: Some(t.effect),
        });
        self
    }

    /// A required affinity term (`[(key, op, values)]`, ANDed); several calls are ORed.
    pub fn affinity(mut self, term: &[(&str, gantry_model::SelectorOp, &[&str])]) -> Self {
        self.last().node_affinity.push(gantry_model::SelectorTerm {
            match_expressions: term
                .iter()
                .map(|(k, op, vs)| gantry_model::SelectorRequirement {
                    key: (*k).into(),
                    operator: *op,
                    values: vs.iter().map(|v| (*v).into()).collect(),
                })
                .collect(),
        });
        self
    }

    /// Queue.
    pub fn queue(mut self, q: &str) -> Self {
        self.spec.queue = q.into();
        self
    }
    /// Tasks in the current group.
    pub fn tasks(mut self, n: u32) -> Self {
        self.last().count = n;
        self
    }
    /// Whole GPUs per task.
    pub fn gpus(mut self, n: u32) -> Self {
        self.last().gpus = Some(n);
        self
    }
    /// A shared fraction per task.
    pub fn fraction(mut self, f: f64) -> Self {
        self.last().gpu_fraction = Some(f);
        self
    }
    /// One MIG slice per task (`1g.10gb` or `model/profile`).
    pub fn mig(mut self, p: &str) -> Self {
        self.last().mig = Some(p.into());
        self
    }
    /// Allowed models.
    pub fn models(mut self, m: &[&str]) -> Self {
        self.last().gpu_models = m.iter().map(|s| s.to_string()).collect();
        self
    }
    /// CPU cores and memory MiB per task.
    pub fn cpu_mem(mut self, cores: f64, mib: f64) -> Self {
        self.last().cpu = Some(cores.into());
        self.last().memory = Some(mib.into());
        self
    }
    /// Multi-GPU tasks inside one NVLink domain.
    pub fn nvlink(mut self) -> Self {
        self.last().nvlink = true;
        self
    }
    /// Start a new task group.
    pub fn group(mut self, name: &str) -> Self {
        let mut g = self.last().clone();
        g.name = Some(name.into());
        if self.spec.tasks.len() == 1 && self.spec.tasks[0].name.is_none() {
            self.spec.tasks[0].name = Some("main".into());
        }
        self.spec.tasks.push(g);
        self
    }
    /// All tasks start together (the default); `min` of them with [`JobBuilder::min_available`].
    pub fn gang(self) -> Self {
        self
    }
    /// Gang size.
    pub fn min_available(mut self, n: u32) -> Self {
        self.spec.min_available = Some(n);
        self
    }
    /// Priority class.
    pub fn priority(mut self, class: &str) -> Self {
        self.spec.priority_class = Some(class.into());
        self
    }
    /// Kind.
    pub fn kind(mut self, k: JobKind) -> Self {
        self.spec.kind = k;
        self
    }
    /// `node`, `nvlink-domain` or `label:<key>`.
    pub fn placement(mut self, p: &str) -> Self {
        self.spec.placement = Some(p.into());
        self
    }
    /// Expected runtime in seconds.
    pub fn runtime_s(mut self, s: f64) -> Self {
        self.spec.expected_runtime = Some(s.into());
        self
    }
    /// An inference service with `min..max` replicas and a spread.
    pub fn service(mut self, min: u32, max: u32, spread: Option<&str>) -> Self {
        self.spec.kind = JobKind::Inference;
        self.spec.replicas = Some(Replicas { min, max });
        self.spec.spread = spread.map(Into::into);
        self
    }

    /// The written spec.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Validate against `queues` (no cluster catalog).
    pub fn build(&self, queues: &QueueTree) -> Job {
        self.spec.validate(queues, None).expect("test job is valid")
    }
}

/// A snapshot, a profile and a clock, recording the plans it produced.
#[derive(Debug)]
pub struct Harness {
    /// The state.
    pub snap: Snapshot,
    /// The tree jobs are validated against.
    pub queues: QueueTree,
    /// The profile.
    pub profile: Profile,
    /// The clock (ms).
    pub now: Time,
    /// Every plan, in order.
    pub plans: Vec<Plan>,
}

impl Harness {
    /// With the `gantry` profile.
    pub fn new(cluster: &Cluster, queues: &QueueTree) -> Self {
        Harness {
            snap: Snapshot::new(cluster, queues).expect("test snapshot"),
            queues: queues.clone(),
            profile: Profile::gantry(),
            now: 0,
            plans: Vec::new(),
        }
    }

    /// Use another profile.
    pub fn with_profile(mut self, p: Profile) -> Self {
        self.profile = p;
        self
    }

    /// Submit now.
    pub fn submit(&mut self, job: JobBuilder) -> crate::JobId {
        let j = job.build(&self.queues);
        self.snap.submit(&j, self.now).expect("submit")
    }

    /// Advance the clock by `secs`.
    pub fn advance(&mut self, secs: u64) {
        self.now += secs * 1000;
    }

    /// Run one cycle and keep the plan.
    pub fn cycle(&mut self) -> Plan {
        let p = schedule(&mut self.snap, &self.profile, self.now);
        self.plans.push(p.clone());
        p
    }

    /// Complete a job by name.
    pub fn complete(&mut self, name: &str) {
        let id = self.snap.job_by_name(name).expect("known job");
        self.snap.complete(id).expect("complete");
    }

    /// Whether a job by name is running.
    pub fn running(&self, name: &str) -> bool {
        self.snap
            .job_by_name(name)
            .is_some_and(|id| self.snap.job_phase(id) == crate::JobPhase::Running)
    }
}
