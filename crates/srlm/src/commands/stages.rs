//! The loop's stages as commands on explicit files (schemas in `srlm_core::stages`):
//! `srlm sample` (N candidate responses per prompt), `srlm judge` (k additive-prompt judgements
//! per candidate), `srlm pairs` (best against worst per prompt). Sampling and judging append
//! records as they finish and resume by id when rerun. Sampling and judging run on the local
//! model or, with `--api-base`, on an OpenAI-compatible server (`crate::backend`).

use crate::backend::ask_verdict::{judge_sample, AskVerdict};
use crate::backend::{Backend, BackendArgs, GenRequest, Generated, Outcome};
use crate::commands::generate::record_seed;
use crate::model_args::SamplingArgs;
use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use srlm_core::diagnostics::diagnose;
use srlm_core::generation::{Message, PromptInput};
use srlm_core::jsonl::{
    read_jsonl, recover_jsonl, refuse_input_as_output, write_atomic, write_jsonl_atomic,
    JsonlWriter, Lined,
};
use srlm_core::judge::{judge_prompt, JudgeSample, Justification, ScoreMode, JUDGE_TOP_LOGPROBS};
use srlm_core::pairs::{build_pairs, PairOptions, ToleranceUnit};
use srlm_core::stages::{
    CandidateRecord, JudgementRecord, PromptRecord, CANDIDATE_HINT, JUDGEMENT_HINT, PROMPT_HINT,
};
use srlm_engine::sampling::SamplingParams;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Args, Debug, serde::Serialize)]
pub struct SampleArgs {
    /// Prompts: {"id", "prompt"} JSONL.
    #[arg(long)]
    pub prompts: PathBuf,
    /// Candidates out (appended; rerun to resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Responses per prompt (the paper: 4).
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
    /// The paper samples at temperature 0.7, top-p 0.9 (the defaults).
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args, Debug, serde::Serialize)]
pub struct JudgeArgs {
    /// Candidates written by `srlm sample`.
    #[arg(long)]
    pub candidates: PathBuf,
    /// Judgements out (appended; rerun to resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Judgements per candidate, averaged (the paper: 3). Each records its written score and,
    /// where the backend gives log-probabilities, the expected score under its distribution.
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// `written`: the judge reasons, then scores (the paper); `none`: its turn begins with
    /// `Score:` and only the verdict is generated (a prefill and a few tokens a judgement).
    #[arg(long, default_value = "written")]
    pub justification: Justification,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args, Debug, serde::Serialize)]
pub struct PairsArgs {
    #[arg(long)]
    pub candidates: PathBuf,
    #[arg(long)]
    pub judgements: PathBuf,
    /// Pairs out: {"prompt", "chosen", "rejected", ...}, what `srlm dpo` and TRL read.
    #[arg(long)]
    pub out: PathBuf,
    /// Drop pairs whose score gap is below this.
    #[arg(long, default_value_t = 0.0)]
    pub min_margin: f64,
    /// Among candidates within this of the best score, choose the shortest (length control).
    #[arg(long)]
    pub length_control: Option<f64>,
    /// What `--length-control` is measured in: "points" of score, or "range", a share of the
    /// prompt's best-minus-worst (0.25: within a quarter of the range of the best).
    #[arg(long, default_value = "points")]
    pub length_control_unit: ToleranceUnit,
    /// What a judgement counts as: its written score, or the expected score at its score
    /// token (judgements without a distribution count their written score).
    #[arg(long, default_value = "sampled")]
    pub score: ScoreMode,
    /// Also write the iteration's diagnostics here (score histogram, agreement of the k
    /// samples, ties, lengths of chosen and rejected: what `srlm report` shows).
    #[arg(long)]
    pub diagnostics: Option<PathBuf>,
}

/// What a stage's generation came to.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct GenerationSummary {
    pub done: usize,
    pub failed: usize,
}

/// A request that could not be answered, a line of `OUT.failures.jsonl`.
#[derive(Debug, Serialize, serde::Deserialize)]
struct FailureRecord {
    id: String,
    error: String,
}

/// Removes a failures list left by an earlier invocation, once nothing failed; a file of that
/// name that is not such a list is left alone.
fn remove_failures(path: &Path) -> Result<()> {
    if path.exists() {
        srlm_core::jsonl::check_replaceable::<FailureRecord>(path)?;
        std::fs::remove_file(path)?;
    }
    Ok(())
}

pub(crate) fn failures_path(out: &Path) -> PathBuf {
    out.with_extension("failures.jsonl")
}

/// Generates `requests` (those not yet in `out`) through `backend`, appending `make(completion)`
/// for each as it finishes. Requests that fail are listed in `OUT.failures.jsonl` (rewritten
/// by every invocation) and left out of `out`, so rerunning the command asks for them again.
/// It fails only when every request failed and `out` holds nothing, from this invocation or
/// an earlier one.
pub(crate) fn run_resumable<R: Serialize>(
    backend: &dyn Backend,
    requests: Vec<GenRequest>,
    out: &Path,
    label: &str,
    mut make: impl FnMut(Generated) -> R,
) -> Result<GenerationSummary> {
    let failures_file = failures_path(out);
    if requests.is_empty() {
        eprintln!("srlm: nothing to do: {} is complete", out.display());
        remove_failures(&failures_file)?;
        return Ok(GenerationSummary::default());
    }
    // Records from an earlier invocation: the backend answered then, so requests that all fail
    // now (a prompt too long for the context fails on every try) are not "nothing works".
    let resumed = std::fs::metadata(out).is_ok_and(|m| m.len() > 0);
    let mut writer = JsonlWriter::append(out)?;
    let bar = ProgressBar::new(requests.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{label} {{bar:30}} {{pos}}/{{len}}  [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("valid template"),
    );
    let total = requests.len();
    let mut summary = GenerationSummary::default();
    let mut failures: Vec<(String, String)> = Vec::new();
    backend.generate(requests, &mut |outcome| {
        match outcome {
            Outcome::Done(g) => {
                writer.write(&make(g))?;
                summary.done += 1;
            }
            Outcome::Failed { id, error } => failures.push((id, error)),
        }
        bar.inc(1);
        crate::faults::crash_point(out, bar.position());
        Ok(())
    })?;
    bar.finish_and_clear();
    summary.failed = failures.len();
    if failures.is_empty() {
        remove_failures(&failures_file)?;
    } else {
        failures.sort();
        let records: Vec<FailureRecord> = failures
            .iter()
            .map(|(id, error)| FailureRecord {
                id: id.clone(),
                error: error.clone(),
            })
            .collect();
        write_jsonl_atomic(&failures_file, &records)?;
        if summary.done == 0 && !resumed {
            let first = &failures[0].1;
            let check = if first.contains("HTTP 401") || first.contains("HTTP 403") {
                "the server refused the API key: check the variable --api-key-env names".to_string()
            } else {
                format!("check the backend ({})", backend.describe())
            };
            anyhow::bail!(
                "every one of the {total} requests failed (first: {}: {first}); they are listed in {}\n  hint: {check}, then rerun the same command",
                failures[0].0,
                failures_file.display(),
            );
        }
        eprintln!(
            "srlm: {} of {total} requests failed (first: {}: {}); they are listed in {} and left out of {}\n  hint: rerun the same command to ask for them again",
            failures.len(),
            failures[0].0,
            failures[0].1,
            failures_file.display(),
            out.display()
        );
    }
    Ok(summary)
}

/// A request for `user` as one chat turn, whose seed derives from the run seed and its id, so
/// a sample does not depend on batching or on where a resumed run restarted.
pub(crate) fn seeded(id: String, user: &str, base: &SamplingParams) -> GenRequest {
    let mut params = base.clone();
    params.seed = record_seed(base.seed, &id);
    GenRequest {
        id,
        prompt: PromptInput::Chat(vec![Message::new("user", user)]),
        params,
    }
}

pub fn sample(a: SampleArgs) -> Result<()> {
    refuse_input_as_output(&a.out, &[&a.prompts])?;
    let prompts = read_jsonl::<PromptRecord>(&a.prompts, PROMPT_HINT)?;
    check_unique(
        &a.prompts,
        prompts.iter().map(|p| (p.line, p.record.id.as_str())),
    )?;
    let done: HashSet<String> = recover_jsonl::<CandidateRecord>(&a.out)?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let backend = a.backend.open()?;
    let base = a.sampling.params()?;
    let mut meta = HashMap::new();
    let mut requests = Vec::new();
    for p in &prompts {
        for c in (0..a.n).filter(|c| !done.contains(&format!("{}/{c}", p.record.id))) {
            let id = format!("{}/{c}", p.record.id);
            meta.insert(id.clone(), (p.record.clone(), c));
            requests.push(seeded(id, &p.record.prompt, &base));
        }
    }
    run_resumable(backend.as_ref(), requests, &a.out, "sampling", |c| {
        let (p, cand) = meta[&c.id].clone();
        CandidateRecord {
            id: c.id,
            prompt_id: p.id,
            prompt: p.prompt,
            candidate: cand,
            response: c.text,
            finish_reason: Some(format!("{:?}", c.finish_reason).to_lowercase()),
        }
    })?;
    Ok(())
}

pub fn judge(a: JudgeArgs) -> Result<()> {
    refuse_input_as_output(&a.out, &[&a.candidates])?;
    let candidates = read_jsonl::<CandidateRecord>(&a.candidates, CANDIDATE_HINT)?;
    check_unique(
        &a.candidates,
        candidates.iter().map(|c| (c.line, c.record.id.as_str())),
    )?;
    let done: HashSet<String> = recover_jsonl::<JudgementRecord>(&a.out)?
        .into_iter()
        .map(|j| j.id)
        .collect();
    let backend = a.backend.open()?;
    let base = judge_params(&a.sampling)?;
    let mut meta = HashMap::new();
    let mut requests = Vec::new();
    for c in &candidates {
        let c = &c.record;
        let prompt = judge_prompt(&c.prompt, &c.response);
        for s in (0..a.k).filter(|s| !done.contains(&format!("{}/{s}", c.id))) {
            let id = format!("{}/{s}", c.id);
            meta.insert(id.clone(), (c.id.clone(), c.prompt_id.clone(), s));
            requests.push(seeded(id, &prompt, &base));
        }
    }
    let mut without = WithoutDistribution::default();
    let asking = AskVerdict::new(backend.as_ref(), a.justification);
    run_resumable(&asking, requests, &a.out, "judging", |c| {
        let (candidate_id, prompt_id, sample) = meta[&c.id].clone();
        let j = judge_sample(&c);
        without.count(&j, c.logprobs.is_some());
        JudgementRecord {
            id: c.id,
            candidate_id,
            prompt_id,
            sample,
            judgement: j,
        }
    })?;
    without.warn(backend.as_ref());
    Ok(())
}

/// A judge's sampling settings, asking for the log-probabilities its expected score needs.
pub(crate) fn judge_params(sampling: &SamplingArgs) -> Result<SamplingParams> {
    Ok(SamplingParams {
        logprobs: Some(JUDGE_TOP_LOGPROBS),
        ..sampling.params()?
    })
}

/// Scored judgements that came without a distribution over the score, and why.
#[derive(Debug, Default)]
pub(crate) struct WithoutDistribution {
    /// The backend returned no log-probabilities.
    no_logprobs: usize,
    /// It did, but they did not line up with the score.
    unreadable: usize,
    scored: usize,
}

impl WithoutDistribution {
    pub fn count(&mut self, j: &JudgeSample, had_logprobs: bool) {
        if j.score.is_none() {
            return;
        }
        self.scored += 1;
        match (j.distribution.is_some(), had_logprobs) {
            (true, _) => {}
            (false, false) => self.no_logprobs += 1,
            (false, true) => self.unreadable += 1,
        }
    }

    /// Says, once, how many judgements the expected score will have to take at their word.
    pub fn warn(&self, backend: &dyn Backend) {
        if self.no_logprobs > 0 {
            eprintln!(
                "srlm: warning: {} returned no log-probabilities for {} of {} scored judgements; the expected score falls back to their written score\n  hint: vLLM, SGLang, llama.cpp's server and `srlm serve` return them (`logprobs`/`top_logprobs`)",
                backend.describe(),
                self.no_logprobs,
                self.scored
            );
        }
        if self.unreadable > 0 {
            eprintln!(
                "srlm: warning: the log-probabilities of {} of {} scored judgements did not line up with their text at the score; those fall back to their written score",
                self.unreadable, self.scored
            );
        }
    }
}

/// Ids (with their lines) that appear once each; the second of a repeated one is an error
/// naming its file and line, since the stage's output is keyed by them.
fn check_unique<'a>(path: &Path, ids: impl Iterator<Item = (usize, &'a str)>) -> Result<()> {
    let mut seen = HashSet::new();
    for (line, id) in ids {
        if !seen.insert(id) {
            anyhow::bail!(
                "{}:{line}: field `id`: `{id}` appears twice\n  hint: ids must be unique; the output is keyed by them",
                path.display()
            );
        }
    }
    Ok(())
}

/// Candidates with unique ids, and judgements on the 0-5 scale, each of a candidate in the
/// candidates file and each once; the first record that is not names its file and line.
fn check_judged(
    candidates_path: &Path,
    candidates: &[Lined<CandidateRecord>],
    judgements_path: &Path,
    judgements: &[Lined<JudgementRecord>],
) -> Result<()> {
    check_unique(
        candidates_path,
        candidates.iter().map(|c| (c.line, c.record.id.as_str())),
    )?;
    let ids: HashSet<&str> = candidates.iter().map(|c| c.record.id.as_str()).collect();
    for j in judgements {
        let at = format!("{}:{}", judgements_path.display(), j.line);
        j.record
            .check()
            .map_err(|m| anyhow::anyhow!("{at}: {m}\n  hint: {JUDGEMENT_HINT}"))?;
        if !ids.contains(j.record.candidate_id.as_str()) {
            anyhow::bail!(
                "{at}: field `candidate_id`: `{}` is not in {}\n  hint: give the candidates file these judgements were made of",
                j.record.candidate_id,
                candidates_path.display()
            );
        }
    }
    check_unique(
        judgements_path,
        judgements.iter().map(|j| (j.line, j.record.id.as_str())),
    )
}

pub fn pairs(a: PairsArgs) -> Result<()> {
    for out in std::iter::once(&a.out).chain(&a.diagnostics) {
        refuse_input_as_output(out, &[&a.candidates, &a.judgements])?;
    }
    let candidates = read_jsonl::<CandidateRecord>(&a.candidates, CANDIDATE_HINT)?;
    let judgements = read_jsonl::<JudgementRecord>(&a.judgements, JUDGEMENT_HINT)?;
    check_judged(&a.candidates, &candidates, &a.judgements, &judgements)?;
    let candidates: Vec<CandidateRecord> = candidates.into_iter().map(|l| l.record).collect();
    let judgements: Vec<JudgementRecord> = judgements.into_iter().map(|l| l.record).collect();
    let opts = PairOptions {
        min_margin: a.min_margin.max(f64::MIN_POSITIVE),
        length_control: a.length_control,
        length_control_unit: a.length_control_unit,
        score_mode: a.score,
    };
    let (pairs, stats) = build_pairs(&candidates, &judgements, &opts);
    write_jsonl_atomic(&a.out, &pairs)?;
    if let Some(path) = &a.diagnostics {
        let d = diagnose(&candidates, &judgements, &pairs, &stats, a.score);
        write_atomic(path, serde_json::to_string_pretty(&d)?.as_bytes())?;
    }
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
