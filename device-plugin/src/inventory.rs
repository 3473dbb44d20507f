//! What devices are here: the [`Inventory`] trait and the node's detailed [`NodeInventory`].
//!
//! Two implementations sit behind the trait: [`crate::nvml::NvmlInventory`] (the NVIDIA driver,
//! loaded at run time) and [`crate::fake::FakeInventory`] (a YAML file with scripted health
//! events). Everything above the trait — health, resources, the kubelet API, hand-off and
//! publishing — is the same code in production and in development.
//!
//! [`NodeInventory`] keeps what the node side needs (PCI bus ids, minor numbers, GPU/compute
//! instance ids, the pairwise topology); [`NodeInventory::to_model_node`] reduces it to the
//! scheduler's [`gantry_model::Node`].

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use gantry_model::{Device, Health, MigGeometry, MigLayout, Node, Slice};
use serde::{Deserialize, Serialize};

use crate::PluginError;

/// The source of devices and of their health events.
///
/// # Guarantees
/// Implementations are thread-safe; [`Inventory::next_event`] is called from one dedicated
/// thread (it may block up to its timeout), the other methods from anywhere.
pub trait Inventory: Send + Sync + fmt::Debug {
    /// A short description for logs: `nvml 550.54.15`, `fake examples/dgx-h100.yaml`.
    fn describe(&self) -> String;

    /// Read the devices now (all reported Healthy; health is tracked above the trait).
    ///
    /// # Errors
    /// The driver or file could not be read.
    fn discover(&self) -> Result<NodeInventory, PluginError>;

    /// Wait up to `timeout` for the next health event; `Ok(None)` when none came.
    ///
    /// # Errors
    /// The event source failed; the caller logs it and keeps watching.
    fn next_event(&self, timeout: Duration) -> Result<Option<HealthEvent>, PluginError>;

    /// Whether the GPU `uuid` answers normally now (used before returning it to Healthy).
    ///
    /// # Errors
    /// The probe itself could not run (counts as not healthy).
    fn probe(&self, uuid: &str) -> Result<bool, PluginError>;
}

/// A health event on a GPU, or on one of its MIG instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthEvent {
    /// The physical GPU's uuid.
    pub gpu: String,
    /// The GPU instance the event names, when it names one.
    pub gpu_instance: Option<u32>,
    /// What happened.
    pub kind: EventKind,
}

/// Kinds of health events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An XID critical error with its number.
    Xid(u64),
    /// A double-bit (uncorrectable) ECC error.
    EccDoubleBit,
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::Xid(x) => write!(f, "XID {x}"),
            EventKind::EccDoubleBit => write!(f, "double-bit ECC error"),
        }
    }
}

/// How close two GPUs are on PCIe (NVML's topology levels, nearest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PcieLevel {
    /// On the same board (e.g. a dual-GPU card).
    Internal,
    /// Behind one PCIe switch.
    Single,
    /// Behind several switches, no host bridge.
    Multiple,
    /// On the same host bridge.
    HostBridge,
    /// On the same NUMA node.
    Node,
    /// Across NUMA nodes.
    System,
}

impl PcieLevel {
    /// A closeness score: higher is closer.
    pub fn score(self) -> u32 {
        match self {
            PcieLevel::Internal => 60,
            PcieLevel::Single => 50,
            PcieLevel::Multiple => 40,
            PcieLevel::HostBridge => 30,
            PcieLevel::Node => 20,
            PcieLevel::System => 10,
        }
    }
}

/// How one GPU reaches another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// The other GPU's uuid.
    pub uuid: String,
    /// Active NVLinks between the two (through NVSwitch: the links each has to the switch).
    pub nvlinks: u32,
    /// PCIe common ancestor.
    pub pcie: PcieLevel,
}

/// One MIG instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigSlice {
    /// `MIG-…` uuid.
    pub uuid: String,
    /// Profile name derived at run time (`3g.40gb`).
    pub profile: String,
    /// First memory slice.
    pub start: u8,
    /// Memory slices occupied.
    pub size: u8,
    /// GPU instance id.
    pub gpu_instance: u32,
    /// Compute instance id.
    pub compute_instance: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Parent GPU uuid.
    pub parent: String,
    /// `/dev/nvidia-caps/nvidia-cap<N>` minors that grant access to this instance, when known.
    #[serde(default)]
    pub cap_minors: Vec<u32>,
    /// Health.
    #[serde(default)]
    pub health: Health,
}

/// MIG state of a MIG-capable GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuMig {
    /// MIG mode now.
    pub current: bool,
    /// MIG mode after the next GPU reset.
    pub pending: bool,
    /// The instances that exist.
    pub slices: Vec<MigSlice>,
    /// Profiles and their possible placements, as read from the device.
    pub geometry: Option<MigGeometry>,
}

/// One whole GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gpu {
    /// NVML index.
    pub index: u32,
    /// `GPU-…` uuid.
    pub uuid: String,
    /// Product name as the driver reports it (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// gantry's model name (`h100-80gb`).
    pub model: String,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// PCI bus id (`00000000:18:00.0`).
    pub pci_bus_id: String,
    /// Minor number: the device node is `/dev/nvidia<minor>`.
    pub minor: u32,
    /// NUMA node, when the platform reports one.
    pub numa: Option<u32>,
    /// Every other GPU and how it is reached.
    pub peers: Vec<Peer>,
    /// MIG state, `None` when the GPU is not MIG-capable.
    pub mig: Option<GpuMig>,
    /// Health.
    #[serde(default)]
    pub health: Health,
}

impl Gpu {
    /// Whether MIG mode is on now.
    pub fn mig_enabled(&self) -> bool {
        self.mig.as_ref().is_some_and(|m| m.current)
    }
}

/// The node's devices, as found by an [`Inventory`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInventory {
    /// Node name.
    pub node: String,
    /// Allocatable CPU in millicores.
    pub cpu_milli: u32,
    /// Allocatable memory in MiB.
    pub memory_mib: u64,
    /// Driver version, when known.
    pub driver: Option<String>,
    /// GPUs in NVML index order.
    pub gpus: Vec<Gpu>,
}

impl NodeInventory {
    /// The GPU with this uuid.
    pub fn gpu(&self, uuid: &str) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.uuid == uuid)
    }

    /// Reduce to the scheduler's view: devices with model, memory, NUMA node, NVLink peers and
    /// an NVLink domain (the connected component of active NVLinks), health, and the MIG layout.
    pub fn to_model_node(&self) -> Node {
        let domains = nvlink_domains(&self.gpus);
        let devices = self
            .gpus
            .iter()
            .enumerate()
            .map(|(i, g)| Device {
                uuid: g.uuid.clone(),
                model: g.model.clone(),
                memory_mib: g.memory_mib,
                numa: g.numa,
                nvlink_domain: domains[i].map(|d| format!("{}/nvl{d}", self.node)),
                nvlink_peers: g
                    .peers
                    .iter()
                    .filter(|p| p.nvlinks > 0)
                    .map(|p| p.uuid.clone())
                    .collect(),
                health: g.health,
                mig: g.mig.as_ref().filter(|m| m.current).map(|m| MigLayout {
                    slices: m
                        .slices
                        .iter()
                        .map(|s| Slice {
                            profile: s.profile.clone(),
                            start: s.start,
                            uuid: s.uuid.clone(),
                            health: s.health,
                        })
                        .collect(),
                }),
            })
            .collect();
        let mut labels = BTreeMap::new();
        if let Some(d) = &self.driver {
            labels.insert("gantry.dev/driver".to_string(), d.clone());
        }
        Node {
            taints: Vec::new(),
            name: self.node.clone(),
            cpu_milli: self.cpu_milli,
            memory_mib: self.memory_mib,
            labels,
            devices,
        }
    }
}

/// Connected components of the active-NVLink graph; GPUs with no NVLink get `None`.
fn nvlink_domains(gpus: &[Gpu]) -> Vec<Option<usize>> {
    let index: BTreeMap<&str, usize> = gpus
        .iter()
        .enumerate()
        .map(|(i, g)| (g.uuid.as_str(), i))
        .collect();
    let mut out = vec![None; gpus.len()];
    let mut next = 0;
    for start in 0..gpus.len() {
        if out[start].is_some() || !gpus[start].peers.iter().any(|p| p.nvlinks > 0) {
            continue;
        }
        let mut stack = vec![start];
        out[start] = Some(next);
        while let Some(i) = stack.pop() {
            for p in gpus[i].peers.iter().filter(|p| p.nvlinks > 0) {
                if let Some(&j) = index.get(p.uuid.as_str()) {
                    if out[j].is_none() {
                        out[j] = Some(next);
                        stack.push(j);
                    }
                }
            }
        }
        next += 1;
    }
    out
}

/// gantry's model name for a product name and memory size: `NVIDIA H100 80GB HBM3` → `h100-80gb`,
/// `NVIDIA A100-SXM4-40GB` → `a100-40gb`, `NVIDIA H200` with 143,771 MiB → `h200-141gb`.
///
/// The family is the first word that is letters followed by digits (`h100`, `a100`, `l40s`);
/// the size is a `<N>GB` word in the name, else the memory rounded up to whole GiB.
pub fn model_name(product: &str, memory_mib: u64) -> String {
    let words: Vec<String> = product
        .split([' ', '-', '_'])
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect();
    let family = words
        .iter()
        .find(|w| {
            let letters = w.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            letters > 0 && w[letters..].starts_with(|c: char| c.is_ascii_digit())
        })
        .cloned();
    let size = words
        .iter()
        .find(|w| {
            w.ends_with("gb") && w[..w.len() - 2].chars().all(|c| c.is_ascii_digit()) && w.len() > 2
        })
        .map(|w| w.to_string())
        .or_else(|| (memory_mib > 0).then(|| format!("{}gb", memory_mib.div_ceil(1024))));
    match (family, size) {
        (Some(f), Some(s)) => format!("{f}-{s}"),
        (Some(f), None) => f,
        _ => gantry_model::normalize_model(product),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mig_slice_s_own_health_reaches_the_published_node() {
        use crate::fake::FakeInventory;
        let y = "node: n1\ngpus:\n  - {name: NVIDIA A100-SXM4-80GB, memory_mib: 81920, count: 1}\nmig:\n  0:\n    slices: [{profile: 1g.10gb, start: 0}, {profile: 1g.10gb, start: 1}]\n";
        let mut inv = FakeInventory::from_yaml(y, "t")
            .expect("ok")
            .discover()
            .expect("d");
        // An XID on the second slice only (what the health tracker does).
        inv.gpus[0].mig.as_mut().expect("mig").slices[1].health = Health::Unhealthy;
        let node = inv.to_model_node();
        let slices = &node.devices[0].mig.as_ref().expect("mig layout").slices;
        assert_eq!(slices.len(), 2);
        assert_eq!(slices[0].health, Health::Healthy);
        assert_eq!(slices[1].health, Health::Unhealthy);
        assert_eq!(
            node.devices[0].health,
            Health::Healthy,
            "the GPU itself is fine"
        );
        // And it survives the NodeInventory's JSON (the CRD schema has the field).
        let back: gantry_model::Node =
            serde_json::from_str(&serde_json::to_string(&node).expect("json")).expect("parse");
        assert_eq!(back, node);
    }

    #[test]
    fn model_names_from_products() {
        assert_eq!(model_name("NVIDIA H100 80GB HBM3", 81559), "h100-80gb");
        assert_eq!(model_name("NVIDIA A100-SXM4-40GB", 40960), "a100-40gb");
        assert_eq!(model_name("NVIDIA A100-SXM4-80GB", 81920), "a100-80gb");
        assert_eq!(model_name("NVIDIA H200", 143771), "h200-141gb");
        assert_eq!(model_name("Tesla T4", 15360), "t4-15gb");
        assert_eq!(model_name("Mystery", 0), "mystery");
    }

    fn gpu(i: u32, peers: &[(u32, u32)]) -> Gpu {
        Gpu {
            index: i,
            uuid: format!("GPU-{i}"),
            name: "NVIDIA H100 80GB HBM3".into(),
            model: "h100-80gb".into(),
            memory_mib: 81559,
            pci_bus_id: format!("00000000:{i:02X}:00.0"),
            minor: i,
            numa: Some(0),
            peers: peers
                .iter()
                .map(|&(p, l)| Peer {
                    uuid: format!("GPU-{p}"),
                    nvlinks: l,
                    pcie: PcieLevel::System,
                })
                .collect(),
            mig: None,
            health: Health::Healthy,
        }
    }

    #[test]
    fn nvlink_domains_are_connected_components() {
        let gpus = vec![
            gpu(0, &[(1, 4), (2, 0)]),
            gpu(1, &[(0, 4)]),
            gpu(2, &[(3, 2)]),
            gpu(3, &[(2, 2)]),
            gpu(4, &[(0, 0)]),
        ];
        let inv = NodeInventory {
            node: "n".into(),
            cpu_milli: 1000,
            memory_mib: 1024,
            driver: None,
            gpus,
        };
        let node = inv.to_model_node();
        let doms: Vec<_> = node
            .devices
            .iter()
            .map(|d| d.nvlink_domain.clone())
            .collect();
        assert_eq!(doms[0].as_deref(), Some("n/nvl0"));
        assert_eq!(doms[1], doms[0]);
        assert_eq!(doms[2].as_deref(), Some("n/nvl1"));
        assert_eq!(doms[3], doms[2]);
        assert_eq!(doms[4], None);
        assert_eq!(node.devices[0].nvlink_peers, vec!["GPU-1".to_string()]);
    }
}
