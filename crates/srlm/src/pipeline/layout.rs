//! Every path of a run directory, in one place.
//!
//! ```text
//! RUN/config.toml        the resolved config (a rerun with a different one is refused)
//! RUN/manifest.json      finished stages: command, inputs by hash, outputs, seconds
//! RUN/plan.json          every stage's name, in order (what `srlm view` shows as to come)
//! RUN/seed/              ift.jsonl, eft.jsonl, sft.jsonl (IFT + EFT as prompt/response)
//! RUN/eft/               the judge bootstrap: data/ (the ranked trees), judgements.jsonl,
//!                        eft.jsonl (kept judgements), sft.jsonl (them as prompt/response)
//! RUN/models/m1 ...      Hugging Face folders (m1-seed: the seed SFT the bootstrap starts from)
//! RUN/iter1/             prompts.jsonl (+ .attempts.jsonl), candidates.jsonl,
//!                        judgements.jsonl, pairs.jsonl, diagnostics.json (the pairs stage's)
//! RUN/eval/              data/, judge_m1.jsonl (+ .metrics.json) ..., vs_m2_m1/ ...
//! RUN/report/            report.md and its plots
//! ```

use std::path::{Path, PathBuf};

/// `RUN/plan.json`: the stages a run will do, in order, so that a reader of the directory
/// (`srlm view`) can tell what is still to come without the config's planner.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlanFile {
    pub stages: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub dir: PathBuf,
}

/// `RUN/seed/`.
pub struct SeedFiles {
    pub ift: PathBuf,
    pub eft: PathBuf,
    /// IFT and EFT together as prompt/response records: what the seed SFT trains on.
    pub sft: PathBuf,
}

/// `RUN/eft/`.
pub struct BootstrapFiles {
    pub data_dir: PathBuf,
    pub judgements: PathBuf,
    pub eft: PathBuf,
    pub sft: PathBuf,
}

/// `RUN/iter{t}/`.
pub struct IterationFiles {
    pub prompts: PathBuf,
    pub candidates: PathBuf,
    pub judgements: PathBuf,
    pub pairs: PathBuf,
    /// The judge's and the pairs' diagnostics, written by the pairs stage.
    pub diagnostics: PathBuf,
}

/// `RUN/eval/`.
pub struct EvaluationFiles {
    dir: PathBuf,
    pub data_dir: PathBuf,
}

impl EvaluationFiles {
    /// Model `m`'s judgements of the held-out human rankings.
    pub fn judge(&self, m: usize) -> PathBuf {
        self.dir.join(format!("judge_m{m}.jsonl"))
    }

    /// Model `m` against M1.
    pub fn vs(&self, m: usize) -> PathBuf {
        self.dir.join(format!("vs_m{m}_m1"))
    }
}

impl Layout {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// Full hashes of the run's large inputs, with the fingerprints that let a rerun reuse them.
    pub fn input_hashes(&self) -> PathBuf {
        self.dir.join("input_hashes.json")
    }

    /// The output of an external trainer's stage (`trainers/dpo-m2.log`).
    pub fn trainer_log(&self, stage: &str) -> PathBuf {
        self.dir.join("trainers").join(format!("{stage}.log"))
    }

    pub fn manifest(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    /// The planned stages' names, written when the run starts ([`PlanFile`]).
    pub fn plan(&self) -> PathBuf {
        self.dir.join("plan.json")
    }

    pub fn seed(&self) -> SeedFiles {
        let d = self.dir.join("seed");
        SeedFiles {
            ift: d.join("ift.jsonl"),
            eft: d.join("eft.jsonl"),
            sft: d.join("sft.jsonl"),
        }
    }

    pub fn models(&self) -> PathBuf {
        self.dir.join("models")
    }

    /// M_m.
    pub fn model(&self, m: usize) -> PathBuf {
        self.models().join(format!("m{m}"))
    }

    /// t, when `path` is a run's M_t (`.../models/mT`).
    pub fn model_number(path: &Path) -> Option<usize> {
        if path.parent()?.file_name()? != "models" {
            return None;
        }
        path.file_name()?.to_str()?.strip_prefix('m')?.parse().ok()
    }

    /// The seed SFT that the judge bootstrap starts from.
    pub fn seed_model(&self) -> PathBuf {
        self.models().join("m1-seed")
    }

    pub fn bootstrap(&self) -> BootstrapFiles {
        let d = self.dir.join("eft");
        BootstrapFiles {
            data_dir: d.join("data"),
            judgements: d.join("judgements.jsonl"),
            eft: d.join("eft.jsonl"),
            sft: d.join("sft.jsonl"),
        }
    }

    pub fn iteration(&self, t: usize) -> IterationFiles {
        let d = self.dir.join(format!("iter{t}"));
        IterationFiles {
            prompts: d.join("prompts.jsonl"),
            candidates: d.join("candidates.jsonl"),
            judgements: d.join("judgements.jsonl"),
            pairs: d.join("pairs.jsonl"),
            diagnostics: d.join("diagnostics.json"),
        }
    }

    pub fn evaluation(&self) -> EvaluationFiles {
        let d = self.dir.join("eval");
        EvaluationFiles {
            data_dir: d.join("data"),
            dir: d,
        }
    }
}
