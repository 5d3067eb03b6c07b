//! Hugging Face model folders: config.json, model.safetensors or a sharded index, tokenizer.json,
//! tokenizer_config.json (chat template, special tokens) and generation_config.json.

use crate::config::{HfArchitecture, HfConfig, LlamaConfig, OneOrMany};
use crate::error::{EngineError, Result};
use crate::gguf::WeightFormat;
use crate::llama::{Linear, Quantized, WeightSource};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub struct HfModel {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    weights: MmapedSafetensors,
    format: WeightFormat,
    device: Device,
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path, hint: &str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    serde_json::from_str(srlm_core::jsonl::strip_bom(&text))
        .map_err(|e| EngineError::model(path, format!("{e}"), hint))
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: std::collections::BTreeMap<String, String>,
}

/// A special token in tokenizer_config.json: a string or an AddedToken object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenSpec {
    Text(String),
    Added { content: String },
}

impl TokenSpec {
    pub fn content(&self) -> &str {
        match self {
            TokenSpec::Text(s) => s,
            TokenSpec::Added { content } => content,
        }
    }
}

/// The chat template field: one template, or named templates (`default` is used).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TemplateSpec {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamedTemplate {
    pub name: String,
    pub template: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenizerConfig {
    #[serde(default)]
    pub bos_token: Option<TokenSpec>,
    #[serde(default)]
    pub eos_token: Option<TokenSpec>,
    #[serde(default)]
    pub pad_token: Option<TokenSpec>,
    #[serde(default)]
    pub chat_template: Option<TemplateSpec>,
}

impl TokenizerConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        read_json(
            &path,
            "tokenizer_config.json must be the JSON transformers writes",
        )
    }

    /// The template source: `chat_template.jinja` beside it (transformers >= 4.43), else the field.
    pub fn template(&self, dir: &Path) -> Result<Option<String>> {
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            return std::fs::read_to_string(&jinja)
                .map(Some)
                .map_err(|e| EngineError::io(&jinja, e));
        }
        Ok(match &self.chat_template {
            None => None,
            Some(TemplateSpec::One(s)) => Some(s.clone()),
            Some(TemplateSpec::Named(v)) => v
                .iter()
                .find(|t| t.name == "default")
                .or(v.first())
                .map(|t| t.template.clone()),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GenerationConfig {
    #[serde(default)]
    pub eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
}

impl GenerationConfig {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("generation_config.json");
        if !path.exists() {
            return Ok(Self::default());
        }
        read_json(
            &path,
            "generation_config.json must be the JSON transformers writes",
        )
    }
}

impl HfModel {
    pub fn open(dir: &Path, format: WeightFormat, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(EngineError::model(
                dir,
                "no config.json",
                "--model takes a GGUF file or a Hugging Face model folder",
            ));
        }
        let hint = "config.json must describe a Llama-family model (see transformers' LlamaConfig)";
        let json: serde_json::Value = read_json(&cfg_path, hint)?;
        let invalid = |e: serde_json::Error| EngineError::model(&cfg_path, format!("{e}"), hint);
        // The architecture first: another family is named, not the first Llama field it lacks.
        serde_json::from_value::<HfArchitecture>(json.clone())
            .map_err(invalid)?
            .family()
            .map_err(|e| {
                EngineError::model(
                    &cfg_path,
                    e.to_string(),
                    "convert the model to a supported family, or serve it with vLLM and use it through an OpenAI backend",
                )
            })?;
        let hf: HfConfig = serde_json::from_value(json).map_err(invalid)?;
        let config = hf.to_runtime().map_err(|e| match e {
            EngineError::Config(m) => EngineError::model(
                &cfg_path,
                m,
                "srlm supports Llama, Mistral and Qwen2 configurations",
            ),
            other => other,
        })?;
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let idx: ShardIndex =
                read_json(&index, "the shard index must map tensor names to files")?;
            let mut files: Vec<PathBuf> = idx.weight_map.values().map(|f| dir.join(f)).collect();
            files.sort();
            files.dedup();
            files
        } else {
            return Err(EngineError::model(
                dir,
                "no model.safetensors or model.safetensors.index.json",
                "srlm reads safetensors weights only (not .bin)",
            ));
        };
        for f in &files {
            if !f.exists() {
                return Err(EngineError::model(
                    f,
                    "weight shard is missing",
                    "the model folder is incomplete",
                ));
            }
        }
        // SAFETY: the files are mapped read-only; as with every mmap loader, they must not be
        // truncated while the model is loaded. Tensors are copied out at load.
        let weights = unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| {
            EngineError::model(
                dir,
                format!(
                    "cannot read safetensors: {}",
                    crate::error::candle_message(&e)
                ),
                "a weight file is truncated or corrupt",
            )
        })?;
        check_embedding_shapes(&weights, &config, &cfg_path)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            weights,
            format,
            device: device.clone(),
        })
    }
}

/// The embedding and the head must have `vocab_size` rows of `hidden_size`: a config.json that
/// disagrees with its weights would otherwise load, and its token ids and logits would not mean
/// what the tokenizer says. (The other tensors' shapes are checked by the matmuls that use them.)
fn check_embedding_shapes(
    weights: &MmapedSafetensors,
    config: &LlamaConfig,
    cfg_path: &Path,
) -> Result<()> {
    let want = [config.vocab_size, config.hidden_size];
    for name in ["model.embed_tokens.weight", "lm_head.weight"] {
        let Ok(view) = weights.get(name) else {
            continue; // a missing tensor is named when it is loaded
        };
        if view.shape() != want {
            return Err(EngineError::model(
                cfg_path,
                format!(
                    "`{name}` is {:?} but config.json's vocab_size x hidden_size is {want:?}",
                    view.shape()
                ),
                "config.json does not belong to these weights; use the config the checkpoint was saved with",
            ));
        }
    }
    Ok(())
}

impl WeightSource for HfModel {
    fn dense(&self, name: &str) -> Result<Tensor> {
        let t = self.weights.load(name, &self.device).map_err(|e| {
            EngineError::model(
                &self.dir,
                format!("tensor `{name}`: {}", crate::error::candle_message(&e)),
                "the checkpoint does not match config.json",
            )
        })?;
        Ok(t.to_dtype(DType::F32)?)
    }

    fn linear(&self, name: &str) -> Result<Linear> {
        linear_from_dense(self.dense(name)?, self.format)
    }

    fn contains(&self, name: &str) -> bool {
        self.weights.get(name).is_ok()
    }
}

/// A projection's dense f32 weight laid out as `format` serves it: as it is (`dense`,
/// `native`), requantized to Q8_0, or Q8_0 beside a dense prefill copy (`mixed`); a weight whose
/// rows are not whole Q8_0 blocks stays dense.
pub fn linear_from_dense(w: Tensor, format: WeightFormat) -> Result<Linear> {
    match format {
        WeightFormat::Dense | WeightFormat::Native => Ok(Linear::Dense { w, b: None }),
        WeightFormat::Q8_0 if w.dim(1)? % 32 == 0 => Ok(Linear::Quant {
            w: q8_0(&w)?,
            b: None,
        }),
        WeightFormat::Mixed | WeightFormat::MixedBf16 if w.dim(1)? % 32 == 0 => Ok(Linear::Mixed {
            q: q8_0(&w)?,
            dense: crate::model::linear::dense_weight(w, format)?,
            b: None,
        }),
        WeightFormat::Q8_0 | WeightFormat::Mixed | WeightFormat::MixedBf16 => {
            Ok(Linear::Dense { w, b: None })
        }
    }
}

/// `w` requantized to Q8_0, through srlm's kernel.
fn q8_0(w: &Tensor) -> Result<Quantized> {
    let t = QTensor::quantize(w, GgmlDType::Q8_0)?;
    // Candle's matmul would take a second quantization; srlm's kernel reads every Q8_0 matrix.
    Ok(Quantized::new(&t, || {
        QTensor::quantize(w, GgmlDType::Q8_0)
    })?)
}
