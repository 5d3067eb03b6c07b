//! `srlm eval vs`: model A against model B on the same prompts under a fixed judge.
//!
//! Both models answer every prompt (`OUT/answers_a.jsonl`, `OUT/answers_b.jsonl`); then the
//! judge compares each pair twice, A shown first and B shown first (`--mode pairwise`, the
//! default), and A wins a prompt only when both verdicts prefer it; disagreeing or unparsable
//! verdicts make a tie. `--mode scores` has the judge score each answer on its own with the
//! additive prompt (k samples; written or expected scores, `--score`) and compares the means:
//! no answer is shown beside another, so there is no position to be biased by. Every step
//! appends as it goes and resumes when rerun; the result goes to `OUT/summary.json`, with the
//! answers' lengths and whether A's record is bought by length (`LengthCheck`).

use crate::backend::ask_verdict::{judge_sample, AskVerdict};
use crate::backend::{Backend, BackendArgs};
use crate::commands::stages::{run_resumable, seeded};
use crate::model_args::SamplingArgs;
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use srlm_core::headtohead::{
    combine, length_check, pairwise_prompt, parse_verdict, win_rate, Outcome, Verdict,
};
use srlm_core::jsonl::{read_jsonl, recover_jsonl, write_atomic, write_jsonl_atomic};
use srlm_core::judge::{
    judge_prompt, Justification, ScoreDistribution, ScoreMode, JUDGE_TOP_LOGPROBS,
};
use srlm_core::summaries::{read_summary, to_pretty_json, PromptOutcome, VsSummary};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VsMode {
    /// The judge sees both answers, in both orders.
    Pairwise,
    /// The judge scores each answer alone (additive prompt, k samples).
    Scores,
}

impl VsMode {
    /// As the flag and the summary spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pairwise => "pairwise",
            Self::Scores => "scores",
        }
    }
}

#[derive(Args, Debug, serde::Serialize)]
pub struct EvalVsArgs {
    /// Model A (GGUF file or Hugging Face folder).
    #[arg(long)]
    pub a: PathBuf,
    /// Model B.
    #[arg(long)]
    pub b: PathBuf,
    /// The fixed judge (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub judge: Option<PathBuf>,
    /// Prompts: {"id", "prompt"} JSONL, or Vicuna/MT-Bench questions {"question_id", "turns"}
    /// (the first turn).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Output folder (answers, verdicts, summary.json); rerun to resume.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = VsMode::Pairwise)]
    pub mode: VsMode,
    /// Judge samples per answer in `scores` mode.
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// In `scores` mode, what a judgement counts as: its written score or its expected score.
    #[arg(long, default_value = "expected")]
    pub score: ScoreMode,
    /// In `scores` mode: `written`, the judge reasons before its score; `none`, its turn
    /// begins with `Score:` and only the verdict is generated.
    #[arg(long, default_value = "written")]
    pub justification: Justification,
    /// Use only the first N prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// An earlier `srlm eval vs` output with the same B, judge, prompts and settings (its
    /// `settings.json` must match this command's, A and OUT aside): B's answers, and in scores
    /// mode the judge's scores of them, are taken from it instead of made again. A run's later
    /// head-to-heads against M1 take M1's side from the first.
    #[arg(long)]
    pub b_from: Option<PathBuf>,
    /// The judge's temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub judge_temperature: f32,
    #[arg(long, default_value_t = 256)]
    pub judge_max_new_tokens: usize,
    /// Weights, context, threads and batch size for all three models (`--model` is ignored);
    /// `--api-base` puts the judge on a server instead of `--judge` (the answers stay local).
    #[command(flatten)]
    pub backend: BackendArgs,
    /// How the two models answer.
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Answer {
    id: String,
    prompt: String,
    response: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct JudgeRecord {
    /// `<prompt id>/ab` or `/ba` (pairwise: which model was shown first), or
    /// `<prompt id>/a/<s>`, `/b/<s>` (scores).
    id: String,
    raw: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    score: Option<f64>,
    #[serde(
        default,
        rename = "score_distribution",
        skip_serializing_if = "Option::is_none"
    )]
    distribution: Option<ScoreDistribution>,
    /// What the judge wrote after srlm's `Score:` cue when `raw` had no score.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forced_verdict: Option<String>,
}

/// What B's answers and the judge's scores of them depend on: every setting but A, OUT and
/// which prompts (`--limit`) and earlier output (`--b-from`) this invocation uses. Written to
/// `OUT/settings.json`; `--b-from` compares it.
fn b_side_settings(a: &EvalVsArgs) -> Result<Value> {
    let mut v = serde_json::to_value(a)?;
    if let Some(m) = v.as_object_mut() {
        for key in ["a", "out", "limit", "b_from"] {
            m.remove(key);
        }
    }
    Ok(v)
}

/// Copies B's answers (and in scores mode the judgements of them, `<id>/b/<s>`) from `from`,
/// an earlier output with the same `settings`, into `out`, where `out` has none yet. A
/// judgement is taken only with the answer it judged: where `out` already has its own answer
/// to a prompt, only a judgement of that same text is taken.
fn take_b_side(from: &Path, out: &Path, settings: &Value, mode: VsMode) -> Result<()> {
    let hint = "run it without --b-from (B's side is then made again), or give an output of `srlm eval vs` with the same B, judge, prompts and settings";
    let theirs = from.join("settings.json");
    let Some(their_settings) = read_summary::<Value>(&theirs) else {
        // An older srlm's output (a run resumed with a newer one): B's side is made again.
        eprintln!(
            "srlm: warning: --b-from {}: no settings.json there (an older srlm's output, or not one of `srlm eval vs`): B's answers are made again",
            from.display()
        );
        return Ok(());
    };
    if &their_settings != settings {
        let differ: Vec<String> = match (settings.as_object(), their_settings.as_object()) {
            (Some(ours), Some(their)) => ours
                .keys()
                .chain(their.keys())
                .filter(|k| ours.get(*k) != their.get(*k))
                .map(|k| format!("`{k}`"))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect(),
            _ => vec!["the whole file".into()],
        };
        bail!(
            "--b-from {}: made with other settings ({} differ)\n  hint: {hint}",
            from.display(),
            differ.join(", ")
        );
    }
    let theirs: Vec<Answer> = recover_jsonl(&from.join("answers_b.jsonl"))?;
    let answers_path = out.join("answers_b.jsonl");
    if recover_jsonl::<Answer>(&answers_path)?.is_empty() {
        write_jsonl_atomic(&answers_path, &theirs)?;
    }
    let verdicts_path = out.join("judgements.jsonl");
    if mode == VsMode::Scores && recover_jsonl::<JudgeRecord>(&verdicts_path)?.is_empty() {
        let by_id = |answers: Vec<Answer>| -> HashMap<String, String> {
            answers.into_iter().map(|r| (r.id, r.response)).collect()
        };
        let (ours, judged) = (by_id(recover_jsonl(&answers_path)?), by_id(theirs));
        let same_answer = |prompt: &str| {
            ours.get(prompt)
                .is_some_and(|t| judged.get(prompt) == Some(t))
        };
        let taken: Vec<JudgeRecord> = recover_jsonl::<JudgeRecord>(&from.join("judgements.jsonl"))?
            .into_iter()
            .filter(|r| {
                matches!(r.id.rsplitn(3, '/').collect::<Vec<_>>().as_slice(),
                    [_, "b", prompt] if same_answer(prompt))
            })
            .collect();
        write_jsonl_atomic(&verdicts_path, &taken)?;
    }
    Ok(())
}

/// Evaluation prompts from any of the usual files.
pub fn load_prompts(path: &Path) -> Result<Vec<(String, String)>> {
    let hint = r#"each line must be {"id", "prompt"} or a Vicuna/MT-Bench question {"question_id", "turns": ["..."]}"#;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for l in read_jsonl::<Value>(path, hint)? {
        let v = &l.record;
        let id = match v.get("id").or_else(|| v.get("question_id")) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => l.line.to_string(),
        };
        let prompt = v
            .get("prompt")
            .and_then(Value::as_str)
            .or_else(|| {
                v.get("turns")
                    .and_then(|t| t.get(0))
                    .and_then(Value::as_str)
            })
            .or_else(|| v.get("instruction").and_then(Value::as_str));
        let Some(prompt) = prompt else {
            bail!(
                "{}:{}: no `prompt` or `turns` field\n  hint: {hint}",
                path.display(),
                l.line
            );
        };
        if !seen.insert(id.clone()) {
            bail!(
                "{}:{}: field `id`: `{id}` appears twice",
                path.display(),
                l.line
            );
        }
        out.push((id, prompt.to_string()));
    }
    Ok(out)
}

fn answer(
    a: &EvalVsArgs,
    model: &Path,
    prompts: &[(String, String)],
    out: &Path,
    label: &str,
) -> Result<HashMap<String, String>> {
    let done: HashSet<String> = recover_jsonl::<Answer>(out)?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let todo: Vec<&(String, String)> = prompts
        .iter()
        .filter(|(id, _)| !done.contains(id))
        .collect();
    if !todo.is_empty() {
        let backend = a.backend.local(model).open()?;
        let base = a.sampling.params()?;
        let mut requests = Vec::new();
        let mut text = HashMap::new();
        for (id, prompt) in todo {
            requests.push(seeded(id.clone(), prompt, &base));
            text.insert(id.clone(), prompt.clone());
        }
        run_resumable(backend.as_ref(), requests, out, label, |c| Answer {
            prompt: text[&c.id].clone(),
            id: c.id,
            response: c.text,
        })?;
    }
    Ok(recover_jsonl::<Answer>(out)?
        .into_iter()
        .map(|r| (r.id, r.response))
        .collect())
}

pub fn eval_vs(a: EvalVsArgs) -> Result<()> {
    let prompts_file = crate::builtin::resolve(&a.prompts)?;
    let mut prompts = load_prompts(&prompts_file)?;
    if let Some(n) = a.limit {
        prompts.truncate(n);
    }
    for name in [
        "answers_a.jsonl",
        "answers_b.jsonl",
        "judgements.jsonl",
        "summary.json",
        "settings.json",
    ] {
        srlm_core::jsonl::refuse_input_as_output(&a.out.join(name), &[&prompts_file])?;
    }
    std::fs::create_dir_all(&a.out)?;
    let settings = b_side_settings(&a)?;
    write_atomic(
        &a.out.join("settings.json"),
        to_pretty_json(&settings)?.as_bytes(),
    )?;
    if let Some(from) = &a.b_from {
        take_b_side(from, &a.out, &settings, a.mode)?;
    }
    let answers_a = answer(
        &a,
        &a.a,
        &prompts,
        &a.out.join("answers_a.jsonl"),
        "answers A",
    )?;
    let answers_b = answer(
        &a,
        &a.b,
        &prompts,
        &a.out.join("answers_b.jsonl"),
        "answers B",
    )?;
    let both: Vec<&(String, String)> = prompts
        .iter()
        .filter(|(id, _)| answers_a.contains_key(id) && answers_b.contains_key(id))
        .collect();

    // The judge's requests: each a (record id, judge prompt).
    let mut asks: Vec<(String, String)> = Vec::new();
    for (id, q) in &both {
        let (ra, rb) = (&answers_a[id], &answers_b[id]);
        match a.mode {
            VsMode::Pairwise => {
                asks.push((format!("{id}/ab"), pairwise_prompt(q, ra, rb)));
                asks.push((format!("{id}/ba"), pairwise_prompt(q, rb, ra)));
            }
            VsMode::Scores => {
                for s in 0..a.k {
                    asks.push((format!("{id}/a/{s}"), judge_prompt(q, ra)));
                    asks.push((format!("{id}/b/{s}"), judge_prompt(q, rb)));
                }
            }
        }
    }
    let verdicts_path = a.out.join("judgements.jsonl");
    let done: HashSet<String> = recover_jsonl::<JudgeRecord>(&verdicts_path)?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let asks: Vec<(String, String)> = asks
        .into_iter()
        .filter(|(id, _)| !done.contains(id))
        .collect();
    if !asks.is_empty() {
        let backend = match (&a.backend.remote.api_base, &a.judge) {
            (Some(_), _) => a.backend.open()?, // the server judges
            (None, Some(p)) => a.backend.with_model(p).open()?,
            (None, None) => a
                .backend
                .with_model(&srlm_engine::fetch::default_model()?)
                .open()?,
        };
        let params = srlm_engine::sampling::SamplingParams {
            temperature: a.judge_temperature,
            top_p: 0.9,
            max_new_tokens: a.judge_max_new_tokens,
            seed: a.sampling.seed,
            logprobs: (a.mode == VsMode::Scores).then_some(JUDGE_TOP_LOGPROBS),
            ..Default::default()
        };
        // A judgement that fails (too long, or a server that kept failing) counts as a tie.
        let requests = asks
            .iter()
            .map(|(id, text)| seeded(id.clone(), text, &params))
            .collect();
        // Scores mode asks a judge that wrote no score for it; a pairwise verdict is not asked.
        let asking = AskVerdict::new(backend.as_ref(), a.justification);
        let answering: &dyn Backend = match a.mode {
            VsMode::Scores => &asking,
            VsMode::Pairwise => backend.as_ref(),
        };
        run_resumable(answering, requests, &verdicts_path, "judging", |c| {
            let j = judge_sample(&c);
            JudgeRecord {
                id: c.id,
                verdict: parse_verdict(&c.text),
                score: j.score,
                distribution: j.distribution,
                forced_verdict: j.forced_verdict,
                raw: c.text,
            }
        })?;
    }

    let records: BTreeMap<String, JudgeRecord> = recover_jsonl::<JudgeRecord>(&verdicts_path)?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    let mut outcomes = Vec::new();
    let mut unparsed = 0usize;
    let mut first_shown_wins = 0usize;
    let mut per_prompt = Vec::new();
    for (id, _) in &both {
        let outcome = match a.mode {
            VsMode::Pairwise => {
                let v = |k: &str| records.get(&format!("{id}/{k}")).and_then(|r| r.verdict);
                let (ab, ba) = (v("ab"), v("ba"));
                unparsed += ab.is_none() as usize + ba.is_none() as usize;
                first_shown_wins +=
                    (ab == Some(Verdict::First)) as usize + (ba == Some(Verdict::First)) as usize;
                combine(ab.unwrap_or(Verdict::Tie), ba.unwrap_or(Verdict::Tie))
            }
            VsMode::Scores => {
                let mut mean = |side: &str| {
                    let s: Vec<f64> = (0..a.k)
                        .filter_map(|s| {
                            records
                                .get(&format!("{id}/{side}/{s}"))
                                .and_then(|r| a.score.value(r.score, r.distribution.as_ref()))
                        })
                        .collect();
                    unparsed += a.k - s.len();
                    (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64)
                };
                match (mean("a"), mean("b")) {
                    (Some(x), Some(y)) if x > y => Outcome::AWins,
                    (Some(x), Some(y)) if x < y => Outcome::BWins,
                    _ => Outcome::Tie,
                }
            }
        };
        per_prompt.push(PromptOutcome {
            id: id.clone(),
            outcome,
        });
        outcomes.push(outcome);
    }
    let wr = win_rate(&outcomes);
    let chars = |answers: &HashMap<String, String>| -> Vec<usize> {
        both.iter()
            .map(|(id, _)| answers[id].chars().count())
            .collect()
    };
    let lengths = length_check(&outcomes, &chars(&answers_a), &chars(&answers_b));
    let judgements = records.len();
    let summary = VsSummary {
        a: a.a.display().to_string(),
        b: a.b.display().to_string(),
        judge: match (&a.backend.remote.api_base, &a.judge) {
            (Some(url), _) => format!(
                "{} at {url}",
                a.backend
                    .remote
                    .api_model
                    .as_deref()
                    .unwrap_or("(first listed)")
            ),
            (None, Some(p)) => p.display().to_string(),
            (None, None) => "default".into(),
        },
        prompts: a.prompts.display().to_string(),
        mode: a.mode.name().into(),
        score: (a.mode == VsMode::Scores).then(|| a.score.name().into()),
        compared: outcomes.len(),
        a_win_rate: wr,
        lengths,
        judge_unparsed: unparsed,
        judgements,
        first_position_win_share: (a.mode == VsMode::Pairwise && judgements > 0)
            .then(|| first_shown_wins as f64 / judgements as f64),
        outcomes: per_prompt,
    };
    write_atomic(
        &a.out.join("summary.json"),
        to_pretty_json(&summary)?.as_bytes(),
    )?;
    println!(
        "A wins {}, ties {}, loses {} of {}: score {:.3} (95% CI {:.3}-{:.3}); {} unparsed judgements; answers {:.0} vs {:.0} characters{}",
        wr.wins, wr.ties, wr.losses, outcomes.len(), wr.score, wr.ci95.0, wr.ci95.1, unparsed,
        lengths.a_chars, lengths.b_chars,
        if lengths.bought_by_length { " (A's record is bought by length: it does not win where its answer is no longer)" } else { "" }
    );
    Ok(())
}
