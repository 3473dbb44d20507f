//! Choosing where one task goes: every feasible (node, GPU model) pair the task allows is scored
//! with the profile's policy (see `score`), and the best one wins.
//!
//! Two ways to enumerate candidates, one scorer:
//! - **Classes** (the common case: anywhere in the cluster): every non-empty class of identical
//!   nodes of an allowed model is scored once (cached per class, demand, model and workload
//!   epoch); the best class's members are then checked for what the class leaves out
//!   (eligibility, spread, reservations). Nodes with devices reserved against this task are
//!   scored on their own, with those devices hidden.
//! - **Explicit** lists: a gang scope (one node, an NVLink domain, the nodes of a label value),
//!   spreading over a label, and first fit, which walks nodes in order.
//!
//! Equal candidates go to the lowest node index, for every policy: a plan is a function of the
//! snapshot, and a consistent order packs better than a random one.

use crate::classes::Sig;
use crate::place::{Miss, Placer, Scope};
use crate::profile::Packing;
use crate::score::{self, Ask, Choice, LayoutTargets, Measure, NoFit};
use crate::snapshot::{DeviceId, FlavorId, GpuAlloc, NodeId, SpreadC, TaskAlloc, Time, NONE};
use crate::workload::Cut;

/// Keep a feasible candidate (`prefix` leads its key: minus the spread count, or 0), or record
/// in `miss` that cpu or memory turned a GPU fit down.
fn push_cand(
    cands: &mut Vec<Cand>,
    r: Result<Choice, NoFit>,
    prefix: i64,
    at: u32,
    model: u32,
    hide: u64,
    miss: &mut Miss,
) {
    match r {
        Ok(choice) => {
            let k = choice.key;
            cands.push(Cand {
                key: [prefix, k[0], k[1], k[2]],
                at,
                model,
                choice,
                hide,
            });
        }
        Err(NoFit::CpuMem) => miss.cpu_mem = true,
        Err(NoFit::Gpu) => {}
    }
}

/// Cached choices of one (demand, model, packing) query, indexed by class id.
#[derive(Debug, Clone, Default)]
pub(crate) struct QueryCache {
    epoch: u32,
    /// `(class generation + 1, result)`; generation 0 means empty.
    entries: Vec<(u32, Result<Choice, NoFit>)>,
}

/// Most distinct queries cached before the cache is dropped whole.
const MAX_QUERIES: usize = 1024;

/// One feasible candidate.
#[derive(Debug, Clone, Copy)]
struct Cand {
    /// `[-spread, choice key...]`, higher is better.
    key: [i64; 4],
    /// A class (class mode) or a node (explicit).
    at: u32,
    model: u32,
    choice: Choice,
    hide: u64,
}

impl Placer<'_> {
    /// The workload's shapes for a layout at the current epoch, under the policy's cut.
    fn layout_targets(&mut self, layout: u32) -> Option<&LayoutTargets> {
        let cut = match self.packing {
            Packing::Fgd => Cut::Popular,
            Packing::Fragmentation => Cut::All,
            _ => return None,
        } as usize;
        let s = &mut *self.s;
        let epoch = s.workload.epoch;
        let l = layout as usize;
        if s.layout_targets.len() <= l {
            s.layout_targets.resize(l + 1, Default::default());
        }
        let lt = &mut s.layout_targets[l][cut];
        if lt.epoch != epoch || epoch == 0 {
            *lt = LayoutTargets::build(epoch, &s.classes.layouts[l], &s.workload.targets[cut]);
        }
        Some(&s.layout_targets[l][cut])
    }

    /// Score a node state (uncached).
    fn eval_sig(
        &mut self,
        sig: &Sig,
        model: u32,
        ask: Ask,
        cpu: u32,
        mem: u64,
        class: Option<u32>,
    ) -> Result<Choice, NoFit> {
        let packing = self.packing;
        let spec = self.s.spec;
        let lt = self.layout_targets(sig.layout).cloned();
        let s = &mut *self.s;
        let parts = s.classes.layouts[sig.layout as usize].clone();
        let epoch = s.workload.epoch;
        let mut before = |measure: Measure| -> i64 {
            let Some(lt) = lt.as_ref() else { return 0 };
            let Some(c) = class else {
                return score::frag(&parts, sig.cpu, &sig.free, lt, measure);
            };
            // Cached per class and (measure, cut): (generation, epoch, value). The one-pod
            // measure under `fgd` and under `gantry` differ by their cut.
            let which = match (measure, packing) {
                (Measure::Stream, _) => 2,
                (Measure::OnePod, Packing::Fgd) => 0,
                (Measure::OnePod, _) => 1,
            };
            let slot = (c as usize) * 3 + which;
            let gen = s.classes.slots[c as usize].gen;
            if s.frag_cache.len() <= slot {
                s.frag_cache.resize(slot + 1, (u32::MAX, 0, 0));
            }
            let (g, e, v) = s.frag_cache[slot];
            if g == gen && e == epoch {
                return v;
            }
            let v = score::frag(&parts, sig.cpu, &sig.free, lt, measure);
            s.frag_cache[slot] = (gen, epoch, v);
            v
        };
        score::evaluate(
            packing,
            &parts,
            (model != NONE).then_some(FlavorId(model)),
            sig,
            ask,
            cpu,
            mem,
            lt.as_ref(),
            &mut before,
            spec,
        )
    }

    /// Score a class, from the cache when it can.
    fn eval_class(
        &mut self,
        class: u32,
        demand: u32,
        model: u32,
        ask: Ask,
        cpu: u32,
        mem: u64,
    ) -> Result<Choice, NoFit> {
        let key = (demand as u64) << 32 | (model as u64 & 0xFF_FFFF) << 8 | self.packing as u64;
        let epoch = self.s.workload.epoch;
        let gen = self.s.classes.slots[class as usize].gen.wrapping_add(1);
        if let Some(q) = self.s.score_cache.get(&key) {
            if q.epoch == epoch {
                if let Some(&(g, r)) = q.entries.get(class as usize) {
                    if g == gen {
                        return r;
                    }
                }
            }
        }
        let sig = self.s.classes.slots[class as usize].sig.clone();
        let r = self.eval_sig(&sig, model, ask, cpu, mem, Some(class));
        if self.s.score_cache.len() >= MAX_QUERIES && !self.s.score_cache.contains_key(&key) {
            self.s.score_cache.clear();
        }
        let q = self.s.score_cache.entry(key).or_default();
        if q.epoch != epoch {
            q.epoch = epoch;
            q.entries.clear();
        }
        let ci = class as usize;
        if q.entries.len() <= ci {
            q.entries.resize(ci + 1, (0, Err(NoFit::Gpu)));
        }
        q.entries[ci] = (gen, r);
        r
    }

    /// Devices of `node` this job may not use for reservations (local bits), and the first
    /// reservation that holds one.
    fn hidden_by_reservations(&self, job: u32, node: u32) -> (u64, Option<(u32, Time)>) {
        if self.reservations.is_empty() {
            return (0, None);
        }
        self.reservations.blocked(self.s, node, self.end(job), job)
    }

    /// Record in `miss` that a reservation held devices this task could use now on `node` (an
    /// eligible, ready node): free devices of an allowed model, or with room for the fraction.
    fn note_reserved(
        &self,
        node: u32,
        hidden: (u64, Option<(u32, Time)>),
        ask: Ask,
        models: &[u32],
        miss: &mut Miss,
    ) {
        let (blocked, by) = hidden;
        if blocked == 0 || miss.reserved.is_some() {
            return;
        }
        let n = &self.s.nodes[node as usize];
        let model_mask: u64 = n
            .model_masks
            .iter()
            .filter(|(m, _)| models.contains(&m.0))
            .fold(0, |a, &(_, m)| a | m);
        let useful = match ask {
            Ask::Cpu => 0,
            Ask::Whole { .. } => n.avail_mask() & model_mask,
            Ask::Shared { milli } => {
                let mut u = 0u64;
                let mut m = model_mask;
                while m != 0 {
                    let i = m.trailing_zeros();
                    m &= m - 1;
                    if self.s.dev_free(n.dev_start + i) >= milli {
                        u |= 1 << i;
                    }
                }
                u
            }
        };
        if blocked & useful != 0 {
            miss.reserved = by;
        }
    }

    /// Whether a node passes what classes leave out: eligibility (constraint `con`, computed
    /// by [`Snapshot::eligible`] before) and spread.
    pub(crate) fn node_ok(
        &self,
        job: u32,
        con: u32,
        node: u32,
        staged: &[u32],
        miss: &mut Miss,
    ) -> bool {
        self.s.nodes[node as usize].ready
            && self.s.eligible[con as usize]
                .as_ref()
                .is_some_and(|e| e.admits(node))
            && self.spread_ok(job, node, staged, miss)
    }

    /// Place one whole-GPU, shared-GPU or CPU-only task on the best candidate over `models`
    /// (empty for CPU-only tasks). Records in `miss` why candidates were turned down.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn place_task(
        &mut self,
        job: u32,
        group: u16,
        ask: Ask,
        models: &[FlavorId],
        scope: &Scope,
        staged: &[u32],
        miss: &mut Miss,
    ) -> Option<TaskAlloc> {
        let demand = self.job(job).groups[group as usize].demand;
        let (cpu, mem, con) = {
            let d = &self.s.demands[demand as usize];
            (d.cpu, d.mem, d.constraint)
        };
        // Few nodes admit the task: walk them instead of the classes.
        let selective = {
            let n = self.s.nodes.len();
            let e = self.s.eligible(con);
            (!e.all && e.list.len() * 8 < n).then(|| e.list.clone())
        };
        let model_ids: Vec<u32> = if matches!(ask, Ask::Cpu) {
            vec![NONE]
        } else {
            models.iter().map(|m| m.0).collect()
        };
        let spread_label = match self.job(job).spread {
            SpreadC::Label(k) => Some(k),
            _ => None,
        };
        let explicit: Option<Vec<u32>> = match scope {
            Scope::Node(n) => Some(vec![*n]),
            Scope::Nodes(list) => Some(list.clone()),
            Scope::Domain(dom) => {
                let mut v: Vec<u32> = self.s.domains[*dom as usize]
                    .members
                    .iter()
                    .map(|m| m.0)
                    .collect();
                v.sort_unstable();
                v.dedup();
                Some(v)
            }
            Scope::All if self.packing == Packing::FirstFit || spread_label.is_some() => {
                Some(self.holders(&model_ids))
            }
            Scope::All => selective.map(|mut list| {
                if !model_ids.contains(&NONE) {
                    list.retain(|&n| model_ids.iter().any(|&m| self.node_has_model(n, m)));
                }
                list
            }),
        };
        let mut cands: Vec<Cand> = Vec::new();
        match explicit {
            Some(list) => {
                let spread_counts = spread_label.map(|k| self.spread_counts(job, k));
                for node in list {
                    if !scope.allows(node) || !self.node_ok(job, con, node, staged, miss) {
                        continue;
                    }
                    let hidden = self.hidden_by_reservations(job, node);
                    self.note_reserved(node, hidden, ask, &model_ids, miss);
                    let mut hide = hidden.0;
                    if let Scope::Domain(dom) = scope {
                        hide |= !self.domain_mask(*dom, node);
                    }
                    let spread = match (&spread_counts, spread_label) {
                        (Some(c), Some(k)) => {
                            let v = self.s.nodes[node as usize].label(k);
                            c.iter().find(|(x, _)| *x == v).map_or(0, |x| x.1) as i64
                        }
                        _ => 0,
                    };
                    for &m in &model_ids {
                        if m != NONE && !self.node_has_model(node, m) {
                            continue;
                        }
                        let r = if hide == 0 {
                            let c = self.s.classes.class_of(node);
                            self.eval_class(c, demand, m, ask, cpu, mem)
                        } else {
                            let sig = self.s.node_sig(node, hide);
                            self.eval_sig(&sig, m, ask, cpu, mem, None)
                        };
                        push_cand(&mut cands, r, -spread, node, m, hide, miss);
                    }
                    if self.packing == Packing::FirstFit && !cands.is_empty() {
                        break;
                    }
                }
                let c = cands[Self::pick_best(&cands, |c| c.at)?];
                self.build(job, group, c.at, c.model, &c.choice, c.hide, ask)
            }
            None => {
                // Class mode, plus nodes with devices reserved against this task on their own.
                let reserved: Vec<(u32, u64)> = if self.reservations.is_empty() {
                    Vec::new()
                } else {
                    let mut v: Vec<(u32, u64)> = Vec::new();
                    for &n in self.reservations.nodes.keys() {
                        let hide = self.hidden_by_reservations(job, n).0;
                        if hide != 0 {
                            v.push((n, hide));
                        }
                    }
                    v.sort_unstable();
                    v
                };
                let mut classes: Vec<Cand> = Vec::new();
                for &m in &model_ids {
                    let live = |s: &crate::snapshot::Snapshot| -> usize {
                        if m == NONE {
                            s.classes.live_all.len()
                        } else {
                            s.classes.live_by_model.get(m as usize).map_or(0, Vec::len)
                        }
                    };
                    for i in 0..live(self.s) {
                        let c = if m == NONE {
                            self.s.classes.live_all[i]
                        } else {
                            self.s.classes.live_by_model[m as usize][i]
                        };
                        push_cand(
                            &mut classes,
                            self.eval_class(c, demand, m, ask, cpu, mem),
                            0,
                            c,
                            m,
                            0,
                            miss,
                        );
                    }
                }
                // Reserved nodes, scored with the reserved devices hidden.
                for &(node, hide) in &reserved {
                    if !self.node_ok(job, con, node, staged, miss) {
                        continue;
                    }
                    let hidden = self.hidden_by_reservations(job, node);
                    self.note_reserved(node, hidden, ask, &model_ids, miss);
                    let sig = self.s.node_sig(node, hide);
                    for &m in &model_ids {
                        if m != NONE && !self.node_has_model(node, m) {
                            continue;
                        }
                        push_cand(
                            &mut cands,
                            self.eval_sig(&sig, m, ask, cpu, mem, None),
                            0,
                            node,
                            m,
                            hide,
                            miss,
                        );
                    }
                }
                // Best class first; a class whose members all fail the per-node checks is
                // dropped and the next best tried.
                loop {
                    let first = |c: &Cand| {
                        self.s.classes.slots[c.at as usize]
                            .members
                            .first()
                            .copied()
                            .unwrap_or(u32::MAX)
                    };
                    let best_class = Self::pick_best(&classes, first);
                    let best_node = Self::pick_best(&cands, |c| c.at);
                    let from_class = match (best_class, best_node) {
                        (None, None) => return None,
                        (Some(_), None) => true,
                        (None, Some(_)) => false,
                        (Some(a), Some(b)) => {
                            (classes[a].key, std::cmp::Reverse(first(&classes[a])))
                                >= (cands[b].key, std::cmp::Reverse(cands[b].at))
                        }
                    };
                    if !from_class {
                        let c = cands[best_node.expect("set")];
                        return self.build(job, group, c.at, c.model, &c.choice, c.hide, ask);
                    }
                    let i = best_class.expect("set");
                    let c = classes[i];
                    if let Some(node) = self.member(c.at, job, con, staged, &reserved, miss) {
                        return self.build(job, group, node, c.model, &c.choice, 0, ask);
                    }
                    classes.swap_remove(i);
                }
            }
        }
    }

    /// The index of the best candidate; among equal keys the one whose (first) node has the
    /// lowest index, so equal choices always land in the same order (a consistent order packs
    /// better than a random one, and it is what reproduces the FGD artifact's figures).
    fn pick_best(cands: &[Cand], node: impl Fn(&Cand) -> u32) -> Option<usize> {
        let mut best: Option<(usize, [i64; 4], u32)> = None;
        for (i, c) in cands.iter().enumerate() {
            let better = match best {
                None => true,
                Some((_, k, n)) => c.key > k || (c.key == k && node(c) < n),
            };
            if better {
                best = Some((i, c.key, node(c)));
            }
        }
        best.map(|b| b.0)
    }

    /// The lowest member of `class` that passes the per-node checks.
    fn member(
        &self,
        class: u32,
        job: u32,
        con: u32,
        staged: &[u32],
        reserved: &[(u32, u64)],
        miss: &mut Miss,
    ) -> Option<u32> {
        self.s.classes.slots[class as usize]
            .members
            .iter()
            .copied()
            .find(|&node| {
                reserved.binary_search_by_key(&node, |r| r.0).is_err()
                    && self.node_ok(job, con, node, staged, miss)
            })
    }

    /// Make the task: the devices on `node` the choice points at.
    #[allow(clippy::too_many_arguments)]
    fn build(
        &self,
        job: u32,
        group: u16,
        node: u32,
        model: u32,
        choice: &Choice,
        hide: u64,
        ask: Ask,
    ) -> Option<TaskAlloc> {
        let d = &self.s.demands[self.job(job).groups[group as usize].demand as usize];
        let (cpu, mem) = (d.cpu, d.mem);
        let n = &self.s.nodes[node as usize];
        let model_mask = n
            .model_masks
            .iter()
            .find(|(m, _)| m.0 == model)
            .map_or(0, |&(_, m)| m);
        let (gpu, amount) = match ask {
            Ask::Cpu => (GpuAlloc::None, 0),
            Ask::Whole { k, nvlink } => {
                let usable = n.avail_mask() & model_mask & !hide;
                let devs = self.pick_devices(node, usable, k, nvlink)?;
                (GpuAlloc::Whole(devs), k as u64 * 1000)
            }
            Ask::Shared { milli } => {
                let mut m = model_mask & !hide;
                let mut dev = None;
                while m != 0 {
                    let i = m.trailing_zeros();
                    m &= m - 1;
                    let f = self.s.dev_free(n.dev_start + i);
                    if f >= milli && choice.accepts(f) {
                        dev = Some(n.dev_start + i);
                        break;
                    }
                }
                (
                    GpuAlloc::Shared {
                        device: DeviceId(dev?),
                        milli,
                    },
                    milli as u64,
                )
            }
        };
        Some(TaskAlloc {
            group,
            index: 0,
            node: NodeId(node),
            cpu_milli: cpu,
            memory_mib: mem,
            gpu,
            flavor: FlavorId(model),
            amount,
        })
    }

    fn node_has_model(&self, node: u32, model: u32) -> bool {
        self.s.nodes[node as usize]
            .model_masks
            .iter()
            .any(|(m, _)| m.0 == model)
    }

    /// Nodes holding any of `models` (all nodes for CPU-only tasks), ascending.
    fn holders(&self, models: &[u32]) -> Vec<u32> {
        if models.contains(&NONE) {
            return (0..self.s.nodes.len() as u32).collect();
        }
        let mut v: Vec<u32> = models
            .iter()
            .flat_map(|&m| self.s.models[m as usize].holders.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn domain_mask(&self, dom: u32, node: u32) -> u64 {
        self.s.domains[dom as usize]
            .members
            .iter()
            .filter(|(n, _)| *n == node)
            .fold(0, |a, (_, m)| a | m)
    }

    /// Replicas of the job per value of label `key`.
    fn spread_counts(&self, job: u32, key: u32) -> Vec<(Option<u32>, u32)> {
        let mut out: Vec<(Option<u32>, u32)> = Vec::new();
        for t in &self.job(job).tasks {
            let v = self.s.nodes[t.node.idx()].label(key);
            match out.iter_mut().find(|(x, _)| *x == v) {
                Some(e) => e.1 += 1,
                None => out.push((v, 1)),
            }
        }
        out
    }
}
