//! A loaded model: weights, tokenizer and chat template, from a GGUF file or a Hugging Face
//! folder, ready to render prompts and generate.

use crate::adapter::LoraAdapter;
use crate::chat::ChatTemplate;
use crate::config::LlamaConfig;
use crate::error::{EngineError, Result};
use crate::gguf::{GgufModel, WeightFormat};
use crate::hf::{GenerationConfig, HfModel, TokenizerConfig};
use crate::llama::{Llama, Ops, WeightSource};
use crate::tokenizer::{tokenizer_from_file, tokenizer_from_gguf, Tokenizer};
use candle_core::Device;
use srlm_core::generation::{Message, PromptInput};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub format: WeightFormat,
    pub ops: Ops,
    /// Longest prompt + completion; capped by the model's max_position_embeddings.
    pub context_length: usize,
}

impl Default for LoadOptions {
    /// The sampling setup: Q8_0 blocks for decoding and f32 for prefill, fused kernels, a
    /// 4096-token context.
    fn default() -> Self {
        Self {
            format: WeightFormat::Mixed,
            ops: Ops::Fused,
            context_length: 4096,
        }
    }
}

impl LoadOptions {
    /// The reference setup: dense f32 weights and differentiable ops.
    pub fn dense() -> Self {
        Self {
            format: WeightFormat::Dense,
            ops: Ops::Differentiable,
            ..Self::default()
        }
    }
}

pub struct Engine {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    pub chat: ChatTemplate,
    pub path: PathBuf,
    /// The special tokens' text, for the tokenizer_config.json of a checkpoint.
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

/// Builds the model from a weight source: `Llama::load` for sampling, or a trainer's wrapper
/// that turns weights into variables or adds adapters.
pub type BuildModel<'a> = dyn FnMut(&dyn WeightSource, &LlamaConfig) -> Result<Llama> + 'a;

/// A model file that is not GGUF, named for what it is: a lone safetensors or PyTorch file has
/// weights but not the config.json and tokenizer a model folder holds.
fn refuse_non_gguf(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let n = file.read(&mut head).map_err(|e| EngineError::io(path, e))?;
    let head = &head[..n];
    if head.starts_with(b"GGUF") {
        return Ok(());
    }
    // safetensors: an 8-byte little-endian header length, then the JSON header.
    let what = if n == 9 && head[8] == b'{' {
        "a safetensors file"
    } else if head.starts_with(b"PK\x03\x04") || head.starts_with(&[0x80]) {
        "a PyTorch checkpoint"
    } else {
        return Ok(()); // GGUF's own reader says what is wrong with it
    };
    let folder = path.parent().filter(|p| p.join("config.json").exists());
    Err(EngineError::model(
        path,
        format!("{what}, not a GGUF file"),
        match folder {
            Some(dir) => format!(
                "--model takes the Hugging Face folder, not one of its files: --model {}",
                dir.display()
            ),
            None => "--model takes a GGUF file or a Hugging Face model folder (config.json, tokenizer.json and model.safetensors)".to_string(),
        },
    ))
}

impl Engine {
    /// Loads a GGUF file or a Hugging Face model folder.
    pub fn load(path: &Path, opts: &LoadOptions) -> Result<Self> {
        let device = Device::Cpu;
        let mut build = |src: &dyn WeightSource, cfg: &LlamaConfig| {
            Llama::load(src, cfg, opts.ops, opts.context_length, &device)
        };
        Self::load_with(path, opts, &mut build)
    }

    /// Loads `base` with the LoRA adapter `adapter` merged into its weights (see
    /// [`crate::adapter`]); the engine's `path` stays the base's.
    pub fn load_adapted(base: &Path, adapter: &LoraAdapter, opts: &LoadOptions) -> Result<Self> {
        let device = Device::Cpu;
        let mut build = |src: &dyn WeightSource, cfg: &LlamaConfig| {
            Llama::load(src, cfg, opts.ops, opts.context_length, &device)
        };
        Self::load_adapted_with(base, adapter, opts, &mut build)
    }

    /// `load_adapted` with the model built through `build`.
    pub fn load_adapted_with(
        base: &Path,
        adapter: &LoraAdapter,
        opts: &LoadOptions,
        build: &mut BuildModel,
    ) -> Result<Self> {
        let mut over = |src: &dyn WeightSource, cfg: &LlamaConfig| {
            let merged = adapter.over(src, opts.format);
            let model = build(&merged, cfg)?;
            merged.check_all_used()?;
            Ok(model)
        };
        Self::load_with(base, opts, &mut over)
    }

    /// Loads tokenizer and template as `load` does, and the model through `build`. A PEFT
    /// adapter folder loads as its base (`base_model_name_or_path`, a local folder) with the
    /// adapter merged.
    pub fn load_with(path: &Path, opts: &LoadOptions, build: &mut BuildModel) -> Result<Self> {
        let device = Device::Cpu;
        if path.is_dir() && LoraAdapter::is_adapter_dir(path) {
            let adapter = LoraAdapter::read(path)?;
            let base = adapter.local_base()?;
            return Self::load_adapted_with(&base, &adapter, opts, build);
        }
        if path.is_dir() {
            Self::load_hf(path, opts, &device, build)
        } else if path.exists() {
            refuse_non_gguf(path)?;
            Self::load_gguf(path, opts, &device, build)
        } else {
            Err(EngineError::model(
                path,
                "no such file or folder",
                "--model takes a GGUF file or a Hugging Face model folder",
            ))
        }
    }

    fn load_gguf(
        path: &Path,
        opts: &LoadOptions,
        device: &Device,
        build: &mut BuildModel,
    ) -> Result<Self> {
        let gguf = GgufModel::open(path, opts.format, device)?;
        let cfg = gguf.config()?;
        let info = tokenizer_from_gguf(&gguf)?;
        let chat = match gguf.meta_str("tokenizer.chat_template") {
            Some(src) => {
                ChatTemplate::new(src, info.bos_token.as_deref(), info.eos_token.as_deref())?
            }
            None => ChatTemplate::chatml(),
        };
        let mut eos_ids = cfg.eos_token_ids.clone();
        add_token(&mut eos_ids, &info.tokenizer, info.eos_token.as_deref());
        let tokenizer = Tokenizer::new(info.tokenizer, cfg.bos_token_id, eos_ids);
        let model = build(&gguf, &cfg)?;
        Ok(Self {
            model,
            tokenizer,
            chat,
            path: path.to_path_buf(),
            bos_token: info.bos_token,
            eos_token: info.eos_token,
        })
    }

    fn load_hf(
        dir: &Path,
        opts: &LoadOptions,
        device: &Device,
        build: &mut BuildModel,
    ) -> Result<Self> {
        let hf = HfModel::open(dir, opts.format, device)?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.exists() {
            return Err(EngineError::model(
                dir,
                "no tokenizer.json",
                "srlm needs the fast-tokenizer file tokenizer.json in the model folder",
            ));
        }
        let inner = tokenizer_from_file(&tok_path)?;
        let tcfg = TokenizerConfig::read(dir)?;
        let gen = GenerationConfig::read(dir)?;
        let bos = tcfg.bos_token.as_ref().map(|t| t.content().to_string());
        let eos = tcfg.eos_token.as_ref().map(|t| t.content().to_string());
        let chat = match tcfg.template(dir)? {
            Some(src) => ChatTemplate::new(&src, bos.as_deref(), eos.as_deref())?,
            None => ChatTemplate::chatml(),
        };
        let mut eos_ids = gen
            .eos_token_id
            .map(|e| e.to_vec())
            .unwrap_or_else(|| hf.config.eos_token_ids.clone());
        add_token(&mut eos_ids, &inner, eos.as_deref());
        let bos_id = gen.bos_token_id.or(hf.config.bos_token_id);
        let model = build(&hf, &hf.config)?;
        Ok(Self {
            model,
            tokenizer: Tokenizer::new(inner, bos_id, eos_ids),
            chat,
            path: dir.to_path_buf(),
            bos_token: bos,
            eos_token: eos,
        })
    }

    /// The text a prompt becomes: a chat through the template (with the generation prompt),
    /// a begun assistant turn after it, raw text as it is.
    pub fn render(&self, input: &PromptInput) -> Result<String> {
        match input {
            PromptInput::Chat(messages) => self.chat.render(messages, true),
            PromptInput::Continue {
                messages,
                assistant,
            } => Ok(self.chat.render(messages, true)? + assistant),
            PromptInput::Raw(text) => Ok(text.clone()),
        }
    }

    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        self.chat.render(messages, true)
    }

    pub fn encode_prompt(&self, input: &PromptInput) -> Result<Vec<u32>> {
        self.tokenizer.encode(&self.render(input)?)
    }
}

fn add_token(ids: &mut Vec<u32>, tok: &tokenizers::Tokenizer, token: Option<&str>) {
    if let Some(id) = token.and_then(|t| tok.token_to_id(t)) {
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
}
