//! `srlm eft`: judge-training (EFT) examples from a model's judgements of human-ranked replies,
//! as the paper builds them (`srlm_core::eft`): run `srlm eval judge` with the IFT-trained
//! model on Open Assistant trees, then this command keeps the prompts whose scores agree with
//! the human ranking and balances the scores.

use crate::eval::JudgementRecord;
use anyhow::Result;
use clap::Args;
use srlm_core::eft::{build_eft, EftOptions, JudgedPrompt};
use srlm_core::jsonl::{read_jsonl, write_jsonl_atomic};
use srlm_core::judge::JudgeSample;
use srlm_core::oasst::{ranked_prompt, Tree, TreeFilter, OASST_HINT};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct EftArgs {
    /// Open Assistant trees (oasst1 export format).
    #[arg(long)]
    pub data: PathBuf,
    /// The judgements `srlm eval judge` wrote for those trees.
    #[arg(long)]
    pub judgements: PathBuf,
    /// EFT examples out: {"id", "instruction", "response", "judgement", "score"} JSONL.
    #[arg(long)]
    pub out: PathBuf,
    /// Accept equal mean scores for replies the humans ranked differently.
    #[arg(long)]
    pub allow_ties: bool,
    /// Keep every score's examples (no down-sampling of the most frequent score).
    #[arg(long)]
    pub no_balance: bool,
    /// Which judgements qualify: `mean` (the paper: the replies' mean scores follow the human
    /// order) or `order` (one sample per reply whose scores follow it).
    #[arg(long, default_value = "mean")]
    pub select: srlm_core::eft::Select,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep machine-written (synthetic) prompts and replies.
    #[arg(long)]
    pub keep_synthetic: bool,
}

pub fn run(a: EftArgs) -> Result<()> {
    let filter = TreeFilter {
        keep_synthetic: a.keep_synthetic,
        ..TreeFilter::default()
    };
    let mut samples: BTreeMap<(String, usize), Vec<JudgeSample>> = BTreeMap::new();
    for r in read_jsonl::<JudgementRecord>(
        &a.judgements,
        "each line must be a judgement written by `srlm eval judge`",
    )? {
        let r = r.record;
        samples
            .entry((r.prompt_id, r.reply))
            .or_default()
            .push(JudgeSample {
                raw: r.raw,
                score: r.score,
                failure: r.failure,
                distribution: r.distribution,
            });
    }
    let mut prompts = Vec::new();
    for t in read_jsonl::<Tree>(&crate::builtin::resolve(&a.data)?, OASST_HINT)? {
        let Some(p) = ranked_prompt(&t.record, &filter) else {
            continue;
        };
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
                (text.clone(), *rank, js)
            })
            .collect();
        prompts.push(JudgedPrompt {
            id: p.id,
            prompt: p.prompt,
            replies,
        });
    }
    let opts = EftOptions {
        allow_ties: a.allow_ties,
        balance: !a.no_balance,
        seed: a.seed,
        select: a.select,
    };
    let (examples, stats) = build_eft(&prompts, &opts);
    write_jsonl_atomic(&a.out, &examples)?;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
