//! Where completions come from. Every stage that generates (prompt writing, sampling, judging,
//! evaluation) hands a [`Backend`] its requests and gets one [`Outcome`] per request back:
//! the local engine ([`local::LocalBackend`]) or any server that speaks the OpenAI API
//! ([`openai::OpenAiBackend`]: vLLM, SGLang, llama.cpp's server, a hosted provider, or
//! `srlm serve`).
//!
//! A request that cannot be answered (too long for the context, or still failing after the
//! remote backend's retries) comes back as [`Outcome::Failed`]; stages record those beside
//! their output and go on, and a rerun of the stage asks for them again.

pub mod ask_verdict;
pub mod local;
pub mod openai;

use crate::model_args::ModelArgs;
use anyhow::Result;
use clap::Args;
use srlm_core::generation::{FinishReason, PromptInput, TokenLogprob};
use srlm_engine::sampling::SamplingParams;
use std::time::Duration;

/// One completion wanted. `params.seed` is this request's own, so its completion does not
/// depend on batching; requests with the same prompt and settings may be sent to a server as
/// one request with `n` > 1.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub id: String,
    pub prompt: PromptInput,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub id: String,
    pub text: String,
    pub finish_reason: FinishReason,
    /// As the backend counted them (a server reports them per request, not per choice).
    pub prompt_tokens: Option<usize>,
    pub completion_tokens: Option<usize>,
    /// Per generated token, when the request asked for `logprobs` and the backend gave them
    /// (a server may not).
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// A judgement that ended without a score: what the judge wrote when asked for it
    /// ([`ask_verdict::AskVerdict`]).
    pub forced_verdict: Option<Continuation>,
}

/// What a model wrote to continue a begun turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Continuation {
    pub text: String,
    pub logprobs: Option<Vec<TokenLogprob>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done(Generated),
    Failed { id: String, error: String },
}

/// Requests in, outcomes out, one per request, in the order they finish.
pub trait Backend {
    /// What answers, for logs and reports: a model path or a server's URL and model name.
    fn describe(&self) -> String;

    /// Generates every request, calling `on_outcome` as each finishes; an error from
    /// `on_outcome` stops the run and is returned.
    fn generate(
        &self,
        requests: Vec<GenRequest>,
        on_outcome: &mut dyn FnMut(Outcome) -> Result<()>,
    ) -> Result<()>;
}

/// A remote OpenAI-compatible server, as the command line names it. Without `--api-base`,
/// the command's local `--model` answers.
#[derive(Args, Debug, Clone, Default, serde::Serialize)]
pub struct RemoteArgs {
    /// Generate through an OpenAI-compatible server instead of a local model: its base URL,
    /// e.g. http://localhost:8000/v1 (vLLM, SGLang, llama.cpp server, `srlm serve`, a provider).
    #[arg(long)]
    pub api_base: Option<String>,
    /// The model name to ask the server for (default: the first in its /models list).
    #[arg(long)]
    pub api_model: Option<String>,
    /// The environment variable holding the API key, sent as a bearer token and never logged.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 8)]
    pub api_concurrency: usize,
    /// Seconds one HTTP request may take before it is abandoned and retried.
    #[arg(long, default_value_t = 600.0)]
    pub api_timeout_s: f64,
    /// Retries of a request after a timeout, 429, 5xx, dropped connection or unreadable reply.
    #[arg(long, default_value_t = 6)]
    pub api_max_retries: u32,
    /// Send one request per completion, for servers that do not honour `n`.
    #[arg(long)]
    pub api_no_n: bool,
}

impl RemoteArgs {
    pub fn is_local(&self) -> bool {
        self.api_base.is_none()
    }

    pub fn config(&self) -> Option<openai::RemoteConfig> {
        let base_url = self.api_base.clone()?;
        Some(openai::RemoteConfig {
            base_url,
            model: self.api_model.clone(),
            api_key_env: self.api_key_env.clone(),
            concurrency: self.api_concurrency.max(1),
            timeout: Duration::from_secs_f64(self.api_timeout_s.max(0.001)),
            max_retries: self.api_max_retries,
            n_per_request: !self.api_no_n,
        })
    }
}

/// Where a generating command's completions come from, as its flags say: the server of
/// `--api-base`, else the local `--model` decoding `--batch-size` sequences together.
#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct BackendArgs {
    /// Sequences decoded together (local model).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Written into a command line only when it names a server.
    #[command(flatten)]
    #[serde(skip_serializing_if = "RemoteArgs::is_local")]
    pub remote: RemoteArgs,
}

impl BackendArgs {
    pub fn open(&self) -> Result<Box<dyn Backend>> {
        match self.remote.config() {
            Some(cfg) => Ok(Box::new(openai::OpenAiBackend::new(cfg)?)),
            None => Ok(Box::new(local::LocalBackend::new(
                self.model.load()?,
                self.batch_size,
            ))),
        }
    }

    /// The same settings with `model` as the local model.
    pub fn with_model(&self, model: &std::path::Path) -> Self {
        let mut a = self.clone();
        a.model.model = Some(model.to_path_buf());
        a
    }

    /// The same settings with `model` as the local model and no server.
    pub fn local(&self, model: &std::path::Path) -> Self {
        let mut a = self.with_model(model);
        a.remote.api_base = None;
        a
    }
}
