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
