//! The web dashboard of `gantry serve`, on the metrics port beside `/metrics`: server-rendered
//! HTML with no build step and no JavaScript framework.
//!
//! - `/` overview: GPUs allocated and free per model, nodes, jobs, latest job events;
//! - `/gpus` the GPU map: a row of devices per node, coloured by state, with the job holding
//!   each (`?model=` filters, `?page=` pages through 100 nodes at a time);
//! - `/queues`: quota used against nominal per flavor, as bars, with pending and running jobs;
//! - `/jobs` (`?queue=`, `?state=`): each job with its reason, and `/jobs/NAME`: why it waits,
//!   its place in the queue, its estimated start, its tasks and devices, its exit code and the
//!   tail of its output.
//!
//! Live without reloading: each page asks again for its `<main>` with the ETag it has; the
//! server holds the request until the content changes (or 10 s), so an idle page costs one
//! held request and a change is shown at once.
//!
//! With `--tokens`, a page needs a session: `/login?token=…` (or the login form) checks the
//! token and sets it in an `HttpOnly; SameSite=Strict` cookie; members see only their teams'
//! queues and jobs, as through the API.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::{now_ms, Server};
use crate::auth::Caller;
use crate::record::{JobState, TaskPhase};
use crate::state::State;

/// One point of the overview's history.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    at_ms: u64,
    gpus: u32,
    held: u32,
    /// GPUs asked for by pending jobs.
    wanted: u32,
}

/// How often the history takes a point, and how many it keeps (a day).
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_secs(60);
const SAMPLES: usize = 24 * 60;

/// Nodes per page of the GPU map.
const NODES_PER_PAGE: usize = 100;

/// The cookie holding the session's token.
const COOKIE: &str = "gantry_token";

/// The dashboard's routes, for the metrics server.
pub(crate) fn router(server: Server) -> axum::Router {
    use axum::routing::get;
    let page = move |kind: Page| {
        let s = server.clone();
        move |uri: Uri, headers: HeaderMap| {
            let s = s.clone();
            async move { s.page(kind, uri, headers).await }
        }
    };
    axum::Router::new()
        .route("/", get(page(Page::Overview)))
        .route("/gpus", get(page(Page::Gpus)))
        .route("/queues", get(page(Page::Queues)))
        .route("/jobs", get(page(Page::Jobs)))
        .route("/jobs/{name}", get(page(Page::Job)))
        .route("/services", get(page(Page::Services)))
        .route("/login", get(page(Page::Login)))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Page {
    Overview,
    Gpus,
    Queues,
    Jobs,
    Job,
    Services,
    Login,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `?a=b&c=d`, percent-decoded.
fn query(uri: &Uri) -> BTreeMap<String, String> {
    let decode = |s: &str| -> String {
        let b = s.replace('+', " ");
        let bytes = b.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let Ok(v) = u8::from_str_radix(&b[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn etag_of(body: &str) -> String {
    // FNV-1a: cheap, and only compared for equality.
    let h = body.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("\"{h:016x}\"")
}

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:500}header a.on{text-decoration:underline}
main{padding:16px 20px}table{border-collapse:collapse;background:#fff;width:100%}
th,td{border-bottom:1px solid #dde1e6;padding:5px 8px;text-align:left;font-size:14px;vertical-align:top}
th{background:#eef1f4}.bar{background:#e3e7ec;width:160px;height:12px;display:inline-block;position:relative}
.bar span{background:#2f6db5;height:12px;display:block}.muted{color:#5b6470}
.card{display:inline-block;background:#fff;border:1px solid #dde1e6;padding:10px 14px;margin:0 10px 10px 0;min-width:150px}
.card b{font-size:22px;display:block}.node{display:flex;align-items:center;margin:2px 0}
.node .name{width:170px;font-size:13px;overflow:hidden;text-overflow:ellipsis}
.dev{width:22px;height:22px;margin-right:3px;border:1px solid #8b949e;font-size:10px;text-align:center;line-height:22px}
.free{background:#fff}.used{background:#2f6db5;color:#fff}.shared{background:repeating-linear-gradient(45deg,#7fa7d6,#7fa7d6 4px,#fff 4px,#fff 8px)}
.mig{background:#e0a526}.down{background:#6b7280;color:#fff}
.migdev{position:relative;display:inline-block;width:64px;height:22px;margin-right:3px;border:1px solid #e0a526;background:#fdf3dc}
.slice{position:absolute;top:2px;height:16px;border:1px solid #8b949e}.slice.used{background:#e0a526}.slice.free{background:#fff}
.legend span{display:inline-block;margin-right:14px}.legend .dev{display:inline-block;vertical-align:middle}
pre{background:#fff;border:1px solid #dde1e6;padding:8px;overflow:auto;max-height:320px}
.warn{background:#fff4d6;border:1px solid #e0a526;padding:8px;margin-bottom:10px}
"#;

/// Ask for `<main>` again with its ETag; the server answers when it changed. `?live=N` stops
/// after N answers (headless checks); otherwise it goes on.
const SCRIPT: &str = r#"
(function(){
  var etag = document.body.dataset.etag, left = parseInt(new URLSearchParams(location.search).get('live') || '-1');
  function next(){
    if (left === 0) return;
    fetch(location.pathname + location.search, {headers: {'X-Gantry-Fragment': '1', 'If-None-Match': etag}, credentials: 'same-origin'})
      .then(function(r){
        if (left > 0) left--;
        if (r.status === 200) { etag = r.headers.get('ETag') || etag; return r.text().then(function(t){ document.querySelector('main').innerHTML = t; next(); }); }
        if (r.status === 304) { next(); return; }
        setTimeout(next, 5000);
      })
      .catch(function(){ setTimeout(next, 5000); });
  }
  next();
})();
"#;

impl Server {
    /// Take one point of the history (GPUs held and wanted).
    pub(crate) fn sample_history(&self) {
        let sample = {
            let st = self.lock();
            let totals = gpu_totals(&st);
            let wanted = st
                .jobs
                .values()
                .filter(|e| e.rec.state == JobState::Pending)
                .map(|e| {
                    e.rec
                        .spec
                        .tasks
                        .iter()
                        .map(|g| g.count * g.gpus.unwrap_or(0))
                        .sum::<u32>()
                })
                .sum();
            Sample {
                at_ms: now_ms(),
                gpus: totals.values().map(|t| t.0).sum(),
                held: totals.values().map(|t| t.1).sum(),
                wanted,
            }
        };
        if let Ok(mut h) = self.shared.history.lock() {
            h.push_back(sample);
            while h.len() > SAMPLES {
                h.pop_front();
            }
        }
    }

    /// One page (or its `<main>`, for the live update).
    async fn page(&self, kind: Page, uri: Uri, headers: HeaderMap) -> Response {
        let q = query(&uri);
        // Sessions: with tokens, a page needs a known token in the cookie.
        let mut set_cookie = None;
        let who: Option<Caller> = match &self.shared.config.auth {
            None => None,
            Some(auth) => {
                let from_query = q.get("token").filter(|_| kind == Page::Login);
                let token = from_query.cloned().or_else(|| cookie(&headers, COOKIE));
                match token.as_deref().and_then(|t| auth.by_token(t)) {
                    Some(c) => {
                        if let Some(t) = from_query {
                            set_cookie =
                                Some(format!("{COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/"));
                        }
                        Some(c.clone())
                    }
                    None => {
                        let why = if token.is_some() {
                            "That token is not known."
                        } else {
                            ""
                        };
                        return login_page(why).into_response();
                    }
                }
            }
        };
        if kind == Page::Login {
            // Back to where the user was going (a path on this server only).
            let next = q
                .get("next")
                .filter(|n| n.starts_with('/') && !n.starts_with("//"))
                .cloned()
                .unwrap_or_else(|| "/".into());
            let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
            if let Some(c) = set_cookie {
                if let Ok(v) = c.parse() {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
            }
            return r;
        }
        let fragment = headers.contains_key("x-gantry-fragment");
        let seen = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let name = uri.path().strip_prefix("/jobs/").map(str::to_string);
        let render = |s: &Self| s.main(kind, &q, name.as_deref(), who.as_ref());
        let mut body = render(self);
        let mut etag = etag_of(&body);
        if fragment && seen.as_deref() == Some(etag.as_str()) {
            // Hold the request until something changes, or 10 s.
            let end = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let changed = self.shared.work.notified();
                let tick = tokio::time::sleep(Duration::from_secs(1));
                tokio::select! {
                    _ = changed => {}
                    _ = tick => {}
                    _ = tokio::time::sleep_until(end) => {}
                }
                body = render(self);
                etag = etag_of(&body);
                if seen.as_deref() != Some(etag.as_str()) {
                    break;
                }
                if tokio::time::Instant::now() >= end {
                    return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
                }
            }
        }
        if fragment {
            return (
                [
                    (header::ETAG, etag),
                    (header::CONTENT_TYPE, "text/html; charset=utf-8".into()),
                ],
                body,
            )
                .into_response();
        }
        let nav = [
            (Page::Overview, "/", "Overview"),
            (Page::Gpus, "/gpus", "GPU map"),
            (Page::Queues, "/queues", "Queues"),
            (Page::Jobs, "/jobs", "Jobs"),
            (Page::Services, "/services", "Services"),
        ];
        let mut html = String::new();
        let _ = write!(
            html,
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gantry</title>\
             <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head>\
             <body data-etag='{etag}'><header><b>gantry</b>"
        );
        for (p, href, label) in nav {
            let on = if p == kind || (kind == Page::Job && p == Page::Jobs) {
                " class=\"on\""
            } else {
                ""
            };
            let _ = write!(html, "<a href=\"{href}\"{on}>{label}</a>");
        }
        if let Some(c) = &who {
            let _ = write!(
                html,
                "<span class=\"muted\" style=\"color:#cfd8e3;margin-left:auto\">{} ({})</span>",
                esc(&c.user),
                if c.teams.is_empty() {
                    "admin".to_string()
                } else {
                    esc(&c.teams.join(", "))
                }
            );
        }
        let _ = write!(
            html,
            "</header><main>{body}</main><script>{SCRIPT}</script></body></html>"
        );
        let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
        if let Some(c) = set_cookie.and_then(|c| c.parse().ok()) {
            r.headers_mut().insert(header::SET_COOKIE, c);
        }
        r
    }

    fn main(
        &self,
        kind: Page,
        q: &BTreeMap<String, String>,
        name: Option<&str>,
        who: Option<&Caller>,
    ) -> String {
        let st = self.lock();
        let visible = |queue: &str| who.is_none_or(|c| c.may_use(&st.queues, queue));
        match kind {
            Page::Overview | Page::Login => {
                let mut h = overview(&st, &visible);
                let history: Vec<Sample> = self
                    .shared
                    .history
                    .lock()
                    .map(|h| h.iter().copied().collect())
                    .unwrap_or_default();
                h.push_str(&history_svg(&history));
                h
            }
            Page::Services => services(&st, &visible),
            Page::Gpus => gpu_map(&st, q, &visible),
            Page::Queues => queues(&st, &visible),
            Page::Jobs => jobs(&st, q, &visible),
            Page::Job => {
                drop(st);
                self.job_page(name.unwrap_or(""), who)
            }
        }
    }

    fn job_page(&self, name: &str, who: Option<&Caller>) -> String {
        let (id, _) = self.lock().job_id(name, now_ms());
        let st = self.lock();
        let Some(e) = st.jobs.get(name) else {
            return format!("<p>No job {}.</p>", esc(name));
        };
        if who.is_some_and(|c| !c.may_use(&st.queues, &e.rec.spec.queue)) {
            return format!(
                "<p>Job {} is in queue {}, which is not one of your teams' queues.</p>",
                esc(name),
                esc(&e.rec.spec.queue)
            );
        }
        let r = &e.rec;
        let mut h = format!(
            "<h2>{}</h2><p>queue <b>{}</b> · {} · state <b>{}</b> · run {}{}</p>",
            esc(name),
            esc(&r.spec.queue),
            esc(&format!("{:?}", r.spec.kind).to_lowercase()),
            state_name(r.state),
            r.attempt,
            if r.state == JobState::Failed || r.state == JobState::Succeeded {
                format!(" · exit code <b>{}</b>", r.exit_code)
            } else {
                String::new()
            }
        );
        if let Some(x) = id.and_then(|id| st.snap.explain(id)) {
            let reason = x.reason.clone().unwrap_or_else(|| r.reason.clone());
            if !reason.is_empty() {
                let _ = write!(h, "<p><b>Why it waits:</b> {}</p>", esc(&reason));
            }
            if let Some(p) = x.position {
                let _ = write!(h, "<p>Position in its queue: <b>{p}</b></p>");
            }
            let eta = x.estimated_start.or_else(|| {
                (x.phase == gantry_engine::JobPhase::Pending)
                    .then(|| {
                        id.and_then(|id| {
                            st.snap.estimate_start(
                                id,
                                &st.profile,
                                now_ms(),
                                super::ESTIMATE_CYCLES,
                            )
                        })
                    })
                    .flatten()
            });
            if let Some(t) = eta {
                let _ = write!(
                    h,
                    "<p>Estimated start: in {}</p>",
                    gantry_engine::fmt_time(t.saturating_sub(now_ms()))
                );
            }
            if x.unresolvable {
                h.push_str("<p class=\"warn\">Waiting will not help: no node or quota can ever hold it as asked.</p>");
            }
        } else if !r.reason.is_empty() {
            let _ = write!(h, "<p><b>Why:</b> {}</p>", esc(&r.reason));
        }
        let nodes: BTreeMap<_, _> = st
            .nodes
            .iter()
            .map(|(k, n)| (k.clone(), n.rec.clone()))
            .collect();
        h.push_str("<h3>Tasks</h3><table><tr><th>group</th><th>index</th><th>node</th><th>devices</th><th>phase</th></tr>");
        for t in &r.tasks {
            let (devices, _) = t.visible_devices(&nodes);
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td></tr>",
                t.group,
                t.index,
                esc(&t.node),
                esc(&devices.join(" ")),
                t.phase
            );
        }
        h.push_str("</table>");
        // The tail of each task's output, where the server has it.
        let dir = self.shared.logs.dir();
        let runs: Vec<(u16, u32, u32)> = crate::tasklog::runs(dir, name)
            .into_iter()
            .filter(|&(_, _, a)| a == r.attempt)
            .collect();
        if !runs.is_empty() {
            h.push_str("<h3>Output (last 4 KiB per task)</h3>");
            for (g, i, a) in runs {
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
                let _ = write!(
                    h,
                    "<p class=\"muted\">task {g}.{i}</p><pre>{}</pre>",
                    esc(&text)
                );
            }
        }
        h
    }
}

/// The history as an SVG chart: GPUs held and GPUs wanted by pending jobs, against capacity.
fn history_svg(h: &[Sample]) -> String {
    let mut out = String::from("<h3>The last day</h3>");
    if h.is_empty() {
        out.push_str("<p class=\"muted\">No samples yet (one a minute).</p>");
        return out;
    }
    let (w, ht) = (900.0, 160.0);
    let t0 = h.first().map_or(0, |s| s.at_ms) as f64;
    let t1 = (h.last().map_or(0, |s| s.at_ms) as f64).max(t0 + 1.0);
    let top = h
        .iter()
        .map(|s| s.gpus.max(s.held).max(s.wanted))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let line = |f: &dyn Fn(&Sample) -> u32| -> String {
        h.iter()
            .map(|s| {
                format!(
                    "{:.1},{:.1}",
                    (s.at_ms as f64 - t0) / (t1 - t0) * w,
                    ht - f64::from(f(s)) / top * ht
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = write!(
        out,
        "<svg id=\"history\" width=\"{w}\" height=\"{ht}\" viewBox=\"0 0 {w} {ht}\" role=\"img\" \
         aria-label=\"GPUs held and wanted over the last day\" style=\"background:#fff;border:1px solid #dde1e6\">\
         <polyline fill=\"none\" stroke=\"#8b949e\" stroke-dasharray=\"4 3\" points=\"{}\"/>\
         <polyline fill=\"none\" stroke=\"#2f6db5\" stroke-width=\"2\" points=\"{}\"/>\
         <polyline fill=\"none\" stroke=\"#e0a526\" stroke-width=\"2\" points=\"{}\"/></svg>\
         <p class=\"legend\"><span style=\"color:#2f6db5\">━ GPUs held</span>\
         <span style=\"color:#e0a526\">━ GPUs wanted by waiting jobs</span>\
         <span style=\"color:#8b949e\">┅ GPUs in all</span> ({} samples, one a minute)</p>",
        line(&|s| s.gpus),
        line(&|s| s.held),
        line(&|s| s.wanted),
        h.len()
    );
    out
}

fn services(st: &State, visible: &dyn Fn(&str) -> bool) -> String {
    let mut h = String::from(
        "<h2>Inference services</h2><table><tr><th>service</th><th>queue</th><th>state</th>\
         <th>min / desired / running / ready / max</th><th>load / target</th><th>last decision</th><th>endpoints</th></tr>",
    );
    for v in st
        .services("", now_ms())
        .into_iter()
        .filter(|v| visible(&v.queue))
    {
        let load = match (v.per_replica, v.target > 0.0) {
            (Some(l), true) => format!("{l:.2} / {} {}", v.target, esc(&v.metric)),
            (None, true) => format!("- / {} {}", v.target, esc(&v.metric)),
            _ => String::new(),
        };
        let ends: Vec<String> = v
            .endpoints
            .iter()
            .map(|(i, _, host, port, ready)| {
                format!(
                    "{}:{port}{}",
                    esc(host),
                    if *ready { "" } else { " (not ready)" }
                ) + &format!(" #{i}")
            })
            .collect();
        let _ = write!(
            h,
            "<tr><td><a href=\"/jobs/{n}\">{n}</a></td><td>{}</td><td>{}</td><td>{} / {} / {} / {} / {}</td><td>{load}</td><td>{}</td><td>{}</td></tr>",
            esc(&v.queue),
            state_name(v.state),
            v.min,
            v.desired,
            v.running,
            v.ready,
            v.max,
            esc(&v.last.as_ref().map(|d| d.why.clone()).unwrap_or_default()),
            ends.join("<br>"),
            n = esc(&v.name)
        );
    }
    h.push_str("</table>");
    h
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

fn login_page(why: &str) -> (StatusCode, [(header::HeaderName, &'static str); 1], String) {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gantry: sign in</title>\
             <style>{STYLE}</style></head><body><header><b>gantry</b></header><main>\
             <h2>Sign in</h2><p>This server checks tokens. {why}</p>\
             <form action=\"/login\" method=\"get\"><label>Token <input name=\"token\" type=\"password\" autocomplete=\"off\"></label> \
             <button>Sign in</button></form></main></body></html>",
            why = esc(why)
        ),
    )
}

/// Per model: (GPUs, GPUs held).
fn gpu_totals(st: &State) -> BTreeMap<String, (u32, u32)> {
    let held = held_devices(st);
    let mut out: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for n in st.nodes.values() {
        for d in &n.rec.node.devices {
            let e = out.entry(d.model.clone()).or_default();
            e.0 += 1;
            if held.contains_key(&d.uuid) {
                e.1 += 1;
            }
        }
    }
    out
}

/// Device uuid → (job, shared milli; 0 for whole devices and slices).
fn held_devices(st: &State) -> BTreeMap<String, (String, u32)> {
    let nodes: BTreeMap<_, _> = st
        .nodes
        .iter()
        .map(|(k, n)| (k.clone(), n.rec.clone()))
        .collect();
    let mut out = BTreeMap::new();
    for name in &st.running {
        let Some(e) = st.jobs.get(name) else { continue };
        for t in &e.rec.tasks {
            if matches!(t.phase, TaskPhase::Exited(_)) {
                continue;
            }
            let (uuids, milli) = t.visible_devices(&nodes);
            for u in uuids {
                out.insert(u, (name.clone(), milli));
            }
        }
    }
    out
}

fn overview(st: &State, visible: &dyn Fn(&str) -> bool) -> String {
    let mut h = String::from("<h2>Overview</h2>");
    let ready = st.nodes.values().filter(|n| n.ready).count();
    let _ = write!(
        h,
        "<div class=\"card\">nodes ready<b>{ready} / {}</b></div>",
        st.nodes.len()
    );
    for (model, (total, held)) in gpu_totals(st) {
        let _ = write!(
            h,
            "<div class=\"card\">{} GPUs allocated<b>{held} / {total}</b><span class=\"muted\">{} free</span></div>",
            esc(&model),
            total - held
        );
    }
    let (mut pending, mut running) = (0, 0);
    for e in st.jobs.values().filter(|e| visible(&e.rec.spec.queue)) {
        match e.rec.state {
            JobState::Pending => pending += 1,
            JobState::Running => running += 1,
            _ => {}
        }
    }
    let _ = write!(
        h,
        "<div class=\"card\">jobs running<b>{running}</b></div><div class=\"card\">jobs waiting<b>{pending}</b></div>"
    );
    // Latest events, from the jobs' times.
    let mut events: Vec<(u64, String, &str, String)> = Vec::new();
    for e in st.jobs.values().filter(|e| visible(&e.rec.spec.queue)) {
        let r = &e.rec;
        events.push((
            r.submitted_ms,
            r.name.clone(),
            "submitted",
            r.spec.queue.clone(),
        ));
        if let Some(t) = r.started_ms {
            events.push((t, r.name.clone(), "started", r.spec.queue.clone()));
        }
        if let Some(t) = r.finished_ms {
            events.push((t, r.name.clone(), state_name(r.state), r.spec.queue.clone()));
        }
    }
    events.sort_by_key(|e| std::cmp::Reverse(e.0));
    h.push_str("<h3>Latest events</h3><table><tr><th>when</th><th>job</th><th>what</th><th>queue</th></tr>");
    let now = now_ms();
    for (t, job, what, queue) in events.into_iter().take(15) {
        let _ = write!(
            h,
            "<tr><td>{} ago</td><td><a href=\"/jobs/{j}\">{j}</a></td><td>{what}</td><td>{}</td></tr>",
            gantry_engine::fmt_time(now.saturating_sub(t)),
            esc(&queue),
            j = esc(&job)
        );
    }
    h.push_str("</table>");
    h
}

fn gpu_map(st: &State, q: &BTreeMap<String, String>, visible: &dyn Fn(&str) -> bool) -> String {
    let held = held_devices(st);
    let model = q.get("model").filter(|m| !m.is_empty());
    // `?label=key=value`: nodes carrying that label.
    let label = q
        .get("label")
        .and_then(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty());
    let page: usize = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let models: BTreeSet<&str> = st
        .nodes
        .values()
        .flat_map(|n| n.rec.node.devices.iter().map(|d| d.model.as_str()))
        .collect();
    let nodes: Vec<_> = st
        .nodes
        .values()
        .filter(|n| model.is_none_or(|m| n.rec.node.devices.iter().any(|d| &d.model == m)))
        .filter(|n| {
            label.is_none_or(|(k, v)| n.rec.node.labels.get(k).map(String::as_str) == Some(v))
        })
        .collect();
    let pages = nodes.len().div_ceil(NODES_PER_PAGE).max(1);
    let mut h = String::from("<h2>GPU map</h2><p class=\"legend\">");
    for (class, label) in [
        ("free", "free"),
        ("used", "whole GPU, used (hover: job)"),
        ("shared", "shared fraction"),
        (
            "mig",
            "MIG slice in use (a GPU's 8 memory slices, instances at their starts)",
        ),
        ("down", "node not ready"),
    ] {
        let _ = write!(
            h,
            "<span><span class=\"dev {class}\"></span> {label}</span>"
        );
    }
    h.push_str("</p><p>Model: <a href=\"/gpus\">all</a>");
    for m in &models {
        let _ = write!(h, " · <a href=\"/gpus?model={m}\">{m}</a>", m = esc(m));
    }
    let _ = write!(h, " — {} nodes, page {} of {pages}", nodes.len(), page + 1);
    if page + 1 < pages {
        let _ = write!(
            h,
            " · <a href=\"/gpus?page={}{}\">next</a>",
            page + 1,
            model.map_or(String::new(), |m| format!("&model={}", esc(m)))
        );
    }
    h.push_str("</p>");
    for n in nodes
        .iter()
        .skip(page * NODES_PER_PAGE)
        .take(NODES_PER_PAGE)
    {
        let _ = write!(
            h,
            "<div class=\"node\"><span class=\"name\" title=\"{name}\">{name}</span>",
            name = esc(&n.rec.node.name)
        );
        for d in &n.rec.node.devices {
            if let (true, Some(layout)) = (n.ready, &d.mig) {
                // A MIG GPU: its 8 memory slices, each instance drawn at its real start.
                let geometry = gantry_model::MigGeometry::builtin(&d.model);
                let _ = write!(
                    h,
                    "<span class=\"migdev\" title=\"{} (MIG)\" data-uuid=\"{}\">",
                    esc(&d.uuid),
                    esc(&d.uuid)
                );
                for sl in &layout.slices {
                    let size = geometry
                        .as_ref()
                        .and_then(|g| g.profile(&sl.profile))
                        .map_or(1, |(_, p)| p.memory_slices);
                    let holder = held.get(&sl.uuid).map(|(j, _)| j.as_str());
                    let (class, who) = match holder {
                        Some(j) if st.jobs.get(j).is_some_and(|e| visible(&e.rec.spec.queue)) => {
                            ("used", format!("used by {j}"))
                        }
                        Some(_) => ("used", "used by another team".to_string()),
                        None => ("free", "free".to_string()),
                    };
                    let _ = write!(
                        h,
                        "<span class=\"slice {class}\" style=\"left:{}px;width:{}px\" title=\"{} at memory slice {}: {who}\"></span>",
                        u32::from(sl.start) * 8,
                        u32::from(size) * 8 - 1,
                        esc(&sl.profile),
                        sl.start
                    );
                }
                h.push_str("</span>");
                continue;
            }
            let (class, title, text) = if !n.ready {
                (
                    "down",
                    format!("{} (node not ready)", d.uuid),
                    String::new(),
                )
            } else {
                match held.get(&d.uuid) {
                    Some((job, milli)) if *milli > 0 => (
                        "shared",
                        format!("{} shared by {job} ({}%)", d.uuid, milli / 10),
                        String::new(),
                    ),
                    Some((job, _)) => {
                        let shown = st.jobs.get(job).is_some_and(|e| visible(&e.rec.spec.queue));
                        let who = if shown { job.as_str() } else { "another team" };
                        ("used", format!("{} used by {who}", d.uuid), String::new())
                    }
                    None => ("free", format!("{} free", d.uuid), String::new()),
                }
            };
            let _ = write!(
                h,
                "<span class=\"dev {class}\" title=\"{}\" data-uuid=\"{}\">{text}</span>",
                esc(&title),
                esc(&d.uuid)
            );
        }
        h.push_str("</div>");
    }
    h
}

fn queues(st: &State, visible: &dyn Fn(&str) -> bool) -> String {
    let mut h = String::from(
        "<h2>Queues</h2><table><tr><th>queue</th><th>parent</th><th>weight</th><th>pending</th><th>running</th><th>quota used / nominal</th></tr>",
    );
    for spec in st.queues.values().filter(|q| visible(&q.name)) {
        let q = super::pb_queue(spec, st);
        let mut bars = String::new();
        for u in &q.quotas {
            let used = u.used_milli as f64 / 1000.0;
            let nominal = u.nominal_milli as f64 / 1000.0;
            let pct = if nominal > 0.0 {
                (used / nominal * 100.0).min(100.0)
            } else {
                0.0
            };
            let _ = write!(
                bars,
                "<div>{} <span class=\"bar\" title=\"{used} of {nominal}\"><span style=\"width:{pct:.0}%\"></span></span> {used} / {nominal}{}</div>",
                esc(&u.flavor),
                if used > nominal { " (borrowing)" } else { "" }
            );
        }
        for w in &q.warnings {
            let _ = write!(bars, "<div class=\"warn\">{}</div>", esc(w));
        }
        let _ = write!(
            h,
            "<tr><td><a href=\"/jobs?queue={n}\">{n}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{bars}</td></tr>",
            esc(&q.parent),
            q.weight,
            q.pending_jobs,
            q.running_jobs,
            n = esc(&q.name)
        );
    }
    h.push_str("</table>");
    h
}

fn jobs(st: &State, q: &BTreeMap<String, String>, visible: &dyn Fn(&str) -> bool) -> String {
    let queue = q.get("queue").filter(|s| !s.is_empty());
    let state = q.get("state").filter(|s| !s.is_empty());
    let user = q.get("user").filter(|s| !s.is_empty());
    let mut h = String::from("<h2>Jobs</h2><p>State: <a href=\"/jobs\">all</a>");
    for s in ["pending", "running", "succeeded", "failed", "cancelled"] {
        let _ = write!(h, " · <a href=\"/jobs?state={s}\">{s}</a>");
    }
    h.push_str("</p><table><tr><th>job</th><th>queue</th><th>user</th><th>state</th><th>tasks</th><th>nodes</th><th>why / how it ended</th></tr>");
    let mut shown = 0;
    for name in st.order.values().rev() {
        let Some(e) = st.jobs.get(name) else { continue };
        let r = &e.rec;
        if !visible(&r.spec.queue)
            || queue.is_some_and(|q| &r.spec.queue != q)
            || state.is_some_and(|s| state_name(r.state) != s)
            || user.is_some_and(|u| &r.user != u)
        {
            continue;
        }
        shown += 1;
        if shown > 500 {
            h.push_str("<tr><td colspan=\"6\" class=\"muted\">(500 shown; filter by queue or state)</td></tr>");
            break;
        }
        let wanted: u32 = r.spec.tasks.iter().map(|g| g.count).sum();
        let nodes: BTreeSet<&str> = r.tasks.iter().map(|t| t.node.as_str()).collect();
        let reason = match r.state {
            JobState::Pending => {
                e.id.and_then(|id| st.snap.why(id))
                    .map(|w| w.text)
                    .unwrap_or_else(|| r.reason.clone())
            }
            JobState::Failed => format!("exit {}: {}", r.exit_code, r.reason),
            _ => r.reason.clone(),
        };
        let _ = write!(
            h,
            "<tr><td><a href=\"/jobs/{n}\">{n}</a></td><td>{}</td><td><a href=\"/jobs?user={u}\">{u}</a></td><td>{}</td><td>{}/{wanted}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.spec.queue),
            state_name(r.state),
            r.tasks.len(),
            esc(&nodes.into_iter().collect::<Vec<_>>().join(" ")),
            esc(&reason),
            n = esc(name),
            u = esc(&r.user)
        );
    }
    h.push_str("</table>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_cookies_and_escaping() {
        let uri: Uri = "/jobs?queue=team%2Da&state=pending&x".parse().unwrap();
        let q = query(&uri);
        assert_eq!(q["queue"], "team-a");
        assert_eq!(q["state"], "pending");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; gantry_token=t0k".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("t0k"));
        assert_eq!(esc("<b a=\"x\">&"), "&lt;b a=&quot;x&quot;&gt;&amp;");
        assert_ne!(etag_of("a"), etag_of("b"));
    }
}
