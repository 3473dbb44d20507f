//! The server's one error type. Each variant's doc comment is its message; the variant names
//! double as metric labels. [`ServerError::status`] maps them onto gRPC codes, so a client sees
//! the field that was refused (`tasks[0].gpus: ...`) and nothing is stored for a refused request.

use gantry_engine::EngineError;
use gantry_model::ModelError;

/// What the server refuses or fails at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// A field holds a value the model refuses (invalid spec, unknown queue, unsatisfiable
    /// request, over-long name).
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field, e.g. `tasks[0].gpus`.
        field: String,
        /// Why.
        reason: String,
    },
    /// A document or message that does not parse.
    #[error("{field}: malformed: {message}")]
    Malformed {
        /// The request field that held it, with the path inside the document.
        field: String,
        /// The parser's message.
        message: String,
    },
    /// No such object.
    #[error("{kind} {name:?} not found")]
    NotFound {
        /// `job`, `queue`, `node`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The name is taken.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists {
        /// `job`, `queue`.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The request is well formed but the current state forbids it.
    #[error("{0}")]
    Conflict(String),
    /// The store failed; the request may not have been recorded.
    #[error("store: {0}")]
    Store(String),
    /// The network or TLS failed (a client or agent could not reach the server, or the server
    /// could not listen).
    #[error("transport: {0}")]
    Transport(String),

    /// An address the server cannot listen on (in use, not local, no permission).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The flag's address.
        addr: String,
        /// The system's answer.
        reason: String,
    },
    /// The engine refused something the server had validated (a bug).
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
}

impl ServerError {
    /// Wrap a model error, prefixing its field path with the request field (`spec`).
    pub fn from_model(prefix: &str, e: ModelError) -> Self {
        match e {
            ModelError::Invalid { field, reason } => ServerError::Invalid {
                field: if field.is_empty() {
                    prefix.to_string()
                } else if prefix.is_empty() {
                    field
                } else {
                    format!("{prefix}.{field}")
                },
                reason,
            },
            ModelError::Parse { origin, message } => ServerError::Malformed {
                field: format!("{prefix} ({origin})"),
                message,
            },
        }
    }

    /// The variant name (a metric label).
    pub fn label(&self) -> &'static str {
        match self {
            ServerError::Invalid { .. } => "Invalid",
            ServerError::Malformed { .. } => "Malformed",
            ServerError::NotFound { .. } => "NotFound",
            ServerError::AlreadyExists { .. } => "AlreadyExists",
            ServerError::Conflict(_) => "Conflict",
            ServerError::Store(_) => "Store",
            ServerError::Transport(_) => "Transport",
            ServerError::Listen { .. } => "Listen",
            ServerError::Engine(_) => "Engine",
        }
    }

    /// The gRPC status for this error.
    pub fn status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            ServerError::Invalid { .. } | ServerError::Malformed { .. } => {
                tonic::Status::invalid_argument(msg)
            }
            ServerError::NotFound { .. } => tonic::Status::not_found(msg),
            ServerError::AlreadyExists { .. } => tonic::Status::already_exists(msg),
            ServerError::Conflict(_) => tonic::Status::failed_precondition(msg),
            ServerError::Store(_) | ServerError::Transport(_) | ServerError::Listen { .. } => {
                tonic::Status::unavailable(msg)
            }
            ServerError::Engine(_) => tonic::Status::internal(msg),
        }
    }
}

impl From<ServerError> for tonic::Status {
    fn from(e: ServerError) -> Self {
        e.status()
    }
}

/// Parse a JSON document held in request field `field`, naming the path of a bad value.
///
/// # Errors
/// [`ServerError::Malformed`] with `field.path` and the parser's message.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    field: &str,
    text: &str,
) -> Result<T, ServerError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        ServerError::Malformed {
            field: if path == "." || path.is_empty() {
                field.to_string()
            } else if path.starts_with('[') {
                format!("{field}{path}")
            } else {
                format!("{field}.{path}")
            },
            message: e.into_inner().to_string(),
        }
    })?;
    de.end().map_err(|e| ServerError::Malformed {
        field: field.to_string(),
        message: e.to_string(),
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_names_the_path() {
        let e = parse_json::<gantry_model::JobSpec>("spec_json", r#"{"name": "a", "queue": 3}"#)
            .expect_err("bad");
        assert_eq!(e.label(), "Malformed");
        assert!(
            e.to_string().starts_with("spec_json.queue: malformed"),
            "{e}"
        );
        assert_eq!(e.status().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn model_errors_keep_their_field() {
        let e = ServerError::from_model("spec", ModelError::invalid("tasks[0].gpus", "too many"));
        assert_eq!(e.to_string(), "spec.tasks[0].gpus: too many");
        // No prefix: the field as it is (no leading dot).
        let e = ServerError::from_model("", ModelError::invalid("spec_json.name", "bad"));
        assert_eq!(e.to_string(), "spec_json.name: bad");
    }
}
