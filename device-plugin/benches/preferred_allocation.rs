//! GetPreferredAllocation on an 8-GPU NVLink node: 2 of 8 and 4 of 8, with and without
//! must-include, through the service's request handler (hand-off lookup included, gRPC
//! transport excluded). Target: < 1 ms (NVIDIA's plugin was reported at 16–30 s,
//! k8s-device-plugin#774).

use std::path::Path;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gantry_api::deviceplugin::v1beta1 as pb;
use gantry_device_plugin::fake::FakeInventory;
use gantry_device_plugin::handoff::NoHandoff;
use gantry_device_plugin::plugin::{AllocateOptions, DevicePluginService};
use gantry_device_plugin::{initial_snapshot, MigStrategy};
use tokio::sync::watch;

fn service(example: &str) -> (DevicePluginService, Vec<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(example);
    let fake = FakeInventory::load(&path).expect("example");
    let snap = initial_snapshot(&fake, MigStrategy::None).expect("snapshot");
    let ids = snap.resources[0]
        .devices
        .iter()
        .map(|d| d.id.clone())
        .collect();
    let (_tx, state) = watch::channel(Arc::new(snap));
    let (_stop_tx, stop) = watch::channel(false);
    let svc = DevicePluginService::new(
        "nvidia.com/gpu".into(),
        state,
        stop,
        Arc::new(NoHandoff),
        Arc::new(AllocateOptions::default()),
    );
    (svc, ids)
}

fn request(available: &[String], must: &[String], size: i32) -> pb::PreferredAllocationRequest {
    pb::PreferredAllocationRequest {
        container_requests: vec![pb::ContainerPreferredAllocationRequest {
            available_device_i_ds: available.to_vec(),
            must_include_device_i_ds: must.to_vec(),
            allocation_size: size,
        }],
    }
}

fn bench(c: &mut Criterion) {
    for (topology, example) in [
        ("nvlink-pairs", "pcie-nvlink-pairs.yaml"),
        ("nvswitch", "dgx-h100.yaml"),
    ] {
        let (svc, ids) = service(example);
        let mut g = c.benchmark_group(format!("preferred_allocation/{topology}"));
        for (name, must, size) in [
            ("2_of_8", vec![], 2),
            ("4_of_8", vec![], 4),
            ("2_of_8_must_1", vec![ids[5].clone()], 2),
            ("4_of_8_must_2", vec![ids[2].clone(), ids[6].clone()], 4),
        ] {
            let req = request(&ids, &must, size);
            // Check the answer once outside the timing loop.
            let got = svc.preferred(&req).expect("valid request");
            assert_eq!(got.container_responses[0].device_i_ds.len(), size as usize);
            g.bench_function(name, |b| {
                b.iter(|| svc.preferred(black_box(&req)).expect("valid request"))
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
