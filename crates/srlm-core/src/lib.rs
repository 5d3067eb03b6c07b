//! srlm's tensor-free logic: the records that stages read and write, JSONL artifacts with
//! line-level errors and append-only resume, the judge's prompt and score parsing, preference
//! pair selection, ROUGE-L, and the evaluation metrics (judge agreement with human ranks,
//! head-to-head win rates).
//!
//! Nothing here depends on candle, so it builds and tests in seconds.

pub mod contrast;
pub mod diagnostics;
pub mod eft;
pub mod generation;
pub mod hash;
pub mod headtohead;
pub mod health;
pub mod jsonl;
pub mod judge;
pub mod metrics;
pub mod oasst;
pub mod openai;
pub mod pairs;
pub mod prompt_slots;
pub mod rouge;
pub mod seed;
pub mod selfinstruct;
pub mod stages;
pub mod summaries;
pub mod train_data;

pub use jsonl::{JsonlError, JsonlWriter};
