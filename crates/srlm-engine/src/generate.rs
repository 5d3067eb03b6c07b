//! Batched generation with continuous batching: up to `max_batch` sequences decode together,
//! each with its own KV cache and sampler; a finished sequence leaves at once (its completion is
//! reported then) and the next request takes its place.
//!
//! Prompts often share a prefix: every judge call starts with the same instructions, and the N
//! samples (or k judgements) of one prompt share all of it. With `prefix_reuse`, the keys and
//! values of each prefilled prompt are kept (up to `prefix_cache_bytes`), a new request starts
//! from a copy of the longest cached prefix it shares, and a request that shares more with a
//! prompt still being prefilled waits for it rather than computing the same prefix twice.

use crate::error::{EngineError, Result};
use crate::llama::{KvCache, Llama};
use crate::sampling::{Sampler, SamplingParams};
use crate::tokenizer::{StreamDecoder, Tokenizer};
use srlm_core::generation::{FinishReason, TokenLogprob, TopLogprob};
use std::collections::VecDeque;

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
    /// One entry per generated token, when the request asked for `logprobs`.
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// What a request source of [`Generator::serve`] answers.
pub enum Next {
    Request(Request),
    /// None now; ask again after the next step.
    Later,
    /// No more, ever.
    End,
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

impl ActiveSequence {
    /// A sequence for `req` whose cache already holds its first `cached` prompt tokens.
    fn new(req: Request, cache: KvCache, cached: usize) -> Self {
        debug_assert_eq!(cache.len(), cached);
        ActiveSequence {
            cache,
            sampler: Sampler::new(req.params.clone()),
            pending: req.prompt_ids[cached..].to_vec(),
            generated: Vec::new(),
            decoder: StreamDecoder::new(),
            text: String::new(),
            logprobs: req.params.logprobs.map(|_| Vec::new()),
            req,
        }
    }

    /// Still feeding its prompt.
    fn prefilling(&self) -> bool {
        self.cache.len() < self.req.prompt_ids.len()
    }
}

struct ActiveSequence {
    req: Request,
    cache: KvCache,
    sampler: Sampler,
    /// Tokens to feed at the next step: the prompt first, then each sampled token.
    pending: Vec<u32>,
    generated: Vec<u32>,
    decoder: StreamDecoder,
    text: String,
    logprobs: Option<Vec<TokenLogprob>>,
}

/// The log-probabilities of a position: the model's raw distribution (before penalties and
/// temperature), its log-sum-exp, and its `n` most likely tokens, most likely first.
struct PositionLogprobs {
    log_norm: f32,
    top: Vec<(u32, f32)>,
}

impl PositionLogprobs {
    fn of(logits: &[f32], n: usize) -> Self {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
        let log_norm = max + sum.ln() as f32;
        let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        let n = n.min(ids.len());
        if n > 0 && n < ids.len() {
            ids.select_nth_unstable_by(n - 1, by_logit);
        }
        ids.truncate(n);
        ids.sort_unstable_by(by_logit);
        let top = ids
            .into_iter()
            .map(|i| (i, logits[i as usize] - log_norm))
            .collect();
        Self { log_norm, top }
    }
}

pub struct Generator<'a> {
    model: &'a Llama,
    tokenizer: &'a Tokenizer,
    /// Sequences decoded together.
    pub max_batch: usize,
    /// Prompt tokens fed per step, summed over sequences (bounds activation memory).
    pub prefill_chunk: usize,
    /// Reuse the keys and values of shared prompt prefixes.
    pub prefix_reuse: bool,
    /// Bytes of prompt caches kept for reuse (least recently used go first).
    pub prefix_cache_bytes: usize,
}

/// What a run computed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunStats {
    /// Prompt tokens of all requests.
    pub prompt_tokens: usize,
    /// Of those, tokens whose keys and values were copied from a cached prefix.
    pub reused_tokens: usize,
    pub generated_tokens: usize,
}

/// Waiting for a prompt still being prefilled pays off only when it saves this many tokens.
const MIN_WAIT_GAIN: usize = 32;

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The caches of prefilled prompts, least recently used first.
#[derive(Default)]
struct PrefixStore {
    entries: VecDeque<(Vec<u32>, KvCache)>,
    bytes: usize,
}

impl PrefixStore {
    /// The entry sharing the longest prefix with `prompt`, at most `prompt.len() - 1` tokens
    /// (the last prompt token must be fed to get its logits): (index, shared tokens).
    fn best(&self, prompt: &[u32]) -> Option<(usize, usize)> {
        let cap = prompt.len().saturating_sub(1);
        self.entries
            .iter()
            .enumerate()
            .map(|(i, (toks, _))| (i, common_prefix(toks, prompt).min(cap)))
            .filter(|&(_, n)| n > 0)
            .max_by_key(|&(i, n)| (n, i))
    }

    /// A fresh cache holding `n` tokens of entry `i`, which becomes the most recently used.
    fn take_prefix(&mut self, i: usize, n: usize) -> Result<KvCache> {
        let entry = self.entries.remove(i).expect("index from best()");
        let copy = entry.1.prefix_copy(n)?;
        self.entries.push_back(entry);
        Ok(copy)
    }

    fn insert(&mut self, tokens: Vec<u32>, cache: KvCache, budget: usize) {
        if self.entries.iter().any(|(t, _)| *t == tokens) {
            return;
        }
        self.bytes += cache.bytes();
        self.entries.push_back((tokens, cache));
        while self.bytes > budget && self.entries.len() > 1 {
            let (_, old) = self.entries.pop_front().expect("non-empty");
            self.bytes -= old.bytes();
        }
    }
}

impl<'a> Generator<'a> {
    pub fn new(model: &'a Llama, tokenizer: &'a Tokenizer) -> Self {
        Self {
            model,
            tokenizer,
            max_batch: 16,
            prefill_chunk: 2048,
            prefix_reuse: true,
            prefix_cache_bytes: 1 << 30,
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
        on_event: impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<RunStats> {
        let mut queue = requests.into_iter();
        self.serve(
            |_| match queue.next() {
                Some(r) => Next::Request(r),
                None => Next::End,
            },
            |_| true,
            on_event,
        )
    }

    /// Generates for requests as `next` hands them over, until it says `End` and every
    /// admitted request has finished: how a server batches requests that arrive while others
    /// decode. `next(idle)` is asked whenever there is room in the batch; with `idle` true
    /// nothing is decoding, so it may block until a request comes, and otherwise it should
    /// answer at once (`Later` when it has none). Before every step, `wanted(id)` is asked of
    /// each admitted request: one no longer wanted (its client went away) is dropped at once,
    /// without a `Done` event.
    pub fn serve(
        &self,
        mut next: impl FnMut(bool) -> Next,
        mut wanted: impl FnMut(&str) -> bool,
        mut on_event: impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<RunStats> {
        let mut stats = RunStats::default();
        let mut waiting: VecDeque<Request> = VecDeque::new();
        let mut store = PrefixStore::default();
        let mut active: Vec<ActiveSequence> = Vec::new();
        let mut exhausted = false;
        loop {
            active.retain(|s| wanted(&s.req.id));
            waiting.retain(|r| wanted(&r.id));
            // Admit waiting requests first (in order), then new ones. A request that shares a
            // longer prefix with a prompt still being prefilled than with any cached one waits.
            let mut still_waiting = VecDeque::new();
            while active.len() < self.max_batch {
                let req = match waiting.pop_front() {
                    Some(r) => r,
                    None if still_waiting.len() >= 4 * self.max_batch => break,
                    None if exhausted => break,
                    None => {
                        let idle = active.is_empty() && still_waiting.is_empty();
                        match next(idle) {
                            Next::Request(r) => {
                                self.check(&r)?;
                                r
                            }
                            Next::Later => break,
                            Next::End => {
                                exhausted = true;
                                break;
                            }
                        }
                    }
                };
                if !self.prefix_reuse {
                    stats.prompt_tokens += req.prompt_ids.len();
                    active.push(ActiveSequence::new(req, KvCache::new(), 0));
                    continue;
                }
                let cached = store.best(&req.prompt_ids);
                let have = cached.map(|c| c.1).unwrap_or(0);
                let cap = req.prompt_ids.len() - 1;
                let pending_gain = active
                    .iter()
                    .filter(|s| s.prefilling())
                    .map(|s| common_prefix(&s.req.prompt_ids, &req.prompt_ids).min(cap))
                    .max()
                    .unwrap_or(0);
                if pending_gain >= have + MIN_WAIT_GAIN {
                    still_waiting.push_back(req);
                    continue;
                }
                let cache = match cached {
                    Some((i, n)) => store.take_prefix(i, n)?,
                    None => KvCache::new(),
                };
                stats.prompt_tokens += req.prompt_ids.len();
                stats.reused_tokens += have;
                active.push(ActiveSequence::new(req, cache, have));
            }
            still_waiting.extend(waiting.drain(..));
            waiting = still_waiting;
            if active.is_empty() {
                if waiting.is_empty() {
                    if exhausted {
                        return Ok(stats);
                    }
                    continue; // an idle source said Later: ask again
                }
                // Nothing is prefilling, so nothing blocks the first waiting request.
                let req = waiting.pop_front().expect("non-empty");
                stats.prompt_tokens += req.prompt_ids.len();
                active.push(ActiveSequence::new(req, KvCache::new(), 0));
            }
            stats.generated_tokens += self.step(&mut active, &mut store, &mut on_event)?;
        }
    }

    /// One forward pass over every active sequence, then one sampled token for each that has
    /// consumed its whole prompt.
    fn step(
        &self,
        active: &mut Vec<ActiveSequence>,
        store: &mut PrefixStore,
        on_event: &mut impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<usize> {
        let mut sampled = 0;
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
            if self.prefix_reuse
                && s.generated.is_empty()
                && s.cache.len() == s.req.prompt_ids.len()
            {
                // The prompt's keys and values, shared: later appends write past its end.
                store.insert(
                    s.req.prompt_ids.clone(),
                    s.cache.clone(),
                    self.prefix_cache_bytes,
                );
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
            // Log-probabilities come from the logits as the model gave them, before sampling
            // rewrites them (penalty, temperature).
            let position = s
                .req
                .params
                .logprobs
                .map(|n| (PositionLogprobs::of(&row, n), row.clone()));
            let tok = s.sampler.sample(&mut row, &seen);
            sampled += 1;
            let position = position.map(|(p, raw)| (p, raw[tok as usize]));
            if let Some(reason) = self.push_token(s, tok, position, on_event)? {
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
                logprobs: s.logprobs,
            }))?;
        }
        Ok(sampled)
    }

    /// Records a sampled token (with its position's log-probabilities and its own logit, when
    /// asked for); returns why the sequence ends, if it does.
    fn push_token(
        &self,
        s: &mut ActiveSequence,
        tok: u32,
        position: Option<(PositionLogprobs, f32)>,
        on_event: &mut impl FnMut(Event<'_>) -> Result<()>,
    ) -> Result<Option<FinishReason>> {
        if self.tokenizer.eos_ids.contains(&tok) {
            return Ok(Some(FinishReason::Eos));
        }
        s.generated.push(tok);
        let piece = s.decoder.push(self.tokenizer, tok)?;
        if let (Some(list), Some((p, logit))) = (s.logprobs.as_mut(), position) {
            let mut top = Vec::with_capacity(p.top.len());
            for (id, logprob) in p.top {
                top.push(TopLogprob {
                    token: self.tokenizer.decode(&[id], false)?,
                    logprob,
                });
            }
            list.push(TokenLogprob {
                // The text this token completed (empty while a character is still partial),
                // so the entries' texts add up to the completion.
                token: piece.clone().unwrap_or_default(),
                logprob: logit - p.log_norm,
                top_logprobs: top,
            });
        }
        if let Some(piece) = piece {
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
