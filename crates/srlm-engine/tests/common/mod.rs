//! Helpers shared by the engine's integration tests.

use candle_core::Tensor;
use std::path::PathBuf;

/// The reference outputs written by scripts/make_engine_goldens.py.
pub fn goldens() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens")
}

/// max |got - want| / max |want|: the error relative to the reference's scale.
pub fn max_rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let max_abs = |t: &Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    max_abs(&(got - want).unwrap()) / max_abs(want)
}
