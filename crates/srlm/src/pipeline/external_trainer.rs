//! SFT and DPO by a trainer outside srlm (`[sft] trainer` / `[dpo] trainer` = "trl", or any
//! command): the stage writes its data in TRL's conversational format, runs the command (its
//! output streamed to the terminal and to `RUN/trainers/<stage>.log`), and counts as done only
//! when the command succeeded and its output folder loads as a model (config, weights,
//! tokenizer), which the next stage then serves, judges with or trains further. The manifest
//! records the command as it ran.
//!
//! A trainer killed with the run is stopped with it (`children.rs`); the rerun runs the command
//! again, and the shipped TRL scripts resume from the last checkpoint in their output folder.
//!
//! Placeholders: `{model}` (the model trained from; for DPO also the reference), `{out}`,
//! `{lr}`, `{epochs}`, `{max_len}` (tokens an example is cut to), `{seed}`, `{script}` (the
//! shipped TRL script, written into the run); for SFT `{data}`, for DPO `{pairs}` and `{beta}`;
//! `{lora}`: with `lora_rank` set, the shipped scripts' LoRA flags (`--lora-rank R --lora-alpha
//! A`, and `--adapter DIR` when DPO continues M_t's adapter over M1, then `{model}`), empty
//! otherwise. A LoRA trainer must write the merged model into `{out}` and its adapter into
//! `{out}/adapter`, as srlm's own does.

use super::children::{log_end, log_line, log_tail, run_dir_key, Owned};
use crate::commands::export::{self, ExportCommand, ExportPairsArgs, PairFormat};
use anyhow::{bail, Result};
use serde_json::json;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which training an external trainer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sft,
    Dpo,
}

impl Kind {
    /// The section its `trainer` key is in.
    pub fn section(self) -> &'static str {
        match self {
            Self::Sft => "sft",
            Self::Dpo => "dpo",
        }
    }

    /// The shipped TRL script (`scripts/train_*_trl.py`): its file name and text.
    fn script(self) -> (&'static str, &'static str) {
        match self {
            Self::Sft => ("train_sft_trl.py", TRL_SFT_SCRIPT),
            Self::Dpo => ("train_dpo_trl.py", TRL_DPO_SCRIPT),
        }
    }

    /// The placeholders a trainer command must have: what it reads and where it writes.
    pub fn required_slots(self) -> [&'static str; 3] {
        match self {
            Self::Sft => ["{out}", "{data}", "{model}"],
            Self::Dpo => ["{out}", "{pairs}", "{model}"],
        }
    }
}

/// The TRL scripts srlm ships, for `trainer = "trl"`.
pub const TRL_SFT_SCRIPT: &str = include_str!("../../../../scripts/train_sft_trl.py");
pub const TRL_DPO_SCRIPT: &str = include_str!("../../../../scripts/train_dpo_trl.py");

/// The commands `trainer = "trl"` stands for: the `python3` on PATH (the environment with trl).
pub const TRL_SFT_COMMAND: &str = "python3 {script} --model {model} --data {data} --out {out} --lr {lr} --epochs {epochs} --max-length {max_len} --seed {seed} {lora}";
pub const TRL_DPO_COMMAND: &str = "python3 {script} --model {model} --pairs {pairs} --out {out} --beta {beta} --lr {lr} --epochs {epochs} --max-length {max_len} --seed {seed} {lora}";

/// The command a `trainer` value of `kind`'s section stands for, placeholders unfilled; None
/// for srlm's own.
pub fn trainer_command(trainer: &str, kind: Kind) -> Option<&str> {
    match trainer {
        "srlm" => None,
        "trl" => Some(match kind {
            Kind::Sft => TRL_SFT_COMMAND,
            Kind::Dpo => TRL_DPO_COMMAND,
        }),
        command => Some(command),
    }
}

/// What the trainer trains on: srlm's file, and where its TRL form is written.
#[derive(Debug)]
pub enum Objective {
    /// `srlm sft`'s data (`{data}`: TRL's prompt-completion form).
    Sft { data: PathBuf, trl_data: PathBuf },
    /// `srlm pairs`' output (`{pairs}`: TRL's conversational preference form), with `{beta}`.
    Dpo {
        pairs: PathBuf,
        trl_pairs: PathBuf,
        beta: f64,
    },
}

impl Objective {
    fn kind(&self) -> Kind {
        match self {
            Self::Sft { .. } => Kind::Sft,
            Self::Dpo { .. } => Kind::Dpo,
        }
    }

    /// The TRL file the command reads.
    fn trl_file(&self) -> &Path {
        match self {
            Self::Sft { trl_data, .. } => trl_data,
            Self::Dpo { trl_pairs, .. } => trl_pairs,
        }
    }

    /// Writes the TRL file from srlm's.
    fn write_trl_file(&self) -> Result<()> {
        match self {
            Self::Sft { data, trl_data } => export::write_trl_sft(data, trl_data),
            Self::Dpo {
                pairs, trl_pairs, ..
            } => export::run(ExportCommand::Pairs(ExportPairsArgs {
                pairs: vec![pairs.clone()],
                run: None,
                out: trl_pairs.clone(),
                format: PairFormat::Conversational,
            })),
        }
    }
}

/// One training stage on an external trainer.
#[derive(Debug)]
pub struct ExternalTrainer {
    /// The command, placeholders unfilled.
    pub template: String,
    pub objective: Objective,
    pub model: PathBuf,
    pub out: PathBuf,
    pub lr: f64,
    pub epochs: usize,
    pub max_len: usize,
    pub seed: u64,
    /// Low-rank adapters instead of every weight, if set.
    pub lora: Option<ExternalLora>,
    pub run_dir: PathBuf,
    pub log: PathBuf,
}

/// LoRA for an external trainer (`{lora}`).
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalLora {
    pub rank: usize,
    pub alpha: f64,
    /// The adapter to continue (over `{model}`), if any.
    pub adapter: Option<PathBuf>,
}

impl ExternalLora {
    /// The shipped scripts' flags.
    fn flags(&self) -> String {
        let mut f = format!("--lora-rank {} --lora-alpha {}", self.rank, self.alpha);
        if let Some(a) = &self.adapter {
            f.push_str(&format!(" --adapter {}", a.display()));
        }
        f
    }
}

impl ExternalTrainer {
    /// The command as it will run (the shipped script's path inside the run).
    pub fn command(&self) -> String {
        let file = self.objective.trl_file().display().to_string();
        let command = match &self.objective {
            Objective::Sft { .. } => self.template.replace("{data}", &file),
            Objective::Dpo { beta, .. } => self
                .template
                .replace("{pairs}", &file)
                .replace("{beta}", &beta.to_string()),
        };
        command
            .replace("{model}", &self.model.display().to_string())
            .replace("{out}", &self.out.display().to_string())
            .replace("{lr}", &self.lr.to_string())
            .replace("{epochs}", &self.epochs.to_string())
            .replace("{max_len}", &self.max_len.to_string())
            .replace("{seed}", &self.seed.to_string())
            .replace("{script}", &self.script().display().to_string())
            .replace(
                "{lora}",
                &self
                    .lora
                    .as_ref()
                    .map(ExternalLora::flags)
                    .unwrap_or_default(),
            )
            .trim_end()
            .to_string()
    }

    /// Where the shipped script is written in the run.
    fn script(&self) -> PathBuf {
        let (name, _) = self.objective.kind().script();
        self.run_dir.join("trainers").join(name)
    }

    /// Runs the trainer; the stats are its last logged metrics, if it wrote any.
    pub fn run(self) -> Result<Option<serde_json::Value>> {
        self.objective.write_trl_file()?;
        if self.template.contains("{script}") {
            let (_, text) = self.objective.kind().script();
            srlm_core::jsonl::write_atomic(&self.script(), text.as_bytes())?;
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
                "the trainer failed ({status})\n  command: {command}\n  last lines of {}:\n{}\n  hint: run the command by hand; the data it reads is {}",
                self.log.display(),
                tail(),
                self.objective.trl_file().display()
            );
        }
        check_loads(&self.out, self.lora.is_some()).map_err(|e| {
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
/// read whole) and it has a tokenizer; with LoRA, also the adapter in `dir/adapter`.
fn check_loads(dir: &Path, lora: bool) -> Result<()> {
    srlm_engine::hf::HfModel::open(
        dir,
        srlm_engine::gguf::WeightFormat::Dense,
        &candle_core::Device::Cpu,
    )?;
    srlm_engine::tokenizer::tokenizer_from_file(&dir.join("tokenizer.json"))?;
    if lora {
        srlm_engine::adapter::LoraAdapter::read(&dir.join("adapter"))?;
    }
    Ok(())
}

/// The last line of `metrics.jsonl` in the folder (the shipped TRL script writes one).
fn last_metrics(dir: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).ok()?;
    serde_json::from_str(text.lines().last()?).ok()
}
