//! The dashboard's HTTP side: routes for an axum router, sessions, and live updates.
//!
//! - `/`, `/gpus`, `/queues`, `/jobs`, `/jobs/KEY`, `/services` (where the driver has them);
//! - with tokens, `/login?token=…&next=/path` checks a token and keeps it in an
//!   `HttpOnly; SameSite=Strict` cookie; any page without a known token answers the sign-in
//!   form (401);
//! - a request with `X-Gantry-Fragment: 1` gets only `<main>`; with `If-None-Match` equal to the
//!   current ETag it is held until a change makes the content differ (or 25 s, then 304). The
//!   source says when something changed, so a held request is looked at again only then: the
//!   cost follows the changes, not the clock.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::render::{self, Page};
use crate::Board;

/// Who is looking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    /// User name.
    pub user: String,
    /// Teams.
    pub teams: Vec<String>,
    /// Sees everything.
    pub admin: bool,
}

/// What a driver gives the dashboard.
pub trait Source: Send + Sync + 'static {
    /// A board for `page`, as `viewer` may see it (restricted with [`Board::restrict`]). A
    /// source may leave out what the page does not show (estimates and output off the job
    /// pages).
    fn board(&self, page: &Page, viewer: Option<&Viewer>) -> Arc<Board>;
    /// Resolves after the next change (new jobs, placements, nodes, queues); may resolve
    /// spuriously.
    fn changed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>>;
    /// Resolves once a board worth showing is at hand. A driver that builds boards only while
    /// someone looks waits here (briefly) for a fresh one after a quiet spell; the default is
    /// ready at once.
    fn fresh(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(std::future::ready(()))
    }
    /// Whether this driver has inference services (a Services page).
    fn has_services(&self) -> bool;
    /// Whether pages need a token.
    fn needs_token(&self) -> bool;
    /// The viewer a token belongs to.
    fn viewer(&self, token: &str) -> Option<Viewer>;
}

/// The cookie holding the session's token.
pub const COOKIE: &str = "gantry_token";

/// How long a live request is held before it is answered "not modified".
const HOLD: Duration = Duration::from_secs(25);

/// The dashboard's routes, to merge beside `/metrics`.
pub fn router<S: Source>(source: Arc<S>) -> axum::Router {
    use axum::routing::get;
    let handler = move |login: bool| {
        let s = source.clone();
        move |uri: Uri, headers: HeaderMap| {
            let s = s.clone();
            async move { respond(s.as_ref(), login, &uri, &headers).await }
        }
    };
    axum::Router::new()
        .route("/", get(handler(false)))
        .route("/gpus", get(handler(false)))
        .route("/queues", get(handler(false)))
        .route("/jobs", get(handler(false)))
        .route("/jobs/{*key}", get(handler(false)))
        .route("/queues/{name}", get(handler(false)))
        .route("/services", get(handler(false)))
        .route("/login", get(handler(true)))
        .fallback(|uri: Uri| async move {
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                render::not_found(uri.path()),
            )
        })
}

fn page_of(path: &str) -> Page {
    match path {
        "/gpus" => Page::Gpus,
        "/queues" => Page::Queues,
        "/jobs" => Page::Jobs,
        "/services" => Page::Services,
        p => match (p.strip_prefix("/jobs/"), p.strip_prefix("/queues/")) {
            (Some(k), _) => Page::Job(decode(k)),
            (_, Some(q)) => Page::Queue(decode(q)),
            _ => Page::Overview,
        },
    }
}

async fn respond<S: Source>(s: &S, login: bool, uri: &Uri, headers: &HeaderMap) -> Response {
    let q = query(uri);
    let mut set_cookie = None;
    let viewer = if s.needs_token() {
        let from_query = q.get("token").filter(|_| login);
        let token = from_query.cloned().or_else(|| cookie(headers, COOKIE));
        match token.as_deref().and_then(|t| s.viewer(t)) {
            Some(v) => {
                if let Some(t) = from_query {
                    set_cookie = Some(format!("{COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/"));
                }
                Some(v)
            }
            None => {
                let why = if token.is_some() {
                    "That token is not known."
                } else {
                    ""
                };
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    render::login(why),
                )
                    .into_response();
            }
        }
    } else {
        None
    };
    if login {
        // Back to where the user was going (a path on this server only).
        let next = q
            .get("next")
            .filter(|n| n.starts_with('/') && !n.starts_with("//"))
            .cloned()
            .unwrap_or_else(|| "/".into());
        let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
        if let Some(v) = set_cookie.and_then(|c| c.parse().ok()) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return r;
    }
    let page = page_of(uri.path());
    if page == Page::Services && !s.has_services() {
        return (
            StatusCode::NOT_FOUND,
            "this driver has no inference services\n",
        )
            .into_response();
    }
    let fragment = headers.contains_key("x-gantry-fragment");
    let seen = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    s.fresh().await;
    // Subscribe before rendering, so a change during the render is not missed.
    let mut changed = s.changed();
    let mut board = s.board(&page, viewer.as_ref());
    let mut body = render::content(&page, &board, &q);
    let mut etag = etag_of(&body);
    if fragment && seen.as_deref() == Some(etag.as_str()) {
        let end = tokio::time::Instant::now() + HOLD;
        loop {
            // At the end of the hold, one more look (for changes a source does not signal),
            // then "not modified".
            let last = tokio::select! {
                _ = &mut changed => false,
                _ = tokio::time::sleep_until(end) => true,
            };
            changed = s.changed();
            board = s.board(&page, viewer.as_ref());
            body = render::content(&page, &board, &q);
            etag = etag_of(&body);
            if seen.as_deref() != Some(etag.as_str()) {
                break;
            }
            if last {
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
    let who = viewer.as_ref().map(|v| {
        if v.admin {
            format!("{} (admin)", v.user)
        } else {
            format!("{} ({})", v.user, v.teams.join(", "))
        }
    });
    let html = render::frame(&page, &board, &body, &etag, who.as_deref());
    let status = match &page {
        Page::Job(k) if board.job(k).is_none() => StatusCode::NOT_FOUND,
        Page::Queue(q) if !board.queues.iter().any(|v| &v.report.name == q) => {
            StatusCode::NOT_FOUND
        }
        _ => StatusCode::OK,
    };
    let mut r = (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response();
    if let Some(c) = set_cookie.and_then(|c| c.parse().ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// Percent-decoding (`+` as a space).
fn decode(s: &str) -> String {
    let b = s.replace('+', " ");
    let bytes = b.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `?a=b&c=d`, percent-decoded.
pub fn query(uri: &Uri) -> BTreeMap<String, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The other side of the boundary: a driver with one board and two tokens.
    struct Fixed(Arc<Board>);

    impl Source for Fixed {
        fn board(&self, _: &Page, viewer: Option<&Viewer>) -> Arc<Board> {
            let mut b = (*self.0).clone();
            if let Some(v) = viewer.filter(|v| !v.admin) {
                b.restrict(&|q| v.teams.iter().any(|t| t == q));
            }
            Arc::new(b)
        }
        fn changed(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
            Box::pin(std::future::pending())
        }
        fn has_services(&self) -> bool {
            false
        }
        fn needs_token(&self) -> bool {
            true
        }
        fn viewer(&self, token: &str) -> Option<Viewer> {
            (token == "tok-a").then(|| Viewer {
                user: "alice".into(),
                teams: vec!["team-a".into()],
                admin: false,
            })
        }
    }

    /// A raw HTTP/1.0 exchange: status line and body.
    async fn get(addr: std::net::SocketAddr, path: &str, cookie: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.0\r\nHost: x\r\nCookie: {cookie}\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("read");
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (head.to_string(), body.to_string())
    }

    #[tokio::test]
    async fn sessions_not_found_pages_and_team_filtering_over_http() {
        let job = |key: &str, queue: &str| crate::JobView {
            key: key.into(),
            name: key.into(),
            queue: queue.into(),
            state: "running".into(),
            ..crate::JobView::default()
        };
        let queue = |name: &str| crate::QueueView {
            report: gantry_engine::QueueReport {
                name: name.into(),
                parent: None,
                depth: 0,
                leaf: true,
                weight: 1.0,
                pending: 0,
                admitted: 1,
                share: 0.0,
                flavors: Vec::new(),
            },
            warnings: Vec::new(),
        };
        let board = Board {
            jobs: vec![job("mine", "team-a"), job("theirs", "team-b")],
            queues: vec![queue("team-a"), queue("team-b")],
            ..Board::default()
        };
        let app = router(Arc::new(Fixed(Arc::new(board))));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(l, app).await });
        // No session: the sign-in form, 401, nothing else.
        let (head, body) = get(addr, "/jobs", "").await;
        assert!(head.contains(" 401 ") && body.contains("Sign in"), "{head}");
        assert!(!body.contains("mine"));
        // A known token sets an HttpOnly, SameSite=Strict cookie and goes where asked.
        let (head, _) = get(addr, "/login?token=tok-a&next=%2Fjobs", "").await;
        assert!(
            head.contains(" 303 ") && head.contains("location: /jobs"),
            "{head}"
        );
        assert!(head.contains("HttpOnly; SameSite=Strict"), "{head}");
        // Off-site redirects are not followed.
        let (head, _) = get(addr, "/login?token=tok-a&next=%2F%2Fevil.example", "").await;
        assert!(
            head.contains("location: /\r") || head.ends_with("location: /"),
            "{head}"
        );
        let (head, body) = get(addr, "/jobs", "gantry_token=tok-a").await;
        assert!(head.contains(" 200 "), "{head}");
        assert!(body.contains("mine") && !body.contains("theirs"), "{body}");
        // Another team's job, an unknown one and an unknown path: 404 with a page.
        let (head, body) = get(addr, "/jobs/theirs", "gantry_token=tok-a").await;
        assert!(
            head.contains(" 404 ") && body.contains("No such job here"),
            "{head}"
        );
        let (head, body) = get(addr, "/queues/team-a", "gantry_token=tok-a").await;
        assert!(
            head.contains(" 200 ") && body.contains("Running (1)"),
            "{head}"
        );
        let (head, body) = get(addr, "/queues/team-b", "gantry_token=tok-a").await;
        assert!(
            head.contains(" 404 ") && body.contains("No such queue here"),
            "another team's queue: {head}"
        );
        let (head, body) = get(addr, "/queues/team-a/x", "gantry_token=tok-a").await;
        assert!(
            head.contains(" 404 ") && body.contains("There is no page /queues/team-a/x"),
            "{head}"
        );
        let (head, body) = get(addr, "/services", "gantry_token=tok-a").await;
        assert!(
            head.contains(" 404 ") && body.contains("no inference services"),
            "{head}"
        );
    }

    #[test]
    fn queries_cookies_and_pages() {
        let uri: Uri = "/jobs?queue=team%2Da&state=pending&x&bad=%zz&end=%4&u=%%C3%A9"
            .parse()
            .unwrap();
        let q = query(&uri);
        assert_eq!(q["queue"], "team-a");
        assert_eq!(q["state"], "pending");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
        assert_eq!(q["u"], "%é", "a % before a multi-byte character is kept");
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; gantry_token=t0k".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE).as_deref(), Some("t0k"));
        assert_ne!(etag_of("a"), etag_of("b"));
        assert_eq!(page_of("/jobs/pg_ns_a%20b"), Page::Job("pg_ns_a b".into()));
        assert_eq!(page_of("/nope"), Page::Overview);
        assert_eq!(page_of("/queues/team-a"), Page::Queue("team-a".into()));
    }
}
