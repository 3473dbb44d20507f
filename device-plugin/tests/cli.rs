//! The binary: the NVML-missing error, and the inventory and labels commands.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gantry-device-plugin"))
}

fn example(name: &str) -> String {
    format!("{}/examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn missing_nvml_is_a_clear_error_and_nonzero_exit() {
    let out = bin()
        .args(["--nvml-lib", "/nonexistent/libnvidia-ml.so.1", "inventory"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("NVML library not found: "), "{err}");
    assert!(err.contains("; use --fake FILE for development"), "{err}");
    // Same for `run`.
    let dir = tempfile::tempdir().expect("tmp");
    let out = bin()
        .args([
            "--nvml-lib",
            "/nonexistent/libnvidia-ml.so.1",
            "run",
            "--device-plugin-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NVML library not found"));
}

#[test]
fn inventory_prints_a_gantry_node() {
    for (file, model, mig_devices) in [
        ("dgx-a100.yaml", "a100-80gb", 2),
        ("dgx-h100.yaml", "h100-80gb", 0),
        ("dgx-h200.yaml", "h200-141gb", 8),
    ] {
        for fmt in ["json", "yaml"] {
            let out = bin()
                .args(["--fake", &example(file), "inventory", "--output", fmt])
                .output()
                .expect("run");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8(out.stdout).expect("utf8");
            let node: gantry_model::Node =
                gantry_model::doc::from_yaml(&text, file).expect("a gantry Node");
            assert_eq!(node.devices.len(), 8);
            assert_eq!(node.devices[0].model, model);
            assert_eq!(
                node.devices.iter().filter(|d| d.mig.is_some()).count(),
                mig_devices
            );
            assert_eq!(node.devices[0].nvlink_peers.len(), 7, "NVSwitch: all peers");
            // The scheduler's own validation accepts it.
            let cluster = gantry_model::ClusterSpec {
                nodes: vec![node],
                ..Default::default()
            }
            .build()
            .expect("valid for gantry-model");
            assert_eq!(cluster.nodes[0].devices.len(), 8);
        }
    }
    let out = bin()
        .args([
            "--fake",
            &example("dgx-a100.yaml"),
            "inventory",
            "--output",
            "table",
        ])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("3g.40gb@4"), "{text}");
}

#[test]
fn bad_fake_file_names_the_field() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, "node: x\ngpus:\n  - {name: NVIDIA H100 80GB HBM3, memory_mib: 81559}\nmig:\n  0: {slices: [{profile: 3g.40gb, start: 2}]}\n").expect("w");
    let out = bin()
        .arg("--fake")
        .arg(&p)
        .arg("inventory")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("mig.0.slices[0].start"), "{err}");
}

#[test]
fn labels_command() {
    let out = bin()
        .args([
            "--fake",
            &example("dgx-h200.yaml"),
            "labels",
            "--mig-strategy",
            "single",
        ])
        .output()
        .expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("nvidia.com/gpu.product=NVIDIA-H200\n"),
        "{text}"
    );
    assert!(text.contains("nvidia.com/gpu.count=8\n"), "{text}");
    assert!(text.contains("nvidia.com/mig.strategy=single\n"), "{text}");
}

#[test]
fn readme_fake_format_example_is_valid() {
    let readme = std::fs::read_to_string(format!("{}/README.md", env!("CARGO_MANIFEST_DIR")))
        .expect("README");
    let start = readme
        .find("```yaml\nnode: dgx-h100-0")
        .expect("format example")
        + 8;
    let end = start + readme[start..].find("```").expect("end of block");
    let fake = gantry_device_plugin::fake::FakeInventory::from_yaml(&readme[start..end], "README")
        .expect("the README's example parses");
    let inv = gantry_device_plugin::Inventory::discover(&fake).expect("discover");
    assert_eq!(inv.gpus.len(), 8);
    assert_eq!(inv.gpus[7].mig.as_ref().expect("mig").slices.len(), 2);
    let six = inv.gpus[6].mig.as_ref().expect("mig");
    assert!(!six.current && six.pending);
}
