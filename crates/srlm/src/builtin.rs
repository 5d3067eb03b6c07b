//! Data shipped inside the binary, so that `srlm run` works anywhere without downloads:
//! srlm's own seed set (`data/seed/`, Apache-2.0, written for srlm) and a part of Open
//! Assistant's human-ranked trees (`data/oasst/`, Apache-2.0, LAION-AI/Open-Assistant; see
//! its LICENSE and `scripts/make_oasst_split.py`), split by tree into a held-out evaluation
//! part and a training part.
//!
//! Commands name them as `builtin:NAME` wherever they take a data file; the text is written
//! once to `SRLM_HOME/builtin/` so that errors and the run manifest can name a real file.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use srlm_core::jsonl::write_atomic;
use std::path::{Path, PathBuf};

/// The seed set's instruction-following examples.
pub const SEED_IFT: &str = include_str!("../data/seed/ift.jsonl");
/// The seed set's judge examples.
pub const SEED_EFT: &str = include_str!("../data/seed/eft.jsonl");
/// Open Assistant trees held out for evaluating the judge: nothing srlm trains on comes
/// from them.
pub const OASST_EVAL: &str = include_str!("../data/oasst/eval.jsonl");
/// The other Open Assistant trees, which judge training may use.
pub const OASST_TRAIN: &str = include_str!("../data/oasst/train.jsonl");

/// Every shipped file by name.
pub const ALL: &[(&str, &str)] = &[
    ("seed-ift", SEED_IFT),
    ("seed-eft", SEED_EFT),
    ("oasst-eval", OASST_EVAL),
    ("oasst-train", OASST_TRAIN),
];

const PREFIX: &str = "builtin:";

/// The shipped text `spec` names (`builtin:NAME`), if it names one.
pub fn text(spec: &str) -> Result<Option<&'static str>> {
    let Some(name) = spec.strip_prefix(PREFIX) else {
        return Ok(None);
    };
    match ALL.iter().find(|(n, _)| *n == name) {
        Some((_, t)) => Ok(Some(t)),
        None => bail!(
            "`{spec}` names no shipped data\n  hint: one of {}",
            ALL.iter()
                .map(|(n, _)| format!("{PREFIX}{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `path` itself, or for `builtin:NAME` a file holding that shipped text (written to
/// `SRLM_HOME/builtin/NAME-<hash>.jsonl` unless it is already there, whole).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let spec = path.to_string_lossy();
    let Some(text) = text(&spec)? else {
        return Ok(path.to_path_buf());
    };
    let name = &spec[PREFIX.len()..];
    let hash = format!("{:x}", Sha256::digest(text.as_bytes()));
    let file = srlm_engine::fetch::srlm_home()
        .join("builtin")
        .join(format!("{name}-{}.jsonl", &hash[..12]));
    if std::fs::read(&file).ok().as_deref() != Some(text.as_bytes()) {
        std::fs::create_dir_all(file.parent().expect("has a parent"))
            .with_context(|| format!("creating {}", file.display()))?;
        write_atomic(&file, text.as_bytes())?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_names_resolve_and_others_pass_through() {
        assert_eq!(text("runs/x.jsonl").unwrap(), None);
        assert_eq!(text("builtin:oasst-eval").unwrap(), Some(OASST_EVAL));
        let e = text("builtin:oasst").unwrap_err().to_string();
        assert!(e.contains("builtin:oasst-eval"), "{e}");
        assert_eq!(
            resolve(Path::new("some/file.jsonl")).unwrap(),
            PathBuf::from("some/file.jsonl")
        );
    }
}
