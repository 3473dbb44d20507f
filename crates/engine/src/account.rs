//! An account of what the cluster offers a waiting job now, counted per task shape: the numbers
//! behind "why is my job pending" when capacity is what is missing.
//!
//! For the job's first group with unplaced tasks, and for each flavor it may use (those its
//! queue's quota allows), every node holding that flavor is sorted into: not ready, excluded by
//! eligibility (an untolerated taint, the node selector, node affinity), no healthy GPU of the
//! flavor, or eligible. On eligible nodes it counts how many tasks of the shape the free
//! capacity holds at once (GPUs, cpu and memory together), the most free GPUs on one node, and
//! whether any eligible node could hold one task even when empty — if none can, the job is
//! unresolvable. The flavor whose free capacity holds the most tasks is the one reported.
//!
//! This runs only when a reason is rendered (explain, job lists, status writes), never in a
//! cycle; it costs O(nodes of the allowed flavors).

use crate::snapshot::{FlavorId, GpuNeed, JobId, Snapshot, NONE};

/// What a task asks, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Whole { k: u32, nvlink: bool },
    Shared { milli: u16 },
    Mig { profile: u8 },
    Cpu,
}

/// The account of one job. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Account {
    /// The flavor reported (`NONE` for CPU-only tasks).
    flavor: u32,
    shape: Shape,
    cpu: u32,
    mem: u64,
    /// Tasks of the group still to place.
    missing: u32,
    /// Nodes holding the flavor (all nodes for CPU-only tasks).
    nodes: u32,
    not_ready: u32,
    unhealthy: u32,
    /// `(count, first exclusion text)` per kind.
    tainted: (u32, String),
    selector: (u32, String),
    affinity: u32,
    /// Tasks of the shape the free capacity of eligible nodes holds at once.
    fit_now: u64,
    /// The same counting GPUs only (cpu and memory ignored).
    fit_gpu: u64,
    /// Most free GPUs of the flavor on one eligible node (whole devices).
    largest: u32,
    /// Most GPUs of the flavor one eligible node has at all.
    largest_cap: u32,
    /// No eligible node could hold one task even when empty.
    pub never: bool,
    /// Tasks of the shape all eligible nodes together hold when empty (ready or not).
    ever: u64,
    /// A gang needing more tasks together than the whole cluster could ever hold: the most
    /// it holds (then `never` is set).
    gang_short: Option<u64>,
}

fn per(have: u64, need: u64) -> u64 {
    have.checked_div(need).unwrap_or(u64::MAX)
}

impl Snapshot {
    /// The account of job `id` (`None` when nothing of it waits).
    pub(crate) fn account(&self, id: JobId) -> Option<Account> {
        let j = self.jobs.get(id.idx())?;
        let g = j.groups.iter().find(|g| g.running < g.count)?;
        let d = &self.demands[g.demand as usize];
        let missing = g.count - g.running;
        let options: Vec<(u32, Shape)> = match &d.gpu {
            GpuNeed::None => vec![(NONE, Shape::Cpu)],
            GpuNeed::Whole { count, models } => models
                .iter()
                .map(|m| {
                    (
                        m.0,
                        Shape::Whole {
                            k: *count,
                            nvlink: d.nvlink && *count > 1,
                        },
                    )
                })
                .collect(),
            GpuNeed::Shared { milli, models } => models
                .iter()
                .map(|m| (m.0, Shape::Shared { milli: *milli }))
                .collect(),
            GpuNeed::Mig { options } => options
                .iter()
                .map(|&(f, _, p)| (f.0, Shape::Mig { profile: p }))
                .collect(),
        };
        let mut best: Option<Account> = None;
        // A one-group gang needs its tasks together: more than every usable node could ever
        // hold at once never runs, however long it waits.
        let together = (j.groups.len() == 1)
            .then(|| u64::from(j.min_available.saturating_sub(g.running)))
            .filter(|&n| n > 1);
        let mut ever_total = 0u64;
        for (flavor, shape) in options {
            if flavor != NONE && !self.quota.may_use(j.queue, flavor) {
                continue;
            }
            let a = self.account_on(flavor, shape, d.cpu, d.mem, d.constraint, missing);
            ever_total = ever_total.saturating_add(a.ever);
            let better = match &best {
                None => true,
                Some(b) => (!a.never, a.fit_now, a.largest) > (!b.never, b.fit_now, b.largest),
            };
            if better {
                best = Some(a);
            }
        }
        if let (Some(b), Some(n)) = (best.as_mut(), together) {
            if n > ever_total && !b.never {
                b.never = true;
                b.gang_short = Some(ever_total);
            }
        }
        best
    }

    fn account_on(
        &self,
        flavor: u32,
        shape: Shape,
        cpu: u32,
        mem: u64,
        con: u32,
        missing: u32,
    ) -> Account {
        let mut a = Account {
            flavor,
            shape,
            cpu,
            mem,
            missing,
            nodes: 0,
            not_ready: 0,
            unhealthy: 0,
            tainted: (0, String::new()),
            selector: (0, String::new()),
            affinity: 0,
            fit_now: 0,
            fit_gpu: 0,
            largest: 0,
            largest_cap: 0,
            never: true,
            ever: 0,
            gang_short: None,
        };
        // The model flavor a MIG flavor lives on.
        let model = match shape {
            Shape::Mig { .. } => match self.flavors[flavor as usize].kind {
                crate::snapshot::FlavorKind::Mig { model, .. } => model.0,
                _ => flavor,
            },
            _ => flavor,
        };
        let nodes: Vec<u32> = if flavor == NONE {
            (0..self.nodes.len() as u32).collect()
        } else if matches!(shape, Shape::Mig { .. }) {
            let mut v: Vec<u32> = self.models[model as usize]
                .mig_devices
                .iter()
                .map(|&d| self.devices[d as usize].node)
                .collect();
            v.dedup();
            v
        } else {
            self.models[model as usize].holders.clone()
        };
        for node in nodes {
            a.nodes += 1;
            let n = &self.nodes[node as usize];
            // A node that is not ready takes nothing now, but may come back: it still counts
            // for whether the job could ever run.
            let ready = n.ready;
            if !ready {
                a.not_ready += 1;
            }
            if let Err(e) = self.admits(con, node) {
                if !ready {
                    continue;
                }
                let slot = match e {
                    gantry_model::Exclusion::Taint(_) => &mut a.tainted,
                    gantry_model::Exclusion::Selector { .. } => &mut a.selector,
                    gantry_model::Exclusion::Affinity => {
                        a.affinity += 1;
                        continue;
                    }
                };
                slot.0 += 1;
                if slot.1.is_empty() {
                    slot.1 = e.to_string();
                }
                continue;
            }
            let devs = n.dev_start..n.dev_start + n.dev_count;
            let of_model = |d: u32| self.devices[d as usize].model.0 == model;
            let healthy: Vec<u32> = devs
                .clone()
                .filter(|&d| of_model(d) && self.devices[d as usize].healthy)
                .collect();
            if flavor != NONE && healthy.is_empty() {
                a.unhealthy += u32::from(ready);
                continue;
            }
            let cpu_mem_now = per(n.cpu_free() as u64, cpu as u64).min(per(n.mem_free(), mem));
            let cpu_mem_ever = per(n.cpu_total as u64, cpu as u64).min(per(n.mem_total, mem));
            let (gpu_now, gpu_ever, free_whole, cap) = match shape {
                Shape::Cpu => (u64::MAX, u64::MAX, 0, 0),
                Shape::Whole { k, nvlink } => {
                    let parts = n.parts.iter().filter(|p| p.model.0 == model);
                    let mut now = 0u64;
                    let mut ever = 0u64;
                    let mut free = 0u32;
                    let mut total_free = 0u32;
                    let mut total_healthy = 0u32;
                    for p in parts {
                        let mut pf = 0u32;
                        let mut ph = 0u32;
                        let mut m = p.mask;
                        while m != 0 {
                            let i = m.trailing_zeros();
                            m &= m - 1;
                            let dv = &self.devices[(n.dev_start + i) as usize];
                            if dv.healthy {
                                ph += 1;
                                if self.dev_free(n.dev_start + i) == 1000 {
                                    pf += 1;
                                }
                            }
                        }
                        if nvlink {
                            now += (pf / k) as u64;
                            ever += (ph / k) as u64;
                        }
                        free = free.max(pf);
                        total_free += pf;
                        total_healthy += ph;
                    }
                    let mut cap = total_healthy;
                    if nvlink {
                        cap = n
                            .parts
                            .iter()
                            .filter(|p| p.model.0 == model)
                            .map(|p| p.mask.count_ones())
                            .max()
                            .unwrap_or(0);
                    } else {
                        now = (total_free / k) as u64;
                        ever = (total_healthy / k) as u64;
                        free = total_free;
                    }
                    (now, ever, free, cap)
                }
                Shape::Shared { milli } => {
                    let now: u64 = healthy
                        .iter()
                        .filter(|&&d| self.devices[d as usize].mig.is_none())
                        .map(|&d| (self.dev_free(d) / milli) as u64)
                        .sum();
                    let ever: u64 = healthy
                        .iter()
                        .filter(|&&d| self.devices[d as usize].mig.is_none())
                        .map(|_| (1000 / milli) as u64)
                        .sum();
                    let free = healthy
                        .iter()
                        .filter(|&&d| self.dev_free(d) == 1000)
                        .count() as u32;
                    (now, ever, free, healthy.len() as u32)
                }
                Shape::Mig { profile } => {
                    let mut now = 0u64;
                    let mut ever = 0u64;
                    for &d in &healthy {
                        let Some(m) = &self.devices[d as usize].mig else {
                            continue;
                        };
                        let geo = &self.geometries[m.geometry as usize];
                        let Some(p) = geo.profiles.get(profile as usize) else {
                            continue;
                        };
                        let starts: Vec<u8> = match &m.fixed {
                            None => p.starts.clone(),
                            Some(sl) => sl
                                .iter()
                                .filter(|(pi, _)| *pi == profile)
                                .map(|&(_, s)| s)
                                .collect(),
                        };
                        // Slices that fit side by side now, and on an empty device.
                        let count = |used0: u8| {
                            let mut used = used0;
                            let mut c = 0u64;
                            for &s in &starts {
                                let mask = p.mask_at(s);
                                if used & mask == 0 {
                                    used |= mask;
                                    c += 1;
                                }
                            }
                            c
                        };
                        now += count(m.used | m.offline);
                        ever += count(0);
                    }
                    (now, ever, 0, healthy.len() as u32)
                }
            };
            if gpu_ever.min(cpu_mem_ever) > 0 {
                a.never = false;
            }
            a.ever = a.ever.saturating_add(gpu_ever.min(cpu_mem_ever));
            if !ready {
                continue;
            }
            a.fit_gpu = a
                .fit_gpu
                .saturating_add(if gpu_now == u64::MAX { 0 } else { gpu_now });
            a.fit_now = a
                .fit_now
                .saturating_add(gpu_now.min(cpu_mem_now).min(u32::MAX as u64));
            a.largest = a.largest.max(free_whole);
            a.largest_cap = a.largest_cap.max(cap);
        }
        a
    }
}

fn gpus(n: u32) -> String {
    format!("{n} GPU{}", if n == 1 { "" } else { "s" })
}

fn tasks(n: u64) -> String {
    format!("{n} task{}", if n == 1 { "" } else { "s" })
}

impl Account {
    /// The account in words. See the module docs.
    pub(crate) fn text(&self, s: &Snapshot) -> String {
        let flavor = if self.flavor == NONE {
            String::new()
        } else {
            s.flavor_name(FlavorId(self.flavor)).to_string()
        };
        let shape = match self.shape {
            Shape::Whole { k, nvlink } => format!(
                "{} {flavor} {}{}",
                k,
                if k == 1 { "GPU" } else { "GPUs" },
                if nvlink { " in one NVLink domain" } else { "" }
            ),
            Shape::Shared { milli } => format!("{:.3} of a {flavor} GPU", milli as f64 / 1000.0),
            Shape::Mig { .. } => format!("one {flavor} slice"),
            Shape::Cpu => format!("{} cpu", self.cpu as f64 / 1000.0),
        };
        let kind = if self.flavor == NONE {
            "node".to_string()
        } else {
            format!("{flavor} node")
        };
        let mut excluded: Vec<String> = Vec::new();
        if self.not_ready > 0 {
            excluded.push(format!("{} not ready", self.not_ready));
        }
        if self.tainted.0 > 0 {
            excluded.push(format!("{} with {}", self.tainted.0, self.tainted.1));
        }
        if self.selector.0 > 0 {
            excluded.push(format!(
                "{} not matching {}",
                self.selector.0, self.selector.1
            ));
        }
        if self.affinity > 0 {
            excluded.push(format!("{} not matching node affinity", self.affinity));
        }
        if self.unhealthy > 0 {
            excluded.push(format!("{} with no healthy GPU", self.unhealthy));
        }
        let out: u32 =
            self.not_ready + self.tainted.0 + self.selector.0 + self.affinity + self.unhealthy;
        let eligible = self.nodes - out;
        let excl = if excluded.is_empty() {
            String::new()
        } else {
            format!(
                "{out} of {} {kind}{} excluded: {}",
                self.nodes,
                if self.nodes == 1 { "" } else { "s" },
                excluded.join(", ")
            )
        };
        if let Some(most) = self.gang_short {
            let mut t = format!(
                "all its {} tasks of {shape} must run together, and the eligible {kind}s can hold at most {most} at once even when empty",
                self.missing
            );
            if !excl.is_empty() {
                t.push_str("; ");
                t.push_str(&excl);
            }
            return t;
        }
        if self.never {
            if eligible == 0 {
                return if self.nodes == 0 {
                    format!("no {kind} exists for a task of {shape}")
                } else {
                    format!("no {kind} can run a task of {shape}: {excl}")
                };
            }
            let why = match self.shape {
                Shape::Whole { nvlink: true, .. } => format!(
                    "the largest NVLink domain on one has {}",
                    gpus(self.largest_cap)
                ),
                Shape::Whole { .. } if self.largest_cap > 0 || self.cpu == 0 => {
                    format!("the largest has {}", gpus(self.largest_cap))
                }
                _ => "not even an empty one has room (GPUs, cpu and memory together)".to_string(),
            };
            let mut t = format!("no eligible {kind} can ever hold a task of {shape}: {why}");
            if !excl.is_empty() {
                t.push_str("; ");
                t.push_str(&excl);
            }
            return t;
        }
        let mut t = format!(
            "needs {} more task{} of {shape}; the free capacity of eligible {kind}s holds {} now",
            self.missing,
            if self.missing == 1 { "" } else { "s" },
            tasks(self.fit_now)
        );
        match self.shape {
            Shape::Whole { .. } => {
                t.push_str(&format!(" (the most free on one node: {})", self.largest));
            }
            Shape::Cpu => {}
            _ => {}
        }
        if self.fit_gpu > self.fit_now && !matches!(self.shape, Shape::Cpu) {
            t.push_str(&format!(
                "; cpu or memory limits it (the free GPUs alone hold {})",
                tasks(self.fit_gpu)
            ));
        }
        if !excl.is_empty() {
            t.push_str("; ");
            t.push_str(&excl);
        }
        t
    }
}
