//! `srlm bench serve`: requests/s and tokens/s of `srlm serve` (or any OpenAI-compatible
//! server) at several numbers of concurrent clients. Each client sends chat completions one
//! after another; with more clients, more sequences share each decoding step.

use crate::model_args::ModelArgs;
use anyhow::{bail, Result};
use clap::Args;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchServeArgs {
    /// Measure a server already running at this base URL (e.g. http://localhost:8000/v1)
    /// instead of starting `srlm serve` on --model in this process.
    #[arg(long)]
    pub url: Option<String>,
    /// The model name to ask the server at --url for.
    #[arg(long, default_value = "srlm")]
    pub api_model: String,
    /// Concurrent clients, one level after another.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16")]
    pub clients: Vec<usize>,
    /// Requests each client sends at each level.
    #[arg(long, default_value_t = 4)]
    pub requests_per_client: usize,
    /// Completion tokens per request.
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// The started server's batch size.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    #[command(flatten)]
    pub model: ModelArgs,
}

const QUESTIONS: [&str; 8] = [
    "How do I keep basil alive indoors?",
    "Explain what a hash table is to a new programmer.",
    "Write a short note thanking a colleague for their help.",
    "What are three ways to save energy at home?",
    "Summarise the water cycle in a few sentences.",
    "Give me a simple recipe for tomato soup.",
    "Why is the sky blue?",
    "Suggest a name for a bakery and explain it.",
];

/// One request's latency and completion tokens.
fn one_request(
    agent: &ureq::Agent,
    url: &str,
    model: &str,
    i: usize,
    max_tokens: usize,
) -> Result<(Duration, usize)> {
    let body = json!({
        "model": model,
        "messages": [{"role": "user", "content": QUESTIONS[i % QUESTIONS.len()]}],
        "max_tokens": max_tokens,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": i,
    });
    let t = Instant::now();
    let mut resp = agent
        .post(format!("{url}/chat/completions"))
        .header("Content-Type", "application/json")
        .send(body.to_string())?;
    let text = resp.body_mut().read_to_string()?;
    let elapsed = t.elapsed();
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let Some(tokens) = v["usage"]["completion_tokens"].as_u64() else {
        bail!("reply without usage: {text}");
    };
    Ok((elapsed, tokens as usize))
}

pub fn run(a: BenchServeArgs) -> Result<()> {
    // Started here unless measuring another server; lives until the process ends.
    let (url, model) = match &a.url {
        Some(u) => (u.trim_end_matches('/').to_string(), a.api_model.clone()),
        None => {
            let engine = a.model.load()?;
            let opts = crate::serve::ServeOptions {
                name: "srlm".into(),
                batch_size: a.batch_size,
                default_max_tokens: a.max_tokens,
                api_key: None,
                adapters: None,
            };
            let (server, _http) = crate::serve::start(engine, "127.0.0.1:0", opts)?;
            (format!("http://{}/v1", server.addr), server.name)
        }
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(3600)))
        .build()
        .into();
    // One request first, so that start-up costs are not measured.
    one_request(&agent, &url, &model, 0, 4)?;
    println!(
        "{:>7} {:>8} {:>9} {:>10} {:>12} {:>12}",
        "clients", "requests", "req/s", "tok/s", "p50 latency", "p95 latency"
    );
    let mut rows = Vec::new();
    for &clients in &a.clients {
        let clients = clients.max(1);
        let t = Instant::now();
        let results: Vec<Result<(Duration, usize)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let (agent, url, model) = (&agent, &url, &model);
                    s.spawn(move || {
                        (0..a.requests_per_client)
                            .map(|r| one_request(agent, url, model, c * 1000 + r, a.max_tokens))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("client thread"))
                .collect()
        });
        let secs = t.elapsed().as_secs_f64();
        let done: Vec<(Duration, usize)> = results.into_iter().collect::<Result<_>>()?;
        let tokens: usize = done.iter().map(|d| d.1).sum();
        let mut lat: Vec<f64> = done.iter().map(|d| d.0.as_secs_f64()).collect();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        let row = json!({
            "clients": clients,
            "requests": done.len(),
            "seconds": secs,
            "requests_per_s": done.len() as f64 / secs,
            "completion_tokens_per_s": tokens as f64 / secs,
            "latency_p50_s": pct(0.5),
            "latency_p95_s": pct(0.95),
        });
        println!(
            "{clients:>7} {:>8} {:>9.2} {:>10.1} {:>11.2}s {:>11.2}s",
            done.len(),
            done.len() as f64 / secs,
            tokens as f64 / secs,
            pct(0.5),
            pct(0.95)
        );
        rows.push(row);
    }
    println!(
        "{}",
        json!({"url": url, "max_tokens": a.max_tokens, "threads": candle_core::utils::get_num_threads(), "levels": rows})
    );
    Ok(())
}
