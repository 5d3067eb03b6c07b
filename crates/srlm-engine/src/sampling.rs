//! Next-token choice from logits: repetition penalty, temperature, top-k, top-p, in the order
//! transformers applies its logits processors; greedy when the temperature is 0. Each sequence
//! owns its seeded RNG, so its output does not depend on what it was batched with.

use rand::distr::{weighted::WeightedIndex, Distribution};
use rand::rngs::StdRng;
use rand::SeedableRng;
use srlm_core::openai::MAX_TOP_LOGPROBS;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 1.0 keeps the whole distribution.
    pub top_p: f32,
    /// 0 keeps every token.
    pub top_k: usize,
    /// 1.0 is off; >1 discourages tokens already in the prompt or completion (CTRL / transformers).
    pub repetition_penalty: f32,
    pub max_new_tokens: usize,
    /// The completion ends before the first of these strings.
    pub stop: Vec<String>,
    pub seed: u64,
    /// Report each generated token's log-probability with this many of the most likely tokens
    /// at its position (OpenAI's `top_logprobs`); None reports nothing.
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: 0.9,
            top_k: 0,
            repetition_penalty: 1.0,
            max_new_tokens: 256,
            stop: vec![],
            seed: 0,
            logprobs: None,
        }
    }
}

/// One sampling setting that cannot sample: the setting's name (as the config and srlm's
/// JSON records spell it) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadSetting {
    pub name: &'static str,
    pub problem: String,
}

impl SamplingParams {
    /// Every setting that cannot sample, all at once: the one check the command line, the run
    /// config and `srlm serve` share. A negative temperature, a top-p outside (0, 1], a
    /// repetition penalty that is not positive (0 empties every completion), no new tokens, or
    /// an empty stop string (it would stop before the first token).
    pub fn problems(&self) -> Vec<BadSetting> {
        let mut out = Vec::new();
        let mut bad = |name, problem: String| out.push(BadSetting { name, problem });
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            bad(
                "temperature",
                format!("is {}; it must be 0 (greedy) or more", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            bad("top_p", format!("is {}; it must be in (0, 1]", self.top_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            bad(
                "repetition_penalty",
                format!(
                    "is {}; it must be more than 0 (1 is off)",
                    self.repetition_penalty
                ),
            );
        }
        if self.max_new_tokens == 0 {
            bad("max_new_tokens", "is 0; it must be at least 1".into());
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            bad(
                "stop",
                "holds an empty string, which would stop before anything is written".into(),
            );
        }
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_TOP_LOGPROBS) {
            bad(
                "logprobs",
                format!("is {n}; at most {MAX_TOP_LOGPROBS} are reported"),
            );
        }
        out
    }

    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            max_new_tokens,
            ..Self::default()
        }
    }
}

/// transformers' RepetitionPenaltyLogitsProcessor: each distinct seen token's logit is divided
/// by `penalty` if positive, multiplied if negative.
pub fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut done = std::collections::HashSet::with_capacity(seen.len());
    for &t in seen {
        let Some(l) = logits.get_mut(t as usize) else {
            continue;
        };
        if done.insert(t) {
            *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
        }
    }
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// The tokens that survive top-k and top-p, with their (unnormalised) probabilities.
/// `logits` are already divided by the temperature.
pub fn candidates(logits: &[f32], top_k: usize, top_p: f32) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut probs: Vec<(u32, f32)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, (l - max).exp()))
        .collect();
    let total: f32 = probs.iter().map(|p| p.1).sum();
    let by_prob_desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    // Sorting the whole vocabulary per token is slow; the head almost always holds the nucleus.
    let head = if top_k > 0 {
        top_k.min(probs.len())
    } else {
        512.min(probs.len())
    };
    if head < probs.len() {
        probs.select_nth_unstable_by(head - 1, by_prob_desc);
    }
    let (mut kept, rest_sum) = {
        let (front, back) = probs.split_at_mut(head);
        front.sort_unstable_by(by_prob_desc);
        (front.to_vec(), back.iter().map(|p| p.1).sum::<f32>())
    };
    if top_k == 0 && top_p < 1.0 {
        let head_sum: f32 = kept.iter().map(|p| p.1).sum();
        if head_sum < top_p * total && rest_sum > 0.0 {
            probs.sort_unstable_by(by_prob_desc);
            kept = probs;
        }
    } else if top_k == 0 {
        probs.sort_unstable_by(by_prob_desc);
        kept = probs;
    }
    if top_p < 1.0 {
        // transformers' TopPLogitsWarper: keep the smallest prefix whose mass reaches top_p.
        let norm: f32 = if top_k > 0 {
            kept.iter().map(|p| p.1).sum()
        } else {
            total
        };
        let mut cum = 0.0;
        let mut n = 0;
        for p in &kept {
            cum += p.1 / norm;
            n += 1;
            if cum >= top_p {
                break;
            }
        }
        kept.truncate(n.max(1));
    }
    kept
}

/// One sequence's sampler.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = StdRng::seed_from_u64(params.seed);
        Self { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token. `seen`: prompt and completion so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &mut [f32], seen: &[u32]) -> u32 {
        apply_repetition_penalty(logits, seen, self.params.repetition_penalty);
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let t = self.params.temperature;
        logits.iter_mut().for_each(|l| *l /= t);
        let kept = candidates(logits, self.params.top_k, self.params.top_p);
        match WeightedIndex::new(kept.iter().map(|p| p.1)) {
            Ok(dist) => kept[dist.sample(&mut self.rng)].0,
            Err(_) => argmax(logits), // all weights zero or NaN: fall back to the best logit
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_p_keeps_smallest_prefix_reaching_mass() {
        // probs 0.5, 0.3, 0.2 (from logits ln p)
        let logits = [0.5f32.ln(), 0.3f32.ln(), 0.2f32.ln()];
        let kept = candidates(&logits, 0, 0.7);
        assert_eq!(kept.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1]);
        let kept = candidates(&logits, 0, 0.5);
        assert_eq!(kept.iter().map(|p| p.0).collect::<Vec<_>>(), vec![0]);
        let kept = candidates(&logits, 0, 1.0);
        assert_eq!(kept.len(), 3);
    }

    #[test]
    fn top_p_finds_the_nucleus_beyond_the_fast_head() {
        // A flat distribution over 2000 tokens: the nucleus for p=0.9 is 1800 tokens.
        let logits = vec![0.0f32; 2000];
        let kept = candidates(&logits, 0, 0.9);
        assert!((1799..=1801).contains(&kept.len()), "{}", kept.len());
    }

    #[test]
    fn top_k_limits_candidates() {
        let logits: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let kept = candidates(&logits, 5, 1.0);
        assert_eq!(
            kept.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![99, 98, 97, 96, 95]
        );
    }

    #[test]
    fn repetition_penalty_follows_transformers() {
        let mut l = [2.0f32, -2.0, 1.0];
        apply_repetition_penalty(&mut l, &[0, 1, 0], 2.0);
        assert_eq!(l, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn same_seed_same_samples() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams {
                seed,
                temperature: 1.0,
                top_p: 1.0,
                ..Default::default()
            });
            (0..20)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn settings_that_cannot_sample_are_all_named() {
        assert!(SamplingParams::default().problems().is_empty());
        assert!(SamplingParams::greedy(1).problems().is_empty());
        let bad = SamplingParams {
            temperature: -0.5,
            top_p: 1.5,
            repetition_penalty: 0.0,
            max_new_tokens: 0,
            stop: vec!["".into()],
            logprobs: Some(21),
            ..SamplingParams::default()
        };
        let names: Vec<&str> = bad.problems().iter().map(|b| b.name).collect();
        assert_eq!(
            names,
            [
                "temperature",
                "top_p",
                "repetition_penalty",
                "max_new_tokens",
                "stop",
                "logprobs"
            ]
        );
        for top_p in [0.0, f32::NAN] {
            let p = SamplingParams {
                top_p,
                ..SamplingParams::default()
            };
            assert_eq!(p.problems()[0].name, "top_p");
        }
    }
}
