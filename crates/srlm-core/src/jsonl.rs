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
    #[error("{path}: {message}\n  hint: {hint}")]
    Refused {
        path: PathBuf,
        message: String,
        hint: String,
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

/// The UTF-8 byte order mark some Windows editors write at the start of a text file.
pub const BOM: char = '\u{feff}';

/// `text` without a leading byte order mark: srlm reads a file saved with one as the same file
/// without it (JSON and TOML do not allow one, so serde would fail on "expected value").
pub fn strip_bom(text: &str) -> &str {
    text.strip_prefix(BOM).unwrap_or(text)
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
        let text = if line_no == 1 {
            strip_bom(&text)
        } else {
            &text
        };
        if text.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(text).map_err(|e| JsonlError::Record {
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

/// Reads the records a previous, possibly interrupted, run of the same command already wrote,
/// so appending continues after the last whole record. A missing or empty file is an empty
/// artifact.
///
/// srlm resumes only a file it can show it wrote: every whole line must be a record of this
/// output's schema, checked before anything is touched, else the file is refused and left as it
/// is. Then a torn last line (the process died mid-write) is cut off; a last record that only
/// lacks its newline is kept and given one. A file that holds nothing but a torn line is refused
/// too: nothing in it shows that srlm wrote it.
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
    let mut out = parse_lines(path, &bytes[..whole], NOT_OURS_HINT)?;
    let tail = &bytes[whole..];
    if tail.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(out);
    }
    match serde_json::from_slice::<T>(tail) {
        Ok(last) => {
            out.push(last);
            let mut f = OpenOptions::new()
                .append(true)
                .open(path)
                .map_err(|e| JsonlError::io(path, e))?;
            f.write_all(b"\n").map_err(|e| JsonlError::io(path, e))?;
        }
        Err(e) if out.is_empty() => {
            return Err(JsonlError::Record {
                path: path.to_path_buf(),
                line: 1,
                message: format!(
                    "not an output of this command ({}); srlm leaves it as it is",
                    describe_serde_error(&e)
                ),
                hint: NOT_OURS_HINT.into(),
            })
        }
        Err(_) => {
            let f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| JsonlError::io(path, e))?;
            f.set_len(whole as u64)
                .map_err(|e| JsonlError::io(path, e))?;
        }
    }
    Ok(out)
}

const NOT_OURS_HINT: &str =
    "this file was not written by this command; move it away or choose another output path";

/// Every non-blank line of `bytes` as a `T`; the first that is not one is an error that names
/// the file and line.
fn parse_lines<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    hint: &str,
) -> Result<Vec<T>, JsonlError> {
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            continue;
        }
        let record = serde_json::from_slice(line).map_err(|e| JsonlError::Record {
            path: path.to_path_buf(),
            line: i + 1,
            message: format!(
                "not an output of this command ({}); srlm leaves it as it is",
                describe_serde_error(&e)
            ),
            hint: hint.to_string(),
        })?;
        out.push(record);
    }
    Ok(out)
}

/// The name of the first entry of `dir` (by name), None when it is empty or missing: what a
/// command that writes into a folder it does not own names when it refuses.
pub fn first_entry(dir: &Path) -> Result<Option<String>, JsonlError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => Ok(entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .min()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(JsonlError::io(dir, e)),
    }
}

/// Refuses `output` when it is one of `inputs`, compared as files (a symlink, a hard link or a
/// second spelling of the same path is caught too), before anything is read or written.
pub fn refuse_input_as_output(output: &Path, inputs: &[&Path]) -> Result<(), JsonlError> {
    for input in inputs {
        if same_file::is_same_file(output, input).unwrap_or(false) {
            return Err(JsonlError::Refused {
                path: output.to_path_buf(),
                message: format!(
                    "is also an input ({}); srlm never writes to its inputs",
                    input.display()
                ),
                hint: "choose another output path".into(),
            });
        }
    }
    Ok(())
}

/// Refuses to replace `path` unless it is missing, empty, or every line of it is a record of
/// this output's schema (an earlier run of the same command wrote it).
pub fn check_replaceable<T: DeserializeOwned>(path: &Path) -> Result<(), JsonlError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(JsonlError::io(path, e)),
    };
    parse_lines::<T>(path, &bytes, NOT_OURS_HINT).map(|_| ())
}

/// Writes `records` to `path` as a whole: to a temporary file beside it, then renamed over it,
/// so a reader sees the old file or the complete new one, never a part. An existing file is
/// replaced only when `check_replaceable` shows it is an earlier output of the same kind.
pub fn write_jsonl_atomic<T: Serialize + DeserializeOwned>(
    path: &Path,
    records: &[T],
) -> Result<(), JsonlError> {
    check_replaceable::<T>(path)?;
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

    #[test]
    fn recover_refuses_a_file_it_did_not_write_and_leaves_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        for text in [
            "my notes, no newline",
            "my notes\n",
            "{\"id\":\"a\",\"n\":1}\nmy notes\n{\"id\":\"b\",\"n\":2}\n",
            "{\"other\":\"schema\"}\n{\"id\":\"b\",\"n\"",
        ] {
            let p = dir.path().join("out.jsonl");
            std::fs::write(&p, text).unwrap();
            let err = recover_jsonl::<Rec>(&p).unwrap_err().to_string();
            assert!(
                err.contains("not an output of this command"),
                "{text:?}: {err}"
            );
            assert!(err.contains("out.jsonl"), "{err}");
            assert_eq!(
                std::fs::read_to_string(&p).unwrap(),
                text,
                "file was touched"
            );
        }
    }

    #[test]
    fn recover_keeps_a_last_record_without_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        std::fs::write(&p, "{\"id\":\"a\",\"n\":1}\n{\"id\":\"b\",\"n\":2}").unwrap();
        let got: Vec<Rec> = recover_jsonl(&p).unwrap();
        assert_eq!(got.len(), 2);
        JsonlWriter::append(&p)
            .unwrap()
            .write(&Rec {
                id: "c".into(),
                n: 3,
            })
            .unwrap();
        let all: Vec<Rec> = recover_jsonl(&p).unwrap();
        assert_eq!(
            all.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn an_output_that_is_an_input_is_refused_by_any_name() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, "{}\n").unwrap();
        let other = dir.path().join("other.jsonl");
        assert!(refuse_input_as_output(&other, &[&input]).is_ok());
        let spelled = dir.path().join(".").join("in.jsonl");
        let err = refuse_input_as_output(&spelled, &[&other, &input])
            .unwrap_err()
            .to_string();
        assert!(err.contains("is also an input"), "{err}");
        #[cfg(unix)]
        {
            let link = dir.path().join("link.jsonl");
            std::os::unix::fs::symlink(&input, &link).unwrap();
            assert!(refuse_input_as_output(&link, &[&input]).is_err());
        }
    }

    #[test]
    fn atomic_write_replaces_only_an_output_of_its_own_kind() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pairs.jsonl");
        let recs = [Rec {
            id: "a".into(),
            n: 1,
        }];
        write_jsonl_atomic(&p, &recs).unwrap();
        write_jsonl_atomic(&p, &recs).unwrap();
        std::fs::write(&p, "# a user's file\n").unwrap();
        let err = write_jsonl_atomic(&p, &recs).unwrap_err().to_string();
        assert!(err.contains("pairs.jsonl:1: not an output"), "{err}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "# a user's file\n");
    }
}
