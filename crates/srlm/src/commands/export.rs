//! `srlm export pairs`: preference pairs in exactly the dataset format TRL's `DPOTrainer`
//! reads, to train a large model elsewhere (TRL with accelerate or DeepSpeed on a GPU cluster)
//! and bring the resulting Hugging Face folder back with `--model`.
//!
//! - `--format plain`: `{"prompt": str, "chosen": str, "rejected": str}` (TRL's "standard"
//!   preference format; the trainer applies no chat template, so this suits base models or text
//!   that already carries its template);
//! - `--format conversational` (default): `{"prompt": [{"role": "user", "content": ...}],
//!   "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}`, which
//!   TRL renders with the model's own chat template, as srlm's DPO does.
//!
//! [`write_trl_sft`] writes SFT data in TRL's prompt-completion form likewise (`[sft] trainer`).

use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use srlm_core::jsonl::{read_jsonl, write_jsonl_atomic};
use srlm_core::train_data::{DpoRecord, SftRecord, DPO_SCHEMA_HINT, SFT_SCHEMA_HINT};
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// Pairs as TRL's DPOTrainer reads them.
    Pairs(ExportPairsArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PairFormat {
    Plain,
    Conversational,
}

#[derive(Args, Debug)]
pub struct ExportPairsArgs {
    /// Pair files (`srlm pairs` output or any prompt/chosen/rejected JSONL); repeatable.
    #[arg(long)]
    pub pairs: Vec<PathBuf>,
    /// Or every iteration's pairs of a run directory.
    #[arg(long)]
    pub run: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value_t = PairFormat::Conversational)]
    pub format: PairFormat,
}

pub fn run(cmd: ExportCommand) -> Result<()> {
    match cmd {
        ExportCommand::Pairs(a) => export_pairs(a),
    }
}

fn export_pairs(a: ExportPairsArgs) -> Result<()> {
    let mut files = a.pairs.clone();
    if let Some(run) = &a.run {
        for t in 1.. {
            let p = run.join(format!("iter{t}/pairs.jsonl"));
            if !p.exists() {
                break;
            }
            files.push(p);
        }
    }
    if files.is_empty() {
        bail!("no pairs to export\n  hint: give --pairs FILE or --run DIR");
    }
    let inputs: Vec<&Path> = files.iter().map(|f| f.as_path()).collect();
    srlm_core::jsonl::refuse_input_as_output(&a.out, &inputs)?;
    let mut out = Vec::new();
    for f in &files {
        for l in read_jsonl::<DpoRecord>(f, DPO_SCHEMA_HINT)? {
            let pair = l.record.pair().map_err(|m| {
                anyhow::anyhow!("{}:{}: {m}\n  hint: {DPO_SCHEMA_HINT}", f.display(), l.line)
            })?;
            out.push(match a.format {
                PairFormat::Plain => {
                    let prompt = pair
                        .prompt
                        .last()
                        .map(|m| m.content.clone())
                        .unwrap_or_default();
                    json!({"prompt": prompt, "chosen": pair.chosen, "rejected": pair.rejected})
                }
                PairFormat::Conversational => json!({
                    "prompt": pair.prompt,
                    "chosen": [{"role": "assistant", "content": pair.chosen}],
                    "rejected": [{"role": "assistant", "content": pair.rejected}],
                }),
            });
        }
    }
    write_jsonl_atomic(&a.out, &out)?;
    eprintln!(
        "{} pairs from {} file(s) written to {}",
        out.len(),
        files.len(),
        a.out.display()
    );
    Ok(())
}

/// SFT data as TRL's conversational prompt-completion examples: the completion is the last
/// assistant turn, the prompt everything before it (srlm's own SFT also trains on earlier
/// assistant turns; the shipped data has one).
pub fn write_trl_sft(data: &Path, out: &Path) -> Result<()> {
    let mut examples = Vec::new();
    for r in read_jsonl::<SftRecord>(data, SFT_SCHEMA_HINT)? {
        let conversation = r
            .record
            .conversation()
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", data.display(), r.line))?;
        let last = conversation
            .iter()
            .rposition(|m| m.role == "assistant")
            .expect("conversation() has an assistant turn");
        let (prompt, completion) = conversation.split_at(last);
        examples.push(json!({"prompt": prompt, "completion": &completion[..1]}));
    }
    write_jsonl_atomic(out, &examples)?;
    Ok(())
}
