//! Matrix products over GGUF's quantized blocks for decoding, Q4_1 and Q8_0. candle 0.11
//! computes Q4_1 dot products in scalar code, and its Q8_0 matmul streams the whole weight once
//! per activation row (16 times for 16 sequences, 30 MB each for SmolLM2's tied head); decoding
//! is bound by memory traffic, so these kernels read each weight row once for up to
//! `ROWS_PER_PASS` activation rows and unpack each block once for all of them.
//!
//! Follows ggml's `ggml_vec_dot_q4_1_q8_1` and `ggml_vec_dot_q8_0_q8_0`: activations are
//! quantized per block of 32 to 8 bits (scale d, and s = d * sum(q)).
//! - Q4_1: a weight block holds f16 scale d and minimum m and 32 4-bit codes (byte j: element j
//!   in the low nibble, element j + 16 in the high one), so dot = d_w d_x sum(q_w q_x) + m_w s_x.
//! - Q8_0: f16 scale d and 32 signed bytes, so dot = d_w d_x sum(q_w q_x); AVX2 multiplies
//!   unsigned by signed bytes, so |q_w| meets q_x with q_w's sign (ggml's trick).

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use std::sync::Arc;

pub const BLOCK: usize = 32;

/// The block formats these kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    Q4_1,
    Q8_0,
}

impl BlockFormat {
    /// Bytes of one block of 32 weights.
    pub fn block_bytes(self) -> usize {
        match self {
            BlockFormat::Q4_1 => 20, // f16 d, f16 m, 16 bytes of codes
            BlockFormat::Q8_0 => 34, // f16 d, 32 signed bytes
        }
    }
}

/// An (n, k) matrix of quantized blocks, row-major as GGUF stores it.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    format: BlockFormat,
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

fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The portable dot product of one Q8_0 weight row with one quantized activation row.
fn dot_scalar_q8_0(row: &[u8], x: &[XBlock]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in row.chunks_exact(34).zip(x) {
        let isum: i32 = b[2..]
            .iter()
            .zip(&xb.q)
            .map(|(&w, &q)| w as i8 as i32 * q as i32)
            .sum();
        acc += f16_at(b) * xb.d * isum as f32;
    }
    acc
}

/// The portable dot product of one Q4_1 weight row with one quantized activation row.
fn dot_scalar_q4_1(row: &[u8], x: &[XBlock]) -> f32 {
    let mut acc = 0f32;
    for (b, xb) in row.chunks_exact(20).zip(x) {
        let (d, m) = (f16_at(b), f16_at(&b[2..]));
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

/// The f16 at the start of `b`, converted by F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn f16_at_f16c(b: &[u8]) -> f32 {
    use std::arch::x86_64::*;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        u16::from_le_bytes([b[0], b[1]]) as i32,
    )))
}

/// The sum of a vector's 8 lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn hsum(a: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// One Q4_1 weight row against `N` activation rows: each block's codes are unpacked once for
/// all of them. `N` is a constant so the accumulators stay in registers (N = 1 for the decode
/// of one sequence).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_q4_1_avx2<const N: usize>(row: &[u8], xs: &[Vec<XBlock>], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let m = N;
    debug_assert!(xs.len() == N && out.len() == N);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [0f32; N];
    for (bi, b) in row.chunks_exact(20).enumerate() {
        let d = f16_at_f16c(b);
        let mn = f16_at_f16c(&b[2..]);
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
        out[i] = hsum(acc[i]) + mins[i];
    }
}

/// One Q8_0 weight row against `N` activation rows: |q_w| and q_w's signs are taken once per
/// block for all of them.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_q8_0_avx2<const N: usize>(row: &[u8], xs: &[Vec<XBlock>], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let ones = _mm256_set1_epi16(1);
    debug_assert!(xs.len() == N && out.len() == N);
    let mut acc = [_mm256_setzero_ps(); N];
    for (bi, b) in row.chunks_exact(34).enumerate() {
        let d = f16_at_f16c(b);
        let w = _mm256_loadu_si256(b.as_ptr().add(2) as *const __m256i);
        let abs_w = _mm256_sign_epi8(w, w);
        for i in 0..N {
            let xb = xs.get_unchecked(i).get_unchecked(bi);
            let xq = _mm256_loadu_si256(xb.q.as_ptr() as *const __m256i);
            // |w| (unsigned, at most 128) times x with w's sign: pairs sum to at most
            // 2 * 128 * 127, within i16.
            let p16 = _mm256_maddubs_epi16(abs_w, _mm256_sign_epi8(xq, w));
            let p32 = _mm256_madd_epi16(p16, ones);
            let a = acc.get_unchecked_mut(i);
            *a = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p32), *a);
        }
    }
    for i in 0..N {
        out[i] = hsum(acc[i]);
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
fn dot_rows(format: BlockFormat, row: &[u8], xs: &[Vec<XBlock>], out: &mut [f32], simd: bool) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY (every call): `simd` is true only when the CPU reports avx2, fma and f16c;
        // every activation row has as many blocks as the weight row; slice lengths equal N.
        let pass = |x: &[Vec<XBlock>], o: &mut [f32]| unsafe {
            match (format, x.len()) {
                (BlockFormat::Q4_1, ROWS_PER_PASS) => {
                    dot_rows_q4_1_avx2::<ROWS_PER_PASS>(row, x, o)
                }
                (BlockFormat::Q4_1, _) => dot_rows_q4_1_avx2::<1>(row, x, o),
                (BlockFormat::Q8_0, ROWS_PER_PASS) => {
                    dot_rows_q8_0_avx2::<ROWS_PER_PASS>(row, x, o)
                }
                (BlockFormat::Q8_0, _) => dot_rows_q8_0_avx2::<1>(row, x, o),
            }
        };
        let full = xs.len() / ROWS_PER_PASS * ROWS_PER_PASS;
        for (x, o) in xs[..full]
            .chunks(ROWS_PER_PASS)
            .zip(out[..full].chunks_mut(ROWS_PER_PASS))
        {
            pass(x, o);
        }
        for (x, o) in xs[full..].chunks(1).zip(out[full..].chunks_mut(1)) {
            pass(x, o);
        }
        return;
    }
    let _ = simd;
    let dot = match format {
        BlockFormat::Q4_1 => dot_scalar_q4_1,
        BlockFormat::Q8_0 => dot_scalar_q8_0,
    };
    for (o, x) in out.iter_mut().zip(xs) {
        *o = dot(row, x);
    }
}

impl QuantMatrix {
    /// `data`: the GGUF bytes of an (n, k) tensor of `format`'s blocks.
    pub fn new(format: BlockFormat, data: Vec<u8>, n: usize, k: usize) -> Result<Self> {
        let want = n * k / BLOCK * format.block_bytes();
        if k % BLOCK != 0 || data.len() != want {
            candle_core::bail!(
                "{format:?} matrix ({n}, {k}) needs {want} bytes, got {}",
                data.len()
            );
        }
        Ok(Self {
            format,
            data: Arc::new(data),
            n,
            k,
        })
    }

    /// A 2-D tensor of Q4_1 or Q8_0 blocks as a matrix these kernels multiply by (one copy of
    /// its bytes); `None` for any other dtype or shape.
    pub fn from_qtensor(q: &candle_core::quantized::QTensor) -> Result<Option<Self>> {
        use candle_core::quantized::GgmlDType;
        let format = match q.dtype() {
            GgmlDType::Q4_1 => BlockFormat::Q4_1,
            GgmlDType::Q8_0 => BlockFormat::Q8_0,
            _ => return Ok(None),
        };
        let Ok((n, k)) = q.shape().dims2() else {
            return Ok(None);
        };
        Ok(Some(Self::new(format, q.data()?.into_owned(), n, k)?))
    }

    /// `x`: (m, k) f32 -> (m, n)
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    fn compute(&self, x: &[f32], m: usize, simd: bool) -> Vec<f32> {
        let row_bytes = self.k / BLOCK * self.format.block_bytes();
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
                dot_rows(self.format, w, &xq, out, simd);
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

impl CustomOp1 for QuantMatrix {
    fn name(&self) -> &'static str {
        match self.format {
            BlockFormat::Q4_1 => "q4_1-matmul",
            BlockFormat::Q8_0 => "q8_0-matmul",
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (m, k) = layout.shape().dims2()?;
        if k != self.k {
            candle_core::bail!(
                "{}: input has {k} columns, the matrix {}",
                self.name(),
                self.k
            );
        }
        let x = match storage {
            CpuStorage::F32(v) => &v[layout.start_offset()..layout.start_offset() + m * k],
            _ => candle_core::bail!("{} takes f32 input", self.name()),
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

    /// Both formats, SIMD and portable, for one row and for a full pass of 8 plus 3, against
    /// candle's dequantized weights times the activations as the kernel quantizes them (q * d),
    /// in f64; what remains is f32 rounding.
    #[test]
    fn simd_and_scalar_equal_the_dequantized_product() {
        let dev = Device::Cpu;
        let (n, k, m) = (40, 96, 11);
        let w = Tensor::from_vec(values(n * k, 1), (n, k), &dev).unwrap();
        let xs = values(m * k, 2);
        let xq: Vec<f64> = xs
            .chunks_exact(k)
            .flat_map(|row| {
                quantize_row(row)
                    .into_iter()
                    .flat_map(|b| b.q.map(|v| v as f64 * b.d as f64))
            })
            .collect();
        for (dtype, format) in [
            (GgmlDType::Q4_1, BlockFormat::Q4_1),
            (GgmlDType::Q8_0, BlockFormat::Q8_0),
        ] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let wd = q.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
            let mat = QuantMatrix::new(format, q.data().unwrap().into_owned(), n, k).unwrap();
            if !has_avx2() {
                eprintln!("skipped the AVX2 kernel: this CPU lacks avx2, fma or f16c");
            }
            for simd in [false, has_avx2()] {
                for rows in [1, m] {
                    let got = mat.compute(&xs[..rows * k], rows, simd);
                    for i in 0..rows {
                        for j in 0..n {
                            let want: f64 = (0..k).map(|c| wd[j][c] as f64 * xq[i * k + c]).sum();
                            let g = got[i * n + j] as f64;
                            assert!(
                                (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                                "{format:?} simd={simd} rows={rows} ({i},{j}): {g} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A row's product does not depend on the rows beside it (passes of 8 against single
    /// rows), bit for bit: what keeps batched generation equal to one sequence's.
    #[test]
    fn a_row_gives_the_same_bits_in_any_batch() {
        let dev = Device::Cpu;
        let (n, k, m) = (24, 64, 11);
        let w = Tensor::from_vec(values(n * k, 3), (n, k), &dev).unwrap();
        let xs = values(m * k, 4);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let q = QTensor::quantize(&w, dtype).unwrap();
            let mat = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
            for simd in [false, has_avx2()] {
                let all = mat.compute(&xs, m, simd);
                for i in 0..m {
                    let one = mat.compute(&xs[i * k..(i + 1) * k], 1, simd);
                    assert_eq!(
                        one,
                        all[i * n..(i + 1) * n],
                        "{dtype:?} simd={simd} row {i}"
                    );
                }
            }
        }
    }

    /// A weight of -128 (|w| = 128 as an unsigned byte) against activations of ±127: the
    /// largest products the Q8_0 kernel's i16 pair sums meet.
    #[test]
    fn q8_0_extremes_do_not_saturate() {
        let k = 64;
        let mut data = Vec::new();
        for _ in 0..k / BLOCK {
            data.extend_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
            data.extend(std::iter::repeat_n(0x80u8, BLOCK)); // -128
        }
        let mat = QuantMatrix::new(BlockFormat::Q8_0, data, 1, k).unwrap();
        for sign in [1.0f32, -1.0] {
            let x = vec![sign; k]; // quantizes to ±127 with d = 1/127
            let want = -128.0 * sign * k as f32;
            for simd in [false, has_avx2()] {
                let got = mat.compute(&x, 1, simd)[0];
                assert!(
                    (got - want).abs() < 1e-3 * want.abs(),
                    "simd={simd}: {got} vs {want}"
                );
            }
        }
    }
}
