//! srlm's model engine: Llama-family models from GGUF files or Hugging Face folders, their
//! tokenizers and chat templates, sampling, and batched generation.

pub mod autograd;
pub mod chat;
pub mod config;
pub mod decode_attention;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod llama;
pub mod q4_1;
pub mod sampling;
pub mod tokenizer;

pub use engine::{Engine, LoadOptions};
pub use error::{EngineError, Result};
