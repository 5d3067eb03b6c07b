//! Model configuration in two layers: `HfConfig` mirrors a Hugging Face `config.json`;
//! `LlamaConfig` is the validated runtime form that GGUF metadata also maps onto.

use crate::error::{EngineError, Result};
use serde::{Deserialize, Serialize};

/// Llama 3's frequency-dependent rope scaling (`rope_scaling.rope_type == "llama3"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position_embeddings: usize,
}

/// The runtime configuration of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`: kept so a checkpoint we write names its own family.
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3RopeScaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl LlamaConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(EngineError::Config(m));
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return bad("num_attention_heads and num_key_value_heads must be positive".into());
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return bad(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return bad(format!(
                "head_dim ({}) must be even for rope",
                self.head_dim
            ));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 || self.num_hidden_layers == 0 {
            return bad("vocab_size, hidden_size and num_hidden_layers must be positive".into());
        }
        Ok(())
    }

    /// Writes the `config.json` transformers reads for this model.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let arch = match self.model_type.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if self.model_type == "llama" {
            v["attention_bias"] = serde_json::json!(self.attention_bias);
            v["mlp_bias"] = serde_json::json!(false);
        }
        if let Some(s) = &self.rope_scaling {
            v["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = serde_json::json!(b);
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = serde_json::json!(one),
            many => v["eos_token_id"] = serde_json::json!(many),
        }
        v
    }
}

/// `eos_token_id` is an integer or a list in the wild.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![*x],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The fields of a `config.json` that say which model it describes, read before the rest so that
/// an unsupported family is named as such rather than by the first field it lacks.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HfArchitecture {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl HfArchitecture {
    /// `llama`, `mistral` or `qwen2`, or the unsupported architecture named.
    pub fn family(&self) -> Result<&'static str> {
        let arch = self.architectures.first().map(String::as_str).unwrap_or("");
        match (arch, self.model_type.as_deref()) {
            ("LlamaForCausalLM", _) | ("", Some("llama")) => Ok("llama"),
            ("MistralForCausalLM", _) | ("", Some("mistral")) => Ok("mistral"),
            ("Qwen2ForCausalLM", _) | ("", Some("qwen2")) => Ok("qwen2"),
            ("", other) => Err(EngineError::UnsupportedArchitecture(
                other.unwrap_or("<none>").to_string(),
            )),
            (other, _) => Err(EngineError::UnsupportedArchitecture(other.to_string())),
        }
    }
}

/// A Hugging Face `config.json`, the fields srlm reads.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers >= 5 writes `rope_theta` and the scaling here.
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<OneOrMany>,
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

impl HfConfig {
    pub fn to_runtime(&self) -> Result<LlamaConfig> {
        let model_type = HfArchitecture {
            architectures: self.architectures.clone(),
            model_type: self.model_type.clone(),
        }
        .family()?;
        if let Some(act) = &self.hidden_act {
            if act != "silu" {
                return Err(EngineError::Config(format!(
                    "hidden_act `{act}` is not supported (srlm implements silu)"
                )));
            }
        }
        if self.mlp_bias == Some(true) {
            return Err(EngineError::Config(
                "mlp_bias = true is not supported".into(),
            ));
        }
        let rope_theta = self
            .rope_theta
            .or_else(|| self.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
            .unwrap_or(10000.0);
        let scaling = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref());
        let rope_scaling = match scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => {
                let kind = v
                    .get("rope_type")
                    .or_else(|| v.get("type"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                match kind {
                    "default" | "" => None,
                    "llama3" => Some(
                        serde_json::from_value::<Llama3RopeScaling>(v.clone())
                            .map_err(|e| EngineError::Config(format!("rope_scaling: {e}")))?,
                    ),
                    other => {
                        return Err(EngineError::Config(format!(
                            "rope_scaling type `{other}` is not supported (srlm implements llama3)"
                        )))
                    }
                }
            }
        };
        let cfg = LlamaConfig {
            model_type: model_type.to_string(),
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            head_dim: self
                .head_dim
                .unwrap_or(self.hidden_size / self.num_attention_heads.max(1)),
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias: self.attention_bias.unwrap_or(model_type == "qwen2"),
            bos_token_id: self.bos_token_id,
            eos_token_ids: self
                .eos_token_id
                .as_ref()
                .map(|e| e.to_vec())
                .unwrap_or_default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_architecture_is_named() {
        let j = serde_json::json!({"architectures": ["GPTNeoXForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2});
        let c: HfConfig = serde_json::from_value(j).unwrap();
        let e = c.to_runtime().unwrap_err().to_string();
        assert!(e.contains("GPTNeoXForCausalLM"), "{e}");
    }

    #[test]
    fn qwen2_gets_qkv_bias_and_llama3_scaling_parses() {
        let j = serde_json::json!({"architectures": ["Qwen2ForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "eos_token_id": [1, 2]});
        let c = serde_json::from_value::<HfConfig>(j)
            .unwrap()
            .to_runtime()
            .unwrap();
        assert!(c.attention_bias);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        let j = serde_json::json!({"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
            "rope_parameters": {"rope_theta": 500000.0,"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}});
        let c = serde_json::from_value::<HfConfig>(j)
            .unwrap()
            .to_runtime()
            .unwrap();
        assert_eq!(c.rope_scaling.unwrap().factor, 8.0);
        assert_eq!(c.rope_theta, 500000.0);
        assert!(!c.attention_bias);
    }
}
