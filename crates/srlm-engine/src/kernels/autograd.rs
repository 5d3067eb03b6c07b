//! Fused CPU kernels that carry their own backward pass, for the training path: RMSNorm, the
//! causal softmax of scaled attention scores, causal self-attention, linear layers, rope and
//! SwiGLU. The causal softmax serves sampling's prefill as well (`llama::attend`).
//!
//! candle's fused `rms_norm` and `softmax_last_dim` have no backward (gradients silently vanish);
//! composing them from primitive ops is correct but slow, because candle's backprop allocates a
//! zeroed buffer and adds into it for every node. Each op here is one node with an exact,
//! hand-written gradient, checked against the composed form in the tests below.
//!
//! RMSNorm: y = x·r·w with r = 1/√(mean(x²) + ε), per row of d elements.
//!   dx = r·(g·w) − x·r³·mean(g·w·x)       dw = Σ_rows g·x·r
//! Causal softmax: y = exp(s·x − max) / Σ exp(s·x − max) over the keys a query may see.
//!   dx = s·y·(g − Σ g·y)
//! Causal softmax: y = softmax(scale·x) over the keys a query may see (the rest 0).
//!   dx = scale·y·(g − Σ g·y)
//! Rotate-half rope on (n, heads, d) with per-row cos/sin (n, d/2): a rotation, so
//!   dx is g rotated by the opposite angle.
//! SwiGLU: y = silu(a)·b with silu(a) = a·σ(a).
//!   da = g·b·σ(a)·(1 + a·(1 − σ(a)))      db = g·silu(a)

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Runs `f` on the f32 elements of `t` (made contiguous first).
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("the training kernels run on the CPU");
    };
    let (a, b) = layout.contiguous_offsets().expect("contiguous");
    Ok(f(&cpu.as_slice::<f32>()?[a..b]))
}

/// The elements of a contiguous CPU storage of type `T`, as a custom op's `cpu_fwd` receives it.
pub fn contiguous_slice<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
) -> Result<&'a [T]> {
    let v = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("the training kernels take contiguous tensors"),
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    contiguous_slice::<f32>(s, l)
}

/// RMSNorm over the last dimension with a per-channel weight.
struct RmsNorm {
    eps: f32,
}

fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ms = row.iter().map(|x| x * x).sum::<f32>() / row.len() as f32;
    1.0 / (ms + eps).sqrt()
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1)?;
        let w = contiguous_f32(s2, l2)?;
        let d = w.len();
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let r = inv_rms(x, self.eps);
            for i in 0..d {
                y[i] = x[i] * r * w[i];
            }
        });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = w.elem_count();
        let (dx, dw) = with_f32(x, |x| {
            with_f32(w, |w| {
                with_f32(g, |g| {
                    let rows = x.len() / d;
                    let mut dx = vec![0f32; x.len()];
                    // Per-thread partial sums of dw, reduced after.
                    let chunk = rows.div_ceil(rayon::current_num_threads().max(1)).max(1);
                    let dw = dx
                        .par_chunks_mut(d * chunk)
                        .zip(x.par_chunks(d * chunk))
                        .zip(g.par_chunks(d * chunk))
                        .map(|((dx, x), g)| {
                            let mut dw = vec![0f32; d];
                            for ((dx, x), g) in dx.chunks_mut(d).zip(x.chunks(d)).zip(g.chunks(d)) {
                                let r = inv_rms(x, self.eps);
                                let dot =
                                    (0..d).map(|i| g[i] * w[i] * x[i]).sum::<f32>() / d as f32;
                                let r3 = r * r * r;
                                for i in 0..d {
                                    dx[i] = r * g[i] * w[i] - x[i] * r3 * dot;
                                    dw[i] += g[i] * x[i] * r;
                                }
                            }
                            dw
                        })
                        .reduce(
                            || vec![0f32; d],
                            |mut a, b| {
                                a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                                a
                            },
                        );
                    (dx, dw)
                })
            })
        })???;
        // A frozen weight (LoRA's base) gets no gradient buffer.
        let dw = if w.is_variable() || w.track_op() {
            Some(Tensor::from_vec(dw, w.shape(), w.device())?)
        } else {
            None
        };
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), dw))
    }
}

/// `x / √(mean(x²) + ε) · w` over the last dimension, with a backward pass.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?.apply_op2(w, RmsNorm { eps: eps as f32 })
}

/// Softmax of scaled attention scores under the causal mask. The last two dims are
/// (rep·t queries, T keys): query row r is token r mod t, at position past + (r mod t), and sees
/// keys 0..=past + (r mod t).
struct CausalSoftmax {
    scale: f32,
    t: usize,
    past: usize,
}

impl CausalSoftmax {
    /// Keys visible to flat row `row` of a (…, rows, T) tensor.
    fn visible(&self, row: usize, rows: usize) -> usize {
        self.past + (row % rows) % self.t + 1
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let dims = l.dims();
        let (rows, keys) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(keys)
            .zip(x.par_chunks(keys))
            .enumerate()
            .for_each(|(r, (y, x))| {
                let n = self.visible(r, rows).min(keys);
                let max = x[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max) * self.scale;
                let sum = crate::kernels::exp::exp_into(&mut y[..n], &x[..n], self.scale, max);
                let inv = 1.0 / sum;
                y[..n].iter_mut().for_each(|v| *v *= inv);
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(scaled_softmax_backward(y, g, self.scale)?))
    }
}

/// The gradient of `x` for `y = softmax(scale · x)` over the last dimension, given `y` and the
/// upstream `g`: `scale · y · (g − Σ g·y)` (masked entries have y = 0 and get 0).
fn scaled_softmax_backward(y: &Tensor, g: &Tensor, scale: f32) -> Result<Tensor> {
    let keys = y.dim(candle_core::D::Minus1)?;
    let dx = with_f32(y, |y| {
        with_f32(g, |g| {
            let mut dx = vec![0f32; y.len()];
            dx.par_chunks_mut(keys)
                .zip(y.par_chunks(keys))
                .zip(g.par_chunks(keys))
                .for_each(|((dx, y), g)| {
                    let dot: f32 = (0..keys).map(|i| g[i] * y[i]).sum();
                    for i in 0..keys {
                        dx[i] = scale * y[i] * (g[i] - dot);
                    }
                });
            dx
        })
    })??;
    Tensor::from_vec(dx, y.shape(), y.device())
}

/// `softmax(scale · scores)` under the causal mask, with a backward pass. `scores`:
/// (…, rep·t, T) for t new queries after `past` cached positions (T = past + t).
pub fn causal_softmax(scores: &Tensor, scale: f64, t: usize, past: usize) -> Result<Tensor> {
    scores.contiguous()?.apply_op1(CausalSoftmax {
        scale: scale as f32,
        t,
        past,
    })
}

/// The shape of a right-padded batch under grouped-query attention: `b` sequences of `t` tokens,
/// `heads` query heads sharing `kv_heads` key/value heads of `head_dim`.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDims {
    pub b: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionDims {
    /// Token-major rows (b·t, heads·d) -> grouped (b, kvh, (heads/kvh)·t, d): each kv head's
    /// query heads stacked, head by head, as the rows of one matrix.
    fn grouped(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, d) = (self.b, self.t, self.head_dim);
        x.reshape((b, t, heads, d))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, self.kv_heads, heads / self.kv_heads * t, d))
    }

    /// The inverse of `grouped`.
    fn token_major(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, t, d) = (self.b, self.t, self.head_dim);
        x.reshape((b, heads, t, d))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, heads * d))
    }
}

/// An op's output computed before the op (from detached operands, so that no intermediate
/// joins the graph), held until candle runs the op's `cpu_fwd`, which passes it through.
struct HandedOver(std::sync::Mutex<Option<(Vec<f32>, Shape)>>);

impl HandedOver {
    fn new(y: &Tensor) -> Result<Self> {
        let values = with_f32(y, |y| y.to_vec())?;
        Ok(Self(std::sync::Mutex::new(Some((
            values,
            y.shape().clone(),
        )))))
    }

    /// The output, once: what `cpu_fwd` returns.
    fn take(&self, op: &str) -> Result<(CpuStorage, Shape)> {
        match self.0.lock().expect("handed-over output").take() {
            Some((y, shape)) => Ok((CpuStorage::F32(y), shape)),
            None => candle_core::bail!("{op}: the forward runs once"),
        }
    }
}

/// Causal self-attention from the projections to the output projection's input, as one node:
/// rope on q and k, the head layout, the scores, the causal softmax and `p v`. candle's backprop
/// would otherwise zero-fill and add a buffer for each of the dozen reshapes, transposes and
/// copies of a layer, and keep the (rows, T) scores. The forward keeps only the roped, grouped
/// q, k, v: the backward recomputes p (the same ops, so the same bits), as FlashAttention
/// does, since p is the largest activation of training (b·heads·t² floats a layer: 4.5 GB over
/// SmolLM2's 30 layers at 4 x 1024 tokens) and recomputing it costs one more `q kᵀ` and
/// softmax a layer. With p = causal softmax(scale · q kᵀ) and y = p v (per kv group):
///   dp = dy vᵀ   dv = pᵀ dy   ds = scale · p · (dp − Σ dp·p)   dq = ds k   dk = dsᵀ q
/// and dq, dk are rotated back by rope's inverse.
struct SelfAttention {
    dims: AttentionDims,
    rope: RopeOp,
    softmax: CausalSoftmax,
    q: Tensor, // (b, kvh, rep·t, d), roped
    k: Tensor, // (b, kvh, t, d), roped
    v: Tensor, // (b, kvh, t, d)
    /// The output (b·t, heads·d), handed over by the forward.
    y: HandedOver,
}

impl candle_core::CustomOp3 for SelfAttention {
    fn name(&self) -> &'static str {
        "causal-self-attention"
    }

    /// The output was computed before the op; it passes through.
    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        _s3: &CpuStorage,
        _l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.y.take(self.name())
    }

    fn bwd(
        &self,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let AttentionDims {
            heads, kv_heads, ..
        } = self.dims;
        let scores = self.q.matmul(&self.k.t()?)?; // (b, kvh, rep·t, t)
        let p = scores.apply_op1_no_bwd(&self.softmax)?;
        drop(scores);
        let dy = self.dims.grouped(dy, heads)?; // (b, kvh, rep·t, d)
        let dp = dy.matmul(&self.v.t()?)?; // (b, kvh, rep·t, t)
        let dv = p.t()?.matmul(&dy)?; // (b, kvh, t, d)
        let ds = scaled_softmax_backward(&p, &dp, self.softmax.scale)?;
        drop((p, dp));
        let dq = ds.matmul(&self.k)?; // (b, kvh, rep·t, d)
        let dk = ds.t()?.matmul(&self.q)?; // (b, kvh, t, d)
        let d = self.dims.head_dim;
        let dq = self.dims.token_major(&dq, heads)?;
        let dq = self.rope.rotate_rows(&dq, heads, d, true)?;
        let dk = self.dims.token_major(&dk, kv_heads)?;
        let dk = self.rope.rotate_rows(&dk, kv_heads, d, true)?;
        let dv = self.dims.token_major(&dv, kv_heads)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Causal self-attention over a right-padded batch, from the projections: `q` (b·t, heads·d),
/// `k`, `v` (b·t, kv_heads·d), rope's `cos`, `sin` rows of each token (b·t, d/2) ->
/// (b·t, heads·d), the output projection's input. One node with the backward above.
pub fn causal_self_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    dims: AttentionDims,
) -> Result<Tensor> {
    let AttentionDims {
        heads,
        kv_heads,
        head_dim,
        t,
        ..
    } = dims;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let rope = RopeOp {
        cos: cos.flatten_all()?.to_vec1::<f32>()?,
        sin: sin.flatten_all()?.to_vec1::<f32>()?,
    };
    let qr = rope.rotate_rows(q, heads, head_dim, false)?;
    let kr = rope.rotate_rows(k, kv_heads, head_dim, false)?;
    let (q_g, k_g) = (dims.grouped(&qr, heads)?, dims.grouped(&kr, kv_heads)?);
    let v_g = dims.grouped(&v.detach(), kv_heads)?;
    let scores = q_g.matmul(&k_g.t()?)?; // (b, kvh, rep·t, t)
    let softmax = CausalSoftmax { scale, t, past: 0 };
    let p = scores.apply_op1_no_bwd(&softmax)?;
    drop(scores);
    let y = dims.token_major(&p.matmul(&v_g)?, heads)?; // (b·t, heads·d)
    drop(p);
    let op = SelfAttention {
        dims,
        rope,
        softmax,
        q: q_g,
        k: k_g,
        v: v_g,
        y: HandedOver::new(&y)?,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// Rotate-half rope with the cos/sin rows of each token: `(x1, x2) -> (x1 c - x2 s, x2 c + x1 s)`.
struct RopeOp {
    cos: Vec<f32>, // (n, d/2)
    sin: Vec<f32>,
}

impl RopeOp {
    /// Rotates rows (n, heads·d) by each token's angles, or back by them (`inverse`: the
    /// backward pass).
    fn rotate(&self, x: &[f32], n: usize, heads: usize, d: usize, inverse: bool) -> Vec<f32> {
        let half = d / 2;
        let mut y = vec![0f32; x.len()];
        let sign = if inverse { -1.0 } else { 1.0 };
        y.par_chunks_mut(heads * d)
            .zip(x.par_chunks(heads * d))
            .enumerate()
            .for_each(|(i, (y, x))| {
                let (c, s) = (
                    &self.cos[i * half..(i + 1) * half],
                    &self.sin[i * half..(i + 1) * half],
                );
                for (y, x) in y.chunks_mut(d).zip(x.chunks(d)) {
                    for j in 0..half {
                        let (a, b) = (x[j], x[j + half]);
                        let sj = sign * s[j];
                        y[j] = a * c[j] - b * sj;
                        y[j + half] = b * c[j] + a * sj;
                    }
                }
            });
        debug_assert_eq!(y.len(), n * heads * d);
        y
    }

    /// `rotate` on a tensor of token-major rows (n, heads·d).
    fn rotate_rows(&self, x: &Tensor, heads: usize, d: usize, inverse: bool) -> Result<Tensor> {
        let n = x.dim(0)?;
        let y = with_f32(x, |x| self.rotate(x, n, heads, d, inverse))?;
        Tensor::from_vec(y, (n, heads * d), x.device())
    }
}

impl CustomOp1 for RopeOp {
    fn name(&self) -> &'static str {
        "rope-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let (n, h, d) = l.shape().dims3()?;
        Ok((
            CpuStorage::F32(self.rotate(x, n, h, d, false)),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (n, h, d) = g.dims3()?;
        let dx = with_f32(g, |g| self.rotate(g, n, h, d, true))?;
        Ok(Some(Tensor::from_vec(dx, (n, h, d), g.device())?))
    }
}

/// Rotate-half rope of `x` (n, heads, d) with `cos`, `sin` (n, d/2), with a backward pass.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let op = RopeOp {
        cos: cos.flatten_all()?.to_vec1::<f32>()?,
        sin: sin.flatten_all()?.to_vec1::<f32>()?,
    };
    x.contiguous()?.apply_op1(op)
}

/// `x Wᵀ` as one node, its three matmuls in bf16 while `gemm_bf16::autocast` is on. Its backward gives each operand that trains its gradient in the
/// operand's own layout: `dx = g W`, `dW = gᵀ x`. candle's `x.matmul(&w.t())` instead routes
/// `dW` through a transposed node (a zeroed buffer and a strided add per weight), and computes
/// and keeps a weight-sized gradient even for a frozen `W` (LoRA's base).
struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (n, k) = l1.shape().dims2()?;
        let (m, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("linear: input has {k} features, weight expects {k2}");
        }
        if crate::gemm_bf16::autocast_on() {
            use crate::gemm_bf16::{gemm_bf16, View};
            let x = contiguous_f32(s1, l1)?;
            let w = contiguous_f32(s2, l2)?;
            let mut y = vec![0f32; n * m];
            let xv = View::rows(x, k);
            let wt = View::columns(w, k); // Wᵀ: (in, out)
            gemm_bf16(n, m, k, xv, wt, &mut y);
            return Ok((CpuStorage::F32(y), Shape::from((n, m))));
        }
        let y = s1.matmul(s2, (1, n, m, k), l1, &l2.transpose(0, 1)?)?;
        Ok((y, Shape::from((n, m))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dx = match x.track_op() {
            true => Some(crate::gemm_bf16::mm(g, &w.detach())?), // (n, out)(out, in) -> (n, in)
            false => None,
        };
        let dw = match w.track_op() {
            true => Some(crate::gemm_bf16::mm(&g.t()?, &x.detach())?), // (out, n)(n, in) -> (out, in)
            false => None,
        };
        Ok((dx, dw))
    }
}

/// `x Wᵀ` (`x`: (n, in), `w`: (out, in)) -> (n, out), with the backward above.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

/// LoRA's `x Wᵀ + scale · (x Aᵀ) Bᵀ` (`w`: (out, in) frozen, `a`: (r, in), `b`: (out, r)) as
/// one node. Composed of candle ops, the sum keeps three (n, out) activations a layer beside
/// the output (the base's, the delta and the scaled delta) and backpropagates through each;
/// here the forward runs on detached operands and only the output stays. With u = x Aᵀ and
/// gb = g B (both (n, r), recomputed):
///   dx = g W + scale · gb A   dA = scale · gbᵀ x   dB = scale · gᵀ u
struct LoraLinear {
    w: Tensor,
    scale: f64,
    /// The output (n, out), handed over by the forward.
    y: HandedOver,
}

impl candle_core::CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    /// The output was computed before the op; it passes through.
    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        _s3: &CpuStorage,
        _l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.y.take(self.name())
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use crate::gemm_bf16::mm;
        let (xd, ad, bd) = (x.detach(), a.detach(), b.detach());
        let gb = mm(g, &bd)?; // (n, out)(out, r) -> (n, r)
        let dx = match x.track_op() {
            true => Some((mm(g, &self.w)? + (mm(&gb, &ad)? * self.scale)?)?), // (n, in)
            false => None,
        };
        let da = match a.track_op() {
            true => Some((mm(&gb.t()?, &xd)? * self.scale)?), // (r, n)(n, in) -> (r, in)
            false => None,
        };
        let db = match b.track_op() {
            true => {
                let u = linear(&xd, &ad)?; // (n, r)
                Some((mm(&g.t()?, &u)? * self.scale)?) // (out, n)(n, r) -> (out, r)
            }
            false => None,
        };
        Ok((dx, da, db))
    }
}

/// LoRA's `x Wᵀ + scale · (x Aᵀ) Bᵀ` with `w` frozen, as one node (see [`LoraLinear`]).
/// `x`: (n, in) -> (n, out).
pub fn lora_linear(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    let (xd, wd) = (x.detach(), w.detach());
    let y = linear(&xd, &wd)?; // (n, out)
    let delta = linear(&linear(&xd, &a.detach())?, &b.detach())?; // (n, r) -> (n, out)
    let y = (y + (delta * scale)?)?;
    let op = LoraLinear {
        w: wd.contiguous()?,
        scale,
        y: HandedOver::new(&y)?,
    };
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)
}

struct SwiGlu;

use crate::kernels::exp::sigmoid;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu-train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        if a.len() != b.len() {
            candle_core::bail!("swiglu: gate and up differ in size");
        }
        let mut y = vec![0f32; a.len()];
        y.par_chunks_mut(4096)
            .zip(a.par_chunks(4096).zip(b.par_chunks(4096)))
            .for_each(|(y, (a, b))| {
                for i in 0..y.len() {
                    y[i] = a[i] * sigmoid(a[i]) * b[i];
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (da, db) = with_f32(a, |a| {
            with_f32(b, |b| {
                with_f32(g, |g| {
                    let mut da = vec![0f32; a.len()];
                    let mut db = vec![0f32; a.len()];
                    da.par_chunks_mut(4096)
                        .zip(db.par_chunks_mut(4096))
                        .zip(
                            a.par_chunks(4096)
                                .zip(b.par_chunks(4096))
                                .zip(g.par_chunks(4096)),
                        )
                        .for_each(|((da, db), ((a, b), g))| {
                            for i in 0..da.len() {
                                let s = sigmoid(a[i]);
                                db[i] = g[i] * a[i] * s;
                                da[i] = g[i] * b[i] * s * (1.0 + a[i] * (1.0 - s));
                            }
                        });
                    (da, db)
                })
            })
        })???;
        Ok((
            Some(Tensor::from_vec(da, a.shape(), a.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

/// `silu(gate) · up`, elementwise, with a backward pass.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn composed_rms(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
        let ms = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        x.broadcast_div(&(ms + eps).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(w)
            .unwrap()
    }

    /// The gradients of Σ y·up: backprop of an upstream gradient `up` through `y`.
    fn grads_of_dot(y: &Tensor, up: &Tensor) -> candle_core::backprop::GradStore {
        crate::kernels::check::grads_of_dot(y, up).unwrap()
    }

    fn composed_softmax(x: &Tensor) -> Tensor {
        let max = x.max_keepdim(D::Minus1).unwrap().detach();
        let e = x.broadcast_sub(&max).unwrap().exp().unwrap();
        e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap()
    }

    #[test]
    fn causal_softmax_matches_scale_mask_softmax() {
        let dev = Device::Cpu;
        let (rep, t, past) = (2, 3, 2);
        let total = past + t;
        let x = Var::randn(0f32, 1.0, (2, 1, rep * t, total), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (2, 1, rep * t, total), &dev).unwrap();
        let mask: Vec<f32> = (0..rep * t)
            .flat_map(|r| {
                (0..total).map(move |j| {
                    if j > past + r % t {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (rep * t, total), &dev).unwrap();
        let scale = 0.25;
        let fused = causal_softmax(x.as_tensor(), scale, t, past).unwrap();
        let slow = composed_softmax(
            &(x.as_tensor() * scale)
                .unwrap()
                .broadcast_add(&mask)
                .unwrap(),
        );
        close(&fused, &slow, 1e-6);
        let gf = grads_of_dot(&fused, &up);
        let gs = grads_of_dot(&slow, &up);
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-5);
    }

    #[test]
    fn causal_self_attention_matches_its_composed_form() {
        let dev = Device::Cpu;
        let dims = AttentionDims {
            b: 2,
            t: 5,
            heads: 6,
            kv_heads: 2,
            head_dim: 8,
        };
        let AttentionDims {
            b,
            t,
            heads,
            kv_heads,
            head_dim: d,
        } = dims;
        let n = b * t;
        let q = Var::randn(0f32, 1.0, (n, heads * d), &dev).unwrap();
        let k = Var::randn(0f32, 1.0, (n, kv_heads * d), &dev).unwrap();
        let v = Var::randn(0f32, 1.0, (n, kv_heads * d), &dev).unwrap();
        let ang = Tensor::randn(0f32, 2.0, (n, d / 2), &dev).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let up = Tensor::randn(0f32, 1.0, (n, heads * d), &dev).unwrap();
        let fused = causal_self_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            &cos,
            &sin,
            dims,
        )
        .unwrap();
        // Composed: rope, (b, heads, t, d) layout, each query head on its kv head.
        let heads_first = |x: &Tensor, h: usize| {
            x.reshape((b, t, h, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let qr = rope(&q.as_tensor().reshape((n, heads, d)).unwrap(), &cos, &sin).unwrap();
        let kr = rope(
            &k.as_tensor().reshape((n, kv_heads, d)).unwrap(),
            &cos,
            &sin,
        )
        .unwrap();
        let (qh, kh) = (heads_first(&qr, heads), heads_first(&kr, kv_heads));
        let vh = heads_first(v.as_tensor(), kv_heads);
        let rep = heads / kv_heads;
        let per_head: Vec<Tensor> = (0..heads)
            .map(|h| {
                let qi = qh.narrow(1, h, 1).unwrap(); // (b, 1, t, d)
                let ki = kh.narrow(1, h / rep, 1).unwrap();
                let vi = vh.narrow(1, h / rep, 1).unwrap();
                let s = qi.matmul(&ki.t().unwrap()).unwrap();
                let p = causal_softmax(&s, 1.0 / (d as f64).sqrt(), t, 0).unwrap();
                p.matmul(&vi).unwrap()
            })
            .collect();
        let slow = Tensor::cat(&per_head, 1) // (b, heads, t, d)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((n, heads * d))
            .unwrap();
        close(&fused, &slow, 1e-5);
        let gf = grads_of_dot(&fused, &up);
        let gs = grads_of_dot(&slow, &up);
        for x in [&q, &k, &v] {
            close(gf.get(x).unwrap(), gs.get(x).unwrap(), 1e-5);
        }
    }

    #[test]
    fn linear_matches_matmul_and_leaves_a_frozen_weight_alone() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (6, 5), &dev).unwrap();
        let w = Var::randn(0f32, 1.0, (4, 5), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (6, 4), &dev).unwrap();
        // Both operands train.
        let fused = linear(x.as_tensor(), w.as_tensor()).unwrap();
        let slow = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        close(&fused, &slow, 1e-5);
        let gf = grads_of_dot(&fused, &up);
        let gs = grads_of_dot(&slow, &up);
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-5);
        close(gf.get(&w).unwrap(), gs.get(&w).unwrap(), 1e-5);
        // A frozen weight.
        let w = w.as_tensor().detach();
        let fused = linear(x.as_tensor(), &w).unwrap();
        let slow = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        close(&fused, &slow, 1e-5);
        let gf = grads_of_dot(&fused, &up);
        let gs = grads_of_dot(&slow, &up);
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-5);
        assert!(
            gf.get(&w).is_none(),
            "no gradient buffer for the frozen weight"
        );
    }

    #[test]
    fn lora_linear_matches_its_composed_form() {
        let dev = Device::Cpu;
        let (n, inp, out, r) = (7, 12, 10, 3);
        let x = Var::randn(0f32, 1.0, (n, inp), &dev).unwrap();
        let w = Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap(); // frozen
        let a = Var::randn(0f32, 1.0, (r, inp), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, (out, r), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (n, out), &dev).unwrap();
        let scale = 2.0;
        let fused = lora_linear(x.as_tensor(), &w, a.as_tensor(), b.as_tensor(), scale).unwrap();
        let xa = x.as_tensor().matmul(&a.as_tensor().t().unwrap()).unwrap();
        let delta = xa.matmul(&b.as_tensor().t().unwrap()).unwrap();
        let slow =
            (x.as_tensor().matmul(&w.t().unwrap()).unwrap() + (delta * scale).unwrap()).unwrap();
        close(&fused, &slow, 1e-5);
        let gf = grads_of_dot(&fused, &up);
        let gs = grads_of_dot(&slow, &up);
        for v in [&x, &a, &b] {
            close(gf.get(v).unwrap(), gs.get(v).unwrap(), 1e-5);
        }
        assert!(gf.get(&w).is_none(), "the frozen base gets no gradient");
    }

    #[test]
    fn rope_and_swiglu_match_their_composed_forms() {
        let dev = Device::Cpu;
        let (n, h, d) = (5, 3, 8);
        let x = Var::randn(0f32, 1.0, (n, h, d), &dev).unwrap();
        let ang = Tensor::randn(0f32, 2.0, (n, d / 2), &dev).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let up = Tensor::randn(0f32, 1.0, (n, h, d), &dev).unwrap();
        let fused = rope(x.as_tensor(), &cos, &sin).unwrap();
        let c2 = Tensor::cat(&[&cos, &cos], D::Minus1)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let s2 = Tensor::cat(&[&sin, &sin], D::Minus1)
            .unwrap()
            .unsqueeze(1)
            .unwrap();
        let x1 = x.as_tensor().narrow(D::Minus1, 0, d / 2).unwrap();
        let x2 = x.as_tensor().narrow(D::Minus1, d / 2, d / 2).unwrap();
        let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
        let slow =
            (x.as_tensor().broadcast_mul(&c2).unwrap() + rot.broadcast_mul(&s2).unwrap()).unwrap();
        close(&fused, &slow, 1e-5);
        let gf = grads_of_dot(&fused, &up);
        let gs = grads_of_dot(&slow, &up);
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-5);

        let a = Var::randn(0f32, 2.0, (4, 7), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, (4, 7), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (4, 7), &dev).unwrap();
        let fused = swiglu(a.as_tensor(), b.as_tensor()).unwrap();
        let slow = (a.as_tensor().silu().unwrap() * b.as_tensor()).unwrap();
        close(&fused, &slow, 1e-5);
        let gf = grads_of_dot(&fused, &up);
        let gs = grads_of_dot(&slow, &up);
        close(gf.get(&a).unwrap(), gs.get(&a).unwrap(), 1e-5);
        close(gf.get(&b).unwrap(), gs.get(&b).unwrap(), 1e-5);
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = crate::kernels::check::max_abs_diff(a, b).unwrap();
        assert!(d < tol, "differ by {d}");
    }

    /// Forward and gradients (under a random upstream gradient) equal the composed ops'.
    #[test]
    fn rms_norm_matches_its_composed_form() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 40), &dev).unwrap();
        let w = Var::randn(1f32, 0.1, 40, &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (2, 3, 40), &dev).unwrap();
        let fused = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let slow = composed_rms(x.as_tensor(), w.as_tensor(), 1e-5);
        close(&fused, &slow, 1e-5);
        let gf = grads_of_dot(&fused, &up);
        let gs = grads_of_dot(&slow, &up);
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-4);
        close(gf.get(&w).unwrap(), gs.get(&w).unwrap(), 1e-4);
    }
}
