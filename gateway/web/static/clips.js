// Clips: warning audio (preview in the browser, broadcast) and evidence (hash, custody trail, journaled access).
"use strict";
(function () {
  const {el, clear, t} = window.LK;

  async function audio() {
    const r = await window.LK.op("clips", {action: "list"});
    const b = clear(document.getElementById("audio"));
    const cs = r.ok ? r.data.clips : [];
    if (!cs.length) b.appendChild(el("tr", {}, el("td", {colspan: 5, class: "muted"}, t("none"))));
    for (const c of cs) {
      const dur = c.frames && c.rate ? (c.frames / c.rate).toFixed(1) + " s" : (c.duration_ms ? (c.duration_ms / 1000).toFixed(1) + " s" : "");
      b.appendChild(el("tr", {"data-clip": c.id}, el("td", {}, c.id), el("td", {}, dur), el("td", {}, Math.round(c.size / 1024) + " KiB"),
        el("td", {class: "mono"}, (c.sha256 || "").slice(0, 16) + "…"),
        el("td", {}, el("audio", {controls: "", preload: "none", src: "/audio/" + encodeURIComponent(c.id)}))));
    }
  }

  async function custody(sha, box) {
    const r = await window.LK.op("clips", {action: "custody", sha256: sha});
    clear(box);
    if (!r.ok) { box.appendChild(el("p", {class: "bad"}, r.error || r.code)); return; }
    const ol = el("ol", {class: "custody"});
    for (const e of r.data.custody) {
      ol.appendChild(el("li", {}, window.LK.fmtTime(e.ts), " · ", e.summary, e.operator ? " · " + e.operator : "",
        el("span", {class: "mono muted"}, " #" + e.seq + " " + e.hash.slice(0, 12))));
    }
    box.appendChild(ol);
  }

  async function evidence() {
    const r = await window.LK.op("clips", {action: "evidence", limit: 100});
    const b = clear(document.getElementById("evidence"));
    const es = r.ok ? r.data.evidence : [];
    if (!es.length) b.appendChild(el("tr", {}, el("td", {colspan: 6, class: "muted"}, t("none"))));
    for (const e of es) {
      const box = el("div", {class: "trail"});
      b.appendChild(el("tr", {"data-sha": e.sha256},
        el("td", {}, window.LK.fmtTime(e.received_ms)), el("td", {}, e.device),
        el("td", {}, e.kind + " · " + e.mime + " · " + Math.round(e.size / 1024) + " KiB"),
        el("td", {class: "mono sha", title: e.sha256}, e.sha256),
        el("td", {}, t("auth_" + e.auth)),
        el("td", {},
          el("button", {type: "button", onclick: () => custody(e.sha256, box)}, t("custody")), " ",
          el("a", {href: "/evidence/" + e.sha256 + "?access=download", class: "download"}, t("download")), box)));
    }
  }

  document.addEventListener("DOMContentLoaded", () => { audio(); evidence(); });
})();
