//! Training the real default model (SmolLM2-135M-Instruct, its Q4_1 GGUF dequantized to f32):
//! one SFT step equals PyTorch's (loss, gradients, weights after AdamW; goldens from
//! scripts/make_train_goldens.py), and a few steps on real data lower the held-out loss.

use candle_core::{Device, IndexOp, Tensor};
use srlm_core::generation::Message;
use srlm_train::data::{tokenize_conversation, Sequence};
use srlm_train::optim::{clip_factor, global_norm, AdamW, AdamWConfig};
use srlm_train::sft::Sft;
use srlm_train::trainer::{Precision, Progress, TrainConfig, Trainer};
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

/// How close one step must come to PyTorch's f32 step: relative errors of the loss, of each
/// gradient slice, and of each AdamW update.
struct Tolerance {
    loss: f64,
    /// By slice name ("embed_rows" for the tied embedding's rows, "norm" for the global norm).
    grad: Box<dyn Fn(&str) -> f64>,
    /// The mean over the named slices.
    grad_mean: f64,
    update: f64,
}

/// PyTorch's own bf16 step (torch.autocast) against its f32 step, by the same script.
#[derive(serde::Deserialize)]
struct AutocastGolden {
    loss_rel_err: f64,
    grad_rel_err: HashMap<String, f64>,
}

#[test]
fn one_sft_step_equals_pytorch() {
    sft_step_against_pytorch(
        Precision::F32,
        Tolerance {
            loss: 1e-4,
            grad: Box::new(|name| if name == "norm" { 1e-3 } else { 2e-3 }),
            grad_mean: 2e-3,
            update: 2e-2,
        },
    );
}

/// With bf16 matmuls (AMX or AVX512-BF16; f32 accumulation, weights and optimizer), the same step lands as
/// near PyTorch's f32 step as PyTorch's own bf16 autocast does (smollm2_step_autocast.json, by
/// the same script): the loss within twice autocast's error, each gradient slice within
/// autocast's worst slice, and their mean within autocast's mean. Skipped with a message where
/// the CPU has no bf16 kernel.
#[test]
fn one_sft_step_in_bf16_is_within_bf16_tolerance_of_pytorch_f32() {
    if !srlm_engine::gemm_bf16::has_simd_kernel() {
        eprintln!(
            "skipped: no bf16 kernel here (AMX or AVX512-BF16; this CPU has {})",
            srlm_engine::cpu::CpuFeatures::get().describe()
        );
        return;
    }
    let torch: AutocastGolden = serde_json::from_str(
        &std::fs::read_to_string(goldens().join("smollm2_step_autocast.json")).unwrap(),
    )
    .unwrap();
    let errs: Vec<f64> = torch.grad_rel_err.values().copied().collect();
    let worst = errs.iter().copied().fold(0.0, f64::max);
    let mean = errs.iter().sum::<f64>() / errs.len() as f64;
    sft_step_against_pytorch(
        Precision::Bf16,
        Tolerance {
            loss: 2.0 * torch.loss_rel_err,
            grad: Box::new(move |_| worst),
            grad_mean: mean,
            // Adam's first step is about lr·sign(g): its error follows the gradients' signs.
            update: 0.5,
        },
    );
}

fn sft_step_against_pytorch(precision: Precision, tol: Tolerance) {
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
        precision,
        ..TrainConfig::default()
    };
    let trainer = Trainer::load(&model_path(), cfg, dir.path()).unwrap();
    assert_eq!(
        srlm_engine::gemm_bf16::autocast_on(),
        precision == Precision::Bf16,
        "the trainer switches this thread's matmuls"
    );

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
    eprintln!("loss {loss} vs PyTorch {}", g.loss);
    assert!(
        (loss - g.loss).abs() / g.loss < tol.loss,
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
    let mut errs = Vec::new();
    for s in &g.slices {
        let got = rows_of(&grads[index[s.name.as_str()]], s.rows);
        let err = rel_l2(&got, &want[&format!("grad/{}", s.name)]);
        errs.push(err);
        eprintln!("gradient of {}: relative error {err:.2e}", s.name);
        assert!(
            err < (tol.grad)(&s.name),
            "gradient of {}: relative error {err}",
            s.name
        );
    }
    let mean = errs.iter().sum::<f64>() / errs.len() as f64;
    assert!(mean < tol.grad_mean, "mean gradient error {mean}");
    let got = grads[emb].index_select(&emb_rows, 0).unwrap();
    let err = rel_l2(&got, &want["grad/embed_rows"]);
    eprintln!("gradient of the tied embedding rows: relative error {err:.2e}");
    assert!(
        err < (tol.grad)("embed_rows"),
        "gradient of the tied embedding rows: relative error {err}"
    );

    let refs: Vec<&Tensor> = grads.iter().collect();
    let norm = global_norm(&refs).unwrap();
    assert!(
        (norm - g.grad_norm).abs() / g.grad_norm < (tol.grad)("norm"),
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
        eprintln!("AdamW update of {name}: relative error {err:.2e}");
        assert!(
            err < tol.update,
            "AdamW update of {name}: relative error {err}"
        );
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

/// Five SFT steps of SmolLM2 at 2e-5 on 20 self-instruct seed tasks, with `precision`, written
/// to `dir/<precision>`: (the training loss at each step, the held-out loss on 12 other tasks
/// before, and after).
fn short_sft(dir: &std::path::Path, precision: Precision) -> (Vec<f64>, f64, f64) {
    let (train, held) = (dir.join("train.jsonl"), dir.join("held.jsonl"));
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
        precision,
        ..TrainConfig::default()
    };
    let out = dir.join(precision.name());
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
    let (mut losses, mut last) = (Vec::new(), None);
    let mut cb = |p: &Progress| {
        if let Some(l) = p.log {
            losses.push(l.loss);
        }
        if let Some(e) = p.eval {
            last = Some(e["eval/loss"]);
        }
    };
    trainer.run(&sft, Some(&eval), "test", &mut cb).unwrap();
    (losses, before, last.expect("evaluated at the end"))
}

#[test]
fn sft_on_real_data_lowers_held_out_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (_, before, after) = short_sft(dir.path(), Precision::F32);
    assert!(after < before - 0.02, "held-out loss {before} -> {after}");
    // The result is a model folder srlm (and transformers) load.
    let out = dir.path().join(Precision::F32.name());
    assert!(out.join("config.json").exists() && out.join("model.safetensors").exists());
}

/// Five SFT steps of SmolLM2 on real data in bf16 (AMX or AVX512-BF16) and in f32 from the
/// same start: the bf16 run's loss at every step, and its held-out loss at the end, within 2% of f32's (one
/// bf16 step's loss is 0.7% from f32's, as PyTorch autocast's is: the test above), and it
/// learns about as much (its held-out loss falls by at least 0.7 of f32's fall; measured 0.83,
/// part of the gap being the held-out loss itself computed in bf16). Skipped with a message
/// where the CPU has no bf16 kernel.
#[test]
fn a_short_sft_in_bf16_follows_the_f32_loss_trajectory() {
    if !srlm_engine::gemm_bf16::has_simd_kernel() {
        eprintln!(
            "skipped: no bf16 kernel here (AMX or AVX512-BF16; this CPU has {})",
            srlm_engine::cpu::CpuFeatures::get().describe()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (f32_losses, f32_before, f32_after) = short_sft(dir.path(), Precision::F32);
    let (bf16_losses, bf16_before, bf16_after) = short_sft(dir.path(), Precision::Bf16);
    assert_eq!(f32_losses.len(), 5);
    assert_eq!(bf16_losses.len(), 5);
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    for (step, (b, f)) in bf16_losses.iter().zip(&f32_losses).enumerate() {
        eprintln!("step {}: loss bf16 {b:.4}, f32 {f:.4}", step + 1);
        assert!(
            rel(*b, *f) < 0.02,
            "step {}: bf16 loss {b} against f32 {f}",
            step + 1
        );
    }
    eprintln!(
        "held-out: bf16 {bf16_before:.4} -> {bf16_after:.4}, f32 {f32_before:.4} -> {f32_after:.4}"
    );
    assert!(
        rel(bf16_after, f32_after) < 0.02,
        "held-out {bf16_after} against {f32_after}"
    );
    assert!(
        bf16_before - bf16_after >= 0.7 * (f32_before - f32_after),
        "bf16 learned less: {bf16_before} -> {bf16_after} against {f32_before} -> {f32_after}"
    );
}
