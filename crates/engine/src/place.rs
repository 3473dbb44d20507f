//! Placement: where a job's tasks go, staged in a [`Tx`] (a statement) that commits or rolls
//! back in O(tasks) — what makes a gang all-or-nothing cheap.
//!
//! - One task of a whole-GPU, shared-GPU or CPU-only group goes to the best candidate over every
//!   allowed model with quota left (`choose`, scored by `score`); a multi-task group keeps its
//!   tasks on one model, trying its first task's best model first.
//! - MIG: only legal starts; the device and start that destroy the fewest still-open placements
//!   (over all profiles), preferring fuller devices.
//! - Gang scopes: one node, one NVLink domain, or one value of a label — candidates are tried
//!   best-fit first, each in a nested statement.
//! - Reservations from backfill hide devices from jobs that would still hold them when the
//!   reserved job is due to start.

use crate::fast::HashMap;

use crate::explain::Reason;
use crate::profile::Packing;
use crate::score::Ask;
use crate::snapshot::{
    DeviceId, FlavorId, GpuAlloc, GpuNeed, JobSlot, NodeId, PlacementC, Snapshot, SpreadC,
    TaskAlloc, Time, NONE,
};

/// A staged change: tasks applied so far, undone in reverse on rollback.
#[derive(Debug, Default)]
pub(crate) struct Tx {
    ops: Vec<(u32, TaskAlloc, bool)>,
}

impl Tx {
    pub fn mark(&self) -> usize {
        self.ops.len()
    }

    pub fn apply(&mut self, s: &mut Snapshot, job: u32, t: TaskAlloc) {
        s.apply_task(job, &t);
        self.ops.push((job, t, true));
    }

    /// Stage the release of a task a job already holds (preemption).
    pub fn release(&mut self, s: &mut Snapshot, job: u32, t: TaskAlloc) {
        s.release_task(job, &t);
        self.ops.push((job, t, false));
    }

    /// Undo everything after `mark`.
    pub fn rollback_to(&mut self, s: &mut Snapshot, mark: usize) {
        while self.ops.len() > mark {
            let Some((job, t, applied)) = self.ops.pop() else {
                break;
            };
            if applied {
                s.release_task(job, &t);
            } else {
                s.apply_task(job, &t);
            }
        }
    }

    /// The staged operations (job, task, applied?) in order.
    pub fn into_ops(self) -> Vec<(u32, TaskAlloc, bool)> {
        self.ops
    }

    pub fn applied_since(&self, mark: usize) -> impl Iterator<Item = &TaskAlloc> {
        self.ops[mark..]
            .iter()
            .filter(|(_, _, a)| *a)
            .map(|(_, t, _)| t)
    }
}

/// Devices held for reserved jobs during one cycle.
#[derive(Debug, Default, Clone)]
pub(crate) struct Reservations {
    /// device → (start, job)
    pub devices: HashMap<u32, (Time, u32)>,
    /// node → reserved device bits
    pub nodes: HashMap<u32, u64>,
}

impl Reservations {
    /// Bits on `node` the job (ending at `end`) may not use, and one reservation that blocked it.
    pub(crate) fn blocked(
        &self,
        s: &Snapshot,
        node: u32,
        end: Time,
        job: u32,
    ) -> (u64, Option<(u32, Time)>) {
        let Some(&bits) = self.nodes.get(&node) else {
            return (0, None);
        };
        let start = s.nodes[node as usize].dev_start;
        let mut out = 0u64;
        let mut by = None;
        let mut b = bits;
        while b != 0 {
            let i = b.trailing_zeros();
            b &= b - 1;
            if let Some(&(t, holder)) = self.devices.get(&(start + i)) {
                if holder != job && end > t {
                    out |= 1 << i;
                    by.get_or_insert((holder, t));
                }
            }
        }
        (out, by)
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Drop a job's reservation (it started after all).
    pub fn remove_job(&mut self, s: &Snapshot, job: u32) {
        self.devices.retain(|_, &mut (_, holder)| holder != job);
        self.nodes.clear();
        for &dev in self.devices.keys() {
            let d = &s.devices[dev as usize];
            *self.nodes.entry(d.node).or_default() |= 1 << d.local;
        }
    }

    /// The reservations grouped per job, for the plan.
    pub fn by_job(&self) -> Vec<crate::plan::Reservation> {
        let mut per: HashMap<u32, (Time, Vec<DeviceId>)> = HashMap::default();
        for (&dev, &(t, job)) in &self.devices {
            let e = per.entry(job).or_insert((t, Vec::new()));
            e.0 = e.0.min(t);
            e.1.push(DeviceId(dev));
        }
        per.into_iter()
            .map(|(job, (start, mut devices))| {
                devices.sort();
                crate::plan::Reservation {
                    job: crate::snapshot::JobId(job),
                    start,
                    devices,
                }
            })
            .collect()
    }

    pub fn add(&mut self, s: &Snapshot, dev: u32, start: Time, job: u32) {
        let d = &s.devices[dev as usize];
        let e = self.devices.entry(dev).or_insert((start, job));
        if start < e.0 {
            *e = (start, job);
        }
        *self.nodes.entry(d.node).or_default() |= 1 << d.local;
    }
}

/// How one task of a group is placed, per allowed flavor.
enum How {
    Whole(u32),
    Shared(u16),
    Mig(FlavorId, u8),
    Cpu,
}

/// A MIG candidate: (sort key, device, start).
type MigChoice = ((u32, u32, u32, u8), u32, u8);

/// Where the tasks of one attempt may go.
#[derive(Debug, Clone)]
pub(crate) enum Scope {
    All,
    Node(u32),
    Domain(u32),
    Nodes(Vec<u32>),
}

impl Scope {
    pub(crate) fn allows(&self, node: u32) -> bool {
        match self {
            Scope::All | Scope::Domain(_) => true,
            Scope::Node(n) => *n == node,
            Scope::Nodes(list) => list.binary_search(&node).is_ok(),
        }
    }
}

/// Why the best attempt fell short, kept while trying candidates.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Miss {
    pub cpu_mem: bool,
    pub reserved: Option<(u32, Time)>,
    pub spread: bool,
}

/// One placement attempt's context.
pub(crate) struct Placer<'a> {
    pub s: &'a mut Snapshot,
    pub packing: Packing,
    pub reservations: &'a Reservations,
    pub now: Time,
    /// Treat the job as holding its devices until this time instead of `now + runtime`
    /// (`Some(Time::MAX)` while computing a reservation: stay clear of every other one).
    pub end_override: Option<Time>,
}

fn take_lowest(mask: u64, k: u32) -> Vec<DeviceId> {
    let mut out = Vec::with_capacity(k as usize);
    let mut m = mask;
    while out.len() < k as usize && m != 0 {
        let i = m.trailing_zeros();
        m &= m - 1;
        out.push(DeviceId(i));
    }
    out
}

impl Placer<'_> {
    pub(crate) fn job(&self, job: u32) -> &JobSlot {
        &self.s.jobs[job as usize]
    }

    pub(crate) fn end(&self, job: u32) -> Time {
        self.end_override
            .unwrap_or_else(|| self.job(job).expected_end(self.now))
    }

    fn node_fits_cpu_mem(&self, node: u32, cpu: u32, mem: u64, miss: &mut Miss) -> bool {
        let n = &self.s.nodes[node as usize];
        if n.cpu_free() >= cpu && n.mem_free() >= mem {
            true
        } else {
            miss.cpu_mem = true;
            false
        }
    }

    pub(crate) fn spread_ok(&self, job: u32, node: u32, staged: &[u32], miss: &mut Miss) -> bool {
        if self.job(job).spread != SpreadC::Node {
            return true;
        }
        let taken = staged.contains(&node) || self.job(job).tasks.iter().any(|t| t.node.0 == node);
        if taken {
            miss.spread = true;
        }
        !taken
    }

    /// Choose `k` devices on a node from `usable`: the node's NVLink domain with the fewest
    /// usable devices that still holds all `k` (so whole domains stay free); across domains only
    /// when `nvlink` is not required.
    pub(crate) fn pick_devices(
        &self,
        node: u32,
        usable: u64,
        k: u32,
        nvlink: bool,
    ) -> Option<Vec<DeviceId>> {
        if usable.count_ones() < k {
            return None;
        }
        let n = &self.s.nodes[node as usize];
        let mut best: Option<(u32, u64)> = None;
        for &(_, dmask, _) in n.domain_masks.iter() {
            let c = (usable & dmask).count_ones();
            if c >= k && best.is_none_or(|(bc, _)| c < bc) {
                best = Some((c, usable & dmask));
            }
        }
        let chosen = match best {
            Some((_, m)) => m,
            None if nvlink && k > 1 => return None,
            None => usable,
        };
        let base = n.dev_start;
        Some(
            take_lowest(chosen, k)
                .into_iter()
                .map(|d| DeviceId(base + d.0))
                .collect(),
        )
    }

    /// Free whole devices of `model` on `node` (ready nodes only).
    pub fn free_of(&self, node: u32, model: FlavorId) -> u32 {
        let n = &self.s.nodes[node as usize];
        n.model_masks
            .iter()
            .find(|(m, _)| *m == model)
            .map_or(0, |&(_, m)| (n.avail_mask() & m).count_ones())
    }

    #[allow(clippy::too_many_arguments)]
    fn place_mig(
        &self,
        job: u32,
        group: u16,
        mig_flavor: FlavorId,
        model: FlavorId,
        profile: u8,
        scope: &Scope,
        staged_nodes: &[u32],
        miss: &mut Miss,
    ) -> Option<TaskAlloc> {
        let d = &self.s.demands[self.job(job).groups[group as usize].demand as usize];
        let (cpu, mem, con) = (d.cpu, d.mem, d.constraint);
        let mut best: Option<MigChoice> = None;
        for &dev in &self.s.models[model.idx()].mig_devices {
            let dv = &self.s.devices[dev as usize];
            let node = dv.node;
            let eligible = self.s.eligible[con as usize]
                .as_ref()
                .is_some_and(|e| e.admits(node));
            if !dv.healthy || !self.s.nodes[node as usize].ready || !scope.allows(node) || !eligible
            {
                continue;
            }
            let Some(m) = &dv.mig else { continue };
            let geo = &self.s.geometries[m.geometry as usize];
            let Some(p) = geo.profiles.get(profile as usize) else {
                continue;
            };
            let before = geo.open_placements(m.used);
            let mut dev_best: Option<(u32, u8)> = None;
            let mut consider = |start: u8| {
                let mask = p.mask_at(start);
                if mask & (m.used | m.offline) != 0 {
                    return;
                }
                let cost = before - geo.open_placements(m.used | mask);
                if dev_best.is_none_or(|(c, s)| (cost, start) < (c, s)) {
                    dev_best = Some((cost, start));
                }
            };
            match &m.fixed {
                None => p.starts.iter().for_each(|&s| consider(s)),
                Some(slices) => slices
                    .iter()
                    .filter(|(pi, _)| *pi == profile)
                    .for_each(|&(_, s)| consider(s)),
            }
            let Some((cost, start)) = dev_best else {
                continue;
            };
            if !self.node_fits_cpu_mem(node, cpu, mem, miss)
                || !self.spread_ok(job, node, staged_nodes, miss)
            {
                continue;
            }
            let free_slices = 8 - m.used.count_ones();
            let key = match self.packing {
                // Fullest device first (bin packing), then the start that destroys the fewest
                // still-open placements.
                Packing::FirstFit => (0, 0, dev, start),
                _ => (free_slices, cost, dev, start),
            };
            if best.is_none_or(|(b, _, _)| key < b) {
                best = Some((key, dev, start));
            }
        }
        best.map(|(_, dev, start)| TaskAlloc {
            group,
            index: 0,
            node: NodeId(self.s.devices[dev as usize].node),
            cpu_milli: cpu,
            memory_mib: mem,
            gpu: GpuAlloc::Mig {
                device: DeviceId(dev),
                profile,
                start,
            },
            flavor: mig_flavor,
            amount: 1000,
        })
    }

    /// Largest free count of `model` on one node.
    fn largest_free(&self, model: FlavorId) -> u32 {
        let b = &self.s.models[model.idx()].nodes.by_count;
        (0..b.len()).rev().find(|&c| !b[c].is_empty()).unwrap_or(0) as u32
    }

    fn largest_free_domain(&self, model: FlavorId) -> u32 {
        let b = &self.s.models[model.idx()].domains.by_count;
        (0..b.len()).rev().find(|&c| !b[c].is_empty()).unwrap_or(0) as u32
    }

    /// Stage up to `n` tasks of `group` on `flavors` (all on one for a multi-task group: the
    /// caller passes one), one at a time; returns how many fit.
    #[allow(clippy::too_many_arguments)]
    fn stage_tasks(
        &mut self,
        job: u32,
        group: u16,
        flavors: &[FlavorId],
        how: &How,
        n: u32,
        scope: &Scope,
        tx: &mut Tx,
        staged_nodes: &mut Vec<u32>,
        miss: &mut Miss,
    ) -> u32 {
        let (nvlink, con) = {
            let d = &self.s.demands[self.job(job).groups[group as usize].demand as usize];
            (d.nvlink, d.constraint)
        };
        self.s.eligible(con);
        let mut placed = 0;
        while placed < n {
            let t = match how {
                How::Whole(k) => self.place_task(
                    job,
                    group,
                    Ask::Whole { k: *k, nvlink },
                    flavors,
                    scope,
                    staged_nodes,
                    miss,
                ),
                How::Shared(m) => self.place_task(
                    job,
                    group,
                    Ask::Shared { milli: *m },
                    flavors,
                    scope,
                    staged_nodes,
                    miss,
                ),
                How::Mig(model, p) => self.place_mig(
                    job,
                    group,
                    flavors[0],
                    *model,
                    *p,
                    scope,
                    staged_nodes,
                    miss,
                ),
                How::Cpu => self.place_task(job, group, Ask::Cpu, &[], scope, staged_nodes, miss),
            };
            let Some(t) = t else { break };
            staged_nodes.push(t.node.0);
            tx.apply(self.s, job, t);
            placed += 1;
        }
        placed
    }

    /// Place up to `want` tasks of one group inside `scope`, all on one flavor: the first allowed
    /// flavor (in the job's order) that takes all of them, else the one that took the most.
    /// Returns how many were placed.
    fn place_group(
        &mut self,
        job: u32,
        group: u16,
        want: u32,
        scope: &Scope,
        tx: &mut Tx,
        staged_nodes: &mut Vec<u32>,
    ) -> (u32, Option<Reason>) {
        let demand = self.s.demands[self.job(job).groups[group as usize].demand as usize].clone();
        let q = self.job(job).queue;
        let options: Vec<(FlavorId, u64, How)> = match &demand.gpu {
            GpuNeed::None => vec![(FlavorId(NONE), 0, How::Cpu)],
            GpuNeed::Whole { count, models } => models
                .iter()
                .map(|&m| (m, *count as u64 * 1000, How::Whole(*count)))
                .collect(),
            GpuNeed::Shared { milli, models } => models
                .iter()
                .map(|&m| (m, *milli as u64, How::Shared(*milli)))
                .collect(),
            GpuNeed::Mig { options } => options
                .iter()
                .map(|&(f, m, p)| (f, 1000, How::Mig(m, p)))
                .collect(),
        };
        if options.is_empty() {
            return (0, Some(Reason::NoFlavor));
        }
        // Flavors the queue's quota does not list are not candidates at all (unless it allows
        // unlisted ones), so reasons never name them.
        let mut options = options;
        let first = options[0].0;
        let total = options.len() as u32;
        options.retain(|(f, _, _)| f.0 == NONE || self.s.quota.may_use(q, f.0));
        if options.is_empty() {
            return (
                0,
                Some(Reason::NotInQuota {
                    queue: q,
                    flavor: first.0,
                    others: total - 1,
                }),
            );
        }
        let mut best: Option<(u32, usize)> = None;
        let mut first_reason: Option<Reason> = None;
        let start_mark = tx.mark();
        let nodes_mark = staged_nodes.len();
        // One score over every allowed model with quota left: a lone task goes to the best
        // candidate of any model; a multi-task group tries the model of its first task's best
        // candidate first (its tasks stay on one model).
        let mut order: Vec<usize> = (0..options.len()).collect();
        if !matches!(demand.gpu, GpuNeed::Mig { .. }) {
            let ok: Vec<FlavorId> = options
                .iter()
                .filter(|(f, amount, _)| {
                    f.0 == NONE || *amount == 0 || self.s.quota.available(q, f.0) >= *amount
                })
                .map(|o| o.0)
                .collect();
            if !ok.is_empty() && (want == 1 || ok.len() > 1) {
                let mut miss = Miss::default();
                let how = &options[0].2;
                let placed =
                    self.stage_tasks(job, group, &ok, how, 1, scope, tx, staged_nodes, &mut miss);
                if placed == 1 && want == 1 {
                    return (1, None);
                }
                if placed == 1 {
                    let f = tx.applied_since(start_mark).last().map(|t| t.flavor);
                    if let Some(i) = options.iter().position(|o| Some(o.0) == f) {
                        order.retain(|&x| x != i);
                        order.insert(0, i);
                    }
                }
                tx.rollback_to(self.s, start_mark);
                staged_nodes.truncate(nodes_mark);
            }
        }
        for oi in order {
            let (flavor, amount, how) = &options[oi];
            let by_quota = if flavor.0 == NONE || *amount == 0 {
                want
            } else {
                let avail = self.s.quota.available(q, flavor.0);
                (avail / amount).min(want as u64) as u32
            };
            let mut miss = Miss::default();
            let placed = self.stage_tasks(
                job,
                group,
                &[*flavor],
                how,
                by_quota,
                scope,
                tx,
                staged_nodes,
                &mut miss,
            );
            if placed == want {
                return (placed, None);
            }
            // Undo this flavor's staging first, so the reason's numbers are the real state.
            tx.rollback_to(self.s, start_mark);
            staged_nodes.truncate(nodes_mark);
            let reason = if placed >= by_quota && by_quota < want {
                Reason::Quota {
                    queue: q,
                    flavor: flavor.0,
                    used: self.s.quota.usage(q, flavor.0),
                    nominal: self.s.quota.nominal(q, flavor.0),
                    requested: amount * want as u64,
                    available: self.s.quota.available(q, flavor.0),
                    cohort: self.s.quota.cohort_available(q, flavor.0),
                }
            } else if let Some((holder, t)) = miss.reserved {
                Reason::Reservation {
                    job: holder,
                    start: t,
                }
            } else if miss.spread {
                Reason::Spread { placed }
            } else if miss.cpu_mem {
                Reason::CpuMemory {
                    missing: want - placed,
                }
            } else {
                match how {
                    How::Whole(k) if demand.nvlink && *k > 1 => Reason::Domain {
                        flavor: flavor.0,
                        needed: *k,
                        largest_free: self.largest_free_domain(*flavor),
                    },
                    How::Whole(k) => Reason::Capacity {
                        flavor: flavor.0,
                        per_task: *k,
                        missing: want - placed,
                        largest_free: self.largest_free(*flavor),
                    },
                    How::Shared(m) => Reason::Shared {
                        flavor: flavor.0,
                        milli: *m,
                    },
                    How::Mig(..) => Reason::Mig {
                        flavor: flavor.0,
                        missing: want - placed,
                    },
                    How::Cpu => Reason::CpuMemory {
                        missing: want - placed,
                    },
                }
            };
            // Report the flavor that came closest (the first allowed one on ties).
            if best.is_none_or(|(b, _)| placed > b) {
                best = Some((placed, oi));
                first_reason = Some(reason);
            }
        }
        // No flavor took all: redo the best partial one (callers decide if partial is enough).
        let Some((n, oi)) = best.filter(|(n, _)| *n > 0) else {
            return (0, first_reason);
        };
        let (flavor, _, how) = &options[oi];
        let mut miss = Miss::default();
        let placed = self.stage_tasks(
            job,
            group,
            &[*flavor],
            how,
            n,
            scope,
            tx,
            staged_nodes,
            &mut miss,
        );
        (placed, first_reason)
    }

    /// Place every group's unplaced tasks in one scope. Ok(placed) when at least `need` tasks
    /// were placed (the rest of the staged tasks stay staged).
    fn place_in_scope(
        &mut self,
        job: u32,
        scope: &Scope,
        need: u32,
        tx: &mut Tx,
    ) -> Result<u32, Reason> {
        let mark = tx.mark();
        let mut staged_nodes = Vec::new();
        let mut total = 0;
        let mut reason = None;
        let groups: Vec<(u16, u32)> = self
            .job(job)
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| (i as u16, g.count - g.running))
            .filter(|&(_, u)| u > 0)
            .collect();
        for (g, unplaced) in groups {
            let (placed, r) = self.place_group(job, g, unplaced, scope, tx, &mut staged_nodes);
            total += placed;
            if placed < unplaced && reason.is_none() {
                reason = r;
            }
        }
        if total >= need && total > 0 {
            Ok(total)
        } else {
            tx.rollback_to(self.s, mark);
            let running = self.job(job).running_tasks();
            Err(reason.unwrap_or(Reason::Gang {
                placed: running + total,
                min_available: self.job(job).min_available,
            }))
        }
    }

    /// The GPU model and whole-GPU total that drive scope candidate order.
    fn scope_model(&self, job: u32) -> Option<(Vec<FlavorId>, u32)> {
        let j = self.job(job);
        let mut total = 0;
        let mut models: Option<Vec<FlavorId>> = None;
        for g in j.groups.iter() {
            if let GpuNeed::Whole { count, models: m } = &self.s.demands[g.demand as usize].gpu {
                total += count * (g.count - g.running);
                models.get_or_insert_with(|| m.to_vec());
            }
        }
        models.map(|m| (m, total))
    }

    /// Place a job's unplaced tasks: at least enough to complete its gang, all-or-nothing.
    pub fn place_job(&mut self, job: u32, tx: &mut Tx) -> Result<u32, Reason> {
        let j = self.job(job);
        let running = j.running_tasks();
        let need = j.min_available.saturating_sub(running).max(1);
        match j.placement {
            PlacementC::Any => self.place_in_scope(job, &Scope::All, need, tx),
            PlacementC::Node => {
                let (models, total) = self.scope_model(job).unwrap_or((Vec::new(), 0));
                let mut candidates: Vec<(u32, u32)> = Vec::new();
                if models.is_empty() {
                    candidates = (0..self.s.nodes.len() as u32).map(|n| (0, n)).collect();
                } else {
                    for &m in &models {
                        let b = &self.s.models[m.idx()].nodes.by_count;
                        for (c, nodes) in b.iter().enumerate().skip(total as usize) {
                            candidates.extend(nodes.iter().map(|&n| (c as u32, n)));
                        }
                    }
                    candidates.sort_unstable();
                    candidates.dedup_by_key(|c| c.1);
                }
                let mut first = None;
                for (_, n) in candidates.into_iter().take(256) {
                    match self.place_in_scope(job, &Scope::Node(n), need, tx) {
                        Ok(p) => return Ok(p),
                        Err(r) => {
                            first.get_or_insert(r);
                        }
                    }
                }
                Err(first.unwrap_or_else(|| Reason::SameNode {
                    needed: total,
                    largest_free: models
                        .iter()
                        .map(|&m| self.largest_free(m))
                        .max()
                        .unwrap_or(0),
                }))
            }
            PlacementC::Domain => {
                let (models, total) = self.scope_model(job).unwrap_or((Vec::new(), 0));
                let mut first = None;
                for &m in &models {
                    let b = self.s.models[m.idx()].domains.by_count.clone();
                    let mut tried = 0;
                    for doms in b.iter().skip(total as usize) {
                        for &dom in doms {
                            tried += 1;
                            if tried > 256 {
                                break;
                            }
                            match self.place_in_scope(job, &Scope::Domain(dom), need, tx) {
                                Ok(p) => return Ok(p),
                                Err(r) => {
                                    first.get_or_insert(r);
                                }
                            }
                        }
                    }
                }
                let largest = models
                    .iter()
                    .map(|&m| self.largest_free_domain(m))
                    .max()
                    .unwrap_or(0);
                Err(match first {
                    Some(r @ (Reason::Quota { .. } | Reason::Reservation { .. })) => r,
                    _ => Reason::Domain {
                        flavor: models.first().map_or(NONE, |m| m.0),
                        needed: total,
                        largest_free: largest,
                    },
                })
            }
            PlacementC::Label(key) => {
                if key == NONE {
                    return Err(Reason::Topology {
                        key,
                        needed: 0,
                        largest_free: 0,
                    });
                }
                let (models, total) = self.scope_model(job).unwrap_or((Vec::new(), 0));
                let mut groups: Vec<(u32, u32, Vec<u32>)> = self.s.label_groups[key as usize]
                    .iter()
                    .map(|(&v, nodes)| {
                        let free: u32 = nodes
                            .iter()
                            .map(|&n| {
                                models
                                    .iter()
                                    .map(|&m| self.free_of(n, m))
                                    .max()
                                    .unwrap_or(0)
                            })
                            .sum();
                        (free, v, nodes.clone())
                    })
                    .collect();
                let largest = groups.iter().map(|g| g.0).max().unwrap_or(0);
                groups.retain(|g| g.0 >= total);
                groups.sort_unstable_by_key(|g| (g.0, g.1));
                let mut first = None;
                for (_, _, mut nodes) in groups {
                    nodes.sort_unstable();
                    match self.place_in_scope(job, &Scope::Nodes(nodes), need, tx) {
                        Ok(p) => return Ok(p),
                        Err(r) => {
                            first.get_or_insert(r);
                        }
                    }
                }
                Err(match first {
                    Some(r @ (Reason::Quota { .. } | Reason::Reservation { .. })) => r,
                    _ => Reason::Topology {
                        key,
                        needed: total,
                        largest_free: largest,
                    },
                })
            }
        }
    }
}
