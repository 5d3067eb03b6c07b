//! A bf16 GEMM with f32 accumulation for CPUs with AVX512-BF16: `C = A · B` on f32 operands
//! that are rounded to bf16 as they are packed, as PyTorch's CPU autocast computes a linear
//! layer (its outputs are then rounded to bf16 too; ours stay f32). Training keeps f32 master
//! weights and f32 everywhere else; only the matmuls of the linear layers and the LM head come
//! here, while `autocast` is on.
//!
//! Layout (BLIS, one level of cache blocking): for each block of NC columns and KC depth, B is
//! packed into tiles of NR = 32 columns, each depth pair of a column side by side
//! (`vdpbf16ps` multiplies lane j's two bf16 with the broadcast pair of one row of A and adds
//! both products into lane j's f32); A's rows are packed once per depth block into tiles of
//! MR = 14 rows (a row's depth pair as one u32); the threads take (row chunk, column group)
//! tasks of 14 x 32 microkernels: 28 accumulators, two loads of B and 14 broadcasts of A per depth pair, written
//! into C or added to it. Edges are padded with zeros in the packs, so the microkernel never
//! branches; an edge tile goes through a copy. Packing converts with `vcvtne2ps2bf16`.
//!
//! `gemm_bf16_portable` is the same arithmetic in scalar code: the reference the SIMD kernel is
//! tested against, and the path on CPUs without AVX512-BF16 (where autocast stays off).

use candle_core::{Result, Storage, Tensor};
use rayon::prelude::*;
use std::cell::Cell;
use std::marker::PhantomData;

const MR: usize = 14;
const NR: usize = 32;
const KC: usize = 256; // depth per packed block (even)
const MC: usize = MR * 8;
const NC: usize = NR * 32;

/// f32 -> bf16 bits, rounding to nearest even (NaN stays NaN).
#[inline]
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[inline]
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A strided f32 matrix view: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A row-major matrix of `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix of `cols` columns: element (i, j) is its (j, i).
    pub fn columns(data: &'a [f32], cols: usize) -> Self {
        Self {
            data,
            rs: 1,
            cs: cols,
        }
    }

    #[inline]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// `c` (m, n, row-major) = `a` (m, k) · `b` (k, n), inputs rounded to bf16, products summed in
/// f32, in scalar code.
pub fn gemm_bf16_portable(m: usize, n: usize, k: usize, a: View, b: View, c: &mut [f32]) {
    assert_eq!(c.len(), m * n);
    let ab: Vec<f32> = (0..m * k)
        .map(|x| from_bf16(to_bf16(a.at(x / k, x % k))))
        .collect();
    let bb: Vec<f32> = (0..k * n)
        .map(|x| from_bf16(to_bf16(b.at(x / n, x % n))))
        .collect();
    c.par_chunks_mut(n.max(1)).enumerate().for_each(|(i, row)| {
        for (j, out) in row.iter_mut().enumerate() {
            *out = (0..k).map(|p| ab[i * k + p] * bb[p * n + j]).sum();
        }
    });
}

/// Which bf16 kernel this CPU runs, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AMX tiles: `tdpbf16ps`, a 16 x 16 x 32 product per instruction.
    Amx,
    /// AVX512-BF16: `vdpbf16ps`, 16 lanes x 2 products per instruction.
    Avx512Bf16,
    /// Scalar code (the reference).
    Portable,
}

impl Kernel {
    /// The best kernel the CPU and OS allow (detected once).
    pub fn best() -> Kernel {
        let f = crate::kernels::cpu::CpuFeatures::get();
        match (f.amx_enabled, f.avx512_bf16) {
            (true, true) => Kernel::Amx, // AMX's packing uses AVX512-BF16's conversions
            (false, true) => Kernel::Avx512Bf16,
            _ => Kernel::Portable,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "amx-bf16",
            Kernel::Avx512Bf16 => "avx512-bf16",
            Kernel::Portable => "portable",
        }
    }
}

impl Kernel {
    /// Every SIMD kernel this CPU and OS allow, best first (the portable one is always there).
    pub fn simd_here() -> Vec<Kernel> {
        let f = crate::kernels::cpu::CpuFeatures::get();
        let mut v = Vec::new();
        if f.amx_enabled && f.avx512_bf16 {
            v.push(Kernel::Amx);
        }
        if f.avx512_bf16 {
            v.push(Kernel::Avx512Bf16);
        }
        v
    }
}

/// Whether this CPU has any SIMD bf16 kernel (AMX or AVX512-BF16): what `autocast` needs.
pub fn has_simd_kernel() -> bool {
    Kernel::best() != Kernel::Portable
}

/// Whether this CPU's bf16 kernel is faster than candle's f32 GEMM, where training's
/// `precision = "auto"` picks bf16. Measured (`srlm bench gemm`, `srlm bench train`): AMX
/// 2.8-3.7x the f32 GEMM on Sapphire Rapids; AVX512-BF16 1.4-2.2x on AMD Zen 4, whose 512-bit
/// f32 FMAs run at the rate of its 256-bit ones; but on an Intel Xeon without usable AMX,
/// where the f32 GEMM has AVX-512 FMAs at full width, an f32 training step is 1.6x a bf16 one
/// (2026-12-05), so f32 there.
pub fn beats_f32() -> bool {
    let f = crate::kernels::cpu::CpuFeatures::get();
    match Kernel::best() {
        Kernel::Amx => true,
        Kernel::Avx512Bf16 => f.amd,
        Kernel::Portable => false,
    }
}

/// `c` (m, n, row-major) = `a` (m, k) · `b` (k, n) with the best kernel this CPU has.
pub fn gemm_bf16(m: usize, n: usize, k: usize, a: View, b: View, c: &mut [f32]) {
    gemm_bf16_with(Kernel::best(), m, n, k, a, b, c)
}

/// `gemm_bf16` with a chosen kernel (one the CPU has: see `Kernel::best`).
pub fn gemm_bf16_with(
    kernel: Kernel,
    m: usize,
    n: usize,
    k: usize,
    a: View,
    b: View,
    c: &mut [f32],
) {
    assert_eq!(c.len(), m * n);
    // The SIMD paths read without bounds checks: every element must lie inside its slice.
    let last = |v: &View, r: usize, c: usize| (r.max(1) - 1) * v.rs + (c.max(1) - 1) * v.cs;
    if m * k > 0 {
        assert!(
            last(&a, m, k) < a.data.len(),
            "A ({m}, {k}) does not fit its buffer"
        );
    }
    if k * n > 0 {
        assert!(
            last(&b, k, n) < b.data.len(),
            "B ({k}, {n}) does not fit its buffer"
        );
    }
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Amx => {
            let f = crate::kernels::cpu::CpuFeatures::get();
            assert!(f.amx_enabled && f.avx512_bf16, "AMX is not usable here");
            amx::gemm(m, n, k, a, b, c)
        }
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 => {
            assert!(
                crate::kernels::cpu::CpuFeatures::get().avx512_bf16,
                "no AVX512-BF16 here"
            );
            gemm_blocked(m, n, k, a, Operand::View(b), c)
        }
        _ => gemm_bf16_portable(m, n, k, a, b, c),
    }
}

/// B as `gemm_blocked` reads it: a view packed block by block as the product goes, or blocks
/// packed beforehand (`pack_all`, in the order the product walks them).
#[cfg(target_arch = "x86_64")]
enum Operand<'a> {
    View(View<'a>),
    Packed(&'a [Vec<u16>]),
}

/// B's blocks in the order `gemm_blocked` walks them (columns by NC, then depth by KC).
#[cfg(target_arch = "x86_64")]
fn pack_all(b: View, k: usize, n: usize) -> Vec<Vec<u16>> {
    let mut blocks = Vec::new();
    for jc in (0..n).step_by(NC) {
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let mut bp = Vec::new();
            pack_b(b, pc, kc, kc.div_ceil(2), jc, NC.min(n - jc), &mut bp);
            blocks.push(bp);
        }
    }
    blocks
}

#[cfg(target_arch = "x86_64")]
fn gemm_blocked(m: usize, n: usize, k: usize, a: View, b: Operand, c: &mut [f32]) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    // A's depth blocks (every row, KC of depth) are packed once each: kept for the next column
    // block of B when there is one, dropped after their last use (the head's dx, whose A is
    // (tokens, vocab), is never packed whole).
    let tiles_m = m.div_ceil(MR);
    let row_chunks = tiles_m.div_ceil(MC / MR);
    let c_ptr = SendPtr(c.as_mut_ptr());
    let mut a_blocks: Vec<Option<Vec<u32>>> = vec![None; k.div_ceil(KC)];
    let mut scratch: Vec<u16> = Vec::new();
    let mut packed_blocks = match b {
        Operand::Packed(blocks) => Some(blocks.iter()),
        Operand::View(_) => None,
    };
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let tiles_n = nc.div_ceil(NR);
        // Tasks are (row chunk, column group): enough of them to keep every thread busy when A
        // has few rows (the LM head over a short batch).
        let col_groups = (2 * rayon::current_num_threads())
            .div_ceil(row_chunks)
            .clamp(1, tiles_n);
        let tiles_per_group = tiles_n.div_ceil(col_groups);
        let last_column_block = jc + NC >= n;
        for (block, pc) in (0..k).step_by(KC).enumerate() {
            let kc = KC.min(k - pc);
            let pairs = kc.div_ceil(2);
            let accumulate = pc > 0;
            if a_blocks[block].is_none() {
                a_blocks[block] = Some(pack_a(a, m, pc, kc));
            }
            let bp: &[u16] = match (&b, packed_blocks.as_mut()) {
                (_, Some(blocks)) => blocks.next().expect("one packed block per (jc, pc)"),
                (Operand::View(b), None) => {
                    pack_b(*b, pc, kc, pairs, jc, nc, &mut scratch);
                    &scratch
                }
                (Operand::Packed(_), None) => unreachable!(),
            };
            let c_ptr = &c_ptr;
            let ap: &[u32] = a_blocks[block].as_deref().unwrap_or_default();
            (0..row_chunks * col_groups)
                .into_par_iter()
                .for_each(|task| {
                    let (chunk, group) = (task / col_groups, task % col_groups);
                    let mut tile = [0f32; MR * NR];
                    let tiles_j =
                        group * tiles_per_group..tiles_n.min((group + 1) * tiles_per_group);
                    for jt in tiles_j {
                        let bt = &bp[jt * pairs * 2 * NR..][..pairs * 2 * NR];
                        let (j0, nr) = (jc + jt * NR, NR.min(nc - jt * NR));
                        let tiles_i = chunk * (MC / MR)..tiles_m.min((chunk + 1) * (MC / MR));
                        for it in tiles_i {
                            let at = &ap[it * pairs * MR..][..pairs * MR];
                            let (i0, mr) = (it * MR, MR.min(m - it * MR));
                            // SAFETY: rows i0..i0 + mr and columns j0..j0 + nr of C belong to
                            // this task alone (its row chunk and column group); `at` holds
                            // pairs * MR u32 and `bt` pairs * 2 * NR u16, as the kernel reads;
                            // AVX512-BF16 was checked by `gemm_bf16_with`.
                            unsafe {
                                let c_tile = c_ptr.0.add(i0 * n + j0);
                                if mr == MR && nr == NR {
                                    kernel(pairs, at.as_ptr(), bt.as_ptr(), c_tile, n, accumulate);
                                    continue;
                                }
                                // An edge tile: through a copy of C's rows and columns there.
                                for i in 0..mr {
                                    let row = std::slice::from_raw_parts_mut(c_tile.add(i * n), nr);
                                    if accumulate {
                                        tile[i * NR..][..nr].copy_from_slice(row);
                                    }
                                }
                                let t = tile.as_mut_ptr();
                                kernel(pairs, at.as_ptr(), bt.as_ptr(), t, NR, accumulate);
                                for i in 0..mr {
                                    let row = std::slice::from_raw_parts_mut(c_tile.add(i * n), nr);
                                    row.copy_from_slice(&tile[i * NR..][..nr]);
                                }
                            }
                        }
                    }
                });
            if last_column_block {
                a_blocks[block] = None;
            }
        }
    }
}

struct SendPtr(*mut f32);
// SAFETY: each task of `gemm_blocked` writes only the tiles of C it owns.
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// B's block (pc..pc+kc, jc..jc+nc) as tiles of NR columns: for each of `pairs` depth pairs p,
/// column j's (B[2p][j], B[2p+1][j]) side by side; zeros past the edges.
#[inline(never)]
fn pack_b(b: View, pc: usize, kc: usize, pairs: usize, jc: usize, nc: usize, out: &mut Vec<u16>) {
    debug_assert!(pairs * 2 >= kc);
    let tiles = nc.div_ceil(NR);
    out.clear();
    out.resize(tiles * pairs * 2 * NR, 0);
    out.par_chunks_mut(pairs * 2 * NR)
        .enumerate()
        .for_each(|(t, tile)| {
            let j0 = jc + t * NR;
            let nr = NR.min(jc + nc - j0);
            #[cfg(target_arch = "x86_64")]
            if nr == NR && crate::kernels::cpu::CpuFeatures::get().avx512_bf16 {
                // SAFETY: AVX512-BF16 is present; the tile's columns j0..j0 + NR and depths
                // pc..pc + kc lie inside B (checked by `gemm_bf16_with`).
                if b.cs == 1 {
                    return unsafe { simd::pack_b_rows(b, pc, kc, pairs, j0, tile) };
                }
                if b.rs == 1 {
                    return unsafe { simd::pack_b_cols(b, pc, kc, pairs, j0, tile) };
                }
            }
            for p in 0..pairs {
                let row = &mut tile[p * 2 * NR..][..2 * NR];
                for d in 0..2 {
                    let kk = 2 * p + d;
                    if kk >= kc {
                        continue;
                    }
                    for j in 0..nr {
                        row[2 * j + d] = to_bf16(b.at(pc + kk, j0 + j));
                    }
                }
            }
        });
}

/// A's block (every row, depths pc..pc + kc) as tiles of MR rows: in tile t, pair p, row i is
/// the u32 at `(t * pairs + p) * MR + i`, the row's two bf16 side by side (low half the even
/// depth); zeros past the edges. Tiles are packed in parallel, with SIMD conversions when A's
/// rows or its columns are contiguous.
#[cfg(target_arch = "x86_64")]
fn pack_a(a: View, m: usize, pc: usize, kc: usize) -> Vec<u32> {
    let pairs = kc.div_ceil(2);
    let mut out = vec![0u32; m.div_ceil(MR) * pairs * MR];
    // The block as a view of its own: column 0 is depth pc.
    let a = View {
        data: &a.data[pc * a.cs..],
        ..a
    };
    out.par_chunks_mut(pairs * MR)
        .enumerate()
        .for_each(|(t, tile)| {
            let (i0, mr) = (t * MR, MR.min(m - t * MR));
            // SAFETY: AVX512-BF16 was checked by `gemm_bf16_with`, and so was that rows
            // i0..i0 + mr and depths pc..pc + kc lie inside A's buffer.
            unsafe {
                if a.cs == 1 {
                    return simd::pack_a_rows(a, i0, mr, kc, tile);
                }
                if a.rs == 1 {
                    return simd::pack_a_cols(a, i0, mr, kc, tile);
                }
            }
            for i in 0..mr {
                for p in 0..pairs {
                    let lo = to_bf16(a.at(i0 + i, 2 * p)) as u32;
                    let hi = match 2 * p + 1 < kc {
                        true => to_bf16(a.at(i0 + i, 2 * p + 1)) as u32,
                        false => 0,
                    };
                    tile[p * MR + i] = lo | (hi << 16);
                }
            }
        });
    out
}

/// The 14 x 32 tile of `A_tile · B_tile` over `pairs` depth pairs, written into C's tile at
/// `c` (rows `ldc` floats apart), or added to what it holds (`accumulate`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(
    pairs: usize,
    ap: *const u32,
    bp: *const u16,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..pairs {
        // SAFETY: the caller's buffers hold `pairs` steps; __m512bh and __m512i are both 64
        // bytes of lanes.
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * 2 * NR) as *const _));
        let b1: __m512bh =
            std::mem::transmute(_mm512_loadu_si512(bp.add(p * 2 * NR + NR) as *const _));
        let ar = ap.add(p * MR);
        for (i, acc) in acc.iter_mut().enumerate() {
            let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ar.add(i) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        let row = c.add(i * ldc);
        let (mut lo, mut hi) = (acc[0], acc[1]);
        if accumulate {
            lo = _mm512_add_ps(lo, _mm512_loadu_ps(row));
            hi = _mm512_add_ps(hi, _mm512_loadu_ps(row.add(16)));
        }
        _mm512_storeu_ps(row, lo);
        _mm512_storeu_ps(row.add(16), hi);
    }
}

/// Packing with AVX512-BF16's conversions (`vcvtne2ps2bf16` rounds to nearest even, as
/// `to_bf16`; NaN stays NaN).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{View, MR, NR};
    use std::arch::x86_64::*;

    /// `pack_b`'s tile when B's rows are contiguous (`cs == 1`): depth rows 2p and 2p + 1,
    /// 16 columns at a time, converted together and interleaved column by column.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_b_rows(
        b: View,
        pc: usize,
        kc: usize,
        pairs: usize,
        j0: usize,
        tile: &mut [u16],
    ) {
        // Lane 2j takes element j of the first row, lane 2j + 1 element j of the second.
        let idx: [u16; 32] = std::array::from_fn(|l| ((l % 2) * 16 + l / 2) as u16);
        let idx = _mm512_loadu_si512(idx.as_ptr() as *const _);
        let base = b.data.as_ptr();
        for p in 0..pairs {
            let k0 = 2 * p;
            for h in 0..2 {
                let col = j0 + 16 * h;
                let r0 = match k0 < kc {
                    true => _mm512_loadu_ps(base.add((pc + k0) * b.rs + col)),
                    false => _mm512_setzero_ps(),
                };
                let r1 = match k0 + 1 < kc {
                    true => _mm512_loadu_ps(base.add((pc + k0 + 1) * b.rs + col)),
                    false => _mm512_setzero_ps(),
                };
                let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(r1, r0));
                let pairs_v = _mm512_permutexvar_epi16(idx, both);
                _mm512_storeu_si512(
                    tile.as_mut_ptr().add(p * 2 * NR + 32 * h) as *mut _,
                    pairs_v,
                );
            }
        }
    }

    /// `pack_b`'s tile when B's columns are contiguous (`rs == 1`, B = Wᵀ): 32 depths of one
    /// column converted at once are 16 pairs, one for each of 16 pair rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_b_cols(
        b: View,
        pc: usize,
        kc: usize,
        pairs: usize,
        j0: usize,
        tile: &mut [u16],
    ) {
        let base = b.data.as_ptr();
        let out = tile.as_mut_ptr() as *mut u32;
        let mut lanes = [0u32; 16];
        for j in 0..NR {
            let col = base.add((j0 + j) * b.cs + pc);
            let mut p0 = 0;
            while 2 * p0 + 32 <= kc {
                let lo = _mm512_loadu_ps(col.add(2 * p0));
                let hi = _mm512_loadu_ps(col.add(2 * p0 + 16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, v);
                for (q, &pair) in lanes.iter().enumerate() {
                    out.add((p0 + q) * NR + j).write_unaligned(pair);
                }
                p0 += 16;
            }
            for p in p0..pairs {
                let lo = match 2 * p < kc {
                    true => super::to_bf16(*col.add(2 * p)) as u32,
                    false => 0,
                };
                let hi = match 2 * p + 1 < kc {
                    true => super::to_bf16(*col.add(2 * p + 1)) as u32,
                    false => 0,
                };
                out.add(p * NR + j).write_unaligned(lo | (hi << 16));
            }
        }
    }

    /// `pack_a`'s tile when A's rows are contiguous (`cs == 1`): 32 depths of a row converted
    /// at once are 16 pairs, each stored in its pair's row of the tile.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn pack_a_rows(a: View, i0: usize, mr: usize, k: usize, tile: &mut [u32]) {
        let pairs = k.div_ceil(2);
        let mut lanes = [0u32; 16];
        for i in 0..mr {
            let row = a.data.as_ptr().add((i0 + i) * a.rs);
            let mut p0 = 0;
            while 2 * p0 < k {
                // Depths 2 * p0 .. 2 * p0 + 32, masked at the row's end (lanes past it are 0).
                let left = k - 2 * p0;
                let m_lo: __mmask16 = if left >= 16 {
                    0xffff
                } else {
                    (1u16 << left) - 1
                };
                let m_hi: __mmask16 = match left {
                    l if l >= 32 => 0xffff,
                    l if l > 16 => (1u16 << (l - 16)) - 1,
                    _ => 0,
                };
                let lo = _mm512_maskz_loadu_ps(m_lo, row.add(2 * p0));
                let hi = _mm512_maskz_loadu_ps(m_hi, row.add(2 * p0 + 16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(lanes.as_mut_ptr() as *mut _, v);
                for (q, &pair) in lanes.iter().enumerate().take(pairs - p0) {
                    *tile.get_unchecked_mut((p0 + q) * MR + i) = pair;
                }
                p0 += 16;
            }
        }
    }

    /// `pack_a`'s tile when A's columns are contiguous (`rs == 1`, A = Gᵀ): depths 2p and
    /// 2p + 1 of the tile's rows are two loads, converted together and interleaved row by row.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn pack_a_cols(a: View, i0: usize, mr: usize, k: usize, tile: &mut [u32]) {
        debug_assert!(mr <= MR && MR <= 16);
        // Lane 2j takes element j of the first depth, lane 2j + 1 element j of the second.
        let idx: [u16; 32] = std::array::from_fn(|l| ((l % 2) * 16 + l / 2) as u16);
        let idx = _mm512_loadu_si512(idx.as_ptr() as *const _);
        let rows: __mmask16 = (1u16 << mr) - 1;
        let base = a.data.as_ptr().add(i0);
        for p in 0..k.div_ceil(2) {
            let d0 = _mm512_maskz_loadu_ps(rows, base.add(2 * p * a.cs));
            let d1 = match 2 * p + 1 < k {
                true => _mm512_maskz_loadu_ps(rows, base.add((2 * p + 1) * a.cs)),
                false => _mm512_setzero_ps(),
            };
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(d1, d0));
            let pairs_v = _mm512_permutexvar_epi16(idx, both);
            _mm512_mask_storeu_epi32(tile.as_mut_ptr().add(p * MR) as *mut _, rows, pairs_v);
        }
    }

    /// Row i of A (depths 0..k, contiguous: `cs == 1`) into `row` as bf16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn convert_row(a: View, i: usize, k: usize, row: &mut [u16]) {
        let src = a.data.as_ptr().add(i * a.rs);
        let mut p = 0;
        while p + 16 <= k {
            let v: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(src.add(p))));
            _mm256_storeu_si256(row.as_mut_ptr().add(p) as *mut _, v);
            p += 16;
        }
        for (q, v) in row.iter_mut().enumerate().take(k).skip(p) {
            *v = super::to_bf16(*src.add(q));
        }
    }

    /// Rows i0..i0 + 16 of A when its columns are contiguous (`rs == 1`, A = Gᵀ): depth p of
    /// the 16 rows is one load; each lands in its own row of `out` (rows of `k_pad`).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn convert_rows_16(a: View, i0: usize, k: usize, k_pad: usize, out: &mut [u16]) {
        let base = a.data.as_ptr().add(i0);
        let mut lanes = [0u16; 16];
        for p in 0..k {
            let v: __m256i =
                std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(base.add(p * a.cs))));
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut _, v);
            for (q, &x) in lanes.iter().enumerate() {
                *out.get_unchecked_mut(q * k_pad + p) = x;
            }
        }
    }
}

/// The AMX kernel. Tiles: C as four 16 x 16 f32 tiles (a 32 x 32 block, tmm0-3), A as two
/// 16-row x 32-depth bf16 tiles (tmm4-5, rows contiguous in depth), B as two 16-pair x
/// 16-column tiles (tmm6-7, each column's depth pair side by side: `pack_b`'s layout, read with
/// a 128-byte row stride). Per 32 of depth: four tile loads, four `tdpbf16ps`.
#[cfg(target_arch = "x86_64")]
mod amx {
    use super::{pack_b, to_bf16, View, NC};
    use rayon::prelude::*;
    use std::arch::asm;

    const MR: usize = 32; // rows of C per microkernel
    const NR: usize = super::NR; // 32 columns: B's pack tiles
    const KC: usize = 512; // depth per packed block of B (a multiple of 32)
    const MC: usize = 64; // rows of C per task

    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    /// Every tile 16 rows of 64 bytes (16 f32 or 32 bf16).
    const CONFIG: TileConfig = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    struct SendPtr(*mut f32);
    // SAFETY: each task writes only the rows of C it owns (see `gemm`).
    unsafe impl Sync for SendPtr {}
    unsafe impl Send for SendPtr {}

    /// A as bf16 rows of `k_pad` (a multiple of 32, zeros past k), `m_pad` rows (zeros past m).
    #[inline(never)]
    fn pack_a(a: View, m: usize, k: usize, k_pad: usize) -> Vec<u16> {
        let m_pad = m.div_ceil(MR) * MR;
        let mut out = vec![0u16; m_pad * k_pad];
        if a.rs == 1 && a.cs != 1 {
            // A = Gᵀ: 16 rows at a time, one load per depth.
            out.par_chunks_mut(16 * k_pad)
                .enumerate()
                .for_each(|(t, rows)| {
                    let i0 = 16 * t;
                    if i0 + 16 <= m {
                        // SAFETY: AVX512-BF16 comes with AMX here (`Kernel::best`); rows i0..i0 + 16
                        // and depths 0..k lie inside A (checked by `gemm_bf16_with`).
                        unsafe { super::simd::convert_rows_16(a, i0, k, k_pad, rows) };
                    } else {
                        for i in i0..m {
                            for p in 0..k {
                                rows[(i - i0) * k_pad + p] = to_bf16(a.at(i, p));
                            }
                        }
                    }
                });
            return out;
        }
        out.par_chunks_mut(k_pad)
            .take(m)
            .enumerate()
            .for_each(|(i, row)| {
                if a.cs == 1 {
                    // SAFETY: as above; row i has k contiguous elements.
                    return unsafe { super::simd::convert_row(a, i, k, row) };
                }
                for (p, v) in row[..k].iter_mut().enumerate() {
                    *v = to_bf16(a.at(i, p));
                }
            });
        out
    }

    /// `c` (m, n, row-major) = `a` (m, k) · `b` (k, n).
    /// B's blocks in the order `gemm` walks them (columns by NC, then depth by KC).
    pub fn pack_all(b: View, k: usize, n: usize) -> Vec<Vec<u16>> {
        let mut blocks = Vec::new();
        for jc in (0..n).step_by(NC) {
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let mut bp = Vec::new();
                pack_b(b, pc, kc, kc.div_ceil(32) * 16, jc, NC.min(n - jc), &mut bp);
                blocks.push(bp);
            }
        }
        blocks
    }

    /// `c` (m, n, row-major) = `a` (m, k) · `b` (k, n).
    pub fn gemm(m: usize, n: usize, k: usize, a: View, b: View, c: &mut [f32]) {
        gemm_from(m, n, k, a, None, b, c)
    }

    /// The same with B packed beforehand (`pack_all`); `b` is then not read.
    pub fn gemm_packed(m: usize, n: usize, k: usize, a: View, packed: &[Vec<u16>], c: &mut [f32]) {
        let none = View {
            data: &[],
            rs: 0,
            cs: 0,
        };
        gemm_from(m, n, k, a, Some(packed), none, c)
    }

    fn gemm_from(
        m: usize,
        n: usize,
        k: usize,
        a: View,
        packed: Option<&[Vec<u16>]>,
        b: View,
        c: &mut [f32],
    ) {
        if k == 0 {
            c.fill(0.0);
            return;
        }
        let k_pad = k.div_ceil(32) * 32;
        let ap = pack_a(a, m, k, k_pad);
        let c_ptr = SendPtr(c.as_mut_ptr());
        let mut scratch: Vec<u16> = Vec::new();
        let mut block = 0;
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                let steps = kc.div_ceil(32);
                let bp: &[u16] = match packed {
                    Some(blocks) => &blocks[block],
                    None => {
                        pack_b(b, pc, kc, steps * 16, jc, nc, &mut scratch);
                        &scratch
                    }
                };
                block += 1;
                let first = pc == 0;
                let (ap, c_ptr) = (&ap, &c_ptr);
                (0..m.div_ceil(MC)).into_par_iter().for_each(|blk| {
                    let mut tile = [0f32; MR * NR];
                    for (jt, bt) in bp.chunks_exact(steps * 16 * 2 * NR).enumerate() {
                        let j0 = jt * NR;
                        let nr = NR.min(nc - j0);
                        for i0 in (blk * MC..m.min((blk + 1) * MC)).step_by(MR) {
                            let mr = MR.min(m - i0);
                            let at = &ap[i0 * k_pad + pc..];
                            // SAFETY: rows i0..i0 + mr (< m) belong to this task's block,
                            // columns jc + j0 .. + nr (<= n).
                            let c_tile = unsafe { c_ptr.0.add(i0 * n + jc + j0) };
                            if mr == MR && nr == NR {
                                // SAFETY: AMX is usable (checked by the caller); `at` has MR rows
                                // of k_pad from pc, `bt` steps * 16 pairs of 2 * NR bf16, and the
                                // whole 32 x 32 block of C (row stride n) is this task's.
                                unsafe {
                                    kernel(
                                        steps,
                                        at.as_ptr(),
                                        k_pad * 2,
                                        bt.as_ptr(),
                                        c_tile,
                                        n * 4,
                                        !first,
                                    )
                                };
                                continue;
                            }
                            // An edge block: through a zero-padded copy.
                            tile.fill(0.0);
                            for i in 0..mr {
                                // SAFETY: as for `c_tile`.
                                let row = unsafe {
                                    std::slice::from_raw_parts_mut(c_tile.add(i * n), nr)
                                };
                                if !first {
                                    tile[i * NR..][..nr].copy_from_slice(row);
                                }
                            }
                            // SAFETY: as above, with `tile` (32 x 32, row stride NR) as C.
                            unsafe {
                                kernel(
                                    steps,
                                    at.as_ptr(),
                                    k_pad * 2,
                                    bt.as_ptr(),
                                    tile.as_mut_ptr(),
                                    NR * 4,
                                    !first,
                                )
                            };
                            for i in 0..mr {
                                let row = unsafe {
                                    std::slice::from_raw_parts_mut(c_tile.add(i * n), nr)
                                };
                                row.copy_from_slice(&tile[i * NR..][..nr]);
                            }
                        }
                    }
                });
            }
        }
    }

    /// A 32 x 32 block of C (`c`, rows `c_stride` bytes apart) from `steps` x 32 of depth,
    /// added to what C holds (`accumulate`) or replacing it. `a`: 32 rows, `a_stride` bytes
    /// apart; `b`: steps x 16 pair rows of 2 x 32 bf16.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn kernel(
        steps: usize,
        a: *const u16,
        a_stride: usize,
        b: *const u16,
        c: *mut f32,
        c_stride: usize,
        accumulate: bool,
    ) {
        let (c00, c01, c10, c11) = (
            c,
            c.add(16),
            c.byte_add(16 * c_stride),
            c.byte_add(16 * c_stride).add(16),
        );
        asm!("ldtilecfg [{cfg}]", cfg = in(reg) &CONFIG, options(nostack));
        if accumulate {
            asm!(
                "tileloadd tmm0, [{c00} + {s}*1]",
                "tileloadd tmm1, [{c01} + {s}*1]",
                "tileloadd tmm2, [{c10} + {s}*1]",
                "tileloadd tmm3, [{c11} + {s}*1]",
                c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
                s = in(reg) c_stride,
                options(nostack, readonly),
            );
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        for s in 0..steps {
            let a0 = a.add(s * 32);
            let a1 = a0.byte_add(16 * a_stride);
            let b0 = b.add(s * 16 * 2 * NR);
            let b1 = b0.add(32); // columns 16..31: the second 64 bytes of each pair row
            asm!(
                "tileloadd tmm4, [{a0} + {sa}*1]",
                "tileloadd tmm5, [{a1} + {sa}*1]",
                "tileloadd tmm6, [{b0} + {sb}*1]",
                "tileloadd tmm7, [{b1} + {sb}*1]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                a0 = in(reg) a0, a1 = in(reg) a1, b0 = in(reg) b0, b1 = in(reg) b1,
                sa = in(reg) a_stride, sb = in(reg) 2 * NR * 2,
                options(nostack, readonly),
            );
        }
        asm!(
            "tilestored [{c00} + {s}*1], tmm0",
            "tilestored [{c01} + {s}*1], tmm1",
            "tilestored [{c10} + {s}*1], tmm2",
            "tilestored [{c11} + {s}*1], tmm3",
            "tilerelease",
            c00 = in(reg) c00, c01 = in(reg) c01, c10 = in(reg) c10, c11 = in(reg) c11,
            s = in(reg) c_stride,
            options(nostack),
        );
    }
}

/// A projection's weight W (out, in) packed once into bf16 for the best kernel the CPU has
/// (AMX tiles or AVX512-BF16's column pairs), for `x Wᵀ` over many rows (prefill): half the
/// bytes of its f32 copy, and no packing per product.
pub struct PackedWeight {
    out: usize,
    inp: usize,
    kernel: Kernel,
    blocks: Vec<Vec<u16>>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PackedWeight({} x {}, bf16 for {})",
            self.out,
            self.inp,
            self.kernel.name()
        )
    }
}

impl PackedWeight {
    /// Packs `w` (out, in) f32; None where the CPU has no SIMD bf16 kernel.
    pub fn new(w: &Tensor) -> Result<Option<Self>> {
        let kernel = Kernel::best();
        let (out, inp) = w.dims2()?;
        let w = w.contiguous()?;
        // B = Wᵀ: (in, out), each column of B a row of W.
        let blocks = with_view(&w, |v| {
            let bt = View::columns(v.data, inp);
            match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Amx => Some(amx::pack_all(bt, inp, out)),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Bf16 => Some(pack_all(bt, inp, out)),
                _ => None,
            }
        })?;
        Ok(blocks.map(|blocks| Self {
            out,
            inp,
            kernel,
            blocks,
        }))
    }

    /// The kernel the weight was packed for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// `x` (n, in) -> (n, out) = x Wᵀ, bf16 inputs and f32 accumulation.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let (n, k) = x.dims2()?;
        if k != self.inp {
            candle_core::bail!(
                "packed weight ({} x {}) applied to ({n}, {k})",
                self.out,
                self.inp
            );
        }
        let x = x.contiguous()?;
        let mut y = vec![0f32; n * self.out];
        with_view(&x, |xv| {
            if n * k > 0 {
                assert!(
                    (n - 1) * xv.rs + k - 1 < xv.data.len(),
                    "x does not fit its buffer"
                );
            }
            match self.kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Amx => amx::gemm_packed(n, self.out, k, xv, &self.blocks, &mut y),
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx512Bf16 => {
                    gemm_blocked(n, self.out, k, xv, Operand::Packed(&self.blocks), &mut y)
                }
                _ => unreachable!("packed only for a SIMD kernel"),
            }
        })?;
        Tensor::from_vec(y, (n, self.out), x.device())
    }
}

/// The strided f32 view of a 2-D CPU tensor.
fn with_view<R>(t: &Tensor, f: impl FnOnce(View) -> R) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("the bf16 GEMM runs on the CPU");
    };
    let stride = layout.stride();
    let data = &cpu.as_slice::<f32>()?[layout.start_offset()..];
    Ok(f(View {
        data,
        rs: stride[0],
        cs: stride[1],
    }))
}

/// `a` (m, k) · `b` (k, n) -> (m, n) f32, through `gemm_bf16` (either operand may be a
/// transposed view).
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    matmul_with(Kernel::best(), a, b)
}

/// `matmul` with a chosen kernel (one the CPU has), for benchmarks.
pub fn matmul_with(kernel: Kernel, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (m, k) = a.dims2()?;
    let (k2, n) = b.dims2()?;
    if k != k2 {
        candle_core::bail!("bf16 matmul: ({m}, {k}) x ({k2}, {n})");
    }
    let mut c = vec![0f32; m * n];
    with_view(a, |av| {
        with_view(b, |bv| gemm_bf16_with(kernel, m, n, k, av, bv, &mut c))
    })??;
    Tensor::from_vec(c, (m, n), a.device())
}

thread_local! {
    /// Like PyTorch's autocast state, per thread: the ops read it on the thread that calls them
    /// (their kernels' own worker threads never do), so a test or a server thread in f32 is not
    /// switched by a trainer on another.
    static AUTOCAST: Cell<bool> = const { Cell::new(false) };
}

/// Switches this thread's training matmuls (`mm`, the linear layers' op) to bf16 (true) or f32
/// (false) until the guard drops. Turning it on where the CPU has no SIMD bf16 kernel is
/// refused (None): the portable one is a reference, far slower than f32.
pub fn autocast(on: bool) -> Option<AutocastGuard> {
    if on && !has_simd_kernel() {
        return None;
    }
    let before = AUTOCAST.with(|a| a.replace(on));
    Some(AutocastGuard {
        before,
        _same_thread: PhantomData,
    })
}

/// Restores the thread's earlier setting when dropped; it cannot leave its thread.
pub struct AutocastGuard {
    before: bool,
    _same_thread: PhantomData<*const ()>,
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        AUTOCAST.with(|a| a.set(self.before));
    }
}

/// Whether this thread's training matmuls run in bf16 now.
pub fn autocast_on() -> bool {
    AUTOCAST.with(|a| a.get())
}

/// A training matmul: bf16 with f32 accumulation while `autocast` is on, candle's f32 otherwise.
/// `a` (m, k), `b` (k, n), 2-D.
pub fn mm(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    match autocast_on() {
        true => matmul(a, b),
        false => a.matmul(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::check::lcg_values as values;

    #[test]
    fn rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up to even.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
    }

    /// Each SIMD kernel this CPU has against the portable one, on shapes that cross every block
    /// edge (odd depth, rows and columns not multiples of the tiles, depth past one block), with
    /// transposed operands; a kernel the CPU lacks is skipped with a message.
    #[test]
    fn simd_kernels_match_the_portable_path() {
        let f = crate::kernels::cpu::CpuFeatures::get();
        for (kernel, has) in [
            (Kernel::Amx, f.amx_enabled && f.avx512_bf16),
            (Kernel::Avx512Bf16, f.avx512_bf16),
        ] {
            if !has {
                eprintln!("skipped {}: this CPU has {}", kernel.name(), f.describe());
                continue;
            }
            for &(m, n, k) in &[
                (1, 1, 1),
                (15, 33, 3),
                (113, 70, 257),
                (29, 1100, 520),
                (300, 40, 64),
                (70, 45, 1100),
                (0, 40, 600),
                (40, 0, 600),
            ] {
                let a = values(m * k, 1);
                let b = values(k * n, 2);
                for transposed in [false, true] {
                    // A as (m, k) row-major or as the transpose of a (k, m) buffer; B likewise.
                    let (av, bv) = match transposed {
                        false => (View::rows(&a, k), View::rows(&b, n)),
                        true => (View::columns(&a, m), View::columns(&b, k)),
                    };
                    let mut want = vec![0f32; m * n];
                    gemm_bf16_portable(m, n, k, av, bv, &mut want);
                    let mut got = vec![f32::NAN; m * n];
                    gemm_bf16_with(kernel, m, n, k, av, bv, &mut got);
                    let worst =
                        want.iter()
                            .zip(&got)
                            .map(|(w, g)| (w - g).abs())
                            .fold(0f32, |acc, d| {
                                if d.is_nan() {
                                    f32::INFINITY
                                } else {
                                    acc.max(d)
                                }
                            });
                    // Same rounded inputs, exact products; only the order of the f32 sums differs.
                    assert!(
                        worst < 1e-5 * k as f32,
                        "{} ({m}, {n}, {k}) transposed {transposed}: {worst}",
                        kernel.name()
                    );
                }
            }
        }
    }

    /// Against f32 arithmetic: within what rounding the inputs to bf16 (8 bits of mantissa)
    /// allows, and not equal to it (the inputs really are rounded).
    #[test]
    fn bf16_product_is_within_bf16_tolerance_of_f32() {
        let (m, n, k) = (40, 50, 300);
        let a = values(m * k, 3);
        let b = values(k * n, 4);
        let mut got = vec![0f32; m * n];
        gemm_bf16(m, n, k, View::rows(&a, k), View::rows(&b, n), &mut got);
        let mut worst = 0f32;
        for i in 0..m {
            for j in 0..n {
                let exact: f64 = (0..k)
                    .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                    .sum();
                worst = worst.max((exact as f32 - got[i * n + j]).abs());
            }
        }
        // Each product errs by at most ~2 * 2^-9 relative; |a|, |b| < 1, random signs.
        assert!(worst < 0.05, "{worst}");
        assert!(worst > 1e-6, "the inputs were not rounded to bf16: {worst}");
    }

    #[test]
    fn tensor_matmul_reads_transposed_views() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::from_vec(values(7 * 9, 5), (7, 9), &dev).unwrap();
        let w = Tensor::from_vec(values(5 * 9, 6), (5, 9), &dev).unwrap();
        let got = matmul(&x, &w.t().unwrap()).unwrap(); // (7, 5)
        let round = |t: &Tensor| {
            let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let v: Vec<f32> = v.into_iter().map(|x| from_bf16(to_bf16(x))).collect();
            Tensor::from_vec(v, t.shape(), &dev).unwrap()
        };
        let want = round(&x).matmul(&round(&w).t().unwrap()).unwrap();
        let diff = crate::kernels::check::max_abs_diff(&got, &want).unwrap();
        assert!(diff < 1e-5, "{diff}");
    }

    /// A weight packed once gives the very bits of the same product packed as it goes, with
    /// every kernel this CPU has (edges of every block crossed: 1100 outputs, 600 inputs).
    #[test]
    fn a_packed_weight_gives_the_unpacked_product() {
        let dev = candle_core::Device::Cpu;
        let (n, out, inp) = (37, 1100, 600);
        let x = Tensor::from_vec(values(n * inp, 7), (n, inp), &dev).unwrap();
        let w = Tensor::from_vec(values(out * inp, 8), (out, inp), &dev).unwrap();
        let Some(packed) = PackedWeight::new(&w).unwrap() else {
            let f = crate::kernels::cpu::CpuFeatures::get();
            eprintln!("skipped: no bf16 kernel here ({})", f.describe());
            return;
        };
        let got: Vec<f32> = packed
            .matmul_t(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want = matmul_with(packed.kernel(), &x, &w.t().unwrap()).unwrap();
        let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, want);
    }
}
