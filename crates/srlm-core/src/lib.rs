//! srlm's tensor-free logic: the records that stages read and write, JSONL artifacts with
//! line-level errors and append-only resume, and (later) parsing and metrics.
//!
//! Nothing here depends on candle, so it builds and tests in seconds.

pub mod generation;
pub mod headtohead;
pub mod jsonl;
pub mod metrics;
pub mod train_data;

pub use jsonl::{JsonlError, JsonlWriter};
