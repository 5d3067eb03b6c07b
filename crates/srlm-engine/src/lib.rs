//! srlm's model engine: Llama-family models from GGUF files or Hugging Face folders, their
//! tokenizers and chat templates, sampling, and batched generation.

pub mod adapter;
pub mod chat;
pub mod config;
pub mod engine;
pub mod error;
pub mod fetch;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod kernels;
pub mod model;
/// The kernels at the paths every caller uses.
pub use kernels::{autograd, cpu, decode_attention, exp, gemm_bf16, qmatmul};
/// The decoder and everything it exports, at the path every caller uses.
pub use model::llama;
pub mod sampling;
pub mod tokenizer;

pub use engine::{Engine, LoadOptions};
pub use error::{EngineError, Result};
