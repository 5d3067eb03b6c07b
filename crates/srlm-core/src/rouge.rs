//! ROUGE-L F-measure between two texts, as Google's `rouge_score` computes it without stemming
//! (lower-case, non-alphanumeric characters as separators, longest common subsequence of
//! tokens), used to drop generated prompts too similar to existing ones.

/// `rouge_score`'s default tokenization: lower-cased runs of `[a-z0-9]`.
pub fn tokenize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

fn lcs_len(a: &[String], b: &[String]) -> usize {
    let mut prev = vec![0usize; b.len() + 1];
    let mut cur = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// ROUGE-L F1 of `candidate` against `reference` (symmetric); 0 when either has no tokens.
pub fn rouge_l(candidate: &str, reference: &str) -> f64 {
    rouge_l_tokens(&tokenize(candidate), &tokenize(reference))
}

pub fn rouge_l_tokens(candidate: &[String], reference: &[String]) -> f64 {
    if candidate.is_empty() || reference.is_empty() {
        return 0.0;
    }
    let lcs = lcs_len(candidate, reference) as f64;
    if lcs == 0.0 {
        return 0.0;
    }
    let p = lcs / candidate.len() as f64;
    let r = lcs / reference.len() as f64;
    2.0 * p * r / (p + r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcs_based_f_measure() {
        assert_eq!(rouge_l("the cat sat", "the cat sat"), 1.0);
        assert_eq!(rouge_l("", "anything"), 0.0);
        // lcs("a b c d", "a c d e") = 3 -> p = r = 3/4
        assert!((rouge_l("a b c d", "a c d e") - 0.75).abs() < 1e-12);
        assert_eq!(
            tokenize("Write a Haiku, about C++!"),
            vec!["write", "a", "haiku", "about", "c"]
        );
    }
}
