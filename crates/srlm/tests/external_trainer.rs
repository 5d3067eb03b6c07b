//! `srlm run` with SFT and DPO done outside srlm (`[sft] trainer`, `[dpo] trainer`): a stand-in
//! DPO trainer (a shell script that copies M_t) through the tiny two-iteration run, killed
//! mid-way and rerun, failing, and writing nothing loadable; `srlm sft` as an outside SFT
//! trainer of the TRL-format data; and real TRL (PyPI `trl` + `torch`, in the environment
//! `scripts/trl_venv.sh` makes) training M1, M2 and M3 while the generating roles run on `srlm
//! serve` servers the run launches, each iteration's server serving the model TRL wrote.

mod common;

use common::tiny_model;
use common::tiny_run::{
    assert_same_outcome, config, manifest, marked, ok, served_models, spawn_run, srlm_run,
    wait_until,
};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The tiny run's config with `[dpo] trainer = trainer`.
fn with_trainer(model: &Path, trainer: &str) -> String {
    config(model).replace("[dpo]\n", &format!("[dpo]\ntrainer = {trainer:?}\n"))
}

/// A stand-in trainer: prints a line, sleeps the first time it runs (while `flag` is absent),
/// then "trains" by copying M_t's folder to M_(t+1)'s.
fn fake_trainer(dir: &Path, flag: &Path) -> String {
    let script = dir.join("fake_trainer.sh");
    std::fs::write(
        &script,
        format!(
            "echo \"training $1 on $2\"\n\
             if [ ! -e {flag} ]; then touch {flag}; echo sleeping; sleep 60; fi\n\
             cp -r \"$1\" \"$3\"\n\
             echo done\n",
            flag = flag.display()
        ),
    )
    .unwrap();
    format!("sh {} {{model}} {{pairs}} {{out}}", script.display())
}

#[test]
fn an_external_trainer_trains_each_iteration_and_is_stopped_with_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let flag = d.join("slept");
    let cfg = d.join("run.toml");
    std::fs::write(&cfg, with_trainer(&model, &fake_trainer(d, &flag))).unwrap();

    // Uninterrupted (the trainer does not sleep).
    std::fs::write(&flag, "").unwrap();
    let a = d.join("a");
    let stderr = ok(&srlm_run(&cfg, &a, None));
    assert!(
        stderr.contains("  training "),
        "its output is streamed: {stderr}"
    );
    let m = manifest(&a);
    let line = m["stages"]["dpo m3"]["command"][1].as_str().unwrap();
    assert!(
        line.contains("fake_trainer.sh") && line.ends_with("/models/m3"),
        "{line}"
    );
    assert!(line.contains("/iter2/pairs.trl.jsonl"), "{line}");
    let log = std::fs::read_to_string(a.join("trainers/dpo-m2.log")).unwrap();
    assert!(log.contains("done"), "{log}");
    assert!(a.join("models/m3/srlm-external.json").exists());
    // TRL's conversational format, one line per pair.
    let pairs = std::fs::read_to_string(a.join("iter1/pairs.jsonl")).unwrap();
    let trl = std::fs::read_to_string(a.join("iter1/pairs.trl.jsonl")).unwrap();
    assert_eq!(pairs.lines().count(), trl.lines().count());
    assert!(trl.starts_with("{\"chosen\":[{\"content\":"), "{trl}");

    // Killed (srlm alone, SIGKILL) while the trainer sleeps: nothing of it survives, and the
    // rerun trains again and ends as the uninterrupted run.
    std::fs::remove_file(&flag).unwrap();
    let b = d.join("b");
    let mut child = spawn_run(&cfg, &b).spawn().unwrap();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        if line.unwrap() == "  sleeping" {
            break;
        }
    }
    assert!(
        !marked(&b).is_empty(),
        "the trainer and its sleep are marked"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        wait_until(|| marked(&b).is_empty(), Duration::from_secs(10)),
        "the trainer outlived the run killed under it"
    );
    ok(&srlm_run(&cfg, &b, None));
    assert_same_outcome(&a, &b);
}

#[test]
fn a_trainer_that_fails_or_writes_no_model_fails_its_stage_with_its_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let run = |name: &str, trainer: &str| -> (String, PathBuf) {
        let cfg = d.join(format!("{name}.toml"));
        let text = with_trainer(&model, trainer).replace("[eft]\n", "[eft]\ndata = \"\"\n");
        std::fs::write(&cfg, text).unwrap();
        let out = d.join(name);
        let o = srlm_run(&cfg, &out, None);
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "{name}: {stderr}");
        (stderr, out)
    };

    let (err, out) = run(
        "fails",
        "sh -c 'echo training {model} on {pairs} into {out}; echo CUDA out of memory >&2; exit 1'",
    );
    assert!(
        err.contains("stage `dpo m2`: the trainer failed (exit status: 1)"),
        "{err}"
    );
    assert!(err.contains("CUDA out of memory"), "{err}");
    assert!(err.contains("hint: run the command by hand"), "{err}");
    // The iteration's other stages stay done.
    assert!(manifest(&out)["stages"]["pairs 1"].is_object());

    let (err, _) = run(
        "writes-nothing",
        "sh -c 'mkdir -p {out}; echo {model} {pairs}'",
    );
    assert!(err.contains("the trainer exited 0 but"), "{err}");
    assert!(err.contains("does not load as a model"), "{err}");

    // A command the trainer could not train from is refused before anything runs.
    let cfg = d.join("no-out.toml");
    std::fs::write(
        &cfg,
        with_trainer(&model, "accelerate launch train.py {model} {pairs}"),
    )
    .unwrap();
    let o = srlm_run(&cfg, &d.join("no-out"), None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`dpo.trainer`") && err.contains("has no `{out}`"),
        "{err}"
    );
    assert!(!d.join("no-out").exists());
}

#[test]
fn an_external_sft_trainer_trains_m1_from_the_trl_form_of_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    // srlm's own SFT, run as a command on the TRL file: the plumbing without TRL's numbers.
    let sft = format!(
        "{} sft --data {{data}} --model {{model}} --out {{out}} --lr {{lr}} --min-lr {{lr}} --epochs {{epochs}} --seed {{seed}} --micro-batch 4 --grad-accum 1 --max-len 2048",
        env!("CARGO_BIN_EXE_srlm")
    );
    let text = config(&model).replace("[sft]\n", &format!("[sft]\ntrainer = {sft:?}\n"));
    let cfg = d.join("run.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = d.join("run");
    ok(&srlm_run(&cfg, &out, None));
    let m = manifest(&out);
    for (stage, data, from) in [
        ("sft m1-seed", "/seed/sft.trl.jsonl", "tiny"),
        ("sft m1", "/eft/sft.trl.jsonl", "/models/m1-seed"),
    ] {
        let line = m["stages"][stage]["command"][1].as_str().unwrap();
        assert!(
            line.contains(data) && line.contains(from),
            "{stage}: {line}"
        );
        assert!(
            line.contains(" --lr 0.003 ") && line.contains(" --seed 0 "),
            "{line}"
        );
    }
    let trl = std::fs::read_to_string(out.join("seed/sft.trl.jsonl")).unwrap();
    let seed = std::fs::read_to_string(out.join("seed/sft.jsonl")).unwrap();
    assert_eq!(trl.lines().count(), seed.lines().count());
    let first: serde_json::Value = serde_json::from_str(trl.lines().next().unwrap()).unwrap();
    assert_eq!(first["prompt"][0]["role"], "user", "{first}");
    assert_eq!(first["completion"][0]["role"], "assistant", "{first}");
    assert!(out.join("trainers/sft-m1-seed.log").exists());
    assert!(out.join("models/m1/srlm-external.json").exists());

    // A command without the data it trains on is refused before anything runs.
    let bad = config(&model).replace("[sft]\n", "[sft]\ntrainer = \"train {model} {out}\"\n");
    std::fs::write(&cfg, bad).unwrap();
    let o = srlm_run(&cfg, &d.join("bad"), None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("`sft.trainer`") && err.contains("has no `{data}`"),
        "{err}"
    );
}

/// `[backends.srv]`: `srlm serve FLAGS` launched by the run on each model it needs.
fn served_by(flags: &str) -> String {
    format!(
        "[backends.srv]\nlaunch = \"{} serve {flags}--model {{model}} --port {{port}} --weights dense --context-length 4096\"\nstartup_timeout_s = 60\n",
        env!("CARGO_BIN_EXE_srlm")
    )
}

/// `config` with no bootstrap nor held-out judging, sampling and judging on the backend
/// `serve` (a `[backends.srv]` section).
fn on_served(config: &str, serve: &str) -> String {
    config
        .replace("[eft]\n", "[eft]\ndata = \"\"\n")
        .replace("[sample]\n", "[sample]\nbackend = \"srv\"\n")
        .replace("[judge]\n", "[judge]\nbackend = \"srv\"\n")
        .replace("[eval]\n", "[eval]\njudge_data = \"\"\n")
        + serve
}

/// `srlm run` of the config `text` in `dir/run`, with the environment `scripts/trl_venv.sh`
/// makes first on PATH; the run directory and stderr, after checking that it succeeded.
fn run_with_trl(dir: &Path, text: &str) -> (PathBuf, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/trl_venv.sh");
    let o = Command::new("bash").arg(&script).output().unwrap();
    assert!(
        o.status.success(),
        "making the TRL environment failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bin = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let cfg = dir.join("run.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = dir.join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_srlm"))
        .args([
            "run",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .env(
            "PATH",
            format!("{bin}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .unwrap();
    let stderr = ok(&o);
    (out, stderr)
}

#[test]
fn trl_trains_each_iteration_served_by_a_server_the_run_launches() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let serve = served_by("");
    let config = with_trainer(&model, "trl")
        // TRL's rate decays to 0 where the fixture's stays at 0.003: three times the epochs
        // teach the random tiny model the judge's format (at the fixture's 20, TRL's loss
        // ends at 2.9 and its M1 writes no score; srlm's at 1.5). One SFT (no bootstrap):
        // the bootstrap's own test is srlm's, in run_cli.rs.
        .replace("[sft]\n", "[sft]\ntrainer = \"trl\"\n")
        .replace("epochs = 20\n", "epochs = 60\n");
    let (out, stderr) = run_with_trl(d, &on_served(&config, &serve));
    // TRL wrote M1, M2 and M3 (its training arguments and metrics beside the weights) ...
    for m in ["m1", "m2", "m3"] {
        let folder = out.join("models").join(m);
        assert!(folder.join("training_args.bin").exists(), "{m}: {stderr}");
        let metrics = std::fs::read_to_string(folder.join("metrics.jsonl")).unwrap();
        let dpo = m != "m1";
        assert_eq!(metrics.contains("rewards/margins"), dpo, "{m}: {metrics}");
        assert!(metrics.contains("\"loss\""), "{m}: {metrics}");
    }
    assert!(manifest(&out)["stages"]["dpo m2"]["stats"]["train_loss"].is_number());
    // ... and the server of iteration 2 served the M2 that TRL wrote.
    let log = std::fs::read_to_string(out.join("servers/srv.log")).unwrap();
    let served = served_models(&log);
    assert_eq!(served, ["m1", "m2"], "{log}");
    assert!(stderr.contains("eval vs m3 m1"), "{stderr}");
}

#[test]
fn trl_trains_lora_adapters_that_one_launched_server_loads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(d);
    let serve = served_by("--enable-lora ") + "reload = \"lora\"\n";
    // M1 by srlm's SFT (no bootstrap); M2 and M3 by TRL's DPO with LoRA, M3 continuing M2's
    // adapter over M1; sampling and judging on one server of M1 that loads each adapter.
    let config = with_trainer(&model, "trl").replace("[dpo]\n", "[dpo]\nlora_rank = 4\n");
    let (out, stderr) = run_with_trl(d, &on_served(&config, &serve));
    let m1 = out.join("models/m1");
    let command = |stage: &str| {
        manifest(&out)["stages"][stage]["command"][1]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        command("dpo m2").contains("--lora-rank 4 --lora-alpha 8"),
        "{}",
        command("dpo m2")
    );
    assert!(
        !command("dpo m2").contains("--adapter"),
        "{}",
        command("dpo m2")
    );
    let dpo3 = command("dpo m3");
    assert!(
        dpo3.contains(&format!("--model {} ", m1.display()))
            && dpo3.ends_with(&format!(
                "--adapter {}",
                out.join("models/m2/adapter").display()
            )),
        "{dpo3}"
    );
    // Each adapter TRL wrote is over M1 and is the model TRL merged beside it.
    let ids = candle_core::Tensor::new(
        &[[5u32, 17, 33, 60, 2, 90, 11, 40]],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let opts = srlm_engine::LoadOptions::dense();
    for m in ["m2", "m3"] {
        let folder = out.join("models").join(m);
        let adapter = srlm_engine::adapter::LoraAdapter::read(&folder.join("adapter")).unwrap();
        assert_eq!(
            adapter.base_model.as_deref(),
            Some(m1.to_str().unwrap()),
            "{m}"
        );
        let over = srlm_engine::Engine::load_adapted(&m1, &adapter, &opts).unwrap();
        let merged = srlm_engine::Engine::load(&folder, &opts).unwrap();
        let diff = srlm_engine::kernels::check::max_abs_diff(
            &over.model.forward(&ids).unwrap(),
            &merged.model.forward(&ids).unwrap(),
        )
        .unwrap();
        assert!(
            diff < 1e-3,
            "{m}: adapter over M1 and TRL's merged model differ by {diff}"
        );
    }
    // One server, of M1, for both iterations; M2 loaded into it as an adapter.
    let log = std::fs::read_to_string(out.join("servers/srv.log")).unwrap();
    assert_eq!(served_models(&log), ["m1"], "{log}");
    assert_eq!(log.matches("serving adapter `m2`").count(), 1, "{log}");
    assert!(stderr.contains("eval vs m3 m1"), "{stderr}");
}
