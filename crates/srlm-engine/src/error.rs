//! The engine's errors: each names the file or field at fault and, where one helps, a hint.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{path}: {message}\n  hint: {hint}")]
    Model {
        path: PathBuf,
        message: String,
        hint: String,
    },
    #[error("unsupported architecture `{0}`: srlm runs Llama-family models (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM; GGUF `llama`/`qwen2`)")]
    UnsupportedArchitecture(String),
    #[error("{0}")]
    Config(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("prompt of {prompt_tokens} tokens does not fit the context of {context} tokens (request `{id}`)\n  hint: shorten the prompt or raise --context-length (at most the model's max_position_embeddings)")]
    PromptTooLong {
        id: String,
        prompt_tokens: usize,
        context: usize,
    },
    #[error("fetching the default model: {0}")]
    Fetch(String),
    /// The caller's event handler failed and asked the generator to stop; the caller keeps
    /// its own error and returns that.
    #[error("stopped by the caller: {0}")]
    Stopped(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    pub fn model(
        path: impl Into<PathBuf>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        EngineError::Model {
            path: path.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EngineError::Io {
            path: path.into(),
            source,
        }
    }
}

/// candle's message without the backtrace it appends when RUST_BACKTRACE is set.
pub fn candle_message(e: &candle_core::Error) -> String {
    let s = e.to_string();
    s.split("\n   0: ")
        .next()
        .unwrap_or(&s)
        .trim_end()
        .to_string()
}

pub type Result<T> = std::result::Result<T, EngineError>;
