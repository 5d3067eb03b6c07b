//! The loop's stage commands on explicit files with the real default model: `srlm sample`
//! writes N candidates per prompt and resumes, `srlm judge` writes k judgements per candidate
//! with their raw text, `srlm pairs` turns them into TRL-format pairs that `srlm dpo` reads.

mod common;

use common::{argv, lines};
use std::path::Path;
use std::process::{Command, Output};

/// `srlm` with its command line as one string ([`argv`]).
fn srlm(dir: &Path, line: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(argv(dir, line))
        .output()
        .unwrap()
}

#[test]
fn sample_judge_pairs_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(
        d("prompts.jsonl"),
        "{\"id\": \"p1\", \"prompt\": \"Name a fruit.\"}\n{\"id\": \"p2\", \"prompt\": \"Say hi.\"}\n",
    )
    .unwrap();
    let sample = || {
        let line = "sample --prompts @prompts.jsonl --out @cands.jsonl --n 2 --max-new-tokens 12";
        srlm(dir.path(), line)
    };
    let o = sample();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cands = lines(&dir.path().join("cands.jsonl"));
    assert_eq!(cands.len(), 4);
    let ids: std::collections::BTreeSet<String> = cands
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        vec!["p1/0", "p1/1", "p2/0", "p2/1"]
    );
    let o = sample();
    assert!(String::from_utf8_lossy(&o.stderr).contains("nothing to do"));
    assert_eq!(lines(&dir.path().join("cands.jsonl")).len(), 4);

    let line = "judge --candidates @cands.jsonl --out @judge.jsonl --k 2 --max-new-tokens 12";
    let o = srlm(dir.path(), line);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let js = lines(&dir.path().join("judge.jsonl"));
    assert_eq!(js.len(), 8);
    assert!(js
        .iter()
        .all(|j| j["raw"].is_string() && (j["score"].is_number() || j["failure"].is_string())));

    let line = "pairs --candidates @cands.jsonl --judgements @judge.jsonl --out @pairs.jsonl";
    let o = srlm(dir.path(), line);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(stats["prompts"], 2);
    let pairs = lines(&dir.path().join("pairs.jsonl"));
    assert_eq!(pairs.len() as u64, stats["pairs"].as_u64().unwrap());
    for p in &pairs {
        assert!(p["chosen_score"].as_f64().unwrap() > p["rejected_score"].as_f64().unwrap());
    }
}

#[test]
fn pairs_feed_dpo() {
    let dir = tempfile::tempdir().unwrap();
    let cands = dir.path().join("c.jsonl");
    let judge = dir.path().join("j.jsonl");
    let mut c = String::new();
    let mut j = String::new();
    for (p, responses) in [("a", ["Hello there!", "No."]), ("b", ["Blue.", "A car."])] {
        for (i, r) in responses.iter().enumerate() {
            c += &format!("{{\"id\": \"{p}/{i}\", \"prompt_id\": \"{p}\", \"prompt\": \"Prompt {p}\", \"candidate\": {i}, \"response\": \"{r}\"}}\n");
            let score = if i == 0 { 4 } else { 1 };
            j += &format!("{{\"id\": \"{p}/{i}/0\", \"candidate_id\": \"{p}/{i}\", \"prompt_id\": \"{p}\", \"sample\": 0, \"raw\": \"ok\\nScore: {score}\", \"score\": {score}}}\n");
        }
    }
    std::fs::write(&cands, c).unwrap();
    std::fs::write(&judge, j).unwrap();
    let pairs = dir.path().join("p.jsonl");
    let o = srlm(
        dir.path(),
        "pairs --candidates @c.jsonl --judgements @j.jsonl --out @p.jsonl",
    );
    assert!(o.status.success());
    assert_eq!(lines(&pairs).len(), 2);
    common::tiny_model(dir.path());
    let dpo = "dpo --model @tiny --pairs @p.jsonl --out @m2 --max-steps 1 --micro-batch 2";
    let o = srlm(dir.path(), &format!("{dpo} --grad-accum 1"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.path().join("m2/config.json").exists());
}
