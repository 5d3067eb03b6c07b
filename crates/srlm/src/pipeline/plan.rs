//! The stages of a run, planned from its config before anything runs: every stage's typed
//! call, the files it reads (hashed into the manifest) and writes, and what the run checks or
//! records once it is done. The plan is a list, so its length is the run's stage count.

use super::config::{Reload, RunConfig};
use super::external_trainer::{ExternalLora, ExternalTrainer, Kind, Objective};
use super::layout::Layout;
use super::servers::{Launch, ServedAdapter};
use super::stage_call::StageCall;
use crate::backend::{BackendArgs, RemoteArgs};
use crate::commands::eft::EftArgs;
use crate::commands::eval::EvalJudgeArgs;
use crate::commands::eval_vs::{EvalVsArgs, VsMode};
use crate::commands::prompts::PromptsArgs;
use crate::commands::stages::{JudgeArgs, PairsArgs, SampleArgs};
use crate::commands::train::{DpoArgs, SftArgs, TrainArgs};
use crate::model_args::{ModelArgs, SamplingArgs};
use crate::train_settings::{TrainFlags, TrainSettings};
use anyhow::{bail, Result};
use clap::ValueEnum;
use serde_json::json;
use srlm_core::jsonl::{read_jsonl, write_atomic};
use srlm_core::judge::Justification;
use srlm_core::summaries::{read_summary, JudgeEvalSummary, VsSummary};
use std::path::{Path, PathBuf};

/// Each stage's own random stream: the run's seed plus an offset per role (and, where a role
/// runs every iteration, the iteration), so that one role's draws never move another's.
mod seed_offset {
    pub const PROMPTS: u64 = 0;
    pub const SAMPLE: u64 = 100;
    pub const JUDGE: u64 = 200;
    pub const EVAL_JUDGE: u64 = 300;
    pub const EVAL_VS: u64 = 400;
    pub const EFT_JUDGE: u64 = 500;
}

/// One stage of the run.
#[derive(Debug)]
pub struct Planned {
    pub name: String,
    pub work: Work,
    /// Read by the stage: hashed into the manifest, so a changed input is caught on resume.
    pub inputs: Vec<PathBuf>,
    /// Written by it: a finished stage whose outputs are gone is refused, not redone.
    pub outputs: Vec<PathBuf>,
}

#[derive(Debug)]
pub enum Work {
    /// Resolve and merge these seed files into `RUN/seed/`.
    Seed(super::config::SeedSection),
    /// DPO by a trainer outside srlm.
    External(ExternalTrainer),
    /// One of srlm's commands, on the server `server` starts when it names one, then `then`.
    Call {
        call: StageCall,
        then: Then,
        server: Option<Launch>,
    },
}

/// What the run does after a stage's command: a check that stops the run where going on
/// would be pointless, and the stats the manifest records.
#[derive(Debug)]
pub enum Then {
    Nothing,
    /// `srlm prompts` kept at least one of `asked` prompts.
    PromptsKept {
        prompts: PathBuf,
        asked: usize,
    },
    /// The judgements' count and parse failures, recorded.
    JudgementStats {
        judgements: PathBuf,
    },
    /// At least one pair (else DPO has nothing to learn).
    PairsMade {
        pairs: PathBuf,
        judgements: PathBuf,
        iteration: usize,
    },
    /// The judge's pairwise accuracy from `srlm eval judge`'s metrics, recorded.
    JudgeAccuracy {
        metrics: PathBuf,
    },
    /// `srlm eft` kept at least one example (written as SFT records to `sft`).
    EftKept {
        sft: PathBuf,
        judgements: PathBuf,
    },
    /// Model A's win rate from `srlm eval vs`'s summary, recorded.
    WinRate {
        summary: PathBuf,
    },
}

impl Then {
    /// The check and the stats of a finished command.
    pub(crate) fn run(self) -> Result<Option<serde_json::Value>> {
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
                let failed = all
                    .iter()
                    .filter(|j| j.record.judgement.score.is_none())
                    .count();
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
            Then::EftKept { sft, judgements } => {
                let records = read_jsonl::<serde_json::Value>(&sft, "")?.len();
                if records == 0 {
                    bail!("no judgement of {} follows the human ranking, so there is nothing to train the judge on\n  hint: more samples per reply ([eft] k), or [eft] data = \"\" to skip the bootstrap", judgements.display());
                }
                Ok(Some(json!({"examples": records})))
            }
            Then::WinRate { summary } => Ok(read_summary::<VsSummary>(&summary)
                .map(|v| serde_json::to_value(v.a_win_rate))
                .transpose()?),
        }
    }
}

/// The roles' servers, resolved from `[backends]` before anything runs.
struct Remotes {
    prompts: Option<RemoteArgs>,
    sample: Option<RemoteArgs>,
    judge: Option<RemoteArgs>,
    vs: Option<RemoteArgs>,
}

/// Every stage of the run of `cfg` in `layout`, M0 being `base`. Shipped data the config names
/// (`builtin:...`) is written into the run directory here, so the manifest hashes a file in
/// the run.
pub fn plan(cfg: &RunConfig, layout: &Layout, base: &Path) -> Result<Vec<Planned>> {
    let remotes = Remotes {
        prompts: remote_args(cfg, "prompts.backend", &cfg.prompts.backend)?,
        sample: remote_args(cfg, "sample.backend", &cfg.sample.backend)?,
        judge: remote_args(cfg, "judge.backend", &cfg.judge.backend)?,
        vs: remote_args(cfg, "eval.vs_backend", &cfg.eval.vs_backend)?,
    };
    let mut plan = Vec::new();

    // Seed: IFT and EFT examples, and the SFT file that trains M1 on both.
    let seed = layout.seed();
    plan.push(Planned {
        name: "seed".into(),
        work: Work::Seed(cfg.seed_data.clone()),
        inputs: Vec::new(),
        outputs: vec![seed.ift.clone(), seed.eft.clone(), seed.sft.clone()],
    });

    // M0 -> M1 by SFT on IFT + EFT; with the bootstrap, that model is m1-seed, and M1 is it
    // trained further on its own judgements that follow human rankings.
    let bootstrap = !cfg.eft.data.is_empty();
    let m1 = layout.model(1);
    let seed_model = if bootstrap {
        layout.seed_model()
    } else {
        m1.clone()
    };
    plan.push(sft_stage(
        cfg,
        layout,
        if bootstrap { "m1-seed" } else { "m1" },
        &seed.sft,
        &cfg.sft.train,
        (base, &seed_model),
    ));
    if bootstrap {
        plan_bootstrap(&mut plan, cfg, layout, &seed_model, &m1)?;
    }

    let mut current = m1;
    let mut earlier_prompts: Vec<PathBuf> = Vec::new();
    for t in 1..=cfg.iterations {
        let it = layout.iteration(t);
        let next = layout.model(t + 1);

        let generator = match cfg.prompts.generator.as_str() {
            "base" => base.to_path_buf(),
            "current" => current.clone(),
            path => PathBuf::from(path),
        };
        let p = &cfg.prompts;
        let mut inputs = vec![seed.ift.clone()];
        let (backend, server) =
            role_backend(cfg, &p.backend, &remotes.prompts, &generator, &mut inputs)?;
        inputs.extend(earlier_prompts.iter().cloned());
        plan.push(Planned {
            name: format!("prompts {t}"),
            work: call_on(
                server,
                StageCall::Prompts(PromptsArgs {
                    seed: vec![seed.ift.clone()],
                    existing: earlier_prompts.clone(),
                    out: it.prompts.clone(),
                    count: p.count,
                    max_attempts_factor: p.max_attempts_factor,
                    from_seed: p.from_seed,
                    from_generated: p.from_generated,
                    max_rouge_l: p.max_rouge_l,
                    min_words: p.min_words,
                    max_words: p.max_words,
                    blocklist: (!p.blocklist.is_empty()).then(|| p.blocklist.join(",")),
                    id_prefix: format!("it{t}-"),
                    temperature: p.temperature,
                    top_p: p.top_p,
                    max_new_tokens: p.max_new_tokens,
                    rng_seed: cfg.seed + seed_offset::PROMPTS + t as u64,
                    backend,
                }),
                Then::PromptsKept {
                    prompts: it.prompts.clone(),
                    asked: p.count,
                },
            ),
            inputs,
            outputs: vec![it.prompts.clone()],
        });
        earlier_prompts.push(it.prompts.clone());

        let g = &cfg.sample;
        let mut inputs = vec![it.prompts.clone()];
        let (backend, server) =
            role_backend(cfg, &g.backend, &remotes.sample, &current, &mut inputs)?;
        plan.push(Planned {
            name: format!("sample {t}"),
            work: call_on(
                server,
                StageCall::Sample(SampleArgs {
                    prompts: it.prompts.clone(),
                    out: it.candidates.clone(),
                    n: g.n,
                    backend,
                    sampling: sampling(
                        g.temperature,
                        g.top_p,
                        g.max_new_tokens,
                        cfg.seed + seed_offset::SAMPLE + t as u64,
                    ),
                }),
                Then::Nothing,
            ),
            inputs,
            outputs: vec![it.candidates.clone()],
        });

        let j = &cfg.judge;
        let mut inputs = vec![it.candidates.clone()];
        let (backend, server) =
            role_backend(cfg, &j.backend, &remotes.judge, &current, &mut inputs)?;
        plan.push(Planned {
            name: format!("judge {t}"),
            work: call_on(
                server,
                StageCall::Judge(JudgeArgs {
                    candidates: it.candidates.clone(),
                    out: it.judgements.clone(),
                    k: j.k,
                    justification: j.justification,
                    backend,
                    sampling: sampling(
                        j.temperature,
                        j.top_p,
                        j.max_new_tokens,
                        cfg.seed + seed_offset::JUDGE + t as u64,
                    ),
                }),
                Then::JudgementStats {
                    judgements: it.judgements.clone(),
                },
            ),
            inputs,
            outputs: vec![it.judgements.clone()],
        });

        // One reading of `[pairs]` (negative length control is off) for the stage and the report.
        let pair_options = cfg.pairs.options(cfg.judge.score);
        plan.push(Planned {
            name: format!("pairs {t}"),
            work: call(
                StageCall::Pairs(PairsArgs {
                    candidates: it.candidates.clone(),
                    judgements: it.judgements.clone(),
                    out: it.pairs.clone(),
                    min_margin: cfg.pairs.min_margin,
                    length_control: pair_options.length_control,
                    length_control_unit: pair_options.length_control_unit,
                    score: cfg.judge.score,
                    diagnostics: Some(it.diagnostics.clone()),
                }),
                Then::PairsMade {
                    pairs: it.pairs.clone(),
                    judgements: it.judgements.clone(),
                    iteration: t,
                },
            ),
            inputs: vec![it.candidates.clone(), it.judgements.clone()],
            outputs: vec![it.pairs.clone(), it.diagnostics.clone()],
        });

        let d = &cfg.dpo;
        if let Some(template) = super::external_trainer::trainer_command(&d.trainer, Kind::Dpo) {
            let (from, adapter) = lora_from(cfg, &current);
            plan.push(Planned {
                name: format!("dpo m{}", t + 1),
                work: Work::External(ExternalTrainer {
                    template: template.to_string(),
                    objective: Objective::Dpo {
                        pairs: it.pairs.clone(),
                        trl_pairs: it.pairs.with_file_name("pairs.trl.jsonl"),
                        beta: d.beta,
                    },
                    model: from,
                    out: next.clone(),
                    lr: d.train.lr,
                    epochs: d.train.epochs,
                    max_len: d.train.max_len,
                    seed: cfg.seed,
                    lora: external_lora(&d.train, adapter),
                    run_dir: layout.dir.clone(),
                    log: layout.trainer_log(&format!("dpo-m{}", t + 1)),
                }),
                inputs: dpo_inputs(cfg, &it.pairs, &current),
                outputs: vec![next.join("config.json")],
            });
            current = next;
            continue;
        }
        plan.push(Planned {
            name: format!("dpo m{}", t + 1),
            work: call(
                StageCall::Dpo(DpoArgs {
                    pairs: it.pairs.clone(),
                    beta: d.beta,
                    loss: d
                        .loss
                        .parse()
                        .map_err(|e: String| anyhow::anyhow!("config key `dpo.loss`: {e}"))?,
                    label_smoothing: d.label_smoothing,
                    rpo_alpha: d.rpo_alpha,
                    train: dpo_train_args(cfg, &current, &next),
                }),
                Then::Nothing,
            ),
            inputs: dpo_inputs(cfg, &it.pairs, &current),
            outputs: vec![next.join("config.json")],
        });
        current = next;
    }
    plan_evaluation(&mut plan, cfg, layout, base, &remotes.vs)?;
    Ok(plan)
}

/// DPO from `current` into `next`: with LoRA, M_(t+1) continues M_t's adapter over M1, so
/// every model after M1 is one adapter over M1 (and M1's own DPO starts a new one over it).
fn dpo_train_args(cfg: &RunConfig, current: &Path, next: &Path) -> TrainArgs {
    let (model, adapter) = lora_from(cfg, current);
    TrainArgs {
        adapter,
        ..train_args(cfg, &cfg.dpo.train, &model, next)
    }
}

/// What DPO from `current` trains: `current`, or with LoRA after M1, M_t's adapter over M1.
fn lora_from(cfg: &RunConfig, current: &Path) -> (PathBuf, Option<PathBuf>) {
    match adapter_over_m1(cfg, current) {
        Some((m1, adapter)) => (m1, Some(adapter.dir)),
        None => (current.to_path_buf(), None),
    }
}

/// DPO's inputs: the pairs and M_t, and M1 when M_t is trained as its adapter over M1.
fn dpo_inputs(cfg: &RunConfig, pairs: &Path, current: &Path) -> Vec<PathBuf> {
    let mut inputs = vec![pairs.to_path_buf(), current.to_path_buf()];
    if let Some((m1, _)) = adapter_over_m1(cfg, current) {
        inputs.push(m1);
    }
    inputs
}

/// An external trainer's LoRA (`{lora}`), continuing `adapter` if given.
fn external_lora(train: &TrainSettings, adapter: Option<PathBuf>) -> Option<ExternalLora> {
    (train.lora_rank > 0).then(|| ExternalLora {
        rank: train.lora_rank,
        alpha: train.lora_alpha.unwrap_or(2.0 * train.lora_rank as f64),
        adapter,
    })
}

fn call(call: StageCall, then: Then) -> Work {
    call_on(None, call, then)
}

/// A stage's call, on the server it names (if any).
fn on_server((call, server): (StageCall, Option<Launch>), then: Then) -> Work {
    call_on(server, call, then)
}

/// A stage's call on the server `server` starts (None: its backend needs no start).
fn call_on(server: Option<Launch>, call: StageCall, then: Then) -> Work {
    Work::Call { call, then, server }
}

/// The judge bootstrap: `seed_model` judges the ranked replies of `[eft] data` (`srlm eval
/// judge`), `srlm eft` keeps the judgements that follow the human order, and SFT on them
/// from `seed_model` gives `m1`.
fn plan_bootstrap(
    plan: &mut Vec<Planned>,
    cfg: &RunConfig,
    layout: &Layout,
    seed_model: &Path,
    m1: &Path,
) -> Result<()> {
    let e = &cfg.eft;
    let b = layout.bootstrap();
    let data = data_file(&e.data, &b.data_dir)?;
    let metrics = metrics_path(&b.judgements);
    plan.push(Planned {
        name: "eft judge".into(),
        work: on_server(
            eval_judge_call(
                cfg,
                seed_model,
                &data,
                &b.judgements,
                // EFT trains on what the judge wrote: its justifications, whatever the loop's.
                (e.k, e.temperature, e.limit, Justification::Written),
                cfg.seed + seed_offset::EFT_JUDGE,
            )?,
            Then::JudgeAccuracy {
                metrics: metrics.clone(),
            },
        ),
        inputs: vec![data.clone(), seed_model.to_path_buf()],
        outputs: vec![metrics],
    });
    plan.push(Planned {
        name: "eft".into(),
        work: call(
            StageCall::Eft(EftArgs {
                data: Some(data.clone()),
                candidates: None,
                judgements: b.judgements.clone(),
                out: b.eft.clone(),
                allow_ties: false,
                no_balance: false,
                select: e.select,
                seed: cfg.seed,
                keep_synthetic: false,
                sft_out: Some(b.sft.clone()),
                tokenizer: Some(seed_model.to_path_buf()),
                max_len: Some(cfg.sft.train.max_len),
            }),
            Then::EftKept {
                sft: b.sft.clone(),
                judgements: b.judgements.clone(),
            },
        ),
        inputs: vec![data, b.judgements.clone()],
        outputs: vec![b.eft.clone(), b.sft.clone()],
    });
    let train = TrainSettings {
        epochs: e.epochs,
        ..cfg.sft.train.clone()
    };
    plan.push(sft_stage(
        cfg,
        layout,
        "m1",
        &b.sft,
        &train,
        (seed_model, m1),
    ));
    Ok(())
}

/// The SFT of `model` (a name under models/) on `data` with `train`, `from` one folder `to`
/// another: by srlm's trainer, or by `[sft] trainer`'s command.
fn sft_stage(
    cfg: &RunConfig,
    layout: &Layout,
    model: &str,
    data: &Path,
    train: &TrainSettings,
    (from, to): (&Path, &Path),
) -> Planned {
    let work = match super::external_trainer::trainer_command(&cfg.sft.trainer, Kind::Sft) {
        Some(template) => Work::External(ExternalTrainer {
            template: template.to_string(),
            objective: Objective::Sft {
                data: data.to_path_buf(),
                trl_data: data.with_extension("trl.jsonl"),
            },
            model: from.to_path_buf(),
            out: to.to_path_buf(),
            lr: train.lr,
            epochs: train.epochs,
            max_len: train.max_len,
            seed: cfg.seed,
            lora: external_lora(train, None),
            run_dir: layout.dir.clone(),
            log: layout.trainer_log(&format!("sft-{model}")),
        }),
        None => call(
            StageCall::Sft(SftArgs {
                data: data.to_path_buf(),
                train: train_args(cfg, train, from, to),
            }),
            Then::Nothing,
        ),
    };
    Planned {
        name: format!("sft {model}"),
        work,
        inputs: vec![data.to_path_buf(), from.to_path_buf()],
        outputs: vec![to.join("config.json")],
    }
}

/// The evaluation stages: every model as a judge against human ranks, every later model
/// against M1 (judged on `vs_remote`'s server, if any).
fn plan_evaluation(
    plan: &mut Vec<Planned>,
    cfg: &RunConfig,
    layout: &Layout,
    base: &Path,
    vs_remote: &Option<RemoteArgs>,
) -> Result<()> {
    let e = &cfg.eval;
    let eval = layout.evaluation();
    let all: Vec<PathBuf> = (1..=cfg.iterations + 1).map(|m| layout.model(m)).collect();
    if !e.judge_data.is_empty() {
        let data = data_file(&e.judge_data, &eval.data_dir)?;
        for (i, m) in all.iter().enumerate() {
            let out = eval.judge(i + 1);
            let metrics = metrics_path(&out);
            plan.push(Planned {
                name: format!("eval judge m{}", i + 1),
                work: on_server(
                    eval_judge_call(
                        cfg,
                        m,
                        &data,
                        &out,
                        (
                            e.judge_k,
                            cfg.judge.temperature,
                            e.judge_limit,
                            cfg.judge.justification,
                        ),
                        cfg.seed + seed_offset::EVAL_JUDGE,
                    )?,
                    Then::Nothing,
                ),
                inputs: vec![data.clone(), m.clone()],
                outputs: vec![metrics],
            });
        }
    }
    if !e.prompts.is_empty() {
        let prompts = data_file(&e.prompts, &eval.data_dir)?;
        let judge = match e.vs_judge.as_str() {
            "base" => base.to_path_buf(),
            "m1" => all[0].clone(),
            path => PathBuf::from(path),
        };
        let mode = VsMode::from_str(&e.vs_mode, false)
            .map_err(|err| anyhow::anyhow!("config key `eval.vs_mode`: {err}"))?;
        // Every later model against M1, as the paper compares its iterations.
        let m1 = &all[0];
        for (i, later) in all.iter().enumerate().skip(1) {
            let m = i + 1;
            let out = eval.vs(m);
            let mut inputs = vec![prompts.clone(), later.clone(), m1.clone()];
            let server = launch(cfg, &e.vs_backend, &judge);
            if vs_remote.is_none() || server.is_some() {
                inputs.push(judge.clone());
            }
            // M1's side is the same in every head-to-head: made by the first, taken by the rest.
            let b_from = (m > 2).then(|| eval.vs(2));
            if let Some(first) = &b_from {
                inputs.push(first.join("summary.json"));
            }
            let summary = out.join("summary.json");
            plan.push(Planned {
                name: format!("eval vs m{m} m1"),
                work: call_on(
                    server,
                    StageCall::EvalVs(EvalVsArgs {
                        a: later.clone(),
                        b: m1.clone(),
                        judge: Some(judge.clone()),
                        prompts: prompts.clone(),
                        out,
                        mode,
                        k: e.judge_k,
                        score: cfg.judge.score,
                        justification: cfg.judge.justification,
                        limit: (e.prompts_limit > 0).then_some(e.prompts_limit),
                        b_from,
                        judge_temperature: cfg.judge.temperature,
                        judge_max_new_tokens: cfg.judge.max_new_tokens,
                        backend: BackendArgs {
                            batch_size: cfg.batch_size,
                            model: model_args(cfg, None)?,
                            remote: vs_remote.clone().unwrap_or_default(),
                        },
                        sampling: sampling(
                            SamplingArgs::TEMPERATURE,
                            SamplingArgs::TOP_P,
                            e.max_new_tokens,
                            cfg.seed + seed_offset::EVAL_VS,
                        ),
                    }),
                    Then::WinRate {
                        summary: summary.clone(),
                    },
                ),
                inputs,
                outputs: vec![summary],
            });
        }
    }
    Ok(())
}

/// Where `srlm eval judge` writes the metrics of `out`.
fn metrics_path(out: &Path) -> PathBuf {
    PathBuf::from(format!("{}.metrics.json", out.display()))
}

/// How the run holds a local model: `model` (None: a role on a server) with the run's
/// weights, context and threads.
fn model_args(cfg: &RunConfig, model: Option<&Path>) -> Result<ModelArgs> {
    Ok(ModelArgs {
        model: model.map(Path::to_path_buf),
        weights: cfg
            .model
            .weights
            .parse()
            .map_err(|e: String| anyhow::anyhow!("config key `model.weights`: {e}"))?,
        context_length: cfg.model.context_length,
        threads: (cfg.model.threads > 0).then_some(cfg.model.threads),
    })
}

/// The server a role's `backend` key names: None for "local".
pub(crate) fn remote_args(cfg: &RunConfig, key: &str, name: &str) -> Result<Option<RemoteArgs>> {
    if name == "local" {
        return Ok(None);
    }
    let Some(b) = cfg.backends.get(name) else {
        bail!(
            "config key `{key} = \"{name}\"` names no [backends.{name}] section\n  hint: \"local\" or one of: {:?}",
            cfg.backends.keys().collect::<Vec<_>>()
        );
    };
    if b.url().is_empty() {
        bail!("[backends.{name}] has no base_url\n  hint: e.g. base_url = \"http://localhost:8000/v1\", or a `launch` command");
    }
    Ok(Some(RemoteArgs {
        // A launched server's `{port}` is filled when it starts.
        api_base: Some(b.url()),
        api_model: (!b.model.is_empty()).then(|| b.model.clone()),
        api_key_env: b.api_key_env.clone(),
        api_concurrency: b.concurrency,
        api_timeout_s: b.timeout_s,
        api_max_retries: b.max_retries,
        api_no_n: !b.n_per_request,
    }))
}

/// How a generating stage samples.
fn sampling(temperature: f32, top_p: f32, max_new_tokens: usize, seed: u64) -> SamplingArgs {
    SamplingArgs {
        temperature,
        top_p,
        top_k: 0,
        repetition_penalty: 1.0,
        max_new_tokens,
        stop: Vec::new(),
        seed,
    }
}

/// Who plays a role: the server of `remote` (its model is no file for the manifest to hash),
/// or the local `model`, which then is one of the stage's inputs; or a server srlm launches
/// for `model` (the backend `name` has a `launch` command), which serves that file, so it is an
/// input too.
fn role_backend(
    cfg: &RunConfig,
    name: &str,
    remote: &Option<RemoteArgs>,
    model: &Path,
    inputs: &mut Vec<PathBuf>,
) -> Result<(BackendArgs, Option<Launch>)> {
    let local = remote.is_none().then_some(model);
    let server = launch(cfg, name, model);
    if local.is_some() || server.is_some() {
        inputs.push(model.to_path_buf());
    }
    let args = BackendArgs {
        batch_size: cfg.batch_size,
        model: model_args(cfg, local)?,
        remote: remote.clone().unwrap_or_default(),
    };
    Ok((args, server))
}

/// The server srlm starts for `model` when the backend `name` has a `launch` command: on
/// `model`, or, with `reload = "lora"`, on the base `model`'s adapter is over, the adapter
/// loaded into it.
fn launch(cfg: &RunConfig, name: &str, model: &Path) -> Option<Launch> {
    let b = cfg.backends.get(name).filter(|b| !b.launch.is_empty())?;
    let over_m1 = match b.reload {
        Reload::Lora => adapter_over_m1(cfg, model),
        Reload::Restart => None,
    };
    let (model, adapter) = match over_m1 {
        Some((m1, adapter)) => (m1, Some(adapter)),
        None => (model.to_path_buf(), None),
    };
    Some(Launch {
        backend: name.to_string(),
        command: b.launch.clone(),
        base_url: b.url(),
        api_key_env: b.api_key_env.clone(),
        model,
        adapter,
        keep_up: b.reload == Reload::Lora,
        startup_timeout: std::time::Duration::from_secs_f64(b.startup_timeout_s),
        stop_grace: std::time::Duration::from_secs_f64(b.stop_grace_s),
    })
}

/// With LoRA DPO, M_t for t >= 2 is one adapter over M1 (`models/mT/adapter`, each DPO
/// continuing the last adapter over M1): M1's folder and the adapter, served as `mT`.
fn adapter_over_m1(cfg: &RunConfig, model: &Path) -> Option<(PathBuf, ServedAdapter)> {
    if cfg.dpo.train.lora_rank == 0 {
        return None;
    }
    let t = Layout::model_number(model).filter(|&t| t >= 2)?;
    Some((
        model.with_file_name("m1"),
        ServedAdapter {
            name: format!("m{t}"),
            dir: model.join("adapter"),
        },
    ))
}

/// `srlm sft` or `srlm dpo`'s training arguments: from `model` into `out` with `settings`.
fn train_args(cfg: &RunConfig, settings: &TrainSettings, model: &Path, out: &Path) -> TrainArgs {
    TrainArgs {
        model: Some(model.to_path_buf()),
        out: out.to_path_buf(),
        eval_data: None,
        overwrite: false,
        adapter: None,
        settings: TrainFlags::from(settings.clone()),
        seed: cfg.seed,
        threads: (cfg.model.threads > 0).then_some(cfg.model.threads),
    }
}

/// `srlm eval judge` of `model` on the ranked trees `data` into `out`: `k` judgements per
/// reply at `temperature` on `limit` prompts (0: all) with `justification`, with the judge's
/// other settings; and the server it runs on. That is the judge role's when srlm launches it
/// (then with `model`); a judge server that runs already is another model than the one judged
/// here, so then `model` judges on the local engine.
fn eval_judge_call(
    cfg: &RunConfig,
    model: &Path,
    data: &Path,
    out: &Path,
    (k, temperature, limit, justification): (usize, f32, usize, Justification),
    seed: u64,
) -> Result<(StageCall, Option<Launch>)> {
    let server = launch(cfg, &cfg.judge.backend, model);
    let remote = match server {
        Some(_) => remote_args(cfg, "judge.backend", &cfg.judge.backend)?.unwrap_or_default(),
        None => RemoteArgs::default(),
    };
    let local = server.is_none().then_some(model);
    let call = StageCall::EvalJudge(EvalJudgeArgs {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        k,
        limit: (limit > 0).then_some(limit),
        keep_synthetic: false,
        first_turn: false,
        score: cfg.judge.score,
        justification,
        backend: BackendArgs {
            batch_size: cfg.batch_size,
            model: model_args(cfg, local)?,
            remote,
        },
        sampling: sampling(temperature, cfg.judge.top_p, cfg.judge.max_new_tokens, seed),
    });
    Ok((call, server))
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// A run with every part on: the bootstrap, two iterations, both evaluations, and a role on
    /// a server.
    fn full_config() -> RunConfig {
        toml::from_str(
            "[model]\nthreads = 2\n[judge]\nbackend = \"big\"\n[eval]\nvs_backend = \"big\"\n\
             [pairs]\nlength_control = 0.25\nlength_control_unit = \"range\"\n[prompts]\nblocklist = [\"image\", \"map\"]\n\
             [dpo]\nlora_rank = 4\nmax_steps = 3\n\
             [backends.big]\nbase_url = \"http://h:8000/v1\"\nmodel = \"llama-70b\"\n",
        )
        .unwrap()
    }

    #[test]
    fn every_recorded_command_line_runs_the_same_stage() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        let cfg = full_config();
        let plan = plan(&cfg, &layout, Path::new("/models/m0.gguf")).unwrap();
        let names: Vec<&str> = plan.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "seed",
                "sft m1-seed",
                "eft judge",
                "eft",
                "sft m1",
                "prompts 1",
                "sample 1",
                "judge 1",
                "pairs 1",
                "dpo m2",
                "prompts 2",
                "sample 2",
                "judge 2",
                "pairs 2",
                "dpo m3",
                "eval judge m1",
                "eval judge m2",
                "eval judge m3",
                "eval vs m2 m1",
                "eval vs m3 m1"
            ]
        );
        for p in &plan {
            let Work::Call { call, .. } = &p.work else {
                continue;
            };
            let argv = call.argv();
            let cli =
                crate::Cli::try_parse_from(std::iter::once("srlm".into()).chain(argv.clone()))
                    .unwrap_or_else(|e| panic!("{}: {argv:?}: {e}", p.name));
            let parsed = StageCall::from_command(cli.command).expect("a stage's command");
            assert_eq!(
                serde_json::to_value(&parsed).unwrap(),
                serde_json::to_value(call).unwrap(),
                "{}: {argv:?}",
                p.name
            );
        }
        // The role on a server is no input; the local one is.
        let judge = plan.iter().find(|p| p.name == "judge 1").unwrap();
        assert!(!judge.inputs.contains(&layout.model(1)));
        let sample = plan.iter().find(|p| p.name == "sample 1").unwrap();
        assert!(sample.inputs.contains(&layout.model(1)));
        // The config's tolerance unit reaches the pairs stage's command line.
        let pairs = plan.iter().find(|p| p.name == "pairs 1").unwrap();
        let Work::Call { call, .. } = &pairs.work else {
            panic!("pairs is a call");
        };
        let argv = call.argv();
        let at = argv
            .iter()
            .position(|a| a == "--length-control-unit")
            .unwrap();
        assert_eq!(argv[at + 1], "range");
    }

    #[test]
    fn a_role_runs_on_the_backend_its_config_names() {
        let cfg: RunConfig = toml::from_str(
            "[judge]\nbackend = \"big\"\n[backends.big]\nbase_url = \"http://h:8000/v1\"\nmodel = \"llama-70b\"\nconcurrency = 32\n",
        )
        .unwrap();
        let r = remote_args(&cfg, "judge.backend", &cfg.judge.backend)
            .unwrap()
            .unwrap();
        assert_eq!(r.api_base.as_deref(), Some("http://h:8000/v1"));
        assert_eq!(r.api_model.as_deref(), Some("llama-70b"));
        assert_eq!(r.api_concurrency, 32);
        assert_eq!(r.api_key_env, "OPENAI_API_KEY");
        // The judge stage's command line carries the server (and parses: the round-trip test).
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(&cfg, &Layout::new(dir.path()), Path::new("m0.gguf")).unwrap();
        let Work::Call { call, .. } = &plan.iter().find(|p| p.name == "judge 1").unwrap().work
        else {
            panic!("judge is a call")
        };
        let argv = call.argv();
        let has = |k: &str, v: &str| argv.windows(2).any(|w| w[0] == k && w[1] == v);
        assert!(has("--api-base", "http://h:8000/v1"), "{argv:?}");
        assert!(has("--api-concurrency", "32"), "{argv:?}");
        assert!(remote_args(&cfg, "sample.backend", "local")
            .unwrap()
            .is_none());
        let e = remote_args(&cfg, "sample.backend", "small")
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
    fn a_plan_without_the_optional_parts_has_only_the_loop() {
        let cfg: RunConfig = toml::from_str(
            "iterations = 1\n[eft]\ndata = \"\"\n[eval]\njudge_data = \"\"\nprompts = \"\"\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let plan = plan(&cfg, &Layout::new(dir.path()), Path::new("m0.gguf")).unwrap();
        let names: Vec<&str> = plan.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "seed",
                "sft m1",
                "prompts 1",
                "sample 1",
                "judge 1",
                "pairs 1",
                "dpo m2"
            ]
        );
    }
}
