//! The CRD YAML shipped in `deploy/` is exactly what the Rust types generate.

use std::path::PathBuf;

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

#[test]
fn deploy_crds_match_the_rust_types() {
    let want = gantry_kube::crd::crds_yaml().unwrap();
    for rel in [
        "deploy/crds/gantry.dev.yaml",
        "deploy/helm/gantry/crds/gantry.dev.yaml",
    ] {
        let got = std::fs::read_to_string(repo_file(rel)).unwrap_or_default();
        assert!(
            got == want,
            "{rel} drifted from the Rust types; regenerate with \
             `cargo run -p gantry -- kube crds --out {}`",
            rel.trim_end_matches("/gantry.dev.yaml")
        );
    }
}

#[test]
fn the_example_queues_and_groups_parse_as_the_crds() {
    let text = std::fs::read_to_string(repo_file("deploy/examples/kube/queues.yaml")).unwrap();
    let mut queues = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.get("kind").and_then(|k| k.as_str()) == Some("Queue") {
            let q: gantry_kube::crd::Queue = serde_yaml::from_value(v).unwrap();
            assert!(!q.spec.quotas.is_empty() || q.spec.parent.is_none());
            queues += 1;
        }
    }
    assert!(queues >= 3, "two teams and their cohort");
    let gang =
        std::fs::read_to_string(repo_file("deploy/examples/kube/training-gang.yaml")).unwrap();
    let mut min_members = Vec::new();
    let mut completions = None;
    for doc in serde_yaml::Deserializer::from_str(&gang) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        match v.get("kind").and_then(|k| k.as_str()) {
            Some("PodGroup") => {
                let g: gantry_kube::crd::PodGroup = serde_yaml::from_value(v).unwrap();
                min_members.push(g.spec.min_member);
            }
            Some("Job") => completions = v["spec"]["completions"].as_u64(),
            _ => {}
        }
    }
    // The gang is all of the Job's pods: minMember equals the Job's completions.
    assert_eq!(min_members.len(), 1);
    assert_eq!(completions, Some(u64::from(min_members[0])));
}

#[test]
fn the_autoscaled_vllm_example_gives_gantry_inference_pods_of_one_gpu() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    let text =
        std::fs::read_to_string(repo_file("deploy/examples/kube/vllm-autoscaled.yaml")).unwrap();
    let mut kinds = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        if kind == "Deployment" {
            let d: Deployment = serde_yaml::from_value(v.clone()).unwrap();
            let template = d.spec.expect("spec").template;
            // The pod the ReplicaSet makes from the template, as gantry reads it.
            let pod = Pod {
                metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                    name: Some("vllm-chat-abc".into()),
                    namespace: Some("default".into()),
                    uid: Some("u1".into()),
                    ..template.metadata.unwrap_or_default()
                },
                spec: template.spec,
                status: None,
            };
            assert_eq!(
                pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref()),
                Some("gantry")
            );
            let info = gantry_kube::translate::pod_info(&pod).unwrap();
            assert_eq!(info.priority_class.as_deref(), Some("inference"));
            assert_eq!(info.queue.as_deref(), Some("team-b"));
            assert_eq!(info.demand.gpus, 1);
        }
        if kind == "ScaledObject" {
            assert_eq!(v["spec"]["triggers"][0]["type"], "prometheus");
            assert!(v["spec"]["triggers"][0]["metadata"]["query"]
                .as_str()
                .unwrap_or_default()
                .contains("vllm:num_requests_running"));
        }
        kinds.push(kind);
    }
    assert_eq!(kinds, ["Deployment", "Service", "ScaledObject"]);
}
