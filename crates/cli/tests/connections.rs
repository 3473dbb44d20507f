//! Connection exhaustion, with a real `gantry serve` held to 1,024 open files (systemd's default
//! soft limit, here also the hard one so serve cannot raise it): 1,100 connections from one
//! peer (127.0.0.2) that never send a byte must not lock out a client from another
//! (127.0.0.1). Serve caps connections per peer and closes silent ones.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{listen_addr, Proc};
use tokio::io::AsyncReadExt;

const IDLE: usize = 1_100;

/// `gantry jobs` against `addr`, killed after 20 s; whether it succeeded.
fn jobs_answers(addr: &str) -> bool {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["jobs", "--server", addr])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gantry jobs");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s.success();
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the server closed `s` (a read gives EOF or an error within `wait`).
async fn closed(s: &mut tokio::net::TcpStream, wait: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[test]
fn silent_connections_from_one_peer_never_lock_others_out() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if hard < (IDLE as u64) + 200 {
        eprintln!("open-file hard limit {hard} < {}: skipping", IDLE + 200);
        return;
    }
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("raise the test's own limit");
    }
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("prlimit (util-linux) not found: skipping");
        return;
    }
    let data = tempfile::tempdir().expect("tmp");
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=1024:1024", "--"])
        .arg(env!("CARGO_BIN_EXE_gantry"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data.path())
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--no-local-agent", "--silent-conn-timeout-ms", "2000"]);
    let mut server = Proc::spawn("serve", cmd);
    let addr = server.wait_line("listen address", listen_addr);
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut idle = rt.block_on(async {
        let mut v = Vec::with_capacity(IDLE);
        for _ in 0..IDLE {
            let s = tokio::net::TcpSocket::new_v4().expect("socket");
            s.bind("127.0.0.2:0".parse().expect("addr"))
                .expect("bind 127.0.0.2");
            match s.connect(([127, 0, 0, 1], port).into()).await {
                Ok(c) => v.push(c),
                Err(e) => panic!("connect: {e}"),
            }
        }
        v
    });
    // Another peer still gets answers while the silent ones are held.
    assert!(
        jobs_answers(&addr),
        "a client was locked out by {IDLE} silent connections:\n{}",
        server.tail()
    );
    // Beyond the per-peer cap (256) they are closed at once; the rest when their silence runs out.
    let early = rt.block_on(async {
        let mut n = 0;
        for s in idle.iter_mut() {
            if closed(s, Duration::from_millis(5)).await {
                n += 1;
            }
        }
        n
    });
    assert!(early >= IDLE - 256, "only {early} of {IDLE} closed at once");
    let late = rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let mut n = 0;
        for s in idle.iter_mut() {
            if closed(s, Duration::from_millis(500)).await {
                n += 1;
            }
        }
        n
    });
    assert_eq!(
        late,
        IDLE,
        "silent connections left open:\n{}",
        server.tail()
    );
    assert!(
        server
            .lines()
            .iter()
            .any(|l| l.contains("too many connections from one peer")),
        "the cap is logged:\n{}",
        server.tail()
    );
    assert!(jobs_answers(&addr));
}
