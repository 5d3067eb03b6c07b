//! The remote backend against a fake OpenAI-compatible server that misbehaves on purpose: a
//! reply slower than the timeout, 429 with Retry-After, 500, a connection dropped without a
//! reply, malformed JSON, a server that ignores `n`, and one request that never succeeds.
//! Each is retried or recorded as a failure; the judge stage finishes, keeps every judgement
//! it got, and a rerun against a healed server completes the rest.

mod common;
use common::reply;
use common::{argv, lines};
use serde_json::Value;
use std::collections::HashMap;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the fake server saw of one kind of request.
#[derive(Default, Debug)]
struct Seen {
    /// When each try arrived.
    tries: Vec<Instant>,
    /// `n` of each try.
    ns: Vec<usize>,
}

#[derive(Default)]
struct Fake {
    seen: Mutex<HashMap<String, Seen>>,
    auth: Mutex<Vec<Option<String>>>,
    /// Once set, the always-failing request succeeds too.
    healed: AtomicBool,
}

/// The candidates' markers: each picks a misbehaviour for its first try.
const MARKERS: [&str; 7] = [
    "slow", "busy", "crash", "drop", "garbled", "single", "doomed",
];

fn ok_body(n: usize, score: u32) -> String {
    common::chat_reply(n, &format!("Fine.\nScore: {score}"))
}

fn handle(fake: &Fake, stream: &mut TcpStream, req: common::HttpRequest) {
    let common::HttpRequest { headers, body } = req;
    fake.auth
        .lock()
        .unwrap()
        .push(headers.get("authorization").cloned());
    let req: Value = serde_json::from_str(&body).unwrap();
    let text = req["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let n = req["n"].as_u64().unwrap_or(1) as usize;
    let marker = MARKERS
        .iter()
        .find(|m| text.contains(&format!("marker-{m}")))
        .copied()
        .unwrap_or("plain");
    let first = {
        let mut seen = fake.seen.lock().unwrap();
        let s = seen.entry(marker.to_string()).or_default();
        s.tries.push(Instant::now());
        s.ns.push(n);
        s.tries.len() == 1
    };
    match (marker, first) {
        ("slow", true) => {
            std::thread::sleep(Duration::from_millis(2500));
            reply(stream, "200 OK", "", &ok_body(n, 1));
        }
        ("busy", true) => reply(
            stream,
            "429 Too Many Requests",
            "Retry-After: 2\r\n",
            r#"{"error": {"message": "slow down", "type": "rate_limit", "code": null}}"#,
        ),
        ("crash", true) => reply(stream, "500 Internal Server Error", "", "oops"),
        ("drop", true) => {} // closed without a word
        ("garbled", true) => reply(stream, "200 OK", "", "{\"choices\": [tru"),
        ("single", _) => reply(stream, "200 OK", "", &ok_body(1, 4)),
        ("doomed", _) if !fake.healed.load(Ordering::SeqCst) => reply(
            stream,
            "503 Service Unavailable",
            "",
            r#"{"error": {"message": "overloaded", "type": "server_error", "code": null}}"#,
        ),
        _ => reply(stream, "200 OK", "", &ok_body(n, 3)),
    }
}

fn start_fake() -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake::default());
    let f = fake.clone();
    (common::start(move |s, r| handle(&f, s, r)), fake)
}

/// Judging `cands.jsonl` into `judge.jsonl`, in the test's directory.
const JUDGE: &str = "judge --candidates @cands.jsonl --out @judge.jsonl";

fn judge(dir: &Path, url: &str) -> Output {
    let line = format!("{JUDGE} --k 2 --api-base {url} --api-model fake --api-key-env SRLM_TEST_FAKE_KEY --api-concurrency 4 --api-timeout-s 1 --api-max-retries 2");
    Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(argv(dir, &line))
        .env("SRLM_TEST_FAKE_KEY", "sk-test-secret")
        .env("SRLM_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn faults_are_retried_or_recorded_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cands: Vec<String> = MARKERS
        .iter()
        .chain(["plain"].iter())
        .map(|m| {
            serde_json::json!({"id": format!("{m}/0"), "prompt_id": m, "prompt": "Say hi.",
                "candidate": 0, "response": format!("hi (marker-{m})")})
            .to_string()
        })
        .collect();
    std::fs::write(dir.path().join("cands.jsonl"), cands.join("\n") + "\n").unwrap();
    let (url, fake) = start_fake();

    let o = judge(dir.path(), &url);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        !stderr.contains("sk-test-secret"),
        "the key was printed: {stderr}"
    );

    // Every candidate but the doomed one has both judgements, with the score it was sent.
    let js = lines(&dir.path().join("judge.jsonl"));
    let mut ids: Vec<String> = js
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut want: Vec<String> = MARKERS
        .iter()
        .chain(["plain"].iter())
        .filter(|m| **m != "doomed")
        .flat_map(|m| [format!("{m}/0/0"), format!("{m}/0/1")])
        .collect();
    want.sort();
    assert_eq!(ids, want);
    for j in &js {
        let want = if j["id"].as_str().unwrap().starts_with("single") {
            4.0
        } else {
            3.0
        };
        assert_eq!(j["score"].as_f64(), Some(want), "{j}");
    }
    // The doomed ones are recorded with the server's last word, and left for a rerun.
    let failures = lines(&dir.path().join("judge.failures.jsonl"));
    assert_eq!(failures.len(), 2, "{failures:?}");
    for f in &failures {
        assert!(f["id"].as_str().unwrap().starts_with("doomed/0/"));
        let e = f["error"].as_str().unwrap();
        assert!(
            e.contains("503") && e.contains("overloaded") && e.contains("gave up after 3 tries"),
            "{e}"
        );
    }
    assert!(stderr.contains("2 of 16 requests failed"), "{stderr}");

    {
        let seen = fake.seen.lock().unwrap();
        let tries = |m: &str| seen.get(m).map(|s| s.tries.len()).unwrap_or(0);
        // Each fault once, then success: the k=2 judgements go as one request with n=2.
        for m in ["slow", "busy", "crash", "drop", "garbled", "plain"] {
            assert_eq!(tries(m), if m == "plain" { 1 } else { 2 }, "{m}: {seen:?}");
            assert!(seen[m].ns.iter().all(|&n| n == 2), "{m}: {seen:?}");
        }
        // Retry-After: 2 was honoured.
        let busy = &seen["busy"].tries;
        assert!(busy[1] - busy[0] >= Duration::from_millis(1900), "{busy:?}");
        // A server that ignores n is asked again for the choice it left out.
        assert_eq!(seen["single"].ns, vec![2, 1]);
        // The first try and two retries.
        assert_eq!(tries("doomed"), 3);
    }
    let auth = fake.auth.lock().unwrap();
    assert!(auth
        .iter()
        .all(|a| a.as_deref() == Some("Bearer sk-test-secret")));
    drop(auth);

    // The server heals; the same command asks only for what is missing.
    fake.healed.store(true, Ordering::SeqCst);
    let before = fake.seen.lock().unwrap()["plain"].tries.len();
    let o = judge(dir.path(), &url);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lines(&dir.path().join("judge.jsonl")).len(), 16);
    assert!(!dir.path().join("judge.failures.jsonl").exists());
    assert_eq!(fake.seen.lock().unwrap()["plain"].tries.len(), before);
    assert_eq!(fake.seen.lock().unwrap()["doomed"].tries.len(), 4);
}

/// `cands.jsonl` in `dir`: one candidate, to judge.
fn one_candidate(dir: &Path) {
    std::fs::write(
        dir.join("cands.jsonl"),
        "{\"id\": \"a/0\", \"prompt_id\": \"a\", \"prompt\": \"Hi\", \"candidate\": 0, \"response\": \"Hello\"}\n",
    )
    .unwrap();
}

#[test]
fn a_wrong_key_or_bad_request_is_not_retried() {
    // 401 will not mend: one try, then recorded.
    let count = Arc::new(Mutex::new(0usize));
    let c = count.clone();
    let url = common::start(move |stream, _| {
        *c.lock().unwrap() += 1;
        reply(
            stream,
            "401 Unauthorized",
            "",
            r#"{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}"#,
        );
    });
    let dir = tempfile::tempdir().unwrap();
    one_candidate(dir.path());
    let o = judge(dir.path(), &url);
    // Nothing was judged: the stage fails (it used to exit 0), naming the key, not the server.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(
        stderr.contains("every one of the 2 requests failed"),
        "{stderr}"
    );
    assert!(stderr.contains("refused the API key"), "{stderr}");
    assert!(!stderr.contains("server up"), "{stderr}");
    assert_eq!(*count.lock().unwrap(), 1);
    let failures = lines(&dir.path().join("judge.failures.jsonl"));
    assert_eq!(failures.len(), 2);
    assert!(failures[0]["error"].as_str().unwrap().contains("HTTP 401"));
}

#[test]
fn a_refused_key_when_listing_models_names_the_key_not_the_server() {
    let url = common::start(move |stream, _| {
        reply(
            stream,
            "401 Unauthorized",
            "",
            r#"{"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}"#,
        );
    });
    let dir = tempfile::tempdir().unwrap();
    one_candidate(dir.path());
    let o = Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(argv(dir.path(), JUDGE))
        .args(["--api-base", &url, "--api-key-env", "SRLM_TEST_UNSET_KEY"])
        .env_remove("SRLM_TEST_UNSET_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{stderr}");
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    assert!(
        stderr.contains("$SRLM_TEST_UNSET_KEY is not set"),
        "{stderr}"
    );
    assert!(!stderr.contains("server up"), "{stderr}");
}

#[test]
fn on_the_local_backend_a_prompt_too_long_fails_alone() {
    // The local engine's own failure: one judge prompt longer than the context is recorded,
    // the others are judged, and the stage finishes.
    let dir = tempfile::tempdir().unwrap();
    let model = common::tiny_model(dir.path());
    let long = "word ".repeat(1000);
    let cands: Vec<String> = [("short", "Hello."), ("long", long.as_str())]
        .iter()
        .map(|(id, response)| {
            serde_json::json!({"id": format!("{id}/0"), "prompt_id": id, "prompt": "Say hi.",
                "candidate": 0, "response": response})
            .to_string()
        })
        .collect();
    std::fs::write(dir.path().join("cands.jsonl"), cands.join("\n") + "\n").unwrap();
    let line = format!("{JUDGE} --k 2 --max-new-tokens 4 --context-length 2048");
    let o = Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(argv(dir.path(), &line))
        .args(["--model", model.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let js = lines(&dir.path().join("judge.jsonl"));
    assert_eq!(js.len(), 2);
    assert!(js.iter().all(|j| j["candidate_id"] == "short/0"));
    let failures = lines(&dir.path().join("judge.failures.jsonl"));
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(failures.iter().all(|f| f["error"]
        .as_str()
        .unwrap()
        .contains("does not fit the context of 2048")));
}
