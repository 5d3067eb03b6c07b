//! `srlm generate`: completions for a JSONL file of prompts, appended to the output as each
//! finishes. Rerunning the same command resumes: records whose id is already in the output are
//! skipped, and a torn last line from a crash is cut off first.

use crate::model_args::{ModelArgs, SamplingArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use srlm_core::generation::{GenerateOutput, GenerateRecord, GENERATE_SCHEMA_HINT};
use srlm_core::jsonl::{read_jsonl, recover_jsonl, JsonlWriter};
use srlm_engine::generate::{Event, Generator, Request};
use srlm_engine::sampling::SamplingParams;
use srlm_engine::EngineError;
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Prompts, one JSON object a line: {"id", "prompt"} or {"id", "messages"} or {"id", "text"}.
    #[arg(long)]
    pub input: PathBuf,
    /// Completions, one JSON object a line: {"id", "completion", "finish_reason", "prompt_tokens", "completion_tokens"}.
    #[arg(long)]
    pub output: PathBuf,
    /// Sequences decoded together.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Record each generated token's log-probability with this many of the most likely tokens
    /// at its position (`"logprobs"` in the output, OpenAI's chat shape).
    #[arg(long)]
    pub logprobs: Option<usize>,
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// A record's seed: the record's own, else one derived from the run seed and the record id, so
/// a record's completion does not depend on batching or on where a resumed run restarted.
pub fn record_seed(base: u64, id: &str) -> u64 {
    srlm_core::hash::fnv1a_from(base, id.as_bytes())
}

/// Drives the engine's generator itself rather than a `Backend`: it runs the generator's check
/// of every record before generating anything, naming the file and line of a prompt that does
/// not fit, where a backend reports that only as the request's failure after the rest ran; and
/// it writes `srlm generate`'s own record shape. Stages that want a server use `Backend`.
pub fn run(args: GenerateArgs) -> Result<()> {
    srlm_core::jsonl::refuse_input_as_output(&args.output, &[&args.input])?;
    let records = read_jsonl::<GenerateRecord>(&args.input, GENERATE_SCHEMA_HINT)?;
    let done: Vec<GenerateOutput> = recover_jsonl(&args.output)?;
    let done_ids: HashSet<String> = done.iter().map(|o| o.id.clone()).collect();

    let engine = args.model.load()?;
    let base = SamplingParams {
        logprobs: args.logprobs,
        ..args.sampling.params()?
    };
    let mut gen = Generator::new(&engine.model, &engine.tokenizer);
    gen.max_batch = args.batch_size.max(1);
    let mut seen = HashSet::new();
    let mut requests = Vec::new();
    for r in &records {
        let here = format!("{}:{}", args.input.display(), r.line);
        let id = r
            .record
            .id
            .as_ref()
            .map(|i| i.to_string())
            .unwrap_or_else(|| format!("line-{}", r.line));
        if !seen.insert(id.clone()) {
            bail!("{here}: field `id`: `{id}` appears twice\n  hint: ids must be unique; the output is keyed by them");
        }
        let input = r
            .record
            .input()
            .map_err(|m| anyhow::anyhow!("{here}: record {m}\n  hint: {GENERATE_SCHEMA_HINT}"))?;
        if done_ids.contains(&id) {
            continue;
        }
        let prompt_ids = engine
            .encode_prompt(&input)
            .with_context(|| format!("{here}: rendering the prompt"))?;
        let mut params = base.clone();
        if let Some(v) = r.record.max_new_tokens {
            params.max_new_tokens = v;
        }
        if let Some(v) = r.record.temperature {
            params.temperature = v as f32;
        }
        if let Some(v) = r.record.top_p {
            params.top_p = v as f32;
        }
        if let Some(v) = r.record.top_k {
            params.top_k = v;
        }
        params.seed = r.record.seed.unwrap_or_else(|| record_seed(base.seed, &id));
        if let Some(b) = params.problems().first() {
            bail!(
                "{here}: field `{}` {} (this record's value, or the flag's)\n  hint: {GENERATE_SCHEMA_HINT}",
                b.name,
                b.problem
            );
        }
        let request = Request {
            id,
            prompt_ids,
            params,
        };
        // The generator's own check, made here for every record before any generates.
        gen.check(&request).map_err(|e| match e {
            EngineError::PromptTooLong {
                prompt_tokens,
                context,
                ..
            } => anyhow::anyhow!(
                "{here}: the prompt is {prompt_tokens} tokens, the context is {context}\n  hint: shorten it, or raise --context-length (the model allows {})",
                engine.model.config().max_position_embeddings
            ),
            e => anyhow::anyhow!("{here}: {e}"),
        })?;
        requests.push(request);
    }
    if !done.is_empty() {
        eprintln!(
            "srlm: resuming: {} of {} records already in {}",
            done.len(),
            records.len(),
            args.output.display()
        );
    }
    if requests.is_empty() {
        eprintln!(
            "srlm: nothing to do: every record has a completion in {}",
            args.output.display()
        );
        return Ok(());
    }

    let mut out = JsonlWriter::append(&args.output)?;
    let bar = ProgressBar::new(requests.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} prompts  {msg}  [{elapsed_precise} < {eta_precise}]",
        )
        .expect("valid template"),
    );
    let start = Instant::now();
    let mut tokens = 0usize;
    gen.run(requests, |ev| {
        if let Event::Done(c) = ev {
            tokens += c.token_ids.len();
            let rec = GenerateOutput {
                id: c.id,
                completion: c.text,
                finish_reason: c.finish_reason,
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.token_ids.len(),
                logprobs: c.logprobs,
            };
            out.write(&rec)
                .map_err(|e| srlm_engine::EngineError::Stopped(e.to_string()))?;
            bar.inc(1);
            bar.set_message(format!(
                "{:.1} tok/s",
                tokens as f64 / start.elapsed().as_secs_f64()
            ));
        }
        Ok(())
    })?;
    bar.finish();
    eprintln!(
        "srlm: wrote {} completions ({tokens} tokens, {:.1} tok/s) to {}",
        bar.position(),
        tokens as f64 / start.elapsed().as_secs_f64(),
        args.output.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_seed_depends_on_id_and_base() {
        assert_eq!(record_seed(0, "a"), record_seed(0, "a"));
        assert_ne!(record_seed(0, "a"), record_seed(0, "b"));
        assert_ne!(record_seed(0, "a"), record_seed(1, "a"));
    }
}
