//! srlm's trainer: SFT and DPO on the engine's dense, differentiable model, full fine-tuning or
//! LoRA, AdamW with clipping and a warmup-cosine schedule, and checkpoints that transformers,
//! vLLM and PEFT load and that an interrupted run resumes from.

pub mod checkpoint;
pub mod data;
pub mod dpo;
pub mod error;
pub mod loss;
pub mod optim;
pub mod params;
pub mod schedule;
pub mod sft;
pub mod trainer;

pub use error::{Result, TrainError};
pub use trainer::{TrainConfig, Trainer};
