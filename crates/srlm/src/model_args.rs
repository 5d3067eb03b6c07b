//! Options every model-using command shares: which model, how its weights are held, sampling.

use anyhow::{Context, Result};
use clap::Args;
use srlm_engine::gguf::WeightFormat;
use srlm_engine::llama::Ops;
use srlm_engine::sampling::SamplingParams;
use srlm_engine::{Engine, LoadOptions};
use std::path::PathBuf;

#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face model folder. Default: SmolLM2-135M-Instruct, fetched on first use.
    #[arg(long, env = "SRLM_MODEL")]
    pub model: Option<PathBuf>,
    /// How weights are held: mixed (Q8_0 to decode, f32 to prefill: ~5x Q8_0's memory),
    /// mixed-bf16 (the prefill copy in bf16 where the CPU has AMX or AVX512-BF16: faster prefill,
    /// less memory, bf16 rounding), q8_0 (requantized), native (as stored in the file), dense
    /// (f32 throughout).
    #[arg(long, default_value = "mixed")]
    pub weights: WeightFormat,
    /// Longest prompt plus completion, in tokens (at most the model's own context).
    #[arg(long, default_value_t = 4096)]
    pub context_length: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ModelArgs {
    pub fn load(&self) -> Result<Engine> {
        if let Some(t) = self.threads {
            // candle's CPU kernels size their pools from this variable at first use.
            std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        }
        let path = match &self.model {
            Some(p) => p.clone(),
            None => srlm_engine::fetch::default_model()?,
        };
        Engine::load(&path, &self.load_options())
            .with_context(|| format!("loading model {}", path.display()))
    }

    /// How these flags hold a model's weights.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            format: self.weights,
            ops: if self.weights == WeightFormat::Dense {
                Ops::Differentiable
            } else {
                Ops::Fused
            },
            context_length: self.context_length,
        }
    }
}

#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct SamplingArgs {
    /// 0 is greedy.
    #[arg(long, default_value_t = SamplingArgs::TEMPERATURE)]
    pub temperature: f32,
    #[arg(long, default_value_t = SamplingArgs::TOP_P)]
    pub top_p: f32,
    /// 0 keeps every token.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 1.0 is off.
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// End a completion before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// The defaults of `--temperature` and `--top-p` (the paper's sampling of candidates).
    pub const TEMPERATURE: f32 = 0.7;
    pub const TOP_P: f32 = 0.9;

    /// The sampling settings these flags give, refused (every bad flag named) when they cannot
    /// sample; the check is the engine's, the one the run config and `srlm serve` use too.
    pub fn params(&self) -> anyhow::Result<SamplingParams> {
        let params = SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            repetition_penalty: self.repetition_penalty,
            max_new_tokens: self.max_new_tokens,
            stop: self.stop.clone(),
            seed: self.seed,
            logprobs: None,
        };
        let problems: Vec<String> = params
            .problems()
            .iter()
            .map(|b| format!("--{} {}", b.name.replace('_', "-"), b.problem))
            .collect();
        match problems.is_empty() {
            true => Ok(params),
            false => anyhow::bail!("{}", problems.join("\n")),
        }
    }
}
