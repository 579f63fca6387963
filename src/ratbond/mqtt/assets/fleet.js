"use strict";
// The fleet page: polls fleet.json every 3 s and redraws one row per member.
(function () {
  const POLL_MS = 3000;
  const token = new URLSearchParams(location.search).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const labels = ["role", "name", "MQTT", "tunnel", "paths", "RX Mbit/s", "TX Mbit/s", "seen",
                  "last event"];
  const body = document.querySelector("#fleet tbody");
  const table = document.getElementById("fleet");
  const conn = document.getElementById("conn");

  function mbit(rate) { return rate === null ? "-" : (rate * 8 / 1e6).toFixed(2); }
  function ago(s) {
    if (s === null) return "never";
    return s < 120 ? Math.round(s) + "s" : Math.round(s / 60) + "m";
  }
  function paths(m) {
    if (m.role === "router") return "v" + m.settings_version;
    if (m.paths_up === null && m.paths_known === null) return "-";
    return (m.paths_up || 0) + "/" + (m.paths_known || 0);
  }
  function cells(m) {
    return [m.role, m.name, m.mqtt, m.tunnel, paths(m), mbit(m.rx_bytes_per_second),
            mbit(m.tx_bytes_per_second), ago(m.last_seen_ago_s), m.last_event || "-"];
  }

  function draw(doc) {
    const rows = [];
    for (const m of doc.members) {
      const tr = document.createElement("tr");
      tr.dataset.role = m.role;
      tr.dataset.name = m.name;
      if (m.attention) tr.classList.add("attention");
      if (m.mqtt !== "online") tr.classList.add("offline");
      cells(m).forEach(function (text, i) {
        const td = document.createElement("td");
        td.textContent = text;  // never innerHTML: names come from the broker
        td.dataset.label = labels[i];
        if (i === 2) td.className = m.mqtt === "online" ? "online" : "offline";
        tr.appendChild(td);
      });
      rows.push(tr);
    }
    body.replaceChildren.apply(body, rows);
    table.dataset.rows = String(rows.length);
    document.getElementById("empty").hidden = rows.length > 0;
    const c = doc.counts;
    document.getElementById("counts").textContent =
      c.members + " members · " + c.online + " online · " + c.attention + " need attention";
  }

  async function poll() {
    try {
      const response = await fetch("fleet.json", { headers: headers, cache: "no-store" });
      if (response.status === 401) throw new Error("a token is required (open the page with ?token=)");
      if (!response.ok) throw new Error("fleet.json: HTTP " + response.status);
      draw(await response.json());
      conn.textContent = "updated " + new Date().toLocaleTimeString();
      conn.classList.remove("error");
    } catch (err) {
      conn.textContent = String(err.message || err);
      conn.classList.add("error");
    }
  }

  if (token) {
    for (const a of document.querySelectorAll("a.keep-token")) {
      a.href = a.getAttribute("href") + "?token=" + encodeURIComponent(token);
    }
  }
  poll();
  setInterval(poll, POLL_MS);
})();
