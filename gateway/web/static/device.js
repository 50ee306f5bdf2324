// One device: its state and latest values, recent heartbeats, its track, its commands, its evidence.
"use strict";
(function () {
  const {el, clear, t, state, on, name, boot} = window.LK;
  const id = boot.device;
  let mv, lastHb = null, beats = [], track = [];

  function head(d) {
    const h = clear(document.getElementById("dev-head"));
    if (!d) { h.appendChild(el("h1", {}, id, " ", el("span", {class: "muted"}, t("unknown_device")))); return; }
    h.appendChild(el("h1", {class: "devname"}, name(d), " ", window.LK.stateChip(d.state)));
    const kv = el("table", {class: "kv"});
    const rows = [["id", d.id], [t("kind"), t("kind_" + d.kind)], [t("last_seen"), window.LK.fmtTime(d.last_seen_ms)],
      [t("since"), window.LK.fmtTime(d.since_ms) + (d.reason ? " (" + d.reason + ")" : "")],
      [t("battery"), window.LK.battery(d)], [t("link"), window.LK.link(d)], ["fw", d.fw || "—"],
      ["hb_s", d.hb_s], [t("gaps"), d.gaps], [t("position"), d.loc ? (d.loc.lat / 1e7).toFixed(6) + ", " + (d.loc.lon / 1e7).toFixed(6) + " (" + d.loc.src + ")" : "—"]];
    for (const [k, v] of Object.entries(d.info || {})) rows.push([k, typeof v === "object" ? JSON.stringify(v) : v]);
    for (const [k, v] of rows) kv.appendChild(el("tr", {}, el("th", {}, k), el("td", {}, v)));
    h.appendChild(kv);
    const act = clear(document.getElementById("dev-actions"));
    if (d.kind === "speaker") { act.appendChild(window.LK.broadcastForm({to: d.id}, name(d))); act.appendChild(window.LK.stopButton(d.id, name(d))); }
  }

  function drawBeats() {
    const b = clear(document.getElementById("beats"));
    for (const h of beats.slice().reverse()) {
      const rest = Object.entries(h).filter(([k]) => k !== "ts").map(([k, v]) => k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join(" ");
      b.appendChild(el("tr", {}, el("td", {}, window.LK.fmtTime(h.ts)), el("td", {class: "mono"}, rest)));
    }
  }

  function drawMap(d) {
    if (!mv) return;
    const ds = d && d.xy ? [d] : [];
    mv.fit(track.length ? track.map((p) => ({xy: p.xy})).concat(ds) : ds);
    mv.update(ds);
    mv.track(track);
  }

  function evidence(list) {
    const b = clear(document.getElementById("evidence"));
    if (!list.length) b.appendChild(el("tr", {}, el("td", {colspan: 4, class: "muted"}, t("none"))));
    for (const e of list) {
      const img = el("div", {class: "snap"});
      const show = el("button", {type: "button", onclick: () => {
        clear(img).appendChild(el("img", {src: "/evidence/" + e.sha256 + "?access=view", alt: e.sha256}));
      }}, t("show"));
      b.appendChild(el("tr", {}, el("td", {}, window.LK.fmtTime(e.received_ms)), el("td", {}, e.kind + " · " + e.mime),
        el("td", {class: "mono"}, e.sha256.slice(0, 16) + "…"),
        el("td", {}, e.mime.startsWith("image/") ? show : "", " ",
          el("a", {href: "/evidence/" + e.sha256 + "?access=download"}, t("download")), img)));
    }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    mv = new window.LK.SiteMapView(document.getElementById("minimap"), {circles: false});
    window.LK.commandList(document.getElementById("cmds"), (c) => c.device === id);
    const r = await window.LK.get("/api/device/" + encodeURIComponent(id));
    beats = r.heartbeats || []; track = r.track || [];
    for (const c of r.commands || []) state.commands.set(c.id, c);
    if (r.device) { state.devices.set(id, r.device); lastHb = r.device.last_hb_ms; }
    head(r.device); drawBeats(); drawMap(r.device); evidence(r.evidence || []);
  });

  on((m) => {
    if (m.t === "snapshot") { if (m.map && mv) mv.setMap(m.map); const d = state.devices.get(id); head(d); drawMap(d); }
    if (m.t !== "devices") return;
    const d = m.devices.find((x) => x.id === id);
    if (!d) return;
    head(d);
    if (d.last_hb_ms && d.last_hb_ms !== lastHb) {
      lastHb = d.last_hb_ms;
      beats.push(Object.assign({ts: d.last_hb_ms}, d.info || {}));
      if (beats.length > 20) beats.shift();
      drawBeats();
    }
    if (d.xy && (!track.length || track[track.length - 1].xy[0] !== d.xy[0] || track[track.length - 1].xy[1] !== d.xy[1])) {
      track.push({ts: d.loc && d.loc.ts, xy: d.xy});
    }
    drawMap(d);
  });
})();
