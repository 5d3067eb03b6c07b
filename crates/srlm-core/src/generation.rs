//! The records of `srlm generate`: what a prompt file holds and what the output file gets.
//!
//! Input, one JSON object a line:
//! `{"id": "q1", "prompt": "Write a haiku"}` (rendered through the model's chat template), or
//! `{"id": "q1", "messages": [{"role": "user", "content": "..."}]}`, or
//! `{"id": "q1", "text": "raw text to continue"}` (no template).
//! `id` is optional (the line number is used) and must be unique; `max_new_tokens`,
//! `temperature`, `top_p`, `top_k` and `seed` may override the command's defaults per record.
//!
//! Output: `{"id", "completion", "finish_reason", "prompt_tokens", "completion_tokens"}`
//! (with `"logprobs": [{"token", "logprob", "top_logprobs"}, ...]` when asked for), one line
//! per input record, in the order they finish.

use serde::{Deserialize, Serialize};

pub const GENERATE_SCHEMA_HINT: &str = r#"each line must be {"id": "...", "prompt": "..."} or {"id": "...", "messages": [{"role": "user", "content": "..."}]} or {"id": "...", "text": "..."}"#;

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// Why `messages` cannot be a conversation, if it cannot: it is empty, or a message's role is
/// not system, user or assistant. The one check `srlm generate`, `srlm sft`/`dpo` and
/// `srlm serve` share.
pub fn check_messages(messages: &[Message]) -> Result<(), String> {
    if messages.is_empty() {
        return Err("the conversation is empty".into());
    }
    for (i, m) in messages.iter().enumerate() {
        if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
            return Err(format!(
                "message {i} has role `{}`; expected system, user or assistant",
                m.role
            ));
        }
    }
    Ok(())
}

/// What to feed the model: a chat (templated), a chat whose assistant turn is already begun,
/// or raw text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PromptInput {
    Chat(Vec<Message>),
    /// `messages` through the template with the generation prompt, then `assistant`: the model
    /// continues that text instead of starting its turn (vLLM's and SGLang's
    /// `continue_final_message`).
    Continue {
        messages: Vec<Message>,
        assistant: String,
    },
    Raw(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRecord {
    #[serde(default)]
    pub id: Option<IdValue>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub max_new_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub seed: Option<u64>,
}

/// Ids may be strings or integers in the wild; srlm keeps them as strings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IdValue {
    Str(String),
    Int(i64),
}

impl std::fmt::Display for IdValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdValue::Str(s) => f.write_str(s),
            IdValue::Int(i) => write!(f, "{i}"),
        }
    }
}

impl GenerateRecord {
    /// The prompt this record asks for; an error message names the offending field.
    pub fn input(&self) -> Result<PromptInput, String> {
        match (&self.prompt, &self.messages, &self.text) {
            (Some(p), None, None) => Ok(PromptInput::Chat(vec![Message::new("user", p)])),
            (None, Some(m), None) => {
                check_messages(m).map_err(|e| format!("field `messages`: {e}"))?;
                Ok(PromptInput::Chat(m.clone()))
            }
            (None, None, Some(t)) => Ok(PromptInput::Raw(t.clone())),
            (None, None, None) => {
                Err("needs one of the fields `prompt`, `messages` or `text`".into())
            }
            _ => Err("has more than one of the fields `prompt`, `messages`, `text`".into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model emitted an end-of-sequence token.
    Eos,
    /// A stop string appeared; it is not part of the completion.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
    /// The context window is full.
    Context,
}

/// A generated token with its log-probability and the most likely tokens at its position, as
/// OpenAI's chat completions return them (`choices[].logprobs.content[]`). Log-probabilities
/// are of the model's own distribution (before temperature, top-p or penalties), as vLLM and
/// OpenAI report them. `token` is the text the token added to the completion, so the tokens'
/// texts laid end to end give the completion (and its byte offsets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// Most likely first; may or may not include the generated token itself.
    #[serde(default)]
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerateOutput {
    pub id: String,
    pub completion: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_needs_exactly_one_prompt_field() {
        let r: GenerateRecord = serde_json::from_str(r#"{"id": 3, "prompt": "hi"}"#).unwrap();
        assert_eq!(
            r.input().unwrap(),
            PromptInput::Chat(vec![Message::new("user", "hi")])
        );
        assert_eq!(r.id.unwrap().to_string(), "3");
        let r: GenerateRecord = serde_json::from_str(r#"{"prompt": "a", "text": "b"}"#).unwrap();
        assert!(r.input().unwrap_err().contains("more than one"));
        let r: GenerateRecord = serde_json::from_str(r#"{"id": "x"}"#).unwrap();
        assert!(r.input().unwrap_err().contains("needs one of"));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_json::from_str::<GenerateRecord>(r#"{"promt": "typo"}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `promt`"), "{e}");
    }
}
