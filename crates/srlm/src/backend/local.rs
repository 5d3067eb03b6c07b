//! The local engine as a backend: continuous batching with prefix reuse, on this machine.

use super::{Backend, GenRequest, Generated, Outcome};
use anyhow::Result;
use srlm_core::generation::PromptInput;
use srlm_engine::generate::{Event, Generator, Request};
use srlm_engine::Engine;
use std::collections::HashMap;

pub struct LocalBackend {
    pub engine: Engine,
    /// Sequences decoded together.
    pub batch_size: usize,
}

impl LocalBackend {
    pub fn new(engine: Engine, batch_size: usize) -> Self {
        Self {
            engine,
            batch_size: batch_size.max(1),
        }
    }
}

impl Backend for LocalBackend {
    fn describe(&self) -> String {
        self.engine.path.display().to_string()
    }

    fn generate(
        &self,
        requests: Vec<GenRequest>,
        on_outcome: &mut dyn FnMut(Outcome) -> Result<()>,
    ) -> Result<()> {
        let mut gen = Generator::new(&self.engine.model, &self.engine.tokenizer);
        gen.max_batch = self.batch_size;
        // Each distinct prompt is rendered and tokenized once (k judgements share one).
        let mut encoded: HashMap<PromptInput, Vec<u32>> = HashMap::new();
        let mut todo = Vec::with_capacity(requests.len());
        for r in requests {
            let ids = match encoded.get(&r.prompt) {
                Some(ids) => ids.clone(),
                None => {
                    let ids = self.engine.encode_prompt(&r.prompt)?;
                    encoded.insert(r.prompt.clone(), ids.clone());
                    ids
                }
            };
            let req = Request {
                id: r.id,
                prompt_ids: ids,
                params: r.params,
            };
            // A prompt the context cannot hold fails alone instead of stopping the run.
            if let Err(e) = gen.check(&req) {
                on_outcome(Outcome::Failed {
                    id: req.id,
                    error: e.to_string(),
                })?;
                continue;
            }
            todo.push(req);
        }
        if todo.is_empty() {
            return Ok(());
        }
        // The callback's error stops the generator (`Stopped`) and is returned as it was.
        let mut failed: Option<anyhow::Error> = None;
        let run = gen.run(todo, |ev| {
            if let Event::Done(c) = ev {
                let out = Outcome::Done(Generated {
                    completion_tokens: Some(c.token_ids.len()),
                    prompt_tokens: Some(c.prompt_tokens),
                    id: c.id,
                    text: c.text,
                    finish_reason: c.finish_reason,
                    logprobs: c.logprobs,
                    forced_verdict: None,
                });
                if let Err(e) = on_outcome(out) {
                    let msg = format!("{e:#}");
                    failed = Some(e);
                    return Err(srlm_engine::EngineError::Stopped(msg));
                }
            }
            Ok(())
        });
        match (run, failed) {
            (_, Some(e)) => Err(e),
            (r, None) => r.map(|_| ()).map_err(Into::into),
        }
    }
}
