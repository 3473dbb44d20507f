//! GetPreferredAllocation: which `size` devices of those available the kubelet should take.
//!
//! The choice maximises how well the chosen devices talk to each other: the sum over every pair
//! of [`Snapshot::pair_score`] (100 per active NVLink, plus PCIe closeness; two slices of one GPU
//! score highest). `must_include` devices are always in the answer. Up to
//! [`EXHAUSTIVE_LIMIT`] candidate sets are searched exhaustively (8 GPUs choose 4 is 70 sets);
//! beyond that a greedy pass grows the set from the best pair. Ties go to the lowest GPU index,
//! so the answer is deterministic.

use std::collections::HashMap;

use crate::resources::{Resource, Snapshot};
use crate::PluginError;

/// Most candidate sets searched exhaustively before falling back to greedy growth.
pub const EXHAUSTIVE_LIMIT: u64 = 20_000;

fn binom(n: u64, k: u64) -> u64 {
    let k = k.min(n.saturating_sub(k));
    let mut r: u64 = 1;
    for i in 0..k {
        r = r.saturating_mul(n - i) / (i + 1);
    }
    r
}

/// Choose `size` devices of `resource` among `available`, always including `must_include`.
/// `field` prefixes error field paths (`container_requests[0]`).
///
/// # Errors
/// [`PluginError::InvalidRequest`] naming the field: a size below 1 or above the available
/// count, an unknown or duplicate device id, a must-include device that is not available, or
/// more must-include devices than the size.
pub fn preferred(
    snap: &Snapshot,
    resource: &Resource,
    available: &[String],
    must_include: &[String],
    size: i32,
    field: &str,
) -> Result<Vec<String>, PluginError> {
    if size < 1 {
        return Err(PluginError::invalid(
            format!("{field}.allocation_size"),
            format!("must be at least 1, got {size}"),
        ));
    }
    let size = size as usize;
    let index: HashMap<&str, usize> = resource
        .devices
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    let mut avail: Vec<usize> = Vec::with_capacity(available.len());
    for (i, id) in available.iter().enumerate() {
        let Some(&d) = index.get(id.as_str()) else {
            return Err(PluginError::invalid(
                format!("{field}.available_deviceIDs[{i}]"),
                format!("{id:?} is not a {} device of this node", resource.name),
            ));
        };
        if avail.contains(&d) {
            return Err(PluginError::invalid(
                format!("{field}.available_deviceIDs[{i}]"),
                format!("{id:?} is listed twice"),
            ));
        }
        avail.push(d);
    }
    if size > avail.len() {
        return Err(PluginError::invalid(
            format!("{field}.allocation_size"),
            format!("{size} requested but only {} available", avail.len()),
        ));
    }
    let mut must: Vec<usize> = Vec::with_capacity(must_include.len());
    for (i, id) in must_include.iter().enumerate() {
        let found = index.get(id.as_str()).filter(|d| avail.contains(d));
        let Some(&d) = found else {
            return Err(PluginError::invalid(
                format!("{field}.must_include_deviceIDs[{i}]"),
                format!("{id:?} is not among available_deviceIDs"),
            ));
        };
        if !must.contains(&d) {
            must.push(d);
        }
    }
    if must.len() > size {
        return Err(PluginError::invalid(
            format!("{field}.must_include_deviceIDs"),
            format!(
                "{} devices must be included but only {size} requested",
                must.len()
            ),
        ));
    }
    let mut candidates: Vec<usize> = avail
        .iter()
        .copied()
        .filter(|d| !must.contains(d))
        .collect();
    candidates.sort_unstable();
    let need = size - must.len();
    let devs = &resource.devices;
    let score = |a: usize, b: usize| snap.pair_score(&devs[a], &devs[b]) as u64;
    let chosen = if need == 0 {
        Vec::new()
    } else if binom(candidates.len() as u64, need as u64) <= EXHAUSTIVE_LIMIT {
        exhaustive(&candidates, &must, need, &score)
    } else {
        greedy(&candidates, &must, need, &score)
    };
    let mut out: Vec<usize> = must.into_iter().chain(chosen).collect();
    out.sort_unstable();
    Ok(out.into_iter().map(|i| devs[i].id.clone()).collect())
}

fn exhaustive(
    cand: &[usize],
    must: &[usize],
    need: usize,
    score: &impl Fn(usize, usize) -> u64,
) -> Vec<usize> {
    // base[i]: candidate i's score with every must-include device.
    let base: Vec<u64> = cand
        .iter()
        .map(|&c| must.iter().map(|&m| score(c, m)).sum())
        .collect();
    let n = cand.len();
    let pair: Vec<Vec<u64>> = (0..n)
        .map(|i| (0..n).map(|j| score(cand[i], cand[j])).collect())
        .collect();
    let mut best: Option<(u64, Vec<usize>)> = None;
    let mut stack: Vec<usize> = Vec::with_capacity(need);
    fn rec(
        from: usize,
        acc: u64,
        need: usize,
        stack: &mut Vec<usize>,
        base: &[u64],
        pair: &[Vec<u64>],
        best: &mut Option<(u64, Vec<usize>)>,
    ) {
        if stack.len() == need {
            if best.as_ref().is_none_or(|(b, _)| acc > *b) {
                *best = Some((acc, stack.clone()));
            }
            return;
        }
        let left = need - stack.len();
        for i in from..=(base.len() - left) {
            let add = base[i] + stack.iter().map(|&j| pair[i][j]).sum::<u64>();
            stack.push(i);
            rec(i + 1, acc + add, need, stack, base, pair, best);
            stack.pop();
        }
    }
    rec(0, 0, need, &mut stack, &base, &pair, &mut best);
    best.map(|(_, v)| v.into_iter().map(|i| cand[i]).collect())
        .unwrap_or_default()
}

fn greedy(
    cand: &[usize],
    must: &[usize],
    need: usize,
    score: &impl Fn(usize, usize) -> u64,
) -> Vec<usize> {
    let mut chosen: Vec<usize> = Vec::with_capacity(need);
    let mut left: Vec<usize> = cand.to_vec();
    let mut group: Vec<usize> = must.to_vec();
    if group.is_empty() && need >= 2 {
        let mut best = (0u64, 0usize, 1usize);
        let mut first = true;
        for i in 0..left.len() {
            for j in i + 1..left.len() {
                let s = score(left[i], left[j]);
                if first || s > best.0 {
                    best = (s, i, j);
                    first = false;
                }
            }
        }
        let (_, i, j) = best;
        let (a, b) = (left[i], left[j]);
        left.retain(|&x| x != a && x != b);
        chosen.extend([a, b]);
        group.extend([a, b]);
    }
    while chosen.len() < need {
        let (k, _) = left
            .iter()
            .enumerate()
            .map(|(k, &c)| (k, group.iter().map(|&g| score(c, g)).sum::<u64>()))
            .fold((0usize, None::<u64>), |(bk, bs), (k, s)| {
                if bs.is_none_or(|b| s > b) {
                    (k, Some(s))
                } else {
                    (bk, bs)
                }
            });
        let c = left.remove(k);
        chosen.push(c);
        group.push(c);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeInventory;
    use crate::inventory::Inventory;
    use crate::resources::MigStrategy;

    /// 8 GPUs, NVLink bridges in pairs (0-1, 2-3, 4-5, 6-7), PCIe switches by pairs of pairs.
    pub(crate) fn paired() -> Snapshot {
        let y = r#"
node: n
gpus:
  - {name: NVIDIA A100-PCIE-40GB, memory_mib: 40960, count: 4, numa: 0}
  - {name: NVIDIA A100-PCIE-40GB, memory_mib: 40960, count: 4, numa: 1}
nvlink: {pairs: [[0, 1, 3], [2, 3, 3], [4, 5, 3], [6, 7, 3]]}
pcie_switches: [[0, 1, 2, 3], [4, 5, 6, 7]]
"#;
        let inv = FakeInventory::from_yaml(y, "t")
            .expect("ok")
            .discover()
            .expect("d");
        Snapshot::build(inv, MigStrategy::None).expect("snap")
    }

    fn ids(s: &Snapshot, idx: &[usize]) -> Vec<String> {
        idx.iter()
            .map(|&i| s.inventory.gpus[i].uuid.clone())
            .collect()
    }

    #[test]
    fn picks_nvlinked_devices() {
        let s = paired();
        let r = &s.resources[0];
        // Available: 0, 2, 3, 5, 6 → the only NVLinked pair is 2-3.
        let got = preferred(&s, r, &ids(&s, &[0, 2, 3, 5, 6]), &[], 2, "c").expect("ok");
        assert_eq!(got, ids(&s, &[2, 3]));
        // must include 5: its best partner among the rest is on its PCIe switch (6), not 0.
        let got = preferred(&s, r, &ids(&s, &[0, 2, 3, 5, 6]), &ids(&s, &[5]), 2, "c").expect("ok");
        assert_eq!(got, ids(&s, &[5, 6]));
        // 4 of 8: two linked pairs under one switch.
        let all: Vec<usize> = (0..8).collect();
        let got = preferred(&s, r, &ids(&s, &all), &[], 4, "c").expect("ok");
        assert_eq!(got, ids(&s, &[0, 1, 2, 3]));
        let got = preferred(&s, r, &ids(&s, &all), &ids(&s, &[6]), 4, "c").expect("ok");
        assert_eq!(got, ids(&s, &[4, 5, 6, 7]));
    }

    #[test]
    fn greedy_agrees_on_small_cases() {
        let s = paired();
        let r = &s.resources[0];
        let all: Vec<usize> = (0..8).collect();
        let devs = &r.devices;
        let score = |a: usize, b: usize| s.pair_score(&devs[a], &devs[b]) as u64;
        assert_eq!(greedy(&all, &[], 4, &score), vec![0, 1, 2, 3]);
        assert_eq!(greedy(&[0, 1, 2, 3, 4, 5, 7], &[6], 1, &score), vec![7]);
    }

    #[test]
    fn bad_requests_name_the_field() {
        let s = paired();
        let r = &s.resources[0];
        let a = ids(&s, &[0, 1]);
        let cases: Vec<(Vec<String>, Vec<String>, i32, &str)> = vec![
            (a.clone(), vec![], 0, "c.allocation_size"),
            (a.clone(), vec![], 3, "c.allocation_size"),
            (vec!["GPU-x".into()], vec![], 1, "c.available_deviceIDs[0]"),
            (
                vec![a[0].clone(), a[0].clone()],
                vec![],
                1,
                "c.available_deviceIDs[1]",
            ),
            (a.clone(), ids(&s, &[5]), 1, "c.must_include_deviceIDs[0]"),
            (a.clone(), a.clone(), 1, "c.must_include_deviceIDs"),
        ];
        for (avail, must, size, field) in cases {
            let err = preferred(&s, r, &avail, &must, size, "c").expect_err(field);
            match err {
                PluginError::InvalidRequest { field: f, .. } => assert_eq!(f, field),
                other => panic!("{other}"),
            }
        }
    }

    #[test]
    fn mig_slices_stay_on_one_gpu() {
        let y = "node: n\ngpus:\n  - {name: NVIDIA A100-SXM4-80GB, memory_mib: 81920, count: 2}\nnvlink: {switch_links: 12}\nmig:\n  0: {slices: [{profile: 1g.10gb, start: 0}, {profile: 1g.10gb, start: 1}, {profile: 1g.10gb, start: 2}]}\n  1: {slices: [{profile: 1g.10gb, start: 0}, {profile: 1g.10gb, start: 1}]}\n";
        let inv = FakeInventory::from_yaml(y, "t")
            .expect("ok")
            .discover()
            .expect("d");
        let s = Snapshot::build(inv, MigStrategy::Mixed).expect("snap");
        let r = s.resource("nvidia.com/mig-1g.10gb").expect("mig");
        let ids: Vec<String> = r.devices.iter().map(|d| d.id.clone()).collect();
        let on = |id: &String| r.device(id).expect("dev").gpu;
        // Interleave availability so a naive first-N pick would straddle GPUs.
        let avail = vec![
            ids[0].clone(),
            ids[3].clone(),
            ids[4].clone(),
            ids[1].clone(),
        ];
        let got = preferred(&s, r, &avail, &[], 2, "c").expect("ok");
        assert_eq!(on(&got[0]), on(&got[1]), "{got:?}");
        let got = preferred(&s, r, &avail, &[ids[3].clone()], 2, "c").expect("ok");
        assert_eq!(got, vec![ids[3].clone(), ids[4].clone()]);
    }

    #[test]
    fn binomials() {
        assert_eq!(binom(8, 4), 70);
        assert_eq!(binom(8, 2), 28);
        assert!(binom(64, 32) > EXHAUSTIVE_LIMIT);
    }
}
