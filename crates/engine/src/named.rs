//! Allocations by name: what a driver writes down (a store record, a pod annotation) so that a
//! restarted driver, or one whose snapshot was rebuilt with other indexes, can hand each task
//! its devices back through [`Snapshot::restore`].
//!
//! [`NamedAlloc`] names the node, the device uuids and the flavor instead of arena indexes.
//! [`NamedAlloc::to_alloc`] maps it onto a snapshot, or says `None` when the node, a device or
//! the flavor is gone (the driver then requeues the job whole).

use gantry_model::Device;
use serde::{Deserialize, Serialize};

use crate::snapshot::{FlavorId, GpuAlloc, Snapshot, TaskAlloc};

/// What one task holds, by uuid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NamedGpu {
    /// No GPU.
    None,
    /// Whole devices.
    Whole(Vec<String>),
    /// A fraction of a device, in thousandths.
    Shared {
        /// Device uuid.
        uuid: String,
        /// Thousandths.
        milli: u16,
    },
    /// A MIG slice of a device.
    Mig {
        /// Parent device uuid.
        uuid: String,
        /// Profile index in the model's geometry.
        profile: u8,
        /// First memory slice.
        start: u8,
    },
}

impl NamedGpu {
    /// Devices this allocation holds: whole devices each, a share or a MIG slice as one.
    pub fn devices_held(&self) -> u32 {
        match self {
            NamedGpu::None => 0,
            NamedGpu::Whole(ds) => ds.len() as u32,
            _ => 1,
        }
    }
}

/// One placed task, by names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedAlloc {
    /// Task group.
    pub group: u16,
    /// Replica index in the group.
    pub index: u32,
    /// Node name.
    pub node: String,
    /// Millicores.
    pub cpu_milli: u32,
    /// MiB.
    pub memory_mib: u64,
    /// GPUs.
    pub gpu: NamedGpu,
    /// Quota flavor charged, by name.
    pub flavor: Option<String>,
    /// Quota charged, thousandths.
    pub amount: u64,
}

impl NamedAlloc {
    /// Name an engine allocation.
    pub fn from_alloc(snap: &Snapshot, t: &TaskAlloc) -> NamedAlloc {
        let gpu = match &t.gpu {
            GpuAlloc::None => NamedGpu::None,
            GpuAlloc::Whole(ds) => NamedGpu::Whole(
                ds.iter()
                    .map(|&d| snap.device_uuid(d).to_string())
                    .collect(),
            ),
            GpuAlloc::Shared { device, milli } => NamedGpu::Shared {
                uuid: snap.device_uuid(*device).to_string(),
                milli: *milli,
            },
            GpuAlloc::Mig {
                device,
                profile,
                start,
            } => NamedGpu::Mig {
                uuid: snap.device_uuid(*device).to_string(),
                profile: *profile,
                start: *start,
            },
        };
        let flavor = (t.flavor.0 != u32::MAX).then(|| snap.flavor_name(t.flavor).to_string());
        NamedAlloc {
            group: t.group,
            index: t.index,
            node: snap.node_name(t.node).to_string(),
            cpu_milli: t.cpu_milli,
            memory_mib: t.memory_mib,
            gpu,
            flavor,
            amount: t.amount,
        }
    }

    /// Map back onto a snapshot; `None` when its node, a device or its flavor is gone.
    pub fn to_alloc(&self, snap: &Snapshot) -> Option<TaskAlloc> {
        let node = snap.node_by_name(&self.node)?;
        let gpu = match &self.gpu {
            NamedGpu::None => GpuAlloc::None,
            NamedGpu::Whole(us) => GpuAlloc::Whole(
                us.iter()
                    .map(|u| snap.device_by_uuid(u))
                    .collect::<Option<Vec<_>>>()?,
            ),
            NamedGpu::Shared { uuid, milli } => GpuAlloc::Shared {
                device: snap.device_by_uuid(uuid)?,
                milli: *milli,
            },
            NamedGpu::Mig {
                uuid,
                profile,
                start,
            } => GpuAlloc::Mig {
                device: snap.device_by_uuid(uuid)?,
                profile: *profile,
                start: *start,
            },
        };
        let flavor = match &self.flavor {
            None => FlavorId(u32::MAX),
            Some(f) => snap.flavor_by_name(f)?,
        };
        Some(TaskAlloc {
            group: self.group,
            index: self.index,
            node,
            cpu_milli: self.cpu_milli,
            memory_mib: self.memory_mib,
            gpu,
            flavor,
            amount: self.amount,
        })
    }

    /// The uuids the task's process may see (`CUDA_VISIBLE_DEVICES`, the device plugin's
    /// hand-off), given its node's devices, and its shared fraction in thousandths.
    ///
    /// A MIG slice is named by its instance uuid when the node's fixed layout has one; a slice
    /// the engine placed at a free start has no instance yet, so the parent device is named.
    pub fn visible_uuids(&self, devices: &[Device]) -> (Vec<String>, u32) {
        match &self.gpu {
            NamedGpu::None => (Vec::new(), 0),
            NamedGpu::Whole(us) => (us.clone(), 0),
            NamedGpu::Shared { uuid, milli } => (vec![uuid.clone()], u32::from(*milli)),
            NamedGpu::Mig { uuid, start, .. } => {
                let slice = devices
                    .iter()
                    .find(|d| &d.uuid == uuid)
                    .and_then(|d| d.mig.as_ref())
                    .and_then(|m| m.slices.iter().find(|s| s.start == *start))
                    .map(|s| s.uuid.clone())
                    .filter(|u| !u.is_empty());
                (vec![slice.unwrap_or_else(|| uuid.clone())], 0)
            }
        }
    }
}
