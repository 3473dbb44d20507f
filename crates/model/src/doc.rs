//! Loading spec documents (YAML or JSON; YAML is read as a superset of JSON) with errors that name
//! the origin, the field path and the line and column.

use serde::de::DeserializeOwned;

use crate::ModelError;

/// Parse `text` (from `origin`, a file name or `<input>`) into `T`.
///
/// # Errors
/// [`ModelError::Parse`] naming the field path and the line/column, e.g.
/// `jobs.yaml: jobs[0].tasks[0].memory: unknown memory unit "Gx" (use Ki, Mi, Gi, Ti) at line 7 column 15`.
pub fn from_yaml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ModelError> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut message = inner.to_string();
        // serde_yaml appends " at line L column C" itself; keep it, and put the path first.
        if path != "." && !path.is_empty() {
            // serde_yaml may put its own (shorter) path in front; keep only ours.
            if let Some((head, rest)) = message.split_once(": ") {
                if path.starts_with(head) {
                    message = rest.to_string();
                }
            }
            message = format!("{path}: {message}");
        }
        ModelError::Parse {
            origin: origin.to_string(),
            message,
        }
    })
}

/// Read and parse a file.
///
/// # Errors
/// The file cannot be read, or [`from_yaml`]'s errors.
pub fn from_file<T: DeserializeOwned>(path: &std::path::Path) -> Result<T, ModelError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::Parse {
        origin: origin.clone(),
        message: format!("cannot read: {e}"),
    })?;
    from_yaml(&text, &origin)
}
