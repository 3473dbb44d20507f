//! `gantry sim` end to end: the README's main command on the bundled openb sample.

use std::process::Command;

#[test]
fn the_readme_command_runs_the_bundled_sample_and_writes_the_report() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let report = std::env::temp_dir().join(format!("gantry-sim-cli-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .current_dir(&root)
        .args([
            "sim",
            "--openb",
            "crates/sim/data/openb-sample",
            "--compare",
            "fifo,best-fit,gantry",
        ])
        .arg("--report")
        .arg(&report)
        .args(["-o", "json"])
        .output()
        .expect("run gantry");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let runs = v["runs"].as_array().expect("runs");
    let policies: Vec<&str> = runs
        .iter()
        .map(|r| r["policy"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(policies, ["fifo", "best-fit", "gantry"]);
    assert!(runs.iter().all(|r| r["completed"] == 383), "{runs:?}");
    // Ratios against the first policy: fifo against itself is 1.
    let r = v["ratios"].as_array().expect("ratios");
    assert!(r
        .iter()
        .any(|x| x["policy"] == "fifo" && x["metric"] == "mean JCT" && x["ratio"] == 1.0));
    assert!(report.join("index.html").exists() && report.join("jct_cdf.svg").exists());
    std::fs::remove_dir_all(&report).ok();

    // A malformed trace: the error names the file, line and column, and nothing panics.
    let dir = std::env::temp_dir().join(format!("gantry-sim-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp");
    std::fs::write(
        dir.join("openb_node_list_gpu_node.csv"),
        "sn,cpu_milli,memory_mib,gpu,model\nn0,1000,1000,1,T4\n",
    )
    .expect("nodes");
    std::fs::write(
        dir.join("openb_pod_list_default.csv"),
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,1,1,1,2000\n",
    )
    .expect("pods");
    let out = Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["sim", "--openb"])
        .arg(&dir)
        .output()
        .expect("run gantry");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "openb_pod_list_default.csv:2:10: column gpu_milli: 2000 is more than one GPU"
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_inference_study_meets_its_slo_for_less_than_a_static_peak_deployment() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let table = root.join("../shared/data/philly/philly.csv");
    if !table.exists() {
        eprintln!(
            "SKIPPED: the Philly table is not at {} (the study's training backlog)",
            table.display()
        );
        return;
    }
    let report = tempfile::tempdir().expect("tmp");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gantry"))
        .args(["sim", "--inference"])
        .arg(root.join("crates/sim/scenarios/inference-autoscale.yaml"))
        .arg("--report")
        .arg(report.path())
        .args(["--output", "json"])
        .output()
        .expect("run gantry sim");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let by = |name: &str| {
        rows.as_array()
            .expect("rows")
            .iter()
            .find(|r| r["strategy"] == name)
            .cloned()
            .expect(name)
    };
    let (auto, peak, min) = (by("autoscale"), by("static-peak"), by("fixed-min"));
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().expect(k);
    assert!(f(&auto, "slo_attainment") >= 0.99, "{auto}");
    assert!(f(&min, "slo_attainment") < 0.5, "{min}");
    assert!(f(&auto, "service_gpu_hours") < 0.7 * f(&peak, "service_gpu_hours"));
    // Training gets back what the service does not hold: it finishes sooner than beside a
    // static peak deployment, and later than beside the bare minimum.
    assert!(f(&auto, "training_mean_jct_h") < f(&peak, "training_mean_jct_h"));
    assert!(f(&auto, "training_mean_jct_h") > f(&min, "training_mean_jct_h"));
    assert!(
        f(&auto, "preemptions") > 0.0,
        "the service took GPUs from training"
    );
    assert!(report.path().join("inference.svg").exists());
}
