//! `srlm eval judge`: the model as a judge against human rankings. Every ranked reply of every
//! Open Assistant prompt is judged k times with the additive prompt; judgements are appended to
//! a JSONL file as they finish (rerun to resume); the agreement metrics go to stdout and to
//! `<out>.metrics.json`: for the written scores and for the expected scores (when the backend
//! gives log-probabilities), beside the length baseline and the constant judge on the same
//! pairs. The default data is the held-out Open Assistant split shipped in the binary.

use crate::backend::ask_verdict::{judge_sample, AskVerdict};
use crate::backend::BackendArgs;
use crate::commands::stages::{judge_params, run_resumable, seeded, WithoutDistribution};
use crate::model_args::SamplingArgs;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use srlm_core::jsonl::{read_jsonl, recover_jsonl};
use srlm_core::judge::{judge_prompt, mean_value, JudgeSample, Justification, ScoreMode};
use srlm_core::metrics::{compare_judges, JudgedReply};
use srlm_core::oasst::{ranked_prompt, ranked_turns, RankedPrompt, Tree, TreeFilter, OASST_HINT};
use srlm_core::summaries::{to_pretty_json, JudgeEvalSummary};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// Score human-ranked replies with the model as judge; report agreement with the humans.
    Judge(EvalJudgeArgs),
    /// Model A against model B on the same prompts under a fixed judge, both answer orders.
    Vs(crate::commands::eval_vs::EvalVsArgs),
}

#[derive(Args, Debug, serde::Serialize)]
pub struct EvalJudgeArgs {
    /// Open Assistant trees (oasst1 export format); `builtin:oasst-eval` is the held-out split
    /// shipped in srlm, which nothing srlm trains on comes from.
    #[arg(long, default_value = "builtin:oasst-eval")]
    pub data: PathBuf,
    /// Judgements, one JSON object a line (resumable); metrics go to <out>.metrics.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Judge samples per reply; their parsed scores are averaged.
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// Judge only the first N prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep machine-written (synthetic) prompts and replies.
    #[arg(long)]
    pub keep_synthetic: bool,
    /// Judge only the first turn of each tree (the paper's set); by default every turn with
    /// ranked replies counts, a later turn with the conversation before it as its question.
    #[arg(long)]
    pub first_turn: bool,
    /// Which reading of the judgements the headline `agreement` reports (both are computed).
    #[arg(long, default_value = "sampled")]
    pub score: ScoreMode,
    /// `written`: the judge reasons, then scores (the paper); `none`: its turn begins with
    /// `Score:` and only the verdict is generated (a prefill and a few tokens a judgement).
    #[arg(long, default_value = "written")]
    pub justification: Justification,
    /// The judge: `--model`, or a server (`--api-base`).
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// One judgement as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankedReplyJudgement {
    /// `<prompt id>/<reply index>/<sample>`.
    pub id: String,
    pub prompt_id: String,
    pub reply: usize,
    pub sample: usize,
    pub human_rank: u32,
    /// `raw`, `score`, `failure`, `score_distribution`, `forced_verdict`, as fields of the
    /// record.
    #[serde(flatten)]
    pub judgement: JudgeSample,
}

pub fn run(cmd: EvalCommand) -> Result<()> {
    match cmd {
        EvalCommand::Judge(a) => eval_judge(a),
        EvalCommand::Vs(a) => crate::commands::eval_vs::eval_vs(a),
    }
}

fn eval_judge(a: EvalJudgeArgs) -> Result<()> {
    srlm_core::jsonl::refuse_input_as_output(&a.out, &[&a.data])?;
    let filter = TreeFilter {
        keep_synthetic: a.keep_synthetic,
        ..TreeFilter::default()
    };
    let data = crate::builtin::resolve(&a.data)?;
    let trees = read_jsonl::<Tree>(&data, OASST_HINT)?;
    let mut prompts: Vec<RankedPrompt> = trees
        .iter()
        .flat_map(|t| match a.first_turn {
            true => ranked_prompt(&t.record, &filter).into_iter().collect(),
            false => ranked_turns(&t.record, &filter),
        })
        .collect();
    if let Some(n) = a.limit {
        prompts.truncate(n);
    }
    if prompts.is_empty() {
        anyhow::bail!(
            "{}: no prompt with two or more ranked human replies\n  hint: {OASST_HINT}",
            a.data.display()
        );
    }
    let done: Vec<RankedReplyJudgement> = recover_jsonl(&a.out)?;
    let done_ids: HashSet<String> = done.iter().map(|r| r.id.clone()).collect();
    let backend = a.backend.open()?;
    let base = judge_params(&a.sampling)?;
    let mut meta = BTreeMap::new();
    let mut requests = Vec::new();
    for p in &prompts {
        for (ri, (reply, rank)) in p.replies.iter().enumerate() {
            let prompt = judge_prompt(&p.prompt, reply);
            for s in 0..a.k {
                let id = format!("{}/{ri}/{s}", p.id);
                meta.insert(id.clone(), (p.id.clone(), ri, s, *rank));
                if done_ids.contains(&id) {
                    continue;
                }
                requests.push(seeded(id, &prompt, &base));
            }
        }
    }
    // Replies whose judgements failed (too long for the context, or a server that kept
    // failing) are left out of the metrics, as a missing score would be, and counted.
    let mut without = WithoutDistribution::default();
    let asking = AskVerdict::new(backend.as_ref(), a.justification);
    let run = run_resumable(&asking, requests, &a.out, "judging", |c| {
        let (prompt_id, reply, sample, human_rank) = meta[&c.id].clone();
        let j = judge_sample(&c);
        without.count(&j, c.logprobs.is_some());
        RankedReplyJudgement {
            id: c.id,
            prompt_id,
            reply,
            sample,
            human_rank,
            judgement: j,
        }
    })?;
    without.warn(backend.as_ref());

    // Metrics over every judgement of the selected prompts.
    let all: Vec<RankedReplyJudgement> = recover_jsonl(&a.out)?;
    let mut by_reply: BTreeMap<(String, usize), (u32, Vec<JudgeSample>)> = BTreeMap::new();
    for r in all.into_iter().filter(|r| meta.contains_key(&r.id)) {
        by_reply
            .entry((r.prompt_id.clone(), r.reply))
            .or_insert_with(|| (r.human_rank, Vec::new()))
            .1
            .push(r.judgement);
    }
    let samples = by_reply.values().map(|v| v.1.len()).sum::<usize>();
    let failures = by_reply
        .values()
        .flat_map(|v| &v.1)
        .filter(|j| j.score.is_none())
        .count();
    let forced = by_reply
        .values()
        .flat_map(|v| &v.1)
        .filter(|j| j.forced_verdict.is_some())
        .count();
    let with_distribution = by_reply
        .values()
        .flat_map(|v| &v.1)
        .filter(|j| j.distribution.is_some())
        .count();
    let mut replies: Vec<Vec<JudgedReply>> = Vec::new();
    for p in &prompts {
        let mut rr = Vec::new();
        for (ri, (text, _)) in p.replies.iter().enumerate() {
            if let Some((rank, js)) = by_reply.get(&(p.id.clone(), ri)) {
                rr.push(JudgedReply {
                    human_rank: *rank,
                    chars: text.chars().count(),
                    sampled: mean_value(js, ScoreMode::Sampled),
                    expected: mean_value(js, ScoreMode::Expected),
                });
            }
        }
        replies.push(rr);
    }
    let judges = compare_judges(&replies, with_distribution > 0);
    let agreement = judges.under(a.score).agreement.clone();
    let scored = samples - failures;
    let share = |n: usize, of: usize| if of > 0 { n as f64 / of as f64 } else { 0.0 };
    let summary = JudgeEvalSummary {
        model: backend.describe(),
        data: a.data.display().to_string(),
        prompts: prompts.len(),
        k: a.k,
        judgements: samples,
        failed_requests: run.failed,
        // Judgements with no score even after being asked for one, and those that had to be
        // asked (`forced_verdict`): the judge's own failure rate is the two together.
        parse_failure_rate: share(failures, samples),
        forced_verdict_rate: share(forced, samples),
        with_distribution: share(with_distribution, scored),
        score: a.score,
        agreement,
        judges,
    };
    let metrics_path = PathBuf::from(format!("{}.metrics.json", a.out.display()));
    std::fs::write(&metrics_path, to_pretty_json(&summary)?)
        .with_context(|| format!("writing {}", metrics_path.display()))?;
    println!("{}", serde_json::to_value(&summary)?);
    Ok(())
}
