//! EFT construction as in the paper: a model trained on IFT data judges every human-ranked reply
//! of a prompt (k samples each); a prompt's judgements become judge-training examples only when
//! the order of their mean scores agrees with the human ranking, and the most frequent score is
//! then down-sampled so the scores the judge learns are less lopsided.
//!
//! Options, and what srlm chooses where the paper is silent:
//! - agreement: every pair of replies with different human ranks must have strictly ordered
//!   mean scores the same way (`allow_ties` accepts equal means); a reply without any parsed
//!   score disqualifies its prompt;
//! - the example kept for a reply is its first sample whose score equals the rounded mean
//!   (else the sample nearest to it), so its justification and its score go together;
//! - balance: the most frequent score keeps as many examples as the second most frequent has,
//!   chosen by a seeded shuffle.

use crate::judge::JudgeSample;
use crate::seed::EftExample;
use crate::selfinstruct::SplitMix64;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EftOptions {
    pub allow_ties: bool,
    pub balance: bool,
    pub seed: u64,
}

impl Default for EftOptions {
    fn default() -> Self {
        Self {
            allow_ties: false,
            balance: true,
            seed: 0,
        }
    }
}

/// A prompt's ranked replies with their judgements.
#[derive(Debug, Clone)]
pub struct JudgedPrompt {
    pub id: String,
    pub prompt: String,
    /// (reply text, human rank (0 is best), the judge's samples)
    pub replies: Vec<(String, u32, Vec<JudgeSample>)>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EftStats {
    pub prompts: usize,
    pub prompts_agreeing: usize,
    pub prompts_missing_scores: usize,
    pub examples_before_balance: usize,
    pub examples: usize,
    /// Examples per score, after balancing.
    pub score_counts: BTreeMap<u8, usize>,
}

fn mean(samples: &[JudgeSample]) -> Option<f64> {
    let s: Vec<f64> = samples.iter().filter_map(|j| j.score).collect();
    (!s.is_empty()).then(|| s.iter().sum::<f64>() / s.len() as f64)
}

/// Whether the mean scores order the replies as the human ranks do.
pub fn agrees(ranks: &[u32], means: &[f64], allow_ties: bool) -> bool {
    for i in 0..ranks.len() {
        for j in 0..ranks.len() {
            if ranks[i] < ranks[j] {
                let ok = if allow_ties {
                    means[i] >= means[j]
                } else {
                    means[i] > means[j]
                };
                if !ok {
                    return false;
                }
            }
        }
    }
    true
}

/// The sample to learn from: the first whose integer score equals the rounded mean, else the
/// integer-scored sample nearest the mean.
fn representative(samples: &[JudgeSample], mean: f64) -> Option<(&JudgeSample, u8)> {
    let target = mean.round();
    let integral = samples
        .iter()
        .filter_map(|j| j.score.filter(|s| s.fract() == 0.0).map(|s| (j, s)));
    let exact = integral.clone().find(|(_, s)| *s == target);
    exact
        .or_else(|| integral.min_by(|a, b| (a.1 - mean).abs().total_cmp(&(b.1 - mean).abs())))
        .map(|(j, s)| (j, s as u8))
}

pub fn build_eft(prompts: &[JudgedPrompt], opts: &EftOptions) -> (Vec<EftExample>, EftStats) {
    let mut stats = EftStats {
        prompts: prompts.len(),
        ..EftStats::default()
    };
    let mut examples = Vec::new();
    for p in prompts {
        let means: Option<Vec<f64>> = p.replies.iter().map(|r| mean(&r.2)).collect();
        let Some(means) = means else {
            stats.prompts_missing_scores += 1;
            continue;
        };
        let ranks: Vec<u32> = p.replies.iter().map(|r| r.1).collect();
        if !agrees(&ranks, &means, opts.allow_ties) {
            continue;
        }
        stats.prompts_agreeing += 1;
        for (i, ((reply, _, samples), m)) in p.replies.iter().zip(&means).enumerate() {
            if let Some((j, score)) = representative(samples, *m) {
                examples.push(EftExample {
                    id: format!("{}/{i}", p.id),
                    instruction: p.prompt.clone(),
                    response: reply.clone(),
                    judgement: j.raw.trim().to_string(),
                    score,
                });
            }
        }
    }
    stats.examples_before_balance = examples.len();
    if opts.balance {
        examples = balance(examples, opts.seed);
    }
    stats.examples = examples.len();
    for e in &examples {
        *stats.score_counts.entry(e.score).or_insert(0) += 1;
    }
    (examples, stats)
}

/// Down-samples the most frequent score to the count of the second most frequent; order kept.
pub fn balance(examples: Vec<EftExample>, seed: u64) -> Vec<EftExample> {
    let mut counts: BTreeMap<u8, usize> = BTreeMap::new();
    for e in &examples {
        *counts.entry(e.score).or_insert(0) += 1;
    }
    let mut by_count: Vec<(usize, u8)> = counts.iter().map(|(s, c)| (*c, *s)).collect();
    by_count.sort_by(|a, b| b.cmp(a));
    let (Some(&(_, top)), Some(&(second, _))) = (by_count.first(), by_count.get(1)) else {
        return examples;
    };
    let of_top: Vec<usize> = (0..examples.len())
        .filter(|&i| examples[i].score == top)
        .collect();
    let keep: std::collections::HashSet<usize> = SplitMix64::new(seed)
        .sample_indices(of_top.len(), second)
        .into_iter()
        .map(|k| of_top[k])
        .collect();
    examples
        .into_iter()
        .enumerate()
        .filter(|(i, e)| e.score != top || keep.contains(i))
        .map(|(_, e)| e)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js(scores: &[Option<f64>]) -> Vec<JudgeSample> {
        scores
            .iter()
            .map(|s| {
                JudgeSample::parse(&match s {
                    Some(v) => format!("Fine.\nScore: {v}"),
                    None => "no verdict".to_string(),
                })
            })
            .collect()
    }

    #[test]
    fn keeps_prompts_whose_scores_follow_the_human_order() {
        let p = |id: &str, a: &[Option<f64>], b: &[Option<f64>]| JudgedPrompt {
            id: id.into(),
            prompt: "Q".into(),
            replies: vec![("best".into(), 0, js(a)), ("worse".into(), 1, js(b))],
        };
        let prompts = vec![
            p(
                "agree",
                &[Some(4.0), Some(5.0), Some(4.0)],
                &[Some(2.0), None, Some(3.0)],
            ),
            p("reversed", &[Some(2.0)], &[Some(4.0)]),
            p("tied", &[Some(3.0)], &[Some(3.0)]),
            p("missing", &[None], &[Some(1.0)]),
        ];
        let opts = EftOptions {
            balance: false,
            ..EftOptions::default()
        };
        let (ex, stats) = build_eft(&prompts, &opts);
        assert_eq!(stats.prompts_agreeing, 1);
        assert_eq!(stats.prompts_missing_scores, 1);
        // Mean 4.33 rounds to 4: the first sample scoring 4; mean 2.5 rounds to 3 (half away
        // from zero): the sample scoring 3.
        assert_eq!(ex.len(), 2);
        assert_eq!((ex[0].id.as_str(), ex[0].score), ("agree/0", 4));
        assert_eq!((ex[1].id.as_str(), ex[1].score), ("agree/1", 3));
        assert!(ex[1].judgement.ends_with("Score: 3"));
        let ties = EftOptions {
            allow_ties: true,
            balance: false,
            ..EftOptions::default()
        };
        assert_eq!(build_eft(&prompts, &ties).1.prompts_agreeing, 2);
    }

    #[test]
    fn balance_caps_the_most_frequent_score_at_the_second() {
        let ex = |i: usize, score: u8| EftExample {
            id: i.to_string(),
            instruction: String::new(),
            response: String::new(),
            judgement: format!("Score: {score}"),
            score,
        };
        let all: Vec<EftExample> = (0..10)
            .map(|i| ex(i, 4))
            .chain((10..13).map(|i| ex(i, 2)))
            .chain((13..14).map(|i| ex(i, 5)))
            .collect();
        let kept = balance(all.clone(), 1);
        assert_eq!(kept.iter().filter(|e| e.score == 4).count(), 3);
        assert_eq!(kept.iter().filter(|e| e.score == 2).count(), 3);
        assert_eq!(kept.len(), 7);
        assert_eq!(kept, balance(all.clone(), 1));
        assert_ne!(kept, balance(all, 2));
    }
}
