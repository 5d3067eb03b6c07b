//! `exp` and sums in forms the compiler vectorizes: the softmaxes, SwiGLU's sigmoid and the LM
//! head's loss take some 10⁹ exponentials a training step at 4 x 1024 tokens, and libm's
//! `expf` is a call per element that no loop around it can vectorize (15% of such a step in
//! `perf record`). A plain `for` over `exp` below compiles to SIMD code.
//!
//! `exp` follows Cephes' `expf`: x = n ln 2 + r with |r| <= ln 2 / 2 (n rounded by adding
//! 1.5 · 2²³, which needs no rounding instruction), a degree-6 polynomial for eʳ, and 2ⁿ put
//! into the exponent bits. Relative error under 2 · 10⁻⁷ (about 2 ulp) over the range; inputs
//! are clamped to [-87.3, 88.3], so very negative ones give ~1e-38 rather than 0 and large ones
//! a finite value rather than infinity, and NaN stays NaN.

const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in two so that n · LN2_HI is exact for the n that occur.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer

/// eˣ, branch-free (see the module header for its accuracy and range).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.3); // keeps NaN
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5; // Cephes: 5.0000001201e-1, which is 0.5 in f32
    let er = p * r * r + r + 1.0;
    er * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The sum of `xs` in 16 independent lanes (a vectorizable order; not the sequential one).
#[inline]
pub fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = xs.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y[i] = exp(x[i] · scale − shift)` for every element, and their sum.
#[inline]
pub fn exp_into(y: &mut [f32], x: &[f32], scale: f32, shift: f32) -> f32 {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = exp(x * scale - shift);
    }
    sum(y)
}

/// `x[i] = exp(x[i] − shift)` in place, and their sum.
#[inline]
pub fn exp_in_place(x: &mut [f32], shift: f32) -> f32 {
    for v in x.iter_mut() {
        *v = exp(*v - shift);
    }
    sum(x)
}

/// The sum of `exp(x[i] − shift)`, without storing the terms.
#[inline]
pub fn sum_exp(x: &[f32], shift: f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| exp(v - shift)).sum();
    for c in chunks {
        for l in 0..16 {
            acc[l] += exp(c[l] - shift);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The logistic function 1 / (1 + e⁻ˣ).
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against f64's exp on a dense grid over the range softmaxes and sigmoids meet, relative
    /// error within 2.5e-7; the ends of the range and NaN as documented.
    #[test]
    fn exp_is_within_two_ulp_of_f64() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            worst = worst.max((got - want).abs() / want);
            x += 0.000_37;
        }
        assert!(worst < 2.5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
        assert!(exp(f32::NAN).is_nan());
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }

    #[test]
    fn lane_sum_is_the_sum() {
        let xs: Vec<f32> = (0..1000).map(|i| (i % 7) as f32 * 0.5).collect();
        let want: f64 = xs.iter().map(|&x| x as f64).sum();
        assert!((sum(&xs) as f64 - want).abs() < 1e-3);
        assert_eq!(sum(&[]), 0.0);
        let mut y = vec![0f32; 3];
        let s = exp_into(&mut y, &[0.0, 1.0, 2.0], 2.0, 2.0);
        let want = [(-2f64).exp(), 1.0, 2f64.exp()];
        for (g, w) in y.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6 * w);
        }
        assert!((s as f64 - want.iter().sum::<f64>()).abs() < 1e-5);
        let xs: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        let want: f64 = xs.iter().map(|&x| (x as f64 - 3.0).exp()).sum();
        assert!((sum_exp(&xs, 3.0) as f64 - want).abs() < 1e-5 * want);
        let mut inplace = xs.clone();
        assert!((exp_in_place(&mut inplace, 3.0) as f64 - want).abs() < 1e-5 * want);
        assert!((inplace[36] as f64 - (0.6f64).exp()).abs() < 1e-6);
    }
}
