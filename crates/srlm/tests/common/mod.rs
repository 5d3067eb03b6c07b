//! What the binary's tests share: the engine's tiny random Llama as a model folder, JSONL
//! reading, and a bare HTTP/1.1 server for tests that need an OpenAI-compatible server to
//! misbehave, or to answer in a way no real model would (one thread per connection, one
//! request per connection, and the handler writes whatever reply it likes, or none).

#![allow(dead_code)]

pub mod tiny_run;

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The engine's tiny random Llama (its goldens), copied into `dir` with a context long enough
/// for the judge prompt.
pub fn tiny_model(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../srlm-engine/tests/goldens/tiny-llama");
    let dst = dir.join("tiny");
    std::fs::create_dir_all(&dst).unwrap();
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["max_position_embeddings"] = 4096.into();
    std::fs::write(dst.join("config.json"), cfg.to_string()).unwrap();
    dst
}

/// A command line written as one string: words split at spaces, and `@name` is the file or
/// folder `name` in `dir` (a temporary directory's path holds no spaces).
pub fn argv(dir: &Path, line: &str) -> Vec<String> {
    assert!(
        !dir.display().to_string().contains(' '),
        "{}",
        dir.display()
    );
    line.split_whitespace()
        .map(|w| match w.strip_prefix('@') {
            Some(name) => dir.join(name).display().to_string(),
            None => w.to_string(),
        })
        .collect()
}

/// Every line of a JSONL file (none if it does not exist).
pub fn lines(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// One request: lower-cased headers and the body.
pub struct HttpRequest {
    pub headers: HashMap<String, String>,
    pub body: String,
}

fn read_request(stream: &mut TcpStream) -> Option<HttpRequest> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_lowercase(), v.trim().to_string());
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(HttpRequest {
        headers,
        body: String::from_utf8(body).ok()?,
    })
}

/// Writes a whole reply: `status` like "200 OK", `extra` header lines ending in \r\n.
pub fn reply(stream: &mut TcpStream, status: &str, extra: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

/// Starts the server; returns its base URL (`http://127.0.0.1:PORT/v1`).
pub fn start(handler: impl Fn(&mut TcpStream, HttpRequest) + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let handler = handler.clone();
            std::thread::spawn(move || {
                if let Some(req) = read_request(&mut stream) {
                    handler(&mut stream, req);
                }
            });
        }
    });
    url
}

/// A chat completion reply with `n` choices of `content`.
pub fn chat_reply(n: usize, content: &str) -> String {
    let choices: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({"index": i, "finish_reason": "stop",
                "message": {"role": "assistant", "content": content}})
        })
        .collect();
    serde_json::json!({"id": "x", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": choices, "usage": {"prompt_tokens": 10, "completion_tokens": 4 * n, "total_tokens": 10 + 4 * n}})
    .to_string()
}
