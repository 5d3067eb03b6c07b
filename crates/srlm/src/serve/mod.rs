//! `srlm serve`: the engine behind an OpenAI-compatible HTTP API, so any M_t can answer or
//! judge for other tools (and for srlm's own remote backend).
//!
//! ```text
//! GET  /v1/models               the model served, and the adapters loaded over it
//! POST /v1/chat/completions     messages -> chat template; n, stream (SSE), stop, seed,
//!                               continue_final_message (vLLM's: continue a begun assistant
//!                               turn), logprobs + top_logprobs, ...
//! POST /v1/completions          raw prompt text; the same options (`logprobs: N`)
//! POST /v1/load_lora_adapter    {"lora_name", "lora_path"}: vLLM's runtime adapter loading
//! POST /v1/unload_lora_adapter  {"lora_name"}                      (both with --enable-lora)
//! GET  /health
//! ```
//!
//! A LoRA adapter (a PEFT folder) is merged into a copy of the base model's weights when it
//! loads and gets an engine thread of its own: requests name it as their `model`, as vLLM's
//! clients do; it costs a model's memory rather than the adapter's.
//!
//! HTTP is handled on a small tokio runtime; one engine thread owns the generator. Requests
//! that arrive while others decode join the running batch (continuous batching, with prefix
//! reuse across requests): a handler renders and tokenizes its prompt, hands the engine thread
//! one sequence per choice, and turns the pieces and completions that come back into a JSON
//! reply or an SSE stream.

use crate::model_args::ModelArgs;
use anyhow::{Context, Result};
use axum::extract::rejection::StringRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use srlm_core::generation::PromptInput;
use srlm_core::openai::{
    finish_reason_name, ChatRequest, Choice, ChoiceLogprobs, ChoiceMessage, CompletionRequest,
    CompletionResponse, ErrorBody, ErrorDetail, ModelCard, ModelList, PromptText, SamplingFields,
    Usage, MAX_TOP_LOGPROBS,
};
use srlm_engine::generate::{Completion, Event, Generator, Next, Request};
use srlm_engine::sampling::SamplingParams;
use srlm_engine::{Engine, LoadOptions};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use tokio::sync::mpsc as tmpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed at start).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// The model name clients ask for (default: the model file's or folder's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Sequences decoded together, across all requests.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Completion tokens when a request sets no max_tokens.
    #[arg(long, default_value_t = 512)]
    pub default_max_tokens: usize,
    /// Require `Authorization: Bearer <key>` on every /v1 request, the key read from this
    /// environment variable (never from the command line, where `ps` would show it).
    #[arg(long)]
    pub api_key_env: Option<String>,
    /// Accept POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's API): a client
    /// may then have the server read any adapter folder it can reach.
    #[arg(long)]
    pub enable_lora: bool,
}

/// How `start` serves.
pub struct ServeOptions {
    pub name: String,
    pub batch_size: usize,
    pub default_max_tokens: usize,
    /// Required bearer token, if any.
    pub api_key: Option<String>,
    /// How LoRA adapters load over the base (`--enable-lora`); None refuses to load any.
    pub adapters: Option<LoadOptions>,
}

/// Most choices one request may ask for.
const MAX_N: usize = 16;
/// The largest request body read (axum's default, named so the 413 can say it).
const MAX_BODY_BYTES: usize = 2 << 20;

/// What the engine thread sends back for one choice of a request.
enum ChoiceEvent {
    Piece(usize, String),
    Done(usize, Completion),
}

/// One HTTP request's sequences, handed to the engine thread.
struct Job {
    requests: Vec<Request>,
    events: tmpsc::UnboundedSender<ChoiceEvent>,
}

/// One model the server answers for: the base, or an adapter loaded over it. Its engine
/// thread ends once the model is unloaded and its last request has finished.
struct Served {
    engine: Arc<Engine>,
    jobs: Mutex<mpsc::Sender<Job>>,
    /// The adapter folder, for a model loaded by /v1/load_lora_adapter.
    adapter: Option<PathBuf>,
}

impl Served {
    /// `engine` with an engine thread decoding up to `batch_size` sequences together.
    fn start(engine: Engine, batch_size: usize, adapter: Option<PathBuf>) -> Result<Self> {
        let engine = Arc::new(engine);
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let thread_engine = engine.clone();
        std::thread::Builder::new()
            .name("srlm-engine".into())
            .spawn(move || engine_loop(&thread_engine, jobs_rx, batch_size))?;
        Ok(Self {
            engine,
            jobs: Mutex::new(jobs_tx),
            adapter,
        })
    }
}

struct AppState {
    /// The base model's name.
    name: String,
    /// Every model served, by name: the base, then adapters.
    models: RwLock<BTreeMap<String, Arc<Served>>>,
    adapters: Option<LoadOptions>,
    batch_size: usize,
    default_max_tokens: usize,
    api_key: Option<String>,
    next_id: AtomicU64,
}

impl AppState {
    fn served(&self, name: &str) -> Option<Arc<Served>> {
        self.models.read().ok()?.get(name).cloned()
    }
}

/// A running server: where it listens.
pub struct Server {
    pub addr: SocketAddr,
    pub name: String,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let api_key = match &a.api_key_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(k) if !k.is_empty() => Some(k),
            _ => anyhow::bail!(
                "--api-key-env {var}: the variable is not set\n  hint: export {var}=<key>, or leave out --api-key-env to serve without a key"
            ),
        },
    };
    let engine = a.model.load()?;
    let opts = ServeOptions {
        name: a.name.clone().unwrap_or_else(|| default_name(&engine)),
        batch_size: a.batch_size,
        default_max_tokens: a.default_max_tokens,
        api_key,
        adapters: a.enable_lora.then(|| a.model.load_options()),
    };
    let (server, http) = start(engine, &format!("{}:{}", a.host, a.port), opts)?;
    eprintln!(
        "srlm: serving `{}` at http://{}/v1 (up to {} sequences decoded together{})",
        server.name,
        server.addr,
        a.batch_size,
        if a.api_key_env.is_some() {
            "; a key is required"
        } else {
            ""
        }
    );
    http.join()
        .map_err(|_| anyhow::anyhow!("the HTTP server thread panicked"))?
}

fn default_name(engine: &Engine) -> String {
    engine
        .path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "srlm".into())
}

/// Starts the engine thread and the HTTP server on `addr`; returns where it listens and the
/// HTTP thread (which runs until the process ends).
pub fn start(
    engine: Engine,
    addr: &str,
    opts: ServeOptions,
) -> Result<(Server, std::thread::JoinHandle<Result<()>>)> {
    let ServeOptions {
        name,
        batch_size,
        default_max_tokens,
        api_key,
        adapters,
    } = opts;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let base = Served::start(engine, batch_size, None)?;
    let state = Arc::new(AppState {
        name: name.clone(),
        models: RwLock::new(BTreeMap::from([(name.clone(), Arc::new(base))])),
        adapters,
        batch_size,
        default_max_tokens,
        api_key,
        next_id: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/load_lora_adapter", post(load_lora_adapter))
        .route("/v1/unload_lora_adapter", post(unload_lora_adapter))
        .route("/health", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state);
    let http =
        std::thread::Builder::new()
            .name("srlm-http".into())
            .spawn(move || -> Result<()> {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    axum::serve(listener, app).await?;
                    Ok(())
                })
            })?;
    Ok((Server { addr: local, name }, http))
}

/// The engine thread: one generator over every request, taking new ones between steps.
fn engine_loop(engine: &Engine, jobs: mpsc::Receiver<Job>, batch_size: usize) {
    let mut gen = Generator::new(&engine.model, &engine.tokenizer);
    gen.max_batch = batch_size.max(1);
    // Request id -> where its events go, and which choice it is.
    let routes: RefCell<HashMap<String, (tmpsc::UnboundedSender<ChoiceEvent>, usize)>> =
        RefCell::default();
    let mut queued: VecDeque<Request> = VecDeque::new();
    let result = gen.serve(
        |idle| {
            if queued.is_empty() {
                let job = if idle {
                    match jobs.recv() {
                        Ok(j) => j,
                        Err(_) => return Next::End,
                    }
                } else {
                    match jobs.try_recv() {
                        Ok(j) => j,
                        Err(mpsc::TryRecvError::Empty) => return Next::Later,
                        Err(mpsc::TryRecvError::Disconnected) => return Next::End,
                    }
                };
                let mut routes = routes.borrow_mut();
                for (i, r) in job.requests.into_iter().enumerate() {
                    routes.insert(r.id.clone(), (job.events.clone(), i));
                    queued.push_back(r);
                }
            }
            match queued.pop_front() {
                Some(r) => Next::Request(r),
                None => Next::Later,
            }
        },
        // A client that went away drops its reply channel: its sequences stop here.
        |id| {
            let mut routes = routes.borrow_mut();
            let open = routes.get(id).is_some_and(|(tx, _)| !tx.is_closed());
            if !open {
                routes.remove(id);
            }
            open
        },
        |ev| {
            match ev {
                Event::Text { id, piece } => {
                    if let Some((tx, i)) = routes.borrow().get(id) {
                        let _ = tx.send(ChoiceEvent::Piece(*i, piece.to_string()));
                    }
                }
                Event::Done(c) => {
                    if let Some((tx, i)) = routes.borrow_mut().remove(&c.id) {
                        let _ = tx.send(ChoiceEvent::Done(i, c));
                    }
                }
            }
            Ok(())
        },
    );
    if let Err(e) = result {
        tracing::error!("the engine stopped: {e}");
        eprintln!("srlm: the engine stopped: {e}");
    }
}

fn error(status: StatusCode, kind: &str, message: String) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind: kind.into(),
            code: None,
            param: None,
        },
    };
    (status, Json(body)).into_response()
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// A body that could not be read (too large: 413; not UTF-8: 400), in OpenAI's error shape
/// rather than axum's plain text.
fn unreadable_body(e: StringRejection) -> Response {
    let status = e.status();
    let message = match status {
        StatusCode::PAYLOAD_TOO_LARGE => format!(
            "the request body is larger than this server accepts ({} MiB)",
            MAX_BODY_BYTES >> 20
        ),
        _ => format!("cannot read the request body: {}", e.body_text()),
    };
    error(status, "invalid_request_error", message)
}

/// A 400 naming the request field at fault (OpenAI's `param`).
fn bad_request_param(message: String, param: &str) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            message,
            kind: "invalid_request_error".into(),
            code: None,
            param: Some(param.into()),
        },
    };
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// None if the request may proceed; else the 401 to send.
fn refuse_unauthorized(s: &AppState, headers: &HeaderMap) -> Option<Response> {
    let want = s.api_key.as_ref()?;
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(want.as_str()) {
        return None;
    }
    Some(error(
        StatusCode::UNAUTHORIZED,
        "invalid_request_error",
        "a valid API key is required: send `Authorization: Bearer <key>`".into(),
    ))
}

async fn models(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Some(r) = refuse_unauthorized(&s, &headers) {
        return r;
    }
    let models = match s.models.read() {
        Ok(m) => m,
        Err(_) => return engine_stopped(),
    };
    // The base first, then the adapters by name, each naming its base as vLLM does.
    let mut data = Vec::with_capacity(models.len());
    for (name, served) in models.iter() {
        let card = ModelCard {
            id: name.clone(),
            object: "model".into(),
            created: 0,
            owned_by: "srlm".into(),
            root: Some(match &served.adapter {
                Some(dir) => dir.display().to_string(),
                None => served.engine.path.display().to_string(),
            }),
            parent: served.adapter.as_ref().map(|_| s.name.clone()),
        };
        match served.adapter {
            None => data.insert(0, card),
            Some(_) => data.push(card),
        }
    }
    Json(ModelList {
        object: "list".into(),
        data,
    })
    .into_response()
}

fn engine_stopped() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "the engine has stopped".into(),
    )
}

/// vLLM's body of /v1/load_lora_adapter and /v1/unload_lora_adapter.
#[derive(serde::Deserialize)]
struct AdapterRequest {
    lora_name: String,
    #[serde(default)]
    lora_path: Option<String>,
}

/// An adapter request's body once its key is checked, with the server's adapter options; or
/// the response to send (401, 400: unreadable, or adapters not enabled, saying how).
fn adapter_request(
    s: &AppState,
    headers: &HeaderMap,
    body: Result<String, StringRejection>,
) -> std::result::Result<(AdapterRequest, LoadOptions), Response> {
    let req: AdapterRequest = authorized_request(s, headers, body, "adapter request")?;
    let opts = s.adapters.clone().ok_or_else(|| {
        bad_request(
            "this server does not load LoRA adapters\n  hint: start srlm serve with --enable-lora"
                .into(),
        )
    })?;
    Ok((req, opts))
}

/// Loads a PEFT adapter over the base model and serves it as `lora_name` (vLLM's API: 200
/// with a line of text; 400 for a name already served or an adapter that does not load).
async fn load_lora_adapter(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<String, StringRejection>,
) -> Response {
    let (req, opts) = match adapter_request(&s, &headers, body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let Some(path) = req.lora_path.filter(|p| !p.is_empty()) else {
        return bad_request_param("`lora_path` is required".into(), "lora_path");
    };
    if req.lora_name.is_empty() {
        return bad_request_param("`lora_name` is required".into(), "lora_name");
    }
    if s.served(&req.lora_name).is_some() {
        return bad_request(format!(
            "the lora adapter '{}' has already been loaded\n  hint: unload it first (POST /v1/unload_lora_adapter) to load another under this name",
            req.lora_name
        ));
    }
    let Some(base) = s.served(&s.name) else {
        return engine_stopped();
    };
    let dir = PathBuf::from(&path);
    let state = s.clone();
    let loaded = tokio::task::spawn_blocking(move || -> Result<Served> {
        let adapter = srlm_engine::adapter::LoraAdapter::read(&dir)?;
        let engine = Engine::load_adapted(&base.engine.path, &adapter, &opts)?;
        Served::start(engine, state.batch_size, Some(dir))
    })
    .await;
    let served = match loaded {
        Ok(Ok(served)) => served,
        Ok(Err(e)) => return bad_request(format!("cannot load the adapter at {path}: {e:#}")),
        Err(e) => return bad_request(format!("cannot load the adapter at {path}: {e}")),
    };
    let Ok(mut models) = s.models.write() else {
        return engine_stopped();
    };
    if models.contains_key(&req.lora_name) {
        return bad_request(format!(
            "the lora adapter '{}' has already been loaded",
            req.lora_name
        ));
    }
    models.insert(req.lora_name.clone(), Arc::new(served));
    eprintln!("srlm: serving adapter `{}` from {path}", req.lora_name);
    format!(
        "Success: LoRA adapter '{}' added successfully.",
        req.lora_name
    )
    .into_response()
}

/// Stops serving the adapter `lora_name` (its requests in flight finish first).
async fn unload_lora_adapter(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<String, StringRejection>,
) -> Response {
    let req = match adapter_request(&s, &headers, body) {
        Ok((r, _)) => r,
        Err(response) => return response,
    };
    let Ok(mut models) = s.models.write() else {
        return engine_stopped();
    };
    match models.get(&req.lora_name) {
        Some(served) if served.adapter.is_some() => {
            models.remove(&req.lora_name);
            eprintln!("srlm: stopped serving adapter `{}`", req.lora_name);
            format!(
                "Success: LoRA adapter '{}' removed successfully.",
                req.lora_name
            )
            .into_response()
        }
        Some(_) => bad_request(format!(
            "`{}` is the base model, not an adapter",
            req.lora_name
        )),
        None => error(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("the lora adapter '{}' is not loaded", req.lora_name),
        ),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Endpoint {
    Chat,
    Text,
}

impl Endpoint {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Endpoint::Chat, false) => "chat.completion",
            (Endpoint::Chat, true) => "chat.completion.chunk",
            (Endpoint::Text, _) => "text_completion",
        }
    }

    /// The log-probabilities of a finished choice in this endpoint's shape.
    fn logprobs(self, c: &Completion) -> Option<ChoiceLogprobs> {
        let tokens = c.logprobs.as_deref()?;
        Some(match self {
            Endpoint::Chat => ChoiceLogprobs::chat(tokens),
            Endpoint::Text => ChoiceLogprobs::text(tokens),
        })
    }

    /// A choice carrying `text`: as a message, a streamed delta, or plain text.
    fn choice(self, index: usize, text: String, chunk: bool, finish: Option<String>) -> Choice {
        let msg = |role: Option<String>| ChoiceMessage {
            role,
            content: Some(text.clone()),
        };
        match (self, chunk) {
            (Endpoint::Chat, false) => Choice {
                index,
                message: Some(msg(Some("assistant".into()))),
                finish_reason: finish,
                ..Default::default()
            },
            (Endpoint::Chat, true) => Choice {
                index,
                delta: Some(msg(None)),
                finish_reason: finish,
                ..Default::default()
            },
            (Endpoint::Text, _) => Choice {
                index,
                text: Some(text),
                finish_reason: finish,
                ..Default::default()
            },
        }
    }
}

/// A request's body read as `T` once its API key is checked; `Err` is the response to send
/// (401, 413, or a 400 naming `what` was invalid).
fn authorized_request<T: serde::de::DeserializeOwned>(
    s: &AppState,
    headers: &HeaderMap,
    body: Result<String, StringRejection>,
    what: &str,
) -> std::result::Result<T, Response> {
    if let Some(r) = refuse_unauthorized(s, headers) {
        return Err(r);
    }
    let body = body.map_err(unreadable_body)?;
    serde_json::from_str(&body).map_err(|e| bad_request(format!("invalid {what}: {e}")))
}

async fn chat_completions(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<String, StringRejection>,
) -> Response {
    let req: ChatRequest = match authorized_request(&s, &headers, body, "chat completion request") {
        Ok(r) => r,
        Err(response) => return response,
    };
    let mut messages = req.messages;
    if let Err(e) = srlm_core::generation::check_messages(&messages) {
        return bad_request_param(format!("`messages`: {e}"), "messages");
    }
    let last = messages.last().expect("check_messages: not empty");
    let prompt = if req.continue_final_message {
        if last.role != "assistant" {
            return bad_request(
                "`continue_final_message` needs the last message to be the assistant's".into(),
            );
        }
        let assistant = messages.pop().expect("not empty").content;
        PromptInput::Continue {
            messages,
            assistant,
        }
    } else {
        PromptInput::Chat(messages)
    };
    respond(s, &req.model, prompt, req.sampling, Endpoint::Chat).await
}

async fn completions(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<String, StringRejection>,
) -> Response {
    let req: CompletionRequest = match authorized_request(&s, &headers, body, "completion request")
    {
        Ok(r) => r,
        Err(response) => return response,
    };
    let text = match req.prompt {
        PromptText::One(t) => t,
        PromptText::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptText::Many(_) => {
            return bad_request("`prompt` must be one string (send one request per prompt)".into())
        }
    };
    respond(
        s,
        &req.model,
        PromptInput::Raw(text),
        req.sampling,
        Endpoint::Text,
    )
    .await
}

/// Validates a request, hands its sequences to the engine, and answers: whole, or streamed.
async fn respond(
    s: Arc<AppState>,
    model: &str,
    prompt: PromptInput,
    f: SamplingFields,
    endpoint: Endpoint,
) -> Response {
    let Some(served) = s.served(model) else {
        let names: Vec<String> = s
            .models
            .read()
            .map(|m| m.keys().map(|k| format!("`{k}`")).collect())
            .unwrap_or_default();
        return error(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "model `{model}` is not served here; this server serves {}",
                names.join(", ")
            ),
        );
    };
    let n = f.n.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return bad_request(format!("`n` must be 1 to {MAX_N}, not {n}"));
    }
    let logprobs = f.wanted_logprobs();
    if let Some(top) = logprobs.filter(|&t| t > MAX_TOP_LOGPROBS) {
        return bad_request(format!(
            "`top_logprobs` must be 0 to {MAX_TOP_LOGPROBS}, not {top}"
        ));
    }
    let prompt_ids = match served.engine.encode_prompt(&prompt) {
        Ok(ids) => ids,
        Err(e) => return bad_request(format!("cannot render the prompt: {e}")),
    };
    let context = served.engine.model.max_positions();
    if prompt_ids.is_empty() || prompt_ids.len() >= context {
        return bad_request(format!(
            "the prompt is {} tokens; this server's context is {context}",
            prompt_ids.len()
        ));
    }
    let job = s.next_id.fetch_add(1, Ordering::Relaxed);
    let seed = f
        .seed
        .unwrap_or_else(|| srlm_core::hash::fnv1a_from(unix_now() ^ job, b"srlm-serve"));
    let params = SamplingParams {
        temperature: f.temperature.unwrap_or(1.0),
        top_p: f.top_p.unwrap_or(1.0),
        top_k: f.top_k.unwrap_or(0),
        repetition_penalty: f.repetition_penalty.unwrap_or(1.0),
        max_new_tokens: f
            .max_completion_tokens
            .or(f.max_tokens)
            .unwrap_or(s.default_max_tokens)
            .min(context - prompt_ids.len()),
        stop: f.stop.clone().map(|x| x.into_vec()).unwrap_or_default(),
        seed,
        logprobs,
    };
    if let Some(b) = params.problems().first() {
        let param = match b.name {
            "max_new_tokens" => "max_tokens",
            "logprobs" => "top_logprobs",
            name => name,
        };
        return bad_request_param(format!("`{param}` {}", b.problem), param);
    }
    // Choice 0 uses the request's seed as given; the others derive their own from it.
    let requests: Vec<Request> = (0..n)
        .map(|i| {
            let mut p = params.clone();
            if i > 0 {
                p.seed = srlm_core::hash::fnv1a_from(seed, &(i as u64).to_le_bytes());
            }
            Request {
                id: format!("{job}:{i}"),
                prompt_ids: prompt_ids.clone(),
                params: p,
            }
        })
        .collect();
    let (tx, rx) = tmpsc::unbounded_channel();
    let sent = served
        .jobs
        .lock()
        .map(|jobs| {
            jobs.send(Job {
                requests,
                events: tx,
            })
            .is_ok()
        })
        .unwrap_or(false);
    if !sent {
        return engine_stopped();
    }
    let head = Head {
        id: match endpoint {
            Endpoint::Chat => format!("chatcmpl-{job}"),
            Endpoint::Text => format!("cmpl-{job}"),
        },
        created: unix_now(),
        model: model.to_string(),
        endpoint,
        n,
        prompt_tokens: prompt_ids.len(),
    };
    if f.stream.unwrap_or(false) {
        let usage = f.stream_options.map(|o| o.include_usage).unwrap_or(false);
        stream(head, rx, usage).into_response()
    } else {
        whole(head, rx).await
    }
}

/// What every reply of one request shares.
struct Head {
    id: String,
    created: u64,
    model: String,
    endpoint: Endpoint,
    n: usize,
    prompt_tokens: usize,
}

impl Head {
    fn reply(&self, chunk: bool, choices: Vec<Choice>, usage: Option<Usage>) -> CompletionResponse {
        CompletionResponse {
            id: self.id.clone(),
            object: self.endpoint.object(chunk).into(),
            created: self.created,
            model: self.model.clone(),
            choices,
            usage,
        }
    }

    fn usage(&self, completion_tokens: usize) -> Usage {
        // As OpenAI counts: the prompt once, however many choices share it.
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens,
            total_tokens: self.prompt_tokens + completion_tokens,
        }
    }
}

async fn whole(head: Head, mut rx: tmpsc::UnboundedReceiver<ChoiceEvent>) -> Response {
    let mut done: Vec<Option<Completion>> = vec![None; head.n];
    let mut left = head.n;
    while left > 0 {
        match rx.recv().await {
            Some(ChoiceEvent::Done(i, c)) => {
                done[i] = Some(c);
                left -= 1;
            }
            Some(ChoiceEvent::Piece(..)) => {}
            None => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server_error",
                    "the engine stopped before the request finished".into(),
                )
            }
        }
    }
    let mut tokens = 0;
    let choices = done
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let c = c.expect("every choice finished");
            tokens += c.token_ids.len();
            let finish = finish_reason_name(&c.finish_reason).to_string();
            let logprobs = head.endpoint.logprobs(&c);
            Choice {
                logprobs,
                ..head.endpoint.choice(i, c.text, false, Some(finish))
            }
        })
        .collect();
    let usage = head.usage(tokens);
    Json(head.reply(false, choices, Some(usage))).into_response()
}

/// An SSE stream as OpenAI sends it: for chat, a first chunk per choice with the role; a chunk
/// per piece of text; a last chunk per choice with its finish reason (and, when asked for, the
/// log-probabilities of all its tokens: the chunks' lists laid end to end are the choice's,
/// as a client assembles them); the usage chunk if asked for; then `data: [DONE]`.
fn stream(
    head: Head,
    mut rx: tmpsc::UnboundedReceiver<ChoiceEvent>,
    include_usage: bool,
) -> Sse<UnboundedReceiverStream<Result<SseEvent, Infallible>>> {
    let (tx, out) = tmpsc::unbounded_channel::<Result<SseEvent, Infallible>>();
    tokio::spawn(async move {
        let send = |r: &CompletionResponse| {
            let data = serde_json::to_string(r).expect("replies serialise");
            tx.send(Ok(SseEvent::default().data(data))).is_ok()
        };
        if head.endpoint == Endpoint::Chat {
            for i in 0..head.n {
                let mut c = head.endpoint.choice(i, String::new(), true, None);
                if let Some(d) = c.delta.as_mut() {
                    d.role = Some("assistant".into());
                }
                if !send(&head.reply(true, vec![c], None)) {
                    return;
                }
            }
        }
        let (mut left, mut tokens) = (head.n, 0);
        while left > 0 {
            let (i, text, finish, logprobs) = match rx.recv().await {
                Some(ChoiceEvent::Piece(i, text)) => (i, text, None, None),
                Some(ChoiceEvent::Done(i, c)) => {
                    left -= 1;
                    tokens += c.token_ids.len();
                    (
                        i,
                        String::new(),
                        Some(finish_reason_name(&c.finish_reason).to_string()),
                        head.endpoint.logprobs(&c),
                    )
                }
                None => return, // the engine stopped: the stream ends without [DONE]
            };
            let choice = Choice {
                logprobs,
                ..head.endpoint.choice(i, text, true, finish)
            };
            if !send(&head.reply(true, vec![choice], None)) {
                return; // the client went away
            }
        }
        if include_usage {
            let usage = head.usage(tokens);
            if !send(&head.reply(true, Vec::new(), Some(usage))) {
                return;
            }
        }
        let _ = tx.send(Ok(SseEvent::default().data("[DONE]")));
    });
    Sse::new(UnboundedReceiverStream::new(out))
}
