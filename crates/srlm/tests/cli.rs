//! The real `srlm` binary on a tiny random model in a temp dir: generation, resume, bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../srlm-engine/tests/goldens/tiny-llama")
}

fn srlm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(args)
        .output()
        .expect("run srlm")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write_prompts(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| match i % 3 {
            0 => format!(r#"{{"id": "q{i}", "prompt": "the quick brown fox {i}"}}"#),
            1 => format!(r#"{{"id": "q{i}", "messages": [{{"role": "user", "content": "hello world {i}"}}]}}"#),
            _ => format!(r#"{{"id": "q{i}", "text": "def main(): return {i}"}}"#),
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

fn generate(dir: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    let model = tiny();
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--weights",
        "dense",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--max-new-tokens",
        "8",
        "--temperature",
        "0.8",
        "--seed",
        "3",
    ];
    args.extend_from_slice(extra);
    let _ = dir;
    srlm(&args)
}

fn sorted_lines(path: &Path) -> Vec<serde_json::Value> {
    let mut v: Vec<serde_json::Value> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    v.sort_by_key(|r| r["id"].as_str().unwrap().to_string());
    v
}

#[test]
fn generate_writes_one_completion_per_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    write_prompts(&input, 7);
    let o = generate(dir.path(), &input, &output, &["--batch-size", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let recs = sorted_lines(&output);
    assert_eq!(recs.len(), 7);
    for r in &recs {
        assert!(r["completion"].is_string());
        assert!(r["prompt_tokens"].as_u64().unwrap() > 0);
        let n = r["completion_tokens"].as_u64().unwrap();
        assert!(n <= 8);
        assert!(
            ["eos", "stop", "length", "context"].contains(&r["finish_reason"].as_str().unwrap())
        );
    }
}

#[test]
fn interrupted_generate_resumes_to_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_prompts(&input, 6);
    let whole = dir.path().join("whole.jsonl");
    assert!(generate(dir.path(), &input, &whole, &[]).status.success());
    // An interrupted run: two whole records and a torn third line.
    let text = std::fs::read_to_string(&whole).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let resumed = dir.path().join("resumed.jsonl");
    std::fs::write(
        &resumed,
        format!(
            "{}\n{}\n{}",
            lines[0],
            lines[1],
            &lines[2][..lines[2].len() / 2]
        ),
    )
    .unwrap();
    let o = generate(dir.path(), &input, &resumed, &["--batch-size", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("resuming: 2 of 6"), "{}", stderr(&o));
    assert_eq!(sorted_lines(&resumed), sorted_lines(&whole));
    // A third run has nothing left to do and changes nothing.
    let o = generate(dir.path(), &input, &resumed, &[]);
    assert!(o.status.success());
    assert_eq!(sorted_lines(&resumed), sorted_lines(&whole));
}

#[test]
fn bad_jsonl_line_names_file_line_and_field_and_keeps_output() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(
        &input,
        "{\"id\": \"a\", \"prompt\": \"hi\"}\n{\"id\": \"b\", \"prompt\": 5}\n",
    )
    .unwrap();
    std::fs::write(&output, "{\"id\":\"old\",\"completion\":\"x\",\"finish_reason\":\"eos\",\"prompt_tokens\":1,\"completion_tokens\":1}\n").unwrap();
    let before = std::fs::read(&output).unwrap();
    let o = generate(dir.path(), &input, &output, &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("in.jsonl:2:"), "{e}");
    assert!(e.contains("invalid type: integer `5`"), "{e}");
    assert!(e.contains("hint:"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(std::fs::read(&output).unwrap(), before);

    std::fs::write(&input, "{\"id\": \"a\", \"promt\": \"hi\"}\n").unwrap();
    let e = stderr(&generate(dir.path(), &input, &output, &[]));
    assert!(
        e.contains("in.jsonl:1:") && e.contains("unknown field `promt`"),
        "{e}"
    );

    std::fs::write(
        &input,
        "{\"id\": \"a\", \"prompt\": \"hi\"}\n{\"id\": \"a\", \"prompt\": \"again\"}\n",
    )
    .unwrap();
    let e = stderr(&generate(dir.path(), &input, &output, &[]));
    assert!(
        e.contains("in.jsonl:2:") && e.contains("appears twice"),
        "{e}"
    );
}

#[test]
fn prompt_longer_than_the_context_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.jsonl"), dir.path().join("out.jsonl"));
    std::fs::write(
        &input,
        format!(
            "{{\"id\": \"long\", \"text\": \"{}\"}}\n",
            "fox jumps ".repeat(40)
        ),
    )
    .unwrap();
    let o = generate(dir.path(), &input, &output, &["--context-length", "32"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("in.jsonl:1:") && e.contains("context is 32"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn bad_model_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    write_prompts(&input, 1);
    let out = dir.path().join("out.jsonl");
    let run = |model: &Path| {
        let o = srlm(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ]);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(!e.contains("panicked"), "{e}");
        e
    };
    // Missing.
    let e = run(&dir.path().join("nope.gguf"));
    assert!(e.contains("nope.gguf") && e.contains("no such file"), "{e}");
    // Not a GGUF at all.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"this is not a model").unwrap();
    let e = run(&junk);
    assert!(
        e.contains("junk.gguf") && e.contains("cannot read GGUF"),
        "{e}"
    );
    // A GGUF header cut short: a copy of the tiny folder's weights is not GGUF; build one by
    // truncating a real GGUF header region instead: magic + version + counts, then nothing.
    let trunc = dir.path().join("trunc.gguf");
    let mut bytes = b"GGUF".to_vec();
    bytes.extend_from_slice(&3u32.to_le_bytes());
    bytes.extend_from_slice(&10u64.to_le_bytes()); // 10 tensors
    bytes.extend_from_slice(&5u64.to_le_bytes()); // 5 metadata entries, none present
    std::fs::write(&trunc, bytes).unwrap();
    let e = run(&trunc);
    assert!(e.contains("trunc.gguf") && e.contains("truncated"), "{e}");
    // An unsupported architecture in a Hugging Face folder.
    let neox = dir.path().join("neox");
    std::fs::create_dir(&neox).unwrap();
    std::fs::write(neox.join("config.json"), r#"{"architectures": ["GPTNeoXForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2}"#).unwrap();
    let e = run(&neox);
    assert!(e.contains("GPTNeoXForCausalLM"), "{e}");
    // A folder with weights missing.
    let empty = dir.path().join("noweights");
    std::fs::create_dir(&empty).unwrap();
    std::fs::copy(tiny().join("config.json"), empty.join("config.json")).unwrap();
    let e = run(&empty);
    assert!(e.contains("no model.safetensors"), "{e}");
    // Truncated safetensors.
    let cut = dir.path().join("cut");
    std::fs::create_dir(&cut).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tiny().join(f), cut.join(f)).unwrap();
    }
    let w = std::fs::read(tiny().join("model.safetensors")).unwrap();
    std::fs::write(cut.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    let e = run(&cut);
    assert!(
        e.contains("cut") && (e.contains("truncated") || e.contains("safetensors")),
        "{e}"
    );
}

#[test]
fn chat_answers_each_line_and_survives_reset() {
    use std::io::Write;
    let model = tiny();
    let mut child = Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args([
            "chat",
            "--model",
            model.to_str().unwrap(),
            "--weights",
            "dense",
            "--max-new-tokens",
            "5",
            "--temperature",
            "0",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello world\n/reset\nhello world\n/exit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    // Two replies, each followed by a newline. Greedy, and the conversation was reset: the same
    // question gets the same reply, so the output is one reply twice.
    let (first, second) = out.split_at(out.len() / 2);
    assert!(out.len() > 2 && out.len() % 2 == 0, "{out:?}");
    assert_eq!(first, second, "{out:?}");
    assert!(first.ends_with('\n'), "{out:?}");
}

#[test]
fn bench_generate_takes_more_sequences_than_prompt_tokens() {
    // Each decoding sequence gets a 16-token prompt of its own, whatever --prompt-tokens says.
    let model = tiny();
    let o = srlm(&[
        "bench",
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt-tokens",
        "8",
        "--decode-tokens",
        "2",
        "--sequences",
        "12",
        "--repeat",
        "1",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let json: serde_json::Value =
        serde_json::from_str(stdout.lines().last().expect("a JSON line")).unwrap();
    assert_eq!(json["sequences"], 12);
    assert!(json["decode_total_tok_s"].as_f64().unwrap() > 0.0, "{json}");
}
