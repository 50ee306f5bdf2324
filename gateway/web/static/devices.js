// The device list: live state, last seen, battery, link; filter by kind and state, search by id or name.
"use strict";
(function () {
  const {el, clear, t, state, on, name} = window.LK;
  let body, q, kind, st;

  function row(d) {
    return el("tr", {"data-id": d.id, class: "st-" + d.state},
      el("td", {}, window.LK.stateChip(d.state)),
      el("td", {}, el("a", {href: "/devices/" + encodeURIComponent(d.id), class: "devname"}, name(d))),
      el("td", {class: "muted"}, d.label ? d.id : ""),
      el("td", {}, t("kind_" + d.kind)),
      el("td", {title: window.LK.fmtTime(d.last_seen_ms)}, window.LK.ago(d.last_seen_ms)),
      el("td", {}, window.LK.battery(d)),
      el("td", {}, window.LK.link(d)),
      el("td", {}, d.gaps || 0),
      el("td", {class: "muted"}, d.fw || ""));
  }

  function draw() {
    const needle = q.value.trim().toLowerCase();
    const ds = [...state.devices.values()].filter((d) =>
      (!kind.value || d.kind === kind.value) && (!st.value || d.state === st.value) &&
      (!needle || d.id.toLowerCase().includes(needle) || (d.label || "").toLowerCase().includes(needle)))
      .sort((a, b) => a.id < b.id ? -1 : 1);
    clear(body);
    for (const d of ds) body.appendChild(row(d));
    document.getElementById("shown").textContent = t("shown_of", {n: ds.length, total: state.devices.size});
  }

  document.addEventListener("DOMContentLoaded", () => {
    body = document.getElementById("dev-rows");
    q = document.getElementById("q"); kind = document.getElementById("f-kind"); st = document.getElementById("f-state");
    for (const k of ["speaker", "sensor", "camera", "drone", "recorder", "gateway"]) kind.appendChild(el("option", {value: k}, t("kind_" + k)));
    for (const s of ["online", "stale", "offline", "unknown"]) st.appendChild(el("option", {value: s}, t("state_" + s)));
    for (const i of [q, kind, st]) i.addEventListener("input", draw);
    setInterval(draw, 5000);  // the "seconds ago" column ages; data itself arrives pushed
  });
  on((m) => { if (m.t === "snapshot" || m.t === "devices") draw(); });
})();
