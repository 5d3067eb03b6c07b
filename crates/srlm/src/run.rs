//! `srlm run`: the whole self-rewarding loop in a run directory.
//!
//! M0 (the base model) is fine-tuned on the seed's IFT and EFT examples; with `[eft] data`
//! (the default: the Open Assistant training split srlm ships) that model then judges
//! human-ranked replies, the judgements that follow the human order become judge-training
//! examples (the paper's EFT construction, `srlm eft`), and a second SFT on them gives M1. Then for
//! t = 1..=iterations: new prompts (self-instruction), N candidates per prompt from M_t, k
//! judgements per candidate by M_t, best-against-worst pairs, and DPO from M_t gives M_{t+1}.
//!
//! Every stage is one of srlm's own commands on explicit files; the run composes their command
//! lines from the config, and the manifest records each finished stage with its command and the
//! SHA-256 of its inputs. Run the same command again after an interruption: finished stages are
//! skipped (their inputs checked), and the interrupted one resumes from its own partial output.
//!
//! ```text
//! RUN/config.toml        the resolved config (a rerun with a different one is refused)
//! RUN/manifest.json      finished stages: command, inputs by hash, outputs, seconds
//! RUN/seed/              ift.jsonl, eft.jsonl, sft.jsonl (IFT + EFT as prompt/response)
//! RUN/eft/              the judge bootstrap: data/ (the ranked trees), judgements.jsonl,
//!                        eft.jsonl (kept judgements), sft.jsonl (them as prompt/response)
//! RUN/models/m1 ...      Hugging Face folders (m1-seed: the seed SFT the bootstrap starts from)
//! RUN/iter1/             prompts.jsonl (+ .attempts.jsonl), candidates.jsonl,
//!                        judgements.jsonl, pairs.jsonl (+ .stats.json)
//! ```

use crate::train_settings::{TrainFlags, TrainSettings};
use anyhow::{bail, Context, Result};
use clap::{Args, Parser};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use srlm_core::eft::Select;
use srlm_core::jsonl::{read_jsonl, write_atomic, write_jsonl_atomic};
use srlm_core::judge::{judge_prompt, ScoreMode};
use srlm_core::seed::{load_eft, load_ift, EftExample, IftExample};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// DPO iterations after SFT: 2 gives M1 -> M2 -> M3.
    pub iterations: usize,
    pub seed: u64,
    /// Sequences generated together.
    pub batch_size: usize,
    pub model: ModelSection,
    pub seed_data: SeedSection,
    /// The seed SFT and the judge bootstrap's SFT: keys set here over `TrainSettings::sft`.
    #[serde(deserialize_with = "crate::train_settings::sft_section")]
    pub sft: TrainSettings,
    pub eft: EftSection,
    pub prompts: PromptsSection,
    pub sample: GenSection,
    pub judge: JudgeSection,
    pub pairs: PairsSection,
    pub dpo: DpoSection,
    pub eval: EvalSection,
    /// OpenAI-compatible servers by name, for the roles' `backend` keys.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub backends: BTreeMap<String, BackendSection>,
}

/// An OpenAI-compatible server (vLLM, SGLang, llama.cpp server, a provider, `srlm serve`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendSection {
    /// e.g. "http://localhost:8000/v1".
    pub base_url: String,
    /// The model name to ask for; empty for the first the server lists.
    pub model: String,
    /// The environment variable holding the API key (never written to the run).
    pub api_key_env: String,
    pub concurrency: usize,
    pub timeout_s: f64,
    pub max_retries: u32,
    /// Ask for the k judgements (N samples) of one item in one request with `n`.
    pub n_per_request: bool,
}

impl Default for BackendSection {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            model: String::new(),
            api_key_env: "OPENAI_API_KEY".into(),
            concurrency: 8,
            timeout_s: 600.0,
            max_retries: 6,
            n_per_request: true,
        }
    }
}

/// Evaluation of every model after the loop, on by default on data nothing in the run trains
/// on (each part skipped when its data is set to "").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSection {
    /// Open Assistant trees: each model judges their human-ranked replies (`srlm eval judge`,
    /// with the judge's own settings); "builtin:oasst-eval" is the held-out split srlm ships.
    pub judge_data: String,
    /// Prompts judged (0: all).
    pub judge_limit: usize,
    /// Judgements per reply.
    pub judge_k: usize,
    /// Prompts for head-to-head (`srlm eval vs`) of every later model against M1;
    /// "builtin:vicuna" is Vicuna's 80 questions.
    pub prompts: String,
    pub prompts_limit: usize,
    /// The fixed judge of head-to-head: "m1" (the same judge for every comparison), "base"
    /// (M0), or a path.
    pub vs_judge: String,
    /// "scores" (each answer scored alone with the additive prompt, `judge.score`'s reading:
    /// no position to be biased by) or "pairwise" (both answers shown, in both orders).
    pub vs_mode: String,
    /// Where the head-to-head judge runs: "local" (`vs_judge`) or a [backends] name.
    pub vs_backend: String,
    pub max_new_tokens: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            judge_data: "builtin:oasst-eval".into(),
            judge_limit: 0,
            judge_k: 1,
            prompts: "builtin:vicuna".into(),
            prompts_limit: 0,
            vs_judge: "m1".into(),
            vs_mode: "scores".into(),
            vs_backend: "local".into(),
            max_new_tokens: 256,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelSection {
    /// M0: a GGUF file or Hugging Face folder; empty for the default SmolLM2-135M-Instruct.
    pub base: String,
    /// How generation holds weights: mixed, q8_0, native, dense.
    pub weights: String,
    pub context_length: usize,
    /// CPU threads; 0 for all cores.
    pub threads: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeedSection {
    /// IFT files in any seed format; "builtin" is the shipped set.
    pub ift: Vec<String>,
    /// EFT files ({"instruction", "response", "judgement", "score"}); "builtin" is the shipped set.
    pub eft: Vec<String>,
}

/// The judge bootstrap (the paper's EFT from human-ranked replies): the seed SFT judges the
/// ranked replies of `data`, `srlm eft` keeps the judgements that follow the human order, and
/// SFT on them (with `[sft]`'s settings, `epochs` of them) gives M1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EftSection {
    /// Open Assistant trees with ranked replies; "builtin:oasst-train" is the training split
    /// srlm ships (disjoint from the evaluation's `builtin:oasst-eval`); "" turns the
    /// bootstrap off, and M1 is the seed SFT.
    pub data: String,
    /// Prompts judged (0: all).
    pub limit: usize,
    /// Judgements per reply: more give more chances of one that follows the ranking.
    pub k: usize,
    /// Sampling temperature of those judgements (diverse samples to choose among).
    pub temperature: f32,
    /// "order" (one sample per reply whose scores follow the ranking) or "mean" (the paper:
    /// the replies' mean scores follow it).
    pub select: Select,
    /// Epochs of the SFT on the kept judgements.
    pub epochs: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptsSection {
    /// New prompts per iteration.
    pub count: usize,
    /// Who writes them: "base" (M0, fixed, as the paper's fixed generator), "current" (M_t),
    /// or a model path.
    pub generator: String,
    pub from_seed: usize,
    pub from_generated: usize,
    pub max_rouge_l: f64,
    pub min_words: usize,
    pub max_words: usize,
    /// Empty: Self-Instruct's list.
    pub blocklist: Vec<String>,
    pub max_attempts_factor: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// "local" (`generator`) or a [backends] name.
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenSection {
    /// Candidates per prompt.
    pub n: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// "local" (M_t) or a [backends] name.
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeSection {
    /// What a judgement counts as for the pairs and the evaluation's headline: "sampled" (the
    /// score the judge wrote) or "expected" (`sum s * p(s)` at the score token). Both are
    /// recorded either way.
    pub score: ScoreMode,
    /// Judgements per candidate.
    pub k: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// "local" (M_t judges itself, as in the paper) or a [backends] name.
    pub backend: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairsSection {
    pub min_margin: f64,
    /// Among candidates within this of the best score, prefer the shortest; negative is off.
    pub length_control: f64,
}

/// `[dpo]`: DPO's own settings and the training settings, keys set here over
/// `TrainSettings::dpo` (read through [`DpoFile`], so that a section naming only `beta` keeps
/// DPO's training defaults rather than SFT's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "DpoFile")]
pub struct DpoSection {
    pub beta: f64,
    /// sigmoid or ipo.
    pub loss: String,
    pub rpo_alpha: f64,
    pub label_smoothing: f64,
    #[serde(flatten)]
    pub train: TrainSettings,
}

/// `[dpo]` as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DpoFile {
    beta: Option<f64>,
    loss: Option<String>,
    rpo_alpha: Option<f64>,
    label_smoothing: Option<f64>,
    #[serde(flatten)]
    train: TrainFlags,
}

impl From<DpoFile> for DpoSection {
    fn from(f: DpoFile) -> Self {
        let d = DpoSection::default();
        Self {
            beta: f.beta.unwrap_or(d.beta),
            loss: f.loss.unwrap_or(d.loss),
            rpo_alpha: f.rpo_alpha.unwrap_or(d.rpo_alpha),
            label_smoothing: f.label_smoothing.unwrap_or(d.label_smoothing),
            train: f.train.resolve(d.train),
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            iterations: 2,
            seed: 0,
            batch_size: 16,
            model: ModelSection::default(),
            seed_data: SeedSection::default(),
            sft: TrainSettings::sft(),
            eft: EftSection::default(),
            prompts: PromptsSection::default(),
            sample: GenSection::default(),
            judge: JudgeSection::default(),
            pairs: PairsSection::default(),
            dpo: DpoSection::default(),
            eval: EvalSection::default(),
            backends: BTreeMap::new(),
        }
    }
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            base: String::new(),
            weights: "mixed".into(),
            context_length: 2048,
            threads: 0,
        }
    }
}

impl Default for SeedSection {
    fn default() -> Self {
        Self {
            ift: vec!["builtin".into()],
            eft: vec!["builtin".into()],
        }
    }
}

impl Default for EftSection {
    /// As measured on the held-out split (README, "the judge"): order-selected judgements of
    /// four samples at temperature 1, two epochs.
    fn default() -> Self {
        Self {
            data: "builtin:oasst-train".into(),
            limit: 0,
            k: 4,
            temperature: 1.0,
            select: Select::Order,
            epochs: 2,
        }
    }
}

impl Default for PromptsSection {
    fn default() -> Self {
        Self {
            count: 64,
            generator: "base".into(),
            from_seed: 6,
            from_generated: 2,
            max_rouge_l: 0.7,
            min_words: 3,
            max_words: 150,
            blocklist: Vec::new(),
            max_attempts_factor: 10,
            temperature: 0.6,
            top_p: 0.9,
            max_new_tokens: 96,
            backend: "local".into(),
        }
    }
}

impl Default for GenSection {
    fn default() -> Self {
        Self {
            n: 4,
            temperature: 0.7,
            top_p: 0.9,
            max_new_tokens: 256,
            backend: "local".into(),
        }
    }
}

impl Default for JudgeSection {
    /// One greedy justification read by its expected score: on the held-out split this beat
    /// a sample at temperature 0.7 and the written score (README, "The judge, measured").
    fn default() -> Self {
        Self {
            score: ScoreMode::Expected,
            k: 1,
            temperature: 0.0,
            top_p: 0.9,
            max_new_tokens: 160,
            backend: "local".into(),
        }
    }
}

impl Default for PairsSection {
    fn default() -> Self {
        Self {
            min_margin: 0.0,
            length_control: -1.0,
        }
    }
}

impl Default for DpoSection {
    fn default() -> Self {
        Self {
            beta: 0.1,
            loss: "sigmoid".into(),
            rpo_alpha: 0.0,
            label_smoothing: 0.0,
            train: TrainSettings::dpo(),
        }
    }
}

/// One finished stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageEntry {
    /// The srlm command line that ran it (without the program name).
    pub command: Vec<String>,
    /// Input path (relative to the run) -> SHA-256.
    pub inputs: BTreeMap<String, String>,
    pub outputs: Vec<String>,
    pub seconds: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub stages: BTreeMap<String, StageEntry>,
}

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

struct Run {
    dir: PathBuf,
    manifest: Manifest,
    /// Input hashes computed so far. A stage's inputs are finished outputs of earlier stages
    /// (or files outside the run), fixed for the life of the process, so each model folder
    /// (hundreds of MB) is hashed once, not by every stage that reads it.
    hashed: std::collections::HashMap<PathBuf, String>,
    base: PathBuf,
    stage_no: usize,
    stage_total: usize,
}

impl Run {
    fn manifest_path(&self) -> PathBuf {
        self.dir.join("manifest.json")
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.dir).unwrap_or(p).display().to_string()
    }

    fn save_manifest(&self) -> Result<()> {
        write_atomic(
            &self.manifest_path(),
            serde_json::to_string_pretty(&self.manifest)?.as_bytes(),
        )?;
        Ok(())
    }

    /// Runs `name` unless the manifest holds it finished with the same inputs. `body` does the
    /// work (itself resumable) and may return stats to record.
    fn stage(
        &mut self,
        name: &str,
        command: Vec<String>,
        inputs: &[&Path],
        outputs: &[&Path],
        body: impl FnOnce(&[String]) -> Result<Option<serde_json::Value>>,
    ) -> Result<()> {
        self.stage_no += 1;
        let mut hashes = BTreeMap::new();
        for p in inputs {
            let h = match self.hashed.get(*p) {
                Some(h) => h.clone(),
                None => {
                    let h = input_hash(p)?;
                    self.hashed.insert(p.to_path_buf(), h.clone());
                    h
                }
            };
            hashes.insert(self.rel(p), h);
        }
        if let Some(done) = self.manifest.stages.get(name) {
            if done.inputs == hashes && outputs.iter().all(|o| o.exists()) {
                eprintln!(
                    "[{}/{}] {name}: done ({:.0} s)",
                    self.stage_no, self.stage_total, done.seconds
                );
                return Ok(());
            }
            bail!(
                "stage `{name}` of {} finished earlier with other inputs or lost its outputs\n  hint: start a new run directory, or delete the stage's outputs and its entry in manifest.json to redo it",
                self.dir.display()
            );
        }
        eprintln!(
            "[{}/{}] {name}: srlm {}",
            self.stage_no,
            self.stage_total,
            command.join(" ")
        );
        let t = Instant::now();
        let stats = body(&command).with_context(|| format!("stage `{name}`"))?;
        let entry = StageEntry {
            command,
            inputs: hashes,
            outputs: outputs.iter().map(|o| self.rel(o)).collect(),
            seconds: t.elapsed().as_secs_f64(),
            stats,
        };
        self.manifest.stages.insert(name.to_string(), entry);
        self.save_manifest()
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Runs one of srlm's own commands, parsed from `args` as the command line would be.
fn srlm(args: &[String]) -> Result<()> {
    let cli =
        crate::Cli::try_parse_from(std::iter::once("srlm".to_string()).chain(args.iter().cloned()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::dispatch(cli.command)
}

fn model_flags(cfg: &RunConfig, model: &Path) -> Vec<String> {
    let mut v = vec!["--model".into(), s(model)];
    v.extend(engine_flags(cfg));
    v
}

/// How every model is held, without which model.
fn engine_flags(cfg: &RunConfig) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "--weights".into(),
        cfg.model.weights.clone(),
        "--context-length".into(),
        cfg.model.context_length.to_string(),
    ];
    if cfg.model.threads > 0 {
        v.extend(["--threads".into(), cfg.model.threads.to_string()]);
    }
    v
}

/// The stage flags of a role's backend: None for the local model, else the server's flags.
fn remote_flags(cfg: &RunConfig, key: &str, name: &str) -> Result<Option<Vec<String>>> {
    if name == "local" {
        return Ok(None);
    }
    let Some(b) = cfg.backends.get(name) else {
        bail!(
            "config key `{key} = \"{name}\"` names no [backends.{name}] section\n  hint: \"local\" or one of: {:?}",
            cfg.backends.keys().collect::<Vec<_>>()
        );
    };
    if b.base_url.is_empty() {
        bail!("[backends.{name}] has no base_url\n  hint: e.g. base_url = \"http://localhost:8000/v1\"");
    }
    let args = crate::backend::RemoteArgs {
        api_base: Some(b.base_url.clone()),
        api_model: (!b.model.is_empty()).then(|| b.model.clone()),
        api_key_env: b.api_key_env.clone(),
        api_concurrency: b.concurrency,
        api_timeout_s: b.timeout_s,
        api_max_retries: b.max_retries,
        api_no_n: !b.n_per_request,
    };
    Ok(Some(args.to_flags()))
}

/// How a generating stage samples: batch size, temperature, top-p, new tokens, seed.
fn sampling_flags(
    batch_size: usize,
    temperature: f32,
    top_p: f32,
    max_new_tokens: usize,
    seed: u64,
) -> Vec<String> {
    vec![
        "--batch-size".into(),
        batch_size.to_string(),
        "--temperature".into(),
        temperature.to_string(),
        "--top-p".into(),
        top_p.to_string(),
        "--max-new-tokens".into(),
        max_new_tokens.to_string(),
        "--seed".into(),
        seed.to_string(),
    ]
}

/// Who plays a role: the server of `remote` (its model is no file for the manifest to hash),
/// or the local `model`, which then is one of the stage's inputs.
fn role_model<'a>(
    cfg: &RunConfig,
    remote: &Option<Vec<String>>,
    model: &'a Path,
    cmd: &mut Vec<String>,
    inputs: &mut Vec<&'a Path>,
) {
    match remote {
        Some(flags) => cmd.extend(flags.iter().cloned()),
        None => {
            cmd.extend(model_flags(cfg, model));
            inputs.push(model);
        }
    }
}

fn train_flags(cfg: &RunConfig, t: &TrainSettings, model: &Path, out: &Path) -> Vec<String> {
    let mut v = vec!["--model".into(), s(model), "--out".into(), s(out)];
    v.extend(t.to_argv());
    v.extend(["--seed".into(), cfg.seed.to_string()]);
    if cfg.model.threads > 0 {
        v.extend(["--threads".into(), cfg.model.threads.to_string()]);
    }
    v
}

fn load_config(a: &RunArgs) -> Result<RunConfig> {
    let Some(path) = &a.config else {
        return Ok(RunConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}\n  hint: `srlm run --print-config` shows every key with its default",
            path.display()
        )
    })
}

/// The seed files resolved: "builtin" or a path relative to where srlm runs.
fn seed_examples(cfg: &SeedSection, dir: &Path) -> Result<(Vec<IftExample>, Vec<EftExample>)> {
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

pub fn run(a: RunArgs) -> Result<()> {
    let cfg = load_config(&a)?;
    if a.print_config {
        print!("{}", toml::to_string_pretty(&cfg)?);
        return Ok(());
    }
    // Every role's backend resolves before anything runs.
    let prompts_remote = remote_flags(&cfg, "prompts.backend", &cfg.prompts.backend)?;
    let sample_remote = remote_flags(&cfg, "sample.backend", &cfg.sample.backend)?;
    let judge_remote = remote_flags(&cfg, "judge.backend", &cfg.judge.backend)?;
    let vs_remote = remote_flags(&cfg, "eval.vs_backend", &cfg.eval.vs_backend)?;
    let dir = a.out.clone();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let cfg_path = dir.join("config.toml");
    let cfg_text = toml::to_string_pretty(&cfg)?;
    match std::fs::read_to_string(&cfg_path) {
        Ok(old) if old != cfg_text => bail!(
            "{} was started with another config ({})\n  hint: rerun with the same config to resume, or choose a new --out",
            dir.display(),
            cfg_path.display()
        ),
        Ok(_) => eprintln!("resuming the run in {}", dir.display()),
        Err(_) => write_atomic(&cfg_path, cfg_text.as_bytes())?,
    }
    let manifest: Manifest = match std::fs::read_to_string(dir.join("manifest.json")) {
        Ok(t) => serde_json::from_str(&t)
            .with_context(|| format!("{}: unreadable", dir.join("manifest.json").display()))?,
        Err(_) => Manifest {
            schema_version: srlm_core::stages::SCHEMA_VERSION,
            ..Manifest::default()
        },
    };
    let base = if cfg.model.base.is_empty() {
        srlm_engine::fetch::default_model()?
    } else {
        PathBuf::from(&cfg.model.base)
    };
    let mut run = Run {
        dir: dir.clone(),
        stage_total: 2
            + if cfg.eft.data.is_empty() { 0 } else { 3 }
            + 5 * cfg.iterations
            + if cfg.eval.judge_data.is_empty() {
                0
            } else {
                cfg.iterations + 1
            }
            + if cfg.eval.prompts.is_empty() {
                0
            } else {
                cfg.iterations
            },
        manifest,
        hashed: Default::default(),
        base,
        stage_no: 0,
    };
    let started = Instant::now();

    // Seed: IFT and EFT examples, and the SFT file that trains M1 on both.
    let seed_dir = dir.join("seed");
    let (ift_path, eft_path, sft_path) = (
        seed_dir.join("ift.jsonl"),
        seed_dir.join("eft.jsonl"),
        seed_dir.join("sft.jsonl"),
    );
    {
        let cfg = cfg.clone();
        let d = dir.clone();
        let (ip, ep, sp) = (ift_path.clone(), eft_path.clone(), sft_path.clone());
        run.stage(
            "seed",
            vec!["(seed: resolve and merge the seed files)".into()],
            &[],
            &[&ift_path, &eft_path, &sft_path],
            move |_| {
                let (ift, eft) = seed_examples(&cfg.seed_data, &d)?;
                write_jsonl_atomic(&ip, &ift)?;
                write_jsonl_atomic(&ep, &eft)?;
                let mut sft: Vec<serde_json::Value> = ift
                    .iter()
                    .map(|e| serde_json::json!({"prompt": e.prompt, "response": e.response}))
                    .collect();
                sft.extend(eft.iter().map(|e| {
                    serde_json::json!({"prompt": judge_prompt(&e.instruction, &e.response), "response": e.judgement})
                }));
                write_jsonl_atomic(&sp, &sft)?;
                Ok(Some(serde_json::json!({"ift": ift.len(), "eft": eft.len()})))
            },
        )?;
    }

    // M0 -> M1 by SFT on IFT + EFT; with the bootstrap, that model is m1-seed, and M1 is it
    // trained further on its own judgements that follow human rankings.
    let models = dir.join("models");
    let m1 = models.join("m1");
    let bootstrap = !cfg.eft.data.is_empty();
    let seed_model = if bootstrap {
        models.join("m1-seed")
    } else {
        m1.clone()
    };
    let base = run.base.clone();
    let mut cmd = vec!["sft".to_string(), "--data".into(), s(&sft_path)];
    cmd.extend(train_flags(&cfg, &cfg.sft, &base, &seed_model));
    run.stage(
        if bootstrap { "sft m1-seed" } else { "sft m1" },
        cmd,
        &[&sft_path, &base],
        &[&seed_model.join("config.json")],
        |c| {
            srlm(c)?;
            Ok(None)
        },
    )?;
    if bootstrap {
        bootstrap_judge(&mut run, &cfg, &seed_model, &m1)?;
    }

    let mut current = m1;
    let mut earlier_prompts: Vec<PathBuf> = Vec::new();
    for t in 1..=cfg.iterations {
        let it = dir.join(format!("iter{t}"));
        std::fs::create_dir_all(&it)?;
        let prompts = it.join("prompts.jsonl");
        let cands = it.join("candidates.jsonl");
        let judgements = it.join("judgements.jsonl");
        let pairs = it.join("pairs.jsonl");
        let next = models.join(format!("m{}", t + 1));

        let generator = match cfg.prompts.generator.as_str() {
            "base" => run.base.clone(),
            "current" => current.clone(),
            path => PathBuf::from(path),
        };
        let p = &cfg.prompts;
        let mut cmd = vec![
            "prompts".to_string(),
            "--seed".into(),
            s(&ift_path),
            "--out".into(),
            s(&prompts),
            "--count".into(),
            p.count.to_string(),
            "--max-attempts-factor".into(),
            p.max_attempts_factor.to_string(),
            "--from-seed".into(),
            p.from_seed.to_string(),
            "--from-generated".into(),
            p.from_generated.to_string(),
            "--max-rouge-l".into(),
            p.max_rouge_l.to_string(),
            "--min-words".into(),
            p.min_words.to_string(),
            "--max-words".into(),
            p.max_words.to_string(),
            "--id-prefix".into(),
            format!("it{t}-"),
            "--temperature".into(),
            p.temperature.to_string(),
            "--top-p".into(),
            p.top_p.to_string(),
            "--max-new-tokens".into(),
            p.max_new_tokens.to_string(),
            "--rng-seed".into(),
            (cfg.seed + t as u64).to_string(),
            "--batch-size".into(),
            cfg.batch_size.to_string(),
        ];
        if !p.blocklist.is_empty() {
            cmd.extend(["--blocklist".into(), p.blocklist.join(",")]);
        }
        for e in &earlier_prompts {
            cmd.extend(["--existing".into(), s(e)]);
        }
        let mut inputs: Vec<&Path> = vec![&ift_path];
        role_model(&cfg, &prompts_remote, &generator, &mut cmd, &mut inputs);
        inputs.extend(earlier_prompts.iter().map(|p| p.as_path()));
        let count = p.count;
        run.stage(&format!("prompts {t}"), cmd, &inputs, &[&prompts], |c| {
            srlm(c)?;
            let kept = read_jsonl::<serde_json::Value>(&prompts, "")?.len();
            if kept == 0 {
                bail!("no generated prompt passed the filters\n  hint: see {} for why each was dropped", crate::prompts::attempts_path(&prompts).display());
            }
            Ok(Some(serde_json::json!({"kept": kept, "asked": count})))
        })?;
        earlier_prompts.push(prompts.clone());

        let g = &cfg.sample;
        let mut cmd = vec![
            "sample".to_string(),
            "--prompts".into(),
            s(&prompts),
            "--out".into(),
            s(&cands),
            "--n".into(),
            g.n.to_string(),
        ];
        cmd.extend(sampling_flags(
            cfg.batch_size,
            g.temperature,
            g.top_p,
            g.max_new_tokens,
            cfg.seed + 100 + t as u64,
        ));
        let mut inputs: Vec<&Path> = vec![&prompts];
        role_model(&cfg, &sample_remote, &current, &mut cmd, &mut inputs);
        run.stage(&format!("sample {t}"), cmd, &inputs, &[&cands], |c| {
            srlm(c)?;
            Ok(None)
        })?;

        let j = &cfg.judge;
        let mut cmd = vec![
            "judge".to_string(),
            "--candidates".into(),
            s(&cands),
            "--out".into(),
            s(&judgements),
            "--k".into(),
            j.k.to_string(),
        ];
        cmd.extend(sampling_flags(
            cfg.batch_size,
            j.temperature,
            j.top_p,
            j.max_new_tokens,
            cfg.seed + 200 + t as u64,
        ));
        let mut inputs: Vec<&Path> = vec![&cands];
        role_model(&cfg, &judge_remote, &current, &mut cmd, &mut inputs);
        run.stage(&format!("judge {t}"), cmd, &inputs, &[&judgements], |c| {
            srlm(c)?;
            let all = read_jsonl::<srlm_core::stages::JudgementRecord>(&judgements, "")?;
            let failed = all.iter().filter(|j| j.record.score.is_none()).count();
            if failed > 0 {
                eprintln!("srlm: {failed} of {} judgements carry no valid score (kept with their raw text)", all.len());
            }
            Ok(Some(serde_json::json!({"judgements": all.len(), "parse_failures": failed})))
        })?;

        let mut cmd = vec![
            "pairs".to_string(),
            "--candidates".into(),
            s(&cands),
            "--judgements".into(),
            s(&judgements),
            "--out".into(),
            s(&pairs),
            "--min-margin".into(),
            cfg.pairs.min_margin.to_string(),
            "--score".into(),
            cfg.judge.score.name().into(),
        ];
        if cfg.pairs.length_control >= 0.0 {
            cmd.extend([
                "--length-control".into(),
                cfg.pairs.length_control.to_string(),
            ]);
        }
        run.stage(
            &format!("pairs {t}"),
            cmd,
            &[&cands, &judgements],
            &[&pairs],
            |c| {
                srlm(c)?;
                let n = read_jsonl::<serde_json::Value>(&pairs, "")?.len();
                Ok(Some(serde_json::json!({"pairs": n})))
            },
        )?;
        let n_pairs = read_jsonl::<serde_json::Value>(&pairs, "")?.len();
        if n_pairs == 0 {
            bail!(
                "iteration {t} made no preference pairs (every prompt's candidates tied or went unscored)\n  hint: see {} and {}; more prompts (prompts.count), candidates (sample.n) or judgements (judge.k) give the judge more to separate",
                judgements.display(),
                pairs.display()
            );
        }

        let d = &cfg.dpo;
        let mut cmd = vec![
            "dpo".to_string(),
            "--pairs".into(),
            s(&pairs),
            "--beta".into(),
            d.beta.to_string(),
            "--loss".into(),
            d.loss.clone(),
            "--rpo-alpha".into(),
            d.rpo_alpha.to_string(),
            "--label-smoothing".into(),
            d.label_smoothing.to_string(),
        ];
        cmd.extend(train_flags(&cfg, &d.train, &current, &next));
        run.stage(
            &format!("dpo m{}", t + 1),
            cmd,
            &[&pairs, &current],
            &[&next.join("config.json")],
            |c| {
                srlm(c)?;
                Ok(None)
            },
        )?;
        current = next;
    }
    evaluate(&mut run, &cfg, &models, &vs_remote)?;
    let report = crate::report::write_report(&dir, None)?;
    eprintln!(
        "done in {:.0} s: models in {}, per-iteration artifacts in {}/iter*, stage log in {}, report in {}",
        started.elapsed().as_secs_f64(),
        models.display(),
        dir.display(),
        run.manifest_path().display(),
        report.display()
    );
    println!("{}", s(&current));
    Ok(())
}

/// The judge bootstrap: `seed_model` judges the ranked replies of `[eft] data` (`srlm eval
/// judge`), `srlm eft` keeps the judgements that follow the human order, and SFT on them
/// from `seed_model` gives `m1`.
fn bootstrap_judge(run: &mut Run, cfg: &RunConfig, seed_model: &Path, m1: &Path) -> Result<()> {
    let e = &cfg.eft;
    let dir = run.dir.join("eft");
    let data = data_file(&e.data, &dir.join("data"))?;
    let (judgements, eft, sft) = (
        dir.join("judgements.jsonl"),
        dir.join("eft.jsonl"),
        dir.join("sft.jsonl"),
    );
    let cmd = eval_judge_command(
        cfg,
        seed_model,
        &data,
        &judgements,
        (e.k, e.temperature, e.limit),
        cfg.seed + 500,
    );
    let metrics = PathBuf::from(format!("{}.metrics.json", judgements.display()));
    run.stage("eft judge", cmd, &[&data, seed_model], &[&metrics], |c| {
        srlm(c)?;
        Ok(crate::report::read_json(&metrics).map(|v| v["agreement"]["pairwise_accuracy"].clone()))
    })?;

    let cmd = vec![
        "eft".to_string(),
        "--data".into(),
        s(&data),
        "--judgements".into(),
        s(&judgements),
        "--out".into(),
        s(&eft),
        "--select".into(),
        match e.select {
            Select::Mean => "mean",
            Select::Order => "order",
        }
        .into(),
        "--seed".into(),
        cfg.seed.to_string(),
    ];
    let max_len = cfg.sft.max_len;
    run.stage("eft", cmd, &[&data, &judgements], &[&eft, &sft], |c| {
        srlm(c)?;
        let examples = load_eft(&eft)?;
        if examples.is_empty() {
            bail!("no judgement of {} follows the human ranking, so there is nothing to train the judge on\n  hint: more samples per reply ([eft] k), or [eft] data = \"\" to skip the bootstrap", judgements.display());
        }
        let tokenizer = srlm_engine::tokenizer::tokenizer_from_file(&seed_model.join("tokenizer.json"))?;
        let records = crate::eft::as_sft(&examples, &tokenizer, max_len);
        write_jsonl_atomic(&sft, &records)?;
        Ok(Some(serde_json::json!({"examples": records.len()})))
    })?;

    let mut train = cfg.sft.clone();
    train.epochs = e.epochs;
    let mut cmd = vec!["sft".to_string(), "--data".into(), s(&sft)];
    cmd.extend(train_flags(cfg, &train, seed_model, m1));
    run.stage(
        "sft m1",
        cmd,
        &[&sft, seed_model],
        &[&m1.join("config.json")],
        |c| {
            srlm(c)?;
            Ok(None)
        },
    )
}

/// `srlm eval judge` of `model` on the ranked trees `data` into `out`: `k` judgements per
/// reply at `temperature` on `limit` prompts (0: all), with the judge's other settings.
fn eval_judge_command(
    cfg: &RunConfig,
    model: &Path,
    data: &Path,
    out: &Path,
    (k, temperature, limit): (usize, f32, usize),
    seed: u64,
) -> Vec<String> {
    let mut cmd = vec![
        "eval".to_string(),
        "judge".into(),
        "--data".into(),
        s(data),
        "--out".into(),
        s(out),
        "--k".into(),
        k.to_string(),
        "--score".into(),
        cfg.judge.score.name().into(),
    ];
    cmd.extend(sampling_flags(
        cfg.batch_size,
        temperature,
        cfg.judge.top_p,
        cfg.judge.max_new_tokens,
        seed,
    ));
    if limit > 0 {
        cmd.extend(["--limit".into(), limit.to_string()]);
    }
    cmd.extend(model_flags(cfg, model));
    cmd
}

/// A data setting as a file: a path as it is, or shipped data (`builtin:NAME`) written into
/// `dir`, so the run's manifest hashes a file inside the run.
fn data_file(spec: &str, dir: &Path) -> Result<PathBuf> {
    match crate::builtin::text(spec)? {
        None => Ok(PathBuf::from(spec)),
        Some(text) => {
            std::fs::create_dir_all(dir)?;
            let p = dir.join(format!("{}.jsonl", &spec["builtin:".len()..]));
            if std::fs::read(&p).ok().as_deref() != Some(text.as_bytes()) {
                write_atomic(&p, text.as_bytes())?;
            }
            Ok(p)
        }
    }
}

/// The evaluation stages: every model as a judge against human ranks, every later model
/// against M1 (judged on `vs_remote`'s server, if any).
fn evaluate(
    run: &mut Run,
    cfg: &RunConfig,
    models: &Path,
    vs_remote: &Option<Vec<String>>,
) -> Result<()> {
    let e = &cfg.eval;
    let eval_dir = run.dir.join("eval");
    let all: Vec<PathBuf> = (1..=cfg.iterations + 1)
        .map(|m| models.join(format!("m{m}")))
        .collect();
    if !e.judge_data.is_empty() {
        let data = data_file(&e.judge_data, &eval_dir.join("data"))?;
        for (i, m) in all.iter().enumerate() {
            let out = eval_dir.join(format!("judge_m{}.jsonl", i + 1));
            let cmd = eval_judge_command(
                cfg,
                m,
                &data,
                &out,
                (e.judge_k, cfg.judge.temperature, e.judge_limit),
                cfg.seed + 300,
            );
            let metrics = PathBuf::from(format!("{}.metrics.json", out.display()));
            run.stage(
                &format!("eval judge m{}", i + 1),
                cmd,
                &[&data, m],
                &[&metrics],
                |c| {
                    srlm(c)?;
                    Ok(None)
                },
            )?;
        }
    }
    if !e.prompts.is_empty() {
        let prompts = data_file(&e.prompts, &eval_dir.join("data"))?;
        let judge = match e.vs_judge.as_str() {
            "base" => run.base.clone(),
            "m1" => all[0].clone(),
            path => PathBuf::from(path),
        };
        // Every later model against M1, as the paper compares its iterations.
        let m1 = &all[0];
        for (i, later) in all.iter().enumerate().skip(1) {
            let m = i + 1;
            let out = eval_dir.join(format!("vs_m{m}_m1"));
            let mut cmd = vec![
                "eval".to_string(),
                "vs".into(),
                "--a".into(),
                s(later),
                "--b".into(),
                s(m1),
                "--judge".into(),
                s(&judge),
                "--prompts".into(),
                s(&prompts),
                "--out".into(),
                s(&out),
                "--mode".into(),
                e.vs_mode.clone(),
                "--k".into(),
                e.judge_k.to_string(),
                "--score".into(),
                cfg.judge.score.name().into(),
                "--judge-temperature".into(),
                cfg.judge.temperature.to_string(),
                "--judge-max-new-tokens".into(),
                cfg.judge.max_new_tokens.to_string(),
                "--max-new-tokens".into(),
                e.max_new_tokens.to_string(),
                "--batch-size".into(),
                cfg.batch_size.to_string(),
                "--seed".into(),
                (cfg.seed + 400).to_string(),
            ];
            if e.prompts_limit > 0 {
                cmd.extend(["--limit".into(), e.prompts_limit.to_string()]);
            }
            cmd.extend(engine_flags(cfg));
            let mut inputs: Vec<&Path> = vec![&prompts, later, m1];
            match vs_remote {
                Some(flags) => cmd.extend(flags.iter().cloned()),
                None => inputs.push(&judge),
            }
            let summary = out.join("summary.json");
            run.stage(
                &format!("eval vs m{m} m1"),
                cmd,
                &inputs,
                &[&summary],
                |c| {
                    srlm(c)?;
                    Ok(crate::report::read_json(&summary).map(|v| v["a_win_rate"].clone()))
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_role_runs_on_the_backend_its_config_names() {
        let cfg: RunConfig = toml::from_str(
            "[judge]\nbackend = \"big\"\n[backends.big]\nbase_url = \"http://h:8000/v1\"\nmodel = \"llama-70b\"\nconcurrency = 32\n",
        )
        .unwrap();
        let flags = remote_flags(&cfg, "judge.backend", &cfg.judge.backend)
            .unwrap()
            .unwrap();
        let has = |k: &str, v: &str| flags.windows(2).any(|w| w[0] == k && w[1] == v);
        assert!(has("--api-base", "http://h:8000/v1"), "{flags:?}");
        assert!(has("--api-model", "llama-70b"), "{flags:?}");
        assert!(has("--api-concurrency", "32"), "{flags:?}");
        assert!(has("--api-key-env", "OPENAI_API_KEY"), "{flags:?}");
        // The flags parse as the stage's own command line.
        let mut argv = vec!["srlm", "judge", "--candidates", "c", "--out", "o"];
        argv.extend(flags.iter().map(|s| s.as_str()));
        assert!(crate::Cli::try_parse_from(argv).is_ok());
        assert_eq!(remote_flags(&cfg, "sample.backend", "local").unwrap(), None);
        let e = remote_flags(&cfg, "sample.backend", "small")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sample.backend") && e.contains("[backends.small]"),
            "{e}"
        );
        let text = toml::to_string_pretty(&cfg).unwrap();
        assert_eq!(toml::from_str::<RunConfig>(&text).unwrap(), cfg);
    }

    #[test]
    fn the_default_config_round_trips_through_toml() {
        let cfg = RunConfig::default();
        let text = toml::to_string_pretty(&cfg).unwrap();
        assert_eq!(toml::from_str::<RunConfig>(&text).unwrap(), cfg);
        let partial: RunConfig = toml::from_str("iterations = 3\n[sample]\nn = 8\n").unwrap();
        assert_eq!(
            (partial.iterations, partial.sample.n, partial.judge.k),
            (3, 8, JudgeSection::default().k)
        );
        // Keys left out take their section's defaults, not zero.
        assert_eq!(partial.eft, EftSection::default());
    }

    #[test]
    fn a_training_section_keeps_its_stages_defaults_for_keys_it_leaves_out() {
        // `[dpo]` naming only `beta` once gave DPO the SFT's rate (5e-5, ten times DPO's).
        let cfg: RunConfig = toml::from_str(
            "[dpo]
beta = 0.2
[sft]
epochs = 3
weight_decay = 0.1
",
        )
        .unwrap();
        assert_eq!(cfg.dpo.beta, 0.2);
        assert_eq!(cfg.dpo.train, TrainSettings::dpo());
        assert_eq!(
            cfg.sft,
            TrainSettings {
                epochs: 3,
                weight_decay: 0.1,
                ..TrainSettings::sft()
            }
        );
        // Every trainer option is a key, and a misspelt one is an error in either section.
        let every = toml::to_string(&TrainSettings::sft()).unwrap();
        for key in [
            "adam_beta2",
            "max_grad_norm",
            "lora_alpha",
            "lora_targets",
            "eval_every",
        ] {
            let line = match key {
                "lora_alpha" => "lora_alpha = 8.0".to_string(),
                "lora_targets" => "lora_targets = \"q_proj\"".to_string(),
                _ => every
                    .lines()
                    .find(|l| l.starts_with(key))
                    .unwrap()
                    .to_string(),
            };
            for section in ["sft", "dpo"] {
                let text = format!("[{section}]\n{line}\n");
                assert!(toml::from_str::<RunConfig>(&text).is_ok(), "{text}");
            }
        }
        for section in ["sft", "dpo"] {
            let text = format!("[{section}]\nlrr = 1.0\n");
            assert!(toml::from_str::<RunConfig>(&text).is_err(), "{text}");
        }
    }
}
