//! An independent audit of a snapshot: recompute everything from the jobs' placed tasks and
//! compare with the incremental state. Property tests run it after every step; it is also cheap
//! enough for a driver to run in a debug mode.

use crate::fast::HashMap;

use crate::snapshot::{GpuAlloc, JobPhase, Snapshot, NONE};

impl Snapshot {
    /// Check the invariants:
    /// - no device is held whole twice, or whole and shared at once; shared fractions sum to at
    ///   most one GPU; no MIG memory slice is held twice, and every slice sits at a legal start;
    /// - node cpu and memory in use equal what the tasks hold, and fit the node;
    /// - the free-device masks and best-fit buckets match the devices;
    /// - every leaf's quota usage equals what its tasks hold, and stays within nominal +
    ///   borrowing limit; no tree uses more than its pool;
    /// - every running job has at least its gang (`min_available`) placed;
    /// - a job is in its queue's pending set exactly when it has unplaced tasks;
    /// - the running sets hold exactly the jobs with tasks, and the preemptible-priority counts
    ///   used to rule out victim searches match them.
    ///
    /// # Errors
    /// A description of the first violation found.
    pub fn audit(&self) -> Result<(), String> {
        let mut whole: HashMap<u32, u32> = HashMap::default();
        let mut shared: HashMap<u32, u32> = HashMap::default();
        let mut mig: HashMap<u32, u8> = HashMap::default();
        let mut cpu = vec![0u64; self.nodes.len()];
        let mut mem = vec![0u64; self.nodes.len()];
        let mut usage: HashMap<(u32, u32), u64> = HashMap::default();
        for (ji, j) in self.jobs.iter().enumerate() {
            let in_pending = self.queues[j.queue as usize]
                .pending
                .contains(&j.order_key(ji as u32));
            if j.phase == JobPhase::Done {
                if !j.tasks.is_empty() || in_pending {
                    return Err(format!(
                        "finished job {} still holds tasks or waits",
                        j.name
                    ));
                }
                continue;
            }
            if in_pending != j.has_unplaced() {
                return Err(format!(
                    "job {}: in pending set = {in_pending}, has unplaced = {}",
                    j.name,
                    j.has_unplaced()
                ));
            }
            let running = j.running_tasks();
            if running as usize != j.tasks.len() {
                return Err(format!(
                    "job {}: {} tasks recorded but {running} counted",
                    j.name,
                    j.tasks.len()
                ));
            }
            if running > 0 && running < j.min_available {
                return Err(format!(
                    "job {}: gang broken, {running} of {} placed",
                    j.name, j.min_available
                ));
            }
            if (j.phase == JobPhase::Running) != (running > 0) {
                return Err(format!(
                    "job {}: phase {:?} with {running} tasks",
                    j.name, j.phase
                ));
            }
            for t in &j.tasks {
                cpu[t.node.idx()] += t.cpu_milli as u64;
                mem[t.node.idx()] += t.memory_mib;
                if t.flavor.0 != NONE {
                    *usage.entry((j.queue, t.flavor.0)).or_default() += t.amount;
                }
                match &t.gpu {
                    GpuAlloc::None => {}
                    GpuAlloc::Whole(ds) => {
                        for d in ds {
                            if self.devices[d.idx()].node != t.node.0 {
                                return Err(format!(
                                    "job {}: device {} is not on node {}",
                                    j.name, d.0, t.node.0
                                ));
                            }
                            *whole.entry(d.0).or_default() += 1;
                        }
                    }
                    GpuAlloc::Shared { device, milli } => {
                        *shared.entry(device.0).or_default() += *milli as u32;
                    }
                    GpuAlloc::Mig {
                        device,
                        profile,
                        start,
                    } => {
                        let dv = &self.devices[device.idx()];
                        let Some(m) = &dv.mig else {
                            return Err(format!(
                                "job {}: MIG slice on non-MIG device {}",
                                j.name, dv.uuid
                            ));
                        };
                        let p = &self.geometries[m.geometry as usize].profiles[*profile as usize];
                        let legal = match &m.fixed {
                            None => p.starts.contains(start),
                            Some(f) => f.contains(&(*profile, *start)),
                        };
                        if !legal {
                            return Err(format!(
                                "job {}: {} at illegal start {start}",
                                j.name, p.name
                            ));
                        }
                        let mask = p.mask_at(*start);
                        let used = mig.entry(device.0).or_default();
                        if *used & mask != 0 {
                            return Err(format!(
                                "MIG memory slices of {} allocated twice",
                                dv.uuid
                            ));
                        }
                        *used |= mask;
                    }
                }
            }
        }
        for (di, d) in self.devices.iter().enumerate() {
            let di = di as u32;
            let w = whole.get(&di).copied().unwrap_or(0);
            let s = shared.get(&di).copied().unwrap_or(0);
            if w > 1 {
                return Err(format!("device {} allocated whole {w} times", d.uuid));
            }
            if w == 1 && s > 0 {
                return Err(format!("device {} allocated whole and shared", d.uuid));
            }
            if s > 1000 {
                return Err(format!("device {} shared beyond one GPU: {s}/1000", d.uuid));
            }
            if d.whole_used != (w == 1) || d.shared_used as u32 != s {
                return Err(format!("device {} state disagrees with its tasks", d.uuid));
            }
            if let Some(m) = &d.mig {
                if m.used != mig.get(&di).copied().unwrap_or(0) {
                    return Err(format!(
                        "device {} MIG mask disagrees with its slices",
                        d.uuid
                    ));
                }
                if w > 0 || s > 0 {
                    return Err(format!("MIG device {} allocated as a whole GPU", d.uuid));
                }
            }
            let bit = 1u64 << d.local;
            let node = &self.nodes[d.node as usize];
            if (node.free_mask & bit != 0) != d.is_whole_free() {
                return Err(format!(
                    "free mask of node {} wrong for device {}",
                    node.name, d.uuid
                ));
            }
        }
        for (ni, n) in self.nodes.iter().enumerate() {
            if cpu[ni] != n.cpu_used as u64 || mem[ni] != n.mem_used {
                return Err(format!(
                    "node {}: cpu/memory in use disagree with tasks",
                    n.name
                ));
            }
            if n.cpu_used > n.cpu_total || n.mem_used > n.mem_total {
                return Err(format!("node {}: cpu or memory over-committed", n.name));
            }
            for &(m, mask) in n.model_masks.iter() {
                let want = n.ready.then(|| (n.avail_mask() & mask).count_ones());
                let b = &self.models[m.idx()].nodes;
                let have = b
                    .by_count
                    .iter()
                    .position(|v| v.contains(&(ni as u32)))
                    .map(|c| c as u32);
                if want != have {
                    return Err(format!(
                        "node {}: bucket {have:?} but {want:?} free",
                        n.name
                    ));
                }
            }
        }
        let mut victims: std::collections::BTreeMap<i32, u32> = std::collections::BTreeMap::new();
        for (q, qs) in self.queues.iter().enumerate() {
            for &j in &qs.running {
                let job = &self.jobs[j as usize];
                if job.queue as usize != q || job.tasks.is_empty() {
                    return Err(format!(
                        "job {} in queue {q}'s running set without tasks",
                        job.name
                    ));
                }
                if job.preemptible {
                    *victims.entry(job.priority).or_default() += 1;
                }
            }
        }
        if victims != self.victim_priorities {
            return Err(format!(
                "victim priority counts {:?} but running jobs give {victims:?}",
                self.victim_priorities
            ));
        }
        for q in 0..self.quota.len() as u32 {
            if !self.quota.is_leaf(q) {
                continue;
            }
            for f in 0..self.quota.flavors() as u32 {
                let u = usage.get(&(q, f)).copied().unwrap_or(0);
                if u != self.quota.usage(q, f) {
                    return Err(format!(
                        "queue {}: usage of flavor {f} is {} but tasks hold {u}",
                        self.quota.name(q),
                        self.quota.usage(q, f)
                    ));
                }
                if !self.quota.is_managed(q, f) {
                    continue;
                }
                if let Some(bl) = self.quota.borrowing_limit(q, f) {
                    if u > self.quota.nominal(q, f) + bl {
                        return Err(format!(
                            "queue {}: uses {u} > nominal + borrowing limit",
                            self.quota.name(q)
                        ));
                    }
                }
                // What is left must not be "negative": the tree never lends more than it has.
                let root = self.quota.root(q);
                if self.quota.pool_usage(root, f) > self.quota.subtree_quota(root, f) {
                    return Err(format!(
                        "tree {}: usage above its pool",
                        self.quota.name(root)
                    ));
                }
            }
        }
        Ok(())
    }
}
