//! Self-instruction: new prompts written by a model from a few-shot list of existing ones
//! (Self-Instruct, Wang et al. 2023, as the paper uses it), and the filters a new prompt must
//! pass: length bounds, a keyword blocklist of tasks a text model cannot do, exact and near
//! duplicates, and ROUGE-L F below a threshold against every prompt so far.

use crate::hash::fnv1a_from;
use crate::rouge::{rouge_l_tokens, tokenize};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Self-Instruct's blocklist: tasks about images, files, audio and the like, which a text model
/// can neither read nor produce.
pub const DEFAULT_BLOCKLIST: &[&str] = &[
    "image",
    "images",
    "graph",
    "graphs",
    "picture",
    "pictures",
    "file",
    "files",
    "map",
    "maps",
    "draw",
    "plot",
    "go to",
    "video",
    "audio",
    "music",
    "flowchart",
    "diagram",
];

/// The raw-text few-shot prompt: a numbered list of tasks that the model continues with one
/// more. Its completion is cut at the next `Task` line.
pub fn few_shot_prompt(examples: &[&str]) -> String {
    let mut s = String::from(
        "Below is a list of tasks that people ask an AI assistant to do. Each task is a single, self-contained request written in plain text.\n\n",
    );
    for (i, e) in examples.iter().enumerate() {
        s.push_str(&format!("Task {}: {}\n\n", i + 1, one_line(e)));
    }
    s.push_str(&format!("Task {}:", examples.len() + 1));
    s
}

/// The stop string for a few-shot completion with `n_examples` examples.
pub fn stop_after(n_examples: usize) -> String {
    format!("Task {}:", n_examples + 2)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The new instruction in a completion of [`few_shot_prompt`]: the text up to the next task
/// (or a blank line), whitespace collapsed. None when nothing is left.
pub fn extract_instruction(completion: &str) -> Option<String> {
    let mut text = completion;
    for cut in ["\nTask ", "\n\n"] {
        if let Some(at) = text.find(cut) {
            text = &text[..at];
        }
    }
    let text = one_line(text);
    (!text.is_empty()).then_some(text)
}

/// Why a generated prompt was dropped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Rejection {
    /// The completion held no instruction.
    Empty,
    TooShort {
        words: usize,
    },
    TooLong {
        words: usize,
    },
    /// Starts with punctuation or a non-ASCII character (Self-Instruct's heuristics).
    BadStart,
    Blocklisted {
        keyword: String,
    },
    /// The same text, ignoring case, spacing and punctuation, is already a prompt.
    Duplicate,
    /// ROUGE-L F against an existing prompt at or above the threshold.
    TooSimilar {
        rouge_l: f64,
        to: String,
    },
    /// The target count was reached earlier in the same round.
    Surplus,
}

impl Rejection {
    /// The reason's name, as serialised.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::Empty => "empty",
            Rejection::TooShort { .. } => "too_short",
            Rejection::TooLong { .. } => "too_long",
            Rejection::BadStart => "bad_start",
            Rejection::Blocklisted { .. } => "blocklisted",
            Rejection::Duplicate => "duplicate",
            Rejection::TooSimilar { .. } => "too_similar",
            Rejection::Surplus => "surplus",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptFilter {
    pub min_words: usize,
    pub max_words: usize,
    /// Drop a prompt whose ROUGE-L F against any prompt so far reaches this (the paper: 0.7).
    pub max_rouge_l: f64,
    pub blocklist: Vec<String>,
}

impl Default for PromptFilter {
    fn default() -> Self {
        Self {
            min_words: 3,
            max_words: 150,
            max_rouge_l: 0.7,
            blocklist: DEFAULT_BLOCKLIST.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Every prompt so far (seed and accepted), in the forms the filters compare.
pub struct PromptPool {
    filter: PromptFilter,
    texts: Vec<String>,
    tokens: Vec<Vec<String>>,
    normalized: HashSet<String>,
}

fn normalize(text: &str) -> String {
    tokenize(text).join(" ")
}

impl PromptPool {
    pub fn new(filter: PromptFilter) -> Self {
        Self {
            filter,
            texts: Vec::new(),
            tokens: Vec::new(),
            normalized: HashSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Adds a prompt unchecked (seed prompts, or ones accepted before a resume).
    pub fn add(&mut self, text: &str) {
        self.normalized.insert(normalize(text));
        self.tokens.push(tokenize(text));
        self.texts.push(text.to_string());
    }

    /// Whether `text` passes every filter against the pool; cheap checks first.
    pub fn check(&self, text: &str) -> Result<(), Rejection> {
        let words = text.split_whitespace().count();
        if words == 0 {
            return Err(Rejection::Empty);
        }
        if words < self.filter.min_words {
            return Err(Rejection::TooShort { words });
        }
        if words > self.filter.max_words {
            return Err(Rejection::TooLong { words });
        }
        let first = text.chars().next().expect("non-empty");
        if !first.is_ascii() || first.is_ascii_punctuation() {
            return Err(Rejection::BadStart);
        }
        let lower = format!(" {} ", normalize(text));
        for k in &self.filter.blocklist {
            if lower.contains(&format!(" {} ", k.to_lowercase())) {
                return Err(Rejection::Blocklisted { keyword: k.clone() });
            }
        }
        if self.normalized.contains(&normalize(text)) {
            return Err(Rejection::Duplicate);
        }
        let toks = tokenize(text);
        let (best, at) = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (rouge_l_tokens(&toks, t), i))
            .fold((0.0, 0), |a, b| if b.0 > a.0 { b } else { a });
        if best >= self.filter.max_rouge_l {
            return Err(Rejection::TooSimilar {
                rouge_l: best,
                to: self.texts[at].clone(),
            });
        }
        Ok(())
    }

    /// Checks `text` and adds it when it passes.
    pub fn offer(&mut self, text: &str) -> Result<(), Rejection> {
        self.check(text)?;
        self.add(text);
        Ok(())
    }
}

/// A small deterministic generator (SplitMix64) for choosing few-shot examples.
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    /// `k` distinct indices below `n` (all of them, shuffled, when k >= n).
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        let k = k.min(n);
        for i in 0..k {
            let j = i + (self.next_u64() % (n - i) as u64) as usize;
            idx.swap(i, j);
        }
        idx.truncate(k);
        idx
    }
}

/// The few-shot examples of attempt `attempt`: `from_seed` seed prompts and `from_generated`
/// generated ones (seed prompts fill in while too few are generated), in shuffled order, chosen
/// by a generator seeded with (`seed`, `attempt`) so a resumed run chooses the same.
pub fn choose_examples<'a>(
    seed_prompts: &'a [String],
    generated: &'a [String],
    from_seed: usize,
    from_generated: usize,
    seed: u64,
    attempt: u64,
) -> Vec<&'a str> {
    let mut rng = SplitMix64::new(fnv1a_from(seed, &attempt.to_le_bytes()));
    let n_generated = from_generated.min(generated.len());
    let n_seed = from_seed + (from_generated - n_generated);
    let mut out: Vec<&str> = rng
        .sample_indices(seed_prompts.len(), n_seed)
        .into_iter()
        .map(|i| seed_prompts[i].as_str())
        .collect();
    out.extend(
        rng.sample_indices(generated.len(), n_generated)
            .into_iter()
            .map(|i| generated[i].as_str()),
    );
    let order = rng.sample_indices(out.len(), out.len());
    order.into_iter().map(|i| out[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_first_new_task() {
        assert_eq!(
            extract_instruction(" Write a limerick about   tea.\n\nTask 10: more"),
            Some("Write a limerick about tea.".into())
        );
        assert_eq!(
            extract_instruction(" List three uses of vinegar.\nTask 10: x"),
            Some("List three uses of vinegar.".into())
        );
        assert_eq!(extract_instruction("  \n\nTask 10: x"), None);
        let p = few_shot_prompt(&["Say hi.", "Name a\ncolour."]);
        assert!(p.ends_with("Task 2: Name a colour.\n\nTask 3:"), "{p}");
        assert_eq!(stop_after(2), "Task 4:");
    }

    #[test]
    fn filters_drop_what_they_should() {
        let mut pool = PromptPool::new(PromptFilter::default());
        pool.add("Write a short poem about the sea at night.");
        assert_eq!(
            pool.check("Hi there"),
            Err(Rejection::TooShort { words: 2 })
        );
        let long = "word ".repeat(151);
        assert_eq!(pool.check(&long), Err(Rejection::TooLong { words: 151 }));
        assert_eq!(
            pool.check("- Write a list of fruits."),
            Err(Rejection::BadStart)
        );
        assert_eq!(
            pool.check("Draw a picture of a cat for me."),
            Err(Rejection::Blocklisted {
                keyword: "picture".into()
            })
        );
        // "map" as a word, not inside "mapping".
        assert!(pool
            .check("Explain what a mapping of keys to values is.")
            .is_ok());
        assert_eq!(
            pool.check("write a short poem about the SEA at night!"),
            Err(Rejection::Duplicate)
        );
        match pool.check("Write a short poem about the sea in the night.") {
            Err(Rejection::TooSimilar { rouge_l, .. }) => assert!(rouge_l >= 0.7),
            other => panic!("{other:?}"),
        }
        assert!(pool
            .offer("Give three tips for saving money on groceries.")
            .is_ok());
        assert_eq!(
            pool.offer("Give three tips for saving money on groceries."),
            Err(Rejection::Duplicate)
        );
        assert_eq!(pool.len(), 2);
        let r = Rejection::TooShort { words: 1 };
        assert_eq!(serde_json::to_value(&r).unwrap()["reason"], r.reason());
    }

    #[test]
    fn examples_are_seeded_and_mixed() {
        let seed: Vec<String> = (0..20).map(|i| format!("seed {i}")).collect();
        let gen: Vec<String> = (0..5).map(|i| format!("gen {i}")).collect();
        let a = choose_examples(&seed, &gen, 6, 2, 7, 3);
        assert_eq!(a, choose_examples(&seed, &gen, 6, 2, 7, 3));
        assert_ne!(a, choose_examples(&seed, &gen, 6, 2, 7, 4));
        assert_eq!(a.len(), 8);
        assert_eq!(a.iter().filter(|e| e.starts_with("gen")).count(), 2);
        let distinct: HashSet<&&str> = a.iter().collect();
        assert_eq!(distinct.len(), 8);
        // Nothing generated yet: all eight from the seed.
        let b = choose_examples(&seed, &[], 6, 2, 7, 3);
        assert_eq!(b.len(), 8);
        assert!(b.iter().all(|e| e.starts_with("seed")));
    }
}
