//! The whole run config checked before anything is written or trained: ranges, names that must
//! be one of a few, backends the roles name, files and models the config points to. Every
//! problem is listed at once, each naming its key, so a run that would fail at its fifth stage
//! fails before its first.

use crate::commands::eval_vs::VsMode;
use crate::pipeline::config::{Reload, RunConfig};
use crate::pipeline::external_trainer::{trainer_command, Kind};
use clap::ValueEnum;
use srlm_engine::gguf::WeightFormat;
use srlm_engine::sampling::SamplingParams;
use srlm_train::loss::{DpoConfig, DpoLossType};
use std::path::Path;

/// Every problem of `cfg`, each as "`key`: what is wrong"; empty when the run can start.
pub fn problems(cfg: &RunConfig) -> Vec<String> {
    let mut out = Vec::new();
    let mut bad = |key: &str, problem: String| out.push(format!("`{key}` {problem}"));

    at_least(&mut bad, "iterations", cfg.iterations, 1);
    at_least(&mut bad, "batch_size", cfg.batch_size, 1);

    let m = &cfg.model;
    if let Err(e) = m.weights.parse::<WeightFormat>() {
        bad("model.weights", format!("is {:?}: {e}", m.weights));
    }
    at_least(&mut bad, "model.context_length", m.context_length, 16);
    if !m.base.is_empty() {
        if let Some(problem) = model_problem(Path::new(&m.base)) {
            bad("model.base", problem);
        }
    }

    if cfg.seed_data.ift.is_empty() {
        bad(
            "seed_data.ift",
            "is empty; M1 needs instruction data (\"builtin\" is the shipped set)".into(),
        );
    }
    for (key, specs) in [
        ("seed_data.ift", &cfg.seed_data.ift),
        ("seed_data.eft", &cfg.seed_data.eft),
    ] {
        for spec in specs.iter().filter(|s| s.as_str() != "builtin") {
            if let Some(problem) = data_problem(spec) {
                bad(key, problem);
            }
        }
    }

    let e = &cfg.eft;
    if !e.data.is_empty() {
        if let Some(problem) = data_problem(&e.data) {
            bad("eft.data", problem);
        }
        at_least(&mut bad, "eft.k", e.k, 1);
        at_least(&mut bad, "eft.epochs", e.epochs, 1);
        sampling(&mut bad, "eft", e.temperature, 1.0, 1);
    }
    train(&mut bad, "sft", &cfg.sft.train, cfg.seed);

    let p = &cfg.prompts;
    at_least(&mut bad, "prompts.count", p.count, 1);
    at_least(&mut bad, "prompts.from_seed", p.from_seed, 1);
    at_least(
        &mut bad,
        "prompts.max_attempts_factor",
        p.max_attempts_factor,
        1,
    );
    if !(p.max_rouge_l > 0.0) {
        bad(
            "prompts.max_rouge_l",
            format!(
                "is {}; it must be more than 0 (1 or more keeps every prompt)",
                p.max_rouge_l
            ),
        );
    }
    if p.min_words > p.max_words {
        bad(
            "prompts.min_words",
            format!(
                "is {}, more than prompts.max_words ({})",
                p.min_words, p.max_words
            ),
        );
    }
    if !matches!(p.generator.as_str(), "base" | "current") {
        if let Some(problem) = model_problem(Path::new(&p.generator)) {
            bad(
                "prompts.generator",
                format!("is neither \"base\", \"current\" nor a model: {problem}"),
            );
        }
    }
    sampling(
        &mut bad,
        "prompts",
        p.temperature,
        p.top_p,
        p.max_new_tokens,
    );

    let s = &cfg.sample;
    if s.n < 2 {
        bad(
            "sample.n",
            format!("is {}; a pair needs at least 2 candidates", s.n),
        );
    }
    sampling(&mut bad, "sample", s.temperature, s.top_p, s.max_new_tokens);
    let j = &cfg.judge;
    at_least(&mut bad, "judge.k", j.k, 1);
    sampling(&mut bad, "judge", j.temperature, j.top_p, j.max_new_tokens);

    if !(cfg.pairs.min_margin.is_finite() && cfg.pairs.min_margin >= 0.0) {
        bad(
            "pairs.min_margin",
            format!("is {}; it must be 0 or more", cfg.pairs.min_margin),
        );
    }
    if !cfg.pairs.length_control.is_finite() {
        bad(
            "pairs.length_control",
            format!("is {}; negative turns it off", cfg.pairs.length_control),
        );
    }

    let d = &cfg.dpo;
    match d.loss.parse::<DpoLossType>() {
        Err(e) => bad("dpo.loss", format!("is {:?}: {e}", d.loss)),
        Ok(loss_type) => {
            let dpo = DpoConfig {
                beta: d.beta,
                loss_type,
                label_smoothing: d.label_smoothing,
                rpo_alpha: (d.rpo_alpha != 0.0).then_some(d.rpo_alpha),
            };
            for (name, problem) in dpo.problems() {
                bad(&format!("dpo.{name}"), problem);
            }
        }
    }
    train(&mut bad, "dpo", &d.train, cfg.seed);
    for (trainer, kind) in [(&cfg.sft.trainer, Kind::Sft), (&d.trainer, Kind::Dpo)] {
        let Some(command) = trainer_command(trainer, kind) else {
            continue;
        };
        let [out, input, model] = kind.required_slots();
        for slot in [out, input, model] {
            if !command.contains(slot) {
                bad(
                    &format!("{}.trainer", kind.section()),
                    format!("is {command:?}, which has no `{slot}`: \"srlm\", \"trl\", or a command that trains `{model}` on `{input}` into `{out}`"),
                );
            }
        }
    }

    let v = &cfg.eval;
    if let Err(e) = VsMode::from_str(&v.vs_mode, false) {
        bad("eval.vs_mode", format!("is {:?}: {e}", v.vs_mode));
    }
    for (key, spec) in [
        ("eval.judge_data", &v.judge_data),
        ("eval.prompts", &v.prompts),
    ] {
        if let Some(problem) = (!spec.is_empty()).then(|| data_problem(spec)).flatten() {
            bad(key, problem);
        }
    }
    if !v.judge_data.is_empty() {
        at_least(&mut bad, "eval.judge_k", v.judge_k, 1);
    }
    at_least(&mut bad, "eval.max_new_tokens", v.max_new_tokens, 1);
    if !matches!(v.vs_judge.as_str(), "base" | "m1") {
        if let Some(problem) = model_problem(Path::new(&v.vs_judge)) {
            bad(
                "eval.vs_judge",
                format!("is neither \"base\", \"m1\" nor a model: {problem}"),
            );
        }
    }

    for (key, name) in [
        ("prompts.backend", &p.backend),
        ("sample.backend", &s.backend),
        ("judge.backend", &j.backend),
        ("eval.vs_backend", &v.vs_backend),
    ] {
        if name != "local" && !cfg.backends.contains_key(name) {
            bad(
                key,
                format!(
                    "is {name:?}, which names no [backends.{name}] section (\"local\" or one of {:?})",
                    cfg.backends.keys().collect::<Vec<_>>()
                ),
            );
        }
    }
    for (name, b) in &cfg.backends {
        if b.url().is_empty() {
            bad(
                &format!("backends.{name}.base_url"),
                "is empty (e.g. \"http://localhost:8000/v1\"), and no `launch` command starts the server".into(),
            );
        }
        if !b.launch.is_empty() {
            if b.url().contains("{port}") && !b.launch.contains("{port}") {
                bad(
                    &format!("backends.{name}.launch"),
                    format!("does not pass the server its port: `{{port}}` is in the base URL {:?} but not in the command", b.url()),
                );
            }
            if !(b.startup_timeout_s.is_finite() && b.startup_timeout_s > 0.0) {
                bad(
                    &format!("backends.{name}.startup_timeout_s"),
                    format!("is {}; it must be more than 0", b.startup_timeout_s),
                );
            }
            if !(b.stop_grace_s.is_finite() && b.stop_grace_s >= 0.0) {
                bad(
                    &format!("backends.{name}.stop_grace_s"),
                    format!("is {}; it must be 0 or more", b.stop_grace_s),
                );
            }
        }
        if b.reload == Reload::Lora {
            if b.launch.is_empty() {
                bad(
                    &format!("backends.{name}.reload"),
                    "is \"lora\", but srlm loads adapters only into a server it launches: add a `launch` command".into(),
                );
            }
            let adapters_out = trainer_command(&cfg.dpo.trainer, Kind::Dpo)
                .is_none_or(|command| command.contains("{lora}"));
            if cfg.dpo.train.lora_rank == 0 || !adapters_out {
                bad(
                    &format!("backends.{name}.reload"),
                    "is \"lora\", which needs every M_t to be an adapter over M1: set `[dpo] lora_rank` (e.g. 64), with srlm's trainer, \"trl\", or a trainer command that takes `{lora}`".into(),
                );
            }
        }
        at_least(
            &mut bad,
            &format!("backends.{name}.concurrency"),
            b.concurrency,
            1,
        );
        if !(b.timeout_s.is_finite() && b.timeout_s > 0.0) {
            bad(
                &format!("backends.{name}.timeout_s"),
                format!("is {}; it must be more than 0", b.timeout_s),
            );
        }
    }
    out
}

fn at_least(bad: &mut impl FnMut(&str, String), key: &str, value: usize, min: usize) {
    if value < min {
        bad(key, format!("is {value}; it must be at least {min}"));
    }
}

/// A section's sampling settings, through the engine's one check of them.
fn sampling(
    bad: &mut impl FnMut(&str, String),
    section: &str,
    temperature: f32,
    top_p: f32,
    max_new_tokens: usize,
) {
    let params = SamplingParams {
        temperature,
        top_p,
        max_new_tokens,
        ..SamplingParams::default()
    };
    for b in params.problems() {
        bad(&format!("{section}.{}", b.name), b.problem);
    }
}

/// A training section, through the trainer's own check of its configuration.
fn train(
    bad: &mut impl FnMut(&str, String),
    section: &str,
    settings: &crate::train_settings::TrainSettings,
    seed: u64,
) {
    if let Err(e) = settings.config(seed).validate() {
        bad(section, e.to_string());
    }
}

/// Why `spec` (a data file or `builtin:NAME`) cannot be read, if it cannot.
fn data_problem(spec: &str) -> Option<String> {
    match crate::builtin::text(spec) {
        Err(e) => Some(format!("{e:#}").replace('\n', " ")),
        Ok(Some(_)) => None,
        Ok(None) if Path::new(spec).is_file() => None,
        Ok(None) => Some(format!("is {spec:?}, which is not a file")),
    }
}

/// Why `path` cannot be a model, if it cannot: a GGUF file, or a folder with config.json.
fn model_problem(path: &Path) -> Option<String> {
    if path.is_file() || path.join("config.json").is_file() {
        return None;
    }
    Some(match path.is_dir() {
        true => format!("{}: a model folder needs a config.json", path.display()),
        false => format!("{}: no such file or folder", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_and_the_tiny_runs_have_no_problem() {
        assert_eq!(problems(&RunConfig::default()), Vec::<String>::new());
        let tiny = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny_run.toml");
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let text = std::fs::read_to_string(tiny)
            .unwrap()
            .replace("@IFT@", &format!("{fixtures}/tiny_seed_ift.jsonl"))
            .replace("@EFT@", &format!("{fixtures}/tiny_seed_eft.jsonl"));
        let mut cfg: RunConfig = toml::from_str(&text).unwrap();
        cfg.model.base = String::new(); // the tests point it at a model they copy
        assert_eq!(problems(&cfg), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_listed_at_once_naming_its_key() {
        let cfg: RunConfig = toml::from_str(
            r#"
iterations = 0
[model]
weights = "fp7"
context_length = 0
base = "/no/such/model"
[prompts]
count = 0
top_p = 1.5
[sample]
n = 0
temperature = -0.5
[judge]
k = 0
backend = "vllm"
[dpo]
beta = -0.1
loss = "hinge"
"#,
        )
        .unwrap();
        let got = problems(&cfg).join("\n");
        for key in [
            "`iterations` is 0",
            "`model.weights` is \"fp7\"",
            "`model.context_length` is 0",
            "`model.base` /no/such/model: no such file",
            "`prompts.count` is 0",
            "`prompts.top_p` is 1.5",
            "`sample.n` is 0",
            "`sample.temperature` is -0.5",
            "`judge.k` is 0",
            "`judge.backend` is \"vllm\", which names no [backends.vllm] section",
            "`dpo.loss` is \"hinge\"",
        ] {
            assert!(got.contains(key), "{key} missing from:\n{got}");
        }
        let cfg: RunConfig = toml::from_str("[dpo]\nbeta = -0.1\n").unwrap();
        assert_eq!(
            problems(&cfg),
            ["`dpo.beta` is -0.1; it must be a positive number (the paper uses 0.1)"]
        );
    }
    #[test]
    fn a_launched_server_needs_its_port_and_times_that_can_pass() {
        let cfg: RunConfig = toml::from_str(
            "[backends.a]\nlaunch = \"vllm serve {model}\"\nstartup_timeout_s = 0\nstop_grace_s = -1\n\
             [backends.b]\nlaunch = \"vllm serve {model} --port {port}\"\n\
             [backends.c]\nbase_url = \"http://h:8000/v1\"\nlaunch = \"ssh h vllm serve {model}\"\n\
             [backends.d]\nconcurrency = 2\n",
        )
        .unwrap();
        let got = problems(&cfg);
        assert_eq!(
            got,
            [
                "`backends.a.launch` does not pass the server its port: `{port}` is in the base URL \"http://127.0.0.1:{port}/v1\" but not in the command",
                "`backends.a.startup_timeout_s` is 0; it must be more than 0",
                "`backends.a.stop_grace_s` is -1; it must be 0 or more",
                "`backends.d.base_url` is empty (e.g. \"http://localhost:8000/v1\"), and no `launch` command starts the server",
            ],
            "{got:#?}"
        );
    }

    #[test]
    fn reloading_adapters_needs_a_launched_server_and_lora_dpo() {
        let cfg: RunConfig = toml::from_str(
            "[backends.a]\nbase_url = \"http://h:8000/v1\"\nreload = \"lora\"\n\
             [backends.b]\nlaunch = \"vllm serve {model} --port {port} --enable-lora\"\nreload = \"lora\"\n",
        )
        .unwrap();
        let got = problems(&cfg);
        let launch = "`backends.a.reload` is \"lora\", but srlm loads adapters only into a server it launches: add a `launch` command";
        let lora = |n: &str| {
            format!("`backends.{n}.reload` is \"lora\", which needs every M_t to be an adapter over M1: set `[dpo] lora_rank` (e.g. 64), with srlm's trainer, \"trl\", or a trainer command that takes `{{lora}}`")
        };
        assert_eq!(got, [launch.to_string(), lora("a"), lora("b")], "{got:#?}");
        let mut cfg = cfg;
        cfg.dpo.train.lora_rank = 16;
        assert_eq!(problems(&cfg), [launch]);
        cfg.dpo.trainer = "trl".into();
        assert_eq!(problems(&cfg), [launch]);
        cfg.dpo.trainer = "deepspeed --module openrlhf.cli.train_dpo --pretrain {model} --dataset {pairs} --save_path {out}".into();
        assert_eq!(problems(&cfg).len(), 3);
    }

    #[test]
    fn the_gpu_recipes_in_docs_are_valid_configs_but_for_their_model_folder() {
        for (name, text, model) in [
            (
                "llama3-8b-8gpu.toml",
                include_str!("../../../../docs/recipes/llama3-8b-8gpu.toml"),
                "/models/Llama-3.1-8B-Instruct",
            ),
            (
                "llama3-1b-1gpu.toml",
                include_str!("../../../../docs/recipes/llama3-1b-1gpu.toml"),
                "/models/Llama-3.2-1B-Instruct",
            ),
            (
                "llama3-8b-1gpu-lora.toml",
                include_str!("../../../../docs/recipes/llama3-8b-1gpu-lora.toml"),
                "/models/Llama-3.1-8B-Instruct",
            ),
        ] {
            let cfg: RunConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                problems(&cfg),
                [format!("`model.base` {model}: no such file or folder")],
                "{name}"
            );
            // Every generating role on the launched server, both trainers outside srlm.
            for backend in [
                &cfg.prompts.backend,
                &cfg.sample.backend,
                &cfg.judge.backend,
                &cfg.eval.vs_backend,
            ] {
                assert_eq!(backend, "vllm", "{name}");
            }
            assert!(!cfg.backends["vllm"].launch.is_empty(), "{name}");
            for trainer in [&cfg.sft.trainer, &cfg.dpo.trainer] {
                assert!(trainer.contains("{script}"), "{name}: {trainer}");
            }
        }
    }
}
