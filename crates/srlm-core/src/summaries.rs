//! What a run's stages leave for others to read, as types: the manifest of finished stages,
//! `srlm eval judge`'s metrics and `srlm eval vs`'s summary. The commands write them and the
//! report reads them through these types, so neither spells the other's keys.
//!
//! Written through [`to_pretty_json`], which sorts every object's keys, as srlm has always
//! written them.

use crate::headtohead::{LengthCheck, Outcome, WinRate};
use crate::judge::ScoreMode;
use crate::metrics::{JudgeAgreement, JudgeComparison};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One finished stage of `srlm run` (`RUN/manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEntry {
    /// The srlm command line that does this stage by hand (without the program name).
    pub command: Vec<String>,
    /// Input path (relative to the run) -> SHA-256.
    pub inputs: BTreeMap<String, String>,
    pub outputs: Vec<String>,
    pub seconds: f64,
    /// Peak resident memory of srlm's process while the stage ran, in MiB (Linux; a server
    /// or an external trainer the stage drove is not in it). Absent in runs made before
    /// it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_mib: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<serde_json::Value>,
    /// The command that started the server the stage ran on, when `srlm run` launched one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
}

/// `RUN/manifest.json`: the run's finished stages by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub stages: BTreeMap<String, StageEntry>,
}

/// `OUT.metrics.json` of `srlm eval judge`: the judge against human rankings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgeEvalSummary {
    /// Who judged: a model path or a server.
    pub model: String,
    pub data: String,
    pub prompts: usize,
    /// Judgements per reply.
    pub k: usize,
    pub judgements: usize,
    /// Requests that failed (too long, or a server that kept failing).
    pub failed_requests: usize,
    /// Judgements left without a score, even after being asked for one.
    pub parse_failure_rate: f64,
    /// Judgements that wrote no score and were asked for it (`forced_verdict`).
    #[serde(default)]
    pub forced_verdict_rate: f64,
    /// Of the scored judgements, the share with a distribution over the score.
    pub with_distribution: f64,
    /// The reading `agreement` uses.
    pub score: ScoreMode,
    /// The judge's agreement under `score`.
    pub agreement: JudgeAgreement,
    /// Every reading beside the length and constant baselines, on the same pairs.
    pub judges: JudgeComparison,
}

/// One prompt's outcome in `srlm eval vs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptOutcome {
    pub id: String,
    pub outcome: Outcome,
}

/// `OUT/summary.json` of `srlm eval vs`: model A against model B under a fixed judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VsSummary {
    pub a: String,
    pub b: String,
    /// The judge: a model path, a server, or "default".
    pub judge: String,
    pub prompts: String,
    /// "pairwise" or "scores".
    pub mode: String,
    /// In scores mode, the reading of a judgement ("sampled" or "expected").
    pub score: Option<String>,
    /// Prompts both models answered.
    pub compared: usize,
    pub a_win_rate: WinRate,
    pub lengths: LengthCheck,
    pub judge_unparsed: usize,
    pub judgements: usize,
    /// Pairwise: how often the answer shown first won; 0.5 is no position bias.
    pub first_position_win_share: Option<f64>,
    pub outcomes: Vec<PromptOutcome>,
}

/// `value` as pretty JSON with every object's keys sorted.
pub fn to_pretty_json(value: &impl Serialize) -> serde_json::Result<String> {
    // serde_json's `Value` keeps objects in a sorted map (this workspace does not enable its
    // `preserve_order`), so going through it sorts nested structs' fields too.
    serde_json::to_string_pretty(&serde_json::to_value(value)?)
}

/// The summary in `path`, or None if there is none that reads as one.
pub fn read_summary<T: for<'de> Deserialize<'de>>(path: &std::path::Path) -> Option<T> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_are_written_with_sorted_keys_and_read_back() {
        let s = VsSummary {
            a: "m2".into(),
            b: "m1".into(),
            judge: "m1".into(),
            prompts: "p.jsonl".into(),
            mode: "scores".into(),
            score: Some("expected".into()),
            compared: 2,
            a_win_rate: WinRate {
                wins: 1,
                ties: 1,
                losses: 0,
                score: 0.75,
                ci95: (0.3, 1.0),
            },
            lengths: LengthCheck::default(),
            judge_unparsed: 0,
            judgements: 4,
            first_position_win_share: None,
            outcomes: vec![PromptOutcome {
                id: "1".into(),
                outcome: Outcome::Tie,
            }],
        };
        let text = to_pretty_json(&s).unwrap();
        let keys: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("  \"") && !l.starts_with("    "))
            .map(|l| l.trim().split('"').nth(1).unwrap())
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert!(
            text.contains("\"first_position_win_share\": null"),
            "{text}"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("summary.json");
        std::fs::write(&p, &text).unwrap();
        assert_eq!(read_summary::<VsSummary>(&p), Some(s));
        assert_eq!(
            read_summary::<VsSummary>(&dir.path().join("none.json")),
            None
        );
    }
}
