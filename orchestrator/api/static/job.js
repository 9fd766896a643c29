// One job, live: reads GET /v1/jobs/{id} once, then follows its SSE feed. Draws the vote share of each
// answer class over checkpoints (hand-written SVG), the margin against the rule's threshold, the waves
// (how many of K were launched, running, finished, never launched; a timeline of the traces on the job's
// token clock, coloured by wave), each trace's progress, and the decision when it comes.
"use strict";

(() => {
  const jobId = decodeURIComponent(location.pathname.split("/").pop());
  const MAX_NAMED = 6;
  const COLORS = ["#2f5fd0", "#d0682f", "#1f8a4c", "#9b2fd0", "#b3261e", "#2fa7d0", "#c9a21d", "#555"];
  const WAVE_COLORS = ["#2f5fd0", "#d0682f", "#1f8a4c", "#9b2fd0", "#c9a21d", "#2fa7d0"];
  const state = {
    history: [], traces: new Map(), classes: [], maxTokens: 1, events: 0, done: false, threshold: null,
    budget: null, launched: null, neverLaunched: null,
  };
  const $ = (id) => document.getElementById(id);
  $("job-id").textContent = jobId;

  function color(label) {
    let i = state.classes.indexOf(label);
    if (i < 0) { state.classes.push(label); i = state.classes.length - 1; }
    return COLORS[i % COLORS.length];
  }

  function setStatus(status) {
    const node = $("status");
    node.textContent = status;
    node.className = "status " + status;
    document.body.dataset.status = status;
  }

  function recordVote(data) {
    const counts = data.counts || data.votes;
    if (!counts) return;
    const checkpoint = data.checkpoint !== undefined ? data.checkpoint : state.history.length + 1;
    const last = state.history[state.history.length - 1];
    if (last && last.checkpoint === checkpoint) last.counts = counts;
    else state.history.push({ checkpoint, counts });
    const ordered = Object.values(counts).map(Number).sort((a, b) => b - a);
    const margin = data.margin !== undefined ? Number(data.margin) : (ordered[0] || 0) - (ordered[1] || 0);
    if (data.threshold !== undefined && data.threshold !== null) state.threshold = Number(data.threshold);
    else if (data.details && typeof data.details.slack === "number") state.threshold = margin - data.details.slack;
    let leader = data.leader;
    if (leader === undefined || leader === null) {
      leader = Object.keys(counts).reduce((a, b) => (counts[a] >= counts[b] ? a : b), null);
    }
    $("checkpoint").textContent = checkpoint;
    $("leader").textContent = leader === null ? "–" : leader;
    $("margin").textContent = Mars.fmt(margin);
    $("threshold").textContent = state.threshold === null ? "–" : Mars.fmt(state.threshold);
    const scale = Math.max(state.threshold || 0, margin, 1) * 1.2;
    document.querySelector("#margin-meter .fill").style.width = (100 * margin / scale) + "%";
    const mark = document.querySelector("#margin-meter .mark");
    mark.style.display = state.threshold === null ? "none" : "block";
    if (state.threshold !== null) mark.style.left = (100 * state.threshold / scale) + "%";
    if (Array.isArray(data.traces)) data.traces.forEach(updateTrace);
    drawChart();
  }

  function drawChart() {
    const svg = $("chart");
    const W = 700, H = 260, L = 40, R = 10, T = 10, B = 30;
    const ns = "http://www.w3.org/2000/svg";
    svg.replaceChildren();
    const mk = (tag, attrs, text) => {
      const n = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
      if (text !== undefined) n.textContent = text;
      svg.appendChild(n);
      return n;
    };
    for (const f of [0, 0.5, 1]) {
      const y = T + (1 - f) * (H - T - B);
      mk("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#e2e6ea" });
      mk("text", { x: 4, y: y + 4 }, Math.round(f * 100) + "%");
    }
    const n = state.history.length;
    if (n === 0) return;
    const x = (i) => L + (n === 1 ? 0.5 : i / (n - 1)) * (W - L - R);
    const y = (share) => T + (1 - share) * (H - T - B);
    // Colour and name the answers that ever held the most share; draw the rest thin and grey.
    const peak = new Map();
    state.history.forEach((h) => {
      const total = Object.values(h.counts).reduce((a, b) => a + Number(b), 0) || 1;
      for (const [label, count] of Object.entries(h.counts)) {
        peak.set(label, Math.max(peak.get(label) || 0, Number(count) / total));
      }
    });
    const ranked = [...peak.keys()].sort((a, b) => peak.get(b) - peak.get(a));
    const named = new Set(ranked.slice(0, MAX_NAMED));
    const legend = $("legend");
    legend.replaceChildren();
    for (const label of [...ranked].reverse()) {  // named lines last, so they are drawn on top
      const points = state.history.map((h, i) => {
        const total = Object.values(h.counts).reduce((a, b) => a + Number(b), 0) || 1;
        return x(i).toFixed(1) + "," + y(Number(h.counts[label] || 0) / total).toFixed(1);
      });
      const isNamed = named.has(label);
      const c = isNamed ? color(label) : "#c3c8ce";
      mk("polyline", {
        points: points.join(" "), fill: "none", stroke: c, "stroke-width": isNamed ? 2 : 1, "data-class": label,
      });
    }
    for (const label of ranked.slice(0, MAX_NAMED)) {
      const item = Mars.el("span", { "data-class": label });
      const swatch = Mars.el("i");
      swatch.style.background = color(label);
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(label + " (" + Math.round(100 * peak.get(label)) + "% max)"));
      legend.appendChild(item);
    }
    if (ranked.length > MAX_NAMED) {
      legend.appendChild(Mars.el("span", { class: "muted" }, "+ " + (ranked.length - MAX_NAMED) + " other answers (grey)"));
    }
    mk("text", { x: L, y: H - 8 }, "checkpoint " + state.history[0].checkpoint);
    mk("text", { x: W - R - 90, y: H - 8 }, "checkpoint " + state.history[n - 1].checkpoint);
  }

  function updateTrace(t) {
    if (t.index === undefined) return;
    const prev = state.traces.get(t.index) || { tokens: 0, status: "running", answer: null };
    for (const key of Object.keys(t)) if (t[key] === undefined) delete t[key];
    const next = Object.assign(prev, t);
    state.traces.set(t.index, next);
    state.maxTokens = Math.max(state.maxTokens, Number(next.tokens) || 0);
    let node = document.querySelector('.trace[data-index="' + t.index + '"]');
    if (!node) {
      node = Mars.el("div", { class: "trace", "data-index": t.index });
      node.appendChild(Mars.el("div", { class: "label" }));
      const bar = Mars.el("div", { class: "bar" });
      bar.appendChild(Mars.el("span"));
      node.appendChild(bar);
      const box = $("traces");
      const after = [...box.children].find((c) => Number(c.dataset.index) > t.index);
      box.insertBefore(node, after || null);
    }
    node.className = "trace " + (next.status || "running");
    if (next.wave) node.dataset.wave = next.wave;
    const launch = next.wave
      ? " · wave " + next.wave + (typeof next.launched_s === "number" ? " @" + next.launched_s.toFixed(2) + "s" : "")
      : "";
    const label = next.status === "pending"
      ? "#" + t.index + " never launched"
      : "#" + t.index + " " + Mars.fmt(next.tokens) + " tok" + (next.answer ? " → " + next.answer : "") + launch;
    node.querySelector(".label").textContent = (next.role === "warmup" ? "warmup " : "") + label;
    $("trace-count").textContent = "(" + state.traces.size + ")";
    for (const other of document.querySelectorAll(".trace")) {
      const tr = state.traces.get(Number(other.dataset.index));
      other.querySelector(".bar > span").style.width = (100 * (Number(tr.tokens) || 0) / state.maxTokens) + "%";
    }
    drawWaves();
  }

  // Counts and the timeline of the voting traces (warmup traces are not part of K).
  function drawWaves() {
    // warmup traces are numbered after the K voting ones
    const voting = [...state.traces.entries()].filter(([i, t]) => t.role !== "warmup" && (state.budget === null || i < state.budget));
    const launched = voting.filter(([, t]) => t.status !== "pending");
    const count = (status) => launched.filter(([, t]) => t.status === status).length;
    const waves = new Set(launched.map(([, t]) => t.wave).filter((w) => w));
    const n = state.launched !== null ? state.launched : launched.length;
    $("launched").textContent = "launched " + n + (state.budget ? " of " + state.budget : "");
    for (const status of ["running", "finished", "cancelled", "failed"]) $(status).textContent = count(status);
    const never = state.neverLaunched !== null ? state.neverLaunched : (state.budget ? state.budget - n : null);
    $("never-launched").textContent = never === null ? "–" : never;
    $("unlaunched-label").textContent = state.done ? "never launched" : "not launched yet";
    $("wave-count").textContent = waves.size;

    const svg = $("timeline");
    const ns = "http://www.w3.org/2000/svg";
    const rows = launched.filter(([, t]) => typeof t.launch_position_tokens === "number").sort((a, b) => a[0] - b[0]);
    const W = 1100, L = 40, R = 70, T = 16, B = 18, ROW = 6;
    const H = T + B + Math.max(1, rows.length) * ROW;
    svg.setAttribute("height", H);
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    svg.replaceChildren();
    const mk = (tag, attrs, text) => {
      const node = document.createElementNS(ns, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
      if (text !== undefined) node.textContent = text;
      svg.appendChild(node);
      return node;
    };
    if (!rows.length) return;
    const end = Math.max(1, ...rows.map(([, t]) => t.launch_position_tokens + (Number(t.tokens) || 0)));
    const x = (tokens) => L + (W - L - R) * tokens / end;
    const starts = new Map();
    for (const [, t] of rows) {
      if (!starts.has(t.wave) || t.launch_position_tokens < starts.get(t.wave)) starts.set(t.wave, t.launch_position_tokens);
    }
    for (const [wave, at] of starts) {
      const c = WAVE_COLORS[(wave - 1) % WAVE_COLORS.length];
      mk("line", { x1: x(at), x2: x(at), y1: T - 4, y2: H - B, stroke: c, "stroke-dasharray": "3 2", "data-wave-start": wave });
      mk("text", { x: x(at) + 2, y: T - 5 }, "wave " + wave);
    }
    rows.forEach(([index, t], i) => {
      const c = WAVE_COLORS[((t.wave || 1) - 1) % WAVE_COLORS.length];
      const x0 = x(t.launch_position_tokens);
      const width = Math.max(1, x(t.launch_position_tokens + (Number(t.tokens) || 0)) - x0);
      mk("rect", {
        x: x0.toFixed(1), y: T + i * ROW, width: width.toFixed(1), height: ROW - 1, fill: c,
        "fill-opacity": t.status === "running" ? 1 : 0.55, "data-index": index, "data-wave": t.wave || 0,
        class: "span " + (t.status || "running"),
      });
    });
    mk("text", { x: L, y: H - 4 }, "0");
    mk("text", { x: W - R - 100, y: H - 4 }, Mars.fmt(end) + " tokens (token clock)");
  }

  function showResult(job) {
    setStatus(job.status);
    state.budget = job.budget;
    if (job.launched !== null && job.launched !== undefined) state.launched = job.launched;
    if (job.never_launched !== null && job.never_launched !== undefined) state.neverLaunched = job.never_launched;
    $("spec").textContent = "provider " + job.provider + " · model " + job.model + " · K = " + job.budget + " · method " + job.method;
    if (job.vote) recordVote(job.vote);
    if (["succeeded", "failed", "cancelled"].includes(job.status)) state.done = true;
    if (Array.isArray(job.traces)) job.traces.forEach(updateTrace);
    drawWaves();
    if (state.done) {
      $("answer").textContent = job.answer === null ? "–" : job.answer;
      $("reason").textContent = job.stop_reason || job.error || "–";
      $("stop-checkpoint").textContent = job.stop_checkpoint === null ? "–" : job.stop_checkpoint;
      const decision = $("decision");
      decision.replaceChildren();
      if (job.status === "succeeded") {
        decision.appendChild(document.createTextNode("Answer "));
        decision.appendChild(Mars.el("strong", { id: "final-answer" }, job.answer === null ? "none" : job.answer));
      } else {
        decision.appendChild(Mars.el("strong", { id: "final-answer", class: "status " + job.status }, job.status));
      }
      const a = job.accounting;
      if (a) {
        // All-in first (every token billed, against plain SC with the same K); the paper's view beside it.
        const savings = $("savings");
        savings.replaceChildren();
        const lost = (a.saved_fraction || 0) < 0;
        savings.appendChild(Mars.el("strong", { id: "all-in", class: lost ? "over-sc" : "" },
          "All-in: " + Mars.verdict(a.saved_fraction, job.budget)));
        savings.appendChild(document.createTextNode(
          " · spent " + Mars.fmt(a.total_tokens) + " tokens against ≈ " + Mars.fmt(a.full_budget_estimate_tokens) +
          " for plain self-consistency" +
          (a.cost_usd ? " · $" + a.cost_usd.toFixed(4) + " against $" + (a.full_budget_estimate_usd || 0).toFixed(4) +
            " (" + (a.price_profile || "price profile") + ")" : "")));
        savings.appendChild(Mars.el("span", { id: "paper-view", class: "muted" },
          " · paper's view (generated tokens only): saved " + (100 * (a.saved_generated_fraction || 0)).toFixed(0) + "%"));
      }
    }
  }

  function log(ev) {
    state.events += 1;
    $("event-count").textContent = state.events;
    const line = Mars.el("div", { "data-kind": ev.event }, ev.event + " " + ev.data);
    $("log").prepend(line);
  }

  function onEvent(ev) {
    log(ev);
    let data = {};
    try { data = JSON.parse(ev.data); } catch (err) { return; }
    if (ev.event === "vote") recordVote(data);
    else if (ev.event === "trace") {
      (Array.isArray(data.traces) ? data.traces : [data]).forEach((t) =>
        updateTrace({
          index: t.index, tokens: t.tokens, status: t.state || t.status, answer: t.answer, wave: t.wave,
          launch_position_tokens: t.launch_position_tokens, launched_s: t.launched_s,
        }));
    } else if (ev.event === "checkpoint") {
      // Every running trace has passed this position on the job's token clock: move its bar (tokens are
      // not sent per chunk). A trace of a later wave started later, so it has generated that much less.
      $("checkpoint").textContent = data.checkpoint;
      for (const [index, t] of state.traces) {
        const own = Number(data.position_tokens) - (Number(t.launch_position_tokens) || 0);
        if ((t.status || "running") === "running" && own > Number(t.tokens || 0)) updateTrace({ index, tokens: own });
      }
    }
    else if (ev.event === "stop") {
      if (data.answer !== undefined) $("answer").textContent = data.answer === null ? "–" : data.answer;
      if (data.reason) $("reason").textContent = data.reason;
      if (data.checkpoint !== undefined) $("stop-checkpoint").textContent = data.checkpoint;
      if (data.counts || data.votes) recordVote(data);
    } else if (ev.event === "failure") {
      const box = $("decision");
      box.appendChild(Mars.el("div", { class: "muted" }, "failure: " + (data.message || data.error || ev.data)));
    } else if (ev.event === "status") {
      setStatus(data.status);
    }
  }

  async function start() {
    try {
      const job = await Mars.getJSON("/v1/jobs/" + encodeURIComponent(jobId), start);
      showResult(job);
      // Even a finished job is followed: its event log draws the chart; the feed closes at its end.
      await Mars.follow("/v1/jobs/" + encodeURIComponent(jobId) + "/events", onEvent);
      showResult(await Mars.getJSON("/v1/jobs/" + encodeURIComponent(jobId), start));
    } catch (err) {
      $("decision").textContent = String(err.message || err);
    }
  }

  start();
})();
