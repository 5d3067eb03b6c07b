//! `srlm sft` and `srlm dpo`: train a model on a JSONL file and write a Hugging Face folder.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use srlm_train::data::{load_pairs, load_sft};
use srlm_train::dpo::{reference_logps, Dpo};
use srlm_train::loss::{DpoConfig, DpoLossType};
use srlm_train::params::{LoraConfig, Method};
use srlm_train::sft::Sft;
use srlm_train::trainer::{fingerprint, Objective, Progress, RunSummary, TrainConfig, Trainer};
use std::path::{Path, PathBuf};

use crate::train_settings::{TrainFlags, TrainSettings};

#[derive(Args, Debug, Clone, serde::Serialize)]
pub struct TrainArgs {
    /// The model to start from: a GGUF file (dequantized to f32) or a Hugging Face folder.
    /// Default: SmolLM2-135M-Instruct, fetched on first use.
    #[arg(long, env = "SRLM_MODEL")]
    pub model: Option<PathBuf>,
    /// Output folder: the trained model (a Hugging Face folder), metrics.jsonl, and the resume
    /// state. Running the same command again resumes an interrupted run.
    #[arg(long)]
    pub out: PathBuf,
    /// Held-out file in the same format; its loss is logged as eval/loss.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Write into an --out folder that holds files srlm's trainer did not write (its model
    /// files are replaced; nothing else in it is removed).
    #[arg(long)]
    pub overwrite: bool,
    /// Start from this PEFT LoRA adapter over --model and keep training it (with its rank,
    /// alpha and modules; --lora-rank, if given, must be its rank): the new adapter is again one
    /// over --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub settings: TrainFlags,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Args, Debug, serde::Serialize)]
pub struct SftArgs {
    /// Training data: {"messages": [...]} or {"prompt", "response"} JSONL.
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Args, Debug, serde::Serialize)]
pub struct DpoArgs {
    /// Preference pairs: {"prompt", "chosen", "rejected"} JSONL (TRL's format).
    #[arg(long)]
    pub pairs: PathBuf,
    /// DPO's beta.
    #[arg(long, default_value_t = 0.1)]
    pub beta: f64,
    /// sigmoid (DPO) or ipo.
    #[arg(long, default_value = "sigmoid")]
    pub loss: DpoLossType,
    /// Label smoothing of the sigmoid loss (conservative DPO).
    #[arg(long, default_value_t = 0.0)]
    pub label_smoothing: f64,
    /// Weight of an NLL term on the chosen reply (Iterative RPO); 0 is off.
    #[arg(long, default_value_t = 0.0)]
    pub rpo_alpha: f64,
    #[command(flatten)]
    pub train: TrainArgs,
}

impl TrainArgs {
    /// The trainer's configuration: these flags over `defaults`, the stage's; with
    /// `--adapter`, LoRA of that adapter's shape, starting from it.
    pub fn config(&self, defaults: TrainSettings) -> Result<TrainConfig> {
        let settings = self.settings.resolve(defaults);
        let mut cfg = settings.config(self.seed);
        let Some(dir) = &self.adapter else {
            return Ok(cfg);
        };
        let adapter = srlm_engine::adapter::LoraAdapter::read(dir)?;
        if settings.lora_rank != 0 && settings.lora_rank != adapter.rank {
            bail!(
                "--adapter {} is of rank {}, but --lora-rank is {}\n  hint: leave out --lora-rank to continue the adapter at its own rank",
                dir.display(),
                adapter.rank,
                settings.lora_rank
            );
        }
        if adapter.rslora {
            bail!(
                "--adapter {}: an rsLoRA adapter (use_rslora); srlm's trainer scales adapters by alpha / r\n  hint: continue it with PEFT, or start a new adapter",
                dir.display()
            );
        }
        cfg.method = Method::Lora(LoraConfig {
            rank: adapter.rank,
            alpha: adapter.alpha,
            dropout: settings.lora_dropout,
            target_modules: adapter.target_modules(),
            init: Some(dir.clone()),
        });
        Ok(cfg)
    }

    pub fn load(&self, cfg: TrainConfig) -> Result<Trainer> {
        if let Some(t) = self.threads {
            std::env::set_var("RAYON_NUM_THREADS", t.to_string());
        }
        let path = match &self.model {
            Some(p) => p.clone(),
            None => srlm_engine::fetch::default_model()?,
        };
        srlm_train::checkpoint::claim_out_dir(&self.out, self.overwrite)?;
        Trainer::load(&path, cfg, &self.out)
            .with_context(|| format!("loading model {} for training", path.display()))
    }
}

/// A progress bar fed by the trainer: step, loss, tokens/s, ETA.
fn progress_bar(out: &Path) -> impl FnMut(&Progress) {
    let out = out.to_path_buf();
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    move |p: &Progress| {
        bar.set_length(p.total_steps);
        bar.set_position(p.step);
        if let Some(l) = p.log {
            let mut msg = format!("loss {:.4} | {:.0} tok/s", l.loss, l.tokens_per_s);
            if let Some(e) = p.eval.and_then(|e| e.get("eval/loss")) {
                msg.push_str(&format!(" | eval {e:.4}"));
            }
            bar.set_message(msg);
        }
        if p.step == p.total_steps {
            bar.finish();
        }
        crate::faults::crash_point(&out, p.step);
    }
}

fn file_bytes(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn report(summary: &RunSummary, trainer: &Trainer) {
    match summary.resumed_from {
        Some(from) if from == summary.steps => {
            eprintln!(
                "{} already holds the model of this run; nothing to do",
                summary.model_dir.display()
            );
            return;
        }
        Some(from) => eprintln!("resumed from step {from}"),
        None => {}
    }
    if let Some(e) = &summary.final_eval {
        for (k, v) in e {
            eprintln!("{k}: {v:.4}");
        }
    }
    eprintln!(
        "trained {} parameters for {} steps; model written to {}",
        trainer.store.trainable_count(),
        summary.steps,
        summary.model_dir.display()
    );
}

pub fn run_sft(a: SftArgs) -> Result<()> {
    let cfg = a.train.config(TrainSettings::sft())?;
    let mut trainer = a.train.load(cfg.clone())?;
    let pad = pad_id(&trainer);
    let data = load_sft(&trainer.engine, &a.data, cfg.max_len)?;
    let eval = match &a.train.eval_data {
        Some(p) => Some(Sft {
            sequences: load_sft(&trainer.engine, p, cfg.max_len)?,
            pad_id: pad,
        }),
        None => None,
    };
    let fp = fingerprint(&[
        b"sft",
        &file_bytes(&a.data)?,
        serde_json::to_string(&cfg)?.as_bytes(),
    ]);
    let sft = Sft {
        sequences: data,
        pad_id: pad,
    };
    train(
        &mut trainer,
        &sft,
        eval.as_ref(),
        &fp,
        "SFT",
        "examples",
        &a.train.out,
    )
}

pub fn run_dpo(a: DpoArgs) -> Result<()> {
    let cfg = a.train.config(TrainSettings::dpo())?;
    let dpo_cfg = DpoConfig {
        beta: a.beta,
        loss_type: a.loss,
        label_smoothing: a.label_smoothing,
        rpo_alpha: (a.rpo_alpha != 0.0).then_some(a.rpo_alpha),
    };
    dpo_cfg.validate()?;
    let mut trainer = a.train.load(cfg.clone())?;
    std::fs::create_dir_all(&a.train.out)
        .with_context(|| format!("creating {}", a.train.out.display()))?;
    let pad = pad_id(&trainer);
    let pairs = load_pairs(&trainer.engine, &a.pairs, cfg.max_len)?;
    let bar = ProgressBar::new(pairs.len() as u64);
    bar.set_message("reference log-probs");
    let reference = reference_logps(
        &trainer.engine.model,
        &pairs,
        pad,
        cfg.micro_batch,
        &a.train.out.join("reference_logps.jsonl"),
        &mut |done, _| bar.set_position(done as u64),
    )?;
    bar.finish_and_clear();
    let eval = match &a.train.eval_data {
        Some(p) => {
            let ep = load_pairs(&trainer.engine, p, cfg.max_len)?;
            let er = reference_logps(
                &trainer.engine.model,
                &ep,
                pad,
                cfg.micro_batch,
                &a.train.out.join("reference_logps.eval.jsonl"),
                &mut |_, _| {},
            )?;
            Some(Dpo {
                pairs: ep,
                reference: er,
                cfg: dpo_cfg,
                pad_id: pad,
            })
        }
        None => None,
    };
    let fp = fingerprint(&[
        b"dpo",
        &file_bytes(&a.pairs)?,
        serde_json::to_string(&cfg)?.as_bytes(),
        serde_json::to_string(&dpo_cfg)?.as_bytes(),
    ]);
    let dpo = Dpo {
        pairs,
        reference,
        cfg: dpo_cfg,
        pad_id: pad,
    };
    train(
        &mut trainer,
        &dpo,
        eval.as_ref(),
        &fp,
        "DPO",
        "pairs",
        &a.train.out,
    )
}

/// Runs `objective` (`what`, over `items`) to the end, with a progress bar, and says where the
/// model went.
fn train<O: Objective>(
    trainer: &mut Trainer,
    objective: &O,
    eval: Option<&O>,
    fingerprint: &str,
    what: &str,
    items: &str,
    out: &Path,
) -> Result<()> {
    eprintln!(
        "{what} on {} {items} ({} steps of {} {items})",
        objective.len(),
        trainer.total_steps(objective.len()),
        trainer.cfg.batch_size()
    );
    let eval = eval.map(|e| e as &dyn Objective);
    let summary = trainer.run(objective, eval, fingerprint, &mut progress_bar(out))?;
    report(&summary, trainer);
    Ok(())
}

/// Padding is never attended to nor trained on; any id works. The EOS id keeps it in vocabulary.
fn pad_id(trainer: &Trainer) -> u32 {
    trainer
        .engine
        .tokenizer
        .eos_ids
        .first()
        .copied()
        .unwrap_or(0)
}
