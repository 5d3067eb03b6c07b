//! Servers `srlm run` starts itself: a `[backends.NAME]` with a `launch` command is started
//! when a stage needs it, with the stage's model (`{model}`) on a free port (`{port}`), waited
//! for until its `/models` answers, and stopped when the next stage needs another model or no
//! server, when the run ends, fails, or is interrupted. Consecutive stages on the same backend
//! and model (sampling, then judging, by M_t) share one server.
//!
//! Nothing it starts outlives the run: the server is started in its own process group (stopped
//! with SIGTERM to the group, then SIGKILL after the grace period) and told by the kernel to
//! end when srlm does (`PR_SET_PDEATHSIG`, Linux); Ctrl-C and SIGTERM stop it before srlm
//! exits; and every process it starts carries `SRLM_SERVER_OF=<run dir>` in its environment,
//! so a rerun after a `kill -9` finds and stops whatever a killed run left behind.

use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// The environment variable that marks a process as started for a run directory.
pub const MARKER_ENV: &str = "SRLM_SERVER_OF";

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
    pub model: PathBuf,
    pub startup_timeout: Duration,
    pub stop_grace: Duration,
}

impl Launch {
    fn same_server(&self, other: &Launch) -> bool {
        self.backend == other.backend && self.model == other.model
    }
}

/// A started server.
struct Running {
    launch: Launch,
    child: Child,
    /// The command as started, `{model}` and `{port}` filled.
    command: String,
    url: String,
}

/// The one server (at most) a run has up, and where their logs go.
pub struct Servers {
    run_dir: PathBuf,
    up: Option<Running>,
}

/// The process group of the server up now, for the signal handler (0: none).
static UP_GROUP: AtomicI32 = AtomicI32::new(0);

impl Servers {
    /// No server up yet. Whatever a killed earlier run of `run_dir` left running is stopped.
    pub fn new(run_dir: &Path) -> Self {
        // One spelling of the directory, whichever way a rerun names it.
        let run_dir = std::fs::canonicalize(run_dir)
            .or_else(|_| std::path::absolute(run_dir))
            .unwrap_or_else(|_| run_dir.to_path_buf());
        for pid in marked_processes(&run_dir) {
            eprintln!(
                "srlm: stopping process {pid}, a server an interrupted run of {} left running",
                run_dir.display()
            );
            // SAFETY: kill(2) on a process srlm started for this run (its environment says so).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        Self { run_dir, up: None }
    }

    /// The base URL of `launch`'s server, started now unless it is the one already up (another
    /// server up is stopped first). Returns the URL and the command line as started.
    pub fn ensure(&mut self, launch: &Launch) -> Result<(String, String)> {
        if let Some(r) = &self.up {
            if r.launch.same_server(launch) {
                return Ok((r.url.clone(), r.command.clone()));
            }
        }
        self.stop();
        let running = self.start(launch)?;
        let out = (running.url.clone(), running.command.clone());
        self.up = Some(running);
        Ok(out)
    }

    /// Stops the server up now, if any.
    pub fn stop(&mut self) {
        if let Some(mut r) = self.up.take() {
            UP_GROUP.store(0, Ordering::SeqCst);
            stop_group(&mut r.child, r.launch.stop_grace);
            for pid in marked_processes(&self.run_dir) {
                // A process that left the server's group: the marker still names it.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            eprintln!(
                "srlm: stopped [backends.{}] (pid {})",
                r.launch.backend,
                r.child.id()
            );
        }
    }

    pub fn log_path(&self, backend: &str) -> PathBuf {
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
        std::fs::create_dir_all(log_path.parent().expect("servers/"))?;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_start = log.seek(SeekFrom::End(0))?;
        writeln!(
            log,
            "== srlm: starting [backends.{}]: {command}",
            launch.backend
        )?;
        let mut cmd = Command::new("sh");
        // `exec`: the server itself is srlm's child, so the kernel's parent-death signal and
        // the group's signals reach it, not only a shell.
        cmd.arg("-c")
            .arg(format!("exec {command}"))
            .env(MARKER_ENV, &self.run_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?);
        own_group_and_die_with_parent(&mut cmd);
        install_signal_handler();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("[backends.{}]: starting `{command}`", launch.backend))?;
        UP_GROUP.store(child.id() as i32, Ordering::SeqCst);
        eprintln!(
            "srlm: started [backends.{}] (pid {}): {command}; log: {}",
            launch.backend,
            child.id(),
            log_path.display()
        );
        let tail = || log_tail(&log_path, log_start, 20);
        let key = std::env::var(&launch.api_key_env).ok();
        match wait_until_up(&mut child, &url, key.as_deref(), launch.startup_timeout) {
            Ok(()) => {
                eprintln!("srlm: [backends.{}] is up at {url}", launch.backend);
                Ok(Running {
                    launch: launch.clone(),
                    child,
                    command,
                    url,
                })
            }
            Err(why) => {
                UP_GROUP.store(0, Ordering::SeqCst);
                stop_group(&mut child, launch.stop_grace);
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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
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

/// SIGTERM to the child's process group, then SIGKILL once `grace` has passed.
fn stop_group(child: &mut Child, grace: Duration) {
    let group = child.id() as i32;
    // SAFETY: kill(2) on the process group srlm created for this child.
    unsafe { libc::kill(-group, libc::SIGTERM) };
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The leader may be gone with members left: the group is killed either way.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
}

#[cfg(unix)]
fn own_group_and_die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Ctrl-C or SIGTERM: the server up now is stopped (SIGTERM to its group), then srlm ends as
/// the signal would have ended it.
fn install_signal_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    extern "C" fn on_signal(sig: libc::c_int) {
        let group = UP_GROUP.load(Ordering::SeqCst);
        // SAFETY: kill, signal and raise are async-signal-safe.
        unsafe {
            if group > 0 {
                libc::kill(-group, libc::SIGTERM);
            }
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
    ONCE.call_once(|| unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    });
}

/// A port free on 127.0.0.1 now (the server binds it a moment later).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The processes whose environment says they were started for `run_dir` (Linux: /proc).
pub fn marked_processes(run_dir: &Path) -> Vec<i32> {
    let want = format!("{MARKER_ENV}={}", run_dir.display());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
        })
        .collect()
}

/// The last `n` lines the log got since `from`, indented.
fn log_tail(path: &Path, from: u64, n: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_string(&mut text);
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
