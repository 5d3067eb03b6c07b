//! The trainer's errors: each names the file, record or step at fault and, where one helps, a hint.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Engine(#[from] srlm_engine::EngineError),
    #[error(transparent)]
    Jsonl(#[from] srlm_core::JsonlError),
    #[error("{path}:{line}: {message}\n  hint: {hint}")]
    Record {
        path: PathBuf,
        line: usize,
        message: String,
        hint: String,
    },
    #[error("step {step}: the loss is {value}; training stopped and the last checkpoint was kept\n  hint: lower the learning rate, enable gradient clipping (--max-grad-norm) or check the data")]
    NonFiniteLoss { step: u64, value: f64 },
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{}", srlm_engine::error::candle_message(.0))]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TrainError {
    /// The error of line `line` of `path`: `message` with `hint`.
    pub fn record(path: &Path, line: usize, message: String, hint: &str) -> Self {
        TrainError::Record {
            path: path.to_path_buf(),
            line,
            message,
            hint: hint.into(),
        }
    }

    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;
