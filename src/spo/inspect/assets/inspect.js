/* spo inspect: renders the run JSON of this page (docs/inspect.md). Plain JavaScript, no
 * library. Data: #spo-index (run, config, metrics) and one #spo-iter-N element per embedded
 * iteration, parsed only when that iteration is shown; a served page fetches
 * iteration/N.json instead and polls index.json. */
"use strict";
(function () {
  const PAGE_SIZE = { episodes: 50, trees: 10, replayed: 50 };
  const COLORS = ["#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#0a7d8c", "#bf3989", "#6e7781", "#9a6700"];
  const NEG = [178, 24, 43], MID = [247, 247, 247], POS = [33, 102, 172]; // RdBu: red < 0 < blue
  const CORRECT = 1 - 1e-9;

  const $ = (id) => document.getElementById(id);
  let INDEX = JSON.parse($("spo-index").textContent);
  const cache = new Map();
  const state = { iteration: null, data: null, view: "episodes", filter: "all", problem: "all", sort: "order",
                  page: 0, xaxis: "iteration", custom: null };
  let seqs = []; // token sequences on screen, for the tooltip (index = data-s)

  // ------------------------------------------------------------------ small helpers
  function esc(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  }
  function num(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "–";
    if (typeof x !== "number") return String(x);
    if (Number.isInteger(x) && Math.abs(x) < 1e6) return String(x);
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(2);
    return x.toFixed(digits === undefined ? (a >= 100 ? 1 : 3) : digits);
  }
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const signed = (x) => (x > 0 ? "+" : x < 0 ? "−" : "") + num(Math.abs(x), 3);
  function expand(runs, n, fill) {
    if (!runs) return new Array(n).fill(fill);
    const out = [];
    for (const [v, c] of runs) for (let i = 0; i < c; i++) out.push(v);
    return out;
  }
  function showError(msg) {
    const box = $("errors");
    box.hidden = false;
    box.textContent += msg + "\n";
  }
  window.addEventListener("error", (e) => showError("error: " + e.message));

  // ------------------------------------------------------------------ colour scale
  function mix(a, b, t) { return a.map((v, i) => Math.round(v + (b[i] - v) * t)); }
  function advColor(a, scale) {
    const t = Math.max(-1, Math.min(1, (a || 0) / scale));
    const c = t < 0 ? mix(MID, NEG, -t) : mix(MID, POS, t);
    return { bg: `rgb(${c[0]},${c[1]},${c[2]})`, fg: Math.abs(t) > 0.6 ? "#fff" : "#1d232a" };
  }

  // ------------------------------------------------------------------ header
  function renderHeader() {
    const I = INDEX, last = I.metrics.length ? I.metrics[I.metrics.length - 1] : null;
    const facts = [["estimator", I.estimator], ["model", I.model], ["task", I.task],
                   ["iterations logged", last ? last.iteration : 0], ["tokenizer", I.tokenizer]];
    $("head").innerHTML = `<h1>${esc(I.run)}</h1><div class="facts">` +
      facts.map(([k, v]) => `${esc(k)} <b>${esc(v === null || v === undefined ? "–" : v)}</b>`).join(" · ") +
      `</div><div class="facts">${esc(I.path)}${I.mode === "serve" ? " · live: refreshed every 10 s" : ""}</div>` +
      `<details><summary>config.yaml</summary><pre>${esc(I.config_yaml)}</pre></details>`;
  }

  // ------------------------------------------------------------------ charts
  function cumulative() {
    // iteration -> {tokens, seconds}: the run's spend by the end of that iteration
    const out = new Map([[0, { tokens: 0, seconds: 0 }]]);
    let tok = 0, sec = 0;
    for (const r of INDEX.metrics) {
      tok = r.tokens_cumulative !== undefined ? r.tokens_cumulative : tok + (r.tokens_generated_total || 0);
      sec = r.seconds_cumulative !== undefined ? r.seconds_cumulative : sec + (r.time_total || 0);
      out.set(r.iteration, { tokens: tok, seconds: sec });
    }
    return out;
  }
  function seriesOf(rows, key, spend) {
    const pts = [];
    for (const r of rows) {
      const y = r[key];
      if (typeof y !== "number") continue;
      const x = state.xaxis === "iteration" ? r.iteration : (spend.get(r.iteration) || {})[state.xaxis];
      if (typeof x === "number") pts.push([x, y, r.iteration]);
    }
    return pts;
  }
  function chartSpecs() {
    const trainKeys = new Set(), evalKeys = new Set();
    for (const r of INDEX.metrics) for (const k in r) trainKeys.add(k);
    for (const r of INDEX.evals) for (const k in r) evalKeys.add(k);
    const times = [...trainKeys].filter((k) => k.startsWith("time_")).sort((a, b) => (a === "time_total") - (b === "time_total"));
    return {
      specs: [
        { title: "reward (training)", keys: ["reward_mean"] },
        { title: "accuracy", keys: ["accuracy", "eval:accuracy"] },
        { title: "KL", keys: ["kl", "approx_kl"] },
        { title: "clip fraction", keys: ["clip_frac"] },
        { title: "entropy", keys: ["entropy"] },
        { title: "response length (tokens)", keys: ["response_len_mean", "eval:response_len_mean"] },
        { title: "tokens generated per iteration", keys: ["tokens_generated", "tokens_generated_total", "mc_tokens"] },
        { title: "seconds per phase", keys: times },
      ],
      all: [...[...trainKeys].filter((k) => k !== "iteration").sort(),
            ...[...evalKeys].filter((k) => k !== "iteration").sort().map((k) => "eval:" + k)],
    };
  }
  function renderCharts() {
    const box = $("charts"), spend = cumulative(), { specs, all } = chartSpecs();
    box.innerHTML = "";
    for (const spec of specs) {
      const series = spec.keys.map((key) => seriesFor(key, spend)).filter((s) => s.pts.length);
      if (series.length) box.appendChild(chart(spec.title, series));
    }
    if (!all.length) { box.innerHTML = '<div class="empty-list">no metrics.jsonl lines yet</div>'; return; }
    const custom = state.custom && all.includes(state.custom) ? state.custom : all.includes("grad_norm") ? "grad_norm" : all[0];
    const wrap = chart(custom, [seriesFor(custom, spend)]);
    const sel = document.createElement("select");
    sel.innerHTML = all.map((k) => `<option${k === custom ? " selected" : ""}>${esc(k)}</option>`).join("");
    sel.addEventListener("change", () => { state.custom = sel.value; renderCharts(); });
    wrap.querySelector(".chead b").replaceWith(sel);
    box.appendChild(wrap);
  }
  function seriesFor(key, spend) {
    const isEval = key.startsWith("eval:");
    const name = isEval ? key.slice(5) : key;
    return { label: isEval ? "held-out " + name : name, eval: isEval,
             pts: seriesOf(isEval ? INDEX.evals : INDEX.metrics, name, spend) };
  }
  function ticks(lo, hi, n, integer) {
    if (lo === hi) { lo -= lo === 0 ? 1 : Math.abs(lo) * 0.1; hi += hi === 0 ? 1 : Math.abs(hi) * 0.1; }
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    let step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
    if (integer) step = Math.max(1, Math.round(step));
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return { lo: Math.min(lo, out[0]), hi: Math.max(hi, out[out.length - 1]), ticks: out };
  }
  function chart(title, series) {
    const W = 380, H = 180, L = 44, R = 10, T = 6, B = 26;
    const xs = series.flatMap((s) => s.pts.map((p) => p[0])), ys = series.flatMap((s) => s.pts.map((p) => p[1]));
    const div = document.createElement("div");
    div.className = "chart";
    if (!xs.length) { div.innerHTML = `<div class="empty-list">${esc(title)}: no values</div>`; return div; }
    const X = ticks(Math.min(...xs), Math.max(...xs), 4, state.xaxis === "iteration"), Y = ticks(Math.min(...ys), Math.max(...ys), 4);
    const sx = (x) => L + (x - X.lo) / (X.hi - X.lo) * (W - L - R), sy = (y) => H - B - (y - Y.lo) / (Y.hi - Y.lo) * (H - T - B);
    let svg = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(title)}">`, legend = "";
    for (const y of Y.ticks) svg += `<line class="grid" x1="${L}" x2="${W - R}" y1="${sy(y)}" y2="${sy(y)}"/><text class="axis" x="${L - 4}" y="${sy(y) + 3}" text-anchor="end">${esc(shortNum(y))}</text>`;
    for (const x of X.ticks) svg += `<text class="axis" x="${sx(x)}" y="${H - B + 12}" text-anchor="middle">${esc(shortNum(x))}</text>`;
    svg += `<rect class="frame" x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}"/>`;
    svg += cursorLine(sx, T, H - B);
    series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const d = s.pts.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
      svg += `<path d="${d}" fill="none" stroke="${color}" stroke-width="1.6"${s.eval ? ' stroke-dasharray="4 2"' : ""}/>`;
      for (const p of s.pts) {
        const link = canShow(p[2]) ? " link" : "";
        svg += `<circle class="pt${link}" data-it="${p[2]}" cx="${sx(p[0]).toFixed(1)}" cy="${sy(p[1]).toFixed(1)}" r="${s.eval ? 3 : 2.2}" fill="${color}"><title>${esc(s.label)}: ${esc(num(p[1]))} at iteration ${p[2]}${link ? " (click: show its episodes)" : ""}</title></circle>`;
      }
      if (series.length > 1) legend += `<span><i style="background:${color}"></i>${esc(s.label)}</span>`;
    });
    div.innerHTML = `<div class="chead"><b>${esc(title)}</b>${legend}</div>` + svg + `<text class="axis" x="${W - R}" y="${H - 2}" text-anchor="end">${esc($("xaxis").selectedOptions[0].text)}</text></svg>`;
    return div;
  }
  function shortNum(x) {
    const a = Math.abs(x);
    if (a >= 1e6) return (x / 1e6).toPrecision(3) + "M";
    if (a >= 1e4) return (x / 1e3).toPrecision(3) + "k";
    return String(+x.toPrecision(3));
  }
  function cursorLine(sx, top, bottom) {
    if (state.iteration === null) return "";
    const spend = cumulative().get(state.iteration);
    const x = state.xaxis === "iteration" ? state.iteration : spend && spend[state.xaxis];
    return typeof x === "number" ? `<line class="cursor" x1="${sx(x)}" x2="${sx(x)}" y1="${top}" y2="${bottom}"/>` : "";
  }
  function canShow(it) {
    return INDEX.mode === "serve" ? INDEX.available.includes(it) : INDEX.embedded.includes(it);
  }

  // ------------------------------------------------------------------ iteration data
  function loadIteration(n) {
    if (cache.has(n)) return Promise.resolve(cache.get(n));
    const node = $("spo-iter-" + n);
    const raw = node ? Promise.resolve(JSON.parse(node.textContent))
      : fetch("iteration/" + n + ".json").then((r) => { if (!r.ok) throw new Error("iteration " + n + ": HTTP " + r.status); return r.json(); });
    return raw.then((d) => { const p = prepare(d); cache.set(n, p); return p; });
  }
  function tokensOf(e) { // per-token arrays of an episode or tree node, expanded once
    if (!e._adv) {
      const n = e.ids.length;
      e._adv = expand(e.adv, n, e.advantage !== undefined ? e.advantage : 0);
      e._mask = e.mask ? expand(e.mask, n, 1) : null;
    }
    return e;
  }
  function meanAdvantage(e) {
    tokensOf(e);
    let s = 0, c = 0, s0 = 0;
    e._adv.forEach((a, i) => { s0 += a || 0; if (!e._mask || e._mask[i]) { s += a || 0; c++; } });
    return c ? s / c : e._adv.length ? s0 / e._adv.length : 0;
  }
  function prepare(d) {
    let scale = 0;
    const bump = (runs) => { for (const [v] of runs || []) scale = Math.max(scale, Math.abs(v || 0)); };
    for (const e of d.episodes.concat(d.replayed)) {
      bump(e.adv);
      e.correct = e.reward !== null && e.reward >= CORRECT;
      e.sortAdv = meanAdvantage(e);
    }
    for (const t of d.trees) {
      const leaves = t.nodes.filter((n) => n.leaf);
      t.correct = leaves.some((n) => n.reward !== null && n.reward >= CORRECT);
      t.reward = t.nodes[0].value;
      t.sortAdv = Math.max(0, ...t.nodes.map((n) => Math.abs(n.advantage || 0)));
      for (const n of t.nodes) { bump(n.adv); scale = Math.max(scale, Math.abs(n.advantage || 0)); }
    }
    d.scale = scale > 0 ? scale : 1;
    d.isTree = d.trees.length > 0 || (INDEX.estimator === "spo_tree");
    return d;
  }

  // ------------------------------------------------------------------ controls
  function fillIterations() {
    const its = INDEX.mode === "serve" ? INDEX.available : INDEX.embedded, sel = $("iteration");
    sel.innerHTML = its.map((n) => `<option value="${n}"${n === state.iteration ? " selected" : ""}>${n}</option>`).join("");
    const note = INDEX.mode === "serve" ? `${its.length} iterations logged`
      : INDEX.available.length === INDEX.embedded.length ? `all ${its.length} logged iterations in this page`
      : `iterations ${INDEX.embedded.join(", ")} of ${INDEX.available.length} logged in this page ` +
        "(spo inspect RUN_DIR --iteration N ... picks others)";
    $("embedded-note").textContent = its.length ? note : "no episode logs in this run";
  }
  function items() {
    const d = state.data;
    return state.view === "trees" ? d.trees : state.view === "replayed" ? d.replayed : d.episodes;
  }
  function fillProblems() {
    const counts = new Map();
    for (const e of items()) counts.set(e.problem, (counts.get(e.problem) || 0) + 1);
    const keys = [...counts.keys()].sort((a, b) => a - b);
    if (state.problem !== "all" && !counts.has(+state.problem)) state.problem = "all";
    $("problem").innerHTML = `<option value="all">all (${keys.length})</option>` +
      keys.map((k) => `<option value="${k}"${String(k) === String(state.problem) ? " selected" : ""}>${k} (${counts.get(k)})</option>`).join("");
  }
  function fillViews() {
    const d = state.data;
    $("view-label").hidden = !d.isTree;
    $("tree-buttons").hidden = state.view !== "trees";
    if (!d.isTree) { state.view = "episodes"; return; }
    if (state.view === "episodes") state.view = "trees";
    $("view").innerHTML = [["trees", `trees (${d.trees.length})`], ["replayed", `replayed edges (${d.replayed.length})`]]
      .map(([v, t]) => `<option value="${v}"${v === state.view ? " selected" : ""}>${t}</option>`).join("");
    $("tree-buttons").hidden = state.view !== "trees";
  }
  function selected() {
    let list = items().map((e, i) => ({ e, i }));
    if (state.filter !== "all") list = list.filter(({ e }) => e.correct === (state.filter === "correct"));
    if (state.problem !== "all") list = list.filter(({ e }) => String(e.problem) === String(state.problem));
    const key = { "adv-desc": (x) => -x.e.sortAdv, "adv-asc": (x) => x.e.sortAdv,
                  "reward-desc": (x) => -(x.e.reward || 0), "reward-asc": (x) => x.e.reward || 0 }[state.sort];
    if (key) list.sort((a, b) => key(a) - key(b) || a.i - b.i);
    return list;
  }

  // ------------------------------------------------------------------ summary and legend
  function renderSummary() {
    const d = state.data;
    let text;
    if (d.isTree) {
      const nodes = d.trees.reduce((s, t) => s + t.nodes.length, 0), count = (st) => d.trees.reduce((s, t) => s + t.nodes.filter((n) => n.status === st).length, 0);
      const leaves = d.trees.reduce((s, t) => s + t.nodes.filter((n) => n.leaf).length, 0);
      const correct = d.trees.reduce((s, t) => s + t.nodes.filter((n) => n.leaf && n.reward >= CORRECT).length, 0);
      text = `Iteration <b>${d.iteration}</b>: <b>${d.trees.length} trees</b>, ${nodes} nodes, ${leaves} leaves (${correct} correct); ` +
        `<b>${count("trained") + d.replayed.length} edges trained</b> (${count("trained")} fresh + ${d.replayed.length} replayed), ` +
        `${count("parked")} parked for replay, ${count("dropped")} dropped (A = 0)`;
    } else {
      const n = d.episodes.length, correct = d.episodes.filter((e) => e.correct).length;
      const mean = n ? d.episodes.reduce((s, e) => s + (e.reward || 0), 0) / n : 0;
      text = `Iteration <b>${d.iteration}</b>: <b>${n} episodes</b>, ${correct} correct (${n ? Math.round(100 * correct / n) : 0}%), mean reward ${num(mean)}`;
    }
    $("summary").innerHTML = text;
  }
  function renderLegend() {
    const d = state.data, s = num(d.scale);
    const grad = `linear-gradient(to right, rgb(${NEG}), rgb(${MID}), rgb(${POS}))`;
    let html = `<span class="scale">advantage <span>−${s}</span><span class="bar" style="background:${grad}"></span><span>+${s}</span></span>` +
      `<span><span class="t m">masked</span> not in the loss (loss_mask 0)</span><span>hover a token: p, log p, advantage</span>`;
    const chain = d.episodes.some((e) => e.boundaries);
    if (chain) html += `<span><span class="t cp">cut</span> cutpoint (p &lt; ρ${INDEX.rho ? " = " + INDEX.rho : ""})</span>` +
      `<span><span class="bd">V=0.5 (4)</span> segment boundary t<sub>k</sub>: V(t<sub>k</sub>) (MC samples)</span>` +
      `<span><span class="bd start">V₀=0.5 (8)</span> start value (${INDEX.start_value === "mc" ? "MC samples" : "group size"})</span>` +
      `<span><span class="bd end">r=1</span> reward = V(end)</span>`;
    if (d.isTree) html += ["trained", "replayed", "parked", "dropped"].map((st) => `<span class="badge ${st}">${st}</span>`).join(" ") +
      `<span>edge parent → node: trained now, parked (not trained now: replay buffer), replayed later, dropped (A = 0)</span>`;
    $("legend").innerHTML = html;
  }

  // ------------------------------------------------------------------ token rendering
  function tokenText(id) {
    const t = state.data.tokens[id];
    return t === undefined ? `⟨${id}⟩` : t;
  }
  function tokenSpan(text, k, cls, style) {
    const shown = text === "" ? "∅" : text.replace(/\n/g, "↵\n");
    return `<span class="t${cls}${text === "" ? " empty" : ""}" data-k="${k}"${style}>${esc(shown)}</span>`;
  }
  function responseHTML(seq) {
    const sid = seqs.push(seq) - 1, scale = state.data.scale;
    const cut = new Set(seq.cutpoints || []), bounds = seq.boundaries ? new Map(seq.boundaries.map((b, k) => [b, k])) : null;
    let html = `<span class="tokens" data-s="${sid}">`;
    seq.ids.forEach((id, i) => {
      if (bounds && bounds.has(i) && bounds.get(i) < seq.boundaries.length - 1) html += marker(seq, bounds.get(i));
      const masked = seq.mask && !seq.mask[i], c = advColor(seq.adv[i], scale);
      html += tokenSpan(tokenText(id), i, (masked ? " m" : "") + (cut.has(i) ? " cp" : ""), masked ? "" : ` style="background:${c.bg};color:${c.fg}"`);
    });
    if (bounds) html += marker(seq, seq.boundaries.length - 1);
    return html + "</span>";
  }
  function marker(seq, k) {
    const last = seq.boundaries.length - 1, v = num(seq.values[k]);
    const [cls, label] = k === 0 ? [" start", `V₀=${v} (${seq.value_samples[0]})`] : k === last ? [" end", `r=${v}`]
      : ["", `V=${v} (${seq.value_samples[k]})`];
    return `<span class="bd${cls}" data-b="${k}">${esc(label)}</span>`;
  }
  function promptHTML(ids) {
    const sid = seqs.push({ prompt: true, ids }) - 1;
    return `<span class="tokens" data-s="${sid}">` + ids.map((id, i) => tokenSpan(tokenText(id), i, " p", "")).join("") + "</span>";
  }
  function promptSummary(ids) {
    const text = ids.map(tokenText).join("").replace(/\s+/g, " ").trim();
    return `prompt (${ids.length} tokens): <span class="ptext">…${esc(text.slice(-110))}</span>`;
  }
  function promptBlock(promptIndex) {
    const ids = state.data.prompts[promptIndex] || [];
    return `<details class="prompt" data-prompt="${promptIndex}"><summary>${promptSummary(ids)}</summary></details>`;
  }

  // ------------------------------------------------------------------ tooltip
  function tipFor(t) {
    const seq = seqs[+t.closest(".tokens").dataset.s];
    if (t.classList.contains("bd")) return boundaryTip(seq, +t.dataset.b);
    const k = +t.dataset.k, id = seq.ids[k], text = JSON.stringify(tokenText(id));
    if (seq.prompt) return `prompt token ${k}: ${text} (id ${id})`;
    const lines = [`token ${k}: ${text} (id ${id})`];
    const lp = seq.logprobs[k];
    if (typeof lp === "number") {
      const prob = Math.exp(lp);
      lines.push(`p = ${prob >= 1e-3 ? prob.toFixed(4) : prob.toExponential(2)}   log p = ${lp.toFixed(3)}`);
    }
    lines.push(`advantage = ${signed(seq.adv[k] || 0)}`);
    if (seq.mask) lines.push(seq.mask[k] ? "in the loss (loss_mask 1)" : "masked: not in the loss (loss_mask 0)");
    if (seq.cutpoints && seq.cutpoints.includes(k)) lines.push(`cutpoint: p < ρ${INDEX.rho ? " = " + INDEX.rho : ""}`);
    if (seq.boundaries) {
      let s = 0;
      while (s + 1 < seq.boundaries.length - 1 && seq.boundaries[s + 1] <= k) s++;
      lines.push(`segment ${s + 1} of ${seq.boundaries.length - 1} (tokens ${seq.boundaries[s]}–${seq.boundaries[s + 1] - 1}):`,
        `  V(start) = ${num(seq.values[s])} (${samples(seq, s)})`, `  V(end) = ${num(seq.values[s + 1])} (${samples(seq, s + 1)})`);
    }
    for (const key in seq.per_token || {}) lines.push(`${key} = ${num(seq.per_token[key][k])}`);
    return lines.join("\n");
  }
  function samples(seq, k) {
    const last = seq.boundaries.length - 1;
    if (k === last) return "the response's reward";
    return `${seq.value_samples[k]} ${k === 0 && INDEX.start_value !== "mc" ? "rewards of the group" : "MC samples"}`;
  }
  function boundaryTip(seq, k) {
    const b = seq.boundaries[k];
    return `boundary t${k} = token ${b}\nV(t${k}) = ${num(seq.values[k])} (${samples(seq, k)})`;
  }
  function moveTip(ev) {
    const tip = $("tip"), t = ev.target.closest && ev.target.closest(".t, .bd");
    if (!t || !t.closest(".tokens")) { tip.hidden = true; return; }
    tip.textContent = tipFor(t);
    tip.hidden = false;
    const r = t.getBoundingClientRect(), w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = Math.max(4, Math.min(window.innerWidth - w - 4, r.left)) + "px";
    tip.style.top = (r.bottom + 6 + h > window.innerHeight ? r.top - h - 6 : r.bottom + 6) + "px";
  }

  // ------------------------------------------------------------------ list rendering
  function episodeHTML(e, i, replayed) {
    const s = tokensOf(e), n = e.ids.length;
    const head = [`<span class="badge ${e.correct ? "ok" : "bad"}">reward ${num(e.reward)}</span>`,
      replayed ? `<span class="badge replayed">replayed</span>` : "", `#${i}`, `problem <b>${esc(e.problem)}</b>`,
      `group ${esc(e.group)}`, `${n} tokens`, esc(e.finish || ""), `mean A <b>${signed(e.sortAdv)}</b>`];
    if (e.boundaries) head.push(plural(e.boundaries.length - 1, "segment"), plural((e.cutpoints || []).length, "cutpoint"));
    for (const k in e.extra || {}) head.push(`${esc(k)} ${esc(num(e.extra[k]))}`);
    return `<div class="episode" data-i="${i}"><div class="ep-head">${head.filter(Boolean).join(" ")}</div>` +
      promptBlock(e.prompt) + responseHTML({ ids: e.ids, logprobs: e.logprobs, adv: s._adv, mask: s._mask,
        boundaries: e.boundaries, values: e.values, value_samples: e.value_samples, cutpoints: e.cutpoints,
        per_token: e.per_token }) + "</div>";
  }
  function treeHTML(t, i) {
    const kids = new Map();
    for (const n of t.nodes) if (n.parent !== null) (kids.get(n.parent) || kids.set(n.parent, []).get(n.parent)).push(n);
    const root = t.nodes.find((n) => n.parent === null);
    const leaves = t.nodes.filter((n) => n.leaf), correct = leaves.filter((n) => n.reward >= CORRECT).length;
    const head = [`<span class="badge ${t.correct ? "ok" : "bad"}">${correct}/${leaves.length} leaves correct</span>`,
      `#${i}`, `problem <b>${esc(t.problem)}</b>`, `group ${esc(t.group)}`, `<b class="ncount">${t.nodes.length} nodes</b>`,
      `V(root) <b>${num(root.value)}</b>`];
    return `<div class="tree" data-i="${i}" data-nodes="${t.nodes.length}"><div class="ep-head">${head.join(" ")}</div>` +
      nodeHTML(t, root, kids) + "</div>";
  }
  function nodeHTML(t, n, kids) {
    const children = (kids.get(n.id) || []).map((c) => nodeHTML(t, c, kids)).join("");
    if (n.parent === null) { // the prompt: always open, its tokens in a collapsed block
      return `<div class="tnode root" data-node="${n.id}"><span class="badge root">prompt</span> ` +
        `<span class="ninfo">V(root) <b>${num(n.value)}</b></span>${promptBlock(t.prompt)}<div class="children">${children}</div></div>`;
    }
    const s = tokensOf(n), status = n.replayed_in && n.status === "parked" ? "replayed" : n.status;
    const info = [`#${n.id}`, `depth ${n.depth}`, `V <b>${num(n.value)}</b>`, `A <b>${signed(n.advantage || 0)}</b>`];
    if (n.leaf) info.push(`reward <b>${num(n.reward)}</b>${n.truncated ? " (truncated)" : ""}`);
    if (n.replayed_in) info.push(`replayed in iteration ${n.replayed_in.join(", ")}`);
    const row = `<span class="badge ${status}" title="edge ${n.parent} → ${n.id}">${status}</span> <span class="ninfo">${info.join(" · ")}</span>` +
      responseHTML({ ids: n.ids, logprobs: n.logprobs, adv: s._adv, mask: s._mask });
    const cls = `tnode ${n.status}${n.leaf ? " leaf" : ""}`;
    if (!children) return `<div class="${cls}" data-node="${n.id}"><div class="leafrow">${row}</div></div>`;
    return `<details class="${cls}" data-node="${n.id}" open><summary>${row}</summary><div class="children">${children}</div></details>`;
  }
  function renderList() {
    seqs = [];
    $("tip").hidden = true;
    const list = selected(), size = PAGE_SIZE[state.view], pages = Math.max(1, Math.ceil(list.length / size));
    state.page = Math.min(state.page, pages - 1);
    const page = list.slice(state.page * size, (state.page + 1) * size);
    $("pageinfo").textContent = `page ${state.page + 1} of ${pages} (${list.length} shown of ${items().length})`;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    const render = state.view === "trees" ? (x) => treeHTML(x.e, x.i) : (x) => episodeHTML(x.e, x.i, state.view === "replayed");
    $("list").innerHTML = page.length ? page.map(render).join("") : '<div class="empty-list">nothing matches these filters</div>';
  }
  function renderIteration() {
    fillViews();
    fillProblems();
    renderSummary();
    renderLegend();
    renderList();
  }
  function showIteration(n) {
    state.iteration = n;
    state.page = 0;
    $("iteration").value = String(n);
    return loadIteration(n).then((d) => { state.data = d; renderIteration(); renderCharts(); })
      .catch((err) => { showError(String(err)); console.error(err); });
  }

  // ------------------------------------------------------------------ events
  function rerender(key, value) { state[key] = value; state.page = 0; if (key === "view") renderIteration(); else renderList(); }
  function bind() {
    $("iteration").addEventListener("change", (e) => showIteration(+e.target.value));
    $("view").addEventListener("change", (e) => rerender("view", e.target.value));
    $("filter").addEventListener("change", (e) => rerender("filter", e.target.value));
    $("problem").addEventListener("change", (e) => rerender("problem", e.target.value));
    $("sort").addEventListener("change", (e) => rerender("sort", e.target.value));
    $("xaxis").addEventListener("change", (e) => { state.xaxis = e.target.value; renderCharts(); });
    $("prev").addEventListener("click", () => { state.page--; renderList(); window.scrollTo(0, $("episodes-section").offsetTop); });
    $("next").addEventListener("click", () => { state.page++; renderList(); window.scrollTo(0, $("episodes-section").offsetTop); });
    $("expand").addEventListener("click", () => document.querySelectorAll("#list details.tnode").forEach((d) => { d.open = true; }));
    $("collapse").addEventListener("click", () => document.querySelectorAll("#list details.tnode").forEach((d) => { d.open = false; }));
    $("charts").addEventListener("click", (e) => {
      const it = e.target.dataset && e.target.dataset.it;
      if (it !== undefined && canShow(+it)) showIteration(+it).then(() => $("episodes-section").scrollIntoView());
    });
    $("list").addEventListener("toggle", (e) => { // a prompt's tokens are rendered when it is opened
      const d = e.target;
      if (d.classList && d.classList.contains("prompt") && d.open && !d.dataset.done) {
        d.dataset.done = "1";
        d.insertAdjacentHTML("beforeend", promptHTML(state.data.prompts[+d.dataset.prompt] || []));
      }
    }, true);
    document.addEventListener("mouseover", moveTip);
  }
  function poll() { // served page: new metrics and iterations while the run trains
    fetch("index.json").then((r) => r.json()).then((idx) => {
      INDEX = idx;
      fillIterations();
      renderCharts();
      if (state.iteration === null && idx.available.length) showIteration(idx.available[idx.available.length - 1]);
    }).catch((err) => console.warn("spo inspect: refresh failed", err));
  }

  function main() {
    renderHeader();
    bind();
    const its = INDEX.mode === "serve" ? INDEX.available : INDEX.embedded;
    state.iteration = its.length ? its[its.length - 1] : null;
    fillIterations();
    renderCharts();
    if (INDEX.mode === "serve") setInterval(poll, 10000);
    const done = () => { document.body.dataset.ready = "1"; };
    if (state.iteration === null) { $("episodes-section").querySelector(".controls").hidden = true; done(); return; }
    showIteration(state.iteration).then(done);
  }
  try { main(); } catch (err) { showError(String(err && err.stack || err)); throw err; }
})();
