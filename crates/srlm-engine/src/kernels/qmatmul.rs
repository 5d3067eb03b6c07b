//! Matrix products over GGUF's quantized blocks for decoding, Q4_1 and Q8_0. candle 0.11
//! computes Q4_1 dot products in scalar code, and its Q8_0 matmul streams the whole weight once
//! per activation row (16 times for 16 sequences, 30 MB each for SmolLM2's tied head); decoding
//! is bound by memory traffic, so these kernels read each weight row once for up to
//! `ROWS_PER_PASS` activation rows and unpack each block once for all of them; with fewer
//! activation rows (one sequence, the tail of a batch) they take up to `ROW_GROUP` weight rows
//! at once instead, so each block of x is loaded once for them.
//!
//! Follows ggml's `ggml_vec_dot_q4_1_q8_1` and `ggml_vec_dot_q8_0_q8_0`: activations are
//! quantized per block of 32 to 8 bits (scale d, and s = d * sum(q)).
//! - Q4_1: a weight block holds f16 scale d and minimum m and 32 4-bit codes (byte j: element j
//!   in the low nibble, element j + 16 in the high one), so dot = d_w d_x sum(q_w q_x) + m_w s_x.
//! - Q8_0: f16 scale d and 32 signed bytes, so dot = d_w d_x sum(q_w q_x); AVX2 multiplies
//!   unsigned by signed bytes, so |q_w| meets q_x with q_w's sign (ggml's trick).
//!
//! The kernel is chosen at run time (`QKernel::chosen`), never by how the binary was compiled:
//! AVX-512 with VNNI where the CPU and OS allow it (two blocks a register, `vpdpbusd`), else
//! AVX2, else portable code. Every one is tested against the dequantized product on the
//! machines that run it.

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

/// The instruction sets a quantized matmul may run on, best last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QKernel {
    /// Scalar code, any CPU.
    Portable,
    /// AVX2 with FMA and F16C: 32 codes a block, `vpmaddubsw` then `vpmaddwd`.
    Avx2,
    /// AVX-512 (F, BW, VL) with VNNI: two blocks a register, `vpdpbusd` (u8 x s8 into i32).
    Avx512Vnni,
}

impl QKernel {
    /// The best kernel this CPU and OS allow (detected once).
    pub fn best() -> QKernel {
        let f = crate::cpu::CpuFeatures::get();
        if f.avx512_vnni && f.avx2 {
            QKernel::Avx512Vnni
        } else if f.avx2 {
            QKernel::Avx2
        } else {
            QKernel::Portable
        }
    }

    /// The kernel the matmuls use: `best()`, or a slower one named by the environment variable
    /// `SRLM_QKERNEL` (portable, avx2, avx512-vnni) to compare kernels in one binary or to step
    /// around a suspect one; a name this CPU cannot run, or no such name, leaves `best()`.
    pub fn chosen() -> QKernel {
        static CHOSEN: std::sync::OnceLock<QKernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let best = QKernel::best();
            let Ok(name) = std::env::var("SRLM_QKERNEL") else {
                return best;
            };
            match QKernel::available().into_iter().find(|k| k.name() == name) {
                Some(k) => k,
                None => {
                    tracing::warn!(
                        "SRLM_QKERNEL={name}: not a kernel this CPU runs ({}); using {}",
                        QKernel::available()
                            .iter()
                            .map(|k| k.name())
                            .collect::<Vec<_>>()
                            .join(", "),
                        best.name()
                    );
                    best
                }
            }
        })
    }

    /// Every kernel this machine can run, for tests that check each against the portable one.
    pub fn available() -> Vec<QKernel> {
        [QKernel::Portable, QKernel::Avx2, QKernel::Avx512Vnni]
            .into_iter()
            .filter(|k| *k <= QKernel::best())
            .collect()
    }

    pub fn name(self) -> &'static str {
        match self {
            QKernel::Portable => "portable",
            QKernel::Avx2 => "avx2",
            QKernel::Avx512Vnni => "avx512-vnni",
        }
    }
}

/// One activation row quantized per block of 32 to 8 bits (ggml's Q8_1 activations): codes q,
/// scale d and s = d * sum(q) per block.
struct XRow {
    /// (k,) codes.
    q: Vec<i8>,
    /// (k/32,) scales.
    d: Vec<f32>,
    /// (k/32,) d * sum(q) of each block.
    s: Vec<f32>,
    /// For the AVX-512 kernel (empty otherwise): (k,) codes + 128 as unsigned bytes (Q8_0's
    /// weights are the signed operand of `vpdpbusd`), and (k/4,) d of each block repeated over
    /// its 8 lanes of i32 sums.
    u: Vec<u8>,
    d_lanes: Vec<f32>,
}

fn quantize_row(x: &[f32], kernel: QKernel) -> XRow {
    let blocks = x.len() / BLOCK;
    let mut r = XRow {
        q: Vec::with_capacity(x.len()),
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
        u: Vec::new(),
        d_lanes: Vec::new(),
    };
    for c in x.chunks_exact(BLOCK) {
        let amax = c.iter().fold(0f32, |a, &v| a.max(v.abs()));
        let d = amax / 127.0;
        let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for &v in c {
            let q = (v * inv).round() as i8;
            r.q.push(q);
            sum += q as i32;
        }
        r.d.push(d);
        r.s.push(d * sum as f32);
    }
    if kernel == QKernel::Avx512Vnni {
        r.u = r.q.iter().map(|&q| (q as u8) ^ 0x80).collect();
        r.d_lanes = r.d.iter().flat_map(|&d| [d; 8]).collect();
    }
    r
}

fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The portable dot product of one Q8_0 weight row with one quantized activation row.
fn dot_scalar_q8_0(row: &[u8], x: &XRow) -> f32 {
    let mut acc = 0f32;
    for ((b, q), &d) in row.chunks_exact(34).zip(x.q.chunks_exact(BLOCK)).zip(&x.d) {
        let isum: i32 = b[2..]
            .iter()
            .zip(q)
            .map(|(&w, &q)| w as i8 as i32 * q as i32)
            .sum();
        acc += f16_at(b) * d * isum as f32;
    }
    acc
}

/// The portable dot product of one Q4_1 weight row with one quantized activation row.
fn dot_scalar_q4_1(row: &[u8], x: &XRow) -> f32 {
    let mut acc = 0f32;
    for (bi, (b, q)) in row
        .chunks_exact(20)
        .zip(x.q.chunks_exact(BLOCK))
        .enumerate()
    {
        let (d, m) = (f16_at(b), f16_at(&b[2..]));
        let mut isum = 0i32;
        for j in 0..16 {
            isum += (b[4 + j] & 0x0F) as i32 * q[j] as i32;
            isum += (b[4 + j] >> 4) as i32 * q[j + 16] as i32;
        }
        acc += d * x.d[bi] * isum as f32 + m * x.s[bi];
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

/// `R` consecutive Q4_1 weight rows (`rows`, `R * row_bytes` bytes) against `N` activation
/// rows: each block's codes are unpacked once for the `N` activation rows and each block of x
/// loaded once for the `R` weight rows. (R, N) are constants so the accumulators stay in
/// registers; every (weight row, activation row) sum is formed in the same order whatever they
/// are, so a product's bits do not depend on the batch.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_q4_1_avx2<const R: usize, const N: usize>(
    rows: &[u8],
    xs: &[XRow],
    out: &mut [[f32; N]; R],
) {
    use std::arch::x86_64::*;
    let row_bytes = rows.len() / R;
    debug_assert!(xs.len() == N && row_bytes * R == rows.len());
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let mut mins = [[0f32; N]; R];
    for bi in 0..row_bytes / 20 {
        let mut w = [_mm256_setzero_si256(); R];
        let mut d = [0f32; R];
        let mut mn = [0f32; R];
        for r in 0..R {
            let b = rows.as_ptr().add(r * row_bytes + bi * 20);
            d[r] = f16_at_f16c(std::slice::from_raw_parts(b, 2));
            mn[r] = f16_at_f16c(std::slice::from_raw_parts(b.add(2), 2));
            let codes = _mm_loadu_si128(b.add(4) as *const __m128i);
            let lo = _mm_and_si128(codes, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(codes, 4), mask);
            w[r] = _mm256_set_m128i(hi, lo);
        }
        for i in 0..N {
            let x = xs.get_unchecked(i);
            let xq = _mm256_loadu_si256(x.q.as_ptr().add(bi * BLOCK) as *const __m256i);
            let (xd, xs_) = (*x.d.get_unchecked(bi), *x.s.get_unchecked(bi));
            for r in 0..R {
                let p32 = _mm256_madd_epi16(_mm256_maddubs_epi16(w[r], xq), ones);
                let a = acc.get_unchecked_mut(r).get_unchecked_mut(i);
                *a = _mm256_fmadd_ps(_mm256_set1_ps(d[r] * xd), _mm256_cvtepi32_ps(p32), *a);
                *mins.get_unchecked_mut(r).get_unchecked_mut(i) += mn[r] * xs_;
            }
        }
    }
    for r in 0..R {
        for i in 0..N {
            out[r][i] = hsum(acc[r][i]) + mins[r][i];
        }
    }
}

/// `R` consecutive Q8_0 weight rows against `N` activation rows: |q_w| and q_w's signs are
/// taken once per block for the `N` activation rows, x loaded once for the `R` weight rows;
/// the bits of each product do not depend on (R, N).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_q8_0_avx2<const R: usize, const N: usize>(
    rows: &[u8],
    xs: &[XRow],
    out: &mut [[f32; N]; R],
) {
    use std::arch::x86_64::*;
    let row_bytes = rows.len() / R;
    debug_assert!(xs.len() == N && row_bytes * R == rows.len());
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    for bi in 0..row_bytes / 34 {
        let mut w = [_mm256_setzero_si256(); R];
        let mut abs_w = [_mm256_setzero_si256(); R];
        let mut d = [0f32; R];
        for r in 0..R {
            let b = rows.as_ptr().add(r * row_bytes + bi * 34);
            d[r] = f16_at_f16c(std::slice::from_raw_parts(b, 2));
            w[r] = _mm256_loadu_si256(b.add(2) as *const __m256i);
            abs_w[r] = _mm256_sign_epi8(w[r], w[r]);
        }
        for i in 0..N {
            let x = xs.get_unchecked(i);
            let xq = _mm256_loadu_si256(x.q.as_ptr().add(bi * BLOCK) as *const __m256i);
            let xd = *x.d.get_unchecked(bi);
            for r in 0..R {
                // |w| (unsigned, at most 128) times x with w's sign: pairs sum to at most
                // 2 * 128 * 127, within i16.
                let p16 = _mm256_maddubs_epi16(abs_w[r], _mm256_sign_epi8(xq, w[r]));
                let p32 = _mm256_madd_epi16(p16, ones);
                let a = acc.get_unchecked_mut(r).get_unchecked_mut(i);
                *a = _mm256_fmadd_ps(_mm256_set1_ps(d[r] * xd), _mm256_cvtepi32_ps(p32), *a);
            }
        }
    }
    for r in 0..R {
        for i in 0..N {
            out[r][i] = hsum(acc[r][i]);
        }
    }
}

/// `R` consecutive Q4_1 weight rows (`rows`, `R * row_bytes` bytes) against `N` activation
/// rows, two blocks a 512-bit register: the codes (0..15, the unsigned operand) meet x's signed
/// codes in `vpdpbusd`, each i32 lane summing 4 products, 8 lanes a block, scaled by d_w d_x.
/// The minimums' term, sum over blocks of m_w s_x, is a dot product of its own: m_w of 16
/// blocks gathered, then one FMA per row pair. Each block of x is loaded once for the `R`
/// weight rows and each block of w unpacked once for the `N` activation rows; (R, N) are
/// constants so the 2 R N accumulators stay in registers. Every (weight row, activation row)
/// sum is formed in the same order whatever R and N are, so a product's bits do not depend on
/// the batch.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_rows_q4_1_vnni<const R: usize, const N: usize>(
    rows: &[u8],
    xs: &[XRow],
    out: &mut [[f32; N]; R],
) {
    use std::arch::x86_64::*;
    let row_bytes = rows.len() / R;
    debug_assert!(xs.len() == N && row_bytes * R == rows.len());
    let mask = _mm256_set1_epi8(0x0F);
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    let mut acc_min = [[_mm512_setzero_ps(); N]; R];
    let blocks = row_bytes / 20;
    // m_w of each row's blocks from `group` on, flushed into `acc_min` every 16 blocks.
    let mut mins = [[0f32; 16]; R];
    let mut group = 0;
    let flush =
        |mins: &mut [[f32; 16]; R], group: usize, upto: usize, acc_min: &mut [[__m512; N]; R]| {
            let lanes: __mmask16 = ((1u32 << (upto - group)) - 1) as __mmask16;
            for i in 0..N {
                let sx = _mm512_maskz_loadu_ps(lanes, xs.get_unchecked(i).s.as_ptr().add(group));
                for r in 0..R {
                    let mw = _mm512_loadu_ps(mins.get_unchecked(r).as_ptr());
                    let am = acc_min.get_unchecked_mut(r).get_unchecked_mut(i);
                    *am = _mm512_fmadd_ps(mw, sx, *am);
                }
            }
            *mins = [[0f32; 16]; R];
        };
    let mut bi = 0;
    while bi + 2 <= blocks {
        let mut w = [_mm512_setzero_si512(); R];
        let mut dw = [_mm512_setzero_ps(); R];
        for r in 0..R {
            let b0 = rows.as_ptr().add(r * row_bytes + bi * 20);
            let b1 = b0.add(20);
            // (block 0's codes | block 1's codes) -> (lo 0 | lo 1), (hi 0 | hi 1) -> lo 0, hi 0, lo 1, hi 1
            let codes = _mm256_set_m128i(
                _mm_loadu_si128(b1.add(4) as *const __m128i),
                _mm_loadu_si128(b0.add(4) as *const __m128i),
            );
            let lo = _mm256_and_si256(codes, mask);
            let hi = _mm256_and_si256(_mm256_srli_epi16(codes, 4), mask);
            let wr = _mm512_shuffle_i64x2(
                _mm512_castsi256_si512(lo),
                _mm512_castsi256_si512(hi),
                0b01_00_01_00,
            ); // (lo 0, lo 1, hi 0, hi 1)
            w[r] = _mm512_shuffle_i64x2(wr, wr, 0b11_01_10_00); // (lo 0, hi 0, lo 1, hi 1)
            dw[r] = _mm512_mask_blend_ps(
                0xFF00,
                _mm512_set1_ps(f16_at_f16c(std::slice::from_raw_parts(b0, 2))),
                _mm512_set1_ps(f16_at_f16c(std::slice::from_raw_parts(b1, 2))),
            );
            let m = mins.get_unchecked_mut(r);
            m[bi - group] = f16_at_f16c(std::slice::from_raw_parts(b0.add(2), 2));
            m[bi + 1 - group] = f16_at_f16c(std::slice::from_raw_parts(b1.add(2), 2));
        }
        for i in 0..N {
            let x = xs.get_unchecked(i);
            let xq = _mm512_loadu_si512(x.q.as_ptr().add(bi * BLOCK) as *const _);
            let dx = _mm512_loadu_ps(x.d_lanes.as_ptr().add(bi * 8));
            for r in 0..R {
                let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[r], xq);
                let a = acc.get_unchecked_mut(r).get_unchecked_mut(i);
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw[r], dx), *a);
            }
        }
        bi += 2;
        if bi - group == 16 {
            flush(&mut mins, group, bi, &mut acc_min);
            group = bi;
        }
    }
    let mut tail = [[0f32; N]; R];
    if bi < blocks {
        // An odd last block, 256 bits wide, the same arithmetic per lane.
        let mask = _mm256_castsi256_si128(mask);
        for r in 0..R {
            let b = rows.as_ptr().add(r * row_bytes + bi * 20);
            let codes = _mm_loadu_si128(b.add(4) as *const __m128i);
            let lo = _mm_and_si128(codes, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(codes, 4), mask);
            let w = _mm256_set_m128i(hi, lo);
            let dw = _mm256_set1_ps(f16_at_f16c(std::slice::from_raw_parts(b, 2)));
            mins[r][bi - group] = f16_at_f16c(std::slice::from_raw_parts(b.add(2), 2));
            for (i, t) in tail[r].iter_mut().enumerate() {
                let x = xs.get_unchecked(i);
                let xq = _mm256_loadu_si256(x.q.as_ptr().add(bi * BLOCK) as *const __m256i);
                let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), w, xq);
                let dx = _mm256_loadu_ps(x.d_lanes.as_ptr().add(bi * 8));
                *t = hsum(_mm256_mul_ps(
                    _mm256_cvtepi32_ps(dot),
                    _mm256_mul_ps(dw, dx),
                ));
            }
        }
        bi += 1;
    }
    if bi > group {
        flush(&mut mins, group, bi, &mut acc_min);
    }
    for r in 0..R {
        for i in 0..N {
            out[r][i] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][i], acc_min[r][i])) + tail[r][i];
        }
    }
}

/// `R` consecutive Q8_0 weight rows against `N` activation rows, two blocks a 512-bit register.
/// `vpdpbusd` multiplies unsigned by signed bytes, so x enters as x + 128 (`XRow::u`) and each
/// lane starts from -128 sum(w) of its 4 weights, computed once per block pair for all rows;
/// as in the Q4_1 kernel, x is loaded once for the `R` weight rows and the bits of each
/// product do not depend on (R, N).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn dot_rows_q8_0_vnni<const R: usize, const N: usize>(
    rows: &[u8],
    xs: &[XRow],
    out: &mut [[f32; N]; R],
) {
    use std::arch::x86_64::*;
    let row_bytes = rows.len() / R;
    debug_assert!(xs.len() == N && row_bytes * R == rows.len());
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    let blocks = row_bytes / 34;
    let mut bi = 0;
    while bi + 2 <= blocks {
        let mut w = [_mm512_setzero_si512(); R];
        let mut start = [_mm512_setzero_si512(); R];
        let mut dw = [_mm512_setzero_ps(); R];
        for r in 0..R {
            let b0 = rows.as_ptr().add(r * row_bytes + bi * 34);
            let b1 = b0.add(34);
            w[r] = _mm512_inserti64x4(
                _mm512_castsi256_si512(_mm256_loadu_si256(b0.add(2) as *const __m256i)),
                _mm256_loadu_si256(b1.add(2) as *const __m256i),
                1,
            );
            start[r] = _mm512_sub_epi32(
                _mm512_setzero_si512(),
                _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(-128), w[r]),
            );
            dw[r] = _mm512_mask_blend_ps(
                0xFF00,
                _mm512_set1_ps(f16_at_f16c(std::slice::from_raw_parts(b0, 2))),
                _mm512_set1_ps(f16_at_f16c(std::slice::from_raw_parts(b1, 2))),
            );
        }
        for i in 0..N {
            let x = xs.get_unchecked(i);
            let xu = _mm512_loadu_si512(x.u.as_ptr().add(bi * BLOCK) as *const _);
            let dx = _mm512_loadu_ps(x.d_lanes.as_ptr().add(bi * 8));
            for r in 0..R {
                let dot = _mm512_dpbusd_epi32(start[r], xu, w[r]);
                let a = acc.get_unchecked_mut(r).get_unchecked_mut(i);
                *a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(dw[r], dx), *a);
            }
        }
        bi += 2;
    }
    let mut tail = [[0f32; N]; R];
    if bi < blocks {
        for (r, tail) in tail.iter_mut().enumerate() {
            let b = rows.as_ptr().add(r * row_bytes + bi * 34);
            let w = _mm256_loadu_si256(b.add(2) as *const __m256i);
            let start = _mm256_sub_epi32(
                _mm256_setzero_si256(),
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8(-128), w),
            );
            let dw = _mm256_set1_ps(f16_at_f16c(std::slice::from_raw_parts(b, 2)));
            for (i, t) in tail.iter_mut().enumerate() {
                let x = xs.get_unchecked(i);
                let xu = _mm256_loadu_si256(x.u.as_ptr().add(bi * BLOCK) as *const __m256i);
                let dot = _mm256_dpbusd_epi32(start, xu, w);
                let dx = _mm256_loadu_ps(x.d_lanes.as_ptr().add(bi * 8));
                *t = hsum(_mm256_mul_ps(
                    _mm256_cvtepi32_ps(dot),
                    _mm256_mul_ps(dw, dx),
                ));
            }
        }
    }
    for r in 0..R {
        for i in 0..N {
            out[r][i] = _mm512_reduce_add_ps(acc[r][i]) + tail[r][i];
        }
    }
}

/// Weight rows a task takes together: the SIMD kernels read each block of x once for up to
/// this many of them when few sequences decode.
const ROW_GROUP: usize = 4;

/// Dot products of `g` consecutive weight rows (`rows`, `g` rows of equal length) with every
/// activation row, into `out` ((g, m) row-major), on `kernel` (which the caller has checked
/// this CPU runs).
fn dot_rows(
    format: BlockFormat,
    rows: &[u8],
    g: usize,
    xs: &[XRow],
    out: &mut [f32],
    kernel: QKernel,
) {
    let m = xs.len();
    let row_bytes = rows.len() / g;
    #[cfg(target_arch = "x86_64")]
    if kernel != QKernel::Portable {
        // Passes of 8 activation rows, then what is left as 4, 2 and 1.
        let mut i0 = 0;
        while i0 < m {
            let n = [ROWS_PER_PASS, 4, 2, 1]
                .into_iter()
                .find(|&n| n <= m - i0)
                .unwrap();
            let x = &xs[i0..i0 + n];
            // Weight rows at once for n activation rows: R n accumulators and R unpacked
            // blocks, within the vector registers.
            let r = if g < ROW_GROUP {
                1
            } else {
                (ROW_GROUP * 2 / n).clamp(1, ROW_GROUP)
            };
            let mut first = 0;
            while first < g {
                let r = if first + r <= g { r } else { 1 };
                let w = &rows[first * row_bytes..(first + r) * row_bytes];
                let o = &mut out[first * m..];
                // SAFETY: `kernel` is one of `QKernel::available()`, on this CPU and OS; every
                // activation row has as many blocks as a weight row (and, for the AVX-512
                // kernel, its lanes).
                unsafe {
                    match (r, n) {
                        (1, 8) => pass::<1, 8>(kernel, format, w, x, o, m, i0),
                        (1, 4) => pass::<1, 4>(kernel, format, w, x, o, m, i0),
                        (2, 4) => pass::<2, 4>(kernel, format, w, x, o, m, i0),
                        (1, 2) => pass::<1, 2>(kernel, format, w, x, o, m, i0),
                        (4, 2) => pass::<4, 2>(kernel, format, w, x, o, m, i0),
                        (1, 1) => pass::<1, 1>(kernel, format, w, x, o, m, i0),
                        (4, 1) => pass::<4, 1>(kernel, format, w, x, o, m, i0),
                        _ => unreachable!("no pass of {r} weight rows by {n}"),
                    }
                }
                first += r;
            }
            i0 += n;
        }
        return;
    }
    let dot = match format {
        BlockFormat::Q4_1 => dot_scalar_q4_1,
        BlockFormat::Q8_0 => dot_scalar_q8_0,
    };
    for (j, row) in rows.chunks_exact(row_bytes).enumerate() {
        for (o, x) in out[j * m..(j + 1) * m].iter_mut().zip(xs) {
            *o = dot(row, x);
        }
    }
}

/// One pass of a SIMD kernel: `R` weight rows (`rows`) by the `N` activation rows `xs`, written
/// into `out` ((R, m) row-major) at columns `i0..i0 + N`. The caller checks that this CPU runs
/// `kernel` (AVX2 or AVX-512 VNNI).
#[cfg(target_arch = "x86_64")]
unsafe fn pass<const R: usize, const N: usize>(
    kernel: QKernel,
    format: BlockFormat,
    rows: &[u8],
    xs: &[XRow],
    out: &mut [f32],
    m: usize,
    i0: usize,
) {
    use BlockFormat::*;
    let mut o = [[0f32; N]; R];
    match (kernel, format) {
        (QKernel::Avx512Vnni, Q4_1) => dot_rows_q4_1_vnni::<R, N>(rows, xs, &mut o),
        (QKernel::Avx512Vnni, Q8_0) => dot_rows_q8_0_vnni::<R, N>(rows, xs, &mut o),
        (_, Q4_1) => dot_rows_q4_1_avx2::<R, N>(rows, xs, &mut o),
        (_, Q8_0) => dot_rows_q8_0_avx2::<R, N>(rows, xs, &mut o),
    }
    for (r, o) in o.iter().enumerate() {
        out[r * m + i0..r * m + i0 + N].copy_from_slice(o);
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

    /// The product on a kernel the caller names (the tests check each against the others).
    #[cfg(test)]
    fn compute(&self, x: &[f32], m: usize, kernel: QKernel) -> Vec<f32> {
        product(std::slice::from_ref(self), x, m, kernel)
    }
}

/// `x` (m, k) times every part's (n_j, k) weights, side by side: (m, sum n_j). The activations
/// are quantized once, and the parts' rows are shared among the threads as one range (in
/// groups of up to `ROW_GROUP` rows of one part), in one dispatch of the pool.
fn product(parts: &[QuantMatrix], x: &[f32], m: usize, kernel: QKernel) -> Vec<f32> {
    let (format, k) = (parts[0].format, parts[0].k);
    debug_assert!(parts.iter().all(|p| p.format == format && p.k == k));
    let row_bytes = k / BLOCK * format.block_bytes();
    let n: usize = parts.iter().map(|p| p.n).sum();
    let xq: Vec<XRow> = x.chunks_exact(k).map(|r| quantize_row(r, kernel)).collect();
    let mut out_t = vec![0f32; n * m]; // (n, m): each range of weight rows is one task's
    let out_ptr = SendPtr(out_t.as_mut_ptr());
    // candle's own worker pool, so our kernel and candle's never compete for the cores.
    candle_core::utils::barrier_pool().execute_chunked(n, |rows| {
        let out_ptr = &out_ptr;
        let mut first = 0; // the part's first row in (n, m)
        for part in parts {
            let (lo, hi) = (rows.start.max(first), rows.end.min(first + part.n));
            let mut row = lo;
            while row < hi {
                let g = ROW_GROUP.min(hi - row);
                let w = &part.data[(row - first) * row_bytes..(row - first + g) * row_bytes];
                // SAFETY: ranges of rows are disjoint across tasks, so each (row, ..) slice of
                // `out_t` is written by exactly one thread; `out_t` outlives the call.
                let out = unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add(row * m), g * m) };
                dot_rows(format, w, g, &xq, out, kernel);
                row += g;
            }
            first += part.n;
        }
    });
    // (n, m) -> (m, n)
    let mut out = vec![0f32; m * n];
    for (r, col) in out_t.chunks_exact(m).enumerate() {
        for (i, &v) in col.iter().enumerate() {
            out[i * n + r] = v;
        }
    }
    out
}

/// Matrices of one format and width that multiply the same activations (a layer's q, k and v
/// projections; its gate and up), as one product: one quantization of x and one dispatch of
/// the pool instead of one each, which is what a decode step of a small model spends much of
/// its time on. Each part's result is the bits its own `QuantMatrix::forward` gives.
#[derive(Debug, Clone)]
pub struct QuantMatrices(Vec<QuantMatrix>);

impl QuantMatrices {
    /// The parts (each shares its blocks, no copy), or `None` unless there are some and all
    /// have the same format and width.
    pub fn new(parts: Vec<QuantMatrix>) -> Option<Self> {
        let first = parts.first()?;
        let same = parts
            .iter()
            .all(|p| p.format == first.format && p.k == first.k);
        same.then_some(Self(parts))
    }

    /// `x`: (m, k) -> one (m, n_j) per part
    pub fn forward(&self, x: &Tensor) -> Result<Vec<Tensor>> {
        let y = x.contiguous()?.apply_op1_no_bwd(self)?; // (m, sum n_j)
        let mut first = 0;
        self.0
            .iter()
            .map(|p| {
                let part = y.narrow(1, first, p.n)?.contiguous();
                first += p.n;
                part
            })
            .collect()
    }
}

impl CustomOp1 for QuantMatrices {
    fn name(&self) -> &'static str {
        "quant-matmuls"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        product_op(self.name(), &self.0, storage, layout)
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
        product_op(self.name(), std::slice::from_ref(self), storage, layout)
    }
}

/// The custom op of one matrix or of several side by side: `storage` (m, k) f32 -> (m, sum n_j).
fn product_op(
    name: &str,
    parts: &[QuantMatrix],
    storage: &CpuStorage,
    layout: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (m, k) = layout.shape().dims2()?;
    let (want, n) = (parts[0].k, parts.iter().map(|p| p.n).sum::<usize>());
    if k != want {
        candle_core::bail!("{name}: input has {k} columns, the weights {want}");
    }
    let x = match storage {
        CpuStorage::F32(v) => &v[layout.start_offset()..layout.start_offset() + m * k],
        _ => candle_core::bail!("{name} takes f32 input"),
    };
    Ok((
        CpuStorage::F32(product(parts, x, m, QKernel::chosen())),
        Shape::from((m, n)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    /// Deterministic pseudo-random values in [-1, 1).
    use crate::kernels::check::lcg_values as values;

    /// Every kernel this machine runs, saying which it cannot.
    fn kernels() -> Vec<QKernel> {
        let have = QKernel::available();
        for k in [QKernel::Avx2, QKernel::Avx512Vnni] {
            if !have.contains(&k) {
                eprintln!(
                    "skipped the {} kernel: this CPU or OS lacks it ({})",
                    k.name(),
                    crate::cpu::CpuFeatures::get().describe()
                );
            }
        }
        have
    }

    /// Both formats, every kernel, for 1, 2, 3 and 5 rows and for a full pass of 8 plus 3
    /// (every pass shape: 8, 4, 2 and 1 activation rows by 1, 2 and 4 weight rows, and a
    /// group of fewer than 4 weight rows at the end of 41), on an odd and an even number of
    /// blocks (the AVX-512 kernel takes blocks in pairs, and Q4_1's minimums
    /// 16 blocks at a time: 35 blocks is two groups and a last odd block), against candle's
    /// dequantized weights times the activations as the kernel quantizes them (q * d), in
    /// f64; what remains is f32 rounding.
    #[test]
    fn every_kernel_equals_the_dequantized_product() {
        let dev = Device::Cpu;
        let (n, m) = (41, 11);
        for k in [96, 128, 35 * BLOCK] {
            let w = Tensor::from_vec(values(n * k, 1), (n, k), &dev).unwrap();
            let xs = values(m * k, 2);
            let xq: Vec<f64> = xs
                .chunks_exact(k)
                .flat_map(|row| {
                    let r = quantize_row(row, QKernel::Portable);
                    (0..k)
                        .map(|c| r.q[c] as f64 * r.d[c / BLOCK] as f64)
                        .collect::<Vec<_>>()
                })
                .collect();
            for (dtype, format) in [
                (GgmlDType::Q4_1, BlockFormat::Q4_1),
                (GgmlDType::Q8_0, BlockFormat::Q8_0),
            ] {
                let q = QTensor::quantize(&w, dtype).unwrap();
                let wd = q.dequantize(&dev).unwrap().to_vec2::<f32>().unwrap();
                let mat = QuantMatrix::new(format, q.data().unwrap().into_owned(), n, k).unwrap();
                for kernel in kernels() {
                    for rows in [1, 2, 3, 5, m] {
                        let got = mat.compute(&xs[..rows * k], rows, kernel);
                        for i in 0..rows {
                            for j in 0..n {
                                let want: f64 =
                                    (0..k).map(|c| wd[j][c] as f64 * xq[i * k + c]).sum();
                                let g = got[i * n + j] as f64;
                                assert!(
                                    (g - want).abs() < 1e-4 * (1.0 + want.abs()),
                                    "{format:?} {} k={k} rows={rows} ({i},{j}): {g} vs {want}",
                                    kernel.name()
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// A row's product does not depend on the rows beside it (passes of 8, 4, 2 and 1, by 1, 2
    /// or 4 weight rows), bit for bit: what keeps batched generation equal to one sequence's.
    #[test]
    fn a_row_gives_the_same_bits_in_any_batch() {
        let dev = Device::Cpu;
        let (n, m) = (26, 11);
        for k in [64, 96, 35 * BLOCK] {
            let w = Tensor::from_vec(values(n * k, 3), (n, k), &dev).unwrap();
            let xs = values(m * k, 4);
            for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
                let q = QTensor::quantize(&w, dtype).unwrap();
                let mat = QuantMatrix::from_qtensor(&q).unwrap().unwrap();
                for kernel in kernels() {
                    let all = mat.compute(&xs, m, kernel);
                    for i in 0..m {
                        let one = mat.compute(&xs[i * k..(i + 1) * k], 1, kernel);
                        assert_eq!(
                            one,
                            all[i * n..(i + 1) * n],
                            "{dtype:?} {} k={k} row {i}",
                            kernel.name()
                        );
                    }
                    for rows in [2, 3, 6] {
                        let some = mat.compute(&xs[..rows * k], rows, kernel);
                        assert_eq!(
                            some,
                            all[..rows * n],
                            "{dtype:?} {} k={k} first {rows} rows",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }

    /// Matrices multiplied together (`QuantMatrices`: one range of rows over all of them, groups
    /// cut at each part's end) give each part's own product, bit for bit, for one sequence and
    /// for a batch; parts that differ in format or width are refused.
    #[test]
    fn matrices_together_give_each_ones_bits() {
        let dev = Device::Cpu;
        let k = 3 * BLOCK;
        let xs = values(11 * k, 5);
        for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
            let parts: Vec<QuantMatrix> = [(37, 6), (10, 7), (3, 8)]
                .into_iter()
                .map(|(n, seed)| {
                    let w = Tensor::from_vec(values(n * k, seed), (n, k), &dev).unwrap();
                    let q = QTensor::quantize(&w, dtype).unwrap();
                    QuantMatrix::from_qtensor(&q).unwrap().unwrap()
                })
                .collect();
            let group = QuantMatrices::new(parts.clone()).unwrap();
            for m in [1, 3, 11] {
                let x = Tensor::from_vec(xs[..m * k].to_vec(), (m, k), &dev).unwrap();
                let together = group.forward(&x).unwrap();
                for (p, t) in parts.iter().zip(&together) {
                    let alone = p.forward(&x).unwrap().to_vec2::<f32>().unwrap();
                    assert_eq!(t.to_vec2::<f32>().unwrap(), alone, "{dtype:?} m={m}");
                }
            }
        }
        let w = Tensor::from_vec(values(4 * 2 * BLOCK, 9), (4, 2 * BLOCK), &dev).unwrap();
        let narrow = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let narrow = QuantMatrix::from_qtensor(&narrow).unwrap().unwrap();
        let w = Tensor::from_vec(values(4 * k, 9), (4, k), &dev).unwrap();
        let q8 = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let q4 = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let (q8, q4) = (
            QuantMatrix::from_qtensor(&q8).unwrap().unwrap(),
            QuantMatrix::from_qtensor(&q4).unwrap().unwrap(),
        );
        assert!(QuantMatrices::new(vec![q4.clone(), q8]).is_none());
        assert!(QuantMatrices::new(vec![q4, narrow]).is_none());
        assert!(QuantMatrices::new(vec![]).is_none());
    }

    /// A weight of -128 (|w| = 128 as an unsigned byte) against activations of ±127: the
    /// largest products the Q8_0 kernels meet (the AVX2 kernel's i16 pair sums, the AVX-512
    /// one's x + 128 = 255 and 255; and an odd last block).
    #[test]
    fn q8_0_extremes_do_not_saturate() {
        for k in [64, 96] {
            let mut data = Vec::new();
            for _ in 0..k / BLOCK {
                data.extend_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
                data.extend(std::iter::repeat_n(0x80u8, BLOCK)); // -128
            }
            let mat = QuantMatrix::new(BlockFormat::Q8_0, data, 1, k).unwrap();
            for sign in [1.0f32, -1.0] {
                let x = vec![sign; k]; // quantizes to ±127 with d = 1/127
                let want = -128.0 * sign * k as f32;
                for kernel in kernels() {
                    let got = mat.compute(&x, 1, kernel)[0];
                    assert!(
                        (got - want).abs() < 1e-3 * want.abs(),
                        "{} k={k}: {got} vs {want}",
                        kernel.name()
                    );
                }
            }
        }
    }
}
