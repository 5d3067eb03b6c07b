//! Which weights train: all of them (full fine-tuning) or low-rank adapters over a frozen base
//! (LoRA, as PEFT defines it). The store wraps the engine's weight source while the model loads,
//! so the model computes with the very tensors the optimizer updates; frozen weights are plain
//! tensors and get no gradient buffers.

use crate::error::{Result, TrainError};
use candle_core::{DType, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use srlm_core::hash::fnv1a;
use srlm_engine::adapter::LoraAdapter;
use srlm_engine::llama::{Dropout, Linear, WeightSource};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The projections of a Llama block, PEFT's `all-linear` for this family (the LM head excluded).
pub const ALL_LINEAR: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f32,
    /// Module names (`q_proj`, ...) that get adapters.
    pub target_modules: Vec<String>,
    /// A PEFT adapter folder to start from instead of PEFT's initialization (its factors, on
    /// the modules it adapts): training continues that adapter over the same base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<std::path::PathBuf>,
}

impl LoraConfig {
    /// PEFT's scaling `alpha / r`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(TrainError::Config("--lora-rank must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(TrainError::Config(
                "--lora-dropout must be in [0, 1)".into(),
            ));
        }
        for m in &self.target_modules {
            if !ALL_LINEAR.contains(&m.as_str()) {
                return Err(TrainError::Config(format!(
                    "unknown LoRA target module `{m}`; expected some of {} or all-linear",
                    ALL_LINEAR.join(", ")
                )));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Method {
    Full,
    Lora(LoraConfig),
}

/// One adapter: the HF name of the weight it modifies, and its two factors.
struct Adapter {
    weight: String,
    a: Var, // (r, in)
    b: Var, // (out, r)
}

/// The trainable parameters, filled while the model loads.
pub struct ParamStore {
    method: Method,
    seed: u64,
    /// Trainable variables by state-dict name (HF names for full fine-tuning, PEFT names for
    /// adapters), in load order.
    vars: RefCell<Vec<(String, Var)>>,
    /// Every base weight by HF name: the variables themselves under full fine-tuning, frozen
    /// tensors under LoRA.
    base: RefCell<BTreeMap<String, Tensor>>,
    adapters: RefCell<Vec<Adapter>>,
    lora_dropout: Option<Arc<Dropout>>,
    /// The adapter training starts from (`LoraConfig::init`), read once.
    init: Option<LoraAdapter>,
}

impl ParamStore {
    pub fn new(method: Method, seed: u64) -> Result<Self> {
        let lora_dropout = match &method {
            Method::Lora(c) => {
                c.validate()?;
                (c.dropout > 0.0).then(|| Dropout::new(c.dropout, seed ^ 0x10_4a))
            }
            Method::Full => None,
        };
        let init = match &method {
            Method::Lora(LoraConfig {
                init: Some(dir), ..
            }) => Some(LoraAdapter::read(dir)?),
            _ => None,
        };
        Ok(Self {
            method,
            seed,
            vars: RefCell::default(),
            base: RefCell::default(),
            adapters: RefCell::default(),
            lora_dropout,
            init,
        })
    }

    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The LoRA dropout, if any, so the trainer can switch and reseed it.
    pub fn lora_dropout(&self) -> Option<&Arc<Dropout>> {
        self.lora_dropout.as_ref()
    }

    /// Wraps `inner` so that loading a model through it registers the trainable parameters.
    pub fn wrap<'a>(&'a self, inner: &'a dyn WeightSource) -> impl WeightSource + 'a {
        Wrapped { inner, store: self }
    }

    pub fn vars(&self) -> Vec<(String, Var)> {
        self.vars.borrow().clone()
    }

    /// The base weights as the model holds them (frozen under LoRA).
    pub fn base_weights(&self) -> Vec<(String, Tensor)> {
        self.base
            .borrow()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Fails if the adapter training started from modifies a weight the model did not load
    /// as an adapted projection (another architecture, or modules outside `target_modules`).
    pub fn check_init_used(&self) -> Result<()> {
        let Some(init) = &self.init else {
            return Ok(());
        };
        let adapters = self.adapters.borrow();
        match init
            .factors
            .keys()
            .find(|k| !adapters.iter().any(|a| &a.weight == *k))
        {
            None => Ok(()),
            Some(name) => Err(TrainError::Config(format!(
                "{}: the adapter modifies `{name}`, which this model has no adapted projection for\n  hint: continue an adapter over the base it was trained on",
                init.dir.display()
            ))),
        }
    }

    pub fn trainable_count(&self) -> usize {
        self.vars.borrow().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The full model's state dict by HF name, adapters merged into their weights
    /// (`W + scale · B A`). A tied LM head is stored once, as the embedding.
    pub fn merged_state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut out = self.base.borrow().clone();
        if let Method::Lora(cfg) = &self.method {
            for ad in self.adapters.borrow().iter() {
                let w = out
                    .get(&ad.weight)
                    .ok_or_else(|| TrainError::Checkpoint(format!("no base `{}`", ad.weight)))?;
                let delta = (ad.b.as_tensor().matmul(ad.a.as_tensor())? * cfg.scale())?;
                let merged = (w + delta)?;
                out.insert(ad.weight.clone(), merged);
            }
        }
        Ok(out)
    }

    /// The adapters under PEFT's names (`base_model.model.<module>.lora_A.weight`).
    pub fn adapter_state(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for ad in self.adapters.borrow().iter() {
            let module = ad.weight.trim_end_matches(".weight");
            out.insert(
                format!("base_model.model.{module}.lora_A.weight"),
                ad.a.as_tensor().clone(),
            );
            out.insert(
                format!("base_model.model.{module}.lora_B.weight"),
                ad.b.as_tensor().clone(),
            );
        }
        out
    }

    fn base_tensor(&self, inner: &dyn WeightSource, name: &str) -> srlm_engine::Result<Tensor> {
        if let Some(t) = self.base.borrow().get(name) {
            return Ok(t.clone());
        }
        let t = inner.dense(name)?.to_dtype(DType::F32)?;
        let t = match self.method {
            Method::Full => {
                let v = Var::from_tensor(&t)?;
                self.vars.borrow_mut().push((name.to_string(), v.clone()));
                v.as_tensor().clone()
            }
            Method::Lora(_) => t.detach(),
        };
        self.base.borrow_mut().insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn linear(&self, inner: &dyn WeightSource, name: &str) -> srlm_engine::Result<Linear> {
        let w = self.base_tensor(inner, name)?;
        let Method::Lora(cfg) = &self.method else {
            return Ok(Linear::Dense { w, b: None });
        };
        let module = name
            .trim_end_matches(".weight")
            .rsplit('.')
            .next()
            .unwrap_or("");
        if !name.starts_with("model.layers.") || !cfg.target_modules.iter().any(|m| m == module) {
            return Ok(Linear::Dense { w, b: None });
        }
        let (out_f, in_f) = w.dims2()?;
        let (a, b) = match &self.init {
            Some(init) => {
                let Some((a, b)) = init.factors.get(name) else {
                    // Continuing an adapter: only the modules it adapts get factors.
                    return Ok(Linear::Dense { w, b: None });
                };
                if a.dims() != [cfg.rank, in_f] || b.dims() != [out_f, cfg.rank] {
                    return Err(srlm_engine::EngineError::model(
                        &init.dir,
                        format!(
                            "`{name}`: factors {:?} and {:?} do not fit the base weight {:?}",
                            a.dims(),
                            b.dims(),
                            w.dims()
                        ),
                        "continue an adapter over the base it was trained on",
                    ));
                }
                (Var::from_tensor(a)?, Var::from_tensor(b)?)
            }
            None => {
                // PEFT's init: A ~ kaiming_uniform(a=√5), i.e. U(-1/√in, 1/√in); B = 0.
                let mut rng = StdRng::seed_from_u64(self.seed ^ fnv1a(name.as_bytes()));
                let bound = 1.0 / (in_f as f32).sqrt();
                let a: Vec<f32> = (0..cfg.rank * in_f)
                    .map(|_| rng.random_range(-bound..bound))
                    .collect();
                let a = Var::from_vec(a, (cfg.rank, in_f), w.device())?;
                (a, Var::zeros((out_f, cfg.rank), DType::F32, w.device())?)
            }
        };
        let module_path = name.trim_end_matches(".weight");
        let mut vars = self.vars.borrow_mut();
        vars.push((
            format!("base_model.model.{module_path}.lora_A.weight"),
            a.clone(),
        ));
        vars.push((
            format!("base_model.model.{module_path}.lora_B.weight"),
            b.clone(),
        ));
        self.adapters.borrow_mut().push(Adapter {
            weight: name.to_string(),
            a: a.clone(),
            b: b.clone(),
        });
        Ok(Linear::Lora {
            base: Box::new(Linear::Dense { w, b: None }),
            a: a.as_tensor().clone(),
            b: b.as_tensor().clone(),
            scale: cfg.scale(),
            dropout: self.lora_dropout.clone(),
        })
    }
}

struct Wrapped<'a> {
    inner: &'a dyn WeightSource,
    store: &'a ParamStore,
}

impl WeightSource for Wrapped<'_> {
    fn dense(&self, name: &str) -> srlm_engine::Result<Tensor> {
        self.store.base_tensor(self.inner, name)
    }

    fn linear(&self, name: &str) -> srlm_engine::Result<Linear> {
        self.store.linear(self.inner, name)
    }

    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
}
