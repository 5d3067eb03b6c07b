//! JSONL artifacts: reading with errors that name the file, line and field, and an append-only
//! writer that flushes each record whole, so an interrupted stage keeps what it wrote and
//! resumes after it.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}\n  hint: {hint}")]
    Record {
        path: PathBuf,
        line: usize,
        message: String,
        hint: String,
    },
}

impl JsonlError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        JsonlError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One parsed record with the 1-based line it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Lined<T> {
    pub line: usize,
    pub record: T,
}

/// Reads every non-blank line of `path` as a `T`. `hint` says what a valid record looks like;
/// it is shown with any error, next to serde's account of the bad field.
pub fn read_jsonl<T: DeserializeOwned>(
    path: &Path,
    hint: &str,
) -> Result<Vec<Lined<T>>, JsonlError> {
    let file = File::open(path).map_err(|e| JsonlError::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let text = line.map_err(|e| JsonlError::Record {
            path: path.to_path_buf(),
            line: line_no,
            message: format!("cannot read line: {e}"),
            hint: "the file must be UTF-8 text, one JSON object a line".into(),
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(&text).map_err(|e| JsonlError::Record {
            path: path.to_path_buf(),
            line: line_no,
            message: describe_serde_error(&e),
            hint: hint.to_string(),
        })?;
        out.push(Lined {
            line: line_no,
            record,
        });
    }
    Ok(out)
}

fn describe_serde_error(e: &serde_json::Error) -> String {
    // serde names the missing or mistyped field; the column is noise for a one-line record.
    let msg = e.to_string();
    match msg.rfind(" at line ") {
        Some(pos) => msg[..pos].to_string(),
        None => msg,
    }
}

/// Reads the records a previous, possibly interrupted, run already wrote. A torn last line (the
/// process died mid-write) is cut off so appending continues from the last whole record.
/// Returns the whole records; a missing file is an empty artifact.
pub fn recover_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, JsonlError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(JsonlError::io(path, e)),
    };
    let whole = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(p) => p + 1,
        None => 0,
    };
    if whole < bytes.len() {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| JsonlError::io(path, e))?;
        f.set_len(whole as u64)
            .map_err(|e| JsonlError::io(path, e))?;
    }
    let mut out = Vec::new();
    for (i, line) in bytes[..whole].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let record = serde_json::from_slice(line).map_err(|e| JsonlError::Record {
            path: path.to_path_buf(),
            line: i + 1,
            message: describe_serde_error(&e),
            hint: "this output file was not written by this command; move it away or choose another --output".into(),
        })?;
        out.push(record);
    }
    Ok(out)
}

/// Writes `records` to `path` as a whole: to a temporary file beside it, then renamed over it,
/// so a reader sees the old file or the complete new one, never a part.
pub fn write_jsonl_atomic<T: Serialize>(path: &Path, records: &[T]) -> Result<(), JsonlError> {
    write_atomic(path, &to_lines(path, records)?)
}

/// `records` as JSON lines.
fn to_lines<T: Serialize>(path: &Path, records: &[T]) -> Result<Vec<u8>, JsonlError> {
    let mut text = Vec::new();
    for r in records {
        serde_json::to_writer(&mut text, r).map_err(|e| JsonlError::Record {
            path: path.to_path_buf(),
            line: 0,
            message: format!("cannot serialise record: {e}"),
            hint: "this is a bug in srlm".into(),
        })?;
        text.push(b'\n');
    }
    Ok(text)
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), JsonlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| JsonlError::io(dir, e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        JsonlError::io(path, e)
    })
}

/// Appends records, one line each, flushed to the OS after every record.
pub struct JsonlWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlWriter {
    pub fn append(path: &Path) -> Result<Self, JsonlError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| JsonlError::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| JsonlError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
        })
    }

    /// Appends several records with one write (a crash keeps all or a torn tail, which
    /// `recover_jsonl` cuts off).
    pub fn write_all<T: Serialize>(&mut self, records: &[T]) -> Result<(), JsonlError> {
        let text = to_lines(&self.path, records)?;
        self.out
            .write_all(&text)
            .and_then(|_| self.out.flush())
            .map_err(|e| JsonlError::io(&self.path, e))
    }

    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<(), JsonlError> {
        let mut line = serde_json::to_vec(record).map_err(|e| JsonlError::Record {
            path: self.path.clone(),
            line: 0,
            message: format!("cannot serialise record: {e}"),
            hint: "this is a bug in srlm".into(),
        })?;
        line.push(b'\n');
        // One write of the whole line, then flush: a crash leaves at worst a torn last line,
        // which `recover_jsonl` cuts off.
        self.out
            .write_all(&line)
            .and_then(|_| self.out.flush())
            .map_err(|e| JsonlError::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Rec {
        id: String,
        n: u32,
    }

    #[test]
    fn bad_line_error_names_file_line_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("in.jsonl");
        std::fs::write(&p, "{\"id\":\"a\",\"n\":1}\n\n{\"id\":\"b\"}\n").unwrap();
        let err = read_jsonl::<Rec>(&p, "{\"id\": str, \"n\": int}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("in.jsonl:3:"), "{err}");
        assert!(err.contains("missing field `n`"), "{err}");
        assert!(err.contains("hint: {\"id\": str"), "{err}");
    }

    #[test]
    fn recover_cuts_a_torn_last_line_and_appending_continues() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        std::fs::write(&p, "{\"id\":\"a\",\"n\":1}\n{\"id\":\"b\",\"n\"").unwrap();
        let got: Vec<Rec> = recover_jsonl(&p).unwrap();
        assert_eq!(got.len(), 1);
        let mut w = JsonlWriter::append(&p).unwrap();
        w.write(&Rec {
            id: "c".into(),
            n: 3,
        })
        .unwrap();
        drop(w);
        let all: Vec<Rec> = recover_jsonl(&p).unwrap();
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
    }

    #[test]
    fn recover_of_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let got: Vec<Rec> = recover_jsonl(&dir.path().join("none.jsonl")).unwrap();
        assert!(got.is_empty());
    }
}
