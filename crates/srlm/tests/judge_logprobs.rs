//! Expected-score judging through the remote backend, against fake OpenAI-compatible servers:
//! one that returns log-probabilities as vLLM does (a character split across two tokens, given
//! by their bytes, before the score), and one that returns none, where the stage warns, keeps
//! the written scores, and `srlm pairs --score expected` falls back to them.

mod common;
use common::{argv, lines, reply};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// The judge's text, token by token: (token string, bytes, log-probability).
fn judge_tokens(split_bytes: bool) -> Vec<(String, Option<Vec<u8>>, f64)> {
    let cup = "☕".as_bytes().to_vec(); // 3 bytes, split 2 + 1 across tokens
    let mut t: Vec<(String, Option<Vec<u8>>, f64)> = ["Fine", ",", " very", " nice", " "]
        .iter()
        .map(|s| (s.to_string(), Some(s.as_bytes().to_vec()), -0.1))
        .collect();
    t.push((
        "\u{FFFD}".into(),
        split_bytes.then(|| cup[..2].to_vec()),
        -0.2,
    ));
    t.push((
        "\u{FFFD}".into(),
        split_bytes.then(|| cup[2..].to_vec()),
        -0.2,
    ));
    for s in [".\n", "Score", ":", " ", "4"] {
        t.push((s.to_string(), Some(s.as_bytes().to_vec()), -0.1));
    }
    t
}

const JUDGEMENT: &str = "Fine, very nice ☕.\nScore: 4";

fn score_alternatives() -> Vec<(&'static str, f64)> {
    vec![("4", 0.6f64.ln()), ("5", 0.3f64.ln()), ("3", 0.1f64.ln())]
}

fn choice_logprobs(split_bytes: bool) -> Value {
    let tokens = judge_tokens(split_bytes);
    let last = tokens.len() - 1;
    let content: Vec<Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, (token, bytes, lp))| {
            let top: Vec<Value> = if i == last {
                score_alternatives()
                    .iter()
                    .map(|(t, l)| json!({"token": t, "logprob": l, "bytes": t.as_bytes()}))
                    .collect()
            } else {
                vec![json!({"token": token, "logprob": lp, "bytes": bytes})]
            };
            json!({"token": token, "logprob": if i == last { 0.6f64.ln() } else { *lp },
                   "bytes": bytes, "top_logprobs": top})
        })
        .collect();
    json!({"content": content})
}

/// A fake server: `with_logprobs` answers them when asked (bytes given unless the prompt holds
/// "no-bytes"); every request body is kept.
fn start(with_logprobs: bool) -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let url = common::start(move |stream, req| {
        let body: Value = serde_json::from_str(&req.body).unwrap();
        s.lock().unwrap().push(body.clone());
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        let prompt = body["messages"][0]["content"].as_str().unwrap_or("");
        let choices: Vec<Value> = (0..n)
            .map(|i| {
                let mut c = json!({"index": i, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": JUDGEMENT}});
                if with_logprobs && body["logprobs"] == json!(true) {
                    c["logprobs"] = choice_logprobs(!prompt.contains("no-bytes"));
                }
                c
            })
            .collect();
        let reply_body = json!({"id": "x", "object": "chat.completion", "created": 0,
            "model": "fake", "choices": choices});
        reply(stream, "200 OK", "", &reply_body.to_string());
    });
    (url, seen)
}

fn write_candidates(dir: &Path) {
    let c = |id: &str, response: &str| {
        json!({"id": format!("p/{id}"), "prompt_id": "p", "prompt": "Say something nice.",
               "candidate": id.parse::<usize>().unwrap(), "response": response})
        .to_string()
    };
    std::fs::write(
        dir.join("cands.jsonl"),
        [c("0", "You are great."), c("1", "no-bytes: fine.")].join("\n") + "\n",
    )
    .unwrap();
}

fn srlm<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(args)
        .env("SRLM_TEST_FAKE_KEY", "")
        .output()
        .unwrap()
}

fn judge(dir: &Path, url: &str) -> Output {
    srlm(&argv(dir, &format!("judge --candidates @cands.jsonl --out @judge.jsonl --k 2 --api-base {url} --api-model fake --api-key-env SRLM_TEST_FAKE_KEY --api-max-retries 0")))
}

#[test]
fn the_remote_judge_reads_the_expected_score_from_top_logprobs() {
    let dir = tempfile::tempdir().unwrap();
    write_candidates(dir.path());
    let (url, seen) = start(true);
    let out = judge(dir.path(), &url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // What was asked: log-probabilities with OpenAI's maximum of alternatives.
    for body in seen.lock().unwrap().iter() {
        assert_eq!(body["logprobs"], json!(true), "{body}");
        assert_eq!(body["top_logprobs"], json!(20), "{body}");
    }
    let js = lines(&dir.path().join("judge.jsonl"));
    assert_eq!(js.len(), 4);
    let expected: f64 = score_alternatives()
        .iter()
        .map(|(t, l)| t.parse::<f64>().unwrap() * l.exp())
        .sum::<f64>()
        / score_alternatives()
            .iter()
            .map(|(_, l)| l.exp())
            .sum::<f64>();
    for j in &js {
        assert_eq!(j["score"], json!(4.0));
        if j["candidate_id"] == "p/0" {
            // The split character's bytes line the tokens up with the text.
            let d = &j["score_distribution"];
            assert!(
                (d["expected"].as_f64().unwrap() - expected).abs() < 1e-6,
                "{j}"
            );
            assert!((d["probs"][5].as_f64().unwrap() - 0.3).abs() < 1e-6, "{j}");
        } else {
            // Without bytes the "\u{FFFD}" tokens do not spell the text: no distribution.
            assert!(j.get("score_distribution").is_none(), "{j}");
        }
    }
    assert!(stderr.contains("did not line up"), "{stderr}");
}

#[test]
fn a_server_without_logprobs_falls_back_to_the_written_score_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    write_candidates(dir.path());
    let (url, _) = start(false);
    let out = judge(dir.path(), &url);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("returned no log-probabilities for 4 of 4"),
        "{stderr}"
    );
    let js = lines(&dir.path().join("judge.jsonl"));
    assert_eq!(js.len(), 4);
    assert!(js
        .iter()
        .all(|j| j["score"] == json!(4.0) && j.get("score_distribution").is_none()));
    // Pairs under the expected reading take the written scores: both candidates tie.
    let pairs = "pairs --candidates @cands.jsonl --judgements @judge.jsonl --out @pairs.jsonl";
    let out = srlm(&argv(dir.path(), &format!("{pairs} --score expected")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (stats["pairs"].as_u64(), stats["ties"].as_u64()),
        (Some(0), Some(1))
    );
}

/// What a judge caught in a loop writes: it never writes its score until asked.
const LOOPED: &str = "The response is nice.\nThe response is nice.\nThe resp";

/// A fake judge that writes [`LOOPED`], and " 3" when its turn is begun for it (`Score:` 3
/// at p 0.5, 2 at 0.25); every request body is kept.
fn start_looping() -> (String, Arc<Mutex<Vec<Value>>>) {
    let looped = LOOPED;
    let seen = Arc::new(Mutex::new(Vec::<Value>::new()));
    let s = seen.clone();
    let url = common::start(move |stream, req| {
        let body: Value = serde_json::from_str(&req.body).unwrap();
        s.lock().unwrap().push(body.clone());
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        let choice = |i: usize| {
            if body["continue_final_message"] == json!(true) {
                let top =
                    |t: &str, p: f64| json!({"token": t, "logprob": p.ln(), "bytes": t.as_bytes()});
                json!({"index": i, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": " 3"},
                    "logprobs": {"content": [
                        {"token": " ", "logprob": -0.01, "bytes": [32], "top_logprobs": []},
                        {"token": "3", "logprob": 0.5f64.ln(), "bytes": [51],
                         "top_logprobs": [top("3", 0.5), top("2", 0.25), top("Three", 0.25)]}]}})
            } else {
                json!({"index": i, "finish_reason": "length",
                    "message": {"role": "assistant", "content": looped}})
            }
        };
        let reply_body = json!({"id": "x", "object": "chat.completion", "created": 0,
            "model": "fake", "choices": (0..n).map(choice).collect::<Vec<_>>()});
        reply(stream, "200 OK", "", &reply_body.to_string());
    });
    (url, seen)
}

/// The requests of `seen` that begin the judge's turn for it, with their `n`s summed.
fn asks(seen: &Mutex<Vec<Value>>) -> (Vec<Value>, u64) {
    let asks: Vec<Value> = (seen.lock().unwrap().iter())
        .filter(|b| b["continue_final_message"] == json!(true))
        .cloned()
        .collect();
    let n = asks.iter().map(|a| a["n"].as_u64().unwrap_or(1)).sum();
    (asks, n)
}

/// A judge caught in a loop: it never writes its score until asked, after `Score:`.
#[test]
fn a_judgement_without_a_score_is_asked_for_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    write_candidates(dir.path());
    let looped = LOOPED;
    let (url, seen) = start_looping();
    let out = judge(dir.path(), &url);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Four judgements (2 candidates x k=2), each asked once (a candidate's two identical asks
    // go as one request with n = 2), greedily, for a few tokens.
    let (asks, asked) = asks(&seen);
    assert_eq!(asked, 4, "{asks:?}");
    for a in &asks {
        let m = a["messages"].as_array().unwrap();
        assert_eq!(m.len(), 2, "{a}");
        assert_eq!(m[1]["role"], "assistant");
        assert_eq!(
            m[1]["content"],
            "The response is nice.\nThe response is nice.\nScore:"
        );
        assert_eq!(a["add_generation_prompt"], json!(false));
        assert_eq!(a["temperature"], json!(0.0));
        assert_eq!(a["top_logprobs"], json!(20));
        assert!(a["max_tokens"].as_u64().unwrap() <= 4, "{a}");
    }
    let js = lines(&dir.path().join("judge.jsonl"));
    assert_eq!(js.len(), 4);
    for j in &js {
        assert_eq!(j["raw"], looped, "the judge's own text is kept: {j}");
        assert_eq!(j["forced_verdict"], " 3", "{j}");
        assert_eq!(j["score"], json!(3.0), "{j}");
        assert!(j.get("failure").is_none(), "{j}");
        let e = j["score_distribution"]["expected"].as_f64().unwrap();
        assert!((e - (3.0 * 0.5 + 2.0 * 0.25) / 0.75).abs() < 1e-6, "{j}");
    }
}

/// `--justification none`: every judgement is only its verdict, asked for at once.
#[test]
fn without_justification_the_judge_writes_only_its_verdict() {
    let dir = tempfile::tempdir().unwrap();
    write_candidates(dir.path());
    let (url, seen) = start_looping();
    let out = srlm(&argv(dir.path(), &format!("judge --candidates @cands.jsonl --out @judge.jsonl --k 2 --justification none --api-base {url} --api-model fake --api-key-env SRLM_TEST_FAKE_KEY --api-max-retries 0")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (asks, asked) = asks(&seen);
    assert_eq!(
        seen.lock().unwrap().len(),
        asks.len(),
        "only verdicts were asked for"
    );
    assert_eq!(asked, 4, "{asks:?}");
    for a in &asks {
        assert_eq!(a["messages"][1]["content"], "Score:", "{a}");
        assert!(a["max_tokens"].as_u64().unwrap() <= 4, "{a}");
    }
    let js = lines(&dir.path().join("judge.jsonl"));
    assert_eq!(js.len(), 4);
    for j in &js {
        assert_eq!(
            (&j["raw"], &j["forced_verdict"]),
            (&json!(""), &json!(" 3")),
            "{j}"
        );
        assert_eq!(j["score"], json!(3.0), "{j}");
        let e = j["score_distribution"]["expected"].as_f64().unwrap();
        assert!((e - (3.0 * 0.5 + 2.0 * 0.25) / 0.75).abs() < 1e-6, "{j}");
    }
}
