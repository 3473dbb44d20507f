//! Talking to the kubelet: serve each resource on its own unix socket in the device-plugin
//! directory, register it (version `v1beta1`, endpoint = the socket's *file name*), and keep
//! watching. A restarted kubelet deletes every socket in the directory and creates a new
//! `kubelet.sock`: the [`Manager`] notices (by polling file identities every `watch_interval`),
//! recreates its sockets and registers again. A change in the set of advertised resources (MIG
//! reconfiguration) does the same.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gantry_api::deviceplugin::v1beta1 as pb;
use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint, Server, Uri};

use crate::handoff::HandoffSource;
use crate::plugin::{AllocateOptions, DevicePluginService};
use crate::resources::Snapshot;
use crate::PluginError;

/// How the plugin meets the kubelet.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// The device-plugin directory (`/var/lib/kubelet/device-plugins`).
    pub plugin_dir: PathBuf,
    /// How often to check `kubelet.sock` and our own sockets.
    pub watch_interval: Duration,
    /// Timeout of one registration call.
    pub register_timeout: Duration,
    /// Prefix of our socket file names (`gantry` → `gantry-gpu.sock`).
    pub socket_prefix: String,
}

impl KubeletConfig {
    /// Defaults for a directory.
    pub fn new(plugin_dir: impl Into<PathBuf>) -> Self {
        KubeletConfig {
            plugin_dir: plugin_dir.into(),
            watch_interval: Duration::from_secs(1),
            register_timeout: Duration::from_secs(5),
            socket_prefix: "gantry".to_string(),
        }
    }

    /// The kubelet's registration socket.
    pub fn kubelet_socket(&self) -> PathBuf {
        self.plugin_dir.join(pb::KUBELET_SOCKET)
    }

    /// Our socket's file name for a resource: `nvidia.com/gpu` → `gantry-gpu.sock`,
    /// `nvidia.com/mig-1g.10gb` → `gantry-mig-1g.10gb.sock`.
    pub fn socket_name(&self, resource: &str) -> String {
        let short = resource.rsplit('/').next().unwrap_or(resource);
        let safe: String = short
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}-{safe}.sock", self.socket_prefix)
    }
}

/// A gRPC channel over a unix socket.
///
/// # Errors
/// The socket cannot be reached within `timeout`.
pub async fn unix_channel(
    path: &Path,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by tonic but unused: the connector below dials the socket.
    Endpoint::from_static("http://[::1]:50051")
        .connect_timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// Register one resource with the kubelet.
///
/// # Errors
/// [`PluginError::Register`] when the kubelet cannot be reached or refuses.
pub async fn register(config: &KubeletConfig, resource: &str) -> Result<(), PluginError> {
    let socket = config.kubelet_socket();
    let err = |message: String| PluginError::Register {
        resource: resource.to_string(),
        socket: socket.display().to_string(),
        message,
    };
    let channel = unix_channel(&socket, config.register_timeout)
        .await
        .map_err(|e| err(format!("connect: {e}")))?;
    let mut client = pb::registration_client::RegistrationClient::new(channel);
    let req = pb::RegisterRequest {
        version: pb::VERSION.to_string(),
        endpoint: config.socket_name(resource),
        resource_name: resource.to_string(),
        options: Some(pb::DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }),
    };
    tokio::time::timeout(config.register_timeout, client.register(req))
        .await
        .map_err(|_| err("timed out".to_string()))?
        .map_err(|s| err(format!("{}: {}", s.code(), s.message())))?;
    Ok(())
}

/// (device, inode) of a file, to notice it being replaced.
fn file_id(path: &Path) -> Option<FileId> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// (device, inode) of a socket file.
type FileId = (u64, u64);

/// One resource's server: its socket file (and that file's identity) and the serving task.
#[derive(Debug)]
struct ServerEntry {
    resource: String,
    path: PathBuf,
    id: Option<FileId>,
    handle: JoinHandle<()>,
}

/// One set of servers: a socket and a gRPC server per resource.
#[derive(Debug)]
struct Generation {
    stop: watch::Sender<bool>,
    servers: Vec<ServerEntry>,
}

impl Generation {
    fn resources(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.resource.clone()).collect()
    }

    fn sockets_intact(&self) -> bool {
        self.servers
            .iter()
            .all(|s| !s.handle.is_finished() && file_id(&s.path) == s.id)
    }

    async fn shutdown(self) {
        self.stop.send_replace(true);
        for ServerEntry {
            resource,
            path,
            id,
            handle,
        } in self.servers
        {
            if tokio::time::timeout(Duration::from_secs(5), handle)
                .await
                .is_err()
            {
                tracing::warn!(resource = %resource, "server did not stop in 5 s");
            }
            // Only remove the socket if it is still ours (a restarted kubelet may have reused
            // the directory).
            if file_id(&path) == id {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// Serves every advertised resource and keeps it registered with the kubelet.
#[derive(Debug)]
pub struct Manager {
    config: KubeletConfig,
    state: watch::Receiver<Arc<Snapshot>>,
    handoff: Arc<dyn HandoffSource>,
    opts: Arc<AllocateOptions>,
}

impl Manager {
    /// A manager over the node state `state`.
    pub fn new(
        config: KubeletConfig,
        state: watch::Receiver<Arc<Snapshot>>,
        handoff: Arc<dyn HandoffSource>,
        opts: AllocateOptions,
    ) -> Self {
        Manager {
            config,
            state,
            handoff,
            opts: Arc::new(opts),
        }
    }

    async fn start(&self) -> Result<Generation, PluginError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let resources: Vec<String> = self
            .state
            .borrow()
            .resources
            .iter()
            .map(|r| r.name.clone())
            .collect();
        let mut servers = Vec::new();
        for resource in resources {
            let path = self
                .config
                .plugin_dir
                .join(self.config.socket_name(&resource));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(PluginError::io(
                        format!("remove stale socket {}", path.display()),
                        e,
                    ))
                }
            }
            let listener = UnixListener::bind(&path)
                .map_err(|e| PluginError::io(format!("bind {}", path.display()), e))?;
            let id = file_id(&path);
            let svc = DevicePluginService::new(
                resource.clone(),
                self.state.clone(),
                stop_rx.clone(),
                self.handoff.clone(),
                self.opts.clone(),
            );
            let mut stop = stop_rx.clone();
            let (r, p) = (resource.clone(), path.display().to_string());
            let handle = tokio::spawn(async move {
                let res = Server::builder()
                    .add_service(pb::device_plugin_server::DevicePluginServer::new(svc))
                    .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
                if let Err(e) = res {
                    let e = PluginError::Serve {
                        resource: r,
                        socket: p,
                        message: e.to_string(),
                    };
                    tracing::error!(error = %e, "device plugin server failed");
                }
            });
            tracing::info!(resource = %resource, socket = %path.display(), "serving");
            servers.push(ServerEntry {
                resource,
                path,
                id,
                handle,
            });
        }
        Ok(Generation {
            stop: stop_tx,
            servers,
        })
    }

    async fn register_all(&self, gen: &Generation) -> Result<(), PluginError> {
        for resource in gen.resources() {
            register(&self.config, &resource).await?;
            tracing::info!(resource = %resource, endpoint = %self.config.socket_name(&resource), "registered with the kubelet");
        }
        Ok(())
    }

    /// Serve and stay registered until `shutdown` resolves; then stop the servers and remove
    /// the sockets.
    ///
    /// # Errors
    /// A socket cannot be created in the device-plugin directory.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), PluginError> {
        tokio::pin!(shutdown);
        std::fs::create_dir_all(&self.config.plugin_dir).map_err(|e| {
            PluginError::io(format!("create {}", self.config.plugin_dir.display()), e)
        })?;
        let kubelet = self.config.kubelet_socket();
        let mut gen = self.start().await?;
        // The kubelet.sock identity we last registered against; None = not registered.
        let mut registered: Option<FileId> = None;
        let mut last_error: Option<String> = None;
        if file_id(&kubelet).is_none() {
            tracing::info!(socket = %kubelet.display(), "waiting for the kubelet's socket to register");
        }
        loop {
            let now_id = file_id(&kubelet);
            let resources_changed = {
                let snap = self.state.borrow();
                let now: Vec<String> = snap.resources.iter().map(|r| r.name.clone()).collect();
                now != gen.resources()
            };
            if resources_changed || !gen.sockets_intact() {
                tracing::warn!(
                    resources_changed,
                    "restarting device plugin servers (sockets removed: kubelet restart?)"
                );
                gen.shutdown().await;
                gen = self.start().await?;
                registered = None;
            }
            if now_id.is_some() && registered != now_id {
                match self.register_all(&gen).await {
                    Ok(()) => {
                        registered = now_id;
                        last_error = None;
                    }
                    Err(e) => {
                        // Log each distinct failure once; retry on the next tick.
                        let msg = e.to_string();
                        if last_error.as_ref() != Some(&msg) {
                            tracing::warn!(error = %msg, "registration failed; will retry");
                            last_error = Some(msg);
                        }
                    }
                }
            } else if now_id.is_none() && registered.is_some() {
                tracing::warn!(socket = %kubelet.display(), "kubelet socket gone; waiting for it to come back");
                registered = None;
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.config.watch_interval) => {}
                r = self.state.changed() => if r.is_err() { break },
            }
        }
        gen.shutdown().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names_are_file_names() {
        let c = KubeletConfig::new("/tmp/x");
        assert_eq!(c.socket_name("nvidia.com/gpu"), "gantry-gpu.sock");
        assert_eq!(
            c.socket_name("nvidia.com/mig-1g.10gb"),
            "gantry-mig-1g.10gb.sock"
        );
        assert_eq!(c.socket_name("weird/a b"), "gantry-a_b.sock");
        assert_eq!(c.kubelet_socket(), PathBuf::from("/tmp/x/kubelet.sock"));
    }
}
