//! Tokenization: a Hugging Face `tokenizers::Tokenizer` from `tokenizer.json`, or built from GGUF
//! metadata the way transformers builds it (gpt2-style byte-level BPE: tokens, merges, token
//! types; control tokens become special added tokens), plus the special-token ids srlm needs.

use crate::error::{EngineError, Result};
use crate::gguf::GgufModel;
use candle_core::quantized::gguf_file::Value;
use serde_json::json;
use std::path::Path;

/// GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest to U+0100...
fn bytes_to_unicode() -> [char; 256] {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32).collect();
    printable.extend(0xA1..=0xAC);
    printable.extend(0xAE..=0xFF);
    let mut table = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        table[b as usize] = if printable.contains(&b) {
            char::from_u32(b).expect("valid")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("valid")
        };
    }
    table
}

pub struct TokenizerInfo {
    pub tokenizer: tokenizers::Tokenizer,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

fn string_array(v: &Value) -> Option<Vec<String>> {
    v.to_vec()
        .ok()?
        .iter()
        .map(|x| x.to_string().ok().cloned())
        .collect()
}

/// Builds the tokenizer transformers builds from a GGUF's `tokenizer.ggml.*` metadata.
pub fn tokenizer_from_gguf(model: &GgufModel) -> Result<TokenizerInfo> {
    let path = &model.path;
    let kind = model.meta_str("tokenizer.ggml.model").unwrap_or("");
    if kind != "gpt2" {
        return Err(EngineError::model(
            path,
            format!("tokenizer.ggml.model `{kind}` is not supported"),
            "srlm builds gpt2-style byte-level BPE tokenizers from GGUF; use a Hugging Face folder with tokenizer.json instead",
        ));
    }
    let missing = |k: &str| {
        EngineError::model(
            path,
            format!("metadata `{k}` is missing or malformed"),
            "the GGUF carries no usable tokenizer",
        )
    };
    let tokens = model
        .metadata
        .get("tokenizer.ggml.tokens")
        .and_then(string_array)
        .ok_or_else(|| missing("tokenizer.ggml.tokens"))?;
    let merges = model
        .metadata
        .get("tokenizer.ggml.merges")
        .and_then(string_array)
        .ok_or_else(|| missing("tokenizer.ggml.merges"))?;
    let types: Vec<i64> = model
        .metadata
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|v| {
            v.iter()
                .map(|x| x.to_i32().map(|i| i as i64).unwrap_or(1))
                .collect()
        })
        .unwrap_or_default();

    let spelling = bytes_to_unicode();
    let alphabet: std::collections::HashSet<char> = spelling.iter().copied().collect();
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        // Tokens outside the byte alphabet are respelled byte-wise, as transformers does.
        let spelled = if t.chars().all(|c| alphabet.contains(&c)) {
            t.clone()
        } else {
            t.bytes().map(|b| spelling[b as usize]).collect()
        };
        vocab.insert(spelled, json!(i));
    }
    let merges: Vec<serde_json::Value> = merges
        .iter()
        .map(|m| {
            let (a, b) = m.split_once(' ').unwrap_or((m.as_str(), ""));
            json!([a, b])
        })
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let ty = types.get(i).copied().unwrap_or(1);
            // 3 = CONTROL (special), 4 = USER_DEFINED (added, not special)
            let special = match ty {
                3 if t.chars().all(|c| alphabet.contains(&c)) => true,
                4 => false,
                _ => return None,
            };
            Some(json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                        "normalized": !special, "special": special}))
        })
        .collect();
    let spec = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges},
    });
    let tokenizer: tokenizers::Tokenizer = serde_json::from_value(spec).map_err(|e| {
        EngineError::model(
            path,
            format!("cannot build tokenizer: {e}"),
            "the GGUF's tokenizer metadata is inconsistent",
        )
    })?;
    let name_of = |key: &str| {
        model
            .meta_u32(key)
            .and_then(|id| tokens.get(id as usize).cloned())
    };
    Ok(TokenizerInfo {
        tokenizer,
        bos_token: name_of("tokenizer.ggml.bos_token_id"),
        eos_token: name_of("tokenizer.ggml.eos_token_id"),
    })
}

pub fn tokenizer_from_file(path: &Path) -> Result<tokenizers::Tokenizer> {
    let text = std::fs::read_to_string(path).map_err(|e| EngineError::io(path, e))?;
    srlm_core::jsonl::strip_bom(&text)
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| {
            EngineError::model(
                path,
                format!("cannot read tokenizer: {e}"),
                "tokenizer.json must be a Hugging Face tokenizers file",
            )
        })
}

/// The tokenizer together with the ids generation stops at.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
}

impl Tokenizer {
    pub fn new(inner: tokenizers::Tokenizer, bos_id: Option<u32>, eos_ids: Vec<u32>) -> Self {
        Self {
            inner,
            bos_id,
            eos_ids,
        }
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token ids of `text`, special tokens written in it recognised, nothing added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Decodes a growing token sequence into text pieces as they become valid UTF-8 (a multi-byte
/// character may span tokens), like transformers' `TextStreamer`.
#[derive(Debug, Default, Clone)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    emitted: usize, // bytes of text already returned
}

impl StreamDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the new text, if a whole character is complete.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tok.decode(&self.ids, true)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.emitted {
            return Ok(None);
        }
        let piece = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(piece))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_matches_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        let distinct: std::collections::HashSet<char> = t.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
