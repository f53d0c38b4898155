// The validator dashboard: polls the JSON endpoints of bitmind_lite/validator/dashboard.py and draws them.
// Everything a miner controls (hotkeys, detector names, error messages) is written as text, never as HTML.
"use strict";

const REFRESH_MS = 10000;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"];
const colour = (uid) => PALETTE[Number(uid) % PALETTE.length];
const charts = {};

// Marks each canvas once Chart.js has drawn it (data-rendered = points drawn), so a test can tell a drawn chart
// from an empty canvas.
Chart.register({ id: "rendered", afterRender(chart) {
  chart.canvas.dataset.rendered = String(chart.data.datasets.reduce((n, d) => n + d.data.length, 0));
} });
Chart.defaults.animation = false;  // redrawn every refresh: animating would only blur the update

const $ = (id) => document.getElementById(id);

async function get(path) {
  const response = await fetch("api/" + path);
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || response.statusText);
  return body;
}

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fill(tableId, rows, empty = "none in the window") {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const c of cells) tr.append(c instanceof Node ? c : el("td", c ?? "–"));
    return tr;
  }));
  if (!rows.length) {
    const td = el("td", empty, "none");
    td.colSpan = $(tableId).querySelectorAll("th").length;
    const tr = el("tr");
    tr.append(td);
    body.append(tr);
  }
}

const num = (v, digits = 3) => el("td", v === null || v === undefined ? "–" : Number(v).toFixed(digits), "num");
const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");
const ago = (t) => (t ? `${Math.max(0, Math.round(Date.now() / 1000 - t))} s ago` : "never");
const short = (hotkey) => (hotkey ? hotkey.slice(0, 8) + "…" : "");

function draw(id, config) {
  if (charts[id]) {
    charts[id].data = config.data;
    charts[id].update("none");
  } else {
    charts[id] = new Chart($(id), config);
  }
}

const timeAxis = { type: "linear", ticks: { callback: (v) => clock(v), maxTicksLimit: 8 } };

function lines(series, hotkeys, stepped) {
  return Object.entries(series).map(([uid, points]) => ({
    label: `uid ${uid} ${short(hotkeys[uid])}`, borderColor: colour(uid), backgroundColor: colour(uid),
    data: points.map(([t, y]) => ({ x: t, y })), pointRadius: 0, borderWidth: 1.5, stepped,
  }));
}

function renderChain(c) {
  const facts = [
    ["validator", c.owner || "?"], ["step", c.step], ["last challenge", ago(c.last_challenge_time)],
    ["chain", c.chain_up === null ? "no challenge yet" : c.chain_up ? "up" : "DOWN"],
    ["last weights block", c.last_weights_block ?? "none yet"],
    ["last weights attempt", c.last_weights_attempt ?
      `block ${c.last_weights_attempt.block}: ${c.last_weights_attempt.reason}` : "none in the window"],
    ["rounds with the chain down", `${c.rounds_chain_down} of ${c.window}`],
  ];
  if (c.log_lines_skipped) facts.push(["unreadable log lines", c.log_lines_skipped]);
  $("chain").replaceChildren(...facts.map(([k, v]) => {
    const span = el("span", `${k}: `);
    const b = el("b", v, k === "chain" ? (c.chain_up ? "up" : "down") : "");
    span.append(b);
    return span;
  }));
}

function renderBoard(rows) {
  fill("leaderboard", rows.map((r) => {
    const hotkey = el("td", short(r.hotkey));
    hotkey.title = r.hotkey;
    return [el("td", r.uid), hotkey, r.detector, num(r.score, 4), num(r.weight), num(r.weight_set),
            num(r.accuracy, 2), el("td", `${r.valid} / ${r.answers}`, "num"), num(r.mcc, 2), num(r.reward, 3),
            num(r.latency_p50, 3)];
  }));
}

function renderHistory(h) {
  draw("score-chart", { type: "line", data: { datasets: lines(h.score, h.hotkeys, false) },
                        options: { parsing: false, scales: { x: timeAxis } } });
  draw("weight-chart", { type: "line", data: { datasets: lines(h.weight, h.hotkeys, "before") },
                         options: { parsing: false, scales: { x: timeAxis, y: { min: 0, max: 1 } } } });
  draw("round-chart", { type: "line", data: { datasets: [{
    label: "seconds per round", data: h.round_seconds.map(([t, s]) => ({ x: t, y: s })), pointRadius: 0,
    borderColor: "#555", borderWidth: 1 }] }, options: { parsing: false, scales: { x: timeAxis } } });
}

function renderFamilies(f, uids) {
  const labels = f.groups.map((g) => `${g.group} (${g.challenges})`);
  const datasets = uids.map((uid) => ({
    label: `uid ${uid}`, backgroundColor: colour(uid),
    data: f.groups.map((g) => g.per_miner[uid]?.accuracy ?? null) }));
  draw("family-chart", { type: "bar", data: { labels, datasets },
                         options: { scales: { y: { min: 0, max: 1, title: { display: true, text: "accuracy" } } } } });
}

function renderLatency(l) {
  const labels = l.miners.map((m) => `uid ${m.uid}`);
  draw("latency-chart", { type: "bar", data: { labels, datasets: [
    { label: "p50", data: l.miners.map((m) => m.p50), backgroundColor: "#1f77b4" },
    { label: "p95", data: l.miners.map((m) => m.p95), backgroundColor: "#ff7f0e" }] } });
  fill("invalid", l.invalid.map((e) => [e.reason, el("td", e.count, "num"),
    Object.entries(e.uids).map(([u, n]) => `${u} (${n})`).join(", "), e.example]));
}

function answerCell(answers) {
  const td = el("td");
  for (const a of answers) {
    const mark = a.correct === null ? "✗ invalid" : a.correct ? "✓" : "✗";
    const text = a.prediction === null ? `${a.uid}: — ${mark}` : `${a.uid}: ${a.prediction.toFixed(2)} ${mark}`;
    const span = el("span", text + "  ", a.correct === null ? "none" : a.correct ? "ok" : "bad");
    if (a.error) span.title = a.error;
    td.append(span);
  }
  return td;
}

function renderChallenges(list) {
  fill("challenges", list.map((c) => {
    const image = el("td");
    if (c.image) {
      const img = el("img", null, "thumb");
      img.src = c.image;
      img.alt = img.title = `${c.image_kind} (photo ${c.photo})`;
      image.append(img);
    } else {
      image.textContent = "not kept";
    }
    return [el("td", c.step), clock(c.time), image, c.label ? "AI-generated" : "real",
            `${c.source} / ${c.family}`, c.level, answerCell(c.answers), num(c.seconds, 2)];
  }));
}

async function refresh() {
  try {
    const [board, history, families, latency, challenges, chain] = await Promise.all(
      ["leaderboard", "history", "families", "latency", "challenges?limit=30", "chain"].map(get));
    renderChain(chain);
    renderBoard(board);
    renderHistory(history);
    renderFamilies(families, board.filter((r) => r.valid > 0).map((r) => String(r.uid)));
    renderLatency(latency);
    renderChallenges(challenges);
    $("error").hidden = true;
  } catch (e) {
    $("error").textContent = `cannot read the validator state: ${e.message}`;
    $("error").hidden = false;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
