//! A command's typed arguments written back as the command line that parses to them.
//!
//! Every argument struct of a stage derives `Serialize` beside clap's `Args`, with the field
//! names clap turns into long flags. [`to_argv`] walks the serialised value: a field becomes
//! `--field-name value`; `true` becomes the bare flag and `false` or an unset option nothing; a
//! list repeats the flag per element; a nested struct (clap's `flatten`) contributes its own
//! fields. The pipeline's round-trip test parses every planned stage's line back through the
//! CLI and compares, so a field clap names differently would fail there.

use serde::Serialize;
use serde_json::Value;

/// `command` (the subcommand path, e.g. `["eval", "judge"]`) and the flags of `args`.
pub fn to_argv(command: &[&str], args: &impl Serialize) -> Vec<String> {
    let mut argv: Vec<String> = command.iter().map(|c| c.to_string()).collect();
    // Through text, not `to_value`: that widens an f32 to f64 (0.9 -> 0.8999999761581421),
    // where the text keeps the shortest digits that read back to the same f32.
    let text = serde_json::to_string(args).expect("argument structs serialise");
    let value: Value = serde_json::from_str(&text).expect("serde_json reads its own output");
    push_fields(&value, &mut argv);
    argv
}

fn push_fields(value: &Value, argv: &mut Vec<String>) {
    let Value::Object(fields) = value else {
        panic!("arguments serialise to a struct, not {value}");
    };
    for (name, v) in fields {
        let flag = format!("--{}", name.replace('_', "-"));
        match v {
            Value::Null | Value::Bool(false) => {}
            Value::Bool(true) => argv.push(flag),
            Value::Array(items) => {
                for item in items {
                    argv.push(flag.clone());
                    argv.push(scalar(item));
                }
            }
            Value::Object(_) => push_fields(v, argv),
            _ => {
                argv.push(flag);
                argv.push(scalar(v));
            }
        }
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => panic!("a flag's value must be a string or number, not {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Inner {
        top_p: f32,
        stop: Vec<String>,
    }

    #[derive(Serialize)]
    struct Outer {
        out: std::path::PathBuf,
        limit: Option<usize>,
        first_turn: bool,
        keep_synthetic: bool,
        lr: f64,
        sampling: Inner,
    }

    #[test]
    fn fields_become_flags_lists_repeat_and_unset_ones_vanish() {
        let a = Outer {
            out: "o.jsonl".into(),
            limit: None,
            first_turn: true,
            keep_synthetic: false,
            lr: 5e-6,
            sampling: Inner {
                top_p: 0.9,
                stop: vec!["\n".into(), "END".into()],
            },
        };
        let argv = to_argv(&["eval", "judge"], &a);
        assert_eq!(argv[..2], ["eval", "judge"]);
        // Flags in serde's field order (alphabetical, or declared with serde_json's
        // `preserve_order`): compare them as groups of a flag and its value.
        let mut groups: Vec<Vec<&str>> = Vec::new();
        for w in &argv[2..] {
            match w.starts_with("--") {
                true => groups.push(vec![w]),
                false => groups.last_mut().unwrap().push(w),
            }
        }
        groups.sort();
        let want: Vec<Vec<&str>> = vec![
            vec!["--first-turn"],
            vec!["--lr", "5e-6"],
            vec!["--out", "o.jsonl"],
            vec!["--stop", "\n"],
            vec!["--stop", "END"],
            vec!["--top-p", "0.9"],
        ];
        assert_eq!(groups, want);
        // The number is written as Rust reads it back.
        assert_eq!("5e-6".parse::<f64>().unwrap(), 5e-6);
        assert_eq!("0.9".parse::<f32>().unwrap(), 0.9f32);
    }
}
