//! The tiny end-to-end run (`tests/fixtures/tiny_run.toml`) as the run tests drive and compare
//! it: its config filled in, `srlm run` on it, and its artifacts read for comparison.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The fixture run config (`tests/fixtures/tiny_run.toml`, shared with
/// `scripts/compare_runs.sh`) with its model and seed files filled in.
pub fn config(model: &Path) -> String {
    let f = fixtures();
    std::fs::read_to_string(f.join("tiny_run.toml"))
        .unwrap()
        .replace("@MODEL@", &model.display().to_string())
        .replace(
            "@IFT@",
            &f.join("tiny_seed_ift.jsonl").display().to_string(),
        )
        .replace(
            "@EFT@",
            &f.join("tiny_seed_eft.jsonl").display().to_string(),
        )
}

/// `srlm run` to its end (crashing itself after `crash`, `SRLM_CRASH_AFTER`'s form, if given).
pub fn srlm_run(cfg: &Path, out: &Path, crash: Option<&str>) -> Output {
    let mut c = spawn_run(cfg, out);
    if let Some(spec) = crash {
        c.env("SRLM_CRASH_AFTER", spec);
    }
    c.stdout(Stdio::piped()).output().unwrap()
}

/// `srlm run` started, its stderr piped for the caller to follow (stdout discarded).
pub fn spawn_run(cfg: &Path, out: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_srlm"));
    c.args([
        "run",
        "--config",
        &cfg.display().to_string(),
        "--out",
        &out.display().to_string(),
    ])
    .env_remove("SRLM_CRASH_AFTER")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

/// The run's `manifest.json`.
pub fn manifest(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("manifest.json")).unwrap()).unwrap()
}

/// The processes whose environment marks them as started for `run` (what srlm sets on every
/// server and trainer it starts), zombies left out.
pub fn marked(run: &Path) -> Vec<i32> {
    let want = format!(
        "SRLM_SERVER_OF={}",
        std::fs::canonicalize(run).unwrap().display()
    );
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
        })
        .collect()
}

/// The model names `srlm serve` announced in a launched server's log, in order.
pub fn served_models(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| l.strip_prefix("srlm: serving `")?.split('`').next())
        .collect()
}

/// Whether `done` holds within `limit`, asked every 50 ms.
pub fn wait_until(mut done: impl FnMut() -> bool, limit: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    done()
}

pub fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "srlm run failed:\n{err}");
    err
}

/// Every JSONL artifact of a run, its lines sorted (stages append in the order records
/// finish), by path relative to the run.
pub fn artifacts(run: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for sub in ["seed", "eft", "iter1", "iter2", "eval"] {
        for e in std::fs::read_dir(run.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "jsonl") {
                let mut lines: Vec<String> = std::fs::read_to_string(&p)
                    .unwrap()
                    .lines()
                    .map(str::to_string)
                    .collect();
                lines.sort();
                out.insert(
                    format!("{sub}/{}", p.file_name().unwrap().to_string_lossy()),
                    lines,
                );
            }
        }
    }
    out
}

/// Equal records, numbers up to float rounding. The judge's score distribution is read from
/// logits whose last bits depend on which sequences shared a batch, and a resumed stage
/// batches what was left; everything sampled or written (tokens, scores, ids) must be equal.
pub fn same_up_to_rounding(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_up_to_rounding(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_up_to_rounding(v, w)))
        }
        _ => a == b,
    }
}

/// `b` (a run crashed and resumed) ended with `a`'s artifacts, records equal up to float
/// rounding, and byte-equal models.
pub fn assert_same_outcome(a: &Path, b: &Path) {
    let (fa, fb) = (artifacts(a), artifacts(b));
    assert_eq!(fa.keys().collect::<Vec<_>>(), fb.keys().collect::<Vec<_>>());
    for (name, lines) in &fa {
        assert_eq!(lines.len(), fb[name].len(), "{name}");
        for (la, lb) in lines.iter().zip(&fb[name]) {
            let (va, vb): (Value, Value) = (
                serde_json::from_str(la).unwrap(),
                serde_json::from_str(lb).unwrap(),
            );
            assert!(
                same_up_to_rounding(&va, &vb),
                "{name} differs after resuming:\n{la}\n{lb}"
            );
        }
    }
    for m in ["m1-seed", "m1", "m2", "m3"] {
        let wa = std::fs::read(a.join("models").join(m).join("model.safetensors")).unwrap();
        let wb = std::fs::read(b.join("models").join(m).join("model.safetensors")).unwrap();
        assert!(wa == wb, "{m} differs after resuming");
    }
}
