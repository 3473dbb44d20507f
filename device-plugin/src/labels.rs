//! Node labels in the spirit of NVIDIA's GPU feature discovery, as a pure function of the
//! inventory and the MIG strategy. `--publish kube` applies them to the node's Kubernetes Node
//! (see `kube_publish`).
//!
//! | label | value |
//! |---|---|
//! | `nvidia.com/gpu.present` | `true` when the node has a GPU |
//! | `nvidia.com/gpu.product` | product name of GPU 0, spaces as dashes (`NVIDIA-H100-80GB-HBM3`) |
//! | `nvidia.com/gpu.memory` | memory of GPU 0 in MiB |
//! | `nvidia.com/gpu.count` | number of GPUs |
//! | `nvidia.com/mig.capable` | `true` when any GPU is MIG-capable |
//! | `nvidia.com/mig.strategy` | `none`, `single` or `mixed` |
//! | `nvidia.com/mig-<profile>.count` | (`mixed`) slices of each profile |
//! | `gantry.dev/gpu.model` | gantry's model name (`h100-80gb`), the flavor of whole GPUs |

use std::collections::BTreeMap;

use crate::inventory::NodeInventory;
use crate::resources::MigStrategy;

/// Make a label value legal: at most 63 characters of `[A-Za-z0-9._-]`, starting and ending
/// alphanumeric.
pub fn label_value(s: &str) -> String {
    let v: String = s
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

/// The labels for `inv` under `strategy`.
pub fn node_labels(inv: &NodeInventory, strategy: MigStrategy) -> BTreeMap<String, String> {
    let mut l = BTreeMap::new();
    let Some(first) = inv.gpus.first() else {
        l.insert("nvidia.com/gpu.present".into(), "false".into());
        return l;
    };
    l.insert("nvidia.com/gpu.present".into(), "true".into());
    l.insert("nvidia.com/gpu.product".into(), label_value(&first.name));
    l.insert("nvidia.com/gpu.memory".into(), first.memory_mib.to_string());
    l.insert("nvidia.com/gpu.count".into(), inv.gpus.len().to_string());
    l.insert("gantry.dev/gpu.model".into(), label_value(&first.model));
    let capable = inv.gpus.iter().any(|g| g.mig.is_some());
    l.insert("nvidia.com/mig.capable".into(), capable.to_string());
    l.insert("nvidia.com/mig.strategy".into(), strategy.to_string());
    if strategy == MigStrategy::Mixed {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for g in inv.gpus.iter().filter(|g| g.mig_enabled()) {
            for s in g.mig.iter().flat_map(|m| m.slices.iter()) {
                *counts.entry(&s.profile).or_default() += 1;
            }
        }
        for (p, n) in counts {
            l.insert(format!("nvidia.com/mig-{p}.count"), n.to_string());
        }
    }
    l
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeInventory;
    use crate::inventory::Inventory;

    #[test]
    fn labels_of_a_mixed_node() {
        let y = "node: n\ngpus:\n  - {name: NVIDIA H100 80GB HBM3, memory_mib: 81559, count: 2}\nmig:\n  1: {slices: [{profile: 1g.10gb, start: 0}, {profile: 1g.10gb, start: 1}, {profile: 3g.40gb, start: 4}]}\n";
        let inv = FakeInventory::from_yaml(y, "t")
            .expect("ok")
            .discover()
            .expect("d");
        let l = node_labels(&inv, MigStrategy::Mixed);
        assert_eq!(l["nvidia.com/gpu.product"], "NVIDIA-H100-80GB-HBM3");
        assert_eq!(l["nvidia.com/gpu.memory"], "81559");
        assert_eq!(l["nvidia.com/gpu.count"], "2");
        assert_eq!(l["nvidia.com/mig.strategy"], "mixed");
        assert_eq!(l["nvidia.com/mig-1g.10gb.count"], "2");
        assert_eq!(l["nvidia.com/mig-3g.40gb.count"], "1");
        assert_eq!(l["gantry.dev/gpu.model"], "h100-80gb");
        let none = node_labels(&inv, MigStrategy::None);
        assert!(!none.contains_key("nvidia.com/mig-1g.10gb.count"));
        assert_eq!(label_value(" (weird) name! "), "weird--name");
    }
}
