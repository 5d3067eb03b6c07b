//! `srlm run`: the whole self-rewarding loop in a run directory.
//!
//! M0 (the base model) is fine-tuned on the seed's IFT and EFT examples; with `[eft] data`
//! (the default: the Open Assistant training split srlm ships) that model then judges
//! human-ranked replies, the judgements that follow the human order become judge-training
//! examples (the paper's EFT construction, `srlm eft`), and a second SFT on them gives M1. Then for
//! t = 1..=iterations: new prompts (self-instruction), N candidates per prompt from M_t, k
//! judgements per candidate by M_t, best-against-worst pairs, and DPO from M_t gives M_{t+1}.
//!
//! The stages are planned from the config before anything runs (`pipeline::plan`): each is a
//! typed call of one of srlm's own commands on explicit files, and the manifest records each
//! finished stage with the command line that does the same by hand and the SHA-256 of its
//! inputs (`pipeline::manifest`). Run the same command again after an interruption: finished
//! stages are skipped (their inputs checked), and the interrupted one resumes from its own
//! partial output. Where every file lives: `pipeline::layout`.

use crate::pipeline::config::load_config;
use crate::pipeline::layout::Layout;
use crate::pipeline::manifest::Run;
use crate::pipeline::plan::plan;
use anyhow::{bail, Result};
use clap::Args;
use srlm_core::jsonl::write_atomic;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A TOML config (every key optional; `srlm run --print-config` shows the defaults).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The run directory (created; rerun the same command to resume).
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// Print the resolved config and exit.
    #[arg(long)]
    pub print_config: bool,
}

pub fn run(a: RunArgs) -> Result<()> {
    let cfg = load_config(a.config.as_deref())?;
    if a.print_config {
        print!("{}", toml::to_string_pretty(&cfg)?);
        return Ok(());
    }
    let problems = crate::pipeline::check::problems(&cfg);
    if !problems.is_empty() {
        bail!(
            "{}: {} problem{} in the config; nothing was written\n  {}\n  hint: `srlm run --print-config` shows every key with its default",
            a.config
                .as_deref()
                .map_or("the default config".into(), |p| p.display().to_string()),
            problems.len(),
            if problems.len() == 1 { "" } else { "s" },
            problems.join("\n  ")
        );
    }
    let layout = Layout::new(&a.out);
    let dir = &layout.dir;
    let cfg_path = layout.config();
    let cfg_text = toml::to_string_pretty(&cfg)?;
    let resuming = match std::fs::read_to_string(&cfg_path) {
        Ok(old) if old != cfg_text => bail!(
            "{} was started with another config ({})\n  hint: rerun with the same config to resume, or choose a new --out",
            dir.display(),
            cfg_path.display()
        ),
        Ok(_) => true,
        Err(_) => {
            refuse_foreign_dir(dir)?;
            false
        }
    };
    let base = if cfg.model.base.is_empty() {
        srlm_engine::fetch::default_model()?
    } else {
        PathBuf::from(&cfg.model.base)
    };
    let started = Instant::now();
    let stages = plan(&cfg, &layout, &base)?;
    // The config is written once it and the plan it makes are known to be good, so a config
    // that was refused never claims the directory.
    match resuming {
        true => eprintln!("resuming the run in {}", dir.display()),
        false => write_atomic(&cfg_path, cfg_text.as_bytes())?,
    }
    let plan_file = crate::pipeline::layout::PlanFile {
        stages: stages.iter().map(|s| s.name.clone()).collect(),
    };
    write_atomic(
        &layout.plan(),
        srlm_core::summaries::to_pretty_json(&plan_file)?.as_bytes(),
    )?;
    let mut run = Run::open(layout.clone())?;
    run.execute(stages)?;
    let report = crate::report::write_report(dir, None)?;
    let last = layout.model(cfg.iterations + 1);
    eprintln!(
        "done in {:.0} s: models in {}, per-iteration artifacts in {}/iter*, stage log in {}, report in {}",
        started.elapsed().as_secs_f64(),
        layout.models().display(),
        dir.display(),
        layout.manifest().display(),
        report.display()
    );
    println!("{}", last.display());
    Ok(())
}

/// Refuses a run directory that already holds files but no run's config: it is not a run
/// directory srlm made, and a run would write its stages among someone else's files.
fn refuse_foreign_dir(dir: &std::path::Path) -> Result<()> {
    if let Some(name) = srlm_core::jsonl::first_entry(dir)? {
        bail!(
            "{} already holds files (such as {name}) but no run's config.toml; srlm starts a run only in a new or empty directory\n  hint: choose a new --out",
            dir.display()
        );
    }
    Ok(())
}
