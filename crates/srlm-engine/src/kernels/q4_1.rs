//! A Q4_1 matrix-vector kernel for decoding. candle 0.11 computes Q4_1 dot products in scalar
//! code; decoding a small model is bound by memory traffic, and Q4_1 moves 40% fewer bytes per
//! weight than Q8_0, so a SIMD kernel over the file's own blocks is the fastest decode path.
//!
//! Follows ggml's `ggml_vec_dot_q4_1_q8_1`: activations are quantized per block of 32 to 8 bits
//! (scale d, and s = d * sum(q)); a weight block holds f16 scale d and minimum m and 32 4-bit
//! codes (byte j: element j in the low nibble, element j + 16 in the high one), so
//! dot = d_w * d_x * sum(q_w * q_x) + m_w * s_x.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::Arc;

pub const BLOCK: usize = 32;
const BLOCK_BYTES: usize = 20; // f16 d, f16 m, 16 bytes of codes

/// An (n, k) matrix of Q4_1 blocks, row-major as GGUF stores it.
#[derive(Debug, Clone)]
pub struct Q41Matrix {
    data: Arc<Vec<u8>>,
    n: usize,
    k: usize,
}

struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint elements from the pool's tasks (see `compute`).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// One quantized activation block.
#[derive(Clone, Copy)]
struct XBlock {
    d: f32,
    s: f32,
    q: [i8; BLOCK],
}

fn quantize_row(x: &[f32]) -> Vec<XBlock> {
    x.chunks_exact(BLOCK)
        .map(|c| {
            let amax = c.iter().fold(0f32, |a, &v| a.max(v.abs()));
            let d = amax / 127.0;
            let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
            let mut q = [0i8; BLOCK];
            let mut sum = 0i32;
            for (qi, &v) in q.iter_mut().zip(c) {
                *qi = (v * inv).round() as i8;
                sum += *qi as i32;
            }
            XBlock {
                d,
                s: d * sum as f32,
                q,
            }
        })
        .collect()
}

/// The portable dot product of one weight row with one quantized activation row.
fn dot_scalar(row: &[u8], x: &[XBlock]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in row.chunks_exact(BLOCK_BYTES).zip(x) {
        let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let m = half::f16::from_le_bytes([b[2], b[3]]).to_f32();
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (b[4 + j] & 0x0F) as i32 * xb.q[j] as i32;
            isum += (b[4 + j] >> 4) as i32 * xb.q[j + 16] as i32;
        }
        acc += d * xb.d * isum as f32 + m * xb.s;
    }
    acc
}

/// Activation rows handled per pass over a weight row (accumulators live in registers/stack).
#[cfg(target_arch = "x86_64")]
const ROWS_PER_PASS: usize = 8;

/// One weight row against up to `ROWS_PER_PASS` activation rows: each block's codes are
/// unpacked once for all of them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
/// `N` is a constant so the accumulators stay in registers (N = 1 for the decode of one sequence).
unsafe fn dot_rows_avx2<const N: usize>(row: &[u8], xs: &[Vec<XBlock>], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let m = N;
    debug_assert!(xs.len() == N && out.len() == N);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [0f32; N];
    for (bi, b) in row.chunks_exact(BLOCK_BYTES).enumerate() {
        let d = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            u16::from_le_bytes([b[0], b[1]]) as i32,
        )));
        let mn = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            u16::from_le_bytes([b[2], b[3]]) as i32,
        )));
        let codes = _mm_loadu_si128(b.as_ptr().add(4) as *const __m128i);
        let lo = _mm_and_si128(codes, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(codes, 4), mask);
        let w = _mm256_set_m128i(hi, lo);
        for i in 0..m {
            let xb = xs.get_unchecked(i).get_unchecked(bi);
            let xq = _mm256_loadu_si256(xb.q.as_ptr() as *const __m256i);
            let p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(w, xq), ones);
            let a = acc.get_unchecked_mut(i);
            *a = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p32), *a);
            *mins.get_unchecked_mut(i) += mn * xb.s;
        }
    }
    for i in 0..m {
        let a = acc[i];
        let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        out[i] = _mm_cvtss_f32(s) + mins[i];
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Dot products of one weight row with every activation row, into `out` (m,).
fn dot_rows(row: &[u8], xs: &[Vec<XBlock>], out: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY (both calls): `simd` is true only when the CPU reports avx2, fma and f16c;
        // every activation row has as many blocks as the weight row; slice lengths equal N.
        let full = xs.len() / ROWS_PER_PASS * ROWS_PER_PASS;
        for (x, o) in xs[..full]
            .chunks(ROWS_PER_PASS)
            .zip(out[..full].chunks_mut(ROWS_PER_PASS))
        {
            unsafe { dot_rows_avx2::<ROWS_PER_PASS>(row, x, o) };
        }
        for (x, o) in xs[full..].chunks(1).zip(out[full..].chunks_mut(1)) {
            unsafe { dot_rows_avx2::<1>(row, x, o) };
        }
        return;
    }
    let _ = simd;
    for (o, x) in out.iter_mut().zip(xs) {
        *o = dot_scalar(row, x);
    }
}

impl Q41Matrix {
    /// `data`: the GGUF bytes of an (n, k) Q4_1 tensor.
    pub fn new(data: Vec<u8>, n: usize, k: usize) -> Result<Self> {
        if k % BLOCK != 0 || data.len() != n * k / BLOCK * BLOCK_BYTES {
            candle_core::bail!(
                "Q4_1 matrix ({n}, {k}) needs {} bytes, got {}",
                n * k / BLOCK * BLOCK_BYTES,
                data.len()
            );
        }
        Ok(Self {
            data: Arc::new(data),
            n,
            k,
        })
    }

    /// `x`: (m, k) f32 -> (m, n)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    fn compute(&self, x: &[f32], m: usize, simd: bool) -> Vec<f32> {
        let row_bytes = self.k / BLOCK * BLOCK_BYTES;
        let xq: Vec<Vec<XBlock>> = x.chunks_exact(self.k).map(quantize_row).collect();
        let mut out_t = vec![0f32; self.n * m]; // (n, m): each range of weight rows is one task's
        let out_ptr = SendPtr(out_t.as_mut_ptr());
        // candle's own worker pool, so our kernel and candle's never compete for the cores.
        candle_core::utils::barrier_pool().execute_chunked(self.n, |rows| {
            let out_ptr = &out_ptr;
            for row in rows {
                let w = &self.data[row * row_bytes..(row + 1) * row_bytes];
                // SAFETY: ranges of rows are disjoint across tasks, so each (row, ..) slice of
                // `out_t` is written by exactly one thread; `out_t` outlives the call.
                let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(row * m), m) };
                dot_rows(w, &xq, out, simd);
            }
        });
        // (n, m) -> (m, n)
        let mut out = vec![0f32; m * self.n];
        for (r, col) in out_t.chunks_exact(m).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                out[i * self.n + r] = v;
            }
        }
        out
    }
}

impl CustomOp1 for Q41Matrix {
    fn name(&self) -> &'static str {
        "q4_1-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = layout.shape().dims2()?;
        if k != self.k {
            candle_core::bail!("q4_1-matmul: input has {k} columns, the matrix {}", self.k);
        }
        let x = match storage {
            CpuStorage::F32(v) => &v[layout.start_offset()..layout.start_offset() + m * k],
            _ => candle_core::bail!("q4_1-matmul takes f32 input"),
        };
        Ok((
            CpuStorage::F32(self.compute(x, m, has_avx2())),
            Shape::from((m, self.n)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    /// Deterministic pseudo-random values in [-1, 1).
    use crate::kernels::check::lcg_values as values;

    #[test]
    fn simd_and_scalar_equal_the_dequantized_product() {
        let dev = Device::Cpu;
        let (n, k, m) = (40, 96, 11); // 11 rows: a full pass of 8, then 3
        let w = Tensor::from_vec(values(n * k, 1), (n, k), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let wd = q.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
        let mat = Q41Matrix::new(q.data().unwrap().into_owned(), n, k).unwrap();
        let xs = values(m * k, 2);
        // The reference: candle's dequantized weights times the activations as the kernel
        // quantizes them (q * d), in f64. What remains is f32 rounding.
        let xq: Vec<f64> = xs
            .chunks_exact(k)
            .flat_map(|row| {
                quantize_row(row)
                    .into_iter()
                    .flat_map(|b| b.q.map(|v| v as f64 * b.d as f64))
            })
            .collect();
        for simd in [false, has_avx2()] {
            for rows in [1, m] {
                let got = mat.compute(&xs[..rows * k], rows, simd);
                for i in 0..rows {
                    for j in 0..n {
                        let want: f64 = (0..k).map(|c| wd[j][c] as f64 * xq[i * k + c]).sum();
                        let g = got[i * n + j] as f64;
                        assert!(
                            (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                            "simd={simd} rows={rows} ({i},{j}): {g} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
