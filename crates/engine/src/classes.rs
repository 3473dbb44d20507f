//! Node classes: ready nodes in identical placement states share one class, so a placement
//! scores each distinct state once instead of every node.
//!
//! A node's [`Sig`] (signature) is everything a scorer may look at: its layout (which GPU models
//! it has, split into NVLink-domain partitions), its free cpu and memory, and the free
//! thousandths of each whole-capable device, sorted inside each partition. Two nodes with the
//! same signature score the same for every task, so:
//! - 5,000 empty DGX nodes are one class, and a best-fit pass over them is a handful of lookups;
//! - a score is cached per (class, task demand, model, workload epoch) and survives until the
//!   class empties (its generation then moves).
//!
//! What the signature leaves out is checked per node when a class's member is picked: the
//! node's labels and taints (eligibility), devices held by reservations, spread, and gang scopes.
//! The index is updated on every change of a node (bind, release, readiness, health), so it is
//! never rebuilt by scanning.

use std::collections::BTreeSet;

use crate::fast::HashMap;

use crate::snapshot::{FlavorId, Snapshot, NONE};

/// One partition of a node's whole-capable devices: one model, and one NVLink domain or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct PartKey {
    pub model: FlavorId,
    pub domain: bool,
    pub size: u8,
}

/// A node's device partitions: the layout's order, with the node's own masks.
#[derive(Debug, Clone)]
pub(crate) struct Part {
    pub model: FlavorId,
    /// Local device bits.
    pub mask: u64,
    /// NVLink domain id, or `NONE`.
    pub domain: u32,
}

/// A node's placement state. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Sig {
    pub layout: u32,
    pub cpu: u32,
    pub mem: u64,
    /// Free thousandths per device, partition after partition, each sorted descending.
    pub free: Free,
}

/// Up to 64 free values inline (a node has at most 64 devices), so computing a node's state
/// on every bind allocates nothing.
#[derive(Clone, Copy)]
pub(crate) struct Free {
    len: u8,
    v: [u16; 64],
}

impl Free {
    #[cfg(test)]
    pub fn new(values: &[u16]) -> Free {
        let mut f = Free {
            len: values.len().min(64) as u8,
            v: [0; 64],
        };
        f.v[..f.len as usize].copy_from_slice(&values[..f.len as usize]);
        f
    }
}

impl std::ops::Deref for Free {
    type Target = [u16];
    fn deref(&self) -> &[u16] {
        &self.v[..self.len as usize]
    }
}

impl std::ops::DerefMut for Free {
    fn deref_mut(&mut self) -> &mut [u16] {
        &mut self.v[..self.len as usize]
    }
}

impl PartialEq for Free {
    fn eq(&self, other: &Free) -> bool {
        **self == **other
    }
}

impl Eq for Free {}

impl std::hash::Hash for Free {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (**self).hash(h)
    }
}

impl std::fmt::Debug for Free {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ClassSlot {
    pub sig: Sig,
    /// Nodes in this state, ascending: ties between equal nodes go to the lowest index.
    pub members: BTreeSet<u32>,
    /// Bumped when the slot is recycled, so cached scores of the old class are never used.
    pub gen: u32,
    /// Positions in `live` lists: `[all, model of each distinct layout model...]`.
    live_pos: Vec<u32>,
}

/// The class index. See the module docs.
#[derive(Debug, Clone, Default)]
pub(crate) struct Classes {
    /// Layouts: the partition keys, in order.
    pub layouts: Vec<Box<[PartKey]>>,
    /// Distinct models of each layout.
    pub layout_models: Vec<Box<[FlavorId]>>,
    layout_ix: HashMap<Box<[PartKey]>, u32>,
    map: HashMap<Sig, u32>,
    pub slots: Vec<ClassSlot>,
    spare: Vec<u32>,
    /// Per node: its class, `NONE` when not indexed.
    node: Vec<u32>,
    /// Non-empty classes.
    pub live_all: Vec<u32>,
    /// Non-empty classes holding a model, per model flavor.
    pub live_by_model: Vec<Vec<u32>>,
}

impl Classes {
    /// Intern a layout; returns its id.
    pub fn layout(&mut self, parts: &[PartKey]) -> u32 {
        if let Some(&id) = self.layout_ix.get(parts) {
            return id;
        }
        let id = self.layouts.len() as u32;
        let mut models: Vec<FlavorId> = parts.iter().map(|p| p.model).collect();
        models.dedup();
        self.layouts.push(parts.into());
        self.layout_models.push(models.into());
        self.layout_ix.insert(parts.into(), id);
        id
    }

    /// The class of a node (`NONE` when not indexed).
    pub fn class_of(&self, node: u32) -> u32 {
        self.node.get(node as usize).copied().unwrap_or(NONE)
    }

    fn go_live(&mut self, c: u32) {
        let layout = self.slots[c as usize].sig.layout as usize;
        let models = self.layout_models[layout].clone();
        let mut pos = Vec::with_capacity(models.len() + 1);
        pos.push(self.live_all.len() as u32);
        self.live_all.push(c);
        for m in models.iter() {
            if self.live_by_model.len() <= m.idx() {
                self.live_by_model.resize(m.idx() + 1, Vec::new());
            }
            let list = &mut self.live_by_model[m.idx()];
            pos.push(list.len() as u32);
            list.push(c);
        }
        self.slots[c as usize].live_pos = pos;
    }

    fn go_dead(&mut self, c: u32) {
        let layout = self.slots[c as usize].sig.layout as usize;
        let models = self.layout_models[layout].clone();
        let pos = std::mem::take(&mut self.slots[c as usize].live_pos);
        // `all` list.
        let p = pos[0] as usize;
        self.live_all.swap_remove(p);
        if let Some(&moved) = self.live_all.get(p) {
            self.slots[moved as usize].live_pos[0] = p as u32;
        }
        for (k, m) in models.iter().enumerate() {
            let p = pos[k + 1] as usize;
            let list = &mut self.live_by_model[m.idx()];
            list.swap_remove(p);
            if let Some(&moved) = list.get(p) {
                let ml = self.slots[moved as usize].sig.layout as usize;
                let slot = self.layout_models[ml]
                    .iter()
                    .position(|x| x == m)
                    .expect("a live class lists its models");
                self.slots[moved as usize].live_pos[slot + 1] = p as u32;
            }
        }
    }

    /// Move `node` into the class of `sig` (`None`: out of the index).
    pub fn set(&mut self, node: u32, sig: Option<Sig>) {
        let n = node as usize;
        if self.node.len() <= n {
            self.node.resize(n + 1, NONE);
        }
        let old = self.node[n];
        if old != NONE {
            if sig.as_ref() == Some(&self.slots[old as usize].sig) {
                return;
            }
            let members = &mut self.slots[old as usize].members;
            members.remove(&node);
            if members.is_empty() {
                self.go_dead(old);
                let slot = &mut self.slots[old as usize];
                slot.gen = slot.gen.wrapping_add(1);
                let sig = slot.sig.clone();
                self.map.remove(&sig);
                self.spare.push(old);
            }
            self.node[n] = NONE;
        }
        let Some(sig) = sig else { return };
        let c = match self.map.get(&sig) {
            Some(&c) => c,
            None => {
                let c = match self.spare.pop() {
                    Some(c) => {
                        self.slots[c as usize].sig = sig.clone();
                        c
                    }
                    None => {
                        self.slots.push(ClassSlot {
                            sig: sig.clone(),
                            members: BTreeSet::new(),
                            gen: 0,
                            live_pos: Vec::new(),
                        });
                        (self.slots.len() - 1) as u32
                    }
                };
                self.map.insert(sig, c);
                c
            }
        };
        let slot = &mut self.slots[c as usize];
        slot.members.insert(node);
        self.node[n] = c;
        if slot.members.len() == 1 {
            self.go_live(c);
        }
    }

    /// Distinct non-empty classes.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live_all.len()
    }
}

impl Snapshot {
    /// A device's free thousandths for placement: 0 when it is used whole, unhealthy or MIG.
    pub(crate) fn dev_free(&self, dev: u32) -> u16 {
        let d = &self.devices[dev as usize];
        if !d.healthy || d.mig.is_some() || d.whole_used {
            0
        } else {
            1000 - d.shared_used.min(1000)
        }
    }

    /// The signature of `node` with the devices in `hide` (local bits) treated as taken.
    pub(crate) fn node_sig(&self, node: u32, hide: u64) -> Sig {
        let n = &self.nodes[node as usize];
        let mut free = Free { len: 0, v: [0; 64] };
        for p in n.parts.iter() {
            let start = free.len as usize;
            let mut m = p.mask;
            while m != 0 {
                let i = m.trailing_zeros();
                m &= m - 1;
                free.v[free.len as usize] = if hide & (1 << i) != 0 {
                    0
                } else {
                    self.dev_free(n.dev_start + i)
                };
                free.len += 1;
            }
            free.v[start..free.len as usize].sort_unstable_by(|a, b| b.cmp(a));
        }
        Sig {
            layout: n.layout,
            cpu: n.cpu_free(),
            mem: n.mem_free(),
            free,
        }
    }

    /// Put a node in the class of its current state (out of the index when not ready).
    pub(crate) fn reclass(&mut self, node: u32) {
        self.version = self.version.wrapping_add(1);
        let sig = self.nodes[node as usize]
            .ready
            .then(|| self.node_sig(node, 0));
        self.classes.set(node, sig);
    }
}

#[cfg(test)]
mod tests {
    use crate::testing::{cluster, queues, JobBuilder};
    use crate::{schedule, Profile, Snapshot};

    #[test]
    fn identical_nodes_share_a_class_and_move_on_bind() {
        let c = cluster(4, 8, "h100-80gb");
        let q = queues(&[("a", 32)]);
        let mut s = Snapshot::new(&c, &q).expect("snapshot");
        assert_eq!(s.classes.live(), 1);
        s.submit(&JobBuilder::new("j").queue("a").gpus(2).build(&q), 0)
            .expect("submit");
        schedule(&mut s, &Profile::gantry(), 0);
        // One node now has 6 free and less cpu: two classes.
        assert_eq!(s.classes.live(), 2);
        s.complete(s.job_by_name("j").expect("job"))
            .expect("complete");
        assert_eq!(s.classes.live(), 1);
        assert_eq!(
            s.classes.slots[s.classes.live_all[0] as usize]
                .members
                .len(),
            4
        );
        // A lost node leaves the index.
        s.set_node_ready(crate::NodeId(0), false);
        assert_eq!(
            s.classes.slots[s.classes.live_all[0] as usize]
                .members
                .len(),
            3
        );
    }
}
