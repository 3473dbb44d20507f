//! A test kubelet: a Registration gRPC server on `kubelet.sock` in a temporary directory that
//! records every RegisterRequest, plus helpers to run the plugin in-process and dial it back.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gantry_api::deviceplugin::v1beta1 as pb;
use gantry_device_plugin::fake::FakeInventory;
use gantry_device_plugin::handoff::HandoffSource;
use gantry_device_plugin::kubelet::unix_channel;
use gantry_device_plugin::{
    serve, AllocateOptions, HealthConfig, KubeletConfig, MigStrategy, PluginError, Publisher,
    Settings,
};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tonic::{Request, Response, Status};

pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Recorder(mpsc::UnboundedSender<pb::RegisterRequest>);

#[tonic::async_trait]
impl pb::registration_server::Registration for Recorder {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let _ = self.0.send(req.into_inner());
        Ok(Response::new(pb::Empty {}))
    }
}

/// The test kubelet.
pub struct TestKubelet {
    pub dir: PathBuf,
    rx: mpsc::UnboundedReceiver<pb::RegisterRequest>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestKubelet {
    pub async fn start(dir: &Path) -> Self {
        let sock = dir.join("kubelet.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock).expect("bind kubelet.sock");
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            Server::builder()
                .add_service(pb::registration_server::RegistrationServer::new(Recorder(
                    tx,
                )))
                .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await
                .expect("test kubelet serves");
        });
        TestKubelet {
            dir: dir.to_path_buf(),
            rx,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// The next RegisterRequest (panics after WAIT).
    pub async fn registration(&mut self) -> pb::RegisterRequest {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("a registration within the wait")
            .expect("kubelet channel open")
    }

    /// Registrations until `n` distinct resources registered.
    pub async fn registrations(&mut self, n: usize) -> Vec<pb::RegisterRequest> {
        let mut out: Vec<pb::RegisterRequest> = Vec::new();
        while out.len() < n {
            let r = self.registration().await;
            if !out.iter().any(|o| o.resource_name == r.resource_name) {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.resource_name.cmp(&b.resource_name));
        out
    }

    /// Stop like a restarting kubelet: stop serving and delete every socket in the directory.
    pub async fn crash(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        for e in std::fs::read_dir(&self.dir).expect("read dir") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "sock") {
                std::fs::remove_file(&p).expect("remove socket");
            }
        }
    }
}

/// Fast settings for tests: milliseconds, not seconds.
pub fn settings(dir: &Path, strategy: MigStrategy) -> Settings {
    let mut kubelet = KubeletConfig::new(dir);
    kubelet.watch_interval = Duration::from_millis(20);
    kubelet.register_timeout = Duration::from_secs(2);
    Settings {
        kubelet,
        strategy,
        health: HealthConfig {
            quiet_period: Duration::from_millis(150),
            probe_interval: Duration::from_millis(10),
            rediscover_interval: Some(Duration::from_millis(50)),
            ..HealthConfig::default()
        },
        allocate: AllocateOptions::default(),
        heartbeat: Duration::from_millis(100),
    }
}

/// The plugin running in-process.
pub struct RunningPlugin {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), gantry_device_plugin::PluginError>>,
}

impl RunningPlugin {
    pub fn start(
        fake: Arc<FakeInventory>,
        settings: Settings,
        handoff: Arc<dyn HandoffSource>,
    ) -> Self {
        Self::start_publishing(fake, settings, handoff, None)
    }

    pub fn start_publishing(
        fake: Arc<FakeInventory>,
        settings: Settings,
        handoff: Arc<dyn HandoffSource>,
        publisher: Option<Arc<dyn Publisher>>,
    ) -> Self {
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(fake, settings, handoff, publisher, async {
            let _ = rx.await;
        }));
        RunningPlugin {
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("plugin stops")
            .expect("join")
            .expect("plugin ran without error");
    }
}

/// Dial the plugin back the way the kubelet does: `endpoint` inside the directory.
pub async fn dial(
    dir: &Path,
    endpoint: &str,
) -> pb::device_plugin_client::DevicePluginClient<tonic::transport::Channel> {
    assert!(
        !endpoint.contains('/'),
        "endpoint must be a file name: {endpoint}"
    );
    let ch = unix_channel(&dir.join(endpoint), Duration::from_secs(2))
        .await
        .expect("dial the plugin");
    pb::device_plugin_client::DevicePluginClient::new(ch)
}

pub fn fake(path_in_examples: &str) -> Arc<FakeInventory> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path_in_examples);
    Arc::new(FakeInventory::load(&p).expect("example loads"))
}

pub fn fake_yaml(y: &str) -> Arc<FakeInventory> {
    Arc::new(FakeInventory::from_yaml(y, "test.yaml").expect("valid fake"))
}

/// Next ListAndWatch message.
pub async fn next_list(s: &mut tonic::Streaming<pb::ListAndWatchResponse>) -> Vec<pb::Device> {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("a ListAndWatch message within the wait")
        .expect("stream ok")
        .expect("stream open")
        .devices
}

pub fn health_of(devices: &[pb::Device], id: &str) -> String {
    devices
        .iter()
        .find(|d| d.id == id)
        .map(|d| d.health.clone())
        .unwrap_or_else(|| panic!("{id} not listed"))
}

/// A publisher that forwards every published node to a channel.
#[derive(Debug)]
pub struct ChannelPublisher(pub mpsc::UnboundedSender<gantry_model::Node>);

impl Publisher for ChannelPublisher {
    fn publish(&self, node: &gantry_model::Node) -> Result<(), PluginError> {
        self.0.send(node.clone()).map_err(|e| PluginError::Publish {
            target: "test channel".into(),
            message: e.to_string(),
        })
    }
}
