//! Boards into HTML. Each page is a `<main>` body ([`content`]) inside a frame ([`frame`]); the
//! live update swaps `<main>` only. Times are written as absolute UTC with `data-ms`, and the
//! page's script adds "in 5 m" / "3 m ago" in the browser, so the HTML (and its ETag) changes
//! only when the cluster does, not every second.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::{esc, gpu_totals, Board, DeviceView, Holder, JobView, NodeView};

/// The pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    /// `/`
    Overview,
    /// `/gpus`
    Gpus,
    /// `/queues`
    Queues,
    /// `/queues/NAME`
    Queue(String),
    /// `/jobs`
    Jobs,
    /// `/jobs/KEY`
    Job(String),
    /// `/services`
    Services,
}

/// Nodes per page of the GPU map.
pub const NODES_PER_PAGE: usize = 100;
/// Jobs per page of the job list.
pub const JOBS_PER_PAGE: usize = 100;

/// Query parameters.
pub type Query = BTreeMap<String, String>;

/// The content of `<main>` for a page.
pub fn content(page: &Page, b: &Board, q: &Query) -> String {
    let mut h = String::new();
    for n in &b.notes {
        let _ = write!(h, "<p class=\"warn\">{}</p>", esc(n));
    }
    h.push_str(&match page {
        Page::Overview => overview(b),
        Page::Gpus => gpu_map(b, q),
        Page::Queues => queues(b),
        Page::Queue(name) => queue(b, name),
        Page::Jobs => jobs(b, q),
        Page::Job(key) => job(b, key),
        Page::Services => services(b),
    });
    h
}

/// A whole page around `body` (the `<main>` content), with its ETag for the live update and
/// the signed-in viewer's name, if any.
pub fn frame(page: &Page, b: &Board, body: &str, etag: &str, viewer: Option<&str>) -> String {
    let mut nav = vec![
        (Page::Overview, "/", "Overview"),
        (Page::Gpus, "/gpus", "GPU map"),
        (Page::Queues, "/queues", "Queues"),
        (Page::Jobs, "/jobs", "Jobs"),
    ];
    if b.services.is_some() {
        nav.push((Page::Services, "/services", "Services"));
    }
    let mut html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gantry</title>\
         <meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head>\
         <body data-etag='{}'><header><b>gantry</b>",
        esc(etag)
    );
    for (p, href, label) in nav {
        let on = p == *page
            || (matches!(page, Page::Job(_)) && p == Page::Jobs)
            || (matches!(page, Page::Queue(_)) && p == Page::Queues);
        let _ = write!(
            html,
            "<a href=\"{href}\"{}>{label}</a>",
            if on { " class=\"on\"" } else { "" }
        );
    }
    let _ = write!(
        html,
        "<span class=\"who\">{}{}{}</span></header><main>{body}</main><script>{SCRIPT}</script></body></html>",
        esc(&b.driver),
        if b.read_only { " · read-only" } else { "" },
        viewer.map_or(String::new(), |v| format!(" · {}", esc(v)))
    );
    html
}

/// The page for a path the dashboard does not have.
pub fn not_found(path: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gantry: not found</title>\
         <style>{STYLE}</style></head><body><header><b>gantry</b><a href=\"/\">Overview</a>\
         <a href=\"/gpus\">GPU map</a><a href=\"/queues\">Queues</a><a href=\"/jobs\">Jobs</a></header><main>\
         <h2>Not found</h2><p>There is no page {}.</p></main></body></html>",
        esc(path)
    )
}

/// The sign-in page.
pub fn login(why: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>gantry: sign in</title>\
         <style>{STYLE}</style></head><body><header><b>gantry</b></header><main>\
         <h2>Sign in</h2><p>This server checks tokens. {why}</p>\
         <form action=\"/login\" method=\"get\"><label>Token <input name=\"token\" type=\"password\" autocomplete=\"off\"></label> \
         <button>Sign in</button></form></main></body></html>",
        why = esc(why)
    )
}

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#1f3a5f;color:#fff;padding:10px 20px;display:flex;gap:20px;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:500}header a.on{text-decoration:underline}
header .who{margin-left:auto;color:#cfd8e3;font-size:13px}
main{padding:16px 20px}table{border-collapse:collapse;background:#fff;width:100%}
th,td{border-bottom:1px solid #dde1e6;padding:5px 8px;text-align:left;font-size:14px;vertical-align:top}
th{background:#eef1f4}.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#e3e7ec;width:220px;height:14px;display:inline-block;position:relative;vertical-align:middle}
.bar span{height:14px;display:block;position:absolute;top:0}.bar .in{background:#2f6db5}
.bar .over{background:repeating-linear-gradient(45deg,#e0a526,#e0a526 3px,#f6d68a 3px,#f6d68a 6px)}
.bar .lent{background:repeating-linear-gradient(-45deg,#8b949e,#8b949e 2px,#fff 2px,#fff 5px)}
.bar .mark{width:2px;background:#1b1f24;height:18px;top:-2px}
.muted{color:#5b6470}.nowrap{white-space:nowrap}.flavor{white-space:nowrap}.legend .rel{display:inline;margin:0}.flavor .fl{display:inline-block;min-width:150px}.tree1{padding-left:22px}.tree2{padding-left:44px}.tree3{padding-left:66px}
.card{display:inline-block;background:#fff;border:1px solid #dde1e6;padding:10px 14px;margin:0 10px 10px 0;min-width:150px;vertical-align:top}
.card b{font-size:22px;display:block}.box{background:#fff;border:1px solid #dde1e6;padding:4px 14px;margin:0 0 10px 0}.node{display:flex;align-items:center;margin:2px 0}
.node .name{width:190px;font-size:13px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.dev{width:22px;height:22px;margin-right:3px;border:1px solid #8b949e;font-size:10px;text-align:center;line-height:22px;display:inline-block;box-sizing:border-box}
.free{background:#fff}.used{background:#2f6db5;color:#fff}
.shared{background:repeating-linear-gradient(45deg,#b9cfe9,#b9cfe9 4px,#fff 4px,#fff 8px);color:#1b1f24;font-weight:700}
.mig{background:#e0a526}.down{background:#6b7280;color:#fff}.sick{background:#fbe3e3;color:#9b1c1c;font-weight:700}
.migdev{position:relative;display:inline-block;width:66px;height:22px;margin-right:3px;border:1px solid #e0a526;background:#fdf3dc;box-sizing:border-box}
.slice{position:absolute;top:2px;height:16px;border:1px solid #8b949e;box-sizing:border-box}.slice.used{background:#e0a526}.slice.free{background:#fff}
.slice.sick{background:#fbe3e3}
.legend span{display:inline-block;margin-right:14px}.legend .dev{vertical-align:middle}
pre{background:#fff;border:1px solid #dde1e6;padding:8px;overflow:auto;max-height:320px}
.warn{background:#fff4d6;border:1px solid #e0a526;padding:8px;margin:0 0 10px 0}
form.filters{margin:8px 0}form.filters input,form.filters select{margin-right:8px}
"#;

/// Ask for `<main>` again with its ETag; the server answers when it changed. `?live=N` stops
/// after N answers (headless checks); otherwise it goes on. Times get "in …"/"… ago".
const SCRIPT: &str = r#"
(function(){
  function ago(){
    var now = Date.now();
    document.querySelectorAll('time[data-ms]').forEach(function(t){
      var d = Math.round((parseInt(t.dataset.ms) - now) / 1000), a = Math.abs(d), s;
      s = a < 90 ? a + ' s' : a < 5400 ? Math.round(a / 60) + ' min' : a < 172800 ? Math.round(a / 3600) + ' h' : Math.round(a / 86400) + ' d';
      var r = t.querySelector('.rel') || t.appendChild(document.createElement('span'));
      r.className = 'rel muted'; r.textContent = d > 0 ? ' (in ' + s + ')' : ' (' + s + ' ago)';
    });
  }
  ago(); setInterval(ago, 5000);
  var etag = document.body.dataset.etag, left = parseInt(new URLSearchParams(location.search).get('live') || '-1');
  function next(){
    if (left === 0) return;
    fetch(location.pathname + location.search, {headers: {'X-Gantry-Fragment': '1', 'If-None-Match': etag}, credentials: 'same-origin'})
      .then(function(r){
        if (left > 0) left--;
        if (r.status === 200) { etag = r.headers.get('ETag') || etag; return r.text().then(function(t){ document.querySelector('main').innerHTML = t; ago(); next(); }); }
        if (r.status === 304) { next(); return; }
        setTimeout(next, 5000);
      })
      .catch(function(){ setTimeout(next, 5000); });
  }
  next();
})();
"#;

/// `2026-11-30 14:02:03 UTC`, inside a `<time>` the script adds the relative time to.
pub fn when(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "<time data-ms=\"{ms}\">{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC</time>",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn holder_name(h: &Holder) -> String {
    if h.job.is_empty() {
        "another team".into()
    } else {
        h.job.clone()
    }
}

fn job_link(b: &Board, key: &str) -> String {
    let name = b.job(key).map_or(key, |j| j.name.as_str());
    format!("<a href=\"/jobs/{}\">{}</a>", esc(key), esc(name))
}

fn overview(b: &Board) -> String {
    let mut h = String::from("<h2>Overview</h2>");
    let ready = b.nodes.iter().filter(|n| n.ready).count();
    let _ = write!(
        h,
        "<div class=\"card\">nodes ready<b>{ready} / {}</b></div>",
        b.nodes.len()
    );
    for (model, t) in gpu_totals(&b.nodes) {
        let _ = write!(
            h,
            "<div class=\"card\" data-model=\"{m}\">{m} GPUs allocated<b>{} / {}</b>\
             <span class=\"muted\">{} free · {} fragmented · {} unavailable</span></div>",
            t.held,
            t.gpus,
            t.free,
            fmt_milli(u64::from(t.fragmented_milli)),
            t.unavailable,
            m = esc(&model)
        );
    }
    let count = |s: &str| b.jobs.iter().filter(|j| j.state == s).count();
    let _ = write!(
        h,
        "<div class=\"card\">jobs running<b>{}</b></div><div class=\"card\">jobs waiting<b>{}</b></div>",
        count("running"),
        count("pending")
    );
    h.push_str(
        "<p class=\"muted\">Fragmented: capacity left on partly used GPUs (shared fractions, \
         free MIG memory slices), which a whole-GPU job cannot use.</p>",
    );
    h.push_str(&history_svg(&b.history));
    h.push_str("<h3>Latest events</h3>");
    h.push_str(&events_table(
        b,
        fold(b.events.iter()).into_iter().take(15),
        true,
    ));
    h
}

/// Runs of the same event (kind and message) folded into one row: (first, last, count).
fn fold<'a>(
    events: impl Iterator<Item = &'a crate::EventView>,
) -> Vec<(&'a crate::EventView, u64, usize)> {
    let mut out: Vec<(&crate::EventView, u64, usize)> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some((first, last, n))
                if first.kind == e.kind && first.message == e.message && first.job == e.job =>
            {
                *last = e.at_ms;
                *n += 1;
            }
            _ => out.push((e, e.at_ms, 1)),
        }
    }
    out
}

fn events_table<'a>(
    b: &Board,
    events: impl Iterator<Item = (&'a crate::EventView, u64, usize)>,
    with_job: bool,
) -> String {
    let mut h = String::from("<table class=\"events\"><tr><th>when</th>");
    if with_job {
        h.push_str("<th>job</th><th>queue</th>");
    }
    h.push_str("<th>what</th><th>details</th></tr>");
    let mut any = false;
    for (e, last, n) in events {
        any = true;
        let _ = write!(h, "<tr><td>{}</td>", when(e.at_ms));
        if with_job {
            let _ = write!(
                h,
                "<td>{}</td><td>{}</td>",
                job_link(b, &e.job),
                esc(&e.queue)
            );
        }
        let times = if n > 1 {
            format!(
                " <b>×{n}</b> <span class=\"muted\">(until {})</span>",
                when(last)
            )
        } else {
            String::new()
        };
        let _ = write!(
            h,
            "<td>{}{}{times}</td><td>{}</td></tr>",
            if e.warning { "⚠ " } else { "" },
            esc(&e.kind),
            esc(&e.message)
        );
    }
    if !any {
        h.push_str("<tr><td colspan=\"5\" class=\"muted\">No events yet.</td></tr>");
    }
    h.push_str("</table>");
    h
}

fn fmt_milli(m: u64) -> String {
    if m.is_multiple_of(1000) {
        format!("{}", m / 1000)
    } else {
        let s = format!("{:.3}", m as f64 / 1000.0);
        s.trim_end_matches('0').to_string()
    }
}

/// The history as an SVG chart: GPUs held and GPUs wanted by pending jobs, against capacity.
fn history_svg(h: &[crate::Sample]) -> String {
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
    let line = |f: &dyn Fn(&crate::Sample) -> u32| -> String {
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
    let last = h[h.len() - 1];
    let dot = |v: u32, colour: &str| {
        format!(
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{colour}\"/>",
            (last.at_ms as f64 - t0) / (t1 - t0) * w,
            ht - f64::from(v) / top * ht
        )
    };
    let _ = write!(
        out,
        "<svg id=\"history\" width=\"{w}\" height=\"{ht}\" viewBox=\"-6 -6 {} {}\" role=\"img\" \
         aria-label=\"GPUs held and wanted over the last day\" style=\"background:#fff;border:1px solid #dde1e6\">\
         <polyline fill=\"none\" stroke=\"#8b949e\" stroke-dasharray=\"4 3\" points=\"{}\"/>\
         <polyline fill=\"none\" stroke=\"#2f6db5\" stroke-width=\"2\" points=\"{}\"/>\
         <polyline fill=\"none\" stroke=\"#e0a526\" stroke-width=\"2\" stroke-dasharray=\"8 2\" points=\"{}\"/>{}{}{}</svg>\
         <p class=\"legend\"><span style=\"color:#2f6db5\">━ GPUs held ({})</span>\
         <span style=\"color:#b7831a\">╍ GPUs wanted by waiting jobs ({})</span>\
         <span style=\"color:#5b6470\">┅ GPUs in all ({})</span><span class=\"muted\">{} samples, one a minute, since {}</span></p>",
        w + 12.0,
        ht + 12.0,
        line(&|s| s.gpus),
        line(&|s| s.held),
        line(&|s| s.wanted),
        dot(last.gpus, "#8b949e"),
        dot(last.held, "#2f6db5"),
        dot(last.wanted, "#e0a526"),
        last.held,
        last.wanted,
        last.gpus,
        h.len(),
        when(h[0].at_ms),
    );
    out
}

/// How a whole (non-MIG) device is drawn: class, text in the cell, title.
fn device_cell(n: &NodeView, d: &DeviceView) -> (&'static str, String, String) {
    if !n.ready {
        return ("down", "×".into(), format!("{} (node not ready)", d.uuid));
    }
    if !d.healthy {
        return ("sick", "!".into(), format!("{} unhealthy", d.uuid));
    }
    match d.holders.as_slice() {
        [] => ("free", String::new(), format!("{} free", d.uuid)),
        [h] if h.milli >= 1000 => (
            "used",
            String::new(),
            format!("{} used by {}", d.uuid, holder_name(h)),
        ),
        hs => {
            // Per job, its tasks' shares added up; the cell shows how full the GPU is.
            let mut by_job: Vec<(String, u32)> = Vec::new();
            for h in hs {
                let name = holder_name(h);
                match by_job.iter_mut().find(|(j, _)| *j == name) {
                    Some((_, m)) => *m += u32::from(h.milli),
                    None => by_job.push((name, u32::from(h.milli))),
                }
            }
            let total: u32 = by_job.iter().map(|(_, m)| m).sum();
            let who: Vec<String> = by_job
                .iter()
                .map(|(j, m)| format!("{j} {}%", m / 10))
                .collect();
            (
                "shared",
                format!("{}", total / 10),
                format!(
                    "{} shared, {}% used: {}",
                    d.uuid,
                    total / 10,
                    who.join(", ")
                ),
            )
        }
    }
}

fn gpu_map(b: &Board, q: &Query) -> String {
    let model = q.get("model").filter(|m| !m.is_empty());
    let label_raw = q.get("label").filter(|l| !l.is_empty());
    let label = label_raw
        .and_then(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty());
    let name = q.get("node").filter(|s| !s.is_empty());
    let free_only = q.get("free").is_some_and(|v| v == "1");
    let page = page_of(q);
    let models: BTreeSet<&str> = b
        .nodes
        .iter()
        .flat_map(|n| n.devices.iter().map(|d| d.model.as_str()))
        .collect();
    let nodes: Vec<&NodeView> = b
        .nodes
        .iter()
        .filter(|n| model.is_none_or(|m| n.devices.iter().any(|d| &d.model == m)))
        .filter(|n| label.is_none_or(|(k, v)| n.labels.get(k).map(String::as_str) == Some(v)))
        .filter(|n| name.is_none_or(|s| n.name.contains(s.as_str())))
        .filter(|n| {
            !free_only
                || (n.ready
                    && n.devices
                        .iter()
                        .any(|d| d.healthy && d.mig.is_none() && d.holders.is_empty()))
        })
        .collect();
    let pages = nodes.len().div_ceil(NODES_PER_PAGE).max(1);
    let page = page.min(pages - 1);
    let mut h = String::from("<h2>GPU map</h2>");
    if label_raw.is_some() && label.is_none() {
        h.push_str(
            "<p class=\"warn\">The label filter takes <code>key=value</code>; it was ignored.</p>",
        );
    }
    if let Some(m) = model.filter(|m| !models.contains(m.as_str())) {
        let _ = write!(
            h,
            "<p class=\"warn\">No GPU of model {} here; the models are: {}.</p>",
            esc(m),
            esc(&models.iter().copied().collect::<Vec<_>>().join(", "))
        );
    }
    // The aggregate first: at thousands of nodes this is the view, the rows are for drilling.
    h.push_str("<table class=\"aggregate\"><tr><th>model</th><th class=\"num\">nodes</th><th class=\"num\">GPUs</th><th class=\"num\">free</th><th class=\"num\">held</th><th class=\"num\">fragmented</th><th class=\"num\">unavailable</th></tr>");
    for (m, t) in gpu_totals(nodes.iter().copied()) {
        let count = t.nodes;
        let _ = write!(
            h,
            "<tr><td><a href=\"/gpus?model={m}\">{m}</a></td><td class=\"num\">{count}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            t.gpus,
            t.free,
            t.held,
            fmt_milli(u64::from(t.fragmented_milli)),
            t.unavailable,
            m = esc(&m)
        );
    }
    h.push_str("</table>");
    let _ = write!(
        h,
        "<form class=\"filters\" method=\"get\" action=\"/gpus\"><label>model <select name=\"model\"><option value=\"\">all</option>{}</select></label>\
         <label>label <input name=\"label\" placeholder=\"key=value\" value=\"{}\"></label>\
         <label>node <input name=\"node\" placeholder=\"name contains\" value=\"{}\"></label>\
         <label><input type=\"checkbox\" name=\"free\" value=\"1\"{}> with a free GPU</label> <button>Filter</button></form>",
        models
            .iter()
            .map(|m| format!(
                "<option{}>{}</option>",
                if model.is_some_and(|x| x == m) { " selected" } else { "" },
                esc(m)
            ))
            .collect::<String>(),
        esc(q.get("label").map_or("", String::as_str)),
        esc(name.map_or("", |s| s.as_str())),
        if free_only { " checked" } else { "" }
    );
    h.push_str("<p class=\"legend\">");
    for (class, letter, text) in [
        ("free", "", "free"),
        ("used", "", "whole GPU in use (hover: job; click: its page)"),
        ("shared", "50", "shared by fractions (the % used)"),
        (
            "mig",
            "",
            "MIG instance in use (8 memory slices, each instance at its real start)",
        ),
        ("sick", "!", "unhealthy"),
        ("down", "×", "node not ready"),
    ] {
        let _ = write!(
            h,
            "<span><span class=\"dev {class}\">{letter}</span> {text}</span>"
        );
    }
    h.push_str("</p>");
    let mut keep: Vec<(&str, String)> = Vec::new();
    for k in ["model", "label", "node", "free"] {
        if let Some(v) = q.get(k).filter(|v| !v.is_empty()) {
            keep.push((k, v.clone()));
        }
    }
    let link = |p: usize| -> String {
        let mut s = format!("/gpus?page={}", p + 1);
        for (k, v) in &keep {
            let _ = write!(s, "&{k}={}", esc(&pct(v)));
        }
        s
    };
    let _ = write!(
        h,
        "<p class=\"pages\">{} node{}, page {} of {pages}",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
        page + 1
    );
    if page > 0 {
        let _ = write!(
            h,
            " · <a href=\"{}\">first</a> · <a href=\"{}\">previous</a>",
            link(0),
            link(page - 1)
        );
    }
    if page + 1 < pages {
        let _ = write!(
            h,
            " · <a href=\"{}\">next</a> · <a href=\"{}\">last</a>",
            link(page + 1),
            link(pages - 1)
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
            name = esc(&n.name)
        );
        for d in &n.devices {
            match (&d.mig, n.ready) {
                (Some(slices), true) => {
                    let _ = write!(
                        h,
                        "<span class=\"migdev\" title=\"{u} (MIG)\" data-uuid=\"{u}\">",
                        u = esc(&d.uuid)
                    );
                    for s in slices {
                        let (class, who) = match (&s.holder, s.healthy) {
                            (_, false) => ("sick", "unhealthy".to_string()),
                            (Some(hd), _) => ("used", format!("used by {}", holder_name(hd))),
                            (None, _) => ("free", "free".to_string()),
                        };
                        let (tag, href) = match &s.holder {
                            Some(hd) if s.healthy && !hd.job.is_empty() => {
                                ("a", format!(" href=\"/jobs/{}\"", esc(&hd.job)))
                            }
                            _ => ("span", String::new()),
                        };
                        let _ = write!(
                            h,
                            "<{tag}{href} class=\"slice {class}\" style=\"left:{}px;width:{}px\" title=\"{} at memory slice {}: {}\"></{tag}>",
                            u32::from(s.start) * 8,
                            u32::from(s.size) * 8,
                            esc(&s.profile),
                            s.start,
                            esc(&who)
                        );
                    }
                    h.push_str("</span>");
                }
                _ => {
                    let (class, letter, title) = device_cell(n, d);
                    // A GPU held by one job the viewer may see links to that job's page.
                    let first = d.holders.first();
                    let one_job = first.is_some_and(|f| {
                        !f.job.is_empty() && d.holders.iter().all(|h| h.job == f.job)
                    });
                    let (tag, href) = match first {
                        Some(f) if n.ready && d.healthy && one_job => {
                            ("a", format!(" href=\"/jobs/{}\"", esc(&f.job)))
                        }
                        _ => ("span", String::new()),
                    };
                    let _ = write!(
                        h,
                        "<{tag}{href} class=\"dev {class}\" title=\"{}\" data-uuid=\"{}\">{letter}</{tag}>",
                        esc(&title),
                        esc(&d.uuid)
                    );
                }
            }
        }
        h.push_str("</div>");
    }
    h
}

/// `?page=N`, 1-based in the URL (as shown), 0-based here.
fn page_of(q: &Query) -> usize {
    q.get("page")
        .and_then(|p| p.parse::<usize>().ok())
        .unwrap_or(1)
        .saturating_sub(1)
}

/// Percent-encode a query value.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (c as char).to_string()
            }
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// A bar for one flavor: used within nominal (solid), borrowed beyond it (amber stripes), lent
/// to others (grey hatch, after what it uses), with a mark at the nominal quota.
fn quota_bar(f: &gantry_engine::FlavorReport) -> String {
    let scale = (f.used + f.lent).max(f.subtree_nominal).max(1) as f64;
    let px = |v: u64| v as f64 / scale * 220.0;
    let within = f.used.saturating_sub(f.borrowed);
    format!(
        "<span class=\"bar\" title=\"{flavor}: {u} used of {n} nominal; {bo} borrowed; {l} lent\">\
         <span class=\"in\" style=\"left:0;width:{:.0}px\"></span>\
         <span class=\"over\" style=\"left:{:.0}px;width:{:.0}px\"></span>\
         <span class=\"lent\" style=\"left:{:.0}px;width:{:.0}px\"></span>\
         <span class=\"mark\" style=\"left:{:.0}px\"></span></span>",
        px(within),
        px(within),
        px(f.borrowed),
        px(f.used),
        px(f.lent),
        px(f.subtree_nominal).min(219.0),
        flavor = esc(&f.flavor),
        u = fmt_milli(f.used),
        n = fmt_milli(f.subtree_nominal),
        bo = fmt_milli(f.borrowed),
        l = fmt_milli(f.lent),
    )
}

fn queues(b: &Board) -> String {
    let mut h = String::from(
        "<h2>Queues</h2><p class=\"legend\"><span><span class=\"bar\" style=\"width:30px\"><span class=\"in\" style=\"width:30px\"></span></span> used within its quota</span>\
         <span><span class=\"bar\" style=\"width:30px\"><span class=\"over\" style=\"width:30px\"></span></span> borrowed beyond it</span>\
         <span><span class=\"bar\" style=\"width:30px\"><span class=\"lent\" style=\"width:30px\"></span></span> lent to its cohort</span>\
         <span>▏ nominal quota (a cohort's: its members' together)</span></p>\
         <table class=\"queues\"><tr><th>queue</th><th class=\"num\">weight</th><th class=\"num\">waiting</th><th class=\"num\">running</th>\
         <th>fair share</th><th>per flavor: used / quota · borrowed · lent</th></tr>",
    );
    for v in &b.queues {
        let q = &v.report;
        let mut cells = String::new();
        for f in &q.flavors {
            let limits = match (f.borrowing_limit, f.lending_limit) {
                (None, None) => String::new(),
                (bl, ll) => format!(
                    " <span class=\"muted\">({}{})</span>",
                    bl.map_or(String::new(), |l| format!("borrows ≤ {}", fmt_milli(l))),
                    ll.map_or(String::new(), |l| format!(
                        "{}lends ≤ {}",
                        if bl.is_some() { ", " } else { "" },
                        fmt_milli(l)
                    ))
                ),
            };
            let _ = write!(
                cells,
                "<div class=\"flavor\" data-flavor=\"{fl}\"><span class=\"fl\">{fl}</span> {} {} / {} · {} · {}{limits}</div>",
                quota_bar(f),
                fmt_milli(f.used),
                fmt_milli(f.subtree_nominal),
                fmt_milli(f.borrowed),
                fmt_milli(f.lent),
                fl = esc(&f.flavor)
            );
        }
        for w in &v.warnings {
            let _ = write!(cells, "<div class=\"warn\">{}</div>", esc(w));
        }
        // Share against entitlement: 1.0 (the mark) is exactly its entitlement. Cohorts are not
        // ordered by share; their members are.
        let share = if !q.leaf {
            String::new()
        } else {
            format!(
            "<span class=\"bar\" style=\"width:120px\" title=\"weighted share {s:.2} of its entitlement\">\
             <span class=\"{}\" style=\"left:0;width:{:.0}px\"></span><span class=\"mark\" style=\"left:60px\"></span></span> {s:.2}",
            if q.share > 1.0 { "over" } else { "in" },
                (q.share.min(2.0) * 60.0),
                s = q.share
            )
        };
        let name = if q.leaf {
            format!("<a href=\"/queues/{n}\">{n}</a>", n = esc(&q.name))
        } else {
            format!(
                "<a href=\"/queues/{n}\"><b>{n}</b></a> <span class=\"muted\">cohort</span>",
                n = esc(&q.name)
            )
        };
        let _ = write!(
            h,
            "<tr data-queue=\"{}\"><td class=\"tree{}\">{name}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{share}</td><td>{cells}</td></tr>",
            esc(&q.name),
            q.depth.min(3),
            q.weight,
            if q.leaf { q.pending.to_string() } else { String::new() },
            if q.leaf { q.admitted.to_string() } else { String::new() },
        );
    }
    h.push_str(
        "</table><p class=\"muted\">Fair share: the queue's largest usage over its nominal quota \
         (its entitlement; one GPU where it has none), divided by its weight. The mark is 1.0: \
         exactly its entitlement. Waiting jobs of the queue with the lowest share go first. \
         Lent: the cohort's borrowing, split over the queues leaving quota unused, in \
         proportion.</p>",
    );
    h
}

/// One queue: its numbers, its members (a cohort), its waiting line in order, what runs, and
/// its events. A cohort's lines hold its members' jobs.
fn queue(b: &Board, name: &str) -> String {
    let Some(v) = b.queues.iter().find(|q| q.report.name == name) else {
        return format!(
            "<h2>{}</h2><p>No such queue here, or it is not one you may see.</p>",
            esc(name)
        );
    };
    let q = &v.report;
    // The queue and everything under it.
    let mut members: BTreeSet<&str> = BTreeSet::from([q.name.as_str()]);
    loop {
        let before = members.len();
        for r in &b.queues {
            if r.report
                .parent
                .as_deref()
                .is_some_and(|p| members.contains(p))
            {
                members.insert(&r.report.name);
            }
        }
        if members.len() == before {
            break;
        }
    }
    let (waiting_n, running_n) = b
        .jobs
        .iter()
        .filter(|j| members.contains(j.queue.as_str()))
        .fold((0, 0), |(w, r), j| {
            (
                w + usize::from(j.waiting.is_some()),
                r + usize::from(j.state == "running"),
            )
        });
    let mut h = format!(
        "<h2>{}{}</h2><p>{}weight {}{} · {waiting_n} waiting · {running_n} running{}</p>",
        esc(&q.name),
        if q.leaf {
            ""
        } else {
            " <span class=\"muted\">cohort</span>"
        },
        q.parent.as_ref().map_or(String::new(), |p| format!(
            "in <a href=\"/queues/{p}\">{p}</a> · ",
            p = esc(p)
        )),
        q.weight,
        // Cohorts are not ordered by share; their members are.
        if q.leaf {
            format!(" · fair share <b>{:.2}</b> of its entitlement", q.share)
        } else {
            String::new()
        },
        if q.leaf {
            format!(
                " · <a href=\"/jobs?queue={n}\">its jobs</a>",
                n = esc(&q.name)
            )
        } else {
            String::new()
        },
    );
    for w in &v.warnings {
        let _ = write!(h, "<p class=\"warn\">{}</p>", esc(w));
    }
    h.push_str("<table class=\"quota\"><tr><th>flavor</th><th></th><th class=\"num\">used</th><th class=\"num\">nominal</th><th class=\"num\">with members</th><th class=\"num\">borrowed</th><th class=\"num\">lent</th><th>limits</th></tr>");
    for f in &q.flavors {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}{}</td></tr>",
            esc(&f.flavor),
            quota_bar(f),
            fmt_milli(f.used),
            fmt_milli(f.nominal),
            fmt_milli(f.subtree_nominal),
            fmt_milli(f.borrowed),
            fmt_milli(f.lent),
            f.borrowing_limit
                .map_or(String::new(), |l| format!("borrows ≤ {} ", fmt_milli(l))),
            f.lending_limit
                .map_or(String::new(), |l| format!("lends ≤ {}", fmt_milli(l))),
        );
    }
    h.push_str("</table>");
    let kids: Vec<&str> = b
        .queues
        .iter()
        .filter(|r| r.report.parent.as_deref() == Some(q.name.as_str()))
        .map(|r| r.report.name.as_str())
        .collect();
    if !kids.is_empty() {
        h.push_str("<p>Members: ");
        h.push_str(
            &kids
                .iter()
                .map(|k| format!("<a href=\"/queues/{k}\">{k}</a>", k = esc(k)))
                .collect::<Vec<_>>()
                .join(" · "),
        );
        h.push_str("</p>");
    }
    // The waiting line, in the order the scheduler looks at it.
    // A cohort's lines say which member each job is in.
    let queue_cell = |j: &JobView| {
        if q.leaf {
            String::new()
        } else {
            format!("<td>{}</td>", esc(&j.queue))
        }
    };
    let mut waiting: Vec<&JobView> = b
        .jobs
        .iter()
        .filter(|j| members.contains(j.queue.as_str()) && j.waiting.is_some())
        .collect();
    waiting.sort_by_key(|j| {
        (
            j.queue.clone(),
            j.waiting
                .as_ref()
                .and_then(|w| w.position)
                .unwrap_or(usize::MAX),
        )
    });
    let _ = write!(
        h,
        "<h3>Waiting ({})</h3><table class=\"line\"><tr><th class=\"num\">position</th><th>job</th>{}<th class=\"num\">GPUs</th><th>estimated start</th><th>why it waits</th></tr>",
        waiting.len(),
        if q.leaf { "" } else { "<th>queue</th>" }
    );
    for j in waiting.iter().take(JOBS_PER_PAGE) {
        let w = j.waiting.as_ref();
        let _ = write!(
            h,
            "<tr data-job=\"{k}\"><td class=\"num\">{}</td><td><a href=\"/jobs/{k}\">{}</a></td>{}<td class=\"num\">{}</td><td>{}</td><td>{}{}</td></tr>",
            w.and_then(|w| w.position).map_or(String::new(), |p| p.to_string()),
            esc(&j.name),
            queue_cell(j),
            gpus_cell(j),
            eta_cell(j, b.now_ms),
            if w.is_some_and(|w| w.unresolvable) { "⚠ will not fit as asked: " } else { "" },
            esc(w.map_or("", |w| w.reason.as_str())),
            k = esc(&j.key),
        );
    }
    if waiting.len() > JOBS_PER_PAGE {
        let _ = write!(
            h,
            "<tr><td colspan=\"6\" class=\"muted\">{} more: <a href=\"/jobs?queue={}&state=pending\">all of them</a></td></tr>",
            waiting.len() - JOBS_PER_PAGE,
            esc(&q.name)
        );
    }
    h.push_str("</table>");
    let running: Vec<&JobView> = b
        .jobs
        .iter()
        .filter(|j| members.contains(j.queue.as_str()) && j.state == "running")
        .collect();
    let _ = write!(
        h,
        "<h3>Running ({})</h3><table class=\"running\"><tr><th>job</th>{}<th class=\"num\">GPUs</th><th>started</th></tr>",
        running.len(),
        if q.leaf { "" } else { "<th>queue</th>" }
    );
    for j in running.iter().take(JOBS_PER_PAGE) {
        let _ = write!(
            h,
            "<tr><td><a href=\"/jobs/{k}\">{}</a></td>{}<td class=\"num\">{}</td><td>{}</td></tr>",
            esc(&j.name),
            queue_cell(j),
            gpus_cell(j),
            j.started_ms.map_or(String::new(), when),
            k = esc(&j.key),
        );
    }
    h.push_str("</table><h3>Latest events</h3>");
    h.push_str(&events_table(
        b,
        fold(
            b.events
                .iter()
                .filter(|e| members.contains(e.queue.as_str())),
        )
        .into_iter()
        .take(30),
        true,
    ));
    h
}

/// What a job asks of GPUs, for a table cell: `2`, `0.5`, `3 MIG`, `1 + 2 MIG`.
fn gpus_cell(j: &JobView) -> String {
    match (j.gpu_milli, j.slices) {
        (m, 0) => fmt_milli(m),
        (0, n) => format!("{n} MIG"),
        (m, n) => format!("{} + {n} MIG", fmt_milli(m)),
    }
}

fn eta_cell(j: &JobView, now_ms: u64) -> String {
    match j.waiting.as_ref().and_then(|w| w.estimated_start_ms) {
        Some(t) if t <= now_ms + 1_000 => "next cycle".into(),
        Some(t) => when(t),
        None => String::new(),
    }
}

fn jobs(b: &Board, q: &Query) -> String {
    let queue = q.get("queue").filter(|s| !s.is_empty());
    let state = q.get("state").filter(|s| !s.is_empty());
    let states: Vec<String> = state
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().to_ascii_lowercase())
                .collect()
        })
        .unwrap_or_default();
    let user = q.get("user").filter(|s| !s.is_empty());
    let page = page_of(q);
    let mut h = String::from("<h2>Jobs</h2>");
    let queues: BTreeSet<&str> = b
        .queues
        .iter()
        .filter(|q| q.report.leaf)
        .map(|q| q.report.name.as_str())
        .collect();
    let users: BTreeSet<&str> = b
        .jobs
        .iter()
        .map(|j| j.user.as_str())
        .filter(|u| !u.is_empty())
        .collect();
    const STATES: [&str; 5] = ["pending", "running", "succeeded", "failed", "cancelled"];
    let select = |name: &str, all: &mut dyn Iterator<Item = &str>, cur: Option<&String>| {
        let mut s =
            format!("<label>{name} <select name=\"{name}\"><option value=\"\">all</option>");
        let mut found = cur.is_none();
        for v in all {
            let on = cur.is_some_and(|c| c.eq_ignore_ascii_case(v));
            found |= on;
            let _ = write!(
                s,
                "<option{}>{}</option>",
                if on { " selected" } else { "" },
                esc(v)
            );
        }
        if let (false, Some(c)) = (found, cur) {
            // Keep what was asked for visible, even when nothing matches it.
            let _ = write!(s, "<option selected>{}</option>", esc(c));
        }
        s.push_str("</select></label>");
        s
    };
    let _ = write!(
        h,
        "<form class=\"filters\" method=\"get\" action=\"/jobs\">{}{}{}<button>Filter</button></form>",
        select("queue", &mut queues.iter().copied(), queue),
        select("state", &mut STATES.into_iter(), state),
        if users.is_empty() {
            String::new()
        } else {
            select("user", &mut users.iter().copied(), user)
        },
    );
    if let Some(qn) = queue.filter(|q| !queues.contains(q.as_str())) {
        let _ = write!(
            h,
            "<p class=\"warn\">No queue named {} that you may see.</p>",
            esc(qn)
        );
    }
    if let Some(bad) = states.iter().find(|s| !STATES.contains(&s.as_str())) {
        let _ = write!(
            h,
            "<p class=\"warn\">Unknown state {}: the states are {}.</p>",
            esc(bad),
            STATES.join(", ")
        );
    }
    let mut shown: Vec<&JobView> = b
        .jobs
        .iter()
        .filter(|j| {
            queue.is_none_or(|q| &j.queue == q)
                && (states.is_empty() || states.contains(&j.state))
                && user.is_none_or(|u| &j.user == u)
        })
        .collect();
    if queue.is_some() {
        // One queue: its waiting line in order first, then the rest, newest first.
        shown.sort_by_key(|j| {
            j.waiting
                .as_ref()
                .map_or(usize::MAX, |w| w.position.unwrap_or(usize::MAX - 1))
        });
    }
    let pages = shown.len().div_ceil(JOBS_PER_PAGE).max(1);
    let page = page.min(pages - 1);
    let _ = write!(h, "<p>{} jobs, page {} of {pages}", shown.len(), page + 1);
    let mut keep = String::new();
    for (k, v) in [("queue", queue), ("state", state), ("user", user)] {
        if let Some(v) = v {
            let _ = write!(keep, "&{k}={}", esc(&pct(v)));
        }
    }
    if page > 0 {
        let _ = write!(h, " · <a href=\"/jobs?page={page}{keep}\">previous</a>");
    }
    if page + 1 < pages {
        let _ = write!(h, " · <a href=\"/jobs?page={}{keep}\">next</a>", page + 2);
    }
    let with_user = !users.is_empty();
    let _ = write!(
        h,
        "</p><table class=\"jobs\"><tr><th>job</th><th>queue</th>{}<th>state</th><th class=\"num\">tasks</th><th class=\"num\">GPUs</th><th class=\"num\">position</th><th>estimated start</th><th>why it waits / how it ended</th></tr>",
        if with_user { "<th>user</th>" } else { "" }
    );
    for j in shown.iter().skip(page * JOBS_PER_PAGE).take(JOBS_PER_PAGE) {
        let placed = j.tasks.iter().filter(|t| !t.node.is_empty()).count();
        let (position, why) = match (&j.waiting, j.state.as_str()) {
            (Some(w), _) => (
                w.position
                    .map_or(String::new(), |p| format!("{p} of {}", w.queue_length)),
                format!(
                    "{}{}",
                    if w.unresolvable {
                        "⚠ will not fit as asked: "
                    } else {
                        ""
                    },
                    w.reason
                ),
            ),
            (None, "failed") => (
                String::new(),
                match j.exit_code {
                    Some(c) => format!("exit {c}: {}", j.reason),
                    None => j.reason.clone(),
                },
            ),
            (None, _) => (String::new(), j.reason.clone()),
        };
        let user_cell = if with_user {
            format!(
                "<td>{}</td>",
                if j.user.is_empty() {
                    String::new()
                } else {
                    format!("<a href=\"/jobs?user={u}\">{u}</a>", u = esc(&j.user))
                }
            )
        } else {
            String::new()
        };
        let _ = write!(
            h,
            "<tr data-job=\"{k}\"><td><a href=\"/jobs/{k}\">{}</a></td><td class=\"nowrap\">{}</td>{user_cell}<td>{}</td><td class=\"num\">{placed}/{}</td><td class=\"num\">{}</td><td class=\"num nowrap\">{position}</td><td>{}</td><td>{}</td></tr>",
            esc(&j.name),
            esc(&j.queue),
            esc(&j.state),
            j.tasks_wanted,
            gpus_cell(j),
            eta_cell(j, b.now_ms),
            esc(&why),
            k = esc(&j.key),
        );
    }
    h.push_str("</table>");
    h
}

fn job(b: &Board, key: &str) -> String {
    let Some(j) = b.job(key) else {
        return format!(
            "<h2>{}</h2><p>No such job here: it finished and was forgotten, never existed, or \
             is in a queue you may not see.</p>",
            esc(key)
        );
    };
    let mut h = format!(
        "<h2>{}</h2><p>queue <b><a href=\"/queues/{q}\">{q}</a></b> · kind {} · state <b>{}</b>{}{} · submitted {}{}{}</p>",
        esc(&j.name),
        esc(&j.kind),
        esc(&j.state),
        if j.attempt > 0 {
            format!(" · run {}", j.attempt + 1)
        } else {
            String::new()
        },
        j.exit_code
            .map_or(String::new(), |c| format!(" · exit code <b>{c}</b>")),
        when(j.submitted_ms),
        j.started_ms
            .map_or(String::new(), |t| format!(" · started {}", when(t))),
        j.finished_ms
            .map_or(String::new(), |t| format!(" · ended {}", when(t))),
        q = esc(&j.queue),
    );
    if !j.request.is_empty() {
        let _ = write!(h, "<p class=\"request\">asks for {}</p>", esc(&j.request));
    }
    if !j.user.is_empty() {
        let _ = write!(h, "<p>submitted by <b>{}</b></p>", esc(&j.user));
    }
    if let Some(w) = &j.waiting {
        h.push_str("<div class=\"box waiting\">");
        let _ = write!(h, "<p><b>Why it waits:</b> {}</p>", esc(&w.reason));
        if let Some(p) = w.position {
            let _ = write!(
                h,
                "<p>Position in its queue: <b>{p}</b> of {}</p>",
                w.queue_length
            );
        }
        let _ = write!(
            h,
            "<p>Estimated start: {}</p>",
            match w.estimated_start_ms {
                Some(_) => eta_cell(j, b.now_ms),
                None => "unknown (the work ahead of it has no expected runtime, or it is \
                         more than 64 cycles away)"
                    .into(),
            }
        );
        if w.unresolvable {
            h.push_str("<p class=\"warn\">Waiting will not help: no node or quota can ever hold it as asked.</p>");
        }
        h.push_str("</div>");
    } else if !j.reason.is_empty() {
        let _ = write!(h, "<p><b>Why:</b> {}</p>", esc(&j.reason));
    }
    let _ = write!(
        h,
        "<h3>Tasks</h3><p class=\"muted\">{} of {} placed</p><table class=\"tasks\"><tr><th>task</th><th>node</th><th>devices</th><th>phase</th></tr>",
        j.tasks.iter().filter(|t| !t.node.is_empty()).count(),
        j.tasks_wanted
    );
    for t in &j.tasks {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.name),
            esc(&t.node),
            esc(&t.devices.join(" ")),
            esc(&t.phase)
        );
    }
    h.push_str("</table><h3>Events</h3>");
    // The latest 100 rows, repeats folded.
    let rows = fold(j.events.iter());
    if rows.len() > 100 {
        let _ = write!(
            h,
            "<p class=\"muted\">{} earlier rows not shown.</p>",
            rows.len() - 100
        );
    }
    h.push_str(&events_table(
        b,
        rows.iter().skip(rows.len().saturating_sub(100)).cloned(),
        false,
    ));
    if !j.output.is_empty() {
        h.push_str("<h3>Output (the last 4 KiB of each task)</h3>");
        for (task, text) in &j.output {
            let _ = write!(
                h,
                "<p class=\"muted\">task {}</p><pre>{}</pre>",
                esc(task),
                esc(text)
            );
        }
    }
    h
}

fn services(b: &Board) -> String {
    let mut h = String::from(
        "<h2>Inference services</h2><table class=\"services\"><tr><th>service</th><th>queue</th><th>state</th>\
         <th>min / desired / running / ready / max</th><th>load / target</th><th>last decision</th><th>endpoints</th></tr>",
    );
    if b.services.as_ref().is_none_or(Vec::is_empty) {
        h.push_str("<tr><td colspan=\"7\" class=\"muted\">No inference services (jobs of <code>kind: inference</code>) yet.</td></tr>");
    }
    for v in b.services.iter().flatten() {
        let load = match (v.per_replica, v.target > 0.0) {
            (Some(l), true) => format!("{l:.2} / {} {}", v.target, esc(&v.metric)),
            (None, true) => format!("- / {} {}", v.target, esc(&v.metric)),
            _ => String::new(),
        };
        let ends: Vec<String> = v
            .endpoints
            .iter()
            .map(|(e, ready)| format!("{}{}", esc(e), if *ready { "" } else { " (not ready)" }))
            .collect();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} / {} / {} / {} / {}</td><td>{load}</td><td>{}</td><td>{}</td></tr>",
            job_link(b, &v.key),
            esc(&v.queue),
            esc(&v.state),
            v.min,
            v.desired,
            v.running,
            v.ready,
            v.max,
            esc(&v.last_decision),
            ends.join("<br>"),
        );
    }
    h.push_str("</table>");
    h
}
