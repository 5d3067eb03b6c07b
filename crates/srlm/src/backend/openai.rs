//! A server that speaks the OpenAI API as a backend. Chat prompts go to `/chat/completions`,
//! raw text (the few-shot prompt writer) to `/completions`. Requests that differ only in their
//! seed (the k judgements of one candidate, the N samples of one prompt) go as one request with
//! `n` set; a server that returns fewer choices is asked again for the rest.
//!
//! Up to `concurrency` requests are in flight. A timeout, a 408, 429 or 5xx status, a dropped
//! connection or an unreadable reply is retried with exponential backoff (a 429's or 503's
//! `Retry-After` is honoured); other statuses (a bad request, a wrong key) are not. A request
//! still failing after `max_retries` comes back as `Outcome::Failed` with the last error.
//! The API key is read from an environment variable, sent as a bearer token, and never printed.
//!
//! A request that wants log-probabilities asks for them (`logprobs: true` with `top_logprobs`
//! in chat, `logprobs: N` in completions; at most OpenAI's 20). A server that returns none
//! (some providers, llama.cpp builds without them) gives completions without them: the
//! caller decides what that means, never an error here.

use super::{Backend, GenRequest, Generated, Outcome};
use anyhow::{bail, Result};
use srlm_core::generation::{Message, PromptInput};
use srlm_core::openai::{
    parse_finish_reason, ChatRequest, CompletionRequest, CompletionResponse, ErrorBody,
    LogprobsField, ModelList, PromptText, SamplingFields, Stop, MAX_TOP_LOGPROBS,
};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// e.g. `http://localhost:8000/v1`.
    pub base_url: String,
    /// None: the first model the server lists.
    pub model: Option<String>,
    pub api_key_env: String,
    pub concurrency: usize,
    /// For one HTTP request, connecting to the last byte of the reply.
    pub timeout: Duration,
    pub max_retries: u32,
    pub n_per_request: bool,
}

pub struct OpenAiBackend {
    cfg: RemoteConfig,
    base: String,
    model: String,
    agent: ureq::Agent,
    api_key: Option<String>,
    /// The first retry's wait; each later one doubles it, up to `MAX_BACKOFF`.
    pub backoff: Duration,
}

/// Longest wait between tries, and longest `Retry-After` honoured.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);
/// Most completions asked of one request.
const MAX_N: usize = 16;

/// Why one try failed.
#[derive(Debug)]
enum TryError {
    /// Worth another try, after the server's `Retry-After` if it gave one.
    Transient(String, Option<Duration>),
    /// Another try would fail the same way.
    Permanent(String),
}

impl OpenAiBackend {
    pub fn new(cfg: RemoteConfig) -> Result<Self> {
        let base = cfg.base_url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!(
                "--api-base `{base}` is not an http(s) URL\n  hint: e.g. http://localhost:8000/v1"
            );
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let api_key = std::env::var(&cfg.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        let mut backend = Self {
            model: cfg.model.clone().unwrap_or_default(),
            cfg,
            base,
            agent,
            api_key,
            backoff: Duration::from_millis(500),
        };
        if backend.model.is_empty() {
            backend.model = backend.first_model()?;
        }
        Ok(backend)
    }

    /// The first model of the server's `/models` list.
    fn first_model(&self) -> Result<String> {
        let list: ModelList = self
            .with_retries("GET /models", || {
                let body = self.send("models", None)?;
                serde_json::from_str(&body).map_err(|e| {
                    TryError::Transient(format!("unreadable /models reply: {e}"), None)
                })
            })
            .map_err(|e| anyhow::anyhow!("{}: {e}\n  hint: {}", self.base, self.hint_for(&e)))?;
        match list.data.into_iter().next() {
            Some(m) => Ok(m.id),
            None => bail!(
                "{}/models lists no model\n  hint: name one with --api-model",
                self.base
            ),
        }
    }

    /// What to do about a failed `GET /models`: a refused key is not a server that is down.
    fn hint_for(&self, error: &str) -> String {
        if error.contains("HTTP 401") || error.contains("HTTP 403") {
            let set = match self.api_key {
                Some(_) => "is set, but the server refused its key",
                None => "is not set",
            };
            format!(
                "the server wants an API key: ${} {set} (--api-key-env names another variable)",
                self.cfg.api_key_env
            )
        } else {
            "is the server up? --api-model names the model without asking it".into()
        }
    }

    /// One HTTP try: the reply's body on a 2xx status.
    fn send(&self, path: &str, body: Option<&str>) -> Result<String, TryError> {
        let url = format!("{}/{path}", self.base);
        let auth = self.api_key.as_ref().map(|k| format!("Bearer {k}"));
        let result = match body {
            Some(b) => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(b)
            }
            None => {
                let mut req = self.agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
        };
        let mut resp = result.map_err(|e| classify(&e, self.cfg.timeout))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(|s| Duration::from_secs_f64(s).min(MAX_RETRY_AFTER));
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| classify(&e, self.cfg.timeout))?;
        if (200..300).contains(&status) {
            return Ok(text);
        }
        let detail = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| text.chars().take(300).collect());
        let msg = format!("HTTP {status} from {url}: {detail}");
        if status == 408 || status == 429 || status >= 500 {
            Err(TryError::Transient(msg, retry_after))
        } else {
            Err(TryError::Permanent(msg))
        }
    }

    /// `attempt` until it succeeds, fails for good, or has been retried `max_retries` times.
    fn with_retries<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Result<T, TryError>,
    ) -> Result<T, String> {
        let mut tries = 0u32;
        loop {
            match attempt() {
                Ok(v) => return Ok(v),
                Err(TryError::Permanent(msg)) => return Err(msg),
                Err(TryError::Transient(msg, after)) => {
                    if tries >= self.cfg.max_retries {
                        return Err(format!("{msg} (gave up after {} tries)", tries + 1));
                    }
                    let wait = after.unwrap_or_else(|| self.backoff_for(tries));
                    tracing::warn!(
                        "{what}: {msg}; retry {}/{} in {:.1} s",
                        tries + 1,
                        self.cfg.max_retries,
                        wait.as_secs_f64()
                    );
                    std::thread::sleep(wait);
                    tries += 1;
                }
            }
        }
    }

    /// Exponential backoff with up to 25% jitter, so clients that failed together do not all
    /// come back at once.
    fn backoff_for(&self, tries: u32) -> Duration {
        let base = self
            .backoff
            .saturating_mul(1 << tries.min(16))
            .min(MAX_BACKOFF);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        base + base.mul_f64((nanos % 1000) as f64 / 4000.0)
    }

    /// The request body and endpoint for `n` completions of `r`.
    fn body(&self, r: &GenRequest, n: usize) -> (&'static str, String) {
        let p = &r.params;
        let sampling = SamplingFields {
            n: (n > 1).then_some(n),
            temperature: Some(p.temperature),
            top_p: Some(p.top_p),
            top_k: (p.top_k > 0).then_some(p.top_k),
            repetition_penalty: (p.repetition_penalty != 1.0).then_some(p.repetition_penalty),
            max_tokens: Some(p.max_new_tokens),
            stop: (!p.stop.is_empty()).then(|| Stop::Many(p.stop.clone())),
            seed: Some(p.seed),
            ..Default::default()
        };
        let top = p.logprobs.map(|n| n.min(MAX_TOP_LOGPROBS));
        let model = self.model.clone();
        let json = match &r.prompt {
            PromptInput::Chat(messages) => (
                "chat/completions",
                serde_json::to_string(&ChatRequest {
                    model,
                    messages: messages.clone(),
                    continue_final_message: false,
                    add_generation_prompt: None,
                    sampling: SamplingFields {
                        logprobs: top.map(|_| LogprobsField::Flag(true)),
                        top_logprobs: top,
                        ..sampling
                    },
                }),
            ),
            PromptInput::Continue {
                messages,
                assistant,
            } => (
                "chat/completions",
                serde_json::to_string(&ChatRequest {
                    model,
                    messages: messages
                        .iter()
                        .cloned()
                        .chain([Message::new("assistant", assistant)])
                        .collect(),
                    continue_final_message: true,
                    add_generation_prompt: Some(false),
                    sampling: SamplingFields {
                        logprobs: top.map(|_| LogprobsField::Flag(true)),
                        top_logprobs: top,
                        ..sampling
                    },
                }),
            ),
            PromptInput::Raw(text) => (
                "completions",
                serde_json::to_string(&CompletionRequest {
                    model,
                    prompt: PromptText::One(text.clone()),
                    sampling: SamplingFields {
                        logprobs: top.map(LogprobsField::Count),
                        ..sampling
                    },
                }),
            ),
        };
        (json.0, json.1.expect("request bodies serialise"))
    }

    /// The outcomes of a group of requests with one prompt and one setting.
    fn complete(&self, mut group: Vec<GenRequest>) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(group.len());
        while !group.is_empty() {
            let n = group.len();
            let (path, body) = self.body(&group[0], n);
            let what = format!("request {}", group[0].id);
            let reply = self.with_retries(&what, || {
                let text = self.send(path, Some(&body))?;
                let resp: CompletionResponse = serde_json::from_str(&text).map_err(|e| {
                    TryError::Transient(format!("unreadable reply to {what}: {e}"), None)
                })?;
                if resp.choices.is_empty() {
                    return Err(TryError::Transient(
                        format!("reply to {what} has no choices"),
                        None,
                    ));
                }
                Ok(resp)
            });
            match reply {
                Ok(mut resp) => {
                    resp.choices.sort_by_key(|c| c.index);
                    let k = resp.choices.len().min(n);
                    let usage = resp.usage;
                    for (r, c) in group.drain(..k).zip(resp.choices) {
                        let logprobs = r
                            .params
                            .logprobs
                            .and(c.logprobs.as_ref())
                            .and_then(|l| l.to_tokens());
                        out.push(Outcome::Done(Generated {
                            id: r.id,
                            logprobs,
                            text: c.content().unwrap_or_default().to_string(),
                            finish_reason: parse_finish_reason(c.finish_reason.as_deref()),
                            prompt_tokens: usage.map(|u| u.prompt_tokens),
                            completion_tokens: usage
                                .filter(|_| n == 1)
                                .map(|u| u.completion_tokens),
                            forced_verdict: None,
                        }));
                    }
                }
                Err(error) => {
                    for r in group.drain(..) {
                        out.push(Outcome::Failed {
                            id: r.id,
                            error: error.clone(),
                        });
                    }
                }
            }
        }
        out
    }
}

/// Transport errors: the invalid URL kind will not mend; the rest (refused or dropped
/// connections, timeouts, broken replies) may.
fn classify(e: &ureq::Error, timeout: Duration) -> TryError {
    match e {
        ureq::Error::Timeout(_) => TryError::Transient(
            format!("no complete reply within {:.1} s", timeout.as_secs_f64()),
            None,
        ),
        ureq::Error::BadUri(_) | ureq::Error::InvalidProxyUrl => TryError::Permanent(e.to_string()),
        _ => TryError::Transient(e.to_string(), None),
    }
}

/// Consecutive requests that differ only in their seed, at most `max` together.
fn group_requests(requests: Vec<GenRequest>, max: usize) -> Vec<Vec<GenRequest>> {
    let same = |a: &GenRequest, b: &GenRequest| {
        let mut bp = b.params.clone();
        bp.seed = a.params.seed;
        a.prompt == b.prompt && a.params == bp
    };
    let mut groups: Vec<Vec<GenRequest>> = Vec::new();
    for r in requests {
        match groups.last_mut() {
            Some(g) if g.len() < max && same(&g[0], &r) => g.push(r),
            _ => groups.push(vec![r]),
        }
    }
    groups
}

impl Backend for OpenAiBackend {
    fn describe(&self) -> String {
        format!("{} at {}", self.model, self.base)
    }

    fn generate(
        &self,
        requests: Vec<GenRequest>,
        on_outcome: &mut dyn FnMut(Outcome) -> Result<()>,
    ) -> Result<()> {
        let max_n = if self.cfg.n_per_request { MAX_N } else { 1 };
        let groups = group_requests(requests, max_n);
        let workers = self.cfg.concurrency.min(groups.len());
        let queue = Mutex::new(VecDeque::from(groups));
        let stop = AtomicBool::new(false);
        let (tx, rx) = mpsc::channel::<Outcome>();
        std::thread::scope(|s| {
            for _ in 0..workers {
                let tx = tx.clone();
                let (queue, stop) = (&queue, &stop);
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(group) = queue.lock().expect("queue lock").pop_front() else {
                            break;
                        };
                        for o in self.complete(group) {
                            if tx.send(o).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
            drop(tx);
            // Outcomes are handed over here, on the caller's thread, as they arrive.
            let mut result = Ok(());
            for o in rx {
                if result.is_ok() {
                    if let Err(e) = on_outcome(o) {
                        stop.store(true, Ordering::Relaxed);
                        result = Err(e);
                    }
                }
            }
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use srlm_engine::sampling::SamplingParams;

    fn req(id: &str, prompt: &str, seed: u64) -> GenRequest {
        GenRequest {
            id: id.into(),
            prompt: PromptInput::Chat(vec![Message::new("user", prompt)]),
            params: SamplingParams {
                seed,
                ..Default::default()
            },
        }
    }

    #[test]
    fn requests_differing_only_in_seed_are_grouped() {
        let reqs = vec![
            req("a/0", "x", 1),
            req("a/1", "x", 2),
            req("a/2", "x", 3),
            req("b/0", "y", 4),
            req("c/0", "x", 5),
        ];
        let groups = group_requests(reqs.clone(), 16);
        let ids: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|r| r.id.as_str()).collect())
            .collect();
        assert_eq!(
            ids,
            vec![vec!["a/0", "a/1", "a/2"], vec!["b/0"], vec!["c/0"]]
        );
        assert_eq!(group_requests(reqs.clone(), 2)[0].len(), 2);
        assert_eq!(group_requests(reqs, 1).len(), 5);
    }

    #[test]
    fn a_bad_base_url_is_refused_before_any_request() {
        let cfg = RemoteConfig {
            base_url: "localhost:8000/v1".into(),
            model: Some("m".into()),
            api_key_env: "SRLM_TEST_NO_SUCH_KEY".into(),
            concurrency: 1,
            timeout: Duration::from_secs(1),
            max_retries: 0,
            n_per_request: true,
        };
        let e = OpenAiBackend::new(cfg).err().unwrap().to_string();
        assert!(e.contains("not an http(s) URL"), "{e}");
    }
}
