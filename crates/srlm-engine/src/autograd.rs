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

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("the training kernels take f32");
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("the training kernels take contiguous tensors"),
    }
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
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
        ))
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
