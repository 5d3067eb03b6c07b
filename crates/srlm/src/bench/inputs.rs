//! `srlm bench inputs`: how long `srlm run` takes to check a model folder it has seen before
//! (the fingerprint of `pipeline/input_hash.rs`) against hashing it in full.

use crate::pipeline::input_hash::{full_hash, InputHashes};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct BenchInputsArgs {
    /// A model folder (config.json, *.safetensors) or a large file, as a stage's input.
    #[arg(long)]
    pub path: PathBuf,
    /// Repetitions of each measurement; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
}

pub fn run(a: BenchInputsArgs) -> Result<()> {
    if !a.path.exists() {
        bail!("{}: no such file or folder", a.path.display());
    }
    let bytes: u64 = if a.path.is_dir() {
        std::fs::read_dir(&a.path)?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    } else {
        std::fs::metadata(&a.path)?.len()
    };
    let cache = std::env::temp_dir().join(format!("srlm-bench-inputs-{}.json", std::process::id()));
    let best = |f: &mut dyn FnMut() -> Result<String>| -> Result<(f64, String)> {
        let mut best = f64::INFINITY;
        let mut out = String::new();
        for _ in 0..a.repeat.max(1) {
            let t = Instant::now();
            out = f()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok((best, out))
    };
    // Every stage's check before the cache: the whole model read and hashed.
    let (full, h) = best(&mut || full_hash(&a.path))?;
    // The first run that meets the model: the same, plus the fingerprint, kept.
    let t = Instant::now();
    let first = InputHashes::open(&cache).hash(&a.path)?;
    let first_s = t.elapsed().as_secs_f64();
    // Every later run (a new process: nothing in memory but the kept file).
    let (later, again) = best(&mut || InputHashes::open(&cache).hash(&a.path))?;
    let _ = std::fs::remove_file(&cache);
    if first != h || again != h {
        bail!("the kept hash differs from the full one: {again} vs {h}");
    }
    println!("input: {} ({:.2} GB)", a.path.display(), bytes as f64 / 1e9);
    println!(
        "full SHA-256 (each stage, before):   {:>10.3} s  ({:.2} GB/s, best of {})",
        full,
        bytes as f64 / 1e9 / full,
        a.repeat.max(1)
    );
    println!("first run (hash + fingerprint kept): {first_s:>10.3} s");
    println!(
        "later runs (fingerprint matches):    {:>10.1} us ({:.0}x faster)",
        later * 1e6,
        full / later
    );
    Ok(())
}
