//! Bad input that srlm refuses before it does any work, one test per class of issue 16: output
//! paths that are inputs or files srlm did not write, model folders it did not write, and
//! degenerate training or judging data, and model files that are not what they claim (class 6).
//! Each asserts the error names the file (and the line or
//! field) and that nothing on disk changed.

mod common;

use common::{argv, tiny_model};
use std::path::Path;
use std::process::{Command, Output};

fn srlm<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args(args)
        .env("SRLM_LOG", "warn")
        .output()
        .unwrap()
}

fn refused(o: &Output, wants: &[&str]) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted: {stderr}");
    for w in wants {
        assert!(stderr.contains(w), "wanted {w:?} in: {stderr}");
    }
}

/// `srlm generate` of `dir/prompts.jsonl` into `dir/out.jsonl` by `model`, two tokens each.
fn generate_two_tokens(dir: &Path, model: &Path) -> Output {
    let line = "generate --input @prompts.jsonl --output @out.jsonl --max-new-tokens 2 --model";
    srlm_in(dir, &format!("{line} {}", model.display()))
}

/// `srlm` with its command line as one string ([`argv`]).
fn srlm_in(dir: &Path, line: &str) -> Output {
    srlm(&argv(dir, line))
}

const PROMPTS: &str =
    "{\"id\": \"a\", \"prompt\": \"Say hi.\"}\n{\"id\": \"b\", \"prompt\": \"Say bye.\"}\n";
const CANDIDATES: &str = concat!(
    "{\"id\": \"a/0\", \"prompt_id\": \"a\", \"prompt\": \"Say hi.\", \"candidate\": 0, \"response\": \"Hi!\"}\n",
    "{\"id\": \"a/1\", \"prompt_id\": \"a\", \"prompt\": \"Say hi.\", \"candidate\": 1, \"response\": \"Hello there.\"}\n",
);

#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("prompts.jsonl"), PROMPTS).unwrap();
    std::fs::write(d.join("cands.jsonl"), CANDIDATES).unwrap();
    for line in [
        "generate --input @prompts.jsonl --output @prompts.jsonl",
        "sample --prompts @prompts.jsonl --out @./prompts.jsonl",
        "judge --candidates @cands.jsonl --out @cands.jsonl",
        "pairs --candidates @cands.jsonl --judgements @j.jsonl --out @cands.jsonl",
    ] {
        let o = srlm_in(d, line);
        refused(&o, &["is also an input", "never writes to its inputs"]);
    }
    assert_eq!(
        std::fs::read_to_string(d.join("prompts.jsonl")).unwrap(),
        PROMPTS
    );
    assert_eq!(
        std::fs::read_to_string(d.join("cands.jsonl")).unwrap(),
        CANDIDATES
    );
}

#[test]
fn an_output_file_srlm_did_not_write_is_neither_resumed_nor_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    std::fs::write(d.join("prompts.jsonl"), PROMPTS).unwrap();
    std::fs::write(d.join("cands.jsonl"), CANDIDATES).unwrap();
    std::fs::write(d.join("j.jsonl"), "").unwrap();
    let notes = "my notes, one line and no newline";
    std::fs::write(d.join("notes.txt"), notes).unwrap();
    assert_eq!(model, d.join("tiny"));
    for line in [
        "generate --input @prompts.jsonl --output @notes.txt --model @tiny",
        "sample --prompts @prompts.jsonl --out @notes.txt --model @tiny",
        "judge --candidates @cands.jsonl --out @notes.txt --model @tiny",
        "pairs --candidates @cands.jsonl --judgements @j.jsonl --out @notes.txt",
    ] {
        let o = srlm_in(d, line);
        refused(
            &o,
            &[
                "notes.txt:1: not an output of this command",
                "leaves it as it is",
            ],
        );
        assert_eq!(
            std::fs::read_to_string(d.join("notes.txt")).unwrap(),
            notes,
            "{line}"
        );
    }
    // The prompts file is a JSONL file, but not of candidates: not resumed as sampling's output.
    let o = srlm_in(
        d,
        "sample --prompts @cands.jsonl --out @prompts.jsonl --model @tiny",
    );
    refused(&o, &["prompts.jsonl:1: not an output of this command"]);
    assert_eq!(
        std::fs::read_to_string(d.join("prompts.jsonl")).unwrap(),
        PROMPTS
    );
}

#[test]
fn training_into_a_model_folder_srlm_did_not_write_needs_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let theirs = d.join("their-model");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("model.safetensors"), b"someone's weights").unwrap();
    std::fs::write(
        d.join("sft.jsonl"),
        "{\"prompt\": \"Say hi.\", \"response\": \"Hi!\"}\n",
    )
    .unwrap();
    assert_eq!(model, d.join("tiny"));
    let sft = "sft --data @sft.jsonl --out @their-model --model @tiny --max-steps 1";
    let o = srlm_in(d, sft);
    refused(
        &o,
        &["their-model", "such as model.safetensors", "--overwrite"],
    );
    assert_eq!(
        std::fs::read(theirs.join("model.safetensors")).unwrap(),
        b"someone's weights"
    );
    let o = srlm_in(d, "dpo --pairs @sft.jsonl --out @their-model --model @tiny");
    refused(&o, &["such as model.safetensors"]);
    let o = srlm_in(d, &format!("{sft} --overwrite"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_ne!(
        std::fs::read(theirs.join("model.safetensors")).unwrap(),
        b"someone's weights"
    );
}

#[test]
fn degenerate_preference_data_is_an_error_not_a_silent_model() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(tiny_model(d), d.join("tiny"));
    std::fs::write(
        d.join("same.jsonl"),
        "{\"prompt\": \"Q\", \"chosen\": \"A good answer.\", \"rejected\": \"A bad one.\"}\n{\"prompt\": \"Q\", \"chosen\": \"Same.\", \"rejected\": \"Same.\"}\n",
    )
    .unwrap();
    let dpo = "dpo --pairs @same.jsonl --out @m --model @tiny";
    let o = srlm_in(d, dpo);
    refused(&o, &["same.jsonl:2:", "the same text"]);
    assert!(!d.join("m/model.safetensors").exists());
    for beta in ["-0.1", "0", "NaN"] {
        let o = srlm_in(d, &format!("{dpo} --beta={beta}"));
        refused(&o, &["beta is", "must be a positive number"]);
    }
}

#[test]
fn judgements_off_the_scale_or_of_unknown_candidates_are_refused_by_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("cands.jsonl"), CANDIDATES).unwrap();
    let judgement = |cand: &str, score: &str| {
        format!("{{\"id\": \"{cand}/0\", \"candidate_id\": \"{cand}\", \"prompt_id\": \"a\", \"sample\": 0, \"raw\": \"Score: 1\", \"score\": {score}}}\n")
    };
    for (bad, wants) in [
        (
            judgement("a/1", "99"),
            "field `score`: 99 is not on the 0-5 scale",
        ),
        (
            judgement("a/1", "-5"),
            "field `score`: -5 is not on the 0-5 scale",
        ),
        (judgement("a/1", "1e308"), "is not on the 0-5 scale"),
        (
            judgement("z/9", "3"),
            "field `candidate_id`: `z/9` is not in",
        ),
        (judgement("a/0", "2"), "field `id`: `a/0/0` appears twice"),
    ] {
        std::fs::write(d.join("j.jsonl"), judgement("a/0", "4") + &bad).unwrap();
        let pairs = "pairs --candidates @cands.jsonl --judgements @j.jsonl --out @pairs.jsonl";
        let o = srlm_in(d, pairs);
        refused(&o, &["j.jsonl:2:", wants]);
        assert!(!d.join("pairs.jsonl").exists());
    }
    // A candidates file that repeats an id is refused by judging, before any judgement.
    std::fs::write(
        d.join("twice.jsonl"),
        CANDIDATES.to_string() + CANDIDATES.lines().next().unwrap() + "\n",
    )
    .unwrap();
    let o = srlm_in(
        d,
        "judge --candidates @twice.jsonl --out @j2.jsonl --model /nonexistent",
    );
    refused(&o, &["twice.jsonl:3: field `id`: `a/0` appears twice"]);
    assert!(!d.join("j2.jsonl").exists());
}

#[test]
fn sampling_values_and_roles_that_cannot_generate_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert_eq!(tiny_model(d), d.join("tiny"));
    std::fs::write(d.join("prompts.jsonl"), PROMPTS).unwrap();
    for (flag, wants) in [
        ("--temperature=-0.5", "--temperature is -0.5"),
        ("--top-p=1.5", "--top-p is 1.5"),
        ("--repetition-penalty=0", "--repetition-penalty is 0"),
        ("--max-new-tokens=0", "--max-new-tokens is 0"),
        ("--stop=", "--stop holds an empty string"),
    ] {
        for stage in [
            "generate --input @prompts.jsonl --output",
            "sample --prompts @prompts.jsonl --out",
        ] {
            let line = format!("{stage} @out.jsonl --model @tiny {flag}");
            refused(&srlm_in(d, &line), &[wants]);
        }
        assert!(!d.join("out.jsonl").exists(), "{flag}");
    }
    // A record's own value goes through the same check, and so does a chat role.
    std::fs::write(
        d.join("temp.jsonl"),
        "{\"id\": \"a\", \"prompt\": \"Hi\", \"temperature\": -1}\n",
    )
    .unwrap();
    let o = srlm_in(
        d,
        "generate --input @temp.jsonl --output @out.jsonl --model @tiny",
    );
    refused(&o, &["temp.jsonl:1: field `temperature` is -1"]);
    std::fs::write(
        d.join("robot.jsonl"),
        "{\"id\": \"a\", \"messages\": [{\"role\": \"robot\", \"content\": \"Hi\"}]}\n",
    )
    .unwrap();
    let o = srlm_in(
        d,
        "generate --input @robot.jsonl --output @out.jsonl --model @tiny",
    );
    refused(
        &o,
        &[
            "robot.jsonl:1:",
            "role `robot`; expected system, user or assistant",
        ],
    );
    assert!(!d.join("out.jsonl").exists());
}

#[test]
fn a_run_config_is_checked_whole_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("bad.toml"),
        "iterations = 0\n[sample]\nn = 0\ntop_p = 1.5\n[judge]\nk = 0\n[dpo]\nbeta = -0.1\n[model]\nweights = \"fp7\"\n",
    )
    .unwrap();
    let run = d.join("run");
    let o = srlm_in(d, "run --config @bad.toml --out @run");
    refused(
        &o,
        &[
            "bad.toml: 6 problems in the config; nothing was written",
            "`iterations` is 0",
            "`sample.n` is 0",
            "`sample.top_p` is 1.5",
            "`judge.k` is 0",
            "`dpo.beta` is -0.1",
            "`model.weights` is \"fp7\"",
        ],
    );
    // Nothing claimed the directory, so the corrected config is not refused as "another".
    assert!(!run.exists());

    // A directory of someone else's files is not a run directory.
    let theirs = d.join("theirs");
    std::fs::create_dir_all(&theirs).unwrap();
    std::fs::write(theirs.join("notes.md"), "mine").unwrap();
    std::fs::write(d.join("ok.toml"), "[model]\nbase = \"/no/such/model\"\n").unwrap();
    let o = srlm_in(d, "run --config @ok.toml --out @theirs");
    refused(&o, &["`model.base` /no/such/model: no such file or folder"]);
    std::fs::write(d.join("ok.toml"), "iterations = 1\n").unwrap();
    let o = srlm_in(d, "run --config @ok.toml --out @theirs");
    refused(
        &o,
        &["already holds files (such as notes.md) but no run's config.toml"],
    );
    assert_eq!(std::fs::read_dir(&theirs).unwrap().count(), 1);
}

#[test]
fn a_model_that_is_not_what_it_claims_is_named_for_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    std::fs::write(d.join("prompts.jsonl"), PROMPTS).unwrap();
    let generate = |m: &Path| generate_two_tokens(d, m);
    let config = model.join("config.json");
    let original = std::fs::read_to_string(&config).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&original).unwrap();

    // A config whose vocabulary is not the embedding's.
    let rows = cfg["vocab_size"].as_u64().unwrap();
    cfg["vocab_size"] = (rows + 7).into();
    std::fs::write(&config, cfg.to_string()).unwrap();
    refused(
        &generate(&model),
        &[
            "config.json",
            "`model.embed_tokens.weight` is [",
            "does not belong to these weights",
        ],
    );

    // Another family's config, without the Llama fields, is named by its architecture.
    std::fs::write(
        &config,
        r#"{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 64, "n_layer": 2}"#,
    )
    .unwrap();
    let o = generate(&model);
    refused(
        &o,
        &["config.json", "unsupported architecture `GPT2LMHeadModel`"],
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("missing field"));

    // One file of the folder given as --model.
    std::fs::write(&config, &original).unwrap();
    refused(
        &generate(&model.join("model.safetensors")),
        &[
            "model.safetensors: a safetensors file, not a GGUF file",
            &format!("--model {}", model.display()),
        ],
    );
    assert!(!d.join("out.jsonl").exists());
}

#[test]
fn files_saved_with_a_byte_order_mark_read_as_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    std::fs::write(d.join("prompts.jsonl"), format!("\u{feff}{PROMPTS}")).unwrap();
    let o = generate_two_tokens(d, &model);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(common::lines(&d.join("out.jsonl")).len(), 2);

    std::fs::write(d.join("run.toml"), "\u{feff}iterations = 7\n").unwrap();
    let o = srlm_in(d, "run --config @run.toml --print-config");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("iterations = 7"));

    // A model folder whose JSON files were saved the same way.
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        let path = model.join(f);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("\u{feff}{text}")).unwrap();
    }
    std::fs::remove_file(d.join("out.jsonl")).unwrap();
    let o = generate_two_tokens(d, &model);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
