//! The Llama-family decoder: Llama 2/3, SmolLM/SmolLM2, Mistral and Qwen2 (q/k/v biases).
//!
//! Follows transformers' `modeling_llama.py`: pre-norm blocks, grouped-query attention with
//! rotate-half rope (Q/K weights in the Hugging Face layout), SwiGLU MLP, RMSNorm.
//!
//! One architecture, two weight paths: dense f32 tensors (differentiable: training uses
//! `Ops::Differentiable`, whose every op has a backward) and quantized GGUF blocks through
//! `QMatMul` for fast sampling (`Ops::Fused`, candle's fused rms_norm/rope kernels; attention's
//! causal softmax is srlm's own on both paths).
//!
//! `forward` returns logits for every position, `(b, t, vocab)`. `forward_segments` is the
//! generation path: any number of sequences, each with its own KV cache and any number of new
//! tokens, share the projections and MLP matmuls; only the last position's logits are computed.

use crate::config::LlamaConfig;
use candle_core::{DType, Device, Result, Tensor};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

pub use super::kv_cache::KvCache;
use super::linear::load_linear;
pub use super::linear::{Dropout, Linear, Quantized, WeightSource, MIXED_DENSE_ROWS};
pub use super::rope::rope_inv_freq;
use super::rope::RopeTables;

/// Which kernels the non-matmul ops use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ops {
    /// Ops that all have a backward pass: candle's primitives and srlm's own fused kernels with
    /// hand-written gradients (`autograd.rs`) (training, reference checks).
    Differentiable,
    /// candle's fused CPU kernels, which have no backward (sampling).
    Fused,
}

/// RMSNorm over the last dim: `x / sqrt(mean(x²) + eps) * w`.
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, ops: Ops) -> Result<Tensor> {
    match ops {
        Ops::Fused => candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32),
        Ops::Differentiable => crate::autograd::rms_norm(x, w, eps),
    }
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

/// Causal attention with grouped-query heads.
/// `q`: (b, h, t, d), `k`, `v`: (b, kvh, T, d) where the t queries sit at positions T-t..T.
/// Returns (b, h, t, d).
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    n_kv_heads: usize,
    dropout: Option<&Dropout>,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let past = k.dim(2)? - t; // cached positions before the t queries
    let rep = h / n_kv_heads;
    // Fold each group of `rep` query heads onto its kv head instead of copying K and V `rep` times.
    let q = q.reshape((b, n_kv_heads, rep * t, d))?; // (b, kvh, rep*t, d)
    let scale = 1.0 / (d as f64).sqrt();
    let scores = q.matmul(&k.transpose(2, 3)?)?; // (b, kvh, rep*t, T)
                                                 // Scale, causal mask and softmax in one pass over the scores, with a backward for training;
                                                 // sampling's prefill takes it too (no mask tensor, one pass instead of four).
    let p = crate::autograd::causal_softmax(&scores, scale, t, past)?; // (b, kvh, rep*t, T)
    let p = match dropout {
        Some(d) => d.forward(&p)?,
        None => p,
    };
    p.matmul(&v.contiguous()?)?.reshape((b, h, t, d)) // (b, kvh, rep*t, d) -> (b, h, t, d)
}

impl Attention {
    fn load(src: &dyn WeightSource, prefix: &str, cfg: &LlamaConfig) -> crate::Result<Self> {
        Ok(Self {
            q_proj: load_linear(src, &format!("{prefix}.q_proj"), cfg.attention_bias)?,
            k_proj: load_linear(src, &format!("{prefix}.k_proj"), cfg.attention_bias)?,
            v_proj: load_linear(src, &format!("{prefix}.v_proj"), cfg.attention_bias)?,
            o_proj: load_linear(src, &format!("{prefix}.o_proj"), false)?,
            n_heads: cfg.num_attention_heads,
            n_kv_heads: cfg.num_key_value_heads,
            head_dim: cfg.head_dim,
        })
    }

    /// Projections and rope for n flattened tokens (`q_rows`: see `Linear::forward_split`).
    /// `x`: (n, hidden) -> q (n, h, d), k (n, kvh, d), v (n, kvh, d)
    fn qkv(
        &self,
        x: &Tensor,
        rope: &RopeTables,
        positions: &Tensor,
        ops: Ops,
        q_rows: Option<usize>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let n = x.dim(0)?;
        let [q, k, v]: [Tensor; 3] =
            Linear::forward_split_many(&[&self.q_proj, &self.k_proj, &self.v_proj], x, q_rows)?
                .try_into()
                .expect("three projections");
        let q = q.reshape((n, self.n_heads, self.head_dim))?;
        let k = k.reshape((n, self.n_kv_heads, self.head_dim))?;
        let v = v.reshape((n, self.n_kv_heads, self.head_dim))?;
        let q = rope.apply(&q, positions, ops)?;
        let k = rope.apply(&k, positions, ops)?;
        Ok((q, k, v))
    }

    /// Full causal attention over a right-padded batch without cache. `x`: (b*t, hidden).
    fn forward_batch(
        &self,
        x: &Tensor,
        b: usize,
        t: usize,
        rope: &RopeTables,
        positions: &Tensor,
        ops: Ops,
        dropout: Option<&Dropout>,
    ) -> Result<Tensor> {
        if ops == Ops::Differentiable && !dropout.is_some_and(|d| d.is_active()) {
            // Training: rope, head layout and attention as one node (see
            // `causal_self_attention`). Attention dropout takes the composed path below.
            let (cos, sin) = rope.rows(positions)?;
            let dims = crate::autograd::AttentionDims {
                b,
                t,
                heads: self.n_heads,
                kv_heads: self.n_kv_heads,
                head_dim: self.head_dim,
            };
            let y = crate::autograd::causal_self_attention(
                &self.q_proj.forward(x)?,
                &self.k_proj.forward(x)?,
                &self.v_proj.forward(x)?,
                &cos,
                &sin,
                dims,
            )?; // (b*t, h*d)
            return self.o_proj.forward(&y);
        }
        let (q, k, v) = self.qkv(x, rope, positions, ops, None)?;
        let q = q
            .reshape((b, t, self.n_heads, self.head_dim))?
            .transpose(1, 2)?; // (b, h, t, d)
        let k = k
            .reshape((b, t, self.n_kv_heads, self.head_dim))?
            .transpose(1, 2)?; // (b, kvh, t, d)
        let v = v
            .reshape((b, t, self.n_kv_heads, self.head_dim))?
            .transpose(1, 2)?;
        let y = attend(
            &q.contiguous()?,
            &k.contiguous()?,
            &v,
            self.n_kv_heads,
            dropout,
        )?; // (b, h, t, d)
        let y = y
            .transpose(1, 2)?
            .reshape((b * t, self.n_heads * self.head_dim))?; // (b*t, h*d)
        self.o_proj.forward(&y)
    }

    /// Attention for flattened segments, each with its own cache. `x`: (n, hidden), where
    /// segment i owns rows `spans[i]`.
    fn forward_segments(
        &self,
        x: &Tensor,
        spans: &[(usize, usize)],
        caches: &mut [&mut KvCache],
        layer: usize,
        rope: &RopeTables,
        positions: &Tensor,
        ops: Ops,
        q_rows: usize,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x, rope, positions, ops, Some(q_rows))?;
        // Segments of one new token (decoding) go through one kernel over all their caches;
        // the rest (prompts) through `attend`, one segment at a time. Which path a decoding
        // sequence takes does not depend on what it is batched with.
        let fast = ops == Ops::Fused && q.dtype() == DType::F32 && q.device().is_cpu();
        let mut outs: Vec<Option<Tensor>> = vec![None; spans.len()];
        let mut decoding: Vec<usize> = Vec::new();
        for (si, (&(start, len), cache)) in spans.iter().zip(caches.iter_mut()).enumerate() {
            let k = k.narrow(0, start, len)?.transpose(0, 1)?; // (kvh, t, d)
            let v = v.narrow(0, start, len)?.transpose(0, 1)?;
            if fast && len == 1 {
                cache.append(layer, &k, &v)?;
                decoding.push(si);
                continue;
            }
            let q = q.narrow(0, start, len)?.transpose(0, 1)?.contiguous()?; // (h, t, d)
            let (k, v) = cache.append(layer, &k, &v)?; // (kvh, T, d)
            let y = attend(
                &q.unsqueeze(0)?,
                &k.unsqueeze(0)?,
                &v.unsqueeze(0)?,
                self.n_kv_heads,
                None,
            )?; // (1, h, t, d)
            outs[si] = Some(
                y.squeeze(0)?
                    .transpose(0, 1)?
                    .reshape((len, self.n_heads * self.head_dim))?,
            ); // (t, h*d)
        }
        if !decoding.is_empty() {
            let y = self.decode_attention(&q, spans, &decoding, caches, layer)?; // (m, h*d)
            for (j, &si) in decoding.iter().enumerate() {
                outs[si] = Some(y.narrow(0, j, 1)?);
            }
        }
        // Back into the rows' order: segments by where their rows start.
        let mut outs: Vec<(usize, Tensor)> = outs
            .into_iter()
            .zip(spans)
            .map(|(o, &(start, _))| (start, o.expect("every segment attended")))
            .collect();
        outs.sort_by_key(|(start, _)| *start);
        let mut outs: Vec<Tensor> = outs.into_iter().map(|(_, o)| o).collect();
        let y = if outs.len() == 1 {
            outs.pop().expect("one")
        } else {
            Tensor::cat(&outs, 0)?
        };
        self.o_proj.forward_split(&y, Some(q_rows))
    }
}

/// The f32 data of a CPU tensor from its storage guard, from its layout's offset on.
fn f32_slice<'a>(g: &'a (candle_core::StorageRef<'_>, &candle_core::Layout)) -> Result<&'a [f32]> {
    match &*g.0 {
        candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => Ok(&v[g.1.start_offset()..]),
        _ => candle_core::bail!("decode attention takes f32 caches on the CPU"),
    }
}

impl Attention {
    /// Attention of the one new token of each segment in `decoding`, whose keys and values
    /// are already appended to its cache. `q`: (n, h, d). Returns (decoding.len(), h*d).
    fn decode_attention(
        &self,
        q: &Tensor,
        spans: &[(usize, usize)],
        decoding: &[usize],
        caches: &[&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let m = decoding.len();
        let rows: Vec<u32> = decoding.iter().map(|&si| spans[si].0 as u32).collect();
        let rows = Tensor::from_vec(rows, m, q.device())?;
        let q = q.index_select(&rows, 0)?.flatten_all()?.to_vec1::<f32>()?; // (m*h*d,)
                                                                            // The caches' whole buffers, each holding len + 1 positions now.
        let bufs: Vec<(Tensor, Tensor, usize)> = decoding
            .iter()
            .map(|&si| {
                let c = &caches[si];
                let (k, v) = c.layers[layer].as_ref().expect("appended above");
                (k.clone(), v.clone(), c.len() + 1)
            })
            .collect();
        let guards: Vec<_> = bufs
            .iter()
            .map(|(k, v, _)| (k.storage_and_layout(), v.storage_and_layout()))
            .collect();
        let mut views = Vec::with_capacity(m);
        for ((kg, vg), (k, _, len)) in guards.iter().zip(&bufs) {
            views.push(crate::decode_attention::CacheView {
                k: f32_slice(kg)?,
                v: f32_slice(vg)?,
                cap: k.dim(1)?,
                len: *len,
            });
        }
        let y = crate::decode_attention::decode_attention(
            &q,
            &views,
            self.n_heads,
            self.n_kv_heads,
            self.head_dim,
        );
        Tensor::from_vec(y, (m, self.n_heads * self.head_dim), &Device::Cpu)
    }
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    /// `x`: (n, hidden) -> (n, hidden) (`q_rows`: see `Linear::forward_split`)
    fn forward(&self, x: &Tensor, ops: Ops, q_rows: Option<usize>) -> Result<Tensor> {
        let [gate, up]: [Tensor; 2] =
            Linear::forward_split_many(&[&self.gate_proj, &self.up_proj], x, q_rows)?
                .try_into()
                .expect("two projections");
        let h = match ops {
            Ops::Fused => (gate.silu()? * up)?,
            Ops::Differentiable => crate::autograd::swiglu(&gate, &up)?,
        };
        self.down_proj.forward_split(&h, q_rows)
    }
}

pub(crate) struct Block {
    input_layernorm: Tensor,
    self_attn: Attention,
    post_attention_layernorm: Tensor,
    mlp: Mlp,
}

impl Block {
    /// The second half of the block, on the attention's residual stream `x`:
    /// `x + mlp(rms_norm(x))`; `q_rows` as in [`Mlp::forward`].
    fn mlp_residual(&self, x: Tensor, eps: f64, ops: Ops, q_rows: Option<usize>) -> Result<Tensor> {
        let h = rms_norm(&x, &self.post_attention_layernorm, eps, ops)?;
        x + self.mlp.forward(&h, ops, q_rows)?
    }
}

/// The decoder with its LM head.
pub struct Llama {
    cfg: LlamaConfig,
    pub(crate) embed_tokens: Tensor, // (vocab, hidden)
    pub(crate) layers: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    rope: RopeTables,
    ops: Ops,
    device: Device,
    max_positions: usize,
    /// Dropout on attention probabilities (transformers' `attention_dropout`), training only.
    attention_dropout: Option<Arc<Dropout>>,
    /// Activation recomputation on (`recompute.rs`), and the kept inputs of the forwards
    /// whose backward has not run yet.
    pub(crate) recompute: AtomicBool,
    pub(crate) tapes: Mutex<Vec<super::recompute::Tape>>,
}

impl Llama {
    /// Builds the model from `src`. `max_positions` bounds the rope table (the usable context).
    pub fn load(
        src: &dyn WeightSource,
        cfg: &LlamaConfig,
        ops: Ops,
        max_positions: usize,
        device: &Device,
    ) -> crate::Result<Self> {
        cfg.validate()?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            layers.push(Block {
                input_layernorm: src.dense(&format!("{p}.input_layernorm.weight"))?,
                self_attn: Attention::load(src, &format!("{p}.self_attn"), cfg)?,
                post_attention_layernorm: src
                    .dense(&format!("{p}.post_attention_layernorm.weight"))?,
                mlp: Mlp {
                    gate_proj: load_linear(src, &format!("{p}.mlp.gate_proj"), false)?,
                    up_proj: load_linear(src, &format!("{p}.mlp.up_proj"), false)?,
                    down_proj: load_linear(src, &format!("{p}.mlp.down_proj"), false)?,
                },
            });
        }
        let lm_head = if cfg.tie_word_embeddings || !src.contains("lm_head.weight") {
            src.linear("model.embed_tokens.weight")?
        } else {
            src.linear("lm_head.weight")?
        };
        let max_positions = max_positions.min(cfg.max_position_embeddings).max(1);
        Ok(Self {
            cfg: cfg.clone(),
            embed_tokens: src.dense("model.embed_tokens.weight")?,
            layers,
            norm: src.dense("model.norm.weight")?,
            lm_head,
            rope: RopeTables::new(cfg, max_positions, device)?,
            ops,
            device: device.clone(),
            max_positions,
            attention_dropout: None,
            recompute: AtomicBool::new(false),
            tapes: Mutex::new(Vec::new()),
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The longest sequence (prompt plus completion) this model instance accepts.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    pub fn ops(&self) -> Ops {
        self.ops
    }

    pub fn set_attention_dropout(&mut self, dropout: Option<Arc<Dropout>>) {
        self.attention_dropout = dropout;
    }

    pub(crate) fn attention_dropout(&self) -> Option<&Dropout> {
        self.attention_dropout.as_deref()
    }

    /// Logits for every position of a right-padded batch. `ids`: (b, t) -> (b, t, vocab)
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let x = self.trunk(ids)?; // (b*t, hidden)
        self.head(&x)?.reshape((b, t, self.cfg.vocab_size))
    }

    /// Logits at chosen positions only, so the LM head (the largest activation in training)
    /// runs where a loss needs it. `ids`: (b, t), `rows`: (n,) flat indices into b*t ->
    /// (n, vocab)
    pub fn logits_at(&self, ids: &Tensor, rows: &Tensor) -> Result<Tensor> {
        let x = self.trunk(ids)?; // (b*t, hidden)
        self.head(&x.index_select(rows, 0)?)
    }

    /// Final-normed hidden states at chosen positions, for a loss that applies the LM head
    /// itself. `ids`: (b, t), `rows`: (n,) -> (n, hidden)
    pub fn hidden_rows(&self, ids: &Tensor, rows: &Tensor) -> Result<Tensor> {
        let x = self.trunk(ids)?.index_select(rows, 0)?;
        rms_norm(&x, &self.norm, self.cfg.rms_norm_eps, self.ops)
    }

    /// The LM head's weight (vocab, hidden) when it is a plain dense matrix.
    pub fn lm_head_dense(&self) -> Option<&Tensor> {
        match &self.lm_head {
            Linear::Dense { w, b: None } => Some(w),
            _ => None,
        }
    }

    /// The decoder blocks over a right-padded batch. `ids`: (b, t) -> (b*t, hidden)
    fn trunk(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if t > self.max_positions {
            candle_core::bail!(
                "sequence of {t} tokens exceeds the context of {}",
                self.max_positions
            );
        }
        let positions = Tensor::arange(0u32, t as u32, &self.device)?.repeat(b)?; // (b*t,)
        let flat = ids.flatten_all()?;
        let mut x = self.embed_tokens.index_select(&flat, 0)?; // (b*t, hidden)
        if self.recomputing() {
            return self.trunk_recorded(flat, b, t, positions, x.detach());
        }
        for l in 0..self.layers.len() {
            x = self.block_forward(l, &x, b, t, &positions)?;
        }
        Ok(x)
    }

    /// Block `l` on the residual stream of a right-padded batch: `x + attn(rms_norm(x))`, then
    /// `+ mlp(rms_norm(.))`. `x`: (b*t, hidden) -> (b*t, hidden)
    pub(crate) fn block_forward(
        &self,
        l: usize,
        x: &Tensor,
        b: usize,
        t: usize,
        positions: &Tensor,
    ) -> Result<Tensor> {
        let block = &self.layers[l];
        let eps = self.cfg.rms_norm_eps;
        let h = rms_norm(x, &block.input_layernorm, eps, self.ops)?;
        let dropout = self.attention_dropout.as_deref();
        let a = block
            .self_attn
            .forward_batch(&h, b, t, &self.rope, positions, self.ops, dropout)?;
        block.mlp_residual((x + a)?, eps, self.ops, None)
    }

    /// Final norm and LM head. `x`: (n, hidden) -> (n, vocab)
    fn head(&self, x: &Tensor) -> Result<Tensor> {
        let x = rms_norm(x, &self.norm, self.cfg.rms_norm_eps, self.ops)?;
        self.lm_head.forward(&x)
    }

    /// Feeds `tokens[i]` to the sequence whose cache is `caches[i]`, all in one pass, and returns
    /// the logits after each sequence's last new token: (segments, vocab).
    pub fn forward_segments(
        &self,
        tokens: &[&[u32]],
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        assert_eq!(tokens.len(), caches.len(), "one cache per segment");
        for (toks, cache) in tokens.iter().zip(caches.iter()) {
            if toks.is_empty() {
                candle_core::bail!("a segment has no tokens");
            }
            if cache.len() + toks.len() > self.max_positions {
                candle_core::bail!(
                    "sequence of {} tokens exceeds the context of {}",
                    cache.len() + toks.len(),
                    self.max_positions
                );
            }
        }
        // Each segment's path through `Mixed` weights is chosen by its own length, not by the
        // batch's: short ones (decoding, short prompt suffixes) through the quantized blocks,
        // long ones through the dense copy. Short segments' rows come first, so each path is
        // one contiguous block of rows; `spans[i]` keeps segment i's place.
        let short = |i: usize| tokens[i].len() < MIXED_DENSE_ROWS;
        let order: Vec<usize> = (0..tokens.len())
            .filter(|&i| short(i))
            .chain((0..tokens.len()).filter(|&i| !short(i)))
            .collect();
        let q_segments = order.iter().filter(|&&i| short(i)).count();
        let mut flat = Vec::new();
        let mut positions = Vec::new();
        let mut spans = vec![(0, 0); tokens.len()];
        for &i in &order {
            let (toks, past) = (tokens[i], caches[i].len());
            spans[i] = (flat.len(), toks.len());
            positions.extend((past..past + toks.len()).map(|p| p as u32));
            flat.extend_from_slice(toks);
        }
        let q_rows: usize = order[..q_segments].iter().map(|&i| tokens[i].len()).sum();
        let n = flat.len();
        let ids = Tensor::from_vec(flat, n, &self.device)?;
        let positions = Tensor::from_vec(positions, n, &self.device)?;
        let mut x = self.embed_tokens.index_select(&ids, 0)?; // (n, hidden)
        for (l, block) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &block.input_layernorm, self.cfg.rms_norm_eps, self.ops)?;
            let a = block.self_attn.forward_segments(
                &h, &spans, caches, l, &self.rope, &positions, self.ops, q_rows,
            )?;
            x = block.mlp_residual((x + a)?, self.cfg.rms_norm_eps, self.ops, Some(q_rows))?;
        }
        for (cache, toks) in caches.iter_mut().zip(tokens) {
            cache.advance(toks.len());
        }
        // Only the last position of each segment needs the (large) LM head: in path order,
        // then back to segment order.
        let last: Vec<u32> = order
            .iter()
            .map(|&i| (spans[i].0 + spans[i].1 - 1) as u32)
            .collect();
        let last = Tensor::from_vec(last, order.len(), &self.device)?;
        let h = x.index_select(&last, 0)?;
        let h = rms_norm(&h, &self.norm, self.cfg.rms_norm_eps, self.ops)?;
        let logits = self.lm_head.forward_split(&h, Some(q_segments))?; // (segments, vocab), path order
        let mut back = vec![0u32; order.len()];
        for (row, &i) in order.iter().enumerate() {
            back[i] = row as u32;
        }
        logits.index_select(&Tensor::from_vec(back, order.len(), &self.device)?, 0)
    }
}
