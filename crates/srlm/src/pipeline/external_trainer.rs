//! DPO by a trainer outside srlm (`[dpo] trainer = "trl"`, or any command): the stage writes the
//! iteration's pairs in TRL's conversational format, runs the command (its output streamed to
//! the terminal and to `RUN/trainers/dpo-mN.log`), and counts as done only when the command
//! succeeded and its output folder loads as a model (config, weights, tokenizer), which the next
//! iteration then serves and judges with. The manifest records the command as it ran.
//!
//! A trainer killed with the run is stopped with it (`children.rs`); the rerun runs the command
//! again, and the shipped TRL script resumes from the last checkpoint in its output folder.
//!
//! Placeholders: `{model}` (M_t, also the reference), `{pairs}`, `{out}` (M_(t+1)), `{beta}`,
//! `{lr}`, `{epochs}`, `{seed}`, `{script}` (the shipped TRL script, written into the run).

use super::children::{log_end, log_line, log_tail, run_dir_key, Owned};
use crate::commands::export::{self, ExportCommand, ExportPairsArgs, PairFormat};
use anyhow::{bail, Result};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The TRL script srlm ships (`scripts/train_dpo_trl.py`), for `trainer = "trl"`.
pub const TRL_SCRIPT: &str = include_str!("../../../../scripts/train_dpo_trl.py");

/// The command `trainer = "trl"` stands for: the `python3` on PATH (the environment with trl).
pub const TRL_COMMAND: &str = "python3 {script} --model {model} --pairs {pairs} --out {out} --beta {beta} --lr {lr} --epochs {epochs} --seed {seed}";

/// The command a `[dpo] trainer` value stands for, placeholders unfilled; None for srlm's own.
pub fn trainer_command(trainer: &str) -> Option<&str> {
    match trainer {
        "srlm" => None,
        "trl" => Some(TRL_COMMAND),
        command => Some(command),
    }
}

/// One DPO stage on an external trainer.
#[derive(Debug)]
pub struct ExternalDpo {
    /// The command, placeholders unfilled.
    pub template: String,
    /// `srlm pairs` output, and where its TRL form is written.
    pub pairs: PathBuf,
    pub trl_pairs: PathBuf,
    pub model: PathBuf,
    pub out: PathBuf,
    pub beta: f64,
    pub lr: f64,
    pub epochs: usize,
    pub seed: u64,
    pub run_dir: PathBuf,
    pub log: PathBuf,
}

impl ExternalDpo {
    /// The command as it will run (the shipped script's path inside the run).
    pub fn command(&self) -> String {
        let script = self.run_dir.join("trainers").join("train_dpo_trl.py");
        self.template
            .replace("{model}", &self.model.display().to_string())
            .replace("{pairs}", &self.trl_pairs.display().to_string())
            .replace("{out}", &self.out.display().to_string())
            .replace("{beta}", &self.beta.to_string())
            .replace("{lr}", &self.lr.to_string())
            .replace("{epochs}", &self.epochs.to_string())
            .replace("{seed}", &self.seed.to_string())
            .replace("{script}", &script.display().to_string())
    }

    /// Runs the trainer; the stats are its last logged metrics, if it wrote any.
    pub fn run(self) -> Result<Option<serde_json::Value>> {
        export::run(ExportCommand::Pairs(ExportPairsArgs {
            pairs: vec![self.pairs.clone()],
            run: None,
            out: self.trl_pairs.clone(),
            format: PairFormat::Conversational,
        }))?;
        if self.template.contains("{script}") {
            let script = self.run_dir.join("trainers").join("train_dpo_trl.py");
            srlm_core::jsonl::write_atomic(&script, TRL_SCRIPT.as_bytes())?;
        }
        let command = self.command();
        let from = log_end(&self.log);
        log_line(&self.log, &format!("== srlm: {command}"))?;
        let mut child = Owned::spawn(
            &command,
            &run_dir_key(&self.run_dir),
            &self.log,
            true,
            Duration::from_secs(10),
        )?;
        eprintln!(
            "srlm: training M{} outside srlm (pid {}); log: {}",
            self.out
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .trim_start_matches('m'),
            child.id(),
            self.log.display()
        );
        // Its standard output to the terminal and the log, as it comes (errors go to the log).
        let stdout = child.child.stdout.take().expect("piped");
        let mut log = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            eprintln!("  {line}");
            let _ = writeln!(log, "{line}");
        }
        let status = child.wait()?;
        let tail = || log_tail(&self.log, from, 20);
        if !status.success() {
            bail!(
                "the trainer failed ({status})\n  command: {command}\n  last lines of {}:\n{}\n  hint: run the command by hand; the pairs it reads are {}",
                self.log.display(),
                tail(),
                self.trl_pairs.display()
            );
        }
        check_loads(&self.out).map_err(|e| {
            anyhow::anyhow!(
                "the trainer exited 0 but {} does not load as a model: {e:#}\n  command: {command}\n  last lines of {}:\n{}\n  hint: the command must save the model and its tokenizer into {{out}}",
                self.out.display(),
                self.log.display(),
                tail()
            )
        })?;
        srlm_core::jsonl::write_atomic(
            &self.out.join("srlm-external.json"),
            serde_json::to_string_pretty(&json!({"trainer": command}))?.as_bytes(),
        )?;
        Ok(last_metrics(&self.out))
    }
}

/// A model folder the next stages can use: its config and weights open (headers only, nothing
/// read whole) and it has a tokenizer.
fn check_loads(dir: &Path) -> Result<()> {
    srlm_engine::hf::HfModel::open(
        dir,
        srlm_engine::gguf::WeightFormat::Dense,
        &candle_core::Device::Cpu,
    )?;
    srlm_engine::tokenizer::tokenizer_from_file(&dir.join("tokenizer.json"))?;
    Ok(())
}

/// The last line of `metrics.jsonl` in the folder (the shipped TRL script writes one).
fn last_metrics(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).ok()?;
    serde_json::from_str(text.lines().last()?).ok()
}
