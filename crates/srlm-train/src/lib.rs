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
pub mod token_logps;
pub mod trainer;

pub use error::{Result, TrainError};
pub use trainer::{TrainConfig, Trainer};

/// Keeps freed large blocks in the heap for reuse (glibc). Training allocates and frees the same
/// large activations every step; glibc hands blocks over its mmap threshold straight back to the
/// kernel, so each step would fault in and zero hundreds of MB anew (15% of a SmolLM2 step,
/// measured with perf). The top pad does the same for the worker threads' arenas, which
/// otherwise give the free top of their heaps back (`MADV_DONTNEED`) after each large free and
/// fault it in again (`perf stat -e page-faults,task-clock srlm bench train --threads 2 --steps
/// 3`: 1.35M -> 1.06M page faults, 179 -> 175 s of CPU time).
/// Call once at start-up, before other threads exist.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
