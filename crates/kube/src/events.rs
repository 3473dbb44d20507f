//! Events users see with `kubectl describe`, written off the critical path.
//!
//! kube-scheduler's conventions: `events.k8s.io/v1` Events whose `regarding` names the object
//! **with its uid** (kubectl's describe finds events by name, namespace, kind and uid, so an
//! event without the uid is invisible there), reporting controller `gantry-scheduler`, and
//! isomorphic events (same object, type, reason **and note**) folded into one series whose count
//! goes up, for six minutes. A changed message is a new event, never an old series with an
//! outdated note.
//!
//! [`EventSink::record`] only queues. One task writes the queue with its own token bucket
//! (`--event-qps`), so events never delay a bind; when the queue is full the oldest event is
//! dropped and `gantry_events_dropped_total` counts it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use tokio::sync::Notify;

use crate::apply::{RateLimiter, WriterConfig};
use crate::metrics::Metrics;
use crate::mirror::{EventAction, Regarding};

/// The `reportingController` of gantry's events.
pub const REPORTING_CONTROLLER: &str = "gantry-scheduler";
/// Events kept waiting at most; beyond this the oldest is dropped.
const QUEUE_CAP: usize = 8192;
/// How long isomorphic events fold into one series.
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// The object reference an event is about, uid included.
pub fn reference(r: &Regarding, uid: &str) -> ObjectReference {
    let uid = (!uid.is_empty()).then(|| uid.to_string());
    match r {
        Regarding::Pod(p) => ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(p.ns.clone()),
            name: Some(p.name.clone()),
            uid,
            ..Default::default()
        },
        Regarding::PodGroup(ns, name) => ObjectReference {
            api_version: Some("gantry.dev/v1alpha1".into()),
            kind: Some("PodGroup".into()),
            namespace: Some(ns.clone()),
            name: Some(name.clone()),
            uid,
            ..Default::default()
        },
        Regarding::Queue(name) => ObjectReference {
            api_version: Some("gantry.dev/v1alpha1".into()),
            kind: Some("Queue".into()),
            name: Some(name.clone()),
            uid,
            ..Default::default()
        },
    }
}

/// The namespace an event about `r` lives in (cluster-scoped objects: `default`, as kubectl
/// looks there for them).
fn namespace_of(r: &Regarding) -> String {
    match r {
        Regarding::Pod(p) => p.ns.clone(),
        Regarding::PodGroup(ns, _) => ns.clone(),
        Regarding::Queue(_) => "default".into(),
    }
}

/// The series key: object, type, reason and note.
type Key = (String, String, bool, String, String);

fn key_of(ev: &EventAction) -> Key {
    let r = reference(&ev.regarding, &ev.uid);
    (
        format!(
            "{}/{}/{}",
            r.kind.unwrap_or_default(),
            r.namespace.unwrap_or_default(),
            r.name.unwrap_or_default()
        ),
        ev.uid.clone(),
        ev.warning,
        ev.reason.clone(),
        ev.note.clone(),
    )
}

#[derive(Debug, Clone)]
struct Seen {
    name: String,
    namespace: String,
    count: i32,
    last: Instant,
}

/// What to write for one event: a new Event, or the next count of a series.
#[derive(Debug, Clone, PartialEq)]
enum Write {
    Create(Box<Event>),
    Series {
        name: String,
        namespace: String,
        count: i32,
    },
}

/// The series bookkeeping, apart from the I/O.
#[derive(Debug, Default)]
struct Series {
    seen: HashMap<Key, Seen>,
    made: u64,
}

impl Series {
    /// Decide what to write for `ev` at `now` (a repeat within the window bumps its series).
    fn next(&mut self, ev: &EventAction, instance: &str, now: Instant) -> Write {
        if self.seen.len() > 4 * QUEUE_CAP {
            self.seen
                .retain(|_, s| now.duration_since(s.last) < SERIES_WINDOW);
        }
        let key = key_of(ev);
        if let Some(s) = self.seen.get_mut(&key) {
            if now.duration_since(s.last) < SERIES_WINDOW {
                s.count += 1;
                s.last = now;
                return Write::Series {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    count: s.count,
                };
            }
        }
        let regarding = reference(&ev.regarding, &ev.uid);
        let namespace = namespace_of(&ev.regarding);
        self.made += 1;
        let stamp = k8s_openapi::jiff::Timestamp::now();
        let name = format!(
            "{}.{:x}{:04x}",
            regarding.name.clone().unwrap_or_default(),
            stamp.as_nanosecond(),
            self.made & 0xffff
        );
        self.seen.insert(
            key,
            Seen {
                name: name.clone(),
                namespace: namespace.clone(),
                count: 1,
                last: now,
            },
        );
        Write::Create(Box::new(Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(namespace),
                ..Default::default()
            },
            event_time: Some(MicroTime(stamp)),
            action: Some(ev.action().into()),
            reason: Some(ev.reason.clone()),
            note: Some(truncate(&ev.note, 1000)),
            type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
            regarding: Some(regarding),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(instance.to_string()),
            ..Default::default()
        }))
    }
}

struct Shared {
    queue: Mutex<VecDeque<EventAction>>,
    notify: Notify,
    metrics: Metrics,
}

/// Queues events and writes them in the background; see the module docs.
#[derive(Clone)]
pub struct EventSink {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSink").finish_non_exhaustive()
    }
}

impl EventSink {
    /// A sink writing with `client` as `cfg.instance`, and its writer task.
    pub fn start(
        client: Client,
        cfg: &WriterConfig,
        metrics: Metrics,
    ) -> (EventSink, tokio::task::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(VecDeque::new()),
            notify: Notify::new(),
            metrics,
        });
        let limiter = RateLimiter::new(cfg.event_qps, cfg.event_burst);
        let task = tokio::spawn(write_loop(
            client,
            shared.clone(),
            limiter,
            cfg.instance.clone(),
            cfg.timeout,
        ));
        (EventSink { shared }, task)
    }

    /// Queue one event (the oldest is dropped when the queue is full).
    pub fn record(&self, ev: EventAction) {
        let Ok(mut q) = self.shared.queue.lock() else {
            return;
        };
        if q.len() >= QUEUE_CAP {
            q.pop_front();
            self.shared.metrics.events_dropped.inc();
        }
        q.push_back(ev);
        drop(q);
        self.shared.notify.notify_one();
    }
}

async fn write_loop(
    client: Client,
    shared: Arc<Shared>,
    limiter: RateLimiter,
    instance: String,
    timeout: Duration,
) {
    let mut series = Series::default();
    loop {
        let batch: Vec<EventAction> = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            let n = q.len().min(256);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            shared.notify.notified().await;
            continue;
        }
        let now = Instant::now();
        let writes: Vec<Write> = batch
            .iter()
            .map(|ev| series.next(ev, &instance, now))
            .collect();
        let client = &client;
        let limiter = &limiter;
        let metrics = &shared.metrics;
        futures::stream::iter(writes)
            .for_each_concurrent(8, |w| async move {
                limiter.acquire().await;
                let r = match &w {
                    Write::Create(ev) => {
                        let ns = ev.metadata.namespace.clone().unwrap_or_default();
                        let api: Api<Event> = Api::namespaced(client.clone(), &ns);
                        tokio::time::timeout(timeout, api.create(&PostParams::default(), ev))
                            .await
                            .map(|r| r.map(|_| ()))
                    }
                    Write::Series {
                        name,
                        namespace,
                        count,
                    } => {
                        let api: Api<Event> = Api::namespaced(client.clone(), namespace);
                        let patch = serde_json::json!({"series": EventSeries {
                            count: *count,
                            last_observed_time: MicroTime(k8s_openapi::jiff::Timestamp::now()),
                        }});
                        tokio::time::timeout(
                            timeout,
                            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
                        )
                        .await
                        .map(|r| r.map(|_| ()))
                    }
                };
                match r {
                    Ok(Ok(())) => metrics.events.inc(),
                    Ok(Err(e)) => tracing::debug!(error = %e, "cannot record event"),
                    Err(_) => tracing::debug!("event write timed out"),
                }
            })
            .await;
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::PodKey;

    fn ev(note: &str) -> EventAction {
        EventAction {
            regarding: Regarding::Pod(PodKey {
                ns: "ml".into(),
                name: "p".into(),
            }),
            uid: "u-1".into(),
            warning: true,
            reason: "FailedScheduling".into(),
            note: note.into(),
        }
    }

    #[test]
    fn a_repeat_bumps_the_series_and_a_new_message_is_a_new_event() {
        let mut s = Series::default();
        let t0 = Instant::now();
        let Write::Create(first) = s.next(&ev("quota"), "i", t0) else {
            panic!("first is a create")
        };
        assert_eq!(
            first.regarding.as_ref().unwrap().uid.as_deref(),
            Some("u-1")
        );
        assert_eq!(first.note.as_deref(), Some("quota"));
        assert_eq!(
            s.next(&ev("quota"), "i", t0),
            Write::Series {
                name: first.metadata.name.clone().unwrap(),
                namespace: "ml".into(),
                count: 2
            }
        );
        // The reason text changed: a new event with the new text, not count 3 of the old one.
        let Write::Create(second) = s.next(&ev("no capacity"), "i", t0) else {
            panic!("a changed note is a new event")
        };
        assert_eq!(second.note.as_deref(), Some("no capacity"));
        assert_ne!(second.metadata.name, first.metadata.name);
        // After the window, the same text starts a new series.
        let later = t0 + SERIES_WINDOW + Duration::from_secs(1);
        assert!(matches!(s.next(&ev("quota"), "i", later), Write::Create(_)));
    }

    #[test]
    fn queue_events_live_in_default_and_long_notes_are_cut_on_a_char_boundary() {
        assert_eq!(namespace_of(&Regarding::Queue("q".into())), "default");
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
