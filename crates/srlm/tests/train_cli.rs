//! `srlm sft` / `srlm dpo` as a user runs them, on the tiny random Llama: checkpoints that
//! transformers and PEFT load give the logits srlm gives (goldens: scripts/make_train_goldens.py),
//! a run killed with SIGKILL resumes to the weights of an uninterrupted run, bad data is named.

use candle_core::{Device, Tensor};
use srlm_engine::{Engine, LoadOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../srlm-engine/tests/goldens/tiny-llama")
}

fn train_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../srlm-train/tests")
}

fn srlm(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(args)
        .output()
        .expect("run srlm")
}

fn sft_args(out: &Path, extra: &[String]) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "sft".into(),
        "--model".into(),
        tiny().display().to_string(),
        "--data".into(),
        train_dir()
            .join("fixtures/tiny_sft.jsonl")
            .display()
            .to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    a.extend_from_slice(extra);
    a
}

fn weights(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    srlm_engine::kernels::check::max_abs_diff(a, b).unwrap()
}

#[derive(serde::Deserialize)]
struct CheckpointGolden {
    ids: Vec<u32>,
    train_args: Vec<String>,
    full_args: Vec<String>,
    lora_args: Vec<String>,
}

#[test]
fn checkpoints_give_transformers_and_peft_the_logits_srlm_gives() {
    let goldens = train_dir().join("goldens");
    let g: CheckpointGolden =
        serde_json::from_str(&std::fs::read_to_string(goldens.join("checkpoints.json")).unwrap())
            .unwrap();
    let want: HashMap<String, Tensor> =
        candle_core::safetensors::load(goldens.join("checkpoints.safetensors"), &Device::Cpu)
            .unwrap();
    let n = g.ids.len();
    let ids = Tensor::from_vec(g.ids.clone(), (1, n), &Device::Cpu).unwrap();
    for (name, extra, reference) in [
        ("tiny-sft", &g.full_args, "tiny-sft/transformers"),
        ("tiny-lora", &g.lora_args, "tiny-lora/peft"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join(name);
        let mut extra_all = g.train_args.clone();
        extra_all.extend(extra.iter().cloned());
        let o = srlm(&sft_args(&out, &extra_all));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // The fresh run reproduces the checkpoint the reference loaded.
        let committed = weights(&goldens.join(name));
        let fresh = weights(&out);
        assert_eq!(committed.len(), fresh.len());
        for (k, t) in &committed {
            let d = max_abs_diff(t, &fresh[k]);
            assert!(
                d < 1e-5,
                "{name}: {k} differs from the committed checkpoint by {d}"
            );
        }
        // srlm reading its own checkpoint computes what transformers (or PEFT on the adapter) does.
        let engine = Engine::load(&out, &LoadOptions::dense()).unwrap();
        let got = engine.model.forward(&ids).unwrap().squeeze(0).unwrap();
        let w = &want[reference];
        let err = max_abs_diff(&got, w)
            / w.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
        assert!(
            err < 1e-4,
            "{name}: relative error {err} against {reference}"
        );
        if name == "tiny-lora" {
            let merged = &want["tiny-lora/transformers"];
            assert!(
                max_abs_diff(merged, w) < 1e-4,
                "PEFT and the merged folder agree"
            );
            assert!(out.join("adapter/adapter_config.json").exists());
        }
    }
}

fn metrics_steps(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

fn resume_step(dir: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(dir.join("resume/state.json")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?["step"].as_u64()
}

#[test]
fn kill_9_mid_training_then_resume_equals_an_uninterrupted_run() {
    let steps = 300u64;
    let extra: Vec<String> = [
        "--lr",
        "3e-3",
        "--min-lr",
        "3e-4",
        "--warmup-steps",
        "10",
        "--micro-batch",
        "2",
        "--grad-accum",
        "2",
        "--save-every",
        "5",
        "--dropout",
        "0.1",
        "--threads",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["--max-steps".to_string(), steps.to_string()])
    .collect();
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole");
    let o = srlm(&sft_args(&whole, &extra));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let killed = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(sft_args(&killed, &extra))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if resume_step(&killed).is_some_and(|s| s >= 40) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no resume state appeared"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at = resume_step(&killed).unwrap();
    assert!(at < steps, "killed at step {at}, before the end");
    assert!(
        !killed.join("config.json").exists(),
        "an unfinished run has no model folder"
    );

    let o = srlm(&sft_args(&killed, &extra));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("resumed from step"));
    let (a, b) = (weights(&whole), weights(&killed));
    for (k, t) in &a {
        let d = max_abs_diff(t, &b[k]);
        assert!(d < 1e-6, "{k}: resumed weights differ by {d}");
    }
    assert_eq!(
        metrics_steps(&killed),
        (1..=steps).collect::<Vec<_>>(),
        "each step logged once"
    );
}

#[test]
fn bad_training_data_names_the_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"hi\", \"response\": \"hello\"}\n{\"prompt\": \"no reply here\"}\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let mut args = sft_args(&out, &[]);
    let i = args.iter().position(|a| a == "--data").unwrap();
    args[i + 1] = data.display().to_string();
    let o = srlm(&args);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.jsonl:2"), "{err}");
    assert!(err.contains("response"), "{err}");
    assert!(err.contains("hint"), "{err}");

    let pairs = dir.path().join("pairs.jsonl");
    std::fs::write(&pairs, "{\"prompt\": \"q\", \"chosen\": \"a\"}\n").unwrap();
    let o = srlm(&[
        "dpo".into(),
        "--model".into(),
        tiny().display().to_string(),
        "--pairs".into(),
        pairs.display().to_string(),
        "--out".into(),
        dir.path().join("dpo").display().to_string(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("pairs.jsonl:1") && err.contains("rejected"),
        "{err}"
    );
}

#[test]
fn dpo_runs_and_logs_trl_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("dpo");
    let o = srlm(&[
        "dpo".into(),
        "--model".into(),
        tiny().display().to_string(),
        "--pairs".into(),
        train_dir()
            .join("fixtures/tiny_pairs.jsonl")
            .display()
            .to_string(),
        "--out".into(),
        out.display().to_string(),
        "--lr".into(),
        "1e-3".into(),
        "--max-steps".into(),
        "3".into(),
        "--micro-batch".into(),
        "2".into(),
        "--grad-accum".into(),
        "1".into(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    for k in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ] {
        assert!(first.get(k).is_some(), "missing {k} in {first}");
    }
    // Step 1: the policy is the reference, so the loss is log 2 and the rewards are 0.
    assert!(
        (first["loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-4,
        "{first}"
    );
    assert!(first["rewards/margins"].as_f64().unwrap().abs() < 1e-4);
    assert_eq!(
        std::fs::read_to_string(out.join("reference_logps.jsonl"))
            .unwrap()
            .lines()
            .count(),
        4
    );
    assert!(out.join("config.json").exists());
}

/// The committed adapter of `tiny-lora` (written by `srlm sft --lora-rank 4`), in a folder of
/// its own whose adapter_config.json names `base` as its base model.
fn adapter_copy(dir: &Path, base: &str) -> PathBuf {
    let src = train_dir().join("goldens/tiny-lora/adapter");
    let dst = dir.join("adapter");
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        dst.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("adapter_config.json")).unwrap())
            .unwrap();
    cfg["base_model_name_or_path"] = base.into();
    std::fs::write(dst.join("adapter_config.json"), cfg.to_string()).unwrap();
    dst
}

#[test]
fn a_peft_adapter_over_its_base_computes_what_peft_does() {
    let goldens = train_dir().join("goldens");
    let g: CheckpointGolden =
        serde_json::from_str(&std::fs::read_to_string(goldens.join("checkpoints.json")).unwrap())
            .unwrap();
    let want: HashMap<String, Tensor> =
        candle_core::safetensors::load(goldens.join("checkpoints.safetensors"), &Device::Cpu)
            .unwrap();
    let w = &want["tiny-lora/peft"];
    let scale = w
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let ids = Tensor::from_vec(g.ids.clone(), (1, g.ids.len()), &Device::Cpu).unwrap();
    let logits = |e: &Engine| e.model.forward(&ids).unwrap().squeeze(0).unwrap();
    let dir = tempfile::tempdir().unwrap();

    // The base and the adapter given apart, as srlm serve loads one.
    let adapter =
        srlm_engine::adapter::LoraAdapter::read(&goldens.join("tiny-lora/adapter")).unwrap();
    assert_eq!(
        (adapter.rank, adapter.alpha, adapter.factors.len()),
        (4, 8.0, 14)
    );
    let engine = Engine::load_adapted(&tiny(), &adapter, &LoadOptions::dense()).unwrap();
    let err = max_abs_diff(&logits(&engine), w) / scale;
    assert!(err < 1e-4, "relative error {err} against PEFT");

    // The adapter folder as --model: its base is the folder adapter_config.json names.
    let folder = adapter_copy(dir.path(), &tiny().display().to_string());
    let engine = Engine::load(&folder, &LoadOptions::dense()).unwrap();
    let err = max_abs_diff(&logits(&engine), w) / scale;
    assert!(err < 1e-4, "relative error {err} against PEFT");

    // A base that is not here, and an adapter of modules the base does not have: refused.
    let lost = tempfile::tempdir().unwrap();
    let folder = adapter_copy(lost.path(), "/nowhere/base");
    let e = Engine::load(&folder, &LoadOptions::dense())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("not a local model folder") && e.contains("hint:"),
        "{e}"
    );
    let st = candle_core::safetensors::load(folder.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    let moved: HashMap<String, Tensor> = st
        .into_iter()
        .map(|(k, v)| (k.replace("layers.1.", "layers.5."), v))
        .collect();
    candle_core::safetensors::save(&moved, folder.join("adapter_model.safetensors")).unwrap();
    let adapter = srlm_engine::adapter::LoraAdapter::read(&folder).unwrap();
    let e = Engine::load_adapted(&tiny(), &adapter, &LoadOptions::dense())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.layers.5.") && e.contains("does not have"),
        "{e}"
    );
}

#[test]
fn training_continues_an_adapter_over_the_same_base() {
    let goldens = train_dir().join("goldens");
    let dir = tempfile::tempdir().unwrap();
    let adapter = goldens.join("tiny-lora/adapter").display().to_string();
    let pairs = train_dir()
        .join("fixtures/tiny_pairs.jsonl")
        .display()
        .to_string();
    let dpo = |out: &Path, model: &Path, extra: &[&str]| {
        let mut a: Vec<String> = [
            "dpo",
            "--model",
            &model.display().to_string(),
            "--pairs",
            &pairs,
            "--out",
            &out.display().to_string(),
            "--lr",
            "1e-3",
            "--max-steps",
            "2",
            "--micro-batch",
            "2",
            "--grad-accum",
            "1",
            "--precision",
            "f32",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        srlm(&a)
    };
    let refs = |out: &Path| -> Vec<(f64, f64)> {
        let mut v: Vec<(u64, f64, f64)> =
            std::fs::read_to_string(out.join("reference_logps.jsonl"))
                .unwrap()
                .lines()
                .map(|l| {
                    let j: serde_json::Value = serde_json::from_str(l).unwrap();
                    (
                        j["index"].as_u64().unwrap(),
                        j["ref_chosen_logps"].as_f64().unwrap(),
                        j["ref_rejected_logps"].as_f64().unwrap(),
                    )
                })
                .collect();
        v.sort_by_key(|x| x.0);
        v.into_iter().map(|(_, c, r)| (c, r)).collect()
    };

    // DPO from the base with the adapter: its reference is the adapted model (the merged
    // checkpoint's log-probabilities), and it trains the same adapter further.
    let cont = dir.path().join("cont");
    let o = dpo(&cont, &tiny(), &["--adapter", &adapter]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let merged = dir.path().join("merged");
    let o = dpo(&merged, &goldens.join("tiny-lora"), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let base = dir.path().join("base");
    let o = dpo(&base, &tiny(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for ((c, m), b) in refs(&cont).iter().zip(refs(&merged)).zip(refs(&base)) {
        assert!(
            (c.0 - m.0).abs() < 1e-3 && (c.1 - m.1).abs() < 1e-3,
            "{c:?} vs merged {m:?}"
        );
        assert!(
            (c.0 - b.0).abs() > 1e-3,
            "the reference ignored the adapter: {c:?} vs {b:?}"
        );
    }
    let written: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cont.join("adapter/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(written["r"], 4);
    assert_eq!(
        written["base_model_name_or_path"],
        tiny().display().to_string()
    );
    let before = candle_core::safetensors::load(
        goldens.join("tiny-lora/adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let after = candle_core::safetensors::load(
        cont.join("adapter/adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(before.len(), after.len());
    let moved = before
        .iter()
        .filter(|(k, t)| max_abs_diff(t, &after[*k]) > 0.0)
        .count();
    assert!(moved > 0, "no factor moved");
    // The merged folder and the new adapter over the base are the same model.
    let a = srlm_engine::adapter::LoraAdapter::read(&cont.join("adapter")).unwrap();
    let ids = Tensor::new(&[[5u32, 17, 33, 60, 2, 90, 11, 40]], &Device::Cpu).unwrap();
    let over = Engine::load_adapted(&tiny(), &a, &LoadOptions::dense()).unwrap();
    let whole = Engine::load(&cont, &LoadOptions::dense()).unwrap();
    let d = max_abs_diff(
        &over.model.forward(&ids).unwrap(),
        &whole.model.forward(&ids).unwrap(),
    );
    assert!(
        d < 1e-4,
        "adapter over base and merged folder differ by {d}"
    );

    // Another rank than the adapter's is refused before anything trains.
    let o = dpo(
        &dir.path().join("r8"),
        &tiny(),
        &["--adapter", &adapter, "--lora-rank", "8"],
    );
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("rank 4") && e.contains("--lora-rank is 8"),
        "{e}"
    );
}
