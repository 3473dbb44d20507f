//! Malformed inputs: every refusal names the file, the line, the column and the reason.

use gantry_sim::{openb, philly, scenario, SimError};

fn tmp(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gantry-sim-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn trace_files_name_file_line_column() {
    let nodes = tmp(
        "nodes.csv",
        "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\n",
    );
    let pods = tmp(
        "pods.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n\
         p0,1000,1024,1,1000,,LS,Running,0,100,0\n\
         p1,1000,1024,1,1000,,LS,Running,zero,100,0\n",
    );
    let err = openb::load(&nodes, &pods).expect_err("bad row").to_string();
    let want = format!(
        "{}:3:33: column creation_time: \"zero\" is not a non-negative integer",
        pods.display()
    );
    assert_eq!(err, want);

    let philly_csv = tmp(
        "philly.csv",
        "timestamp,duration,num_gpus,gpu_time,cluster\n2017-10-09 07:01:55,66.0,1,66.0,aa\n2017-10-09 07:01:55,66.0,1\n",
    );
    let err = philly::load(&philly_csv)
        .expect_err("short row")
        .to_string();
    assert!(
        err.starts_with(&format!("{}:3:", philly_csv.display()))
            && err.contains("expected 5 fields"),
        "{err}"
    );
    let missing = std::path::Path::new("/nonexistent/philly.csv");
    assert!(matches!(philly::load(missing), Err(SimError::Io { .. })));
}

const GOOD: &str = r#"name: s
variants:
  small: {n: 2}
ops:
  - add_nodes: {name: n, count: $n, gpu_model: h100-80gb, gpus_per_node: 8, cpu: 64, memory: 512Gi}
  - submit: {count: 3, gpus: {choice: {"1": 1, "8": 1}}, runtime: {exp: 10m}}
  - advance: 1h
  - fail_node: n-0
"#;

#[test]
fn scenario_errors_name_line_column_and_reason() {
    assert!(scenario::parse("s.yaml", GOOD, None).is_ok());
    let cases: &[(&str, &str, &str)] = &[
        // A typo in a field: serde's message, with the path and the position.
        (
            "runtime: {exp: 10m}",
            "runtim: {exp: 10m}",
            "s.yaml: ops[1].submit.runtim: unknown field `runtim`",
        ),
        // A variable no variant defines.
        (
            "count: $n,",
            "count: $nodes,",
            "s.yaml:5:33: $nodes: unknown variable; variant \"small\" defines: n",
        ),
        // An operation naming a node that does not exist.
        (
            "fail_node: n-0",
            "fail_node: n-9",
            "s.yaml:8:16: ops[3].fail_node: no node named \"n-9\"",
        ),
        // A distribution with no positive weight.
        (
            "{\"1\": 1, \"8\": 1}",
            "{\"1\": 0}",
            "s.yaml:6:24: ops[1].submit.gpus: choice: give at least one value",
        ),
        // Two distributions in one.
        (
            "{exp: 10m}",
            "{exp: 10m, const: 1m}",
            "s.yaml: ops[1].submit.runtime: a distribution is one of",
        ),
        // An unknown duration unit.
        (
            "advance: 1h",
            "advance: 1y",
            "s.yaml: ops[2]: advance: unknown duration unit",
        ),
        // A job the cluster can never run (validated like `gantry plan`).
        ("\"8\": 1}", "\"9\": 1}", "s.yaml:6:5: ops[1].submit (job"),
    ];
    for (from, to, want) in cases {
        let text = GOOD.replace(from, to);
        assert_ne!(text, GOOD, "case {to} did not apply");
        let err = scenario::parse("s.yaml", &text, None)
            .expect_err(to)
            .to_string();
        assert!(err.starts_with(want), "{to}:\n got  {err}\n want {want}");
    }
    // serde's position for the typo.
    let err = scenario::parse(
        "s.yaml",
        &GOOD.replace("runtime: {exp", "runtim: {exp"),
        None,
    )
    .expect_err("typo")
    .to_string();
    assert!(err.contains("line 6 column"), "{err}");
    // An unknown variant.
    let err = scenario::parse("s.yaml", GOOD, Some("huge"))
        .expect_err("variant")
        .to_string();
    assert!(
        err.starts_with("s.yaml:2:1: variants: no variant \"huge\" (known: small)"),
        "{err}"
    );
}
