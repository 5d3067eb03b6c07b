//! Preference pairs from judged candidates: the highest mean score against the lowest, ties
//! dropped (the paper), with an optional minimum margin and optional length control (among the
//! near-top candidates prefer the shortest, as Meta-Rewarding does against length hacking).
//! "Near the top" is a tolerance in score points, or a share of the prompt's score range
//! (best − worst), so that a judge that barely separates a prompt's candidates does not hand
//! every pair to length.
//! A judgement counts as its written score or as its expected score (`ScoreMode`); expected
//! scores are rarely exactly equal, so `min_margin` is the tie tolerance there.

use crate::judge::ScoreMode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairOptions {
    /// Keep a pair only if chosen − rejected ≥ this (the paper: any positive gap).
    pub min_margin: f64,
    /// With Some(δ): among candidates scoring within δ of the best, choose the shortest.
    pub length_control: Option<f64>,
    /// What δ is measured in.
    #[serde(default)]
    pub length_control_unit: ToleranceUnit,
    /// What a judgement counts as.
    #[serde(default)]
    pub score_mode: ScoreMode,
}

impl Default for PairOptions {
    fn default() -> Self {
        Self {
            min_margin: f64::MIN_POSITIVE,
            length_control: None,
            length_control_unit: ToleranceUnit::Points,
            score_mode: ScoreMode::Sampled,
        }
    }
}

/// The unit of length control's tolerance δ.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToleranceUnit {
    /// δ in score points: within δ of the best score.
    #[default]
    Points,
    /// δ as a share of the prompt's range: within δ × (best − worst) of the best score.
    Range,
}

impl std::str::FromStr for ToleranceUnit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "points" => Ok(Self::Points),
            "range" => Ok(Self::Range),
            _ => Err(format!("`{s}` is not a tolerance unit: points or range")),
        }
    }
}

/// A candidate's mean judge score (None if every judgement failed) and its length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub score: Option<f64>,
    pub length: usize,
}

/// Why a prompt gave no pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoPair {
    /// Fewer than two candidates with a score.
    TooFewScored,
    /// Best and worst scores are equal.
    Tie,
    /// The gap is below `min_margin`.
    SmallMargin,
}

/// Indices (chosen, rejected) into `candidates`. Earlier candidates win exact ties of score and
/// length, so the choice is deterministic.
pub fn select_pair(candidates: &[Scored], opts: &PairOptions) -> Result<(usize, usize), NoPair> {
    let scored: Vec<(usize, f64, usize)> = candidates
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.score.map(|s| (i, s, c.length)))
        .collect();
    if scored.len() < 2 {
        return Err(NoPair::TooFewScored);
    }
    let best = scored.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    let worst = scored.iter().map(|c| c.1).fold(f64::INFINITY, f64::min);
    if best == worst {
        return Err(NoPair::Tie);
    }
    let chosen = match opts.length_control {
        Some(delta) => {
            let tolerance = match opts.length_control_unit {
                ToleranceUnit::Points => delta,
                ToleranceUnit::Range => delta * (best - worst),
            };
            scored
                .iter()
                .filter(|c| c.1 >= best - tolerance && c.1 > worst)
                .min_by_key(|c| c.2)
                .expect("the best candidate qualifies")
        }
        None => scored.iter().find(|c| c.1 == best).expect("best exists"),
    };
    let rejected = scored.iter().find(|c| c.1 == worst).expect("worst exists");
    if chosen.1 - rejected.1 < opts.min_margin {
        return Err(NoPair::SmallMargin);
    }
    Ok((chosen.0, rejected.0))
}

/// How many prompts gave a pair, and why the others did not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStats {
    pub prompts: usize,
    pub pairs: usize,
    pub too_few_scored: usize,
    pub ties: usize,
    pub small_margin: usize,
    /// Best and worst were the same text (sampled twice, judged apart): no preference in it.
    #[serde(default)]
    pub identical: usize,
}

/// Pairs from the judged candidates of every prompt, prompts in id order
/// ([`crate::stages::id_order`]), each prompt's candidates by index and each candidate's
/// judgements by sample: the pairs (and so DPO's batches) do not depend on the order the
/// records were written in, which a resumed stage changes. A candidate's score is the mean of
/// its parsed judgements' values under `opts.score_mode`; length is in characters.
pub fn build_pairs(
    candidates: &[crate::stages::CandidateRecord],
    judgements: &[crate::stages::JudgementRecord],
    opts: &PairOptions,
) -> (Vec<crate::stages::PairRecord>, PairStats) {
    use std::collections::HashMap;
    let mut scores: HashMap<&str, Vec<(usize, f64)>> = HashMap::new();
    for j in judgements {
        if let Some(s) = j.value(opts.score_mode) {
            scores
                .entry(j.candidate_id.as_str())
                .or_default()
                .push((j.sample, s));
        }
    }
    let mut by_prompt: HashMap<&str, Vec<&crate::stages::CandidateRecord>> = HashMap::new();
    for c in candidates {
        by_prompt.entry(c.prompt_id.as_str()).or_default().push(c);
    }
    let mut order: Vec<&str> = by_prompt.keys().copied().collect();
    order.sort_by(|a, b| crate::stages::id_order(a, b));
    let mut stats = PairStats::default();
    let mut out = Vec::new();
    for pid in order {
        stats.prompts += 1;
        let cands = by_prompt.get_mut(pid).expect("a prompt of the candidates");
        cands.sort_by_key(|c| c.candidate);
        let scored: Vec<Scored> = cands
            .iter()
            .map(|c| Scored {
                score: scores.get_mut(c.id.as_str()).map(|v| {
                    v.sort_by_key(|(sample, _)| *sample);
                    v.iter().map(|(_, s)| s).sum::<f64>() / v.len() as f64
                }),
                length: c.response.chars().count(),
            })
            .collect();
        match select_pair(&scored, opts) {
            Ok((ci, ri)) if cands[ci].response.trim() == cands[ri].response.trim() => {
                stats.identical += 1
            }
            Ok((ci, ri)) => {
                stats.pairs += 1;
                out.push(crate::stages::PairRecord {
                    prompt_id: pid.to_string(),
                    prompt: cands[ci].prompt.clone(),
                    chosen: cands[ci].response.clone(),
                    rejected: cands[ri].response.clone(),
                    chosen_score: scored[ci].score.expect("scored"),
                    rejected_score: scored[ri].score.expect("scored"),
                    schema_version: crate::stages::SCHEMA_VERSION,
                });
            }
            Err(NoPair::TooFewScored) => stats.too_few_scored += 1,
            Err(NoPair::Tie) => stats.ties += 1,
            Err(NoPair::SmallMargin) => stats.small_margin += 1,
        }
    }
    (out, stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(score: Option<f64>, length: usize) -> Scored {
        Scored { score, length }
    }

    #[test]
    fn best_against_worst_ties_dropped() {
        let cands = [
            c(Some(3.0), 10),
            c(Some(4.67), 50),
            c(None, 5),
            c(Some(1.33), 20),
        ];
        assert_eq!(select_pair(&cands, &PairOptions::default()), Ok((1, 3)));
        let tied = [c(Some(4.0), 1), c(Some(4.0), 2)];
        assert_eq!(
            select_pair(&tied, &PairOptions::default()),
            Err(NoPair::Tie)
        );
        let lonely = [c(Some(4.0), 1), c(None, 2)];
        assert_eq!(
            select_pair(&lonely, &PairOptions::default()),
            Err(NoPair::TooFewScored)
        );
        let margin = PairOptions {
            min_margin: 2.0,
            ..PairOptions::default()
        };
        assert_eq!(
            select_pair(&[c(Some(4.0), 1), c(Some(3.0), 2)], &margin),
            Err(NoPair::SmallMargin)
        );
    }

    #[test]
    fn a_pair_of_one_text_twice_is_dropped_and_counted() {
        use crate::stages::fixtures::{candidate as cand, judgement as judge};
        let cands = [
            cand("a", 0, "same"),
            cand("a", 1, "same "),
            cand("b", 0, "x"),
            cand("b", 1, "y"),
        ];
        let js = [
            judge("a/0", 0, Some(5.0)),
            judge("a/1", 0, Some(1.0)),
            judge("b/0", 0, Some(5.0)),
            judge("b/1", 0, Some(1.0)),
        ];
        let (pairs, stats) = build_pairs(&cands, &js, &PairOptions::default());
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].prompt_id, "b");
        assert_eq!((stats.pairs, stats.identical), (1, 1));
    }

    #[test]
    fn pairs_from_candidates_and_judgements() {
        use crate::stages::fixtures::{candidate as cand, judgement as judge};
        let cands = [
            cand("a", 0, "good"),
            cand("a", 1, "bad"),
            cand("b", 0, "x"),
            cand("b", 1, "y"),
        ];
        let js = [
            judge("a/0", 0, Some(5.0)),
            judge("a/0", 1, Some(4.0)),
            judge("a/1", 0, Some(2.0)),
            judge("a/1", 1, None),
            judge("b/0", 0, Some(3.0)),
            judge("b/1", 0, Some(3.0)),
        ];
        let (pairs, stats) = build_pairs(&cands, &js, &PairOptions::default());
        assert_eq!(
            stats,
            PairStats {
                prompts: 2,
                pairs: 1,
                ties: 1,
                ..PairStats::default()
            }
        );
        assert_eq!(
            (pairs[0].chosen.as_str(), pairs[0].rejected.as_str()),
            ("good", "bad")
        );
        assert_eq!((pairs[0].chosen_score, pairs[0].rejected_score), (4.5, 2.0));
    }

    #[test]
    fn pairs_do_not_depend_on_the_order_records_were_written_in() {
        use crate::stages::fixtures::{candidate as cand, judgement as judge};
        // Prompt "p2" has a tie of score and length between candidates 0 and 1 (the earlier
        // index wins); "p10"'s rejected score is a sum whose last bit depends on its order
        // (0.1 + 0.2 + 0.3 != 0.3 + 0.2 + 0.1 in f64).
        let cands = vec![
            cand("p2", 0, "aa"),
            cand("p2", 1, "bb"),
            cand("p2", 2, "c"),
            cand("p10", 0, "x"),
            cand("p10", 1, "yy"),
        ];
        let js = vec![
            judge("p2/0", 0, Some(0.1)),
            judge("p2/0", 1, Some(0.2)),
            judge("p2/0", 2, Some(0.3)),
            judge("p2/1", 0, Some(0.1)),
            judge("p2/1", 1, Some(0.2)),
            judge("p2/1", 2, Some(0.3)),
            judge("p2/2", 0, Some(0.0)),
            judge("p10/0", 0, Some(0.1)),
            judge("p10/0", 1, Some(0.2)),
            judge("p10/0", 2, Some(0.3)),
            judge("p10/1", 0, Some(2.0)),
        ];
        let opts = PairOptions::default();
        let (first, _) = build_pairs(&cands, &js, &opts);
        let ids: Vec<&str> = first.iter().map(|p| p.prompt_id.as_str()).collect();
        assert_eq!(ids, ["p2", "p10"], "ids in numeric order");
        assert_eq!(first[0].chosen, "aa");
        assert_eq!(first[1].rejected_score, (0.1 + 0.2 + 0.3) / 3.0);
        // Every rotation and the reversal of both files give the same pairs, bit for bit.
        for r in 0..js.len() {
            let (mut c, mut j) = (cands.clone(), js.clone());
            c.rotate_left(r % cands.len());
            j.rotate_left(r);
            if r % 2 == 1 {
                c.reverse();
                j.reverse();
            }
            let (pairs, _) = build_pairs(&c, &j, &opts);
            assert_eq!(pairs, first, "rotation {r}");
        }
    }

    #[test]
    fn length_control_prefers_the_shorter_near_top_answer() {
        let cands = [c(Some(5.0), 400), c(Some(4.67), 120), c(Some(2.0), 90)];
        assert_eq!(select_pair(&cands, &PairOptions::default()), Ok((0, 2)));
        let lc = PairOptions {
            length_control: Some(0.5),
            ..PairOptions::default()
        };
        assert_eq!(select_pair(&cands, &lc), Ok((1, 2)));
    }

    #[test]
    fn a_tolerance_of_the_range_follows_how_far_apart_the_judge_puts_the_candidates() {
        // Range 5.0 - 2.0 = 3: a quarter of it is 0.75, so 4.4 (0.6 below the best) is near
        // the top and, being shortest, chosen.
        let wide = [c(Some(5.0), 400), c(Some(4.4), 120), c(Some(2.0), 90)];
        // Range 3.2 - 3.0 = 0.2: a quarter is 0.05, so 3.1 is not near the top, though a
        // tolerance of 0.25 points would take it (and the pair would be length's choice).
        let narrow = [c(Some(3.2), 400), c(Some(3.1), 120), c(Some(3.0), 90)];
        let range = PairOptions {
            length_control: Some(0.25),
            length_control_unit: ToleranceUnit::Range,
            ..PairOptions::default()
        };
        let points = PairOptions {
            length_control_unit: ToleranceUnit::Points,
            ..range
        };
        assert_eq!(select_pair(&wide, &range), Ok((1, 2)));
        assert_eq!(select_pair(&narrow, &range), Ok((0, 2)));
        assert_eq!(select_pair(&narrow, &points), Ok((1, 2)));
        // A share of 1 or more lets every candidate above the worst be chosen, never the worst.
        let all = PairOptions {
            length_control: Some(1.0),
            ..range
        };
        assert_eq!(select_pair(&narrow, &all), Ok((1, 2)));
        let shortest_is_worst = [c(Some(3.2), 400), c(Some(3.0), 10)];
        assert_eq!(select_pair(&shortest_is_worst, &all), Ok((0, 1)));
    }

    #[test]
    fn expected_scores_separate_candidates_their_written_scores_tie() {
        use crate::judge::ScoreDistribution;
        use crate::stages::fixtures::{candidate as cand, judgement as judge};
        let cands = [cand("a", 0, "first"), cand("a", 1, "second")];
        let with = |cid: &str, w: [f64; 6]| {
            let mut j = judge(cid, 0, Some(4.0));
            j.judgement.distribution = ScoreDistribution::from_weights(w);
            j
        };
        let js = [
            with("a/0", [0.0, 0.0, 0.0, 0.1, 0.6, 0.3]),
            with("a/1", [0.0, 0.0, 0.0, 0.4, 0.5, 0.1]),
        ];
        let (pairs, stats) = build_pairs(&cands, &js, &PairOptions::default());
        assert_eq!((pairs.len(), stats.ties), (0, 1));
        let expected = PairOptions {
            score_mode: ScoreMode::Expected,
            ..PairOptions::default()
        };
        let (pairs, _) = build_pairs(&cands, &js, &expected);
        assert_eq!(pairs.len(), 1);
        assert_eq!(pairs[0].chosen, "first");
        assert!((pairs[0].chosen_score - 4.2).abs() < 1e-12);
        assert!((pairs[0].rejected_score - 3.7).abs() < 1e-12);
        // The tolerance: a gap under min_margin is no pair.
        let tolerant = PairOptions {
            min_margin: 0.6,
            ..expected
        };
        assert_eq!(build_pairs(&cands, &js, &tolerant).1.small_margin, 1);
    }
}
