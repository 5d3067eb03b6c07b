//! The OpenAI API's wire format, the part srlm speaks as a client (its remote backend) and as a
//! server (`srlm serve`): `/v1/chat/completions`, `/v1/completions` (both with `n` and SSE
//! streaming) and `/v1/models`. Requests accept and ignore fields srlm does not use, as servers
//! in the wild do; `top_k` and `repetition_penalty` are vLLM's extensions.

use crate::generation::{FinishReason, Message};
use serde::{Deserialize, Serialize};

/// `stop` is a string or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// The sampling fields both endpoints share.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplingFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<usize>,
    /// The newer name of `max_tokens` in chat completions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

/// `prompt` is a string or a list of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PromptText {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptText,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

/// A choice as either endpoint returns it: chat completions carry `message` (or `delta` when
/// streamed), completions carry `text`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    pub index: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<ChoiceMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<ChoiceMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Serialised even when null: streamed chunks carry `"finish_reason": null`.
    #[serde(default)]
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceMessage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default)]
    pub content: Option<String>,
}

/// A chat completion, a completion, or one streamed chunk of either (`object` tells which).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

impl Choice {
    /// The generated text, whichever endpoint answered.
    pub fn content(&self) -> Option<&str> {
        self.text
            .as_deref()
            .or_else(|| self.message.as_ref().and_then(|m| m.content.as_deref()))
    }
}

/// OpenAI's names for why a completion ended.
pub fn finish_reason_name(r: &FinishReason) -> &'static str {
    match r {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length | FinishReason::Context => "length",
    }
}

/// The reverse of [`finish_reason_name`]; unknown names (`content_filter`, ...) read as `stop`.
pub fn parse_finish_reason(name: Option<&str>) -> FinishReason {
    match name {
        Some("length") => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_request_as_the_openai_client_sends_it() {
        let r: ChatRequest = serde_json::from_str(
            r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "stream": true, "stop": "\n", "max_tokens": 5, "n": 2, "logprobs": false}"#,
        )
        .unwrap();
        assert_eq!(r.sampling.stream, Some(true));
        assert_eq!(r.sampling.stop.clone().unwrap().into_vec(), vec!["\n"]);
        assert_eq!((r.sampling.n, r.sampling.max_tokens), (Some(2), Some(5)));
        // Unset fields stay off the wire, so strict servers see only what was asked.
        let back = serde_json::to_value(&r).unwrap();
        assert!(back.get("temperature").is_none(), "{back}");
    }

    #[test]
    fn choices_of_both_endpoints_give_their_text() {
        let chat: CompletionResponse = serde_json::from_str(
            r#"{"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "a"},
                "finish_reason": "length"}]}"#,
        )
        .unwrap();
        assert_eq!(chat.choices[0].content(), Some("a"));
        assert_eq!(
            parse_finish_reason(chat.choices[0].finish_reason.as_deref()),
            FinishReason::Length
        );
        let text: CompletionResponse = serde_json::from_str(
            r#"{"id": "x", "object": "text_completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "text": "b", "finish_reason": "stop"}]}"#,
        )
        .unwrap();
        assert_eq!(text.choices[0].content(), Some("b"));
        // A streamed chunk keeps `"finish_reason": null`, which clients read.
        let chunk = serde_json::to_value(Choice::default()).unwrap();
        assert!(chunk.get("finish_reason").unwrap().is_null());
    }
}
