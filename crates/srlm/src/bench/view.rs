//! `srlm bench view`: how long the run browser takes on a large run. It writes a run directory
//! of `--prompts` prompts x `--candidates` x `--judgements` (generated text; the records and
//! the pairs stage's files are real, made by the same code a run uses), times reading it and
//! building the page, then, where Chromium and ChromeDriver are installed, times `srlm view` in
//! a headless browser: until the overview's charts are drawn, and until the prompt table shows
//! its first page.

use super::browser::Browser;
use crate::pipeline::config::RunConfig;
use crate::pipeline::layout::{Layout, PlanFile};
use anyhow::{anyhow, Context, Result};
use clap::Args;
use srlm_core::diagnostics::diagnose;
use srlm_core::jsonl::write_jsonl_atomic;
use srlm_core::judge::{JudgeSample, ScoreDistribution, ScoreMode};
use srlm_core::pairs::{build_pairs, PairOptions};
use srlm_core::stages::{CandidateRecord, JudgementRecord, PromptRecord};
use srlm_core::summaries::{to_pretty_json, Manifest, StageEntry};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct BenchViewArgs {
    #[arg(long, default_value_t = 10_000)]
    pub prompts: usize,
    #[arg(long, default_value_t = 4)]
    pub candidates: usize,
    #[arg(long, default_value_t = 3)]
    pub judgements: usize,
    /// Write the generated run here and keep it (default: a temporary directory, removed).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

const WORDS: &[&str] = &[
    "the", "model", "answer", "explains", "a", "clear", "list", "of", "steps", "and", "then",
    "gives", "an", "example", "with", "code", "about", "history", "science", "cooking", "travel",
];

/// A small deterministic generator (splitmix64): the fixture is the same on every machine.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn text(&mut self, words: usize) -> String {
        (0..words)
            .map(|_| WORDS[self.below(WORDS.len())])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Writes a finished one-iteration run of `prompts` x `n` candidates x `k` judgements into
/// `dir`: config, plan, manifest, the iteration's files and its pairs and diagnostics.
pub fn write_fixture(dir: &Path, prompts: usize, n: usize, k: usize) -> Result<()> {
    let layout = Layout::new(dir);
    let files = layout.iteration(1);
    std::fs::create_dir_all(files.prompts.parent().unwrap())?;
    let mut cfg = RunConfig::default();
    cfg.iterations = 1;
    cfg.prompts.count = prompts;
    cfg.sample.n = n;
    cfg.judge.k = k;
    std::fs::write(layout.config(), toml::to_string_pretty(&cfg)?)?;
    let mut rng = Rng(0x5EED);
    let (mut ps, mut cs, mut js) = (Vec::new(), Vec::new(), Vec::new());
    for p in 0..prompts {
        let id = format!("it1-{p}");
        let len = 6 + rng.below(20);
        let prompt = rng.text(len);
        ps.push(PromptRecord {
            id: id.clone(),
            prompt: prompt.clone(),
        });
        for c in 0..n {
            let len = 20 + rng.below(120);
            cs.push(CandidateRecord {
                id: format!("{id}/{c}"),
                prompt_id: id.clone(),
                prompt: prompt.clone(),
                candidate: c,
                response: rng.text(len),
                finish_reason: Some("eos".into()),
            });
            for s in 0..k {
                let score = rng.below(6);
                let mut probs = [0.02; 6];
                probs[score] = 0.9;
                let expected = probs.iter().enumerate().map(|(i, p)| i as f64 * p).sum();
                let len = 8 + rng.below(20);
                let raw = format!("{}.\nScore: {score}", rng.text(len));
                js.push(JudgementRecord {
                    id: format!("{id}/{c}/{s}"),
                    candidate_id: format!("{id}/{c}"),
                    prompt_id: id.clone(),
                    sample: s,
                    judgement: JudgeSample {
                        score: Some(score as f64),
                        distribution: Some(ScoreDistribution {
                            probs,
                            mass: 1.0,
                            expected,
                        }),
                        ..JudgeSample::parse(&raw)
                    },
                });
            }
        }
    }
    let opts = PairOptions {
        length_control: Some(0.25),
        score_mode: ScoreMode::Expected,
        ..PairOptions::default()
    };
    let (pairs, stats) = build_pairs(&cs, &js, &opts);
    let diag = diagnose(&cs, &js, &pairs, &stats, ScoreMode::Expected);
    write_jsonl_atomic(&files.prompts, &ps)?;
    write_jsonl_atomic(&files.candidates, &cs)?;
    write_jsonl_atomic(&files.judgements, &js)?;
    write_jsonl_atomic(&files.pairs, &pairs)?;
    std::fs::write(&files.diagnostics, to_pretty_json(&diag)?)?;
    let names = ["prompts 1", "sample 1", "judge 1", "pairs 1"];
    let plan = PlanFile {
        stages: names.iter().map(|s| s.to_string()).collect(),
    };
    std::fs::write(layout.plan(), to_pretty_json(&plan)?)?;
    let mut manifest = Manifest {
        schema_version: 1,
        ..Manifest::default()
    };
    for (i, name) in names.iter().enumerate() {
        manifest.stages.insert(
            name.to_string(),
            StageEntry {
                command: vec![name.split(' ').next().unwrap().to_string()],
                inputs: Default::default(),
                outputs: Vec::new(),
                seconds: 10.0 * (i + 1) as f64,
                peak_rss_mib: Some(100.0 * (i + 1) as f64),
                stats: None,
                server: None,
            },
        );
    }
    std::fs::write(layout.manifest(), to_pretty_json(&manifest)?)?;
    Ok(())
}

pub fn run(a: BenchViewArgs) -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("srlm-bench-view-{}", std::process::id()));
    let dir = a.dir.clone().unwrap_or_else(|| tmp.join("run"));
    let out = measure(&a, &dir);
    if a.dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    out
}

fn measure(a: &BenchViewArgs, dir: &Path) -> Result<()> {
    let t = Instant::now();
    write_fixture(dir, a.prompts, a.candidates, a.judgements)?;
    println!(
        "fixture: {} prompts x {} candidates x {} judgements in {} ({:.1} s to write)",
        a.prompts,
        a.candidates,
        a.judgements,
        dir.display(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let snap = crate::view::snapshot::Snapshot::read(dir);
    let read = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let site = crate::view::site::build(&[snap], "server");
    let build = t.elapsed().as_secs_f64();
    let bytes: usize = site.values().map(Vec::len).sum();
    println!(
        "read the run: {read:.3} s; build the page: {build:.3} s; data.js {:.1} MB, {} files, {:.1} MB in all",
        site["data.js"].len() as f64 / 1e6,
        site.len(),
        bytes as f64 / 1e6
    );

    let browser = match Browser::start(1400, 1000) {
        Ok(b) => b,
        Err(why) => {
            println!("browser: skipped ({why})");
            return Ok(());
        }
    };
    let started = Instant::now();
    let mut view = Command::new(std::env::current_exe()?)
        .args(["view", &dir.display().to_string(), "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(view.stdout.take().unwrap()).read_line(&mut line)?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .ok_or_else(|| anyhow!("srlm view printed no URL: {line:?}"))?
        .to_string();
    let ready = started.elapsed().as_secs_f64();
    let result = (|| -> Result<(f64, f64, u64, f64)> {
        let limit = Duration::from_secs(120);
        let t = Instant::now();
        browser.goto(&url).map_err(|e| anyhow!(e))?;
        browser
            .wait_for(
                "return document.querySelectorAll('.chart svg').length",
                limit,
            )
            .map_err(|e| anyhow!(e))?;
        let overview = t.elapsed().as_secs_f64();
        let t = Instant::now();
        browser
            .eval("location.hash = '#prompts'", serde_json::json!([]))
            .map_err(|e| anyhow!(e))?;
        let rows = browser
            .wait_for(
                "return document.querySelectorAll('#prompt-table tbody tr').length",
                limit,
            )
            .map_err(|e| anyhow!(e))?
            .as_u64()
            .unwrap_or(0);
        let table = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let last = format!("it1-{}", a.prompts.saturating_sub(1));
        browser
            .type_into("#search", &last)
            .map_err(|e| anyhow!(e))?;
        browser
            .wait_for(
                "return document.querySelector('#count').textContent.startsWith('1 of')",
                limit,
            )
            .map_err(|e| anyhow!(e))?;
        Ok((overview, table, rows, t.elapsed().as_secs_f64()))
    })();
    let _ = view.kill();
    let _ = view.wait();
    let (overview, table, rows, search) = result.context("the page in the browser")?;
    println!(
        "browser (headless Chromium, srlm view): the server ready {ready:.2} s after start; overview with charts {overview:.2} s after navigation ({:.2} s from start); prompt table (first {rows} rows of {}) {table:.2} s more; a search over all prompts {search:.2} s",
        ready + overview,
        a.prompts
    );
    Ok(())
}
