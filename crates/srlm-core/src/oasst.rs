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
    #[serde(default)]
    pub message_id: Option<String>,
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
    ranked_replies(&tree.prompt, filter).map(|replies| RankedPrompt {
        id: tree.message_tree_id.clone(),
        prompt: tree.prompt.text.clone(),
        replies,
    })
}

/// The ranked replies of `msg` (a prompter's turn), if it passes `filter`.
fn ranked_replies(msg: &Message, filter: &TreeFilter) -> Option<Vec<(String, u32)>> {
    if msg.role != "prompter" || msg.deleted || (msg.synthetic && !filter.keep_synthetic) {
        return None;
    }
    let mut replies: Vec<(String, u32)> = msg
        .replies
        .iter()
        .filter(|r| r.role == "assistant" && !r.deleted && (filter.keep_synthetic || !r.synthetic))
        .filter_map(|r| r.rank.map(|k| (r.text.clone(), k)))
        .collect();
    replies.sort_by_key(|r| r.1);
    (replies.len() >= filter.min_replies).then_some(replies)
}

/// Every prompter turn of `tree` with ranked replies, first turn first: later turns carry the
/// conversation before them in `prompt`, as "User: ...\n\nAssistant: ...\n\nUser: <turn>".
/// A later turn's id is its message id (the first turn's is the tree's id, as in
/// [`ranked_prompt`]).
pub fn ranked_turns(tree: &Tree, filter: &TreeFilter) -> Vec<RankedPrompt> {
    fn walk(
        msg: &Message,
        context: &mut Vec<String>,
        tree_id: &str,
        filter: &TreeFilter,
        out: &mut Vec<RankedPrompt>,
    ) {
        if msg.deleted || (msg.synthetic && !filter.keep_synthetic) {
            return;
        }
        let speaker = if msg.role == "prompter" {
            "User"
        } else {
            "Assistant"
        };
        if let Some(replies) = ranked_replies(msg, filter) {
            let prompt = if context.is_empty() {
                msg.text.clone()
            } else {
                format!("{}\n\nUser: {}", context.join("\n\n"), msg.text)
            };
            // A later turn is named by its message id; one without can't be, and is left out.
            let id = if context.is_empty() {
                Some(tree_id.to_string())
            } else {
                msg.message_id.clone()
            };
            if let Some(id) = id {
                out.push(RankedPrompt {
                    id,
                    prompt,
                    replies,
                });
            }
        }
        context.push(format!("{speaker}: {}", msg.text));
        for r in &msg.replies {
            walk(r, context, tree_id, filter, out);
        }
        context.pop();
    }
    let mut out = Vec::new();
    walk(
        &tree.prompt,
        &mut Vec::new(),
        &tree.message_tree_id,
        filter,
        &mut out,
    );
    out
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

    #[test]
    fn later_turns_carry_the_conversation_before_them() {
        let tree: Tree = serde_json::from_str(
            r#"{"message_tree_id": "t", "prompt": {"message_id": "m0", "text": "Q1", "role": "prompter", "replies": [
                {"message_id": "a1", "text": "A-best", "role": "assistant", "rank": 0, "replies": [
                    {"message_id": "m2", "text": "Q2", "role": "prompter", "replies": [
                        {"text": "B-worse", "role": "assistant", "rank": 1},
                        {"text": "B-best", "role": "assistant", "rank": 0}]}]},
                {"message_id": "a2", "text": "A-worse", "role": "assistant", "rank": 1}]}}"#,
        )
        .unwrap();
        let turns = ranked_turns(&tree, &TreeFilter::default());
        assert_eq!(turns.len(), 2);
        assert_eq!(
            Some(turns[0].clone()),
            ranked_prompt(&tree, &TreeFilter::default())
        );
        assert_eq!(turns[1].id, "m2");
        assert_eq!(turns[1].prompt, "User: Q1\n\nAssistant: A-best\n\nUser: Q2");
        assert_eq!(
            turns[1].replies,
            vec![("B-best".into(), 0), ("B-worse".into(), 1)]
        );
    }
}
