//! Errors of Kubernetes mode.

/// What the controller and its helpers report.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The Kubernetes API refused or failed a call.
    #[error("{action}: {source}")]
    Api {
        /// What was attempted (`bind ml/w-0 to node-3`).
        action: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The engine refused something it should not have.
    #[error("engine: {0}")]
    Engine(String),
    /// A setting is invalid (names the flag).
    #[error("{field}: {reason}")]
    Config {
        /// The flag or field.
        field: String,
        /// Why.
        reason: String,
    },
    /// A client could not be made from the configuration.
    #[error("kube client: {0}")]
    Client(String),
    /// Encoding a generated document failed.
    #[error("encode: {0}")]
    Encode(String),
}

impl KubeError {
    /// Wrap a client error with what was attempted.
    pub fn api(action: impl Into<String>, source: kube::Error) -> Self {
        KubeError::Api {
            action: action.into(),
            source,
        }
    }
}
