//! `srlm eval judge` on the real default model (SmolLM2-135M-Instruct) with a small Open
//! Assistant-format fixture: every reply is judged k times, judgements are stored with their raw
//! text, metrics are computed, and a rerun resumes without judging again.

mod common;
use std::process::Command;

const TREES: &str = r#"{"message_tree_id": "t1", "prompt": {"text": "Say hello.", "role": "prompter", "replies": [{"text": "Hello there!", "role": "assistant", "rank": 0}, {"text": "No.", "role": "assistant", "rank": 1}]}}
{"message_tree_id": "t2", "prompt": {"text": "Name a color.", "role": "prompter", "replies": [{"text": "Blue.", "role": "assistant", "rank": 1}, {"text": "Red, the color of fire.", "role": "assistant", "rank": 0}, {"text": "Car.", "role": "assistant", "rank": 2, "synthetic": true}]}}
{"message_tree_id": "t3", "prompt": {"text": "Unranked.", "role": "prompter", "replies": [{"text": "x", "role": "assistant"}]}}
"#;

#[test]
fn judges_ranked_replies_stores_raw_text_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("trees.jsonl");
    std::fs::write(&data, TREES).unwrap();
    let out = dir.path().join("judge.jsonl");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_srlm"))
            .args([
                "eval",
                "judge",
                "--data",
                data.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .args(["--k", "2", "--max-new-tokens", "24", "--seed", "5"])
            .output()
            .unwrap()
    };
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // t1: 2 replies, t2: 2 human replies (the synthetic one is dropped), t3: unranked; k = 2.
    assert_eq!(lines.len(), 8);
    for l in &lines {
        assert!(l["raw"].is_string());
        assert!(
            l["score"].is_number() != l["failure"].is_string(),
            "a score or a failure: {l}"
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["prompts"], 2);
    assert_eq!(report["judgements"], 8);
    assert_eq!(report["agreement"]["replies"], 4);
    // In both prompts the reply humans ranked higher is the longer one, so every scored pair
    // falls in the split's "longer preferred" part.
    let judges = &report["judges"];
    let split = &judges["sampled_by_length"];
    assert_eq!(split["longer_preferred_pairs"], judges["sampled"]["pairs"]);
    assert_eq!(split["shorter_preferred_pairs"], 0);
    assert_eq!(
        judges["expected_by_length"]["longer_preferred_pairs"], judges["sampled"]["pairs"],
        "the expected reading counts the pairs the written one does"
    );
    let metrics = std::fs::read_to_string(dir.path().join("judge.jsonl.metrics.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&metrics).unwrap();
    assert_eq!(saved, report);

    // Rerun: nothing judged again, the same report.
    let o = run();
    assert!(o.status.success());
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 8);
    let again: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(again, report);
}

#[test]
fn a_rerun_goes_on_past_a_reply_too_long_for_the_context() {
    // t1's replies fit a context of 1,024 tokens; t2's second reply (about 2,400 tokens) never
    // will, so every rerun asks for it again and it fails again.
    let long = "All work and no play makes Jack a dull boy. ".repeat(200);
    let trees = format!(
        "{}\n{}\n",
        TREES.lines().next().unwrap(),
        serde_json::json!({"message_tree_id": "t2", "prompt": {"text": "Write a line.", "role": "prompter", "replies": [
            {"text": "A line.", "role": "assistant", "rank": 0},
            {"text": long, "role": "assistant", "rank": 1}]}})
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("trees.jsonl");
    std::fs::write(&data, trees).unwrap();
    let out = dir.path().join("judge.jsonl");
    let failures = dir.path().join("judge.failures.jsonl");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_srlm"))
            .args(["eval", "judge", "--data", data.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap(), "--context-length", "1024"])
            .args(["--k", "1", "--max-new-tokens", "16", "--seed", "5"])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
    let failed = std::fs::read_to_string(&failures).unwrap();
    assert_eq!(failed.lines().count(), 1);
    assert!(failed.contains("does not fit the context"), "{failed}");

    // The rerun has only the long reply left and fails it again: a warning, not an error (it
    // used to stop with "every one of the 1 requests failed", so a run killed at that point
    // could never finish its evaluation), and the same report.
    let again = run();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(stderr.contains("1 of 1 requests failed"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 3);
    assert_eq!(std::fs::read_to_string(&failures).unwrap(), failed);
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let report_again: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report_again, report);
    assert_eq!(report["failed_requests"], 1);
}

#[test]
fn the_split_by_length_counts_where_the_judge_is_right_against_length() {
    // A fake judge that writes "Score: 4" for a reply holding GOOD and "Score: 1" otherwise
    // (the real model's judge writes no score on the scale, so it has no pairs to split).
    let url = common::start(|stream, req| {
        let score = if req.body.contains("GOOD") { 4 } else { 1 };
        common::reply(
            stream,
            "200 OK",
            "",
            &common::chat_reply(1, &format!("Fine.\nScore: {score}")),
        );
    });
    // t1: humans prefer the longer reply, and so does the judge. t2: they prefer the shorter,
    // and so does the judge. t3: they prefer the shorter, the judge the longer.
    let tree = |id: &str, best: &str, worse: &str| {
        serde_json::json!({"message_tree_id": id, "prompt": {"text": "Answer me.", "role": "prompter",
            "replies": [{"text": best, "role": "assistant", "rank": 0},
                        {"text": worse, "role": "assistant", "rank": 1}]}})
        .to_string()
    };
    let trees = [
        tree("t1", "GOOD: a full and careful answer.", "No."),
        tree(
            "t2",
            "GOOD: yes.",
            "Well, it depends a great deal on what you mean.",
        ),
        tree("t3", "Yes.", "GOOD: well, it depends on what you mean."),
    ];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("trees.jsonl");
    std::fs::write(&data, trees.join("\n") + "\n").unwrap();
    let out = dir.path().join("judge.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(["eval", "judge", "--data", data.to_str().unwrap()])
        .args([
            "--out",
            out.to_str().unwrap(),
            "--k",
            "1",
            "--score",
            "sampled",
        ])
        .args(["--api-base", &url, "--api-model", "fake"])
        .args([
            "--api-key-env",
            "SRLM_TEST_FAKE_KEY",
            "--api-max-retries",
            "0",
        ])
        .env("SRLM_TEST_FAKE_KEY", "")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let judges = &report["judges"];
    assert_eq!(judges["sampled"]["pairs"], 3);
    assert_eq!(judges["sampled"]["pairwise_accuracy"], 2.0 / 3.0);
    assert_eq!(judges["length"]["pairwise_accuracy"], 1.0 / 3.0);
    let split = &judges["sampled_by_length"];
    assert_eq!(split["longer_preferred_pairs"], 1);
    assert_eq!(split["longer_preferred_accuracy"], 1.0);
    assert_eq!(split["shorter_preferred_pairs"], 2);
    assert_eq!(split["shorter_preferred_accuracy"], 0.5);
    assert_eq!(split["agrees_with_length"], 2.0 / 3.0);
}
