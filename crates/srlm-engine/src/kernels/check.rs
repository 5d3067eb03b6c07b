//! How a kernel is checked against the composed ops it replaces: the same forward, and the
//! same gradients under one random upstream gradient. Used by the kernels' own tests, the
//! trainer's and the binary's.

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};

/// `max |a - b|` over every element (shapes must match).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
}

/// The gradients of `sum(y * up)`: backward through `y` with `up` as its upstream gradient.
pub fn grads_of_dot(y: &Tensor, up: &Tensor) -> Result<GradStore> {
    (y * up)?.sum_all()?.backward()
}

/// `n` deterministic values in [-1, 1) from a 64-bit LCG seeded by `seed`: a kernel test's
/// inputs, the same on every machine.
pub fn lcg_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
