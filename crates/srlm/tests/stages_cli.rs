//! The loop's stage commands on explicit files with the real default model: `srlm sample`
//! writes N candidates per prompt and resumes, `srlm judge` writes k judgements per candidate
//! with their raw text, `srlm pairs` turns them into TRL-format pairs that `srlm dpo` reads.

use std::path::Path;
use std::process::{Command, Output};

fn srlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(args)
        .output()
        .unwrap()
}

fn lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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
        srlm(&[
            "sample",
            "--prompts",
            &d("prompts.jsonl"),
            "--out",
            &d("cands.jsonl"),
            "--n",
            "2",
            "--max-new-tokens",
            "12",
        ])
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

    let o = srlm(&[
        "judge",
        "--candidates",
        &d("cands.jsonl"),
        "--out",
        &d("judge.jsonl"),
        "--k",
        "2",
        "--max-new-tokens",
        "12",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let js = lines(&dir.path().join("judge.jsonl"));
    assert_eq!(js.len(), 8);
    assert!(js
        .iter()
        .all(|j| j["raw"].is_string() && (j["score"].is_number() || j["failure"].is_string())));

    let o = srlm(&[
        "pairs",
        "--candidates",
        &d("cands.jsonl"),
        "--judgements",
        &d("judge.jsonl"),
        "--out",
        &d("pairs.jsonl"),
    ]);
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
    let o = srlm(&[
        "pairs",
        "--candidates",
        cands.to_str().unwrap(),
        "--judgements",
        judge.to_str().unwrap(),
        "--out",
        pairs.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert_eq!(lines(&pairs).len(), 2);
    let tiny =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../srlm-engine/tests/goldens/tiny-llama");
    let o = srlm(&[
        "dpo",
        "--model",
        tiny.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
        "--out",
        dir.path().join("m2").to_str().unwrap(),
        "--max-steps",
        "1",
        "--micro-batch",
        "2",
        "--grad-accum",
        "1",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(dir.path().join("m2/config.json").exists());
}
