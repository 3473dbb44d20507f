//! The scheduler's device hand-off: which exact devices did the central scheduler choose for the
//! task now being admitted on this node?
//!
//! The kubelet's `Allocate` does not say which pod it is for, so the choice reaches the plugin
//! through a [`HandoffSource`]:
//!
//! - **Standalone** ([`AssignmentBook`]): the node agent receives each task's assignment over the
//!   gantry API and records it (in memory, or in a JSON file the agent writes and the plugin
//!   reads, see [`AssignmentBook::with_file`]).
//! - **Kubernetes** (contract; the kube-rs client comes with the Kubernetes issue): the scheduler
//!   annotates the pod with [`POD_ANNOTATION`] = a JSON list of device ids
//!   (`["GPU-…","GPU-…"]`, parsed by [`parse_pod_annotation`]). The source lists the pods bound
//!   to this node (`spec.nodeName`) that are `Pending` and carry the annotation, and returns one
//!   [`Handoff`] per such pod and extended resource (`task` = `<namespace>/<name>`); after a
//!   successful `Allocate` it records consumption with [`ALLOCATED_ANNOTATION`]. The selection is
//!   the pure function [`handoffs_from_pods`] over [`PodView`]s, so the client only lists pods.
//!
//! `GetPreferredAllocation` answers with a pending hand-off's ids when one fits the request
//! (same size, all available, containing every must-include device); otherwise it falls back to
//! the NVLink-aware preference. `Allocate` consumes the hand-off whose ids it is given; when
//! none matches but a hand-off of the same resource and size is pending, the kubelet is about to
//! give the task other devices than the scheduler chose, and the plugin refuses (or only warns,
//! see [`MismatchPolicy`]).

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::resources::Snapshot;
use crate::PluginError;

/// Pod annotation carrying the scheduler's choice in Kubernetes mode: a JSON list of device ids.
pub const POD_ANNOTATION: &str = "gantry.dev/devices";

/// One task's chosen devices for one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    /// The task (`job/group/index` in standalone mode, `namespace/pod` in Kubernetes).
    pub task: String,
    /// Resource name (`nvidia.com/gpu`, `nvidia.com/mig-1g.10gb`).
    pub resource: String,
    /// Device ids (GPU or MIG uuids) the scheduler chose.
    pub device_ids: Vec<String>,
}

impl Handoff {
    fn set(&self) -> BTreeSet<&str> {
        self.device_ids.iter().map(String::as_str).collect()
    }
}

/// Where the scheduler's choices come from.
///
/// # Guarantees
/// `pending` returns the hand-offs not yet consumed, in the order they were recorded.
pub trait HandoffSource: Send + Sync + fmt::Debug {
    /// Pending hand-offs for `resource`; `node` is the node's current state (which resource
    /// advertises which device id), for sources that only know device ids.
    ///
    /// # Errors
    /// The source cannot be read.
    fn pending(&self, resource: &str, node: &Snapshot) -> Result<Vec<Handoff>, PluginError>;

    /// `Allocate` succeeded for `task`'s hand-off on `resource`: it is used up.
    ///
    /// # Errors
    /// The source cannot be written.
    fn consume(&self, task: &str, resource: &str) -> Result<(), PluginError>;
}

/// A hand-off source with nothing in it: the NVLink-aware preference always decides.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHandoff;

impl HandoffSource for NoHandoff {
    fn pending(&self, _: &str, _: &Snapshot) -> Result<Vec<Handoff>, PluginError> {
        Ok(Vec::new())
    }
    fn consume(&self, _: &str, _: &str) -> Result<(), PluginError> {
        Ok(())
    }
}

/// What `Allocate` does when the kubelet asks for other devices than a pending hand-off chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MismatchPolicy {
    /// Fail the allocation, naming the task and both device lists.
    #[default]
    Reject,
    /// Log a warning and allocate what the kubelet asked for.
    Warn,
}

/// The pending hand-off that answers a preferred-allocation request, if any.
pub fn for_preference<'a>(
    pending: &'a [Handoff],
    available: &[String],
    must_include: &[String],
    size: usize,
) -> Option<&'a Handoff> {
    let avail: BTreeSet<&str> = available.iter().map(String::as_str).collect();
    pending.iter().find(|h| {
        let set = h.set();
        set.len() == size
            && h.device_ids.len() == size
            && set.iter().all(|d| avail.contains(d))
            && must_include.iter().all(|m| set.contains(m.as_str()))
    })
}

/// How an `Allocate` request relates to the pending hand-offs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllocationMatch<'a> {
    /// No hand-off of this size is pending.
    Free,
    /// A hand-off with exactly these ids.
    Exact(&'a Handoff),
    /// No exact match, but this hand-off of the same size is pending.
    Conflict(&'a Handoff),
}

/// Match the ids of one container's `Allocate` request against the pending hand-offs.
pub fn for_allocation<'a>(pending: &'a [Handoff], ids: &[String]) -> AllocationMatch<'a> {
    let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    if let Some(h) = pending.iter().find(|h| h.set() == want) {
        return AllocationMatch::Exact(h);
    }
    match pending.iter().find(|h| h.device_ids.len() == ids.len()) {
        Some(h) => AllocationMatch::Conflict(h),
        None => AllocationMatch::Free,
    }
}

/// Parse the [`POD_ANNOTATION`] value.
///
/// # Errors
/// Not a JSON list of non-empty strings, or a duplicate id.
pub fn parse_pod_annotation(value: &str) -> Result<Vec<String>, PluginError> {
    let ids: Vec<String> = serde_json::from_str(value).map_err(|e| {
        PluginError::invalid(
            format!("annotations.{POD_ANNOTATION}"),
            format!("expected a JSON list of device ids: {e}"),
        )
    })?;
    let mut seen = BTreeSet::new();
    for (i, id) in ids.iter().enumerate() {
        if id.trim().is_empty() {
            return Err(PluginError::invalid(
                format!("annotations.{POD_ANNOTATION}[{i}]"),
                "empty device id",
            ));
        }
        if !seen.insert(id) {
            return Err(PluginError::invalid(
                format!("annotations.{POD_ANNOTATION}[{i}]"),
                format!("duplicate device id {id:?}"),
            ));
        }
    }
    Ok(ids)
}

/// Annotation the Kubernetes source sets as a pod's hand-offs are consumed by `Allocate`: the
/// comma-separated resources already allocated (`nvidia.com/gpu,nvidia.com/mig-1g.10gb`).
pub const ALLOCATED_ANNOTATION: &str = "gantry.dev/allocated";

/// What the Kubernetes hand-off source needs of a pod (read by the kube-rs client; kept plain so
/// the contract is testable without a cluster).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.nodeName`.
    pub node_name: String,
    /// `status.phase`.
    pub phase: String,
    /// `metadata.annotations`.
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The Kubernetes contract: the pending hand-offs of `node` among `pods`.
///
/// A pod counts when it is bound to `node`, `Pending` and carries [`POD_ANNOTATION`]. Its ids are
/// grouped by the resource that advertises each (`resource_of`), giving one [`Handoff`] per
/// resource with `task = namespace/name`, less the resources listed in
/// [`ALLOCATED_ANNOTATION`].
///
/// # Errors
/// Per pod (the others are still returned): a malformed annotation, or an id no resource of this
/// node advertises; the error names the pod and the annotation.
pub fn handoffs_from_pods(
    node: &str,
    pods: &[PodView],
    resource_of: impl Fn(&str) -> Option<String>,
) -> (Vec<Handoff>, Vec<PluginError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for pod in pods {
        if pod.node_name != node || pod.phase != "Pending" {
            continue;
        }
        let done: BTreeSet<&str> = pod
            .annotations
            .get(ALLOCATED_ANNOTATION)
            .map(|v| v.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let Some(value) = pod.annotations.get(POD_ANNOTATION) else {
            continue;
        };
        let task = format!("{}/{}", pod.namespace, pod.name);
        let ids = match parse_pod_annotation(value) {
            Ok(ids) => ids,
            Err(e) => {
                errors.push(PluginError::invalid(format!("pod {task}"), e.to_string()));
                continue;
            }
        };
        let mut by_resource: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let mut bad = None;
        for id in ids {
            match resource_of(&id) {
                Some(r) => by_resource.entry(r).or_default().push(id),
                None => {
                    bad = Some(id);
                    break;
                }
            }
        }
        if let Some(id) = bad {
            errors.push(PluginError::invalid(
                format!("pod {task}: annotations.{POD_ANNOTATION}"),
                format!("{id:?} is not a device this node advertises"),
            ));
            continue;
        }
        out.extend(
            by_resource
                .into_iter()
                .filter(|(resource, _)| !done.contains(resource.as_str()))
                .map(|(resource, device_ids)| Handoff {
                    task: task.clone(),
                    resource,
                    device_ids,
                }),
        );
    }
    (out, errors)
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BookFile {
    #[serde(default)]
    assignments: Vec<Handoff>,
}

/// The standalone hand-off source: assignments the node agent received, kept in memory and,
/// with a file, shared with the agent process.
///
/// The file is JSON, `{"assignments": [{"task": …, "resource": …, "device_ids": […]}]}`; it is
/// re-read on every lookup (the agent may have written it) and rewritten atomically (temporary
/// file + rename) when an assignment is recorded or consumed.
#[derive(Debug, Default)]
pub struct AssignmentBook {
    file: Option<PathBuf>,
    /// Assignments when there is no file (with a file, the file is the truth).
    memory: Mutex<Vec<Handoff>>,
}

impl AssignmentBook {
    /// An in-memory book.
    pub fn new() -> Self {
        AssignmentBook::default()
    }

    /// A book kept in `path` (created on first write if missing).
    pub fn with_file(path: impl Into<PathBuf>) -> Self {
        AssignmentBook {
            file: Some(path.into()),
            memory: Mutex::new(Vec::new()),
        }
    }

    fn origin(&self) -> String {
        self.file
            .as_deref()
            .map_or_else(|| "<memory>".to_string(), |p| p.display().to_string())
    }

    fn err(&self, message: impl Into<String>) -> PluginError {
        PluginError::Handoff {
            origin: self.origin(),
            message: message.into(),
        }
    }

    fn read(&self, path: &Path) -> Result<Vec<Handoff>, PluginError> {
        match std::fs::read_to_string(path) {
            Ok(text) if text.trim().is_empty() => Ok(Vec::new()),
            Ok(text) => {
                let de = &mut serde_json::Deserializer::from_str(&text);
                let book: BookFile = serde_path_to_error::deserialize(de)
                    .map_err(|e| self.err(format!("{}: {}", e.path(), e.inner())))?;
                Ok(book.assignments)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.err(format!("cannot read: {e}"))),
        }
    }

    fn write(&self, path: &Path, all: Vec<Handoff>) -> Result<(), PluginError> {
        let text = serde_json::to_string_pretty(&BookFile { assignments: all })
            .map_err(|e| self.err(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .map_err(|e| self.err(format!("cannot write {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(|e| self.err(format!("cannot rename into place: {e}")))
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Handoff>)) -> Result<(), PluginError> {
        let mut mem = self.memory.lock().map_err(|_| self.err("lock poisoned"))?;
        match &self.file {
            Some(path) => {
                let mut all = self.read(path)?;
                f(&mut all);
                self.write(path, all)
            }
            None => {
                f(&mut mem);
                Ok(())
            }
        }
    }

    /// Record (or replace) a task's assignment.
    ///
    /// # Errors
    /// An empty task or resource, no device ids, a duplicate id, or the file cannot be written.
    pub fn assign(&self, h: Handoff) -> Result<(), PluginError> {
        if h.task.is_empty() {
            return Err(PluginError::invalid("task", "must not be empty"));
        }
        if h.resource.is_empty() {
            return Err(PluginError::invalid("resource", "must not be empty"));
        }
        if h.device_ids.is_empty() {
            return Err(PluginError::invalid(
                "device_ids",
                "must name at least one device",
            ));
        }
        if h.set().len() != h.device_ids.len() {
            return Err(PluginError::invalid("device_ids", "lists a device twice"));
        }
        self.update(|all| {
            all.retain(|x| !(x.task == h.task && x.resource == h.resource));
            all.push(h);
        })
    }

    /// Forget a task's assignments (it ended or was preempted before admission).
    ///
    /// # Errors
    /// The file cannot be written.
    pub fn remove(&self, task: &str) -> Result<(), PluginError> {
        self.update(|all| all.retain(|x| x.task != task))
    }
}

impl HandoffSource for AssignmentBook {
    fn pending(&self, resource: &str, _: &Snapshot) -> Result<Vec<Handoff>, PluginError> {
        self.assignments(resource)
    }

    fn consume(&self, task: &str, resource: &str) -> Result<(), PluginError> {
        self.update(|all| all.retain(|x| !(x.task == task && x.resource == resource)))
    }
}

impl AssignmentBook {
    /// The recorded assignments for `resource`, oldest first.
    ///
    /// # Errors
    /// The file cannot be read or parsed.
    pub fn assignments(&self, resource: &str) -> Result<Vec<Handoff>, PluginError> {
        let all = match &self.file {
            Some(path) => {
                let _g = self.memory.lock().map_err(|_| self.err("lock poisoned"))?;
                self.read(path)?
            }
            None => self
                .memory
                .lock()
                .map_err(|_| self.err("lock poisoned"))?
                .clone(),
        };
        Ok(all.into_iter().filter(|h| h.resource == resource).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(task: &str, ids: &[&str]) -> Handoff {
        Handoff {
            task: task.into(),
            resource: "nvidia.com/gpu".into(),
            device_ids: ids.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn v(ids: &[&str]) -> Vec<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn preference_needs_size_availability_and_must_include() {
        let p = vec![h("a", &["G1", "G2"]), h("b", &["G3", "G4"])];
        let avail = v(&["G1", "G2", "G3", "G4"]);
        assert_eq!(
            for_preference(&p, &avail, &[], 2).map(|h| h.task.as_str()),
            Some("a")
        );
        assert_eq!(
            for_preference(&p, &avail, &v(&["G4"]), 2).map(|h| h.task.as_str()),
            Some("b")
        );
        assert_eq!(for_preference(&p, &avail, &[], 3), None);
        assert_eq!(
            for_preference(&p, &v(&["G1", "G3", "G4"]), &[], 2).map(|h| h.task.as_str()),
            Some("b")
        );
        assert_eq!(for_preference(&p, &v(&["G1", "G3"]), &[], 2), None);
    }

    #[test]
    fn allocation_matches_exactly_or_conflicts() {
        let p = vec![h("a", &["G1", "G2"])];
        assert_eq!(
            for_allocation(&p, &v(&["G2", "G1"])),
            AllocationMatch::Exact(&p[0])
        );
        assert_eq!(
            for_allocation(&p, &v(&["G2", "G3"])),
            AllocationMatch::Conflict(&p[0])
        );
        assert_eq!(for_allocation(&p, &v(&["G3"])), AllocationMatch::Free);
    }

    #[test]
    fn annotation_contract() {
        assert_eq!(
            parse_pod_annotation(r#"["GPU-a","GPU-b"]"#).expect("ok"),
            v(&["GPU-a", "GPU-b"])
        );
        for bad in [r#"GPU-a"#, r#"["a","a"]"#, r#"[""]"#, r#"{"a":1}"#] {
            let err = parse_pod_annotation(bad).expect_err(bad);
            assert!(
                err.to_string()
                    .starts_with("annotations.gantry.dev/devices"),
                "{err}"
            );
        }
    }

    #[test]
    fn file_book_round_trips_and_consumes() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("assignments.json");
        let book = AssignmentBook::with_file(&path);
        assert!(book
            .assignments("nvidia.com/gpu")
            .expect("empty")
            .is_empty());
        book.assign(h("a", &["G1"])).expect("assign");
        book.assign(h("b", &["G2", "G3"])).expect("assign");
        // Another reader (the plugin in another process) sees what the agent wrote.
        let other = AssignmentBook::with_file(&path);
        assert_eq!(other.assignments("nvidia.com/gpu").expect("read").len(), 2);
        assert!(other
            .assignments("nvidia.com/mig-1g.10gb")
            .expect("read")
            .is_empty());
        other.consume("a", "nvidia.com/gpu").expect("consume");
        assert_eq!(
            book.assignments("nvidia.com/gpu").expect("read"),
            vec![h("b", &["G2", "G3"])]
        );
        std::fs::write(&path, "{\"assignments\": [{\"task\": 1}]}").expect("write");
        let err = book.assignments("nvidia.com/gpu").expect_err("bad file");
        assert!(err.to_string().contains("assignments.json"), "{err}");
        assert!(err.to_string().contains("assignments[0].task"), "{err}");
        assert!(book.assign(h("", &["G1"])).is_err());
        assert!(book.assign(h("c", &["G1", "G1"])).is_err());
    }

    #[test]
    fn kubernetes_contract_from_pods() {
        let pod = |name: &str, node: &str, phase: &str, ann: &[(&str, &str)]| PodView {
            namespace: "ml".into(),
            name: name.into(),
            node_name: node.into(),
            phase: phase.into(),
            annotations: ann
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let pods = vec![
            pod(
                "a",
                "n1",
                "Pending",
                &[(POD_ANNOTATION, r#"["GPU-1","MIG-2","GPU-3"]"#)],
            ),
            pod("b", "n2", "Pending", &[(POD_ANNOTATION, r#"["GPU-4"]"#)]),
            pod("c", "n1", "Running", &[(POD_ANNOTATION, r#"["GPU-5"]"#)]),
            pod(
                "d",
                "n1",
                "Pending",
                &[
                    (POD_ANNOTATION, r#"["GPU-6"]"#),
                    (ALLOCATED_ANNOTATION, "true"),
                ],
            ),
            pod("e", "n1", "Pending", &[]),
            pod("f", "n1", "Pending", &[(POD_ANNOTATION, "GPU-7")]),
            pod("g", "n1", "Pending", &[(POD_ANNOTATION, r#"["GPU-99"]"#)]),
        ];
        let resource_of = |id: &str| match id {
            "GPU-99" => None,
            id if id.starts_with("MIG-") => Some("nvidia.com/mig-1g.10gb".to_string()),
            _ => Some("nvidia.com/gpu".to_string()),
        };
        let (h, errs) = handoffs_from_pods("n1", &pods, resource_of);
        assert_eq!(
            h,
            vec![
                Handoff {
                    task: "ml/a".into(),
                    resource: "nvidia.com/gpu".into(),
                    device_ids: v(&["GPU-1", "GPU-3"])
                },
                Handoff {
                    task: "ml/a".into(),
                    resource: "nvidia.com/mig-1g.10gb".into(),
                    device_ids: v(&["MIG-2"])
                },
                Handoff {
                    task: "ml/d".into(),
                    resource: "nvidia.com/gpu".into(),
                    device_ids: v(&["GPU-6"])
                },
            ]
        );
        let msgs: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(
            msgs[0].starts_with("pod ml/f: annotations.gantry.dev/devices"),
            "{msgs:?}"
        );
        assert!(msgs[1].contains("\"GPU-99\" is not a device"), "{msgs:?}");
    }

    #[test]
    fn memory_book() {
        let book = AssignmentBook::new();
        book.assign(h("a", &["G1"])).expect("assign");
        book.assign(h("a", &["G2"])).expect("replace");
        assert_eq!(
            book.assignments("nvidia.com/gpu").expect("p"),
            vec![h("a", &["G2"])]
        );
        book.remove("a").expect("remove");
        assert!(book.assignments("nvidia.com/gpu").expect("p").is_empty());
    }
}
