//! The judge-agreement metrics against scipy (spearmanr, kendalltau tau-b) and an independent
//! implementation of the pairwise ones, on random prompts with ties and missing scores.
//! Goldens: scripts/make_metric_goldens.py.

use srlm_core::metrics::{judge_agreement, kendall_tau_b, spearman, RankedReplies};

#[derive(serde::Deserialize)]
struct Prompt {
    human_ranks: Vec<u32>,
    scores: Vec<Option<f64>>,
    spearman: Option<f64>,
    kendall_tau: Option<f64>,
}

#[derive(serde::Deserialize)]
struct Expected {
    pairs: usize,
    pairwise_accuracy: f64,
    pairwise_ties: f64,
    exact_match: f64,
    spearman: f64,
    kendall_tau: f64,
    correlation_undefined: usize,
    five_best: f64,
    missing_scores: usize,
}

#[derive(serde::Deserialize)]
struct Golden {
    prompts: Vec<Prompt>,
    expected: Expected,
}

fn close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() < 1e-12, "{what}: {a} vs {b}");
}

#[test]
fn equal_scipy_per_prompt_and_in_aggregate() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/judge_metrics.json");
    let g: Golden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut undefined = 0;
    for (i, p) in g.prompts.iter().enumerate() {
        let kept: Vec<(f64, f64)> = p
            .human_ranks
            .iter()
            .zip(&p.scores)
            .filter_map(|(&r, s)| s.map(|s| (s, -(r as f64))))
            .collect();
        let (x, y): (Vec<f64>, Vec<f64>) = kept.into_iter().unzip();
        let (sp, kt) = (spearman(&x, &y), kendall_tau_b(&x, &y));
        match (sp, p.spearman) {
            (Some(a), Some(b)) => close(a, b, &format!("prompt {i} spearman")),
            (None, None) => undefined += 1,
            other => panic!("prompt {i}: spearman {other:?}"),
        }
        match (kt, p.kendall_tau) {
            (Some(a), Some(b)) => close(a, b, &format!("prompt {i} kendall")),
            (None, None) => {}
            other => panic!("prompt {i}: kendall {other:?}"),
        }
    }
    assert!(undefined >= 5, "the fixture exercises undefined cases");
    let replies: Vec<RankedReplies> = g
        .prompts
        .iter()
        .map(|p| RankedReplies {
            human_ranks: p.human_ranks.clone(),
            scores: p.scores.clone(),
        })
        .collect();
    let a = judge_agreement(&replies);
    let e = &g.expected;
    assert_eq!(a.pairs, e.pairs);
    close(
        a.pairwise_accuracy,
        e.pairwise_accuracy,
        "pairwise accuracy",
    );
    close(a.pairwise_ties, e.pairwise_ties, "pairwise ties");
    close(a.exact_match, e.exact_match, "exact match");
    close(a.spearman.unwrap(), e.spearman, "mean spearman");
    close(a.kendall_tau.unwrap(), e.kendall_tau, "mean kendall");
    assert_eq!(a.correlation_undefined, e.correlation_undefined);
    close(a.five_best.unwrap(), e.five_best, "5-best");
    assert_eq!(a.missing_scores, e.missing_scores);
}

#[derive(serde::Deserialize)]
struct RougeCase {
    a: String,
    b: String,
    f: f64,
}

#[test]
fn rouge_l_equals_google_rouge_score() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/goldens/rouge_l.json");
    let cases: Vec<RougeCase> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    for c in &cases {
        let got = srlm_core::rouge::rouge_l(&c.a, &c.b);
        close(got, c.f, &format!("rouge-L of {:?} / {:?}", c.a, c.b));
    }
}

/// Judge outputs, constructed and real (SmolLM2 judging as M1 of a default run), each with the
/// score srlm must take from it or the failure it must record.
#[test]
fn judge_output_corpus_parses_as_expected() {
    use srlm_core::judge::{parse_score, ParseFailure};
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/judge_outputs.jsonl"),
    )
    .unwrap();
    let mut n = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let (case, raw) = (v["case"].as_str().unwrap(), v["raw"].as_str().unwrap());
        let got = parse_score(raw);
        match &v["expect"] {
            serde_json::Value::Number(x) => assert_eq!(got, Ok(x.as_f64().unwrap()), "{case}"),
            serde_json::Value::String(s) if s == "out_of_range" => {
                assert_eq!(got, Err(ParseFailure::OutOfRange), "{case}")
            }
            serde_json::Value::String(s) if s == "unparsable" => {
                assert_eq!(got, Err(ParseFailure::Unparsable), "{case}")
            }
            serde_json::Value::String(s) if s == "no_score" => {
                assert_eq!(got, Err(ParseFailure::NoScore), "{case}")
            }
            other => panic!("{case}: bad expectation {other}"),
        }
        n += 1;
    }
    assert!(n >= 15);
}
