//! Every setting of a training run that is not a path or the seed, declared once.
//!
//! [`TrainSettings`] holds the values, and the one set of defaults of each stage
//! ([`TrainSettings::sft`], [`TrainSettings::dpo`]). [`TrainFlags`] is the same list with every
//! value optional: the flags of `srlm sft` and `srlm dpo`, and the `[sft]` and `[dpo]` sections
//! of `srlm run`'s TOML, each resolved over its stage's defaults (as uv resolves its flags over
//! its settings file over its defaults). [`TrainSettings::to_argv`] writes the values back as
//! flags, the command line `srlm run` records for a training stage; [`TrainSettings::config`]
//! hands them to the trainer. A round-trip test holds the three lists together.

use clap::Args;
use serde::{Deserialize, Serialize};
use srlm_train::optim::AdamWConfig;
use srlm_train::params::{LoraConfig, Method, ALL_LINEAR};
use srlm_train::trainer::{Precision, TrainConfig};

/// The settings of one SFT or DPO run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Peak learning rate.
    pub lr: f64,
    /// The floor the cosine schedule decays to.
    pub min_lr: f64,
    pub warmup_steps: u64,
    pub epochs: usize,
    /// Stop after this many optimizer steps (overrides epochs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// Examples (SFT) or pairs (DPO) per forward pass.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this; 0 is off.
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Dropout on attention probabilities.
    pub dropout: f32,
    /// Longest sequence in tokens; longer ones are cut from the right.
    pub max_len: usize,
    /// Evaluate the held-out set every N steps (and at the end); 0: only at the end.
    pub eval_every: u64,
    /// Save the resume state every N steps; 0: never mid-run.
    pub save_every: u64,
    /// Low-rank adapters of this rank instead of every weight; 0 is full fine-tuning.
    pub lora_rank: usize,
    /// LoRA's alpha (scale = alpha / rank); unset is 2 x rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    pub lora_dropout: f32,
    /// Modules that get adapters, comma-separated, or "all-linear".
    pub lora_targets: String,
    /// The matmuls' arithmetic: "auto" (bf16 with f32 accumulation, as PyTorch's autocast,
    /// where the CPU's bf16 kernel beats its f32 GEMM: AMX, or AVX512-BF16 on AMD; f32
    /// elsewhere), "f32", "bf16".
    #[serde(default)]
    pub precision: Precision,
    /// Keep only each block's input in the forward and recompute the rest in the backward:
    /// less memory for one more forward a step.
    #[serde(default)]
    pub recompute: bool,
}

impl TrainSettings {
    /// SFT (seed and EFT data) for a small model. The paper's 5.5e-6 is Llama 2 70B's rate; a
    /// 135M model learns the judge format from a few hundred examples only with a larger one.
    pub fn sft() -> Self {
        Self {
            lr: 5e-5,
            min_lr: 5e-6,
            warmup_steps: 2,
            epochs: 1,
            max_steps: None,
            micro_batch: 4,
            grad_accum: 4,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            dropout: 0.0,
            max_len: 1024,
            eval_every: 0,
            save_every: 25,
            lora_rank: 0,
            lora_alpha: None,
            lora_dropout: 0.0,
            lora_targets: "all-linear".into(),
            precision: Precision::Auto,
            recompute: false,
        }
    }

    /// DPO. README, "A recipe for models under 1B": about 64 pairs an iteration, 4 epochs at a
    /// constant 5e-6 (the paper's 1e-6, or 2e-6 for one epoch, did not move SmolLM2-135M; 2
    /// epochs moved it within noise of M1 in whole runs; 4 gave M3 0.613 over M1, 95% CI
    /// 0.537-0.688, with shorter answers, on one seed).
    pub fn dpo() -> Self {
        Self {
            lr: 5e-6,
            min_lr: 5e-6,
            warmup_steps: 0,
            epochs: 4,
            micro_batch: 2,
            ..Self::sft()
        }
    }

    /// The trainer's configuration, with the run's seed.
    pub fn config(&self, seed: u64) -> TrainConfig {
        let method = match self.lora_rank {
            0 => Method::Full,
            rank => Method::Lora(LoraConfig {
                rank,
                alpha: self.lora_alpha.unwrap_or(2.0 * rank as f64),
                dropout: self.lora_dropout,
                target_modules: match self.lora_targets.as_str() {
                    "all-linear" => ALL_LINEAR.iter().map(|s| s.to_string()).collect(),
                    list => list.split(',').map(|s| s.trim().to_string()).collect(),
                },
                init: None,
            }),
        };
        TrainConfig {
            method,
            lr: self.lr,
            // A floor above the peak would make the schedule climb.
            min_lr: self.min_lr.min(self.lr),
            warmup_steps: self.warmup_steps,
            epochs: self.epochs,
            max_steps: self.max_steps,
            micro_batch: self.micro_batch,
            grad_accum: self.grad_accum,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
            adamw: AdamWConfig {
                beta1: self.adam_beta1,
                beta2: self.adam_beta2,
                eps: self.adam_eps,
                weight_decay: self.weight_decay,
            },
            seed,
            max_len: self.max_len,
            attention_dropout: self.dropout,
            eval_every: self.eval_every,
            save_every: self.save_every,
            precision: self.precision,
            recompute: self.recompute,
        }
    }
}

/// [`TrainSettings`] with every value optional: what a command line or a TOML section sets.
/// Unset values take the stage's defaults (`srlm sft --help` and `srlm run --print-config`
/// show them).
#[derive(Args, Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFlags {
    /// Peak learning rate [SFT: 5e-5, DPO: 5e-6; the paper's 70B: 5.5e-6 and 1e-6].
    #[arg(long)]
    pub lr: Option<f64>,
    /// The floor the cosine schedule decays to [SFT: 5e-6, DPO: 5e-6].
    #[arg(long)]
    pub min_lr: Option<f64>,
    /// [SFT: 2, DPO: 0]
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// [SFT: 1, DPO: 4]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many optimizer steps (overrides epochs).
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Examples (SFT) or pairs (DPO) per forward pass [SFT: 4, DPO: 2].
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Micro-batches per optimizer step (batch = micro-batch x accumulation; the paper: 16) [4].
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Clip the global gradient norm to this; 0 is off [1].
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// [0]
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// [0.9]
    #[arg(long)]
    pub adam_beta1: Option<f64>,
    /// [0.999]
    #[arg(long)]
    pub adam_beta2: Option<f64>,
    /// [1e-8]
    #[arg(long)]
    pub adam_eps: Option<f64>,
    /// Dropout on attention probabilities (the paper: 0.1) [0].
    #[arg(long)]
    pub dropout: Option<f32>,
    /// Longest sequence in tokens; longer ones are cut from the right [1024].
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Evaluate the held-out set every N steps (and at the end); 0: only at the end [0].
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Save the resume state every N steps; 0: never mid-run [25].
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Train low-rank adapters of this rank instead of every weight; 0 is full fine-tuning [0].
    #[arg(long)]
    pub lora_rank: Option<usize>,
    /// LoRA's alpha (scale = alpha / rank) [2 x rank].
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    /// [0]
    #[arg(long)]
    pub lora_dropout: Option<f32>,
    /// Modules that get adapters, comma-separated, or all-linear [all-linear].
    #[arg(long)]
    pub lora_targets: Option<String>,
    /// The matmuls' arithmetic: auto (bf16 where its kernel beats f32 here: AMX, or AVX512-BF16 on AMD), f32 or bf16 [auto].
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Recompute each block's activations in the backward instead of keeping them: training's
    /// activation memory becomes one block's, for one more forward a step (needs dropout 0) [false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub recompute: Option<bool>,
}

impl TrainFlags {
    /// `defaults` with every value set here put in.
    pub fn resolve(&self, defaults: TrainSettings) -> TrainSettings {
        let d = defaults;
        TrainSettings {
            lr: self.lr.unwrap_or(d.lr),
            min_lr: self.min_lr.unwrap_or(d.min_lr),
            warmup_steps: self.warmup_steps.unwrap_or(d.warmup_steps),
            epochs: self.epochs.unwrap_or(d.epochs),
            max_steps: self.max_steps.or(d.max_steps),
            micro_batch: self.micro_batch.unwrap_or(d.micro_batch),
            grad_accum: self.grad_accum.unwrap_or(d.grad_accum),
            max_grad_norm: self.max_grad_norm.unwrap_or(d.max_grad_norm),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            adam_beta1: self.adam_beta1.unwrap_or(d.adam_beta1),
            adam_beta2: self.adam_beta2.unwrap_or(d.adam_beta2),
            adam_eps: self.adam_eps.unwrap_or(d.adam_eps),
            dropout: self.dropout.unwrap_or(d.dropout),
            max_len: self.max_len.unwrap_or(d.max_len),
            eval_every: self.eval_every.unwrap_or(d.eval_every),
            save_every: self.save_every.unwrap_or(d.save_every),
            lora_rank: self.lora_rank.unwrap_or(d.lora_rank),
            lora_alpha: self.lora_alpha.or(d.lora_alpha),
            lora_dropout: self.lora_dropout.unwrap_or(d.lora_dropout),
            lora_targets: self.lora_targets.clone().unwrap_or(d.lora_targets),
            precision: self.precision.unwrap_or(d.precision),
            recompute: self.recompute.unwrap_or(d.recompute),
        }
    }
}

impl From<TrainSettings> for TrainFlags {
    /// Every value set: flags that resolve to `s` over any defaults.
    fn from(s: TrainSettings) -> Self {
        Self {
            lr: Some(s.lr),
            min_lr: Some(s.min_lr),
            warmup_steps: Some(s.warmup_steps),
            epochs: Some(s.epochs),
            max_steps: s.max_steps,
            micro_batch: Some(s.micro_batch),
            grad_accum: Some(s.grad_accum),
            max_grad_norm: Some(s.max_grad_norm),
            weight_decay: Some(s.weight_decay),
            adam_beta1: Some(s.adam_beta1),
            adam_beta2: Some(s.adam_beta2),
            adam_eps: Some(s.adam_eps),
            dropout: Some(s.dropout),
            max_len: Some(s.max_len),
            eval_every: Some(s.eval_every),
            save_every: Some(s.save_every),
            lora_rank: Some(s.lora_rank),
            lora_alpha: s.lora_alpha,
            lora_dropout: Some(s.lora_dropout),
            lora_targets: Some(s.lora_targets),
            precision: Some(s.precision),
            // A command line holds a true bool as its bare flag and a false one as nothing, so
            // off is unset here; both stages' default is off.
            recompute: s.recompute.then_some(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: TrainFlags,
    }

    /// The defaults the help states for both stages are the defaults (they are written in the
    /// flags' doc comments, so a changed default must change its line too).
    #[test]
    fn help_states_each_stages_defaults() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        let (sft, dpo) = (TrainSettings::sft(), TrainSettings::dpo());
        let stated = [
            ("lr", format!("[SFT: {:e}, DPO: {:e}", sft.lr, dpo.lr)),
            (
                "min-lr",
                format!("[SFT: {:e}, DPO: {:e}]", sft.min_lr, dpo.min_lr),
            ),
            (
                "warmup-steps",
                format!("[SFT: {}, DPO: {}]", sft.warmup_steps, dpo.warmup_steps),
            ),
            (
                "epochs",
                format!("[SFT: {}, DPO: {}]", sft.epochs, dpo.epochs),
            ),
            (
                "micro-batch",
                format!("[SFT: {}, DPO: {}]", sft.micro_batch, dpo.micro_batch),
            ),
        ];
        let lines: Vec<&str> = help.lines().collect();
        for (flag, text) in stated {
            let at = lines
                .iter()
                .position(|l| l.trim_start().starts_with(&format!("--{flag} <")))
                .unwrap_or_else(|| panic!("no --{flag} in\n{help}"));
            // The flag's line and its description, up to the next flag.
            let entry: Vec<&str> = std::iter::once(lines[at])
                .chain(
                    lines[at + 1..]
                        .iter()
                        .copied()
                        .take_while(|l| !l.trim_start().starts_with('-')),
                )
                .collect();
            let entry = entry.join(" ");
            assert!(
                entry.contains(&text),
                "--{flag} should state {text}:\n{entry}"
            );
        }
    }

    /// Settings in which every value differs from both stages' defaults.
    fn changed() -> TrainSettings {
        TrainSettings {
            lr: 1.5e-5,
            min_lr: 2.5e-7,
            warmup_steps: 7,
            epochs: 3,
            max_steps: Some(11),
            micro_batch: 5,
            grad_accum: 6,
            max_grad_norm: 0.5,
            weight_decay: 0.01,
            adam_beta1: 0.8,
            adam_beta2: 0.95,
            adam_eps: 1e-6,
            dropout: 0.1,
            max_len: 333,
            eval_every: 9,
            save_every: 13,
            lora_rank: 8,
            lora_alpha: Some(4.0),
            lora_dropout: 0.05,
            lora_targets: "q_proj,v_proj".into(),
            precision: Precision::F32,
            recompute: true,
        }
    }

    #[test]
    fn every_setting_survives_flags_and_toml() {
        let s = changed();
        // Every field of `changed` differs from both defaults, so a field that `from`,
        // `resolve`, the flags or the TOML section forgot would come back as a default.
        for d in [TrainSettings::sft(), TrainSettings::dpo()] {
            let (a, b) = (
                serde_json::to_value(&s).unwrap(),
                serde_json::to_value(&d).unwrap(),
            );
            for (k, v) in a.as_object().unwrap() {
                assert_ne!(Some(v), b.get(k), "`{k}` of the test equals a default");
            }
            let flags = TrainFlags::from(s.clone());
            let argv = crate::pipeline::argv::to_argv(&["x"], &flags);
            let parsed = Cli::try_parse_from(argv).unwrap().flags.resolve(d.clone());
            assert_eq!(parsed, s);
            let toml_text = toml::to_string(&s).unwrap();
            let from_toml: TrainFlags = toml::from_str(&toml_text).unwrap();
            assert_eq!(from_toml.resolve(d), s);
        }
    }

    #[test]
    fn unset_values_take_the_stages_defaults() {
        let none = Cli::try_parse_from(["x"]).unwrap().flags;
        assert_eq!(none.resolve(TrainSettings::sft()), TrainSettings::sft());
        assert_eq!(none.resolve(TrainSettings::dpo()), TrainSettings::dpo());
        let one = Cli::try_parse_from(["x", "--epochs", "4"]).unwrap().flags;
        let dpo = one.resolve(TrainSettings::dpo());
        assert_eq!((dpo.epochs, dpo.lr), (4, TrainSettings::dpo().lr));
        assert!(toml::from_str::<TrainFlags>("lrr = 1.0").is_err());
    }

    #[test]
    fn the_trainer_gets_every_setting() {
        let s = changed();
        let c = s.config(7);
        assert_eq!((c.lr, c.min_lr, c.seed), (s.lr, s.min_lr, 7));
        assert_eq!((c.warmup_steps, c.epochs, c.max_steps), (7, 3, Some(11)));
        assert_eq!(
            (c.micro_batch, c.grad_accum, c.max_grad_norm),
            (5, 6, Some(0.5))
        );
        assert_eq!(
            (
                c.adamw.beta1,
                c.adamw.beta2,
                c.adamw.eps,
                c.adamw.weight_decay
            ),
            (0.8, 0.95, 1e-6, 0.01)
        );
        assert_eq!((c.max_len, c.attention_dropout), (333, 0.1));
        assert_eq!((c.eval_every, c.save_every), (9, 13));
        assert!(c.recompute);
        match c.method {
            Method::Lora(l) => {
                assert_eq!((l.rank, l.alpha, l.dropout), (8, 4.0, 0.05));
                assert_eq!(l.target_modules, ["q_proj", "v_proj"]);
            }
            Method::Full => panic!("LoRA asked for"),
        }
        let off = TrainSettings {
            max_grad_norm: 0.0,
            min_lr: 1.0,
            ..TrainSettings::sft()
        };
        assert_eq!(off.config(0).max_grad_norm, None);
        assert_eq!(
            off.config(0).min_lr,
            off.lr,
            "the floor is capped at the peak"
        );
    }
}
