// The map page: the site map with every device; select a device or a point and act on it.
"use strict";
(function () {
  const {el, clear, t, state, on, name} = window.LK;
  let mv, panel, positioned = -1, rendered = false, selected = null, point = null;

  function devices() { return [...state.devices.values()]; }

  function counts() {
    const c = {online: 0, stale: 0, offline: 0, unknown: 0};
    for (const d of devices()) if (d.kind !== "gateway") c[d.state] = (c[d.state] || 0) + 1;
    const box = clear(document.getElementById("counts"));
    for (const s of ["online", "stale", "offline"]) box.appendChild(el("span", {class: "count st-" + s}, t("state_" + s) + " " + c[s]));
  }

  function infoTable(d) {
    const tb = el("table", {class: "kv"});
    const rows = [[t("kind"), t("kind_" + d.kind)], [t("last_seen"), window.LK.ago(d.last_seen_ms)],
      [t("battery"), window.LK.battery(d)], [t("link"), window.LK.link(d)]];
    for (const [k, v] of Object.entries(d.info || {})) if (!["bat_pct", "bat_mv", "rssi"].includes(k)) rows.push([k, typeof v === "object" ? JSON.stringify(v) : v]);
    for (const [k, v] of rows) tb.appendChild(el("tr", {}, el("th", {}, k), el("td", {}, v)));
    return tb;
  }

  function showDevice(id) {
    selected = id; point = null;
    const d = state.devices.get(id);
    clear(panel);
    if (!d) return;
    panel.appendChild(el("h2", {class: "devname"}, name(d), " ", window.LK.stateChip(d.state)));
    if (d.label) panel.appendChild(el("div", {class: "muted devid"}, d.id));
    panel.appendChild(infoTable(d));
    if (d.kind === "speaker") {
      panel.appendChild(window.LK.broadcastForm({to: d.id}, name(d)));
      panel.appendChild(window.LK.stopButton(d.id, name(d)));
    }
    if (d.kind === "drone") panel.appendChild(el("p", {class: "muted"}, t("drone_hint")));
    panel.appendChild(el("p", {}, el("a", {href: "/devices/" + encodeURIComponent(d.id), class: "detail"}, t("details"))));
  }

  function showPoint(x, y) {
    selected = null; point = {x, y};
    clear(panel);
    panel.appendChild(el("h2", {}, t("map_point")));
    panel.appendChild(el("div", {class: "muted"}, t("xy", {x: x, y: y})));
    panel.appendChild(window.LK.broadcastForm({near: {x, y}}, t("speakers_near", {m: window.LK.boot.near_m})));
    const drones = devices().filter((d) => d.kind === "drone" && d.state !== "offline");
    for (const d of drones) {
      panel.appendChild(el("button", {type: "button", class: "act-goto", onclick: async () => {
        if (!(await window.LK.confirmDialog(t("confirm_goto", {drone: name(d)})))) return;
        window.LK.report(await window.LK.post("/api/goto", {to: d.id, x: x, y: y}));
      }}, t("send_drone_here", {drone: name(d)})));
    }
  }

  function zoneForm() {
    const box = clear(document.getElementById("zone-box"));
    const sel = el("select", {class: "zone"});
    for (const z of window.LK.boot.zones) sel.appendChild(el("option", {value: z}, t("zone") + " " + z));
    sel.appendChild(el("option", {value: window.LK.boot.site}, t("whole_site") + " " + window.LK.boot.site));
    const target = {to: sel.value, group: true};
    sel.addEventListener("change", () => { target.to = sel.value; });
    box.appendChild(sel);
    box.appendChild(window.LK.broadcastForm(target, t("zone_or_site")));
  }

  document.addEventListener("DOMContentLoaded", () => {
    panel = document.getElementById("side-sel");
    mv = new window.LK.SiteMapView(document.getElementById("map"), {onDevice: showDevice, onPoint: showPoint});
    window.LK.commandList(document.getElementById("cmds"), () => true);
    zoneForm();
  });

  on((msg) => {
    if (msg.t === "snapshot") mv.setMap(msg.map);
    if (msg.t !== "snapshot" && msg.t !== "devices") return;
    const ds = devices();
    const n = ds.filter((d) => d.xy).length;
    if (n !== positioned) { mv.fit(ds); positioned = n; }
    mv.update(ds);
    counts();
    if (selected && msg.t === "devices" && msg.devices.some((d) => d.id === selected)) {
      const head = panel.querySelector(".devname .chip");
      const d = state.devices.get(selected);
      if (head && d) head.replaceWith(window.LK.stateChip(d.state));
    }
    if (!rendered) {
      rendered = true;
      performance.mark("lk-map-rendered");
      document.getElementById("map").setAttribute("data-rendered", String(n));
    }
  });
})();
