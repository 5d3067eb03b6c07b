//! `srlm bench`: throughput and memory, measured the way llama.cpp's llama-bench reports them
//! (prefill of a long prompt; decode of new tokens at batch 1 and across many sequences).

pub mod browser;
pub mod inputs;
pub mod serve;
pub mod view;

use crate::model_args::ModelArgs;
use anyhow::Result;
use clap::{Args, Subcommand};
use srlm_engine::llama::KvCache;
use srlm_engine::sampling::argmax;
use std::time::Instant;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Prefill tok/s, decode tok/s at batch 1 and in total across many sequences, peak memory.
    Generate(BenchGenerateArgs),
    /// Tokens/s and peak memory of full fine-tuning steps (SFT and DPO), phase by phase.
    Train(BenchTrainArgs),
    /// Judgements per minute (N candidates per prompt, k judgements each), with and without
    /// reuse of the shared prompt prefixes' keys and values.
    Judge(BenchJudgeArgs),
    /// Requests/s and tokens/s of `srlm serve` (or another OpenAI-compatible server) at 1, 4
    /// and 16 concurrent clients.
    Serve(crate::bench::serve::BenchServeArgs),
    /// GFLOP/s of the matmuls training runs (SmolLM2-135M's shapes), candle's f32 GEMM beside
    /// srlm's bf16 one.
    Gemm(BenchGemmArgs),
    /// How long a run takes to check a large input it has hashed before (fingerprint) against
    /// hashing it in full.
    Inputs(crate::bench::inputs::BenchInputsArgs),
    /// The run browser on a generated run (10,000 prompts by default): reading it, building
    /// the page, and, with Chromium installed, opening it in a headless browser.
    View(crate::bench::view::BenchViewArgs),
}

#[derive(Args, Debug)]
pub struct BenchJudgeArgs {
    /// Prompts judged.
    #[arg(long, default_value_t = 4)]
    pub prompts: usize,
    /// Candidates per prompt.
    #[arg(long, default_value_t = 4)]
    pub n: usize,
    /// Judgements per candidate.
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// New tokens per judgement (each runs to this length, so both settings decode the same).
    #[arg(long, default_value_t = 48)]
    pub max_new_tokens: usize,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Args, Debug)]
pub struct BenchGemmArgs {
    /// Rows of the activations (tokens in a micro-batch).
    #[arg(long, default_value_t = 1024)]
    pub tokens: usize,
    /// Repetitions of each product; the best is reported.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
}

#[derive(Args, Debug)]
pub struct BenchTrainArgs {
    /// A GGUF file or Hugging Face folder (default: SmolLM2-135M-Instruct).
    #[arg(long, env = "SRLM_MODEL")]
    pub model: Option<std::path::PathBuf>,
    /// Sequences per step (DPO: pairs x 2).
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Measured steps after one warm-up step; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub steps: usize,
    /// Train LoRA adapters of this rank instead of every weight (0: full fine-tuning).
    #[arg(long, default_value_t = 0)]
    pub lora_rank: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The training matmuls' arithmetic: `auto` (bf16 where its kernel beats the f32 GEMM on
    /// this CPU: AMX, or AVX512-BF16 on AMD), `f32`, `bf16`.
    #[arg(long, default_value = "auto")]
    pub precision: srlm_train::trainer::Precision,
    /// Recompute each block's activations in the backward instead of keeping them (the
    /// training setting `recompute`).
    #[arg(long)]
    pub recompute: bool,
}

#[derive(Args, Debug)]
pub struct BenchGenerateArgs {
    /// Prompt length for the prefill figure.
    #[arg(long, default_value_t = 512)]
    pub prompt_tokens: usize,
    /// New tokens per sequence for the decode figures.
    #[arg(long, default_value_t = 128)]
    pub decode_tokens: usize,
    /// Sequences decoded together for the batched figure.
    #[arg(long, default_value_t = 16)]
    pub sequences: usize,
    /// Repetitions of each measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Generate(a) => bench_generate(a),
        BenchCommand::Train(a) => bench_train(a),
        BenchCommand::Gemm(a) => bench_gemm(a),
        BenchCommand::Judge(a) => bench_judge(a),
        BenchCommand::Serve(a) => crate::bench::serve::run(a),
        BenchCommand::Inputs(a) => crate::bench::inputs::run(a),
        BenchCommand::View(a) => crate::bench::view::run(a),
    }
}

/// The CPU's model name (Linux `/proc/cpuinfo`) and the instruction sets srlm's kernels may use
/// on it, printed with every speed figure: a figure from one CPU says nothing about another.
pub fn cpu_line() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!(
        "{model}; {}",
        srlm_engine::cpu::CpuFeatures::get().describe()
    )
}

fn bench_generate(a: BenchGenerateArgs) -> Result<()> {
    let engine = a.model.load()?;
    let model = &engine.model;
    let vocab = model.config().vocab_size as u32;
    // Deterministic, text-like token ids: a real paragraph's tokens, repeated.
    let text = "The self-rewarding loop writes new prompts, samples four answers per prompt, judges each answer three times and trains on the best and worst. ";
    let base = engine
        .tokenizer
        .encode(&text.repeat(1 + a.prompt_tokens / 20))?;
    let prompt: Vec<u32> = base
        .iter()
        .copied()
        .cycle()
        .take(a.prompt_tokens)
        .map(|t| t % vocab)
        .collect();
    let threads = candle_core::utils::get_num_threads();

    // Prefill: one long prompt through a fresh cache.
    let mut best_prefill = f64::INFINITY;
    for _ in 0..a.repeat.max(1) {
        let mut cache = KvCache::new();
        let t = Instant::now();
        model.forward_segments(&[&prompt], &mut [&mut cache])?;
        best_prefill = best_prefill.min(t.elapsed().as_secs_f64());
    }
    let prefill = a.prompt_tokens as f64 / best_prefill;

    // Decode: `n` sequences with short distinct prompts, then `decode_tokens` greedy steps.
    let decode = |n: usize| -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..a.repeat.max(1) {
            let mut caches: Vec<KvCache> = (0..n).map(|_| KvCache::new()).collect();
            let prompts: Vec<Vec<u32>> = (0..n)
                .map(|i| {
                    base.iter()
                        .cycle()
                        .skip(i)
                        .take(16)
                        .map(|t| t % vocab)
                        .collect()
                })
                .collect();
            let refs: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
            let mut cache_refs: Vec<&mut KvCache> = caches.iter_mut().collect();
            let mut logits = model.forward_segments(&refs, &mut cache_refs)?;
            let t = Instant::now();
            for _ in 0..a.decode_tokens {
                let rows: Vec<Vec<f32>> = logits.to_vec2()?;
                let next: Vec<[u32; 1]> = rows.iter().map(|r| [argmax(r)]).collect();
                let refs: Vec<&[u32]> = next.iter().map(|x| x.as_slice()).collect();
                let mut cache_refs: Vec<&mut KvCache> = caches.iter_mut().collect();
                logits = model.forward_segments(&refs, &mut cache_refs)?;
            }
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok((n * a.decode_tokens) as f64 / best)
    };
    let decode_1 = decode(1)?;
    let decode_n = decode(a.sequences)?;
    let peak = crate::memory::peak_rss_mib().unwrap_or(f64::NAN);
    let qkernel = srlm_engine::qmatmul::QKernel::chosen().name();

    println!("cpu          {}", cpu_line());
    println!("model        {}", engine.path.display());
    println!("weights      {:?}, {threads} threads", a.model.weights);
    println!("kernels      quantized matmul {}", qkernel);
    println!(
        "prefill      {prefill:8.1} tok/s  ({} tokens)",
        a.prompt_tokens
    );
    println!(
        "decode b=1   {decode_1:8.1} tok/s  ({} tokens)",
        a.decode_tokens
    );
    println!(
        "decode b={:<3} {decode_n:8.1} tok/s  total ({} tokens each)",
        a.sequences, a.decode_tokens
    );
    println!("peak memory  {peak:8.1} MiB");
    let json = serde_json::json!({
        "bench": "generate", "cpu": cpu_line(), "model": engine.path.display().to_string(), "weights": format!("{:?}", a.model.weights),
        "quantized_matmul": qkernel, "threads": threads, "prompt_tokens": a.prompt_tokens, "decode_tokens": a.decode_tokens, "sequences": a.sequences,
        "prefill_tok_s": prefill, "decode_b1_tok_s": decode_1, "decode_total_tok_s": decode_n, "peak_rss_mib": peak,
    });
    println!("{json}");
    Ok(())
}

fn bench_gemm(a: BenchGemmArgs) -> Result<()> {
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let t = a.tokens;
    println!("cpu          {}", cpu_line());
    println!("threads      {}", candle_core::utils::get_num_threads());
    // (name, m, n, k): forward x·Wᵀ, backward dx = g·W and dW = gᵀ·x, for SmolLM2-135M's
    // projections (576 -> 576, 576 -> 1536, 1536 -> 576) and the head (576 -> 49152): over 256
    // rows (a chunk of the head's recomputed logits), and over the micro-batch's tokens as
    // training computes it, forward and dx.
    let shapes = [
        ("fwd 576x576", t, 576, 576, true),
        ("fwd 576x1536", t, 1536, 576, true),
        ("fwd 1536x576", t, 576, 1536, true),
        ("dW 1536x576", 1536, 576, t, false),
        ("head fwd", 256, 49152, 576, true),
        ("head fwd all", t, 49152, 576, true),
        ("head dx", t, 576, 49152, false),
    ];
    let mut rows = Vec::new();
    for (name, m, n, k, b_transposed) in shapes {
        let x = Tensor::randn(0f32, 1.0, (m, k), &dev)?;
        // The weight side as training meets it: Wᵀ (a transposed view) or a plain (k, n).
        let w = match b_transposed {
            true => Tensor::randn(0f32, 1.0, (n, k), &dev)?.t()?,
            false => Tensor::randn(0f32, 1.0, (k, n), &dev)?,
        };
        let time = |f: &dyn Fn() -> candle_core::Result<Tensor>| -> Result<f64> {
            f()?;
            let mut best = f64::INFINITY;
            for _ in 0..a.repeat.max(1) {
                let t0 = Instant::now();
                f()?;
                best = best.min(t0.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let flops = 2.0 * (m * n * k) as f64;
        let f32_s = time(&|| x.matmul(&w))?;
        let gf = |s: f64| flops / s / 1e9;
        // Each bf16 kernel the CPU has, beside candle's f32 GEMM on the same operands.
        let mut line = format!(
            "{name:<14} ({m} x {k}) x ({k} x {n}): f32 {:7.1} GFLOP/s",
            gf(f32_s)
        );
        let mut kernels = serde_json::Map::new();
        for kernel in srlm_engine::gemm_bf16::Kernel::simd_here() {
            let s = time(&|| srlm_engine::gemm_bf16::matmul_with(kernel, &x, &w))?;
            line.push_str(&format!(
                "   {} {:7.1} ({:.2}x)",
                kernel.name(),
                gf(s),
                f32_s / s
            ));
            kernels.insert(kernel.name().into(), gf(s).into());
        }
        if kernels.is_empty() {
            line.push_str("   (no bf16 kernel on this CPU)");
        }
        println!("{line}");
        rows.push(serde_json::json!({"shape": name, "m": m, "n": n, "k": k, "f32_gflops": gf(f32_s), "bf16_gflops": kernels}));
    }
    println!(
        "{}",
        serde_json::json!({"bench": "gemm", "cpu": cpu_line(), "shapes": rows})
    );
    Ok(())
}

/// Seconds of each phase of one optimizer step.
#[derive(Debug, Clone, Copy)]
struct StepTimes {
    forward: f64,
    backward: f64,
    optimizer: f64,
}

impl StepTimes {
    fn total(&self) -> f64 {
        self.forward + self.backward + self.optimizer
    }
}

fn bench_train(a: BenchTrainArgs) -> Result<()> {
    use srlm_train::data::Sequence;
    use srlm_train::dpo::Dpo;
    use srlm_train::loss::DpoConfig;
    use srlm_train::optim::{clip_factor, global_norm, AdamW};
    use srlm_train::sft::Sft;
    use srlm_train::trainer::{Objective, Trainer};

    if let Some(t) = a.threads {
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let path = match &a.model {
        Some(p) => p.clone(),
        None => srlm_engine::fetch::default_model()?,
    };
    // The SFT stage's settings, with the benchmark's shape.
    let cfg = crate::train_settings::TrainSettings {
        lora_rank: a.lora_rank,
        max_len: a.seq_len + 1,
        micro_batch: a.batch,
        grad_accum: 1,
        recompute: a.recompute,
        ..crate::train_settings::TrainSettings::sft()
    }
    .config(42);
    let out = tempfile_dir()?;
    let trainer = Trainer::load(&path, cfg.clone(), &out)?;
    let vocab = trainer.engine.model.config().vocab_size as u32;
    // Text-like ids: a real paragraph's tokens, repeated; every position is a target.
    let text = "The self-rewarding loop writes new prompts, samples four answers per prompt, judges each answer three times and trains on the best and worst. ";
    let base = trainer
        .engine
        .tokenizer
        .encode(&text.repeat(1 + a.seq_len / 20))?;
    let seq = |offset: usize| Sequence {
        ids: base
            .iter()
            .copied()
            .cycle()
            .skip(offset)
            .take(a.seq_len)
            .map(|t| t % vocab)
            .collect(),
        train: vec![true; a.seq_len],
    };
    let sft = Sft {
        sequences: (0..a.batch).map(seq).collect(),
        pad_id: 0,
    };
    let pairs = (0..a.batch / 2)
        .map(|i| srlm_train::data::PairSequences {
            chosen: seq(2 * i),
            rejected: seq(2 * i + 1),
            ref_logps: None,
        })
        .collect::<Vec<_>>();
    let dpo = Dpo {
        reference: vec![(-500.0, -510.0); pairs.len()],
        pairs,
        cfg: DpoConfig::default(),
        pad_id: 0,
    };

    let bf16 = a.precision.bf16_here()?;
    let _autocast = srlm_engine::gemm_bf16::autocast(bf16);
    let vars = trainer.store.vars();
    let mut opt = AdamW::new(vars.clone(), cfg.adamw);
    let mut step = |obj: &dyn Objective| -> Result<StepTimes> {
        let examples: Vec<usize> = (0..obj.len()).collect();
        let norm = obj.normalizers(&examples);
        let t0 = Instant::now();
        let model = &trainer.engine.model;
        model.set_recompute(cfg.recompute);
        let out = obj.micro_batch(model, &examples, &norm)?;
        let _ = out.loss.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let mut g = out.loss.backward()?;
        model.backward_recomputed(&mut g)?;
        model.set_recompute(false);
        let grads = vars
            .iter()
            .map(|(_, v)| {
                g.get(v.as_tensor())
                    .cloned()
                    .map_or_else(|| v.as_tensor().zeros_like(), Ok)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        drop(g);
        let t2 = Instant::now();
        let refs: Vec<&candle_core::Tensor> = grads.iter().collect();
        let n = global_norm(&refs)?;
        opt.step(&grads, 1e-6, clip_factor(n, Some(1.0)))?;
        let t3 = Instant::now();
        Ok(StepTimes {
            forward: (t1 - t0).as_secs_f64(),
            backward: (t2 - t1).as_secs_f64(),
            optimizer: (t3 - t2).as_secs_f64(),
        })
    };
    let mut measure = |obj: &dyn Objective| -> Result<StepTimes> {
        step(obj)?; // warm-up: allocations, thread pools
        let mut best: Option<StepTimes> = None;
        for _ in 0..a.steps.max(1) {
            let t = step(obj)?;
            if best.is_none_or(|b| t.total() < b.total()) {
                best = Some(t);
            }
        }
        Ok(best.expect("at least one step"))
    };
    let s = measure(&sft)?;
    let d = if a.batch >= 2 {
        Some(measure(&dpo)?)
    } else {
        None
    };
    let peak = crate::memory::peak_rss_mib().unwrap_or(f64::NAN);
    let tokens = (a.batch * a.seq_len) as f64;
    let threads = candle_core::utils::get_num_threads();
    println!("cpu          {}", cpu_line());
    println!("model        {}", trainer.engine.path.display());
    println!(
        "setup        {}{}, {} matmuls, {} trainable parameters, batch {} x {} tokens, {threads} threads",
        if a.lora_rank > 0 {
            format!("LoRA r={}", a.lora_rank)
        } else {
            "full fine-tuning".into()
        },
        if a.recompute { ", activations recomputed" } else { "" },
        if bf16 { "bf16" } else { "f32" },
        trainer.store.trainable_count(),
        a.batch,
        a.seq_len
    );
    let line = |name: &str, t: &StepTimes| {
        println!(
            "{name:<12} {:8.1} tok/s  (forward {:.2} s, backward {:.2} s, optimizer {:.2} s)",
            tokens / t.total(),
            t.forward,
            t.backward,
            t.optimizer
        )
    };
    line("sft step", &s);
    if let Some(d) = &d {
        line("dpo step", d);
    }
    println!("peak memory  {peak:8.1} MiB");
    let json = serde_json::json!({
        "bench": "train", "cpu": cpu_line(), "precision": if bf16 { "bf16" } else { "f32" }, "model": trainer.engine.path.display().to_string(), "threads": threads,
        "lora_rank": a.lora_rank, "recompute": a.recompute, "batch": a.batch, "seq_len": a.seq_len,
        "sft_tok_s": tokens / s.total(), "sft_forward_s": s.forward, "sft_backward_s": s.backward, "sft_optimizer_s": s.optimizer,
        "dpo_tok_s": d.map(|d| tokens / d.total()), "peak_rss_mib": peak,
    });
    println!("{json}");
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}

/// A scratch output folder for the trainer (the benchmark writes nothing into it).
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("srlm-bench-train-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Questions and an answer to cut into candidates of different lengths, for `bench judge`.
const BENCH_QUESTIONS: [&str; 4] = [
    "How do I keep basil alive on a windowsill?",
    "Explain what a hash map is to a new programmer.",
    "Write a short note asking a neighbour to turn their music down after 10pm.",
    "What are the pros and cons of working from home?",
];
const BENCH_ANSWER: &str = "Start with the basics. Give it plenty of light, at least six hours a day, and water it when the top of the soil feels dry rather than on a fixed schedule. Pinch off the top leaves regularly so it grows bushy instead of tall, and remove flower buds as soon as they appear. Use a pot with drainage holes, feed it lightly every few weeks, and keep it away from cold drafts. If the leaves turn yellow, you are probably overwatering; if they droop, it needs water or more light.";

fn bench_judge(a: BenchJudgeArgs) -> Result<()> {
    use srlm_core::judge::judge_prompt;
    use srlm_engine::generate::{Generator, Request};
    use srlm_engine::sampling::SamplingParams;
    let engine = a.model.load()?;
    let words: Vec<&str> = BENCH_ANSWER.split(' ').collect();
    let mut requests = Vec::new();
    for p in 0..a.prompts {
        let question = BENCH_QUESTIONS[p % BENCH_QUESTIONS.len()];
        for c in 0..a.n {
            // Candidates of different lengths, as N samples of one prompt are.
            let take = words.len() * (c + 1) / a.n.max(1);
            let answer = words[..take.max(1)].join(" ");
            let ids = engine.encode_prompt(&srlm_core::generation::PromptInput::Chat(vec![
                srlm_core::generation::Message::new("user", &judge_prompt(question, &answer)),
            ]))?;
            for k in 0..a.k {
                requests.push(Request {
                    id: format!("{p}/{c}/{k}"),
                    prompt_ids: ids.clone(),
                    params: SamplingParams {
                        temperature: 0.7,
                        top_p: 0.9,
                        max_new_tokens: a.max_new_tokens,
                        seed: (p * 1000 + c * 10 + k) as u64,
                        ..Default::default()
                    },
                });
            }
        }
    }
    // Judgements run to max_new_tokens: no EOS, so both settings decode the same tokens.
    let mut tokenizer = engine.tokenizer.clone();
    tokenizer.eos_ids.clear();
    let judgements = requests.len();
    let threads = candle_core::utils::get_num_threads();
    let mut per_minute = Vec::new();
    for reuse in [false, true] {
        let mut gen = Generator::new(&engine.model, &tokenizer);
        gen.max_batch = a.batch_size.max(1);
        gen.prefix_reuse = reuse;
        let t = Instant::now();
        let stats = gen.run(requests.clone(), |_| Ok(()))?;
        let secs = t.elapsed().as_secs_f64();
        let rate = judgements as f64 * 60.0 / secs;
        per_minute.push(rate);
        println!(
            "prefix reuse {:>3}: {judgements} judgements in {secs:.1} s = {rate:.1} judgements/min; prompt tokens {} of which reused {} ({:.0}%), {} generated",
            if reuse { "on" } else { "off" },
            stats.prompt_tokens,
            stats.reused_tokens,
            100.0 * stats.reused_tokens as f64 / stats.prompt_tokens.max(1) as f64,
            stats.generated_tokens,
        );
    }
    println!(
        "speed-up from prefix reuse: {:.2}x ({} prompts x {} candidates x {} judgements, {} threads, peak {:.0} MiB)",
        per_minute[1] / per_minute[0],
        a.prompts,
        a.n,
        a.k,
        threads,
        crate::memory::peak_rss_mib().unwrap_or(f64::NAN)
    );
    Ok(())
}
