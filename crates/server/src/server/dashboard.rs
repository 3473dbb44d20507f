//! `gantry serve`'s side of the web dashboard (`gantry-dashboard`), on the metrics port beside
//! `/metrics`: a [`Source`] that builds boards from the server's state. What the engine knows
//! (every device and its holder, the queue tree, why a job waits, its place and estimated
//! start) comes from the snapshot through the shared helpers; what only serve knows comes from
//! its records: who submitted a job, its tasks' devices and phases, exit codes, events, the
//! tail of each task's output, inference services.
//!
//! With `--tokens`, pages need a session (see `gantry_dashboard::web`); a member's board is
//! restricted to their teams' queues, as through the API.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use gantry_dashboard::render::Page;
use gantry_dashboard::web::{Source, Viewer};
use gantry_dashboard::{
    nodes_from, queues_from, waiting_of, Board, EventView, JobView, Sample, ServiceView, TaskView,
};

use super::{flavor_warnings, now_ms, Server};
use crate::record::{JobState, TaskPhase};
use crate::state::{Event, State};

/// Events kept for the dashboard (all jobs together, newest last).
pub(crate) const EVENTS_KEPT: usize = 2_000;

/// The dashboard's routes, for the metrics server.
pub(crate) fn router(server: Server) -> axum::Router {
    gantry_dashboard::web::router(Arc::new(ServeSource(server)))
}

struct ServeSource(Server);

impl Source for ServeSource {
    fn board(&self, page: &Page, viewer: Option<&Viewer>) -> Arc<Board> {
        Arc::new(self.0.board(page, viewer))
    }

    fn changed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        let mut rx = self.0.shared.changes.subscribe();
        Box::pin(async move {
            let _ = rx.changed().await;
        })
    }

    fn has_services(&self) -> bool {
        true
    }

    fn needs_token(&self) -> bool {
        self.0.shared.config.auth.is_some()
    }

    fn viewer(&self, token: &str) -> Option<Viewer> {
        let auth = self.0.shared.config.auth.as_ref()?;
        auth.by_token(token).map(|c| Viewer {
            user: c.user.clone(),
            teams: c.teams.clone(),
            admin: c.role == crate::auth::Role::Admin,
        })
    }
}

fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Pending => "pending",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
    }
}

fn event_view(e: &Event) -> EventView {
    EventView {
        at_ms: e.at_ms,
        job: e.job.clone(),
        queue: e.queue.clone(),
        kind: e.kind.to_string(),
        message: e.message.clone(),
        warning: matches!(e.kind, "failed" | "preempted" | "requeued"),
    }
}

impl Server {
    /// Take one point of the history (GPUs held and wanted).
    pub(crate) fn sample_history(&self) {
        let sample = {
            let st = self.lock();
            let nodes = nodes_from(&st.snap, &|j| st.snap.job_name(j).to_string());
            Sample::of(&nodes, wanted_gpus(&st), now_ms())
        };
        self.shared.history.push(sample);
    }

    /// Keep the events of one change for the dashboard.
    pub(crate) fn keep_events(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        if let Ok(mut kept) = self.shared.recent_events.lock() {
            kept.extend(events.iter().cloned());
            while kept.len() > EVENTS_KEPT {
                kept.pop_front();
            }
        }
    }

    fn board(&self, page: &Page, viewer: Option<&Viewer>) -> Board {
        let now = now_ms();
        let events: Vec<Event> = self
            .shared
            .recent_events
            .lock()
            .map(|e| e.iter().cloned().collect())
            .unwrap_or_default();
        let st = self.lock();
        let nodes = nodes_from(&st.snap, &|j| st.snap.job_name(j).to_string());
        let queues = queues_from(&st.snap)
            .into_iter()
            .map(|mut q| {
                if let Some(spec) = st.queues.get(&q.report.name) {
                    q.warnings = flavor_warnings(spec, &st);
                }
                q
            })
            .collect();
        // Why jobs wait (and, on the job pages, when they should start): one replay for all.
        let names: Vec<&String> = match page {
            Page::Job(k) => st.order.values().filter(|n| *n == k).collect(),
            _ => st.order.values().rev().collect(),
        };
        let wants_waiting = matches!(page, Page::Jobs | Page::Job(_) | Page::Queue(_));
        let ids: Vec<_> = names
            .iter()
            .filter_map(|n| st.jobs.get(*n).and_then(|e| e.id))
            .collect();
        let waiting: BTreeMap<u32, gantry_dashboard::Waiting> = if wants_waiting {
            ids.iter()
                .zip(waiting_of(&st.snap, &ids, Some(&st.profile), now))
                .filter_map(|(id, w)| w.map(|w| (id.0, w)))
                .collect()
        } else {
            BTreeMap::new()
        };
        let node_recs: BTreeMap<_, _> = st
            .nodes
            .iter()
            .map(|(k, n)| (k.clone(), n.rec.clone()))
            .collect();
        let mut jobs: Vec<JobView> = names
            .iter()
            .filter_map(|n| st.jobs.get(*n))
            .map(|e| {
                let r = &e.rec;
                let mut job_events: Vec<EventView> = events
                    .iter()
                    .filter(|ev| ev.job == r.name && ev.at_ms >= r.submitted_ms)
                    .map(event_view)
                    .collect();
                if job_events.is_empty() {
                    // Events are kept in memory; after a restart, what the record says.
                    let ev = |at_ms, kind: &str| EventView {
                        at_ms,
                        job: r.name.clone(),
                        queue: r.spec.queue.clone(),
                        kind: kind.into(),
                        message: String::new(),
                        warning: false,
                    };
                    job_events.push(ev(r.submitted_ms, "submitted"));
                    job_events.extend(r.started_ms.map(|t| ev(t, "started")));
                    job_events.extend(r.finished_ms.map(|t| ev(t, state_name(r.state))));
                }
                let finished = matches!(r.state, JobState::Succeeded | JobState::Failed);
                JobView {
                    key: r.name.clone(),
                    name: r.name.clone(),
                    queue: r.spec.queue.clone(),
                    user: r.user.clone(),
                    kind: format!("{:?}", r.spec.kind).to_lowercase(),
                    state: state_name(r.state).into(),
                    attempt: r.attempt,
                    waiting: e.id.and_then(|id| waiting.get(&id.0).cloned()),
                    reason: r.reason.clone(),
                    exit_code: finished.then_some(r.exit_code),
                    submitted_ms: r.submitted_ms,
                    started_ms: r.started_ms,
                    finished_ms: r.finished_ms,
                    tasks_wanted: r.spec.tasks.iter().map(|g| g.count).sum(),
                    gpu_milli: r
                        .spec
                        .tasks
                        .iter()
                        .map(|g| u64::from(g.count) * milli_of(g))
                        .sum(),
                    slices: r
                        .spec
                        .tasks
                        .iter()
                        .filter(|g| g.mig.is_some())
                        .map(|g| g.count)
                        .sum(),
                    request: r.spec.request_summary(),
                    tasks: r
                        .tasks
                        .iter()
                        .map(|t| TaskView {
                            name: format!("{}.{}", t.group, t.index),
                            node: t.node.clone(),
                            devices: {
                                let (mut d, milli) = t.visible_devices(&node_recs);
                                if milli > 0 {
                                    // A fraction: the share of the device it holds.
                                    d.iter_mut()
                                        .for_each(|u| *u += &format!(" ({}%)", milli / 10));
                                }
                                d
                            },
                            phase: match &t.phase {
                                TaskPhase::Exited(c) => format!("exited {c}"),
                                p => format!("{p:?}").to_lowercase(),
                            },
                        })
                        .collect(),
                    events: job_events,
                    output: Vec::new(),
                }
            })
            .collect();
        if let (Page::Job(k), Some(j)) = (page, jobs.first_mut()) {
            j.output = self.output_tails(k, j.attempt);
        }
        let services = st
            .services("", now)
            .into_iter()
            .map(|v| ServiceView {
                key: v.name.clone(),
                queue: v.queue.clone(),
                state: state_name(v.state).into(),
                min: v.min,
                desired: v.desired,
                running: v.running,
                ready: v.ready,
                max: v.max,
                per_replica: v.per_replica,
                target: v.target,
                metric: v.metric.clone(),
                last_decision: v.last.as_ref().map(|d| d.why.clone()).unwrap_or_default(),
                endpoints: v
                    .endpoints
                    .iter()
                    .map(|(i, _, host, port, ready)| (format!("{host}:{port} #{i}"), *ready))
                    .collect(),
            })
            .collect();
        let mut board = Board {
            driver: "gantry serve".into(),
            read_only: false,
            now_ms: now,
            nodes,
            queues,
            jobs,
            services: Some(services),
            events: events.iter().rev().map(event_view).collect(),
            history: self.shared.history.samples(),
            notes: Vec::new(),
        };
        if let Some(v) = viewer.filter(|v| !v.admin) {
            let member = crate::auth::Caller {
                user: v.user.clone(),
                teams: v.teams.clone(),
                role: crate::auth::Role::Member,
            };
            board.restrict(&|q| member.may_use(&st.queues, q));
        }
        board
    }

    /// The last 4 KiB of each task's output of a job's current run, where the server has it.
    fn output_tails(&self, name: &str, attempt: u32) -> Vec<(String, String)> {
        let dir = self.shared.logs.dir();
        crate::tasklog::runs(dir, name)
            .into_iter()
            .filter(|&(_, _, a)| a == attempt)
            .map(|(g, i, a)| {
                let key = crate::state::TaskKey {
                    job: name.to_string(),
                    group: g,
                    index: i,
                    attempt: a,
                };
                let path = crate::tasklog::path_of(dir, &key);
                let end = crate::tasklog::end_of(&path);
                let text = crate::tasklog::read_at(&path, end.saturating_sub(4096), 4096)
                    .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                (format!("{g}.{i}"), text)
            })
            .collect()
    }
}

/// GPUs asked for by pending jobs (whole GPUs; a fraction or slice counts one).
fn wanted_gpus(st: &State) -> u32 {
    st.jobs
        .values()
        .filter(|e| e.rec.state == JobState::Pending)
        .flat_map(|e| e.rec.spec.tasks.iter())
        .map(|g| g.count * gpus_of(g))
        .sum()
}

fn gpus_of(g: &gantry_model::TaskGroupSpec) -> u32 {
    match g.gpus {
        Some(n) => n,
        None => u32::from(g.gpu_fraction.is_some() || g.mig.is_some()),
    }
}

/// Whole GPUs one task of a group asks for, in thousandths (a fraction as its share; MIG
/// slices are counted apart).
fn milli_of(g: &gantry_model::TaskGroupSpec) -> u64 {
    match (g.gpus, g.gpu_fraction) {
        (Some(n), _) => u64::from(n) * 1000,
        (None, Some(f)) => (f * 1000.0).round() as u64,
        _ => 0,
    }
}
