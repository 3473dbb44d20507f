//! The report folder: SVG plots with text (no system fonts needed) and an index page.

use gantry_engine::Profile;
use gantry_sim::driver::{replay, Options};
use gantry_sim::{openb, report};

#[test]
fn report_folder_has_plots_and_index() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/openb-sample");
    let (cluster, pods) = openb::load(
        &dir.join("openb_node_list_gpu_node.csv"),
        &dir.join("openb_pod_list_default.csv"),
    )
    .expect("sample");
    let w = openb::replay("sample", cluster, &pods).expect("workload");
    let runs: Vec<_> = ["fifo", "gantry"]
        .iter()
        .map(|p| {
            replay(
                &w,
                &Profile::named(p).expect("p"),
                &Options::default(),
                &mut |_| {},
            )
            .expect("run")
        })
        .collect();
    let out = std::env::temp_dir().join(format!("gantry-sim-report-{}", std::process::id()));
    report::write(&out, &w, &runs, None).expect("report");
    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    for f in [
        "utilization.svg",
        "jct_cdf.svg",
        "queue_shares-fifo.svg",
        "queue_shares-gantry.svg",
    ] {
        assert!(
            index.contains(&format!("src=\"{f}\"")),
            "index does not show {f}"
        );
        let svg = std::fs::read_to_string(out.join(f)).expect(f);
        assert!(svg.starts_with("<svg"), "{f}");
        // Titles and axis labels are real SVG text, and the data were drawn.
        assert!(svg.contains("<text"), "{f} has no text");
        assert!(
            svg.contains("<polyline") || svg.contains("<path") || svg.contains("<polygon"),
            "{f} has no data"
        );
    }
    let util = std::fs::read_to_string(out.join("utilization.svg")).expect("svg");
    assert!(util.contains("GPU allocation over time"));
    assert!(util.contains("gantry (mean"));
    assert!(index.contains("<td>gantry</td>"));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("json"))
            .expect("valid json");
    assert_eq!(summary.as_array().map(Vec::len), Some(2));
    // Every job, one row each, with wait = start − arrival.
    let csv = std::fs::read_to_string(out.join("jobs-gantry.csv")).expect("jobs csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "name,queue,gpus,arrival_s,start_s,end_s,wait_s,jct_s,preempted,state"
    );
    assert_eq!(rows.len(), 1 + 383);
    for row in &rows[1..] {
        let f: Vec<&str> = row.split(',').collect();
        let num = |i: usize| f[i].parse::<f64>().expect("number");
        assert_eq!(f[9], "done", "{row}");
        assert!((num(4) - num(3) - num(6)).abs() < 1e-6, "{row}");
    }
    std::fs::remove_dir_all(&out).ok();
}
