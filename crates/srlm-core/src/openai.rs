//! The OpenAI API's wire format, the part srlm speaks as a client (its remote backend) and as a
//! server (`srlm serve`): `/v1/chat/completions`, `/v1/completions` (both with `n` and SSE
//! streaming) and `/v1/models`. Requests accept and ignore fields srlm does not use, as servers
//! in the wild do; `top_k` and `repetition_penalty` are vLLM's extensions.

use crate::generation::{FinishReason, Message, TokenLogprob, TopLogprob};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    /// Chat completions: `true` (with `top_logprobs`); completions: the number of top tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<LogprobsField>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<usize>,
}

/// `logprobs` is a flag in chat completions and a count in completions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogprobsField {
    Flag(bool),
    Count(usize),
}

/// OpenAI's cap on `top_logprobs`.
pub const MAX_TOP_LOGPROBS: usize = 20;

impl SamplingFields {
    /// How many top tokens a request wants per position, if it wants log-probabilities at
    /// all: chat's `logprobs: true` + `top_logprobs` (0 when unset), or completions'
    /// `logprobs: N`.
    pub fn wanted_logprobs(&self) -> Option<usize> {
        match self.logprobs {
            None | Some(LogprobsField::Flag(false)) => None,
            Some(LogprobsField::Flag(true)) => Some(self.top_logprobs.unwrap_or(0)),
            Some(LogprobsField::Count(n)) => Some(n),
        }
    }
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
    /// vLLM's and SGLang's extension: continue the last message (an assistant turn already
    /// begun) instead of starting a new one; sent with `add_generation_prompt: false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub continue_final_message: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_generation_prompt: Option<bool>,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<ChoiceLogprobs>,
}

/// A choice's log-probabilities in either endpoint's shape: chat completions' `content` list,
/// or completions' parallel `tokens` / `token_logprobs` / `top_logprobs` lists.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChoiceLogprobs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<ChatTokenLogprob>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_logprobs: Option<Vec<Option<f32>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<Vec<Option<BTreeMap<String, f32>>>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes: a token may hold part of a character, which `token` cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Vec<u8>>,
    #[serde(default)]
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Vec<u8>>,
}

impl ChoiceLogprobs {
    /// The chat shape of srlm's tokens (as `srlm serve` sends them).
    pub fn chat(tokens: &[TokenLogprob]) -> Self {
        let content = tokens
            .iter()
            .map(|t| ChatTokenLogprob {
                token: t.token.clone(),
                logprob: t.logprob,
                bytes: Some(t.token.as_bytes().to_vec()),
                top_logprobs: t
                    .top_logprobs
                    .iter()
                    .map(|a| ChatTopLogprob {
                        token: a.token.clone(),
                        logprob: a.logprob,
                        bytes: Some(a.token.as_bytes().to_vec()),
                    })
                    .collect(),
            })
            .collect();
        Self {
            content: Some(content),
            ..Self::default()
        }
    }

    /// The completions shape of srlm's tokens.
    pub fn text(tokens: &[TokenLogprob]) -> Self {
        Self {
            tokens: Some(tokens.iter().map(|t| t.token.clone()).collect()),
            token_logprobs: Some(tokens.iter().map(|t| Some(t.logprob)).collect()),
            top_logprobs: Some(
                tokens
                    .iter()
                    .map(|t| {
                        Some(
                            t.top_logprobs
                                .iter()
                                .map(|a| (a.token.clone(), a.logprob))
                                .collect(),
                        )
                    })
                    .collect(),
            ),
            ..Self::default()
        }
    }

    /// srlm's tokens from either shape. Each token's text is what it adds to the completion:
    /// where a server gives `bytes`, a character split across tokens goes to the token that
    /// completes it, so the texts add up to the completion byte for byte.
    pub fn to_tokens(&self) -> Option<Vec<TokenLogprob>> {
        if let Some(content) = &self.content {
            let mut pending: Vec<u8> = Vec::new();
            let mut out = Vec::with_capacity(content.len());
            for t in content {
                let token = match &t.bytes {
                    Some(b) => {
                        pending.extend_from_slice(b);
                        take_complete_utf8(&mut pending)
                    }
                    None => t.token.clone(),
                };
                out.push(TokenLogprob {
                    token,
                    logprob: t.logprob,
                    top_logprobs: t
                        .top_logprobs
                        .iter()
                        .map(|a| TopLogprob {
                            token: a.token.clone(),
                            logprob: a.logprob,
                        })
                        .collect(),
                });
            }
            return Some(out);
        }
        let tokens = self.tokens.as_ref()?;
        let lps = self.token_logprobs.as_ref();
        let tops = self.top_logprobs.as_ref();
        Some(
            tokens
                .iter()
                .enumerate()
                .map(|(i, token)| {
                    let mut top: Vec<TopLogprob> = tops
                        .and_then(|t| t.get(i).cloned().flatten())
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(token, logprob)| TopLogprob { token, logprob })
                        .collect();
                    top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
                    TokenLogprob {
                        token: token.clone(),
                        logprob: lps
                            .and_then(|l| l.get(i).copied().flatten())
                            .unwrap_or(f32::NEG_INFINITY),
                        top_logprobs: top,
                    }
                })
                .collect(),
        )
    }
}

/// The longest valid UTF-8 prefix of `pending`, removed from it (invalid bytes that can never
/// complete a character are replaced).
fn take_complete_utf8(pending: &mut Vec<u8>) -> String {
    match std::str::from_utf8(pending) {
        Ok(s) => {
            let s = s.to_string();
            pending.clear();
            s
        }
        Err(e) if e.error_len().is_none() => {
            // An incomplete character at the end: keep it for the next token.
            let valid = e.valid_up_to();
            let s = String::from_utf8_lossy(&pending[..valid]).to_string();
            pending.drain(..valid);
            s
        }
        Err(_) => {
            let s = String::from_utf8_lossy(pending).to_string();
            pending.clear();
            s
        }
    }
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
    /// The request field at fault, where one is.
    #[serde(default)]
    pub param: Option<String>,
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
    /// Where the model was loaded from (vLLM: the model's path, or an adapter's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// For a LoRA adapter, the model it is laid over (vLLM's `parent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
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

    #[test]
    fn log_probabilities_of_both_endpoints_read_as_tokens() {
        // Completions (vLLM, llama.cpp): parallel lists, top tokens as a map.
        let text: Choice = serde_json::from_str(
            r#"{"index": 0, "text": "Score: 4", "finish_reason": "stop",
                "logprobs": {"tokens": ["Score", ":", " ", "4"],
                             "token_logprobs": [-0.1, -0.2, -0.3, -0.5],
                             "top_logprobs": [null, {":": -0.2}, {" ": -0.3}, {"3": -1.5, "4": -0.5}],
                             "text_offset": [0, 5, 6, 7]}}"#,
        )
        .unwrap();
        let t = text.logprobs.unwrap().to_tokens().unwrap();
        assert_eq!(
            t.iter().map(|x| x.token.as_str()).collect::<String>(),
            "Score: 4"
        );
        assert_eq!(t[3].logprob, -0.5);
        // Most likely first, whatever order the map had.
        assert_eq!(t[3].top_logprobs[0].token, "4");
        assert_eq!(t[3].top_logprobs[1].token, "3");
        assert!(t[0].top_logprobs.is_empty());
        // Chat: a character split across two tokens goes to the token that completes it.
        let chat: ChoiceLogprobs = serde_json::from_str(
            r#"{"content": [{"token": "a", "logprob": -1, "bytes": [97], "top_logprobs": []},
                            {"token": "\ufffd", "logprob": -1, "bytes": [226, 152], "top_logprobs": []},
                            {"token": "\ufffd", "logprob": -1, "bytes": [149], "top_logprobs": []}]}"#,
        )
        .unwrap();
        let t = chat.to_tokens().unwrap();
        let texts: Vec<&str> = t.iter().map(|x| x.token.as_str()).collect();
        assert_eq!(texts, vec!["a", "", "☕"]);
        // And srlm's own tokens survive a trip through either shape.
        for shape in [ChoiceLogprobs::chat(&t), ChoiceLogprobs::text(&t)] {
            assert_eq!(shape.to_tokens().unwrap(), t);
        }
    }
}
