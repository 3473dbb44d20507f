//! The crate's one error type. Each variant's doc comment is its message; variant names double as
//! metric and log labels (`nvml_missing`, `fake_file`, ...).

/// What went wrong in the device plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The NVIDIA management library could not be loaded: there is no driver on this machine.
    #[error("NVML library not found: {0}; use --fake FILE for development")]
    NvmlMissing(String),
    /// NVML answered a call with an error.
    #[error("NVML {call}: {message}")]
    Nvml {
        /// The call (and device) that failed, e.g. `device 3 uuid`.
        call: String,
        /// NVML's message.
        message: String,
    },
    /// A fake inventory file is unreadable or invalid; the message names the field.
    #[error("fake inventory {origin}: {message}")]
    FakeFile {
        /// The file.
        origin: String,
        /// What is wrong, starting with the field path.
        message: String,
    },
    /// The devices cannot be advertised with the chosen MIG strategy.
    #[error("mig strategy {strategy}: {reason}")]
    MigStrategy {
        /// `none`, `single` or `mixed`.
        strategy: &'static str,
        /// Why not.
        reason: String,
    },
    /// A request names something invalid (a device id, a size); the message names the field.
    #[error("{field}: {reason}")]
    InvalidRequest {
        /// Request field, e.g. `container_requests[0].must_include_deviceIDs`.
        field: String,
        /// Why it is refused.
        reason: String,
    },
    /// The scheduler's recorded device choice disagrees with what the kubelet asked for.
    #[error("hand-off for task {task}: {reason}")]
    HandoffConflict {
        /// The task the scheduler chose devices for.
        task: String,
        /// What disagrees.
        reason: String,
    },
    /// The hand-off source could not be read or written.
    #[error("hand-off source {origin}: {message}")]
    Handoff {
        /// The file or API.
        origin: String,
        /// What failed.
        message: String,
    },
    /// Publishing the inventory failed.
    #[error("publish to {target}: {message}")]
    Publish {
        /// Where to: `stdout`, a file path, ...
        target: String,
        /// What failed.
        message: String,
    },
    /// A socket, file or directory operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Registering with the kubelet failed.
    #[error("register {resource} with the kubelet at {socket}: {message}")]
    Register {
        /// Resource name.
        resource: String,
        /// The kubelet socket.
        socket: String,
        /// The transport or gRPC error.
        message: String,
    },
    /// The gRPC server stopped with an error.
    #[error("serve {resource} on {socket}: {message}")]
    Serve {
        /// Resource name.
        resource: String,
        /// The plugin's socket.
        socket: String,
        /// The error.
        message: String,
    },
}

impl PluginError {
    /// An [`PluginError::Io`] with context.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        PluginError::Io {
            what: what.into(),
            source,
        }
    }

    /// An [`PluginError::InvalidRequest`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        PluginError::InvalidRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
