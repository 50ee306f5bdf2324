// Big-screen mode: the whole map and the latest alerts, large enough to read from 5 m; no controls needed.
"use strict";
(function () {
  const {el, clear, t, state, on} = window.LK;
  let mv, positioned = -1, lastAlert = 0, alerts = [];

  function counts() {
    const c = {online: 0, stale: 0, offline: 0};
    for (const d of state.devices.values()) if (d.kind !== "gateway" && c[d.state] !== undefined) c[d.state] += 1;
    const box = clear(document.getElementById("wall-counts"));
    for (const s of ["online", "stale", "offline"]) box.appendChild(el("div", {class: "count st-" + s}, el("b", {}, c[s]), " ", t("state_" + s)));
  }

  function label(key, fallback) { const v = t(key); return v === key ? String(fallback || "") : v; }

  function drawAlerts() {
    const ul = clear(document.getElementById("wall-alerts"));
    if (!alerts.length) ul.appendChild(el("li", {class: "muted"}, t("no_alerts")));
    for (const e of alerts.slice(0, 8)) {
      const d = e.detail || {};
      ul.appendChild(el("li", {class: "sev-" + (d.sev || "info")}, el("span", {class: "time"}, window.LK.fmtClock(e.ts)), " ",
        el("span", {class: "what"}, label("sev_" + d.sev, d.sev) + " · " + label("ev_" + d.kind, d.kind || e.summary) + " · " + (e.device || ""))));
    }
  }

  async function fetchAlerts() {
    // the first read is journaled like any reading; later ones ask only for what came after (not journaled)
    const args = lastAlert ? {kind: "alert", after: lastAlert, limit: 20} : {kind: "alert", limit: 8};
    const r = await window.LK.post("/api/journal", args);
    if (!r.ok) return;
    const es = r.data.entries;
    const known = new Set(alerts.map((a) => a.seq));  // two pushes can overlap: never list an alert twice
    alerts = es.filter((a) => !known.has(a.seq)).concat(alerts).sort((a, b) => b.seq - a.seq).slice(0, 20);
    lastAlert = Math.max(r.data.head_seq, lastAlert);
    drawAlerts();
  }

  document.addEventListener("DOMContentLoaded", () => {
    mv = new window.LK.SiteMapView(document.getElementById("map"), {px: 1.8});
    window.LK.commandList(document.getElementById("cmds"), () => true);
    document.getElementById("fullscreen").addEventListener("click", () => document.documentElement.requestFullscreen());
    fetchAlerts();
  });

  on((m) => {
    if (m.t === "journal" && lastAlert) fetchAlerts();
    if (m.t === "snapshot") mv.setMap(m.map);
    if (m.t !== "snapshot" && m.t !== "devices") return;
    const ds = [...state.devices.values()];
    const n = ds.filter((d) => d.xy).length;
    if (n !== positioned) { mv.fit(ds); positioned = n; }
    mv.update(ds);
    counts();
    document.getElementById("map").setAttribute("data-rendered", String(n));
  });
})();
