//! The generated types put every field on the wire number the kubelet expects (DESIGN §5):
//! encode with prost and compare with bytes written by hand from the field numbers.

use gantry_api::deviceplugin::v1beta1 as pb;
use prost::Message;

/// A length-delimited field: tag (field << 3 | 2), length, bytes.
fn ld(field: u8, bytes: &[u8]) -> Vec<u8> {
    let mut v = vec![(field << 3) | 2, bytes.len() as u8];
    v.extend_from_slice(bytes);
    v
}

/// A varint field (values < 128).
fn varint(field: u8, value: u8) -> Vec<u8> {
    vec![field << 3, value]
}

#[test]
fn register_request_field_numbers() {
    let req = pb::RegisterRequest {
        version: "v1beta1".into(),
        endpoint: "gantry-gpu.sock".into(),
        resource_name: "nvidia.com/gpu".into(),
        options: Some(pb::DevicePluginOptions {
            pre_start_required: true,
            get_preferred_allocation_available: true,
        }),
    };
    let want: Vec<u8> = [
        ld(1, b"v1beta1"),
        ld(2, b"gantry-gpu.sock"),
        ld(3, b"nvidia.com/gpu"),
        ld(4, &[varint(1, 1), varint(2, 1)].concat()),
    ]
    .concat();
    assert_eq!(req.encode_to_vec(), want);
    assert_eq!(
        pb::RegisterRequest::decode(want.as_slice()).expect("decode"),
        req
    );
}

#[test]
fn list_and_watch_field_numbers() {
    let resp = pb::ListAndWatchResponse {
        devices: vec![pb::Device {
            id: "GPU-1".into(),
            health: "Healthy".into(),
            topology: Some(pb::TopologyInfo {
                nodes: vec![pb::NumaNode { id: 1 }],
            }),
        }],
    };
    let device = [
        ld(1, b"GPU-1"),
        ld(2, b"Healthy"),
        ld(3, &ld(1, &varint(1, 1))),
    ]
    .concat();
    assert_eq!(resp.encode_to_vec(), ld(1, &device));
}

#[test]
fn preferred_allocation_field_numbers() {
    let req = pb::PreferredAllocationRequest {
        container_requests: vec![pb::ContainerPreferredAllocationRequest {
            available_device_i_ds: vec!["a".into(), "b".into()],
            must_include_device_i_ds: vec!["b".into()],
            allocation_size: 2,
        }],
    };
    let inner = [ld(1, b"a"), ld(1, b"b"), ld(2, b"b"), varint(3, 2)].concat();
    assert_eq!(req.encode_to_vec(), ld(1, &inner));
    let resp = pb::PreferredAllocationResponse {
        container_responses: vec![pb::ContainerPreferredAllocationResponse {
            device_i_ds: vec!["a".into()],
        }],
    };
    assert_eq!(resp.encode_to_vec(), ld(1, &ld(1, b"a")));
}

#[test]
fn allocate_field_numbers() {
    let req = pb::AllocateRequest {
        container_requests: vec![pb::ContainerAllocateRequest {
            devices_ids: vec!["a".into()],
        }],
    };
    assert_eq!(req.encode_to_vec(), ld(1, &ld(1, b"a")));
    let mut c = pb::ContainerAllocateResponse::default();
    c.envs.insert("K".into(), "V".into());
    c.mounts.push(pb::Mount {
        container_path: "/c".into(),
        host_path: "/h".into(),
        read_only: true,
    });
    c.devices.push(pb::DeviceSpec {
        container_path: "/dev/x".into(),
        host_path: "/dev/y".into(),
        permissions: "rw".into(),
    });
    c.annotations.insert("A".into(), "B".into());
    c.cdi_devices.push(pb::CdiDevice {
        name: "nvidia.com/gpu=0".into(),
    });
    // Map entries are messages {key = 1, value = 2}.
    let want = [
        ld(1, &[ld(1, b"K"), ld(2, b"V")].concat()),
        ld(2, &[ld(1, b"/c"), ld(2, b"/h"), varint(3, 1)].concat()),
        ld(
            3,
            &[ld(1, b"/dev/x"), ld(2, b"/dev/y"), ld(3, b"rw")].concat(),
        ),
        ld(4, &[ld(1, b"A"), ld(2, b"B")].concat()),
        ld(5, &ld(1, b"nvidia.com/gpu=0")),
    ]
    .concat();
    assert_eq!(c.encode_to_vec(), want);
    let pre = pb::PreStartContainerRequest {
        devices_ids: vec!["a".into()],
    };
    assert_eq!(pre.encode_to_vec(), ld(1, b"a"));
}
