//! `srlm report RUN_DIR`: report.md with PNG plots for a run of `srlm run`: per iteration, the
//! reward-hacking diagnostics (`srlm_core::diagnostics`, as the pairs stage wrote them to
//! `iterN/diagnostics.json`), the judge's agreement with human rankings and the
//! head-to-head win rates (when the run's evaluation produced them, under `RUN/eval/`), the
//! training curves, and the stage timings.

use crate::pipeline::config::RunConfig;
use crate::pipeline::manifest::Manifest;
use anyhow::{Context, Result};
use clap::Args;
use plotters::prelude::*;
use serde_json::Value;
use srlm_core::diagnostics::{diagnose, Diagnostics};
use srlm_core::health::{evaluation_flags, iteration_flags, FlagKind, Thresholds};
use srlm_core::jsonl::{read_jsonl, write_atomic};
use srlm_core::judge::ScoreMode;
use srlm_core::metrics::JudgeAgreement;
use srlm_core::pairs::build_pairs;
use srlm_core::stages::{CandidateRecord, JudgementRecord};
use srlm_core::summaries::{read_summary, JudgeEvalSummary, VsSummary};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// The run directory of `srlm run`.
    pub run: PathBuf,
    /// Where report.md and the plots go (default: RUN/report).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

type PlotResult = std::result::Result<(), Box<dyn std::error::Error>>;

fn plot_err(e: Box<dyn std::error::Error>) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e}")
}

/// One iteration's artifacts, diagnosed.
struct Iteration {
    t: usize,
    diagnostics: Diagnostics,
}

fn iterations(run: &Path, cfg: &RunConfig) -> Result<Vec<Iteration>> {
    let opts = cfg.pairs.options(cfg.judge.score);
    let mut out = Vec::new();
    for t in 1.. {
        let it = run.join(format!("iter{t}"));
        let (c, j) = (it.join("candidates.jsonl"), it.join("judgements.jsonl"));
        if !c.exists() || !j.exists() {
            break;
        }
        let candidates: Vec<CandidateRecord> =
            read_jsonl(&c, "")?.into_iter().map(|l| l.record).collect();
        let judgements: Vec<JudgementRecord> =
            read_jsonl(&j, "")?.into_iter().map(|l| l.record).collect();
        // The pairs stage wrote them; a run from before it did is diagnosed here, in memory,
        // as are the figures a stage of an older srlm did not write (the score range, and how
        // often length control chose).
        let fresh = || {
            let (pairs, stats) = build_pairs(&candidates, &judgements, &opts);
            diagnose(&candidates, &judgements, &pairs, &stats, cfg.judge.score)
        };
        let d = match read_summary::<Diagnostics>(&it.join("diagnostics.json")) {
            Some(d) if d.pairs > 0 && d.chosen_not_top.is_none() => {
                let f = fresh();
                Diagnostics {
                    prompt_score_range: f.prompt_score_range,
                    chosen_not_top: f.chosen_not_top,
                    ..d
                }
            }
            Some(d) => d,
            None => fresh(),
        };
        out.push(Iteration { t, diagnostics: d });
    }
    Ok(out)
}

/// The series' labels in a box.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
) -> PlotResult
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Score histograms of every iteration, side by side.
fn plot_scores(path: &Path, its: &[Iteration]) -> PlotResult {
    let root = BitMapBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let bins: Vec<f64> = (0..=10).map(|i| i as f64 / 2.0).collect();
    let share = |d: &Diagnostics, b: f64| -> f64 {
        let total: usize = d.score_histogram.values().sum();
        let key = if b.fract() == 0.0 {
            format!("{}", b as i64)
        } else {
            format!("{b}")
        };
        d.score_histogram.get(&key).copied().unwrap_or(0) as f64 / total.max(1) as f64
    };
    let ymax = its
        .iter()
        .flat_map(|it| bins.iter().map(|&b| share(&it.diagnostics, b)))
        .fold(0.1f64, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Judge scores per iteration (share of parsed judgements)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5f64..5.5f64, 0f64..ymax * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("score")
        .y_desc("share")
        .disable_x_mesh()
        .draw()?;
    let n = its.len().max(1) as f64;
    let w = 0.4 / n;
    for (k, it) in its.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let off = -0.2 + k as f64 * w;
        chart
            .draw_series(bins.iter().map(|&b| {
                let x = b + off;
                Rectangle::new(
                    [(x, 0.0), (x + w * 0.9, share(&it.diagnostics, b))],
                    color.filled(),
                )
            }))?
            .label(format!("iteration {} (M{})", it.t, it.t))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// Lines over iterations: each series a (name, values by iteration).
fn plot_lines(
    path: &Path,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    xs: &[usize],
    series: &[(String, Vec<Option<f64>>)],
) -> PlotResult {
    let root = BitMapBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let values: Vec<f64> = series
        .iter()
        .flat_map(|s| s.1.iter().flatten().copied())
        .collect();
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if lo.is_finite() {
        (lo.min(0.0), hi.max(lo + 1e-9) * 1.1)
    } else {
        (0.0, 1.0)
    };
    let x0 = *xs.first().unwrap_or(&1) as f64 - 0.5;
    let x1 = *xs.last().unwrap_or(&1) as f64 + 0.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .x_labels(xs.len().max(2))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    for (k, (name, vals)) in series.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let pts: Vec<(f64, f64)> = xs
            .iter()
            .zip(vals)
            .filter_map(|(&x, v)| v.map(|v| (x as f64, v)))
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

/// Win rates with their 95% intervals, one bar per comparison.
fn plot_win_rates(path: &Path, rows: &[(String, f64, f64, f64)]) -> PlotResult {
    let root = BitMapBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = rows.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Head-to-head: A's score (win = 1, tie = 1/2) with 95% CI",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d((0..n).into_segmented(), 0f64..1f64)?;
    chart
        .configure_mesh()
        .y_desc("score of A")
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => rows.get(*i).map(|r| r.0.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        Rectangle::new(
            [
                (SegmentValue::Exact(i), 0.0),
                (SegmentValue::Exact(i + 1), r.1),
            ],
            COLORS[0].mix(0.7).filled(),
        )
    }))?;
    chart.draw_series(rows.iter().enumerate().map(|(i, r)| {
        PathElement::new(
            vec![
                (SegmentValue::CenterOf(i), r.2),
                (SegmentValue::CenterOf(i), r.3),
            ],
            BLACK.stroke_width(2),
        )
    }))?;
    chart.draw_series(std::iter::once(PathElement::new(
        vec![(SegmentValue::Exact(0), 0.5), (SegmentValue::Exact(n), 0.5)],
        RED.stroke_width(1),
    )))?;
    root.present()?;
    Ok(())
}

/// Loss over steps for every trained model.
fn plot_training(path: &Path, curves: &[(String, Vec<(f64, f64)>)]) -> PlotResult {
    let root = BitMapBackend::new(path, (800, 450)).into_drawing_area();
    root.fill(&WHITE)?;
    let xmax = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let ys: Vec<f64> = curves
        .iter()
        .flat_map(|c| c.1.iter().map(|p| p.1))
        .collect();
    let ymax = ys.iter().copied().fold(0.1, f64::max) * 1.1;
    let ymin = ys.iter().copied().fold(f64::INFINITY, f64::min).min(0.0);
    let mut chart = ChartBuilder::on(&root)
        .caption("Training loss per step", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..xmax, ymin..ymax)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()?;
    for (k, (name, pts)) in curves.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    legend(&mut chart)?;
    root.present()?;
    Ok(())
}

fn f(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
}

/// A share as a whole percentage, "-" when there is none.
fn percent(v: Option<f64>) -> String {
    v.map(|x| format!("{:.0}%", 100.0 * x))
        .unwrap_or_else(|| "-".into())
}

pub fn run(a: ReportArgs) -> Result<()> {
    let path = write_report(&a.run, a.out.as_deref())?;
    println!("{}", path.display());
    Ok(())
}

pub fn write_report(run: &Path, out: Option<&Path>) -> Result<PathBuf> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
        .map_err(|_| anyhow::anyhow!("cannot load the embedded font"))?;
    let cfg_text = std::fs::read_to_string(run.join("config.toml"))
        .with_context(|| format!("{} is not a run directory of `srlm run`", run.display()))?;
    let cfg: RunConfig =
        toml::from_str(&cfg_text).with_context(|| format!("{}/config.toml", run.display()))?;
    let manifest: Manifest = read_summary(&run.join("manifest.json")).unwrap_or_default();
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| run.join("report"));
    std::fs::create_dir_all(&out)?;
    let its = iterations(run, &cfg)?;
    let xs: Vec<usize> = its.iter().map(|i| i.t).collect();
    let mut md = String::new();
    writeln!(md, "# srlm run report: `{}`\n", run.display())?;
    writeln!(
        md,
        "{} iteration(s) of the self-rewarding loop after SFT on the seed (M1); iteration t samples and judges with M_t and trains M_(t+1) by DPO.\n",
        its.len()
    )?;

    // Diagnostics.
    if !its.is_empty() {
        plot_scores(&out.join("scores.png"), &its).map_err(plot_err)?;
        let series = |name: &str, g: &dyn Fn(&Diagnostics) -> Option<f64>| {
            (
                name.to_string(),
                its.iter().map(|i| g(&i.diagnostics)).collect::<Vec<_>>(),
            )
        };
        plot_lines(
            &out.join("lengths.png"),
            "Response length per iteration (characters, mean)",
            "iteration",
            "characters",
            &xs,
            &[
                series("all candidates", &|d| Some(d.response_chars.mean)),
                series("chosen", &|d| Some(d.chosen_chars.mean)),
                series("rejected", &|d| Some(d.rejected_chars.mean)),
            ],
        )
        .map_err(plot_err)?;
        writeln!(md, "## Judging and pairs, per iteration\n")?;
        writeln!(md, "![scores](scores.png)\n\n![lengths](lengths.png)\n")?;
        writeln!(md, "| iteration | prompts | candidates | judgements | parse failures | verdicts asked | mean score | k samples agree (k > 1) | sample std | tied prompts | unscored prompts | pairs | mean margin | median score range | chosen by length control | mean length | chosen length | rejected length | length-score Spearman |")?;
        writeln!(
            md,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        )?;
        for it in &its {
            let d = &it.diagnostics;
            writeln!(
                md,
                "| {} | {} | {} | {} | {} ({:.0}%) | {} | {:.2} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {:.0} | {:.0} | {:.0} | {} |",
                it.t, d.prompts, d.candidates, d.judgements, d.parse_failures, 100.0 * d.parse_failure_rate,
                d.forced_verdicts, d.candidate_scores.mean, percent(d.judge_samples_agree), f(d.judge_sample_std), d.prompts_tied,
                d.prompts_unscored, d.pairs, d.pair_margins.mean, d.prompt_score_range.median, percent(d.chosen_not_top),
                d.response_chars.mean, d.chosen_chars.mean,
                d.rejected_chars.mean, f(d.length_score_spearman)
            )?;
        }
        writeln!(md, "\nParse failures are judgements left without a score; verdicts asked are those that wrote none and were asked for it after `Score:` (a judge caught in a repetition loop), scored from that continuation.\n")?;
        writeln!(md, "A positive length-score correlation that grows over iterations, or chosen answers that keep getting longer than rejected ones, is the length bias the paper observed; `pairs.length_control` counters it. \"Chosen by length control\" is the share of pairs whose chosen answer is not the prompt's top-scored one: where the judge puts a prompt's answers close together (the score range), a tolerance in score points lets length pick most pairs.\n")?;
    }

    // The judge against human rankings, per model.
    let eval = run.join("eval");
    let mut judge_rows: Vec<(usize, JudgeEvalSummary)> = Vec::new();
    for m in 0..=its.len() + 1 {
        if let Some(e) = read_summary(&eval.join(format!("judge_m{m}.jsonl.metrics.json"))) {
            judge_rows.push((m, e));
        }
    }
    let mut flags = iteration_flags(
        &its.iter()
            .map(|i| i.diagnostics.clone())
            .collect::<Vec<_>>(),
        &Thresholds::default(),
    );
    for (m, e) in &judge_rows {
        flags.extend(evaluation_flags(*m, &e.judges, e.score));
    }
    if !judge_rows.is_empty() {
        let ms: Vec<usize> = judge_rows.iter().map(|r| r.0).collect();
        // No scored pair of replies (a judge that never gave a score): nothing to plot.
        let acc = |a: &JudgeAgreement| (a.pairs > 0).then_some(a.pairwise_accuracy);
        let mut series: Vec<(String, Vec<Option<f64>>)> = vec![
            (
                "pairwise accuracy, written scores".into(),
                judge_rows
                    .iter()
                    .map(|r| acc(&r.1.judges.sampled))
                    .collect(),
            ),
            (
                "pairwise accuracy, expected scores".into(),
                judge_rows
                    .iter()
                    .map(|r| r.1.judges.expected.as_ref().and_then(acc))
                    .collect(),
            ),
            (
                "pairwise accuracy, longer reply wins".into(),
                judge_rows.iter().map(|r| acc(&r.1.judges.length)).collect(),
            ),
        ];
        series.retain(|s| s.1.iter().any(Option::is_some));
        plot_lines(
            &out.join("judge.png"),
            "The judge against held-out human rankings, per model",
            "model M_t",
            "pairwise accuracy",
            &ms,
            &series,
        )
        .map_err(plot_err)?;
        writeln!(
            md,
            "## The judge against human rankings\n\n![judge](judge.png)\n\nEach model scores the human-ranked replies of {} (pairs of replies with different human ranks); the rows below it are the trivial judges on the same pairs. Pairwise accuracy counts a tie as a miss; ties are shown apart.\n",
            judge_rows[0].1.data
        )?;
        writeln!(md, "| model | judge | prompts | pairs | parse failures (verdicts asked) | pairwise accuracy | ties | exact match | Spearman | Kendall tau-b | 5-best |")?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|")?;
        for (m, e) in &judge_rows {
            let j = &e.judges;
            let mut rows: Vec<(String, &JudgeAgreement)> =
                vec![("written score".into(), &j.sampled)];
            if let Some(x) = &j.expected {
                rows.push(("expected score".into(), x));
            }
            let used = match j.under(e.score).mode {
                ScoreMode::Expected => "expected score",
                ScoreMode::Sampled => "written score",
            };
            rows.push(("longer reply wins".into(), &j.length));
            rows.push(("same score for all".into(), &j.constant));
            for (name, a) in rows {
                let scored = a.pairs > 0;
                let g = |v: f64| {
                    if scored {
                        format!("{v:.3}")
                    } else {
                        "-".into()
                    }
                };
                let head = if name == "written score" {
                    format!("M{m}")
                } else {
                    String::new()
                };
                let marked = if name == used {
                    format!("**{name}**")
                } else {
                    name
                };
                writeln!(
                    md,
                    "| {head} | {marked} | {} | {} | {:.1}% ({:.1}%) | {} | {} | {} | {} | {} | {} |",
                    e.prompts,
                    a.pairs,
                    100.0 * e.parse_failure_rate,
                    100.0 * e.forced_verdict_rate,
                    g(a.pairwise_accuracy),
                    if scored {
                        format!("{:.0}%", 100.0 * a.pairwise_ties)
                    } else {
                        "-".into()
                    },
                    g(a.exact_match),
                    f(a.spearman.filter(|_| scored)),
                    f(a.kendall_tau.filter(|_| scored)),
                    f(a.five_best.filter(|_| scored)),
                )?;
            }
        }
        writeln!(md, "\nIn bold: the reading the run uses (`judge.score`).\n")?;
        // Where length is wrong, a judge is right only by reading something else.
        let mut split_rows = Vec::new();
        for (m, e) in &judge_rows {
            // Summaries written before the split existed have none.
            if let Some(s) = e
                .judges
                .under(e.score)
                .by_length
                .filter(|s| s.longer_preferred_pairs + s.shorter_preferred_pairs > 0)
            {
                split_rows.push(format!(
                    "| M{m} | {}, {} | {}, {} | {} |",
                    s.longer_preferred_pairs,
                    f(s.longer_preferred_accuracy),
                    s.shorter_preferred_pairs,
                    f(s.shorter_preferred_accuracy),
                    f(s.agrees_with_length),
                ));
            }
        }
        if !split_rows.is_empty() {
            writeln!(md, "The same pairs split by length (pairs of equal length left out), under the reading the run uses: \"the longer reply wins\" is right on every pair of the first part and none of the second; a judge at chance, on half of each; a judge that reads content and not length, on more than half of both.\n")?;
            writeln!(md, "| model | humans preferred the longer reply: pairs, judge right | humans preferred the shorter reply: pairs, judge right | judge orders pairs as length does |")?;
            writeln!(md, "|---|---|---|---|")?;
            writeln!(md, "{}\n", split_rows.join("\n"))?;
        }
    }

    // Judge health: what in the run says the judge is not judging, and what to change.
    writeln!(md, "## Judge health\n")?;
    if flags.is_empty() {
        writeln!(md, "No warning: no collapse onto one score, samples that agree, few ties and parse failures, no growing length preference, and (where evaluated) a judge above the length baseline.\n")?;
    } else {
        writeln!(
            md,
            "| where | warning | seen | what to change |\n|---|---|---|---|"
        )?;
        for fl in &flags {
            let at = match fl.kind {
                FlagKind::BelowLengthBaseline => format!("M{}", fl.at),
                _ => format!("iteration {}", fl.at),
            };
            writeln!(
                md,
                "| {at} | {} | {} | {} |",
                serde_json::to_value(fl.kind)?.as_str().unwrap_or(""),
                fl.seen,
                fl.fix
            )?;
        }
        writeln!(md)?;
    }

    // Head-to-head.
    let mut vs_rows = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&eval) {
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("summary.json").exists())
            .collect();
        dirs.sort();
        for d in dirs {
            let Some(v) = read_summary::<VsSummary>(&d.join("summary.json")) else {
                continue;
            };
            let w = v.a_win_rate;
            let name = d
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .replace("vs_", "")
                .replace('_', " vs ");
            vs_rows.push((name, w.score, w.ci95.0, w.ci95.1, v));
        }
    }
    if !vs_rows.is_empty() {
        let rows: Vec<(String, f64, f64, f64)> = vs_rows
            .iter()
            .map(|r| (r.0.clone(), r.1, r.2, r.3))
            .collect();
        plot_win_rates(&out.join("winrates.png"), &rows).map_err(plot_err)?;
        writeln!(md, "## Head-to-head\n\n![win rates](winrates.png)\n")?;
        writeln!(md, "| A vs B | mode | prompts | A wins | ties | B wins | A's score (95% CI) | unparsed | first-shown win share |")?;
        writeln!(md, "|---|---|---|---|---|---|---|---|---|")?;
        for (name, score, lo, hi, v) in &vs_rows {
            let w = &v.a_win_rate;
            writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {} | {score:.3} ({lo:.3}-{hi:.3}) | {} | {} |",
                v.mode,
                v.compared,
                w.wins,
                w.ties,
                w.losses,
                v.judge_unparsed,
                f(v.first_position_win_share)
            )?;
        }
        writeln!(md)?;
    }

    // Training curves.
    let mut curves = Vec::new();
    for m in 1..=its.len() + 1 {
        let p = run
            .join("models")
            .join(format!("m{m}"))
            .join("metrics.jsonl");
        if let Ok(rows) = read_jsonl::<Value>(&p, "") {
            let pts: Vec<(f64, f64)> = rows
                .iter()
                .filter_map(|r| Some((r.record["step"].as_f64()?, r.record["loss"].as_f64()?)))
                .collect();
            if !pts.is_empty() {
                curves.push((
                    format!("M{m} ({})", if m == 1 { "SFT" } else { "DPO" }),
                    pts,
                ));
            }
        }
    }
    if !curves.is_empty() {
        plot_training(&out.join("training.png"), &curves).map_err(plot_err)?;
        writeln!(md, "## Training\n\n![training](training.png)\n")?;
    }

    // Stage timings.
    if !manifest.stages.is_empty() {
        writeln!(
            md,
            "## Stages\n\n| stage | seconds | peak memory (MiB) | stats |\n|---|---|---|---|"
        )?;
        let mut stages: Vec<(&String, &crate::pipeline::manifest::StageEntry)> =
            manifest.stages.iter().collect();
        stages.sort_by_key(|a| stage_order(a.0));
        for (name, e) in stages {
            let stats = e
                .stats
                .as_ref()
                .map(|s| format!("`{s}`"))
                .unwrap_or_default();
            let peak = e
                .peak_rss_mib
                .map(|m| format!("{m:.0}"))
                .unwrap_or_default();
            writeln!(md, "| {name} | {:.0} | {peak} | {stats} |", e.seconds)?;
        }
        let total: f64 = manifest.stages.values().map(|e| e.seconds).sum();
        let peak = manifest
            .stages
            .values()
            .filter_map(|e| e.peak_rss_mib)
            .fold(None, |m: Option<f64>, p| Some(m.map_or(p, |m| m.max(p))))
            .map(|m| format!("{m:.0}"))
            .unwrap_or_default();
        writeln!(md, "| total | {total:.0} | {peak} | |\n")?;
    }
    writeln!(md, "Config:\n\n```toml\n{}```", cfg_text)?;
    let path = out.join("report.md");
    write_atomic(&path, md.as_bytes())?;
    // The same run as a page to browse (report/index.html), prompt by prompt.
    crate::view::write_static(run, &out)?;
    Ok(path)
}

/// Stages in the order they run: seed, sft, then per iteration prompts..dpo, then eval.
fn stage_order(name: &str) -> (usize, usize, String) {
    let num: usize = name
        .split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let kind = [
        "seed", "sft", "prompts", "sample", "judge", "pairs", "dpo", "eval",
    ]
    .iter()
    .position(|k| name.starts_with(k))
    .unwrap_or(9);
    match kind {
        0 | 1 => (0, kind, name.into()),
        6 => (num.saturating_sub(1), kind, name.into()),
        7 => (usize::MAX, kind, name.into()),
        _ => (num, kind, name.into()),
    }
}
