//! Activation recomputation ("gradient checkpointing", Chen et al. 2016; PyTorch's
//! `torch.utils.checkpoint`): the training forward keeps only each block's input, and the
//! backward runs each block's forward again, one block at a time, so that training holds one
//! block's activations instead of every block's. It costs one more forward of the blocks.
//!
//! With it on ([`Llama::set_recompute`]), the trunk runs its blocks on detached inputs, keeps
//! those inputs on a tape, and hands the loss a fresh leaf (`top`) in place of the last block's
//! output. After `loss.backward()`, [`Llama::backward_recomputed`] takes the gradient at `top`
//! and carries it down: for block l, from the top down,
//!
//!   x  = the block's kept input, made a leaf        (b*t, hidden)
//!   y  = block(x)                                    the same ops as the forward, so the same bits
//!   backward of sum(y ⊙ g)                           d/dy = g exactly; gives the block's weight
//!                                                    gradients and g ← dL/dx for the block below
//!
//! then the embedding lookup likewise. The weight gradients add into the loss's store, so a
//! caller sees the gradients the plain backward gives, up to the order of float sums where a
//! weight is used twice (tied embeddings).

use super::llama::Llama;
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// One trunk call's kept inputs.
pub(crate) struct Tape {
    /// The token ids, flat: (b*t,)
    pub ids: Tensor,
    pub b: usize,
    pub t: usize,
    /// Each token's position: (b*t,)
    pub positions: Tensor,
    /// Block l's input, detached: (b*t, hidden) each.
    pub inputs: Vec<Tensor>,
    /// The leaf the loss was computed from, in place of the last block's output.
    pub top: Var,
}

impl Llama {
    /// Keep only block inputs in the training forward and recompute the rest in
    /// [`Self::backward_recomputed`]. Attention dropout must be off: a recomputed block would
    /// draw another mask.
    pub fn set_recompute(&self, on: bool) {
        self.recompute
            .store(on, std::sync::atomic::Ordering::Relaxed);
        if !on {
            self.discard_recomputed();
        }
    }

    pub(crate) fn recomputing(&self) -> bool {
        self.recompute.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Forgets the tapes of forwards that will have no backward (an evaluation, an error).
    pub fn discard_recomputed(&self) {
        self.tapes.lock().expect("tape lock").clear();
    }

    /// The blocks on a right-padded batch, keeping their inputs: `x0` the embeddings, detached
    /// (b*t, hidden) -> a leaf holding the last block's output (b*t, hidden).
    pub(crate) fn trunk_recorded(
        &self,
        ids: Tensor,
        b: usize,
        t: usize,
        positions: Tensor,
        x0: Tensor,
    ) -> Result<Tensor> {
        if self.attention_dropout().is_some_and(|d| d.is_active()) {
            candle_core::bail!("activation recomputation needs attention dropout off");
        }
        let mut inputs = Vec::with_capacity(self.layers.len());
        let mut x = x0;
        for l in 0..self.layers.len() {
            let y = self.block_forward(l, &x, b, t, &positions)?.detach();
            inputs.push(x);
            x = y;
        }
        let top = Var::from_tensor(&x)?;
        let out = top.as_tensor().clone();
        self.tapes.lock().expect("tape lock").push(Tape {
            ids,
            b,
            t,
            positions,
            inputs,
            top,
        });
        Ok(out)
    }

    /// Carries the gradients at the tapes' leaves (in `grads`, from `loss.backward()`) through
    /// the blocks and the embedding, adding the weights' gradients into `grads`. Without tapes
    /// (recomputation off) it does nothing.
    pub fn backward_recomputed(&self, grads: &mut GradStore) -> Result<()> {
        let tapes = std::mem::take(&mut *self.tapes.lock().expect("tape lock"));
        for tape in tapes.into_iter().rev() {
            let Some(mut g) = grads.remove(tape.top.as_tensor()) else {
                continue; // the loss did not use this forward
            };
            for l in (0..self.layers.len()).rev() {
                let x = Var::from_tensor(&tape.inputs[l])?;
                let y = self.block_forward(l, x.as_tensor(), tape.b, tape.t, &tape.positions)?;
                let mut these = (y * &g)?.sum_all()?.backward()?;
                g = match these.remove(x.as_tensor()) {
                    Some(gx) => gx.detach(),
                    None => x.as_tensor().zeros_like()?,
                };
                add_detached(grads, these)?;
            }
            let x0 = self.embed_tokens.index_select(&tape.ids, 0)?;
            if x0.track_op() {
                add_detached(grads, (x0 * &g)?.sum_all()?.backward()?)?;
            }
        }
        Ok(())
    }
}

/// Adds `these` into `grads`, each gradient detached first. A leaf's gradient from candle's
/// backward is computed from the forward's tensors (a weight's: `xᵀ g`) and so holds the whole
/// block's graph while it lives; kept as is, every block's activations would stay in memory
/// until the step ends, which is what recomputation is for avoiding.
fn add_detached(grads: &mut GradStore, these: GradStore) -> Result<()> {
    let ids: Vec<_> = these.get_ids().copied().collect();
    for id in ids {
        let grad = these.get_id(id).expect("an id of the store").detach();
        let sum = match grads.get_id(id) {
            Some(before) => (before + grad)?.detach(),
            None => grad,
        };
        grads.insert_id(id, sum);
    }
    Ok(())
}
