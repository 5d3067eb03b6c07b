//! Supervised fine-tuning: the negative log-likelihood of the assistant's tokens, averaged over
//! every target token of the optimizer batch (prompt and padding masked).

use crate::data::{Batch, Sequence};
use crate::error::Result;
use crate::loss::sft_loss;
use crate::trainer::{MicroOutput, Normalizers, Objective};
use srlm_engine::llama::Llama;
use std::collections::BTreeMap;

pub struct Sft {
    pub sequences: Vec<Sequence>,
    pub pad_id: u32,
}

impl Objective for Sft {
    fn len(&self) -> usize {
        self.sequences.len()
    }

    fn normalizers(&self, examples: &[usize]) -> Normalizers {
        let targets: usize = examples
            .iter()
            .map(|&i| self.sequences[i].target_count())
            .sum();
        Normalizers {
            targets: targets.max(1) as f64,
            examples: examples.len().max(1) as f64,
            chosen_targets: 0.0,
        }
    }

    fn micro_batch(
        &self,
        model: &Llama,
        examples: &[usize],
        norm: &Normalizers,
    ) -> Result<MicroOutput> {
        let seqs: Vec<&Sequence> = examples.iter().map(|&i| &self.sequences[i]).collect();
        let batch = Batch::new(&seqs, self.pad_id, model.device())?;
        let logps = batch.target_logps(model)?; // (n,)
        let loss = sft_loss(&logps, norm.targets)?;
        // The loss is SFT's one metric; the trainer logs it.
        Ok(MicroOutput {
            loss,
            sums: BTreeMap::new(),
        })
    }

    fn metrics(&self, _sums: &BTreeMap<String, f64>, _examples: &[usize]) -> BTreeMap<String, f64> {
        BTreeMap::new()
    }

    fn tokens(&self, examples: &[usize]) -> usize {
        examples.iter().map(|&i| self.sequences[i].ids.len()).sum()
    }

    fn padded_len(&self, example: usize) -> usize {
        self.sequences[example].ids.len()
    }
}
