//! Attention for decoding: one new query token per sequence against that sequence's own KV
//! cache, for every decoding sequence at once, over raw slices on candle's worker pool.
//!
//! The general path (`llama::attend`) costs some 25 small tensor ops per sequence and layer,
//! copies the value cache to make it contiguous, and runs on one thread between the pool's
//! matmuls; at 16 sequences that is 16 x 30 op chains per decoding step. Here each work item
//! is one (sequence, kv head): its `rep` query heads are scored against the cached keys,
//! softmaxed and used to weight the cached values, as `attend` does for t = 1 (no mask: the
//! one query sits after every cached position).

/// One sequence's cache for one layer: keys and values as (kv_heads, cap, d) buffers of which
/// the first `len` positions (the new token's included) are filled.
pub struct CacheView<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub cap: usize,
    pub len: usize,
}

struct SendPtr(*mut f32);
// SAFETY: used only to write disjoint rows from the pool's tasks (see `decode_attention`).
unsafe impl Sync for SendPtr {}
unsafe impl Send for SendPtr {}

/// Dot product with 8 independent accumulators, so the compiler keeps them in one vector.
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `q`: (n, heads, d) row-major, query of sequence i in row i; `caches[i]` its cache.
/// Returns (n, heads * d).
pub fn decode_attention(
    q: &[f32],
    caches: &[CacheView],
    heads: usize,
    kv_heads: usize,
    d: usize,
) -> Vec<f32> {
    let n = caches.len();
    assert_eq!(q.len(), n * heads * d, "one query row per cache");
    let rep = heads / kv_heads;
    let scale = (1.0 / (d as f64).sqrt()) as f32; // as `attend` computes it
    let mut out = vec![0f32; n * heads * d];
    let out_ptr = SendPtr(out.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(n * kv_heads, |items| {
        let out_ptr = &out_ptr;
        let mut scores: Vec<f32> = Vec::new();
        for item in items {
            let (i, g) = (item / kv_heads, item % kv_heads);
            let c = &caches[i];
            let keys = &c.k[g * c.cap * d..(g * c.cap + c.len) * d]; // (len, d)
            let values = &c.v[g * c.cap * d..(g * c.cap + c.len) * d];
            // Scores of the group's rep query heads: (rep, len).
            scores.clear();
            scores.resize(rep * c.len, 0.0);
            for r in 0..rep {
                let h = g * rep + r;
                let qh = &q[(i * heads + h) * d..(i * heads + h + 1) * d];
                let row = &mut scores[r * c.len..(r + 1) * c.len];
                for (s, k) in row.iter_mut().zip(keys.chunks_exact(d)) {
                    *s = dot(qh, k) * scale;
                }
                // The prefill's `causal_softmax` rounds alike: its `exp(x · scale − max · scale)`
                // rounds x · scale first too, and the max of the rounded products is the
                // rounded max (rounding is monotone). So a prompt's last token gets the same
                // probabilities whether it is prefilled with the rest or decoded after them.
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum = crate::kernels::exp::exp_in_place(row, max);
                let inv = 1.0 / sum;
                // SAFETY: item (i, g) alone writes heads g*rep..(g+1)*rep of row i; `out`
                // outlives the call.
                let y = unsafe {
                    std::slice::from_raw_parts_mut(out_ptr.0.add((i * heads + h) * d), d)
                };
                for (p, v) in row.iter().zip(values.chunks_exact(d)) {
                    let w = p * inv;
                    for (yl, vl) in y.iter_mut().zip(v) {
                        *yl += w * vl;
                    }
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_a_plain_softmax_attention_in_f64() {
        // 3 sequences of different lengths, GQA 6 heads over 2 kv heads, d = 12 (a tail of 4
        // after the 8-wide chunks), caches with spare capacity.
        let (heads, kvh, d, cap) = (6, 2, 12, 9);
        let lens = [1usize, 5, 9];
        let val = |s: usize| ((s * 2654435761) % 1000) as f32 / 500.0 - 1.0;
        let ks: Vec<Vec<f32>> = (0..3)
            .map(|i| (0..kvh * cap * d).map(|j| val(j + 7919 * i)).collect())
            .collect();
        let vs: Vec<Vec<f32>> = (0..3)
            .map(|i| {
                (0..kvh * cap * d)
                    .map(|j| val(j * 3 + 104729 * i + 1))
                    .collect()
            })
            .collect();
        let q: Vec<f32> = (0..3 * heads * d).map(|j| val(j * 5 + 13)).collect();
        let caches: Vec<CacheView> = (0..3)
            .map(|i| CacheView {
                k: &ks[i],
                v: &vs[i],
                cap,
                len: lens[i],
            })
            .collect();
        let got = decode_attention(&q, &caches, heads, kvh, d);
        for i in 0..3 {
            for h in 0..heads {
                let g = h / (heads / kvh);
                let qh = &q[(i * heads + h) * d..(i * heads + h + 1) * d];
                let s: Vec<f64> = (0..lens[i])
                    .map(|j| {
                        let k = &ks[i][(g * cap + j) * d..(g * cap + j + 1) * d];
                        qh.iter()
                            .zip(k)
                            .map(|(a, b)| *a as f64 * *b as f64)
                            .sum::<f64>()
                            / (d as f64).sqrt()
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                for l in 0..d {
                    let want: f64 = (0..lens[i])
                        .map(|j| (s[j] - m).exp() / z * vs[i][(g * cap + j) * d + l] as f64)
                        .sum();
                    let g = got[(i * heads + h) * d + l] as f64;
                    assert!(
                        (g - want).abs() < 1e-5,
                        "seq {i} head {h} [{l}]: {g} vs {want}"
                    );
                }
            }
        }
    }
}
