//! The seed stage: the config's IFT and EFT seed files resolved and merged into `RUN/seed/`.

use super::config::SeedSection;
use super::layout::Layout;
use anyhow::{bail, Result};
use srlm_core::jsonl::{write_atomic, write_jsonl_atomic};
use srlm_core::seed::{load_eft, load_ift, EftExample, IftExample};
use std::path::Path;

/// `Work::Seed`: the seed's IFT and EFT examples, and the SFT file that trains M1 on both.
pub(crate) fn write_seed(
    layout: &Layout,
    seed_data: &SeedSection,
) -> Result<Option<serde_json::Value>> {
    use srlm_core::judge::judge_prompt;
    let files = layout.seed();
    let (ift, eft) = seed_examples(seed_data, &layout.dir)?;
    write_jsonl_atomic(&files.ift, &ift)?;
    write_jsonl_atomic(&files.eft, &eft)?;
    let mut sft: Vec<serde_json::Value> = ift
        .iter()
        .map(|e| serde_json::json!({"prompt": e.prompt, "response": e.response}))
        .collect();
    sft.extend(eft.iter().map(|e| {
        serde_json::json!({"prompt": judge_prompt(&e.instruction, &e.response), "response": e.judgement})
    }));
    write_jsonl_atomic(&files.sft, &sft)?;
    Ok(Some(
        serde_json::json!({"ift": ift.len(), "eft": eft.len()}),
    ))
}

/// The seed files resolved: "builtin" or a path relative to where srlm runs.
pub(crate) fn seed_examples(
    cfg: &SeedSection,
    dir: &Path,
) -> Result<(Vec<IftExample>, Vec<EftExample>)> {
    let tmp = dir.join("seed");
    std::fs::create_dir_all(&tmp)?;
    let ift = read_sources(
        &cfg.ift,
        &tmp.join("builtin_ift.jsonl"),
        crate::builtin::SEED_IFT,
        load_ift,
    )?;
    let eft = read_sources(
        &cfg.eft,
        &tmp.join("builtin_eft.jsonl"),
        crate::builtin::SEED_EFT,
        load_eft,
    )?;
    if ift.is_empty() {
        bail!("the seed has no IFT examples\n  hint: set [seed_data] ift = [\"builtin\"] or to your own files");
    }
    Ok((ift, eft))
}

/// Every source's examples in order: "builtin" is the shipped text, written to `builtin_path`
/// first so that errors name a file a user can open.
fn read_sources<T>(
    sources: &[String],
    builtin_path: &Path,
    builtin_text: &str,
    load: fn(&Path) -> Result<Vec<T>, srlm_core::jsonl::JsonlError>,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for src in sources {
        let path = if src == "builtin" {
            write_atomic(builtin_path, builtin_text.as_bytes())?;
            builtin_path
        } else {
            Path::new(src)
        };
        out.extend(load(path)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_seed_set_is_plentiful_and_spans_every_score() {
        let dir = tempfile::tempdir().unwrap();
        let (ift, eft) = seed_examples(&SeedSection::default(), dir.path()).unwrap();
        assert!(ift.len() >= 150, "{}", ift.len());
        assert!(eft.len() >= 150, "{}", eft.len());
        // load_eft already checked that every judgement's own last Score line is its score.
        for score in 0..=5u8 {
            let n = eft.iter().filter(|e| e.score == score).count();
            assert!(n >= 20, "score {score}: {n} examples");
        }
        let categories: std::collections::BTreeSet<String> = crate::builtin::SEED_IFT
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["category"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert!(categories.len() >= 10, "{categories:?}");
        // No prompt twice.
        let prompts: std::collections::HashSet<&str> =
            ift.iter().map(|e| e.prompt.as_str()).collect();
        assert_eq!(prompts.len(), ift.len());
    }
}
