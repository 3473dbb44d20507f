//! The store under faults, with real `gantry serve` processes. A full disk is played with the
//! file size limit (`RLIMIT_FSIZE` through util-linux `prlimit`, SIGXFSZ ignored): past it,
//! every write that grows `gantry.redb` fails with an I/O error (EFBIG), through the same code
//! paths as ENOSPC.
//!
//! - The limit is lifted while the writer retries: the store is reopened, the submission that
//!   was in flight is acknowledged, serve stays ready, and `gantry_store_errors_total` counts the
//!   failures.
//! - The limit stays: the submission is refused (never acknowledged), serve exits non-zero naming
//!   the store file, and a restart holds every acknowledged job and nothing else.
//! - `gantry store check` and `backup` on the result.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{client_json, gantry, listen_addr, poll, serve, Proc};

/// `prlimit` (util-linux) sets and lifts the limit; without it the tests say they skip.
fn have_prlimit() -> bool {
    let ok = std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("prlimit (util-linux) not found: skipping the full-disk tests");
    }
    ok
}

/// Lift a running process's file size limit.
fn lift_fsize(pid: u32) {
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--fsize=unlimited:unlimited"])
        .status()
        .expect("prlimit");
    assert!(st.success());
}

/// `gantry serve --no-local-agent` whose files may not grow past `limit` bytes (SIGXFSZ
/// ignored, so a write past it fails instead of killing the process).
fn serve_limited(data: &Path, limit: u64) -> (Proc, String, String) {
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "trap '' XFSZ; exec prlimit --fsize={limit}:unlimited -- \"$0\" \"$@\""
        ))
        .arg(env!("CARGO_BIN_EXE_gantry"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--no-local-agent",
        ]);
    let mut p = Proc::spawn("serve", cmd);
    let addr = p.wait_line("listen address", listen_addr);
    let metrics = p.wait_line("metrics address", |l| {
        let rest = l.split("metrics on http://").nth(1)?;
        Some(rest.split('/').next()?.to_string())
    });
    (p, addr, metrics)
}

fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, out))
}

fn job_file(dir: &Path, name: &str) -> String {
    let spec = serde_json::json!({
        "name": name,
        "queue": "default",
        // A long env makes each record a few KiB, so the file has to grow soon.
        "env": {"PAYLOAD": "x".repeat(4096)},
        "tasks": [{"count": 1, "gpus": 1}],
        "command": ["true"],
    });
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, serde_json::to_string(&spec).expect("json")).expect("write");
    file.to_string_lossy().into_owned()
}

/// Submit; whether it was acknowledged, and what the client said.
fn submit(addr: &str, file: &str) -> (bool, String) {
    let out = gantry()
        .args(["submit", file, "--server", addr])
        .stdin(Stdio::null())
        .output()
        .expect("run gantry");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The size of a fresh store, so a limit just above it makes the next growth fail.
fn fresh_store(data: &Path) -> u64 {
    let (mut p, _addr) = serve(data, &["--no-local-agent"]);
    let file = data.join("gantry.redb");
    poll("the store file", || {
        std::fs::metadata(&file).map(|m| m.len()).map_err(|_| ())
    });
    drop(p.child.kill());
    let _ = p.child.wait();
    std::fs::metadata(&file).expect("store").len()
}

/// A fresh data dir and `serve_limited` on it with room for about one more job record; the
/// jobs' directory; serve's gRPC and metrics addresses. None without `prlimit`.
fn nearly_full() -> Option<(tempfile::TempDir, tempfile::TempDir, Proc, String, String)> {
    if !have_prlimit() {
        return None;
    }
    let data = tempfile::tempdir().expect("tmp");
    let jobs = tempfile::tempdir().expect("jobs");
    let size = fresh_store(data.path());
    let (server, addr, metrics) = serve_limited(data.path(), size + 4096);
    Some((data, jobs, server, addr, metrics))
}

fn names(addr: &str) -> Vec<String> {
    let mut v: Vec<String> = client_json(addr, &["jobs"])
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j["name"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_disk_that_fills_then_clears_is_survived_by_reopening_the_store() {
    let Some((data, jobs, server, addr, metrics)) = nearly_full() else {
        return;
    };
    let pid = server.child.id();
    let mut acked = Vec::new();
    let mut lifted = false;
    for i in 0..400 {
        let name = format!("j{i:03}");
        let file = job_file(jobs.path(), &name);
        let addr2 = addr.clone();
        let t = std::thread::spawn(move || submit(&addr2, &file));
        // Once the server says a commit failed, make room: the retry after reopening succeeds.
        let end = Instant::now() + Duration::from_secs(30);
        while !t.is_finished() && Instant::now() < end {
            if !lifted && server.lines().iter().any(|l| l.contains("commit failed")) {
                lift_fsize(pid);
                lifted = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let (ok, said) = t.join().expect("submit thread");
        assert!(
            ok,
            "{name} refused although the disk cleared: {said}\n{}",
            server.tail()
        );
        acked.push(name);
        if lifted {
            break;
        }
    }
    assert!(lifted, "the store never hit the limit:\n{}", server.tail());
    assert!(
        server.lines().iter().any(|l| l.contains("reopened")),
        "the store was not reopened:\n{}",
        server.tail()
    );
    let (code, _) = http_get(&metrics, "/readyz").expect("readyz");
    assert_eq!(code, 200, "ready again once writes go through");
    let (_, body) = http_get(&metrics, "/metrics").expect("metrics");
    let errors: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("gantry_store_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("gantry_store_errors_total");
    assert!(errors >= 1.0, "store errors counted: {errors}");
    // Still writing, and everything acknowledged is there after a restart.
    let (ok, said) = submit(&addr, &job_file(jobs.path(), "after"));
    assert!(ok, "{said}");
    acked.push("after".into());
    drop(server);
    let (_server, addr) = serve(data.path(), &["--no-local-agent"]);
    acked.sort();
    assert_eq!(names(&addr), acked);
}

#[test]
fn a_disk_that_stays_full_stops_serve_and_loses_nothing_acknowledged() {
    let Some((data, jobs, mut server, addr, metrics)) = nearly_full() else {
        return;
    };
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        let name = format!("j{i:03}");
        let (ok, said) = submit(&addr, &job_file(jobs.path(), &name));
        if ok {
            acked.push(name);
        } else {
            refused = Some((name, said));
            break;
        }
    }
    let (name, said) = refused.expect("the store never hit the limit");
    assert!(
        said.contains("gantry.redb"),
        "the refusal names the store: {said}"
    );
    // Never ready again: either 503 or already gone.
    if let Some((code, _)) = http_get(&metrics, "/readyz") {
        assert_eq!(code, 503, "ready after a failed commit");
    }
    let end = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(s)) = server.child.try_wait() {
            break s;
        }
        assert!(Instant::now() < end, "serve still runs:\n{}", server.tail());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !status.success(),
        "serve must exit non-zero:\n{}",
        server.tail()
    );
    assert!(
        server.tail().contains("gantry.redb"),
        "the exit names the store:\n{}",
        server.tail()
    );
    // Restart with room: every acknowledged job, and not the refused one.
    let (s2, addr) = serve(data.path(), &["--no-local-agent"]);
    acked.sort();
    let have = names(&addr);
    assert_eq!(have, acked, "{name} was refused, the rest acknowledged");
    drop(s2);
    // The operator's tools on the result.
    let out = gantry()
        .args(["store", "check", "--data-dir"])
        .arg(data.path())
        .output()
        .expect("store check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("{} jobs", acked.len())), "{text}");
    let copy = jobs.path().join("backup.redb");
    let out = gantry()
        .args(["store", "backup", "--data-dir"])
        .arg(data.path())
        .arg("--to")
        .arg(&copy)
        .output()
        .expect("store backup");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(copy.exists());
}

#[test]
fn serve_refuses_an_empty_store_file_and_says_what_to_do() {
    let data = tempfile::tempdir().expect("tmp");
    std::fs::write(data.path().join("gantry.redb"), b"").expect("empty");
    let out = gantry()
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--no-local-agent",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("serve");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started over an empty store: {said}");
    assert!(
        said.contains("gantry.redb") && said.contains("empty"),
        "{said}"
    );
    assert!(!said.contains("panicked"), "{said}");
}
