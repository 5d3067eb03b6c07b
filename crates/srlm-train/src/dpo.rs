//! Direct Preference Optimization over pairs whose reference log-probabilities were computed
//! once, before training, by the starting model (the reference, M_t), so no second model sits
//! in memory. Losses and metrics as TRL's DPOTrainer computes them.

use crate::data::{Batch, PairSequences, Sequence};
use crate::error::{Result, TrainError};
use crate::loss::{dpo_loss, dpo_metrics, per_sequence_sum, DpoConfig, DpoLossType, PairLogps};
use crate::trainer::{micro_batches, MicroOutput, Normalizers, Objective};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use srlm_core::jsonl::recover_jsonl;
use srlm_core::JsonlWriter;
use srlm_engine::llama::Llama;
use std::collections::BTreeMap;
use std::path::Path;

pub struct Dpo {
    pub pairs: Vec<PairSequences>,
    /// Summed reference log-probabilities (chosen, rejected) per pair.
    pub reference: Vec<(f64, f64)>,
    pub cfg: DpoConfig,
    pub pad_id: u32,
}

/// Summed log-probabilities of each sequence's targets under `model`: (sequences,).
fn sequence_logps(
    model: &Llama,
    seqs: &[&Sequence],
    pad_id: u32,
) -> Result<(Tensor, Tensor, Batch)> {
    let batch = Batch::new(seqs, pad_id, model.device())?;
    let tok = batch.target_logps(model)?; // (n,)
    let sums = per_sequence_sum(&tok, &batch.owner, batch.sequences)?; // (S,)
    Ok((sums, tok, batch))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefLine {
    index: usize,
    ref_chosen_logps: f64,
    ref_rejected_logps: f64,
}

/// The reference log-probabilities of every pair: taken from the records where they carry them,
/// otherwise computed with `model` (no gradient) and appended to `cache` as they come, so an
/// interrupted run does not compute them twice.
///
/// candle has no no-grad mode, so this pass runs through the trainable weights and the fused
/// head keeps its (tokens, vocab) gradient buffer unused, up to the kernel's budget. Left so on
/// purpose: the buffer-free path computes the head in row chunks, whose log-probabilities can
/// differ in the last bits from the training pass's, where the reference is meant to equal the
/// policy exactly at step 0 (a starting loss of log 2, margins of zero).
pub fn reference_logps(
    model: &Llama,
    pairs: &[PairSequences],
    pad_id: u32,
    micro_batch: usize,
    cache: &Path,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<(f64, f64)>> {
    let mut out: Vec<Option<(f64, f64)>> = pairs.iter().map(|p| p.ref_logps).collect();
    for line in recover_jsonl::<RefLine>(cache)? {
        if line.index < out.len() {
            out[line.index] = Some((line.ref_chosen_logps, line.ref_rejected_logps));
        }
    }
    let todo: Vec<usize> = (0..pairs.len()).filter(|&i| out[i].is_none()).collect();
    if !todo.is_empty() {
        let mut writer = JsonlWriter::append(cache)?;
        let mut done = pairs.len() - todo.len();
        for chunk in micro_batches(&todo, micro_batch, |i| pairs[i].padded_len()) {
            let chunk = &chunk[..];
            let mut seqs: Vec<&Sequence> = chunk.iter().map(|&i| &pairs[i].chosen).collect();
            seqs.extend(chunk.iter().map(|&i| &pairs[i].rejected));
            let (sums, _, _) = sequence_logps(model, &seqs, pad_id)?;
            let v = sums.detach().to_vec1::<f32>()?;
            let m = chunk.len();
            for (k, &i) in chunk.iter().enumerate() {
                let (c, r) = (v[k] as f64, v[m + k] as f64);
                if !c.is_finite() || !r.is_finite() {
                    return Err(TrainError::Config(format!(
                        "pair {i}: reference log-probability is not finite"
                    )));
                }
                writer.write(&RefLine {
                    index: i,
                    ref_chosen_logps: c,
                    ref_rejected_logps: r,
                })?;
                out[i] = Some((c, r));
            }
            done += m;
            on_progress(done, pairs.len());
        }
    }
    Ok(out.into_iter().map(|x| x.expect("filled above")).collect())
}

impl Objective for Dpo {
    fn len(&self) -> usize {
        self.pairs.len()
    }

    fn normalizers(&self, examples: &[usize]) -> Normalizers {
        let chosen: usize = examples
            .iter()
            .map(|&i| self.pairs[i].chosen.target_count())
            .sum();
        Normalizers {
            targets: 0.0,
            examples: examples.len().max(1) as f64,
            chosen_targets: chosen.max(1) as f64,
        }
    }

    fn micro_batch(
        &self,
        model: &Llama,
        examples: &[usize],
        norm: &Normalizers,
    ) -> Result<MicroOutput> {
        let mut seqs: Vec<&Sequence> = examples.iter().map(|&i| &self.pairs[i].chosen).collect();
        seqs.extend(examples.iter().map(|&i| &self.pairs[i].rejected));
        let batch = Batch::new(&seqs, self.pad_id, model.device())?;
        let tok = batch.target_logps(model)?; // (n,)
        let reference: Vec<(f64, f64)> = examples.iter().map(|&i| self.reference[i]).collect();
        pair_loss(&tok, &batch.owner, &reference, &self.cfg, norm)
    }

    fn metrics(&self, sums: &BTreeMap<String, f64>, examples: &[usize]) -> BTreeMap<String, f64> {
        let n = examples.len().max(1) as f64;
        sums.iter()
            .map(|(k, v)| {
                if k == "nll_loss" {
                    (k.clone(), *v)
                } else {
                    (k.clone(), v / n)
                }
            })
            .collect()
    }

    fn tokens(&self, examples: &[usize]) -> usize {
        examples
            .iter()
            .map(|&i| self.pairs[i].chosen.ids.len() + self.pairs[i].rejected.ids.len())
            .sum()
    }

    fn padded_len(&self, example: usize) -> usize {
        self.pairs[example].padded_len()
    }
}

/// The DPO loss and metric sums of m pairs from their per-token log-probabilities.
/// `tok`: (n,) target log-probs; `owner[i]` is the sequence of row i, sequences 0..m being the
/// chosen replies and m..2m the rejected ones; `reference`: summed reference log-probs per pair.
pub fn pair_loss(
    tok: &Tensor,
    owner: &[u32],
    reference: &[(f64, f64)],
    cfg: &DpoConfig,
    norm: &Normalizers,
) -> Result<MicroOutput> {
    let m = reference.len();
    let dev = tok.device();
    let sums = per_sequence_sum(tok, owner, 2 * m)?; // (2m,)
    let chosen = sums.narrow(0, 0, m)?;
    let rejected = sums.narrow(0, m, m)?;
    let (ref_c, ref_r): (Vec<f64>, Vec<f64>) = reference.iter().copied().unzip();
    let to_t =
        |v: &[f64]| Tensor::from_vec(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), m, dev);
    let (ref_ct, ref_rt) = (to_t(&ref_c)?, to_t(&ref_r)?);
    // The NLL of the chosen replies over the batch's chosen tokens (TRL's "sft" loss term).
    let nll = match cfg.rpo_alpha {
        Some(_) => Some((chosen.sum_all()?.neg()? / norm.chosen_targets)?),
        None => None,
    };
    let lp = match cfg.loss_type {
        DpoLossType::Sigmoid => (chosen.clone(), rejected.clone(), ref_ct, ref_rt),
        DpoLossType::Ipo => {
            // IPO compares per-token averages: each log-ratio over its reply's length.
            let mut len = vec![0f64; 2 * m];
            for &o in owner {
                len[o as usize] += 1.0;
            }
            let len: Vec<f64> = len.into_iter().map(|l| l.max(1.0)).collect();
            let (lc, lr) = (to_t(&len[..m])?, to_t(&len[m..])?);
            (
                (&chosen / &lc)?,
                (&rejected / &lr)?,
                (ref_ct / &lc)?,
                (ref_rt / &lr)?,
            )
        }
    };
    let loss = dpo_loss(
        &PairLogps {
            chosen: &lp.0,
            rejected: &lp.1,
            ref_chosen: &lp.2,
            ref_rejected: &lp.3,
        },
        cfg,
        norm.examples,
        nll.as_ref(),
    )?;
    // Metrics as TRL logs them: rewards from the summed log-ratios, whatever the loss.
    let pc: Vec<f64> = chosen
        .detach()
        .to_vec1::<f32>()?
        .iter()
        .map(|&x| x as f64)
        .collect();
    let pr: Vec<f64> = rejected
        .detach()
        .to_vec1::<f32>()?
        .iter()
        .map(|&x| x as f64)
        .collect();
    let met = dpo_metrics(cfg.beta, &pc, &pr, &ref_c, &ref_r);
    let mut out = metric_sums(&met, m as f64);
    if let Some(nll) = nll {
        out.insert("nll_loss".into(), nll.to_scalar::<f32>()? as f64);
    }
    Ok(MicroOutput { loss, sums: out })
}

/// The metrics of `m` pairs as sums, so micro-batches add up.
fn metric_sums(met: &crate::loss::DpoMetrics, m: f64) -> BTreeMap<String, f64> {
    let v = serde_json::to_value(met).expect("metrics serialize");
    v.as_object()
        .expect("a struct")
        .iter()
        .map(|(k, x)| (k.clone(), x.as_f64().unwrap_or(0.0) * m))
        .collect()
}
