//! Processes `srlm run` starts (servers it launches, external trainers) and the guarantee that
//! none outlives it.
//!
//! Each command runs as `sh -c "exec COMMAND"` in a process group of its own, its output
//! appended to a log, and every process it starts carries `SRLM_SERVER_OF=<run dir>` in its
//! environment. Beside it runs a guardian, a shell reading a pipe from srlm: when srlm ends in
//! any way (an error, Ctrl-C, `kill -9`), the pipe closes and the guardian stops the group
//! (SIGTERM, then SIGKILL after the grace period). A rerun also stops whatever still carries
//! its run directory's marker. When srlm stops a child itself it dismisses the guardian first.

use anyhow::{Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that marks a process as started for a run directory.
pub const MARKER_ENV: &str = "SRLM_SERVER_OF";

/// A command srlm started, with its guardian.
pub struct Owned {
    pub child: Child,
    guardian: Child,
    /// Kept open: its closing (srlm's end) is the guardian's signal.
    _lifeline: ChildStdin,
    grace: Duration,
}

impl Owned {
    /// Runs `command` through `sh` with its output appended to `log` (`stdout` piped instead,
    /// for a caller that streams it), marked as started for `run_dir`.
    pub fn spawn(
        command: &str,
        run_dir: &Path,
        log: &Path,
        piped: bool,
        grace: Duration,
    ) -> Result<Self> {
        std::fs::create_dir_all(log.parent().expect("a log has a folder"))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut cmd = Command::new("sh");
        // `exec`: the command itself leads the group srlm signals, not a shell around it.
        cmd.arg("-c")
            .arg(format!("exec {command}"))
            .env(MARKER_ENV, run_dir)
            .stdin(Stdio::null())
            .stderr(file.try_clone()?);
        if piped {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(file);
        }
        own_group(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{command}`"))?;
        let group = child.id();
        let g = grace.as_secs_f64();
        // In a group of its own and deaf to Ctrl-C and SIGTERM, so that whatever ends srlm
        // (its whole group killed included) leaves the guardian to read the end of the pipe.
        let mut guardian = Command::new("sh");
        guardian
            .arg("-c")
            .arg(format!(
                "trap '' INT TERM HUP; read _; kill -TERM -{group} 2>/dev/null; sleep {g}; kill -KILL -{group} 2>/dev/null"
            ))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        own_group(&mut guardian);
        let mut guardian = guardian
            .spawn()
            .context("starting the guardian of a child process")?;
        let lifeline = guardian.stdin.take().expect("piped");
        Ok(Self {
            child,
            guardian,
            _lifeline: lifeline,
            grace,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Stops the command's group: SIGTERM, then SIGKILL once the grace period has passed.
    pub fn stop(mut self) {
        let _ = self.guardian.kill();
        let _ = self.guardian.wait();
        stop_group(&mut self.child, self.grace);
    }

    /// Waits for the command to end; its guardian is dismissed and any process it left in its
    /// group is stopped.
    pub fn wait(mut self) -> Result<std::process::ExitStatus> {
        let status = self.child.wait()?;
        let _ = self.guardian.kill();
        let _ = self.guardian.wait();
        kill_group(self.child.id(), libc::SIGKILL);
        Ok(status)
    }
}

/// SIGTERM to the child's process group, then SIGKILL once `grace` has passed.
fn stop_group(child: &mut Child, grace: Duration) {
    kill_group(child.id(), libc::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // The leader may be gone with members left: the group is killed either way.
    kill_group(child.id(), libc::SIGKILL);
    let _ = child.wait();
}

fn kill_group(group: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on the process group srlm created for its child.
    unsafe { libc::kill(-(group as i32), signal) };
}

fn own_group(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
}

/// One spelling of a run directory, whichever way a command names it.
pub fn run_dir_key(run_dir: &Path) -> PathBuf {
    std::fs::canonicalize(run_dir)
        .or_else(|_| std::path::absolute(run_dir))
        .unwrap_or_else(|_| run_dir.to_path_buf())
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

/// Stops every process still marked as started for `run_dir` (what a killed run left).
pub fn stop_leftovers(run_dir: &Path) {
    for pid in marked_processes(run_dir) {
        eprintln!(
            "srlm: stopping process {pid}, started for {} and still running",
            run_dir.display()
        );
        // SAFETY: kill(2) on a process srlm started for this run (its environment says so).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Appends `line` to the log at `path` (its folder made if need be).
pub fn log_line(path: &Path, line: &str) -> Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(path.parent().expect("a log has a folder"))?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut log| writeln!(log, "{line}"))
        .with_context(|| format!("writing {}", path.display()))
}

/// The length of `path` now: where the lines a child writes next begin.
pub fn log_end(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// The last `n` lines the log got since `from`, indented.
pub fn log_tail(path: &Path, from: u64, n: usize) -> String {
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
