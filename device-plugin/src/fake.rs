//! A fake inventory read from a YAML file, for development and tests: DGX-style topologies,
//! optional MIG layouts, and health events scripted in time or injected by tests.
//!
//! ```yaml
//! node: dgx-h100-0
//! cpu: 224
//! memory: 2Ti
//! gpus:                                   # expanded in order; indexes count from 0
//!   - {name: NVIDIA H100 80GB HBM3, memory_mib: 81559, count: 4, numa: 0}
//!   - {name: NVIDIA H100 80GB HBM3, memory_mib: 81559, count: 4, numa: 1}
//! nvlink:
//!   switch_links: 18                      # NVSwitch: every pair is linked (links per GPU)
//!   pairs: [[0, 1, 4]]                    # or direct links: [a, b, link count]
//! pcie_switches: [[0, 1], [2, 3], [4, 5], [6, 7]]
//! mig:                                    # by GPU index
//!   7: {slices: [{profile: 3g.40gb, start: 4}, {profile: 1g.10gb, start: 0}]}
//! health_events:
//!   - {after: 2s, gpu: 3, xid: 79, probe_fails_for: 5s}
//!   - {after: 4s, gpu: 5, ecc_double_bit: true}
//! ```
//! The same trait as NVML sits in front of it, so everything above runs the production code.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gantry_model::quantity::Quantity;
use gantry_model::{Health, MigGeometry};
use serde::Deserialize;

use crate::inventory::{
    model_name, EventKind, Gpu, GpuMig, HealthEvent, Inventory, MigSlice, NodeInventory, PcieLevel,
    Peer,
};
use crate::PluginError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeFile {
    node: String,
    #[serde(default)]
    cpu: Option<Quantity>,
    #[serde(default)]
    memory: Option<Quantity>,
    #[serde(default)]
    driver: Option<String>,
    gpus: Vec<FakeGpu>,
    #[serde(default)]
    nvlink: FakeNvlink,
    #[serde(default)]
    pcie_switches: Vec<Vec<u32>>,
    #[serde(default)]
    mig: BTreeMap<u32, FakeMig>,
    #[serde(default)]
    health_events: Vec<FakeEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeGpu {
    name: String,
    memory_mib: u64,
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    numa: Option<i64>,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    pci_bus_id: Option<String>,
    #[serde(default)]
    mig_capable: Option<bool>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeNvlink {
    #[serde(default)]
    switch_links: u32,
    #[serde(default)]
    pairs: Vec<[u32; 3]>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeMig {
    #[serde(default = "yes")]
    enabled: bool,
    #[serde(default)]
    pending: Option<bool>,
    #[serde(default)]
    slices: Vec<FakeSlice>,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeSlice {
    profile: String,
    start: u8,
    #[serde(default)]
    uuid: Option<String>,
    #[serde(default)]
    gpu_instance: Option<u32>,
    #[serde(default)]
    cap_minors: Vec<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeEvent {
    after: Quantity,
    gpu: u32,
    #[serde(default)]
    gpu_instance: Option<u32>,
    #[serde(default)]
    xid: Option<u64>,
    #[serde(default)]
    ecc_double_bit: bool,
    #[serde(default)]
    probe_fails_for: Option<Quantity>,
}

/// A scripted event: when (after start) it fires, what it is, and how long probes then fail.
#[derive(Debug, Clone)]
struct Scripted {
    after: Duration,
    event: HealthEvent,
    probe_fails_for: Duration,
}

/// The fake inventory. Tests keep an `Arc<FakeInventory>` to [`inject`](FakeInventory::inject)
/// events and steer [`probe`](Inventory::probe) results.
#[derive(Debug)]
pub struct FakeInventory {
    origin: String,
    /// What `discover` returns; tests may replace it to simulate reconfiguration.
    inventory: Mutex<NodeInventory>,
    start: Instant,
    /// Scripted events not yet delivered, in time order (taken by the health thread).
    script: Mutex<std::collections::VecDeque<Scripted>>,
    /// Injected events: the sender is kept so the channel never disconnects.
    inject_tx: Mutex<mpsc::Sender<HealthEvent>>,
    inject_rx: Mutex<mpsc::Receiver<HealthEvent>>,
    /// GPU uuid → probes fail until then.
    probe_blocked_until: Mutex<HashMap<String, Instant>>,
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn bad(origin: &str, field: impl std::fmt::Display, reason: impl std::fmt::Display) -> PluginError {
    PluginError::FakeFile {
        origin: origin.to_string(),
        message: format!("{field}: {reason}"),
    }
}

impl FakeInventory {
    /// Load a fake inventory file.
    ///
    /// # Errors
    /// The file cannot be read, or [`FakeInventory::from_yaml`]'s errors.
    pub fn load(path: &Path) -> Result<Self, PluginError> {
        Self::load_as(path, None)
    }

    /// Load a fake inventory file as node `node` (when given) instead of the file's `node`, so
    /// one file can serve every node of a DaemonSet: uuids derive from the node name, so each
    /// node gets its own.
    ///
    /// # Errors
    /// As [`FakeInventory::load`].
    pub fn load_as(path: &Path, node: Option<&str>) -> Result<Self, PluginError> {
        let origin = path.display().to_string();
        let mut text = std::fs::read_to_string(path).map_err(|e| PluginError::FakeFile {
            origin: origin.clone(),
            message: format!("cannot read: {e}"),
        })?;
        if let Some(n) = node.filter(|n| !n.trim().is_empty()) {
            let mut doc: serde_yaml::Value =
                serde_yaml::from_str(&text).map_err(|e| PluginError::FakeFile {
                    origin: origin.clone(),
                    message: e.to_string(),
                })?;
            if let Some(m) = doc.as_mapping_mut() {
                m.insert("node".into(), n.trim().into());
            }
            text = serde_yaml::to_string(&doc).map_err(|e| PluginError::FakeFile {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
        }
        Self::from_yaml(&text, &origin)
    }

    /// Parse and validate a fake inventory.
    ///
    /// # Errors
    /// [`PluginError::FakeFile`] naming the field: a YAML error with its line, a GPU index out of
    /// range, an unknown MIG profile, an illegal start, overlapping slices, a bad duration.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, PluginError> {
        let file: FakeFile = gantry_model::doc::from_yaml(text, origin).map_err(|e| match e {
            gantry_model::ModelError::Parse { origin, message } => {
                PluginError::FakeFile { origin, message }
            }
            other => bad(origin, "", other),
        })?;
        let node = file.node.trim().to_string();
        if node.is_empty() {
            return Err(bad(origin, "node", "must not be empty"));
        }
        let cpu_milli = match &file.cpu {
            Some(q) => q.cpu_milli().map_err(|r| bad(origin, "cpu", r))?,
            None => 0,
        };
        let memory_mib = match &file.memory {
            Some(q) => q.memory_mib().map_err(|r| bad(origin, "memory", r))?,
            None => 0,
        };
        let node_hash = fnv(&node);
        let mut gpus: Vec<Gpu> = Vec::new();
        let mut capable: Vec<bool> = Vec::new();
        for (ei, entry) in file.gpus.iter().enumerate() {
            let field = format!("gpus[{ei}]");
            if entry.name.trim().is_empty() {
                return Err(bad(origin, format!("{field}.name"), "must not be empty"));
            }
            if entry.count == 0 {
                return Err(bad(origin, format!("{field}.count"), "must be at least 1"));
            }
            if entry.count > 1 && (entry.uuid.is_some() || entry.pci_bus_id.is_some()) {
                return Err(bad(
                    origin,
                    format!("{field}.uuid"),
                    "uuid and pci_bus_id can only be given when count is 1",
                ));
            }
            let model = model_name(&entry.name, entry.memory_mib);
            let mig_capable = entry
                .mig_capable
                .unwrap_or_else(|| MigGeometry::builtin(&model).is_some());
            for _ in 0..entry.count {
                let i = gpus.len() as u32;
                gpus.push(Gpu {
                    index: i,
                    uuid: entry.uuid.clone().unwrap_or_else(|| {
                        format!("GPU-{:08x}-0000-4000-8000-{:012x}", node_hash as u32, i)
                    }),
                    name: entry.name.trim().to_string(),
                    model: model.clone(),
                    memory_mib: entry.memory_mib,
                    pci_bus_id: entry
                        .pci_bus_id
                        .clone()
                        .unwrap_or_else(|| format!("00000000:{:02X}:00.0", 0x18 + 0x10 * i)),
                    minor: i,
                    numa: entry.numa.and_then(|n| u32::try_from(n).ok()),
                    peers: Vec::new(),
                    mig: None,
                    health: Health::Healthy,
                });
                capable.push(mig_capable);
            }
        }
        let n = gpus.len() as u32;
        let check_index = |field: String, i: u32| {
            if i >= n {
                Err(bad(
                    origin,
                    field,
                    format!("GPU index {i} out of range (the file has {n} GPUs)"),
                ))
            } else {
                Ok(())
            }
        };
        let mut links = vec![vec![0u32; n as usize]; n as usize];
        for (a, row) in links.iter_mut().enumerate() {
            for (b, l) in row.iter_mut().enumerate() {
                if a != b {
                    *l = file.nvlink.switch_links;
                }
            }
        }
        for (pi, &[a, b, count]) in file.nvlink.pairs.iter().enumerate() {
            let field = format!("nvlink.pairs[{pi}]");
            check_index(field.clone(), a)?;
            check_index(field.clone(), b)?;
            if a == b {
                return Err(bad(origin, field, "a GPU cannot link to itself"));
            }
            links[a as usize][b as usize] += count;
            links[b as usize][a as usize] += count;
        }
        let mut switch_of = vec![None; n as usize];
        for (si, group) in file.pcie_switches.iter().enumerate() {
            for &g in group {
                check_index(format!("pcie_switches[{si}]"), g)?;
                switch_of[g as usize] = Some(si);
            }
        }
        let snapshot: Vec<(String, Option<u32>)> =
            gpus.iter().map(|g| (g.uuid.clone(), g.numa)).collect();
        for (a, gpu) in gpus.iter_mut().enumerate() {
            gpu.peers = (0..n as usize)
                .filter(|&b| b != a)
                .map(|b| Peer {
                    uuid: snapshot[b].0.clone(),
                    nvlinks: links[a][b],
                    pcie: if switch_of[a].is_some() && switch_of[a] == switch_of[b] {
                        PcieLevel::Single
                    } else if snapshot[a].1.is_some() && snapshot[a].1 == snapshot[b].1 {
                        PcieLevel::Node
                    } else {
                        PcieLevel::System
                    },
                })
                .collect();
            if capable[a] {
                gpu.mig = Some(GpuMig {
                    current: false,
                    pending: false,
                    slices: Vec::new(),
                    geometry: MigGeometry::builtin(&gpu.model),
                });
            }
        }
        for (&gi, m) in &file.mig {
            let field = format!("mig.{gi}");
            check_index(field.clone(), gi)?;
            let gpu = &mut gpus[gi as usize];
            let Some(state) = gpu.mig.as_mut() else {
                return Err(bad(
                    origin,
                    field,
                    format!("GPU {gi} ({}) is not MIG-capable", gpu.name),
                ));
            };
            let Some(geo) = state.geometry.clone() else {
                return Err(bad(
                    origin,
                    field,
                    format!("model {} has no known MIG geometry", gpu.model),
                ));
            };
            state.current = m.enabled;
            state.pending = m.pending.unwrap_or(m.enabled);
            if !m.enabled && !m.slices.is_empty() {
                return Err(bad(
                    origin,
                    format!("{field}.slices"),
                    "slices need MIG mode enabled",
                ));
            }
            let mut used = 0u8;
            for (si, s) in m.slices.iter().enumerate() {
                let sf = format!("{field}.slices[{si}]");
                let Some((_, p)) = geo.profile(&s.profile) else {
                    let names: Vec<_> = geo.profiles.iter().map(|p| p.name.as_str()).collect();
                    return Err(bad(
                        origin,
                        format!("{sf}.profile"),
                        format!(
                            "{:?} is not a MIG profile of {} (known: {})",
                            s.profile,
                            gpu.model,
                            names.join(", ")
                        ),
                    ));
                };
                if !p.starts.contains(&s.start) {
                    return Err(bad(
                        origin,
                        format!("{sf}.start"),
                        format!(
                            "{} cannot start at memory slice {} (legal: {:?})",
                            p.name, s.start, p.starts
                        ),
                    ));
                }
                let mask = p.mask_at(s.start);
                if mask & used != 0 {
                    return Err(bad(origin, sf, "overlaps an earlier slice on the same GPU"));
                }
                used |= mask;
                let gi_id = s.gpu_instance.unwrap_or(si as u32 + 1);
                let per_slice = gpu.memory_mib / 8;
                state.slices.push(MigSlice {
                    uuid: s.uuid.clone().unwrap_or_else(|| {
                        format!(
                            "MIG-{:08x}-{:04x}-4000-8000-{:012x}",
                            node_hash as u32, gi, gi_id
                        )
                    }),
                    profile: p.name.clone(),
                    start: s.start,
                    size: p.memory_slices,
                    gpu_instance: gi_id,
                    compute_instance: 0,
                    memory_mib: per_slice * p.memory_slices as u64,
                    parent: gpu.uuid.clone(),
                    cap_minors: s.cap_minors.clone(),
                    health: Health::Healthy,
                });
            }
        }
        let mut script = Vec::new();
        for (ei, e) in file.health_events.iter().enumerate() {
            let field = format!("health_events[{ei}]");
            check_index(format!("{field}.gpu"), e.gpu)?;
            let after = e
                .after
                .duration_ms()
                .map_err(|r| bad(origin, format!("{field}.after"), r))?;
            let probe_fails_for = match &e.probe_fails_for {
                Some(q) => q
                    .duration_ms()
                    .map_err(|r| bad(origin, format!("{field}.probe_fails_for"), r))?,
                None => 0,
            };
            let kind = match (e.xid, e.ecc_double_bit) {
                (Some(x), false) => EventKind::Xid(x),
                (None, true) => EventKind::EccDoubleBit,
                _ => {
                    return Err(bad(
                        origin,
                        field,
                        "give exactly one of xid: N or ecc_double_bit: true",
                    ))
                }
            };
            script.push(Scripted {
                after: Duration::from_millis(after),
                event: HealthEvent {
                    gpu: gpus[e.gpu as usize].uuid.clone(),
                    gpu_instance: e.gpu_instance,
                    kind,
                },
                probe_fails_for: Duration::from_millis(probe_fails_for),
            });
        }
        script.sort_by_key(|s| s.after);
        let (tx, rx) = mpsc::channel();
        Ok(FakeInventory {
            origin: origin.to_string(),
            inventory: Mutex::new(NodeInventory {
                node,
                cpu_milli,
                memory_mib,
                driver: file.driver,
                gpus,
            }),
            start: Instant::now(),
            script: Mutex::new(script.into()),
            inject_tx: Mutex::new(tx),
            inject_rx: Mutex::new(rx),
            probe_blocked_until: Mutex::new(HashMap::new()),
        })
    }

    /// Deliver `event` now; probes of its GPU fail for `probe_fails_for`.
    pub fn inject(&self, event: HealthEvent, probe_fails_for: Duration) {
        self.block_probe(&event.gpu, probe_fails_for);
        if let Ok(tx) = self.inject_tx.lock() {
            // The receiver lives in `self`, so sending cannot fail while `self` exists.
            let _ = tx.send(event);
        }
    }

    /// Replace what [`Inventory::discover`] returns from now on (a MIG reconfiguration, a GPU
    /// gone); the plugin notices at its next rediscovery.
    pub fn replace_inventory(&self, inv: NodeInventory) {
        if let Ok(mut g) = self.inventory.lock() {
            *g = inv;
        }
    }

    /// Make probes of `gpu` fail for `d` from now (zero: succeed again).
    pub fn block_probe(&self, gpu: &str, d: Duration) {
        if let Ok(mut m) = self.probe_blocked_until.lock() {
            m.insert(gpu.to_string(), Instant::now() + d);
        }
    }
}

impl Inventory for FakeInventory {
    fn describe(&self) -> String {
        format!("fake {}", self.origin)
    }

    fn discover(&self) -> Result<NodeInventory, PluginError> {
        Ok(self.inventory.lock().map_err(|_| poisoned())?.clone())
    }

    fn next_event(&self, timeout: Duration) -> Result<Option<HealthEvent>, PluginError> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            let next_scripted = {
                let mut script = self.script.lock().map_err(|_| poisoned())?;
                match script.front() {
                    Some(s) if self.start + s.after <= now => {
                        let s = script.pop_front().expect("front exists");
                        drop(script);
                        self.block_probe(&s.event.gpu, s.probe_fails_for);
                        return Ok(Some(s.event));
                    }
                    Some(s) => Some(self.start + s.after),
                    None => None,
                }
            };
            if now >= deadline {
                return Ok(None);
            }
            let until = next_scripted.map_or(deadline, |t| t.min(deadline));
            let rx = self.inject_rx.lock().map_err(|_| poisoned())?;
            match rx.recv_timeout(until.saturating_duration_since(now)) {
                Ok(ev) => return Ok(Some(ev)),
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(None),
            }
        }
    }

    fn probe(&self, uuid: &str) -> Result<bool, PluginError> {
        if self
            .inventory
            .lock()
            .map_err(|_| poisoned())?
            .gpu(uuid)
            .is_none()
        {
            return Ok(false);
        }
        let m = self.probe_blocked_until.lock().map_err(|_| poisoned())?;
        Ok(m.get(uuid).is_none_or(|&t| Instant::now() >= t))
    }
}

fn poisoned() -> PluginError {
    PluginError::FakeFile {
        origin: "<fake>".into(),
        message: "internal lock poisoned by a panicking thread".into(),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn one_file_serves_many_nodes_with_their_own_names_and_uuids() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("f.yaml");
        std::fs::write(
            &path,
            "node: template\ngpus:\n  - {name: NVIDIA H100 80GB HBM3, memory_mib: 81559, count: 2}\n",
        )
        .expect("write");
        let a = FakeInventory::load_as(&path, Some("gpu-a"))
            .expect("a")
            .discover()
            .expect("a");
        let b = FakeInventory::load_as(&path, Some("gpu-b"))
            .expect("b")
            .discover()
            .expect("b");
        let plain = FakeInventory::load(&path)
            .expect("p")
            .discover()
            .expect("p");
        assert_eq!(
            (a.node.as_str(), b.node.as_str(), plain.node.as_str()),
            ("gpu-a", "gpu-b", "template")
        );
        assert_ne!(a.gpus[0].uuid, b.gpus[0].uuid);
    }
    use super::*;

    const SMALL: &str = r#"
node: n1
cpu: 32
memory: 256Gi
gpus:
  - {name: NVIDIA A100-SXM4-80GB, memory_mib: 81920, count: 2, numa: 0}
  - {name: NVIDIA A100-SXM4-80GB, memory_mib: 81920, count: 2, numa: -1}
nvlink: {pairs: [[0, 1, 12], [2, 3, 12]]}
pcie_switches: [[0, 1]]
mig:
  3: {slices: [{profile: 3g.40gb, start: 4}, {profile: 1g.10gb, start: 0}]}
health_events:
  - {after: 10ms, gpu: 1, xid: 79, probe_fails_for: 1h}
"#;

    #[test]
    fn parses_topology_and_mig() {
        let f = FakeInventory::from_yaml(SMALL, "t.yaml").expect("valid");
        let inv = f.discover().expect("discover");
        assert_eq!(inv.gpus.len(), 4);
        assert_eq!(inv.cpu_milli, 32_000);
        assert_eq!(inv.gpus[0].model, "a100-80gb");
        assert_eq!(inv.gpus[2].numa, None, "negative NUMA means none");
        let p01 = &inv.gpus[0].peers[0];
        assert_eq!((p01.nvlinks, p01.pcie), (12, PcieLevel::Single));
        let p02 = &inv.gpus[0].peers[1];
        assert_eq!((p02.nvlinks, p02.pcie), (0, PcieLevel::System));
        let mig = inv.gpus[3].mig.as_ref().expect("capable");
        assert!(mig.current && mig.pending);
        assert_eq!(mig.slices.len(), 2);
        assert_eq!(mig.slices[0].profile, "3g.40gb");
        assert_eq!(mig.slices[0].size, 4);
        assert_eq!(mig.slices[0].parent, inv.gpus[3].uuid);
        assert!(!inv.gpus[0].mig_enabled());
    }

    #[test]
    fn scripted_event_fires_and_blocks_probe() {
        let f = FakeInventory::from_yaml(SMALL, "t.yaml").expect("valid");
        let uuid = f.discover().expect("d").gpus[1].uuid.clone();
        assert!(f.probe(&uuid).expect("probe"));
        let ev = f
            .next_event(Duration::from_secs(2))
            .expect("ok")
            .expect("event");
        assert_eq!(ev.gpu, uuid);
        assert_eq!(ev.kind, EventKind::Xid(79));
        assert!(!f.probe(&uuid).expect("probe"));
        assert!(f
            .next_event(Duration::from_millis(5))
            .expect("ok")
            .is_none());
    }

    #[test]
    fn injected_events_arrive() {
        let f = FakeInventory::from_yaml(SMALL, "t.yaml").expect("valid");
        let ev = HealthEvent {
            gpu: "GPU-x".into(),
            gpu_instance: None,
            kind: EventKind::EccDoubleBit,
        };
        f.inject(ev.clone(), Duration::ZERO);
        // The injected one comes before the scripted one (10 ms later).
        assert_eq!(f.next_event(Duration::from_secs(1)).expect("ok"), Some(ev));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                SMALL.replace("start: 4}", "start: 2}"),
                "mig.3.slices[0].start",
            ),
            (
                SMALL.replace("3g.40gb", "5g.50gb"),
                "mig.3.slices[0].profile",
            ),
            (SMALL.replace("[2, 3, 12]", "[2, 9, 12]"), "nvlink.pairs[1]"),
            (
                SMALL.replace("xid: 79", "xid: 79, ecc_double_bit: true"),
                "health_events[0]",
            ),
            (
                SMALL.replace("after: 10ms", "after: 10parsecs"),
                "health_events[0].after",
            ),
            (
                SMALL.replace("1g.10gb, start: 0", "1g.10gb, start: 5"),
                "mig.3.slices[1]",
            ),
            (SMALL.replace("cpu: 32", "cpu: lots"), "cpu"),
        ];
        for (text, field) in cases {
            let err = FakeInventory::from_yaml(&text, "t.yaml").expect_err(field);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("fake inventory t.yaml: {field}")),
                "{field}: {msg}"
            );
        }
        let err = FakeInventory::from_yaml("node: x\ngpus: 3\n", "t.yaml").expect_err("type");
        assert!(err.to_string().contains("gpus"), "{err}");
    }
}
