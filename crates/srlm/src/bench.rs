//! `srlm bench`: throughput and memory, measured the way llama.cpp's llama-bench reports them
//! (prefill of a long prompt; decode of new tokens at batch 1 and across many sequences).

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
    }
}

/// Peak resident memory of this process, in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
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
            let prompts: Vec<Vec<u32>> = (0..n).map(|i| prompt[i..i + 16].to_vec()).collect();
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
    let peak = peak_rss_mib().unwrap_or(f64::NAN);

    println!("model        {}", engine.path.display());
    println!("weights      {:?}, {threads} threads", a.model.weights);
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
        "bench": "generate", "model": engine.path.display().to_string(), "weights": format!("{:?}", a.model.weights),
        "threads": threads, "prompt_tokens": a.prompt_tokens, "decode_tokens": a.decode_tokens, "sequences": a.sequences,
        "prefill_tok_s": prefill, "decode_b1_tok_s": decode_1, "decode_total_tok_s": decode_n, "peak_rss_mib": peak,
    });
    println!("{json}");
    Ok(())
}
