"""Linkage subcommands of ``lookout``: incidents, incident show|ack|dispatch|close, coverage.

Like the other operator commands they talk to a running gateway over MQTT (protocols/opapi.py ops ``incidents``,
``incident``, ``coverage``), so they work from any duty console; every request is journaled under the operator.
Output is in English or Chinese (``--lang zh-CN``, or ``LOOKOUT_LANG``, or a ``zh`` locale in ``LANG``): the
township duty room reads Chinese. ``coverage`` prints the table and writes ``<out>.svg`` and ``<out>.png`` (drawn
by gateway/linkage/coverage.py; the PNG falls back to English labels where the machine has no CJK font).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from lookout.gateway.cli.common import CODE_EXIT, EXIT_FAILED, EXIT_OK, call, conn_parent, deg, one, ts

LANGS = ("en", "zh-CN")
ZH = {
    "ID": "编号", "STATE": "状态", "KIND": "类型", "SEV": "级别", "SOURCE": "来源", "OPENED": "发生时间",
    "DETECTIONS": "次数", "UNITS": "处置力量", "ACK": "确认人", "NODE": "节点", "SITE": "站点",
    "OFFICER": "最近警员", "ETA": "用时", "DRONE": "最近无人机", "COVERED": "圈内",
    "open": "待处置", "warned": "已警告", "dispatched": "已派警", "on_scene": "已到场", "closed": "已关闭",
    "general": "一般", "serious": "严重", "critical": "紧急", "info": "提示", "yes": "是", "no": "否",
    "{n} incident(s)": "共 {n} 起事件", "no incidents": "无事件",
    "incident": "事件", "where": "位置", "zone": "区域", "rules": "触发规则", "history": "处置经过",
    "escalates at": "升级时间", "officers": "警员排序", "drones": "无人机排序", "skipped": "未选",
    "contacts notified": "已通知村干部", "acknowledged by": "确认人", "commands": "指令",
    "{site}: {cov}/{n} node(s) inside the {min}-minute circle; outside: {unc}":
        "{site}：{n} 个节点中 {cov} 个在{min}分钟执法圈内；圈外：{unc}",
    "map written: {files}": "覆盖图已保存：{files}", "(PNG labels in English: no CJK font here)":
        "（本机无中文字体，PNG 图例为英文）",
    "unit": "力量", "busy/unavailable": "不可用原因",
}


def lang_of(args: argparse.Namespace) -> str:
    if args.lang:
        return str(args.lang)
    env = os.environ.get("LOOKOUT_LANG") or ""
    if env in LANGS:
        return env
    return "zh-CN" if os.environ.get("LANG", "").lower().startswith("zh") else "en"


def tr(text: str, lang: str, **kw: Any) -> str:
    s = ZH.get(text, text) if lang == "zh-CN" else text
    return s.format(**kw) if kw else s


def _width(s: str) -> int:
    """Columns on a terminal: CJK characters take two."""
    return sum(2 if ord(c) >= 0x1100 and not 0xFF61 <= ord(c) <= 0xFFDC else 1 for c in s)


def table(cols: list[str], rows: list[list[str]]) -> str:
    w = [max([_width(c)] + [_width(r[i]) for r in rows]) for i, c in enumerate(cols)]

    def line(vals: list[str]) -> str:
        return "  ".join(v + " " * (w[i] - _width(v)) for i, v in enumerate(vals)).rstrip()

    return "\n".join([line(cols)] + [line(r) for r in rows])


def incident_table(incs: list[dict[str, Any]], lang: str) -> str:
    cols = [tr(c, lang) for c in ("ID", "STATE", "KIND", "SEV", "SOURCE", "OPENED", "DETECTIONS", "UNITS", "ACK")]
    rows = [[i["id"], tr(i["state"], lang), i["kind"], tr(i["sev"], lang), i["source"], ts(i["opened_ms"]),
             str(i["detections"]), ",".join(i["units"]) or "-", i.get("acked_by") or "-"] for i in incs]
    foot = tr("{n} incident(s)", lang, n=len(incs)) if incs else tr("no incidents", lang)
    return table(cols, rows) + "\n" + foot


def _ranking(r: dict[str, Any], lang: str) -> list[str]:
    out = [f"  {tr('officers' if r['kind'] == 'officer' else 'drones', lang)} "
           f"(cut-off {r['cutoff_s'] // 60} min):"]
    for c in r["candidates"]:
        who = f"{c['device']}" + (f" ({c['officer']})" if c.get("officer") else "")
        out.append(f"    {who:<24} ETA {c['eta_s'] // 60}:{c['eta_s'] % 60:02d}  {c['dist_m']} m")
    for s in r["skipped"]:
        out.append(f"    {s['device']:<24} {tr('skipped', lang)}: {s['why']}")
    return out


def incident_detail(d: dict[str, Any], lang: str) -> str:
    where = f"{deg(d.get('lat'))}, {deg(d.get('lon'))}" if d.get("lat") is not None else "-"
    lines = [f"{tr('incident', lang)} {d['id']}  [{tr(d['state'], lang)}]  {d['kind']} / {tr(d['sev'], lang)}",
             f"  {tr('SITE', lang)}: {d['site']}   {tr('where', lang)}: {where}   {tr('zone', lang)}: "
             f"{d.get('zone') or '-'}   {tr('SOURCE', lang)}: {d['source']}",
             f"  {tr('DETECTIONS', lang)}: {d['detections']}   {tr('rules', lang)}: {', '.join(d['rules']) or '-'}"
             f"   {tr('acknowledged by', lang)}: {d.get('acked_by') or '-'}"]
    if d.get("escalate_at_ms"):
        lines.append(f"  {tr('escalates at', lang)}: {ts(d['escalate_at_ms'])} ({d.get('escalate_rule')})")
    lines.append(f"  {tr('history', lang)}:")
    for h in d["history"]:
        lines.append(f"    {ts(h['ts'])}  {tr(h['state'], lang):<8}  {h['by']}" + (f"  ({h['why']})" if h.get("why")
                                                                                        else ""))
    if d.get("units"):
        lines.append(f"  {tr('UNITS', lang)}:")
        for dev, u in d["units"].items():
            lines.append(f"    {dev}  {u.get('unit')}" + (f" {u['officer']}" if u.get("officer") else "")
                         + (f"  ETA {u['eta_s']} s" if u.get("eta_s") is not None else "") + f"  ({u.get('by')})")
    if d.get("contacts"):
        lines.append(f"  {tr('contacts notified', lang)}: " + ", ".join(
            f"{c['name']} ({c['id']}{', ' + c['phone'] if c.get('phone') else ''})" for c in d["contacts"]))
    for r in d.get("ranking") or []:
        lines += _ranking(r, lang)
    return "\n".join(lines)


def _fail(r: dict[str, Any]) -> int:
    print(f"{r['code']}: {r.get('error')}", file=sys.stderr)
    return CODE_EXIT.get(r["code"], EXIT_FAILED)


def cmd_incidents(args: argparse.Namespace) -> int:
    async def go() -> int:
        r = await one(args, "incidents", {"state": args.state, "limit": args.limit})
        if r["code"] != "ok":
            return _fail(r)
        incs = r["data"]["incidents"]
        print(json.dumps(incs, ensure_ascii=False, indent=1) if args.json else incident_table(incs, lang_of(args)))
        return EXIT_OK
    return call(args, go)


def cmd_incident(args: argparse.Namespace) -> int:
    a: dict[str, Any] = {"action": args.action, "incident": args.id}
    if args.action == "dispatch":
        if not args.to:
            print("lookout incident dispatch: --to OFFICER|RECORDER|DRONE is required", file=sys.stderr)
            return 2
        a["to"] = args.to
        if args.drone:
            a["drone"] = args.drone
    if args.why:
        a["why"] = args.why

    async def go() -> int:
        r = await one(args, "incident", a)
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
            return CODE_EXIT.get(r["code"], EXIT_FAILED)
        if r["code"] not in ("ok", "queued"):
            return _fail(r)
        lang = lang_of(args)
        d = r["data"]
        if args.action == "show":
            print(incident_detail(d, lang))
        else:
            print(f"{tr('incident', lang)} {d['id']}: {tr(d['state'], lang)}"
                  + (f"  {tr('UNITS', lang)}: {', '.join(d['units'])}" if d.get("units") else ""))
        return EXIT_OK
    return call(args, go)


def coverage_table(rep: dict[str, Any], lang: str) -> str:
    def eta(u: dict[str, Any] | None) -> tuple[str, str]:
        if not u:
            return "-", "-"
        return u["device"], f"{u['eta_s'] // 60}:{u['eta_s'] % 60:02d}"

    cols = [tr(c, lang) for c in ("NODE", "KIND", "SITE", "OFFICER", "ETA", "DRONE", "ETA", "COVERED")]
    rows = []
    for p in rep["points"]:
        o, d = eta(p.get("officer")), eta(p.get("drone"))
        rows.append([p["id"], p["kind"], p["site"], o[0], o[1], d[0], d[1], tr("yes" if p["covered"] else "no",
                                                                               lang)])
    lines = [table(cols, rows)]
    for s in rep["sites"]:
        lines.append(tr("{site}: {cov}/{n} node(s) inside the {min}-minute circle; outside: {unc}", lang,
                        site=s["site"], cov=s["covered"], n=s["points"], min=rep["cutoff_s"] // 60,
                        unc=", ".join(s["uncovered"]) or "-"))
    unav = [u for u in rep["units"] if not u["available"]]
    for u in unav:
        lines.append(f"  {u['id']} ({u['unit']}): {tr('busy/unavailable', lang)} {u['why']}")
    return "\n".join(lines)


def cmd_coverage(args: argparse.Namespace) -> int:
    from lookout.gateway.linkage import coverage

    async def go() -> int:
        a = {"cutoff_s": args.cutoff * 60} if args.cutoff else {}
        r = await one(args, "coverage", a)
        if r["code"] != "ok":
            return _fail(r)
        rep = r["data"]
        lang = lang_of(args)
        if args.json:
            print(json.dumps(rep, ensure_ascii=False, indent=1))
        else:
            print(coverage_table(rep, lang))
        if args.out != "-":
            svg, png = f"{args.out}.svg", f"{args.out}.png"
            with open(svg, "w", encoding="utf-8") as f:
                f.write(coverage.render_svg(rep, lang))
            used = coverage.render_png(rep, png, lang)
            if not args.json:
                print(tr("map written: {files}", lang, files=f"{svg}, {png}"))
                if used != lang:
                    print(tr("(PNG labels in English: no CJK font here)", lang))
        return EXIT_OK if not rep["uncovered"] or not args.strict else EXIT_FAILED
    return call(args, go)


def register(subparsers: Any) -> None:
    parent = conn_parent()
    lang = argparse.ArgumentParser(add_help=False)
    lang.add_argument("--lang", choices=LANGS, help="output language (default: LOOKOUT_LANG, else zh-CN for a "
                                                   "zh locale, else en)")
    p = subparsers.add_parser("incidents", parents=[parent, lang], help="list incidents (active by default)")
    p.add_argument("--state", default="active",
                   choices=("active", "all", "open", "warned", "dispatched", "on_scene", "closed"))
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_incidents)

    p = subparsers.add_parser("incident", parents=[parent, lang],
                              help="show, acknowledge, dispatch to or close one incident")
    p.add_argument("action", choices=("show", "ack", "dispatch", "close"))
    p.add_argument("id", help="incident id (inc-N)")
    p.add_argument("--to", help="dispatch: an officer id, their recorder's id or a drone id (overrides the ranking)")
    p.add_argument("--drone", choices=("goto", "orbit"), help="dispatch to a drone: goto or orbit (default orbit)")
    p.add_argument("--why", help="close: the reason, for the journal")
    p.set_defaults(func=cmd_incident)

    p = subparsers.add_parser("coverage", parents=[parent, lang],
                              help="which nodes no officer or drone reaches within the cut-off; SVG and PNG map")
    p.add_argument("--cutoff", type=int, help="minutes (default: the gateway's cutoff_s, 15)")
    p.add_argument("--out", default="coverage", help="write OUT.svg and OUT.png (- for none; default coverage)")
    p.add_argument("--strict", action="store_true", help="exit 1 when any node is outside the circle")
    p.set_defaults(func=cmd_coverage)
