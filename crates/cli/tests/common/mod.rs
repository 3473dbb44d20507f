//! Helpers for the tests that run the `gantry` binary as real processes: a guard that kills
//! its child (and any task processes it was told about) when dropped, a reader that keeps the
//! child's stderr drained and searchable, and polling with a deadline.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long any one wait in these tests may take before the test fails. Generous: the machine
/// may be busy; the waits end as soon as the condition holds.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The `gantry` binary.
pub fn gantry() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gantry"))
}

/// A child process, killed (SIGKILL) and reaped when dropped, with its stderr lines kept.
pub struct Proc {
    pub name: String,
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    /// Other processes to kill on drop (task processes orphaned by a killed agent).
    pub also_kill: Vec<u32>,
}

impl Proc {
    /// Start `cmd` with stderr captured (stdout is captured too and merged into the lines).
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        for (stream, r) in [
            ("stdout", Box::new(out) as Box<dyn std::io::Read + Send>),
            ("stderr", Box::new(err)),
        ] {
            let lines = lines.clone();
            let echo = std::env::var_os("GANTRY_TEST_ECHO").is_some();
            let who = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if echo {
                        eprintln!("[{who} {stream}] {line}");
                    }
                    lines.lock().expect("lines").push(line);
                }
            });
        }
        Proc {
            name: name.to_string(),
            child,
            lines,
            also_kill: Vec::new(),
        }
    }

    /// Every line printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// The last lines, for failure messages.
    pub fn tail(&self) -> String {
        let l = self.lines();
        l[l.len().saturating_sub(40)..].join("\n")
    }

    /// Wait until a printed line gives `Some`.
    pub fn wait_line<T>(&mut self, what: &str, f: impl Fn(&str) -> Option<T>) -> T {
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(v) = self.lines().iter().find_map(|l| f(l)) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before {what}:\n{}",
                    self.name,
                    self.tail()
                );
            }
            assert!(
                Instant::now() < end,
                "{}: no {what} within {DEADLINE:?}:\n{}",
                self.name,
                self.tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Ask politely first (SIGINT: serve and agent stop their task processes), then SIGKILL.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status();
            let end = Instant::now() + Duration::from_secs(5);
            while Instant::now() < end && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill9();
        for pid in &self.also_kill {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The gRPC address `gantry serve` says it listens on (a text line, or the message of a JSON
/// log line).
pub fn listen_addr(line: &str) -> Option<String> {
    let message = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(v) => v["fields"]["message"].as_str()?.to_string(),
        Err(_) => line.to_string(),
    };
    let rest = message.split("gantry serve: listening on ").nth(1)?;
    rest.split_whitespace().next().map(str::to_string)
}

/// Start `gantry serve` on free ports with `args`; returns the process and its gRPC address.
pub fn serve(data: &Path, args: &[&str]) -> (Proc, String) {
    let mut cmd = gantry();
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(args);
    let mut p = Proc::spawn("serve", cmd);
    let addr = p.wait_line("listen address", listen_addr);
    (p, addr)
}

/// Run a client command against `addr` and parse its JSON output.
pub fn client_json(addr: &str, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = client_text(addr, &all);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("gantry {args:?}: output is not JSON ({e}): {out}"))
}

/// Run a client command and return its stdout; panics with stderr when it fails.
pub fn client_text(addr: &str, args: &[&str]) -> String {
    let out = gantry()
        .args(args)
        .args(["--server", addr])
        .stdin(Stdio::null())
        .output()
        .expect("run gantry");
    assert!(
        out.status.success(),
        "gantry {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `f` until it gives `Some`, failing with `what` and the last value seen after
/// [`DEADLINE`].
pub fn poll<T, L: std::fmt::Debug>(what: &str, mut f: impl FnMut() -> Result<T, L>) -> T {
    let end = Instant::now() + DEADLINE;
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < end,
                "{what}: not reached within {DEADLINE:?}; last seen: {last:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The job named `name` in `gantry jobs -o json`.
pub fn job(addr: &str, name: &str) -> Option<serde_json::Value> {
    client_json(addr, &["jobs"])
        .as_array()
        .expect("a list of jobs")
        .iter()
        .find(|j| j["name"] == name)
        .cloned()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state follows the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
    }
}

// ------------------------------------------------------------------ the dashboard in a browser

/// Debian's `chromium` (or another Chromium) on PATH.
pub fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|b| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|d| Path::new(d).join(b))
                .find(|p| p.exists())
        })
}

/// The page's DOM after its scripts ran (`live` long polls first).
pub fn dom(browser: &Path, url: &str) -> String {
    // Bounded: a page that kept its long poll open would otherwise hold the browser.
    let out = Command::new("timeout")
        .arg("90")
        .arg(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=30000",
            "--dump-dom",
            url,
        ])
        .output()
        .expect("run chromium");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A 1280×800 screenshot of `url` into `target/dashboard-screenshots/NAME.png`.
pub fn screenshot(browser: &Path, url: &str, name: &str) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../dashboard-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    let file = dir.join(format!("{name}.png"));
    let _ = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg("--window-size=1280,800")
        .arg(format!("--screenshot={}", file.display()))
        .arg(url)
        .output();
}

/// A plain HTTP/1.0 GET of `path` on `addr` (`host:port`): the body ("" when it fails).
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}
