//! A stateful fake Kubernetes API server behind a `tower-test` mock transport: the other side
//! of the controller's boundary. It keeps objects in memory and answers what the controller
//! sends: list and watch (streamed newline-delimited events), get, create, replace (409 on a
//! stale resourceVersion), merge and strategic-merge patches (conditions merge by `type`), the
//! `binding` and `eviction` subresources, delete. Tests create objects through it, so the
//! controller sees them through its real watches, and read back what the controller wrote.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{json, Value};
use tokio::sync::mpsc;

pub type RespBody = BoxBody<Bytes, Infallible>;

/// `(api prefix, resource)`: `("api/v1", "pods")`, `("apis/gantry.dev/v1alpha1", "queues")`.
type Kind = (String, String);

struct Watcher {
    kind: Kind,
    ns: Option<String>,
    field: Option<(String, String)>,
    tx: mpsc::UnboundedSender<Result<http_body::Frame<Bytes>, Infallible>>,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Kind, BTreeMap<(String, String), Value>>,
    watchers: Vec<Watcher>,
    /// Every write, as `METHOD path`.
    writes: Vec<String>,
    /// Pods whose binding is refused (to test failed binds).
    refuse_bind: Vec<String>,
    /// Pods whose eviction is refused with 429, as a PodDisruptionBudget does.
    refuse_evict: Vec<String>,
    /// Evictions start a grace period (deletionTimestamp set) instead of deleting at once.
    graceful: bool,
    /// Every watch event with its resourceVersion, replayed to watches that start behind.
    history: Vec<(u64, Kind, Value)>,
}

/// Handle to the fake server's state.
#[derive(Clone, Default)]
pub struct FakeApi {
    store: Arc<Mutex<Store>>,
}

struct Path {
    kind: Kind,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Path> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (prefix, rest) = match *parts.first()? {
        "api" => (format!("api/{}", parts.get(1)?), &parts[2..]),
        "apis" => (
            format!("apis/{}/{}", parts.get(1)?, parts.get(2)?),
            &parts[3..],
        ),
        _ => return None,
    };
    let (ns, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    Some(Path {
        kind: (prefix, rest.first()?.to_string()),
        ns,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    })
}

fn query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            (
                k.to_string(),
                v.replace("%3D", "=")
                    .replace("%2F", "/")
                    .replace("%2C", ","),
            )
        })
        .collect()
}

fn respond(code: StatusCode, v: &Value) -> Response<RespBody> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap()
}

fn status(code: u16, reason: &str, message: &str) -> Response<RespBody> {
    respond(
        StatusCode::from_u16(code).unwrap(),
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": reason, "message": message, "code": code}),
    )
}

/// RFC 7386 merge patch; with `strategic`, `conditions` lists merge by `type`.
fn merge(target: &mut Value, patch: &Value, strategic: bool) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else if strategic && k == "conditions" && v.is_array() {
                    let list = t.entry(k.clone()).or_insert_with(|| json!([]));
                    if !list.is_array() {
                        *list = json!([]);
                    }
                    let arr = list.as_array_mut().unwrap();
                    for c in v.as_array().unwrap() {
                        match arr.iter_mut().find(|x| x["type"] == c["type"]) {
                            Some(x) => merge(x, c, false),
                            None => arr.push(c.clone()),
                        }
                    }
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v, strategic);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// An object's (namespace, name), the fake's key.
fn key_of(obj: &Value) -> (String, String) {
    let meta = &obj["metadata"];
    (
        meta["namespace"].as_str().unwrap_or("").to_string(),
        meta["name"].as_str().unwrap_or("").to_string(),
    )
}

fn field_of<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    path.split('.').try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Send a watch event to `w` if it matches; false once the watch is gone.
fn send_to(w: &Watcher, kind: &Kind, ev: &Value) -> bool {
    let obj = &ev["object"];
    let ns = obj["metadata"]["namespace"].as_str().map(str::to_string);
    if &w.kind != kind || (w.ns.is_some() && w.ns != ns) {
        return !w.tx.is_closed();
    }
    if let Some((f, want)) = &w.field {
        if field_of(obj, f) != Some(want.as_str()) {
            return !w.tx.is_closed();
        }
    }
    let line = format!("{ev}\n");
    w.tx.send(Ok(http_body::Frame::data(Bytes::from(line))))
        .is_ok()
}

impl Store {
    fn object(&self, kind: &Kind, ns: &str, name: &str) -> Option<Value> {
        self.objects
            .get(kind)
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
    }

    fn emit(&mut self, kind: &Kind, ty: &str, obj: &Value) {
        let ev = json!({"type": ty, "object": obj});
        self.history.push((self.rv, kind.clone(), ev.clone()));
        let mut watchers = std::mem::take(&mut self.watchers);
        watchers.retain(|w| send_to(w, kind, &ev));
        self.watchers = watchers;
    }

    fn put(&mut self, kind: &Kind, mut obj: Value, ty: &str) -> Value {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", self.rv));
        }
        if obj["metadata"]["creationTimestamp"].is_null() {
            obj["metadata"]["creationTimestamp"] = json!("2026-11-21T10:00:00Z");
        }
        let key = key_of(&obj);
        self.objects
            .entry(kind.clone())
            .or_default()
            .insert(key, obj.clone());
        self.emit(kind, ty, &obj);
        obj
    }

    fn remove(&mut self, kind: &Kind, ns: &str, name: &str) -> Option<Value> {
        let obj = self
            .objects
            .get_mut(kind)?
            .remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        self.emit(kind, "DELETED", &obj);
        Some(obj)
    }
}

impl FakeApi {
    /// A kube client talking to this fake through a `tower-test` mock service.
    pub fn client(&self) -> kube::Client {
        self.client_with_switch().0
    }

    /// A client and its network cable: once the flag is set, every request from this client
    /// fails as if the process had died mid-call (nothing reaches the fake any more).
    pub fn client_with_switch(&self) -> (kube::Client, Arc<std::sync::atomic::AtomicBool>) {
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        (kube::Client::new(self.serve(cut.clone()), "default"), cut)
    }

    /// A client with kube-client's default retry layer, as `Client::try_default()` builds it:
    /// up to 15 tries on 429/503/504, backing off exponentially to 1,000 s.
    pub fn client_with_default_retry(&self) -> kube::Client {
        let svc = tower::ServiceBuilder::new()
            .layer(tower::retry::RetryLayer::new(
                kube::client::retry::RetryPolicy::server_retry(),
            ))
            .service(self.serve(Arc::new(std::sync::atomic::AtomicBool::new(false))));
        kube::Client::new(svc, "default")
    }

    /// A mock transport answered by this fake (nothing once `cut` is set).
    fn serve(
        &self,
        cut: Arc<std::sync::atomic::AtomicBool>,
    ) -> tower_test::mock::Mock<Request<kube::client::Body>, Response<RespBody>> {
        let (mock, mut handle) =
            tower_test::mock::pair::<Request<kube::client::Body>, Response<RespBody>>();
        let me = self.clone();
        tokio::spawn(async move {
            while let Some((req, send)) = handle.next_request().await {
                if cut.load(std::sync::atomic::Ordering::SeqCst) {
                    send.send_error("connection lost");
                    continue;
                }
                let resp = me.handle(req).await;
                send.send_response(resp);
            }
        });
        mock
    }

    async fn handle(&self, req: Request<kube::client::Body>) -> Response<RespBody> {
        let (parts, body) = req.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let Some(p) = parse_path(parts.uri.path()) else {
            return status(404, "NotFound", "unknown path");
        };
        let q = query(parts.uri.query());
        let ct = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut st = self.store.lock().unwrap();
        if parts.method != Method::GET {
            st.writes
                .push(format!("{} {}", parts.method, parts.uri.path()));
        }
        let ns = p.ns.clone().unwrap_or_default();
        match (&parts.method, &p.name, p.sub.as_deref()) {
            (&Method::GET, None, _) if q.get("watch").map(String::as_str) == Some("true") => {
                let (tx, rx) = mpsc::unbounded_channel();
                let w = Watcher {
                    kind: p.kind.clone(),
                    ns: p.ns.clone(),
                    field: q
                        .get("fieldSelector")
                        .and_then(|f| f.split_once('='))
                        .map(|(a, b)| (a.to_string(), b.to_string())),
                    tx,
                };
                let since: u64 = q
                    .get("resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                for (rv, kind, ev) in &st.history {
                    if *rv > since {
                        send_to(&w, kind, ev);
                    }
                }
                st.watchers.push(w);
                let stream = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
                Response::builder()
                    .status(200)
                    .header("content-type", "application/json")
                    .body(StreamBody::new(stream).boxed())
                    .unwrap()
            }
            (&Method::GET, None, _) => {
                let field = q.get("fieldSelector").and_then(|f| f.split_once('='));
                let items: Vec<Value> = st
                    .objects
                    .get(&p.kind)
                    .into_iter()
                    .flatten()
                    .filter(|((ons, _), _)| p.ns.as_ref().is_none_or(|n| n == ons))
                    .filter(|(_, v)| field.is_none_or(|(f, want)| field_of(v, f) == Some(want)))
                    .map(|(_, v)| v.clone())
                    .collect();
                respond(
                    StatusCode::OK,
                    &json!({"kind": "List", "apiVersion": "v1",
                            "metadata": {"resourceVersion": st.rv.to_string()}, "items": items}),
                )
            }
            (&Method::GET, Some(name), None) => {
                match st
                    .objects
                    .get(&p.kind)
                    .and_then(|m| m.get(&(ns.clone(), name.clone())))
                {
                    Some(v) => respond(StatusCode::OK, v),
                    None => status(404, "NotFound", &format!("{name} not found")),
                }
            }
            (&Method::POST, None, _) => {
                let mut obj = body;
                if let Some(n) = &p.ns {
                    obj["metadata"]["namespace"] = json!(n);
                }
                if obj["metadata"]["name"].is_null() {
                    if let Some(g) = obj["metadata"]["generateName"].as_str() {
                        obj["metadata"]["name"] = json!(format!("{g}{}", st.rv + 1));
                    }
                }
                let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
                if st
                    .objects
                    .get(&p.kind)
                    .is_some_and(|m| m.contains_key(&(ns.clone(), name.clone())))
                {
                    return status(409, "AlreadyExists", &format!("{name} already exists"));
                }
                let v = st.put(&p.kind, obj, "ADDED");
                respond(StatusCode::CREATED, &v)
            }
            (&Method::POST, Some(name), Some("binding")) => {
                if st.refuse_bind.contains(name) {
                    return status(500, "InternalError", "binding refused by the test");
                }
                let Some(mut pod) = st.object(&p.kind, &ns, name) else {
                    return status(404, "NotFound", "no such pod");
                };
                if pod["spec"]["nodeName"].is_string() {
                    return status(409, "Conflict", "pod is already assigned to a node");
                }
                pod["spec"]["nodeName"] = body["target"]["name"].clone();
                // Like the real API server: the Binding's annotations land on the pod with it.
                if let Some(a) = body["metadata"]["annotations"].as_object() {
                    for (k, v) in a {
                        pod["metadata"]["annotations"][k] = v.clone();
                    }
                }
                st.put(&p.kind, pod, "MODIFIED");
                respond(
                    StatusCode::CREATED,
                    &json!({"kind": "Status", "status": "Success"}),
                )
            }
            (&Method::POST, Some(name), Some("eviction")) => {
                if st.refuse_evict.contains(name) {
                    return status(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                    );
                }
                if st.graceful {
                    let Some(mut pod) = st.object(&p.kind, &ns, name) else {
                        return status(404, "NotFound", "no such pod");
                    };
                    pod["metadata"]["deletionTimestamp"] = json!("2026-11-21T10:00:30Z");
                    st.put(&p.kind, pod, "MODIFIED");
                    return respond(
                        StatusCode::CREATED,
                        &json!({"kind": "Status", "status": "Success"}),
                    );
                }
                match st.remove(&p.kind, &ns, name) {
                    Some(_) => respond(
                        StatusCode::CREATED,
                        &json!({"kind": "Status", "status": "Success"}),
                    ),
                    None => status(404, "NotFound", "no such pod"),
                }
            }
            (&Method::PUT, Some(name), _) => {
                let current = st.object(&p.kind, &ns, name);
                let Some(current) = current else {
                    return status(404, "NotFound", "not found");
                };
                if body["metadata"]["resourceVersion"].is_string()
                    && body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]
                {
                    return status(409, "Conflict", "the object has been modified");
                }
                let mut obj = body;
                obj["metadata"]["namespace"] = current["metadata"]["namespace"].clone();
                let v = st.put(&p.kind, obj, "MODIFIED");
                respond(StatusCode::OK, &v)
            }
            (&Method::PATCH, Some(name), _) => {
                let Some(mut obj) = st.object(&p.kind, &ns, name) else {
                    return status(404, "NotFound", "not found");
                };
                merge(&mut obj, &body, ct.contains("strategic"));
                let v = st.put(&p.kind, obj, "MODIFIED");
                respond(StatusCode::OK, &v)
            }
            (&Method::DELETE, Some(name), None) => match st.remove(&p.kind, &ns, name) {
                Some(v) => respond(StatusCode::OK, &v),
                None => status(404, "NotFound", "not found"),
            },
            _ => status(405, "MethodNotAllowed", "not supported by the fake"),
        }
    }

    fn kind(prefix: &str, res: &str) -> Kind {
        (prefix.to_string(), res.to_string())
    }

    /// Create or replace an object (as a user or another component would).
    pub fn apply(&self, prefix: &str, res: &str, obj: Value) -> Value {
        let mut st = self.store.lock().unwrap();
        let kind = Self::kind(prefix, res);
        let key = key_of(&obj);
        let ty = if st.objects.get(&kind).is_some_and(|m| m.contains_key(&key)) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.put(&kind, obj, ty)
    }

    /// Delete an object.
    pub fn delete(&self, prefix: &str, res: &str, ns: &str, name: &str) {
        self.store
            .lock()
            .unwrap()
            .remove(&Self::kind(prefix, res), ns, name);
    }

    /// Read an object.
    pub fn get(&self, prefix: &str, res: &str, ns: &str, name: &str) -> Option<Value> {
        self.store
            .lock()
            .unwrap()
            .objects
            .get(&Self::kind(prefix, res))
            .and_then(|m| m.get(&(ns.to_string(), name.to_string())))
            .cloned()
    }

    /// All objects of a kind.
    pub fn list(&self, prefix: &str, res: &str) -> Vec<Value> {
        self.store
            .lock()
            .unwrap()
            .objects
            .get(&Self::kind(prefix, res))
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Pods with a node, counted without copying them.
    pub fn bound_pods(&self) -> usize {
        self.store
            .lock()
            .unwrap()
            .objects
            .get(&Self::kind(CORE, "pods"))
            .map(|m| {
                m.values()
                    .filter(|p| p["spec"]["nodeName"].is_string())
                    .count()
            })
            .unwrap_or(0)
    }

    /// Every write so far (`POST /api/v1/namespaces/ml/pods/w-0/binding`, …).
    pub fn writes(&self) -> Vec<String> {
        self.store.lock().unwrap().writes.clone()
    }

    /// Refuse (true) or allow again (false) the eviction of this pod name.
    pub fn refuse_evict(&self, pod: &str, refuse: bool) {
        let mut st = self.store.lock().unwrap();
        st.refuse_evict.retain(|p| p != pod);
        if refuse {
            st.refuse_evict.push(pod.to_string());
        }
    }

    /// Evictions leave the pod terminating (deletionTimestamp set) until the test deletes it.
    pub fn graceful_evictions(&self) {
        self.store.lock().unwrap().graceful = true;
    }

    /// Every device uuid held by two pods present in the store (bound or terminating).
    pub fn devices_held_twice(&self) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        let mut twice = Vec::new();
        for p in self.list(CORE, "pods") {
            if !p["spec"]["nodeName"].is_string() {
                continue;
            }
            let devs: Vec<String> = p["metadata"]["annotations"]["gantry.dev/devices"]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            for d in devs {
                if !seen.insert(d.clone()) {
                    twice.push(d);
                }
            }
        }
        twice
    }

    /// Refuse the binding of this pod name from now on.
    pub fn refuse_bind(&self, pod: &str) {
        self.store.lock().unwrap().refuse_bind.push(pod.to_string());
    }

    /// Poll `check` until it returns `Some`, or panic with `what` after `secs` seconds.
    pub async fn wait_for<T>(
        &self,
        secs: u64,
        what: &str,
        mut check: impl FnMut(&FakeApi) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("timed out waiting for {what}; writes: {:#?}", self.writes());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

// ---------------------------------------------------------------- object builders

pub const CORE: &str = "api/v1";
pub const GANTRY: &str = "apis/gantry.dev/v1alpha1";
pub const LEASES: &str = "apis/coordination.k8s.io/v1";

/// A ready Node with 96 CPUs and 1 TiB, labelled with its rack.
pub fn node(name: &str, rack: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"rack": rack}},
        "spec": {},
        "status": {"allocatable": {"cpu": "96", "memory": "1Ti"},
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// The inventory of `gpus` H100s on `node`, one NVLink domain; `unhealthy` indexes marked so.
pub fn inventory(node: &str, gpus: u32, unhealthy: &[u32]) -> Value {
    let devices: Vec<Value> = (0..gpus)
        .map(|i| {
            json!({"uuid": format!("GPU-{node}-{i}"), "model": "h100-80gb", "memory_mib": 81559,
                   "nvlink_domain": format!("{node}-nvl"),
                   "health": if unhealthy.contains(&i) { "Unhealthy" } else { "Healthy" }})
        })
        .collect();
    json!({
        "apiVersion": "gantry.dev/v1alpha1", "kind": "NodeInventory",
        "metadata": {"name": node},
        "spec": {"devices": devices, "gpus": gpus, "healthy": gpus - unhealthy.len() as u32, "models": "h100-80gb"}
    })
}

/// A Node with labels (its hostname label included) and taints (`[{key, value, effect}]`).
pub fn node_with(name: &str, labels: Value, taints: Value) -> Value {
    let mut n = node(name, "r0");
    let mut l = labels;
    l["kubernetes.io/hostname"] = json!(name);
    n["metadata"]["labels"] = l;
    n["spec"]["taints"] = taints;
    n
}

/// The inventory of `gpus` GPUs of `model` on `node`, one NVLink domain, all healthy.
pub fn inventory_of(node: &str, gpus: u32, model: &str) -> Value {
    let mut inv = inventory(node, gpus, &[]);
    for d in inv["spec"]["devices"].as_array_mut().expect("devices") {
        d["model"] = json!(model);
    }
    inv["spec"]["models"] = json!(model);
    inv
}

/// A Queue with an H100 quota. `None`: no quota entry; a root made so lets its queues use
/// flavors they do not list (`unlistedFlavors: allow`), as cohorts in these tests always did.
pub fn queue(name: &str, parent: Option<&str>, nominal: Option<f64>) -> Value {
    let mut spec = json!({"quotas": {}});
    if let Some(p) = parent {
        spec["parent"] = json!(p);
    } else if nominal.is_none() {
        spec["unlistedFlavors"] = json!("allow");
    }
    if let Some(n) = nominal {
        spec["quotas"]["h100-80gb"] = json!({"nominal": n});
    }
    json!({"apiVersion": "gantry.dev/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": spec})
}

/// A PodGroup.
pub fn pod_group(ns: &str, name: &str, min: u32, queue: &str, class: &str) -> Value {
    json!({
        "apiVersion": "gantry.dev/v1alpha1", "kind": "PodGroup",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"minMember": min, "queue": queue, "priorityClassName": class}
    })
}

/// A pod for gantry asking for `gpus` whole GPUs, in `group` (or in `queue` when alone).
pub fn pod(ns: &str, name: &str, gpus: u32, group: Option<&str>, queue: Option<&str>) -> Value {
    let mut labels = json!({});
    if let Some(g) = group {
        labels["gantry.dev/pod-group"] = json!(g);
    }
    if let Some(q) = queue {
        labels["gantry.dev/queue"] = json!(q);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"schedulerName": "gantry", "containers": [{
            "name": "main", "image": "trainer",
            "resources": {"requests": {"cpu": "4", "memory": "16Gi"},
                          "limits": {"nvidia.com/gpu": gpus.to_string()}}}]},
        "status": {"phase": "Pending"}
    })
}

/// The node a pod is bound to.
pub fn node_of(api: &FakeApi, ns: &str, name: &str) -> Option<String> {
    api.get(CORE, "pods", ns, name)?["spec"]["nodeName"]
        .as_str()
        .map(str::to_string)
}

/// The device uuids the scheduler annotated on a pod.
pub fn devices_of(api: &FakeApi, ns: &str, name: &str) -> Vec<String> {
    api.get(CORE, "pods", ns, name)
        .and_then(|p| {
            p["metadata"]["annotations"]["gantry.dev/devices"]
                .as_str()
                .map(str::to_string)
        })
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}
