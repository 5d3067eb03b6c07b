//! The SHA-256 of a stage's inputs, as the manifest records them, without re-reading large
//! models at every run: a model folder (its config.json and safetensors files) or a large file
//! is hashed in full once, and its hash kept in `RUN/input_hashes.json` beside a fingerprint
//! that is cheap to take (each file's name, size and modification time, and a safetensors
//! file's header, which names every tensor's dtype, shape and offsets). While the fingerprint
//! is the same, the kept hash is used; any write to the files changes their times or sizes,
//! and then the model is hashed in full again. Small files are always hashed in full.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use srlm_core::jsonl::write_atomic;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Files from this size up (and every model folder) are fingerprinted rather than re-read.
pub const FINGERPRINT_FROM_BYTES: u64 = 16 << 20;

/// Most bytes of a safetensors header the fingerprint reads.
const MAX_HEADER_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Kept {
    fingerprint: String,
    sha256: String,
}

/// Input hashes of one run: taken once per process, and for large inputs kept across runs.
pub struct InputHashes {
    cache: PathBuf,
    kept: BTreeMap<String, Kept>,
    /// This process's hashes: a stage's inputs are finished outputs of earlier stages (or
    /// files outside the run), fixed for the life of the process, so each is hashed once.
    taken: HashMap<PathBuf, String>,
    fingerprint_from: u64,
}

impl InputHashes {
    /// The hashes kept in `cache` (none if it does not exist or cannot be read: it is only a
    /// cache, and is written whole again).
    pub fn open(cache: &Path) -> Self {
        Self::with_threshold(cache, FINGERPRINT_FROM_BYTES)
    }

    pub fn with_threshold(cache: &Path, fingerprint_from: u64) -> Self {
        let kept = std::fs::read_to_string(cache)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Self {
            cache: cache.to_path_buf(),
            kept,
            taken: HashMap::new(),
            fingerprint_from,
        }
    }

    /// The SHA-256 of `path` (a file, or a model folder's config.json and safetensors files).
    pub fn hash(&mut self, path: &Path) -> Result<String> {
        if let Some(h) = self.taken.get(path) {
            return Ok(h.clone());
        }
        let h = if self.is_large(path) {
            self.hash_large(path)?
        } else {
            full_hash(path)?
        };
        self.taken.insert(path.to_path_buf(), h.clone());
        Ok(h)
    }

    fn is_large(&self, path: &Path) -> bool {
        path.is_dir() || std::fs::metadata(path).is_ok_and(|m| m.len() >= self.fingerprint_from)
    }

    fn hash_large(&mut self, path: &Path) -> Result<String> {
        let key = std::fs::canonicalize(path)
            .unwrap_or_else(|_| path.to_path_buf())
            .display()
            .to_string();
        let fingerprint = fingerprint(path)?;
        if let Some(k) = self.kept.get(&key) {
            if k.fingerprint == fingerprint {
                return Ok(k.sha256.clone());
            }
        }
        let sha256 = full_hash(path)?;
        self.kept.insert(
            key,
            Kept {
                fingerprint,
                sha256: sha256.clone(),
            },
        );
        write_atomic(
            &self.cache,
            serde_json::to_string_pretty(&self.kept)?.as_bytes(),
        )?;
        Ok(sha256)
    }
}

/// The files a hash covers: a model folder's config.json and safetensors files, by name.
fn covered(path: &Path) -> Result<Vec<PathBuf>> {
    if !path.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .with_context(|| format!("reading {}", path.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name == "config.json" || name.ends_with(".safetensors")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// SHA-256 of a file, or of a model folder's covered files (each name, then its bytes).
pub fn full_hash(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let folder = path.is_dir();
    for f in covered(path)? {
        if folder {
            h.update(
                f.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .as_bytes(),
            );
        }
        let mut file =
            std::fs::File::open(&f).with_context(|| format!("reading {}", f.display()))?;
        std::io::copy(&mut file, &mut h).with_context(|| format!("reading {}", f.display()))?;
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Each covered file's name, size and modification time, and a safetensors file's header.
fn fingerprint(path: &Path) -> Result<String> {
    let mut h = Sha256::new();
    for f in covered(path)? {
        let meta = std::fs::metadata(&f).with_context(|| format!("reading {}", f.display()))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        h.update(
            f.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(meta.len().to_le_bytes());
        h.update(modified.to_le_bytes());
        if f.extension().is_some_and(|e| e == "safetensors") {
            h.update(safetensors_header(&f)?);
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// A safetensors file's 8-byte header length and header (at most `MAX_HEADER_BYTES` of it).
fn safetensors_header(path: &Path) -> Result<Vec<u8>> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut len = [0u8; 8];
    if file.read_exact(&mut len).is_err() {
        return Ok(Vec::new()); // shorter than a header: its size and time say enough
    }
    let n = u64::from_le_bytes(len).min(MAX_HEADER_BYTES);
    let mut header = len.to_vec();
    file.take(n).read_to_end(&mut header)?;
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn model(dir: &Path, weights: &[u8]) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
        write_weights(dir, weights);
        std::fs::write(dir.join("notes.txt"), "not covered").unwrap();
    }

    fn write_weights(dir: &Path, weights: &[u8]) {
        let header = br#"{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(weights);
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
    }

    fn set_time(path: &Path, secs: u64) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    #[test]
    fn a_large_input_is_hashed_once_and_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        model(&m, b"abcd");
        let weights = m.join("model.safetensors");
        set_time(&weights, 1_000);
        let cache = dir.path().join("input_hashes.json");
        let first = InputHashes::open(&cache).hash(&m).unwrap();
        assert_eq!(first, full_hash(&m).unwrap());
        assert!(cache.exists());

        // Same bytes, same time: a new process takes the kept hash. Shown by changing the
        // bytes behind the fingerprint's back (same size, time set back): the kept hash is
        // returned, which is what a fingerprint promises and no more.
        write_weights(&m, b"abce");
        set_time(&weights, 1_000);
        assert_eq!(InputHashes::open(&cache).hash(&m).unwrap(), first);

        // A write that changes the time (as every write does) is hashed in full again.
        set_time(&weights, 2_000);
        let again = InputHashes::open(&cache).hash(&m).unwrap();
        assert_ne!(again, first);
        assert_eq!(again, full_hash(&m).unwrap());

        // Files the hash does not cover do not count; a small file is always hashed in full.
        std::fs::write(m.join("notes.txt"), "changed").unwrap();
        assert_eq!(InputHashes::open(&cache).hash(&m).unwrap(), again);
        let small = dir.path().join("prompts.jsonl");
        std::fs::write(&small, "{}\n").unwrap();
        let h = InputHashes::open(&cache).hash(&small).unwrap();
        std::fs::write(&small, "[]\n").unwrap();
        set_time(&small, 1_000);
        assert_ne!(InputHashes::open(&cache).hash(&small).unwrap(), h);
    }

    #[test]
    fn the_hash_of_a_folder_is_the_manifests_old_one() {
        // Runs recorded before the cache existed keep matching: the folder's hash is still
        // each covered file's name then bytes, in name order.
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("m");
        model(&m, b"abcd");
        let mut h = Sha256::new();
        for name in ["config.json", "model.safetensors"] {
            h.update(name.as_bytes());
            h.update(std::fs::read(m.join(name)).unwrap());
        }
        assert_eq!(full_hash(&m).unwrap(), format!("{:x}", h.finalize()));
    }
}
