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
