//! One file per srlm command: its arguments (clap, and serde for the run's command lines) and
//! the function that runs it. `main.rs` dispatches to them; `srlm run` calls them as typed
//! stages (`pipeline::stage_call`).

pub mod chat;
pub mod contrast;
pub mod eft;
pub mod eval;
pub mod eval_vs;
pub mod export;
pub mod generate;
pub mod prompts;
pub mod run;
pub mod stages;
pub mod train;
