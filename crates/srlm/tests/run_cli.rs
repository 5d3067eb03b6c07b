//! `srlm run` end to end on a tiny random Llama (tests/goldens of the engine, its context
//! widened): seed -> SFT (M1) -> two iterations of prompts, candidates, judgements, pairs, DPO
//! (M2, M3); then the same run crashed at several points (in prompt writing, judging, DPO and
//! sampling) and resumed each time ends with the same artifacts and weights.

mod common;
use common::tiny_run::{assert_same_outcome, config, fixtures, ok, srlm_run};
use common::{lines, tiny_model};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

#[test]
fn the_loop_runs_two_iterations_and_resumes_after_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, config(&model)).unwrap();

    // Uninterrupted.
    let a = dir.path().join("a");
    ok(&srlm_run(&cfg, &a, None));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("manifest.json")).unwrap()).unwrap();
    let stages = manifest["stages"].as_object().unwrap();
    // seed, sft m1-seed, the judge bootstrap (eft judge, eft, sft m1), 2 x (prompts, sample,
    // judge, pairs, dpo), 3 x eval judge, 2 x eval vs (M2 and M3 against M1), on the
    // held-out data srlm ships (the default).
    assert_eq!(stages.len(), 20, "{:?}", stages.keys().collect::<Vec<_>>());
    // Each stage's peak memory is recorded (every stage runs in srlm's process, whose peak
    // is reset at the stage's start: `memory::tests` checks the reset).
    if cfg!(target_os = "linux") {
        let peak = |name: &str| stages[name]["peak_rss_mib"].as_f64().unwrap_or(0.0);
        for name in stages.keys() {
            assert!(peak(name) > 1.0, "stage `{name}`: peak {}", peak(name));
        }
    }
    // The bootstrap judged the shipped training split with the seed SFT and trained M1 on
    // the judgements that follow the human order.
    let eft_judge: Value = serde_json::from_str(
        &std::fs::read_to_string(a.join("eft/judgements.jsonl.metrics.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(eft_judge["prompts"], 6);
    assert!(eft_judge["data"]
        .as_str()
        .unwrap()
        .ends_with("eft/data/oasst-train.jsonl"));
    let eft = lines(&a.join("eft/eft.jsonl"));
    assert!(!eft.is_empty());
    assert_eq!(lines(&a.join("eft/sft.jsonl")).len(), eft.len());
    assert_eq!(stages["eft"]["stats"]["examples"], eft.len());
    assert!(a.join("models/m1-seed/model.safetensors").exists());
    assert!(stages["sft m1"]["command"]
        .as_array()
        .unwrap()
        .windows(2)
        .any(|w| w[0] == "--model" && w[1].as_str().unwrap().ends_with("models/m1-seed")));
    for m in 1..=3 {
        let metrics: Value = serde_json::from_str(
            &std::fs::read_to_string(a.join(format!("eval/judge_m{m}.jsonl.metrics.json")))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(metrics["prompts"], 2);
        // The shipped held-out split, written into the run.
        assert!(metrics["data"]
            .as_str()
            .unwrap()
            .ends_with("eval/data/oasst-eval.jsonl"));
    }
    for vs in ["vs_m2_m1", "vs_m3_m1"] {
        let s: Value = serde_json::from_str(
            &std::fs::read_to_string(a.join("eval").join(vs).join("summary.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(s["compared"], 2, "{vs}");
    }
    // M1's side of the second head-to-head is the first's, taken rather than made again.
    assert!(stages["eval vs m3 m1"]["command"]
        .as_array()
        .unwrap()
        .windows(2)
        .any(|w| w[0] == "--b-from" && w[1].as_str().unwrap().ends_with("eval/vs_m2_m1")));
    assert_eq!(
        lines(&a.join("eval/vs_m3_m1/answers_b.jsonl")),
        lines(&a.join("eval/vs_m2_m1/answers_b.jsonl"))
    );
    let report = std::fs::read_to_string(a.join("report/report.md")).unwrap();
    assert!(report.contains("| stage | seconds | peak memory (MiB) | stats |"));
    // How far apart the judge put each prompt's answers, and how often length control chose.
    assert!(report.contains("| median score range | chosen by length control |"));
    let diag: Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("iter1/diagnostics.json")).unwrap())
            .unwrap();
    assert!(diag["prompt_score_range"]["median"].is_number(), "{diag}");
    assert!(
        diag["chosen_not_top"].is_number() || diag["pairs"] == 0,
        "{diag}"
    );
    // The held-out pairs split by length, a row for every model whose judge scored such a pair.
    for m in 1..=3 {
        let metrics: Value = serde_json::from_str(
            &std::fs::read_to_string(a.join(format!("eval/judge_m{m}.jsonl.metrics.json")))
                .unwrap(),
        )
        .unwrap();
        let split = &metrics["judges"]["expected_by_length"];
        let longer = split["longer_preferred_pairs"].as_u64().unwrap();
        let shorter = split["shorter_preferred_pairs"].as_u64().unwrap();
        assert_eq!(
            report.contains(&format!("| M{m} | {longer}, ")),
            longer + shorter > 0,
            "M{m}'s length split in the report"
        );
    }
    for png in [
        "scores.png",
        "lengths.png",
        "judge.png",
        "winrates.png",
        "training.png",
    ] {
        assert!(report.contains(png), "{png} not in the report");
        let bytes = std::fs::read(a.join("report").join(png)).unwrap();
        assert_eq!(&bytes[..4], b"\x89PNG", "{png}");
    }
    for t in 1..=2 {
        let it = a.join(format!("iter{t}"));
        let prompts = lines(&it.join("prompts.jsonl"));
        assert_eq!(prompts.len(), 4);
        assert!(prompts
            .iter()
            .all(|p| p["id"].as_str().unwrap().starts_with(&format!("it{t}-"))));
        assert_eq!(lines(&it.join("candidates.jsonl")).len(), 12);
        let judgements = lines(&it.join("judgements.jsonl"));
        assert_eq!(judgements.len(), 24);
        let failures = judgements.iter().filter(|j| j["score"].is_null()).count();
        assert_eq!(
            stages[&format!("judge {t}")]["stats"]["parse_failures"].as_u64(),
            Some(failures as u64)
        );
        let pairs = lines(&it.join("pairs.jsonl"));
        assert!(!pairs.is_empty());
        assert!(pairs
            .iter()
            .all(|p| p["chosen_score"].as_f64() > p["rejected_score"].as_f64()));
        // The stage recorded the hash of its inputs.
        assert_eq!(
            stages[&format!("pairs {t}")]["inputs"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>(),
            vec![
                format!("iter{t}/candidates.jsonl"),
                format!("iter{t}/judgements.jsonl")
            ]
        );
    }
    for m in ["m1", "m2", "m3"] {
        assert!(a.join("models").join(m).join("model.safetensors").exists());
    }
    // The pairs as TRL's DPOTrainer reads them (conversational: lists of messages).
    let exported = dir.path().join("trl.jsonl");
    ok(&Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args([
            "export",
            "pairs",
            "--run",
            &a.display().to_string(),
            "--out",
            &exported.display().to_string(),
        ])
        .output()
        .unwrap());
    let rows = lines(&exported);
    let total =
        lines(&a.join("iter1/pairs.jsonl")).len() + lines(&a.join("iter2/pairs.jsonl")).len();
    assert_eq!(rows.len(), total);
    for r in &rows {
        let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
        assert_eq!(keys, vec!["chosen", "prompt", "rejected"]);
        assert_eq!(r["prompt"][0]["role"], "user");
        assert_eq!(r["chosen"][0]["role"], "assistant");
        assert_eq!(r["rejected"][0]["role"], "assistant");
    }

    // Rerunning a finished run does nothing.
    let again = ok(&srlm_run(&cfg, &a, None));
    assert_eq!(again.matches(": done (").count(), 20, "{again}");

    // The same run, crashed in four places and resumed after each.
    let b = dir.path().join("b");
    for crash in [
        "eft/judgements.jsonl:3",
        "iter1/prompts.jsonl:1",
        "iter1/judgements.jsonl:5",
        "models/m2:2",
        "iter2/candidates.jsonl:4",
    ] {
        let o = srlm_run(&cfg, &b, Some(crash));
        assert!(!o.status.success(), "no crash at {crash}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("aborting"),
            "{crash}"
        );
    }
    ok(&srlm_run(&cfg, &b, None));
    assert_same_outcome(&a, &b);
}

#[test]
fn bad_seed_and_config_are_refused_with_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let bad_seed = dir.path().join("seed.jsonl");
    std::fs::write(
        &bad_seed,
        "{\"prompt\": \"Hi\", \"response\": \"Hello\"}\n{\"prompt\": \"No reply\"}\n",
    )
    .unwrap();
    let cfg = dir.path().join("run.toml");
    let text = config(&model).replace(
        &fixtures().join("tiny_seed_ift.jsonl").display().to_string(),
        &bad_seed.display().to_string(),
    );
    std::fs::write(&cfg, &text).unwrap();
    let o = srlm_run(&cfg, &dir.path().join("r"), None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("seed.jsonl:2: field `response` is missing"),
        "{err}"
    );

    std::fs::write(&cfg, format!("{}\n[sample]\nnn = 3\n", "iterations = 1")).unwrap();
    let o = srlm_run(&cfg, &dir.path().join("r2"), None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("run.toml") && err.contains("unknown field `nn`"),
        "{err}"
    );

    // A run directory keeps its config.
    std::fs::write(&cfg, config(&model)).unwrap();
    let r3 = dir.path().join("r3");
    std::fs::create_dir_all(&r3).unwrap();
    std::fs::write(r3.join("config.toml"), "iterations = 7\n").unwrap();
    let o = srlm_run(&cfg, &r3, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("was started with another config"), "{err}");
}

#[test]
fn eval_vs_compares_both_orders_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let prompts = dir.path().join("q.jsonl");
    // Vicuna/MT-Bench question format.
    std::fs::write(
        &prompts,
        "{\"question_id\": 1, \"turns\": [\"Name a colour.\"]}\n{\"question_id\": 2, \"turns\": [\"Say hello.\", \"Again.\"]}\n",
    )
    .unwrap();
    let out = dir.path().join("vs");
    let m = model.display().to_string();
    let vs = |prompts: &str, out: &Path, tokens: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_srlm"))
            .env("SRLM_HOME", dir.path().join("home"))
            .args([
                "eval",
                "vs",
                "--a",
                &m,
                "--b",
                &m,
                "--judge",
                &m,
                "--prompts",
                prompts,
            ])
            .arg("--out")
            .arg(out)
            .args(["--weights", "dense", "--context-length", "4096"])
            .args(["--max-new-tokens", tokens, "--judge-max-new-tokens", tokens])
            .args(extra)
            .output()
            .unwrap()
    };
    let run = || vs(&prompts.display().to_string(), &out, "8", &[]);
    ok(&run());
    let s: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["compared"], 2);
    let j = lines(&out.join("judgements.jsonl"));
    let mut ids: Vec<&str> = j.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec!["1/ab", "1/ba", "2/ab", "2/ba"]);
    let w = &s["a_win_rate"];
    assert_eq!(
        w["wins"].as_u64().unwrap() + w["ties"].as_u64().unwrap() + w["losses"].as_u64().unwrap(),
        2
    );
    // Rerun: everything is there already; nothing is appended.
    ok(&run());
    assert_eq!(lines(&out.join("judgements.jsonl")).len(), 4);
    assert_eq!(lines(&out.join("answers_a.jsonl")).len(), 2);

    // The shipped questions by name, as README's commands give them.
    let shipped = dir.path().join("vs-vicuna");
    let o = vs("builtin:vicuna", &shipped, "4", &["--limit", "1"]);
    ok(&o);
    let answers = lines(&shipped.join("answers_a.jsonl"));
    assert_eq!(answers.len(), 1);
    assert_eq!(answers[0]["id"], "1", "{:?}", answers[0]);
}

#[test]
fn eval_vs_takes_b_side_from_an_earlier_head_to_head_with_the_same_settings() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let m = model.display().to_string();
    // B is a copy of the model in its own folder, so that it can be taken away below.
    let b = dir.path().join("b");
    std::fs::create_dir_all(&b).unwrap();
    for f in std::fs::read_dir(&model).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, b.join(f.file_name().unwrap())).unwrap();
    }
    let prompts = dir.path().join("q.jsonl");
    std::fs::write(
        &prompts,
        "{\"id\": \"1\", \"prompt\": \"Name a colour.\"}\n{\"id\": \"2\", \"prompt\": \"Say hello.\"}\n{\"id\": \"3\", \"prompt\": \"Count to three.\"}\n",
    )
    .unwrap();
    let vs = |out: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_srlm"))
            .args(["eval", "vs", "--a", &m, "--judge", &m, "--b"])
            .arg(&b)
            .arg("--prompts")
            .arg(&prompts)
            .arg("--out")
            .arg(dir.path().join(out))
            .args(["--mode", "scores", "--k", "2", "--weights", "dense"])
            .args(["--max-new-tokens", "8", "--judge-max-new-tokens", "8"])
            .args(extra)
            .output()
            .unwrap()
    };
    let read = |out: &str, file: &str| lines(&dir.path().join(out).join(file));
    let summary = |out: &str| -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(dir.path().join(out).join("summary.json")).unwrap(),
        )
        .unwrap()
    };
    let b_side = |out: &str| -> Vec<Value> {
        let mut j: Vec<Value> = read(out, "judgements.jsonl")
            .into_iter()
            .filter(|r| r["id"].as_str().unwrap().contains("/b/"))
            .collect();
        j.sort_by_key(|r| r["id"].as_str().unwrap().to_string());
        j
    };
    ok(&vs("first", &[]));
    ok(&vs("whole", &[]));

    // B is gone: the head-to-head can only finish by taking B's side from the first.
    std::fs::remove_dir_all(&b).unwrap();
    ok(&vs(
        "taken",
        &["--b-from", dir.path().join("first").to_str().unwrap()],
    ));
    assert_eq!(
        read("taken", "answers_b.jsonl"),
        read("first", "answers_b.jsonl")
    );
    assert_eq!(b_side("taken").len(), 6, "3 prompts x k = 2");
    assert_eq!(b_side("taken"), b_side("first"));
    // The same outcome as the head-to-head that made everything itself.
    assert_eq!(summary("taken"), summary("whole"));
    assert_eq!(read("taken", "judgements.jsonl").len(), 12);

    // Other settings (B's answers sampled with another seed): refused, naming them.
    let o = vs(
        "other",
        &[
            "--b-from",
            dir.path().join("first").to_str().unwrap(),
            "--seed",
            "7",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("made with other settings (`sampling` differ)"),
        "{err}"
    );
    assert!(!dir.path().join("other/answers_b.jsonl").exists());
}

#[test]
fn eft_keeps_judgements_that_agree_with_the_human_ranking() {
    let dir = tempfile::tempdir().unwrap();
    let trees = dir.path().join("trees.jsonl");
    let tree = |id: &str| {
        format!(
            r#"{{"message_tree_id": "{id}", "prompt": {{"text": "Question {id}?", "role": "prompter", "replies": [{{"text": "best {id}", "role": "assistant", "rank": 0}}, {{"text": "worse {id}", "role": "assistant", "rank": 1}}]}}}}"#
        )
    };
    std::fs::write(&trees, format!("{}\n{}\n", tree("t1"), tree("t2"))).unwrap();
    // As `srlm eval judge` writes them: t1's scores follow the humans, t2's are reversed.
    let j = |p: &str, reply: usize, s: usize, rank: u32, score: u32| {
        format!(
            r#"{{"id": "{p}/{reply}/{s}", "prompt_id": "{p}", "reply": {reply}, "sample": {s}, "human_rank": {rank}, "raw": "Reason.\nScore: {score}", "score": {score}}}"#
        )
    };
    let judgements = dir.path().join("j.jsonl");
    std::fs::write(
        &judgements,
        [
            j("t1", 0, 0, 0, 4),
            j("t1", 1, 0, 1, 2),
            j("t2", 0, 0, 0, 1),
            j("t2", 1, 0, 1, 3),
        ]
        .join("\n")
            + "\n",
    )
    .unwrap();
    let out = dir.path().join("eft.jsonl");
    let sft = dir.path().join("sft.jsonl");
    let model = tiny_model(dir.path());
    let o = Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args([
            "eft",
            "--data",
            &trees.display().to_string(),
            "--judgements",
            &judgements.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--no-balance",
            "--sft-out",
            &sft.display().to_string(),
            "--tokenizer",
            &model.display().to_string(),
            // The tiny model's tokenizer has a small vocabulary: the rubric alone is over 1,024 of its tokens.
            "--max-len",
            "4096",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stats: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (
            stats["prompts"].as_u64(),
            stats["prompts_agreeing"].as_u64()
        ),
        (Some(2), Some(1))
    );
    let eft = lines(&out);
    assert_eq!(eft.len(), 2);
    assert_eq!(eft[0]["instruction"], "Question t1?");
    assert_eq!(eft[0]["response"], "best t1");
    assert_eq!(
        (eft[0]["score"].as_u64(), eft[1]["score"].as_u64()),
        (Some(4), Some(2))
    );
    // The EFT file is what `srlm run`'s [seed_data] eft takes.
    assert!(eft[1]["judgement"].as_str().unwrap().ends_with("Score: 2"));
    // And `--sft-out` writes the same examples as `srlm sft` reads them: the judge prompt
    // of the instruction and reply, answered by the judgement.
    let records = lines(&sft);
    assert_eq!(records.len(), 2);
    for (r, e) in records.iter().zip(&eft) {
        let prompt = r["prompt"].as_str().unwrap();
        assert!(
            prompt.contains("Question t1?") && prompt.contains(e["response"].as_str().unwrap())
        );
        assert_eq!(r["response"], e["judgement"]);
    }
}

#[test]
fn a_run_judges_on_the_backend_its_config_names() {
    // The judge role on a remote server (a stand-in for a large fixed judge, scoring by a rule
    // no tiny model would follow); the rest of the loop local.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let s = seen.clone();
    let url = common::start(move |stream, req| {
        let body: Value = serde_json::from_str(&req.body).unwrap();
        let n = body["n"].as_u64().unwrap_or(1) as usize;
        let score = req.body.len() % 6;
        s.lock().unwrap().push(body);
        common::reply(
            stream,
            "200 OK",
            "",
            &common::chat_reply(n, &format!("Remote judge.\nScore: {score}")),
        );
    });
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let cfg_text = config(&model);
    let cfg_text = cfg_text[..cfg_text.find("[eval]").unwrap()]
        .replace("iterations = 2", "iterations = 1")
        .replace("[judge]\n", "[judge]\nbackend = \"big\"\n")
        .replace("[eft]\nlimit = 6\n", "[eft]\ndata = \"\"\n")
        + "[eval]\njudge_data = \"\"\nprompts = \"\"\n"
        + &format!(
            "[backends.big]\nbase_url = \"{url}\"\nmodel = \"judge-70b\"\nconcurrency = 2\n"
        );
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, cfg_text).unwrap();
    let out = dir.path().join("run");
    ok(&srlm_run(&cfg, &out, None));

    let judgements = lines(&out.join("iter1/judgements.jsonl"));
    assert_eq!(judgements.len(), 24);
    assert!(judgements
        .iter()
        .all(|j| j["raw"].as_str().unwrap().starts_with("Remote judge.")));
    // The k judgements of a candidate go as one request with n = k (identical candidates, which
    // a tiny model writes, share one), all for the named model.
    let seen = seen.lock().unwrap();
    assert!(
        seen.len() <= 12 && seen.len() >= 6,
        "{} requests",
        seen.len()
    );
    let n: Vec<u64> = seen.iter().map(|b| b["n"].as_u64().unwrap()).collect();
    assert_eq!(n.iter().sum::<u64>(), 24, "{n:?}");
    assert!(n.iter().all(|n| n % 2 == 0), "{n:?}");
    assert!(seen.iter().all(|b| b["model"] == "judge-70b"));
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let judge = &manifest["stages"]["judge 1"];
    let cmd: Vec<&str> = judge["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        cmd.windows(2).any(|w| w == ["--api-base", url.as_str()]),
        "{cmd:?}"
    );
    assert!(!cmd.contains(&"--model"), "{cmd:?}");
    // The server's model is no file: the stage's inputs are the candidates alone.
    assert_eq!(
        judge["inputs"]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        vec!["iter1/candidates.jsonl"]
    );
    assert!(out.join("models/m2/model.safetensors").exists());
}
