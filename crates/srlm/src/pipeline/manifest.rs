//! The run's record of finished stages (`RUN/manifest.json`), and the executor that runs a
//! planned stage unless the record says it is done with the same inputs.

use super::layout::Layout;
use super::plan::{Planned, Then, Work};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use srlm_core::jsonl::{read_jsonl, write_atomic, write_jsonl_atomic};
use srlm_core::seed::{load_eft, load_ift, EftExample, IftExample};
use srlm_core::summaries::{read_summary, JudgeEvalSummary, VsSummary};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use srlm_core::summaries::{Manifest, StageEntry};

fn sha256_file(path: &Path, h: &mut Sha256) -> Result<()> {
    let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    std::io::copy(&mut f, h).with_context(|| format!("reading {}", path.display()))?;
    Ok(())
}

/// SHA-256 of a file, or of a model folder's config and weights.
pub fn input_hash(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().unwrap_or_default().to_string_lossy();
                name == "config.json" || name.ends_with(".safetensors")
            })
            .collect();
        files.sort();
        for f in files {
            h.update(
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .as_bytes(),
            );
            sha256_file(&f, &mut h)?;
        }
    } else {
        sha256_file(path, &mut h)?;
    }
    Ok(format!("{:x}", h.finalize()))
}

/// A run directory being worked through, one planned stage at a time.
pub struct Run {
    layout: Layout,
    manifest: Manifest,
    /// Input hashes computed so far. A stage's inputs are finished outputs of earlier stages
    /// (or files outside the run), fixed for the life of the process, so each model folder
    /// (hundreds of MB) is hashed once, not by every stage that reads it.
    hashed: std::collections::HashMap<PathBuf, String>,
    /// Where `Work::Seed` finds the config's seed files.
    seed_data: super::config::SeedSection,
}

impl Run {
    /// The run in `layout`, its manifest read if a run there already finished stages.
    pub fn open(layout: Layout, seed_data: super::config::SeedSection) -> Result<Self> {
        let path = layout.manifest();
        let manifest: Manifest = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .with_context(|| format!("{}: unreadable", path.display()))?,
            Err(_) => Manifest {
                schema_version: srlm_core::stages::SCHEMA_VERSION,
                ..Manifest::default()
            },
        };
        Ok(Self {
            layout,
            manifest,
            hashed: Default::default(),
            seed_data,
        })
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.layout.dir)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    fn save_manifest(&self) -> Result<()> {
        write_atomic(
            &self.layout.manifest(),
            serde_json::to_string_pretty(&self.manifest)?.as_bytes(),
        )?;
        Ok(())
    }

    /// Every stage of `plan` in order.
    pub fn execute(&mut self, plan: Vec<Planned>) -> Result<()> {
        let total = plan.len();
        for (i, stage) in plan.into_iter().enumerate() {
            self.stage(stage, i + 1, total)?;
        }
        Ok(())
    }

    /// Runs `stage` (number `no` of `total`) unless the manifest holds it finished with the
    /// same inputs; the manifest then records its command line, inputs' hashes, outputs,
    /// seconds and stats.
    fn stage(&mut self, stage: Planned, no: usize, total: usize) -> Result<()> {
        let Planned {
            name,
            work,
            inputs,
            outputs,
        } = stage;
        let mut hashes = BTreeMap::new();
        for p in &inputs {
            let h = match self.hashed.get(p) {
                Some(h) => h.clone(),
                None => {
                    let h = input_hash(p)?;
                    self.hashed.insert(p.clone(), h.clone());
                    h
                }
            };
            hashes.insert(self.rel(p), h);
        }
        if let Some(done) = self.manifest.stages.get(&name) {
            if done.inputs == hashes && outputs.iter().all(|o| o.exists()) {
                eprintln!("[{no}/{total}] {name}: done ({:.0} s)", done.seconds);
                return Ok(());
            }
            bail!(
                "stage `{name}` of {} finished earlier with other inputs or lost its outputs\n  hint: start a new run directory, or delete the stage's outputs and its entry in manifest.json to redo it",
                self.layout.dir.display()
            );
        }
        let command = match &work {
            Work::Seed => vec!["(seed: resolve and merge the seed files)".to_string()],
            Work::Call { call, .. } => call.argv(),
        };
        eprintln!("[{no}/{total}] {name}: srlm {}", command.join(" "));
        let t = Instant::now();
        let stats = self.work(work).with_context(|| format!("stage `{name}`"))?;
        let entry = StageEntry {
            command,
            inputs: hashes,
            outputs: outputs.iter().map(|o| self.rel(o)).collect(),
            seconds: t.elapsed().as_secs_f64(),
            stats,
        };
        self.manifest.stages.insert(name, entry);
        self.save_manifest()
    }

    fn work(&self, work: Work) -> Result<Option<serde_json::Value>> {
        match work {
            Work::Seed => write_seed(&self.layout, &self.seed_data),
            Work::Call { call, then } => {
                call.run()?;
                then.run()
            }
        }
    }
}

impl Then {
    /// The check and the stats of a finished command.
    fn run(self) -> Result<Option<serde_json::Value>> {
        use serde_json::json;
        match self {
            Then::Nothing => Ok(None),
            Then::PromptsKept { prompts, asked } => {
                let kept = read_jsonl::<serde_json::Value>(&prompts, "")?.len();
                if kept == 0 {
                    bail!("no generated prompt passed the filters\n  hint: see {} for why each was dropped", crate::commands::prompts::attempts_path(&prompts).display());
                }
                Ok(Some(json!({"kept": kept, "asked": asked})))
            }
            Then::JudgementStats { judgements } => {
                let all = read_jsonl::<srlm_core::stages::JudgementRecord>(&judgements, "")?;
                let failed = all.iter().filter(|j| j.record.score.is_none()).count();
                if failed > 0 {
                    eprintln!("srlm: {failed} of {} judgements carry no valid score (kept with their raw text)", all.len());
                }
                Ok(Some(
                    json!({"judgements": all.len(), "parse_failures": failed}),
                ))
            }
            Then::PairsMade {
                pairs,
                judgements,
                iteration,
            } => {
                let n = read_jsonl::<serde_json::Value>(&pairs, "")?.len();
                if n == 0 {
                    bail!(
                        "iteration {iteration} made no preference pairs (every prompt's candidates tied or went unscored)\n  hint: see {} and {}; more prompts (prompts.count), candidates (sample.n) or judgements (judge.k) give the judge more to separate",
                        judgements.display(),
                        pairs.display()
                    );
                }
                Ok(Some(json!({"pairs": n})))
            }
            Then::JudgeAccuracy { metrics } => Ok(read_summary::<JudgeEvalSummary>(&metrics)
                .map(|m| json!(m.agreement.pairwise_accuracy))),
            Then::EftAsSft {
                eft,
                judgements,
                tokenizer,
                sft,
                max_len,
            } => {
                let examples = srlm_core::seed::load_eft(&eft)?;
                if examples.is_empty() {
                    bail!("no judgement of {} follows the human ranking, so there is nothing to train the judge on\n  hint: more samples per reply ([eft] k), or [eft] data = \"\" to skip the bootstrap", judgements.display());
                }
                let tokenizer = srlm_engine::tokenizer::tokenizer_from_file(&tokenizer)?;
                let records = crate::commands::eft::as_sft(&examples, &tokenizer, max_len);
                write_jsonl_atomic(&sft, &records)?;
                Ok(Some(json!({"examples": records.len()})))
            }
            Then::WinRate { summary } => Ok(read_summary::<VsSummary>(&summary)
                .map(|v| serde_json::to_value(v.a_win_rate))
                .transpose()?),
        }
    }
}

/// `Work::Seed`: the seed's IFT and EFT examples, and the SFT file that trains M1 on both.
fn write_seed(
    layout: &Layout,
    seed_data: &super::config::SeedSection,
) -> Result<Option<serde_json::Value>> {
    use srlm_core::judge::judge_prompt;
    let files = layout.seed();
    let (ift, eft) = seed_examples(seed_data, &layout.dir)?;
    write_jsonl_atomic(&files.ift, &ift)?;
    write_jsonl_atomic(&files.eft, &eft)?;
    let mut sft: Vec<serde_json::Value> = ift
        .iter()
        .map(|e| serde_json::json!({"prompt": e.prompt, "response": e.response}))
        .collect();
    sft.extend(eft.iter().map(|e| {
        serde_json::json!({"prompt": judge_prompt(&e.instruction, &e.response), "response": e.judgement})
    }));
    write_jsonl_atomic(&files.sft, &sft)?;
    Ok(Some(
        serde_json::json!({"ift": ift.len(), "eft": eft.len()}),
    ))
}

/// The seed files resolved: "builtin" or a path relative to where srlm runs.
pub(crate) fn seed_examples(
    cfg: &super::config::SeedSection,
    dir: &Path,
) -> Result<(Vec<IftExample>, Vec<EftExample>)> {
    let tmp = dir.join("seed");
    std::fs::create_dir_all(&tmp)?;
    let mut ift = Vec::new();
    for src in &cfg.ift {
        if src == "builtin" {
            let p = tmp.join("builtin_ift.jsonl");
            write_atomic(&p, crate::builtin::SEED_IFT.as_bytes())?;
            ift.extend(load_ift(&p)?);
        } else {
            ift.extend(load_ift(Path::new(src))?);
        }
    }
    let mut eft = Vec::new();
    for src in &cfg.eft {
        if src == "builtin" {
            let p = tmp.join("builtin_eft.jsonl");
            write_atomic(&p, crate::builtin::SEED_EFT.as_bytes())?;
            eft.extend(load_eft(&p)?);
        } else {
            eft.extend(load_eft(Path::new(src))?);
        }
    }
    if ift.is_empty() {
        bail!("the seed has no IFT examples\n  hint: set [seed_data] ift = [\"builtin\"] or to your own files");
    }
    Ok((ift, eft))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::config::SeedSection;

    #[test]
    fn the_shipped_seed_set_is_plentiful_and_spans_every_score() {
        let dir = tempfile::tempdir().unwrap();
        let (ift, eft) = seed_examples(&SeedSection::default(), dir.path()).unwrap();
        assert!(ift.len() >= 150, "{}", ift.len());
        assert!(eft.len() >= 150, "{}", eft.len());
        // load_eft already checked that every judgement's own last Score line is its score.
        for score in 0..=5u8 {
            let n = eft.iter().filter(|e| e.score == score).count();
            assert!(n >= 20, "score {score}: {n} examples");
        }
        let categories: std::collections::BTreeSet<String> = crate::builtin::SEED_IFT
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["category"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(categories.len() >= 10, "{categories:?}");
        // No prompt twice.
        let prompts: std::collections::HashSet<&str> =
            ift.iter().map(|e| e.prompt.as_str()).collect();
        assert_eq!(prompts.len(), ift.len());
    }
}
