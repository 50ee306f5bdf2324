// The duty journal: newest first, in pages; filters; new entries announced live; the chain verified on demand.
"use strict";
(function () {
  const {el, clear, t, state, on} = window.LK;
  const KINDS = ["alert", "command", "result", "state", "operator", "security", "system", "custody", "admin"];
  let rows, more, banner, top = 0, bottom = null, filters = {};

  function row(e) {
    const det = el("pre", {class: "detail", hidden: true}, JSON.stringify(e.detail, null, 1));
    const tr = el("tr", {"data-seq": e.seq, class: "k-" + e.kind},
      el("td", {class: "mono"}, e.seq), el("td", {}, window.LK.fmtTime(e.ts)),
      el("td", {}, el("span", {class: "chip jk-" + e.kind}, t("jk_" + e.kind))),
      el("td", {class: "op"}, e.operator || ""), el("td", {class: "dev"}, e.device || ""),
      el("td", {class: "summary"}, e.summary, det));
    tr.addEventListener("click", () => { det.hidden = !det.hidden; });
    return tr;
  }

  function read() {
    const f = {};
    for (const k of ["kind", "device", "operator", "from", "to"]) {
      const v = document.getElementById("f-" + k).value.trim();
      if (v) f[k] = v;
    }
    return f;
  }

  async function page(older) {
    const args = Object.assign({limit: 50}, filters);
    if (older && bottom) args.before = bottom;
    const r = await window.LK.post("/api/journal", args);
    if (!r.ok) { window.LK.toast(t("op_failed") + ": " + (r.error || r.code), "bad"); return; }
    if (!older) { clear(rows); top = r.data.head_seq; }
    for (const e of r.data.entries) rows.appendChild(row(e));
    if (r.data.entries.length) bottom = r.data.entries[r.data.entries.length - 1].seq;
    more.hidden = !r.data.more;
    document.getElementById("head").textContent = t("head", {seq: r.data.head_seq, hash: r.data.head_hash.slice(0, 16)});
    newer();
  }

  async function showNewer() {
    const r = await window.LK.post("/api/journal", Object.assign({after: top, limit: 500}, filters));
    if (!r.ok) return;
    const es = r.data.entries.slice().sort((a, b) => b.seq - a.seq);
    for (const e of es.reverse()) rows.insertBefore(row(e), rows.firstChild);
    top = Math.max(top, r.data.head_seq);
    newer();
  }

  function newer() {
    const n = state.journalSeq - top;
    banner.hidden = n <= 0;
    banner.textContent = t("new_entries", {n: n});
  }

  async function verify() {
    const box = document.getElementById("chain");
    box.textContent = t("verifying");
    box.className = "chain";
    const r = await window.LK.op("journal", {verify: true});
    const d = r.data || {};
    if (r.ok) { box.textContent = t("chain_ok", {n: d.entries, hash: (d.head || "").slice(0, 16)}); box.className = "chain ok"; }
    else { box.textContent = t("chain_broken", {seq: d.bad_seq, reason: d.reason || r.error}); box.className = "chain bad"; }
  }

  document.addEventListener("DOMContentLoaded", () => {
    rows = document.getElementById("rows"); more = document.getElementById("more"); banner = document.getElementById("newer");
    const k = document.getElementById("f-kind");
    for (const x of KINDS) k.appendChild(el("option", {value: x}, t("jk_" + x)));
    document.getElementById("filters").addEventListener("submit", (ev) => { ev.preventDefault(); filters = read(); bottom = null; page(false); });
    more.addEventListener("click", () => page(true));
    banner.addEventListener("click", showNewer);
    document.getElementById("verify").addEventListener("click", verify);
    page(false);
  });
  on((m) => { if ((m.t === "journal" || m.t === "snapshot") && banner) newer(); });
})();
