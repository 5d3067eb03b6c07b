//! `srlm run`'s configuration: one TOML file, every key optional (`srlm run --print-config`
//! prints them all with their defaults).

use crate::train_settings::{TrainFlags, TrainSettings};
use anyhow::Context;
use serde::{Deserialize, Serialize};
use srlm_core::eft::Select;
use srlm_core::judge::{Justification, ScoreMode};
use srlm_core::pairs::{PairOptions, ToleranceUnit};
use std::collections::BTreeMap;

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
    /// The seed SFT and the judge bootstrap's SFT.
    pub sft: SftSection,
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
    /// A command that starts this server, which `srlm run` then starts and stops itself for
    /// each stage that uses it: `{model}` is the stage's model (M_t), `{port}` a free port
    /// srlm picks, e.g. "vllm serve {model} --port {port}". Run as `sh -c "exec <command>"`,
    /// so it must be one command that is the server (a script that `exec`s it is fine).
    /// Empty: the server at `base_url` is already running.
    pub launch: String,
    /// How long a launched server may take to answer `/models`.
    pub startup_timeout_s: f64,
    /// After SIGTERM, how long a launched server may take to exit before SIGKILL.
    pub stop_grace_s: f64,
    /// How a launched server goes from one model to the next: "restart" (stopped, and started
    /// again on the other model) or "lora". With "lora" and LoRA DPO (`[dpo] lora_rank`),
    /// every M_t after M1 is one adapter over M1: the server started on M1 stays up, and each
    /// M_t's adapter is loaded into it through vLLM's `POST /v1/load_lora_adapter`, the stage
    /// asking for the model by that name (`m2`, `m3`, ...). The command must enable it: `vllm
    /// serve {model} --enable-lora --max-lora-rank R` with VLLM_ALLOW_RUNTIME_LORA_UPDATING=True
    /// in its environment, or `srlm serve --enable-lora`.
    pub reload: Reload,
}

/// How a launched server changes model (`[backends.NAME] reload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reload {
    #[default]
    Restart,
    Lora,
}

/// `base_url` of a launched server whose section names none.
pub const LAUNCHED_BASE_URL: &str = "http://127.0.0.1:{port}/v1";

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
            launch: String::new(),
            startup_timeout_s: 600.0,
            stop_grace_s: 10.0,
            reload: Reload::Restart,
        }
    }
}

impl BackendSection {
    /// The URL stages talk to: `base_url`, or for a launched server without one, 127.0.0.1 on
    /// the port srlm picks (`{port}` is filled when it starts).
    pub fn url(&self) -> String {
        if self.base_url.is_empty() && !self.launch.is_empty() {
            LAUNCHED_BASE_URL.to_string()
        } else {
            self.base_url.clone()
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
    /// Prompts for head-to-head (`srlm eval vs`) of every later model against M1:
    /// "builtin:vicuna-mt-bench" is Vicuna's 80 questions and MT-Bench's 80 first turns
    /// ("builtin:vicuna", "builtin:mt-bench" either alone).
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
            prompts: "builtin:vicuna-mt-bench".into(),
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
    /// "written" (reasons, then the score: the paper) or "none" (the judge's turn begins with
    /// `Score:`; only the verdict is generated). The judge bootstrap always has it written.
    pub justification: Justification,
    pub temperature: f32,
    pub top_p: f32,
    pub max_new_tokens: usize,
    /// "local" (M_t judges itself, as in the paper) or a [backends] name.
    pub backend: String,
}

/// `[pairs]`, read through [`PairsFile`]: a `length_control` written without its unit is in
/// score points, the only unit before there was a choice (configs and run directories written
/// until 2026-12-07 mean points), while a section that sets neither takes the default share of
/// the range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "PairsFile")]
pub struct PairsSection {
    pub min_margin: f64,
    /// Among candidates within this of the best score, prefer the shortest; negative is off.
    pub length_control: f64,
    /// What `length_control` is measured in: "points" of score, or "range", a share of the
    /// prompt's best-minus-worst score.
    pub length_control_unit: ToleranceUnit,
}

/// `[pairs]` as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PairsFile {
    min_margin: Option<f64>,
    length_control: Option<f64>,
    length_control_unit: Option<ToleranceUnit>,
}

impl From<PairsFile> for PairsSection {
    fn from(f: PairsFile) -> Self {
        let d = Self::default();
        let unit = match (f.length_control_unit, f.length_control) {
            (Some(unit), _) => unit,
            (None, Some(_)) => ToleranceUnit::Points,
            (None, None) => d.length_control_unit,
        };
        Self {
            min_margin: f.min_margin.unwrap_or(d.min_margin),
            length_control: f.length_control.unwrap_or(d.length_control),
            length_control_unit: unit,
        }
    }
}

impl PairsSection {
    /// The options `srlm pairs` and the report build pairs with, under the judge's score mode.
    pub fn options(&self, score_mode: ScoreMode) -> PairOptions {
        PairOptions {
            min_margin: self.min_margin.max(f64::MIN_POSITIVE),
            length_control: (self.length_control >= 0.0).then_some(self.length_control),
            length_control_unit: self.length_control_unit,
            score_mode,
        }
    }
}

/// `[dpo]`: DPO's own settings and the training settings, keys set here over
/// `TrainSettings::dpo` (read through [`DpoFile`], so that a section naming only `beta` keeps
/// DPO's training defaults rather than SFT's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "DpoFile")]
pub struct DpoSection {
    /// Who trains M_(t+1): "srlm" (its own trainer), "trl" (the shipped TRL script, by the
    /// `python3` on PATH), or a command with `{model}`, `{pairs}`, `{out}`, `{beta}`, `{lr}`,
    /// `{epochs}`, `{seed}` (pipeline/external_trainer.rs).
    pub trainer: String,
    pub beta: f64,
    /// sigmoid or ipo.
    pub loss: String,
    pub rpo_alpha: f64,
    pub label_smoothing: f64,
    #[serde(flatten)]
    pub train: TrainSettings,
}

/// `[sft]`: who trains M1 (the seed SFT and the judge bootstrap's SFT) and the training
/// settings, keys set here over `TrainSettings::sft`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "SftFile")]
pub struct SftSection {
    /// "srlm" (its own trainer), "trl" (the shipped TRL script, by the `python3` on PATH), or
    /// a command with `{model}`, `{data}`, `{out}`, `{lr}`, `{epochs}`, `{seed}`
    /// (pipeline/external_trainer.rs).
    pub trainer: String,
    #[serde(flatten)]
    pub train: TrainSettings,
}

impl Default for SftSection {
    fn default() -> Self {
        Self {
            trainer: "srlm".into(),
            train: TrainSettings::sft(),
        }
    }
}

/// `[sft]` as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SftFile {
    trainer: Option<String>,
    #[serde(flatten)]
    train: TrainFlags,
}

impl From<SftFile> for SftSection {
    fn from(f: SftFile) -> Self {
        let d = SftSection::default();
        Self {
            trainer: f.trainer.unwrap_or(d.trainer),
            train: f.train.resolve(d.train),
        }
    }
}

/// `[dpo]` as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DpoFile {
    trainer: Option<String>,
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
            trainer: f.trainer.unwrap_or(d.trainer),
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
            sft: SftSection::default(),
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
            justification: Justification::Written,
            temperature: 0.0,
            top_p: 0.9,
            max_new_tokens: 160,
            backend: "local".into(),
        }
    }
}

impl Default for PairsSection {
    fn default() -> Self {
        // README, "A recipe for models under 1B": length control (0.25 points then) took the
        // length out of M2's win; a tolerance of half of each prompt's score range keeps the
        // judge's order where its scores are close, where 0.25 points handed two pairs in three
        // to the shortest answer and M3 lost to M1 (0.481); with it the same run's M3 won
        // (0.584, 95% CI 0.508-0.661, answers as long as M1's).
        Self {
            min_margin: 0.0,
            length_control: 0.5,
            length_control_unit: ToleranceUnit::Range,
        }
    }
}

impl Default for DpoSection {
    fn default() -> Self {
        Self {
            trainer: "srlm".into(),
            beta: 0.1,
            loss: "sigmoid".into(),
            rpo_alpha: 0.0,
            label_smoothing: 0.0,
            train: TrainSettings::dpo(),
        }
    }
}

/// The config at `path`, or the defaults.
pub fn load_config(path: Option<&std::path::Path>) -> anyhow::Result<RunConfig> {
    let Some(path) = path else {
        return Ok(RunConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(srlm_core::jsonl::strip_bom(&text)).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e}\n  hint: `srlm run --print-config` shows every key with its default",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_length_control_written_without_its_unit_is_in_score_points() {
        let read = |text: &str| toml::from_str::<RunConfig>(text).unwrap().pairs;
        // Nothing set: the default, a share of the range.
        assert_eq!(read(""), PairsSection::default());
        assert_eq!(
            read("[pairs]\nmin_margin = 0.1\n").length_control_unit,
            ToleranceUnit::Range
        );
        // A tolerance from before the unit existed keeps its meaning.
        let old = read("[pairs]\nmin_margin = 0.0\nlength_control = 0.25\n");
        assert_eq!(
            (old.length_control, old.length_control_unit),
            (0.25, ToleranceUnit::Points)
        );
        let new = read("[pairs]\nlength_control = 0.3\nlength_control_unit = \"range\"\n");
        assert_eq!(
            (new.length_control, new.length_control_unit),
            (0.3, ToleranceUnit::Range)
        );
        assert!(
            toml::from_str::<RunConfig>("[pairs]\nlength_control_units = \"range\"\n").is_err()
        );
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
            cfg.sft.train,
            TrainSettings {
                epochs: 3,
                weight_decay: 0.1,
                ..TrainSettings::sft()
            }
        );
        assert_eq!(cfg.sft.trainer, "srlm");
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
