//! Per-sequence key/value caches, grown in chunks.

use candle_core::{Result, Tensor};

/// One sequence's keys and values for every layer, grown in chunks so decoding appends in place.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub(crate) layers: Vec<Option<(Tensor, Tensor)>>, // per layer: k, v buffers, each (kv_heads, capacity, d)
    len: usize,
}

const CACHE_CHUNK: usize = 256;

impl KvCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Tokens the cache holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `k`, `v` (kv_heads, t, d) for `layer` and returns the whole (kv_heads, len + t, d).
    pub(crate) fn append(
        &mut self,
        layer: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        if self.layers.len() <= layer {
            self.layers.resize(layer + 1, None);
        }
        let (kvh, t, d) = k.dims3()?;
        let len = self.len;
        let need = len + t;
        let slot = &mut self.layers[layer];
        let cap = slot.as_ref().map(|(k, _)| k.dims()[1]).unwrap_or(0);
        if need > cap {
            let new_cap = need.div_ceil(CACHE_CHUNK) * CACHE_CHUNK;
            let grow = |old: Option<&Tensor>| -> Result<Tensor> {
                let buf = Tensor::zeros((kvh, new_cap, d), k.dtype(), k.device())?;
                if let Some(old) = old {
                    buf.slice_set(&old.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                }
                Ok(buf)
            };
            let kb = grow(slot.as_ref().map(|(k, _)| k))?;
            let vb = grow(slot.as_ref().map(|(_, v)| v))?;
            *slot = Some((kb, vb));
        }
        let (kb, vb) = slot.as_ref().expect("allocated above");
        kb.slice_set(&k.contiguous()?, 1, len)?;
        vb.slice_set(&v.contiguous()?, 1, len)?;
        Ok((kb.narrow(1, 0, need)?, vb.narrow(1, 0, need)?))
    }

    /// Called once per forward, after every layer appended its `t` new tokens.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// A new cache holding a copy of this one's first `n` tokens (its own buffers, so both can
    /// grow independently): the keys and values of a shared prompt prefix, computed once.
    pub fn prefix_copy(&self, n: usize) -> Result<KvCache> {
        assert!(
            n <= self.len,
            "prefix of {n} tokens from a cache of {}",
            self.len
        );
        let mut out = KvCache::new();
        if n == 0 {
            return Ok(out);
        }
        let cap = n.div_ceil(CACHE_CHUNK) * CACHE_CHUNK;
        for layer in &self.layers {
            let Some((k, v)) = layer else {
                out.layers.push(None);
                continue;
            };
            let copy = |src: &Tensor| -> Result<Tensor> {
                let (kvh, _, d) = src.dims3()?;
                let buf = Tensor::zeros((kvh, cap, d), src.dtype(), src.device())?;
                buf.slice_set(&src.narrow(1, 0, n)?.contiguous()?, 1, 0)?;
                Ok(buf)
            };
            out.layers.push(Some((copy(k)?, copy(v)?)));
        }
        out.len = n;
        Ok(out)
    }

    /// Bytes the cache's buffers hold.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum()
    }
}
