//! `srlm run` with servers it starts itself (`[backends.NAME] launch`): the tiny two-iteration
//! run with its prompt writing, sampling, judging and head-to-head judging on `srlm serve`
//! processes the run launches for each model (M1, then M2, then M1 again as the fixed judge),
//! one server kept across the stages that share a model; killed with SIGKILL while a server
//! is up, no process of it survives and the rerun ends as the uninterrupted run; and a server
//! that exits early, never answers or answers 503 fails its stage with its log's tail.

mod common;

use common::tiny_model;
use common::tiny_run::{
    assert_same_outcome, config, marked, ok, served_models, spawn_run, srlm_run, wait_until,
};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The tiny run's config with its generating roles on `[backends.srv]`, whose section is
/// `backend` (TOML lines).
fn launched_config(model: &Path, backend: &str) -> String {
    config(model)
        .replace("[prompts]\n", "[prompts]\nbackend = \"srv\"\n")
        .replace("[sample]\n", "[sample]\nbackend = \"srv\"\n")
        .replace("[judge]\n", "[judge]\nbackend = \"srv\"\n")
        .replace("[eval]\n", "[eval]\nvs_backend = \"srv\"\n")
        + &format!("[backends.srv]\n{backend}\n")
}

/// `srlm serve` as the launched server, on the stage's model and the port srlm picks. One
/// request at a time, each completion its own request: a server that batches requests as they
/// arrive changes the last bits of the judge's distributions with the batch, and the tiny
/// model's candidates are near-ties that those bits decide, so the runs compared here are made
/// reproducible this way (with several requests in flight they are equal but for such ties).
fn serve_backend() -> String {
    format!(
        "launch = \"{} serve --model {{model}} --port {{port}} --weights dense --context-length 4096 --batch-size 8\"\nstartup_timeout_s = 60\nconcurrency = 1\nn_per_request = false",
        env!("CARGO_BIN_EXE_srlm")
    )
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_run_serves_each_model_on_a_server_it_launches_and_leaves_none_behind() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, launched_config(&model, &serve_backend())).unwrap();

    // Uninterrupted.
    let a = dir.path().join("a");
    let stderr = ok(&srlm_run(&cfg, &a, None));
    let log = std::fs::read_to_string(a.join("servers/srv.log")).unwrap();
    let served = served_models(&log);
    // One server per model in turn: the bootstrap's judgements by M1-seed, prompts, samples
    // and judgements of iteration 1 by M1, of iteration 2 by M2 (what DPO wrote), each model
    // judging the held-out ranked replies, then both head-to-heads judged by M1.
    let order = ["m1-seed", "m1", "m2", "m1", "m2", "m3", "m1"];
    assert_eq!(served, order, "{log}");
    for event in ["started", "stopped"] {
        let n = stderr
            .matches(&format!("srlm: {event} [backends.srv]"))
            .count();
        assert_eq!(n, order.len(), "{stderr}");
    }
    assert!(marked(&a).is_empty());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("manifest.json")).unwrap()).unwrap();
    let judge2 = &manifest["stages"]["judge 2"];
    assert!(
        judge2["server"]
            .as_str()
            .unwrap()
            .contains("/models/m2 --port"),
        "{judge2}"
    );
    let line = judge2["command"].as_array().unwrap();
    let base = line.iter().position(|a| a == "--api-base").unwrap();
    assert!(line[base + 1]
        .as_str()
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    assert!(manifest["stages"]["pairs 2"]["server"].is_null());
    let eval3 = &manifest["stages"]["eval judge m3"];
    assert!(
        eval3["server"]
            .as_str()
            .unwrap()
            .contains("/models/m3 --port"),
        "{eval3}"
    );

    // Killed (srlm alone, SIGKILL) while the server of sample 2 is up, then rerun.
    let b = dir.path().join("b");
    let mut child = spawn_run(&cfg, &b).spawn().unwrap();
    let mut server_pid = None;
    let mut in_iteration_2 = false;
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        in_iteration_2 |= line.contains("] sample 2: srlm");
        if let Some(rest) = line.strip_prefix("srlm: started [backends.srv] (pid ") {
            server_pid = rest.split(')').next().unwrap().parse::<i32>().ok();
        }
        if in_iteration_2 && line.contains("srlm: [backends.srv] is up at") {
            break;
        }
    }
    let server_pid = server_pid.expect("a server was started");
    assert!(alive(server_pid));
    child.kill().unwrap(); // SIGKILL: no handler of srlm's runs
    child.wait().unwrap();
    assert!(
        wait_until(
            || !alive(server_pid) && marked(&b).is_empty(),
            Duration::from_secs(10)
        ),
        "the server (pid {server_pid}) outlived the run killed under it"
    );
    ok(&srlm_run(&cfg, &b, None));
    assert!(marked(&b).is_empty());
    assert_same_outcome(&a, &b);
}

#[test]
fn with_reload_lora_one_server_of_m1_loads_each_later_model_as_its_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    // LoRA DPO: M2 and M3 are adapters over M1 (M3 continuing M2's).
    let lora = |backend: &str| {
        launched_config(&model, backend).replace("[dpo]\n", "[dpo]\nlora_rank = 4\n")
    };
    let lora_server = serve_backend().replace("serve --model", "serve --enable-lora --model")
        + "\nreload = \"lora\"";

    let a = dir.path().join("adapters");
    let cfg = dir.path().join("adapters.toml");
    std::fs::write(&cfg, lora(&lora_server)).unwrap();
    let stderr = ok(&srlm_run(&cfg, &a, None));
    let log = std::fs::read_to_string(a.join("servers/srv.log")).unwrap();
    // The bootstrap's judge, then one server of M1 to the end: through both DPO stages, every
    // later model's stages and the evaluation, each M_t after M1 loaded once as an adapter.
    assert_eq!(served_models(&log), ["m1-seed", "m1"], "{log}");
    for t in [2, 3] {
        let line = format!(
            "serving adapter `m{t}` from {}",
            a.join(format!("models/m{t}/adapter")).display()
        );
        assert_eq!(log.matches(&line).count(), 1, "{log}");
        assert_eq!(
            stderr
                .matches(&format!("loaded the adapter `m{t}`"))
                .count(),
            1,
            "{stderr}"
        );
    }
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("manifest.json")).unwrap()).unwrap();
    let judge2 = manifest["stages"]["judge 2"]["command"].as_array().unwrap();
    let at = judge2.iter().position(|a| a == "--api-model").unwrap();
    assert_eq!(judge2[at + 1], "m2");
    let dpo3 = manifest["stages"]["dpo m3"]["command"].as_array().unwrap();
    let at = dpo3.iter().position(|a| a == "--adapter").unwrap();
    assert!(
        dpo3[at + 1]
            .as_str()
            .unwrap()
            .ends_with("models/m2/adapter"),
        "{dpo3:?}"
    );
    let at = dpo3.iter().position(|a| a == "--model").unwrap();
    assert!(
        dpo3[at + 1].as_str().unwrap().ends_with("models/m1"),
        "{dpo3:?}"
    );
    assert!(marked(&a).is_empty());

    // The same run with a server restarted on each merged model: the same records.
    let b = dir.path().join("restarts");
    let cfg = dir.path().join("restarts.toml");
    std::fs::write(&cfg, lora(&serve_backend())).unwrap();
    ok(&srlm_run(&cfg, &b, None));
    let log = std::fs::read_to_string(b.join("servers/srv.log")).unwrap();
    assert_eq!(
        served_models(&log),
        ["m1-seed", "m1", "m2", "m1", "m2", "m3", "m1"],
        "{log}"
    );
    assert_same_outcome(&a, &b);
}

/// `srlm run` of `backend` as `[backends.srv]` (the bootstrap off); its stderr and run
/// directory, after checking that it failed.
fn failing_run(dir: &Path, name: &str, backend: &str) -> (String, PathBuf) {
    let model = dir.join("tiny");
    if !model.exists() {
        tiny_model(dir);
    }
    let cfg = dir.join(format!("{name}.toml"));
    // Without the judge bootstrap: the first stage on the server comes sooner.
    let text = launched_config(&model, backend).replace("[eft]\n", "[eft]\ndata = \"\"\n");
    std::fs::write(&cfg, text).unwrap();
    let out = dir.join(name);
    let o = srlm_run(&cfg, &out, None);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "{name}: {stderr}");
    (stderr, out)
}

#[test]
fn a_server_that_does_not_come_up_fails_its_stage_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Exits at once.
    let (err, out) = failing_run(
        d,
        "exits",
        "launch = \"sh -c 'echo cannot load {model} on {port}; exit 3'\"",
    );
    assert!(err.contains("stage `prompts 1`"), "{err}");
    assert!(
        err.contains("[backends.srv]: the server exited before it answered"),
        "{err}"
    );
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(
        err.contains("cannot load") && err.contains("models/m1"),
        "{err}"
    );
    assert!(err.contains("hint: run the command by hand"), "{err}");
    // Nothing earlier is lost: the stages before it stay done for the rerun.
    let manifest = std::fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(manifest.contains("\"sft m1\""), "{manifest}");
    assert!(out.join("models/m1/config.json").exists());

    // Never answers: stopped after its startup timeout, and nothing of it is left running.
    let (err, out) = failing_run(
        d,
        "silent",
        "base_url = \"http://127.0.0.1:9/v1\"\nlaunch = \"sleep 60\"\nstartup_timeout_s = 1.5",
    );
    assert!(err.contains("the server was not up within 2 s"), "{err}");
    assert!(
        err.contains("GET http://127.0.0.1:9/v1/models did not answer"),
        "{err}"
    );
    assert!(
        marked(&out).is_empty(),
        "the silent server was left running"
    );

    // Answers 503 for ever (a server still loading its weights, stuck).
    std::fs::write(
        d.join("always503.py"),
        "import http.server, sys\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20   def do_GET(self):\n\
         \x20       self.send_response(503); self.end_headers(); self.wfile.write(b'loading')\n\
         \x20   def log_message(self, *a):\n\
         \x20       print('still loading', flush=True)\n\
         http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()\n",
    )
    .unwrap();
    let (err, out) = failing_run(
        d,
        "unavailable",
        &format!(
            "launch = \"python3 {} {{port}}\"\nstartup_timeout_s = 2",
            d.join("always503.py").display()
        ),
    );
    assert!(err.contains("answered HTTP 503"), "{err}");
    assert!(err.contains("still loading"), "{err}");
    assert!(marked(&out).is_empty());
}
