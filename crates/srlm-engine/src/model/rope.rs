//! Rotate-half rope: the inverse frequencies (with Llama 3's scaling) and the cos/sin tables.

use super::llama::Ops;
use crate::config::LlamaConfig;
use candle_core::{DType, Device, Result, Tensor};

/// cos/sin tables for rotate-half rope, `(max_pos, head_dim / 2)`.
#[derive(Debug, Clone)]
pub(crate) struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

/// The inverse frequencies of rope, with Llama 3's scaling when configured.
pub fn rope_inv_freq(cfg: &LlamaConfig) -> Vec<f32> {
    let d = cfg.head_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64))
        .collect();
    let Some(s) = &cfg.rope_scaling else {
        return base.into_iter().map(|f| f as f32).collect();
    };
    let old = s.original_max_position_embeddings as f64;
    let low_wavelen = old / s.low_freq_factor;
    let high_wavelen = old / s.high_freq_factor;
    base.into_iter()
        .map(|freq| {
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                freq
            } else if wavelen > low_wavelen {
                freq / s.factor
            } else {
                let smooth =
                    (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * freq / s.factor + smooth * freq
            };
            f as f32
        })
        .collect()
}

impl RopeTables {
    pub(crate) fn new(cfg: &LlamaConfig, max_pos: usize, device: &Device) -> Result<Self> {
        let inv_freq = rope_inv_freq(cfg);
        let half = inv_freq.len();
        let inv_freq = Tensor::from_vec(inv_freq, (1, half), device)?;
        let t = Tensor::arange(0u32, max_pos as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((max_pos, 1))?;
        let freqs = t.broadcast_mul(&inv_freq)?; // (max_pos, d/2)
        Ok(Self {
            cos: freqs.cos()?,
            sin: freqs.sin()?,
        })
    }

    /// The cos and sin rows of `positions` (n,) -> (n, d/2) each.
    pub(crate) fn rows(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.index_select(positions, 0)?,
            self.sin.index_select(positions, 0)?,
        ))
    }

    /// `x`: (n, heads, d) at absolute `positions` (n,) -> (n, heads, d)
    pub(crate) fn apply(&self, x: &Tensor, positions: &Tensor, ops: Ops) -> Result<Tensor> {
        let (cos, sin) = self.rows(positions)?; // (n, d/2) each
        match ops {
            Ops::Fused => {
                let (n, h, d) = x.dims3()?;
                let x = x.contiguous()?.reshape((1, n, h, d))?; // (1, n, h, d): "thd" layout
                candle_nn::rotary_emb::rope_thd(&x, &cos, &sin)?.reshape((n, h, d))
            }
            Ops::Differentiable => crate::autograd::rope(x, &cos, &sin),
        }
    }
}
