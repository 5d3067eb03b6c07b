//! The run browser in a real headless browser (Debian's Chromium through ChromeDriver): `srlm
//! view` on the tiny end-to-end run draws the overview's charts (with hover values), its prompt
//! table filters as one types, a prompt's page shows its candidates and every judgement of
//! them, two runs compare side by side, and the static report opened as file:// shows the same
//! page. Nothing in the run directory is written by any of it.
//!
//! Without Chromium and ChromeDriver the test says why and passes, unless
//! `SRLM_REQUIRE_BROWSER` is set (`.ci/run` installs both and sets it, so CI never skips).
//! `SRLM_VIEW_SCREENSHOTS=DIR` keeps the screenshots there (docs/view holds README's).

#[allow(dead_code)]
#[path = "../src/bench/browser.rs"]
mod browser;
mod common;

use browser::Browser;
use common::tiny_run::{config, ok, srlm_run};
use common::{lines, tiny_model};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

const WAIT: Duration = Duration::from_secs(60);

/// `srlm view` on `runs`, stopped when dropped.
struct View {
    child: Child,
    url: String,
}

impl View {
    fn start(runs: &[&Path]) -> View {
        let mut child = Command::new(env!("CARGO_BIN_EXE_srlm"))
            .arg("view")
            .args(runs)
            .args(["--port", "0"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .unwrap_or_else(|| panic!("srlm view printed no URL: {line:?}"))
            .to_string();
        View { child, url }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every path under `dir` with its size and modification time.
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

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn eval(b: &Browser, script: &str) -> Value {
    b.eval(script, json!([])).unwrap()
}

fn wait(b: &Browser, script: &str) -> Value {
    b.wait_for(script, WAIT).unwrap()
}

fn screenshot(b: &Browser, name: &str) {
    let dir = std::env::var_os("SRLM_VIEW_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("view"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    b.screenshot(&path).unwrap();
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        path.display()
    );
    eprintln!("screenshot: {}", path.display());
}

const CHARTS: &str =
    "return [...document.querySelectorAll('.chart svg')].map(s => s.getAttribute('aria-label'))";

/// The overview's text and charts once drawn.
fn overview(b: &Browser, url: &str) -> (String, Vec<String>) {
    b.goto(url).unwrap();
    wait(
        b,
        "return document.querySelectorAll('.chart svg').length >= 8",
    );
    let charts: Vec<String> = serde_json::from_value(eval(b, CHARTS)).unwrap();
    let text = eval(b, "return document.querySelector('#main').innerText");
    (text.as_str().unwrap().to_string(), charts)
}

/// A prompt's page: its text, the judgement record ids it shows, and how many candidates
/// are marked chosen and rejected.
fn prompt_page(b: &Browser) -> (String, Vec<String>, usize, usize) {
    wait(b, "return document.querySelector('#prompt-title')");
    let ids: Vec<String> = serde_json::from_value(eval(
        b,
        "return [...document.querySelectorAll('.judgement .ids')].map(e => e.textContent)",
    ))
    .unwrap();
    let chosen = eval(
        b,
        "return document.querySelectorAll('.candidate.chosen').length",
    );
    let rejected = eval(
        b,
        "return document.querySelectorAll('.candidate.rejected').length",
    );
    let text = eval(b, "return document.querySelector('#main').innerText");
    (
        text.as_str().unwrap().to_string(),
        ids,
        chosen.as_u64().unwrap() as usize,
        rejected.as_u64().unwrap() as usize,
    )
}

#[test]
fn the_run_browser_draws_a_run_in_a_real_browser() {
    let b = match Browser::start(1280, 1000) {
        Ok(b) => b,
        Err(why) if std::env::var_os("SRLM_REQUIRE_BROWSER").is_none() => {
            eprintln!("skipped: no headless browser here: {why}");
            return;
        }
        Err(why) => panic!("SRLM_REQUIRE_BROWSER is set and there is no browser: {why}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let cfg = dir.path().join("run.toml");
    std::fs::write(&cfg, config(&model)).unwrap();
    let run = dir.path().join("a");
    ok(&srlm_run(&cfg, &run, None));
    let other = dir.path().join("b");
    copy_dir(&run, &other);
    let before = listing(&run);

    // The prompt the page is asked about: one with a pair where the run made one.
    let pairs = lines(&run.join("iter2/pairs.jsonl"));
    let id = match pairs.first() {
        Some(p) => p["prompt_id"].as_str().unwrap().to_string(),
        None => lines(&run.join("iter2/prompts.jsonl"))[0]["id"]
            .as_str()
            .unwrap()
            .to_string(),
    };
    let judgement_ids: Vec<String> = lines(&run.join("iter2/judgements.jsonl"))
        .iter()
        .filter(|j| j["prompt_id"] == id.as_str())
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert!(!judgement_ids.is_empty());

    let view = View::start(&[&run]);

    // The overview: the run finished, its charts drawn from its data, values on hover.
    let (text, charts) = overview(&b, &view.url);
    for chart in [
        "Written scores per iteration",
        "Length-score correlation (Spearman)",
        "DPO loss",
        "Judge vs human ranks: pairwise accuracy",
        "Head-to-head win rate (95% CI in hover)",
        "Stage times (s)",
    ] {
        assert!(
            charts.iter().any(|c| c == chart),
            "{chart} not in {charts:?}"
        );
    }
    assert!(text.contains("Judge against human rankings"), "{text}");
    let status = eval(&b, "return document.querySelector('#status').innerText");
    assert!(status.as_str().unwrap().contains("a: finished"), "{status}");
    let tip = eval(
        &b,
        "const bar = document.querySelector('.chart svg [data-tip]');
         bar.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
         const tip = document.querySelector('#tip');
         return [tip.hidden, tip.textContent, bar.getAttribute('data-tip')]",
    );
    assert_eq!(tip[0], false, "{tip}");
    assert_eq!(tip[1], tip[2]);
    screenshot(&b, "overview.png");

    // The prompt table, searched as one types: the prompt's id leaves its row alone.
    eval(&b, "location.hash = '#prompts'");
    let all = wait(
        &b,
        "return document.querySelectorAll('#prompt-table tbody tr[data-id]').length",
    );
    let total = lines(&run.join("iter1/prompts.jsonl")).len()
        + lines(&run.join("iter2/prompts.jsonl")).len();
    assert_eq!(all, json!(total));
    b.type_into("#search", &id).unwrap();
    wait(
        &b,
        &format!("return document.querySelector('#count').textContent === '1 of {total} prompts'"),
    );
    let rows = eval(
        &b,
        "return [...document.querySelectorAll('#prompt-table tbody tr[data-id]')].map(r => r.dataset.id)",
    );
    assert_eq!(rows, json!([id]));
    // Sorting by margin puts the widest pair first.
    eval(&b, "document.querySelector('#search').value = ''; document.querySelector('#search').dispatchEvent(new Event('input'))");
    b.click("th[data-key=margin]").unwrap();
    let first = eval(
        &b,
        "return document.querySelector('#prompt-table tbody tr[data-id]').dataset.id",
    );
    let margin =
        |p: &Value| p["chosen_score"].as_f64().unwrap() - p["rejected_score"].as_f64().unwrap();
    let margins: BTreeMap<String, f64> = lines(&run.join("iter1/pairs.jsonl"))
        .iter()
        .chain(&pairs)
        .map(|p| (p["prompt_id"].as_str().unwrap().to_string(), margin(p)))
        .collect();
    if let Some(widest) = margins.values().copied().reduce(f64::max) {
        assert_eq!(
            margins.get(first.as_str().unwrap()),
            Some(&widest),
            "{first}"
        );
    }

    // One prompt's page, opened from its row: its candidates, each with all its judgements.
    b.type_into("#search", &id).unwrap();
    wait(
        &b,
        "return document.querySelector('#count').textContent.startsWith('1 of')",
    );
    b.click("#prompt-table tbody tr[data-id]").unwrap();
    let (prompt_text, shown, chosen, rejected) = prompt_page(&b);
    let candidates = eval(&b, "return document.querySelectorAll('.candidate').length");
    let want_candidates = lines(&run.join("iter2/candidates.jsonl"))
        .iter()
        .filter(|c| c["prompt_id"] == id.as_str())
        .count();
    assert_eq!(candidates, json!(want_candidates));
    let mut sorted = shown.clone();
    sorted.sort();
    let mut want = judgement_ids.clone();
    want.sort();
    assert_eq!(
        sorted, want,
        "the page shows every judgement of the prompt's candidates"
    );
    let paired = !pairs.is_empty();
    assert_eq!((chosen, rejected), if paired { (1, 1) } else { (0, 0) });
    screenshot(&b, "prompt.png");

    // The judge against human ranks: a row per held-out prompt it judged; a prompt's page shows
    // each judged reply with its human rank and the judge's reading.
    let evals = lines(&run.join("eval/judge_m1.jsonl"));
    let eval_prompts: std::collections::BTreeSet<&str> = evals
        .iter()
        .map(|j| j["prompt_id"].as_str().unwrap())
        .collect();
    eval(&b, "location.hash = '#eval'");
    let eval_rows = wait(
        &b,
        "return document.querySelectorAll('#eval-table tr[data-id]').length",
    );
    assert_eq!(eval_rows, json!(eval_prompts.len()));
    b.click("#eval-table tr[data-id]").unwrap();
    wait(&b, "return document.querySelectorAll('.candidate').length");
    let shown_id = eval(
        &b,
        "return decodeURIComponent(location.hash.split('/').pop())",
    );
    let judged = evals.iter().filter(|j| j["prompt_id"] == shown_id).count();
    let cards = eval(&b, "return document.querySelectorAll('.candidate').length");
    assert_eq!(cards, json!(judged), "{shown_id}");

    // The static report, opened as a file, shows the same page.
    let index = run.join("report/index.html");
    let file_url = format!("file://{}", index.display());
    let (static_text, static_charts) = overview(&b, &file_url);
    assert_eq!(static_charts, charts);
    assert_eq!(static_text, text);
    b.goto(&format!("{file_url}#prompt/0/{id}")).unwrap();
    assert_eq!(prompt_page(&b), (prompt_text, shown, chosen, rejected));
    drop(view);

    // Two runs side by side: one overview each, and the prompt in both.
    let both = View::start(&[&run, &other]);
    b.goto(&both.url).unwrap();
    wait(
        &b,
        "return document.querySelectorAll('section.overview').length === 2",
    );
    b.goto(&format!("{}#compare/{id}", both.url)).unwrap();
    wait(
        &b,
        &format!(
            "return document.querySelectorAll('#compare section .candidate').length === {}",
            2 * want_candidates
        ),
    );
    drop(both);

    assert_eq!(
        listing(&run),
        before,
        "srlm view wrote in the run directory"
    );
}
