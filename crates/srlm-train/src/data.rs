//! From records to token batches: conversations rendered through the model's chat template,
//! with a mask that trains only the assistant's tokens, and right-padded batches that name the
//! positions a loss reads.

use crate::error::{Result, TrainError};
use candle_core::{Device, Tensor};
use srlm_core::generation::Message;
use srlm_core::jsonl::read_jsonl;
use srlm_core::train_data::{
    DpoRecord, PreferencePair, SftRecord, DPO_SCHEMA_HINT, SFT_SCHEMA_HINT,
};
use srlm_engine::llama::Llama;
use srlm_engine::Engine;
use std::path::Path;

/// A tokenized sequence; `train[j]` says whether token j is a target of the loss.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub train: Vec<bool>,
}

impl Sequence {
    pub fn target_count(&self) -> usize {
        self.train.iter().skip(1).filter(|&&t| t).count()
    }

    /// Cuts the sequence to `max_len` tokens (from the right, as TRL truncates).
    fn truncate(&mut self, max_len: usize) {
        self.ids.truncate(max_len);
        self.train.truncate(max_len);
    }
}

/// Tokenizes `conv` through the chat template. Every assistant turn is a target; the rest
/// (system prompt, user turns, template markup before each reply) is context. Each piece is
/// tokenized on its own, so the boundary falls exactly where generation starts.
pub fn tokenize_conversation(
    engine: &Engine,
    conv: &[Message],
) -> std::result::Result<Sequence, String> {
    let render =
        |msgs: &[Message], gen: bool| engine.chat.render(msgs, gen).map_err(|e| e.to_string());
    let full = render(conv, false)?;
    // Character spans of the assistant replies (including the template's end-of-turn markup).
    let mut cuts: Vec<(usize, bool)> = Vec::new(); // (end of a piece, is that piece trained)
    let mut pos = 0;
    for (i, m) in conv.iter().enumerate() {
        if m.role != "assistant" {
            continue;
        }
        let before = render(&conv[..i], true)?;
        let through = render(&conv[..=i], false)?;
        if !through.starts_with(&before) || !full.starts_with(&through) || before.len() < pos {
            return Err("the chat template does not render this conversation as a growing prefix, so its reply tokens cannot be located".into());
        }
        cuts.push((before.len(), false));
        cuts.push((through.len(), true));
        pos = through.len();
    }
    cuts.push((full.len(), false));
    let mut seq = Sequence {
        ids: Vec::new(),
        train: Vec::new(),
    };
    let mut start = 0;
    for (end, train) in cuts {
        if end > start {
            let ids = engine
                .tokenizer
                .encode(&full[start..end])
                .map_err(|e| e.to_string())?;
            seq.train.extend(std::iter::repeat_n(train, ids.len()));
            seq.ids.extend(ids);
        }
        start = end;
    }
    Ok(seq)
}

/// Reads an SFT file and tokenizes it. Sequences longer than `max_len` are cut; records left
/// without a target token are an error naming the line.
pub fn load_sft(engine: &Engine, path: &Path, max_len: usize) -> Result<Vec<Sequence>> {
    let records = read_jsonl::<SftRecord>(path, SFT_SCHEMA_HINT)?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let bad = |message| TrainError::record(path, r.line, message, SFT_SCHEMA_HINT);
        let conv = r.record.conversation().map_err(&bad)?;
        let mut seq = tokenize_conversation(engine, &conv).map_err(&bad)?;
        seq.truncate(max_len);
        if seq.target_count() == 0 {
            let message = format!("no reply token is left within --max-len {max_len}");
            let hint = "raise --max-len or shorten the prompt";
            return Err(TrainError::record(path, r.line, message, hint));
        }
        out.push(seq);
    }
    if out.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no records",
            path.display()
        )));
    }
    Ok(out)
}

/// A preference pair as two sequences that share the prompt tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct PairSequences {
    pub chosen: Sequence,
    pub rejected: Sequence,
    /// Reference log-probabilities carried by the record, if it had them.
    pub ref_logps: Option<(f64, f64)>,
}

impl PairSequences {
    /// The length a batch holding both replies pads to.
    pub fn padded_len(&self) -> usize {
        self.chosen.ids.len().max(self.rejected.ids.len())
    }
}

fn pair_sequences(
    engine: &Engine,
    pair: &PreferencePair,
    max_len: usize,
) -> std::result::Result<(Sequence, Sequence), String> {
    let one = |reply: &str| -> std::result::Result<Sequence, String> {
        let mut conv = pair.prompt.clone();
        conv.push(Message::new("assistant", reply));
        let mut s = tokenize_conversation(engine, &conv)?;
        s.truncate(max_len);
        if s.target_count() == 0 {
            return Err(format!(
                "the prompt leaves no room for the reply within --max-len {max_len}"
            ));
        }
        Ok(s)
    };
    Ok((one(&pair.chosen)?, one(&pair.rejected)?))
}

pub fn load_pairs(engine: &Engine, path: &Path, max_len: usize) -> Result<Vec<PairSequences>> {
    let records = read_jsonl::<DpoRecord>(path, DPO_SCHEMA_HINT)?;
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let bad = |message| TrainError::record(path, r.line, message, DPO_SCHEMA_HINT);
        let pair = r.record.pair().map_err(&bad)?;
        if pair.chosen.trim() == pair.rejected.trim() {
            // The DPO loss of such a pair is ln 2 whatever the model: a zero gradient, no signal.
            return Err(bad(
                "`chosen` and `rejected` are the same text, so the pair prefers nothing".into(),
            ));
        }
        let (chosen, rejected) = pair_sequences(engine, &pair, max_len).map_err(&bad)?;
        let ref_logps = match (r.record.ref_chosen_logps, r.record.ref_rejected_logps) {
            (Some(c), Some(j)) => Some((c, j)),
            (None, None) => None,
            _ => {
                return Err(bad(
                    "has one of ref_chosen_logps/ref_rejected_logps but not the other".into(),
                ))
            }
        };
        out.push(PairSequences {
            chosen,
            rejected,
            ref_logps,
        });
    }
    if out.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no records",
            path.display()
        )));
    }
    Ok(out)
}

/// Sequences right-padded into one (b, t) batch, with the flat positions whose next token is a
/// target: logits at `rows` predict `targets`; `owner` is the sequence of each row.
pub struct Batch {
    pub ids: Tensor,     // (b, t) u32
    pub rows: Tensor,    // (n,) u32, indices into b*t
    pub targets: Tensor, // (n,) u32
    pub owner: Vec<u32>, // (n,)
    pub sequences: usize,
    /// Tokens in the batch (padding excluded).
    pub tokens: usize,
}

impl Batch {
    pub fn new(seqs: &[&Sequence], pad_id: u32, device: &Device) -> Result<Self> {
        let b = seqs.len();
        let t = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(1).max(1);
        let mut ids = vec![pad_id; b * t];
        let (mut rows, mut targets, mut owner) = (Vec::new(), Vec::new(), Vec::new());
        let mut tokens = 0;
        for (i, s) in seqs.iter().enumerate() {
            ids[i * t..i * t + s.ids.len()].copy_from_slice(&s.ids);
            tokens += s.ids.len();
            for j in 1..s.ids.len() {
                if s.train[j] {
                    rows.push((i * t + j - 1) as u32);
                    targets.push(s.ids[j]);
                    owner.push(i as u32);
                }
            }
        }
        let n = rows.len();
        Ok(Self {
            ids: Tensor::from_vec(ids, (b, t), device)?,
            rows: Tensor::from_vec(rows, n, device)?,
            targets: Tensor::from_vec(targets, n, device)?,
            owner,
            sequences: b,
            tokens,
        })
    }

    pub fn target_count(&self) -> usize {
        self.owner.len()
    }

    /// `log p(target)` of every target under `model`: (n,). The LM head and the loss run in
    /// row chunks when the head is a plain matrix, so the (n, vocab) logits never exist whole.
    pub fn target_logps(&self, model: &Llama) -> Result<Tensor> {
        Ok(match model.lm_head_dense() {
            Some(w) => {
                let h = model.hidden_rows(&self.ids, &self.rows)?; // (n, hidden)
                crate::token_logps::linear_token_logps(&h, w, &self.targets)?
            }
            None => {
                let logits = model.logits_at(&self.ids, &self.rows)?; // (n, vocab)
                crate::token_logps::token_logps(&logits, &self.targets)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_rows_point_at_the_token_before_each_target() {
        let a = Sequence {
            ids: vec![5, 6, 7],
            train: vec![false, true, true],
        };
        let b = Sequence {
            ids: vec![8, 9],
            train: vec![false, true],
        };
        let batch = Batch::new(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(
            batch.ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 7], vec![8, 9, 0]]
        );
        assert_eq!(batch.rows.to_vec1::<u32>().unwrap(), vec![0, 1, 3]);
        assert_eq!(batch.targets.to_vec1::<u32>().unwrap(), vec![6, 7, 9]);
        assert_eq!(batch.owner, vec![0, 0, 1]);
        assert_eq!(batch.tokens, 5);
    }
}
