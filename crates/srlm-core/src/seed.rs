//! Seed data for the loop: instruction-following examples (IFT: a prompt and a good response)
//! from any of the formats users hold, recognised line by line:
//!
//! - chat records `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}, ...]}`
//!   (the first user turn and the assistant's reply to it);
//! - `{"prompt", "response"}` (or `"completion"`);
//! - Self-Instruct seed tasks `{"instruction", "instances": [{"input", "output"}]}` (the
//!   instruction, then the first instance's input when it has one, answered by its output);
//! - Open Assistant trees (the oasst1 export format): each first-turn prompt with its rank-0
//!   human reply; trees marked synthetic are dropped.
//!
//! Each example keeps a stable id: the record's own `id`/`message_tree_id`, else
//! `<file stem>:<line>`.

use crate::jsonl::{read_jsonl, JsonlError};
use crate::oasst::{ranked_prompt, Tree, TreeFilter};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

pub const SEED_HINT: &str = r#"each line must be one of: {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}, {"prompt": "...", "response": "..."}, a Self-Instruct task {"instruction": "...", "instances": [{"input": "", "output": "..."}]}, or an Open Assistant tree {"message_tree_id", "prompt": {...}}"#;

/// An instruction with a good response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IftExample {
    pub id: String,
    pub prompt: String,
    pub response: String,
}

fn field_error(path: &Path, line: usize, message: String) -> JsonlError {
    JsonlError::Record {
        path: path.to_path_buf(),
        line,
        message,
        hint: SEED_HINT.to_string(),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// One record as an IFT example; Ok(None) for a record with nothing to learn from (an Open
/// Assistant tree without a ranked human reply).
fn ift_from_value(v: &Value, fallback_id: &str) -> Result<Option<IftExample>, String> {
    let own_id = str_field(v, "id")
        .map(str::to_string)
        .or_else(|| v.get("id").filter(|x| x.is_number()).map(|x| x.to_string()));
    let id = own_id.unwrap_or_else(|| fallback_id.to_string());
    let nonempty = |s: &str, field: &str| -> Result<String, String> {
        let t = s.trim();
        if t.is_empty() {
            Err(format!("field `{field}` is empty"))
        } else {
            Ok(t.to_string())
        }
    };
    if v.get("message_tree_id").is_some() {
        let tree: Tree = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        return Ok(ranked_prompt(
            &tree,
            &TreeFilter {
                min_replies: 1,
                ..TreeFilter::default()
            },
        )
        .and_then(|p| {
            let best = p.replies.iter().find(|r| r.1 == 0)?;
            Some(IftExample {
                id: p.id,
                prompt: p.prompt.trim().to_string(),
                response: best.0.trim().to_string(),
            })
        }));
    }
    if let Some(messages) = v.get("messages") {
        let messages = messages
            .as_array()
            .ok_or("field `messages` must be a list of {\"role\", \"content\"}")?;
        let role = |m: &Value| str_field(m, "role").unwrap_or("").to_string();
        let user = messages
            .iter()
            .position(|m| role(m) == "user")
            .ok_or("field `messages` has no user turn")?;
        let reply = messages
            .get(user + 1)
            .filter(|m| role(m) == "assistant")
            .ok_or("field `messages`: the first user turn has no assistant reply after it")?;
        let content = |m: &Value, at: usize| -> Result<String, String> {
            let c = str_field(m, "content").ok_or(format!(
                "field `messages[{at}].content` is missing or not text"
            ))?;
            nonempty(c, &format!("messages[{at}].content"))
        };
        return Ok(Some(IftExample {
            id,
            prompt: content(&messages[user], user)?,
            response: content(reply, user + 1)?,
        }));
    }
    if let Some(instruction) = str_field(v, "instruction") {
        let first = v
            .get("instances")
            .and_then(Value::as_array)
            .and_then(|i| i.first())
            .ok_or("field `instances` must hold at least one {\"input\", \"output\"}")?;
        let input = str_field(first, "input").unwrap_or("").trim();
        let output = str_field(first, "output").ok_or("field `instances[0].output` is missing")?;
        let mut prompt = nonempty(instruction, "instruction")?;
        if !input.is_empty() {
            prompt = format!("{prompt}\n\n{input}");
        }
        return Ok(Some(IftExample {
            id,
            prompt,
            response: nonempty(output, "instances[0].output")?,
        }));
    }
    let prompt = str_field(v, "prompt")
        .ok_or("no `messages`, `prompt`, `instruction` or `message_tree_id` field")?;
    let response = str_field(v, "response")
        .or_else(|| str_field(v, "completion"))
        .ok_or("field `response` is missing")?;
    Ok(Some(IftExample {
        id,
        prompt: nonempty(prompt, "prompt")?,
        response: nonempty(response, "response")?,
    }))
}

/// Every IFT example of `path`, in file order. Ids must be unique within the file.
pub fn load_ift(path: &Path) -> Result<Vec<IftExample>, JsonlError> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut out: Vec<IftExample> = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for line in read_jsonl::<Value>(path, SEED_HINT)? {
        if !line.record.is_object() {
            return Err(field_error(path, line.line, "not a JSON object".into()));
        }
        let ex = ift_from_value(&line.record, &format!("{stem}:{}", line.line))
            .map_err(|m| field_error(path, line.line, m))?;
        if let Some(ex) = ex {
            if let Some(first) = seen.insert(ex.id.clone(), line.line) {
                return Err(field_error(
                    path,
                    line.line,
                    format!("field `id`: `{}` already used on line {first}", ex.id),
                ));
            }
            out.push(ex);
        }
    }
    Ok(out)
}

/// A judge example: the judge prompt's inputs and the judgement to learn (a justification
/// ending with `Score: N`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EftExample {
    pub id: String,
    pub instruction: String,
    pub response: String,
    pub judgement: String,
    pub score: u8,
}

pub const EFT_HINT: &str = r#"each line must be {"id": "...", "instruction": "...", "response": "...", "judgement": "... Score: N", "score": N}"#;

/// Every EFT example of `path`; each judgement's own final `Score:` line must equal `score`.
pub fn load_eft(path: &Path) -> Result<Vec<EftExample>, JsonlError> {
    let mut out = Vec::new();
    for line in read_jsonl::<EftExample>(path, EFT_HINT)? {
        let e = &line.record;
        match crate::judge::parse_score(&e.judgement) {
            Ok(s) if s == e.score as f64 => {}
            Ok(s) => {
                return Err(JsonlError::Record {
                    path: path.to_path_buf(),
                    line: line.line,
                    message: format!(
                        "field `judgement` ends with Score: {s} but `score` is {}",
                        e.score
                    ),
                    hint: EFT_HINT.into(),
                })
            }
            Err(f) => {
                return Err(JsonlError::Record {
                    path: path.to_path_buf(),
                    line: line.line,
                    message: format!("field `judgement` has no valid final Score line ({f:?})"),
                    hint: EFT_HINT.into(),
                })
            }
        }
        out.push(line.record);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new()
            .suffix(".jsonl")
            .tempfile()
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn reads_every_seed_format() {
        let f = file(concat!(
            r#"{"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}"#,
            "\n",
            r#"{"id": "pr", "prompt": "Add 2 and 2.", "completion": "4"}"#,
            "\n",
            r#"{"id": "seed_task_1", "instruction": "Sort these.", "instances": [{"input": "b, a", "output": "a, b"}]}"#,
            "\n",
            r#"{"message_tree_id": "t1", "prompt": {"text": "Q?", "role": "prompter", "replies": [{"text": "second", "role": "assistant", "rank": 1}, {"text": "best", "role": "assistant", "rank": 0}]}}"#,
            "\n",
            r#"{"message_tree_id": "t2", "prompt": {"text": "Q2?", "role": "prompter", "replies": [{"text": "unranked", "role": "assistant"}]}}"#,
            "\n"
        ));
        let ex = load_ift(f.path()).unwrap();
        let stem = f.path().file_stem().unwrap().to_string_lossy().to_string();
        assert_eq!(
            ex,
            vec![
                IftExample {
                    id: format!("{stem}:1"),
                    prompt: "Hi".into(),
                    response: "Hello!".into()
                },
                IftExample {
                    id: "pr".into(),
                    prompt: "Add 2 and 2.".into(),
                    response: "4".into()
                },
                IftExample {
                    id: "seed_task_1".into(),
                    prompt: "Sort these.\n\nb, a".into(),
                    response: "a, b".into()
                },
                IftExample {
                    id: "t1".into(),
                    prompt: "Q?".into(),
                    response: "best".into()
                },
            ]
        );
    }

    #[test]
    fn bad_records_name_the_line_and_field() {
        let f = file("{\"prompt\": \"ok\", \"response\": \"fine\"}\n{\"prompt\": \"no answer\"}\n");
        let e = load_ift(f.path()).unwrap_err().to_string();
        assert!(e.contains(":2: field `response` is missing"), "{e}");
        let f = file("{\"messages\": [{\"role\": \"user\", \"content\": \"Hi\"}]}\n");
        let e = load_ift(f.path()).unwrap_err().to_string();
        assert!(e.contains(":1: field `messages`"), "{e}");
        let f = file("{\"id\": \"a\", \"prompt\": \"x\", \"response\": \"y\"}\n{\"id\": \"a\", \"prompt\": \"x2\", \"response\": \"y2\"}\n");
        let e = load_ift(f.path()).unwrap_err().to_string();
        assert!(
            e.contains(":2: field `id`: `a` already used on line 1"),
            "{e}"
        );
        let f = file("{\"id\": \"e\", \"instruction\": \"Q\", \"response\": \"R\", \"judgement\": \"Good.\\nScore: 4\", \"score\": 3}\n");
        let e = load_eft(f.path()).unwrap_err().to_string();
        assert!(
            e.contains(":1: field `judgement` ends with Score: 4 but `score` is 3"),
            "{e}"
        );
    }
}
