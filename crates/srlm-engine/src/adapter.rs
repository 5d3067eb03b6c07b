//! PEFT LoRA adapters: an adapter folder (`adapter_config.json`, `adapter_model.safetensors`),
//! as PEFT, TRL and srlm's own trainer write it, read and laid over a base model's weights.
//!
//! Each adapted projection becomes `W' = W + scale · B A` (A: (r, in), B: (out, r);
//! `scale = alpha / r`, or `alpha / √r` with rsLoRA) when the model loads: the merged model
//! decodes as fast as the base, at the cost of its own copy of the adapted weights. vLLM keeps
//! the factors apart and applies them per request instead; both compute the same function.

use crate::error::{EngineError, Result};
use crate::gguf::WeightFormat;
use crate::llama::{Linear, WeightSource};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CONFIG: &str = "adapter_config.json";
const WEIGHTS: &str = "adapter_model.safetensors";
/// PEFT's prefix of every adapter tensor of a causal LM.
const PREFIX: &str = "base_model.model.";

/// The fields of `adapter_config.json` srlm reads; those it cannot honour are refused.
#[derive(Debug, Deserialize)]
struct AdapterConfig {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    modules_to_save: Option<serde_json::Value>,
    #[serde(default)]
    rank_pattern: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    alpha_pattern: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
}

/// A LoRA adapter's factors, by the name of the base weight each one modifies.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    pub dir: PathBuf,
    pub rank: usize,
    pub alpha: f64,
    pub rslora: bool,
    /// What the adapter says it was trained over (`base_model_name_or_path`), if anything.
    pub base_model: Option<String>,
    /// `model.layers.0.self_attn.q_proj.weight` -> (A (r, in), B (out, r)), f32.
    pub factors: BTreeMap<String, (Tensor, Tensor)>,
}

impl LoraAdapter {
    /// Whether `dir` is an adapter folder rather than a model folder.
    pub fn is_adapter_dir(dir: &Path) -> bool {
        dir.join(CONFIG).is_file() && !dir.join("config.json").exists()
    }

    /// Reads the adapter folder `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join(CONFIG);
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| EngineError::io(&cfg_path, e))?;
        let refuse = |what: String| {
            EngineError::model(
                &cfg_path,
                what,
                "srlm reads plain LoRA adapters (PEFT's LORA on linear layers, one rank and alpha); merge this one into its base with PEFT's merge_and_unload() and pass the folder",
            )
        };
        let cfg: AdapterConfig =
            serde_json::from_str(&text).map_err(|e| refuse(format!("unreadable: {e}")))?;
        if let Some(t) = cfg.peft_type.as_deref().filter(|t| *t != "LORA") {
            return Err(refuse(format!("peft_type `{t}`, not LORA")));
        }
        if cfg.r == 0 {
            return Err(refuse("`r` is 0".into()));
        }
        if cfg.use_dora {
            return Err(refuse("a DoRA adapter (`use_dora`)".into()));
        }
        if cfg.fan_in_fan_out {
            return Err(refuse("`fan_in_fan_out` (Conv1D layers)".into()));
        }
        if let Some(b) = cfg.bias.as_deref().filter(|b| *b != "none") {
            return Err(refuse(format!("trained biases (`bias: {b}`)")));
        }
        if cfg
            .modules_to_save
            .as_ref()
            .is_some_and(|m| !m.is_null() && m.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(refuse(
                "whole modules saved beside the adapter (`modules_to_save`)".into(),
            ));
        }
        if cfg.rank_pattern.as_ref().is_some_and(|p| !p.is_empty())
            || cfg.alpha_pattern.as_ref().is_some_and(|p| !p.is_empty())
        {
            return Err(refuse(
                "per-module ranks or alphas (`rank_pattern`, `alpha_pattern`)".into(),
            ));
        }
        let weights = dir.join(WEIGHTS);
        if !weights.is_file() {
            return Err(EngineError::model(
                dir,
                format!("no {WEIGHTS}"),
                "srlm reads adapter weights in safetensors; save the adapter with PEFT's save_pretrained(safe_serialization=True)",
            ));
        }
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu).map_err(|e| {
            EngineError::model(
                &weights,
                crate::error::candle_message(&e),
                "the file is not a readable safetensors file",
            )
        })?;
        let factors = pair_factors(&weights, tensors, cfg.r)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            rank: cfg.r,
            alpha: cfg.lora_alpha,
            rslora: cfg.use_rslora,
            base_model: cfg.base_model_name_or_path,
            factors,
        })
    }

    /// PEFT's scaling: `alpha / r`, or `alpha / √r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        match self.rslora {
            true => self.alpha / (self.rank as f64).sqrt(),
            false => self.alpha / self.rank as f64,
        }
    }

    /// The module names adapted (`q_proj`, ...), each once.
    pub fn target_modules(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .factors
            .keys()
            .filter_map(|w| w.trim_end_matches(".weight").rsplit('.').next())
            .map(str::to_string)
            .collect();
        set.into_iter().collect()
    }

    /// The base model the adapter names, as a local folder: relative paths are taken from the
    /// working directory, then from the adapter's own folder.
    pub fn local_base(&self) -> Result<PathBuf> {
        let hint = "give the base model with the adapter (srlm serve: POST /v1/load_lora_adapter to the server of the base), or set base_model_name_or_path in adapter_config.json to the base's folder";
        let Some(name) = self.base_model.as_deref().filter(|s| !s.is_empty()) else {
            return Err(EngineError::model(
                &self.dir,
                "the adapter names no base model",
                hint,
            ));
        };
        let as_given = PathBuf::from(name);
        let beside = self.dir.join(name);
        [as_given, beside]
            .into_iter()
            .find(|p| p.join("config.json").is_file() || p.is_file())
            .ok_or_else(|| {
                EngineError::model(
                    &self.dir,
                    format!("its base model `{name}` is not a local model folder or file"),
                    hint,
                )
            })
    }

    /// `base`'s weights with this adapter merged into the ones it adapts; adapted projections
    /// come out as `format` lays out a dense weight.
    pub fn over<'a>(&'a self, base: &'a dyn WeightSource, format: WeightFormat) -> Merged<'a> {
        Merged {
            base,
            adapter: self,
            format,
            used: RefCell::default(),
        }
    }

    /// `scale · B A` for the weight `name`, if the adapter modifies it.
    fn delta(&self, name: &str) -> Result<Option<Tensor>> {
        let Some((a, b)) = self.factors.get(name) else {
            return Ok(None);
        };
        Ok(Some((b.matmul(a)? * self.scale())?))
    }
}

/// Groups `base_model.model.<module>.lora_A.weight` / `.lora_B.weight` into (A, B) by the
/// module's weight name, checking each pair's rank.
fn pair_factors(
    file: &Path,
    tensors: std::collections::HashMap<String, Tensor>,
    rank: usize,
) -> Result<BTreeMap<String, (Tensor, Tensor)>> {
    let bad = |msg: String| {
        EngineError::model(
            file,
            msg,
            "expected PEFT's names, `base_model.model.<module>.lora_A.weight` and `.lora_B.weight`, for LoRA on linear layers",
        )
    };
    let mut a_of = BTreeMap::new();
    let mut b_of = BTreeMap::new();
    for (key, t) in tensors {
        let module = key
            .strip_prefix(PREFIX)
            .ok_or_else(|| bad(format!("tensor `{key}`")))?;
        let t = t.to_dtype(DType::F32)?;
        if let Some(m) = module.strip_suffix(".lora_A.weight") {
            a_of.insert(format!("{m}.weight"), t);
        } else if let Some(m) = module.strip_suffix(".lora_B.weight") {
            b_of.insert(format!("{m}.weight"), t);
        } else {
            return Err(bad(format!("tensor `{key}`")));
        }
    }
    let mut out = BTreeMap::new();
    for (name, a) in a_of {
        let b = b_of
            .remove(&name)
            .ok_or_else(|| bad(format!("`{name}` has lora_A but no lora_B")))?;
        let (ra, _) = a.dims2()?;
        let (_, rb) = b.dims2()?;
        if ra != rank || rb != rank {
            return Err(bad(format!(
                "`{name}`: factors of rank {ra} and {rb}, but adapter_config.json says r = {rank}"
            )));
        }
        out.insert(name, (a, b));
    }
    if let Some(name) = b_of.keys().next() {
        return Err(bad(format!("`{name}` has lora_B but no lora_A")));
    }
    if out.is_empty() {
        return Err(bad("no LoRA factors".into()));
    }
    Ok(out)
}

/// A base model's weights with an adapter merged in (see [`LoraAdapter::over`]).
pub struct Merged<'a> {
    base: &'a dyn WeightSource,
    adapter: &'a LoraAdapter,
    format: WeightFormat,
    used: RefCell<BTreeSet<String>>,
}

impl Merged<'_> {
    /// Fails unless every adapted weight was loaded: an adapter for another architecture (or
    /// module names the base does not have) must not load as if it applied.
    pub fn check_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        match self.adapter.factors.keys().find(|k| !used.contains(*k)) {
            None => Ok(()),
            Some(name) => Err(EngineError::model(
                &self.adapter.dir,
                format!("the adapter modifies `{name}`, which the base model does not have"),
                "the adapter was trained over another model; load it over the base it names",
            )),
        }
    }
}

impl WeightSource for Merged<'_> {
    fn dense(&self, name: &str) -> Result<Tensor> {
        let w = self.base.dense(name)?;
        let Some(delta) = self.adapter.delta(name)? else {
            return Ok(w);
        };
        if w.dims() != delta.dims() {
            return Err(EngineError::model(
                &self.adapter.dir,
                format!(
                    "`{name}`: the adapter's B A is {:?}, the base weight {:?}",
                    delta.dims(),
                    w.dims()
                ),
                "the adapter was trained over another model; load it over the base it names",
            ));
        }
        self.used.borrow_mut().insert(name.to_string());
        Ok((w + delta)?)
    }

    fn linear(&self, name: &str) -> Result<Linear> {
        if !self.adapter.factors.contains_key(name) {
            return self.base.linear(name);
        }
        crate::hf::linear_from_dense(self.dense(name)?, self.format)
    }

    fn contains(&self, name: &str) -> bool {
        self.base.contains(name)
    }
}
