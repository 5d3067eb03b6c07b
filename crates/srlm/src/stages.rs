//! The loop's stages as commands on explicit files (schemas in `srlm_core::stages`):
//! `srlm sample` (N candidate responses per prompt), `srlm judge` (k additive-prompt judgements
//! per candidate), `srlm pairs` (best against worst per prompt). Sampling and judging append
//! records as they finish and resume by id when rerun.

use crate::generate::record_seed;
use crate::model_args::{ModelArgs, SamplingArgs};
use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use srlm_core::generation::{Message, PromptInput};
use srlm_core::jsonl::{read_jsonl, recover_jsonl, write_jsonl_atomic, JsonlWriter};
use srlm_core::judge::{judge_prompt, JudgeSample};
use srlm_core::pairs::{build_pairs, PairOptions};
use srlm_core::stages::{
    CandidateRecord, JudgementRecord, PromptRecord, CANDIDATE_HINT, JUDGEMENT_HINT, PROMPT_HINT,
};
use srlm_engine::generate::{Completion, Event, Generator, Request};
use srlm_engine::sampling::SamplingParams;
use srlm_engine::Engine;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
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
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    /// The paper samples at temperature 0.7, top-p 0.9 (the defaults).
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args, Debug)]
pub struct JudgeArgs {
    /// Candidates written by `srlm sample`.
    #[arg(long)]
    pub candidates: PathBuf,
    /// Judgements out (appended; rerun to resume).
    #[arg(long)]
    pub out: PathBuf,
    /// Judgements per candidate, averaged (the paper: 3).
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args, Debug)]
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
}

/// Generates for `requests`, skipping ids already in `out`, appending `make(completion)` for
/// each as it finishes.
pub(crate) fn run_resumable<R: Serialize>(
    engine: &Engine,
    requests: Vec<Request>,
    out: &Path,
    batch_size: usize,
    label: &str,
    mut make: impl FnMut(Completion) -> R,
) -> Result<()> {
    if requests.is_empty() {
        eprintln!("srlm: nothing to do: {} is complete", out.display());
        return Ok(());
    }
    let mut writer = JsonlWriter::append(out)?;
    let bar = ProgressBar::new(requests.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{label} {{bar:30}} {{pos}}/{{len}}  [{{elapsed_precise}} < {{eta_precise}}]"
        ))
        .expect("valid template"),
    );
    let mut gen = Generator::new(&engine.model, &engine.tokenizer);
    gen.max_batch = batch_size.max(1);
    gen.run(requests, |ev| {
        if let Event::Done(c) = ev {
            writer
                .write(&make(c))
                .map_err(|e| srlm_engine::EngineError::Config(e.to_string()))?;
            bar.inc(1);
            crate::faults::crash_point(out, bar.position());
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    Ok(())
}

/// The token ids of `user` as one chat turn, or None when they leave no room in the context.
/// Encoded once per prompt; `seeded` then makes each sample's request.
pub(crate) fn encode_user(engine: &Engine, user: &str) -> Result<Option<Vec<u32>>> {
    let ids = engine.encode_prompt(&PromptInput::Chat(vec![Message::new("user", user)]))?;
    Ok((ids.len() < engine.model.max_positions()).then_some(ids))
}

/// A request whose seed derives from the run seed and its id, so a sample does not depend on
/// batching or on where a resumed run restarted.
pub(crate) fn seeded(id: String, prompt_ids: Vec<u32>, base: &SamplingParams) -> Request {
    let mut params = base.clone();
    params.seed = record_seed(base.seed, &id);
    Request {
        id,
        prompt_ids,
        params,
    }
}

pub(crate) fn warn_too_long(n: usize, engine: &Engine) {
    if n > 0 {
        eprintln!(
            "srlm: {n} requests left out: longer than the context of {} tokens (raise --context-length)",
            engine.model.max_positions()
        );
    }
}

pub fn sample(a: SampleArgs) -> Result<()> {
    let prompts = read_jsonl::<PromptRecord>(&a.prompts, PROMPT_HINT)?;
    let mut seen = HashSet::new();
    for p in &prompts {
        if !seen.insert(p.record.id.clone()) {
            anyhow::bail!(
                "{}:{}: field `id`: `{}` appears twice\n  hint: prompt ids must be unique",
                a.prompts.display(),
                p.line,
                p.record.id
            );
        }
    }
    let done: HashSet<String> = recover_jsonl::<CandidateRecord>(&a.out)?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let engine = a.model.load()?;
    let base = a.sampling.params();
    let mut meta = HashMap::new();
    let (mut requests, mut too_long) = (Vec::new(), 0);
    for p in &prompts {
        let todo: Vec<usize> = (0..a.n)
            .filter(|c| !done.contains(&format!("{}/{c}", p.record.id)))
            .collect();
        if todo.is_empty() {
            continue;
        }
        let Some(ids) = encode_user(&engine, &p.record.prompt)? else {
            too_long += todo.len();
            continue;
        };
        for c in todo {
            let id = format!("{}/{c}", p.record.id);
            meta.insert(id.clone(), (p.record.clone(), c));
            requests.push(seeded(id, ids.clone(), &base));
        }
    }
    warn_too_long(too_long, &engine);
    run_resumable(&engine, requests, &a.out, a.batch_size, "sampling", |c| {
        let (p, cand) = meta[&c.id].clone();
        CandidateRecord {
            id: c.id,
            prompt_id: p.id,
            prompt: p.prompt,
            candidate: cand,
            response: c.text,
            finish_reason: Some(format!("{:?}", c.finish_reason).to_lowercase()),
        }
    })
}

pub fn judge(a: JudgeArgs) -> Result<()> {
    let candidates = read_jsonl::<CandidateRecord>(&a.candidates, CANDIDATE_HINT)?;
    let done: HashSet<String> = recover_jsonl::<JudgementRecord>(&a.out)?
        .into_iter()
        .map(|j| j.id)
        .collect();
    let engine = a.model.load()?;
    let base = a.sampling.params();
    let mut meta = HashMap::new();
    let (mut requests, mut too_long) = (Vec::new(), 0);
    for c in &candidates {
        let c = &c.record;
        let todo: Vec<usize> = (0..a.k)
            .filter(|s| !done.contains(&format!("{}/{s}", c.id)))
            .collect();
        if todo.is_empty() {
            continue;
        }
        let Some(ids) = encode_user(&engine, &judge_prompt(&c.prompt, &c.response))? else {
            too_long += todo.len();
            continue;
        };
        for s in todo {
            let id = format!("{}/{s}", c.id);
            meta.insert(id.clone(), (c.id.clone(), c.prompt_id.clone(), s));
            requests.push(seeded(id, ids.clone(), &base));
        }
    }
    warn_too_long(too_long, &engine);
    run_resumable(&engine, requests, &a.out, a.batch_size, "judging", |c| {
        let (candidate_id, prompt_id, sample) = meta[&c.id].clone();
        let j = JudgeSample::parse(&c.text);
        JudgementRecord {
            id: c.id,
            candidate_id,
            prompt_id,
            sample,
            raw: j.raw,
            score: j.score,
            failure: j.failure,
        }
    })
}

pub fn pairs(a: PairsArgs) -> Result<()> {
    let candidates: Vec<CandidateRecord> = read_jsonl(&a.candidates, CANDIDATE_HINT)?
        .into_iter()
        .map(|l| l.record)
        .collect();
    let judgements: Vec<JudgementRecord> = read_jsonl(&a.judgements, JUDGEMENT_HINT)?
        .into_iter()
        .map(|l| l.record)
        .collect();
    let opts = PairOptions {
        min_margin: a.min_margin.max(f64::MIN_POSITIVE),
        length_control: a.length_control,
    };
    let (pairs, stats) = build_pairs(&candidates, &judgements, &opts);
    write_jsonl_atomic(&a.out, &pairs)?;
    println!("{}", serde_json::to_string(&stats)?);
    Ok(())
}
