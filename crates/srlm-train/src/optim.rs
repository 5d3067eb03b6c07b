//! AdamW as PyTorch's `torch.optim.AdamW` computes it (decoupled weight decay, bias correction),
//! with global-norm gradient clipping as `torch.nn.utils.clip_grad_norm_`, and moments that save
//! and load.
//!
//! The update runs in place over each parameter's storage in one fused pass (candle's own AdamW
//! builds a dozen temporaries per tensor); the moments live in plain `Vec<f32>`s.

use crate::error::{Result, TrainError};
use candle_core::{CpuStorage, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    /// transformers' Trainer defaults.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// First and second moments of one parameter.
struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

pub struct AdamW {
    cfg: AdamWConfig,
    params: Vec<(String, Var)>,
    state: Vec<Moments>,
    /// Updates taken so far (PyTorch's per-parameter `step`, equal for all here).
    pub step: u64,
}

/// One AdamW update of a parameter, applied in place: `(param, grad)` in, param updated.
struct AdamWStep<'a> {
    moments: Mutex<&'a mut Moments>,
    beta1: f32,
    beta2: f32,
    eps: f32,
    decay: f32,      // 1 - lr * weight_decay
    step_size: f32,  // lr / (1 - beta1^t)
    bc2_sqrt: f32,   // sqrt(1 - beta2^t)
    grad_scale: f32, // the clipping factor
}

const CHUNK: usize = 1 << 14;

impl InplaceOp2 for AdamWStep<'_> {
    fn name(&self) -> &'static str {
        "adamw-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (CpuStorage::F32(p), CpuStorage::F32(g)) = (s1, s2) else {
            candle_core::bail!("AdamW updates f32 parameters only");
        };
        let (Some((p0, p1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("AdamW needs contiguous parameters and gradients");
        };
        let p = &mut p[p0..p1];
        let g = &g[g0..g1];
        let mut guard = self.moments.lock().expect("moments");
        let Moments { m, v } = &mut **guard;
        if p.len() != g.len() || p.len() != m.len() {
            candle_core::bail!("AdamW: parameter, gradient and moment sizes differ");
        }
        let me = &*self;
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for i in 0..p.len() {
                    let g = g[i] * me.grad_scale;
                    m[i] = me.beta1 * m[i] + (1.0 - me.beta1) * g;
                    v[i] = me.beta2 * v[i] + (1.0 - me.beta2) * g * g;
                    let denom = v[i].sqrt() / me.bc2_sqrt + me.eps;
                    p[i] = p[i] * me.decay - me.step_size * m[i] / denom;
                }
            });
        Ok(())
    }
}

/// Sum of squares of a tensor's f32 elements, read in place.
fn sum_sq(t: &Tensor) -> Result<f64> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        return Err(TrainError::Unsupported("training runs on the CPU".into()));
    };
    let (a, b) = layout.contiguous_offsets().expect("contiguous");
    let s = &cpu.as_slice::<f32>()?[a..b];
    Ok(s.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
        .sum())
}

/// The global L2 norm of the gradients, as `clip_grad_norm_` computes it.
pub fn global_norm(grads: &[&Tensor]) -> Result<f64> {
    let mut total = 0.0;
    for g in grads {
        total += sum_sq(g)?;
    }
    Ok(total.sqrt())
}

/// The factor `clip_grad_norm_` scales gradients by: `min(1, max_norm / (norm + 1e-6))`.
pub fn clip_factor(norm: f64, max_norm: Option<f64>) -> f64 {
    match max_norm {
        Some(max) if max > 0.0 => (max / (norm + 1e-6)).min(1.0),
        _ => 1.0,
    }
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, cfg: AdamWConfig) -> Self {
        let state = params
            .iter()
            .map(|(_, p)| {
                let n = p.elem_count();
                Moments {
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                }
            })
            .collect();
        Self {
            cfg,
            params,
            state,
            step: 0,
        }
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// One update with learning rate `lr`; every gradient is multiplied by `grad_scale` first
    /// (the clipping factor). `grads[i]` belongs to `params()[i]`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64, grad_scale: f64) -> Result<()> {
        assert_eq!(grads.len(), self.params.len(), "one gradient per parameter");
        self.step += 1;
        let t = self.step as i32;
        let c = self.cfg;
        for (((_, p), g), st) in self.params.iter().zip(grads).zip(self.state.iter_mut()) {
            let op = AdamWStep {
                moments: Mutex::new(st),
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                eps: c.eps as f32,
                decay: (1.0 - lr * c.weight_decay) as f32,
                step_size: (lr / (1.0 - c.beta1.powi(t))) as f32,
                bc2_sqrt: (1.0 - c.beta2.powi(t)).sqrt() as f32,
                grad_scale: grad_scale as f32,
            };
            p.as_tensor().inplace_op2(&g.contiguous()?, &op)?;
        }
        Ok(())
    }

    /// Writes the moments (`{name}.exp_avg`, `{name}.exp_avg_sq`) to a safetensors file; the step
    /// goes with the trainer state.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut views = BTreeMap::new();
        for ((name, p), st) in self.params.iter().zip(&self.state) {
            let shape = p.dims().to_vec();
            for (suffix, data) in [("exp_avg", &st.m), ("exp_avg_sq", &st.v)] {
                let bytes: &[u8] = f32_bytes(data);
                let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                    .map_err(|e| TrainError::Checkpoint(format!("optimizer state: {e}")))?;
                views.insert(format!("{name}.{suffix}"), view);
            }
        }
        safetensors::serialize_to_file(views, None, path)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
    }

    /// Loads moments written by `save` for the same parameters.
    pub fn load(&mut self, path: &Path, step: u64) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
        for ((name, p), mo) in self.params.iter().zip(self.state.iter_mut()) {
            for (suffix, dst) in [("exp_avg", &mut mo.m), ("exp_avg_sq", &mut mo.v)] {
                let key = format!("{name}.{suffix}");
                let t = st.tensor(&key).map_err(|_| {
                    TrainError::Checkpoint(format!(
                        "{}: no `{key}`: the optimizer state belongs to another model or setup",
                        path.display()
                    ))
                })?;
                if t.shape() != p.dims() || t.dtype() != Dtype::F32 {
                    return Err(TrainError::Checkpoint(format!(
                        "{}: `{key}` has the wrong shape or type",
                        path.display()
                    )));
                }
                for (d, c) in dst.iter_mut().zip(t.data().chunks_exact(4)) {
                    *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The bytes of `v` as safetensors stores f32 (little-endian), without a copy.
pub(crate) fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and any byte pattern is a valid u8; the length is exact.
    // safetensors stores little-endian, which is every platform candle's CPU backend runs on.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two steps of AdamW written out from PyTorch's documented algorithm, in f64.
    #[test]
    fn matches_the_pytorch_algorithm() {
        let cfg = AdamWConfig {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let p0 = [0.5f64, -1.0, 2.0];
        let grads = [[0.1f64, -0.2, 0.3], [-0.05, 0.4, 0.0]];
        let lr = 0.01;
        let var = Var::from_vec(
            p0.iter().map(|&x| x as f32).collect::<Vec<_>>(),
            3,
            &Device::Cpu,
        )
        .unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], cfg);
        let (mut p, mut m, mut v) = (p0, [0.0; 3], [0.0; 3]);
        for (t, g) in grads.iter().enumerate() {
            let gt = Tensor::from_vec(
                g.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                3,
                &Device::Cpu,
            )
            .unwrap();
            opt.step(&[gt], lr, 1.0).unwrap();
            let t = (t + 1) as i32;
            for i in 0..3 {
                p[i] *= 1.0 - lr * cfg.weight_decay;
                m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g[i];
                v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g[i] * g[i];
                let mh = m[i] / (1.0 - cfg.beta1.powi(t));
                let vh = v[i] / (1.0 - cfg.beta2.powi(t));
                p[i] -= lr * mh / (vh.sqrt() + cfg.eps);
            }
        }
        let got = var.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..3 {
            assert!((got[i] as f64 - p[i]).abs() < 1e-6, "{got:?} vs {p:?}");
        }
    }

    #[test]
    fn clipping_follows_clip_grad_norm() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[3f32, 0.0], &dev).unwrap();
        let b = Tensor::new(&[[4f32]], &dev).unwrap();
        let n = global_norm(&[&a, &b]).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        assert!((clip_factor(n, Some(1.0)) - 1.0 / (5.0 + 1e-6)).abs() < 1e-12);
        assert_eq!(clip_factor(n, Some(10.0)), 1.0);
        assert_eq!(clip_factor(n, None), 1.0);
    }

    #[test]
    fn state_round_trips() {
        let dev = Device::Cpu;
        let var = Var::from_vec(vec![1f32, 2.0, 3.0, 4.0], (2, 2), &dev).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWConfig::default());
        let g = Tensor::new(&[[0.1f32, 0.2], [0.3, 0.4]], &dev).unwrap();
        opt.step(&[g.clone()], 0.1, 1.0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        opt.save(&path).unwrap();

        let var2 = Var::from_tensor(var.as_tensor()).unwrap();
        let mut opt2 = AdamW::new(vec![("w".into(), var2.clone())], AdamWConfig::default());
        opt2.load(&path, opt.step).unwrap();
        opt.step(&[g.clone()], 0.1, 1.0).unwrap();
        opt2.step(&[g], 0.1, 1.0).unwrap();
        assert_eq!(
            var.as_tensor().to_vec2::<f32>().unwrap(),
            var2.as_tensor().to_vec2::<f32>().unwrap()
        );
    }
}
