//! What training writes: Hugging Face model folders (config.json, model.safetensors, tokenizer
//! files, generation_config.json) that transformers and vLLM load, PEFT adapter folders, and the
//! resume state (trainable weights, optimizer moments, step) of an interrupted run.
//!
//! Every file is written to a temporary name and renamed into place; a model folder's
//! config.json is written last, so a folder that has one is whole. The resume state is a folder
//! swapped in by rename, so a crash leaves either the old state or the new one.

use crate::error::{Result, TrainError};
use crate::params::LoraConfig;
use candle_core::{DType, Device, Tensor, Var};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::json;
use srlm_engine::config::LlamaConfig;
use srlm_engine::Engine;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_name(path);
    std::fs::write(&tmp, bytes).map_err(|e| TrainError::io(&tmp, e))?;
    sync_file(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::io(path, e))
}

/// Writes f32 tensors as safetensors (with transformers' `format: pt` metadata), atomically.
pub fn write_safetensors(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let mut data: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        data.push((name.clone(), t.dims().to_vec(), v));
    }
    let mut views = BTreeMap::new();
    for (name, shape, values) in &data {
        let view = TensorView::new(Dtype::F32, shape.clone(), crate::optim::f32_bytes(values))
            .map_err(|e| TrainError::Checkpoint(format!("{name}: {e}")))?;
        views.insert(name.clone(), view);
    }
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let tmp = tmp_name(path);
    safetensors::serialize_to_file(views, Some(meta), &tmp)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", tmp.display())))?;
    sync_file(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Reads a safetensors file into f32 tensors.
pub fn read_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        TrainError::Checkpoint(format!(
            "{}: {}",
            path.display(),
            srlm_engine::error::candle_message(&e)
        ))
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialize");
    write_atomic(path, text.as_bytes())
}

/// Writes the tokenizer files: copied from a Hugging Face source folder, or (for a GGUF source)
/// the tokenizer built from its metadata with the chat template and special tokens.
fn write_tokenizer(engine: &Engine, dir: &Path) -> Result<()> {
    if engine.path.is_dir() {
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
            "chat_template.jinja",
        ] {
            let src = engine.path.join(name);
            if src.exists() {
                let bytes = std::fs::read(&src).map_err(|e| TrainError::io(&src, e))?;
                write_atomic(&dir.join(name), &bytes)?;
            }
        }
        return Ok(());
    }
    let tok_json = engine
        .tokenizer
        .inner()
        .to_string(false)
        .map_err(|e| TrainError::Checkpoint(format!("tokenizer: {e}")))?;
    write_atomic(&dir.join("tokenizer.json"), tok_json.as_bytes())?;
    let mut cfg = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": engine.chat.source,
        "clean_up_tokenization_spaces": false,
        "model_max_length": engine.model.config().max_position_embeddings,
    });
    if let Some(b) = &engine.bos_token {
        cfg["bos_token"] = json!(b);
    }
    if let Some(e) = &engine.eos_token {
        cfg["eos_token"] = json!(e);
        cfg["pad_token"] = json!(e);
    }
    write_json(&dir.join("tokenizer_config.json"), &cfg)
}

/// Writes a whole Hugging Face model folder; config.json comes last and marks it complete.
pub fn save_model(
    engine: &Engine,
    cfg: &LlamaConfig,
    state: &BTreeMap<String, Tensor>,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let config = dir.join("config.json");
    if config.exists() {
        // Whoever reads the folder while it is rewritten must not take it for whole.
        std::fs::remove_file(&config).map_err(|e| TrainError::io(&config, e))?;
    }
    write_safetensors(state, &dir.join("model.safetensors"))?;
    write_tokenizer(engine, dir)?;
    let mut gen = json!({ "_from_model_config": true });
    if let Some(b) = engine.tokenizer.bos_id {
        gen["bos_token_id"] = json!(b);
    }
    match engine.tokenizer.eos_ids.as_slice() {
        [] => {}
        [one] => gen["eos_token_id"] = json!(one),
        many => gen["eos_token_id"] = json!(many),
    }
    write_json(&dir.join("generation_config.json"), &gen)?;
    write_json(&config, &cfg.to_hf_json())
}

/// Writes a PEFT adapter folder (adapter_config.json last).
pub fn save_adapter(
    lora: &LoraConfig,
    state: &BTreeMap<String, Tensor>,
    base_model: &str,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    write_safetensors(state, &dir.join("adapter_model.safetensors"))?;
    let cfg = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": lora.target_modules,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
    });
    write_json(&dir.join("adapter_config.json"), &cfg)
}

/// The layout of `resume/` and `complete.json` this srlm writes. A state of a later format
/// is refused rather than misread; states written before the field existed are format 1.
pub const RESUME_FORMAT: u32 = 1;

fn format_one() -> u32 {
    1
}

/// The resume state's bookkeeping (`resume/state.json`, and `complete.json` once finished).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResumeInfo {
    #[serde(default = "format_one")]
    pub format_version: u32,
    /// Optimizer steps completed.
    pub step: u64,
    /// A fingerprint of the data and settings; resuming with others is refused.
    pub fingerprint: String,
    /// The settings the run trains with, for whoever reads the folder (the fingerprint is
    /// what resuming checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<crate::trainer::TrainConfig>,
}

impl ResumeInfo {
    fn check_format(&self, path: &Path) -> Result<()> {
        if self.format_version > RESUME_FORMAT {
            return Err(TrainError::Checkpoint(format!(
                "{}: format {} is newer than this srlm's ({RESUME_FORMAT})\n  hint: resume with the srlm that wrote it, or use a new --out",
                path.display(),
                self.format_version
            )));
        }
        Ok(())
    }
}

const STATE_DIR: &str = "resume";

/// Saves the trainable weights, the optimizer moments and `info` under `out/resume`.
pub fn save_resume(
    out: &Path,
    vars: &[(String, Var)],
    optimizer: &crate::optim::AdamW,
    info: &ResumeInfo,
) -> Result<()> {
    let final_dir = out.join(STATE_DIR);
    let tmp = out.join(format!(".{STATE_DIR}.tmp-{}", std::process::id()));
    let old = out.join(format!(".{STATE_DIR}.old"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    let weights: BTreeMap<String, Tensor> = vars
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    write_safetensors(&weights, &tmp.join("weights.safetensors"))?;
    optimizer.save(&tmp.join("optimizer.safetensors"))?;
    write_json(
        &tmp.join("state.json"),
        &serde_json::to_value(info).expect("serializes"),
    )?;
    // Swap: new state in, old state out. Between the renames only `.resume.old` holds a state,
    // and `load_resume` looks there too.
    if final_dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
        }
        std::fs::rename(&final_dir, &old).map_err(|e| TrainError::io(&final_dir, e))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(|e| TrainError::io(&final_dir, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| TrainError::io(&old, e))?;
    }
    Ok(())
}

/// Loads the resume state into `vars` and `optimizer`, if `out` has one. Returns its info.
pub fn load_resume(
    out: &Path,
    vars: &[(String, Var)],
    optimizer: &mut crate::optim::AdamW,
) -> Result<Option<ResumeInfo>> {
    let mut dir = out.join(STATE_DIR);
    if !dir.join("state.json").exists() {
        dir = out.join(format!(".{STATE_DIR}.old"));
        if !dir.join("state.json").exists() {
            return Ok(None);
        }
    }
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| TrainError::io(&state_path, e))?;
    let info: ResumeInfo = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", state_path.display())))?;
    info.check_format(&state_path)?;
    let weights = read_safetensors(&dir.join("weights.safetensors"))?;
    for (name, var) in vars {
        let t = weights.get(name).ok_or_else(|| {
            TrainError::Checkpoint(format!(
                "{}: no `{name}`; the resume state belongs to another model or method",
                dir.display()
            ))
        })?;
        var.set(t)?;
    }
    optimizer.load(&dir.join("optimizer.safetensors"), info.step)?;
    Ok(Some(info))
}

const COMPLETE: &str = "complete.json";

/// Marks the run in `out` finished (its model folder whole) and removes its resume state.
pub fn mark_complete(out: &Path, info: &ResumeInfo) -> Result<()> {
    write_json(
        &out.join(COMPLETE),
        &serde_json::to_value(info).expect("serializes"),
    )?;
    for dir in [out.join(STATE_DIR), out.join(format!(".{STATE_DIR}.old"))] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| TrainError::io(&dir, e))?;
        }
    }
    Ok(())
}

/// The marker of a finished run in `out`, if there is one.
pub fn completed(out: &Path) -> Result<Option<ResumeInfo>> {
    let path = out.join(COMPLETE);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| TrainError::io(&path, e))?;
    let info: ResumeInfo = serde_json::from_str(&text)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))?;
    info.check_format(&path)?;
    Ok(Some(info))
}

/// The file that says a training output folder is srlm's: written when the trainer first
/// claims the folder, before anything else goes in.
pub const OWNER_FILE: &str = "srlm-train.json";

/// Makes `out` this trainer's output folder, or refuses to. A folder is the trainer's when it
/// is missing, empty, or holds the trainer's own marks (its owner file, its resume state or
/// its finished-run marker); anything else (a model someone else wrote, a folder of notes) is
/// left untouched unless `overwrite` says the model files in it may be replaced.
pub fn claim_out_dir(out: &Path, overwrite: bool) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(TrainError::Checkpoint(format!(
            "{} is a file; the output of training is a folder\n  hint: choose a folder for --out",
            out.display()
        )));
    }
    let ours = [OWNER_FILE, COMPLETE, STATE_DIR]
        .iter()
        .any(|name| out.join(name).exists());
    let first_foreign = srlm_core::jsonl::first_entry(out)?;
    if let (false, Some(name), false) = (ours, &first_foreign, overwrite) {
        return Err(TrainError::Checkpoint(format!(
            "{} already holds files srlm's trainer did not write (such as {name}); srlm will not write a model over them\n  hint: choose a new --out, or pass --overwrite to replace the model files in it",
            out.display()
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    if !out.join(OWNER_FILE).exists() {
        write_json(
            &out.join(OWNER_FILE),
            &serde_json::json!({"written_by": "srlm", "version": env!("CARGO_PKG_VERSION")}),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_of_a_later_format_is_refused_and_one_without_a_format_is_format_one() {
        let dir = tempfile::tempdir().unwrap();
        let info = ResumeInfo {
            format_version: RESUME_FORMAT,
            step: 3,
            fingerprint: "f".into(),
            config: Some(crate::trainer::TrainConfig::default()),
        };
        mark_complete(dir.path(), &info).unwrap();
        assert_eq!(completed(dir.path()).unwrap(), Some(info));
        // Written before the format and the config were recorded.
        std::fs::write(
            dir.path().join(COMPLETE),
            r#"{"step": 3, "fingerprint": "f"}"#,
        )
        .unwrap();
        let old = completed(dir.path()).unwrap().unwrap();
        assert_eq!((old.format_version, old.config), (1, None));
        let later = format!(
            r#"{{"format_version": {}, "step": 3, "fingerprint": "f"}}"#,
            RESUME_FORMAT + 1
        );
        std::fs::write(dir.path().join(COMPLETE), later).unwrap();
        let e = completed(dir.path()).unwrap_err().to_string();
        assert!(e.contains("newer than this srlm"), "{e}");
    }

    #[test]
    fn a_folder_the_trainer_did_not_write_is_refused_without_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = dir.path().join("their-model");
        std::fs::create_dir_all(&theirs).unwrap();
        std::fs::write(theirs.join("model.safetensors"), b"weights").unwrap();
        let err = claim_out_dir(&theirs, false).unwrap_err().to_string();
        assert!(err.contains("such as model.safetensors"), "{err}");
        assert!(err.contains("--overwrite"), "{err}");
        assert!(!theirs.join(OWNER_FILE).exists());
        claim_out_dir(&theirs, true).unwrap();
        assert!(theirs.join(OWNER_FILE).exists());

        // A new folder, an empty one, and one the trainer already claimed are the trainer's.
        let fresh = dir.path().join("new");
        claim_out_dir(&fresh, false).unwrap();
        std::fs::write(fresh.join("metrics.jsonl"), b"").unwrap();
        claim_out_dir(&fresh, false).unwrap();
        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        claim_out_dir(&empty, false).unwrap();

        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        assert!(claim_out_dir(&file, true)
            .unwrap_err()
            .to_string()
            .contains("is a file"));
    }
}
