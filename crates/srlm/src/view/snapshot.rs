//! A run directory read as it is now, for the run browser: what every stage left, read leniently
//! (a stage may be writing a file while we read it), and nothing written.
//!
//! A torn last line (no newline yet: a stage is writing it, or was killed mid-write) is left out
//! and counted; a line in the middle that is not a record is left out with a warning naming the
//! file and line. A file that is not there yet is an empty list.

use crate::pipeline::config::{load_config, RunConfig};
use crate::pipeline::layout::Layout;
use serde::de::DeserializeOwned;
use serde::Serialize;
use srlm_core::diagnostics::Diagnostics;
use srlm_core::judge::ScoreMode;
use srlm_core::oasst::{ranked_turns, TreeFilter};
use srlm_core::stages::{id_order, CandidateRecord, JudgementRecord, PairRecord, PromptRecord};
use srlm_core::summaries::{read_summary, JudgeEvalSummary, Manifest, VsSummary};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A run without a finished stage for this long is shown as stopped, not running.
const STALLED_AFTER_S: f64 = 600.0;

/// The records of a JSONL file that parse as `T`, with what was left out said in `warnings`.
pub fn read_lenient<T: DeserializeOwned>(path: &Path, warnings: &mut Vec<String>) -> Vec<T> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    // Checked as UTF-8 in one pass; a file with invalid bytes is read with them replaced.
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => std::borrow::Cow::Borrowed(text),
        Err(_) => String::from_utf8_lossy(&bytes),
    };
    let mut out = Vec::new();
    let lines: Vec<&str> = text.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let last = i + 1 == lines.len();
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(line) {
            Ok(r) => out.push(r),
            // No newline after it: still being written, or cut by a kill.
            Err(_) if last => warnings.push(format!(
                "{}: line {} is incomplete (a stage is writing it, or was stopped mid-write); left out",
                path.display(),
                i + 1
            )),
            Err(e) => warnings.push(format!(
                "{}: line {}: {e}; left out",
                path.display(),
                i + 1
            )),
        }
    }
    out
}

fn count_lines(path: &Path) -> usize {
    std::fs::read(path)
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
}

fn age_s(t: SystemTime) -> f64 {
    SystemTime::now()
        .duration_since(t)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Calls `f` with the metadata of every file under `dir` (unreadable entries skipped).
pub fn for_each_file(dir: &Path, mut f: impl FnMut(&std::fs::Metadata)) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                f(&meta);
            }
        }
    }
}

/// The newest modification time of any file under `dir`.
fn newest_write(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for_each_file(dir, |meta| {
        if let Ok(t) = meta.modified() {
            newest = Some(newest.map_or(t, |n: SystemTime| n.max(t)));
        }
    });
    newest
}

#[derive(Debug, Serialize)]
pub struct StageStatus {
    pub name: String,
    /// "done", "running" (the first unfinished stage of a run that is writing), "stopped"
    /// (that stage, when nothing was written for a while) or "pending".
    pub state: String,
    pub seconds: Option<f64>,
    /// Peak resident memory of srlm's process during the stage, MiB (`StageEntry`).
    pub peak_rss_mib: Option<f64>,
    pub stats: Option<serde_json::Value>,
    /// Of an unfinished stage: what it has written so far, as "N of M unit".
    pub progress: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub finished: bool,
    /// The stage being worked on (or where a stopped run stopped).
    pub current: Option<String>,
    pub state: String,
    pub last_write_s: Option<f64>,
    pub stages: Vec<StageStatus>,
}

#[derive(Debug, Serialize)]
pub struct IterationView {
    pub t: usize,
    pub prompts_kept: usize,
    pub attempts: usize,
    /// Dropped attempts by reason.
    pub dropped: BTreeMap<String, usize>,
    pub candidates: usize,
    pub judgements: usize,
    /// Written scores "0".."5" (and half points) by count.
    pub written_scores: BTreeMap<String, usize>,
    /// Candidates' mean scores under the run's reading.
    pub candidate_scores: Vec<f64>,
    pub margins: Vec<f64>,
    pub chosen_chars: Vec<usize>,
    pub rejected_chars: Vec<usize>,
    /// The pairs stage's own diagnostics, once it has run.
    pub diagnostics: Option<Diagnostics>,
}

#[derive(Debug, Serialize)]
pub struct TrainingCurve {
    pub model: String,
    pub kind: String,
    /// (step, metric name -> value) per logged step.
    pub steps: Vec<BTreeMap<String, f64>>,
}

#[derive(Debug, Serialize)]
pub struct EvalReply {
    pub text: String,
    pub human_rank: u32,
    pub score: Option<f64>,
    pub expected: Option<f64>,
    pub raw: String,
}

#[derive(Debug, Serialize)]
pub struct EvalPrompt {
    pub id: String,
    pub prompt: String,
    pub replies: Vec<EvalReply>,
    /// Pairs of replies with different human ranks that the judge ordered the other way (or
    /// tied), under the run's reading.
    pub disagreements: usize,
    pub pairs: usize,
}

#[derive(Debug, Serialize)]
pub struct JudgeEvalView {
    pub model: String,
    pub summary: Option<JudgeEvalSummary>,
    pub prompts: Vec<EvalPrompt>,
}

#[derive(Debug, Serialize)]
pub struct VsView {
    pub name: String,
    pub summary: VsSummary,
}

/// One row of the prompt table.
#[derive(Debug, Serialize)]
pub struct PromptRow {
    pub id: String,
    pub t: usize,
    pub prompt: String,
    pub candidates: usize,
    pub judgements: usize,
    pub parse_failures: usize,
    /// Best minus worst candidate mean score.
    pub spread: Option<f64>,
    /// The pair's chosen minus rejected score.
    pub margin: Option<f64>,
    /// The pair's chosen minus rejected length, in characters.
    pub length_diff: Option<i64>,
    pub paired: bool,
}

#[derive(Debug, Serialize)]
pub struct JudgementView {
    pub id: String,
    pub sample: usize,
    pub raw: String,
    pub score: Option<f64>,
    pub expected: Option<f64>,
    pub forced_verdict: Option<String>,
    pub failure: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct CandidateView {
    pub id: String,
    pub index: usize,
    pub response: String,
    pub finish_reason: Option<String>,
    pub mean: Option<f64>,
    /// "chosen", "rejected" or "".
    pub role: String,
    pub judgements: Vec<JudgementView>,
}

/// One prompt with everything the loop did with it.
#[derive(Debug, Serialize)]
pub struct PromptDetail {
    pub id: String,
    pub t: usize,
    pub prompt: String,
    pub candidates: Vec<CandidateView>,
    pub pair: Option<PairRecord>,
}

/// A run directory as it is now.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub name: String,
    pub dir: String,
    pub score_mode: ScoreMode,
    pub config: Option<String>,
    pub status: Status,
    pub iterations: Vec<IterationView>,
    pub training: Vec<TrainingCurve>,
    pub judge_eval: Vec<JudgeEvalView>,
    pub vs: Vec<VsView>,
    pub prompts: Vec<PromptRow>,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub details: Vec<PromptDetail>,
}

/// Iterations whose directory exists: iter1, iter2, ... up to the first missing one.
fn iterations_on_disk(layout: &Layout) -> usize {
    (1..)
        .take_while(|t| layout.dir.join(format!("iter{t}")).is_dir())
        .count()
}

fn model_dirs(layout: &Layout) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(layout.models())
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| id_order(&a.0, &b.0));
    v
}

impl Snapshot {
    pub fn read(dir: &Path) -> Snapshot {
        let layout = Layout::new(dir);
        let mut warnings = Vec::new();
        let config_text = std::fs::read_to_string(layout.config()).ok();
        let cfg: Option<RunConfig> = match config_text {
            Some(_) => match load_config(Some(&layout.config())) {
                Ok(c) => Some(c),
                Err(e) => {
                    warnings.push(format!("{}: {e:#}", layout.config().display()));
                    None
                }
            },
            None => {
                warnings.push(format!(
                    "{}: no config yet (not a run directory, or a run that has not started)",
                    layout.config().display()
                ));
                None
            }
        };
        let score_mode = cfg
            .as_ref()
            .map(|c| c.judge.score)
            .unwrap_or(ScoreMode::Expected);
        let manifest: Manifest = read_summary(&layout.manifest()).unwrap_or_default();

        let mut iterations = Vec::new();
        let mut prompts = Vec::new();
        let mut details = Vec::new();
        for t in 1..=iterations_on_disk(&layout) {
            let files = layout.iteration(t);
            let kept: Vec<PromptRecord> = read_lenient(&files.prompts, &mut warnings);
            let attempts: Vec<crate::commands::prompts::Attempt> = read_lenient(
                &crate::commands::prompts::attempts_path(&files.prompts),
                &mut warnings,
            );
            let mut dropped = BTreeMap::new();
            for a in &attempts {
                if let Some(r) = &a.rejected {
                    *dropped.entry(r.reason().to_string()).or_insert(0) += 1;
                }
            }
            // The two largest files, parsed side by side.
            let (mut candidate_warnings, mut judgement_warnings) = (Vec::new(), Vec::new());
            let (candidates, judgements) = std::thread::scope(|s| {
                let judgements = s.spawn(|| {
                    read_lenient::<JudgementRecord>(&files.judgements, &mut judgement_warnings)
                });
                let candidates: Vec<CandidateRecord> =
                    read_lenient(&files.candidates, &mut candidate_warnings);
                (candidates, judgements.join().expect("reading judgements"))
            });
            warnings.append(&mut candidate_warnings);
            warnings.append(&mut judgement_warnings);
            let pairs: Vec<PairRecord> = read_lenient(&files.pairs, &mut warnings);
            let diagnostics: Option<Diagnostics> = read_summary(&files.diagnostics);
            let (view, rows, ds) = iteration(
                t,
                &kept,
                attempts.len(),
                dropped,
                candidates,
                judgements,
                &pairs,
                diagnostics,
                score_mode,
            );
            iterations.push(view);
            prompts.extend(rows);
            details.extend(ds);
        }

        let training = model_dirs(&layout)
            .into_iter()
            .filter_map(|(name, p)| {
                let steps: Vec<BTreeMap<String, serde_json::Value>> =
                    read_lenient(&p.join("metrics.jsonl"), &mut warnings);
                let steps: Vec<BTreeMap<String, f64>> = steps
                    .into_iter()
                    .map(|m| {
                        m.into_iter()
                            .filter_map(|(k, v)| v.as_f64().map(|x| (k, x)))
                            .collect()
                    })
                    .collect();
                let kind = if steps.iter().any(|s| s.contains_key("rewards/margins")) {
                    "dpo"
                } else {
                    "sft"
                };
                (!steps.is_empty()).then(|| TrainingCurve {
                    model: name,
                    kind: kind.into(),
                    steps,
                })
            })
            .collect();

        let judge_eval = judge_evaluations(&layout, score_mode, &mut warnings);
        let vs = head_to_heads(&layout);
        let status = status(&layout, cfg.as_ref(), &manifest);
        Snapshot {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
            dir: dir.display().to_string(),
            score_mode,
            config: config_text,
            status,
            iterations,
            training,
            judge_eval,
            vs,
            prompts,
            warnings,
            details,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn iteration(
    t: usize,
    kept: &[PromptRecord],
    attempts: usize,
    dropped: BTreeMap<String, usize>,
    candidates: Vec<CandidateRecord>,
    judgements: Vec<JudgementRecord>,
    pairs: &[PairRecord],
    diagnostics: Option<Diagnostics>,
    mode: ScoreMode,
) -> (IterationView, Vec<PromptRow>, Vec<PromptDetail>) {
    // The records are taken apart into the page's views: their texts move, not copied.
    let (n_candidates, n_judgements) = (candidates.len(), judgements.len());
    let mut by_candidate: HashMap<String, Vec<JudgementRecord>> = HashMap::new();
    let mut written_scores = BTreeMap::new();
    for j in judgements {
        if let Some(s) = j.judgement.score {
            *written_scores.entry(format!("{s}")).or_insert(0) += 1;
        }
        by_candidate
            .entry(j.candidate_id.clone())
            .or_default()
            .push(j);
    }
    let mut by_prompt: HashMap<String, Vec<CandidateRecord>> = HashMap::new();
    for c in candidates {
        by_prompt.entry(c.prompt_id.clone()).or_default().push(c);
    }
    let pair_of: HashMap<&str, &PairRecord> =
        pairs.iter().map(|p| (p.prompt_id.as_str(), p)).collect();
    // Every prompt kept, and any prompt a candidate names (a file edited by hand).
    let mut ids: Vec<(String, String)> = kept
        .iter()
        .map(|p| (p.id.clone(), p.prompt.clone()))
        .collect();
    let kept_ids: HashSet<&str> = kept.iter().map(|p| p.id.as_str()).collect();
    for (id, cs) in &by_prompt {
        if !kept_ids.contains(id.as_str()) {
            ids.push((id.clone(), cs[0].prompt.clone()));
        }
    }
    ids.sort_by(|a, b| id_order(&a.0, &b.0));

    let mut candidate_scores = Vec::new();
    let mut rows = Vec::new();
    let mut details = Vec::new();
    for (id, prompt) in ids {
        let mut cs = by_prompt.remove(&id).unwrap_or_default();
        cs.sort_by_key(|c| c.candidate);
        let pair = pair_of.get(id.as_str()).copied();
        let (mut n_judged, mut failures) = (0, 0);
        let mut views = Vec::new();
        let mut means = Vec::new();
        // The pair names its answers by text; the first candidate with that text is the one.
        let (mut chosen_taken, mut rejected_taken) = (false, false);
        for c in cs {
            let mut js = by_candidate.remove(&c.id).unwrap_or_default();
            js.sort_by_key(|j| j.sample);
            n_judged += js.len();
            failures += js.iter().filter(|j| j.judgement.score.is_none()).count();
            let values: Vec<f64> = js.iter().filter_map(|j| j.value(mode)).collect();
            let mean =
                (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64);
            if let Some(m) = mean {
                means.push(m);
                candidate_scores.push(m);
            }
            let role = match pair {
                Some(p) if !chosen_taken && p.chosen == c.response => {
                    chosen_taken = true;
                    "chosen"
                }
                Some(p) if !rejected_taken && p.rejected == c.response => {
                    rejected_taken = true;
                    "rejected"
                }
                _ => "",
            };
            views.push(CandidateView {
                id: c.id,
                index: c.candidate,
                response: c.response,
                finish_reason: c.finish_reason,
                mean,
                role: role.into(),
                judgements: js
                    .into_iter()
                    .map(|j| JudgementView {
                        id: j.id,
                        sample: j.sample,
                        raw: j.judgement.raw,
                        score: j.judgement.score,
                        expected: j.judgement.distribution.as_ref().map(|d| d.expected),
                        forced_verdict: j.judgement.forced_verdict,
                        failure: j
                            .judgement
                            .failure
                            .as_ref()
                            .map(|f| format!("{f:?}").to_lowercase()),
                    })
                    .collect(),
            });
        }
        let spread = (means.len() >= 2).then(|| {
            means.iter().cloned().fold(f64::MIN, f64::max)
                - means.iter().cloned().fold(f64::MAX, f64::min)
        });
        rows.push(PromptRow {
            id: id.clone(),
            t,
            prompt: prompt.chars().take(300).collect(),
            candidates: views.len(),
            judgements: n_judged,
            parse_failures: failures,
            spread,
            margin: pair.map(|p| p.chosen_score - p.rejected_score),
            length_diff: pair
                .map(|p| p.chosen.chars().count() as i64 - p.rejected.chars().count() as i64),
            paired: pair.is_some(),
        });
        details.push(PromptDetail {
            id,
            t,
            prompt,
            candidates: views,
            pair: pair.cloned(),
        });
    }
    let view = IterationView {
        t,
        prompts_kept: kept.len(),
        attempts,
        dropped,
        candidates: n_candidates,
        judgements: n_judgements,
        written_scores,
        candidate_scores,
        margins: pairs
            .iter()
            .map(|p| p.chosen_score - p.rejected_score)
            .collect(),
        chosen_chars: pairs.iter().map(|p| p.chosen.chars().count()).collect(),
        rejected_chars: pairs.iter().map(|p| p.rejected.chars().count()).collect(),
        diagnostics,
    };
    (view, rows, details)
}

/// `eval/judge_mN.jsonl` of every model, with the replies' texts from the evaluation data.
fn judge_evaluations(
    layout: &Layout,
    mode: ScoreMode,
    warnings: &mut Vec<String>,
) -> Vec<JudgeEvalView> {
    let eval = layout.evaluation();
    // Reply texts by (prompt id, index in rank order), as `srlm eval judge` numbers them.
    let mut texts: HashMap<(String, usize), (String, String)> = HashMap::new();
    let data_dir = &eval.data_dir;
    if let Ok(rd) = std::fs::read_dir(data_dir) {
        for e in rd.flatten() {
            let trees: Vec<srlm_core::oasst::Tree> = read_lenient(&e.path(), &mut Vec::new());
            for tree in &trees {
                for turn in ranked_turns(tree, &TreeFilter::default()) {
                    for (i, (text, _)) in turn.replies.iter().enumerate() {
                        texts.insert((turn.id.clone(), i), (turn.prompt.clone(), text.clone()));
                    }
                }
            }
        }
    }
    let mut out = Vec::new();
    for m in 1.. {
        let path = eval.judge(m);
        if !path.exists() {
            // Models are evaluated in order; a gap ends the list unless a later one exists.
            if !eval.judge(m + 1).exists() {
                break;
            }
            continue;
        }
        #[derive(serde::Deserialize)]
        struct EvalRecord {
            prompt_id: String,
            reply: usize,
            human_rank: u32,
            #[serde(flatten)]
            judgement: srlm_core::judge::JudgeSample,
        }
        let records: Vec<EvalRecord> = read_lenient(&path, warnings);
        let mut by_prompt: BTreeMap<String, Vec<EvalRecord>> = BTreeMap::new();
        for r in records {
            by_prompt.entry(r.prompt_id.clone()).or_default().push(r);
        }
        let prompts = by_prompt
            .into_iter()
            .map(|(id, mut rs)| {
                rs.sort_by_key(|r| r.reply);
                let replies: Vec<EvalReply> = rs
                    .iter()
                    .map(|r| EvalReply {
                        text: texts
                            .get(&(id.clone(), r.reply))
                            .map(|t| t.1.clone())
                            .unwrap_or_default(),
                        human_rank: r.human_rank,
                        score: r.judgement.score,
                        expected: r.judgement.distribution.as_ref().map(|d| d.expected),
                        raw: r.judgement.raw.clone(),
                    })
                    .collect();
                let value = |r: &EvalRecord| r.judgement.value(mode);
                let (mut pairs, mut wrong) = (0, 0);
                for (i, a) in rs.iter().enumerate() {
                    for b in &rs[i + 1..] {
                        if a.human_rank == b.human_rank {
                            continue;
                        }
                        let (Some(va), Some(vb)) = (value(a), value(b)) else {
                            continue;
                        };
                        pairs += 1;
                        // Rank 0 is best: the judge agrees when the lower rank scores higher.
                        let agrees = if a.human_rank < b.human_rank {
                            va > vb
                        } else {
                            vb > va
                        };
                        wrong += (!agrees) as usize;
                    }
                }
                EvalPrompt {
                    prompt: texts
                        .get(&(id.clone(), 0))
                        .map(|t| t.0.clone())
                        .unwrap_or_default(),
                    id,
                    replies,
                    disagreements: wrong,
                    pairs,
                }
            })
            .collect();
        out.push(JudgeEvalView {
            model: format!("m{m}"),
            summary: read_summary(&PathBuf::from(format!("{}.metrics.json", path.display()))),
            prompts,
        });
    }
    out
}

fn head_to_heads(layout: &Layout) -> Vec<VsView> {
    let eval = layout.dir.join("eval");
    let mut v: Vec<VsView> = std::fs::read_dir(&eval)
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("vs_"))
                .filter_map(|e| {
                    Some(VsView {
                        name: e.file_name().to_string_lossy().into_owned(),
                        summary: read_summary(&e.path().join("summary.json"))?,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| id_order(&a.name, &b.name));
    v
}

/// Where a stage comes in a run, from its name, for a run that predates `plan.json`: the seed
/// and M1's stages, then each iteration's, then the evaluation.
fn stage_rank(name: &str) -> (usize, usize, usize, String) {
    let words: Vec<&str> = name.split_whitespace().collect();
    let n = |s: &str| s.trim_start_matches('m').parse::<usize>().unwrap_or(0);
    let (group, t, step) = match words.as_slice() {
        ["seed"] => (0, 0, 0),
        ["sft", "m1-seed"] => (0, 0, 1),
        ["eft", "judge"] => (0, 0, 2),
        ["eft"] => (0, 0, 3),
        ["sft", _] => (0, 0, 4),
        ["prompts", t] => (1, n(t), 0),
        ["sample", t] => (1, n(t), 1),
        ["judge", t] => (1, n(t), 2),
        ["pairs", t] => (1, n(t), 3),
        ["dpo", m] => (1, n(m).saturating_sub(1), 4),
        ["eval", "judge", m] => (2, 0, n(m)),
        ["eval", "vs", m, ..] => (3, 0, n(m)),
        _ => (4, 0, 0),
    };
    (group, t, step, name.to_string())
}

/// What an unfinished stage has written so far.
fn judgements(n: usize) -> String {
    format!("{n} judgement{} written", if n == 1 { "" } else { "s" })
}

fn progress(layout: &Layout, cfg: Option<&RunConfig>, stage: &str) -> Option<String> {
    let words: Vec<&str> = stage.split_whitespace().collect();
    let t = |s: &str| s.parse::<usize>().ok();
    let lines = |p: PathBuf| count_lines(&p);
    match words.as_slice() {
        ["prompts", n] => {
            let f = layout.iteration(t(n)?);
            let total = cfg
                .map(|c| c.prompts.count.to_string())
                .unwrap_or("?".into());
            Some(format!("{} of {total} prompts kept", lines(f.prompts)))
        }
        ["sample", n] => {
            let f = layout.iteration(t(n)?);
            let total = cfg.map(|c| (lines(f.prompts.clone()) * c.sample.n).to_string());
            Some(format!(
                "{} of {} candidates",
                lines(f.candidates),
                total.unwrap_or("?".into())
            ))
        }
        ["judge", n] => {
            let f = layout.iteration(t(n)?);
            let total = cfg.map(|c| (lines(f.candidates.clone()) * c.judge.k).to_string());
            Some(format!(
                "{} of {} judgements",
                lines(f.judgements),
                total.unwrap_or("?".into())
            ))
        }
        ["eft", "judge"] => Some(judgements(lines(layout.bootstrap().judgements))),
        ["eval", "judge", m] => Some(judgements(lines(
            layout.dir.join("eval").join(format!("judge_{m}.jsonl")),
        ))),
        ["sft" | "dpo", m] => {
            let steps = lines(layout.models().join(m).join("metrics.jsonl"));
            Some(format!("step {steps}"))
        }
        _ => None,
    }
}

fn status(layout: &Layout, cfg: Option<&RunConfig>, manifest: &Manifest) -> Status {
    // `srlm run` writes its plan's stage names; without it, the finished stages are all we know.
    let planned: Vec<String> = std::fs::read_to_string(layout.plan())
        .ok()
        .and_then(|s| serde_json::from_str::<crate::pipeline::layout::PlanFile>(&s).ok())
        .map(|p| p.stages)
        .unwrap_or_else(|| {
            let mut names: Vec<String> = manifest.stages.keys().cloned().collect();
            names.sort_by_key(|n| stage_rank(n));
            names
        });
    let last_write = newest_write(&layout.dir).map(age_s);
    let writing = last_write.is_some_and(|a| a < STALLED_AFTER_S);
    let mut current = None;
    let stages: Vec<StageStatus> = planned
        .iter()
        .map(|name| match manifest.stages.get(name) {
            Some(e) => StageStatus {
                name: name.clone(),
                state: "done".into(),
                seconds: Some(e.seconds),
                peak_rss_mib: e.peak_rss_mib,
                stats: e.stats.clone(),
                progress: None,
            },
            None => {
                let first = current.is_none();
                if first {
                    current = Some(name.clone());
                }
                StageStatus {
                    name: name.clone(),
                    state: match (first, writing) {
                        (true, true) => "running",
                        (true, false) => "stopped",
                        _ => "pending",
                    }
                    .into(),
                    seconds: None,
                    peak_rss_mib: None,
                    stats: None,
                    progress: if first {
                        progress(layout, cfg, name)
                    } else {
                        None
                    },
                }
            }
        })
        .collect();
    let finished = current.is_none() && !stages.is_empty();
    let state = match (&current, writing) {
        (None, _) if finished => "finished".to_string(),
        (None, _) => "not started".to_string(),
        (Some(s), true) => format!("running: {s}"),
        (Some(s), false) => format!(
            "stopped at {s}: nothing written for {:.0} min (rerun the same `srlm run` to resume)",
            last_write.unwrap_or(0.0) / 60.0
        ),
    };
    Status {
        finished,
        current,
        state,
        last_write_s: last_write,
        stages,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::layout::PlanFile;
    use srlm_core::summaries::StageEntry;

    /// Every file under `dir` with its size and modification time.
    fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    stack.push(e.path());
                }
                out.insert(e.path(), (meta.len(), meta.modified().unwrap()));
            }
        }
        out
    }

    /// A run stopped (or still going) in iteration 1's prompt writing: seed and SFT done, two
    /// prompts kept and a third half written.
    fn half_written_run(dir: &Path) {
        let plan = PlanFile {
            stages: [
                "seed",
                "sft m1",
                "prompts 1",
                "sample 1",
                "judge 1",
                "pairs 1",
                "dpo m2",
            ]
            .map(String::from)
            .to_vec(),
        };
        std::fs::write(dir.join("plan.json"), serde_json::to_string(&plan).unwrap()).unwrap();
        let entry = |s: f64| StageEntry {
            command: vec![],
            inputs: BTreeMap::new(),
            outputs: vec![],
            seconds: s,
            peak_rss_mib: None,
            stats: None,
            server: None,
        };
        let manifest = Manifest {
            schema_version: 1,
            stages: [
                ("seed".to_string(), entry(0.5)),
                ("sft m1".to_string(), entry(12.0)),
            ]
            .into_iter()
            .collect(),
        };
        std::fs::write(
            dir.join("manifest.json"),
            serde_json::to_string(&manifest).unwrap(),
        )
        .unwrap();
        let it = dir.join("iter1");
        std::fs::create_dir_all(&it).unwrap();
        std::fs::write(
            it.join("prompts.jsonl"),
            "{\"id\":\"it1-0\",\"prompt\":\"Name a colour.\"}\n\
             {\"id\":\"it1-1\",\"prompt\":\"Name a bird.\"}\n\
             {\"id\":\"it1-2\",\"prom",
        )
        .unwrap();
    }

    #[test]
    fn a_half_written_run_shows_what_is_there_and_what_is_running() {
        let dir = tempfile::tempdir().unwrap();
        half_written_run(dir.path());
        let snap = Snapshot::read(dir.path());

        // The torn last line is left out and said.
        let ids: Vec<&str> = snap.prompts.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["it1-0", "it1-1"]);
        assert!(
            snap.warnings
                .iter()
                .any(|w| w.contains("prompts.jsonl: line 3 is incomplete")),
            "{:?}",
            snap.warnings
        );
        // Files were written just now: the first unfinished stage is running, with what it
        // has written so far; the rest are pending.
        let s = &snap.status;
        assert!(!s.finished);
        assert_eq!(s.current.as_deref(), Some("prompts 1"));
        assert_eq!(s.state, "running: prompts 1");
        let states: Vec<&str> = s.stages.iter().map(|st| st.state.as_str()).collect();
        assert_eq!(
            states,
            ["done", "done", "running", "pending", "pending", "pending", "pending"]
        );
        assert_eq!(s.stages[1].seconds, Some(12.0));
        // No config: the target count is unknown, and the kept lines are counted.
        assert_eq!(s.stages[2].progress.as_deref(), Some("2 of ? prompts kept"));
        assert_eq!(snap.iterations.len(), 1);
        assert_eq!(snap.iterations[0].prompts_kept, 2);
    }

    #[test]
    fn a_run_with_every_planned_stage_done_is_finished_and_a_silent_one_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        half_written_run(dir.path());
        let plan = PlanFile {
            stages: vec!["seed".into(), "sft m1".into()],
        };
        std::fs::write(
            dir.path().join("plan.json"),
            serde_json::to_string(&plan).unwrap(),
        )
        .unwrap();
        let s = Snapshot::read(dir.path()).status;
        assert!(s.finished && s.current.is_none() && s.state == "finished");

        // Back to the longer plan, every file dated an hour ago: stopped, not running.
        half_written_run(dir.path());
        let hour_ago = SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in listing(dir.path()).keys() {
            if p.is_file() {
                let f = std::fs::File::options().append(true).open(p).unwrap();
                f.set_modified(hour_ago).unwrap();
            }
        }
        let s = Snapshot::read(dir.path()).status;
        assert_eq!(s.stages[2].state, "stopped");
        assert!(
            s.state
                .starts_with("stopped at prompts 1: nothing written for 60 min"),
            "{}",
            s.state
        );
    }

    #[test]
    fn reading_a_run_and_building_its_page_write_nothing_in_it() {
        let dir = tempfile::tempdir().unwrap();
        half_written_run(dir.path());
        let before = listing(dir.path());
        let snap = Snapshot::read(dir.path());
        let site = super::super::site::build(&[snap], "server");
        assert!(site.contains_key("data.js"));
        assert_eq!(listing(dir.path()), before);
    }
}
