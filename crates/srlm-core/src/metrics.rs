//! How well a judge's scores agree with human rankings, as the paper measures it: pairwise
//! accuracy, exact match of the whole order, Spearman and Kendall tau-b per prompt, and the share
//! of top scores that humans ranked best. Pure functions over plain numbers.
//!
//! Conventions: a human rank of 0 is the best reply (Open Assistant's `rank`); a higher judge
//! score is better. Correlations are taken between the score and the *negated* rank, so +1 means
//! full agreement. A reply the judge failed to score (`None`) is left out of its prompt's metrics
//! and counted.

use crate::judge::ScoreMode;
use serde::{Deserialize, Serialize};

/// Average ranks (1-based) of `x`, ties sharing the mean of their positions, as
/// `scipy.stats.rankdata(method="average")`.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    ranks
}

fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    if sxx == 0.0 || syy == 0.0 {
        return None; // a constant input: undefined, as scipy's nan
    }
    Some(sxy / (sxx * syy).sqrt())
}

/// Spearman's rho (Pearson on average ranks); None when undefined (fewer than 2 values or a
/// constant input), where scipy returns nan.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len());
    if x.len() < 2 {
        return None;
    }
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Kendall's tau-b, which corrects for ties in either input, as `scipy.stats.kendalltau`;
/// None when undefined.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Option<f64> {
    assert_eq!(x.len(), y.len());
    let n = x.len();
    if n < 2 {
        return None;
    }
    let (mut concordant, mut discordant, mut tie_x, mut tie_y) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            let dx = x[i].total_cmp(&x[j]) as i64;
            let dy = y[i].total_cmp(&y[j]) as i64;
            match (dx, dy) {
                (0, 0) => {}
                (0, _) => tie_x += 1,
                (_, 0) => tie_y += 1,
                _ if dx == dy => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    // tau-b = (C - D) / sqrt((C + D + T_x) (C + D + T_y)), T_x: pairs tied in x only,
    // T_y: tied in y only; pairs tied in both count in neither.
    let denom =
        (((concordant + discordant + tie_x) * (concordant + discordant + tie_y)) as f64).sqrt();
    if denom == 0.0 {
        return None;
    }
    Some((concordant - discordant) as f64 / denom)
}

/// One prompt's replies: human ranks (0 = best) and the judge's mean scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedReplies {
    pub human_ranks: Vec<u32>,
    pub scores: Vec<Option<f64>>,
}

/// The agreement of a judge with human rankings over many prompts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeAgreement {
    /// Reply pairs with different human ranks (and both scored).
    pub pairs: usize,
    /// Of those, the share the judge orders as humans do.
    pub pairwise_accuracy: f64,
    /// Of those, the share the judge scores equal (counted neither right nor wrong above).
    pub pairwise_ties: f64,
    /// Prompts whose whole order the judge reproduces (every pair with different human ranks
    /// strictly in the human order), over the prompts with at least one such pair.
    pub exact_match: f64,
    pub exact_match_prompts: usize,
    /// Mean over prompts of Spearman's rho between score and −rank; prompts where it is
    /// undefined (one reply, all scores or all ranks equal) are left out and counted.
    pub spearman: Option<f64>,
    pub kendall_tau: Option<f64>,
    pub correlation_prompts: usize,
    pub correlation_undefined: usize,
    /// Of the replies scored 5 (mean score ≥ 4.5), the share humans ranked best (rank 0).
    pub five_best: Option<f64>,
    pub fives: usize,
    /// Replies the judge failed to score.
    pub missing_scores: usize,
    pub replies: usize,
}

pub fn judge_agreement(prompts: &[RankedReplies]) -> JudgeAgreement {
    let mut a = JudgeAgreement::default();
    let (mut agree, mut ties) = (0usize, 0usize);
    let (mut exact, mut sp_sum, mut kt_sum, mut five_best) = (0usize, 0.0, 0.0, 0usize);
    for p in prompts {
        assert_eq!(
            p.human_ranks.len(),
            p.scores.len(),
            "one score slot per reply"
        );
        a.replies += p.scores.len();
        let scored: Vec<(f64, f64)> = p
            .human_ranks
            .iter()
            .zip(&p.scores)
            .filter_map(|(&r, s)| s.map(|s| (r as f64, s)))
            .collect();
        a.missing_scores += p.scores.len() - scored.len();
        let mut prompt_pairs = 0;
        let mut prompt_right = 0;
        for i in 0..scored.len() {
            for j in i + 1..scored.len() {
                let (ri, si) = scored[i];
                let (rj, sj) = scored[j];
                if ri == rj {
                    continue;
                }
                prompt_pairs += 1;
                // Lower rank is better, higher score is better.
                let human_prefers_i = ri < rj;
                if si == sj {
                    ties += 1;
                } else if (si > sj) == human_prefers_i {
                    agree += 1;
                    prompt_right += 1;
                }
            }
        }
        a.pairs += prompt_pairs;
        if prompt_pairs > 0 {
            a.exact_match_prompts += 1;
            if prompt_right == prompt_pairs {
                exact += 1;
            }
        }
        let neg_rank: Vec<f64> = scored.iter().map(|(r, _)| -r).collect();
        let score: Vec<f64> = scored.iter().map(|(_, s)| *s).collect();
        match (
            spearman(&score, &neg_rank),
            kendall_tau_b(&score, &neg_rank),
        ) {
            (Some(sp), Some(kt)) => {
                sp_sum += sp;
                kt_sum += kt;
                a.correlation_prompts += 1;
            }
            _ => a.correlation_undefined += 1,
        }
        for &(r, s) in &scored {
            if s >= 4.5 {
                a.fives += 1;
                if r == 0.0 {
                    five_best += 1;
                }
            }
        }
    }
    if a.pairs > 0 {
        a.pairwise_accuracy = agree as f64 / a.pairs as f64;
        a.pairwise_ties = ties as f64 / a.pairs as f64;
    }
    if a.exact_match_prompts > 0 {
        a.exact_match = exact as f64 / a.exact_match_prompts as f64;
    }
    if a.correlation_prompts > 0 {
        a.spearman = Some(sp_sum / a.correlation_prompts as f64);
        a.kendall_tau = Some(kt_sum / a.correlation_prompts as f64);
    }
    if a.fives > 0 {
        a.five_best = Some(five_best as f64 / a.fives as f64);
    }
    a
}

/// One human-ranked reply as a judge saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct JudgedReply {
    pub human_rank: u32,
    /// Length in characters, for the length baseline.
    pub chars: usize,
    /// The mean written score of its judgements (None: none parsed).
    pub sampled: Option<f64>,
    /// The mean expected score (a judgement without a distribution counts its written score).
    pub expected: Option<f64>,
}

/// A judge's agreement with human rankings under both readings of its judgements, beside the
/// trivial judges on the same pairs: "the longer reply is better" and "every reply gets the
/// same score" (all ties). The baselines see only replies the judge scored, so every row
/// counts the same pairs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeComparison {
    pub sampled: JudgeAgreement,
    /// None when no judgement carried a distribution over its score.
    pub expected: Option<JudgeAgreement>,
    pub length: JudgeAgreement,
    pub constant: JudgeAgreement,
    /// Each reading's pairs split by what length says: whether its accuracy comes from reading
    /// length or from something length misses.
    #[serde(default)]
    pub sampled_by_length: LengthSplit,
    #[serde(default)]
    pub expected_by_length: Option<LengthSplit>,
}

/// One reading of a [`JudgeComparison`]: its agreement and its length split.
pub struct Reading<'a> {
    /// The reading these are of: the written score's where none carried a distribution.
    pub mode: ScoreMode,
    pub agreement: &'a JudgeAgreement,
    /// None for an expected reading in a summary written before the split existed.
    pub by_length: Option<&'a LengthSplit>,
}

impl JudgeComparison {
    /// The figures under `mode`, falling back to the written score where no judgement carried
    /// a distribution (what `srlm eval judge` reports as its `agreement`).
    pub fn under(&self, mode: ScoreMode) -> Reading<'_> {
        match (mode, &self.expected) {
            (ScoreMode::Expected, Some(e)) => Reading {
                mode,
                agreement: e,
                by_length: self.expected_by_length.as_ref(),
            },
            _ => Reading {
                mode: ScoreMode::Sampled,
                agreement: &self.sampled,
                by_length: Some(&self.sampled_by_length),
            },
        }
    }
}

/// A judge's pairs (different human ranks, both replies scored, different lengths) split by
/// whether the reply humans preferred is the longer or the shorter one. "The longer reply wins"
/// scores 1 on the first part and 0 on the second; a judge at chance, 0.5 on both; a judge that
/// reads content and not length, above 0.5 on both.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LengthSplit {
    /// Pairs where humans preferred the longer reply, and the share the judge orders as they
    /// do (a tie counts as a miss, as in `pairwise_accuracy`).
    pub longer_preferred_pairs: usize,
    pub longer_preferred_accuracy: Option<f64>,
    /// Pairs where humans preferred the shorter reply, and the share the judge orders as they do.
    pub shorter_preferred_pairs: usize,
    pub shorter_preferred_accuracy: Option<f64>,
    /// Of the pairs it does not tie, the share the judge orders as length does (the longer
    /// reply higher): 1 for a judge that only reads length, about 0.5 for one blind to it.
    pub agrees_with_length: Option<f64>,
}

/// The [`LengthSplit`] of one reading: `score` of each reply (None: not scored, left out).
pub fn length_split(
    prompts: &[Vec<JudgedReply>],
    score: &dyn Fn(&JudgedReply) -> Option<f64>,
) -> LengthSplit {
    let (mut longer, mut longer_right, mut shorter, mut shorter_right) = (0, 0, 0, 0);
    let (mut untied, mut as_length) = (0, 0);
    for p in prompts {
        let scored: Vec<(&JudgedReply, f64)> =
            p.iter().filter_map(|r| score(r).map(|s| (r, s))).collect();
        for (i, &(a, sa)) in scored.iter().enumerate() {
            for &(b, sb) in &scored[i + 1..] {
                if a.human_rank == b.human_rank || a.chars == b.chars {
                    continue;
                }
                // (better, worse) by the humans' ranks: rank 0 is the best.
                let ((better, s_better), (worse, s_worse)) = if a.human_rank < b.human_rank {
                    ((a, sa), (b, sb))
                } else {
                    ((b, sb), (a, sa))
                };
                let right = s_better > s_worse;
                if better.chars > worse.chars {
                    longer += 1;
                    longer_right += right as usize;
                } else {
                    shorter += 1;
                    shorter_right += right as usize;
                }
                if sa != sb {
                    untied += 1;
                    as_length += ((sa > sb) == (a.chars > b.chars)) as usize;
                }
            }
        }
    }
    let share = |n: usize, of: usize| (of > 0).then(|| n as f64 / of as f64);
    LengthSplit {
        longer_preferred_pairs: longer,
        longer_preferred_accuracy: share(longer_right, longer),
        shorter_preferred_pairs: shorter,
        shorter_preferred_accuracy: share(shorter_right, shorter),
        agrees_with_length: share(as_length, untied),
    }
}

pub fn compare_judges(prompts: &[Vec<JudgedReply>], with_expected: bool) -> JudgeComparison {
    let rows = |score: &dyn Fn(&JudgedReply) -> Option<f64>| -> Vec<RankedReplies> {
        prompts
            .iter()
            .map(|p| RankedReplies {
                human_ranks: p.iter().map(|r| r.human_rank).collect(),
                scores: p.iter().map(|r| r.sampled.and_then(|_| score(r))).collect(),
            })
            .collect()
    };
    // The baselines and the expected reading see the replies the written reading scored.
    let sampled = |r: &JudgedReply| r.sampled;
    let expected = |r: &JudgedReply| r.sampled.and(r.expected);
    JudgeComparison {
        sampled: judge_agreement(&rows(&|r| r.sampled)),
        expected: with_expected.then(|| judge_agreement(&rows(&|r| r.expected))),
        length: judge_agreement(&rows(&|r| Some(r.chars as f64))),
        constant: judge_agreement(&rows(&|_| Some(0.0))),
        sampled_by_length: length_split(prompts, &sampled),
        expected_by_length: with_expected.then(|| length_split(prompts, &expected)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_cases() {
        assert_eq!(spearman(&[1.0], &[2.0]), None, "one reply");
        assert_eq!(kendall_tau_b(&[1.0], &[2.0]), None);
        assert_eq!(
            spearman(&[3.0, 3.0, 3.0], &[1.0, 2.0, 3.0]),
            None,
            "all tied"
        );
        assert_eq!(kendall_tau_b(&[3.0, 3.0, 3.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(
            average_ranks(&[10.0, 20.0, 10.0, 5.0]),
            vec![2.5, 4.0, 2.5, 1.0]
        );

        let all_tied = RankedReplies {
            human_ranks: vec![0, 1, 2],
            scores: vec![Some(3.0), Some(3.0), Some(3.0)],
        };
        let one = RankedReplies {
            human_ranks: vec![0],
            scores: vec![Some(5.0)],
        };
        let missing = RankedReplies {
            human_ranks: vec![0, 1, 2],
            scores: vec![Some(5.0), None, Some(1.0)],
        };
        let a = judge_agreement(&[all_tied, one, missing]);
        assert_eq!(a.pairs, 3 + 1);
        assert_eq!(a.pairwise_ties, 0.75);
        assert_eq!(a.pairwise_accuracy, 0.25);
        assert_eq!((a.exact_match_prompts, a.exact_match), (2, 0.5));
        assert_eq!((a.correlation_prompts, a.correlation_undefined), (1, 2));
        assert_eq!(a.missing_scores, 1);
        assert_eq!((a.fives, a.five_best), (2, Some(1.0)));
    }

    #[test]
    fn baselines_count_the_pairs_the_judge_scored() {
        let reply = |rank, chars, s: Option<f64>, e: Option<f64>| JudgedReply {
            human_rank: rank,
            chars,
            sampled: s,
            expected: e,
        };
        let prompts = vec![
            vec![
                reply(0, 300, Some(4.0), Some(4.2)),
                reply(1, 100, Some(4.0), Some(3.9)),
                reply(2, 200, None, None),
            ],
            vec![
                reply(0, 50, Some(2.0), Some(2.5)),
                reply(1, 80, Some(3.0), Some(2.4)),
            ],
        ];
        let c = compare_judges(&prompts, true);
        // The unscored reply is out of every row: 2 pairs each.
        for a in [
            &c.sampled,
            c.expected.as_ref().unwrap(),
            &c.length,
            &c.constant,
        ] {
            assert_eq!(a.pairs, 2);
        }
        assert_eq!(
            (c.sampled.pairwise_accuracy, c.sampled.pairwise_ties),
            (0.0, 0.5)
        );
        assert_eq!(c.expected.as_ref().unwrap().pairwise_accuracy, 1.0);
        assert_eq!(c.length.pairwise_accuracy, 0.5);
        assert_eq!(
            (c.constant.pairwise_accuracy, c.constant.pairwise_ties),
            (0.0, 1.0)
        );
        assert!(compare_judges(&prompts, false).expected.is_none());
    }

    #[test]
    fn length_split_tells_reading_length_from_reading_content() {
        let reply = |rank, chars, s: f64| JudgedReply {
            human_rank: rank,
            chars,
            sampled: Some(s),
            expected: Some(s),
        };
        // Humans prefer the longer reply in the first prompt's 3 pairs and in (1, 2) of the
        // second, the shorter one in (0, 1) of the second; (0, 2) of the second, of equal
        // length, is in neither part.
        let by = |score: &dyn Fn(u32, usize) -> f64| {
            vec![
                vec![
                    reply(0, 300, score(0, 300)),
                    reply(1, 200, score(1, 200)),
                    reply(2, 100, score(2, 100)),
                ],
                vec![
                    reply(0, 50, score(0, 50)),
                    reply(1, 80, score(1, 80)),
                    reply(2, 50, score(2, 50)),
                ],
            ]
        };
        let split = |p: &[Vec<JudgedReply>]| length_split(p, &|r: &JudgedReply| r.expected);

        let length_judge = split(&by(&|_, chars| chars as f64));
        assert_eq!(
            (
                length_judge.longer_preferred_pairs,
                length_judge.shorter_preferred_pairs
            ),
            (4, 1)
        );
        assert_eq!(length_judge.longer_preferred_accuracy, Some(1.0));
        assert_eq!(length_judge.shorter_preferred_accuracy, Some(0.0));
        assert_eq!(length_judge.agrees_with_length, Some(1.0));

        let human_judge = split(&by(&|rank, _| -(rank as f64)));
        assert_eq!(human_judge.longer_preferred_accuracy, Some(1.0));
        assert_eq!(human_judge.shorter_preferred_accuracy, Some(1.0));
        assert_eq!(human_judge.agrees_with_length, Some(4.0 / 5.0));

        // A judge that ties everything is right nowhere and says nothing about length.
        let tie_judge = split(&by(&|_, _| 2.0));
        assert_eq!(tie_judge.shorter_preferred_accuracy, Some(0.0));
        assert_eq!(tie_judge.agrees_with_length, None);

        // Unscored replies are left out, as in every other metric.
        let none = length_split(&by(&|_, _| 1.0), &|_| None);
        assert_eq!(none, LengthSplit::default());

        // compare_judges carries the split of each reading.
        let c = compare_judges(&by(&|_, chars| chars as f64), true);
        assert_eq!(c.sampled_by_length, length_judge);
        assert_eq!(c.expected_by_length.as_ref(), Some(&length_judge));
    }
}
