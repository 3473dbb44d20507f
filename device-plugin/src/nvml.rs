//! The production inventory: NVIDIA's management library (NVML), loaded at run time through
//! `nvml-wrapper`, so the plugin builds and runs its tests on machines without a driver.
//!
//! Where nvml-wrapper 0.13 has gaps the loaded library is called directly through
//! `nvml-wrapper-sys` (each `unsafe` block says why it is sound):
//! - the GPU-instance and compute-instance ids of a MIG device
//!   (`nvmlDeviceGetGpuInstanceId`, `nvmlDeviceGetComputeInstanceId`) and the instance's
//!   placement and profile (`nvmlDeviceGetGpuInstanceById` + `nvmlGpuInstanceGetInfo`);
//! - possible placements: `Device::possible_placements` in 0.13 allocates the capacity but never
//!   sets the vector's length, so it always returns an empty list;
//! - event waiting: `EventSet::wait` drops the event's GPU/compute instance ids, which say which
//!   MIG slice an XID belongs to.
//!
//! Only reading calls are made: MIG mode is never changed and devices are never reset.
// NVML's gaps in nvml-wrapper need raw FFI calls; every block carries a SAFETY comment.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::raw::c_uint;
use std::sync::Mutex;
use std::time::Duration;

use gantry_model::mig::profile_name;
use gantry_model::{Health, MigGeometry, ReportedProfile};
use nvml_wrapper::bitmasks::event::EventTypes;
use nvml_wrapper::enum_wrappers::device::{P2pCapabilitiesIndex, P2pStatus, TopologyLevel};
use nvml_wrapper::error::{nvml_try, NvmlError};
use nvml_wrapper::{Device, EventSet, Nvml};
use nvml_wrapper_sys::bindings as sys;

use crate::inventory::{
    model_name, EventKind, Gpu, GpuMig, HealthEvent, Inventory, MigSlice, NodeInventory, PcieLevel,
    Peer,
};
use crate::PluginError;

const MIB: u64 = 1024 * 1024;

fn nvml_err(call: impl Into<String>) -> impl FnOnce(NvmlError) -> PluginError {
    let call = call.into();
    move |e| PluginError::Nvml {
        call,
        message: e.to_string(),
    }
}

/// Map a failure of `nvmlInit` to the error users should see.
pub fn init_error(e: NvmlError) -> PluginError {
    match e {
        NvmlError::LibloadingError(l) => PluginError::NvmlMissing(l.to_string()),
        NvmlError::FailedToLoadSymbol(s) => {
            PluginError::NvmlMissing(format!("the library lacks a symbol: {s}"))
        }
        NvmlError::DriverNotLoaded => {
            PluginError::NvmlMissing("the NVIDIA kernel driver is not loaded".to_string())
        }
        other => PluginError::Nvml {
            call: "init".to_string(),
            message: other.to_string(),
        },
    }
}

/// The NVML inventory.
#[derive(Debug)]
pub struct NvmlInventory {
    /// Leaked on purpose: one per process, and the event set and devices borrow it for
    /// `'static`.
    nvml: &'static Nvml,
    /// `None` when no device supports the health events (waits then just sleep).
    events: Mutex<Option<EventSet<'static>>>,
    node: String,
    driver: Option<String>,
}

impl NvmlInventory {
    /// Load NVML (from `lib_path`, or the default `libnvidia-ml.so.1`) and subscribe to XID and
    /// double-bit ECC events on every GPU.
    ///
    /// # Errors
    /// [`PluginError::NvmlMissing`] when the library or driver is absent; [`PluginError::Nvml`]
    /// when NVML fails to start.
    pub fn open(lib_path: Option<&OsStr>, node: String) -> Result<Self, PluginError> {
        let nvml = match lib_path {
            Some(p) => Nvml::builder().lib_path(p).init(),
            None => Nvml::init(),
        }
        .map_err(init_error)?;
        let nvml: &'static Nvml = Box::leak(Box::new(nvml));
        let driver = nvml.sys_driver_version().ok();
        let count = nvml.device_count().map_err(nvml_err("device count"))?;
        let mut set = Some(
            nvml.create_event_set()
                .map_err(nvml_err("create event set"))?,
        );
        let wanted = EventTypes::CRITICAL_XID_ERROR | EventTypes::DOUBLE_BIT_ECC_ERROR;
        for i in 0..count {
            let dev = nvml
                .device_by_index(i)
                .map_err(nvml_err(format!("device {i}")))?;
            let supported = dev.supported_event_types().unwrap_or(EventTypes::empty());
            let types = wanted & supported;
            if types.is_empty() {
                tracing::warn!(gpu = i, "device supports neither XID nor ECC events");
                continue;
            }
            let Some(s) = set.take() else { break };
            match dev.register_events(types, s) {
                Ok(s) => set = Some(s),
                Err(e) => {
                    tracing::warn!(gpu = i, error = %e.error, "cannot register health events");
                    // The set is consumed on failure; start a new one for the other devices.
                    set = nvml.create_event_set().ok();
                }
            }
        }
        Ok(NvmlInventory {
            nvml,
            events: Mutex::new(set),
            node,
            driver,
        })
    }

    fn profiles(&self, dev: &Device<'static>) -> Vec<(ReportedProfile, u64)> {
        let mut out = Vec::new();
        for index in 0..sys::NVML_GPU_INSTANCE_PROFILE_COUNT {
            let Ok(info) = dev.profile_info(index) else {
                continue;
            };
            let suffix = match index {
                sys::NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1
                | sys::NVML_GPU_INSTANCE_PROFILE_2_SLICE_REV1 => "+me",
                sys::NVML_GPU_INSTANCE_PROFILE_1_SLICE_GFX
                | sys::NVML_GPU_INSTANCE_PROFILE_2_SLICE_GFX
                | sys::NVML_GPU_INSTANCE_PROFILE_4_SLICE_GFX => "+gfx",
                sys::NVML_GPU_INSTANCE_PROFILE_1_SLICE_NO_ME
                | sys::NVML_GPU_INSTANCE_PROFILE_2_SLICE_NO_ME => "-me",
                sys::NVML_GPU_INSTANCE_PROFILE_1_SLICE_ALL_ME
                | sys::NVML_GPU_INSTANCE_PROFILE_2_SLICE_ALL_ME => "+me.all",
                _ => "",
            };
            let placements = match possible_placements(self.nvml, dev, info.id) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(profile = info.id, error = %e, "no placements");
                    Vec::new()
                }
            };
            let compute = u8::try_from(info.slice_count).unwrap_or(u8::MAX);
            out.push((
                ReportedProfile {
                    profile_id: info.id,
                    name: format!("{}{suffix}", profile_name(compute, info.memory_size_mb)),
                    compute_slices: compute,
                    max_count: u8::try_from(info.instance_count).unwrap_or(u8::MAX),
                    placements,
                },
                info.memory_size_mb,
            ));
        }
        out
    }

    fn mig_state(
        &self,
        dev: &Device<'static>,
        model: &str,
        parent: &str,
        minor: u32,
        caps: &HashMap<String, u32>,
    ) -> Option<GpuMig> {
        let mode = match dev.mig_mode() {
            Ok(m) => m,
            Err(NvmlError::NotSupported) => return None,
            Err(e) => {
                tracing::warn!(gpu = parent, error = %e, "cannot read MIG mode");
                return None;
            }
        };
        let current = mode.current == sys::NVML_DEVICE_MIG_ENABLE;
        let pending = mode.pending == sys::NVML_DEVICE_MIG_ENABLE;
        let profiles = self.profiles(dev);
        let reported: Vec<ReportedProfile> = profiles
            .iter()
            .map(|(p, _)| p.clone())
            .filter(|p| !p.placements.is_empty())
            .collect();
        let geometry = match MigGeometry::from_reported(model, &reported) {
            Ok(g) if !g.profiles.is_empty() => Some(g),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(gpu = parent, error = %e, "MIG geometry reported by NVML is inconsistent");
                None
            }
        };
        let by_id: HashMap<u32, &ReportedProfile> =
            profiles.iter().map(|(p, _)| (p.profile_id, p)).collect();
        let mut slices = Vec::new();
        if current {
            let max = dev.mig_device_count().unwrap_or(0);
            for j in 0..max {
                let md = match dev.mig_device_by_index(j) {
                    Ok(md) => md,
                    Err(NvmlError::NotFound) | Err(NvmlError::InvalidArg) => continue,
                    Err(e) => {
                        tracing::warn!(gpu = parent, index = j, error = %e, "cannot read MIG device");
                        continue;
                    }
                };
                match self.slice(dev, &md, parent, minor, &by_id, caps) {
                    Ok(s) => slices.push(s),
                    Err(e) => {
                        tracing::warn!(gpu = parent, index = j, error = %e, "skipping MIG device")
                    }
                }
            }
            slices.sort_by_key(|s: &MigSlice| s.start);
        }
        Some(GpuMig {
            current,
            pending,
            slices,
            geometry,
        })
    }

    fn slice(
        &self,
        parent_dev: &Device<'static>,
        md: &Device<'static>,
        parent: &str,
        minor: u32,
        by_id: &HashMap<u32, &ReportedProfile>,
        caps: &HashMap<String, u32>,
    ) -> Result<MigSlice, PluginError> {
        let uuid = md.uuid().map_err(nvml_err("MIG uuid"))?;
        let memory_mib = md.memory_info().map(|m| m.total / MIB).unwrap_or(0);
        let gi = instance_id(self.nvml, md, InstanceKind::Gpu)?;
        let ci = instance_id(self.nvml, md, InstanceKind::Compute)?;
        let info = gpu_instance_info(self.nvml, parent_dev, gi)?;
        let profile = by_id
            .get(&info.profileId)
            .map(|p| p.name.clone())
            .unwrap_or_else(|| profile_name(1, memory_mib));
        let mut cap_minors = Vec::new();
        if let Some(&m) = caps.get(&format!("gpu{minor}/gi{gi}/access")) {
            cap_minors.push(m);
        }
        if let Some(&m) = caps.get(&format!("gpu{minor}/gi{gi}/ci{ci}/access")) {
            cap_minors.push(m);
        }
        Ok(MigSlice {
            uuid,
            profile,
            start: u8::try_from(info.placement.start).unwrap_or(u8::MAX),
            size: u8::try_from(info.placement.size).unwrap_or(u8::MAX),
            gpu_instance: gi,
            compute_instance: ci,
            memory_mib,
            parent: parent.to_string(),
            cap_minors,
            health: Health::Healthy,
        })
    }
}

/// `/proc/driver/nvidia-caps/mig-minors`: `gpu0/gi1/access 12` lines, the minors of the
/// `/dev/nvidia-caps/nvidia-cap<N>` nodes that grant access to MIG instances.
pub fn parse_mig_minors(text: &str) -> HashMap<String, u32> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (k, v) = (it.next()?, it.next()?);
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// NUMA node of a PCI device from sysfs (`-1`, a missing file or junk → none).
pub fn numa_from_sysfs(root: &std::path::Path, bus_id: &str) -> Option<u32> {
    // NVML writes an 8-digit PCI domain (`00000000:18:00.0`); sysfs uses 4 (`0000:18:00.0`).
    let id = bus_id.to_ascii_lowercase();
    let short = if id.len() > 12 {
        &id[id.len() - 12..]
    } else {
        &id
    };
    let text = std::fs::read_to_string(root.join(short).join("numa_node")).ok()?;
    let n: i64 = text.trim().parse().ok()?;
    u32::try_from(n).ok()
}

enum InstanceKind {
    Gpu,
    Compute,
}

fn instance_id(nvml: &Nvml, md: &Device<'_>, kind: InstanceKind) -> Result<u32, PluginError> {
    let (name, sym) = match kind {
        InstanceKind::Gpu => (
            "GPU instance id",
            nvml.lib().nvmlDeviceGetGpuInstanceId.as_ref(),
        ),
        InstanceKind::Compute => (
            "compute instance id",
            nvml.lib().nvmlDeviceGetComputeInstanceId.as_ref(),
        ),
    };
    let f = sym.map_err(|e| PluginError::Nvml {
        call: name.to_string(),
        message: format!("symbol missing: {e}"),
    })?;
    let mut id: c_uint = 0;
    // SAFETY: `f` was resolved from the loaded NVML library with the exact C signature
    // `nvmlReturn_t (nvmlDevice_t, unsigned int*)`; `md.handle()` is a live MIG device handle
    // obtained from that library (the library outlives it: `nvml` is leaked); `&mut id` is a
    // valid, aligned out-pointer for the duration of the call.
    let ret = unsafe { f(md.handle(), &mut id) };
    nvml_try(ret).map_err(nvml_err(name))?;
    Ok(id)
}

fn gpu_instance_info(
    nvml: &Nvml,
    parent: &Device<'_>,
    gi: u32,
) -> Result<sys::nvmlGpuInstanceInfo_t, PluginError> {
    let lib = nvml.lib();
    let get = lib
        .nvmlDeviceGetGpuInstanceById
        .as_ref()
        .map_err(|e| PluginError::Nvml {
            call: "nvmlDeviceGetGpuInstanceById".into(),
            message: format!("symbol missing: {e}"),
        })?;
    let info_fn = lib
        .nvmlGpuInstanceGetInfo
        .as_ref()
        .map_err(|e| PluginError::Nvml {
            call: "nvmlGpuInstanceGetInfo".into(),
            message: format!("symbol missing: {e}"),
        })?;
    // SAFETY: an all-zero bit pattern is valid for these plain C structs/handles (integers and
    // raw pointers), and both are only read after NVML fills them in.
    let mut handle: sys::nvmlGpuInstance_t = unsafe { std::mem::zeroed() };
    let mut info: sys::nvmlGpuInstanceInfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: `get` has the C signature `(nvmlDevice_t, unsigned int, nvmlGpuInstance_t*)`;
    // `parent.handle()` is a live physical-device handle from the same library; the out-pointer
    // is valid for the call.
    nvml_try(unsafe { get(parent.handle(), gi, &mut handle) })
        .map_err(nvml_err(format!("GPU instance {gi}")))?;
    // SAFETY: `handle` was just returned by NVML for this device; `info_fn` has the signature
    // `(nvmlGpuInstance_t, nvmlGpuInstanceInfo_t*)` and `&mut info` is valid for the call.
    nvml_try(unsafe { info_fn(handle, &mut info) })
        .map_err(nvml_err(format!("GPU instance {gi} info")))?;
    Ok(info)
}

/// Possible placements of a GPU-instance profile as `(start, size)`: the two-call pattern of
/// `nvmlDeviceGetGpuInstancePossiblePlacements_v2` (count first, then fill).
fn possible_placements(
    nvml: &Nvml,
    dev: &Device<'_>,
    profile_id: u32,
) -> Result<Vec<(u8, u8)>, PluginError> {
    let f = nvml
        .lib()
        .nvmlDeviceGetGpuInstancePossiblePlacements_v2
        .as_ref()
        .map_err(|e| PluginError::Nvml {
            call: "possible placements".into(),
            message: format!("symbol missing: {e}"),
        })?;
    let mut count: c_uint = 0;
    // SAFETY: passing a null array with a count pointer asks NVML for the number of placements
    // only (documented behaviour); `dev.handle()` is a live handle from this library.
    nvml_try(unsafe { f(dev.handle(), profile_id, std::ptr::null_mut(), &mut count) })
        .map_err(nvml_err(format!("placements of profile {profile_id}")))?;
    let mut buf = vec![sys::nvmlGpuInstancePlacement_t { start: 0, size: 0 }; count as usize];
    // SAFETY: `buf` holds `count` initialised elements and NVML writes at most `count` of them,
    // updating `count` to the number written; the pointer stays valid for the call.
    nvml_try(unsafe { f(dev.handle(), profile_id, buf.as_mut_ptr(), &mut count) })
        .map_err(nvml_err(format!("placements of profile {profile_id}")))?;
    buf.truncate(count as usize);
    Ok(buf
        .into_iter()
        .filter_map(|p| Some((u8::try_from(p.start).ok()?, u8::try_from(p.size).ok()?)))
        .collect())
}

fn pcie_level(l: TopologyLevel) -> PcieLevel {
    match l {
        TopologyLevel::Internal => PcieLevel::Internal,
        TopologyLevel::Single => PcieLevel::Single,
        TopologyLevel::Multiple => PcieLevel::Multiple,
        TopologyLevel::HostBridge => PcieLevel::HostBridge,
        TopologyLevel::Node => PcieLevel::Node,
        TopologyLevel::System => PcieLevel::System,
    }
}

impl Inventory for NvmlInventory {
    fn describe(&self) -> String {
        format!(
            "nvml {}",
            self.driver.as_deref().unwrap_or("(driver version unknown)")
        )
    }

    fn discover(&self) -> Result<NodeInventory, PluginError> {
        let nvml = self.nvml;
        let count = nvml.device_count().map_err(nvml_err("device count"))?;
        let caps = std::fs::read_to_string("/proc/driver/nvidia-caps/mig-minors")
            .map(|t| parse_mig_minors(&t))
            .unwrap_or_default();
        let sysfs = std::path::Path::new("/sys/bus/pci/devices");
        let mut gpus = Vec::new();
        // Per GPU: active links, split into direct GPU links (by remote bus id) and switch links.
        let mut remote: Vec<Vec<String>> = Vec::new();
        for i in 0..count {
            let dev = nvml
                .device_by_index(i)
                .map_err(nvml_err(format!("device {i}")))?;
            let uuid = dev.uuid().map_err(nvml_err(format!("device {i} uuid")))?;
            let name = dev.name().map_err(nvml_err(format!("device {i} name")))?;
            let memory_mib = dev.memory_info().map(|m| m.total / MIB).unwrap_or(0);
            let pci_bus_id = dev
                .pci_info()
                .map_err(nvml_err(format!("device {i} PCI info")))?
                .bus_id;
            let minor = dev
                .minor_number()
                .map_err(nvml_err(format!("device {i} minor number")))?;
            let model = model_name(&name, memory_mib);
            let mig = self.mig_state(&dev, &model, &uuid, minor, &caps);
            let mut links = Vec::new();
            for l in 0..sys::NVML_NVLINK_MAX_LINKS {
                let link = dev.link_wrapper_for(l);
                if link.is_active().unwrap_or(false) {
                    if let Ok(p) = link.remote_pci_info() {
                        links.push(p.bus_id);
                    }
                }
            }
            remote.push(links);
            gpus.push(Gpu {
                index: i,
                uuid,
                name,
                model,
                memory_mib,
                numa: numa_from_sysfs(sysfs, &pci_bus_id),
                pci_bus_id,
                minor,
                peers: Vec::new(),
                mig,
                health: Health::Healthy,
            });
        }
        let buses: Vec<String> = gpus
            .iter()
            .map(|g| g.pci_bus_id.to_ascii_lowercase())
            .collect();
        let switch_links: Vec<u32> = remote
            .iter()
            .map(|r| {
                r.iter()
                    .filter(|b| !buses.contains(&b.to_ascii_lowercase()))
                    .count() as u32
            })
            .collect();
        for a in 0..gpus.len() {
            let da = nvml
                .device_by_index(a as u32)
                .map_err(nvml_err(format!("device {a}")))?;
            let mut peers = Vec::new();
            for b in 0..gpus.len() {
                if a == b {
                    continue;
                }
                let db = nvml
                    .device_by_index(b as u32)
                    .map_err(nvml_err(format!("device {b}")))?;
                let direct = remote[a]
                    .iter()
                    .filter(|r| r.eq_ignore_ascii_case(&buses[b]))
                    .count() as u32;
                let via_switch = if switch_links[a] > 0
                    && switch_links[b] > 0
                    && matches!(
                        da.p2p_status(&db, P2pCapabilitiesIndex::NvLink),
                        Ok(P2pStatus::Ok)
                    ) {
                    switch_links[a].min(switch_links[b])
                } else {
                    0
                };
                let pcie = da
                    .topology_common_ancestor(db)
                    .map(pcie_level)
                    .unwrap_or(PcieLevel::System);
                peers.push(Peer {
                    uuid: gpus[b].uuid.clone(),
                    nvlinks: direct + via_switch,
                    pcie,
                });
            }
            gpus[a].peers = peers;
        }
        let cpu_milli = std::thread::available_parallelism()
            .map(|n| n.get() as u32 * 1000)
            .unwrap_or(0);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(0, |kb| kb / 1024);
        Ok(NodeInventory {
            node: self.node.clone(),
            cpu_milli,
            memory_mib,
            driver: self.driver.clone(),
            gpus,
        })
    }

    fn next_event(&self, timeout: Duration) -> Result<Option<HealthEvent>, PluginError> {
        let guard = self.events.lock().map_err(|_| PluginError::Nvml {
            call: "event wait".into(),
            message: "lock poisoned".into(),
        })?;
        let Some(set) = guard.as_ref() else {
            drop(guard);
            std::thread::sleep(timeout);
            return Ok(None);
        };
        let wait = self
            .nvml
            .lib()
            .nvmlEventSetWait_v2
            .as_ref()
            .map_err(|e| PluginError::Nvml {
                call: "nvmlEventSetWait_v2".into(),
                message: format!("symbol missing: {e}"),
            })?;
        // SAFETY: all-zero is a valid `nvmlEventData_t` (integers and a raw handle); it is only
        // read after NVML fills it.
        let mut data: sys::nvmlEventData_t = unsafe { std::mem::zeroed() };
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        // SAFETY: `wait` has the signature `(nvmlEventSet_t, nvmlEventData_t*, unsigned int)`;
        // `set.handle()` is the live event set we created (guarded by the mutex, so no other
        // thread frees or waits on it concurrently); `&mut data` is valid for the call.
        let ret = unsafe { wait(set.handle(), &mut data, ms) };
        if ret == sys::nvmlReturn_enum_NVML_ERROR_TIMEOUT {
            return Ok(None);
        }
        nvml_try(ret).map_err(nvml_err("event wait"))?;
        // SAFETY: `data.device` is a device handle NVML just returned from the library that
        // `self.nvml` (leaked, so `'static`) owns.
        let dev = unsafe { Device::new(data.device, self.nvml) };
        let gpu = dev.uuid().map_err(nvml_err("event device uuid"))?;
        let kind = if data.eventType & sys::nvmlEventTypeXidCriticalError as u64 != 0 {
            EventKind::Xid(data.eventData)
        } else if data.eventType & sys::nvmlEventTypeDoubleBitEccError as u64 != 0 {
            EventKind::EccDoubleBit
        } else {
            return Ok(None);
        };
        Ok(Some(HealthEvent {
            gpu,
            gpu_instance: Some(data.gpuInstanceId),
            kind,
        }))
    }

    fn probe(&self, uuid: &str) -> Result<bool, PluginError> {
        let dev = match self.nvml.device_by_uuid(uuid) {
            Ok(d) => d,
            Err(NvmlError::GpuLost) | Err(NvmlError::NotFound) => return Ok(false),
            Err(e) => return Err(nvml_err(format!("probe {uuid}"))(e)),
        };
        Ok(dev.memory_info().is_ok() && dev.pci_info().is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_a_clear_error() {
        let err = NvmlInventory::open(
            Some(OsStr::new("/nonexistent/libnvidia-ml.so.1")),
            "n".into(),
        )
        .expect_err("no such library");
        let msg = err.to_string();
        assert!(matches!(err, PluginError::NvmlMissing(_)), "{msg}");
        assert!(msg.starts_with("NVML library not found: "), "{msg}");
        assert!(msg.ends_with("; use --fake FILE for development"), "{msg}");
    }

    #[test]
    fn mig_minors_and_sysfs_numa() {
        let m = parse_mig_minors(
            "config 1\nmonitor 2\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\nbad\n",
        );
        assert_eq!(m["gpu0/gi1/access"], 12);
        assert_eq!(m["gpu0/gi1/ci0/access"], 13);
        assert_eq!(m.len(), 4);
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().join("0000:18:00.0");
        std::fs::create_dir(&d).expect("mkdir");
        std::fs::write(d.join("numa_node"), "1\n").expect("w");
        assert_eq!(numa_from_sysfs(dir.path(), "00000000:18:00.0"), Some(1));
        std::fs::write(d.join("numa_node"), "-1\n").expect("w");
        assert_eq!(numa_from_sysfs(dir.path(), "00000000:18:00.0"), None);
        assert_eq!(numa_from_sysfs(dir.path(), "00000000:99:00.0"), None);
    }
}
