//! The records `srlm sft` and `srlm dpo` read: the dataset formats TRL's SFTTrainer and
//! DPOTrainer read.
//!
//! SFT, one JSON object a line:
//! - `{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}`:
//!   every assistant turn is trained on, everything else is context;
//! - `{"prompt": "...", "response": "..."}` (`completion` is accepted for `response`, as TRL names
//!   it): the prompt becomes a user turn, the response the assistant's reply.
//!
//! DPO: `{"prompt": "...", "chosen": "...", "rejected": "..."}`, each a string, or (TRL's
//! conversational form) `prompt` a list of messages and `chosen`/`rejected` lists holding the
//! assistant message. Optional `ref_chosen_logps`/`ref_rejected_logps` carry the reference
//! model's log-probabilities when they were computed elsewhere.

use crate::generation::Message;
use serde::{Deserialize, Serialize};

pub const SFT_SCHEMA_HINT: &str = r#"each line must be {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]} or {"prompt": "...", "response": "..."}"#;
pub const DPO_SCHEMA_HINT: &str = r#"each line must be {"prompt": "...", "chosen": "...", "rejected": "..."} (strings, or lists of {"role", "content"} messages as TRL's conversational format)"#;

/// Text or a list of chat messages: TRL's "standard" and "conversational" forms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TextOrMessages {
    Text(String),
    Messages(Vec<Message>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct SftRecord {
    #[serde(default)]
    pub messages: Option<Vec<Message>>,
    #[serde(default)]
    pub prompt: Option<TextOrMessages>,
    #[serde(default, alias = "completion")]
    pub response: Option<TextOrMessages>,
}

impl SftRecord {
    /// The conversation to train on; the error names the missing or conflicting field.
    pub fn conversation(&self) -> Result<Vec<Message>, String> {
        let msgs = match (&self.messages, &self.prompt, &self.response) {
            (Some(m), None, None) => m.clone(),
            (None, Some(p), Some(r)) => {
                let mut m = to_messages(p, "user");
                m.extend(to_messages(r, "assistant"));
                m
            }
            (Some(_), _, _) => return Err("has both `messages` and `prompt`/`response`".into()),
            (None, Some(_), None) => return Err("field `response` is missing".into()),
            (None, None, Some(_)) => return Err("field `prompt` is missing".into()),
            (None, None, None) => return Err("needs `messages`, or `prompt` and `response`".into()),
        };
        crate::generation::check_messages(&msgs)?;
        if !msgs.iter().any(|m| m.role == "assistant") {
            return Err("has no assistant message to train on".into());
        }
        Ok(msgs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DpoRecord {
    pub prompt: TextOrMessages,
    pub chosen: TextOrMessages,
    pub rejected: TextOrMessages,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_chosen_logps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_rejected_logps: Option<f64>,
}

/// A preference pair as chat: the shared prompt and the two assistant replies.
#[derive(Debug, Clone, PartialEq)]
pub struct PreferencePair {
    pub prompt: Vec<Message>,
    pub chosen: String,
    pub rejected: String,
}

impl DpoRecord {
    pub fn pair(&self) -> Result<PreferencePair, String> {
        let prompt = to_messages(&self.prompt, "user");
        crate::generation::check_messages(&prompt)?;
        if prompt.last().is_some_and(|m| m.role == "assistant") {
            return Err(
                "`prompt` ends with an assistant message; the reply belongs in `chosen`/`rejected`"
                    .into(),
            );
        }
        Ok(PreferencePair {
            prompt,
            chosen: reply(&self.chosen, "chosen")?,
            rejected: reply(&self.rejected, "rejected")?,
        })
    }
}

fn to_messages(v: &TextOrMessages, role: &str) -> Vec<Message> {
    match v {
        TextOrMessages::Text(t) => vec![Message::new(role, t)],
        TextOrMessages::Messages(m) => m.clone(),
    }
}

fn reply(v: &TextOrMessages, field: &str) -> Result<String, String> {
    match v {
        TextOrMessages::Text(t) => Ok(t.clone()),
        TextOrMessages::Messages(m) => match m.as_slice() {
            [one] if one.role == "assistant" => Ok(one.content.clone()),
            _ => Err(format!(
                "`{field}` must be a string or a list holding one assistant message"
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sft(json: &str) -> Result<Vec<Message>, String> {
        serde_json::from_str::<SftRecord>(json)
            .map_err(|e| e.to_string())?
            .conversation()
    }

    #[test]
    fn sft_formats() {
        let a = sft(r#"{"prompt": "hi", "response": "hello"}"#).unwrap();
        let b = sft(r#"{"prompt": "hi", "completion": "hello"}"#).unwrap();
        let c = sft(r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert!(sft(r#"{"prompt": "hi"}"#).unwrap_err().contains("response"));
        assert!(sft(r#"{"messages": [{"role": "user", "content": "hi"}]}"#)
            .unwrap_err()
            .contains("assistant"));
        assert!(sft(r#"{"messages": [{"role": "bot", "content": "hi"}]}"#)
            .unwrap_err()
            .contains("role `bot`"));
    }

    #[test]
    fn dpo_formats() {
        let plain: DpoRecord =
            serde_json::from_str(r#"{"prompt": "q", "chosen": "good", "rejected": "bad"}"#)
                .unwrap();
        let conv: DpoRecord = serde_json::from_str(
            r#"{"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}]}"#,
        )
        .unwrap();
        assert_eq!(plain.pair().unwrap(), conv.pair().unwrap());
        let bad: DpoRecord = serde_json::from_str(
            r#"{"prompt": "q", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"}"#,
        )
        .unwrap();
        assert!(bad.pair().unwrap_err().contains("chosen"));
    }
}
