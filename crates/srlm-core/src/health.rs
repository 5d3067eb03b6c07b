//! Judge health: the signs, in a run's own artifacts, that the judge has stopped judging, each
//! with what to change. A self-rewarding loop trains on its judge's verdicts, so a judge that
//! collapses onto one score, whose samples disagree, or that pays for length makes pairs that
//! teach the next model nothing or the wrong thing (the paper's length observation; Wang et
//! al. 2024 on ties; Meta-Rewarding on length).
//!
//! Pure functions over the per-iteration diagnostics and the evaluation's judge comparisons.

use crate::diagnostics::Diagnostics;
use crate::judge::ScoreMode;
use crate::metrics::{JudgeComparison, Reading};
use serde::{Deserialize, Serialize};

/// One warning about the judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flag {
    pub kind: FlagKind,
    /// The iteration (or model, for the evaluation's flags) it concerns.
    pub at: usize,
    /// What was seen, with its figures.
    pub seen: String,
    /// What to change.
    pub fix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlagKind {
    /// One score takes most of the judgements ("always 5").
    Collapse,
    /// A candidate's k samples rarely agree and spread widely.
    SamplesDisagree,
    /// Many judgements carry no score.
    ParseFailures,
    /// Many prompts lose their pair to ties.
    Ties,
    /// Longer candidates score higher, more so than the iteration before.
    LengthScoreCorrelation,
    /// Chosen answers are longer than rejected ones, iteration after iteration.
    ChosenLonger,
    /// Length control, not the judge, picked most chosen answers.
    LengthDecides,
    /// On held-out human rankings, the judge does no better than "the longer reply wins".
    BelowLengthBaseline,
}

/// When a flag is raised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Share of judgements with one score.
    pub collapse: f64,
    /// Samples that agree on fewer than this share of candidates...
    pub agreement: f64,
    /// ...with a mean sample std above this.
    pub sample_std: f64,
    pub parse_failures: f64,
    /// Share of prompts tied.
    pub ties: f64,
    /// Length-score Spearman above this, and up by `growth` from the iteration before.
    pub length_spearman: f64,
    pub growth: f64,
    /// Chosen over rejected mean length above this ratio in consecutive iterations.
    pub chosen_ratio: f64,
    /// Share of pairs whose chosen answer is not the top-scored one (length control's pick).
    pub length_decides: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            collapse: 0.7,
            agreement: 0.25,
            sample_std: 0.75,
            parse_failures: 0.05,
            ties: 0.3,
            length_spearman: 0.3,
            growth: 0.1,
            chosen_ratio: 1.2,
            length_decides: 0.5,
        }
    }
}

/// The flags of a run's iterations (`its[i]` is iteration i + 1).
pub fn iteration_flags(its: &[Diagnostics], th: &Thresholds) -> Vec<Flag> {
    let mut flags = Vec::new();
    for (i, d) in its.iter().enumerate() {
        let t = i + 1;
        let mut flag = |kind, seen: String, fix: &str| {
            flags.push(Flag {
                kind,
                at: t,
                seen,
                fix: fix.into(),
            })
        };
        let parsed: usize = d.score_histogram.values().sum();
        if let Some((score, n)) = d.score_histogram.iter().max_by_key(|(_, n)| **n) {
            let share = *n as f64 / parsed.max(1) as f64;
            if parsed >= 10 && share >= th.collapse {
                let fix = match d.score_mode {
                    ScoreMode::Expected => "the judge writes one score for almost everything: the pairs rest on the small differences of its expected scores, so check it against human rankings (eval.judge_data) before trusting them, and train it on judge examples that span every score (seed_data.eft, eft.data)",
                    ScoreMode::Sampled => "the judge has collapsed onto one score: train it on judge examples that span every score (seed_data.eft, eft.data), and read scores as judge.score = \"expected\" so near-ties still order the candidates",
                };
                flag(
                    FlagKind::Collapse,
                    format!("{:.0}% of the judgements score {score}", 100.0 * share),
                    fix,
                );
            }
        }
        let disagree = match (d.judge_samples_agree, d.judge_sample_std) {
            (Some(agree), Some(std)) if agree < th.agreement && std > th.sample_std => {
                Some((agree, std))
            }
            _ => None,
        };
        if let Some((agree, std)) = disagree {
            flag(
                FlagKind::SamplesDisagree,
                format!(
                    "a candidate's samples agree {:.0}% of the time, std {std:.2}",
                    100.0 * agree
                ),
                "the judge's samples are noise around its verdict: judge.score = \"expected\" with k = 1 at a low judge.temperature, or a larger judge.k",
            );
        }
        if d.judgements > 0 && d.parse_failure_rate >= th.parse_failures {
            flag(
                FlagKind::ParseFailures,
                format!(
                    "{:.0}% of the judgements have no valid score",
                    100.0 * d.parse_failure_rate
                ),
                "the judge often ends without \"Score: N\": more judge examples in its SFT (seed_data.eft), or a larger judge.max_new_tokens if it is cut off",
            );
        }
        if d.prompts > 0 && d.prompts_tied as f64 / d.prompts as f64 >= th.ties {
            flag(
                FlagKind::Ties,
                format!(
                    "{} of {} prompts tied",
                    d.prompts_tied, d.prompts
                ),
                "ties waste prompts: judge.score = \"expected\" (rarely tied) or a larger judge.k or sample.n",
            );
        }
        let prev = i.checked_sub(1).map(|p| &its[p]);
        if let Some(rho) = d.length_score_spearman {
            let before = prev.and_then(|p| p.length_score_spearman).unwrap_or(0.0);
            if rho >= th.length_spearman && (prev.is_none() || rho - before >= th.growth) {
                flag(
                    FlagKind::LengthScoreCorrelation,
                    format!("length-score Spearman {rho:.2} (iteration before: {before:.2})"),
                    "the judge pays for length: pairs.length_control (prefer the shortest near-top answer), and check the judge against the length baseline on held-out rankings",
                );
            }
        }
        if let Some(p) = prev {
            let ratio = |d: &Diagnostics| d.chosen_chars.mean / d.rejected_chars.mean.max(1.0);
            if d.pairs > 0
                && p.pairs > 0
                && ratio(d) >= th.chosen_ratio
                && ratio(p) >= th.chosen_ratio
            {
                flag(
                    FlagKind::ChosenLonger,
                    format!(
                        "chosen answers are {:.1}x as long as rejected ones (iteration before: {:.1}x)",
                        ratio(d),
                        ratio(p)
                    ),
                    "each iteration trains the model to write longer: pairs.length_control, or dpo.rpo_alpha to anchor the chosen answers",
                );
            }
        }
        if let Some(share) = d.chosen_not_top {
            if d.pairs >= 10 && share > th.length_decides {
                flag(
                    FlagKind::LengthDecides,
                    format!(
                        "length control, not the judge, chose {:.0}% of the chosen answers; the judge puts a prompt's answers a median {:.2} apart",
                        100.0 * share,
                        d.prompt_score_range.median
                    ),
                    "the pairs teach brevity more than the judge's taste: with pairs.length_control_unit = \"points\", set it to \"range\" (a share of each prompt's range, the default), which shrinks the tolerance where the judge's scores are close; with \"range\" already, a smaller pairs.length_control",
                );
            }
        }
    }
    flags
}

/// The flags of the evaluation: model `m`'s judge against held-out human rankings.
pub fn evaluation_flags(m: usize, c: &JudgeComparison, reading: ScoreMode) -> Vec<Flag> {
    let Reading {
        agreement: judge,
        by_length: split,
        ..
    } = c.under(reading);
    if judge.pairs == 0 || judge.pairwise_accuracy > c.length.pairwise_accuracy {
        return Vec::new();
    }
    // Where length is wrong is where a judge has to read something else to be right.
    let against_length = match split.and_then(|s| Some((s, s.shorter_preferred_accuracy?))) {
        Some((s, a)) => format!(
            "; right on {a:.3} of the {} pairs where humans preferred the shorter reply, and orders {:.0}% of its pairs as length does",
            s.shorter_preferred_pairs,
            100.0 * s.agrees_with_length.unwrap_or(0.0)
        ),
        None => String::new(),
    };
    vec![Flag {
        kind: FlagKind::BelowLengthBaseline,
        at: m,
        seen: format!(
            "pairwise accuracy {:.3} ({} reading, ties {:.0}%) against {:.3} for \"the longer reply wins\" on the same {} pairs{against_length}",
            judge.pairwise_accuracy,
            reading.name(),
            100.0 * judge.pairwise_ties,
            c.length.pairwise_accuracy,
            judge.pairs
        ),
        fix: "this judge orders human-ranked replies no better than their length: its pairs carry little signal; train it on more judge data (srlm eft from ranked replies), or judge with a stronger model ([backends])".into(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostics::Summary;

    fn diag(
        hist: &[(&str, usize)],
        agree: f64,
        std: f64,
        rho: Option<f64>,
        lens: (f64, f64),
    ) -> Diagnostics {
        Diagnostics {
            prompts: 10,
            judgements: hist.iter().map(|h| h.1).sum(),
            pairs: 8,
            score_histogram: hist.iter().map(|(k, n)| (k.to_string(), *n)).collect(),
            judge_samples_agree: Some(agree),
            judge_sample_std: Some(std),
            length_score_spearman: rho,
            chosen_chars: Summary {
                mean: lens.0,
                ..Summary::default()
            },
            rejected_chars: Summary {
                mean: lens.1,
                ..Summary::default()
            },
            ..Diagnostics::default()
        }
    }

    fn kinds(f: &[Flag]) -> Vec<(FlagKind, usize)> {
        f.iter().map(|f| (f.kind, f.at)).collect()
    }

    #[test]
    fn a_healthy_round_raises_nothing() {
        let d = diag(
            &[("2", 10), ("3", 12), ("4", 9), ("5", 5)],
            0.6,
            0.4,
            Some(0.1),
            (300.0, 290.0),
        );
        assert!(iteration_flags(&[d.clone(), d], &Thresholds::default()).is_empty());
    }

    #[test]
    fn one_judgement_per_candidate_is_not_disagreement_and_collapse_advice_fits_the_reading() {
        let mut d = diag(&[("2", 97), ("3", 3)], 0.0, 0.0, Some(0.0), (300.0, 300.0));
        (d.judge_samples_agree, d.judge_sample_std) = (None, None);
        let sampled = iteration_flags(&[d.clone()], &Thresholds::default());
        assert_eq!(kinds(&sampled), vec![(FlagKind::Collapse, 1)]);
        assert!(sampled[0].fix.contains("judge.score = \"expected\""));
        d.score_mode = ScoreMode::Expected;
        let expected = iteration_flags(&[d], &Thresholds::default());
        assert_eq!(kinds(&expected), vec![(FlagKind::Collapse, 1)]);
        // The run already reads the expected score: the advice must not ask for it again.
        assert!(
            !expected[0].fix.contains("judge.score"),
            "{}",
            expected[0].fix
        );
    }

    #[test]
    fn each_sign_is_flagged_where_it_appears() {
        let th = Thresholds::default();
        let collapsed = diag(&[("5", 40), ("4", 5)], 0.9, 0.1, Some(0.0), (300.0, 300.0));
        let noisy = diag(
            &[("1", 10), ("3", 10), ("5", 10)],
            0.05,
            1.2,
            Some(0.35),
            (420.0, 300.0),
        );
        let longer = diag(
            &[("1", 10), ("3", 10), ("5", 10)],
            0.6,
            0.3,
            Some(0.5),
            (500.0, 300.0),
        );
        let f = iteration_flags(&[collapsed, noisy, longer], &th);
        assert_eq!(
            kinds(&f),
            vec![
                (FlagKind::Collapse, 1),
                (FlagKind::SamplesDisagree, 2),
                (FlagKind::LengthScoreCorrelation, 2),
                (FlagKind::LengthScoreCorrelation, 3),
                (FlagKind::ChosenLonger, 3),
            ]
        );
        assert!(
            f[0].seen.contains("89% of the judgements score 5"),
            "{}",
            f[0].seen
        );
        assert!(f.iter().all(|f| !f.fix.is_empty()));
        // Growth is what flags a later iteration's correlation, not its level alone.
        let a = diag(
            &[("1", 10), ("3", 10), ("5", 10)],
            0.6,
            0.3,
            Some(0.5),
            (300.0, 300.0),
        );
        let b = diag(
            &[("1", 10), ("3", 10), ("5", 10)],
            0.6,
            0.3,
            Some(0.52),
            (300.0, 300.0),
        );
        assert_eq!(
            kinds(&iteration_flags(&[a, b], &th)),
            vec![(FlagKind::LengthScoreCorrelation, 1)]
        );
    }

    #[test]
    fn length_control_choosing_most_pairs_is_flagged_with_the_range_unit_as_the_fix() {
        let th = Thresholds::default();
        let mut d = diag(
            &[("2", 10), ("3", 12), ("4", 9), ("5", 5)],
            0.6,
            0.4,
            Some(0.1),
            (300.0, 290.0),
        );
        d.pairs = 64;
        d.prompt_score_range.median = 0.19;
        d.chosen_not_top = Some(0.45);
        assert!(iteration_flags(&[d.clone()], &th).is_empty());
        d.chosen_not_top = Some(0.66);
        let f = iteration_flags(&[d.clone()], &th);
        assert_eq!(kinds(&f), vec![(FlagKind::LengthDecides, 1)]);
        assert!(
            f[0].seen.contains("66%") && f[0].seen.contains("0.19"),
            "{}",
            f[0].seen
        );
        assert!(
            f[0].fix
                .contains("pairs.length_control_unit = \"points\", set it to \"range\""),
            "{}",
            f[0].fix
        );
        // Too few pairs to say.
        d.pairs = 5;
        assert!(iteration_flags(&[d], &th).is_empty());
    }

    #[test]
    fn a_judge_no_better_than_length_is_flagged() {
        use crate::metrics::{JudgeAgreement, LengthSplit};
        let acc = |a: f64| JudgeAgreement {
            pairs: 100,
            pairwise_accuracy: a,
            ..JudgeAgreement::default()
        };
        let c = JudgeComparison {
            sampled: acc(0.47),
            expected: Some(acc(0.70)),
            length: acc(0.68),
            constant: acc(0.0),
            sampled_by_length: LengthSplit {
                shorter_preferred_pairs: 30,
                shorter_preferred_accuracy: Some(0.6),
                agrees_with_length: Some(0.45),
                ..LengthSplit::default()
            },
            expected_by_length: None,
        };
        let flags = evaluation_flags(1, &c, ScoreMode::Sampled);
        assert_eq!(kinds(&flags), vec![(FlagKind::BelowLengthBaseline, 1)]);
        assert!(
            flags[0].seen.ends_with("right on 0.600 of the 30 pairs where humans preferred the shorter reply, and orders 45% of its pairs as length does"),
            "{}",
            flags[0].seen
        );
        assert!(evaluation_flags(1, &c, ScoreMode::Expected).is_empty());
    }
}
