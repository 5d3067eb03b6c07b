//! The log-probability of each target token, fused: `logit[target] - logsumexp(logits)` with
//! a hand-written gradient (`token_logps`), and the same with the LM head's matmul folded in
//! (`linear_token_logps`), so that the (tokens, vocab) logits, training's largest activation,
//! are made one chunk at a time and never kept for the backward pass. CPU kernels as candle
//! custom ops; `token_logps_composed` is the plain form the tests compare against.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use srlm_engine::autograd::{contiguous_slice, with_f32};
use srlm_engine::exp;
use srlm_engine::gemm_bf16::mm; // f32, or bf16 while autocast is on

/// `log p(target)` at each row. `logits`: (n, vocab), `targets`: (n,) u32 -> (n,)
///
/// `logit[target] - logsumexp(logits)` in one fused pass with a hand-written gradient,
/// `d/dlogits = g · (onehot(target) - softmax(logits))`: the (n, vocab) logits are the largest
/// activation of training, and the composed form would allocate several more of them.
pub fn token_logps(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, TokenLogps)
}

/// The composed (slow, obviously correct) form of `token_logps`, for tests.
pub fn token_logps_composed(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let max = logits.max_keepdim(D::Minus1)?.detach(); // (n, 1): a constant shift
    let sum_exp = logits.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?; // (n, 1)
    let lse = (sum_exp.log()? + max)?.squeeze(1)?; // (n,)
    let picked = logits.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?; // (n,)
    picked - lse
}

struct TokenLogps;

/// Max and log-sum-exp of a row.
fn row_lse(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + exp::sum_exp(row, max).ln()
}

impl CustomOp2 for TokenLogps {
    fn name(&self) -> &'static str {
        "token-logps"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let logits = contiguous_slice::<f32>(s1, l1)?;
        let targets = contiguous_slice::<u32>(s2, l2)?;
        let (n, v) = l1.shape().dims2()?;
        if targets.len() != n {
            candle_core::bail!("token_logps: {n} rows but {} targets", targets.len());
        }
        let mut out = vec![0f32; n];
        out.par_iter_mut()
            .zip(logits.par_chunks(v))
            .zip(targets.par_iter())
            .for_each(|((o, row), &t)| *o = row[t as usize] - row_lse(row));
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, v) = logits.dims2()?;
        let targets = targets.to_vec1::<u32>()?;
        let g = g.to_vec1::<f32>()?;
        let grad = with_f32(logits, |logits| ce_grad(logits, &targets, &g, v))?;
        Ok((Some(Tensor::from_vec(grad, (n, v), logits.device())?), None))
    }
}

/// `g_i · (onehot(target_i) − softmax(row_i))` for each row of `logits` (rows of `v`).
fn ce_grad(logits: &[f32], targets: &[u32], g: &[f32], v: usize) -> Vec<f32> {
    let mut grad = vec![0f32; logits.len()];
    grad.par_chunks_mut(v)
        .zip(logits.par_chunks(v))
        .enumerate()
        .for_each(|(i, (dst, row))| {
            let lse = row_lse(row);
            for (d, x) in dst.iter_mut().zip(row) {
                *d = -g[i] * exp::exp(x - lse);
            }
            dst[targets[i] as usize] += g[i];
        });
    grad
}

/// Rows of the LM head computed at a time by `linear_token_logps` when it recomputes.
const HEAD_CHUNK: usize = 256;

/// Bytes of (n, vocab) gradient `linear_token_logps` keeps from its forward for its backward.
/// Above this the backward recomputes the logits chunk by chunk instead: one more GEMM of the
/// head's size, for memory that stays at one chunk whatever the batch.
const HEAD_KEEP_BYTES: usize = 1 << 30;

/// `token_logps(x Wᵀ, targets)` with the LM head and the cross-entropy as one node, so that no
/// (n, vocab) buffer is saved and added in candle's backprop. `x`: (n, hidden),
/// `w`: (vocab, hidden), `targets`: (n,) -> (n,)
///
/// Under training the forward turns the logits in place into `onehot − softmax`, the gradient
/// for a unit upstream, and the backward is two GEMMs; past `HEAD_KEEP_BYTES` (and without
/// training) the logits are computed in row chunks and never whole.
pub fn linear_token_logps(x: &Tensor, w: &Tensor, targets: &Tensor) -> Result<Tensor> {
    linear_token_logps_keeping(x, w, targets, HEAD_KEEP_BYTES)
}

fn linear_token_logps_keeping(
    x: &Tensor,
    w: &Tensor,
    targets: &Tensor,
    keep_bytes: usize,
) -> Result<Tensor> {
    let (n, v) = (x.dim(0)?, w.dim(0)?);
    let train_w = w.track_op();
    let (xd, wd) = (x.detach(), w.detach());
    let target_ids = targets.to_vec1::<u32>()?;
    let keep = (x.track_op() || train_w) && n * v * 4 <= keep_bytes;
    let (logps, kept) = if keep {
        let grad = mm(&xd, &wd.t()?)?; // (n, vocab) logits, then their gradient
        let op = LogitsToGrad {
            targets: &target_ids,
            logps: std::sync::Mutex::new(Vec::new()),
        };
        grad.inplace_op1(&op)?;
        let logps = op.logps.into_inner().expect("logps");
        (logps, Some(grad))
    } else {
        let mut logps = Vec::with_capacity(n);
        for start in (0..n).step_by(HEAD_CHUNK) {
            let len = HEAD_CHUNK.min(n - start);
            let logits = mm(&xd.narrow(0, start, len)?, &wd.t()?)?; // (len, vocab)
            let t = targets.narrow(0, start, len)?.contiguous()?;
            logps.extend(logits.apply_op2_no_bwd(&t, &TokenLogps)?.to_vec1::<f32>()?);
        }
        (logps, None)
    };
    let logps = Tensor::from_vec(logps, n, x.device())?;
    let op = LinearTokenLogps {
        targets: target_ids,
        train_w,
        grad: kept,
    };
    x.contiguous()?.apply_op3(&w.contiguous()?, &logps, op)
}

/// Turns (n, vocab) logits in place into `onehot(target) − softmax`, one exp per element, and
/// collects each row's `log p(target)`.
struct LogitsToGrad<'a> {
    targets: &'a [u32],
    logps: std::sync::Mutex<Vec<f32>>,
}

impl candle_core::InplaceOp1 for LogitsToGrad<'_> {
    fn name(&self) -> &'static str {
        "logits-to-grad"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let (n, v) = l.shape().dims2()?;
        let (CpuStorage::F32(buf), Some((a, b))) = (s, l.contiguous_offsets()) else {
            candle_core::bail!("logits-to-grad: contiguous f32 logits expected");
        };
        let mut logps = vec![0f32; n];
        buf[a..b]
            .par_chunks_mut(v)
            .zip(logps.par_iter_mut())
            .zip(self.targets.par_iter())
            .for_each(|((row, logp), &t)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let picked = row[t as usize] - max;
                let sum = exp::exp_in_place(row, max);
                *logp = picked - sum.ln();
                let inv = -1.0 / sum;
                for x in row.iter_mut() {
                    *x *= inv;
                }
                row[t as usize] += 1.0;
            });
        *self.logps.lock().expect("logps") = logps;
        Ok(())
    }
}

struct LinearTokenLogps {
    targets: Vec<u32>,
    /// Whether the head's weight trains (not under LoRA, where it is frozen).
    train_w: bool,
    /// `onehot − softmax` (n, vocab) from the forward, or `None` to recompute it by chunks.
    grad: Option<Tensor>,
}

impl CustomOp3 for LinearTokenLogps {
    fn name(&self) -> &'static str {
        "linear-token-logps"
    }

    /// The values were computed before the op; it passes them through.
    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s3 else {
            candle_core::bail!("linear_token_logps: f32 values expected");
        };
        let (a, b) = l3.contiguous_offsets().expect("contiguous");
        Ok((CpuStorage::F32(v[a..b].to_vec()), l3.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _values: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, w) = (x.detach(), w.detach());
        let (n, v) = (x.dim(0)?, w.dim(0)?);
        if let Some(grad) = &self.grad {
            // dlogits = diag(g) · grad, so dx = diag(g) (grad W), dW = gradᵀ (diag(g) x).
            let g = g.reshape((n, 1))?;
            let dx = mm(grad, &w)?.broadcast_mul(&g)?; // (n, vocab)(vocab, hidden)
            let dw = match self.train_w {
                true => Some(mm(&grad.t()?, &x.broadcast_mul(&g)?)?), // (vocab, hidden)
                false => None,
            };
            return Ok((Some(dx), dw, None));
        }
        let g = g.to_vec1::<f32>()?;
        let mut dx = Vec::new();
        let mut dw: Option<Tensor> = None;
        for start in (0..n).step_by(HEAD_CHUNK) {
            let len = HEAD_CHUNK.min(n - start);
            let xc = x.narrow(0, start, len)?;
            let logits = mm(&xc, &w.t()?)?; // (len, vocab)
            let grad = with_f32(&logits, |l| {
                ce_grad(
                    l,
                    &self.targets[start..start + len],
                    &g[start..start + len],
                    v,
                )
            })?;
            let grad = Tensor::from_vec(grad, (len, v), x.device())?;
            dx.push(mm(&grad, &w)?); // (len, hidden)
            if self.train_w {
                let dwc = mm(&grad.t()?, &xc)?; // (vocab, hidden)
                dw = Some(match dw {
                    None => dwc,
                    Some(acc) => (acc + dwc)?,
                });
            }
        }
        let dx = Tensor::cat(&dx, 0)?;
        Ok((Some(dx), dw, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use srlm_engine::kernels::check::{grads_of_dot, max_abs_diff};

    #[test]
    fn token_logps_is_log_softmax_at_the_target() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[1f32, 2.0, 3.0], [0.5, -1.0, 100.0]], &dev).unwrap();
        let targets = Tensor::new(&[2u32, 0], &dev).unwrap();
        let got = token_logps(&logits, &targets)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let lse0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((got[0] as f64 - (3.0 - lse0)).abs() < 1e-6);
        assert!(
            (got[1] as f64 - (0.5 - 100.0)).abs() < 1e-4,
            "stable for large logits"
        );
    }

    #[test]
    fn fused_token_logps_matches_the_composed_form_and_its_gradient() {
        let dev = Device::Cpu;
        let logits = Var::randn(0f32, 3.0, (5, 37), &dev).unwrap();
        let targets = Tensor::new(&[3u32, 0, 36, 3, 17], &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, 5, &dev).unwrap();
        let fused = token_logps(logits.as_tensor(), &targets).unwrap();
        let slow = token_logps_composed(logits.as_tensor(), &targets).unwrap();
        let d = max_abs_diff(&fused, &slow).unwrap();
        assert!(d < 1e-5, "forward differs by {d}");
        let gf = grads_of_dot(&fused, &up).unwrap();
        let gs = grads_of_dot(&slow, &up).unwrap();
        let d = max_abs_diff(gf.get(&logits).unwrap(), gs.get(&logits).unwrap()).unwrap();
        assert!(d < 1e-5, "gradient differs by {d}");
    }

    #[test]
    fn fused_head_and_loss_match_the_plain_form_kept_or_recomputed() {
        for keep_bytes in [HEAD_KEEP_BYTES, 0] {
            head_and_loss_match_the_plain_form(keep_bytes);
        }
    }

    fn head_and_loss_match_the_plain_form(keep_bytes: usize) {
        let dev = Device::Cpu;
        let n = HEAD_CHUNK + 37; // two chunks, the second partial
        let x = Var::randn(0f32, 1.0, (n, 16), &dev).unwrap();
        let w = Var::randn(0f32, 0.5, (50, 16), &dev).unwrap();
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7) % 50).collect();
        let targets = Tensor::from_vec(targets, n, &dev).unwrap();
        let up = Tensor::randn(0f32, 1.0, n, &dev).unwrap();
        let fused =
            linear_token_logps_keeping(x.as_tensor(), w.as_tensor(), &targets, keep_bytes).unwrap();
        let logits = x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
        let slow = token_logps_composed(&logits, &targets).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| max_abs_diff(a, b).unwrap();
        assert!(max_diff(&fused, &slow) < 1e-5);
        let gf = grads_of_dot(&fused, &up).unwrap();
        let gs = grads_of_dot(&slow, &up).unwrap();
        assert!(max_diff(gf.get(&x).unwrap(), gs.get(&x).unwrap()) < 1e-4);
        assert!(max_diff(gf.get(&w).unwrap(), gs.get(&w).unwrap()) < 1e-4);
    }
}
