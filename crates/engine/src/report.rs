//! Read-only reports of a snapshot for people: where every GPU, fraction and MIG slice went
//! ([`Snapshot::gpu_report`]) and each queue's quota, borrowing, lending and share
//! ([`Snapshot::queue_report`]). Drivers turn them into dashboards; both drivers read the same
//! numbers because both hold a snapshot.

use std::collections::BTreeMap;

use crate::snapshot::{GpuAlloc, JobId, Snapshot};

/// One node and its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeReport {
    /// Node name.
    pub name: String,
    /// Takes new tasks.
    pub ready: bool,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its GPUs, in local order.
    pub devices: Vec<DeviceReport>,
}

impl NodeReport {
    /// GPUs held in whole or in part, each counted once (two halves of one GPU are one; a MIG
    /// GPU with any instance in use is one).
    pub fn gpus_held(&self) -> u32 {
        self.devices
            .iter()
            .filter(|d| !d.holders.is_empty() || d.mig.iter().flatten().any(|s| s.job.is_some()))
            .count() as u32
    }
}

/// One GPU and who holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceReport {
    /// Device uuid.
    pub uuid: String,
    /// Model flavor.
    pub model: String,
    /// Healthy (an unhealthy GPU takes nothing new).
    pub healthy: bool,
    /// Jobs holding it whole (one) or sharing it: `(job, thousandths)`, 1000 for whole.
    pub holders: Vec<(JobId, u16)>,
    /// MIG mode: its instances at their memory-slice starts.
    pub mig: Option<Vec<SliceReport>>,
}

/// One MIG instance: in use, or pre-created and free.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceReport {
    /// Profile name (`1g.10gb`).
    pub profile: String,
    /// First memory slice.
    pub start: u8,
    /// Memory slices it spans.
    pub size: u8,
    /// The job holding it.
    pub job: Option<JobId>,
    /// Not marked unhealthy.
    pub healthy: bool,
}

/// One queue of the tree, with its numbers per flavor.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueReport {
    /// Queue name.
    pub name: String,
    /// Its parent (cohort), if any.
    pub parent: Option<String>,
    /// Depth in the tree (roots 0).
    pub depth: usize,
    /// Leaf queues hold jobs; the others are cohorts.
    pub leaf: bool,
    /// Fair-share weight.
    pub weight: f64,
    /// Jobs waiting (leaf only).
    pub pending: usize,
    /// Jobs with placed tasks (leaf only).
    pub admitted: usize,
    /// Weighted dominant share now: the highest usage / entitlement over flavors (entitlement
    /// is the nominal quota, or one unit where there is none) divided by the weight. The
    /// fair-share order serves the lowest first; 1.0 means "using exactly its entitlement".
    pub share: f64,
    /// Flavors it lists or uses.
    pub flavors: Vec<FlavorReport>,
}

/// A queue's numbers for one flavor, in thousandths.
#[derive(Debug, Clone, PartialEq)]
pub struct FlavorReport {
    /// Flavor name.
    pub flavor: String,
    /// Its own nominal quota.
    pub nominal: u64,
    /// Σ nominal over its subtree (a cohort's members' quotas with its own).
    pub subtree_nominal: u64,
    /// Used by its subtree.
    pub used: u64,
    /// Used beyond the nominal quotas of its subtree (taken from its cohort).
    pub borrowed: u64,
    /// Of its unused quota, what others in its cohort are borrowing now (their borrowing is
    /// split over the lenders in proportion to what each leaves unused).
    pub lent: u64,
    /// Most it may borrow, if limited.
    pub borrowing_limit: Option<u64>,
    /// Most it lends, if limited.
    pub lending_limit: Option<u64>,
}

impl Snapshot {
    /// Every node with its GPUs and the jobs holding each.
    pub fn gpu_report(&self) -> Vec<NodeReport> {
        // Device → holders, MIG device → used instances.
        let mut holders: BTreeMap<u32, Vec<(JobId, u16)>> = BTreeMap::new();
        let mut slices: BTreeMap<u32, Vec<SliceReport>> = BTreeMap::new();
        for (j, job) in self.jobs.iter().enumerate() {
            for t in &job.tasks {
                match &t.gpu {
                    GpuAlloc::None => {}
                    GpuAlloc::Whole(ds) => {
                        for d in ds {
                            holders
                                .entry(d.0)
                                .or_default()
                                .push((JobId(j as u32), 1000));
                        }
                    }
                    GpuAlloc::Shared { device, milli } => holders
                        .entry(device.0)
                        .or_default()
                        .push((JobId(j as u32), *milli)),
                    GpuAlloc::Mig {
                        device,
                        profile,
                        start,
                    } => {
                        let size = self.devices[device.idx()].mig.as_ref().map_or(1, |m| {
                            self.geometries[m.geometry as usize].profiles[*profile as usize]
                                .memory_slices
                        });
                        slices.entry(device.0).or_default().push(SliceReport {
                            profile: self.mig_profile_name(*device, *profile).to_string(),
                            start: *start,
                            size,
                            job: Some(JobId(j as u32)),
                            healthy: true,
                        });
                    }
                }
            }
        }
        self.nodes
            .iter()
            .enumerate()
            .map(|(n, node)| {
                let devices = (node.dev_start..node.dev_start + node.dev_count)
                    .map(|d| {
                        let dev = &self.devices[d as usize];
                        let mig = dev.mig.as_ref().map(|m| {
                            let geometry = &self.geometries[m.geometry as usize];
                            let mut out = slices.remove(&d).unwrap_or_default();
                            for &(p, start) in m.fixed.iter().flatten() {
                                let prof = &geometry.profiles[p as usize];
                                let mask = prof.mask_at(start);
                                let healthy = m.offline & mask == 0;
                                if let Some(s) = out.iter_mut().find(|s| s.start == start) {
                                    s.healthy = healthy;
                                } else {
                                    out.push(SliceReport {
                                        profile: prof.name.clone(),
                                        start,
                                        size: prof.memory_slices,
                                        job: None,
                                        healthy,
                                    });
                                }
                            }
                            out.sort_by_key(|s| s.start);
                            out
                        });
                        DeviceReport {
                            uuid: dev.uuid.to_string(),
                            model: self.flavor_name(dev.model).to_string(),
                            healthy: dev.healthy,
                            holders: holders.remove(&d).unwrap_or_default(),
                            mig,
                        }
                    })
                    .collect();
                NodeReport {
                    name: node.name.to_string(),
                    ready: node.ready,
                    labels: self
                        .node_meta
                        .get(n)
                        .map(|(l, _)| l.clone())
                        .unwrap_or_default(),
                    devices,
                }
            })
            .collect()
    }

    /// Every queue of the tree, parents before their children, with quota, usage, borrowing,
    /// lending and share per flavor.
    pub fn queue_report(&self) -> Vec<QueueReport> {
        let q = &self.quota;
        let n = q.len();
        let flavors = q.flavors();
        let parents: Vec<Option<usize>> = (0..n)
            .map(|i| q.parent(i as u32).map(|p| p as usize))
            .collect();
        // Σ nominal over each subtree: what it may use without borrowing.
        let mut subtree_nominal = vec![vec![0u64; flavors]; n];
        // Children come after their parents in a validated tree: add bottom-up.
        for i in (0..n).rev() {
            let own: Vec<u64> = (0..flavors)
                .map(|f| subtree_nominal[i][f] + q.nominal(i as u32, f as u32))
                .collect();
            if let Some(p) = parents[i] {
                for (acc, v) in subtree_nominal[p].iter_mut().zip(&own) {
                    *acc += v;
                }
            }
            subtree_nominal[i] = own;
        }
        // Only where quota manages the flavor: work on unmanaged flavors borrows from no one.
        let borrowed = |i: usize, f: usize| -> u64 {
            if !q.is_managed(i as u32, f as u32) {
                return 0;
            }
            q.usage(i as u32, f as u32)
                .saturating_sub(subtree_nominal[i][f])
        };
        // Lending, per cohort: the children's borrowing is split over what each child (and
        // the cohort's own nominal) leaves unused, in proportion.
        let mut lent = vec![vec![0u64; flavors]; n];
        for p in 0..n {
            let children: Vec<usize> = self.quota_children(p).iter().map(|&c| c as usize).collect();
            if children.is_empty() {
                continue;
            }
            for f in 0..flavors {
                let demand: u64 = children.iter().map(|&c| borrowed(c, f)).sum();
                if demand == 0 {
                    continue;
                }
                let lendable = |c: usize| -> u64 {
                    let unused = subtree_nominal[c][f].saturating_sub(q.usage(c as u32, f as u32));
                    q.lending_limit(c as u32, f as u32)
                        .map_or(unused, |l| unused.min(l))
                };
                let own = q.nominal(p as u32, f as u32);
                let total: u64 = children.iter().map(|&c| lendable(c)).sum::<u64>() + own;
                if total == 0 {
                    continue;
                }
                let served = demand.min(total);
                for &c in &children {
                    lent[c][f] =
                        (u128::from(lendable(c)) * u128::from(served) / u128::from(total)) as u64;
                }
            }
        }
        let mut depth = vec![0usize; n];
        for i in 0..n {
            let mut p = parents[i];
            while let Some(x) = p {
                depth[i] += 1;
                p = parents[x];
            }
        }
        // Parents before children, siblings by name: a depth-first walk from the roots.
        let mut order = Vec::with_capacity(n);
        let mut roots: Vec<usize> = (0..n).filter(|&i| parents[i].is_none()).collect();
        roots.sort_by(|a, b| q.name(*a as u32).cmp(q.name(*b as u32)));
        let mut stack: Vec<usize> = roots.into_iter().rev().collect();
        while let Some(i) = stack.pop() {
            order.push(i);
            let mut kids: Vec<usize> = self.quota_children(i).iter().map(|&c| c as usize).collect();
            kids.sort_by(|a, b| q.name(*b as u32).cmp(q.name(*a as u32)));
            stack.extend(kids);
        }
        order
            .into_iter()
            .map(|i| {
                let qi = i as u32;
                let mut share: f64 = 0.0;
                let mut rows = Vec::new();
                for f in 0..flavors {
                    let fi = f as u32;
                    let (used, nominal) = (q.usage(qi, fi), q.nominal(qi, fi));
                    if used > 0 {
                        let e = if nominal > 0 { nominal as f64 } else { 1000.0 };
                        share = share.max(used as f64 / e);
                    }
                    if used == 0 && nominal == 0 && !q.is_listed(qi, fi) {
                        continue;
                    }
                    rows.push(FlavorReport {
                        flavor: self.flavors[f].name.to_string(),
                        nominal,
                        subtree_nominal: subtree_nominal[i][f],
                        used,
                        borrowed: borrowed(i, f),
                        lent: lent[i][f],
                        borrowing_limit: q.borrowing_limit(qi, fi),
                        lending_limit: q.lending_limit(qi, fi),
                    });
                }
                let slot = &self.queues[i];
                QueueReport {
                    name: q.name(qi).to_string(),
                    parent: parents[i].map(|p| q.name(p as u32).to_string()),
                    depth: depth[i],
                    leaf: q.is_leaf(qi),
                    weight: q.weight(qi),
                    pending: slot.pending.len(),
                    admitted: slot.running.len(),
                    share: share / q.weight(qi).max(f64::MIN_POSITIVE),
                    flavors: rows,
                }
            })
            .collect()
    }

    /// A queue's nominal quota of a flavor with its whole subtree's (a cohort: its members'
    /// quotas with its own), in thousandths.
    pub fn queue_quota_total(&self, q: crate::QueueId, f: crate::FlavorId) -> u64 {
        let mut total = 0;
        let mut stack = vec![q.0];
        while let Some(n) = stack.pop() {
            total += self.quota.nominal(n, f.0);
            stack.extend_from_slice(self.quota.children(n));
        }
        total
    }

    fn quota_children(&self, q: usize) -> &[u32] {
        self.quota.children(q as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::NodeReport;
    use crate::testing::{cluster, Harness, JobBuilder, QueueBuilder};

    #[test]
    fn borrowing_and_lending_are_split_over_the_lenders() {
        let q = QueueBuilder::new()
            .cohort("org")
            .queue("team-a", "org", "h100-80gb", 8)
            .queue("team-b", "org", "h100-80gb", 8)
            .queue_with(
                "team-c",
                "org",
                2.0,
                &[("h100-80gb", 16.0, None, Some(4.0))],
            )
            .build();
        let mut h = Harness::new(&cluster(5, 8, "h100-80gb"), &q);
        // team-a uses 8 + 12 borrowed; team-b leaves 8 unused, team-c 16 (lends at most 4).
        for i in 0..20 {
            h.submit(JobBuilder::new(&format!("a{i}")).queue("team-a").gpus(1));
        }
        h.cycle();
        let r = h.snap.queue_report();
        let names: Vec<&str> = r.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            ["org", "team-a", "team-b", "team-c"],
            "parents first"
        );
        let row = |name: &str| {
            let q = r.iter().find(|q| q.name == name).expect("queue");
            (q.clone(), q.flavors[0].clone())
        };
        let (a, af) = row("team-a");
        assert_eq!(
            (af.used, af.nominal, af.borrowed, af.lent),
            (20_000, 8_000, 12_000, 0)
        );
        assert_eq!((a.admitted, a.pending, a.depth), (20, 0, 1));
        assert!(
            (a.share - 2.5).abs() < 1e-9,
            "20 of 8 at weight 1: {}",
            a.share
        );
        // Lendable: b 8, c 4 (its limit), org's own 0 → 12 lent, all of it.
        let (_, bf) = row("team-b");
        let (c, cf) = row("team-c");
        assert_eq!((bf.lent, cf.lent), (8_000, 4_000));
        assert_eq!(cf.lending_limit, Some(4_000));
        assert_eq!((c.share, c.depth), (0.0, 1));
        let (org, of) = row("org");
        assert_eq!(
            (of.used, of.borrowed, of.subtree_nominal, org.leaf),
            (20_000, 0, 32_000, false)
        );
        // Work on a flavor no quota manages borrows from no one.
        let q2 = QueueBuilder::new()
            .cohort("default")
            .allow_unlisted()
            .build();
        let mut h2 = Harness::new(&cluster(1, 8, "h100-80gb"), &q2);
        h2.submit(JobBuilder::new("free").queue("default").gpus(2));
        h2.cycle();
        let d = h2.snap.queue_report();
        assert_eq!((d[0].flavors[0].used, d[0].flavors[0].borrowed), (2_000, 0));
        let org_id = h.snap.queue_by_name("org").expect("org");
        let f = h.snap.flavor_by_name("h100-80gb").expect("flavor");
        assert_eq!(h.snap.queue_quota_total(org_id, f), 32_000);
    }

    #[test]
    fn the_gpu_report_names_every_holder() {
        let q = QueueBuilder::new()
            .cohort("org")
            .queue("team-a", "org", "h100-80gb", 16)
            .build();
        let mut h = Harness::new(&cluster(2, 8, "h100-80gb"), &q);
        h.submit(JobBuilder::new("whole").queue("team-a").gpus(8));
        h.submit(JobBuilder::new("half").queue("team-a").fraction(0.5));
        h.cycle();
        let r = h.snap.gpu_report();
        assert_eq!(r.len(), 2);
        let held: Vec<(String, u16)> = r
            .iter()
            .flat_map(|n| n.devices.iter())
            .flat_map(|d| {
                d.holders
                    .iter()
                    .map(|(j, m)| (h.snap.job_name(*j).to_string(), *m))
            })
            .collect();
        assert_eq!(
            held.iter()
                .filter(|(j, m)| j == "whole" && *m == 1000)
                .count(),
            8
        );
        assert_eq!(
            held.iter()
                .filter(|(j, m)| j == "half" && *m == 500)
                .count(),
            1
        );
        assert!(r.iter().all(|n| n.ready && n.devices.len() == 8));
        assert_eq!(
            r.iter().map(NodeReport::gpus_held).sum::<u32>(),
            9,
            "the half counts as one GPU held"
        );
    }
}
