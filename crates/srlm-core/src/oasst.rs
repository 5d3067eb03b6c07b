//! Open Assistant conversation trees (the oasst1 export format): first-turn prompts with their
//! human-ranked replies, for the judge's evaluation against human rankings and for seed data
//! (a prompt's rank-0 reply is its IFT example).

use serde::Deserialize;

pub const OASST_HINT: &str = r#"each line must be an Open Assistant tree: {"message_tree_id": "...", "prompt": {"text": "...", "role": "prompter", "replies": [{"text": "...", "role": "assistant", "rank": 0}, ...]}}"#;

#[derive(Debug, Clone, Deserialize)]
pub struct Tree {
    pub message_tree_id: String,
    pub prompt: Message,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub text: String,
    pub role: String,
    #[serde(default)]
    pub lang: Option<String>,
    #[serde(default)]
    pub rank: Option<u32>,
    #[serde(default)]
    pub synthetic: bool,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default)]
    pub replies: Vec<Message>,
}

/// A first-turn prompt with its ranked assistant replies (rank 0 is the best).
#[derive(Debug, Clone, PartialEq)]
pub struct RankedPrompt {
    pub id: String,
    pub prompt: String,
    pub replies: Vec<(String, u32)>,
}

/// Which trees and replies to keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TreeFilter {
    /// Keep machine-written (`synthetic`) prompts and replies. Off by default: the point of
    /// this data is human judgement.
    pub keep_synthetic: bool,
    /// Prompts need at least this many ranked replies.
    pub min_replies: usize,
}

impl Default for TreeFilter {
    fn default() -> Self {
        Self {
            keep_synthetic: false,
            min_replies: 2,
        }
    }
}

/// The first turn of `tree` with its ranked replies, if it passes `filter`. Deleted and unranked
/// replies are dropped.
pub fn ranked_prompt(tree: &Tree, filter: &TreeFilter) -> Option<RankedPrompt> {
    let p = &tree.prompt;
    if p.role != "prompter" || p.deleted || (p.synthetic && !filter.keep_synthetic) {
        return None;
    }
    let mut replies: Vec<(String, u32)> = p
        .replies
        .iter()
        .filter(|r| r.role == "assistant" && !r.deleted && (filter.keep_synthetic || !r.synthetic))
        .filter_map(|r| r.rank.map(|k| (r.text.clone(), k)))
        .collect();
    replies.sort_by_key(|r| r.1);
    (replies.len() >= filter.min_replies).then(|| RankedPrompt {
        id: tree.message_tree_id.clone(),
        prompt: p.text.clone(),
        replies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_ranked_human_replies() {
        let tree: Tree = serde_json::from_str(
            r#"{"message_tree_id": "t1", "prompt": {"text": "Q?", "role": "prompter", "replies": [
                {"text": "second", "role": "assistant", "rank": 1},
                {"text": "unranked", "role": "assistant"},
                {"text": "machine", "role": "assistant", "rank": 2, "synthetic": true},
                {"text": "best", "role": "assistant", "rank": 0, "replies": [{"text": "thanks", "role": "prompter"}]}]}}"#,
        )
        .unwrap();
        let p = ranked_prompt(&tree, &TreeFilter::default()).unwrap();
        assert_eq!(p.replies, vec![("best".into(), 0), ("second".into(), 1)]);
        let all = TreeFilter {
            keep_synthetic: true,
            ..TreeFilter::default()
        };
        assert_eq!(ranked_prompt(&tree, &all).unwrap().replies.len(), 3);
        let strict = TreeFilter {
            min_replies: 3,
            ..TreeFilter::default()
        };
        assert!(ranked_prompt(&tree, &strict).is_none());
    }
}
