//! The device plugin against a test kubelet over real unix sockets in a temporary directory.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use gantry_api::deviceplugin::v1beta1 as pb;
use gantry_device_plugin::handoff::{AssignmentBook, Handoff, NoHandoff};
use gantry_device_plugin::inventory::{EventKind, HealthEvent, Inventory};
use gantry_device_plugin::plugin::DeviceListStrategy;
use gantry_device_plugin::MigStrategy;

const H100: &str = r#"
node: t-h100
gpus:
  - {name: NVIDIA H100 80GB HBM3, memory_mib: 81559, count: 2, numa: 0}
  - {name: NVIDIA H100 80GB HBM3, memory_mib: 81559, count: 2, numa: 1}
nvlink: {switch_links: 18}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_relative_endpoint_and_lists_devices() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let fake = fake_yaml(H100);
    let uuids: Vec<String> = fake
        .discover()
        .expect("d")
        .gpus
        .iter()
        .map(|g| g.uuid.clone())
        .collect();
    let plugin = RunningPlugin::start(
        fake,
        settings(dir.path(), MigStrategy::None),
        Arc::new(NoHandoff),
    );

    let reg = kubelet.registration().await;
    assert_eq!(reg.version, "v1beta1");
    assert_eq!(reg.endpoint, "gantry-gpu.sock");
    assert_eq!(reg.resource_name, "nvidia.com/gpu");
    assert!(
        reg.options
            .as_ref()
            .expect("options")
            .get_preferred_allocation_available
    );
    assert!(dir.path().join(&reg.endpoint).exists());

    let mut client = dial(dir.path(), &reg.endpoint).await;
    let opts = client
        .get_device_plugin_options(pb::Empty {})
        .await
        .expect("options")
        .into_inner();
    assert!(opts.get_preferred_allocation_available);
    assert!(!opts.pre_start_required);
    let mut stream = client
        .list_and_watch(pb::Empty {})
        .await
        .expect("watch")
        .into_inner();
    let devices = next_list(&mut stream).await;
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, uuids.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(devices.iter().all(|d| d.health == "Healthy"));
    let numa: Vec<i64> = devices
        .iter()
        .map(|d| d.topology.as_ref().expect("topology").nodes[0].id)
        .collect();
    assert_eq!(numa, vec![0, 0, 1, 1]);
    plugin.stop().await;
    assert!(
        !dir.path().join("gantry-gpu.sock").exists(),
        "socket removed on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xid_makes_unhealthy_and_quiet_probe_recovers() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let fake = fake_yaml(H100);
    let gpu2 = fake.discover().expect("d").gpus[2].uuid.clone();
    let plugin = RunningPlugin::start(
        fake.clone(),
        settings(dir.path(), MigStrategy::None),
        Arc::new(NoHandoff),
    );
    let reg = kubelet.registration().await;
    let mut client = dial(dir.path(), &reg.endpoint).await;
    let mut stream = client
        .list_and_watch(pb::Empty {})
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(health_of(&next_list(&mut stream).await, &gpu2), "Healthy");

    // An ignored XID changes nothing; the fatal one right after is the next message.
    let ev = |kind| HealthEvent {
        gpu: gpu2.clone(),
        gpu_instance: None,
        kind,
    };
    fake.inject(ev(EventKind::Xid(13)), Duration::ZERO);
    let t0 = Instant::now();
    fake.inject(ev(EventKind::Xid(79)), Duration::from_millis(300));
    let after_xid = next_list(&mut stream).await;
    assert_eq!(health_of(&after_xid, &gpu2), "Unhealthy");
    assert_eq!(
        after_xid.iter().filter(|d| d.health == "Unhealthy").count(),
        1
    );

    // Back to Healthy only once quiet (150 ms) AND the probe succeeds (blocked for 300 ms).
    let recovered = next_list(&mut stream).await;
    assert_eq!(health_of(&recovered, &gpu2), "Healthy");
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "recovered after {:?}",
        t0.elapsed()
    );

    // A double-bit ECC error is fatal too.
    fake.inject(ev(EventKind::EccDoubleBit), Duration::ZERO);
    assert_eq!(health_of(&next_list(&mut stream).await, &gpu2), "Unhealthy");
    assert_eq!(health_of(&next_list(&mut stream).await, &gpu2), "Healthy");
    plugin.stop().await;
}

async fn allocate(
    dir: &std::path::Path,
    endpoint: &str,
    ids: &[&str],
) -> Result<pb::ContainerAllocateResponse, tonic::Status> {
    let mut client = dial(dir, endpoint).await;
    let req = pb::AllocateRequest {
        container_requests: vec![pb::ContainerAllocateRequest {
            devices_ids: ids.iter().map(|s| s.to_string()).collect(),
        }],
    };
    client
        .allocate(req)
        .await
        .map(|r| r.into_inner().container_responses.remove(0))
}

fn dev_paths(r: &pb::ContainerAllocateResponse) -> Vec<String> {
    r.devices.iter().map(|d| d.container_path.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_whole_gpus_env_and_cdi() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let fake = fake_yaml(H100);
    let inv = fake.discover().expect("d");
    let (g1, g3) = (inv.gpus[1].uuid.clone(), inv.gpus[3].uuid.clone());
    let plugin = RunningPlugin::start(
        fake,
        settings(dir.path(), MigStrategy::None),
        Arc::new(NoHandoff),
    );
    let reg = kubelet.registration().await;
    let r = allocate(dir.path(), &reg.endpoint, &[&g1, &g3])
        .await
        .expect("allocate");
    assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], format!("{g1},{g3}"));
    let paths = dev_paths(&r);
    for p in [
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia1",
        "/dev/nvidia3",
    ] {
        assert!(paths.contains(&p.to_string()), "{p} missing from {paths:?}");
    }
    assert!(!paths.contains(&"/dev/nvidia0".to_string()));
    assert!(r.cdi_devices.is_empty());
    let err = allocate(dir.path(), &reg.endpoint, &["GPU-nope"])
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("container_requests[0].devices_ids[0]"),
        "{}",
        err.message()
    );
    plugin.stop().await;

    // CDI mode: names instead of the env var.
    let mut s = settings(dir.path(), MigStrategy::None);
    s.allocate.device_list = DeviceListStrategy::Cdi {
        kind: "nvidia.com/gpu".into(),
    };
    let plugin = RunningPlugin::start(fake_yaml(H100), s, Arc::new(NoHandoff));
    let reg = kubelet.registration().await;
    let r = allocate(dir.path(), &reg.endpoint, &[&g1])
        .await
        .expect("allocate");
    assert!(r.envs.is_empty());
    assert_eq!(
        r.cdi_devices,
        vec![pb::CdiDevice {
            name: format!("nvidia.com/gpu={g1}")
        }]
    );
    plugin.stop().await;
}

const MIG_NODE: &str = r#"
node: t-mig
gpus:
  - {name: NVIDIA A100-SXM4-80GB, memory_mib: 81920, count: 3, numa: 0}
nvlink: {switch_links: 12}
mig:
  1:
    slices:
      - {profile: 3g.40gb, start: 4, gpu_instance: 1, cap_minors: [21, 22]}
      - {profile: 1g.10gb, start: 0, gpu_instance: 2}
  2:
    slices:
      - {profile: 1g.10gb, start: 0, gpu_instance: 7}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_mig_under_all_three_strategies() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let inv = fake_yaml(MIG_NODE).discover().expect("d");
    let g1 = &inv.gpus[1];
    let s3g = g1
        .mig
        .as_ref()
        .expect("mig")
        .slices
        .iter()
        .find(|s| s.profile == "3g.40gb")
        .expect("3g")
        .uuid
        .clone();
    let s1g = inv.gpus[2].mig.as_ref().expect("mig").slices[0]
        .uuid
        .clone();

    // mixed: whole GPU 0 as nvidia.com/gpu, each profile its own resource.
    let plugin = RunningPlugin::start(
        fake_yaml(MIG_NODE),
        settings(dir.path(), MigStrategy::Mixed),
        Arc::new(NoHandoff),
    );
    let regs = kubelet.registrations(3).await;
    let names: Vec<(&str, &str)> = regs
        .iter()
        .map(|r| (r.resource_name.as_str(), r.endpoint.as_str()))
        .collect();
    assert_eq!(
        names,
        vec![
            ("nvidia.com/gpu", "gantry-gpu.sock"),
            ("nvidia.com/mig-1g.10gb", "gantry-mig-1g.10gb.sock"),
            ("nvidia.com/mig-3g.40gb", "gantry-mig-3g.40gb.sock"),
        ]
    );
    let mut c = dial(dir.path(), "gantry-mig-1g.10gb.sock").await;
    let mut st = c
        .list_and_watch(pb::Empty {})
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next_list(&mut st).await.len(), 2);
    let r = allocate(dir.path(), "gantry-mig-3g.40gb.sock", &[&s3g])
        .await
        .expect("3g");
    assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], s3g);
    let paths = dev_paths(&r);
    assert!(paths.contains(&"/dev/nvidia1".to_string()), "{paths:?}");
    assert!(
        paths.contains(&"/dev/nvidia-caps/nvidia-cap21".to_string()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/dev/nvidia-caps/nvidia-cap22".to_string()),
        "{paths:?}"
    );
    // A 1g slice is not a 3g device.
    let err = allocate(dir.path(), "gantry-mig-3g.40gb.sock", &[&s1g])
        .await
        .expect_err("wrong resource");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let r = allocate(dir.path(), "gantry-gpu.sock", &[&inv.gpus[0].uuid])
        .await
        .expect("whole");
    assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], inv.gpus[0].uuid);
    plugin.stop().await;

    // none: three whole GPUs, MIG ignored.
    let plugin = RunningPlugin::start(
        fake_yaml(MIG_NODE),
        settings(dir.path(), MigStrategy::None),
        Arc::new(NoHandoff),
    );
    let reg = kubelet.registration().await;
    assert_eq!(reg.resource_name, "nvidia.com/gpu");
    let r = allocate(dir.path(), &reg.endpoint, &[&g1.uuid])
        .await
        .expect("whole MIG GPU");
    assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], g1.uuid);
    assert!(
        allocate(dir.path(), &reg.endpoint, &[&s3g]).await.is_err(),
        "slices are not devices under none"
    );
    plugin.stop().await;

    // single: every GPU with MIG, one profile; slices are nvidia.com/gpu.
    let single = "node: t-single\ngpus:\n  - {name: NVIDIA H100 80GB HBM3, memory_mib: 81559, count: 2}\nmig:\n  0: {slices: [{profile: 3g.40gb, start: 0}, {profile: 3g.40gb, start: 4}]}\n  1: {slices: [{profile: 3g.40gb, start: 0}]}\n";
    let sinv = fake_yaml(single).discover().expect("d");
    let plugin = RunningPlugin::start(
        fake_yaml(single),
        settings(dir.path(), MigStrategy::Single),
        Arc::new(NoHandoff),
    );
    let reg = kubelet.registration().await;
    assert_eq!(
        (reg.resource_name.as_str(), reg.endpoint.as_str()),
        ("nvidia.com/gpu", "gantry-gpu.sock")
    );
    let mut c = dial(dir.path(), &reg.endpoint).await;
    let mut st = c
        .list_and_watch(pb::Empty {})
        .await
        .expect("watch")
        .into_inner();
    let listed = next_list(&mut st).await;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|d| d.id.starts_with("MIG-")));
    let slice = &sinv.gpus[1].mig.as_ref().expect("m").slices[0];
    let r = allocate(dir.path(), &reg.endpoint, &[&slice.uuid])
        .await
        .expect("single slice");
    assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], slice.uuid);
    assert!(dev_paths(&r).contains(&"/dev/nvidia1".to_string()));
    plugin.stop().await;

    // single refuses a node it cannot describe.
    let err =
        gantry_device_plugin::initial_snapshot(fake_yaml(MIG_NODE).as_ref(), MigStrategy::Single)
            .expect_err("mixed layouts");
    assert!(err.to_string().starts_with("mig strategy single:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_slice_xid_only_affects_that_slice() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let fake = fake_yaml(MIG_NODE);
    let inv = fake.discover().expect("d");
    let slices = &inv.gpus[1].mig.as_ref().expect("m").slices;
    let (s3g, s1g) = (slices[0].uuid.clone(), slices[1].uuid.clone());
    assert_eq!(slices[0].gpu_instance, 1);
    let plugin = RunningPlugin::start(
        fake.clone(),
        settings(dir.path(), MigStrategy::Mixed),
        Arc::new(NoHandoff),
    );
    kubelet.registrations(3).await;
    let mut c3 = dial(dir.path(), "gantry-mig-3g.40gb.sock").await;
    let mut st3 = c3
        .list_and_watch(pb::Empty {})
        .await
        .expect("watch")
        .into_inner();
    let mut c1 = dial(dir.path(), "gantry-mig-1g.10gb.sock").await;
    let mut st1 = c1
        .list_and_watch(pb::Empty {})
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(health_of(&next_list(&mut st3).await, &s3g), "Healthy");
    assert_eq!(health_of(&next_list(&mut st1).await, &s1g), "Healthy");
    fake.inject(
        HealthEvent {
            gpu: inv.gpus[1].uuid.clone(),
            gpu_instance: Some(1),
            kind: EventKind::Xid(94),
        },
        Duration::ZERO,
    );
    assert_eq!(health_of(&next_list(&mut st3).await, &s3g), "Unhealthy");
    assert_eq!(health_of(&next_list(&mut st3).await, &s3g), "Healthy");
    // The other slice of the same GPU never changed: no message was sent on its stream.
    let quiet = tokio::time::timeout(Duration::from_millis(100), st1.message()).await;
    assert!(
        quiet.is_err(),
        "1g stream should have stayed silent: {quiet:?}"
    );
    plugin.stop().await;
}

async fn prefer(
    dir: &std::path::Path,
    endpoint: &str,
    available: &[String],
    must: &[String],
    size: i32,
) -> Result<Vec<String>, tonic::Status> {
    let mut client = dial(dir, endpoint).await;
    let req = pb::PreferredAllocationRequest {
        container_requests: vec![pb::ContainerPreferredAllocationRequest {
            available_device_i_ds: available.to_vec(),
            must_include_device_i_ds: must.to_vec(),
            allocation_size: size,
        }],
    };
    client
        .get_preferred_allocation(req)
        .await
        .map(|r| r.into_inner().container_responses.remove(0).device_i_ds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_allocation_with_and_without_handoff() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let fake = fake("pcie-nvlink-pairs.yaml");
    let ids: Vec<String> = fake
        .discover()
        .expect("d")
        .gpus
        .iter()
        .map(|g| g.uuid.clone())
        .collect();
    let book = Arc::new(AssignmentBook::with_file(
        dir.path().join("assignments.json"),
    ));
    let plugin = RunningPlugin::start(fake, settings(dir.path(), MigStrategy::None), book.clone());
    let reg = kubelet.registration().await;
    let ep = reg.endpoint.clone();
    let pick = |idx: &[usize]| idx.iter().map(|&i| ids[i].clone()).collect::<Vec<_>>();

    // No hand-off: NVLink-aware. Of 0,2,3,5,6 the bridged pair is 2-3.
    assert_eq!(
        prefer(dir.path(), &ep, &pick(&[0, 2, 3, 5, 6]), &[], 2)
            .await
            .expect("pref"),
        pick(&[2, 3])
    );
    // must_include 6 on a full node: its bridge partner 7, and the other pair on its switch.
    assert_eq!(
        prefer(dir.path(), &ep, &ids, &pick(&[6]), 4)
            .await
            .expect("pref"),
        pick(&[4, 5, 6, 7])
    );
    // Bad requests name the field.
    let err = prefer(dir.path(), &ep, &ids, &[], 9)
        .await
        .expect_err("too many");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message()
            .contains("container_requests[0].allocation_size"),
        "{}",
        err.message()
    );

    // The scheduler chose 1 and 5 (not NVLinked) for task t1: the plugin prefers exactly that.
    book.assign(Handoff {
        task: "job-a/0/0".into(),
        resource: "nvidia.com/gpu".into(),
        device_ids: pick(&[5, 1]),
    })
    .expect("assign");
    assert_eq!(
        prefer(dir.path(), &ep, &ids, &[], 2).await.expect("pref"),
        pick(&[5, 1])
    );
    // A hand-off that is not available falls back to the topology.
    assert_eq!(
        prefer(dir.path(), &ep, &pick(&[0, 1, 2, 3]), &[], 2)
            .await
            .expect("pref"),
        pick(&[0, 1])
    );
    // Allocate with other devices of the same size is refused, naming the task.
    let err = allocate(dir.path(), &ep, &[&ids[0], &ids[1]])
        .await
        .expect_err("mismatch");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("job-a/0/0"), "{}", err.message());
    // Allocate with the chosen devices succeeds and consumes the hand-off.
    let r = allocate(dir.path(), &ep, &[&ids[5], &ids[1]])
        .await
        .expect("allocate");
    assert_eq!(
        r.envs["NVIDIA_VISIBLE_DEVICES"],
        format!("{},{}", ids[5], ids[1])
    );
    assert!(book.assignments("nvidia.com/gpu").expect("p").is_empty());
    assert_eq!(
        prefer(dir.path(), &ep, &ids, &[], 2).await.expect("pref"),
        pick(&[0, 1])
    );
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregisters_after_kubelet_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let plugin = RunningPlugin::start(
        fake_yaml(H100),
        settings(dir.path(), MigStrategy::None),
        Arc::new(NoHandoff),
    );
    let first = kubelet.registration().await;
    let sock = dir.path().join(&first.endpoint);
    assert!(sock.exists());

    // A restarted kubelet deletes every socket (ours too) and creates a new kubelet.sock.
    kubelet.crash().await;
    assert!(!sock.exists());
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let again = kubelet.registration().await;
    assert_eq!(again.endpoint, first.endpoint);
    assert_eq!(again.resource_name, "nvidia.com/gpu");
    assert!(sock.exists(), "plugin recreated its socket");
    let mut c = dial(dir.path(), &again.endpoint).await;
    let mut st = c
        .list_and_watch(pb::Empty {})
        .await
        .expect("watch after restart")
        .into_inner();
    assert_eq!(next_list(&mut st).await.len(), 4);

    // Only kubelet.sock replaced (our socket intact): register again all the same.
    std::fs::remove_file(dir.path().join("kubelet.sock")).expect("rm");
    let mut kubelet2 = TestKubelet::start(dir.path()).await;
    let third = kubelet2.registration().await;
    assert_eq!(third.endpoint, first.endpoint);
    drop(kubelet);
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_kubelet_that_is_not_there_yet() {
    let dir = tempfile::tempdir().expect("tmp");
    let plugin = RunningPlugin::start(
        fake_yaml(H100),
        settings(dir.path(), MigStrategy::None),
        Arc::new(NoHandoff),
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        dir.path().join("gantry-gpu.sock").exists(),
        "serves before any kubelet"
    );
    let mut kubelet = TestKubelet::start(dir.path()).await;
    assert_eq!(kubelet.registration().await.resource_name, "nvidia.com/gpu");
    plugin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_changes_reach_the_scheduler_publisher() {
    let dir = tempfile::tempdir().expect("tmp");
    let fake = fake_yaml(H100);
    let gpu1 = fake.discover().expect("d").gpus[1].uuid.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let plugin = RunningPlugin::start_publishing(
        fake.clone(),
        settings(dir.path(), MigStrategy::None),
        Arc::new(NoHandoff),
        Some(Arc::new(ChannelPublisher(tx))),
    );

    let first = recv(&mut rx).await;
    assert_eq!(first.name, "t-h100");
    assert_eq!(first.devices.len(), 4);
    assert!(first
        .devices
        .iter()
        .all(|d| d.health == gantry_model::Health::Healthy));
    fake.inject(
        HealthEvent {
            gpu: gpu1.clone(),
            gpu_instance: None,
            kind: EventKind::Xid(48),
        },
        Duration::ZERO,
    );
    let bad = recv(&mut rx).await;
    assert_eq!(bad.devices[1].uuid, gpu1);
    assert_eq!(bad.devices[1].health, gantry_model::Health::Unhealthy);
    let good = recv(&mut rx).await;
    assert_eq!(good.devices[1].health, gantry_model::Health::Healthy);
    plugin.stop().await;
}

async fn recv(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<gantry_model::Node>,
) -> gantry_model::Node {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("published in time")
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_publishes_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let published = dir.path().join("node.json");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gantry-device-plugin"))
        .arg("--fake")
        .arg(format!(
            "{}/examples/dgx-a100.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args([
            "run",
            "--mig-strategy",
            "mixed",
            "--watch-interval",
            "20ms",
            "--device-plugin-dir",
        ])
        .arg(dir.path())
        .arg("--publish")
        .arg(&published)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the binary");
    assert_eq!(mixed_a100_registered(&mut kubelet, dir.path()).await, 9);
    let deadline = Instant::now() + WAIT;
    let node: gantry_model::Node = loop {
        if let Ok(text) = std::fs::read_to_string(&published) {
            break serde_json::from_str(&text).expect("published JSON is a gantry Node");
        }
        assert!(Instant::now() < deadline, "nothing published");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(node.name, "dgx-a100-0");
    assert_eq!(node.devices.len(), 8);
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status:?}");
    assert!(
        !dir.path().join("gantry-gpu.sock").exists(),
        "sockets removed on SIGTERM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mig_reconfiguration_is_rediscovered_and_reregistered() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut kubelet = TestKubelet::start(dir.path()).await;
    let fake = fake_yaml(MIG_NODE);
    let plugin = RunningPlugin::start(
        fake.clone(),
        settings(dir.path(), MigStrategy::Mixed),
        Arc::new(NoHandoff),
    );
    kubelet.registrations(3).await;
    let mut c = dial(dir.path(), "gantry-mig-1g.10gb.sock").await;
    let mut st = c
        .list_and_watch(pb::Empty {})
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next_list(&mut st).await.len(), 2);

    // GPU 2's 1g.10gb slice is replaced by a 2g.20gb one.
    let reconfigured = MIG_NODE.replace(
        "      - {profile: 1g.10gb, start: 0, gpu_instance: 7}",
        "      - {profile: 2g.20gb, start: 0, gpu_instance: 7}",
    );
    fake.replace_inventory(fake_yaml(&reconfigured).discover().expect("d"));
    assert_eq!(mixed_a100_registered(&mut kubelet, dir.path()).await, 1);
    plugin.stop().await;
}

/// The four resources of a mixed-strategy A100 node registered (in this order); returns how
/// many `1g.10gb` slices the first ListAndWatch message of that resource lists.
async fn mixed_a100_registered(kubelet: &mut TestKubelet, dir: &std::path::Path) -> usize {
    let regs = kubelet.registrations(4).await;
    let names: Vec<&str> = regs.iter().map(|r| r.resource_name.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "nvidia.com/gpu",
            "nvidia.com/mig-1g.10gb",
            "nvidia.com/mig-2g.20gb",
            "nvidia.com/mig-3g.40gb"
        ]
    );
    let mut c = dial(dir, "gantry-mig-1g.10gb.sock").await;
    let mut st = c
        .list_and_watch(pb::Empty {})
        .await
        .expect("watch")
        .into_inner();
    next_list(&mut st).await.len()
}
