//! The architecture against transformers on tiny random Hugging Face folders (goldens from
//! scripts/make_engine_goldens.py), and the equivalences generation relies on.

mod common;
use candle_core::{DType, Device, IndexOp, Tensor};
use common::{goldens, max_rel_err};
use srlm_core::generation::TokenLogprob;
use srlm_engine::generate::{Completion, Generator, Request};
use srlm_engine::gguf::WeightFormat;
use srlm_engine::llama::{KvCache, Ops};
use srlm_engine::sampling::SamplingParams;
use srlm_engine::{Engine, LoadOptions};
use std::path::PathBuf;

fn golden_dir(name: &str) -> PathBuf {
    goldens().join(name)
}

fn load(name: &str, format: WeightFormat, ops: Ops) -> Engine {
    let opts = LoadOptions {
        format,
        ops,
        context_length: 256,
    };
    Engine::load(&golden_dir(name), &opts).unwrap()
}

fn check_against_transformers(name: &str, ops: Ops) {
    let engine = load(name, WeightFormat::Dense, ops);
    let g = candle_core::safetensors::load(
        golden_dir(name).join("expected_logits.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let ids = g["ids"].to_dtype(DType::U32).unwrap();
    let want = &g["logits"];
    let got = engine.model.forward(&ids).unwrap();
    assert_eq!(got.dims(), want.dims());
    let err = max_rel_err(&got, want);
    assert!(err < 1e-4, "{name} {ops:?}: max relative error {err}");
}

#[test]
fn tiny_llama_logits_equal_transformers() {
    // untied head, GQA 4/2, Llama 3 rope scaling
    check_against_transformers("tiny-llama", Ops::Differentiable);
    check_against_transformers("tiny-llama", Ops::Fused);
}

#[test]
fn tiny_qwen2_logits_equal_transformers() {
    // tied embeddings, q/k/v biases
    check_against_transformers("tiny-qwen2", Ops::Differentiable);
    check_against_transformers("tiny-qwen2", Ops::Fused);
}

#[test]
fn kv_cache_decoding_equals_full_recomputation() {
    let engine = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let ids: Vec<u32> = vec![5, 17, 42, 99, 7, 250, 3, 64, 128, 11, 200, 33];
    let full = engine
        .model
        .forward(
            &Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap();
    // Prefill 5 tokens, then 3 chunks: 1, 4, 2 tokens.
    let mut cache = KvCache::new();
    let mut at = 0;
    for n in [5, 1, 4, 2] {
        let last = engine
            .model
            .forward_segments(&[&ids[at..at + n]], &mut [&mut cache])
            .unwrap();
        at += n;
        let want = full.i((0, at - 1)).unwrap();
        let err = max_rel_err(&last.i(0).unwrap(), &want);
        assert!(err < 1e-5, "after {at} tokens: {err}");
    }
    assert_eq!(cache.len(), ids.len());
}

#[test]
fn segments_of_different_lengths_equal_one_by_one() {
    let engine = load("tiny-qwen2", WeightFormat::Dense, Ops::Fused);
    let seqs: Vec<Vec<u32>> = vec![
        vec![5, 17, 42],
        vec![200, 1, 33, 4, 180, 77, 9],
        vec![260],
        vec![8, 9, 10, 11, 12],
    ];
    let mut caches: Vec<KvCache> = seqs.iter().map(|_| KvCache::new()).collect();
    let refs: Vec<&[u32]> = seqs.iter().map(|s| s.as_slice()).collect();
    let mut cache_refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    let batched = engine
        .model
        .forward_segments(&refs, &mut cache_refs)
        .unwrap();
    for (i, s) in seqs.iter().enumerate() {
        let mut c = KvCache::new();
        let alone = engine
            .model
            .forward_segments(&[s.as_slice()], &mut [&mut c])
            .unwrap();
        let err = max_rel_err(&batched.i(i).unwrap(), &alone.i(0).unwrap());
        assert!(err < 1e-5, "segment {i}: {err}");
    }
}

fn greedy_requests(n: usize) -> Vec<Request> {
    (0..n)
        .map(|i| Request {
            id: format!("r{i}"),
            prompt_ids: (0..(3 + i * 2) as u32)
                .map(|t| (t * 37 + i as u32 * 11) % 290 + 3)
                .collect(),
            params: SamplingParams::greedy(12),
        })
        .collect()
}

fn run(engine: &Engine, reqs: Vec<Request>, max_batch: usize) -> Vec<(String, Vec<u32>)> {
    completions(engine, reqs, max_batch, true)
        .into_iter()
        .map(|(id, _, ids)| (id, ids))
        .collect()
}

#[test]
fn a_copied_prefix_cache_continues_like_the_original() {
    let engine = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let prefix: Vec<u32> = (0..40).map(|t| (t * 13 + 5) % 290 + 3).collect();
    let suffix: Vec<u32> = vec![17, 99, 4, 250];
    let mut full = KvCache::new();
    let mut all = prefix.clone();
    all.extend(&suffix);
    let want = engine
        .model
        .forward_segments(&[all.as_slice()], &mut [&mut full])
        .unwrap();
    let mut original = KvCache::new();
    engine
        .model
        .forward_segments(&[prefix.as_slice()], &mut [&mut original])
        .unwrap();
    // The copy is independent: the original grows on after it was taken.
    let mut copy = original.prefix_copy(30).unwrap();
    engine
        .model
        .forward_segments(&[&[1, 2, 3][..]], &mut [&mut original])
        .unwrap();
    let got = engine
        .model
        .forward_segments(&[&all[30..]], &mut [&mut copy])
        .unwrap();
    assert_eq!(copy.len(), all.len());
    let err = max_rel_err(&got, &want);
    assert!(err < 1e-5, "{err}");
}

#[test]
fn prefix_reuse_gives_the_same_completions() {
    // Judge-like requests: a long shared instruction, then per-item text, each item asked
    // three times; sampled, so that any difference in the prompt's state would show. Reuse
    // changes only rounding: a suffix prefilled after a cached prefix, or an ask's last prompt
    // token decoded after the cached rest, goes through other matrix shapes (or the decode
    // kernel) than one prefill of the whole prompt.
    let engine = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let shared: Vec<u32> = (0..60).map(|t| (t * 7 + 3) % 290 + 3).collect();
    let mut reqs = Vec::new();
    for item in 0..5u32 {
        for k in 0..3u64 {
            let mut ids = shared.clone();
            ids.extend((0..(4 + item)).map(|t| (t * 31 + item * 17) % 290 + 3));
            reqs.push(Request {
                id: format!("i{item}/{k}"),
                prompt_ids: ids,
                params: SamplingParams {
                    temperature: 1.0,
                    max_new_tokens: 8,
                    seed: k + 10 * item as u64,
                    logprobs: Some(3),
                    ..Default::default()
                },
            });
        }
    }
    let mut gen = Generator::new(&engine.model, &engine.tokenizer);
    gen.max_batch = 4;
    let stats = gen.run(reqs.clone(), |_| Ok(())).unwrap();
    // Every request but the first reuses the shared instruction; the 2nd and 3rd ask of an
    // item reuse all but the last prompt token.
    assert_eq!(
        stats.prompt_tokens,
        reqs.iter().map(|r| r.prompt_ids.len()).sum::<usize>()
    );
    assert!(stats.reused_tokens >= 14 * 60, "{stats:?}");
    let with = completions(&engine, reqs.clone(), 4, true);
    let without = completions(&engine, reqs, 4, false);
    assert_eq!(with.len(), 15);
    assert_eq!(without.len(), 15);
    for ((id, lp_with, ids_with), (id_without, lp_without, ids_without)) in
        with.iter().zip(&without)
    {
        assert_eq!(id, id_without);
        assert_eq!(ids_with, ids_without, "{id}");
        let (lp_with, lp_without) = (lp_with.as_ref().unwrap(), lp_without.as_ref().unwrap());
        assert_eq!(lp_with.len(), 8, "{id}");
        for (a, b) in lp_with.iter().zip(lp_without) {
            assert_eq!(a.token, b.token, "{id}");
            assert!((a.logprob - b.logprob).abs() < 1e-5, "{id}: {a:?} {b:?}");
            let tops = |t: &TokenLogprob| -> Vec<f32> {
                t.top_logprobs.iter().map(|t| t.logprob).collect()
            };
            let (ta, tb) = (tops(a), tops(b));
            assert_eq!(ta.len(), 3, "{id}");
            assert!(
                ta.iter().zip(&tb).all(|(x, y)| (x - y).abs() < 1e-5),
                "{id}: {a:?} {b:?}"
            );
        }
    }
}

/// Each request's token ids and log-probabilities, by id.
fn completions(
    engine: &Engine,
    reqs: Vec<Request>,
    max_batch: usize,
    prefix_reuse: bool,
) -> Vec<(String, Option<Vec<TokenLogprob>>, Vec<u32>)> {
    let mut gen = Generator::new(&engine.model, &engine.tokenizer);
    gen.max_batch = max_batch;
    gen.prefix_reuse = prefix_reuse;
    let mut out = Vec::new();
    gen.run(reqs, |ev| {
        if let srlm_engine::generate::Event::Done(c) = ev {
            out.push((c.id, c.logprobs, c.token_ids));
        }
        Ok(())
    })
    .unwrap();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn a_batch_of_8_equals_one_by_one_greedy() {
    let engine = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let batched = run(&engine, greedy_requests(8), 8);
    let single = run(&engine, greedy_requests(8), 1);
    assert_eq!(batched.len(), 8);
    assert_eq!(batched, single);
}

#[test]
fn requests_arriving_while_others_decode_join_the_batch() {
    // A server's source: two requests at first, more handed over one per step while the
    // first ones decode, `Later` in between. Every request is answered, as run alone would.
    use srlm_engine::generate::{Event, Next};
    let engine = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let reqs = greedy_requests(6);
    let mut pending: std::collections::VecDeque<Request> = reqs.clone().into();
    let mut asks = 0usize;
    let (mut out, mut busy_asks) = (Vec::new(), 0usize);
    let mut gen = Generator::new(&engine.model, &engine.tokenizer);
    gen.max_batch = 4;
    gen.serve(
        |idle| {
            asks += 1;
            if !idle {
                busy_asks += 1;
            }
            // Hand over a request on every other ask only: the rest are `Later`.
            if pending.len() > 4 && asks.is_multiple_of(2) {
                return Next::Later;
            }
            match pending.pop_front() {
                Some(r) => Next::Request(r),
                None => Next::End,
            }
        },
        |_| true,
        |ev| {
            if let Event::Done(c) = ev {
                out.push((c.id, c.token_ids));
            }
            Ok(())
        },
    )
    .unwrap();
    assert!(
        busy_asks > 0,
        "no request was asked for while others decoded"
    );
    out.sort();
    let mut alone = run(&engine, reqs, 1);
    alone.sort();
    assert_eq!(out, alone);
}

#[test]
fn a_request_no_longer_wanted_is_dropped_and_the_others_unchanged() {
    use srlm_engine::generate::{Event, Next};
    let engine = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let reqs = greedy_requests(4);
    let mut queue: std::collections::VecDeque<Request> = reqs.clone().into();
    let (mut out, mut pieces_of_r1) = (Vec::new(), 0usize);
    let gen = Generator::new(&engine.model, &engine.tokenizer);
    // r1's client goes away after its third piece of text.
    let gone = std::cell::Cell::new(false);
    gen.serve(
        |_| match queue.pop_front() {
            Some(r) => Next::Request(r),
            None => Next::End,
        },
        |id| !(id == "r1" && gone.get()),
        |ev| {
            match ev {
                Event::Text { id: "r1", .. } => {
                    pieces_of_r1 += 1;
                    if pieces_of_r1 == 3 {
                        gone.set(true);
                    }
                }
                Event::Done(c) => out.push((c.id, c.token_ids)),
                _ => {}
            }
            Ok(())
        },
    )
    .unwrap();
    assert_eq!(pieces_of_r1, 3, "r1 went on after it was dropped");
    out.sort();
    let mut others = run(
        &engine,
        reqs.into_iter().filter(|r| r.id != "r1").collect(),
        4,
    );
    others.sort();
    assert_eq!(out, others);
}

#[test]
fn a_batch_mixing_long_prompts_equals_one_by_one_greedy() {
    // Prompts of 3 to 52 tokens, so batched steps mix long prefills (past the 32 rows at which
    // `mixed` switches a segment to its f32 copy) with short ones and with decoding, in every
    // way of holding weights.
    for format in [
        WeightFormat::Dense,
        WeightFormat::Q8_0,
        WeightFormat::Mixed,
        WeightFormat::MixedBf16,
    ] {
        let engine = load("tiny-llama", format, Ops::Fused);
        let reqs: Vec<Request> = (0..8)
            .map(|i| Request {
                id: format!("r{i}"),
                prompt_ids: (0..(3 + (i % 2) * 35 + i * 2) as u32)
                    .map(|t| (t * 37 + i as u32 * 11) % 290 + 3)
                    .collect(),
                params: SamplingParams::greedy(12),
            })
            .collect();
        let mut batched = run(&engine, reqs.clone(), 8);
        let mut single = run(&engine, reqs, 1);
        batched.sort();
        single.sort();
        assert_eq!(batched, single, "{format:?}");
    }
}

/// `mixed-bf16` prefills through its packed bf16 copy (AMX or AVX512-BF16): the logits of a
/// 40-token prompt within bf16 rounding of `mixed`'s f32 ones, and not the same bits (the path
/// really is another). Skipped with a message where the CPU has no bf16 kernel (the format is
/// then `mixed`).
#[test]
fn mixed_bf16_prefill_is_within_bf16_tolerance_of_f32() {
    if !srlm_engine::gemm_bf16::has_simd_kernel() {
        eprintln!(
            "skipped: no bf16 kernel here (AMX or AVX512-BF16; this CPU has {})",
            srlm_engine::cpu::CpuFeatures::get().describe()
        );
        return;
    }
    let long: Vec<u32> = (0..40).map(|t| (t * 29 + 5) % 290 + 3).collect();
    let logits = |format| -> Vec<f32> {
        let engine = load("tiny-llama", format, Ops::Fused);
        let mut cache = KvCache::new();
        let l = engine
            .model
            .forward_segments(&[&long], &mut [&mut cache])
            .unwrap();
        l.flatten_all().unwrap().to_vec1().unwrap()
    };
    let f32_logits = logits(WeightFormat::Mixed);
    let bf16_logits = logits(WeightFormat::MixedBf16);
    let scale = f32_logits.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = f32_logits
        .iter()
        .zip(&bf16_logits)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 0.05 * scale,
        "max |diff| {worst} against logits up to {scale}"
    );
    assert!(worst > 0.0, "mixed-bf16 computed the same bits as f32");
}

#[test]
fn with_mixed_weights_a_segments_logits_do_not_depend_on_its_batch() {
    // A decoding step's logits, alone and beside a 40-token prompt: the same bits. (When the
    // whole call chose its path by row count, the 41 rows sent the decoding row through f32.)
    let engine = load("tiny-llama", WeightFormat::Mixed, Ops::Fused);
    let prompt: Vec<u32> = (0..5).map(|t| t * 13 + 7).collect();
    let long: Vec<u32> = (0..40).map(|t| (t * 29 + 5) % 290 + 3).collect();
    let step = |with_long: bool| -> Vec<f32> {
        let mut cache = KvCache::new();
        engine
            .model
            .forward_segments(&[&prompt], &mut [&mut cache])
            .unwrap();
        let logits = if with_long {
            let mut other = KvCache::new();
            engine
                .model
                .forward_segments(&[&[42], &long], &mut [&mut cache, &mut other])
                .unwrap()
        } else {
            engine
                .model
                .forward_segments(&[&[42]], &mut [&mut cache])
                .unwrap()
        };
        logits.get(0).unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(step(true), step(false));
}

#[test]
fn sampling_with_a_seed_is_reproducible_and_independent_of_batching() {
    let engine = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let reqs = |seed| {
        let mut r = greedy_requests(4);
        for (i, q) in r.iter_mut().enumerate() {
            q.params = SamplingParams {
                temperature: 1.0,
                top_p: 0.9,
                top_k: 50,
                max_new_tokens: 10,
                seed: seed + i as u64,
                ..Default::default()
            };
        }
        r
    };
    let a = run(&engine, reqs(1), 4);
    let b = run(&engine, reqs(1), 1);
    let c = run(&engine, reqs(100), 4);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn q8_0_weights_stay_close_to_dense() {
    let dense = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let q8 = load("tiny-llama", WeightFormat::Q8_0, Ops::Fused);
    let ids = Tensor::new(&[[5u32, 17, 42, 99, 7, 250, 3, 64]], &Device::Cpu).unwrap();
    let a = dense.model.forward(&ids).unwrap();
    let b = q8.model.forward(&ids).unwrap();
    let err = max_rel_err(&b, &a);
    assert!(err < 0.05, "{err}");
}

#[test]
fn chat_template_and_special_tokens_come_from_the_folder() {
    let engine = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let msgs = vec![srlm_core::generation::Message::new("user", "hello")];
    assert_eq!(
        engine.render_chat(&msgs).unwrap(),
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    );
    let im_end = engine.tokenizer.token_id("<|im_end|>").unwrap();
    assert!(engine.tokenizer.eos_ids.contains(&im_end));
}

#[test]
fn mixed_weights_prefill_dense_and_decode_quantized() {
    let dense = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let mixed = load("tiny-llama", WeightFormat::Mixed, Ops::Fused);
    let q8 = load("tiny-llama", WeightFormat::Q8_0, Ops::Fused);
    // MIXED_DENSE_ROWS rows: the dense weights, so dense results.
    let n = srlm_engine::llama::MIXED_DENSE_ROWS;
    let row: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 5) % 290).collect();
    let ids = Tensor::new(row.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let err = max_rel_err(
        &mixed.model.forward(&ids).unwrap(),
        &dense.model.forward(&ids).unwrap(),
    );
    assert!(err < 1e-6, "prefill: {err}");
    // 2 rows: the Q8_0 blocks, so exactly the Q8_0 model's results.
    let ids = Tensor::new(&[[5u32, 17]], &Device::Cpu).unwrap();
    let a = mixed.model.forward(&ids).unwrap();
    let b = q8.model.forward(&ids).unwrap();
    assert_eq!(a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
    assert!(max_rel_err(&a, &dense.model.forward(&ids).unwrap()) > 0.0);
}

/// scripts/make_logprob_goldens.py's output for tiny-llama.
fn logprob_goldens() -> serde_json::Value {
    let text = std::fs::read_to_string(golden_dir("tiny-llama").join("logprobs.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn completion_of(engine: &Engine, prompt_ids: Vec<u32>, params: SamplingParams) -> Completion {
    let gen = Generator::new(&engine.model, &engine.tokenizer);
    let mut out = None;
    gen.run(
        [Request {
            id: "r".into(),
            prompt_ids,
            params,
        }],
        |ev| {
            if let srlm_engine::generate::Event::Done(c) = ev {
                out = Some(c);
            }
            Ok(())
        },
    )
    .unwrap();
    out.unwrap()
}

#[test]
fn greedy_logprobs_equal_transformers_log_softmax() {
    let engine = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let g = logprob_goldens();
    for case in g["greedy"].as_array().unwrap() {
        let params = SamplingParams {
            logprobs: Some(5),
            ..SamplingParams::greedy(8)
        };
        let c = completion_of(&engine, ids_of(&case["prompt_ids"]), params);
        let steps = case["steps"].as_array().unwrap();
        let lps = c.logprobs.as_ref().unwrap();
        assert_eq!(c.token_ids.len(), steps.len());
        assert_eq!(lps.len(), steps.len());
        // The entries' texts add up to the completion.
        assert_eq!(
            lps.iter().map(|t| t.token.as_str()).collect::<String>(),
            c.text
        );
        for (i, (step, lp)) in steps.iter().zip(lps).enumerate() {
            assert_eq!(
                c.token_ids[i],
                step["id"].as_u64().unwrap() as u32,
                "step {i}"
            );
            let want = step["logprob"].as_f64().unwrap() as f32;
            assert!(
                (lp.logprob - want).abs() < 1e-4,
                "step {i}: {} vs {want}",
                lp.logprob
            );
            let top = step["top"].as_array().unwrap();
            assert_eq!(lp.top_logprobs.len(), 5);
            for (got, want) in lp.top_logprobs.iter().zip(top) {
                let id = want[0].as_u64().unwrap() as u32;
                assert_eq!(got.token, engine.tokenizer.decode(&[id], false).unwrap());
                assert!((got.logprob - want[1].as_f64().unwrap() as f32).abs() < 1e-4);
            }
        }
    }
}

#[test]
fn sampled_tokens_report_the_models_own_distribution() {
    // At temperature 0.5 with top-p, the reported log-probability is still the model's
    // (temperature 1, nothing cut), as OpenAI and vLLM report it.
    let engine = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let g = logprob_goldens();
    let row: Vec<f64> = g["sampled"]["logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    for seed in 0..4 {
        let params = SamplingParams {
            temperature: 0.5,
            top_p: 0.8,
            max_new_tokens: 1,
            seed,
            logprobs: Some(3),
            ..SamplingParams::default()
        };
        let c = completion_of(&engine, ids_of(&g["sampled"]["prompt_ids"]), params);
        let lp = &c.logprobs.unwrap()[0];
        let want = row[c.token_ids[0] as usize] as f32;
        assert!((lp.logprob - want).abs() < 1e-4, "{} vs {want}", lp.logprob);
    }
}

#[test]
fn the_expected_score_equals_the_digit_probabilities_of_transformers() {
    // The judge's expected score, sum s p(s), read from the engine's log-probabilities at the
    // score position (every token of the tiny vocabulary reported), against the same sum
    // over transformers' softmax.
    let engine = load("tiny-llama", WeightFormat::Dense, Ops::Fused);
    let vocab = engine.tokenizer.vocab_size();
    for case in logprob_goldens()["score"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = engine.tokenizer.encode(text).unwrap();
        assert_eq!(ids, ids_of(&case["prompt_ids"]), "tokenization of {text:?}");
        let params = SamplingParams {
            logprobs: Some(vocab),
            ..SamplingParams::greedy(1)
        };
        let c = completion_of(&engine, ids, params);
        let at = &c.logprobs.unwrap()[0];
        let d = srlm_core::judge::digit_distribution(at, "").unwrap();
        let want = |k: &str| case[k].as_f64().unwrap();
        assert!(
            (d.expected - want("expected")).abs() < 1e-4,
            "{} vs {}",
            d.expected,
            want("expected")
        );
        assert!((d.mass - want("mass")).abs() < 1e-4);
        for (s, p) in d.probs.iter().enumerate() {
            assert!((p - case["probs"][s].as_f64().unwrap()).abs() < 1e-4);
        }
    }
}
