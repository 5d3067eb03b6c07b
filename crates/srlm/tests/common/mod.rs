//! A bare HTTP/1.1 server for tests that need an OpenAI-compatible server to misbehave, or to
//! answer in a way no real model would: one thread per connection, one request per
//! connection, and the handler writes whatever reply it likes (or none).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

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
