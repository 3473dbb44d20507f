//! The simulator's one error type. Every variant about input names the file, and rows of traces
//! name the line, the column and why the value is refused. The variant names double as metric
//! labels.

use std::path::PathBuf;

/// What the simulator refuses.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A trace row (CSV) holds a value the simulator cannot use.
    #[error("{file}:{line}:{column}: {reason}")]
    Row {
        /// The file (or `<input>`).
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based character column where the field starts.
        column: usize,
        /// Why, with the column name and the value.
        reason: String,
    },
    /// A YAML document (cluster, queues, scenario) did not parse or validate; the message names
    /// the file, the field path and, for syntax and type errors, the line and column.
    #[error(transparent)]
    Spec(#[from] gantry_model::ModelError),
    /// A scenario is well-formed YAML but asks for something impossible.
    #[error("{file}: {field}: {reason}")]
    Scenario {
        /// The scenario file.
        file: String,
        /// Path of the offending field (`ops[3].count`).
        field: String,
        /// Why.
        reason: String,
    },
    /// The engine refused an input (duplicate job, unknown queue, MIG profile nobody offers).
    #[error(transparent)]
    Engine(#[from] gantry_engine::EngineError),
    /// An option given to the simulator does not make sense.
    #[error("{0}")]
    Config(String),
}

impl SimError {
    /// A [`SimError::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SimError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = SimError> = std::result::Result<T, E>;
