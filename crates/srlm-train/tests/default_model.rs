//! Training the real default model (SmolLM2-135M-Instruct, its Q4_1 GGUF dequantized to f32):
//! one SFT step equals PyTorch's (loss, gradients, weights after AdamW; goldens from
//! scripts/make_train_goldens.py), and a few steps on real data lower the held-out loss.

use candle_core::{Device, IndexOp, Tensor};
use srlm_core::generation::Message;
use srlm_train::data::{tokenize_conversation, Sequence};
use srlm_train::optim::{clip_factor, global_norm, AdamW, AdamWConfig};
use srlm_train::sft::Sft;
use srlm_train::trainer::{Progress, TrainConfig, Trainer};
use std::collections::HashMap;
use std::path::PathBuf;

fn goldens() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens")
}

fn model_path() -> PathBuf {
    srlm_train::tune_allocator();
    srlm_engine::fetch::default_model().expect("fetch the default model")
}

#[derive(serde::Deserialize)]
struct Slice {
    name: String,
    rows: Option<usize>,
}

#[derive(serde::Deserialize)]
struct StepGolden {
    conversations: Vec<Vec<Message>>,
    ids: Vec<Vec<u32>>,
    train_mask: Vec<Vec<u8>>,
    loss: f64,
    grad_norm: f64,
    lr: f64,
    weight_decay: f64,
    max_grad_norm: f64,
    slices: Vec<Slice>,
    embed_rows: Vec<u32>,
}

/// ‖got - want‖ / ‖want‖
fn rel_l2(got: &Tensor, want: &Tensor) -> f64 {
    let n = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt() as f64
    };
    n(&(got - want).unwrap()) / n(want)
}

#[test]
fn one_sft_step_equals_pytorch() {
    let g: StepGolden = serde_json::from_str(
        &std::fs::read_to_string(goldens().join("smollm2_step.json")).unwrap(),
    )
    .unwrap();
    let want: HashMap<String, Tensor> =
        candle_core::safetensors::load(goldens().join("smollm2_step.safetensors"), &Device::Cpu)
            .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = TrainConfig {
        max_len: 512,
        micro_batch: 2,
        grad_accum: 1,
        ..TrainConfig::default()
    };
    let trainer = Trainer::load(&model_path(), cfg, dir.path()).unwrap();

    // srlm masks the prompt exactly as the reference did.
    let mut sequences = Vec::new();
    for ((conv, ids), mask) in g.conversations.iter().zip(&g.ids).zip(&g.train_mask) {
        let seq = tokenize_conversation(&trainer.engine, conv).unwrap();
        assert_eq!(&seq.ids, ids, "token ids");
        let m: Vec<bool> = mask.iter().map(|&x| x == 1).collect();
        assert_eq!(seq.train, m, "loss mask");
        sequences.push(Sequence {
            ids: ids.clone(),
            train: m,
        });
    }
    let sft = Sft {
        sequences,
        pad_id: 0,
    };
    let (loss, _, grads) = trainer.accumulate(&sft, &[0, 1], 0).unwrap();
    assert!(
        (loss - g.loss).abs() / g.loss < 1e-4,
        "loss {loss} vs PyTorch {}",
        g.loss
    );

    let vars = trainer.store.vars();
    let index: HashMap<&str, usize> = vars
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i))
        .collect();
    let rows_of = |t: &Tensor, rows: Option<usize>| match rows {
        Some(r) => t.i(..r).unwrap(),
        None => t.clone(),
    };
    let emb_rows = Tensor::new(g.embed_rows.as_slice(), &Device::Cpu).unwrap();
    let emb = index["model.embed_tokens.weight"];
    for s in &g.slices {
        let got = rows_of(&grads[index[s.name.as_str()]], s.rows);
        let err = rel_l2(&got, &want[&format!("grad/{}", s.name)]);
        assert!(err < 2e-3, "gradient of {}: relative error {err}", s.name);
    }
    let got = grads[emb].index_select(&emb_rows, 0).unwrap();
    let err = rel_l2(&got, &want["grad/embed_rows"]);
    assert!(
        err < 2e-3,
        "gradient of the tied embedding rows: relative error {err}"
    );

    let refs: Vec<&Tensor> = grads.iter().collect();
    let norm = global_norm(&refs).unwrap();
    assert!(
        (norm - g.grad_norm).abs() / g.grad_norm < 1e-3,
        "grad norm {norm} vs {}",
        g.grad_norm
    );

    let mut opt = AdamW::new(
        vars.clone(),
        AdamWConfig {
            weight_decay: g.weight_decay,
            ..AdamWConfig::default()
        },
    );
    opt.step(&grads, g.lr, clip_factor(norm, Some(g.max_grad_norm)))
        .unwrap();
    // Compare the update itself (after - before): the weights alone hide it under their scale.
    let check = |name: &str, got_after: Tensor| {
        let before = &want[&format!("before/{name}")];
        let d_want = (&want[&format!("after/{name}")] - before).unwrap();
        let d_got = (got_after - before).unwrap();
        let err = rel_l2(&d_got, &d_want);
        // Adam's first step is lr·g/(|g|+eps): elements whose gradient is at f32 noise level can
        // flip sign, so the tolerance is on the whole update, not each element.
        assert!(err < 2e-2, "AdamW update of {name}: relative error {err}");
    };
    for s in &g.slices {
        check(
            &s.name,
            rows_of(vars[index[s.name.as_str()]].1.as_tensor(), s.rows),
        );
    }
    check(
        "embed_rows",
        vars[emb].1.as_tensor().index_select(&emb_rows, 0).unwrap(),
    );
}

/// Self-Instruct seed tasks (../shared/data) as SFT records: instruction (+ input) -> output.
fn seed_tasks(skip: usize, take: usize, path: &std::path::Path) {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/self-instruct/seed_tasks.jsonl");
    let text =
        std::fs::read_to_string(&src).expect("../shared/data/self-instruct/seed_tasks.jsonl");
    let mut out = String::new();
    let mut kept = 0;
    for line in text.lines().skip(skip) {
        if kept == take {
            break;
        }
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let inst = &v["instances"][0];
        let mut prompt = v["instruction"].as_str().unwrap().to_string();
        let input = inst["input"].as_str().unwrap_or("");
        if !input.is_empty() {
            prompt = format!("{prompt}\n\n{input}");
        }
        // Short tasks only, so every record fits --max-len 256 with the system prompt.
        if prompt.len() + inst["output"].as_str().unwrap_or("").len() > 600 {
            continue;
        }
        kept += 1;
        let rec = serde_json::json!({"prompt": prompt, "response": inst["output"]});
        out.push_str(&rec.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn sft_on_real_data_lowers_held_out_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (train, held) = (
        dir.path().join("train.jsonl"),
        dir.path().join("held.jsonl"),
    );
    seed_tasks(0, 20, &train);
    seed_tasks(150, 12, &held);
    let cfg = TrainConfig {
        lr: 2e-5,
        min_lr: 2e-5,
        max_steps: Some(5),
        micro_batch: 4,
        grad_accum: 1,
        max_len: 256,
        save_every: 0,
        ..TrainConfig::default()
    };
    let out = dir.path().join("out");
    let mut trainer = Trainer::load(&model_path(), cfg.clone(), &out).unwrap();
    let load = |p: &PathBuf| srlm_train::data::load_sft(&trainer.engine, p, cfg.max_len).unwrap();
    let sft = Sft {
        sequences: load(&train),
        pad_id: 0,
    };
    let eval = Sft {
        sequences: load(&held),
        pad_id: 0,
    };
    let all: Vec<usize> = (0..eval.sequences.len()).collect();
    let before = trainer.evaluate(&eval, &all).unwrap()["eval/loss"];
    let mut last = None;
    let mut cb = |p: &Progress| {
        if let Some(e) = p.eval {
            last = Some(e["eval/loss"]);
        }
    };
    trainer.run(&sft, Some(&eval), "test", &mut cb).unwrap();
    let after = last.expect("evaluated at the end");
    assert!(after < before - 0.02, "held-out loss {before} -> {after}");
    // The result is a model folder srlm (and transformers) load.
    assert!(out.join("config.json").exists() && out.join("model.safetensors").exists());
}
