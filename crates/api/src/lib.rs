//! # gantry-api
//!
//! gantry's wire contracts, generated at build time from `proto/` by `protox` and
//! `tonic-prost-build` (no system `protoc`).
//!
//! - [`deviceplugin::v1beta1`]: the kubelet device-plugin API, wire-compatible with
//!   Kubernetes' `k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1` (package `v1beta1`, same message
//!   names and field numbers). The kubelet serves [`Registration`](deviceplugin::v1beta1::registration_server::Registration);
//!   each plugin serves [`DevicePlugin`](deviceplugin::v1beta1::device_plugin_server::DevicePlugin).
//!
//! - [`gantry::v1`]: the standalone control plane's services (`Queues`, `Jobs`, `Nodes`,
//!   `Cluster`), served by `gantry serve` and called by the CLI and node agents.

/// The kubelet device-plugin API.
pub mod deviceplugin {
    /// Version v1beta1: the only one the kubelet speaks today.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod v1beta1 {
        tonic::include_proto!("v1beta1");

        /// The version string a plugin sends in `RegisterRequest.version`.
        pub const VERSION: &str = "v1beta1";
        /// Health value of a usable device.
        pub const HEALTHY: &str = "Healthy";
        /// Health value of a device that must not be allocated.
        pub const UNHEALTHY: &str = "Unhealthy";
        /// Default directory of the kubelet's device-plugin sockets.
        pub const DEVICE_PLUGIN_PATH: &str = "/var/lib/kubelet/device-plugins";
        /// File name of the kubelet's registration socket in that directory.
        pub const KUBELET_SOCKET: &str = "kubelet.sock";
    }
}

/// gantry's own API.
pub mod gantry {
    /// Version v1, served by `gantry serve`.
    #[allow(missing_docs, clippy::all, missing_debug_implementations)]
    pub mod v1 {
        tonic::include_proto!("gantry.v1");
    }
}
