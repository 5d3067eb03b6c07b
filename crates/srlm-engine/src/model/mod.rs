//! The model: the Llama-family decoder (`llama.rs`) and its parts: projections over dense or
//! quantized weights (`linear.rs`), rope tables (`rope.rs`) and KV caches (`kv_cache.rs`). The
//! CPU kernels they call live apart (`qmatmul.rs`, `decode_attention.rs`, `autograd.rs`).

pub mod kv_cache;
pub mod linear;
pub mod llama;
mod recompute;
pub mod rope;
