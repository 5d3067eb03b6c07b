//! Servers `srlm run` starts itself: a `[backends.NAME]` with a `launch` command is started
//! when a stage needs it, with the stage's model (`{model}`) on a free port (`{port}`), waited
//! for until its `/models` answers, and stopped when the next stage needs another model or no
//! server, when the run ends, fails, or is interrupted. Consecutive stages on the same backend
//! and model (sampling, then judging, by M_t) share one server. With `reload = "lora"` the
//! server of M1 stays up for every M_t that is an adapter over M1, and each one's adapter is
//! loaded into it (vLLM's `POST /v1/load_lora_adapter`) the first time a stage needs it.
//!
//! Nothing it starts outlives the run (`children.rs`: its own process group, a guardian that
//! stops it when srlm ends however it ends, and a marker a rerun finds).

use super::children::{log_end, log_line, log_tail, run_dir_key, stop_leftovers, Owned};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// A server a stage wants: which backend, its command, on which model.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    /// The `[backends.NAME]` it comes from.
    pub backend: String,
    /// The command, `{model}` and `{port}` not yet filled.
    pub command: String,
    /// The base URL the stage talks to, `{port}` not yet filled.
    pub base_url: String,
    /// Sent as a bearer token when asking `/models`, if set.
    pub api_key_env: String,
    /// The model the server is started on: the stage's, or the base its adapter is over.
    pub model: PathBuf,
    /// The stage's model as an adapter to load into the server, when it is one.
    pub adapter: Option<ServedAdapter>,
    /// Left up through stages that need no server (`reload = "lora"`: the next iteration
    /// loads its adapter into it), rather than stopped to give a trainer the machine.
    pub keep_up: bool,
    pub startup_timeout: Duration,
    pub stop_grace: Duration,
}

/// A LoRA adapter a stage's model is, served under `name` by a server of its base.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedAdapter {
    pub name: String,
    pub dir: PathBuf,
}

/// Where a stage reaches its launched server.
pub struct Endpoint {
    pub url: String,
    /// The command line the server was started with.
    pub command: String,
    /// The model name to ask for: the adapter's, when the stage's model is one.
    pub model: Option<String>,
}

impl Launch {
    fn same_server(&self, other: &Launch) -> bool {
        self.backend == other.backend && self.model == other.model
    }
}

/// A started server.
struct Running {
    launch: Launch,
    child: Owned,
    /// The command as started, `{model}` and `{port}` filled.
    command: String,
    url: String,
    /// The adapters loaded into it so far, by name.
    adapters: Vec<String>,
}

/// The one server (at most) a run has up, and where their logs go.
pub struct Servers {
    run_dir: PathBuf,
    up: Option<Running>,
}

impl Servers {
    /// No server up yet.
    pub fn new(run_dir: &Path) -> Self {
        Self {
            run_dir: run_dir_key(run_dir),
            up: None,
        }
    }

    /// Where `launch`'s server answers, started now unless it is the one already up (another
    /// server up is stopped first), with the stage's adapter loaded into it.
    pub fn ensure(&mut self, launch: &Launch) -> Result<Endpoint> {
        if !self
            .up
            .as_ref()
            .is_some_and(|r| r.launch.same_server(launch))
        {
            self.stop();
            self.up = Some(self.start(launch)?);
        }
        let log = self.log_path(&launch.backend);
        let r = self.up.as_mut().expect("started above");
        if let Some(a) = &launch.adapter {
            if !r.adapters.contains(&a.name) {
                let key = std::env::var(&launch.api_key_env).ok();
                load_adapter(&r.url, key.as_deref(), a).map_err(|why| {
                    anyhow::anyhow!(
                        "[backends.{}]: loading the adapter {} as `{}` {why}\n  last lines of {}:\n{}\n  hint: the server must load adapters at run time: vLLM with --enable-lora, a --max-lora-rank of at least the adapter's, and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True; srlm serve with --enable-lora",
                        launch.backend,
                        a.dir.display(),
                        a.name,
                        log.display(),
                        log_tail(&log, 0, 20),
                    )
                })?;
                eprintln!(
                    "srlm: [backends.{}] loaded the adapter `{}` ({})",
                    launch.backend,
                    a.name,
                    a.dir.display()
                );
                r.adapters.push(a.name.clone());
            }
        }
        Ok(Endpoint {
            url: r.url.clone(),
            command: r.command.clone(),
            model: launch.adapter.as_ref().map(|a| a.name.clone()),
        })
    }

    /// Before a stage that needs no server: stops the one up unless it is to be kept up.
    pub fn idle(&mut self) {
        if !self.up.as_ref().is_some_and(|r| r.launch.keep_up) {
            self.stop();
        }
    }

    /// Stops the server up now, if any.
    pub fn stop(&mut self) {
        if let Some(r) = self.up.take() {
            let pid = r.child.id();
            r.child.stop();
            // A process that left the server's group: the marker still names it.
            stop_leftovers(&self.run_dir);
            eprintln!("srlm: stopped [backends.{}] (pid {pid})", r.launch.backend);
        }
    }

    fn log_path(&self, backend: &str) -> PathBuf {
        self.run_dir.join("servers").join(format!("{backend}.log"))
    }

    fn start(&self, launch: &Launch) -> Result<Running> {
        let port = free_port()?;
        let fill = |t: &str| {
            t.replace("{model}", &launch.model.display().to_string())
                .replace("{port}", &port.to_string())
        };
        let command = fill(&launch.command);
        let url = fill(&launch.base_url).trim_end_matches('/').to_string();
        let log_path = self.log_path(&launch.backend);
        let log_start = log_end(&log_path);
        log_line(
            &log_path,
            &format!("== srlm: starting [backends.{}]: {command}", launch.backend),
        )?;
        let mut child = Owned::spawn(&command, &self.run_dir, &log_path, false, launch.stop_grace)
            .with_context(|| format!("[backends.{}]", launch.backend))?;
        eprintln!(
            "srlm: started [backends.{}] (pid {}): {command}; log: {}",
            launch.backend,
            child.id(),
            log_path.display()
        );
        let tail = || log_tail(&log_path, log_start, 20);
        let key = std::env::var(&launch.api_key_env).ok();
        match wait_until_up(
            &mut child.child,
            &url,
            key.as_deref(),
            launch.startup_timeout,
        ) {
            Ok(()) => {
                eprintln!("srlm: [backends.{}] is up at {url}", launch.backend);
                Ok(Running {
                    launch: launch.clone(),
                    child,
                    command,
                    url,
                    adapters: Vec::new(),
                })
            }
            Err(why) => {
                child.stop();
                bail!(
                    "[backends.{}]: the server {why}\n  command: {command}\n  last lines of {}:\n{}\n  hint: run the command by hand to see it start; raise backends.{}.startup_timeout_s if it is only slow",
                    launch.backend,
                    log_path.display(),
                    tail(),
                    launch.backend
                )
            }
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `url/models` until it answers (an HTTP status below 500: 401 and 403 too, since the
/// server is up and the stage will name a refused key), the child exits, or `timeout` passes.
fn wait_until_up(
    child: &mut Child,
    url: &str,
    key: Option<&str>,
    timeout: Duration,
) -> std::result::Result<(), String> {
    let agent = agent(Duration::from_secs(5));
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before it answered ({status})"));
        }
        let mut req = agent.get(format!("{url}/models"));
        if let Some(k) = key {
            req = req.header("Authorization", format!("Bearer {k}"));
        }
        let last = match req.call() {
            Ok(resp) if resp.status().as_u16() < 500 => return Ok(()),
            Ok(resp) => format!("answered HTTP {}", resp.status().as_u16()),
            Err(e) => format!("did not answer ({e})"),
        };
        if start.elapsed() >= timeout {
            return Err(format!(
                "was not up within {:.0} s: GET {url}/models {last}",
                timeout.as_secs_f64()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Asks the server at `url` to load `adapter` (vLLM's runtime LoRA API; `srlm serve` answers
/// it too). A name the server holds already counts as loaded only if this run loaded it, so a
/// refusal is an error.
fn load_adapter(
    url: &str,
    key: Option<&str>,
    adapter: &ServedAdapter,
) -> std::result::Result<(), String> {
    let body = serde_json::json!({
        "lora_name": adapter.name,
        // The server may not share srlm's working directory.
        "lora_path": std::path::absolute(&adapter.dir)
            .unwrap_or_else(|_| adapter.dir.clone())
            .display()
            .to_string(),
    });
    let mut req = agent(Duration::from_secs(600))
        .post(format!("{url}/load_lora_adapter"))
        .header("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.header("Authorization", format!("Bearer {k}"));
    }
    match req.send(body.to_string()) {
        Ok(resp) if resp.status().is_success() => Ok(()),
        Ok(mut resp) => Err(format!(
            "was refused: HTTP {}: {}",
            resp.status().as_u16(),
            resp.body_mut().read_to_string().unwrap_or_default().trim()
        )),
        Err(e) => Err(format!("failed: {e}")),
    }
}

/// An HTTP client for the server's own endpoints: every status is an answer, not an error.
fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// A port free on 127.0.0.1 now (the server binds it a moment later).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}
