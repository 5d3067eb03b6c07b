//! Projections `y = x Wᵀ + b` over dense, quantized or both forms of a weight, LoRA on top,
//! seeded dropout, and where weights come from (`WeightSource`).

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Quantized weights with a fast matmul: ours for Q4_1 and Q8_0 blocks, candle's for the rest.
#[derive(Debug, Clone)]
pub enum Quantized {
    Candle(QMatMul),
    Blocks(crate::qmatmul::QuantMatrix),
}

impl Quantized {
    /// `q` through srlm's kernels where they read its blocks (a copy of its bytes), else
    /// through candle's, on the tensor `owned` gives (called only then: a file's tensor is
    /// copied once either way).
    pub fn new(q: &QTensor, owned: impl FnOnce() -> Result<QTensor>) -> Result<Self> {
        Ok(match crate::qmatmul::QuantMatrix::from_qtensor(q)? {
            Some(m) => Quantized::Blocks(m),
            None => Quantized::Candle(QMatMul::from_qtensor(owned()?)?),
        })
    }

    /// `x`: (n, in) -> (n, out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Quantized::Candle(w) => w.forward(x),
            Quantized::Blocks(w) => w.forward(x),
        }
    }
}

/// The many-rows form of a `Mixed` weight: f32, or bf16 packed once for the bf16 GEMM (AMX or
/// AVX512-BF16; `weights = "mixed-bf16"`).
#[derive(Debug, Clone)]
pub enum DenseWeight {
    F32(Tensor),
    Bf16(Arc<crate::gemm_bf16::PackedWeight>),
}

impl DenseWeight {
    /// `x` (n, in) -> (n, out) = x Wᵀ
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            DenseWeight::F32(w) => x.matmul(&w.t()?),
            DenseWeight::Bf16(p) => p.matmul_t(x),
        }
    }
}

/// The prefill form of a `Mixed` weight for `format`: bf16 for `MixedBf16` where the CPU has a
/// SIMD bf16 kernel (else, and for `Mixed`, f32).
pub fn dense_weight(w: Tensor, format: crate::gguf::WeightFormat) -> Result<DenseWeight> {
    if format == crate::gguf::WeightFormat::MixedBf16 {
        if let Some(p) = crate::gemm_bf16::PackedWeight::new(&w)? {
            return Ok(DenseWeight::Bf16(Arc::new(p)));
        }
    }
    Ok(DenseWeight::F32(w))
}

/// A projection `y = x Wᵀ + b` over dense or quantized weights.
#[derive(Debug, Clone)]
pub enum Linear {
    Dense {
        w: Tensor,
        b: Option<Tensor>,
    },
    Quant {
        w: Quantized,
        b: Option<Tensor>,
    },
    /// Both forms of the same weight: quantized blocks for a few rows (decoding is bound by
    /// memory traffic), dense f32 for many (prefill is bound by arithmetic, where the f32 GEMM
    /// beats candle's quantized kernels).
    Mixed {
        q: Quantized,
        dense: DenseWeight,
        b: Option<Tensor>,
    },
    /// A frozen base plus a low-rank update: `y = base(x) + scale · (dropout(x) Aᵀ) Bᵀ`
    /// (PEFT's LoRA). `a`: (r, in), `b`: (out, r).
    Lora {
        base: Box<Linear>,
        a: Tensor,
        b: Tensor,
        scale: f64,
        dropout: Option<Arc<Dropout>>,
    },
}

/// Inverted dropout with its own seeded generator, so a resumed run draws the same masks.
/// Inactive (the identity) unless training switches it on.
#[derive(Debug)]
pub struct Dropout {
    p: f32,
    rng: Mutex<StdRng>,
    active: AtomicBool,
}

impl Dropout {
    pub fn new(p: f32, seed: u64) -> Arc<Self> {
        Arc::new(Self {
            p,
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            active: AtomicBool::new(false),
        })
    }

    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::Relaxed);
    }

    /// Restarts the mask stream: the trainer reseeds from (seed, step, micro-batch).
    pub fn reseed(&self, seed: u64) {
        *self.rng.lock().expect("dropout rng") = StdRng::seed_from_u64(seed);
    }

    /// Whether `forward` drops anything now.
    pub fn is_active(&self) -> bool {
        self.p > 0.0 && self.active.load(Ordering::Relaxed)
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !self.is_active() {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - self.p);
        let n = x.elem_count();
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().expect("dropout rng");
            (0..n)
                .map(|_| {
                    if rng.random::<f32>() < self.p {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * mask
    }
}

/// Rows at and above which `Linear::Mixed` uses its dense weight. In generation the choice is
/// made per segment instead (see `Llama::forward_segments`).
pub const MIXED_DENSE_ROWS: usize = 32;

impl Linear {
    /// `forward`, except that a `Mixed` weight sends the first `q_rows` rows through its
    /// quantized blocks and the rest through its dense copy, however many there are: the caller
    /// chooses each row's path, so a row's result does not depend on the batch it is in.
    /// `None` is plain `forward`.
    pub fn forward_split(&self, x: &Tensor, q_rows: Option<usize>) -> Result<Tensor> {
        let (Some(q_rows), Linear::Mixed { q, dense, b }) = (q_rows, self) else {
            return self.forward(x);
        };
        let n = x.dim(0)?;
        let y = if q_rows >= n {
            q.forward(x)?
        } else if q_rows == 0 {
            dense.matmul_t(x)?
        } else {
            let top = q.forward(&x.narrow(0, 0, q_rows)?)?;
            let rest = dense.matmul_t(&x.narrow(0, q_rows, n - q_rows)?)?;
            Tensor::cat(&[top, rest], 0)?
        };
        match b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }

    /// `forward_split` of several projections of the same `x` (a layer's q, k and v; its gate
    /// and up). Where all of them read srlm's quantized blocks for the rows that take those,
    /// the rows go through one `QuantMatrices` product (one quantization of x, one dispatch of
    /// the thread pool); each result is the bits its own `forward_split` gives.
    pub fn forward_split_many(
        linears: &[&Linear],
        x: &Tensor,
        q_rows: Option<usize>,
    ) -> Result<Vec<Tensor>> {
        let n = x.dim(0)?;
        let blocks = |l: &Linear| match l {
            Linear::Quant {
                w: Quantized::Blocks(m),
                ..
            } => Some((m.clone(), n)),
            Linear::Mixed {
                q: Quantized::Blocks(m),
                ..
            } => q_rows.map(|r| (m.clone(), r.min(n))),
            _ => None,
        };
        let parts: Option<Vec<_>> = linears.iter().map(|l| blocks(l)).collect();
        let fused = parts.and_then(|parts| {
            let top = parts[0].1;
            let same_top = parts.iter().all(|(_, t)| *t == top);
            let group =
                crate::qmatmul::QuantMatrices::new(parts.into_iter().map(|p| p.0).collect());
            group.filter(|_| same_top && top > 0).map(|g| (g, top))
        });
        let Some((group, top)) = fused else {
            return linears.iter().map(|l| l.forward_split(x, q_rows)).collect();
        };
        let tops = group.forward(&x.narrow(0, 0, top)?)?;
        linears
            .iter()
            .zip(tops)
            .map(|(l, y)| {
                let (dense, b) = match l {
                    Linear::Mixed { dense, b, .. } => (Some(dense), b),
                    Linear::Quant { b, .. } => (None, b),
                    _ => unreachable!("only quantized projections are fused"),
                };
                let y = match dense {
                    Some(dense) if top < n => {
                        let rest = dense.matmul_t(&x.narrow(0, top, n - top)?)?;
                        Tensor::cat(&[y, rest], 0)?
                    }
                    _ => y,
                };
                match b {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            })
            .collect()
    }

    /// `x`: (n, in) -> (n, out)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Linear::Lora {
            base,
            a,
            b,
            scale,
            dropout,
        } = self
        {
            // Training without active dropout: one node that keeps only its output.
            let dropping = dropout.as_ref().is_some_and(|d| d.is_active());
            if let (Linear::Dense { w, b: None }, false) = (base.as_ref(), dropping) {
                if x.track_op() || a.track_op() || b.track_op() {
                    return crate::autograd::lora_linear(x, w, a, b, *scale);
                }
            }
            let y = base.forward(x)?;
            let h = match dropout {
                Some(d) => d.forward(x)?,
                None => x.clone(),
            };
            let delta = h.matmul(&a.t()?)?.matmul(&b.t()?)?; // (n, r) -> (n, out)
            return y + (delta * *scale)?;
        }
        let (y, b) = match self {
            // Training: one node whose backward gives each operand that trains its gradient
            // (none to LoRA's frozen base), in place of candle's matmul over a transposed node.
            Linear::Dense { w, b } if x.track_op() || w.track_op() => {
                (crate::autograd::linear(x, w)?, b)
            }
            Linear::Dense { w, b } => (x.matmul(&w.t()?)?, b),
            Linear::Quant { w, b } => (w.forward(x)?, b),
            Linear::Mixed { q, dense, b } => {
                if x.dim(0)? >= MIXED_DENSE_ROWS {
                    (dense.matmul_t(x)?, b)
                } else {
                    (q.forward(x)?, b)
                }
            }
            Linear::Lora { .. } => unreachable!("handled above"),
        };
        match b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Where a model's weights come from, by Hugging Face state-dict name
/// (`model.layers.0.self_attn.q_proj.weight`). Q/K projections come in the HF layout.
pub trait WeightSource {
    /// A dense f32 tensor (norms, embeddings, biases).
    fn dense(&self, name: &str) -> crate::Result<Tensor>;
    /// A projection's weight, dense or quantized as the source chooses.
    fn linear(&self, name: &str) -> crate::Result<Linear>;
    fn contains(&self, name: &str) -> bool;
}

pub(crate) fn load_linear(
    src: &dyn WeightSource,
    prefix: &str,
    bias: bool,
) -> crate::Result<Linear> {
    let lin = src.linear(&format!("{prefix}.weight"))?;
    if !bias {
        return Ok(lin);
    }
    let b = Some(src.dense(&format!("{prefix}.bias"))?);
    Ok(match lin {
        Linear::Dense { w, .. } => Linear::Dense { w, b },
        Linear::Quant { w, .. } => Linear::Quant { w, b },
        Linear::Mixed { q, dense, .. } => Linear::Mixed { q, dense, b },
        Linear::Lora {
            base,
            a,
            b: lb,
            scale,
            dropout,
        } => Linear::Lora {
            base: Box::new(match *base {
                Linear::Dense { w, .. } => Linear::Dense { w, b },
                other => other,
            }),
            a,
            b: lb,
            scale,
            dropout,
        },
    })
}
