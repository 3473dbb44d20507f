//! The model crate's one error type. Every variant names where the problem is (a field path such
//! as `jobs[0].tasks[1].gpus`, or a file with line and column) and why.

/// What went wrong with a spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A field holds a value the model does not accept.
    #[error("{field}: {reason}")]
    Invalid {
        /// Path of the field, e.g. `jobs[0].tasks[1].gpus`.
        field: String,
        /// Why it is refused, with the numbers involved.
        reason: String,
    },
    /// A document did not parse.
    #[error("{origin}: {message}")]
    Parse {
        /// Where it came from: a file name, or `<input>`.
        origin: String,
        /// The parser's message, prefixed with the field path and line/column where known.
        message: String,
    },
}

impl ModelError {
    /// An [`ModelError::Invalid`] for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ModelError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The field path, when the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            ModelError::Invalid { field, .. } => Some(field),
            ModelError::Parse { .. } => None,
        }
    }

    /// Prefix the field path with `prefix` (`tasks[1].gpus` → `jobs[0].tasks[1].gpus`).
    pub fn within(self, prefix: &str) -> Self {
        match self {
            ModelError::Invalid { field, reason } => ModelError::Invalid {
                field: if field.is_empty() {
                    prefix.to_string()
                } else {
                    format!("{prefix}.{field}")
                },
                reason,
            },
            other => other,
        }
    }
}
