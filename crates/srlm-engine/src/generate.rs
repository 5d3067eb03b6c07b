//! Batched generation with continuous batching: up to `max_batch` sequences decode together,
//! each with its own KV cache and sampler; a finished sequence leaves at once (its completion is
//! reported then) and the next request takes its place.

use crate::error::{EngineError, Result};
use crate::llama::{KvCache, Llama};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use srlm_core::generation::FinishReason;

#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub prompt_ids: Vec<u32>,
    pub params: SamplingParams,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub id: String,
    pub text: String,
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
}

/// What the generator reports as it goes.
pub enum Event<'a> {
    /// New text of request `id` (for streaming).
    Text {
        id: &'a str,
        piece: &'a str,
    },
    Done(Completion),
}

struct Sequence {
    req: Request,
    cache: KvCache,
    sampler: Sampler,
    /// Tokens to feed at the next step: the prompt first, then each sampled token.
    pending: Vec<u32>,
    generated: Vec<u32>,
    decoder: StreamDecoder,
    text: String,
}

pub struct Generator<'a> {
    model: &'a Llama,
    tokenizer: &'a Tokenizer,
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Prompt tokens fed per step, summed over sequences (bounds activation memory).
    pub prefill_chunk: usize,
}

impl<'a> Generator<'a> {
    pub fn new(model: &'a Llama, tokenizer: &'a Tokenizer) -> Self {
        Self {
            model,
            tokenizer,
            max_batch: 16,
            prefill_chunk: 2048,
        }
    }

    /// Checks that a request fits the context: the prompt plus at least one new token.
    pub fn check(&self, req: &Request) -> Result<()> {
        let context = self.model.max_positions();
        if req.prompt_ids.is_empty() || req.prompt_ids.len() >= context {
            return Err(EngineError::PromptTooLong {
                id: req.id.clone(),
                prompt_tokens: req.prompt_ids.len(),
                context,
            });
        }
        Ok(())
    }

    /// Generates for every request, reporting text and completions through `on_event` as they
    /// happen; completions come in the order they finish.
    pub fn run(
        &self,
        requests: impl IntoIterator<Item = Request>,
        mut on_event: impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<()> {
        let mut queue = requests.into_iter();
        let mut active: Vec<Sequence> = Vec::new();
        let mut exhausted = false;
        loop {
            while !exhausted && active.len() < self.max_batch {
                match queue.next() {
                    Some(req) => {
                        self.check(&req)?;
                        active.push(Sequence {
                            cache: KvCache::new(),
                            sampler: Sampler::new(req.params.clone()),
                            pending: req.prompt_ids.clone(),
                            generated: Vec::new(),
                            decoder: StreamDecoder::new(),
                            text: String::new(),
                            req,
                        });
                    }
                    None => exhausted = true,
                }
            }
            if active.is_empty() {
                return Ok(());
            }
            self.step(&mut active, &mut on_event)?;
        }
    }

    /// One forward pass over every active sequence, then one sampled token for each that has
    /// consumed its whole prompt.
    fn step(
        &self,
        active: &mut Vec<Sequence>,
        on_event: &mut impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<()> {
        // Feed prompts in chunks so one long prompt cannot blow up activation memory.
        let mut budget = self.prefill_chunk.max(active.len());
        let mut feeds: Vec<usize> = Vec::with_capacity(active.len());
        for s in active.iter() {
            let n = s.pending.len().min(budget.max(1));
            budget = budget.saturating_sub(n);
            feeds.push(n);
        }
        let (idx, lens): (Vec<usize>, Vec<usize>) = feeds
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(i, &n)| (i, n))
            .unzip();
        let tokens: Vec<Vec<u32>> = idx
            .iter()
            .zip(&lens)
            .map(|(&i, &n)| active[i].pending[..n].to_vec())
            .collect();
        let token_refs: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
        // Move the caches out for the pass (cheap: tensors are reference-counted), then back.
        let mut caches: Vec<KvCache> = idx
            .iter()
            .map(|&i| std::mem::take(&mut active[i].cache))
            .collect();
        let mut cache_refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let logits = self.model.forward_segments(&token_refs, &mut cache_refs)?;
        for (&i, cache) in idx.iter().zip(caches) {
            active[i].cache = cache;
        }
        let logits: Vec<Vec<f32>> = logits.to_dtype(candle_core::DType::F32)?.to_vec2()?;
        let mut finished = Vec::new();
        for ((&i, &n), mut row) in idx.iter().zip(&lens).zip(logits) {
            let s = &mut active[i];
            s.pending.drain(..n);
            if !s.pending.is_empty() {
                continue; // still prefilling
            }
            let seen: Vec<u32> = if s.sampler.params().repetition_penalty != 1.0 {
                s.req
                    .prompt_ids
                    .iter()
                    .chain(&s.generated)
                    .copied()
                    .collect()
            } else {
                Vec::new()
            };
            let tok = s.sampler.sample(&mut row, &seen);
            if let Some(reason) = self.push_token(s, tok, on_event)? {
                finished.push((i, reason));
            } else {
                s.pending.push(tok);
            }
        }
        // Remove finished sequences, highest index first so the others keep their places.
        finished.sort_by(|a, b| b.0.cmp(&a.0));
        for (i, reason) in finished {
            let s = active.remove(i);
            on_event(Event::Done(Completion {
                id: s.req.id,
                text: s.text,
                token_ids: s.generated,
                finish_reason: reason,
                prompt_tokens: s.req.prompt_ids.len(),
            }))?;
        }
        Ok(())
    }

    /// Records a sampled token; returns why the sequence ends, if it does.
    fn push_token(
        &self,
        s: &mut Sequence,
        tok: u32,
        on_event: &mut impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<Option<FinishReason>> {
        if self.tokenizer.eos_ids.contains(&tok) {
            return Ok(Some(FinishReason::Eos));
        }
        s.generated.push(tok);
        if let Some(piece) = s.decoder.push(self.tokenizer, tok)? {
            let before = s.text.len();
            s.text.push_str(&piece);
            // A stop string may straddle pieces: search from where it could begin.
            let max_stop = s.req.params.stop.iter().map(|x| x.len()).max().unwrap_or(0);
            let mut from = before.saturating_sub(max_stop);
            while !s.text.is_char_boundary(from) {
                from -= 1;
            }
            let hit = s
                .req
                .params
                .stop
                .iter()
                .filter_map(|stop| s.text[from..].find(stop.as_str()).map(|p| from + p))
                .min();
            if let Some(at) = hit {
                if at > before {
                    on_event(Event::Text {
                        id: &s.req.id,
                        piece: &s.text[before..at],
                    })?;
                }
                s.text.truncate(at);
                return Ok(Some(FinishReason::Stop));
            }
            on_event(Event::Text {
                id: &s.req.id,
                piece: &s.text[before..],
            })?;
        }
        if s.generated.len() >= s.req.params.max_new_tokens {
            return Ok(Some(FinishReason::Length));
        }
        if s.cache.len() >= self.model.max_positions() {
            return Ok(Some(FinishReason::Context));
        }
        Ok(None)
    }
}
