//! `srlm prompts`: new prompts by self-instruction. Each attempt shows the model a few-shot
//! list of prompts (by default 6 from the seed, 2 generated so far) and takes the next task it
//! writes; the filters of `srlm_core::selfinstruct` decide what is kept.
//!
//! Attempts run in rounds of `--batch-size`; a round's outcomes (kept or why not) are appended
//! to `OUT.attempts.jsonl` together once the round is done and examined in attempt order, so
//! the examples every attempt saw, and hence the result, do not depend on where an interrupted
//! run restarted. The kept prompts go to `OUT` as a whole at the end.

use crate::backend::{BackendArgs, GenRequest, Outcome};
use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use srlm_core::generation::PromptInput;
use srlm_core::jsonl::{read_jsonl, recover_jsonl, write_jsonl_atomic, JsonlWriter};
use srlm_core::seed::load_ift;
use srlm_core::selfinstruct::{
    choose_examples, extract_instruction, few_shot_prompt, stop_after, PromptFilter, PromptPool,
    Rejection, DEFAULT_BLOCKLIST,
};
use srlm_core::stages::{PromptRecord, PROMPT_HINT};
use srlm_engine::sampling::SamplingParams;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct PromptsArgs {
    /// Seed data (any format `srlm` reads as seed: chat, prompt/response, Self-Instruct tasks,
    /// Open Assistant trees); its prompts are the few-shot examples (repeatable).
    #[arg(long, required = true)]
    pub seed: Vec<PathBuf>,
    /// Earlier prompts, {"id", "prompt"} JSONL, that new ones must differ from (repeatable).
    #[arg(long)]
    pub existing: Vec<PathBuf>,
    /// Kept prompts: {"id", "prompt"} JSONL. The attempts log goes beside it.
    #[arg(long)]
    pub out: PathBuf,
    /// Prompts to keep.
    #[arg(long, default_value_t = 64)]
    pub count: usize,
    /// Give up after count x this many attempts.
    #[arg(long, default_value_t = 10)]
    pub max_attempts_factor: usize,
    /// Few-shot examples drawn from the seed.
    #[arg(long, default_value_t = 6)]
    pub from_seed: usize,
    /// Few-shot examples drawn from the prompts generated so far.
    #[arg(long, default_value_t = 2)]
    pub from_generated: usize,
    /// Drop a prompt whose ROUGE-L F against any earlier prompt reaches this.
    #[arg(long, default_value_t = 0.7)]
    pub max_rouge_l: f64,
    #[arg(long, default_value_t = 3)]
    pub min_words: usize,
    #[arg(long, default_value_t = 150)]
    pub max_words: usize,
    /// Comma-separated words or phrases that drop a prompt (default: Self-Instruct's list of
    /// tasks a text model cannot do: image, file, map, draw, plot, video, audio, ...).
    #[arg(long)]
    pub blocklist: Option<String>,
    /// Id prefix of the kept prompts: `<prefix><attempt>`.
    #[arg(long, default_value = "gen-")]
    pub id_prefix: String,
    #[arg(long, default_value_t = 0.6)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    #[arg(long, default_value_t = 96)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 0)]
    pub rng_seed: u64,
    /// The prompt writer: `--model`, or a server (`--api-base`, its `/v1/completions`).
    /// `--batch-size` is also the number of attempts in a round.
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// One attempt's outcome, a line of the attempts log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub attempt: u64,
    pub round: u64,
    /// Attempts in this round (a round with fewer lines was cut short and is redone).
    pub round_size: u64,
    pub raw: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Rejection>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PromptsSummary {
    pub kept: usize,
    pub attempts: u64,
    pub rejected: HashMap<String, usize>,
}

pub fn attempts_path(out: &Path) -> PathBuf {
    out.with_extension("attempts.jsonl")
}

/// The attempts of whole rounds; a torn round at the end is cut from the log.
fn recover_attempts(path: &Path) -> Result<Vec<Attempt>> {
    let mut all: Vec<Attempt> = recover_jsonl(path)?;
    let mut whole = 0;
    let mut i = 0;
    while i < all.len() {
        let r = all[i].round;
        let size = all[i].round_size as usize;
        let n = all[i..].iter().take_while(|a| a.round == r).count();
        if n != size {
            break;
        }
        i += n;
        whole = i;
    }
    if whole < all.len() {
        all.truncate(whole);
        write_jsonl_atomic(path, &all)?;
    }
    Ok(all)
}

pub fn run(a: PromptsArgs) -> Result<()> {
    let summary = write_prompts(&a)?;
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

pub fn write_prompts(a: &PromptsArgs) -> Result<PromptsSummary> {
    let inputs: Vec<&Path> = a
        .seed
        .iter()
        .chain(&a.existing)
        .map(|p| p.as_path())
        .collect();
    for out in [&a.out, &attempts_path(&a.out)] {
        srlm_core::jsonl::refuse_input_as_output(out, &inputs)?;
    }
    let mut seed_prompts = Vec::new();
    for p in &a.seed {
        seed_prompts.extend(load_ift(p)?.into_iter().map(|e| e.prompt));
    }
    if seed_prompts.is_empty() {
        anyhow::bail!("the seed files hold no prompts to show as examples");
    }
    let filter = PromptFilter {
        min_words: a.min_words,
        max_words: a.max_words,
        max_rouge_l: a.max_rouge_l,
        blocklist: match &a.blocklist {
            Some(b) => b
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            None => DEFAULT_BLOCKLIST.iter().map(|s| s.to_string()).collect(),
        },
    };
    let mut pool = PromptPool::new(filter);
    for p in &seed_prompts {
        pool.add(p);
    }
    for path in &a.existing {
        for p in read_jsonl::<PromptRecord>(path, PROMPT_HINT)? {
            pool.add(&p.record.prompt);
        }
    }
    // Replay the log: the pool and the generated list as they were.
    let log = attempts_path(&a.out);
    let done = recover_attempts(&log)?;
    let mut kept: Vec<PromptRecord> = Vec::new();
    for at in &done {
        if let (Some(id), Some(p)) = (&at.id, &at.prompt) {
            pool.add(p);
            kept.push(PromptRecord {
                id: id.clone(),
                prompt: p.clone(),
            });
        }
    }
    let mut attempts = done.len() as u64;
    let mut round = done.last().map(|a| a.round + 1).unwrap_or(0);
    let max_attempts = (a.count * a.max_attempts_factor.max(1)) as u64;
    let n_examples = a.from_seed + a.from_generated;
    let stop = stop_after(n_examples);

    let needs_model = kept.len() < a.count && attempts < max_attempts;
    if needs_model {
        let backend = a.backend.open()?;
        let mut writer = JsonlWriter::append(&log)?;
        let bar = ProgressBar::new(a.count as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "prompts {bar:30} {pos}/{len} kept, {msg} [{elapsed_precise} < {eta_precise}]",
            )
            .expect("valid template"),
        );
        bar.set_position(kept.len() as u64);
        while kept.len() < a.count && attempts < max_attempts {
            // Rounds shrink near the end so few attempts are wasted past the count.
            let needed = (a.count - kept.len()) as u64;
            let size = (a.backend.batch_size.max(1) as u64)
                .min(2 * needed)
                .min(max_attempts - attempts);
            let generated: Vec<String> = kept.iter().map(|k| k.prompt.clone()).collect();
            let mut requests = Vec::new();
            for at in attempts..attempts + size {
                let examples = choose_examples(
                    &seed_prompts,
                    &generated,
                    a.from_seed,
                    a.from_generated,
                    a.rng_seed,
                    at,
                );
                requests.push(GenRequest {
                    id: at.to_string(),
                    prompt: PromptInput::Raw(few_shot_prompt(&examples)),
                    params: SamplingParams {
                        temperature: a.temperature,
                        top_p: a.top_p,
                        max_new_tokens: a.max_new_tokens,
                        stop: vec![stop.clone()],
                        seed: srlm_core::hash::fnv1a_from(a.rng_seed, &at.to_le_bytes()),
                        ..Default::default()
                    },
                });
            }
            let mut raw: HashMap<u64, String> = HashMap::new();
            let mut failed: Option<(String, String)> = None;
            backend.generate(requests, &mut |o| {
                match o {
                    Outcome::Done(g) => {
                        raw.insert(g.id.parse().expect("numeric id"), g.text);
                    }
                    Outcome::Failed { id, error } => failed = Some((id, error)),
                }
                Ok(())
            })?;
            // A round is committed whole or not at all (later rounds' examples depend on it),
            // so a failed attempt stops the stage here; a rerun redoes this round.
            if let Some((id, error)) = failed {
                anyhow::bail!(
                    "attempt {id} of round {round} failed: {error}\n  hint: rerun the same command to resume from this round"
                );
            }
            // Examine in attempt order, so the outcome does not depend on finishing order.
            let mut records = Vec::with_capacity(size as usize);
            for at in attempts..attempts + size {
                let text = raw.remove(&at).unwrap_or_default();
                let prompt = extract_instruction(&text);
                let verdict = match &prompt {
                    _ if kept.len() >= a.count => Err(Rejection::Surplus),
                    None => Err(Rejection::Empty),
                    Some(p) => pool.offer(p),
                };
                let id = verdict.is_ok().then(|| format!("{}{at}", a.id_prefix));
                if let (Some(id), Some(p)) = (&id, &prompt) {
                    kept.push(PromptRecord {
                        id: id.clone(),
                        prompt: p.clone(),
                    });
                }
                records.push(Attempt {
                    attempt: at,
                    round,
                    round_size: size,
                    raw: text,
                    prompt,
                    id,
                    rejected: verdict.err(),
                });
            }
            writer.write_all(&records)?;
            crate::faults::crash_point(&a.out, round + 1);
            attempts += size;
            round += 1;
            bar.set_position(kept.len() as u64);
            bar.set_message(format!("{attempts} attempts"));
        }
        bar.finish_and_clear();
    }
    write_jsonl_atomic(&a.out, &kept).with_context(|| format!("writing {}", a.out.display()))?;
    let mut rejected = HashMap::new();
    for at in recover_jsonl::<Attempt>(&log)? {
        if let Some(r) = at.rejected {
            *rejected.entry(r.reason().to_string()).or_insert(0) += 1;
        }
    }
    if kept.len() < a.count {
        eprintln!(
            "srlm: kept {} prompts of the {} asked for after {attempts} attempts (raise --max-attempts-factor); reasons: {rejected:?}",
            kept.len(),
            a.count
        );
    }
    Ok(PromptsSummary {
        kept: kept.len(),
        attempts,
        rejected,
    })
}
