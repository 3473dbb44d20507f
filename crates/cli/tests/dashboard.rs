//! The web dashboard in a real headless Chromium (Debian's `chromium`): `gantry serve --demo`,
//! every page opened, the DOM checked for the demo's queues, jobs, reasons and GPU uuids; a job
//! submitted through the API appears on an open page without a reload; with tokens, a member
//! sees only their team's jobs. Screenshots go to `target/dashboard-screenshots/`.
//!
//! Skipped, saying so, when no Chromium is installed (`.ci/run` installs it).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{chromium, client_json, dom, gantry, screenshot, serve, Proc};

fn metrics_addr(p: &mut Proc) -> String {
    p.wait_line("the dashboard address", |l| {
        l.split("gantry serve: dashboard on http://")
            .nth(1)
            .map(|r| r.trim_end_matches('/').to_string())
    })
}

#[test]
fn every_page_shows_the_demo_and_a_new_job_appears_without_a_reload() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no headless Chromium on PATH (apt-get install chromium)");
        return;
    };
    let data = tempfile::tempdir().expect("tmp");
    let (mut server, addr) = serve(data.path(), &["--demo", "--fake-gpus", "4xH100-80GB"]);
    let web = metrics_addr(&mut server);
    // Wait for the demo to be placed, and learn a GPU uuid it holds.
    let uuid = common::poll("the demo running", || {
        let jobs = client_json(&addr, &["jobs"]);
        jobs.as_array()
            .into_iter()
            .flatten()
            .find(|j| j["name"] == "demo-hello" && j["state"] == "running")
            .and_then(|j| {
                j["placements"][0]["devices"][0]
                    .as_str()
                    .map(str::to_string)
            })
            .ok_or(jobs)
    });
    let pages = [
        (
            "overview",
            "/",
            vec!["h100-80gb GPUs allocated", "demo-hello", "jobs waiting"],
        ),
        (
            "gpus",
            "/gpus",
            vec![uuid.as_str(), "used by demo-", "node not ready"],
        ),
        (
            "gpus-label",
            "/gpus?label=rack%3Dnone",
            vec!["0 nodes, page 1 of 1"],
        ),
        ("queues", "/queues", vec!["demo", "default", "h100-80gb"]),
        (
            "jobs",
            "/jobs",
            vec![
                "demo-waits-on-quota",
                "queue demo: quota h100-80gb",
                "demo-gang",
            ],
        ),
        (
            "job",
            "/jobs/demo-waits-on-quota",
            vec!["Why it waits:", "Position in its queue: <b>1</b>"],
        ),
        (
            "services",
            "/services",
            vec!["Inference services", "load / target"],
        ),
    ];
    for (name, path, want) in &pages {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("http://{web}{path}{sep}live=0");
        let html = dom(&browser, &url);
        for w in want {
            assert!(html.contains(w), "{path}: no {w:?} in\n{html}");
        }
        screenshot(&browser, &url, name);
    }

    // Live: the page holds a request for its content; a job submitted meanwhile shows up.
    let dir = tempfile::tempdir().expect("dir");
    let job = dir.path().join("late.yaml");
    std::fs::write(
        &job,
        "name: late-arrival\nqueue: default\ntasks: [{count: 1, gpus: 1}]\ncommand: [sleep, '60']\n",
    )
    .expect("write");
    let submitter = {
        let (addr, job) = (addr.clone(), job.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            client_json(&addr, &["submit", job.to_str().expect("utf-8")]);
        })
    };
    let before = dom(&browser, &format!("http://{web}/jobs?live=0"));
    assert!(!before.contains("late-arrival"));
    let after = dom(&browser, &format!("http://{web}/jobs?live=1"));
    submitter.join().expect("submitter");
    assert!(
        after.contains("late-arrival"),
        "the open page did not show the new job:\n{after}"
    );
}

#[test]
fn with_tokens_the_dashboard_asks_for_one_and_a_member_sees_only_their_team() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no headless Chromium on PATH (apt-get install chromium)");
        return;
    };
    let data = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("dir");
    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        "tokens:\n  - {token: tok-alice, user: alice, teams: [team-a], role: member}\n  - {token: tok-root, user: root, role: admin}\n",
    )
    .expect("write");
    let (mut server, addr) = serve(
        data.path(),
        &[
            "--tokens",
            tokens.to_str().expect("utf-8"),
            "--fake-gpus",
            "2xH100-80GB",
        ],
    );
    let web = metrics_addr(&mut server);
    let queues = dir.path().join("queues.yaml");
    std::fs::write(&queues, "queues:\n  - {name: team-a}\n  - {name: team-b}\n").expect("write");
    let run = |token: &str, args: &[&str]| {
        let out = gantry()
            .args(args)
            .args(["--server", &addr, "--token", token])
            .output()
            .expect("gantry");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        "tok-root",
        &["queues", "--apply", queues.to_str().expect("utf-8")],
    );
    for (name, queue, token) in [
        ("alpha-job", "team-a", "tok-root"),
        ("beta-job", "team-b", "tok-root"),
        ("alices-job", "team-a", "tok-alice"),
    ] {
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &f,
            format!(
                "name: {name}\nqueue: {queue}\ntasks: [{{count: 1}}]\ncommand: [sleep, '60']\n"
            ),
        )
        .expect("write");
        run(token, &["submit", f.to_str().expect("utf-8")]);
    }
    // No session: the sign-in page, nothing else.
    let html = dom(&browser, &format!("http://{web}/jobs?live=0"));
    assert!(
        html.contains("Sign in") && !html.contains("alpha-job"),
        "{html}"
    );
    // A wrong token is refused.
    let html = dom(&browser, &format!("http://{web}/login?token=nope"));
    assert!(html.contains("That token is not known."), "{html}");
    // alice's session (the token goes into an HttpOnly cookie; the redirect lands on /).
    let url = format!("http://{web}/login?token=tok-alice&next=%2Fjobs%3Flive%3D0");
    let html = dom(&browser, &url);
    assert!(html.contains("alice (team-a)"), "{html}");
    assert!(html.contains("alpha-job"), "{html}");
    assert!(
        !html.contains("beta-job"),
        "a member saw another team's job: {html}"
    );
    // Jobs by who submitted them.
    let by_user =
        format!("http://{web}/login?token=tok-alice&next=%2Fjobs%3Fuser%3Dalice%26live%3D0");
    let mine = dom(&browser, &by_user);
    assert!(
        mine.contains("alices-job") && !mine.contains("alpha-job"),
        "{mine}"
    );
    // The cookie is HttpOnly and SameSite=Strict.
    let out = Command::new("curl")
        .args(["-s", "-i", &url])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if !out.is_empty() {
        let set = out
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie"))
            .unwrap_or_default()
            .to_string();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{out}"
        );
    }
}

#[test]
fn the_gpu_map_draws_mig_instances_at_their_real_starts() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no headless Chromium on PATH (apt-get install chromium)");
        return;
    };
    let data = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("dir");
    let (mut server, addr) = serve(data.path(), &["--no-local-agent"]);
    let web = metrics_addr(&mut server);
    let inventory = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../device-plugin/examples/dgx-a100.yaml");
    let mut cmd = gantry();
    cmd.args(["agent", "--server", &addr, "--fake-inventory"])
        .arg(&inventory)
        .arg("--state-dir")
        .arg(dir.path().join("state"));
    let mut agent = Proc::spawn("agent", cmd);
    agent.wait_line("registered", |l| l.contains("registered").then_some(()));
    let job = dir.path().join("mig.yaml");
    std::fs::write(
        &job,
        "name: mig-job\nqueue: default\ntasks: [{count: 2, mig: 1g.10gb}]\ncommand: [sleep, '60']\n",
    )
    .expect("write");
    client_json(&addr, &["submit", job.to_str().expect("utf-8")]);
    common::poll("mig-job running", || {
        let j = common::job(&addr, "mig-job").ok_or(serde_json::Value::Null)?;
        (j["state"] == "running").then_some(()).ok_or(j)
    });
    let url = format!("http://{web}/gpus?live=0");
    let html = dom(&browser, &url);
    assert_eq!(
        html.matches("class=\"slice used\"").count(),
        2,
        "two 1g.10gb instances in use:\n{html}"
    );
    assert!(html.contains("1g.10gb at memory slice"), "{html}");
    assert!(html.contains("used by mig-job"), "{html}");
    screenshot(&browser, &url, "gpus-mig");
}

#[test]
fn the_queue_tree_shows_borrowing_lending_and_share_and_a_job_its_events() {
    let Some(browser) = chromium() else {
        eprintln!("SKIPPED: no headless Chromium on PATH (apt-get install chromium)");
        return;
    };
    let data = tempfile::tempdir().expect("tmp");
    let dir = tempfile::tempdir().expect("dir");
    let (mut server, addr) = serve(data.path(), &["--fake-gpus", "4xH100-80GB"]);
    let web = metrics_addr(&mut server);
    let queues = dir.path().join("queues.yaml");
    std::fs::write(
        &queues,
        "queues:\n  - {name: lab}\n  - {name: team-a, parent: lab, quotas: {h100-80gb: {nominal: 1}}}\n  - {name: team-b, parent: lab, weight: 2, quotas: {h100-80gb: {nominal: 3}}}\n",
    )
    .expect("write");
    client_json(
        &addr,
        &["queues", "--apply", queues.to_str().expect("utf-8")],
    );
    for (name, gpus) in [("borrower", 3), ("second", 2)] {
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &f,
            format!("name: {name}\nqueue: team-a\ntasks: [{{count: 1, gpus: {gpus}}}]\ncommand: [sleep, '60']\n"),
        )
        .expect("write");
        client_json(&addr, &["submit", f.to_str().expect("utf-8")]);
    }
    common::poll("borrower running", || {
        let j = common::job(&addr, "borrower").ok_or(serde_json::Value::Null)?;
        (j["state"] == "running").then_some(()).ok_or(j)
    });
    let url = format!("http://{web}/queues?live=0");
    let html = dom(&browser, &url);
    let row = |q: &str| -> String {
        html.split(&format!("<tr data-queue=\"{q}\">"))
            .nth(1)
            .and_then(|r| r.split("</tr>").next())
            .unwrap_or_else(|| panic!("no row for {q}:\n{html}"))
            .to_string()
    };
    // team-a uses 3 of its 1: 2 borrowed, which team-b (3 unused) lends; share 3.00.
    let a = row("team-a");
    assert!(a.contains("3 / 1 · 2 · 0") && a.contains("3.00"), "{a}");
    let b = row("team-b");
    assert!(b.contains("0 / 3 · 0 · 2") && b.contains("0.00"), "{b}");
    assert!(row("lab").contains("cohort"), "the tree's cohort row");
    assert!(
        html.find("data-queue=\"lab\"") < html.find("data-queue=\"team-a\""),
        "parents first"
    );
    screenshot(&browser, &url, "queues-tree");
    // The job's page: its events, tasks and devices.
    let url = format!("http://{web}/jobs/borrower?live=0");
    let html = dom(&browser, &url);
    let events = html
        .split("<table class=\"events\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no events table:\n{html}"));
    assert!(
        events.contains("submitted") && events.contains("started"),
        "{events}"
    );
    assert!(html.contains("1 of 1 placed"), "{html}");
    // The waiting one: its reason and place.
    let html = dom(&browser, &format!("http://{web}/jobs?queue=team-a&live=0"));
    let second = html
        .split("<tr data-job=\"second\">")
        .nth(1)
        .and_then(|r| r.split("</tr>").next())
        .unwrap_or_else(|| panic!("no row for second:\n{html}"))
        .to_string();
    assert!(
        second.contains("1 of 1") && second.contains("pending"),
        "{second}"
    );
    // The queue's own page: its line in order, what runs; the cohort's: its members.
    let url = format!("http://{web}/queues/team-a?live=0");
    let html = dom(&browser, &url);
    let line = html
        .split("<table class=\"line\">")
        .nth(1)
        .unwrap_or_else(|| panic!("no waiting line:\n{html}"));
    assert!(line.contains("data-job=\"second\""), "{line}");
    assert!(
        html.contains("Running (1)") && html.contains("/jobs/borrower"),
        "{html}"
    );
    screenshot(&browser, &url, "queue");
    let html = dom(&browser, &format!("http://{web}/queues/lab?live=0"));
    assert!(
        html.contains("Members: ") && html.contains("/queues/team-b"),
        "{html}"
    );
}
