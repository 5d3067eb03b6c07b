//! `srlm serve` as an OpenAI-compatible server: its endpoints and errors (tiny model), requests
//! sent at once batched without changing their answers, the official `openai` Python client
//! streaming from it, and srlm's own remote backend judging through it exactly as the local
//! backend judges (greedy, the real default model).

mod common;
use common::{lines, tiny_model};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `srlm serve`, killed when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(args: &[&str]) -> Served {
    serve_with_env(args, &[])
}

fn serve_with_env(args: &[&str], env: &[(&str, &str)]) -> Served {
    let mut child = Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(["serve", "--port", "0"])
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = String::new();
    let url = loop {
        let line = lines
            .next()
            .unwrap_or_else(|| panic!("srlm serve ended: {said}"))
            .unwrap();
        said.push_str(&line);
        if let Some(at) = line.find("http://") {
            break line[at..].split_whitespace().next().unwrap().to_string();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Served { child, url }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, body) of a POST.
fn post(url: &str, body: &str) -> (u16, String) {
    let mut r = agent()
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

fn post_json(url: &str, body: &Value) -> Value {
    let (status, text) = post(url, &body.to_string());
    assert_eq!(status, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn chat(model: &str, user: &str, extra: Value) -> Value {
    let mut body = json!({"model": model, "messages": [{"role": "user", "content": user}],
        "temperature": 0, "max_tokens": 10});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn serve_speaks_the_openai_api() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let s = serve(&["--model", model.to_str().unwrap(), "--name", "tiny"]);
    let base = &s.url;

    let models: Value = serde_json::from_str(
        &agent()
            .get(format!("{base}/models"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");

    // Whole, two greedy choices: the same text twice, usage counted over both.
    let whole = post_json(
        &format!("{base}/chat/completions"),
        &chat("tiny", "Name a colour.", json!({"n": 2})),
    );
    assert_eq!(whole["object"], "chat.completion");
    let c = &whole["choices"];
    assert_eq!(c.as_array().unwrap().len(), 2);
    assert_eq!(c[0]["message"]["role"], "assistant");
    assert_eq!(c[0]["message"]["content"], c[1]["message"]["content"]);
    assert_eq!(c[0]["finish_reason"], "length");
    assert_eq!(whole["usage"]["completion_tokens"], 20);
    let greedy = c[0]["message"]["content"].as_str().unwrap().to_string();

    // Streamed: SSE chunks whose deltas add up to the same text, then [DONE].
    let (status, sse) = post(
        &format!("{base}/chat/completions"),
        &chat(
            "tiny",
            "Name a colour.",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        )
        .to_string(),
    );
    assert_eq!(status, 200);
    let events: Vec<&str> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(*events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, greedy);
    assert!(chunks.len() >= 5, "{} chunks", chunks.len());
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 10);

    // A stop string: the greedy reply ends just before its first occurrence.
    let stop = greedy.chars().nth(2).unwrap().to_string();
    let stopped = post_json(
        &format!("{base}/chat/completions"),
        &chat("tiny", "Name a colour.", json!({"stop": stop})),
    );
    let want = &greedy[..greedy.find(&stop).unwrap()];
    assert_eq!(stopped["choices"][0]["message"]["content"], want);
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");

    // Plain completions of raw text.
    let text = post_json(
        &format!("{base}/completions"),
        &json!({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(text["object"], "text_completion");
    assert!(text["choices"][0]["text"].is_string());
    assert_eq!(text["choices"][0]["finish_reason"], "length");
    assert_eq!(text["usage"]["completion_tokens"], 6);

    // A begun assistant turn is continued (vLLM's `continue_final_message`): the same as the
    // raw completion of the rendered chat (ChatML, the tiny model's template) and that text.
    let begun = json!({"model": "tiny", "temperature": 0, "max_tokens": 6,
        "messages": [{"role": "user", "content": "Name a colour."},
                     {"role": "assistant", "content": "Score:"}],
        "continue_final_message": true, "add_generation_prompt": false});
    let continued = post_json(&format!("{base}/chat/completions"), &begun);
    let raw = post_json(
        &format!("{base}/completions"),
        &json!({"model": "tiny", "max_tokens": 6, "temperature": 0,
            "prompt": "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\nScore:"}),
    );
    assert_eq!(
        continued["choices"][0]["message"]["content"],
        raw["choices"][0]["text"]
    );
    assert_eq!(continued["usage"], raw["usage"]);
    let mut not_assistant = begun.clone();
    not_assistant["messages"][1]["role"] = json!("user");
    let (status, body) = post(
        &format!("{base}/chat/completions"),
        &not_assistant.to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("continue_final_message"), "{body}");

    // Errors in OpenAI's shape.
    let (status, body) = post(
        &format!("{base}/chat/completions"),
        &chat("other", "hi", json!({})).to_string(),
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("serves `tiny`"), "{body}");
    let (status, body) = post(&format!("{base}/chat/completions"), "{\"model\": ");
    assert_eq!(status, 400);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid"),
        "{body}"
    );
    let long = "word ".repeat(5000);
    let (status, body) = post(
        &format!("{base}/chat/completions"),
        &chat("tiny", &long, json!({})).to_string(),
    );
    assert_eq!(status, 400);
    assert!(body.contains("context is 4096"), "{body}");
    let (status, _) = post(
        &format!("{base}/chat/completions"),
        &chat("tiny", "hi", json!({"n": 0})).to_string(),
    );
    assert_eq!(status, 400);
    // Sampling values and roles that cannot generate: 400s naming the field (OpenAI's `param`).
    for (extra, param) in [
        (json!({"temperature": -0.5}), "temperature"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"stop": [""]}), "stop"),
        (
            json!({"messages": [{"role": "robot", "content": "hi"}]}),
            "messages",
        ),
    ] {
        let (status, body) = post(
            &format!("{base}/chat/completions"),
            &chat("tiny", "hi", extra.clone()).to_string(),
        );
        assert_eq!(status, 400, "{extra}: {body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["error"]["type"], "invalid_request_error", "{body}");
        assert_eq!(err["error"]["param"], param, "{body}");
    }
    // A body past the limit is a 413 in the same shape, not axum's plain text. (Written by a
    // thread that ignores the broken pipe when the server stops reading, read here.)
    let addr = base.trim_start_matches("http://").trim_end_matches("/v1");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let huge = chat("tiny", &"x".repeat(3 << 20), json!({})).to_string();
    std::thread::spawn(move || {
        let _ = write!(
            writer,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{huge}",
            huge.len()
        );
    });
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    let body = &reply[reply.find("\r\n\r\n").unwrap() + 4..];
    let err: Value = serde_json::from_str(body).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than"),
        "{body}"
    );

    // Eight different requests at once are batched; each gets what it gets alone.
    let prompts: Vec<String> = (0..8).map(|i| format!("Question number {i}?")).collect();
    let alone: Vec<Value> = prompts
        .iter()
        .map(|p| {
            post_json(
                &format!("{base}/chat/completions"),
                &chat("tiny", p, json!({})),
            )["choices"][0]["message"]["content"]
                .clone()
        })
        .collect();
    let together: Vec<Value> = std::thread::scope(|sc| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let url = format!("{base}/chat/completions");
                sc.spawn(move || {
                    post_json(&url, &chat("tiny", p, json!({})))["choices"][0]["message"]["content"]
                        .clone()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone);
}

#[test]
fn serve_returns_log_probabilities_in_openais_shape() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let s = serve(&["--model", model.to_str().unwrap(), "--name", "tiny"]);
    let base = &s.url;
    let chat_url = format!("{base}/chat/completions");

    // Chat: `logprobs: true` with `top_logprobs`: one entry per token, texts adding up.
    let whole = post_json(
        &chat_url,
        &chat(
            "tiny",
            "Name a colour.",
            json!({"logprobs": true, "top_logprobs": 3}),
        ),
    );
    let choice = &whole["choices"][0];
    let content = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 10);
    let text: String = content
        .iter()
        .map(|t| t["token"].as_str().unwrap())
        .collect();
    assert_eq!(text, choice["message"]["content"].as_str().unwrap());
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the generated token is the most likely, and log-probabilities descend. (Its
        // text may differ from top[0]'s: a token holding part of a character adds no text.)
        assert!(
            (top[0]["logprob"].as_f64().unwrap() - t["logprob"].as_f64().unwrap()).abs() < 1e-6
        );
        assert!(top[0]["logprob"].as_f64().unwrap() >= top[2]["logprob"].as_f64().unwrap());
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
        let bytes: Vec<u8> = t["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bytes, t["token"].as_str().unwrap().as_bytes());
    }
    // Without the flag there are none.
    let plain = post_json(&chat_url, &chat("tiny", "Name a colour.", json!({})));
    assert!(plain["choices"][0].get("logprobs").is_none(), "{plain}");

    // Streamed: the last chunk of the choice carries the whole list. Same tokens; the numbers
    // agree to rounding only, since this request reuses the first one's cached prompt (all but
    // its last token, which is decoded rather than prefilled).
    let (status, sse) = post(
        &chat_url,
        &chat(
            "tiny",
            "Name a colour.",
            json!({"stream": true, "logprobs": true, "top_logprobs": 3}),
        )
        .to_string(),
    );
    assert_eq!(status, 200);
    let streamed: Vec<Value> = sse
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(streamed.len(), content.len());
    for (s, w) in streamed.iter().zip(content) {
        assert_eq!((&s["token"], &s["bytes"]), (&w["token"], &w["bytes"]));
        let logprobs = |t: &Value| -> Vec<f64> {
            std::iter::once(t["logprob"].as_f64().unwrap())
                .chain(
                    t["top_logprobs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|a| a["logprob"].as_f64().unwrap()),
                )
                .collect()
        };
        let (ls, lw) = (logprobs(s), logprobs(w));
        assert_eq!(ls.len(), 4);
        assert!(
            ls.iter().zip(&lw).all(|(a, b)| (a - b).abs() < 1e-5),
            "{s} {w}"
        );
    }

    // Completions: `logprobs: N` and the parallel lists.
    let text = post_json(
        &format!("{base}/completions"),
        &json!({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 4, "temperature": 0, "logprobs": 2}),
    );
    let lp = &text["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 4);
    assert_eq!(lp["top_logprobs"][0].as_object().unwrap().len(), 2);
    let joined: String = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(joined, text["choices"][0]["text"].as_str().unwrap());

    // More than OpenAI's 20 alternatives is a 400.
    let (status, body) = post(
        &chat_url,
        &chat("tiny", "hi", json!({"logprobs": true, "top_logprobs": 21})).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("top_logprobs"), "{body}");
}

#[test]
fn the_openai_python_client_streams_from_srlm_serve() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // Dense weights: the n = 2 request finds the streamed one's prompt in the prefix cache, and
    // under `mixed` the short suffix left after it takes the quantized path where the streamed
    // request's whole prompt took the dense one; on a random tiny model, whose logits are full
    // of near ties, that alone can change a greedy token. What is checked here is the protocol.
    let s = serve(&[
        "--model",
        model.to_str().unwrap(),
        "--name",
        "tiny",
        "--weights",
        "dense",
    ]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/openai_client_check.sh");
    let o = Command::new("bash")
        .arg(&script)
        .args([&s.url, "tiny"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let seen: Value = serde_json::from_slice(o.stdout.trim_ascii()).unwrap();
    eprintln!("openai client: {seen}");
    assert!(seen["chunks"].as_u64().unwrap() >= 2, "{seen}");
    assert_eq!(seen["roles"], json!(["assistant"]));
    assert_eq!(seen["finish_reason"], "length");
    assert_eq!(seen["usage_completion_tokens"], 16);
    // The streamed text is the whole reply's, and both greedy choices agree.
    assert_eq!(seen["whole"][0], seen["streamed"]);
    assert_eq!(seen["whole"][1], seen["streamed"]);
    assert_eq!(seen["whole_completion_tokens"], 32);
    assert_eq!(seen["models"], json!(["tiny"]));
    assert_eq!(seen["completion_finish"], "length");
}

#[test]
fn remote_judge_through_srlm_serve_equals_the_local_judge() {
    // The real default model, greedy: srlm judge through `srlm serve` on loopback (its k
    // judgements sent as one request with n = k) against srlm judge on the local engine.
    // Both hold the file's own Q4_1 blocks (`--weights native`): every row takes the same
    // path however long its segment is. (`mixed` sends segments of 32 tokens or more through
    // f32, so a prompt suffix left after a cached prefix, whose length depends on what the
    // server happened to have cached, could take the other path and flip a greedy near tie.)
    let dir = tempfile::tempdir().unwrap();
    let cands = dir.path().join("cands.jsonl");
    let answers = [
        (
            "q1",
            "What is the capital of France?",
            "The capital of France is Paris.",
        ),
        (
            "q1",
            "What is the capital of France?",
            "I think it is Lyon, or maybe Marseille.",
        ),
        (
            "q2",
            "Give one tip for better sleep.",
            "Keep a regular bedtime, even on weekends.",
        ),
    ];
    let text: String = answers
        .iter()
        .enumerate()
        .map(|(i, (q, prompt, response))| {
            json!({"id": format!("{q}/{i}"), "prompt_id": q, "prompt": prompt, "candidate": i,
                "response": response})
            .to_string()
                + "\n"
        })
        .collect();
    std::fs::write(&cands, text).unwrap();
    let s = serve(&["--weights", "native"]);
    let judge = |out: &str, remote: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_srlm"));
        c.args(["judge", "--candidates", cands.to_str().unwrap()])
            .args(["--out", dir.path().join(out).to_str().unwrap()])
            .args(["--k", "2", "--temperature", "0", "--max-new-tokens", "48"]);
        if remote {
            c.args(["--api-base", &s.url]);
        } else {
            c.args(["--weights", "native"]);
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let mut js = lines(&dir.path().join(out));
        js.sort_by_key(|j| j["id"].as_str().unwrap().to_string());
        js
    };
    let mut local = judge("local.jsonl", false);
    let mut remote = judge("remote.jsonl", true);
    assert_eq!(local.len(), 6);
    // The untrained model writes no score in 48 tokens, so each judgement is asked for its
    // verdict: the server prefills that ask after the judge prompt it has cached, the local
    // engine prefills it whole, and the untrained model's near-tied digits after `Score:` can
    // then differ in their last bits and flip ("90%" against "9.5"). Both were asked, and
    // everything the judge wrote by itself is compared exactly.
    for j in local.iter_mut().chain(remote.iter_mut()) {
        let asked = j.as_object_mut().unwrap().remove("forced_verdict");
        assert!(asked.is_some() || j.get("score").is_some(), "{j}");
    }
    assert_eq!(remote, local);

    assert!(local.iter().all(|j| !j["raw"].as_str().unwrap().is_empty()));
}

#[test]
fn a_served_model_with_a_key_refuses_requests_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let s = serve_with_env(
        &[
            "--model",
            model.to_str().unwrap(),
            "--name",
            "tiny",
            "--api-key-env",
            "SRLM_TEST_SERVE_KEY",
        ],
        &[("SRLM_TEST_SERVE_KEY", "sk-serve")],
    );
    let get = |path: &str, auth: Option<&str>| {
        let mut req = agent().get(format!("{}{path}", s.url));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        req.call().unwrap().status().as_u16()
    };
    assert_eq!(get("/models", None), 401);
    assert_eq!(get("/models", Some("Bearer wrong")), 401);
    assert_eq!(get("/models", Some("Bearer sk-serve")), 200);
    let (status, body) = post(
        &format!("{}/chat/completions", s.url),
        &chat("tiny", "hi", json!({})).to_string(),
    );
    assert_eq!(status, 401, "{body}");
    // srlm's own remote backend sends the key it is told to read.
    let cands = dir.path().join("cands.jsonl");
    std::fs::write(
        &cands,
        "{\"id\": \"a/0\", \"prompt_id\": \"a\", \"prompt\": \"Hi\", \"candidate\": 0, \"response\": \"Hello\"}\n",
    )
    .unwrap();
    let out = dir.path().join("judge.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(["judge", "--candidates", cands.to_str().unwrap()])
        .args([
            "--out",
            out.to_str().unwrap(),
            "--k",
            "2",
            "--max-new-tokens",
            "4",
        ])
        .args(["--api-base", &s.url, "--api-key-env", "SRLM_TEST_SERVE_KEY"])
        .env("SRLM_TEST_SERVE_KEY", "sk-serve")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(lines(&out).len(), 2);
    // Without the variable, the server will not start.
    let o = Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(["serve", "--port", "0", "--model", model.to_str().unwrap()])
        .args(["--api-key-env", "SRLM_TEST_NO_SUCH_VARIABLE"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("SRLM_TEST_NO_SUCH_VARIABLE"));
}

/// The tiny LoRA checkpoint srlm's trainer wrote (train goldens): its adapter, and the same
/// model merged.
fn tiny_lora() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../srlm-train/tests/goldens/tiny-lora")
}

#[test]
fn a_lora_adapter_loaded_at_run_time_answers_as_its_merged_model() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let adapter = tiny_lora().join("adapter");
    let adapter_body = json!({"lora_name": "m2", "lora_path": adapter}).to_string();

    // Without --enable-lora, loading is refused and says how to enable it.
    let plain = serve(&["--model", model.to_str().unwrap(), "--name", "tiny"]);
    let (status, text) = post(&format!("{}/load_lora_adapter", plain.url), &adapter_body);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("--enable-lora"), "{text}");
    drop(plain);

    let s = serve(&[
        "--model",
        model.to_str().unwrap(),
        "--name",
        "tiny",
        "--enable-lora",
    ]);
    let merged = serve(&["--model", tiny_lora().to_str().unwrap(), "--name", "merged"]);
    let (status, text) = post(&format!("{}/load_lora_adapter", s.url), &adapter_body);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("'m2'"), "{text}");
    let (status, text) = post(&format!("{}/load_lora_adapter", s.url), &adapter_body);
    assert_eq!(status, 400, "loading a name twice: {text}");
    assert!(text.contains("already been loaded"), "{text}");

    // Listed after the base, with its folder and its base, as vLLM lists adapters.
    let models: Value = serde_json::from_str(
        &agent()
            .get(format!("{}/models", s.url))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny", "m2"]);
    assert_eq!(models["data"][1]["parent"], "tiny");
    assert_eq!(models["data"][1]["root"], adapter.display().to_string());

    // The adapter answers as the merged checkpoint does, and not as the base does.
    let ask = |url: &str, name: &str| {
        post_json(
            &format!("{url}/chat/completions"),
            &chat(
                name,
                "Name a colour.",
                json!({"max_tokens": 12, "logprobs": true, "top_logprobs": 2}),
            ),
        )
    };
    let lp = |v: &Value| -> Vec<f64> {
        v["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["logprob"].as_f64().unwrap())
            .collect()
    };
    let via_adapter = ask(&s.url, "m2");
    let via_merged = ask(&merged.url, "merged");
    let via_base = ask(&s.url, "tiny");
    assert_eq!(via_adapter["model"], "m2");
    assert_eq!(
        via_adapter["choices"][0]["message"]["content"],
        via_merged["choices"][0]["message"]["content"]
    );
    for (a, m) in lp(&via_adapter).iter().zip(lp(&via_merged)) {
        assert!((a - m).abs() < 1e-4, "adapter {a} vs merged {m}");
    }
    assert_ne!(
        lp(&via_adapter),
        lp(&via_base),
        "the adapter changed nothing"
    );

    // Unloaded: gone from the list and refused by name; the base cannot be unloaded.
    let (status, text) = post(
        &format!("{}/unload_lora_adapter", s.url),
        &json!({"lora_name": "tiny"}).to_string(),
    );
    assert_eq!(status, 400, "{text}");
    let (status, text) = post(
        &format!("{}/unload_lora_adapter", s.url),
        &json!({"lora_name": "m2"}).to_string(),
    );
    assert_eq!(status, 200, "{text}");
    let (status, text) = post(
        &format!("{}/chat/completions", s.url),
        &chat("m2", "Name a colour.", json!({})).to_string(),
    );
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("`tiny`"), "{text}");

    // An adapter that does not fit the base is refused with the reason; nothing else changes.
    let wrong = dir.path().join("wrong");
    std::fs::create_dir_all(&wrong).unwrap();
    let cfg = std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap();
    std::fs::write(
        wrong.join("adapter_config.json"),
        cfg.replace("\"r\": 4", "\"r\": 8"),
    )
    .unwrap();
    std::fs::copy(
        adapter.join("adapter_model.safetensors"),
        wrong.join("adapter_model.safetensors"),
    )
    .unwrap();
    let (status, text) = post(
        &format!("{}/load_lora_adapter", s.url),
        &json!({"lora_name": "w", "lora_path": wrong}).to_string(),
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("r = 8"), "{text}");
    ask(&s.url, "tiny");
}
