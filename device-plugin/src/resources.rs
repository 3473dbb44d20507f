//! From devices to kubelet resources: the MIG strategies and NVIDIA-compatible resource names.
//!
//! - `none`: every GPU is one `nvidia.com/gpu`, MIG or not.
//! - `single`: when MIG is on, every GPU must have it on with slices of one profile, and each
//!   slice is one `nvidia.com/gpu`; with MIG off everywhere it behaves like `none`.
//! - `mixed`: GPUs without MIG are `nvidia.com/gpu`; each slice profile is its own resource,
//!   `nvidia.com/mig-<profile>` (`nvidia.com/mig-1g.10gb`).
//!
//! A [`Snapshot`] is the inventory (with health) plus the resources it advertises and the
//! pairwise closeness of the GPUs; it is rebuilt on every change and shared read-only.

use std::collections::BTreeMap;
use std::fmt;

use gantry_model::Health;
use serde::{Deserialize, Serialize};

use crate::inventory::NodeInventory;
use crate::PluginError;

/// The resource name of whole GPUs (and of slices under the `single` strategy).
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// The resource name of a MIG profile under the `mixed` strategy.
pub fn mig_resource(profile: &str) -> String {
    format!("nvidia.com/mig-{profile}")
}

/// How MIG slices are advertised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum MigStrategy {
    /// Ignore MIG: whole GPUs only.
    #[default]
    None,
    /// Identical slices on every GPU, advertised as `nvidia.com/gpu`.
    Single,
    /// Each profile its own resource.
    Mixed,
}

impl MigStrategy {
    /// `none`, `single` or `mixed`.
    pub fn as_str(self) -> &'static str {
        match self {
            MigStrategy::None => "none",
            MigStrategy::Single => "single",
            MigStrategy::Mixed => "mixed",
        }
    }
}

impl fmt::Display for MigStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One device as the kubelet sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdvertisedDevice {
    /// Device id: the GPU or MIG uuid.
    pub id: String,
    /// Health.
    pub health: Health,
    /// NUMA node.
    pub numa: Option<u32>,
    /// Index of the physical GPU in [`NodeInventory::gpus`].
    pub gpu: usize,
    /// Index of the slice in that GPU's MIG slices, for MIG devices.
    pub slice: Option<usize>,
}

/// One extended resource and its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `nvidia.com/gpu`, `nvidia.com/mig-1g.10gb`, ...
    pub name: String,
    /// Devices in a stable order (GPU index, then slice start).
    pub devices: Vec<AdvertisedDevice>,
}

impl Resource {
    /// The device with this id.
    pub fn device(&self, id: &str) -> Option<&AdvertisedDevice> {
        self.devices.iter().find(|d| d.id == id)
    }
}

/// Score of two devices on the same physical GPU (two slices of one GPU).
pub const SAME_GPU_SCORE: u32 = 10_000;

/// The node's state: inventory with health, the resources it advertises, GPU closeness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Devices with their current health.
    pub inventory: NodeInventory,
    /// The strategy the resources were built with.
    pub strategy: MigStrategy,
    /// Advertised resources, `nvidia.com/gpu` first.
    pub resources: Vec<Resource>,
    /// `scores[a][b]`: how well GPUs `a` and `b` talk: 100 per active NVLink plus the PCIe
    /// closeness ([`crate::inventory::PcieLevel::score`]); [`SAME_GPU_SCORE`] on the diagonal.
    pub scores: Vec<Vec<u32>>,
}

impl Snapshot {
    /// Build the resources of `inventory` under `strategy`.
    ///
    /// # Errors
    /// [`PluginError::MigStrategy`] when `single` is asked of a node whose GPUs mix MIG on and
    /// off, or carry slices of different profiles, or have MIG on with no slices.
    pub fn build(inventory: NodeInventory, strategy: MigStrategy) -> Result<Self, PluginError> {
        let resources = resources(&inventory, strategy)?;
        let index: BTreeMap<&str, usize> = inventory
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| (g.uuid.as_str(), i))
            .collect();
        let n = inventory.gpus.len();
        let mut scores = vec![vec![0u32; n]; n];
        for (a, g) in inventory.gpus.iter().enumerate() {
            scores[a][a] = SAME_GPU_SCORE;
            for p in &g.peers {
                if let Some(&b) = index.get(p.uuid.as_str()) {
                    scores[a][b] = p.nvlinks * 100 + p.pcie.score();
                }
            }
        }
        Ok(Snapshot {
            inventory,
            strategy,
            resources,
            scores,
        })
    }

    /// The resource with this name.
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// The resource that advertises device `id`.
    pub fn resource_of(&self, id: &str) -> Option<&str> {
        self.resources
            .iter()
            .find(|r| r.device(id).is_some())
            .map(|r| r.name.as_str())
    }

    /// How well two advertised devices talk (higher is better).
    pub fn pair_score(&self, a: &AdvertisedDevice, b: &AdvertisedDevice) -> u32 {
        self.scores[a.gpu][b.gpu]
    }
}

fn resources(inv: &NodeInventory, strategy: MigStrategy) -> Result<Vec<Resource>, PluginError> {
    let whole = |i: usize| {
        let g = &inv.gpus[i];
        AdvertisedDevice {
            id: g.uuid.clone(),
            health: g.health,
            numa: g.numa,
            gpu: i,
            slice: None,
        }
    };
    let slices = |i: usize| -> Vec<AdvertisedDevice> {
        let g = &inv.gpus[i];
        let mut v: Vec<AdvertisedDevice> = g
            .mig
            .iter()
            .flat_map(|m| m.slices.iter().enumerate())
            .map(|(si, s)| AdvertisedDevice {
                id: s.uuid.clone(),
                health: if g.health == Health::Unhealthy {
                    Health::Unhealthy
                } else {
                    s.health
                },
                numa: g.numa,
                gpu: i,
                slice: Some(si),
            })
            .collect();
        v.sort_by_key(|d| {
            d.slice
                .map(|si| g.mig.as_ref().map_or(0, |m| m.slices[si].start))
        });
        v
    };
    let profile_of = |d: &AdvertisedDevice| -> String {
        let g = &inv.gpus[d.gpu];
        match (d.slice, &g.mig) {
            (Some(si), Some(m)) => m.slices[si].profile.clone(),
            _ => String::new(),
        }
    };
    let n = inv.gpus.len();
    let mut out = Vec::new();
    match strategy {
        MigStrategy::None => {
            if n > 0 {
                out.push(Resource {
                    name: GPU_RESOURCE.to_string(),
                    devices: (0..n).map(whole).collect(),
                });
            }
        }
        MigStrategy::Single => {
            let on: Vec<usize> = (0..n).filter(|&i| inv.gpus[i].mig_enabled()).collect();
            if on.is_empty() {
                return resources(inv, MigStrategy::None);
            }
            let err = |reason: String| PluginError::MigStrategy {
                strategy: "single",
                reason,
            };
            if on.len() != n {
                let off: Vec<String> = (0..n)
                    .filter(|i| !on.contains(i))
                    .map(|i| i.to_string())
                    .collect();
                return Err(err(format!(
                    "every GPU must have MIG enabled, but GPUs {} do not (use --mig-strategy mixed)",
                    off.join(", ")
                )));
            }
            let devices: Vec<AdvertisedDevice> = (0..n).flat_map(slices).collect();
            let mut profiles: Vec<String> = devices.iter().map(profile_of).collect();
            profiles.sort();
            profiles.dedup();
            match profiles.len() {
                0 => {
                    return Err(err(
                        "MIG is enabled but no MIG devices exist; create them first".to_string(),
                    ))
                }
                1 => {}
                _ => {
                    return Err(err(format!(
                        "all slices must have one profile, found {} (use --mig-strategy mixed)",
                        profiles.join(", ")
                    )))
                }
            }
            out.push(Resource {
                name: GPU_RESOURCE.to_string(),
                devices,
            });
        }
        MigStrategy::Mixed => {
            let plain: Vec<AdvertisedDevice> = (0..n)
                .filter(|&i| !inv.gpus[i].mig_enabled())
                .map(whole)
                .collect();
            if !plain.is_empty() {
                out.push(Resource {
                    name: GPU_RESOURCE.to_string(),
                    devices: plain,
                });
            }
            let mut by_profile: BTreeMap<String, Vec<AdvertisedDevice>> = BTreeMap::new();
            for d in (0..n)
                .filter(|&i| inv.gpus[i].mig_enabled())
                .flat_map(slices)
            {
                by_profile.entry(profile_of(&d)).or_default().push(d);
            }
            for (profile, devices) in by_profile {
                out.push(Resource {
                    name: mig_resource(&profile),
                    devices,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeInventory;
    use crate::inventory::Inventory;

    fn inv(mig: &str) -> NodeInventory {
        let y = format!(
            "node: n\ngpus:\n  - {{name: NVIDIA H100 80GB HBM3, memory_mib: 81559, count: 3}}\nmig:\n{mig}"
        );
        FakeInventory::from_yaml(&y, "t")
            .expect("valid")
            .discover()
            .expect("d")
    }

    fn names(rs: &[Resource]) -> Vec<(String, usize)> {
        rs.iter()
            .map(|r| (r.name.clone(), r.devices.len()))
            .collect()
    }

    #[test]
    fn strategies_name_resources_like_nvidia() {
        let mixed = inv("  1: {slices: [{profile: 3g.40gb, start: 0}, {profile: 3g.40gb, start: 4}]}\n  2: {slices: [{profile: 1g.10gb, start: 0}]}\n");
        let none = Snapshot::build(mixed.clone(), MigStrategy::None).expect("none");
        assert_eq!(names(&none.resources), vec![("nvidia.com/gpu".into(), 3)]);
        let m = Snapshot::build(mixed.clone(), MigStrategy::Mixed).expect("mixed");
        assert_eq!(
            names(&m.resources),
            vec![
                ("nvidia.com/gpu".into(), 1),
                ("nvidia.com/mig-1g.10gb".into(), 1),
                ("nvidia.com/mig-3g.40gb".into(), 2)
            ]
        );
        let err = Snapshot::build(mixed, MigStrategy::Single).expect_err("single");
        assert!(err.to_string().contains("GPUs 0 do not"), "{err}");
    }

    #[test]
    fn single_needs_one_profile_everywhere() {
        let uniform = inv("  0: {slices: [{profile: 3g.40gb, start: 0}]}\n  1: {slices: [{profile: 3g.40gb, start: 4}]}\n  2: {slices: [{profile: 3g.40gb, start: 0}, {profile: 3g.40gb, start: 4}]}\n");
        let s = Snapshot::build(uniform, MigStrategy::Single).expect("single");
        assert_eq!(names(&s.resources), vec![("nvidia.com/gpu".into(), 4)]);
        assert!(s.resources[0].devices.iter().all(|d| d.slice.is_some()));
        let two = inv("  0: {slices: [{profile: 3g.40gb, start: 0}]}\n  1: {slices: [{profile: 3g.40gb, start: 4}]}\n  2: {slices: [{profile: 1g.10gb, start: 0}]}\n");
        let err = Snapshot::build(two, MigStrategy::Single).expect_err("two profiles");
        assert!(err.to_string().contains("1g.10gb, 3g.40gb"), "{err}");
        let off = inv("  0: {enabled: false}\n");
        let s = Snapshot::build(off, MigStrategy::Single).expect("all off = none");
        assert_eq!(names(&s.resources), vec![("nvidia.com/gpu".into(), 3)]);
    }

    #[test]
    fn unhealthy_parent_makes_slices_unhealthy() {
        let mut i = inv("  2: {slices: [{profile: 1g.10gb, start: 0}]}\n");
        i.gpus[2].health = Health::Unhealthy;
        let s = Snapshot::build(i, MigStrategy::Mixed).expect("mixed");
        let r = s.resource("nvidia.com/mig-1g.10gb").expect("mig");
        assert_eq!(r.devices[0].health, Health::Unhealthy);
    }
}
