//! Per-iteration diagnostics of a self-rewarding round, to see early when the loop games itself:
//! how the judge's scores are spread, how much its k samples agree, how many prompts are lost
//! to ties, how wide the pair margins are, how long the responses are, and whether longer
//! responses score higher (the paper saw length grow with iterations).

use crate::judge::ScoreMode;
use crate::metrics::spearman;
use crate::pairs::PairStats;
use crate::stages::{CandidateRecord, JudgementRecord, PairRecord};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(values: &[f64]) -> Summary {
    if values.is_empty() {
        return Summary::default();
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Summary {
        n,
        mean: v.iter().sum::<f64>() / n as f64,
        median,
        min: v[0],
        max: v[n - 1],
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnostics {
    pub prompts: usize,
    pub candidates: usize,
    pub judgements: usize,
    pub parse_failures: usize,
    pub parse_failure_rate: f64,
    /// Judgements that wrote no score and were asked for one (`forced_verdict`), scored or not.
    #[serde(default)]
    pub forced_verdicts: usize,
    /// Parsed judgement scores as written, by value ("0" .. "5"; half points as "4.5").
    pub score_histogram: BTreeMap<String, usize>,
    /// Which reading of the judgements the candidates' scores, their spread and the pairs use.
    #[serde(default)]
    pub score_mode: ScoreMode,
    /// Candidates' mean scores.
    pub candidate_scores: Summary,
    /// Of candidates with two or more parsed samples, the share whose written scores all agree
    /// (None: no candidate has two, as with `judge.k` = 1).
    pub judge_samples_agree: Option<f64>,
    /// Mean over candidates with two or more samples of the standard deviation of their values
    /// (None: no such candidate).
    pub judge_sample_std: Option<f64>,
    /// Of the scored judgements, the share that carry a distribution over the score.
    #[serde(default)]
    pub with_distribution: f64,
    /// Prompts without a pair: all candidates tied, or too few scored, or margin too small.
    pub prompts_tied: usize,
    pub prompts_unscored: usize,
    pub prompts_small_margin: usize,
    pub pairs: usize,
    pub pair_margins: Summary,
    /// Response lengths in characters.
    pub response_chars: Summary,
    pub chosen_chars: Summary,
    pub rejected_chars: Summary,
    /// Spearman correlation of a candidate's length with its mean score (None: too few, or no
    /// variation).
    pub length_score_spearman: Option<f64>,
    /// Best minus worst mean score over each prompt's scored candidates (prompts with two or
    /// more): how far apart the judge puts a prompt's answers.
    #[serde(default)]
    pub prompt_score_range: Summary,
    /// Of the pairs, the share whose chosen answer is not the prompt's top-scored candidate:
    /// length control, not the judge, picked it (None: no pairs).
    #[serde(default)]
    pub chosen_not_top: Option<f64>,
}

fn label(score: f64) -> String {
    if score.fract() == 0.0 {
        format!("{}", score as i64)
    } else {
        format!("{score}")
    }
}

pub fn diagnose(
    candidates: &[CandidateRecord],
    judgements: &[JudgementRecord],
    pairs: &[PairRecord],
    stats: &PairStats,
    mode: ScoreMode,
) -> Diagnostics {
    let mut d = Diagnostics {
        score_mode: mode,
        prompts: stats.prompts,
        candidates: candidates.len(),
        judgements: judgements.len(),
        prompts_tied: stats.ties,
        prompts_unscored: stats.too_few_scored,
        prompts_small_margin: stats.small_margin,
        pairs: pairs.len(),
        ..Diagnostics::default()
    };
    let mut by_candidate: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut written: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut with_distribution = 0;
    for j in judgements {
        d.forced_verdicts += j.judgement.forced_verdict.is_some() as usize;
        match (j.judgement.score, j.value(mode)) {
            (Some(s), Some(v)) => {
                *d.score_histogram.entry(label(s)).or_insert(0) += 1;
                by_candidate
                    .entry(j.candidate_id.as_str())
                    .or_default()
                    .push(v);
                written.entry(j.candidate_id.as_str()).or_default().push(s);
                with_distribution += j.judgement.distribution.is_some() as usize;
            }
            _ => d.parse_failures += 1,
        }
    }
    let scored = judgements.len() - d.parse_failures;
    d.with_distribution = if scored > 0 {
        with_distribution as f64 / scored as f64
    } else {
        0.0
    };
    d.parse_failure_rate = if judgements.is_empty() {
        0.0
    } else {
        d.parse_failures as f64 / judgements.len() as f64
    };
    let (mut agree, mut multi, mut stds) = (0usize, 0usize, Vec::new());
    for s in written.values().filter(|s| s.len() >= 2) {
        multi += 1;
        agree += s.iter().all(|x| *x == s[0]) as usize;
    }
    for s in by_candidate.values().filter(|s| s.len() >= 2) {
        let m = s.iter().sum::<f64>() / s.len() as f64;
        stds.push((s.iter().map(|x| (x - m).powi(2)).sum::<f64>() / s.len() as f64).sqrt());
    }
    d.judge_samples_agree = (multi > 0).then(|| agree as f64 / multi as f64);
    d.judge_sample_std = (!stds.is_empty()).then(|| summarize(&stds).mean);
    let (mut lens, mut scores) = (Vec::new(), Vec::new());
    let all_lens: Vec<f64> = candidates
        .iter()
        .map(|c| c.response.chars().count() as f64)
        .collect();
    for c in candidates {
        if let Some(s) = by_candidate.get(c.id.as_str()) {
            lens.push(c.response.chars().count() as f64);
            scores.push(s.iter().sum::<f64>() / s.len() as f64);
        }
    }
    // Each prompt's best and worst mean score, for the range and for how pairs were chosen.
    let mut prompt_of: BTreeMap<&str, &str> = BTreeMap::new();
    for c in candidates {
        prompt_of.insert(c.id.as_str(), c.prompt_id.as_str());
    }
    let mut extremes: BTreeMap<&str, (f64, f64, usize)> = BTreeMap::new();
    for (cid, s) in &by_candidate {
        let Some(pid) = prompt_of.get(cid) else {
            continue;
        };
        let mean = s.iter().sum::<f64>() / s.len() as f64;
        let e = extremes
            .entry(pid)
            .or_insert((f64::NEG_INFINITY, f64::INFINITY, 0));
        *e = (e.0.max(mean), e.1.min(mean), e.2 + 1);
    }
    let ranges: Vec<f64> = extremes
        .values()
        .filter(|e| e.2 >= 2)
        .map(|e| e.0 - e.1)
        .collect();
    d.prompt_score_range = summarize(&ranges);
    // A candidate's mean here may differ from the pairs' in its last bits (other order of
    // summation), hence the tolerance.
    let not_top = pairs
        .iter()
        .filter(|p| {
            extremes
                .get(p.prompt_id.as_str())
                .is_some_and(|e| p.chosen_score < e.0 - 1e-9)
        })
        .count();
    d.chosen_not_top = (!pairs.is_empty()).then(|| not_top as f64 / pairs.len() as f64);
    d.response_chars = summarize(&all_lens);
    d.candidate_scores = summarize(&scores);
    d.length_score_spearman = if lens.len() >= 3 {
        spearman(&lens, &scores)
    } else {
        None
    };
    let margins: Vec<f64> = pairs
        .iter()
        .map(|p| p.chosen_score - p.rejected_score)
        .collect();
    d.pair_margins = summarize(&margins);
    let chosen: Vec<f64> = pairs
        .iter()
        .map(|p| p.chosen.chars().count() as f64)
        .collect();
    let rejected: Vec<f64> = pairs
        .iter()
        .map(|p| p.rejected.chars().count() as f64)
        .collect();
    d.chosen_chars = summarize(&chosen);
    d.rejected_chars = summarize(&rejected);
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairs::{build_pairs, PairOptions};
    use crate::stages::fixtures::{candidate as cand, judgement as judged};

    #[test]
    fn diagnostics_of_a_small_round() {
        let candidates = vec![
            cand("p", 0, "short"),
            cand("p", 1, "a much longer answer"),
            cand("q", 0, "tie one"),
            cand("q", 1, "tie two"),
        ];
        let judgements = vec![
            judged("p/0", 0, Some(2.0)),
            judged("p/0", 1, Some(2.0)),
            judged("p/1", 0, Some(4.0)),
            judged("p/1", 1, Some(5.0)),
            judged("q/0", 0, Some(3.0)),
            judged("q/0", 1, None),
            judged("q/1", 0, Some(3.0)),
            judged("q/1", 1, Some(3.0)),
        ];
        let mut judgements = judgements;
        // One judgement wrote no score and was asked for it (and scored 3 that way).
        judgements[6].judgement.forced_verdict = Some(" 3".into());
        let (pairs, stats) = build_pairs(&candidates, &judgements, &PairOptions::default());
        let d = diagnose(&candidates, &judgements, &pairs, &stats, ScoreMode::Sampled);
        assert_eq!(
            (d.judgements, d.parse_failures, d.pairs, d.prompts_tied),
            (8, 1, 1, 1)
        );
        assert_eq!(d.forced_verdicts, 1);
        assert_eq!(d.parse_failure_rate, 0.125);
        assert_eq!(d.score_histogram["3"], 3);
        // p/0 and q/1 agree; p/1 does not; q/0 has one parsed sample.
        assert!((d.judge_samples_agree.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(d.pair_margins.mean, 2.5);
        assert_eq!(d.chosen_chars.mean, 20.0);
        // Longest answer scores highest, the shortest lowest: positive correlation.
        assert!(d.length_score_spearman.unwrap() > 0.5);
        assert_eq!(summarize(&[3.0, 1.0, 2.0, 10.0]).median, 2.5);
    }

    #[test]
    fn one_sample_per_candidate_has_no_agreement_to_report() {
        // judge.k = 1: the samples can neither agree nor disagree, so the figures are absent,
        // not "0% agree, std 0".
        let candidates = vec![cand("p", 0, "a"), cand("p", 1, "bb")];
        let judgements = vec![judged("p/0", 0, Some(2.0)), judged("p/1", 0, Some(3.0))];
        let (pairs, stats) = build_pairs(&candidates, &judgements, &PairOptions::default());
        let d = diagnose(&candidates, &judgements, &pairs, &stats, ScoreMode::Sampled);
        assert_eq!((d.judge_samples_agree, d.judge_sample_std), (None, None));
        assert_eq!(d.pairs, 1);
    }

    #[test]
    fn how_often_length_control_rather_than_the_judge_chose() {
        // p: scores 3.0 / 2.9 / 1.0, the 2.9 the shortest; q: 4.0 / 3.0, the 4.0 the shortest.
        let candidates = vec![
            cand("p", 0, "a long top answer"),
            cand("p", 1, "short"),
            cand("p", 2, "the worst one"),
            cand("q", 0, "top"),
            cand("q", 1, "a longer answer"),
        ];
        let judgements = vec![
            judged("p/0", 0, Some(3.0)),
            judged("p/1", 0, Some(2.9)),
            judged("p/2", 0, Some(1.0)),
            judged("q/0", 0, Some(4.0)),
            judged("q/1", 0, Some(3.0)),
        ];
        let lc = PairOptions {
            length_control: Some(0.25),
            ..PairOptions::default()
        };
        let (pairs, stats) = build_pairs(&candidates, &judgements, &lc);
        let d = diagnose(&candidates, &judgements, &pairs, &stats, ScoreMode::Sampled);
        assert_eq!(d.chosen_not_top, Some(0.5), "p's chosen is its 2.9");
        assert_eq!(
            (d.prompt_score_range.min, d.prompt_score_range.max),
            (1.0, 2.0)
        );
        // Without length control the judge's top answer is always the chosen one.
        let (pairs, stats) = build_pairs(&candidates, &judgements, &PairOptions::default());
        let d = diagnose(&candidates, &judgements, &pairs, &stats, ScoreMode::Sampled);
        assert_eq!(d.chosen_not_top, Some(0.0));
        // No pairs, no share.
        let d = diagnose(&candidates, &judgements, &[], &stats, ScoreMode::Sampled);
        assert_eq!(d.chosen_not_top, None);
    }
}
