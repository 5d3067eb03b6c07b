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
//!
//! `Select::Order` is srlm's looser variant for a small judge whose means rarely order a
//! whole prompt right: per reply one sample is chosen so that the chosen samples' written
//! scores follow the human order strictly (of all such choices, the one nearest the replies'
//! means); a prompt where no choice does is dropped. It keeps far more prompts, each with
//! judgements the model itself wrote, and still teaches only verdicts that agree with people.

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
    #[serde(default)]
    pub select: Select,
}

/// How a prompt's judgements qualify and which sample of a reply is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// The paper: the replies' mean scores follow the human order; per reply the sample
    /// nearest its rounded mean.
    #[default]
    Mean,
    /// Some choice of one sample per reply follows the human order; the choice nearest the
    /// means.
    Order,
}

impl std::str::FromStr for Select {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mean" => Ok(Self::Mean),
            "order" => Ok(Self::Order),
            _ => Err(format!("`{s}` is not a selection: mean or order")),
        }
    }
}

impl Default for EftOptions {
    fn default() -> Self {
        Self {
            allow_ties: false,
            balance: true,
            seed: 0,
            select: Select::Mean,
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

/// Most combinations `Select::Order` searches in one prompt (k^replies); beyond it, each
/// reply keeps only its samples nearest the mean.
const MAX_COMBINATIONS: usize = 1 << 16;

/// For `Select::Order`: per reply the index of a sample, the chosen written scores following
/// `ranks` (strictly, or weakly with `allow_ties`), nearest `means` in total.
fn order_consistent(
    ranks: &[u32],
    means: &[f64],
    samples: &[Vec<(usize, f64)>],
    allow_ties: bool,
) -> Option<Vec<usize>> {
    // Fewer candidates per reply when the product would explode: those nearest the mean.
    let mut options: Vec<Vec<(usize, f64)>> = samples.to_vec();
    for (o, m) in options.iter_mut().zip(means) {
        o.sort_by(|a, b| {
            (a.1 - m)
                .abs()
                .total_cmp(&(b.1 - m).abs())
                .then(a.0.cmp(&b.0))
        });
        o.dedup_by(|a, b| a.1 == b.1);
    }
    while options.iter().map(Vec::len).product::<usize>() > MAX_COMBINATIONS {
        let widest = (0..options.len()).max_by_key(|&i| options[i].len())?;
        options[widest].pop();
    }
    let n = options.len();
    let mut best: Option<(f64, Vec<usize>)> = None;
    let mut pick = vec![0usize; n];
    loop {
        let scores: Vec<f64> = (0..n).map(|i| options[i][pick[i]].1).collect();
        if agrees(ranks, &scores, allow_ties) {
            let cost: f64 = (0..n).map(|i| (scores[i] - means[i]).abs()).sum();
            if best.as_ref().is_none_or(|b| cost < b.0) {
                best = Some((cost, (0..n).map(|i| options[i][pick[i]].0).collect()));
            }
        }
        // Next combination (odometer).
        let mut i = 0;
        loop {
            if i == n {
                return best.map(|b| b.1);
            }
            pick[i] += 1;
            if pick[i] < options[i].len() {
                break;
            }
            pick[i] = 0;
            i += 1;
        }
    }
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
        if opts.select == Select::Order {
            let integral: Vec<Vec<(usize, f64)>> = p
                .replies
                .iter()
                .map(|r| {
                    r.2.iter()
                        .enumerate()
                        .filter_map(|(i, j)| j.score.filter(|s| s.fract() == 0.0).map(|s| (i, s)))
                        .collect()
                })
                .collect();
            if integral.iter().any(Vec::is_empty) {
                stats.prompts_missing_scores += 1;
                continue;
            }
            let Some(chosen) = order_consistent(&ranks, &means, &integral, opts.allow_ties) else {
                continue;
            };
            stats.prompts_agreeing += 1;
            for (i, ((reply, _, samples), &k)) in p.replies.iter().zip(&chosen).enumerate() {
                let j = &samples[k];
                examples.push(EftExample {
                    id: format!("{}/{i}", p.id),
                    instruction: p.prompt.clone(),
                    response: reply.clone(),
                    judgement: j.raw.trim().to_string(),
                    score: j.score.expect("integral") as u8,
                });
            }
            continue;
        }
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
    fn order_selection_keeps_a_prompt_whose_means_disagree_but_some_samples_agree() {
        let prompt = JudgedPrompt {
            id: "p".into(),
            prompt: "Q".into(),
            replies: vec![
                ("best".into(), 0, js(&[Some(2.0), Some(5.0), Some(3.0)])),
                ("middle".into(), 1, js(&[Some(4.0), Some(4.0), Some(2.0)])),
                ("worst".into(), 2, js(&[Some(3.0), Some(1.0)])),
            ],
        };
        let mean = EftOptions {
            balance: false,
            ..EftOptions::default()
        };
        // Means 3.33, 3.33, 2: tied at the top, so the paper's rule drops the prompt.
        assert_eq!(
            build_eft(std::slice::from_ref(&prompt), &mean)
                .1
                .prompts_agreeing,
            0
        );
        let order = EftOptions {
            select: Select::Order,
            ..mean
        };
        let (ex, stats) = build_eft(&[prompt], &order);
        assert_eq!(stats.prompts_agreeing, 1);
        // Orderings s0 > s1 > s2: (5,4,3), (5,4,1), (5,2,1), (3,2,1); nearest the means
        // (3.33, 3.33, 2) in total distance: (3,2,1) at 0.33 + 1.33 + 1 = 2.67 and (5,4,3)
        // at 1.67 + 0.67 + 1 = 3.33, so (3, 2, 1).
        let scores: Vec<u8> = ex.iter().map(|e| e.score).collect();
        assert_eq!(scores, vec![3, 2, 1]);
        assert!(ex
            .iter()
            .all(|e| e.judgement.ends_with(&format!("Score: {}", e.score))));
        // No choice orders these: dropped.
        let hopeless = JudgedPrompt {
            id: "h".into(),
            prompt: "Q".into(),
            replies: vec![
                ("best".into(), 0, js(&[Some(1.0)])),
                ("worse".into(), 1, js(&[Some(4.0)])),
            ],
        };
        assert_eq!(build_eft(&[hopeless], &order).1.prompts_agreeing, 0);
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
