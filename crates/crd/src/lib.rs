//! The custom resources of Kubernetes mode, group `gantry.dev`, version `v1alpha1`: the types
//! the scheduler's controller (`gantry-kube`) and the node side (`gantry-device-plugin`) share,
//! so the node side never depends on the controller.
//!
//! - [`Queue`] (cluster-scoped): one node of the queue tree. `parent` names its cohort; per
//!   flavor it has a nominal quota, a borrowing limit and a lending limit; and a fair-share
//!   weight. The controller writes usage, pending/admitted counts and the dominant share into
//!   its status.
//! - [`PodGroup`] (namespaced): a gang. Pods join it with the label [`POD_GROUP_LABEL`]; it is
//!   admitted only when `minMember` pods exist and all of them fit at once. Its status carries a
//!   phase (Pending, Inqueue, Preempting, Nominated, Running, Preempted, Succeeded, Failed),
//!   the conditions `Scheduled` and `Preempted`, and the reason it waits.
//! - [`NodeInventory`] (cluster-scoped, named after its node, owned by its Node so it goes when
//!   the Node goes): the devices the device plugin found, in the model's own [`Device`] shape
//!   (MIG slices with their own health), so nothing is lost between NVML and the engine; its
//!   status carries the plugin's heartbeat.
//!
//! [`crds`] returns the three definitions; `gantry kube crds` prints them and `deploy/crds/`
//! holds the same YAML (a test in `gantry-kube` fails when the two drift apart).

use std::collections::BTreeMap;

use gantry_model::Device;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every gantry resource.
pub const GROUP: &str = "gantry.dev";
/// Label that puts a pod into a [`PodGroup`] of its namespace.
pub const POD_GROUP_LABEL: &str = "gantry.dev/pod-group";
/// Label naming the queue of a pod that is not in a group.
pub const QUEUE_LABEL: &str = "gantry.dev/queue";
/// Label naming the priority class of a pod that is not in a group.
pub const PRIORITY_CLASS_LABEL: &str = "gantry.dev/priority-class";
/// Annotation with the device uuids the scheduler chose (read by the device plugin).
pub const DEVICES_ANNOTATION: &str = "gantry.dev/devices";

/// Quota of one flavor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlavorQuota {
    /// What the queue is entitled to (GPUs; fractions allowed for shared GPUs), >= 0.
    #[serde(default)]
    #[schemars(range(min = 0.0))]
    pub nominal: f64,
    /// Most it may use beyond `nominal`, borrowed from its cohort, >= 0. Absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub borrowing_limit: Option<f64>,
    /// Most of its unused nominal quota that others may borrow, >= 0. Absent: all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub lending_limit: Option<f64>,
}

/// A queue, or a cohort when other queues name it as `parent`.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gantry.dev",
    version = "v1alpha1",
    kind = "Queue",
    plural = "queues",
    shortname = "gq",
    status = "QueueStatus",
    printcolumn = r#"{"name":"Parent","type":"string","jsonPath":".spec.parent"}"#,
    printcolumn = r#"{"name":"Weight","type":"number","jsonPath":".spec.weight"}"#,
    printcolumn = r#"{"name":"Pending","type":"integer","jsonPath":".status.pending"}"#,
    printcolumn = r#"{"name":"Admitted","type":"integer","jsonPath":".status.admitted"}"#,
    printcolumn = r#"{"name":"Share","type":"number","jsonPath":".status.share"}"#,
    printcolumn = r#"{"name":"Usage","type":"string","jsonPath":".status.summary"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// Parent cohort (another Queue); absent for a root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Fair-share weight, > 0 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("minimum" = 0.0, "exclusiveMinimum" = true))]
    pub weight: Option<f64>,
    /// Quota per flavor: a GPU model (`h100-80gb`) or a MIG profile (`a100-80gb/1g.10gb`).
    #[serde(default)]
    pub quotas: BTreeMap<String, FlavorQuota>,
    /// Flavors `quotas` does not list: `deny` (default, as in Kueue) or `allow`. Absent: as the
    /// parent says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlisted_flavors: Option<gantry_model::UnlistedFlavors>,
}

/// What the controller reports on a queue.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// GPUs in use per flavor (this queue and, for a cohort, its subtree).
    #[serde(default)]
    pub usage: BTreeMap<String, f64>,
    /// Jobs waiting (leaf queues).
    #[serde(default)]
    pub pending: u32,
    /// Jobs admitted and running (leaf queues).
    #[serde(default)]
    pub admitted: u32,
    /// Dominant share: the largest used/nominal ratio over its flavors.
    #[serde(default)]
    pub share: f64,
    /// `h100-80gb 12/16, t4 0/4`: usage against nominal (for a cohort, its subtree's nominal),
    /// for `kubectl get queues`.
    #[serde(default)]
    pub summary: String,
    /// Why the queue is left out of the tree, when it is not valid (its jobs wait).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A gang of pods that start together or not at all.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gantry.dev",
    version = "v1alpha1",
    kind = "PodGroup",
    plural = "podgroups",
    shortname = "pg",
    namespaced,
    status = "PodGroupStatus",
    printcolumn = r#"{"name":"Queue","type":"string","jsonPath":".spec.queue"}"#,
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.minMember"}"#,
    printcolumn = r#"{"name":"Running","type":"integer","jsonPath":".status.running"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PodGroupSpec {
    /// Pods that must be placed together before any of them is bound, >= 1.
    #[schemars(range(min = 1))]
    pub min_member: u32,
    /// Leaf queue.
    #[schemars(length(min = 1))]
    pub queue: String,
    /// gantry priority class (`inference`, `training`, `batch`, or one the queues define);
    /// default `training`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
    /// Gang scope: `node`, `nvlink-domain` or `label:<node label key>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<String>,
    /// Expected runtime, for backfill and start estimates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_runtime_seconds: Option<u64>,
}

/// Phase of a [`PodGroup`] (see `status.rs` for when each holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
pub enum PodGroupPhase {
    /// Fewer than `minMember` pods exist yet.
    #[default]
    Pending,
    /// Complete and waiting in its queue; the message says why it waits.
    #[serde(alias = "Unschedulable")]
    Inqueue,
    /// Placed; waits for preempted (or deleted) pods to release its devices.
    Preempting,
    /// Placed; binds sent and not yet confirmed.
    Nominated,
    /// Placed and every pod bound.
    Running,
    /// Evicted for a preemptor; no pod of it runs.
    Preempted,
    /// Every pod succeeded.
    Succeeded,
    /// No pod runs and some failed.
    Failed,
}

impl PodGroupPhase {
    /// The name written to the API.
    pub fn as_str(self) -> &'static str {
        match self {
            PodGroupPhase::Pending => "Pending",
            PodGroupPhase::Inqueue => "Inqueue",
            PodGroupPhase::Preempting => "Preempting",
            PodGroupPhase::Nominated => "Nominated",
            PodGroupPhase::Running => "Running",
            PodGroupPhase::Preempted => "Preempted",
            PodGroupPhase::Succeeded => "Succeeded",
            PodGroupPhase::Failed => "Failed",
        }
    }
}

/// One status condition, Kubernetes style.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupCondition {
    /// `Scheduled` or `Preempted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True` or `False`.
    pub status: String,
    /// One CamelCase word.
    #[serde(default)]
    pub reason: String,
    /// The engine's explanation.
    #[serde(default)]
    pub message: String,
    /// RFC 3339 time of the last change of `status`.
    #[serde(default)]
    pub last_transition_time: String,
}

/// What the controller reports on a pod group.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodGroupStatus {
    /// Where the gang is.
    #[serde(default)]
    pub phase: PodGroupPhase,
    /// Conditions, one per type.
    #[serde(default)]
    pub conditions: Vec<GroupCondition>,
    /// Pods bound.
    #[serde(default)]
    pub running: u32,
    /// Why it waits, when it waits.
    #[serde(default)]
    pub message: String,
}

/// The GPUs of one node as its device plugin found them.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "gantry.dev",
    version = "v1alpha1",
    kind = "NodeInventory",
    plural = "nodeinventories",
    shortname = "ninv",
    printcolumn = r#"{"name":"GPUs","type":"integer","jsonPath":".spec.gpus"}"#,
    printcolumn = r#"{"name":"Healthy","type":"integer","jsonPath":".spec.healthy"}"#,
    printcolumn = r#"{"name":"Models","type":"string","jsonPath":".spec.models"}"#,
    printcolumn = r#"{"name":"Driver","type":"string","jsonPath":".spec.driver"}"#,
    printcolumn = r#"{"name":"Heartbeat","type":"date","jsonPath":".status.heartbeatTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    status = "NodeInventoryStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct NodeInventorySpec {
    /// The devices, with uuids, NVLink topology, health and MIG layout.
    #[serde(default)]
    pub devices: Vec<Device>,
    /// Driver version, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Number of devices (for printing; the controller reads `devices`).
    #[serde(default)]
    pub gpus: u32,
    /// Healthy devices (for printing).
    #[serde(default)]
    pub healthy: u32,
    /// Models present, comma separated (for printing).
    #[serde(default)]
    pub models: String,
}

/// What the device plugin reports besides the devices: that it is alive.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeInventoryStatus {
    /// When the device plugin last reported in (RFC 3339), every `--heartbeat` seconds. The
    /// scheduler stops placing new GPU pods on a node whose inventory has not changed this for
    /// its `--inventory-stale-after`, measured on the scheduler's own clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<String>,
}

impl NodeInventorySpec {
    /// The spec for `devices`, with the printing summaries filled in.
    pub fn new(devices: Vec<Device>, driver: Option<String>) -> Self {
        let mut models: Vec<&str> = devices.iter().map(|d| d.model.as_str()).collect();
        models.sort_unstable();
        models.dedup();
        NodeInventorySpec {
            gpus: devices.len() as u32,
            healthy: devices
                .iter()
                .filter(|d| d.health == gantry_model::Health::Healthy)
                .count() as u32,
            models: models.join(","),
            driver,
            devices,
        }
    }
}

/// The three definitions, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Queue::crd(), PodGroup::crd(), NodeInventory::crd()]
}

/// The definitions as one multi-document YAML stream (what `deploy/crds/gantry.dev.yaml` holds).
///
/// # Errors
/// Serialisation failed (not expected).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::from(
        "# Generated by `gantry kube crds`; do not edit (a test compares it with the Rust types).\n",
    );
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_have_the_names_kubectl_uses_and_printer_columns() {
        let all = crds();
        let names: Vec<_> = all
            .iter()
            .map(|c| c.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "queues.gantry.dev",
                "podgroups.gantry.dev",
                "nodeinventories.gantry.dev"
            ]
        );
        assert_eq!(all[0].spec.scope, "Cluster");
        assert_eq!(all[1].spec.scope, "Namespaced");
        assert_eq!(all[2].spec.scope, "Cluster");
        let cols = all[0].spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap();
        assert!(cols.iter().any(|c| c.json_path == ".status.share"));
        // Status is a subresource, so the controller's status patches cannot touch the spec.
        assert!(all[1].spec.versions[0]
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some());
    }

    #[test]
    fn queue_spec_round_trips_in_camel_case() {
        let q: QueueSpec = serde_json::from_value(serde_json::json!({
            "parent": "research",
            "quotas": {"h100-80gb": {"nominal": 8, "borrowingLimit": 4, "lendingLimit": 2}}
        }))
        .unwrap();
        assert_eq!(q.quotas["h100-80gb"].borrowing_limit, Some(4.0));
        let back = serde_json::to_value(&q).unwrap();
        assert_eq!(back["quotas"]["h100-80gb"]["lendingLimit"], 2.0);
    }
}
