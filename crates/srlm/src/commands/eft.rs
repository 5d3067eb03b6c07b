//! `srlm eft`: judge-training (EFT) examples from a model's own judgements, kept where they
//! order answers as they are known to rank (`srlm_core::eft`):
//!
//! - human-ranked replies, as the paper builds them: `srlm eval judge` judges the replies of
//!   Open Assistant trees (`--data`), and the prompts whose scores agree with the human ranking
//!   are kept, the scores balanced;
//! - contrasting answers (Self-Taught Evaluators): `srlm contrast` writes each prompt's answer
//!   (candidate 0) and an answer to a modified instruction (candidate 1), `srlm judge` judges
//!   them (`--candidates`), and judgements that score 0 above 1 are kept.

use crate::commands::eval::RankedReplyJudgement as EvalJudgement;
use crate::train_settings::TrainSettings;
use anyhow::{bail, Result};
use clap::Args;
use srlm_core::eft::{build_eft, EftOptions, JudgedPrompt, Select};
use srlm_core::jsonl::{read_jsonl, write_jsonl_atomic};
use srlm_core::judge::{judge_prompt_within, JudgeSample};
use srlm_core::oasst::{ranked_turns, Tree, TreeFilter, OASST_HINT};
use srlm_core::seed::EftExample;
use srlm_core::stages::{
    id_order, CandidateRecord, JudgementRecord, CANDIDATE_HINT, JUDGEMENT_HINT,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct EftArgs {
    /// Open Assistant trees (oasst1 export format), judged by `srlm eval judge`;
    /// `builtin:oasst-train` is the training split srlm ships.
    #[arg(
        long,
        conflicts_with = "candidates",
        required_unless_present = "candidates"
    )]
    pub data: Option<PathBuf>,
    /// Or contrasting candidates written by `srlm contrast` (candidate 0 ranks above 1),
    /// judged by `srlm judge`.
    #[arg(long)]
    pub candidates: Option<PathBuf>,
    /// The judgements of `--data` (by `srlm eval judge`) or of `--candidates` (by `srlm judge`).
    #[arg(long)]
    pub judgements: PathBuf,
    /// EFT examples out: {"id", "instruction", "response", "judgement", "score"} JSONL.
    #[arg(long)]
    pub out: PathBuf,
    /// Accept equal scores for answers ranked differently.
    #[arg(long)]
    pub allow_ties: bool,
    /// Keep every score's examples (no down-sampling of the most frequent score).
    #[arg(long)]
    pub no_balance: bool,
    /// Which judgements qualify: `mean` (the paper: the answers' mean scores follow the
    /// ranking) or `order` (one sample per answer whose scores follow it).
    #[arg(long, default_value = "mean")]
    pub select: Select,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep machine-written (synthetic) prompts and replies.
    #[arg(long)]
    pub keep_synthetic: bool,
    /// Also write the kept examples as SFT records for `srlm sft` ({"prompt": judge prompt,
    /// "response": judgement}), each judge prompt shortened to fit `--max-len` tokens of
    /// `--tokenizer`'s model with its verdict.
    #[arg(long, requires = "tokenizer")]
    pub sft_out: Option<PathBuf>,
    /// The model to train: a Hugging Face folder (its tokenizer.json) or a tokenizer.json file.
    #[arg(long, requires = "sft_out")]
    pub tokenizer: Option<PathBuf>,
    /// Longest SFT sequence in tokens, as `srlm sft --max-len` [its default].
    #[arg(long, requires = "sft_out")]
    pub max_len: Option<usize>,
}

/// A stored judgement as EFT reads it. A verdict srlm had to ask for counts as no score: an
/// EFT example teaches the judge's own text, which must end with its score.
fn own_judgement(j: JudgeSample) -> JudgeSample {
    match j.forced_verdict {
        None => j,
        Some(_) => JudgeSample {
            score: None,
            failure: Some(srlm_core::judge::ParseFailure::NoScore),
            distribution: None,
            ..j
        },
    }
}

/// Human-ranked replies of every turn of `data`, with `srlm eval judge`'s judgements.
fn ranked_replies(
    data: &Path,
    judgements: &Path,
    filter: &TreeFilter,
) -> Result<Vec<JudgedPrompt>> {
    // Each reply's judgements by sample, whatever order a (resumed) judge wrote them in.
    let mut samples: BTreeMap<(String, usize), BTreeMap<usize, JudgeSample>> = BTreeMap::new();
    for r in read_jsonl::<EvalJudgement>(
        judgements,
        "each line must be a judgement written by `srlm eval judge`",
    )? {
        let r = r.record;
        samples
            .entry((r.prompt_id, r.reply))
            .or_default()
            .insert(r.sample, own_judgement(r.judgement));
    }
    let mut prompts = Vec::new();
    let trees = read_jsonl::<Tree>(&crate::builtin::resolve(data)?, OASST_HINT)?;
    for p in trees.iter().flat_map(|t| ranked_turns(&t.record, filter)) {
        // Only prompts that were judged (eval judge may have run with --limit).
        if !samples.contains_key(&(p.id.clone(), 0)) {
            continue;
        }
        let replies = p
            .replies
            .iter()
            .enumerate()
            .map(|(i, (text, rank))| {
                let js = samples.remove(&(p.id.clone(), i)).unwrap_or_default();
                (text.clone(), *rank, js.into_values().collect())
            })
            .collect();
        prompts.push(JudgedPrompt {
            id: p.id,
            prompt: p.prompt,
            replies,
        });
    }
    Ok(prompts)
}

/// Contrasting candidates (candidate c ranks c-th) with `srlm judge`'s judgements: prompts in
/// id order, candidates by index, judgements by sample, whatever order the (resumed) stages
/// wrote them in.
fn contrasting(candidates: &Path, judgements: &Path) -> Result<Vec<JudgedPrompt>> {
    let mut samples: BTreeMap<String, BTreeMap<usize, JudgeSample>> = BTreeMap::new();
    for r in read_jsonl::<JudgementRecord>(judgements, JUDGEMENT_HINT)? {
        let r = r.record;
        samples
            .entry(r.candidate_id)
            .or_default()
            .insert(r.sample, own_judgement(r.judgement));
    }
    let mut cands: Vec<CandidateRecord> =
        read_jsonl::<CandidateRecord>(candidates, CANDIDATE_HINT)?
            .into_iter()
            .map(|c| c.record)
            .collect();
    cands.sort_by(|a, b| id_order(&a.prompt_id, &b.prompt_id).then(a.candidate.cmp(&b.candidate)));
    let mut prompts: Vec<JudgedPrompt> = Vec::new();
    let mut at: BTreeMap<String, usize> = BTreeMap::new();
    for c in cands {
        let i = *at.entry(c.prompt_id.clone()).or_insert_with(|| {
            prompts.push(JudgedPrompt {
                id: c.prompt_id.clone(),
                prompt: c.prompt.clone(),
                replies: Vec::new(),
            });
            prompts.len() - 1
        });
        let js = samples.remove(&c.id).unwrap_or_default();
        prompts[i]
            .replies
            .push((c.response, c.candidate as u32, js.into_values().collect()));
    }
    // A prompt whose other answer was never written teaches no contrast.
    prompts.retain(|p| p.replies.len() >= 2);
    Ok(prompts)
}

pub fn run(a: EftArgs) -> Result<()> {
    let inputs: Vec<&Path> = [
        a.data.as_deref(),
        a.candidates.as_deref(),
        Some(a.judgements.as_path()),
    ]
    .into_iter()
    .flatten()
    .collect();
    srlm_core::jsonl::refuse_input_as_output(&a.out, &inputs)?;
    let filter = TreeFilter {
        keep_synthetic: a.keep_synthetic,
        ..TreeFilter::default()
    };
    let prompts = match (&a.data, &a.candidates) {
        (Some(d), None) => ranked_replies(d, &a.judgements, &filter)?,
        (None, Some(c)) => contrasting(c, &a.judgements)?,
        _ => bail!("give --data (ranked replies) or --candidates (contrasting answers)"),
    };
    let opts = EftOptions {
        allow_ties: a.allow_ties,
        balance: !a.no_balance,
        seed: a.seed,
        select: a.select,
    };
    let (examples, stats) = build_eft(&prompts, &opts);
    write_jsonl_atomic(&a.out, &examples)?;
    println!("{}", serde_json::to_string(&stats)?);
    if let (Some(sft), Some(tokenizer)) = (&a.sft_out, &a.tokenizer) {
        let mut inputs = inputs;
        inputs.push(&a.out);
        srlm_core::jsonl::refuse_input_as_output(sft, &inputs)?;
        let written = write_sft(
            &examples,
            tokenizer,
            a.max_len.unwrap_or(TrainSettings::sft().max_len),
            sft,
        )?;
        if written < examples.len() {
            eprintln!(
                "srlm: {} of {} examples left out of {}: the judgement alone does not fit --max-len",
                examples.len() - written,
                examples.len(),
                sft.display()
            );
        }
    }
    Ok(())
}

/// Writes `examples` as SFT records (`as_sft`) for the model whose tokenizer is `tokenizer`
/// (a model folder or its tokenizer.json); returns how many were written.
pub fn write_sft(
    examples: &[EftExample],
    tokenizer: &Path,
    max_len: usize,
    out: &Path,
) -> Result<usize> {
    let file = if tokenizer.is_dir() {
        tokenizer.join("tokenizer.json")
    } else {
        tokenizer.to_path_buf()
    };
    let tokenizer = srlm_engine::tokenizer::tokenizer_from_file(&file)?;
    let records = as_sft(examples, &tokenizer, max_len);
    write_jsonl_atomic(out, &records)?;
    Ok(records.len())
}

/// Tokens the chat template adds around a prompt and its reply (SmolLM2's default system
/// prompt and role markers take about 30).
const CHAT_OVERHEAD_TOKENS: usize = 64;

/// EFT examples as SFT records ({"prompt": judge prompt, "response": judgement}), each judge
/// prompt shortened (`judge_prompt_within`) so that the whole example fits `max_len` tokens
/// of `tokenizer` with its verdict: the trainer cuts sequences from the right, which would
/// drop the `Score:` line first. Examples whose judgement alone does not fit are left out.
pub fn as_sft(
    examples: &[EftExample],
    tokenizer: &tokenizers::Tokenizer,
    max_len: usize,
) -> Vec<serde_json::Value> {
    let count = |t: &str| tokenizer.encode(t, false).map_or(usize::MAX, |e| e.len());
    examples
        .iter()
        .filter_map(|e| {
            let budget = max_len.checked_sub(count(&e.judgement) + CHAT_OVERHEAD_TOKENS)?;
            let prompt = judge_prompt_within(&e.instruction, &e.response, budget, count)?;
            Some(serde_json::json!({"prompt": prompt, "response": e.judgement}))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use srlm_core::judge::judge_prompt;

    fn example(instruction: &str, response: &str) -> EftExample {
        EftExample {
            id: "x".into(),
            instruction: instruction.into(),
            response: response.into(),
            judgement: "Relevant and complete.\nScore: 4".into(),
            score: 4,
        }
    }

    /// A whitespace tokenizer: one token a word.
    fn words() -> tokenizers::Tokenizer {
        let vocab: std::collections::HashMap<String, u32> = [("[UNK]".to_string(), 0)].into();
        let model = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut t = tokenizers::Tokenizer::new(model);
        t.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
        t
    }

    #[test]
    fn long_examples_are_shortened_to_keep_their_verdict_within_the_training_length() {
        let t = words();
        let count = |s: &str| t.encode(s, false).unwrap().len();
        let long = "word ".repeat(2000);
        let out = as_sft(
            &[example("Say hi.", "Hi!"), example("Say hi.", &long)],
            &t,
            600,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0]["prompt"], judge_prompt("Say hi.", "Hi!"));
        let p = out[1]["prompt"].as_str().unwrap();
        assert!(p.contains("[...]"));
        let judgement = out[1]["response"].as_str().unwrap();
        assert!(judgement.ends_with("Score: 4"));
        assert!(count(p) + count(judgement) + CHAT_OVERHEAD_TOKENS <= 600);
        // No room even for the judgement: left out, not cut.
        assert!(as_sft(&[example("Say hi.", "Hi!")], &t, 40).is_empty());
    }
}
