//! The kubelet-facing gRPC service of one resource: `GetDevicePluginOptions`, `ListAndWatch`
//! (the full list on every change), `GetPreferredAllocation` (hand-off first, then NVLink-aware),
//! `Allocate` (`NVIDIA_VISIBLE_DEVICES` or CDI names, plus device nodes) and `PreStartContainer`.

use std::collections::BTreeSet;
use std::sync::Arc;

use gantry_api::deviceplugin::v1beta1 as pb;
use gantry_model::Health;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::handoff::{self, AllocationMatch, HandoffSource, MismatchPolicy};
use crate::prefer;
use crate::resources::{Resource, Snapshot};
use crate::PluginError;

/// Environment variable the NVIDIA container toolkit reads.
pub const VISIBLE_DEVICES_ENV: &str = "NVIDIA_VISIBLE_DEVICES";

/// How allocated devices are named to the container runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceListStrategy {
    /// `NVIDIA_VISIBLE_DEVICES=<id>,<id>`.
    Env,
    /// CDI device names `<kind>=<id>` in `cdi_devices` (e.g. `nvidia.com/gpu=GPU-…`).
    Cdi {
        /// CDI kind, `vendor/class`.
        kind: String,
    },
}

/// What `Allocate` returns besides the device list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocateOptions {
    /// Env or CDI.
    pub device_list: DeviceListStrategy,
    /// Whether to return device nodes (`/dev/nvidia<minor>`, `/dev/nvidiactl`, ...).
    pub device_specs: bool,
    /// Host directory holding the device nodes (`/dev`; another root for a containerised driver).
    pub dev_root: String,
    /// What to do when the kubelet's ids differ from the scheduler's hand-off.
    pub mismatch: MismatchPolicy,
}

impl Default for AllocateOptions {
    fn default() -> Self {
        AllocateOptions {
            device_list: DeviceListStrategy::Env,
            device_specs: true,
            dev_root: "/dev".to_string(),
            mismatch: MismatchPolicy::Reject,
        }
    }
}

/// Control devices every GPU container needs.
pub const CONTROL_DEVICES: [&str; 3] = ["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"];

/// The device list of `resource` as ListAndWatch sends it.
pub fn device_list(resource: Option<&Resource>) -> Vec<pb::Device> {
    resource
        .map(|r| {
            r.devices
                .iter()
                .map(|d| pb::Device {
                    id: d.id.clone(),
                    health: match d.health {
                        Health::Healthy => pb::HEALTHY,
                        Health::Unhealthy => pb::UNHEALTHY,
                    }
                    .to_string(),
                    topology: d.numa.map(|n| pb::TopologyInfo {
                        nodes: vec![pb::NumaNode { id: n as i64 }],
                    }),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Build one container's `Allocate` answer for `ids` of `resource`.
///
/// # Errors
/// An empty request, or an id that is not a device of this resource (the field is named).
pub fn container_response(
    snap: &Snapshot,
    resource: &str,
    ids: &[String],
    opts: &AllocateOptions,
    field: &str,
) -> Result<pb::ContainerAllocateResponse, PluginError> {
    let Some(res) = snap.resource(resource) else {
        return Err(PluginError::invalid(
            field,
            format!("this node no longer advertises {resource}"),
        ));
    };
    if ids.is_empty() {
        return Err(PluginError::invalid(
            format!("{field}.devices_ids"),
            "asks for no device",
        ));
    }
    let mut gpus = BTreeSet::new();
    let mut caps = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        let Some(d) = res.device(id) else {
            return Err(PluginError::invalid(
                format!("{field}.devices_ids[{i}]"),
                format!("{id:?} is not a {resource} device of this node"),
            ));
        };
        let gpu = &snap.inventory.gpus[d.gpu];
        gpus.insert(gpu.minor);
        if let (Some(si), Some(m)) = (d.slice, &gpu.mig) {
            caps.extend(m.slices[si].cap_minors.iter().copied());
        }
    }
    let mut resp = pb::ContainerAllocateResponse::default();
    match &opts.device_list {
        DeviceListStrategy::Env => {
            resp.envs
                .insert(VISIBLE_DEVICES_ENV.to_string(), ids.join(","));
        }
        DeviceListStrategy::Cdi { kind } => {
            resp.cdi_devices = ids
                .iter()
                .map(|id| pb::CdiDevice {
                    name: format!("{kind}={id}"),
                })
                .collect();
        }
    }
    if opts.device_specs {
        let root = opts.dev_root.trim_end_matches('/');
        let spec = |name: String| pb::DeviceSpec {
            container_path: format!("/dev/{name}"),
            host_path: format!("{root}/{name}"),
            permissions: "rw".to_string(),
        };
        resp.devices
            .extend(CONTROL_DEVICES.iter().map(|n| spec(n.to_string())));
        resp.devices
            .extend(gpus.iter().map(|m| spec(format!("nvidia{m}"))));
        resp.devices.extend(
            caps.iter()
                .map(|c| spec(format!("nvidia-caps/nvidia-cap{c}"))),
        );
    }
    Ok(resp)
}

fn status(e: PluginError) -> Status {
    match e {
        PluginError::InvalidRequest { .. } => Status::invalid_argument(e.to_string()),
        PluginError::HandoffConflict { .. } => Status::failed_precondition(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

/// The DevicePlugin service of one resource.
#[derive(Debug, Clone)]
pub struct DevicePluginService {
    resource: String,
    state: watch::Receiver<Arc<Snapshot>>,
    /// Set to `true` when this server generation stops, so ListAndWatch streams end and the
    /// server's graceful shutdown does not wait on them forever.
    stop: watch::Receiver<bool>,
    handoff: Arc<dyn HandoffSource>,
    opts: Arc<AllocateOptions>,
}

impl DevicePluginService {
    /// A service for `resource`, reading node state from `state`.
    pub fn new(
        resource: String,
        state: watch::Receiver<Arc<Snapshot>>,
        stop: watch::Receiver<bool>,
        handoff: Arc<dyn HandoffSource>,
        opts: Arc<AllocateOptions>,
    ) -> Self {
        DevicePluginService {
            resource,
            state,
            stop,
            handoff,
            opts,
        }
    }

    /// GetPreferredAllocation's logic, without gRPC.
    ///
    /// # Errors
    /// Invalid requests (see [`prefer::preferred`]) or an unreadable hand-off source.
    pub fn preferred(
        &self,
        req: &pb::PreferredAllocationRequest,
    ) -> Result<pb::PreferredAllocationResponse, PluginError> {
        let snap = self.state.borrow().clone();
        let Some(res) = snap.resource(&self.resource) else {
            return Err(PluginError::invalid(
                "container_requests",
                format!("this node no longer advertises {}", self.resource),
            ));
        };
        let pending = self.handoff.pending(&self.resource, &snap)?;
        let mut out = pb::PreferredAllocationResponse::default();
        for (i, c) in req.container_requests.iter().enumerate() {
            let field = format!("container_requests[{i}]");
            let size = usize::try_from(c.allocation_size).unwrap_or(0);
            let ids = match handoff::for_preference(
                &pending,
                &c.available_device_i_ds,
                &c.must_include_device_i_ds,
                size,
            ) {
                Some(h) => {
                    tracing::info!(task = %h.task, devices = ?h.device_ids, resource = %self.resource, "preferred allocation from the scheduler's hand-off");
                    h.device_ids.clone()
                }
                None => prefer::preferred(
                    &snap,
                    res,
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    c.allocation_size,
                    &field,
                )?,
            };
            out.container_responses
                .push(pb::ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(out)
    }

    /// Allocate's logic, without gRPC.
    ///
    /// # Errors
    /// Unknown ids, an unreadable hand-off source, or (policy `reject`) ids that differ from a
    /// pending hand-off of the same size.
    pub fn allocate(&self, req: &pb::AllocateRequest) -> Result<pb::AllocateResponse, PluginError> {
        let snap = self.state.borrow().clone();
        let pending = self.handoff.pending(&self.resource, &snap)?;
        let mut out = pb::AllocateResponse::default();
        let mut consumed = Vec::new();
        for (i, c) in req.container_requests.iter().enumerate() {
            let field = format!("container_requests[{i}]");
            let resp =
                container_response(&snap, &self.resource, &c.devices_ids, &self.opts, &field)?;
            match handoff::for_allocation(&pending, &c.devices_ids) {
                AllocationMatch::Exact(h) => consumed.push(h.task.clone()),
                AllocationMatch::Conflict(h) => {
                    let reason = format!(
                        "the scheduler chose {} but the kubelet asked for {}",
                        h.device_ids.join(","),
                        c.devices_ids.join(",")
                    );
                    match self.opts.mismatch {
                        MismatchPolicy::Reject => {
                            return Err(PluginError::HandoffConflict {
                                task: h.task.clone(),
                                reason,
                            })
                        }
                        MismatchPolicy::Warn => {
                            tracing::warn!(task = %h.task, "{reason}; allocating the kubelet's choice")
                        }
                    }
                }
                AllocationMatch::Free => {}
            }
            out.container_responses.push(resp);
        }
        for task in consumed {
            self.handoff.consume(&task, &self.resource)?;
            tracing::info!(task = %task, resource = %self.resource, "hand-off honoured and consumed");
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl pb::device_plugin_server::DevicePlugin for DevicePluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<pb::DevicePluginOptions>, Status> {
        Ok(Response::new(pb::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }))
    }

    type ListAndWatchStream = ReceiverStream<Result<pb::ListAndWatchResponse, Status>>;

    async fn list_and_watch(
        &self,
        _: Request<pb::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut state = self.state.clone();
        let mut stop = self.stop.clone();
        let resource = self.resource.clone();
        tokio::spawn(async move {
            let mut last: Option<Vec<pb::Device>> = None;
            loop {
                if *stop.borrow() {
                    break;
                }
                let devices = device_list(state.borrow_and_update().resource(&resource));
                if last.as_ref() != Some(&devices) {
                    let msg = pb::ListAndWatchResponse {
                        devices: devices.clone(),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                    tracing::debug!(resource = %resource, devices = devices.len(), "ListAndWatch sent");
                    last = Some(devices);
                }
                tokio::select! {
                    r = state.changed() => if r.is_err() { break },
                    _ = stop.changed() => {},
                    _ = tx.closed() => break,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<pb::PreferredAllocationRequest>,
    ) -> Result<Response<pb::PreferredAllocationResponse>, Status> {
        self.preferred(req.get_ref())
            .map(Response::new)
            .map_err(status)
    }

    async fn allocate(
        &self,
        req: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let r = self.allocate(req.get_ref());
        if let Err(e) = &r {
            tracing::warn!(resource = %self.resource, error = %e, "Allocate refused");
        }
        r.map(Response::new).map_err(status)
    }

    async fn pre_start_container(
        &self,
        _: Request<pb::PreStartContainerRequest>,
    ) -> Result<Response<pb::PreStartContainerResponse>, Status> {
        Ok(Response::new(pb::PreStartContainerResponse {}))
    }
}
