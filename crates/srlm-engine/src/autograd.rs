//! Fused CPU kernels that carry their own backward pass, for the training path: RMSNorm and
//! softmax over the last dimension.
//!
//! candle's fused `rms_norm` and `softmax_last_dim` have no backward (gradients silently vanish);
//! composing them from primitive ops is correct but slow, because candle's backprop allocates a
//! zeroed buffer and adds into it for every node. Each op here is one node with an exact,
//! hand-written gradient, checked against the composed form in the tests below.
//!
//! RMSNorm: y = x·r·w with r = 1/√(mean(x²) + ε), per row of d elements.
//!   dx = r·(g·w) − x·r³·mean(g·w·x)       dw = Σ_rows g·x·r
//! Softmax: y = exp(x − max) / Σ exp(x − max).
//!   dx = y·(g − Σ g·y)
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

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let d = *l.dims().last().expect("rank >= 1");
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
            let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for i in 0..d {
                y[i] = (x[i] - max).exp();
                sum += y[i];
            }
            let inv = 1.0 / sum;
            y.iter_mut().for_each(|v| *v *= inv);
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let d = y.dim(candle_core::D::Minus1)?;
        let dx = with_f32(y, |y| {
            with_f32(g, |g| {
                let mut dx = vec![0f32; y.len()];
                dx.par_chunks_mut(d)
                    .zip(y.par_chunks(d))
                    .zip(g.par_chunks(d))
                    .for_each(|((dx, y), g)| {
                        let dot: f32 = (0..d).map(|i| g[i] * y[i]).sum();
                        for i in 0..d {
                            dx[i] = y[i] * (g[i] - dot);
                        }
                    });
                dx
            })
        })??;
        Ok(Some(Tensor::from_vec(dx, y.shape(), y.device())?))
    }
}

/// Softmax over the last dimension, with a backward pass. Rows of all −∞ are not supported
/// (a causal mask always leaves the diagonal).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Softmax)
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
        "causal-softmax-train"
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
                let mut sum = 0.0;
                for j in 0..n {
                    y[j] = (x[j] * self.scale - max).exp();
                    sum += y[j];
                }
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

/// Causal attention of one kv group's queries as one node, keeping the probabilities `p` for
/// the backward. The intermediate (rows, T) scores and their gradients are never graph nodes,
/// so candle's backprop neither keeps the scores nor zero-fills and adds (rows, T) buffers.
///   y = p v with p = causal softmax(scale · q kᵀ)
///   dp = dy vᵀ   dv = pᵀ dy   ds = scale · p · (dp − Σ dp·p)   dq = ds k   dk = dsᵀ q
struct CausalAttention {
    p: Tensor, // (b, kvh, rep·t, T)
    scale: f32,
}

impl candle_core::CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    /// `p` was computed before the op; the forward is `p v`.
    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (b, kvh, rows, keys) = self.p.dims4()?;
        let d = l3.dims()[3];
        let (ps, pl) = self.p.storage_and_layout();
        let Storage::Cpu(p) = &*ps else {
            candle_core::bail!("the training kernels run on the CPU");
        };
        let y = p.matmul(s3, (b * kvh, rows, d, keys), pl, l3)?;
        Ok((y, Shape::from((b, kvh, rows, d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v) = (q.detach(), k.detach(), v.detach());
        let dy = dy.contiguous()?; // (b, kvh, rows, d)
        let dp = dy.matmul(&v.t()?)?; // (b, kvh, rows, T)
        let dv = self.p.t()?.matmul(&dy)?; // (b, kvh, T, d)
        let ds = scaled_softmax_backward(&self.p, &dp, self.scale)?; // (b, kvh, rows, T)
        let dq = ds.matmul(&k)?; // (b, kvh, rows, d)
        let dk = ds.t()?.matmul(&q)?; // (b, kvh, T, d)
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// `causal_softmax(q kᵀ, scale, t, past) v` as one node with a backward pass.
/// `q`: (b, kvh, rep·t, d) for t new queries per head after `past` cached positions,
/// `k`, `v`: (b, kvh, T, d) with T = past + t -> (b, kvh, rep·t, d)
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    t: usize,
    past: usize,
) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let scores = q.detach().matmul(&k.detach().t()?)?; // (b, kvh, rep·t, T)
    let softmax = CausalSoftmax {
        scale: scale as f32,
        t,
        past,
    };
    let p = scores.apply_op1_no_bwd(&softmax)?;
    drop(scores);
    q.apply_op3(
        &k,
        &v,
        CausalAttention {
            p,
            scale: scale as f32,
        },
    )
}

/// Rotate-half rope with the cos/sin rows of each token: `(x1, x2) -> (x1 c - x2 s, x2 c + x1 s)`.
struct Rope {
    cos: Vec<f32>, // (n, d/2)
    sin: Vec<f32>,
    /// The inverse rotation (the backward pass).
    inverse: bool,
}

impl Rope {
    fn rotate(&self, x: &[f32], n: usize, heads: usize, d: usize) -> Vec<f32> {
        let half = d / 2;
        let mut y = vec![0f32; x.len()];
        let sign = if self.inverse { -1.0 } else { 1.0 };
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
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let (n, h, d) = l.shape().dims3()?;
        Ok((CpuStorage::F32(self.rotate(x, n, h, d)), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let (n, h, d) = g.dims3()?;
        let inv = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            inverse: !self.inverse,
        };
        let dx = with_f32(g, |g| inv.rotate(g, n, h, d))?;
        Ok(Some(Tensor::from_vec(dx, (n, h, d), g.device())?))
    }
}

/// Rotate-half rope of `x` (n, heads, d) with `cos`, `sin` (n, d/2), with a backward pass.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let op = Rope {
        cos: cos.flatten_all()?.to_vec1::<f32>()?,
        sin: sin.flatten_all()?.to_vec1::<f32>()?,
        inverse: false,
    };
    x.contiguous()?.apply_op1(op)
}

/// `x Wᵀ` as one node. Its backward gives each operand that trains its gradient in the
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
            true => Some(g.matmul(&w.detach())?), // (n, out)(out, in) -> (n, in)
            false => None,
        };
        let dw = match w.track_op() {
            true => Some(g.t()?.matmul(&x.detach())?), // (out, n)(n, in) -> (out, in)
            false => None,
        };
        Ok((dx, dw))
    }
}

/// `x Wᵀ` (`x`: (n, in), `w`: (out, in)) -> (n, out), with the backward above.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

struct SwiGlu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

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
        let gf = (fused * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-5);
    }

    #[test]
    fn causal_attention_matches_its_composed_form() {
        let dev = Device::Cpu;
        let (b, kvh, rep, t, past, d) = (2, 2, 3, 4, 2, 8);
        let total = past + t;
        let q = Var::randn(0f32, 1.0, (b, kvh, rep * t, d), &dev).unwrap();
        let k = Var::randn(0f32, 1.0, (b, kvh, total, d), &dev).unwrap();
        let v = Var::randn(0f32, 1.0, (b, kvh, total, d), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (b, kvh, rep * t, d), &dev).unwrap();
        let scale = 1.0 / (d as f64).sqrt();
        let fused = causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), scale, t, past)
            .unwrap();
        let scores = q
            .as_tensor()
            .matmul(&k.as_tensor().t().unwrap())
            .unwrap();
        let slow = causal_softmax(&scores, scale, t, past)
            .unwrap()
            .matmul(v.as_tensor())
            .unwrap();
        close(&fused, &slow, 1e-5);
        let gf = (fused * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
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
        let gf = (fused * &up).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-5);
        close(gf.get(&w).unwrap(), gs.get(&w).unwrap(), 1e-5);
        // A frozen weight.
        let w = w.as_tensor().detach();
        let fused = linear(x.as_tensor(), &w).unwrap();
        let slow = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
        close(&fused, &slow, 1e-5);
        let gf = (fused * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-5);
        assert!(
            gf.get(&w).is_none(),
            "no gradient buffer for the frozen weight"
        );
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
        let gf = (fused * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-5);

        let a = Var::randn(0f32, 2.0, (4, 7), &dev).unwrap();
        let b = Var::randn(0f32, 1.0, (4, 7), &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (4, 7), &dev).unwrap();
        let fused = swiglu(a.as_tensor(), b.as_tensor()).unwrap();
        let slow = (a.as_tensor().silu().unwrap() * b.as_tensor()).unwrap();
        close(&fused, &slow, 1e-5);
        let gf = (fused * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&a).unwrap(), gs.get(&a).unwrap(), 1e-5);
        close(gf.get(&b).unwrap(), gs.get(&b).unwrap(), 1e-5);
    }

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < tol, "differ by {d}");
    }

    /// Forward and gradients (under a random upstream gradient) equal the composed ops'.
    #[test]
    fn rms_norm_and_softmax_match_their_composed_forms() {
        let dev = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (2, 3, 40), &dev).unwrap();
        let w = Var::randn(1f32, 0.1, 40, &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, (2, 3, 40), &dev).unwrap();
        let fused = rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap();
        let slow = composed_rms(x.as_tensor(), w.as_tensor(), 1e-5);
        close(&fused, &slow, 1e-5);
        let gf = (fused * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-4);
        close(gf.get(&w).unwrap(), gs.get(&w).unwrap(), 1e-4);

        let mask = Tensor::new(&[0f32, f32::NEG_INFINITY], &dev).unwrap();
        let xm = x
            .as_tensor()
            .narrow(2, 0, 2)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        let s = softmax_last_dim(&xm).unwrap();
        assert_eq!(
            s.narrow(2, 1, 1)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let fused = softmax_last_dim(x.as_tensor()).unwrap();
        let slow = composed_softmax(x.as_tensor());
        close(&fused, &slow, 1e-6);
        let gf = (fused * &up)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gs = (slow * &up).unwrap().sum_all().unwrap().backward().unwrap();
        close(gf.get(&x).unwrap(), gs.get(&x).unwrap(), 1e-5);
    }
}
