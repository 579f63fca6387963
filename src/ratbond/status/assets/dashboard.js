"use strict";
// ratbond dashboard: polls status.json and history.json once a second and draws them.
// Everything peer-controlled goes into the page through textContent, never as HTML.
(function () {
  const DASH = "\u2013";
  const PALETTE = ["#2f7ed8", "#e4572e", "#29a36a", "#f2a541", "#8e5cc4", "#17becf",
                   "#d6478b", "#7f7f7f", "#bcbd22", "#8c564b"];
  const HORIZON_S = 600;
  const POLL_MS = 1000;
  const HIDDEN_POLL_MS = 10000;  // a background tab costs the router little
  const token = new URLSearchParams(location.search).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};

  const view = {
    windowS: 300,
    times: [],          // sample times (server clock, seconds)
    series: new Map(),  // key -> {key, wan, path_id, session, tx: [], rx: [], rtt: []}
    lastT: null,
    now: null,
    model: null,
    cards: new Map(),   // key -> card refs
    blocks: new Map(),  // session id ("" on the client) -> block refs
    colors: new Map(),
  };
  window.ratbondDashboard = view;  // for tests and the curious

  // ------------------------------------------------------------------ formatting

  function num(v) { return typeof v === "number" && isFinite(v) ? v : null; }
  function dash(v) { return v === null || v === undefined || v === "" ? DASH : String(v); }
  function fixed(v, digits) { v = num(v); return v === null ? DASH : v.toFixed(digits); }
  function mbit(bytesPerS) { const v = num(bytesPerS); return v === null ? DASH : (v * 8 / 1e6).toFixed(2) + " Mbit/s"; }
  function mbitBits(bps) { const v = num(bps); return v === null ? DASH : (v / 1e6).toFixed(1) + " Mbit/s"; }
  function ms(v) { v = num(v); return v === null ? DASH : v.toFixed(1) + " ms"; }
  function percent(f) { f = num(f); return f === null ? DASH : (f * 100).toFixed(1) + " %"; }
  function duration(s) {
    s = num(s);
    if (s === null) return DASH;
    s = Math.floor(s);
    const pad = (n) => String(n).padStart(2, "0");
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + pad(s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + pad(Math.floor(s % 3600 / 60)) + "m";
    return Math.floor(s / 86400) + "d" + pad(Math.floor(s % 86400 / 3600)) + "h";
  }
  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function colorOf(key) {
    if (!view.colors.has(key)) view.colors.set(key, PALETTE[view.colors.size % PALETTE.length]);
    return view.colors.get(key);
  }
  function pathName(p) { return (p.wan || "path") + " #" + p.path_id; }

  // ------------------------------------------------------------------ data

  async function getJSON(url) {
    const response = await fetch(url, { headers: headers, cache: "no-store" });
    if (response.status === 401) throw new Error("a token is required (open the page with ?token=)");
    if (!response.ok) throw new Error("HTTP " + response.status);
    return response.json();
  }

  function mergeHistory(h) {
    if (!h || !Array.isArray(h.times)) return;
    if (view.lastT !== null && num(h.now) !== null && h.now < view.lastT) {
      view.times = []; view.series.clear(); view.lastT = null;  // the server restarted
    }
    const before = view.times.length;
    const fresh = h.times.length;
    view.times.push(...h.times);
    const seen = new Set();
    for (const p of h.paths || []) {
      seen.add(p.key);
      let s = view.series.get(p.key);
      if (!s) {
        s = { key: p.key, tx: new Array(before).fill(null), rx: new Array(before).fill(null),
              rtt: new Array(before).fill(null) };
        view.series.set(p.key, s);
      }
      s.wan = p.wan; s.path_id = p.path_id; s.session = p.session;
      s.tx.push(...(p.tx || []).slice(0, fresh));
      s.rx.push(...(p.rx || []).slice(0, fresh));
      s.rtt.push(...(p.rtt_ms || []).slice(0, fresh));
      for (const arr of [s.tx, s.rx, s.rtt]) while (arr.length < view.times.length) arr.push(null);
    }
    for (const [key, s] of view.series) {
      if (!seen.has(key)) for (const arr of [s.tx, s.rx, s.rtt]) while (arr.length < view.times.length) arr.push(null);
    }
    if (fresh) view.lastT = h.times[h.times.length - 1];
    if (num(h.now) !== null) view.now = h.now;
    // keep the horizon only
    let drop = 0;
    while (drop < view.times.length && view.times[drop] < view.now - HORIZON_S) drop++;
    if (drop) {
      view.times.splice(0, drop);
      for (const s of view.series.values()) { s.tx.splice(0, drop); s.rx.splice(0, drop); s.rtt.splice(0, drop); }
    }
    for (const [key, s] of view.series) {
      if (s.tx.every((v) => v === null) && s.rtt.every((v) => v === null)) view.series.delete(key);
    }
  }

  // ------------------------------------------------------------------ charts

  function setupCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 300;
    const height = canvas.clientHeight || Number(canvas.getAttribute("height")) || 150;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return { ctx: ctx, width: width, height: height };
  }

  function niceCeiling(v) {
    if (!(v > 0)) return 1;
    const exp = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * exp) return m * exp;
    return 10 * exp;
  }

  function styleColor(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim() || "#888";
  }

  // Seconds the charts span: the chosen window, or less while the history is shorter.
  function span() {
    if (!view.times.length || view.now === null) return view.windowS;
    return Math.max(10, Math.min(view.windowS, view.now - view.times[0]));
  }

  function windowIndex() {
    const from = (view.now === null ? 0 : view.now) - span();
    let i = 0;
    while (i < view.times.length && view.times[i] < from) i++;
    return i;
  }

  function drawStacked(canvas, direction) {
    const { ctx, width, height } = setupCanvas(canvas);
    const start = windowIndex();
    const times = view.times.slice(start);
    const keys = Array.from(view.series.keys()).sort();
    const left = 44, bottom = 16, top = 6, right = 6;
    const plotW = Math.max(10, width - left - right), plotH = Math.max(10, height - top - bottom);
    const stack = times.map(() => 0);
    const layers = keys.map((key) => {
      const values = view.series.get(key)[direction].slice(start);
      const lower = stack.slice();
      values.forEach((v, i) => { stack[i] += (num(v) || 0) * 8 / 1e6; });
      return { key: key, lower: lower, upper: stack.slice() };
    });
    const maxY = niceCeiling(Math.max(0, ...stack));
    const seconds = span();
    const x = (t) => left + plotW * (1 - (view.now - t) / seconds);
    const y = (v) => top + plotH * (1 - v / maxY);
    ctx.strokeStyle = styleColor("--line");
    ctx.fillStyle = styleColor("--muted");
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    for (const frac of [0, 0.5, 1]) {
      const yy = Math.round(y(maxY * frac)) + 0.5;
      ctx.beginPath(); ctx.moveTo(left, yy); ctx.lineTo(left + plotW, yy); ctx.stroke();
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      ctx.fillText(String(+(maxY * frac).toFixed(2)), left - 4, yy);
    }
    ctx.textAlign = "left"; ctx.textBaseline = "bottom";
    ctx.fillText("\u2212" + duration(seconds), left, height);
    ctx.textAlign = "right";
    ctx.fillText("now", left + plotW, height);
    if (times.length >= 2) {
      for (const layer of layers) {
        ctx.beginPath();
        times.forEach((t, i) => { const px = x(t), py = y(layer.upper[i]); if (i) ctx.lineTo(px, py); else ctx.moveTo(px, py); });
        for (let i = times.length - 1; i >= 0; i--) ctx.lineTo(x(times[i]), y(layer.lower[i]));
        ctx.closePath();
        ctx.globalAlpha = 0.75;
        ctx.fillStyle = colorOf(layer.key);
        ctx.fill();
        ctx.globalAlpha = 1;
      }
    }
    canvas.dataset.points = String(times.length);
    canvas.dataset.lastTotal = String(stack.length ? stack[stack.length - 1] : 0);
    canvas.dataset.layers = String(layers.length);
  }

  function drawRtt(canvas, key) {
    const { ctx, width, height } = setupCanvas(canvas);
    const series = view.series.get(key);
    const start = windowIndex();
    if (!series) return null;
    const times = view.times.slice(start);
    const values = series.rtt.slice(start);
    const known = values.filter((v) => num(v) !== null);
    if (!known.length) return null;
    const maxY = niceCeiling(Math.max(...known) * 1.1);
    const seconds = span();
    const x = (t) => width * (1 - (view.now - t) / seconds);
    const y = (v) => 12 + (height - 14) * (1 - v / maxY);
    ctx.strokeStyle = styleColor("--line");
    ctx.lineWidth = 1;
    for (const v of [0, maxY]) {
      ctx.beginPath(); ctx.moveTo(0, Math.round(y(v)) + 0.5); ctx.lineTo(width, Math.round(y(v)) + 0.5); ctx.stroke();
    }
    ctx.fillStyle = styleColor("--muted");
    ctx.font = "10px system-ui, sans-serif";
    ctx.textAlign = "left"; ctx.textBaseline = "top";
    ctx.fillText(maxY + " ms", 0, 0);
    ctx.strokeStyle = colorOf(key);
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let drawing = false;
    times.forEach((t, i) => {
      const v = num(values[i]);
      if (v === null) { drawing = false; return; }
      if (drawing) ctx.lineTo(x(t), y(v)); else ctx.moveTo(x(t), y(v));
      drawing = true;
    });
    ctx.stroke();
    canvas.dataset.points = String(known.length);
    return { max: Math.max(...known), min: Math.min(...known), seconds: seconds };
  }

  // ------------------------------------------------------------------ summary, tables

  function renderSummary(m) {
    const box = document.getElementById("summary");
    const t = m.tunnel || {}, c = m.channel || {}, tot = m.totals || {}, r = tot.rates || {};
    const tiles = [
      ["paths up", (tot.paths_up ?? DASH) + " / " + (tot.paths_known ?? DASH)],
      ["received", mbit(r.rx_1s)], ["sent", mbit(r.tx_1s)],
      ["received, 10 s", mbit(r.rx_10s)], ["sent, 10 s", mbit(r.tx_10s)],
      ["uptime", duration(m.uptime_s)],
      ["session", dash(m.session)],
      [m.role === "server" ? "listen" : "server", dash(m.role === "server" ? m.listen : m.server)],
      ["channel", dash(c.mode) + (c.cipher ? " \u00b7 " + c.cipher : "")],
      ["rekeys", dash(c.rekeys)],
      ["balance", dash(m.balance)],
      ["tunnel", dash(t.device) + " " + dash(t.address)],
      ["mtu", dash(t.mtu)],
    ];
    if (m.role !== "server") {
      const wans = Object.entries(m.wans || {}).map(([name, address]) => name + " " + address);
      tiles.push(["WANs", wans.length ? wans.join(", ") : DASH]);
    }
    if (m.role !== "server") tiles.push(["default route", t.default_route === true ? "yes" : t.default_route === false ? "no" : DASH]);
    box.replaceChildren(...tiles.map(([k, v]) => {
      const tile = el("div", "tile");
      tile.append(el("div", "k", k), el("div", "v", v));
      tile.dataset.key = k;
      return tile;
    }));
  }

  function renderTable(id, values) {
    const table = document.getElementById(id);
    let entries = Object.entries(values || {});
    let zeros = 0;
    if (id === "drops") {  // what happened first; the reasons still at 0 as one line
      zeros = entries.filter(([, v]) => !v).length;
      entries = entries.filter(([, v]) => v);
    }
    if (!entries.length && !zeros) {
      const row = el("tr"); row.append(el("td", "", DASH)); table.replaceChildren(row); return;
    }
    const rows = entries.map(([k, v]) => {
      const row = el("tr");
      const cell = el("td", "n", Number.isInteger(v) ? String(v) : fixed(v, 3));
      if (id === "drops" && v > 0) cell.classList.add("nonzero");
      row.append(el("td", "", k), cell);
      return row;
    });
    if (zeros) {
      const row = el("tr", "muted");
      const plural = zeros > 1 ? "s" : "";
      const label = rows.length ? zeros + " other reason" + plural :
        "no drops (" + zeros + " reason" + plural + ")";
      row.append(el("td", "", label), el("td", "n", "0"));
      rows.push(row);
    }
    table.replaceChildren(...rows);
  }

  // ------------------------------------------------------------------ path cards

  function block(sessionId, session, role) {
    let b = view.blocks.get(sessionId);
    if (!b) {
      const root = el("div", "session");
      root.dataset.session = sessionId;
      const title = el("h2");
      const meta = el("span", "meta");
      const cards = el("div", "cards");
      root.append(title, cards);
      b = { root: root, title: title, meta: meta, cards: cards };
      view.blocks.set(sessionId, b);
    }
    if (role === "server") {
      b.title.replaceChildren(document.createTextNode("session " + sessionId + " "), b.meta);
      const parts = [];
      if (session) {
        if (session.active) parts.push("active");
        if (session.client) parts.push("client " + session.client);
        if (num(session.age_s) !== null) parts.push("age " + duration(session.age_s));
        if (session.balance) parts.push(session.balance);
        const drops = Object.entries(session.drops || {}).filter(([, v]) => v > 0);
        if (drops.length) parts.push("drops " + drops.map(([k, v]) => k + " " + v).join(", "));
        const reorder = session.reorder || {};
        if (num(reorder.late) !== null) parts.push("reorder late " + reorder.late);
      }
      b.meta.textContent = parts.join(" \u00b7 ");
    } else {
      b.title.textContent = "paths";
    }
    return b;
  }

  function card(p) {
    let c = view.cards.get(p.key);
    if (!c) {
      const root = el("article", "card");
      root.dataset.pathKey = p.key;
      const h = el("h3");
      const swatch = el("span", "swatch");
      const name = el("span", "name");
      const pill = el("span", "pill");
      h.append(swatch, name, pill);
      const since = el("p", "since");
      const dl = el("dl");
      const fields = {};
      for (const label of ["RTT", "min RTT", "loss", "capacity", "sent", "received",
                           "queue", "retransmits", "local", "remote"]) {
        const dd = el("dd");
        dd.dataset.field = label;
        dl.append(el("dt", "", label), dd);
        fields[label] = dd;
      }
      const rtt = el("canvas", "rtt");
      rtt.setAttribute("height", "64");
      rtt.setAttribute("role", "img");
      rtt.setAttribute("aria-label", "RTT of this path over time");
      const rttCaption = el("div", "rtt-caption");
      root.append(h, since, dl, rtt, rttCaption);
      c = { root: root, swatch: swatch, name: name, pill: pill, since: since, fields: fields,
            rtt: rtt, rttCaption: rttCaption };
      view.cards.set(p.key, c);
    }
    const up = p.state === "up";
    const down = p.state === "down";
    c.root.className = "card " + (up ? "up" : down ? "down" : "other");
    c.root.dataset.state = p.state || "unknown";
    c.swatch.style.background = colorOf(p.key);
    c.name.textContent = pathName(p);
    c.pill.textContent = p.state || "unknown";
    let since = (p.state || "unknown") + (num(p.since_s) !== null ? " for " + duration(p.since_s) : "");
    if (!up && p.down_reason) since += " \u2014 " + p.down_reason;
    c.since.textContent = since;
    c.since.title = num(p.since_s) !== null ?
      "since " + new Date(Date.now() - p.since_s * 1000).toLocaleString() : "";
    const r = p.rates || {};
    const f = c.fields;
    f.RTT.textContent = ms(p.rtt_ms);
    f["min RTT"].textContent = ms(p.min_rtt_ms);
    f.loss.textContent = percent(p.loss);
    f.capacity.textContent = mbitBits(p.capacity_bps);
    f.sent.textContent = mbit(r.tx_1s);
    f.received.textContent = mbit(r.rx_1s);
    f.queue.textContent = dash(p.waitsnd) + (num(p.queue_limit) !== null ? " / " + p.queue_limit : "");
    f.retransmits.textContent = dash(p.retransmits);
    f.local.textContent = dash(p.local);
    f.remote.textContent = dash(p.remote);
    return c;
  }

  function renderPaths(m) {
    const container = document.getElementById("sessions");
    const paths = Array.isArray(m.paths) ? m.paths : [];
    const groups = new Map();
    if (m.role === "server") {
      for (const s of m.sessions || []) groups.set(s.session, { session: s, paths: [] });
      for (const p of paths) {
        const id = p.session || DASH;
        if (!groups.has(id)) groups.set(id, { session: null, paths: [] });
        groups.get(id).paths.push(p);
      }
    } else {
      groups.set("", { session: null, paths: paths });
    }
    const blocks = [];
    const liveCards = new Set();
    for (const [id, g] of groups) {
      const b = block(id, g.session, m.role);
      const cards = g.paths.map((p) => { liveCards.add(p.key); return card(p); });
      if (!cards.length) {
        b.cards.replaceChildren(el("p", "since", "no path"));
      } else {
        b.cards.replaceChildren(...cards.map((c) => c.root));
      }
      blocks.push(b.root);
    }
    container.replaceChildren(...blocks);
    for (const [id] of view.blocks) if (!groups.has(id)) view.blocks.delete(id);
    for (const [key] of view.cards) if (!liveCards.has(key)) view.cards.delete(key);
  }

  function renderLegend() {
    const legend = document.getElementById("legend");
    const keys = Array.from(view.series.keys()).sort();
    legend.replaceChildren(...keys.map((key) => {
      const s = view.series.get(key);
      const item = el("span", "item");
      const sw = el("span", "swatch");
      sw.style.background = colorOf(key);
      item.append(sw, document.createTextNode(pathName(s) + (s.session ? " (" + s.session + ")" : "")));
      return item;
    }));
  }

  function renderCharts() {
    drawStacked(document.getElementById("chart-rx"), "rx");
    drawStacked(document.getElementById("chart-tx"), "tx");
    for (const [key, c] of view.cards) {
      const range = drawRtt(c.rtt, key);
      c.rttCaption.textContent = range ? "RTT over the last " + duration(range.seconds) + ": min " +
        range.min.toFixed(1) + ", max " + range.max.toFixed(1) + " ms" : "RTT: no samples yet";
    }
    renderLegend();
  }

  function render() {
    const m = view.model;
    if (!m) return;
    document.getElementById("role").textContent = dash(m.role) + (m.version ? " " + m.version : "");
    const badge = document.getElementById("state");
    badge.dataset.state = m.state || "unknown";
    badge.textContent = m.state || "unknown";
    document.title = "ratbond " + (m.role || "") + " \u00b7 " + (m.state || "");
    renderSummary(m);
    renderPaths(m);
    renderTable("drops", m.drops);
    renderTable("reorder", m.role === "server" ? perSession(m, "reorder") : m.reorder);
    renderTable("counters", m.counters);
    renderCharts();
  }

  // The server keeps one reorder buffer per session: "<session> <name>" rows.
  function perSession(m, field) {
    const out = {};
    for (const s of m.sessions || []) {
      for (const [k, v] of Object.entries(s[field] || {})) out[s.session + " " + k] = v;
    }
    return out;
  }

  function setConnection(error) {
    const conn = document.getElementById("conn");
    document.body.classList.toggle("stale", !!error);
    conn.classList.toggle("error", !!error);
    conn.textContent = error ? "no data: " + error.message + " \u2014 retrying" :
      "updated " + new Date().toLocaleTimeString();
  }

  let timer = null;
  let busy = false;

  function schedule(ms) {
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(tick, ms);
  }

  async function tick() {
    timer = null;
    if (busy) return;
    busy = true;
    try {
      const since = view.lastT === null ? "" : "?since=" + encodeURIComponent(view.lastT);
      const [model, history] = await Promise.all([getJSON("status.json"), getJSON("history.json" + since)]);
      view.model = model;
      mergeHistory(history);
      render();
      setConnection(null);
    } catch (error) {
      setConnection(error);
    }
    busy = false;
    schedule(document.hidden ? HIDDEN_POLL_MS : POLL_MS);
  }

  for (const button of document.querySelectorAll(".window button")) {
    button.addEventListener("click", () => {
      view.windowS = Number(button.dataset.window) || 300;
      for (const b of document.querySelectorAll(".window button")) b.classList.toggle("on", b === button);
      renderCharts();
    });
  }
  if (token) {
    for (const a of document.querySelectorAll("a.keep-token")) {
      a.href = a.getAttribute("href") + "?token=" + encodeURIComponent(token);
    }
  }
  window.addEventListener("resize", renderCharts);
  document.addEventListener("visibilitychange", () => { if (!document.hidden && !busy) schedule(0); });
  tick();
})();
