//! `srlm contrast`: contrasting answers for judge training without human labels (Self-Taught
//! Evaluators; `srlm_core::contrast`). For each prompt the model writes a modified instruction
//! (`OUT.modified.jsonl`, with why one was unusable), then answers the prompt and its modified
//! instruction (`OUT`: candidates 0 and 1 of the prompt, in the format `srlm judge` reads).
//! Both steps append as they go and resume when rerun. `srlm judge` then judges the candidates,
//! and `srlm eft --candidates OUT --judgements J` keeps judgements that rank 0 above 1.

use crate::backend::BackendArgs;
use crate::commands::stages::{run_resumable, seeded};
use crate::model_args::SamplingArgs;
use anyhow::Result;
use clap::Args;
use serde::{Deserialize, Serialize};
use srlm_core::contrast::{modify_prompt, parse_modified, Unusable};
use srlm_core::jsonl::{read_jsonl, recover_jsonl};
use srlm_core::stages::{CandidateRecord, PromptRecord, PROMPT_HINT};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ContrastArgs {
    /// Prompts: {"id", "prompt"} JSONL (a seed's IFT file works: its responses are not used).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Candidates out: `<id>/0` answers the prompt, `<id>/1` its modified instruction.
    #[arg(long)]
    pub out: PathBuf,
    /// How the modified instruction is written (answers use `--temperature`).
    #[arg(long, default_value_t = 0.7)]
    pub modify_temperature: f32,
    #[arg(long, default_value_t = 96)]
    pub modify_max_new_tokens: usize,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// A line of `OUT.modified.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Modified {
    pub id: String,
    pub prompt: String,
    pub raw: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unusable: Option<Unusable>,
}

pub fn modified_path(out: &Path) -> PathBuf {
    out.with_extension("modified.jsonl")
}

pub fn run(a: ContrastArgs) -> Result<()> {
    for out in [&a.out, &modified_path(&a.out)] {
        srlm_core::jsonl::refuse_input_as_output(out, &[&a.prompts])?;
    }
    let prompts: Vec<PromptRecord> = read_jsonl(&a.prompts, PROMPT_HINT)?
        .into_iter()
        .map(|l| l.record)
        .collect();
    let backend = a.backend.open()?;
    let base = a.sampling.params()?;

    // 1. A modified instruction per prompt.
    let mod_path = modified_path(&a.out);
    let done: HashSet<String> = recover_jsonl::<Modified>(&mod_path)?
        .into_iter()
        .map(|m| m.id)
        .collect();
    let by_id: HashMap<&str, &PromptRecord> = prompts.iter().map(|p| (p.id.as_str(), p)).collect();
    let modify = srlm_engine::sampling::SamplingParams {
        temperature: a.modify_temperature,
        max_new_tokens: a.modify_max_new_tokens,
        ..base.clone()
    };
    let requests = prompts
        .iter()
        .filter(|p| !done.contains(&p.id))
        .map(|p| seeded(p.id.clone(), &modify_prompt(&p.prompt), &modify))
        .collect();
    run_resumable(backend.as_ref(), requests, &mod_path, "modifying", |g| {
        let p = by_id[g.id.as_str()];
        let parsed = parse_modified(&p.prompt, &g.text);
        Modified {
            id: g.id,
            prompt: p.prompt.clone(),
            raw: g.text,
            modified: parsed.clone().ok(),
            unusable: parsed.err(),
        }
    })?;

    // 2. Answers to the prompt and to its modified instruction.
    let modified: Vec<Modified> = recover_jsonl(&mod_path)?;
    let done: HashSet<String> = recover_jsonl::<CandidateRecord>(&a.out)?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut meta = HashMap::new();
    let mut requests = Vec::new();
    for m in modified
        .iter()
        .filter(|m| by_id.contains_key(m.id.as_str()))
    {
        let Some(x2) = &m.modified else { continue };
        for (c, asked) in [(0usize, &m.prompt), (1, x2)] {
            let id = format!("{}/{c}", m.id);
            if done.contains(&id) {
                continue;
            }
            meta.insert(id.clone(), (m.id.clone(), m.prompt.clone(), c));
            requests.push(seeded(id, asked, &base));
        }
    }
    run_resumable(backend.as_ref(), requests, &a.out, "answering", |g| {
        let (prompt_id, prompt, candidate) = meta[&g.id].clone();
        CandidateRecord {
            id: g.id,
            prompt_id,
            // The original prompt: the answer to the modified one is judged against it.
            prompt,
            candidate,
            response: g.text,
            finish_reason: Some(format!("{:?}", g.finish_reason).to_lowercase()),
        }
    })?;
    let usable = modified.iter().filter(|m| m.modified.is_some()).count();
    println!(
        "{}",
        serde_json::json!({"prompts": prompts.len(), "usable": usable, "unusable": modified.len() - usable})
    );
    Ok(())
}
