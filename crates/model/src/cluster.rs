//! Nodes, devices and slices: the hardware a cluster spec describes and the device plugin reports.
//!
//! A [`ClusterSpec`] is what users write: explicit nodes, or pools that expand into many nodes
//! (`64 × 8 H100, one NVLink domain per node, 8 nodes per rack`). [`ClusterSpec::build`] validates
//! it into a [`Cluster`], whose [`Catalog`] summarises what the hardware can offer so job specs can
//! be checked before they wait forever (`9 requested but no flavor offers more than 8 per node`).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::mig::MigGeometry;
use crate::quantity::Quantity;
use crate::ModelError;

/// Device health as the device plugin reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Health {
    /// Usable.
    #[default]
    Healthy,
    /// Not to be used until it recovers.
    Unhealthy,
}

impl Health {
    /// Whether it is [`Health::Healthy`].
    pub fn is_healthy(&self) -> bool {
        *self == Health::Healthy
    }
}

/// One MIG instance on a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Slice {
    /// Profile name of the device's model (`3g.40gb`).
    pub profile: String,
    /// First memory slice it occupies.
    pub start: u8,
    /// `MIG-…` uuid when the instance exists; empty for planned ones.
    #[serde(default)]
    pub uuid: String,
    /// Health of this instance (an XID can hit one slice and not its siblings). An unhealthy
    /// slice is never offered.
    #[serde(default, skip_serializing_if = "Health::is_healthy")]
    pub health: Health,
}

/// How a MIG-enabled device is carved.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MigLayout {
    /// The instances that exist. Empty means the scheduler may place slices at any legal start
    /// (instances are created on demand); non-empty means only these slices are offered.
    #[serde(default)]
    pub slices: Vec<Slice>,
}

/// One whole GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// `GPU-…` uuid; generated from the node name and index when a spec leaves it out.
    #[serde(default)]
    pub uuid: String,
    /// Model, normalised to lower case (`h100-80gb`): the flavor of its whole-GPU capacity.
    pub model: String,
    /// Device memory in MiB (0 when unknown).
    #[serde(default)]
    pub memory_mib: u64,
    /// NUMA node, if the platform reports one.
    #[serde(default)]
    pub numa: Option<u32>,
    /// NVLink domain id, unique in the cluster (devices that can all talk over NVLink/NVSwitch).
    /// Multi-node domains (NVL72 racks) use the same id on several nodes.
    #[serde(default)]
    pub nvlink_domain: Option<String>,
    /// Uuids of devices with an active NVLink to this one.
    #[serde(default)]
    pub nvlink_peers: Vec<String>,
    /// Health.
    #[serde(default)]
    pub health: Health,
    /// MIG mode and layout; `None` when MIG is disabled.
    #[serde(default)]
    pub mig: Option<MigLayout>,
}

fn de_cpu<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    Quantity::deserialize(d)?
        .cpu_milli()
        .map_err(serde::de::Error::custom)
}

fn ser_cpu<S: serde::Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v}m"))
}

fn de_mem<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Quantity::deserialize(d)?
        .memory_mib()
        .map_err(serde::de::Error::custom)
}

fn ser_mem<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v}Mi"))
}

/// One machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// Allocatable CPU in millicores (spec: `cpu: 96` or `"96000m"`).
    #[serde(
        rename = "cpu",
        deserialize_with = "de_cpu",
        serialize_with = "ser_cpu"
    )]
    pub cpu_milli: u32,
    /// Allocatable memory in MiB (spec: `memory: 1Ti`).
    #[serde(
        rename = "memory",
        deserialize_with = "de_mem",
        serialize_with = "ser_mem"
    )]
    pub memory_mib: u64,
    /// Topology and other labels (`rack: r3`, `zone: a`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Taints: tasks that do not tolerate a `NoSchedule` or `NoExecute` taint stay away.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<crate::Taint>,
    /// Its GPUs.
    #[serde(default)]
    pub devices: Vec<Device>,
}

/// Many identical nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePool {
    /// Node names are `<name>-<index>`.
    pub name: String,
    /// How many nodes.
    pub count: u32,
    /// GPU model (empty or absent for CPU-only pools).
    #[serde(default)]
    pub gpu_model: Option<String>,
    /// GPUs per node.
    #[serde(default)]
    pub gpus_per_node: u32,
    /// GPU memory per device.
    #[serde(default)]
    pub gpu_memory: Option<Quantity>,
    /// NVLink domains per node (the GPUs are split evenly); 0 means no NVLink.
    #[serde(default = "one")]
    pub nvlink_domains_per_node: u32,
    /// Nodes per rack: sets label `rack: <pool>-r<k>`. 0 means no rack label.
    #[serde(default)]
    pub nodes_per_rack: u32,
    /// CPU per node.
    #[serde(deserialize_with = "de_cpu", serialize_with = "ser_cpu")]
    pub cpu: u32,
    /// Memory per node.
    #[serde(deserialize_with = "de_mem", serialize_with = "ser_mem")]
    pub memory: u64,
    /// Extra labels on every node.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Taints on every node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<crate::Taint>,
    /// MIG layout for every device (`{}` = dynamic slices).
    #[serde(default)]
    pub mig: Option<MigLayout>,
}

fn one() -> u32 {
    1
}

/// What users write to describe a cluster.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Explicit nodes.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Pools expanded into nodes after the explicit ones.
    #[serde(default)]
    pub pools: Vec<NodePool>,
    /// MIG geometries for models without a built-in table, or overriding one (as NVML reports).
    #[serde(default)]
    pub mig_geometries: Vec<MigGeometry>,
}

/// A validated cluster.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Cluster {
    /// Nodes in a stable order (their index is the engine's node id).
    pub nodes: Vec<Node>,
    /// MIG geometry per model that has MIG devices.
    pub geometries: BTreeMap<String, MigGeometry>,
}

/// Normalise a GPU model name: lower case, spaces to dashes (`"H100 80GB"` → `h100-80gb`).
pub fn normalize_model(model: &str) -> String {
    model.trim().to_ascii_lowercase().replace([' ', '_'], "-")
}

impl ClusterSpec {
    /// Expand pools, normalise and validate.
    ///
    /// # Errors
    /// Duplicate node names or device uuids, an empty model, a MIG layout for a model with no
    /// known geometry, a slice with an unknown profile, an illegal start, or overlapping slices.
    pub fn build(self) -> Result<Cluster, ModelError> {
        let mut nodes = self.nodes;
        for (pi, pool) in self.pools.iter().enumerate() {
            let field = format!("pools[{pi}]");
            if pool.name.is_empty() {
                return Err(ModelError::invalid(
                    format!("{field}.name"),
                    "must not be empty",
                ));
            }
            let model = pool.gpu_model.as_deref().map(normalize_model);
            if model.is_none() && pool.gpus_per_node > 0 {
                return Err(ModelError::invalid(
                    format!("{field}.gpu_model"),
                    "gpus_per_node > 0 needs a gpu_model",
                ));
            }
            let gpu_mem = match &pool.gpu_memory {
                Some(q) => q
                    .memory_mib()
                    .map_err(|r| ModelError::invalid(format!("{field}.gpu_memory"), r))?,
                None => 0,
            };
            let domains = pool.nvlink_domains_per_node;
            if domains > 0 && pool.gpus_per_node % domains != 0 {
                return Err(ModelError::invalid(
                    format!("{field}.nvlink_domains_per_node"),
                    format!(
                        "{} GPUs per node do not split evenly into {domains} domains",
                        pool.gpus_per_node
                    ),
                ));
            }
            for i in 0..pool.count {
                let name = format!("{}-{i}", pool.name);
                let mut labels = pool.labels.clone();
                if let Some(rack) = i.checked_div(pool.nodes_per_rack) {
                    labels.insert("rack".to_string(), format!("{}-r{rack}", pool.name));
                }
                let per_domain = pool.gpus_per_node.checked_div(domains).unwrap_or(0);
                let devices = (0..pool.gpus_per_node)
                    .map(|d| Device {
                        uuid: String::new(),
                        model: model.clone().unwrap_or_default(),
                        memory_mib: gpu_mem,
                        numa: Some(if pool.gpus_per_node >= 2 {
                            d / (pool.gpus_per_node / 2)
                        } else {
                            0
                        }),
                        nvlink_domain: (per_domain > 0)
                            .then(|| format!("{name}/nvl{}", d / per_domain)),
                        nvlink_peers: Vec::new(),
                        health: Health::Healthy,
                        mig: pool.mig.clone(),
                    })
                    .collect();
                nodes.push(Node {
                    name,
                    cpu_milli: pool.cpu,
                    memory_mib: pool.memory,
                    labels,
                    taints: pool.taints.clone(),
                    devices,
                });
            }
        }
        let mut geometries: BTreeMap<String, MigGeometry> = BTreeMap::new();
        for g in self.mig_geometries {
            geometries.insert(normalize_model(&g.model), g);
        }
        let mut names = HashSet::new();
        let mut uuids = HashSet::new();
        for (ni, node) in nodes.iter_mut().enumerate() {
            let field = format!("nodes[{ni}]");
            if node.name.is_empty() {
                return Err(ModelError::invalid(
                    format!("{field}.name"),
                    "must not be empty",
                ));
            }
            if !names.insert(node.name.clone()) {
                return Err(ModelError::invalid(
                    format!("{field}.name"),
                    format!("duplicate node name {:?}", node.name),
                ));
            }
            for (di, dev) in node.devices.iter_mut().enumerate() {
                let field = format!("{field}.devices[{di}]");
                dev.model = normalize_model(&dev.model);
                if dev.model.is_empty() {
                    return Err(ModelError::invalid(
                        format!("{field}.model"),
                        "must not be empty",
                    ));
                }
                if dev.uuid.is_empty() {
                    dev.uuid = format!("GPU-{}-{di}", node.name);
                }
                if !uuids.insert(dev.uuid.clone()) {
                    return Err(ModelError::invalid(
                        format!("{field}.uuid"),
                        format!("duplicate device uuid {:?}", dev.uuid),
                    ));
                }
                if let Some(layout) = &mut dev.mig {
                    if !geometries.contains_key(&dev.model) {
                        let Some(g) = MigGeometry::builtin(&dev.model) else {
                            return Err(ModelError::invalid(
                                format!("{field}.mig"),
                                format!(
                                    "model {:?} has no built-in MIG geometry; give one in mig_geometries",
                                    dev.model
                                ),
                            ));
                        };
                        geometries.insert(dev.model.clone(), g);
                    }
                    let geo = &geometries[&dev.model];
                    let mut used = 0u8;
                    for (si, slice) in layout.slices.iter_mut().enumerate() {
                        let field = format!("{field}.mig.slices[{si}]");
                        let Some((_, p)) = geo.profile(&slice.profile) else {
                            let known: Vec<&str> =
                                geo.profiles.iter().map(|p| p.name.as_str()).collect();
                            return Err(ModelError::invalid(
                                format!("{field}.profile"),
                                format!(
                                    "{:?} is not a MIG profile of {} (known: {})",
                                    slice.profile,
                                    dev.model,
                                    known.join(", ")
                                ),
                            ));
                        };
                        if !p.starts.contains(&slice.start) {
                            return Err(ModelError::invalid(
                                format!("{field}.start"),
                                format!(
                                    "{} cannot start at memory slice {} (legal: {:?})",
                                    p.name, slice.start, p.starts
                                ),
                            ));
                        }
                        let m = p.mask_at(slice.start);
                        if m & used != 0 {
                            return Err(ModelError::invalid(
                                field,
                                format!("{} at {} overlaps another slice", p.name, slice.start),
                            ));
                        }
                        used |= m;
                        if slice.uuid.is_empty() {
                            slice.uuid = format!("MIG-{}-{}-{}", dev.uuid, p.name, slice.start);
                        }
                    }
                }
            }
        }
        Ok(Cluster { nodes, geometries })
    }
}

/// What one GPU model can offer, summarised over the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelCaps {
    /// Most whole (non-MIG) devices of this model on one node.
    pub max_per_node: u32,
    /// Most whole devices of this model in one NVLink domain on one node.
    pub max_per_domain: u32,
    /// Whole devices of this model in the cluster.
    pub devices: u32,
    /// MIG profiles offered by this model's MIG devices.
    pub mig_profiles: BTreeSet<String>,
}

impl Node {
    /// The flavors this node offers: each device's model and, for a MIG-enabled device, the
    /// `model/profile` of every profile its model's geometry has (or its layout names).
    pub fn flavors(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for d in &self.devices {
            out.insert(d.model.clone());
            if let Some(layout) = &d.mig {
                if let Some(g) = crate::MigGeometry::builtin(&d.model) {
                    out.extend(
                        g.profiles
                            .iter()
                            .map(|p| crate::mig_flavor(&d.model, &p.name)),
                    );
                }
                out.extend(
                    layout
                        .slices
                        .iter()
                        .map(|s| crate::mig_flavor(&d.model, &s.profile)),
                );
            }
        }
        out
    }
}

/// A summary of a cluster used to validate jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Per model.
    pub models: BTreeMap<String, ModelCaps>,
    /// Largest node CPU.
    pub max_cpu_milli: u32,
    /// Largest node memory.
    pub max_memory_mib: u64,
    /// Label keys present on some node.
    pub label_keys: BTreeSet<String>,
}

impl Cluster {
    /// Summarise what the cluster can offer.
    pub fn catalog(&self) -> Catalog {
        let mut c = Catalog::default();
        for node in &self.nodes {
            c.max_cpu_milli = c.max_cpu_milli.max(node.cpu_milli);
            c.max_memory_mib = c.max_memory_mib.max(node.memory_mib);
            c.label_keys.extend(node.labels.keys().cloned());
            let mut per_model: BTreeMap<&str, u32> = BTreeMap::new();
            let mut per_domain: BTreeMap<(&str, Option<&str>), u32> = BTreeMap::new();
            for d in &node.devices {
                let caps = c.models.entry(d.model.clone()).or_default();
                match &d.mig {
                    Some(layout) => {
                        if let Some(g) = self.geometries.get(&d.model) {
                            if layout.slices.is_empty() {
                                caps.mig_profiles
                                    .extend(g.profiles.iter().map(|p| p.name.clone()));
                            } else {
                                caps.mig_profiles
                                    .extend(layout.slices.iter().map(|s| s.profile.clone()));
                            }
                        }
                    }
                    None => {
                        caps.devices += 1;
                        *per_model.entry(&d.model).or_default() += 1;
                        *per_domain
                            .entry((&d.model, d.nvlink_domain.as_deref()))
                            .or_default() += 1;
                    }
                }
            }
            for (m, n) in per_model {
                let caps = c.models.entry(m.to_string()).or_default();
                caps.max_per_node = caps.max_per_node.max(n);
            }
            for ((m, dom), n) in per_domain {
                if dom.is_some() {
                    let caps = c.models.entry(m.to_string()).or_default();
                    caps.max_per_domain = caps.max_per_domain.max(n);
                }
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::from_yaml;

    const DGX: &str = r#"
pools:
  - name: dgx
    count: 4
    gpu_model: H100-80GB
    gpus_per_node: 8
    nodes_per_rack: 2
    cpu: 224
    memory: 2Ti
nodes:
  - name: mig-node
    cpu: 64
    memory: 512Gi
    devices:
      - model: a100-80gb
        mig: {slices: [{profile: 3g.40gb, start: 4}, {profile: 2g.20gb, start: 0}]}
      - model: a100-80gb
        mig: {}
"#;

    #[test]
    fn pools_expand_with_racks_and_domains() {
        let spec: ClusterSpec = from_yaml(DGX, "c.yaml").expect("parse");
        let c = spec.build().expect("valid");
        assert_eq!(c.nodes.len(), 5);
        let n = &c.nodes[1];
        assert_eq!(n.name, "dgx-0");
        assert_eq!(n.labels["rack"], "dgx-r0");
        assert_eq!(c.nodes[3].labels["rack"], "dgx-r1");
        assert_eq!(n.devices.len(), 8);
        assert_eq!(n.devices[0].model, "h100-80gb");
        assert_eq!(n.devices[7].nvlink_domain.as_deref(), Some("dgx-0/nvl0"));
        assert_eq!(n.cpu_milli, 224_000);
        assert_eq!(n.memory_mib, 2 * 1024 * 1024);
        let cat = c.catalog();
        assert_eq!(cat.models["h100-80gb"].max_per_node, 8);
        assert_eq!(cat.models["h100-80gb"].max_per_domain, 8);
        assert!(cat.models["a100-80gb"].mig_profiles.contains("1g.10gb"));
        assert!(c.geometries.contains_key("a100-80gb"));
    }

    #[test]
    fn overlapping_slices_are_refused_with_their_path() {
        let y = r#"
nodes:
  - name: n
    cpu: 1
    memory: 1Gi
    devices:
      - model: a100-80gb
        mig: {slices: [{profile: 4g.40gb, start: 0}, {profile: 2g.20gb, start: 2}]}
"#;
        let spec: ClusterSpec = from_yaml(y, "c.yaml").expect("parse");
        let err = spec.build().expect_err("overlap");
        assert_eq!(err.field(), Some("nodes[0].devices[0].mig.slices[1]"));
    }

    #[test]
    fn illegal_start_and_unknown_profile() {
        let y = r#"
nodes:
  - name: n
    cpu: 1
    memory: 1Gi
    devices:
      - model: h100-80gb
        mig: {slices: [{profile: 3g.40gb, start: 2}]}
"#;
        let err = from_yaml::<ClusterSpec>(y, "c")
            .expect("parse")
            .build()
            .expect_err("start");
        assert!(
            err.to_string().contains("cannot start at memory slice 2"),
            "{err}"
        );
        let y2 = y.replace("3g.40gb, start: 2", "5g.50gb, start: 0");
        let err = from_yaml::<ClusterSpec>(&y2, "c")
            .expect("parse")
            .build()
            .expect_err("profile");
        assert_eq!(
            err.field(),
            Some("nodes[0].devices[0].mig.slices[0].profile")
        );
    }

    #[test]
    fn bad_quantity_names_field_and_line() {
        let y = "nodes:\n  - name: n\n    cpu: 1\n    memory: 3Gx\n";
        let err = from_yaml::<ClusterSpec>(y, "c.yaml").expect_err("unit");
        let msg = err.to_string();
        assert!(msg.starts_with("c.yaml: nodes[0].memory:"), "{msg}");
        assert!(msg.contains("unknown memory unit \"Gx\""), "{msg}");
        assert!(msg.contains(" at line "), "{msg}");
    }

    #[test]
    fn duplicate_node_names_are_refused() {
        let y = "nodes:\n  - {name: a, cpu: 1, memory: 1}\n  - {name: a, cpu: 1, memory: 1}\n";
        let err = from_yaml::<ClusterSpec>(y, "c")
            .expect("parse")
            .build()
            .expect_err("dup");
        assert_eq!(err.field(), Some("nodes[1].name"));
    }
}
