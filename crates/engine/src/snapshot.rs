//! The snapshot: everything the engine knows, in compact arenas with incremental indexes.
//!
//! Drivers build one [`Snapshot`] from a [`Cluster`] and a [`QueueTree`], then feed it events
//! (`submit`, `complete`, `cancel`, node and device health) and call [`crate::schedule`]. Ids are
//! `u32` indexes into arenas; names are kept once per object for explanations and drivers.
//!
//! Indexes kept up to date on every bind and release (never rebuilt by scanning):
//! - per GPU model, nodes bucketed by their count of free whole devices (best-fit is a bucket
//!   step, not a loop over nodes);
//! - per GPU model, NVLink domains bucketed the same way;
//! - per GPU model, partly shared devices ordered by remaining fraction;
//! - per GPU model, the MIG-enabled devices;
//! - per leaf queue, its jobs with unplaced tasks in (priority, submit time, id) order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::fast::HashMap;

use gantry_model::{
    Cluster, Demand, GpuDemand, Health, Job, JobKind, MigGeometry, Placement, QueueTree, Spread,
};
use serde::{Deserialize, Serialize};

use crate::explain::Reason;
use crate::quota::QuotaTree;
use crate::EngineError;

/// Milliseconds on the driver's clock (virtual in the simulator, wall in the server).
pub type Time = u64;

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u32);
        impl $name {
            /// The arena index.
            pub fn idx(self) -> usize {
                self.0 as usize
            }
        }
    };
}

id_type!(
    /// A node, by its index in the cluster.
    NodeId
);
id_type!(
    /// A whole GPU, by its index over all nodes.
    DeviceId
);
id_type!(
    /// A job, by submission order.
    JobId
);
id_type!(
    /// A queue-tree node.
    QueueId
);
id_type!(
    /// A flavor: a GPU model, or a model's MIG profile.
    FlavorId
);

pub(crate) const NONE: u32 = u32::MAX;

/// What a flavor is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FlavorKind {
    /// Whole (or shared) GPUs of a model.
    Model,
    /// A MIG profile: the model flavor and the profile's index in the model's geometry.
    Mig { model: FlavorId, profile: u8 },
}

#[derive(Debug, Clone)]
pub(crate) struct Flavor {
    pub name: Box<str>,
    pub kind: FlavorKind,
}

#[derive(Debug, Clone)]
pub(crate) struct MigSlot {
    /// Index into `Snapshot::geometries`.
    pub geometry: u16,
    /// Used memory slices.
    pub used: u8,
    /// Memory slices of pre-created slices that are unhealthy: never offered.
    pub offline: u8,
    /// Pre-created slices `(profile, start)`: when set, only these are offered.
    pub fixed: Option<Box<[(u8, u8)]>>,
}

#[derive(Debug, Clone)]
pub(crate) struct DeviceSlot {
    pub uuid: Box<str>,
    pub node: u32,
    pub local: u8,
    pub model: FlavorId,
    pub domain: u32,
    pub healthy: bool,
    pub mig: Option<MigSlot>,
    pub whole_used: bool,
    pub shared_used: u16,
}

impl DeviceSlot {
    pub fn is_whole_free(&self) -> bool {
        self.healthy && self.mig.is_none() && !self.whole_used && self.shared_used == 0
    }
}

#[derive(Debug, Clone)]
pub(crate) struct NodeSlot {
    pub name: Box<str>,
    pub cpu_total: u32,
    pub cpu_used: u32,
    pub mem_total: u64,
    pub mem_used: u64,
    pub labels: Box<[(u32, u32)]>,
    pub ready: bool,
    pub dev_start: u32,
    pub dev_count: u32,
    /// Free whole devices (local bit index), regardless of readiness.
    pub free_mask: u64,
    /// `(model, devices of that model)`.
    pub model_masks: Box<[(FlavorId, u64)]>,
    /// `(domain, devices of the domain on this node, free ones counted in the domain)`.
    pub domain_masks: Box<[(u32, u64, u32)]>,
    /// Whole-capable devices by (model, NVLink domain), in the order of its layout.
    pub parts: Box<[crate::classes::Part]>,
    /// Its layout in the class index.
    pub layout: u32,
}

impl NodeSlot {
    pub fn avail_mask(&self) -> u64 {
        if self.ready {
            self.free_mask
        } else {
            0
        }
    }
    pub fn cpu_free(&self) -> u32 {
        self.cpu_total.saturating_sub(self.cpu_used)
    }
    pub fn mem_free(&self) -> u64 {
        self.mem_total.saturating_sub(self.mem_used)
    }
    pub fn label(&self, key: u32) -> Option<u32> {
        self.labels.iter().find(|(k, _)| *k == key).map(|&(_, v)| v)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DomainSlot {
    pub model: FlavorId,
    pub members: Vec<(u32, u64)>,
    pub free: u32,
}

/// Objects bucketed by a small count, with O(1) moves.
#[derive(Debug, Clone, Default)]
pub(crate) struct Buckets {
    pub by_count: Vec<Vec<u32>>,
    /// Per object: `(count, position)`, `count == u32::MAX` when absent.
    pos: Vec<(u32, u32)>,
}

impl Buckets {
    pub fn new(objects: usize, max_count: usize) -> Self {
        Buckets {
            by_count: vec![Vec::new(); max_count + 1],
            pos: vec![(NONE, 0); objects],
        }
    }

    pub fn set(&mut self, obj: u32, count: Option<u32>) {
        let o = obj as usize;
        if o >= self.pos.len() {
            self.pos.resize(o + 1, (NONE, 0));
        }
        let (old, p) = self.pos[o];
        if Some(old) == count {
            return;
        }
        if old != NONE {
            let b = &mut self.by_count[old as usize];
            b.swap_remove(p as usize);
            if let Some(&moved) = b.get(p as usize) {
                self.pos[moved as usize].1 = p;
            }
        }
        match count {
            Some(c) => {
                let c = c as usize;
                if c >= self.by_count.len() {
                    self.by_count.resize(c + 1, Vec::new());
                }
                self.pos[o] = (c as u32, self.by_count[c].len() as u32);
                self.by_count[c].push(obj);
            }
            None => self.pos[o] = (NONE, 0),
        }
    }
}

/// Per GPU model: where its free capacity is.
#[derive(Debug, Clone, Default)]
pub(crate) struct ModelIndex {
    /// Nodes by free whole devices of this model (ready nodes that have the model).
    pub nodes: Buckets,
    /// Domains by free devices.
    pub domains: Buckets,
    /// Partly shared devices: `(remaining milli, device)`.
    pub shared: BTreeSet<(u16, u32)>,
    /// MIG-enabled devices of this model.
    pub mig_devices: Vec<u32>,
    /// Nodes holding the model (for first-fit scans), ascending.
    pub holders: Vec<u32>,
}

/// What one task holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GpuAlloc {
    /// No GPU.
    None,
    /// Whole devices.
    Whole(Vec<DeviceId>),
    /// A fraction of one device, in thousandths.
    Shared {
        /// The device.
        device: DeviceId,
        /// Thousandths.
        milli: u16,
    },
    /// One MIG slice.
    Mig {
        /// The parent device.
        device: DeviceId,
        /// Profile index in the model's geometry.
        profile: u8,
        /// First memory slice.
        start: u8,
    },
}

/// One placed task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskAlloc {
    /// Task group index.
    pub group: u16,
    /// Replica index in the group.
    pub index: u32,
    /// Node.
    pub node: NodeId,
    /// Millicores held.
    pub cpu_milli: u32,
    /// MiB held.
    pub memory_mib: u64,
    /// GPUs held.
    pub gpu: GpuAlloc,
    /// Flavor charged to quota (`NONE` for CPU-only tasks).
    pub flavor: FlavorId,
    /// Quota charged, in thousandths.
    pub amount: u64,
}

/// Compiled per-task demand.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum GpuNeed {
    None,
    Whole {
        count: u32,
        models: Box<[FlavorId]>,
    },
    Shared {
        milli: u16,
        models: Box<[FlavorId]>,
    },
    /// `(mig flavor, model flavor, profile index)` per allowed model.
    Mig {
        options: Box<[(FlavorId, FlavorId, u8)]>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DemandC {
    pub cpu: u32,
    pub mem: u64,
    pub gpu: GpuNeed,
    pub nvlink: bool,
    /// Where it may run: an index into `Snapshot::constraints` (0: no selector, affinity or
    /// toleration; taints still apply).
    pub constraint: u32,
}

/// What a rendered reason depends on besides the cluster: (job shape, queue, its first waiting
/// group, that group's tasks already running, the stored reason).
pub(crate) type WhyKey = (u32, u32, u32, u32, crate::Reason);

/// Which nodes admit one set of constraints (selector, affinity, tolerations against labels and
/// taints). Computed once per snapshot: labels and taints change only with a rebuild.
#[derive(Debug, Clone, Default)]
pub(crate) struct Eligible {
    /// Every node admits it (no check needed).
    pub all: bool,
    /// Bit per node.
    pub bits: Vec<u64>,
    /// The admitting nodes, ascending.
    pub list: Vec<u32>,
}

impl Eligible {
    pub fn admits(&self, node: u32) -> bool {
        self.all
            || self
                .bits
                .get(node as usize / 64)
                .is_some_and(|w| w >> (node % 64) & 1 == 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum PlacementC {
    Any,
    Node,
    Domain,
    Label(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SpreadC {
    None,
    Node,
    Label(u32),
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobPhase {
    /// No task placed.
    Pending,
    /// At least its gang placed.
    Running,
    /// Completed, cancelled or removed; its slot is kept so ids stay stable.
    Done,
}

#[derive(Debug, Clone)]
pub(crate) struct GroupSlot {
    pub demand: u32,
    pub count: u32,
    pub running: u32,
    /// The index the next placed task gets: past every index this run has used, so a replica
    /// added after a scale-down never reuses the index of one still stopping.
    pub next_index: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct JobSlot {
    pub name: Box<str>,
    pub queue: u32,
    pub priority: i32,
    pub preemptible: bool,
    pub kind: JobKind,
    pub submit: Time,
    pub groups: Box<[GroupSlot]>,
    pub min_available: u32,
    pub placement: PlacementC,
    pub spread: SpreadC,
    pub runtime: Option<u64>,
    pub phase: JobPhase,
    pub start: Option<Time>,
    pub tasks: Vec<TaskAlloc>,
    pub reason: Option<Reason>,
    pub eta: Option<Time>,
    /// Memo key for "a job of this shape failed this cycle".
    pub shape: u32,
    /// Whether the job is in its queue's pending set (kept by `sync_pending`).
    pub in_pending: bool,
    /// Whether it is counted as partly placed (some tasks run, some wait).
    pub partial: bool,
    /// Not a preemption victim before this time (a refused eviction backs off).
    pub protected_until: Time,
}

impl JobSlot {
    pub fn running_tasks(&self) -> u32 {
        self.groups.iter().map(|g| g.running).sum()
    }
    pub fn has_unplaced(&self) -> bool {
        self.phase != JobPhase::Done && self.groups.iter().any(|g| g.running < g.count)
    }
    pub fn order_key(&self, id: u32) -> PendingKey {
        (Reverse(self.priority), self.submit, id)
    }
    pub fn expected_end(&self, now: Time) -> Time {
        self.runtime.map_or(Time::MAX, |r| now.saturating_add(r))
    }
}

pub(crate) type PendingKey = (Reverse<i32>, Time, u32);

/// What makes two jobs place alike: (demand, count) per group, gang size, placement, spread.
pub(crate) type ShapeKey = (Box<[(u32, u32)]>, u32, PlacementC, SpreadC);

#[derive(Debug, Clone)]
pub(crate) struct QueueSlot {
    pub pending: BTreeSet<PendingKey>,
    /// Jobs with placed tasks, for victim searches.
    pub running: BTreeSet<u32>,
    /// Decayed usage per flavor (same unit as usage).
    pub history: Vec<f64>,
    /// Flavors (bit per flavor id) that pending whole-GPU jobs of the queue may use. A
    /// superset: bits are added on submit and never cleared while jobs wait.
    pub whole_flavors: u64,
    /// The same for shared-GPU and MIG jobs.
    pub other_flavors: u64,
    /// Some pending job needs no GPU, or a flavor id is beyond the mask: never skip the queue.
    pub unmaskable: bool,
    /// Why the last full look at this queue skipped it whole (nothing of what it needs is left).
    pub skipped: Option<Reason>,
    /// Pending jobs per shape, so a queue whose every shape already failed this cycle is
    /// skipped without touching its jobs.
    pub shapes: HashMap<u32, ShapeStat>,
    /// Pending jobs that already run some tasks (never skipped by shape).
    pub partial: u32,
    /// When the last look skipped the queue because every shape had failed: each shape's reason.
    pub shape_skip: HashMap<u32, Reason>,
}

/// What the pending jobs of one shape in one queue look like, conservatively.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ShapeStat {
    pub count: u32,
    /// Shortest expected runtime among them (`u64::MAX` when none has one).
    pub min_runtime: u64,
    /// Highest priority among them.
    pub max_priority: i32,
}

/// Everything the engine knows. See the module docs.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub(crate) flavors: Vec<Flavor>,
    pub(crate) flavor_index: HashMap<Box<str>, u32>,
    pub(crate) geometries: Vec<MigGeometry>,
    pub(crate) nodes: Vec<NodeSlot>,
    pub(crate) devices: Vec<DeviceSlot>,
    pub(crate) domains: Vec<DomainSlot>,
    pub(crate) models: Vec<ModelIndex>,
    pub(crate) label_keys: Vec<Box<str>>,
    pub(crate) label_values: Vec<Box<str>>,
    /// Per label key: value → nodes.
    pub(crate) label_groups: Vec<BTreeMap<u32, Vec<u32>>>,
    pub(crate) quota: QuotaTree,
    pub(crate) queues: Vec<QueueSlot>,
    pub(crate) jobs: Vec<JobSlot>,
    pub(crate) job_names: HashMap<Box<str>, u32>,
    pub(crate) demands: Vec<DemandC>,
    pub(crate) demand_index: HashMap<DemandC, u32>,
    pub(crate) shapes: HashMap<ShapeKey, u32>,
    /// Set when capacity or quota was freed since the last cycle: old pending jobs need a look.
    pub(crate) freed: bool,
    /// Earliest end of a job's protection from preemption (`Snapshot::protect`): when it passes,
    /// a victim is available again and old pending jobs need a look.
    pub(crate) protection_ends: Option<Time>,
    /// Jobs submitted (or requeued) since the last cycle.
    pub(crate) fresh: Vec<u32>,
    /// The last cycle looked at every pending job (did not stop early).
    pub(crate) last_cycle_complete: bool,
    pub(crate) last_history_update: Option<Time>,
    pub(crate) pending_jobs: usize,
    /// Reservations of the last cycle (kept for incremental cycles).
    pub(crate) reservations: crate::place::Reservations,
    /// Strict FIFO: the job that stopped the last cycle.
    pub(crate) blocked_head: Option<u32>,
    /// Preemptible running jobs per priority, so the lowest victim priority is O(log n).
    pub(crate) victim_priorities: BTreeMap<i32, u32>,
    /// Ready nodes grouped by identical placement state.
    pub(crate) classes: crate::classes::Classes,
    /// The workload learned from submissions (the target of fragmentation-aware packing).
    pub(crate) workload: crate::workload::Workload,
    /// Cluster-wide constants for scores.
    pub(crate) spec: crate::score::Spec,
    /// Scores per (demand, model, packing), per class.
    pub(crate) score_cache: HashMap<u64, crate::choose::QueryCache>,
    /// Fragmentation per class: (generation, workload epoch, value).
    pub(crate) frag_cache: Vec<(u32, u32, i64)>,
    /// The workload's shapes per layout and cut, at an epoch.
    pub(crate) layout_targets: Vec<[crate::score::LayoutTargets; 2]>,
    /// Each node's labels and taints, as the cluster gave them (for eligibility and reasons).
    pub(crate) node_meta: Vec<(BTreeMap<String, String>, Vec<gantry_model::Taint>)>,
    /// Interned task constraints; index 0 is the empty one.
    pub(crate) constraints: Vec<gantry_model::NodeConstraints>,
    pub(crate) constraint_index: HashMap<gantry_model::NodeConstraints, u32>,
    /// Per constraint, the nodes that admit it (filled when first needed).
    pub(crate) eligible: Vec<Option<Eligible>>,
    /// Bumped on every change of a node's state (bind, release, readiness, health): what
    /// rendered reasons were computed against.
    pub(crate) version: u64,
    /// Rendered reasons per (shape, queue, tasks of the first group running, reason), valid
    /// while `version` stands: jobs of one shape wait for the same reason.
    pub(crate) why_cache: std::cell::RefCell<HashMap<WhyKey, (u64, crate::Why)>>,
}

fn popcount(m: u64) -> u32 {
    m.count_ones()
}

impl Snapshot {
    /// Build from a validated cluster and queue tree.
    ///
    /// # Errors
    /// A node with more than 64 devices.
    pub fn new(cluster: &Cluster, tree: &QueueTree) -> Result<Snapshot, EngineError> {
        let mut s = Snapshot {
            flavors: Vec::new(),
            flavor_index: HashMap::default(),
            geometries: Vec::new(),
            nodes: Vec::with_capacity(cluster.nodes.len()),
            devices: Vec::new(),
            domains: Vec::new(),
            models: Vec::new(),
            label_keys: Vec::new(),
            label_values: Vec::new(),
            label_groups: Vec::new(),
            quota: QuotaTree::default(),
            queues: Vec::new(),
            jobs: Vec::new(),
            job_names: HashMap::default(),
            demands: Vec::new(),
            demand_index: HashMap::default(),
            shapes: HashMap::default(),
            freed: true,
            protection_ends: None,
            fresh: Vec::new(),
            last_cycle_complete: false,
            last_history_update: None,
            pending_jobs: 0,
            reservations: Default::default(),
            blocked_head: None,
            victim_priorities: BTreeMap::new(),
            classes: Default::default(),
            workload: Default::default(),
            spec: Default::default(),
            score_cache: HashMap::default(),
            frag_cache: Vec::new(),
            layout_targets: Vec::new(),
            node_meta: cluster
                .nodes
                .iter()
                .map(|n| (n.labels.clone(), n.taints.clone()))
                .collect(),
            constraints: vec![gantry_model::NodeConstraints::default()],
            constraint_index: HashMap::default(),
            eligible: vec![None],
            version: 0,
            why_cache: Default::default(),
        };
        s.constraint_index
            .insert(gantry_model::NodeConstraints::default(), 0);
        // Geometries and flavors: every model, and every MIG profile of a model with MIG devices.
        for g in cluster.geometries.values() {
            s.geometries.push(g.clone());
        }
        for node in &cluster.nodes {
            for d in &node.devices {
                s.intern_model(&d.model);
            }
        }
        // Quota flavors that no device offers yet still get an id, so quota is tracked.
        for q in &tree.queues {
            for f in q.quotas.keys() {
                s.intern_flavor_name(f);
            }
        }
        let mut label_key_ix: HashMap<String, u32> = HashMap::default();
        let mut label_val_ix: HashMap<String, u32> = HashMap::default();
        let mut domain_ix: HashMap<String, u32> = HashMap::default();
        for (ni, node) in cluster.nodes.iter().enumerate() {
            if node.devices.len() > 64 {
                return Err(EngineError::TooManyDevices {
                    node: node.name.clone(),
                    count: node.devices.len(),
                });
            }
            let mut labels = Vec::new();
            for (k, v) in &node.labels {
                let kid = *label_key_ix.entry(k.clone()).or_insert_with(|| {
                    s.label_keys.push(k.as_str().into());
                    s.label_groups.push(BTreeMap::new());
                    (s.label_keys.len() - 1) as u32
                });
                let vid = *label_val_ix.entry(v.clone()).or_insert_with(|| {
                    s.label_values.push(v.as_str().into());
                    (s.label_values.len() - 1) as u32
                });
                labels.push((kid, vid));
                s.label_groups[kid as usize]
                    .entry(vid)
                    .or_default()
                    .push(ni as u32);
            }
            let dev_start = s.devices.len() as u32;
            let mut model_masks: Vec<(FlavorId, u64)> = Vec::new();
            let mut domain_masks: Vec<(u32, u64, u32)> = Vec::new();
            let mut free_mask = 0u64;
            for (di, d) in node.devices.iter().enumerate() {
                let model = s.intern_model(&d.model);
                let bit = 1u64 << di;
                // Whole-GPU capacity of the model: MIG-enabled devices offer slices instead.
                if d.mig.is_none() {
                    match model_masks.iter_mut().find(|(m, _)| *m == model) {
                        Some((_, mask)) => *mask |= bit,
                        None => model_masks.push((model, bit)),
                    }
                }
                let mig = match &d.mig {
                    None => None,
                    Some(layout) => {
                        let gi = s
                            .geometries
                            .iter()
                            .position(|g| g.model == d.model)
                            .ok_or_else(|| EngineError::NoGeometry {
                                model: d.model.clone(),
                            })? as u16;
                        let geo = &s.geometries[gi as usize];
                        let fixed = if layout.slices.is_empty() {
                            None
                        } else {
                            Some(
                                layout
                                    .slices
                                    .iter()
                                    .filter_map(|sl| {
                                        geo.profile(&sl.profile).map(|(pi, _)| (pi as u8, sl.start))
                                    })
                                    .collect::<Box<[_]>>(),
                            )
                        };
                        let offline = layout
                            .slices
                            .iter()
                            .filter(|sl| sl.health != Health::Healthy)
                            .filter_map(|sl| {
                                geo.profile(&sl.profile).map(|(_, p)| p.mask_at(sl.start))
                            })
                            .fold(0u8, |a, m| a | m);
                        Some(MigSlot {
                            geometry: gi,
                            used: 0,
                            offline,
                            fixed,
                        })
                    }
                };
                let domain = match (&d.nvlink_domain, &mig) {
                    (Some(name), None) => {
                        let id = *domain_ix.entry(name.clone()).or_insert_with(|| {
                            s.domains.push(DomainSlot {
                                model,
                                members: Vec::new(),
                                free: 0,
                            });
                            (s.domains.len() - 1) as u32
                        });
                        match domain_masks.iter_mut().find(|(dm, _, _)| *dm == id) {
                            Some((_, mask, _)) => *mask |= bit,
                            None => domain_masks.push((id, bit, 0)),
                        }
                        id
                    }
                    _ => NONE,
                };
                let healthy = d.health == Health::Healthy;
                let slot = DeviceSlot {
                    uuid: d.uuid.as_str().into(),
                    node: ni as u32,
                    local: di as u8,
                    model,
                    domain,
                    healthy,
                    mig,
                    whole_used: false,
                    shared_used: 0,
                };
                if slot.is_whole_free() {
                    free_mask |= bit;
                }
                if slot.mig.is_some() {
                    s.models[model.idx()]
                        .mig_devices
                        .push(s.devices.len() as u32);
                }
                s.devices.push(slot);
            }
            for &(dom, mask, _) in &domain_masks {
                s.domains[dom as usize].members.push((ni as u32, mask));
            }
            for &(m, _) in &model_masks {
                s.models[m.idx()].holders.push(ni as u32);
            }
            // Partitions of whole-capable devices by (model, domain), in a canonical order.
            let mut parts: Vec<crate::classes::Part> = Vec::new();
            for (di, d) in s.devices[dev_start as usize..].iter().enumerate() {
                if d.mig.is_some() {
                    continue;
                }
                match parts
                    .iter_mut()
                    .find(|p| p.model == d.model && p.domain == d.domain)
                {
                    Some(p) => p.mask |= 1 << di,
                    None => parts.push(crate::classes::Part {
                        model: d.model,
                        mask: 1 << di,
                        domain: d.domain,
                    }),
                }
            }
            let key_of = |p: &crate::classes::Part| crate::classes::PartKey {
                model: p.model,
                domain: p.domain != NONE,
                size: p.mask.count_ones() as u8,
            };
            parts.sort_by_key(|p| (key_of(p), p.mask.trailing_zeros()));
            let keys: Vec<crate::classes::PartKey> = parts.iter().map(key_of).collect();
            let layout = s.classes.layout(&keys);
            s.spec.max_cpu = s.spec.max_cpu.max(node.cpu_milli);
            s.spec.max_gpu = s.spec.max_gpu.max(node.devices.len() as u32 * 1000);
            s.nodes.push(NodeSlot {
                name: node.name.as_str().into(),
                cpu_total: node.cpu_milli,
                cpu_used: 0,
                mem_total: node.memory_mib,
                mem_used: 0,
                labels: labels.into(),
                ready: true,
                dev_start,
                dev_count: node.devices.len() as u32,
                free_mask,
                model_masks: model_masks.into(),
                domain_masks: domain_masks.into(),
                parts: parts.into(),
                layout,
            });
        }
        let n_nodes = s.nodes.len();
        let n_domains = s.domains.len();
        for m in &mut s.models {
            m.nodes = Buckets::new(n_nodes, 8);
            m.domains = Buckets::new(n_domains, 8);
        }
        for ni in 0..n_nodes {
            s.reindex_node(ni as u32);
            s.reclass(ni as u32);
        }
        s.quota = QuotaTree::new(tree, &s.flavor_index, s.flavors.len());
        s.queues = (0..tree.queues.len())
            .map(|_| QueueSlot {
                pending: BTreeSet::new(),
                running: BTreeSet::new(),
                history: vec![0.0; s.flavors.len()],
                whole_flavors: 0,
                other_flavors: 0,
                unmaskable: false,
                skipped: None,
                shapes: HashMap::default(),
                partial: 0,
                shape_skip: HashMap::default(),
            })
            .collect();
        Ok(s)
    }

    fn intern_flavor_name(&mut self, name: &str) -> FlavorId {
        if let Some(&id) = self.flavor_index.get(name) {
            return FlavorId(id);
        }
        match name.split_once('/') {
            None => self.intern_model(name),
            Some((model, profile)) => {
                let m = self.intern_model(model);
                let profile_idx = self
                    .geometries
                    .iter()
                    .find(|g| g.model == model)
                    .and_then(|g| g.profile(profile))
                    .map(|(i, _)| i as u8)
                    .unwrap_or(u8::MAX);
                self.push_flavor(
                    name,
                    FlavorKind::Mig {
                        model: m,
                        profile: profile_idx,
                    },
                )
            }
        }
    }

    fn push_flavor(&mut self, name: &str, kind: FlavorKind) -> FlavorId {
        let id = self.flavors.len() as u32;
        self.flavors.push(Flavor {
            name: name.into(),
            kind,
        });
        self.flavor_index.insert(name.into(), id);
        // Keep the per-model index vector, quota cells and queue histories aligned with flavor ids.
        self.models.push(ModelIndex::default());
        if !self.queues.is_empty() {
            self.quota.ensure_flavors(self.flavors.len());
            for q in &mut self.queues {
                q.history.resize(self.flavors.len(), 0.0);
            }
        }
        FlavorId(id)
    }

    fn intern_model(&mut self, model: &str) -> FlavorId {
        if let Some(&id) = self.flavor_index.get(model) {
            return FlavorId(id);
        }
        let id = self.push_flavor(model, FlavorKind::Model);
        if let Some(gi) = self.geometries.iter().position(|g| g.model == model) {
            let names: Vec<String> = self.geometries[gi]
                .profiles
                .iter()
                .map(|p| gantry_model::mig_flavor(model, &p.name))
                .collect();
            for (pi, n) in names.iter().enumerate() {
                if !self.flavor_index.contains_key(n.as_str()) {
                    self.push_flavor(
                        n,
                        FlavorKind::Mig {
                            model: id,
                            profile: pi as u8,
                        },
                    );
                }
            }
        }
        id
    }

    /// Recompute a node's entries in the model and domain buckets after its free mask or
    /// readiness changed.
    pub(crate) fn reindex_node(&mut self, n: u32) {
        let node = &self.nodes[n as usize];
        let avail = node.avail_mask();
        let ready = node.ready;
        for &(m, mask) in node.model_masks.iter() {
            let count = popcount(avail & mask);
            let mi = &mut self.models[m.idx()];
            mi.nodes.set(n, ready.then_some(count));
        }
        let node = &mut self.nodes[n as usize];
        for (dom, mask, contrib) in node.domain_masks.iter_mut() {
            let new = popcount(avail & *mask);
            if new != *contrib {
                let d = &mut self.domains[*dom as usize];
                d.free = d.free + new - *contrib;
                *contrib = new;
                let free = d.free;
                let model = d.model;
                self.models[model.idx()].domains.set(*dom, Some(free));
            } else {
                let d = &self.domains[*dom as usize];
                let (free, model) = (d.free, d.model);
                self.models[model.idx()].domains.set(*dom, Some(free));
            }
        }
    }

    /// Model flavors, by name, that have whole-capable devices (`mig == false`) or MIG-enabled
    /// devices (`mig == true`): what "any model" means in a job.
    fn models_with(&self, mig: bool) -> Vec<FlavorId> {
        let mut all: Vec<(&str, FlavorId)> = self
            .flavors
            .iter()
            .enumerate()
            .filter(|(i, f)| {
                let m = &self.models[*i];
                f.kind == FlavorKind::Model
                    && if mig {
                        !m.mig_devices.is_empty()
                    } else {
                        !m.holders.is_empty()
                    }
            })
            .map(|(i, f)| (&*f.name, FlavorId(i as u32)))
            .collect();
        all.sort();
        all.into_iter().map(|(_, f)| f).collect()
    }

    /// Intern a job's demand.
    fn compile_demand(&mut self, d: &Demand) -> Result<u32, EngineError> {
        // Allowed models as flavors; none listed means any model that has devices of the kind.
        let models = |s: &mut Snapshot, names: &[String], mig: bool| -> Box<[FlavorId]> {
            if names.is_empty() {
                s.models_with(mig).into()
            } else {
                names.iter().map(|n| s.intern_model(n)).collect()
            }
        };
        let gpu = match &d.gpu {
            GpuDemand::None => GpuNeed::None,
            GpuDemand::Whole { count, models: m } => GpuNeed::Whole {
                count: *count,
                models: models(self, m, false),
            },
            GpuDemand::Shared { milli, models: m } => GpuNeed::Shared {
                milli: (*milli).min(999) as u16,
                models: models(self, m, false),
            },
            GpuDemand::Mig { profile, models: m } => {
                let candidates = models(self, m, true);
                let mut options = Vec::new();
                for model in candidates {
                    let name = gantry_model::mig_flavor(&self.flavors[model.idx()].name, profile);
                    if let Some(&fid) = self.flavor_index.get(name.as_str()) {
                        if let FlavorKind::Mig { profile: p, .. } = self.flavors[fid as usize].kind
                        {
                            if p != u8::MAX {
                                options.push((FlavorId(fid), model, p));
                            }
                        }
                    }
                }
                if options.is_empty() {
                    return Err(EngineError::NoSuchProfile {
                        profile: profile.clone(),
                    });
                }
                GpuNeed::Mig {
                    options: options.into(),
                }
            }
        };
        let constraint = match self.constraint_index.get(&d.constraints) {
            Some(&c) => c,
            None => {
                let c = self.constraints.len() as u32;
                self.constraints.push(d.constraints.clone());
                self.eligible.push(None);
                self.constraint_index.insert(d.constraints.clone(), c);
                c
            }
        };
        let c = DemandC {
            cpu: d.cpu_milli,
            mem: d.memory_mib,
            gpu,
            nvlink: d.nvlink,
            constraint,
        };
        if let Some(&id) = self.demand_index.get(&c) {
            return Ok(id);
        }
        let id = self.demands.len() as u32;
        self.demands.push(c.clone());
        self.demand_index.insert(c, id);
        Ok(id)
    }

    fn label_key(&self, key: &str) -> u32 {
        self.label_keys
            .iter()
            .position(|k| &**k == key)
            .map_or(NONE, |p| p as u32)
    }

    /// Add a validated job, pending, at time `now`.
    ///
    /// # Errors
    /// A duplicate name, an unknown or non-leaf queue, or a MIG profile no model offers.
    pub fn submit(&mut self, job: &Job, now: Time) -> Result<JobId, EngineError> {
        if self.job_names.contains_key(job.name.as_str()) {
            return Err(EngineError::DuplicateJob {
                name: job.name.clone(),
            });
        }
        let queue = self
            .quota
            .find(&job.queue)
            .filter(|&q| self.quota.is_leaf(q))
            .ok_or_else(|| EngineError::UnknownQueue {
                queue: job.queue.clone(),
            })?;
        let mut groups = Vec::with_capacity(job.groups.len());
        for g in &job.groups {
            groups.push(GroupSlot {
                demand: self.compile_demand(&g.demand)?,
                count: g.count,
                running: 0,
                next_index: 0,
            });
        }
        let placement = match &job.placement {
            Placement::Any => PlacementC::Any,
            Placement::Node => PlacementC::Node,
            Placement::NvlinkDomain => PlacementC::Domain,
            Placement::Label(k) => PlacementC::Label(self.label_key(k)),
        };
        let spread = match &job.spread {
            Spread::None => SpreadC::None,
            Spread::Node => SpreadC::Node,
            Spread::Label(k) => SpreadC::Label(self.label_key(k)),
        };
        for g in &groups {
            if let Some(shape) = self.task_shape(g.demand) {
                self.workload.observe(shape, g.count, now);
            }
        }
        let shape = self.intern_shape(&groups, job.min_available, placement, spread);
        let id = self.jobs.len() as u32;
        let slot = JobSlot {
            name: job.name.as_str().into(),
            queue,
            priority: job.priority.value,
            preemptible: job.priority.preemptible,
            kind: job.kind,
            submit: now,
            groups: groups.into(),
            min_available: job.min_available,
            placement,
            spread,
            runtime: job.expected_runtime_ms,
            phase: JobPhase::Pending,
            start: None,
            tasks: Vec::new(),
            reason: None,
            eta: None,
            shape,
            in_pending: false,
            partial: false,
            protected_until: 0,
        };
        self.job_names.insert(job.name.as_str().into(), id);
        self.jobs.push(slot);
        self.fresh.push(id);
        self.sync_pending(id);
        Ok(JobId(id))
    }

    /// The nodes that admit constraint `c`, computed on first use.
    pub(crate) fn eligible(&mut self, c: u32) -> &Eligible {
        let ci = c as usize;
        if self.eligible[ci].is_none() {
            let e = self.compute_eligible(c);
            self.eligible[ci] = Some(e);
        }
        self.eligible[ci].as_ref().expect("just set")
    }

    /// Whether node `node` admits constraint `c` (uncached: for explanations).
    pub(crate) fn admits(&self, c: u32, node: u32) -> Result<(), gantry_model::Exclusion> {
        if let Some(e) = &self.eligible[c as usize] {
            if e.all {
                return Ok(());
            }
        }
        let (labels, taints) = &self.node_meta[node as usize];
        self.constraints[c as usize].admits(&self.nodes[node as usize].name, labels, taints)
    }

    fn compute_eligible(&self, c: u32) -> Eligible {
        let con = &self.constraints[c as usize];
        let n = self.nodes.len();
        if con.is_empty() && self.node_meta.iter().all(|(_, t)| t.is_empty()) {
            return Eligible {
                all: true,
                bits: Vec::new(),
                list: (0..n as u32).collect(),
            };
        }
        let mut bits = vec![0u64; n.div_ceil(64)];
        let mut list = Vec::new();
        for (i, (labels, taints)) in self.node_meta.iter().enumerate() {
            if con.admits(&self.nodes[i].name, labels, taints).is_ok() {
                bits[i / 64] |= 1 << (i % 64);
                list.push(i as u32);
            }
        }
        Eligible {
            all: list.len() == n,
            bits,
            list,
        }
    }

    /// A demand as the learned workload counts it (MIG demands are not counted).
    fn task_shape(&self, demand: u32) -> Option<crate::workload::TaskShape> {
        let d = &self.demands[demand as usize];
        let sorted = |m: &[FlavorId]| -> Box<[FlavorId]> {
            let mut v = m.to_vec();
            v.sort_unstable();
            v.into()
        };
        let (milli, count, models) = match &d.gpu {
            GpuNeed::None => (0, 0, Box::default()),
            GpuNeed::Whole { count, models } => (1000, *count, sorted(models)),
            GpuNeed::Shared { milli, models } => (*milli, 1, sorted(models)),
            GpuNeed::Mig { .. } => return None,
        };
        Some(crate::workload::TaskShape {
            cpu: d.cpu,
            milli,
            count,
            models,
        })
    }

    fn intern_shape(
        &mut self,
        groups: &[GroupSlot],
        min_available: u32,
        placement: PlacementC,
        spread: SpreadC,
    ) -> u32 {
        let key: ShapeKey = (
            groups.iter().map(|g| (g.demand, g.count)).collect(),
            min_available,
            placement,
            spread,
        );
        let next = self.shapes.len() as u32;
        *self.shapes.entry(key).or_insert(next)
    }

    /// Make the job's membership in its queue's pending set (and the queue's per-shape and
    /// partial counts) agree with whether it has unplaced tasks. Every change of a job's
    /// placement or task counts ends with this call.
    pub(crate) fn sync_pending(&mut self, id: u32) {
        let j = &self.jobs[id as usize];
        let want = j.has_unplaced();
        let partial = want && j.running_tasks() > 0;
        let (was, was_partial) = (j.in_pending, j.partial);
        let (key, q, shape, runtime, prio) = (
            j.order_key(id),
            j.queue as usize,
            j.shape,
            j.runtime,
            j.priority,
        );
        if want != was {
            let qs = &mut self.queues[q];
            if want {
                qs.pending.insert(key);
                let st = qs.shapes.entry(shape).or_insert(ShapeStat {
                    count: 0,
                    min_runtime: u64::MAX,
                    max_priority: i32::MIN,
                });
                st.count += 1;
                st.min_runtime = st.min_runtime.min(runtime.unwrap_or(u64::MAX));
                st.max_priority = st.max_priority.max(prio);
                self.pending_jobs += 1;
            } else {
                qs.pending.remove(&key);
                if let Some(st) = qs.shapes.get_mut(&shape) {
                    st.count -= 1;
                    if st.count == 0 {
                        qs.shapes.remove(&shape);
                    }
                }
                self.pending_jobs -= 1;
            }
        }
        if partial != was_partial {
            let qs = &mut self.queues[q];
            if partial {
                qs.partial += 1;
            } else {
                qs.partial -= 1;
            }
        }
        let j = &mut self.jobs[id as usize];
        j.in_pending = want;
        j.partial = partial;
        if want && !was {
            self.note_pending_flavors(id);
        }
    }

    /// Add or remove a job from its queue's running set, keeping the victim-priority counts.
    pub(crate) fn mark_running(&mut self, id: u32, running: bool) {
        let j = &self.jobs[id as usize];
        let (q, prio, preemptible) = (j.queue as usize, j.priority, j.preemptible);
        let changed = if running {
            self.queues[q].running.insert(id)
        } else {
            self.queues[q].running.remove(&id)
        };
        if changed && preemptible {
            if running {
                *self.victim_priorities.entry(prio).or_default() += 1;
            } else if let Some(c) = self.victim_priorities.get_mut(&prio) {
                *c -= 1;
                if *c == 0 {
                    self.victim_priorities.remove(&prio);
                }
            }
        }
    }

    /// Add a waiting job's flavors to its queue's masks.
    fn note_pending_flavors(&mut self, id: u32) {
        let j = &self.jobs[id as usize];
        let q = j.queue as usize;
        let (mut whole, mut other, mut unmaskable) = (0u64, 0u64, false);
        for g in j.groups.iter() {
            let (flavors, into): (Vec<FlavorId>, &mut u64) =
                match &self.demands[g.demand as usize].gpu {
                    GpuNeed::None => {
                        unmaskable = true;
                        continue;
                    }
                    GpuNeed::Whole { models, .. } => (models.to_vec(), &mut whole),
                    GpuNeed::Shared { models, .. } => (models.to_vec(), &mut other),
                    GpuNeed::Mig { options } => (options.iter().map(|o| o.0).collect(), &mut other),
                };
            for f in flavors {
                if f.0 < 64 {
                    *into |= 1 << f.0;
                } else {
                    unmaskable = true;
                }
            }
        }
        let qs = &mut self.queues[q];
        qs.whole_flavors |= whole;
        qs.other_flavors |= other;
        qs.unmaskable |= unmaskable;
    }

    fn job_mut(&mut self, id: JobId) -> Result<&mut JobSlot, EngineError> {
        self.jobs
            .get_mut(id.idx())
            .filter(|j| j.phase != JobPhase::Done)
            .ok_or(EngineError::UnknownJob { id: id.0 })
    }

    /// A job finished: release everything it holds and retire it.
    ///
    /// # Errors
    /// An unknown or already finished job.
    pub fn complete(&mut self, id: JobId) -> Result<(), EngineError> {
        self.retire(id)
    }

    /// A job was cancelled: release and retire it, pending or running.
    ///
    /// # Errors
    /// An unknown or already finished job.
    pub fn cancel(&mut self, id: JobId) -> Result<(), EngineError> {
        self.retire(id)
    }

    fn retire(&mut self, id: JobId) -> Result<(), EngineError> {
        self.job_mut(id)?;
        self.release_job(id.0);
        let j = &mut self.jobs[id.idx()];
        j.phase = JobPhase::Done;
        j.reason = None;
        j.eta = None;
        self.sync_pending(id.0);
        self.job_names.remove(&self.jobs[id.idx()].name);
        Ok(())
    }

    /// Put a running job back in its queue (preempted, or its node was lost): all tasks are
    /// released, so a gang restarts whole.
    ///
    /// # Errors
    /// An unknown or finished job.
    pub fn requeue(&mut self, id: JobId) -> Result<(), EngineError> {
        self.job_mut(id)?;
        self.release_job(id.0);
        let j = &mut self.jobs[id.idx()];
        j.phase = JobPhase::Pending;
        j.start = None;
        self.sync_pending(id.0);
        self.fresh.push(id.0);
        Ok(())
    }

    /// Put back a running job's tasks exactly as a driver recorded them (a server recovering
    /// from its store, or rebuilding its snapshot when the node set changed). The job must be
    /// pending with nothing placed; it becomes running with these tasks, started at `start`.
    ///
    /// # Guarantees
    /// No device, slice or share is handed out twice: every task is checked against what is
    /// already taken (including the job's own earlier tasks) and nothing is applied unless all
    /// of them fit.
    ///
    /// # Errors
    /// [`EngineError::UnknownJob`] for a finished or already placed job;
    /// [`EngineError::RestoreConflict`] for a task on an unknown node, group or device, a
    /// device already taken, or more tasks than its group holds.
    pub fn restore(
        &mut self,
        id: JobId,
        tasks: Vec<TaskAlloc>,
        start: Time,
    ) -> Result<(), EngineError> {
        let j = self.job_mut(id)?;
        if j.phase != JobPhase::Pending || !j.tasks.is_empty() {
            return Err(EngineError::UnknownJob { id: id.0 });
        }
        let mut applied: Vec<TaskAlloc> = Vec::with_capacity(tasks.len());
        let mut counts = vec![0u32; self.jobs[id.idx()].groups.len()];
        let mut failure = None;
        for t in tasks {
            if let Err(reason) = self.check_restorable(&t, &mut counts, id) {
                failure = Some(reason);
                break;
            }
            self.apply_task(id.0, &t);
            applied.push(t);
        }
        if let Some(reason) = failure {
            for t in &applied {
                self.release_task(id.0, t);
            }
            return Err(EngineError::RestoreConflict {
                job: self.jobs[id.idx()].name.to_string(),
                reason,
            });
        }
        let j = &mut self.jobs[id.idx()];
        for (gi, (g, c)) in j.groups.iter_mut().zip(&counts).enumerate() {
            g.running = *c;
            g.next_index = applied
                .iter()
                .filter(|t| usize::from(t.group) == gi)
                .map(|t| t.index + 1)
                .max()
                .unwrap_or(0);
        }
        j.tasks = applied;
        j.phase = JobPhase::Running;
        j.start = Some(start);
        j.reason = None;
        j.eta = None;
        self.mark_running(id.0, true);
        self.fresh.retain(|&f| f != id.0);
        self.sync_pending(id.0);
        Ok(())
    }

    fn check_restorable(&self, t: &TaskAlloc, counts: &mut [u32], id: JobId) -> Result<(), String> {
        let group = self.jobs[id.idx()]
            .groups
            .get(t.group as usize)
            .ok_or_else(|| format!("no task group {}", t.group))?;
        let c = &mut counts[t.group as usize];
        if *c >= group.count {
            return Err(format!(
                "group {} holds only {} tasks",
                t.group, group.count
            ));
        }
        *c += 1;
        let node = self
            .nodes
            .get(t.node.idx())
            .ok_or_else(|| format!("no node {}", t.node.0))?;
        if node.cpu_used + t.cpu_milli > node.cpu_total
            || node.mem_used + t.memory_mib > node.mem_total
        {
            return Err(format!(
                "node {} has not enough cpu or memory left",
                node.name
            ));
        }
        let on_node = |d: DeviceId| -> Result<&DeviceSlot, String> {
            let dev = self
                .devices
                .get(d.idx())
                .ok_or_else(|| format!("no device {}", d.0))?;
            if dev.node != t.node.0 {
                return Err(format!("device {} is not on node {}", dev.uuid, node.name));
            }
            Ok(dev)
        };
        match &t.gpu {
            GpuAlloc::None => {}
            GpuAlloc::Whole(devs) => {
                for &d in devs {
                    let dev = on_node(d)?;
                    if dev.mig.is_some() || dev.whole_used || dev.shared_used > 0 {
                        return Err(format!("device {} is already taken", dev.uuid));
                    }
                }
            }
            GpuAlloc::Shared { device, milli } => {
                let dev = on_node(*device)?;
                if dev.mig.is_some() || dev.whole_used || dev.shared_used + milli > 1000 {
                    return Err(format!("device {} has not {milli}/1000 left", dev.uuid));
                }
            }
            GpuAlloc::Mig {
                device,
                profile,
                start,
            } => {
                let dev = on_node(*device)?;
                let Some(m) = &dev.mig else {
                    return Err(format!("device {} is not in MIG mode", dev.uuid));
                };
                let geometry = &self.geometries[m.geometry as usize];
                let Some(p) = geometry.profiles.get(*profile as usize) else {
                    return Err(format!("device {} has no MIG profile {profile}", dev.uuid));
                };
                let mask = p.mask_at(*start);
                if !p.starts.contains(start) || m.used & mask != 0 {
                    return Err(format!(
                        "slice {}@{start} of device {} is already taken",
                        p.name, dev.uuid
                    ));
                }
            }
        }
        if t.flavor.0 != NONE && t.flavor.idx() >= self.flavors.len() {
            return Err(format!("no flavor {}", t.flavor.0));
        }
        Ok(())
    }

    /// Release every task of a job (without changing its phase).
    pub(crate) fn release_job(&mut self, id: u32) {
        let tasks = std::mem::take(&mut self.jobs[id as usize].tasks);
        for t in &tasks {
            self.release_task(id, t);
        }
        let j = &mut self.jobs[id as usize];
        for g in j.groups.iter_mut() {
            g.running = 0;
            g.next_index = 0;
        }
        self.mark_running(id, false);
        if !tasks.is_empty() {
            self.freed = true;
        }
    }

    /// Mark a node ready or not (lost, drained). Returns the jobs with tasks on it: the driver
    /// decides whether to requeue them (the server does, after a grace period).
    pub fn set_node_ready(&mut self, node: NodeId, ready: bool) -> Vec<JobId> {
        let Some(n) = self.nodes.get_mut(node.idx()) else {
            return Vec::new();
        };
        if n.ready != ready {
            n.ready = ready;
            self.reindex_node(node.0);
            self.reclass(node.0);
            if ready {
                self.freed = true;
            }
        }
        self.jobs_on_node(node)
    }

    /// Jobs with a task on `node`.
    pub fn jobs_on_node(&self, node: NodeId) -> Vec<JobId> {
        let mut out: Vec<JobId> = self
            .queues
            .iter()
            .flat_map(|q| q.running.iter())
            .filter(|&&j| self.jobs[j as usize].tasks.iter().any(|t| t.node == node))
            .map(|&j| JobId(j))
            .collect();
        out.sort();
        out
    }

    /// Set a device's health. An unhealthy device takes no new work; tasks already on it are
    /// the driver's to stop (see [`Snapshot::jobs_on_device`]).
    pub fn set_device_health(&mut self, device: DeviceId, health: Health) {
        let Some(d) = self.devices.get_mut(device.idx()) else {
            return;
        };
        let healthy = health == Health::Healthy;
        if d.healthy == healthy {
            return;
        }
        d.healthy = healthy;
        let node = d.node;
        self.refresh_device(device.0);
        self.reindex_node(node);
        self.reclass(node);
        if healthy {
            self.freed = true;
        }
    }

    /// Set the health of the pre-created MIG slice at memory slice `start` of `device` (one XID
    /// can hit one slice). An unhealthy slice is not offered; a task on it keeps it until the
    /// driver stops the task. Returns false when the device has no such slice.
    pub fn set_slice_health(&mut self, device: DeviceId, start: u8, health: Health) -> bool {
        let Some(d) = self.devices.get_mut(device.idx()) else {
            return false;
        };
        let Some(m) = d.mig.as_mut() else {
            return false;
        };
        let Some(&(profile, _)) = m
            .fixed
            .as_ref()
            .and_then(|f| f.iter().find(|(_, s)| *s == start))
        else {
            return false;
        };
        let mask = self.geometries[m.geometry as usize].profiles[profile as usize].mask_at(start);
        let before = m.offline;
        if health == Health::Healthy {
            m.offline &= !mask;
        } else {
            m.offline |= mask;
        }
        if m.offline != before {
            let node = d.node;
            self.reclass(node);
            if health == Health::Healthy {
                self.freed = true;
            }
        }
        true
    }

    /// Keep job `id` out of every victim search until `until` (ms): the driver's eviction of it
    /// was refused (a PodDisruptionBudget) and backs off. `0` lifts it.
    pub fn protect(&mut self, id: JobId, until: Time) {
        let Some(j) = self.jobs.get_mut(id.idx()) else {
            return;
        };
        if until < j.protected_until {
            // Lifted early: a victim is back.
            self.freed = true;
        }
        j.protected_until = until;
        if until > 0 {
            self.protection_ends = Some(self.protection_ends.map_or(until, |t| t.min(until)));
        }
    }

    /// Whether a protection ended by `now` (then the next cycle is a full one); moves the mark
    /// to the next protection still running.
    pub(crate) fn protection_ended(&mut self, now: Time) -> bool {
        match self.protection_ends {
            Some(t) if t <= now => {
                self.protection_ends = self
                    .jobs
                    .iter()
                    .map(|j| j.protected_until)
                    .filter(|&u| u > now)
                    .min();
                true
            }
            _ => false,
        }
    }

    /// Jobs holding `device` (whole, shared or a slice of it).
    pub fn jobs_on_device(&self, device: DeviceId) -> Vec<JobId> {
        let mut out: Vec<JobId> = self
            .queues
            .iter()
            .flat_map(|q| q.running.iter())
            .filter(|&&j| {
                self.jobs[j as usize].tasks.iter().any(|t| match &t.gpu {
                    GpuAlloc::Whole(ds) => ds.contains(&device),
                    GpuAlloc::Shared { device: d, .. } | GpuAlloc::Mig { device: d, .. } => {
                        *d == device
                    }
                    GpuAlloc::None => false,
                })
            })
            .map(|&j| JobId(j))
            .collect();
        out.sort();
        out
    }

    /// Change an inference service's desired replica count (the autoscaler's output), clamped
    /// to its `min..max`... by the caller. Scaling down releases replicas at once and returns how
    /// many were stopped: first those whose node is already the most free (so whole nodes come
    /// back for waiting gangs rather than holes on busy ones), then the newest.
    ///
    /// # Errors
    /// An unknown job, or one with several task groups.
    pub fn set_desired_replicas(&mut self, id: JobId, replicas: u32) -> Result<u32, EngineError> {
        let j = self.job_mut(id)?;
        if j.groups.len() != 1 {
            return Err(EngineError::NotScalable { id: id.0 });
        }
        let replicas = replicas.max(j.min_available);
        j.groups[0].count = replicas;
        let mut stopped = Vec::new();
        let _ = j;
        while self.jobs[id.idx()].groups[0].running > replicas {
            let nodes = &self.nodes;
            let j = &self.jobs[id.idx()];
            // The replica whose node has the most free GPUs, then the fewest tasks of this
            // service, then the newest.
            let Some(pos) = j
                .tasks
                .iter()
                .enumerate()
                .max_by_key(|(_, t)| {
                    let free = nodes[t.node.idx()].free_mask.count_ones();
                    let mine = j.tasks.iter().filter(|o| o.node == t.node).count();
                    (free, std::cmp::Reverse(mine), t.index)
                })
                .map(|(i, _)| i)
            else {
                break;
            };
            let j = &mut self.jobs[id.idx()];
            let t = j.tasks.swap_remove(pos);
            j.groups[0].running -= 1;
            // Released one by one, so the next choice sees the GPUs this one freed.
            self.release_task(id.0, &t);
            stopped.push(t);
        }
        if !stopped.is_empty() {
            self.freed = true;
        }
        // The task count is part of the shape: leave the set under the old one, rejoin under the new.
        let j = &mut self.jobs[id.idx()];
        let keep = j.has_unplaced();
        j.groups[0].count = j.groups[0].count.max(j.groups[0].running);
        let count = j.groups[0].count;
        j.groups[0].count = j.groups[0].running; // temporarily: nothing unplaced
        self.sync_pending(id.0);
        let j = &mut self.jobs[id.idx()];
        j.groups[0].count = count;
        let (groups, min, placement, spread) =
            (j.groups.clone(), j.min_available, j.placement, j.spread);
        self.jobs[id.idx()].shape = self.intern_shape(&groups, min, placement, spread);
        self.sync_pending(id.0);
        if keep {
            self.fresh.push(id.0);
        }
        Ok(stopped.len() as u32)
    }

    /// Release one task of a running job so that it is placed again (an inference replica
    /// that exited): the job keeps running on its other tasks, and the next cycle places a
    /// replacement under a new index. Returns false when the job would fall below its gang size
    /// (the caller requeues it whole instead) or has no such task.
    ///
    /// # Errors
    /// An unknown job.
    pub fn replace_task(&mut self, id: JobId, group: u16, index: u32) -> Result<bool, EngineError> {
        let j = self.job_mut(id)?;
        let Some(pos) = j
            .tasks
            .iter()
            .position(|t| t.group == group && t.index == index)
        else {
            return Ok(false);
        };
        if j.running_tasks() <= j.min_available {
            return Ok(false);
        }
        let t = j.tasks.swap_remove(pos);
        j.groups[usize::from(group)].running -= 1;
        self.release_task(id.0, &t);
        self.freed = true;
        self.sync_pending(id.0);
        self.fresh.push(id.0);
        Ok(true)
    }

    // ----- allocation primitives (used by the cycle and its statements) -----

    /// Recompute a device's bit in its node's free mask.
    pub(crate) fn refresh_device(&mut self, dev: u32) {
        let d = &self.devices[dev as usize];
        let bit = 1u64 << d.local;
        let free = d.is_whole_free();
        let node = &mut self.nodes[d.node as usize];
        if free {
            node.free_mask |= bit;
        } else {
            node.free_mask &= !bit;
        }
    }

    fn update_shared_index(&mut self, dev: u32, old_used: u16) {
        let d = &self.devices[dev as usize];
        let model = d.model;
        let new_used = d.shared_used;
        let idx = &mut self.models[model.idx()].shared;
        if old_used > 0 && old_used < 1000 {
            idx.remove(&(1000 - old_used, dev));
        }
        if new_used > 0 && new_used < 1000 {
            idx.insert((1000 - new_used, dev));
        }
    }

    /// Take the resources of one task.
    pub(crate) fn apply_task(&mut self, job: u32, t: &TaskAlloc) {
        let n = t.node.0;
        {
            let node = &mut self.nodes[n as usize];
            node.cpu_used += t.cpu_milli;
            node.mem_used += t.memory_mib;
        }
        match &t.gpu {
            GpuAlloc::None => {}
            GpuAlloc::Whole(devs) => {
                for d in devs {
                    self.devices[d.idx()].whole_used = true;
                    self.refresh_device(d.0);
                }
                self.reindex_node(n);
            }
            GpuAlloc::Shared { device, milli } => {
                let old = self.devices[device.idx()].shared_used;
                self.devices[device.idx()].shared_used = old + milli;
                self.update_shared_index(device.0, old);
                self.refresh_device(device.0);
                if old == 0 {
                    self.reindex_node(n);
                }
            }
            GpuAlloc::Mig {
                device,
                profile,
                start,
            } => {
                let mask = self.mig_mask(device.0, *profile, *start);
                if let Some(m) = self.devices[device.idx()].mig.as_mut() {
                    m.used |= mask;
                }
            }
        }
        if t.flavor.0 != NONE {
            let q = self.jobs[job as usize].queue;
            self.quota.add_usage(q, t.flavor.0, t.amount as i64);
        }
        self.reclass(n);
    }

    /// Give back the resources of one task.
    pub(crate) fn release_task(&mut self, job: u32, t: &TaskAlloc) {
        let n = t.node.0;
        {
            let node = &mut self.nodes[n as usize];
            node.cpu_used -= t.cpu_milli;
            node.mem_used -= t.memory_mib;
        }
        match &t.gpu {
            GpuAlloc::None => {}
            GpuAlloc::Whole(devs) => {
                for d in devs {
                    self.devices[d.idx()].whole_used = false;
                    self.refresh_device(d.0);
                }
                self.reindex_node(n);
            }
            GpuAlloc::Shared { device, milli } => {
                let old = self.devices[device.idx()].shared_used;
                self.devices[device.idx()].shared_used = old - milli;
                self.update_shared_index(device.0, old);
                self.refresh_device(device.0);
                if old == *milli {
                    self.reindex_node(n);
                }
            }
            GpuAlloc::Mig {
                device,
                profile,
                start,
            } => {
                let mask = self.mig_mask(device.0, *profile, *start);
                if let Some(m) = self.devices[device.idx()].mig.as_mut() {
                    m.used &= !mask;
                }
            }
        }
        if t.flavor.0 != NONE {
            let q = self.jobs[job as usize].queue;
            self.quota.add_usage(q, t.flavor.0, -(t.amount as i64));
        }
        self.reclass(n);
    }

    pub(crate) fn mig_mask(&self, dev: u32, profile: u8, start: u8) -> u8 {
        let d = &self.devices[dev as usize];
        let Some(m) = &d.mig else { return 0 };
        self.geometries[m.geometry as usize].profiles[profile as usize].mask_at(start)
    }

    // ----- read access for drivers -----

    /// Node count.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// A node's name.
    pub fn node_name(&self, n: NodeId) -> &str {
        &self.nodes[n.idx()].name
    }

    /// A node by name.
    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .position(|n| &*n.name == name)
            .map(|i| NodeId(i as u32))
    }

    /// A device's uuid.
    pub fn device_uuid(&self, d: DeviceId) -> &str {
        &self.devices[d.idx()].uuid
    }

    /// A device by uuid.
    pub fn device_by_uuid(&self, uuid: &str) -> Option<DeviceId> {
        self.devices
            .iter()
            .position(|d| &*d.uuid == uuid)
            .map(|i| DeviceId(i as u32))
    }

    /// The MIG profile name of a profile index on a device.
    pub fn mig_profile_name(&self, d: DeviceId, profile: u8) -> &str {
        let dev = &self.devices[d.idx()];
        dev.mig
            .as_ref()
            .map(|m| {
                self.geometries[m.geometry as usize].profiles[profile as usize]
                    .name
                    .as_str()
            })
            .unwrap_or("")
    }

    /// A job by name (not finished).
    pub fn job_by_name(&self, name: &str) -> Option<JobId> {
        self.job_names.get(name).map(|&i| JobId(i))
    }

    /// A job's name.
    pub fn job_name(&self, j: JobId) -> &str {
        &self.jobs[j.idx()].name
    }

    /// A job's phase.
    pub fn job_phase(&self, j: JobId) -> JobPhase {
        self.jobs[j.idx()].phase
    }

    /// A job's kind.
    pub fn job_kind(&self, j: JobId) -> JobKind {
        self.jobs[j.idx()].kind
    }

    /// A job's priority value.
    pub fn job_priority(&self, j: JobId) -> i32 {
        self.jobs[j.idx()].priority
    }

    /// Tasks a job wants and tasks it has placed.
    pub fn job_task_counts(&self, j: JobId) -> (u32, u32) {
        let s = &self.jobs[j.idx()];
        (s.groups.iter().map(|g| g.count).sum(), s.running_tasks())
    }

    /// A job's placed tasks.
    pub fn job_tasks(&self, j: JobId) -> &[TaskAlloc] {
        &self.jobs[j.idx()].tasks
    }

    /// A job's leaf queue.
    pub fn job_queue(&self, j: JobId) -> QueueId {
        QueueId(self.jobs[j.idx()].queue)
    }

    /// When a job was submitted and when it (last) started.
    pub fn job_times(&self, j: JobId) -> (Time, Option<Time>) {
        let s = &self.jobs[j.idx()];
        (s.submit, s.start)
    }

    /// GPUs a job holds, in thousandths (whole GPUs count 1000 each; slices count 1000).
    pub fn job_gpu_milli(&self, j: JobId) -> u64 {
        self.jobs[j.idx()].tasks.iter().map(|t| t.amount).sum()
    }

    /// Jobs ever submitted (including finished ones).
    pub fn job_count(&self) -> usize {
        self.jobs.len()
    }

    /// Jobs with unplaced tasks.
    pub fn pending_count(&self) -> usize {
        self.pending_jobs
    }

    /// Queue count (tree nodes).
    pub fn queue_count(&self) -> usize {
        self.queues.len()
    }

    /// A queue's name.
    pub fn queue_name(&self, q: QueueId) -> &str {
        self.quota.name(q.0)
    }

    /// A queue by name.
    pub fn queue_by_name(&self, name: &str) -> Option<QueueId> {
        self.quota.find(name).map(QueueId)
    }

    /// Whether a queue is a leaf.
    pub fn queue_is_leaf(&self, q: QueueId) -> bool {
        self.quota.is_leaf(q.0)
    }

    /// Pending jobs in a queue.
    pub fn queue_pending(&self, q: QueueId) -> usize {
        self.queues[q.idx()].pending.len()
    }

    /// A flavor by name (`h100-80gb`, `h100-80gb/1g.10gb`).
    pub fn flavor_by_name(&self, name: &str) -> Option<FlavorId> {
        self.flavor_index.get(name).map(|&i| FlavorId(i))
    }

    /// A flavor's name.
    pub fn flavor_name(&self, f: FlavorId) -> &str {
        &self.flavors[f.idx()].name
    }

    /// All flavors.
    pub fn flavors(&self) -> impl Iterator<Item = FlavorId> + '_ {
        (0..self.flavors.len() as u32).map(FlavorId)
    }

    /// A queue's usage of a flavor (thousandths), its subtree included.
    pub fn queue_usage(&self, q: QueueId, f: FlavorId) -> u64 {
        self.quota.usage(q.0, f.0)
    }

    /// A queue's nominal quota of a flavor (thousandths).
    pub fn queue_nominal(&self, q: QueueId, f: FlavorId) -> u64 {
        self.quota.nominal(q.0, f.0)
    }

    /// Whole GPUs (non-MIG, healthy, on ready nodes) and how many are allocated whole or shared.
    pub fn gpu_totals(&self) -> GpuTotals {
        let mut t = GpuTotals::default();
        for d in &self.devices {
            if !self.nodes[d.node as usize].ready || !d.healthy {
                continue;
            }
            match &d.mig {
                Some(m) => {
                    t.mig_devices += 1;
                    t.mig_slices_used += m.used.count_ones() as u64;
                }
                None => {
                    t.devices += 1;
                    if d.whole_used {
                        t.allocated_milli += 1000;
                    } else {
                        t.allocated_milli += d.shared_used as u64;
                    }
                    if d.is_whole_free() {
                        t.free_devices += 1;
                    }
                }
            }
        }
        t
    }
}

/// Cluster-wide GPU figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuTotals {
    /// Healthy whole-capable devices on ready nodes.
    pub devices: u64,
    /// Allocated, in thousandths of a device (shared fractions counted as used).
    pub allocated_milli: u64,
    /// Devices with nothing on them.
    pub free_devices: u64,
    /// MIG-enabled devices.
    pub mig_devices: u64,
    /// Memory slices used on MIG devices.
    pub mig_slices_used: u64,
}
