//! GGUF model files (llama.cpp's format): configuration from metadata, weights by their
//! Hugging Face names, the tokenizer and chat template from `tokenizer.*` metadata.
//!
//! llama.cpp's converter permutes the rows of Q and K for its interleaved rope; we move the rows
//! back (byte-wise, so quantized blocks are untouched) and run the HF rotate-half rope.

use crate::config::LlamaConfig;
use crate::error::{EngineError, Result};
use crate::llama::{Linear, Quantized, WeightSource};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How projection weights are kept in memory. Serialised as the name `FromStr` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    /// Dequantized f32 tensors: the reference and training path.
    Dense,
    /// Quantized blocks as stored in the file.
    Native,
    /// Requantized to Q8_0 at load, which has fast CPU kernels (Q4_1 has none in candle).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// Q8_0 for decoding plus dense f32 for prefill and wide batches (about 5x the memory of
    /// Q8_0 alone: for a 135M model ~0.9 GB).
    Mixed,
    /// `Mixed` with the prefill copy in bf16, packed once for the bf16 GEMM (AMX or
    /// AVX512-BF16; half its memory); `Mixed` where the CPU has neither.
    #[serde(rename = "mixed-bf16")]
    MixedBf16,
}

impl std::str::FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "dense" | "f32" => Ok(WeightFormat::Dense),
            "native" => Ok(WeightFormat::Native),
            "q8_0" | "q8" => Ok(WeightFormat::Q8_0),
            "mixed" => Ok(WeightFormat::Mixed),
            "mixed-bf16" => Ok(WeightFormat::MixedBf16),
            other => Err(format!(
                "unknown weight format `{other}` (mixed, mixed-bf16, q8_0, native, dense)"
            )),
        }
    }
}

/// An opened GGUF file: its metadata and every tensor, by HF name, in HF row order.
pub struct GgufModel {
    pub path: PathBuf,
    pub metadata: HashMap<String, Value>,
    tensors: HashMap<String, QTensor>,
    format: WeightFormat,
    device: Device,
}

fn gguf_to_hf_name(name: &str) -> Option<String> {
    let simple = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(s) = simple {
        return Some(s.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, leaf) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = leaf.rsplit_once('.')?;
    let hf = match part {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's `permute(w, n_head)` on the rows of a Q or K weight (or bias):
/// GGUF row `h*d + 2i + s` holds HF row `h*d + s*(d/2) + i`.
pub fn unpermute_rows(data: &[u8], rows: usize, n_head: usize) -> Vec<u8> {
    let row_bytes = data.len() / rows;
    let d = rows / n_head;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for i in 0..d / 2 {
            for s in 0..2 {
                let src = h * d + 2 * i + s;
                let dst = h * d + s * (d / 2) + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    out
}

fn meta_err(path: &Path, key: &str, e: impl std::fmt::Display) -> EngineError {
    EngineError::model(
        path,
        format!("metadata `{key}`: {e}"),
        "the file is not a complete GGUF of a Llama-family model; re-download or re-convert it",
    )
}

impl GgufModel {
    pub fn open(path: &Path, format: WeightFormat, device: &Device) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
        let bad = |e: candle_core::Error| {
            EngineError::model(
                path,
                format!("cannot read GGUF: {}", crate::error::candle_message(&e)),
                "the file is missing, truncated or not GGUF; delete it and fetch it again",
            )
        };
        let content = Content::read(&mut file).map_err(bad)?;
        let arch = content
            .metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        if arch != "llama" && arch != "qwen2" {
            return Err(EngineError::UnsupportedArchitecture(format!(
                "{arch} (GGUF {})",
                path.display()
            )));
        }
        let get_u = |key: &str| -> Result<usize> {
            let k = format!("{arch}.{key}");
            let v = content
                .metadata
                .get(&k)
                .ok_or_else(|| meta_err(path, &k, "missing"))?;
            v.to_u32()
                .map(|x| x as usize)
                .or_else(|_| v.to_u64().map(|x| x as usize))
                .map_err(|e| meta_err(path, &k, e))
        };
        let n_head = get_u("attention.head_count")?;
        let n_kv_head = get_u("attention.head_count_kv").unwrap_or(n_head);
        let mut tensors = HashMap::new();
        for (name, info) in &content.tensor_infos {
            let Some(hf) = gguf_to_hf_name(name) else {
                tracing::debug!("skipping GGUF tensor {name}");
                continue;
            };
            let mut t = info
                .read(&mut file, content.tensor_data_offset, device)
                .map_err(bad)?;
            // Only llama-arch GGUFs are permuted (qwen2 uses NEOX rope in llama.cpp).
            if arch == "llama" && (name.contains("attn_q.") || name.contains("attn_k.")) {
                let heads = if name.contains("attn_q.") {
                    n_head
                } else {
                    n_kv_head
                };
                let rows = t.shape().dims()[0];
                let data = t.data().map_err(bad)?;
                let fixed = unpermute_rows(&data, rows, heads);
                let storage =
                    QStorage::from_data(Cow::Owned(fixed), device, t.dtype()).map_err(bad)?;
                t = QTensor::new(storage, t.shape().clone()).map_err(bad)?;
            }
            tensors.insert(hf, t);
        }
        Ok(Self {
            path: path.to_path_buf(),
            metadata: content.metadata,
            tensors,
            format,
            device: device.clone(),
        })
    }

    pub fn architecture(&self) -> &str {
        self.metadata
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str())
            .unwrap_or("")
    }

    fn meta_usize(&self, key: &str) -> Result<usize> {
        let v = self
            .metadata
            .get(key)
            .ok_or_else(|| meta_err(&self.path, key, "missing"))?;
        v.to_u32()
            .map(|x| x as usize)
            .or_else(|_| v.to_u64().map(|x| x as usize))
            .map_err(|e| meta_err(&self.path, key, e))
    }

    fn meta_f64(&self, key: &str) -> Option<f64> {
        let v = self.metadata.get(key)?;
        v.to_f32().map(|x| x as f64).or_else(|_| v.to_f64()).ok()
    }

    pub fn meta_u32(&self, key: &str) -> Option<u32> {
        self.metadata.get(key).and_then(|v| v.to_u32().ok())
    }

    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata
            .get(key)
            .and_then(|v| v.to_string().ok())
            .map(|s| s.as_str())
    }

    pub fn config(&self) -> Result<LlamaConfig> {
        let arch = self.architecture().to_string();
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = self.meta_usize(&k("embedding_length"))?;
        let n_head = self.meta_usize(&k("attention.head_count"))?;
        let embed = self
            .tensors
            .get("model.embed_tokens.weight")
            .ok_or_else(|| meta_err(&self.path, "token_embd.weight", "tensor missing"))?;
        let vocab = embed.shape().dims()[0];
        let head_dim = self
            .meta_usize(&k("attention.key_length"))
            .or_else(|_| self.meta_usize(&k("rope.dimension_count")))
            .unwrap_or(hidden / n_head);
        let cfg = LlamaConfig {
            model_type: if arch == "qwen2" {
                "qwen2".into()
            } else {
                "llama".into()
            },
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: self.meta_usize(&k("feed_forward_length"))?,
            num_hidden_layers: self.meta_usize(&k("block_count"))?,
            num_attention_heads: n_head,
            num_key_value_heads: self
                .meta_usize(&k("attention.head_count_kv"))
                .unwrap_or(n_head),
            head_dim,
            rms_norm_eps: self
                .meta_f64(&k("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: self.meta_f64(&k("rope.freq_base")).unwrap_or(10000.0),
            rope_scaling: None,
            max_position_embeddings: self.meta_usize(&k("context_length")).unwrap_or(2048),
            tie_word_embeddings: !self.tensors.contains_key("lm_head.weight"),
            attention_bias: self
                .tensors
                .contains_key("model.layers.0.self_attn.q_proj.bias"),
            bos_token_id: self.meta_u32("tokenizer.ggml.bos_token_id"),
            eos_token_ids: self
                .meta_u32("tokenizer.ggml.eos_token_id")
                .into_iter()
                .collect(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn qtensor(&self, name: &str) -> Result<&QTensor> {
        self.tensors.get(name).ok_or_else(|| {
            EngineError::model(
                &self.path,
                format!("tensor for `{name}` is missing"),
                "the GGUF is incomplete or not a Llama-family model",
            )
        })
    }
}

fn copy_qtensor(q: &QTensor, device: &Device) -> candle_core::Result<QTensor> {
    let storage = QStorage::from_data(Cow::Owned(q.data()?.into_owned()), device, q.dtype())?;
    QTensor::new(storage, q.shape().clone())
}

impl WeightSource for GgufModel {
    fn dense(&self, name: &str) -> Result<Tensor> {
        Ok(self.qtensor(name)?.dequantize(&self.device)?)
    }

    fn linear(&self, name: &str) -> Result<Linear> {
        let q = self.qtensor(name)?;
        let is_float = matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
        let dense = || q.dequantize(&self.device);
        // The file's own blocks: Q4_1 and Q8_0 through srlm's SIMD kernels, the rest through
        // candle's.
        let native =
            || -> Result<Quantized> { Ok(Quantized::new(q, || copy_qtensor(q, &self.device))?) };
        let q8_0 = || -> Result<Quantized> {
            if q.dtype() == GgmlDType::Q8_0 {
                return native();
            }
            let w = dense()?;
            let t = QTensor::quantize(&w, GgmlDType::Q8_0)?;
            // Candle's matmul would take a second quantization; srlm's kernel reads every
            // Q8_0 matrix.
            Ok(Quantized::new(&t, || {
                QTensor::quantize(&w, GgmlDType::Q8_0)
            })?)
        };
        Ok(match self.format {
            WeightFormat::Dense => Linear::Dense {
                w: dense()?,
                b: None,
            },
            _ if is_float => Linear::Dense {
                w: dense()?,
                b: None,
            },
            WeightFormat::Native => Linear::Quant {
                w: native()?,
                b: None,
            },
            WeightFormat::Q8_0 => Linear::Quant {
                w: q8_0()?,
                b: None,
            },
            WeightFormat::Mixed | WeightFormat::MixedBf16 => {
                let small = if q.dtype() == GgmlDType::Q4_1 {
                    native()?
                } else {
                    q8_0()?
                };
                Linear::Mixed {
                    q: small,
                    dense: crate::model::linear::dense_weight(dense()?, self.format)?,
                    b: None,
                }
            }
        })
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inverse of llama.cpp's `permute` (convert_hf_to_gguf.py), written the way it is there.
    fn llama_cpp_permute(rows: &[u32], n_head: usize) -> Vec<u32> {
        // w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2).reshape(...)
        let d = rows.len() / n_head;
        let mut out = Vec::new();
        for h in 0..n_head {
            for i in 0..d / 2 {
                for s in 0..2 {
                    out.push(rows[h * d + s * (d / 2) + i]);
                }
            }
        }
        out
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let hf: Vec<u32> = (0..24).collect();
        let gguf = llama_cpp_permute(&hf, 3);
        assert_ne!(gguf, hf);
        let bytes: Vec<u8> = gguf.iter().flat_map(|x| x.to_le_bytes()).collect();
        let back = unpermute_rows(&bytes, 24, 3);
        let back: Vec<u32> = back
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, hf);
    }

    #[test]
    fn tensor_names_map_to_hf() {
        assert_eq!(
            gguf_to_hf_name("blk.12.attn_q.bias").unwrap(),
            "model.layers.12.self_attn.q_proj.bias"
        );
        assert_eq!(
            gguf_to_hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert!(gguf_to_hf_name("rope_freqs.weight").is_none());
    }
}
