//! The trainer on the tiny random Llama of the engine goldens: gradients reach every parameter and
//! equal finite differences, accumulation is exact, a tiny set is overfit, LoRA trains only its
//! adapters and merges exactly, a diverging run stops with its checkpoint intact, and the DPO
//! losses and metrics equal TRL's (goldens: scripts/make_train_goldens.py).

use candle_core::{Device, Tensor, Var};
use srlm_train::data::load_sft;
use srlm_train::dpo::pair_loss;
use srlm_train::loss::{DpoConfig, DpoLossType};
use srlm_train::params::{LoraConfig, Method, ALL_LINEAR};
use srlm_train::sft::Sft;
use srlm_train::trainer::{Normalizers, Objective, Progress, StepLog, TrainConfig, Trainer};
use srlm_train::TrainError;
use std::path::{Path, PathBuf};

fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../srlm-engine/tests/goldens/tiny-llama")
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn goldens() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goldens")
}

fn cfg(lr: f64, steps: u64) -> TrainConfig {
    TrainConfig {
        lr,
        min_lr: lr,
        max_steps: Some(steps),
        micro_batch: 2,
        grad_accum: 2,
        max_grad_norm: None,
        save_every: 0,
        max_len: 128,
        seed: 7,
        ..TrainConfig::default()
    }
}

fn load(cfg: TrainConfig, out: &Path) -> (Trainer, Sft) {
    let trainer = Trainer::load(&tiny_model(), cfg.clone(), out).unwrap();
    let sequences = load_sft(
        &trainer.engine,
        &fixtures().join("tiny_sft.jsonl"),
        cfg.max_len,
    )
    .unwrap();
    (
        trainer,
        Sft {
            sequences,
            pad_id: 0,
        },
    )
}

fn snapshot(vars: &[(String, Var)]) -> Vec<Vec<f32>> {
    vars.iter()
        .map(|(_, v)| {
            v.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

fn run(trainer: &mut Trainer, obj: &dyn Objective) -> Result<Vec<StepLog>, TrainError> {
    let mut logs = Vec::new();
    let mut cb = |p: &Progress| {
        if let Some(l) = p.log {
            logs.push(l.clone());
        }
    };
    trainer.run(obj, None, "test", &mut cb)?;
    Ok(logs)
}

#[test]
fn one_step_gives_every_parameter_a_gradient_and_changes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut trainer, sft) = load(cfg(1e-3, 1), dir.path());
    let vars = trainer.store.vars();
    // 2 layers x (2 norms + 7 projections) + embedding (tied head) + final norm
    assert_eq!(
        vars.len(),
        2 * 9 + 2 + 1,
        "untied head: lm_head is its own parameter"
    );
    let (_, _, grads) = trainer
        .accumulate(&sft, &(0..8).collect::<Vec<_>>(), 0)
        .unwrap();
    for ((name, _), g) in vars.iter().zip(&grads) {
        let n = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(n > 0.0, "{name} has no gradient");
    }
    let before = snapshot(&vars);
    run(&mut trainer, &sft).unwrap();
    for (((name, _), b), a) in vars.iter().zip(&before).zip(snapshot(&vars)) {
        let changed = b.iter().zip(&a).filter(|(x, y)| x != y).count();
        // Embedding rows of tokens absent from the batch get a zero gradient; all else moves.
        let enough = if name.contains("embed_tokens") {
            changed > 0
        } else {
            changed * 2 > b.len()
        };
        assert!(
            enough,
            "{name}: only {changed}/{} elements changed",
            b.len()
        );
    }
}

#[test]
fn gradients_equal_finite_differences() {
    let dir = tempfile::tempdir().unwrap();
    let (trainer, sft) = load(cfg(1e-3, 1), dir.path());
    let examples: Vec<usize> = (0..4).collect();
    let vars = trainer.store.vars();
    let (_, _, grads) = trainer.accumulate(&sft, &examples, 0).unwrap();
    let loss_at = || -> f64 {
        let norm = sft.normalizers(&examples);
        let mut l = 0.0;
        for chunk in examples.chunks(2) {
            let out = sft
                .micro_batch(&trainer.engine.model, chunk, &norm)
                .unwrap();
            l += out.loss.to_scalar::<f32>().unwrap() as f64;
        }
        l
    };
    let mut checked = 0;
    for ((name, var), g) in vars.iter().zip(&grads) {
        // The element with the largest gradient in each tensor, where f32 differences are sharpest.
        let gv = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (idx, &gi) = gv
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        let orig = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        let probe = |delta: f32| {
            let mut w = orig.clone();
            w[idx] += delta;
            var.set(&Tensor::from_vec(w, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            loss_at()
        };
        let fd = (probe(eps) - probe(-eps)) / (2.0 * eps as f64);
        var.set(&Tensor::from_vec(orig, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
        let rel = (fd - gi as f64).abs() / (gi.abs() as f64).max(1e-3);
        assert!(
            rel < 2e-2,
            "{name}[{idx}]: analytic {gi} vs finite difference {fd}"
        );
        checked += 1;
    }
    assert_eq!(checked, vars.len());
}

/// A step's micro-batches are its examples grouped by length (`trainer::micro_batches`), not
/// in the shuffled order; the step's gradient is the one of the whole step in one batch.
#[test]
fn length_grouped_micro_batches_give_the_whole_batch_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let (mut trainer, sft) = load(cfg(1e-3, 1), dir.path());
    let examples: Vec<usize> = vec![4, 0, 7, 2, 5, 1, 6, 3];
    let lens: Vec<usize> = examples.iter().map(|&i| sft.padded_len(i)).collect();
    let grouped = srlm_train::trainer::micro_batches(&examples, 2, |i| sft.padded_len(i));
    let padded = |batches: &[Vec<usize>]| -> usize {
        batches
            .iter()
            .map(|b| b.len() * b.iter().map(|&i| sft.padded_len(i)).max().unwrap())
            .sum()
    };
    let in_order: Vec<Vec<usize>> = examples.chunks(2).map(|c| c.to_vec()).collect();
    assert!(
        padded(&grouped) < padded(&in_order),
        "the fixture's lengths {lens:?} leave nothing to group"
    );
    let (loss_2, _, g_2) = trainer.accumulate(&sft, &examples, 0).unwrap();
    trainer.cfg.micro_batch = 8;
    let (loss_8, _, g_8) = trainer.accumulate(&sft, &examples, 0).unwrap();
    assert!(
        (loss_2 - loss_8).abs() < 1e-5 * loss_8.abs(),
        "{loss_2} vs {loss_8}"
    );
    for (a, b) in g_2.iter().zip(&g_8) {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let m = b.abs().unwrap().max_all().unwrap();
        let (d, m) = (d.to_scalar::<f32>().unwrap(), m.to_scalar::<f32>().unwrap());
        assert!(
            d <= 1e-4 * m.max(1e-3),
            "gradients differ by {d} (largest {m})"
        );
    }
}

/// The largest difference between two gradient lists, and the largest magnitude in `b`.
fn gradient_gap(a: &[Tensor], b: &[Tensor]) -> (f32, f32) {
    let (mut d, mut m) = (0f32, 0f32);
    for (a, b) in a.iter().zip(b) {
        let da = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        d = d.max(da.to_scalar::<f32>().unwrap());
        m = m.max(
            b.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
        );
    }
    (d, m)
}

#[test]
fn recomputed_activations_give_the_plain_gradients() {
    for method in [
        Method::Full,
        Method::Lora(LoraConfig {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: ALL_LINEAR.iter().map(|s| s.to_string()).collect(),
            init: None,
        }),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let c = TrainConfig {
            method: method.clone(),
            ..cfg(1e-3, 1)
        };
        let (mut trainer, sft) = load(c, dir.path());
        let examples: Vec<usize> = (0..8).collect();
        let (loss, _, plain) = trainer.accumulate(&sft, &examples, 0).unwrap();
        trainer.cfg.recompute = true;
        let (loss_r, _, recomputed) = trainer.accumulate(&sft, &examples, 0).unwrap();
        assert_eq!(plain.len(), recomputed.len());
        assert!(
            (loss - loss_r).abs() <= 1e-6 * loss.abs(),
            "{loss} vs {loss_r}"
        );
        let (d, m) = gradient_gap(&recomputed, &plain);
        assert!(m > 0.0, "no gradient at all");
        // The same ops on the same inputs; only the tied embedding's two gradients add in
        // another order.
        assert!(
            d <= 1e-5 * m,
            "{method:?}: gradients differ by {d} (largest {m})"
        );
        // Nothing is left recorded once the step is done: a plain step after it is plain.
        trainer.cfg.recompute = false;
        let (_, _, again) = trainer.accumulate(&sft, &examples, 0).unwrap();
        assert_eq!(gradient_gap(&again, &plain).0, 0.0);
    }
    // Dropout would draw other masks in the recomputed forward.
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        recompute: true,
        attention_dropout: 0.1,
        ..cfg(1e-3, 1)
    };
    let err = Trainer::load(&tiny_model(), c, dir.path()).err().unwrap();
    assert!(err.to_string().contains("--recompute needs"), "{err}");
}

#[test]
fn micro_batch_1x8_equals_8x1() {
    let run_with = |micro: usize, accum: usize| {
        let dir = tempfile::tempdir().unwrap();
        let c = TrainConfig {
            micro_batch: micro,
            grad_accum: accum,
            max_grad_norm: Some(1.0),
            ..cfg(3e-3, 3)
        };
        let (mut trainer, sft) = load(c, dir.path());
        let logs = run(&mut trainer, &sft).unwrap();
        let w = snapshot(&trainer.store.vars());
        (logs.iter().map(|l| l.loss).collect::<Vec<_>>(), w)
    };
    let (loss_a, w_a) = run_with(8, 1);
    let (loss_b, w_b) = run_with(1, 8);
    for (a, b) in loss_a.iter().zip(&loss_b) {
        assert!(
            (a - b).abs() / a.abs() < 1e-5,
            "losses {loss_a:?} vs {loss_b:?}"
        );
    }
    assert!(
        loss_a[2] < loss_a[0],
        "training lowers the loss: {loss_a:?}"
    );
    for (a, b) in w_a.iter().zip(&w_b) {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-4, "weights differ by {d} (lr 3e-3)");
    }
}

#[test]
fn tiny_model_overfits_a_tiny_set() {
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        micro_batch: 8,
        grad_accum: 1,
        max_grad_norm: Some(1.0),
        min_lr: 1e-3,
        ..cfg(1e-2, 80)
    };
    let (mut trainer, sft) = load(c, dir.path());
    let logs = run(&mut trainer, &sft).unwrap();
    let (first, last) = (logs[0].loss, logs.last().unwrap().loss);
    assert!(last < 0.1 * first, "loss {first} -> {last}");
}

#[test]
fn lora_trains_only_adapters_and_merges_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: ALL_LINEAR.iter().map(|s| s.to_string()).collect(),
        init: None,
    };
    let c = TrainConfig {
        method: Method::Lora(lora),
        ..cfg(2e-2, 3)
    };
    let (mut trainer, sft) = load(c, dir.path());
    let vars = trainer.store.vars();
    assert_eq!(
        vars.len(),
        2 * 7 * 2,
        "A and B for 7 projections in 2 layers"
    );
    assert!(vars.iter().all(|(n, _)| n.contains(".lora_")));
    let base_before = trainer.store.merged_state().unwrap();
    // The frozen base gets no gradient buffer: backprop stores gradients for adapters only.
    let norm = sft.normalizers(&[0, 1]);
    let out = sft
        .micro_batch(&trainer.engine.model, &[0, 1], &norm)
        .unwrap();
    let grads = out.loss.backward().unwrap();
    for (name, w) in trainer.store.base_weights() {
        assert!(grads.get(&w).is_none(), "{name} got a gradient buffer");
    }
    for (name, v) in &vars {
        assert!(grads.get(v.as_tensor()).is_some(), "{name} has no gradient");
    }
    drop(grads);
    let before = snapshot(&vars);
    run(&mut trainer, &sft).unwrap();
    for (((name, _), b), a) in vars.iter().zip(&before).zip(snapshot(&vars)) {
        assert!(b != &a, "{name} did not change");
    }
    // The merged checkpoint computes what the adapted model computes.
    let ids = Tensor::new(&[[5u32, 17, 33, 60, 2, 90, 11, 40]], &Device::Cpu).unwrap();
    let adapted = trainer.engine.model.forward(&ids).unwrap();
    let merged = srlm_engine::Engine::load(dir.path(), &srlm_engine::LoadOptions::dense()).unwrap();
    let got = merged.model.forward(&ids).unwrap();
    let err = srlm_engine::kernels::check::max_abs_diff(&adapted, &got).unwrap();
    assert!(err < 1e-4, "merged model differs by {err}");
    // ... and the base under the adapters never moved.
    let st = srlm_train::checkpoint::read_safetensors(
        &dir.path().join("adapter/adapter_model.safetensors"),
    )
    .unwrap();
    assert_eq!(st.len(), 28);
    let norm = &base_before["model.norm.weight"];
    let after = &trainer.store.merged_state().unwrap()["model.norm.weight"];
    assert_eq!(
        norm.to_vec1::<f32>().unwrap(),
        after.to_vec1::<f32>().unwrap()
    );
}

#[test]
fn a_non_finite_loss_stops_training_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let c = TrainConfig {
        save_every: 1,
        ..cfg(1e30, 6)
    };
    let (mut trainer, sft) = load(c, dir.path());
    let err = run(&mut trainer, &sft).unwrap_err();
    let TrainError::NonFiniteLoss { step, .. } = err else {
        panic!("expected a non-finite loss, got {err}");
    };
    assert!(step >= 2, "the first step starts from finite weights");
    assert!(err.to_string().contains("last checkpoint was kept"));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("resume/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"].as_u64().unwrap(), step - 1);
    assert!(
        !dir.path().join("config.json").exists(),
        "no final model from a failed run"
    );
}

#[derive(serde::Deserialize)]
struct TrlCase {
    loss: f64,
    #[serde(default)]
    metrics: std::collections::BTreeMap<String, f64>,
}

#[derive(serde::Deserialize)]
struct TrlFixture {
    pairs: usize,
    token_logps: Vec<Vec<f64>>,
    ref_chosen: Vec<f64>,
    ref_rejected: Vec<f64>,
    cases: std::collections::BTreeMap<String, TrlCase>,
}

#[test]
fn dpo_losses_and_metrics_equal_trl() {
    let f: TrlFixture =
        serde_json::from_str(&std::fs::read_to_string(goldens().join("dpo_trl.json")).unwrap())
            .unwrap();
    let m = f.pairs;
    let mut tok = Vec::new();
    let mut owner = Vec::new();
    for (s, row) in f.token_logps.iter().enumerate() {
        tok.extend(row.iter().map(|&x| x as f32));
        owner.extend(std::iter::repeat_n(s as u32, row.len()));
    }
    let chosen_targets: usize = f.token_logps[..m].iter().map(|r| r.len()).sum();
    let n = tok.len();
    let tok = Tensor::from_vec(tok, n, &Device::Cpu).unwrap();
    let reference: Vec<(f64, f64)> = f
        .ref_chosen
        .iter()
        .copied()
        .zip(f.ref_rejected.iter().copied())
        .collect();
    let norm = Normalizers {
        targets: 0.0,
        examples: m as f64,
        chosen_targets: chosen_targets as f64,
    };
    let cases = [
        ("sigmoid", DpoConfig::default()),
        (
            "ipo",
            DpoConfig {
                loss_type: DpoLossType::Ipo,
                ..DpoConfig::default()
            },
        ),
        (
            "sigmoid_rpo",
            DpoConfig {
                rpo_alpha: Some(0.5),
                ..DpoConfig::default()
            },
        ),
        (
            "cdpo",
            DpoConfig {
                label_smoothing: 0.2,
                ..DpoConfig::default()
            },
        ),
    ];
    for (name, c) in cases {
        let want = &f.cases[name];
        let out = pair_loss(&tok, &owner, &reference, &c, &norm).unwrap();
        let got = out.loss.to_scalar::<f32>().unwrap() as f64;
        assert!(
            (got - want.loss).abs() < 1e-5 * want.loss.abs().max(1.0),
            "{name}: loss {got} vs TRL {}",
            want.loss
        );
        for (k, w) in &want.metrics {
            let g = out.sums[k] / m as f64;
            assert!(
                (g - w).abs() < 1e-4 * w.abs().max(1.0),
                "{name}: {k} {g} vs TRL {w}"
            );
        }
        if name != "cdpo" {
            assert_eq!(want.metrics.len(), 6, "TRL logs rewards/* and logps/*");
        }
    }
}
