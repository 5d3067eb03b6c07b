//! Contrasting responses without human labels (Self-Taught Evaluators, Wang et al. 2024, from
//! the paper's group): for an instruction x the model writes a modified instruction x' that is
//! close to x but asks for something else, then answers both. Its answer to x' is, by
//! construction, worse for x than its answer to x, so judgements of the two that order them
//! that way are judge-training (EFT) examples the model wrote itself; the pairs are candidates
//! 0 (the answer to x, ranked first) and 1 (the answer to x') of x, judged with the additive
//! prompt and kept by `eft::build_eft` with `Select::Order`.

use crate::rouge::rouge_l;

/// The request for a modified instruction. `{instruction}` is filled in.
pub const MODIFY_PROMPT: &str = "Here is a user's instruction:

<instruction>{instruction}</instruction>

Write a new instruction on the same subject that asks for something slightly different, so that a good answer to the new instruction would not fully answer the original one. Reply with the new instruction only.";

pub fn modify_prompt(instruction: &str) -> String {
    crate::prompt_slots::fill(
        MODIFY_PROMPT,
        &[("instruction", instruction)],
        &["instruction"],
    )
}

/// Why a modified instruction is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unusable {
    Empty,
    /// Near-identical to the original (ROUGE-L F at least `MAX_SIMILARITY`).
    Same,
    /// Shares almost nothing with the original (ROUGE-L F below `MIN_SIMILARITY`): then the
    /// answer to it is merely off-topic, which teaches the judge little.
    Unrelated,
}

pub const MAX_SIMILARITY: f64 = 0.9;
pub const MIN_SIMILARITY: f64 = 0.1;

/// The modified instruction in the model's reply: its first paragraph, without a label such as
/// "New instruction:" or surrounding quotes or tags, checked against the original.
pub fn parse_modified(original: &str, reply: &str) -> Result<String, Unusable> {
    let first = reply
        .trim()
        .split("\n\n")
        .next()
        .unwrap_or("")
        .trim()
        .trim_start_matches("<instruction>")
        .trim_end_matches("</instruction>");
    let lower = first.to_ascii_lowercase();
    let text = ["new instruction:", "modified instruction:", "instruction:"]
        .iter()
        .find_map(|p| lower.starts_with(p).then(|| &first[p.len()..]))
        .unwrap_or(first)
        .trim()
        .trim_matches(|c| c == '"' || c == '\u{201c}' || c == '\u{201d}' || c == '*')
        .trim();
    if text.is_empty() {
        return Err(Unusable::Empty);
    }
    let sim = rouge_l(text, original);
    if sim >= MAX_SIMILARITY {
        Err(Unusable::Same)
    } else if sim < MIN_SIMILARITY {
        Err(Unusable::Unrelated)
    } else {
        Ok(text.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modified_instruction_is_its_first_paragraph_unlabelled() {
        let x = "Explain how vaccines train the immune system.";
        assert_eq!(
            parse_modified(x, "New instruction: \"Explain how vaccines are stored and shipped.\"\n\nThis differs because..."),
            Ok("Explain how vaccines are stored and shipped.".into())
        );
        assert_eq!(parse_modified(x, "  "), Err(Unusable::Empty));
        assert_eq!(parse_modified(x, x), Err(Unusable::Same));
        assert_eq!(
            parse_modified(x, "Write a poem about cats."),
            Err(Unusable::Unrelated)
        );
        assert!(modify_prompt(" Hi ").contains("<instruction>Hi</instruction>"));
    }
}
