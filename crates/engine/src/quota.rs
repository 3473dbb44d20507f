//! Hierarchical quota: nominal quota, borrowing and lending limits over a tree of queues.
//!
//! For each tree node `n` and flavor `f` (all amounts in thousandths):
//! - `Q(n)` (subtree quota) = `nominal(n)` + Σ over children `c` of `Q(c) − G(c)`: a node's own
//!   quota plus what its children put into its pool;
//! - `G(n)` (guaranteed) = `max(0, Q(n) − lending_limit(n))` when a lending limit is set, else 0:
//!   the part of `n`'s quota nobody outside its subtree may use;
//! - `PU(n)` (pool usage) = the leaf's own usage for a leaf, else Σ over children of
//!   `max(0, PU(c) − G(c))`: what the subtree draws from `n`'s pool;
//! - `available(n)` = for a root `Q − PU`; otherwise `max(0, G − PU)` plus what the parent can
//!   give, capped by the borrowing limit at `Q − G − max(0, PU − G) + borrowing_limit`.
//!
//! So a queue uses its nominal quota, borrows its cohort's unused quota up to its borrowing limit,
//! and lends only up to its lending limit. Flavors that no queue in a tree mentions are not
//! managed by quota at all (only by capacity).

use crate::fast::HashMap;

use gantry_model::QueueTree;

#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    /// The queue's quotas list the flavor (with any nominal, 0 included).
    listed: bool,
    nominal: u64,
    borrowing_limit: Option<u64>,
    lending_limit: Option<u64>,
    /// Q(n).
    subtree: u64,
    /// G(n).
    guaranteed: u64,
    /// PU(n).
    pool_usage: u64,
    /// Total usage of the subtree (for shares and reports).
    usage: u64,
}

/// The quota tree with usage, indexed `[queue][flavor]`.
#[derive(Debug, Clone, Default)]
pub(crate) struct QuotaTree {
    names: Vec<Box<str>>,
    index: HashMap<Box<str>, u32>,
    parent: Vec<Option<u32>>,
    children: Vec<Vec<u32>>,
    weight: Vec<f64>,
    root: Vec<u32>,
    cells: Vec<Vec<Cell>>,
    /// Per root, per flavor: whether any queue of that tree mentions the flavor.
    managed: Vec<Vec<bool>>,
    /// Per queue: flavors its quotas do not list are usable (`unlisted_flavors: allow`).
    allow_unlisted: Vec<bool>,
    flavors: usize,
}

impl QuotaTree {
    pub fn new(tree: &QueueTree, flavor_index: &HashMap<Box<str>, u32>, flavors: usize) -> Self {
        let n = tree.queues.len();
        let mut t = QuotaTree {
            names: tree.queues.iter().map(|q| q.name.as_str().into()).collect(),
            index: tree
                .queues
                .iter()
                .enumerate()
                .map(|(i, q)| (q.name.as_str().into(), i as u32))
                .collect(),
            parent: tree
                .queues
                .iter()
                .map(|q| q.parent.map(|p| p as u32))
                .collect(),
            children: tree
                .queues
                .iter()
                .map(|q| q.children.iter().map(|&c| c as u32).collect())
                .collect(),
            weight: tree.queues.iter().map(|q| q.weight).collect(),
            root: vec![0; n],
            cells: vec![vec![Cell::default(); flavors]; n],
            managed: Vec::new(),
            allow_unlisted: tree.queues.iter().map(|q| q.allow_unlisted).collect(),
            flavors,
        };
        for i in 0..n {
            let mut r = i as u32;
            while let Some(p) = t.parent[r as usize] {
                r = p;
            }
            t.root[i] = r;
        }
        t.managed = vec![vec![false; flavors]; n];
        for (i, q) in tree.queues.iter().enumerate() {
            for (name, quota) in &q.quotas {
                if let Some(&f) = flavor_index.get(name.as_str()) {
                    let c = &mut t.cells[i][f as usize];
                    c.listed = true;
                    c.nominal = quota.nominal;
                    c.borrowing_limit = quota.borrowing_limit;
                    c.lending_limit = quota.lending_limit;
                    t.managed[t.root[i] as usize][f as usize] = true;
                }
            }
        }
        // Parents come before children in a validated tree: fill subtree quota bottom-up.
        for i in (0..n).rev() {
            for f in 0..flavors {
                let own = t.cells[i][f].nominal;
                let from_children: u64 = t.children[i]
                    .iter()
                    .map(|&c| {
                        let cc = t.cells[c as usize][f];
                        cc.subtree - cc.guaranteed
                    })
                    .sum();
                let cell = &mut t.cells[i][f];
                cell.subtree = own + from_children;
                cell.guaranteed = match cell.lending_limit {
                    Some(l) => cell.subtree.saturating_sub(l),
                    None => 0,
                };
            }
        }
        t
    }

    pub fn find(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn name(&self, q: u32) -> &str {
        &self.names[q as usize]
    }

    pub fn is_leaf(&self, q: u32) -> bool {
        self.children[q as usize].is_empty()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn weight(&self, q: u32) -> f64 {
        self.weight[q as usize]
    }

    pub fn root(&self, q: u32) -> u32 {
        self.root[q as usize]
    }

    pub fn flavors(&self) -> usize {
        self.flavors
    }

    /// Make room for flavors interned after the tree was built (a job naming a model no node
    /// and no queue mentioned): no quota, not managed.
    pub fn ensure_flavors(&mut self, n: usize) {
        if n <= self.flavors {
            return;
        }
        for row in &mut self.cells {
            row.resize(n, Cell::default());
        }
        for row in &mut self.managed {
            row.resize(n, false);
        }
        self.flavors = n;
    }

    /// Whether quota limits `flavor` for queue `q`'s tree.
    pub fn is_managed(&self, q: u32, f: u32) -> bool {
        self.managed[self.root[q as usize] as usize][f as usize]
    }

    pub fn usage(&self, q: u32, f: u32) -> u64 {
        self.cells[q as usize][f as usize].usage
    }

    pub fn subtree_quota(&self, q: u32, f: u32) -> u64 {
        self.cells[q as usize][f as usize].subtree
    }

    pub fn pool_usage(&self, q: u32, f: u32) -> u64 {
        self.cells[q as usize][f as usize].pool_usage
    }

    pub fn nominal(&self, q: u32, f: u32) -> u64 {
        self.cells[q as usize][f as usize].nominal
    }

    pub fn lending_limit(&self, q: u32, f: u32) -> Option<u64> {
        self.cells[q as usize][f as usize].lending_limit
    }

    /// Whether queue `q`'s quotas list flavor `f` (with any nominal, 0 included).
    pub fn is_listed(&self, q: u32, f: u32) -> bool {
        self.cells[q as usize]
            .get(f as usize)
            .is_some_and(|c| c.listed)
    }

    pub fn parent(&self, q: u32) -> Option<u32> {
        self.parent[q as usize]
    }

    pub fn children(&self, q: u32) -> &[u32] {
        &self.children[q as usize]
    }

    pub fn borrowing_limit(&self, q: u32, f: u32) -> Option<u64> {
        self.cells[q as usize][f as usize].borrowing_limit
    }

    /// Whether jobs of queue `q` may use flavor `f` at all: its quotas list it, or it allows
    /// unlisted flavors.
    pub fn may_use(&self, q: u32, f: u32) -> bool {
        self.allow_unlisted[q as usize]
            || self.cells[q as usize]
                .get(f as usize)
                .is_some_and(|c| c.listed)
    }

    /// How much more of `f` queue `q` may use now (0 for a flavor it may not use).
    pub fn available(&self, q: u32, f: u32) -> u64 {
        if !self.may_use(q, f) {
            return 0;
        }
        if !self.is_managed(q, f) {
            return u64::MAX;
        }
        self.available_at(q, f)
    }

    /// The most of `f` queue `q` could ever use: what `available` would say with every queue
    /// idle (its nominal quota plus all its tree could lend it, within borrowing limits).
    pub fn ceiling(&self, q: u32, f: u32) -> u64 {
        if !self.may_use(q, f) {
            return 0;
        }
        if !self.is_managed(q, f) {
            return u64::MAX;
        }
        self.ceiling_at(q, f)
    }

    fn ceiling_at(&self, n: u32, f: u32) -> u64 {
        let c = self.cells[n as usize][f as usize];
        match self.parent[n as usize] {
            None => c.subtree,
            Some(p) => {
                let mut from_parent = self.ceiling_at(p, f);
                if let Some(bl) = c.borrowing_limit {
                    from_parent = from_parent.min(c.subtree - c.guaranteed + bl);
                }
                c.guaranteed.saturating_add(from_parent)
            }
        }
    }

    fn available_at(&self, n: u32, f: u32) -> u64 {
        let c = self.cells[n as usize][f as usize];
        match self.parent[n as usize] {
            None => c.subtree.saturating_sub(c.pool_usage),
            Some(p) => {
                let local = c.guaranteed.saturating_sub(c.pool_usage);
                let mut from_parent = self.available_at(p, f);
                if let Some(bl) = c.borrowing_limit {
                    let stored = c.subtree - c.guaranteed;
                    let used_in_parent = c.pool_usage.saturating_sub(c.guaranteed);
                    let cap = (stored + bl).saturating_sub(used_in_parent);
                    from_parent = from_parent.min(cap);
                }
                local.saturating_add(from_parent)
            }
        }
    }

    /// What the cohort could lend `q` beyond its own unused nominal quota: what it may take
    /// now minus what is its own (a queue's nominal sits in its cohort's pool, so the pool's
    /// free amount counts it too).
    pub fn cohort_available(&self, q: u32, f: u32) -> u64 {
        if self.parent[q as usize].is_none() {
            return 0;
        }
        let own_free = self.nominal(q, f).saturating_sub(self.usage(q, f));
        self.available(q, f).saturating_sub(own_free)
    }

    /// Add (or with a negative delta, remove) usage at leaf `q`, updating pool usage upwards.
    pub fn add_usage(&mut self, q: u32, f: u32, delta: i64) {
        let f = f as usize;
        let mut n = q as usize;
        let apply = |v: u64| -> u64 {
            if delta >= 0 {
                v + delta as u64
            } else {
                v - delta.unsigned_abs()
            }
        };
        // The leaf's pool usage is its usage.
        let mut old_contrib;
        let mut new_contrib;
        {
            let c = &mut self.cells[n][f];
            let before = c.pool_usage;
            c.usage = apply(c.usage);
            c.pool_usage = apply(c.pool_usage);
            old_contrib = before.saturating_sub(c.guaranteed);
            new_contrib = c.pool_usage.saturating_sub(c.guaranteed);
        }
        while let Some(p) = self.parent[n] {
            let p = p as usize;
            let c = &mut self.cells[p][f];
            c.usage = apply(c.usage);
            let before = c.pool_usage;
            c.pool_usage = c.pool_usage + new_contrib - old_contrib;
            old_contrib = before.saturating_sub(c.guaranteed);
            new_contrib = c.pool_usage.saturating_sub(c.guaranteed);
            n = p;
        }
    }

    /// Whether `q` uses more than its nominal quota of `f` (it is borrowing).
    pub fn is_borrowing(&self, q: u32, f: u32) -> bool {
        let c = self.cells[q as usize][f as usize];
        c.usage > c.nominal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gantry_model::doc::from_yaml;
    use gantry_model::QueuesSpec;

    fn tree(yaml: &str) -> QuotaTree {
        let t = from_yaml::<QueuesSpec>(yaml, "q")
            .expect("parse")
            .build()
            .expect("valid");
        let mut idx = HashMap::default();
        idx.insert("gpu".into(), 0u32);
        QuotaTree::new(&t, &idx, 1)
    }

    const TWO: &str = r#"
queues:
  - {name: root}
  - {name: a, parent: root, quotas: {gpu: {nominal: 10, lending_limit: 4}}}
  - {name: b, parent: root, quotas: {gpu: {nominal: 10, borrowing_limit: 3}}}
"#;

    #[test]
    fn lending_and_borrowing_limits() {
        let mut t = tree(TWO);
        let (a, b) = (t.find("a").expect("a"), t.find("b").expect("b"));
        // a can use its 10 and borrow all of b's 10 (b has no lending limit).
        assert_eq!(t.available(a, 0), 20_000);
        // b can use its 10 plus at most 3 borrowed (a lends 4).
        assert_eq!(t.available(b, 0), 13_000);
        t.add_usage(b, 0, 13_000);
        assert_eq!(t.available(b, 0), 0);
        // a still has its 6 guaranteed + 1 lendable left.
        assert_eq!(t.available(a, 0), 7_000);
        assert!(t.is_borrowing(b, 0));
        t.add_usage(b, 0, -13_000);
        assert_eq!(t.available(b, 0), 13_000);
        t.add_usage(a, 0, 20_000);
        assert_eq!(t.available(b, 0), 0);
        assert_eq!(t.usage(t.find("root").expect("r"), 0), 20_000);
    }

    #[test]
    fn unlisted_flavors_are_denied_unless_allowed() {
        // Kueue-like default: a flavor the queue does not list is not usable.
        let t = tree("queues: [{name: solo}]");
        assert!(!t.may_use(0, 0));
        assert_eq!(t.available(0, 0), 0);
        // allow: no queue of the tree lists it, so only capacity limits it.
        let t = tree("queues: [{name: solo, unlisted_flavors: allow}]");
        assert_eq!(t.available(0, 0), u64::MAX);
        // allow is inherited from the cohort; a listed flavor with nominal 0 only borrows.
        let t = tree(
            r#"
queues:
  - {name: org, unlisted_flavors: allow}
  - {name: a, parent: org, quotas: {gpu: {nominal: 4}}}
  - {name: b, parent: org}
  - {name: c, parent: org, unlisted_flavors: deny}
  - {name: d, parent: org, unlisted_flavors: deny, quotas: {gpu: {nominal: 0}}}
"#,
        );
        let f = |n: &str| t.find(n).expect("queue");
        assert_eq!(t.available(f("b"), 0), 4_000); // borrows a's idle quota
        assert_eq!(t.available(f("c"), 0), 0);
        assert_eq!(t.available(f("d"), 0), 4_000);
    }

    #[test]
    fn nested_cohorts_pool_upwards() {
        let mut t = tree(
            r#"
queues:
  - {name: org}
  - {name: lab, parent: org, quotas: {gpu: {nominal: 0, borrowing_limit: 2}}}
  - {name: x, parent: lab, quotas: {gpu: {nominal: 4}}}
  - {name: y, parent: lab, quotas: {gpu: {nominal: 4}}}
  - {name: z, parent: org, quotas: {gpu: {nominal: 8}}}
"#,
        );
        let x = t.find("x").expect("x");
        // x: its own 4 + y's 4 + lab may borrow 2 from org's pool (z's 8).
        assert_eq!(t.available(x, 0), 10_000);
        t.add_usage(x, 0, 10_000);
        assert_eq!(t.available(t.find("y").expect("y"), 0), 0);
        assert_eq!(t.available(t.find("z").expect("z"), 0), 6_000);
    }
}
