// srlm run browser. Draws one run (or two side by side) from data.js, which calls srlmData();
// a prompt's candidates and judgements come from detail/r{run}-{chunk}.js (srlmDetail()),
// loaded when the prompt is opened. Script tags rather than fetch(), so that the same files
// work from `srlm view` and opened as file://. Charts are SVG drawn here; hover shows values.
"use strict";

let DATA = null;            // {mode, chunk, runs: [snapshot]}
const DETAIL = {};          // "r-c" -> {prompt id -> detail}
const WAITING = {};         // "r-c" -> [callbacks]
const PAGE = 50;            // prompt table rows per page
const COLORS = ["#2f6fb5", "#d9822b", "#2e8b57", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d"];
let table = { q: "", sort: "id", dir: 1, page: 0, run: 0 };
let evalTable = { run: 0, model: 0 };

// ---------- small helpers ----------
const $ = (sel, el = document) => el.querySelector(sel);
function esc(s) {
  return String(s == null ? "" : s).replace(/[&<>"']/g, c => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
function num(v, d = 2) { return v == null || Number.isNaN(v) ? "-" : Number(v).toFixed(d); }
function pct(v) { return v == null ? "-" : (100 * v).toFixed(0) + "%"; }
// A stage's stats object as words: `kept 12, asked 16`, numbers to at most 3 decimals.
function statsText(v) {
  if (v == null) return "";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : num(v, 3);
  if (Array.isArray(v)) return "[" + v.map(statsText).join(", ") + "]";
  if (typeof v === "object") return Object.entries(v).map(([k, x]) => `${k.replace(/_/g, " ")} ${statsText(x)}`).join(", ");
  return String(v);
}
function mean(xs) { return xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : null; }
function loadScript(src, onError) {
  const s = document.createElement("script");
  s.src = src;
  s.onload = () => s.remove();
  s.onerror = () => { s.remove(); if (onError) onError(); };
  document.body.appendChild(s);
}
function idOrder(a, b) {
  // Digit runs compare as numbers: it1-2 before it1-10 (as srlm orders ids).
  const ra = a.match(/\d+|\D+/g) || [], rb = b.match(/\d+|\D+/g) || [];
  for (let i = 0; i < Math.min(ra.length, rb.length); i++) {
    const x = ra[i], y = rb[i];
    const nx = /^\d/.test(x), ny = /^\d/.test(y);
    if (nx && ny) { const d = Number(x) - Number(y); if (d) return d; }
    else if (x !== y) return x < y ? -1 : 1;
  }
  return ra.length - rb.length;
}

// ---------- hover values ----------
document.addEventListener("mouseover", e => {
  const t = e.target.closest && e.target.closest("[data-tip]");
  const tip = $("#tip");
  if (!t) { tip.hidden = true; return; }
  tip.textContent = t.getAttribute("data-tip");
  tip.hidden = false;
});
document.addEventListener("mousemove", e => {
  const tip = $("#tip");
  if (!tip.hidden) { tip.style.left = (e.clientX + 12) + "px"; tip.style.top = (e.clientY + 12) + "px"; }
});

// ---------- charts (SVG) ----------
function chartBox(title, svg, legend) {
  const leg = legend && legend.length > 1
    ? `<div class="legend">${legend.map((n, i) => `<span><i style="background:${COLORS[i % COLORS.length]}"></i>${esc(n)}</span>`).join("")}</div>` : "";
  return `<div class="chart"><div class="title">${esc(title)}</div>${leg}${svg}</div>`;
}
function emptyChart(title, why) { return chartBox(title, `<p class="empty">${esc(why)}</p>`); }
// About n ticks spanning lo..hi at a round step (1, 2, 2.5 or 5 times a power of ten; at least 1
// where the axis counts things), with the decimals that step needs. An axis runs from its first
// tick to its last.
function axisTicks(lo, hi, n = 4, integer = false) {
  if (hi === lo) hi = lo + 1;
  const raw = (hi - lo) / n, p = Math.pow(10, Math.floor(Math.log10(raw)));
  let step = [1, 2, 2.5, 5, 10].map(m => m * p).find(s => s >= raw);
  if (integer) step = Math.max(1, Math.round(step));
  let digits = 0;
  while (digits < 8 && Math.abs(step * 10 ** digits - Math.round(step * 10 ** digits)) > 1e-6) digits++;
  const ticks = [];
  // From the step at or below lo to the one at or above hi: the axis spans its ticks.
  const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
  for (let i = first; i <= last; i++) ticks.push(i * step);
  return ticks.map(t => ({ t, label: num(t, digits) }));
}
// Grouped bars: labels along x, one bar per series at each label.
function bars(title, labels, series, opts = {}) {
  const all = series.flatMap(s => s.values).filter(v => v != null);
  if (!all.length) return emptyChart(title, opts.empty || "no data yet");
  const W = 420, H = opts.rotate ? 280 : 220, L = 44, B = opts.rotate ? 90 : 34, T = 8, R = 8;
  const ticks = axisTicks(Math.min(0, ...all), Math.max(opts.max || 0, ...all), 4, opts.yDigits === 0);
  const lo = ticks[0].t, hi = ticks[ticks.length - 1].t;
  const y = v => T + (H - T - B) * (1 - (v - lo) / ((hi - lo) || 1));
  const gw = (W - L - R) / labels.length, bw = Math.max(2, (gw * 0.8) / series.length);
  let g = "";
  for (const { t, label } of ticks) g += `<line x1="${L}" x2="${W - R}" y1="${y(t)}" y2="${y(t)}" stroke="#eee"/><text x="${L - 4}" y="${y(t) + 4}" font-size="10" text-anchor="end">${label}</text>`;
  labels.forEach((lab, i) => {
    series.forEach((s, k) => {
      const v = s.values[i];
      if (v == null) return;
      const x = L + i * gw + gw * 0.1 + k * bw;
      const y0 = y(Math.max(0, lo)), y1 = y(v);
      g += `<rect x="${x}" y="${Math.min(y0, y1)}" width="${bw - 1}" height="${Math.max(1, Math.abs(y0 - y1))}" fill="${COLORS[k % COLORS.length]}" data-tip="${esc(`${s.name ? s.name + ", " : ""}${lab}: ${opts.fmt ? opts.fmt(v) : num(v)}`)}"/>`;
    });
    if (opts.rotate) g += `<text transform="translate(${L + i * gw + gw / 2},${H - B + 8}) rotate(-35)" font-size="9" text-anchor="end">${esc(lab)}</text>`;
    else if (labels.length <= 12 || i % Math.ceil(labels.length / 10) === 0)
      g += `<text x="${L + i * gw + gw / 2}" y="${H - B + 14}" font-size="10" text-anchor="middle">${esc(lab)}</text>`;
  });
  if (opts.xLabel) g += `<text x="${(L + W - R) / 2}" y="${H - 4}" font-size="11" text-anchor="middle">${esc(opts.xLabel)}</text>`;
  if (opts.refs) for (const r of opts.refs) g += `<line x1="${L}" x2="${W - R}" y1="${y(r.v)}" y2="${y(r.v)}" stroke="#444" stroke-dasharray="4 3" data-tip="${esc(r.name + ": " + num(r.v, 3))}"/><text x="${W - R}" y="${y(r.v) - 3}" font-size="10" text-anchor="end">${esc(r.name)}</text>`;
  return chartBox(title, `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">${g}</svg>`, series.map(s => s.name));
}
// Lines: series of [x, y] points.
function lines(title, series, opts = {}) {
  const pts = series.flatMap(s => s.points);
  if (!pts.length) return emptyChart(title, opts.empty || "no data yet");
  const W = 420, H = 220, L = 44, B = 34, T = 8, R = 8;
  const xs = pts.map(p => p[0]), ys = pts.map(p => p[1]);
  const xt = axisTicks(Math.min(...xs), Math.max(...xs), 5, true), yt = axisTicks(Math.min(...ys), Math.max(...ys));
  const xlo = xt[0].t, xhi = xt[xt.length - 1].t, ylo = yt[0].t, yhi = yt[yt.length - 1].t;
  const x = v => L + (W - L - R) * ((v - xlo) / ((xhi - xlo) || 1));
  const y = v => T + (H - T - B) * (1 - (v - ylo) / ((yhi - ylo) || 1));
  let g = "";
  for (const { t, label } of yt) g += `<line x1="${L}" x2="${W - R}" y1="${y(t)}" y2="${y(t)}" stroke="#eee"/><text x="${L - 4}" y="${y(t) + 4}" font-size="10" text-anchor="end">${label}</text>`;
  for (const { t, label } of xt) g += `<text x="${x(t)}" y="${H - B + 14}" font-size="10" text-anchor="middle">${label}</text>`;
  series.forEach((s, k) => {
    const c = COLORS[k % COLORS.length];
    g += `<polyline fill="none" stroke="${c}" stroke-width="1.5" points="${s.points.map(p => `${x(p[0])},${y(p[1])}`).join(" ")}"/>`;
    for (const p of s.points) g += `<circle cx="${x(p[0])}" cy="${y(p[1])}" r="2.5" fill="${c}" data-tip="${esc(`${s.name}: ${opts.xName || "x"} ${p[0]}, ${num(p[1], 4)}`)}"/>`;
  });
  if (opts.xLabel) g += `<text x="${(L + W - R) / 2}" y="${H - 4}" font-size="11" text-anchor="middle">${esc(opts.xLabel)}</text>`;
  return chartBox(title, `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">${g}</svg>`, series.map(s => s.name));
}
function histogram(values, lo, hi, nbins) {
  const counts = new Array(nbins).fill(0), w = (hi - lo) / nbins;
  for (const v of values) counts[Math.min(nbins - 1, Math.max(0, Math.floor((v - lo) / w)))]++;
  return { labels: counts.map((_, i) => num(lo + i * w, 2)), counts };
}

// ---------- status ----------
function renderStatus() {
  $("#run-names").textContent = DATA.runs.map(r => r.name).join("  vs  ");
  document.title = "srlm: " + DATA.runs.map(r => r.name).join(" vs ");
  $("#status").innerHTML = DATA.runs.map(r => {
    const s = r.status;
    const cls = s.finished ? "" : (s.state.startsWith("running") ? "running" : "stopped");
    const cur = s.stages.find(x => x.name === s.current);
    const prog = cur && cur.progress ? ` (${esc(cur.progress)})` : "";
    const done = s.stages.filter(x => x.state === "done").length;
    return `<span class="${cls}">${esc(r.name)}: ${esc(s.state)}${prog}</span> · ${done} of ${s.stages.length} stages done`;
  }).join("<br>");
  const w = DATA.runs.flatMap(r => r.warnings.map(x => `${r.name}: ${x}`));
  $("#warnings").innerHTML = w.length ? `<div class="warn">${w.slice(0, 8).map(esc).join("<br>")}${w.length > 8 ? `<br>… and ${w.length - 8} more` : ""}</div>` : "";
}

// ---------- overview ----------
function overviewOf(run, r) {
  const its = run.iterations;
  let h = `<h2>${esc(run.name)} <span class="ids">${esc(run.dir)}</span></h2>`;
  // Charts.
  const c = [];
  const scoreLabels = ["0", "1", "2", "3", "4", "5"];
  c.push(bars("Written scores per iteration", scoreLabels, its.map(it => ({ name: `iteration ${it.t}`, values: scoreLabels.map(s => it.written_scores[s] || 0) })), { xLabel: "score", yDigits: 0, fmt: v => v + " judgements" }));
  const hs = its.map(it => ({ it, h: histogram(it.candidate_scores, 0, 5, 20) }));
  c.push(bars(`Candidates' mean scores (${run.score_mode} reading)`, hs.length ? hs[0].h.labels : [], hs.map(x => ({ name: `iteration ${x.it.t}`, values: x.h.counts })), { xLabel: "score", yDigits: 0, fmt: v => v + " candidates" }));
  const allMargins = its.flatMap(it => it.margins);
  const mhi = Math.max(0.5, ...allMargins);
  const ms = its.map(it => ({ it, h: histogram(it.margins, 0, mhi, 12) }));
  c.push(bars("Pair margins (chosen minus rejected score)", ms.length ? ms[0].h.labels : [], ms.map(x => ({ name: `iteration ${x.it.t}`, values: x.h.counts })), { xLabel: "margin", yDigits: 0, fmt: v => v + " pairs" }));
  c.push(bars("Answer length, chosen vs rejected (chars)", its.map(it => `iteration ${it.t}`), [
    { name: "chosen", values: its.map(it => mean(it.chosen_chars)) },
    { name: "rejected", values: its.map(it => mean(it.rejected_chars)) },
    { name: "all candidates", values: its.map(it => it.diagnostics ? it.diagnostics.response_chars.mean : null) }], { yDigits: 0, fmt: v => num(v, 0) + " chars" }));
  c.push(bars("Length-score correlation (Spearman)", its.map(it => `iteration ${it.t}`), [{ name: "", values: its.map(it => it.diagnostics ? it.diagnostics.length_score_spearman : null) }], { fmt: v => num(v, 3), empty: "the pairs stage has not run yet" }));
  c.push(bars("k-sample agreement (k > 1)", its.map(it => `iteration ${it.t}`), [{ name: "", values: its.map(it => it.diagnostics ? it.diagnostics.judge_samples_agree : null) }], { fmt: pct, empty: "one judgement per candidate (judge.k = 1): nothing to agree" }));
  const dpo = run.training.filter(t => t.kind === "dpo"), sft = run.training.filter(t => t.kind === "sft");
  c.push(lines("SFT loss", sft.map(t => ({ name: t.model, points: t.steps.filter(s => s.loss != null).map(s => [s.step, s.loss]) })), { xLabel: "step", xName: "step", empty: "no SFT metrics yet" }));
  c.push(lines("DPO loss", dpo.map(t => ({ name: t.model, points: t.steps.filter(s => s.loss != null).map(s => [s.step, s.loss]) })), { xLabel: "step", xName: "step", empty: "no DPO metrics yet" }));
  c.push(lines("DPO reward margin (chosen minus rejected)", dpo.map(t => ({ name: t.model, points: t.steps.filter(s => s["rewards/margins"] != null).map(s => [s.step, s["rewards/margins"]]) })), { xLabel: "step", xName: "step", empty: "no DPO metrics yet" }));
  const je = run.judge_eval.filter(j => j.summary);
  c.push(bars("Judge vs human ranks: pairwise accuracy", je.map(j => j.model.toUpperCase()), [
    { name: "judge (" + run.score_mode + ")", values: je.map(j => j.summary.agreement.pairwise_accuracy) },
    { name: "longer reply wins", values: je.map(j => j.summary.judges.length.pairwise_accuracy) },
    // Where length is wrong: a judge that only reads length scores 0 here, one at chance 0.5.
    { name: "judge, where humans preferred the shorter reply", values: je.map(j => { const s = j.summary.score === "expected" && j.summary.judges.expected ? j.summary.judges.expected_by_length : j.summary.judges.sampled_by_length; return s ? s.shorter_preferred_accuracy : null; }) }], { max: 1, fmt: v => num(v, 3), empty: "no evaluation yet" }));
  c.push(bars("Head-to-head win rate (95% CI in hover)", run.vs.map(v => v.name.replace("vs_", "").replace("_", " vs ")), [{ name: "", values: run.vs.map(v => v.summary.a_win_rate.score) }], { max: 1, refs: run.vs.length ? [{ name: "0.5", v: 0.5 }] : [], fmt: v => { const w = run.vs.find(x => x.summary.a_win_rate.score === v); return w ? `${num(v, 3)} (${num(w.summary.a_win_rate.ci95[0], 3)}-${num(w.summary.a_win_rate.ci95[1], 3)}), ${w.summary.a_win_rate.wins}-${w.summary.a_win_rate.ties}-${w.summary.a_win_rate.losses}` : num(v, 3); }, empty: "no head-to-head yet" }));
  const done = run.status.stages.filter(s => s.seconds != null);
  c.push(bars("Stage times (s)", done.map(s => s.name), [{ name: "", values: done.map(s => s.seconds) }], { yDigits: 0, rotate: true, fmt: v => num(v, 0) + " s" }));
  h += `<h3>Charts</h3><div class="charts">${c.join("")}</div>`;

  // Per iteration.
  h += `<h3>Iterations</h3><div class="wide"><table><tr><th>t</th><th class="num">prompts kept</th><th>dropped (why)</th><th class="num">candidates</th><th class="num">judgements</th><th class="num">parse failures</th><th class="num">k samples agree</th><th class="num">pairs</th><th class="num">mean margin</th><th class="num">chosen / rejected chars</th><th class="num">length-score Spearman</th></tr>`;
  for (const it of its) {
    const d = it.diagnostics || {};
    const drop = Object.entries(it.dropped).map(([k, v]) => `${k} ${v}`).join(", ") || "-";
    h += `<tr><td>${it.t}</td><td class="num">${it.prompts_kept}</td><td>${esc(drop)}</td><td class="num">${it.candidates}</td><td class="num">${it.judgements}</td><td class="num">${d.parse_failures ?? "-"}</td><td class="num">${pct(d.judge_samples_agree)}</td><td class="num">${it.margins.length}</td><td class="num">${num(mean(it.margins))}</td><td class="num">${num(mean(it.chosen_chars), 0)} / ${num(mean(it.rejected_chars), 0)}</td><td class="num">${num(d.length_score_spearman, 3)}</td></tr>`;
  }
  if (!its.length) h += `<tr><td colspan="11" class="empty">no iteration yet</td></tr>`;
  h += `</table></div>`;

  // Judge against human ranks, and head-to-head, as tables.
  if (run.judge_eval.length) {
    h += `<h3>Judge against human rankings</h3><table><tr><th>model</th><th>reading</th><th class="num">pairs</th><th class="num">pairwise accuracy</th><th class="num">ties</th><th class="num">exact match</th><th class="num">Spearman</th><th class="num">Kendall tau-b</th><th class="num">5-best</th><th class="num">parse failures</th></tr>`;
    for (const j of run.judge_eval) {
      if (!j.summary) continue;
      const rows = [["written", j.summary.judges.sampled], ["expected", j.summary.judges.expected], ["longer reply wins", j.summary.judges.length], ["same score for all", j.summary.judges.constant]];
      for (const [name, a] of rows) if (a) h += `<tr><td>${j.model.toUpperCase()}</td><td>${name}</td><td class="num">${a.pairs}</td><td class="num">${num(a.pairwise_accuracy, 3)}</td><td class="num">${pct(a.pairwise_ties)}</td><td class="num">${num(a.exact_match, 3)}</td><td class="num">${num(a.spearman, 3)}</td><td class="num">${num(a.kendall_tau, 3)}</td><td class="num">${num(a.five_best, 3)}</td><td class="num">${pct(j.summary.parse_failure_rate)}</td></tr>`;
    }
    h += `</table>`;
  }
  if (run.vs.length) {
    h += `<h3>Head-to-head</h3><table><tr><th>A vs B</th><th>judge</th><th class="num">A wins</th><th class="num">ties</th><th class="num">B wins</th><th class="num">A's score (95% CI)</th><th class="num">answer chars A / B</th></tr>`;
    for (const v of run.vs) {
      const w = v.summary.a_win_rate, L = v.summary.lengths || {};
      h += `<tr><td>${esc(v.name)}</td><td>${esc(v.summary.judge.split("/").pop())}</td><td class="num">${w.wins}</td><td class="num">${w.ties}</td><td class="num">${w.losses}</td><td class="num">${num(w.score, 3)} (${num(w.ci95[0], 3)}-${num(w.ci95[1], 3)})</td><td class="num">${num(L.a_chars, 0)} / ${num(L.b_chars, 0)}${L.bought_by_length ? " (bought by length)" : ""}</td></tr>`;
    }
    h += `</table>`;
  }
  // Stages.
  h += `<h3>Stages</h3><div class="wide"><table class="stages"><tr><th>stage</th><th>state</th><th class="num">seconds</th><th class="num">peak MiB</th><th>progress / stats</th></tr>`;
  for (const s of run.status.stages)
    h += `<tr><td>${esc(s.name)}</td><td>${esc(s.state)}</td><td class="num">${num(s.seconds, 0)}</td><td class="num">${num(s.peak_rss_mib, 0)}</td><td>${esc(s.progress || statsText(s.stats))}</td></tr>`;
  h += `</table></div>`;
  return h;
}
function renderOverview() {
  $("#main").innerHTML = `<div class="cols">${DATA.runs.map((r, i) => `<section class="overview">${overviewOf(r, i)}</section>`).join("")}</div>`;
}

// ---------- prompt table ----------
const COLS = [
  ["id", "id", false], ["t", "iter", true], ["prompt", "prompt", false], ["candidates", "candidates", true],
  ["judgements", "judgements", true], ["parse_failures", "parse failures", true], ["spread", "score spread", true],
  ["margin", "pair margin", true], ["length_diff", "chosen − rejected chars", true],
];
function tableRows() {
  const run = DATA.runs[table.run];
  const q = table.q.trim().toLowerCase();
  let rows = q ? run.prompts.filter(p => p.id.toLowerCase().includes(q) || p.prompt.toLowerCase().includes(q)) : run.prompts.slice();
  const k = table.sort, d = table.dir;
  rows.sort((a, b) => {
    if (k === "id") return d * idOrder(a.id, b.id);
    if (k === "prompt") return d * a.prompt.localeCompare(b.prompt);
    const x = a[k], y = b[k];
    if (x == null && y == null) return idOrder(a.id, b.id);
    if (x == null) return 1; if (y == null) return -1;
    return d * (x - y) || idOrder(a.id, b.id);
  });
  return rows;
}
function renderTableBody() {
  const rows = tableRows();
  const pages = Math.max(1, Math.ceil(rows.length / PAGE));
  table.page = Math.min(table.page, pages - 1);
  const shown = rows.slice(table.page * PAGE, (table.page + 1) * PAGE);
  $("#prompt-table tbody").innerHTML = shown.map(p => `<tr class="link" data-id="${esc(p.id)}"><td>${esc(p.id)}</td><td class="num">${p.t}</td><td>${esc(p.prompt.length > 140 ? p.prompt.slice(0, 140) + "…" : p.prompt)}</td><td class="num">${p.candidates}</td><td class="num">${p.judgements}</td><td class="num">${p.parse_failures}</td><td class="num">${num(p.spread)}</td><td class="num">${num(p.margin)}</td><td class="num">${p.length_diff ?? "-"}</td></tr>`).join("") || `<tr><td colspan="9" class="empty">no prompt matches</td></tr>`;
  $("#count").textContent = `${rows.length} of ${DATA.runs[table.run].prompts.length} prompts`;
  $("#page").textContent = `page ${table.page + 1} of ${pages}`;
  document.querySelectorAll("#prompt-table th").forEach(th => {
    th.classList.toggle("sorted-asc", th.dataset.key === table.sort && table.dir > 0);
    th.classList.toggle("sorted-desc", th.dataset.key === table.sort && table.dir < 0);
  });
}
function renderPrompts() {
  const runSel = DATA.runs.length > 1 ? `<label>run <select id="run-select">${DATA.runs.map((r, i) => `<option value="${i}" ${i === table.run ? "selected" : ""}>${esc(r.name)}</option>`).join("")}</select></label>` : "";
  $("#main").innerHTML = `<h2>Prompts</h2><div class="controls">${runSel}<input type="search" id="search" placeholder="search ids and prompts" value="${esc(table.q)}"><span id="count"></span><span class="pager"><button id="prev">‹ prev</button><span id="page"></span><button id="next">next ›</button></span></div>
  <div class="wide"><table id="prompt-table"><thead><tr>${COLS.map(([k, name, n]) => `<th class="sortable ${n ? "num" : ""}" data-key="${k}">${esc(name)}</th>`).join("")}</tr></thead><tbody></tbody></table></div>
  <p class="ids">Click a column to sort (again to reverse); click a row to open the prompt.</p>`;
  $("#search").addEventListener("input", e => { table.q = e.target.value; table.page = 0; renderTableBody(); });
  $("#prev").onclick = () => { table.page = Math.max(0, table.page - 1); renderTableBody(); };
  $("#next").onclick = () => { table.page++; renderTableBody(); };
  if ($("#run-select")) $("#run-select").onchange = e => { table.run = Number(e.target.value); table.page = 0; renderTableBody(); };
  document.querySelectorAll("#prompt-table th").forEach(th => th.onclick = () => {
    const k = th.dataset.key;
    table.dir = table.sort === k ? -table.dir : (k === "id" || k === "prompt" ? 1 : -1);
    table.sort = k; table.page = 0; renderTableBody();
  });
  $("#prompt-table tbody").onclick = e => {
    const tr = e.target.closest("tr[data-id]");
    if (tr) location.hash = `#prompt/${table.run}/${encodeURIComponent(tr.dataset.id)}`;
  };
  renderTableBody();
}

// ---------- one prompt ----------
function withDetail(r, id, cb) {
  const run = DATA.runs[r];
  const i = run.prompts.findIndex(p => p.id === id);
  if (i < 0) return cb(null);
  const c = Math.floor(i / DATA.chunk), key = `${r}-${c}`;
  if (DETAIL[key]) return cb(DETAIL[key][id] || null);
  (WAITING[key] = WAITING[key] || []).push(() => cb(DETAIL[key][id] || null));
  if (WAITING[key].length === 1) loadScript(`detail/r${r}-${c}.js?v=${Date.now()}`, () => { $("#main").innerHTML = `<p class="warn">could not load detail/r${r}-${c}.js</p>`; });
}
function srlmDetail(r, c, prompts) {
  const key = `${r}-${c}`;
  DETAIL[key] = prompts;
  for (const f of WAITING[key] || []) f();
  WAITING[key] = [];
}
function candidateHtml(run, c) {
  const js = c.judgements.map(j => `<div class="judgement"><b>judgement ${j.sample}</b>: score ${j.score ?? "<i>none</i>"}${j.expected != null ? `, expected ${num(j.expected, 3)}` : ""}${j.failure ? ` <span class="badge">${esc(j.failure)}</span>` : ""}${j.forced_verdict != null ? ` <span class="badge" title="wrote no score; asked for it">asked: ${esc(j.forced_verdict)}</span>` : ""}<pre>${esc(j.raw)}</pre><span class="ids">${esc(j.id)}</span></div>`).join("");
  return `<div class="candidate ${c.role}"><div>candidate ${c.index} ${c.role ? `<span class="badge ${c.role}">${c.role}</span>` : ""} · mean ${num(c.mean, 3)} · ${c.response.length} chars${c.finish_reason ? " · " + esc(c.finish_reason) : ""}</div><div class="response">${esc(c.response)}</div>${js || '<p class="empty">not judged yet</p>'}<div class="ids">${esc(c.id)}</div></div>`;
}
function promptHtml(run, r, d) {
  const p = d.pair;
  const pairLine = p ? `pair: chosen ${num(p.chosen_score, 3)} against rejected ${num(p.rejected_score, 3)} (margin ${num(p.chosen_score - p.rejected_score, 3)})` : "no pair (tied, unscored, or the pairs stage has not run)";
  return `<p class="ids">${esc(run.name)} · iteration ${d.t} · <code>iter${d.t}/candidates.jsonl</code>, <code>judgements.jsonl</code>, <code>pairs.jsonl</code> with prompt_id <code>${esc(d.id)}</code></p>
  <div class="prompt-text">${esc(d.prompt)}</div><p>${pairLine}</p><div class="candidates">${d.candidates.map(c => candidateHtml(run, c)).join("") || '<p class="empty">no candidates yet</p>'}</div>`;
}
function renderPrompt(r, id) {
  $("#main").innerHTML = `<p>loading ${esc(id)}…</p>`;
  withDetail(r, id, d => {
    const run = DATA.runs[r];
    if (!d) { $("#main").innerHTML = `<p class="empty">no prompt ${esc(id)} in ${esc(run.name)}</p>`; return; }
    const other = DATA.runs.length > 1 ? ` · <a href="#compare/${encodeURIComponent(id)}">beside the other run</a>` : "";
    $("#main").innerHTML = `<h2 id="prompt-title">Prompt ${esc(id)}</h2><p><a href="#prompts">← all prompts</a>${other}</p>${promptHtml(run, r, d)}`;
  });
}
function renderCompare(id) {
  $("#main").innerHTML = `<h2>${esc(id)} in both runs</h2><div class="cols" id="compare"></div>`;
  DATA.runs.forEach((run, r) => {
    const sec = document.createElement("section");
    $("#compare").appendChild(sec);
    withDetail(r, id, d => { sec.innerHTML = `<h3>${esc(run.name)}</h3>` + (d ? promptHtml(run, r, d) : `<p class="empty">not in this run</p>`); });
  });
}

// ---------- the judge against human ranks ----------
function renderEval() {
  const run = DATA.runs[evalTable.run];
  const models = run.judge_eval;
  const runSel = DATA.runs.length > 1 ? `<label>run <select id="eval-run">${DATA.runs.map((x, i) => `<option value="${i}" ${i === evalTable.run ? "selected" : ""}>${esc(x.name)}</option>`).join("")}</select></label>` : "";
  if (!models.length) { $("#main").innerHTML = `<h2>Judge vs humans</h2>${runSel}<p class="empty">no evaluation in this run yet (eval/judge_mN.jsonl)</p>`; bindEvalRun(); return; }
  evalTable.model = Math.min(evalTable.model, models.length - 1);
  const m = models[evalTable.model];
  const rows = m.prompts.slice().sort((a, b) => b.disagreements - a.disagreements || idOrder(a.id, b.id));
  const s = m.summary;
  $("#main").innerHTML = `<h2>Judge vs humans</h2><div class="controls">${runSel}<label>model <select id="eval-model">${models.map((x, i) => `<option value="${i}" ${i === evalTable.model ? "selected" : ""}>${x.model.toUpperCase()}</option>`).join("")}</select></label>
  ${s ? `<span>pairwise accuracy ${num(s.agreement.pairwise_accuracy, 3)} (${run.score_mode}) against ${num(s.judges.length.pairwise_accuracy, 3)} for the longer reply, on ${s.agreement.pairs} pairs</span>` : ""}</div>
  <table id="eval-table"><tr><th>prompt</th><th class="num">replies</th><th class="num">pairs the judge got wrong</th></tr>${rows.map(p => `<tr class="link" data-id="${esc(p.id)}"><td>${esc(p.prompt.slice(0, 140))}</td><td class="num">${p.replies.length}</td><td class="num">${p.disagreements} of ${p.pairs}</td></tr>`).join("")}</table>`;
  $("#eval-model").onchange = e => { evalTable.model = Number(e.target.value); renderEval(); };
  bindEvalRun();
  $("#eval-table").onclick = e => { const tr = e.target.closest("tr[data-id]"); if (tr) location.hash = `#evalprompt/${evalTable.run}/${evalTable.model}/${encodeURIComponent(tr.dataset.id)}`; };
}
function bindEvalRun() { if ($("#eval-run")) $("#eval-run").onchange = e => { evalTable.run = Number(e.target.value); evalTable.model = 0; renderEval(); }; }
function renderEvalPrompt(r, m, id) {
  const run = DATA.runs[r], model = run.judge_eval[m];
  const p = model && model.prompts.find(x => x.id === id);
  if (!p) { $("#main").innerHTML = `<p class="empty">no such evaluation prompt</p>`; return; }
  const val = x => run.score_mode === "expected" ? (x.expected ?? x.score) : x.score;
  const judgeRank = p.replies.map(x => val(x));
  $("#main").innerHTML = `<h2>${model.model.toUpperCase()} on a held-out prompt</h2><p><a href="#eval">← all evaluation prompts</a> · <span class="ids">eval/judge_${model.model}.jsonl, prompt_id ${esc(id)}</span></p>
  <div class="prompt-text">${esc(p.prompt)}</div>
  <div class="candidates">${p.replies.map((x, i) => {
    const wrong = p.replies.some((y, k) => k !== i && y.human_rank > x.human_rank && judgeRank[k] != null && judgeRank[i] != null && judgeRank[k] >= judgeRank[i]);
    return `<div class="candidate ${wrong ? "wrong" : ""}"><div>human rank ${x.human_rank} · judge ${num(val(x), 3)}${wrong ? ' <span class="badge rejected">judge disagrees</span>' : ""} · ${x.text.length} chars</div><div class="response">${esc(x.text)}</div><div class="judgement"><pre>${esc(x.raw)}</pre></div></div>`;
  }).join("")}</div>`;
}

// ---------- routing and live refresh ----------
function route() {
  if (!DATA) return;
  const parts = location.hash.slice(1).split("/");
  const tab = parts[0] === "prompt" || parts[0] === "compare" ? "prompts" : parts[0] === "evalprompt" ? "eval" : (parts[0] || "overview");
  document.querySelectorAll("#tabs a").forEach(a => a.classList.toggle("active", a.dataset.tab === tab));
  if (parts[0] === "prompt") renderPrompt(Number(parts[1]), decodeURIComponent(parts.slice(2).join("/")));
  else if (parts[0] === "compare") renderCompare(decodeURIComponent(parts.slice(1).join("/")));
  else if (parts[0] === "prompts") renderPrompts();
  else if (parts[0] === "eval") renderEval();
  else if (parts[0] === "evalprompt") renderEvalPrompt(Number(parts[1]), Number(parts[2]), decodeURIComponent(parts.slice(3).join("/")));
  else renderOverview();
  return h;
}
window.addEventListener("hashchange", route);

function srlmData(data) {
  const first = DATA === null;
  DATA = data;
  renderStatus();
  // A refresh redraws what shows the run's progress; a page being read is left alone.
  const tab = location.hash.slice(1).split("/")[0];
  if (first || tab === "" || tab === "overview") route();
  if (DATA.mode === "server" && DATA.runs.some(r => !r.status.finished)) {
    for (const k of Object.keys(DETAIL)) delete DETAIL[k];
    setTimeout(() => loadScript("data.js?t=" + Date.now()), 3000);
  }
}
