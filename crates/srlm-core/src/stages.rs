//! The records the loop's stages exchange, one JSON object a line, keyed by stable ids:
//!
//! - prompts (`srlm sample` reads): `{"id", "prompt"}`;
//! - candidates (`srlm sample` writes, `srlm judge` reads): `{"id": "<prompt id>/<c>",
//!   "prompt_id", "prompt", "candidate", "response", "finish_reason"}`;
//! - judgements (`srlm judge` writes, `srlm pairs` reads): `{"id": "<candidate id>/<s>",
//!   "candidate_id", "prompt_id", "sample", "raw", "score" | "failure", "score_distribution"}`
//!   (the distribution over 0..=5 at the score token, when the backend gave log-probabilities);
//! - pairs (`srlm pairs` writes, `srlm dpo` reads): `{"prompt_id", "prompt", "chosen",
//!   "rejected", "chosen_score", "rejected_score"}`, TRL's prompt/chosen/rejected plus
//!   provenance.

use crate::judge::{JudgeSample, ScoreMode};
use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u32 = 1;

pub const PROMPT_HINT: &str = r#"each line must be {"id": "...", "prompt": "..."}"#;
pub const CANDIDATE_HINT: &str = r#"each line must be a candidate written by `srlm sample`: {"id", "prompt_id", "prompt", "candidate", "response"}"#;
pub const JUDGEMENT_HINT: &str = r#"each line must be a judgement written by `srlm judge`: {"id", "candidate_id", "prompt_id", "sample", "raw", "score"}"#;

/// The order of record ids, digit runs compared as numbers ("it1-2" before "it1-10"): a
/// stage that reads records in a file's order (which is the order they finished, and a resumed
/// stage finishes them in another) sorts them by it first, so its output is a function of the
/// records alone.
pub fn id_order(a: &str, b: &str) -> std::cmp::Ordering {
    fn runs(s: &str) -> impl Iterator<Item = (bool, &str)> {
        let mut rest = s;
        std::iter::from_fn(move || {
            let first = rest.chars().next()?;
            let digits = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digits)
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(end);
            rest = tail;
            Some((digits, run))
        })
    }
    let (mut x, mut y) = (runs(a), runs(b));
    loop {
        let ord = match (x.next(), y.next()) {
            (None, None) => return a.cmp(b),
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some((true, p)), Some((true, q))) => {
                let (p, q) = (p.trim_start_matches('0'), q.trim_start_matches('0'));
                p.len().cmp(&q.len()).then_with(|| p.cmp(q))
            }
            (Some((_, p)), Some((_, q))) => p.cmp(q),
        };
        if ord.is_ne() {
            return ord;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptRecord {
    pub id: String,
    pub prompt: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    pub id: String,
    pub prompt_id: String,
    pub prompt: String,
    pub candidate: usize,
    pub response: String,
    #[serde(default)]
    pub finish_reason: Option<String>,
}

/// One judgement as `srlm judge` writes it: its ids, then the judge sample itself (the same
/// keys as [`JudgeSample`], flattened into the record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JudgementRecord {
    pub id: String,
    pub candidate_id: String,
    pub prompt_id: String,
    /// Which of the candidate's k judgements this is.
    pub sample: usize,
    #[serde(flatten)]
    pub judgement: JudgeSample,
}

impl JudgementRecord {
    /// Why this record cannot be a judgement on the additive 0-5 scale, if it cannot: a score
    /// or expected score outside [0, 5] (or not finite), or a distribution that is not one.
    pub fn check(&self) -> Result<(), String> {
        let on_scale = |v: f64| v.is_finite() && (0.0..=5.0).contains(&v);
        if let Some(s) = self.judgement.score.filter(|s| !on_scale(*s)) {
            return Err(format!("field `score`: {s} is not on the 0-5 scale"));
        }
        if let Some(d) = &self.judgement.distribution {
            if !on_scale(d.expected) {
                return Err(format!(
                    "field `score_distribution.expected`: {} is not on the 0-5 scale",
                    d.expected
                ));
            }
            let sum: f64 = d.probs.iter().sum();
            if d.probs
                .iter()
                .any(|p| !(p.is_finite() && (0.0..=1.0).contains(p)))
                || (sum - 1.0).abs() > 1e-3
            {
                return Err(format!(
                    "field `score_distribution.probs`: {:?} is not a distribution over 0..5",
                    d.probs
                ));
            }
        }
        Ok(())
    }

    /// What this judgement counts as under `mode`.
    pub fn value(&self, mode: ScoreMode) -> Option<f64> {
        self.judgement.value(mode)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    pub prompt_id: String,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    pub chosen_score: f64,
    pub rejected_score: f64,
    pub schema_version: u32,
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_sort_with_their_numbers_as_numbers() {
        let mut ids = vec![
            "it1-10", "it1-2", "it10-0", "it2-1", "a", "it1-02", "b/3", "b/20",
        ];
        ids.sort_by(|a, b| super::id_order(a, b));
        assert_eq!(
            ids,
            ["a", "b/3", "b/20", "it1-02", "it1-2", "it1-10", "it2-1", "it10-0"]
        );
    }
}

/// Stage records for tests, with the ids the stages give them.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::{CandidateRecord, JudgeSample, JudgementRecord};

    /// Candidate `c` of prompt `p`: id `p/c`.
    pub fn candidate(p: &str, c: usize, response: &str) -> CandidateRecord {
        CandidateRecord {
            id: format!("{p}/{c}"),
            prompt_id: p.into(),
            prompt: format!("prompt {p}"),
            candidate: c,
            response: response.into(),
            finish_reason: None,
        }
    }

    /// Judgement `s` of candidate `cid` (`p/c`): id `p/c/s`.
    pub fn judgement(cid: &str, s: usize, score: Option<f64>) -> JudgementRecord {
        JudgementRecord {
            id: format!("{cid}/{s}"),
            candidate_id: cid.into(),
            prompt_id: cid.split('/').next().unwrap().into(),
            sample: s,
            judgement: JudgeSample {
                raw: String::new(),
                score,
                failure: None,
                distribution: None,
                forced_verdict: None,
            },
        }
    }
}
