//! The web dashboard in Kubernetes mode, read-only, on the controller's metrics port.
//!
//! The mirror is owned by the controller's loop, so the pages never touch it: while someone
//! looked at a page in the last minute, the loop builds a board from the mirror at most once a
//! second after a change ([`Publisher::publish`]) and hands it over; a page renders the latest
//! board. Start estimates replay the engine, so they are refreshed at most every 10 s. Events
//! are the ones the controller itself wrote (the last 2,000), so a job's page shows what
//! `kubectl describe` shows of gantry's decisions.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gantry_dashboard::render::Page;
use gantry_dashboard::web::{Source, Viewer};
use gantry_dashboard::{
    nodes_from, queues_from, waiting_of, Board, EventView, History, JobView, Sample, TaskView,
    Waiting,
};
use gantry_engine::{JobPhase, NamedAlloc, NamedGpu, Profile};
use tokio::sync::watch;

use crate::mirror::{EventAction, Mirror, Regarding};
use crate::translate::{JobKey, PodState};

/// Events kept.
const EVENTS_KEPT: usize = 2_000;
/// A board is built only while someone looked within this long.
const WANTED_FOR: Duration = Duration::from_secs(60);
/// Most often a board is built.
const EVERY: Duration = Duration::from_secs(1);
/// Most often start estimates are refreshed.
const ESTIMATES_EVERY: Duration = Duration::from_secs(10);

/// The pages' side: the latest board.
#[derive(Debug)]
pub struct KubeSource {
    boards: watch::Receiver<Arc<Board>>,
    /// Set when a page is asked for after a quiet spell: the loop builds a board at once.
    refresh: Arc<AtomicBool>,
    /// When a page was last asked for (ms since `epoch`), so the loop builds boards only then.
    asked: Arc<AtomicU64>,
    epoch: std::time::Instant,
}

/// The loop's side: builds and hands over boards.
#[derive(Debug)]
pub struct Publisher {
    tx: watch::Sender<Arc<Board>>,
    refresh: Arc<AtomicBool>,
    asked: Arc<AtomicU64>,
    epoch: std::time::Instant,
    last: Option<std::time::Instant>,
    estimates: BTreeMap<String, Option<u64>>,
    estimated: Option<std::time::Instant>,
    events: VecDeque<EventView>,
    history: History,
    sampled: Option<std::time::Instant>,
    dirty: bool,
}

/// A source for the dashboard's routes and the publisher the controller loop feeds.
pub fn channel() -> (Arc<KubeSource>, Publisher) {
    let (tx, rx) = watch::channel(Arc::new(Board {
        driver: "gantry kube controller".into(),
        read_only: true,
        notes: vec!["The controller has not built a board yet; this page updates itself.".into()],
        ..Board::default()
    }));
    let asked = Arc::new(AtomicU64::new(0));
    let refresh = Arc::new(AtomicBool::new(false));
    let epoch = std::time::Instant::now();
    (
        Arc::new(KubeSource {
            boards: rx,
            refresh: refresh.clone(),
            asked: asked.clone(),
            epoch,
        }),
        Publisher {
            tx,
            refresh,
            asked,
            epoch,
            last: None,
            estimates: BTreeMap::new(),
            estimated: None,
            events: VecDeque::new(),
            history: History::default(),
            sampled: None,
            dirty: true,
        },
    )
}

/// The dashboard's routes for the metrics server.
pub fn router(source: Arc<KubeSource>) -> axum::Router {
    gantry_dashboard::web::router(source)
}

impl Source for KubeSource {
    fn board(&self, _page: &Page, _viewer: Option<&Viewer>) -> Arc<Board> {
        self.asked.store(
            self.epoch.elapsed().as_millis() as u64 + 1,
            Ordering::Relaxed,
        );
        self.boards.borrow().clone()
    }

    fn fresh(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        // Nobody looked for a while: the board may be old. Ask the loop for one and wait for
        // it (a turn of the loop takes at most its tick, a second by default).
        let now = self.epoch.elapsed().as_millis() as u64 + 1;
        let before = self.asked.swap(now, Ordering::Relaxed);
        if before > 0 && now <= before + WANTED_FOR.as_millis() as u64 {
            return Box::pin(std::future::ready(()));
        }
        self.refresh.store(true, Ordering::Relaxed);
        let mut rx = self.boards.clone();
        rx.mark_unchanged();
        Box::pin(async move {
            let _ = tokio::time::timeout(Duration::from_secs(3), rx.changed()).await;
        })
    }

    fn changed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let mut rx = self.boards.clone();
        rx.mark_unchanged();
        Box::pin(async move {
            let _ = rx.changed().await;
        })
    }

    fn has_services(&self) -> bool {
        false
    }

    fn needs_token(&self) -> bool {
        false
    }

    fn viewer(&self, _token: &str) -> Option<Viewer> {
        None
    }
}

fn describe_gpu(a: &NamedAlloc) -> Vec<String> {
    match &a.gpu {
        NamedGpu::None => Vec::new(),
        NamedGpu::Whole(u) => u.clone(),
        NamedGpu::Shared { uuid, milli } => vec![format!("{uuid} ({}%)", milli / 10)],
        NamedGpu::Mig { uuid, start, .. } => vec![format!("{uuid} MIG slice at {start}")],
    }
}

/// What a job's pods ask for, in words: `3 pods × 8 GPUs (h100-80gb)`.
fn request_of(pods: &[&crate::translate::PodInfo]) -> String {
    let mut shapes: Vec<(String, u32)> = Vec::new();
    for p in pods {
        let d = &p.demand;
        let mut t = match (&d.mig, d.gpus) {
            (Some(m), _) => format!("MIG {m}"),
            (None, 0) => "no GPU".to_string(),
            (None, 1) => "1 GPU".to_string(),
            (None, n) => format!("{n} GPUs"),
        };
        if !d.gpu_models.is_empty() {
            t += &format!(" ({})", d.gpu_models.join(" or "));
        }
        match shapes.iter_mut().find(|(s, _)| *s == t) {
            Some((_, n)) => *n += 1,
            None => shapes.push((t, 1)),
        }
    }
    shapes
        .into_iter()
        .map(|(t, n)| format!("{n} pod{} × {t}", if n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Publisher {
    /// Keep the events the controller is about to write, by job.
    pub fn record_events(&mut self, mirror: &Mirror, events: &[EventAction], now_ms: u64) {
        for e in events {
            let job = match &e.regarding {
                Regarding::Pod(p) => mirror.pods.get(p).map(|i| i.job.clone()),
                Regarding::PodGroup(ns, n) => Some(JobKey::Group(ns.clone(), n.clone())),
                Regarding::Queue(_) => None,
            };
            let queue = match (&e.regarding, &job) {
                (Regarding::Queue(q), _) => q.clone(),
                (_, Some(j)) => mirror
                    .jobs
                    .get(j)
                    .and_then(|x| x.id)
                    .map(|id| {
                        let s = mirror.snapshot();
                        s.queue_name(s.job_queue(id)).to_string()
                    })
                    .unwrap_or_default(),
                _ => String::new(),
            };
            self.events.push_back(EventView {
                at_ms: now_ms,
                job: job.as_ref().map(JobKey::engine_name).unwrap_or_default(),
                queue,
                kind: e.reason.clone(),
                message: match &e.regarding {
                    Regarding::Pod(p) => format!("pod {p}: {}", e.note),
                    _ => e.note.clone(),
                },
                warning: e.warning,
            });
        }
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
        self.dirty |= !events.is_empty();
    }

    /// Something the board shows may have changed.
    pub fn touch(&mut self) {
        self.dirty = true;
    }

    /// Build and hand over a board when someone is looking, something changed and the last
    /// one is at least a second old; take a history sample once a minute either way.
    pub fn publish(&mut self, mirror: &Mirror, profile: &Profile, leader: bool, now_ms: u64) {
        let now = std::time::Instant::now();
        if self
            .sampled
            .is_none_or(|t| now.duration_since(t) >= gantry_dashboard::history::SAMPLE_EVERY)
        {
            self.sampled = Some(now);
            let snap = mirror.snapshot();
            let nodes = nodes_from(snap, &|j| snap.job_name(j).to_string());
            let wanted = mirror
                .job_ids()
                .filter(|&j| snap.job_phase(j) == JobPhase::Pending)
                .map(|j| snap.job_task_counts(j).0)
                .sum();
            self.history.push(Sample::of(&nodes, wanted, now_ms));
        }
        if self.refresh.swap(false, Ordering::Relaxed) {
            // A page waits for a fresh board.
            self.dirty = true;
            self.last = None;
        }
        let asked = self.asked.load(Ordering::Relaxed);
        let looked = asked > 0
            && self.epoch.elapsed().as_millis() as u64 <= asked + WANTED_FOR.as_millis() as u64;
        if !looked || !self.dirty || self.last.is_some_and(|t| now.duration_since(t) < EVERY) {
            return;
        }
        self.last = Some(now);
        self.dirty = false;
        let board = self.build(mirror, profile, leader, now_ms);
        self.tx.send_replace(Arc::new(board));
    }

    fn build(&mut self, mirror: &Mirror, profile: &Profile, leader: bool, now_ms: u64) -> Board {
        let snap = mirror.snapshot();
        let keyed: Vec<(&JobKey, Option<gantry_engine::JobId>)> =
            mirror.jobs.iter().map(|(k, e)| (k, e.id)).collect();
        let ids: Vec<_> = keyed.iter().filter_map(|(_, id)| *id).collect();
        let refresh = self
            .estimated
            .is_none_or(|t| t.elapsed() >= ESTIMATES_EVERY);
        let waiting: Vec<Option<Waiting>> =
            waiting_of(snap, &ids, refresh.then_some(profile), now_ms);
        let mut by_id: BTreeMap<u32, Waiting> = BTreeMap::new();
        for (id, w) in ids.iter().zip(waiting) {
            let Some(mut w) = w else { continue };
            let key = snap.job_name(*id).to_string();
            if refresh {
                self.estimates.insert(key, w.estimated_start_ms);
            } else if w.estimated_start_ms.is_none() {
                w.estimated_start_ms = self.estimates.get(&key).copied().flatten();
            }
            by_id.insert(id.0, w);
        }
        if refresh {
            self.estimated = Some(std::time::Instant::now());
        }
        let mut jobs: Vec<JobView> = keyed
            .iter()
            .map(|(key, id)| {
                let engine = key.engine_name();
                let pods: Vec<_> = mirror
                    .pods_of
                    .get(*key)
                    .into_iter()
                    .flatten()
                    .filter_map(|p| mirror.pods.get(p))
                    .collect();
                let phase = id.map(|id| snap.job_phase(id));
                let own_reason = mirror.jobs.get(*key).and_then(|e| e.reason.clone());
                let (wanted, _) = id.map_or((pods.len() as u32, 0), |id| snap.job_task_counts(id));
                let submitted = id.map_or(0, |id| snap.job_times(id).0);
                JobView {
                    key: engine.clone(),
                    name: match key {
                        JobKey::Group(ns, n) => format!("{ns}/{n}"),
                        JobKey::Pod(p) => p.to_string(),
                    },
                    queue: id
                        .map(|id| snap.queue_name(snap.job_queue(id)).to_string())
                        .or_else(|| pods.iter().find_map(|p| p.queue.clone()))
                        .unwrap_or_default(),
                    user: String::new(),
                    kind: match key {
                        JobKey::Group(..) => "pod group".into(),
                        JobKey::Pod(_) => "pod".into(),
                    },
                    state: match phase {
                        Some(JobPhase::Pending) | None => "pending",
                        Some(_) => "running",
                    }
                    .into(),
                    attempt: 0,
                    // The reason the API shows (a blocked preemption says so), where the
                    // mirror has one.
                    waiting: id.and_then(|id| by_id.get(&id.0).cloned()).map(|mut w| {
                        if let Some(r) = &own_reason {
                            w.reason = r.clone();
                        }
                        w
                    }),
                    reason: own_reason.clone().unwrap_or_default(),
                    exit_code: None,
                    submitted_ms: submitted,
                    started_ms: id.and_then(|id| snap.job_times(id).1),
                    finished_ms: None,
                    tasks_wanted: wanted,
                    gpu_milli: pods.iter().map(|p| u64::from(p.demand.gpus) * 1000).sum(),
                    slices: pods.iter().filter(|p| p.demand.mig.is_some()).count() as u32,
                    request: request_of(&pods),
                    tasks: pods
                        .iter()
                        .map(|p| {
                            let alloc = p
                                .allocation
                                .as_ref()
                                .or_else(|| mirror.in_flight.get(&p.key));
                            TaskView {
                                name: p.key.name.clone(),
                                node: p.node.clone().unwrap_or_default(),
                                devices: alloc.map(describe_gpu).unwrap_or_default(),
                                phase: match (p.state, &p.node) {
                                    (PodState::Live, Some(_)) => "bound",
                                    (PodState::Live, None)
                                        if mirror.in_flight.contains_key(&p.key) =>
                                    {
                                        "binding"
                                    }
                                    (PodState::Live, None) => "waiting",
                                    (PodState::Terminating, _) => "terminating",
                                    (PodState::Succeeded, _) => "succeeded",
                                    (PodState::Gone, _) => "gone",
                                }
                                .into(),
                            }
                        })
                        .collect(),
                    events: self
                        .events
                        .iter()
                        .filter(|e| e.job == engine)
                        .cloned()
                        .collect(),
                    output: Vec::new(),
                }
            })
            .collect();
        jobs.sort_by(|a, b| {
            b.submitted_ms
                .cmp(&a.submitted_ms)
                .then_with(|| a.name.cmp(&b.name))
        });
        let mut notes = Vec::new();
        if !leader {
            notes.push(
                "This replica does not hold the lease: it shows its own mirror of the cluster; \
                 the leader schedules."
                    .to_string(),
            );
        }
        for (q, why) in mirror.invalid_queues() {
            notes.push(format!("Queue {q} is left out of the tree: {why}"));
        }
        Board {
            driver: "gantry kube controller".into(),
            read_only: true,
            now_ms,
            nodes: nodes_from(snap, &|j| snap.job_name(j).to_string()),
            queues: queues_from(snap),
            jobs,
            services: None,
            events: self.events.iter().rev().cloned().collect(),
            history: self.history.samples(),
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::tests::{mirror, pod};
    use gantry_dashboard::render::{content, Query};
    use serde_json::json;

    #[test]
    fn boards_show_the_mirrors_jobs_devices_reasons_and_events_once_someone_looks() {
        let (source, mut publisher) = channel();
        let mut m = mirror(&[("n0", 8)]);
        m.upsert_queue(
            serde_json::from_value(json!({"metadata": {"name": "q"},
                "spec": {"quotas": {"h100-80gb": {"nominal": 1}}}}))
            .unwrap(),
        );
        let q = json!({"gantry.dev/queue": "q"});
        m.upsert_pod(&pod("a", 1, q.clone(), json!({}), None));
        let a = m.cycle(1_000);
        publisher.record_events(&m, &a.events, 1_000);
        assert_eq!(a.binds.len(), 1);
        m.upsert_pod(&pod("b", 1, q.clone(), json!({}), None));
        let b = m.cycle(2_000);
        publisher.record_events(&m, &b.events, 2_000);
        let profile = Profile::gantry();
        // Nobody looked yet: no board is built.
        publisher.publish(&m, &profile, true, 2_000);
        assert!(source.boards.borrow().jobs.is_empty());
        // A page asks after a quiet spell: it waits for the next turn of the loop, which
        // builds one at once.
        let waiting = source.fresh();
        publisher.publish(&m, &profile, false, 2_000);
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(async { tokio::time::timeout(Duration::from_secs(1), waiting).await })
            .expect("the page had its board within a second");
        let board = source.board(&Page::Jobs, None);
        let waiting = board.job("pod_ml_b").expect("b");
        let w = waiting.waiting.as_ref().expect("b waits");
        assert!(w.reason.contains("quota"), "{w:?}");
        assert_eq!(waiting.name, "ml/b");
        assert!(
            waiting.events.iter().any(|e| e.kind == "FailedScheduling"),
            "{:?}",
            waiting.events
        );
        let bound = board.job("pod_ml_a").expect("a");
        assert_eq!(bound.state, "running");
        assert_eq!(bound.tasks[0].devices.len(), 1, "{:?}", bound.tasks);
        assert!(
            board
                .notes
                .iter()
                .any(|n| n.contains("does not hold the lease")),
            "a standby says so"
        );
        let map = content(&Page::Gpus, &board, &Query::new());
        assert_eq!(map.matches("used by pod_ml_a").count(), 1, "{map}");
        assert!(board.read_only && board.services.is_none());
    }
}
