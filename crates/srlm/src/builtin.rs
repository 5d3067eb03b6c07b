//! Data shipped inside the binary, so that `srlm run` works anywhere without downloads:
//! srlm's own seed set (`data/seed/`, Apache-2.0, written for srlm), a part of Open
//! Assistant's human-ranked trees (`data/oasst/`, Apache-2.0, LAION-AI/Open-Assistant; see
//! its LICENSE and `scripts/make_oasst_split.py`), split by tree into a held-out evaluation
//! part and a training part, and the Vicuna-80 and MT-Bench questions for head-to-head
//! evaluation (`data/vicuna/`, `data/mt-bench/`, Apache-2.0, lm-sys/FastChat).
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
/// Vicuna's 80 questions: the held-out prompts of head-to-head evaluation.
pub const VICUNA: &str = include_str!("../data/vicuna/question.jsonl");
/// MT-Bench's 80 questions (ids 81-160; head-to-head reads each one's first turn).
pub const MT_BENCH: &str = include_str!("../data/mt-bench/question.jsonl");
/// Both: 160 first turns, for a head-to-head whose 95% interval is about 0.7x as wide as on
/// one of them (±0.077 around 0.5 rather than ±0.11).
pub const VICUNA_MT_BENCH: &str = concat!(
    include_str!("../data/vicuna/question.jsonl"),
    include_str!("../data/mt-bench/question.jsonl")
);

/// What srlm may train on, and what it holds out: no text of the second appears in the first
/// (the test `the_held_out_split_is_disjoint_from_every_training_file`).
#[cfg(test)]
pub const TRAINING: &[&str] = &[SEED_IFT, SEED_EFT, OASST_TRAIN];
#[cfg(test)]
pub const HELD_OUT: &[&str] = &[OASST_EVAL, VICUNA, MT_BENCH];

/// Every shipped file by name.
pub const ALL: &[(&str, &str)] = &[
    ("seed-ift", SEED_IFT),
    ("seed-eft", SEED_EFT),
    ("oasst-eval", OASST_EVAL),
    ("oasst-train", OASST_TRAIN),
    ("vicuna", VICUNA),
    ("mt-bench", MT_BENCH),
    ("vicuna-mt-bench", VICUNA_MT_BENCH),
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

    /// Every text field of every record (prompts, responses, judgements, tree messages at
    /// every depth, questions' turns), and the records' ids.
    fn texts_and_ids(jsonl: &str) -> (Vec<String>, Vec<String>) {
        fn walk(v: &serde_json::Value, texts: &mut Vec<String>, ids: &mut Vec<String>) {
            use serde_json::Value;
            match v {
                Value::Object(m) => {
                    for (k, x) in m {
                        match (k.as_str(), x) {
                            ("id" | "message_tree_id" | "message_id", Value::String(s)) => {
                                ids.push(s.clone())
                            }
                            (_, Value::String(s)) => texts.push(normal(s)),
                            _ => walk(x, texts, ids),
                        }
                    }
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, texts, ids)),
                Value::String(s) => texts.push(normal(s)),
                _ => {}
            }
        }
        let (mut texts, mut ids) = (Vec::new(), Vec::new());
        for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
            walk(&serde_json::from_str(line).unwrap(), &mut texts, &mut ids);
        }
        // Texts of a few words (a category, a role) are no evidence of overlap.
        texts.retain(|t| t.split(' ').count() >= 4);
        (texts, ids)
    }

    fn normal(s: &str) -> String {
        s.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    }

    #[test]
    fn the_held_out_split_is_disjoint_from_every_training_file() {
        let (mut train_texts, mut train_ids) = (Vec::new(), Vec::new());
        for t in TRAINING {
            let (x, i) = texts_and_ids(t);
            train_texts.extend(x);
            train_ids.extend(i);
        }
        let train_ids: std::collections::HashSet<String> = train_ids.into_iter().collect();
        let mut checked = 0;
        for t in HELD_OUT {
            let (texts, ids) = texts_and_ids(t);
            for id in ids.iter().filter(|i| i.len() > 8) {
                assert!(
                    !train_ids.contains(id),
                    "held-out id {id} is in a training file"
                );
            }
            for x in &texts {
                // Neither the same text nor one inside the other.
                for y in &train_texts {
                    assert!(
                        !y.contains(x.as_str()),
                        "held-out text is in a training file: {x:.80}"
                    );
                    if y.len() >= 40 {
                        assert!(
                            !x.contains(y.as_str()),
                            "training text is in the held-out data: {y:.80}"
                        );
                    }
                }
                checked += 1;
            }
        }
        assert!(checked > 200, "only {checked} held-out texts");
    }

    #[test]
    fn the_shipped_oasst_split_is_the_shared_data_split_by_tree() {
        // scripts/make_oasst_split.py's rule on ../shared/data: eval holds the trees whose
        // sha256(message_tree_id) is even, train the others, synthetic trees dropped.
        let shared =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/oasst/trees.jsonl");
        let text = std::fs::read_to_string(&shared).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (the shared data sits beside the checkout)",
                shared.display()
            )
        });
        let parse = |jsonl: &str| -> Vec<srlm_core::oasst::Tree> {
            jsonl
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let (mut eval, mut train) = (Vec::new(), Vec::new());
        for tree in parse(&text) {
            if tree.prompt.synthetic {
                continue;
            }
            let digest = Sha256::digest(tree.message_tree_id.as_bytes());
            if digest[31] % 2 == 0 {
                &mut eval
            } else {
                &mut train
            }
            .push(tree);
        }
        let filter = srlm_core::oasst::TreeFilter::default();
        for (shipped, source) in [(OASST_EVAL, &eval), (OASST_TRAIN, &train)] {
            let shipped = parse(shipped);
            let ids = |t: &[srlm_core::oasst::Tree]| {
                t.iter()
                    .map(|t| t.message_tree_id.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(&shipped), ids(source));
            // The first-turn ranked replies, which the judge is evaluated on, are kept whole.
            for (a, b) in shipped.iter().zip(source.iter()) {
                assert_eq!(
                    srlm_core::oasst::ranked_prompt(a, &filter),
                    srlm_core::oasst::ranked_prompt(b, &filter)
                );
            }
        }
        assert!(
            eval.len() >= 25 && train.len() >= 20,
            "{} / {}",
            eval.len(),
            train.len()
        );
    }

    /// The question sets are upstream's files as `../shared/data` holds them, and the pooled
    /// set is the two one after the other: 160 prompts, every id once (Vicuna 1-80, MT-Bench
    /// 81-160), each MT-Bench question read by its first turn.
    #[test]
    fn the_question_sets_are_the_shared_files_and_pool_without_clashes() {
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
        for (name, shipped) in [("vicuna", VICUNA), ("mt-bench", MT_BENCH)] {
            let file = shared.join(name).join("question.jsonl");
            let upstream = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            assert_eq!(shipped, upstream, "{name}");
        }
        let pooled = resolve(Path::new("builtin:vicuna-mt-bench")).unwrap();
        let prompts = crate::commands::eval_vs::load_prompts(&pooled).unwrap();
        assert_eq!(prompts.len(), 160);
        let ids: Vec<u32> = prompts.iter().map(|(id, _)| id.parse().unwrap()).collect();
        assert_eq!(ids, (1..=160).collect::<Vec<u32>>());
        assert!(prompts[80]
            .1
            .starts_with("Compose an engaging travel blog post"));
    }
}
