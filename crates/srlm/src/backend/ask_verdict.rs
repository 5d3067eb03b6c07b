//! A judge that never wrote its `Score:` line is asked for it.
//!
//! A small judge's unscored judgements are nearly all repetition loops that ran into the token
//! limit ("The response is not relevant to the question." forty times). Rather than lose the
//! judgement, srlm begins the judge's turn again with its own text, cut after the last complete
//! line, and a new line `Score:` ([`verdict_prefill`]), and lets it write a few greedy tokens
//! with their log-probabilities: the written score and the distribution over 0..=5 are read
//! there, and the record keeps what it wrote as `forced_verdict`, so a forced verdict is never
//! mistaken for one the judge wrote unasked.
//!
//! With [`Justification::None`] every judgement is asked for its verdict straight away, with
//! an empty judgement before the cue.

use super::{Backend, Continuation, GenRequest, Generated, Outcome};
use anyhow::Result;
use srlm_core::generation::PromptInput;
use srlm_core::judge::{
    parse_score, verdict_prefill, JudgeSample, Justification, ParseFailure, JUDGE_TOP_LOGPROBS,
    VERDICT_CUE,
};
use srlm_engine::sampling::SamplingParams;
use std::collections::{HashMap, HashSet};

/// Tokens the judge may write after the cue: a space, the digit, a decimal or `/5`.
const VERDICT_TOKENS: usize = 4;

/// Passes judgements through, holding back each one without a score until the judge has been
/// asked for its verdict (a second round of requests, after the first is done).
pub struct AskVerdict<'a> {
    inner: &'a dyn Backend,
    justification: Justification,
}

impl<'a> AskVerdict<'a> {
    pub fn new(inner: &'a dyn Backend, justification: Justification) -> Self {
        Self {
            inner,
            justification,
        }
    }
}

/// The request that asks `request`'s judge for its verdict after `prefill` (the begun
/// assistant turn), or None when its prompt is not a chat (nothing to continue).
fn ask(request: &GenRequest, prefill: String) -> Option<GenRequest> {
    let PromptInput::Chat(messages) = &request.prompt else {
        return None;
    };
    Some(GenRequest {
        id: request.id.clone(),
        prompt: PromptInput::Continue {
            messages: messages.clone(),
            assistant: prefill,
        },
        params: SamplingParams {
            temperature: 0.0,
            max_new_tokens: VERDICT_TOKENS,
            stop: vec!["\n".into()],
            logprobs: Some(JUDGE_TOP_LOGPROBS),
            ..request.params.clone()
        },
    })
}

impl Backend for AskVerdict<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn generate(
        &self,
        requests: Vec<GenRequest>,
        on_outcome: &mut dyn FnMut(Outcome) -> Result<()>,
    ) -> Result<()> {
        if self.justification == Justification::None {
            return verdicts_only(self.inner, requests, on_outcome);
        }
        let by_id: HashMap<String, GenRequest> =
            requests.iter().map(|r| (r.id.clone(), r.clone())).collect();
        let mut held: HashMap<String, Generated> = HashMap::new();
        let mut asks = Vec::new();
        self.inner
            .generate(requests, &mut |outcome| match outcome {
                Outcome::Done(g) if parse_score(&g.text) == Err(ParseFailure::NoScore) => {
                    match ask(&by_id[&g.id], verdict_prefill(&g.text)) {
                        Some(a) => {
                            asks.push(a);
                            held.insert(g.id.clone(), g);
                            Ok(())
                        }
                        None => on_outcome(Outcome::Done(g)),
                    }
                }
                other => on_outcome(other),
            })?;
        if asks.is_empty() {
            return Ok(());
        }
        self.inner.generate(asks, &mut |outcome| {
            // An ask that fails leaves the judgement as it was: unscored.
            let (id, verdict) = match outcome {
                Outcome::Done(v) => (
                    v.id,
                    Some(Continuation {
                        text: v.text,
                        logprobs: v.logprobs,
                    }),
                ),
                Outcome::Failed { id, .. } => (id, None),
            };
            let mut judged = held
                .remove(&id)
                .expect("every ask answers a held judgement");
            judged.forced_verdict = verdict;
            on_outcome(Outcome::Done(judged))
        })
    }
}

/// Each request asked for its verdict at once, with no judgement before [`VERDICT_CUE`]; a
/// request whose prompt is not a chat is passed through as it is.
fn verdicts_only(
    inner: &dyn Backend,
    requests: Vec<GenRequest>,
    on_outcome: &mut dyn FnMut(Outcome) -> Result<()>,
) -> Result<()> {
    let mut asked = HashSet::new();
    let requests = requests
        .into_iter()
        .map(|r| match ask(&r, VERDICT_CUE.to_string()) {
            Some(a) => {
                asked.insert(a.id.clone());
                a
            }
            None => r,
        })
        .collect();
    inner.generate(requests, &mut |outcome| match outcome {
        Outcome::Done(v) if asked.contains(&v.id) => on_outcome(Outcome::Done(Generated {
            text: String::new(),
            logprobs: None,
            forced_verdict: Some(Continuation {
                text: v.text,
                logprobs: v.logprobs,
            }),
            ..v
        })),
        other => on_outcome(other),
    })
}

/// The judgement a completion holds: its own score, or the verdict it was asked for.
pub fn judge_sample(g: &Generated) -> JudgeSample {
    let verdict = g
        .forced_verdict
        .as_ref()
        .map(|v| (v.text.as_str(), v.logprobs.as_deref()));
    JudgeSample::read_with_verdict(&g.text, g.logprobs.as_deref(), verdict)
}
