// Lookout console: what every page shares. Device-supplied strings only ever reach the page through
// textContent and attribute values set here, never parsed as markup: a name like <img onerror=...> shows as text.
"use strict";
(function () {
  const boot = JSON.parse(document.getElementById("lk-boot").textContent);
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const T = boot.t || {};

  function t(key, vars) {
    let s = Object.prototype.hasOwnProperty.call(T, key) ? T[key] : key;
    if (vars) for (const k of Object.keys(vars)) s = s.split("{" + k + "}").join(String(vars[k]));
    return s;
  }

  // el("td", {class: "x", title: "y", onclick: fn}, "text", childNode, ...): text children become text nodes
  function el(tag, props, ...kids) {
    const ns = tag.startsWith("svg:") ? "http://www.w3.org/2000/svg" : null;
    const e = ns ? document.createElementNS(ns, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on") && typeof v === "function") e.addEventListener(k.slice(2), v);
      else if (k === "text") e.textContent = String(v);
      else e.setAttribute(k, String(v));
    }
    for (const k of kids) {
      if (k === null || k === undefined || k === false) continue;
      e.appendChild(typeof k === "object" ? k : document.createTextNode(String(k)));
    }
    return e;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

  const dtf = new Intl.DateTimeFormat(boot.lang, {timeZone: boot.tz, year: "numeric", month: "2-digit",
    day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"});
  const tf = new Intl.DateTimeFormat(boot.lang, {timeZone: boot.tz, hour: "2-digit", minute: "2-digit",
    second: "2-digit", hourCycle: "h23"});
  function fmtTime(ms) { return ms ? dtf.format(new Date(ms)) : "—"; }
  function fmtClock(ms) { return tf.format(new Date(ms)); }
  function ago(ms) {
    if (!ms) return "—";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return t("ago_s", {n: s});
    if (s < 3600) return t("ago_m", {n: Math.floor(s / 60)});
    if (s < 86400) return t("ago_h", {n: Math.floor(s / 3600)});
    return t("ago_d", {n: Math.floor(s / 86400)});
  }

  async function post(path, body) {
    const r = await fetch(path, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(body)});
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    let data;
    try { data = await r.json(); } catch (e) { data = {ok: false, code: "internal", error: "HTTP " + r.status}; }
    return data;
  }
  function op(name, args) { return post("/api/op", {op: name, args: args || {}}); }
  async function get(path) {
    const r = await fetch(path, {credentials: "same-origin"});
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); }
    return r.json();
  }

  // ---- live feed: one WebSocket, reconnect with jittered backoff ------------------------------------------
  const handlers = [];
  const state = {devices: new Map(), commands: new Map(), journalSeq: 0, map: null};
  function on(fn) { handlers.push(fn); }
  function emit(msg) { for (const h of handlers) { try { h(msg); } catch (e) { console.error(e); } } }
  let backoff = 500;
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(proto + "//" + location.host + "/ws" + (boot.view === "wall" ? "?screen=wall" : ""));
    const link = document.getElementById("lk-link");
    ws.onopen = () => { backoff = 500; if (link) { link.textContent = t("live_on"); link.className = "link on"; } };
    ws.onmessage = (ev) => {
      const msg = JSON.parse(ev.data);
      if (msg.t === "snapshot") {
        state.devices = new Map(msg.devices.map((d) => [d.id, d]));
        state.map = msg.map;
        for (const c of msg.commands) state.commands.set(c.id, c);
        state.journalSeq = msg.journal_seq;
      } else if (msg.t === "devices") {
        for (const d of msg.devices) state.devices.set(d.id, d);
      } else if (msg.t === "cmd") {
        state.commands.set(msg.cmd.id, msg.cmd);
      } else if (msg.t === "journal") {
        state.journalSeq = msg.head_seq;
      }
      emit(msg);
    };
    ws.onclose = (ev) => {
      if (link) { link.textContent = t("live_off"); link.className = "link off"; }
      if (ev.code === 4401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); return; }
      setTimeout(connect, backoff + Math.random() * backoff);
      backoff = Math.min(backoff * 2, 15000);
    };
  }

  // ---- dialogs and notices -------------------------------------------------------------------------------
  function confirmDialog(text) {
    const m = document.getElementById("lk-modal");
    document.getElementById("lk-modal-text").textContent = text;
    m.hidden = false;
    return new Promise((resolve) => {
      const yes = document.getElementById("lk-modal-yes"), no = document.getElementById("lk-modal-no");
      const done = (v) => { m.hidden = true; yes.onclick = null; no.onclick = null; resolve(v); };
      yes.onclick = () => done(true);
      no.onclick = () => done(false);
    });
  }
  function toast(text, kind) {
    const box = document.getElementById("lk-toasts");
    const n = el("div", {class: "toast " + (kind || "")}, text);
    box.appendChild(n);
    setTimeout(() => n.remove(), 6000);
  }

  // ---- devices: names, states, batteries ---------------------------------------------------------------
  function name(d) { return d.label || d.id; }
  function stateChip(st) { return el("span", {class: "chip st-" + st}, t("state_" + st)); }
  function battery(d) {
    const i = d.info || {};
    if (typeof i.bat_pct === "number") return i.bat_pct + " %";
    if (typeof i.bat_mv === "number") return (i.bat_mv / 1000).toFixed(2) + " V";
    return "—";
  }
  function link(d) {
    const i = d.info || {};
    return typeof i.rssi === "number" ? i.rssi + " dBm" : (d.transport && d.transport !== "mqtt" ? d.transport : "—");
  }

  // ---- commands and their live result --------------------------------------------------------------------
  // accepted -> playing -> done / failed (reason): what the operator waits for after a click
  function phase(c) {
    if (c.status === "accepted" && c.data && c.data.phase) return c.data.phase;
    return c.status;
  }
  function cmdLine(c) {
    const ph = phase(c);
    const bad = ["failed", "rejected", "expired", "timeout", "refused"].includes(ph);
    const why = bad && (c.code || c.detail) ? " (" + [c.code, c.detail].filter(Boolean).join(": ") + ")" : "";
    return el("li", {class: "cmd", "data-cmd": c.id, "data-status": ph},
      el("span", {class: "chip cs-" + ph}, t("cmd_" + ph)), " ",
      el("span", {class: "what"}, (c.clip ? c.name + " " + c.clip : c.name) + " → " + c.device), why,
      el("span", {class: "who"}, " " + (c.op || "") + " " + fmtClock(c.issued_ms)));
  }
  // a list that shows the given command ids (or all recent ones) and follows them live
  function commandList(ul, filter) {
    function draw() {
      clear(ul);
      const cs = [...state.commands.values()].filter(filter).sort((a, b) => b.issued_ms - a.issued_ms).slice(0, 12);
      if (!cs.length) ul.appendChild(el("li", {class: "muted"}, t("no_commands")));
      for (const c of cs) ul.appendChild(cmdLine(c));
    }
    on((m) => { if (m.t === "cmd" || m.t === "snapshot") draw(); });
    draw();
    return draw;
  }

  function report(resp) {
    if (resp.ok) toast(t("sent_ok"), "ok");
    else toast(t("op_failed") + ": " + (resp.error || resp.code), "bad");
  }

  // broadcast form: clip, repeat, priority; target {to} or {near: {x, y}}; dangerous ones confirm
  let clipsCache = null;
  async function clips() {
    if (!clipsCache) {
      const r = await op("clips", {action: "list"});
      clipsCache = r.ok ? r.data.clips.map((c) => c.id) : [];
    }
    return clipsCache;
  }
  let forms = 0;
  function broadcastForm(target, label) {
    // the gateway's clips are offered; any clip id may be typed (a node may hold clips the gateway never sent)
    const listId = "lk-clips-" + (++forms);
    const known = el("datalist", {id: listId});
    const clipSel = el("input", {name: "clip", class: "clip", list: listId, size: 10, required: true,
      pattern: "[a-z0-9_.\\-]{1,48}", autocomplete: "off"});  // the operator API's clip id rule
    clips().then((cs) => {
      for (const c of cs) known.appendChild(el("option", {value: c}));
      if (!clipSel.value && cs.length) clipSel.value = cs[0];
      clipSel.setAttribute("data-ready", "1");
    });
    const rep = el("input", {type: "number", name: "repeat", min: 1, max: 20, value: 1, class: "num"});
    const prio = el("select", {name: "priority"});
    for (const p of ["normal", "priority", "emergency"]) prio.appendChild(el("option", {value: p}, t("prio_" + p)));
    const go = el("button", {type: "submit", class: "primary act-broadcast"}, t("broadcast"));
    const f = el("form", {class: "bform"},
      el("div", {class: "target"}, label),
      el("label", {}, t("clip"), " ", clipSel, known), " ",
      el("label", {}, t("repeat"), " ", rep), " ",
      el("label", {}, t("priority"), " ", prio), " ", go);
    f.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const args = {clip: clipSel.value.trim(), repeat: parseInt(rep.value, 10) || 1, priority: prio.value};
      if (!args.clip) { toast(t("no_clip_chosen"), "bad"); return; }
      const group = target.near || target.group;
      if ((group || args.priority === "emergency") &&
          !(await confirmDialog(t("confirm_broadcast", {target: label, clip: args.clip})))) return;
      go.disabled = true;
      try {
        let resp;
        if (target.near) {
          resp = await post("/api/near", Object.assign({x: target.near.x, y: target.near.y}, args));
          if (!resp.ok && !resp.targets.length) toast(resp.error, "bad");
          else toast(t("near_sent", {n: resp.targets.length}), resp.ok ? "ok" : "bad");
        } else {
          resp = await op("broadcast", Object.assign({to: target.to, wait: "none"}, args));
          report(resp);
        }
      } finally { go.disabled = false; }
    });
    return f;
  }
  function stopButton(to, label) {
    return el("button", {type: "button", class: "danger act-stop", onclick: async () => {
      if (!(await confirmDialog(t("confirm_stop", {target: label})))) return;
      report(await op("stop", {to: to, wait: "none", priority: "emergency"}));
    }}, t("stop"));
  }

  function frame() {
    const clock = document.getElementById("lk-clock");
    if (clock) { const tick = () => { clock.textContent = fmtClock(Date.now()); }; tick(); setInterval(tick, 1000); }
    const lang = document.getElementById("lk-lang");
    if (lang) lang.addEventListener("change", async () => {
      const r = await post("/api/lang", {lang: lang.value});
      if (r.ok) location.reload();
    });
    const out = document.getElementById("lk-logout");
    if (out) out.addEventListener("click", async () => { await post("/logout", {}); location.href = "/login"; });
  }

  window.LK = {boot, t, el, clear, fmtTime, fmtClock, ago, post, op, get, on, state, connect, confirmDialog,
    toast, name, stateChip, battery, link, phase, cmdLine, commandList, broadcastForm, stopButton, report};
  document.addEventListener("DOMContentLoaded", () => { frame(); connect(); });
})();
