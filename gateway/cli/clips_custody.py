"""``lookout clips list --recorded | show | export | verify | hold | release``: recorder clips held as evidence.

These run on the gateway host against its data directory (``--data-dir``, env ``LOOKOUT_DATA_DIR``, default
/var/lib/lookout), like the admin tools: a clip of several hundred megabytes is read or copied from the disk it is
on, not through the broker. Every access is a custody step in the duty journal (gateway/clips/custody.py),
attributed to ``--operator`` (env ``LOOKOUT_OPERATOR``) or ``admin:<OS user>``, with the OS user recorded too.
Long reads (export, verify) show a progress bar (rich) on stderr. Labels follow ``--lang`` / ``LOOKOUT_LANG``
/ ``LANG`` (``zh`` -> 简体中文, else English).

Exit codes: 0 ok; 1 the check failed (hash mismatch, broken trail) or the action could not be done; 2 usage
(unknown clip, no store at the data directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import contextmanager
from typing import Any

from lookout.gateway.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, ts

TEXT = {
    "en": {"clips": "recorder clip(s)", "state": "state", "recorder": "recorder", "officer": "officer",
           "start": "start", "end": "end", "size": "size", "sha256": "SHA-256", "file": "file", "held": "held",
           "yes": "yes", "no": "no", "trail": "custody trail", "track": "track", "export": "export",
           "verify": "verify", "ok": "OK: bytes, journal chain and custody trail verify",
           "bad": "FAILED", "exported": "exported to", "hold_done": "held as evidence",
           "hold_already": "already held", "release_done": "released", "release_not": "was not held",
           "mark": "marked on the recorder"},
    "zh": {"clips": "段记录仪视频", "state": "状态", "recorder": "记录仪", "officer": "警员", "start": "开始",
           "end": "结束", "size": "大小", "sha256": "SHA-256", "file": "文件", "held": "证据保全",
           "yes": "是", "no": "否", "trail": "保管链", "track": "轨迹", "export": "导出", "verify": "校验",
           "ok": "通过：文件哈希、日志链与保管链均校验一致", "bad": "校验失败", "exported": "已导出到",
           "hold_done": "已作为证据保全", "hold_already": "已处于保全状态", "release_done": "已解除保全",
           "release_not": "未处于保全状态", "mark": "记录仪上已标记"},
}


def _lang(args: argparse.Namespace) -> dict[str, str]:
    lang = getattr(args, "lang", None) or os.environ.get("LOOKOUT_LANG") or os.environ.get("LANG", "")
    return TEXT["zh" if lang.lower().startswith("zh") else "en"]


def _who(args: argparse.Namespace) -> str:
    from lookout.gateway.admin.audit import default_operator

    return getattr(args, "operator", None) or default_operator()


def _custody(args: argparse.Namespace) -> Any:
    from lookout.gateway.clips.custody import Custody

    data = getattr(args, "data_dir", None) or os.environ.get("LOOKOUT_DATA_DIR") or "/var/lib/lookout"
    return Custody.open(data)


@contextmanager
def _progress(total: int, label: str, show: bool):
    """A rich progress bar on stderr for long reads; a no-op callback when ``show`` is False."""
    if not show:
        yield None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=False) as p:
        task = p.add_task(label, total=total)
        yield lambda n: p.advance(task, n)


def _run(args: argparse.Namespace, fn) -> int:
    from lookout.gateway.clips.custody import CustodyError

    try:
        c = _custody(args)
    except CustodyError as e:
        print(f"lookout clips: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(fn(c, _lang(args)))
    except CustodyError as e:
        print(f"lookout clips: {e}", file=sys.stderr)
        return EXIT_USAGE if "no recorder clip" in str(e) or "give" in str(e) else EXIT_FAILED
    finally:
        c.close()


def _row(r: dict[str, Any]) -> str:
    return (f"{r['sha256'][:16]}  {r['device']:<12} {r['officer'] or '-':<10} {ts(r['start_ms'])}  "
            f"{r['size']:>11} B  {r['state']:<8} {'H' if r['hold'] else '-'}  {r['clip']}")


def cmd_list(args: argparse.Namespace) -> int:
    def go(c: Any, t: dict[str, str]) -> int:
        since = _day_ms(args.since) if args.since else None
        rows = c.find(device=args.recorder, officer=args.officer_id, state=None if args.all else "stored",
                      since_ms=since, held=True if args.held else None, limit=args.limit)
        if args.json:
            print(json.dumps(rows, ensure_ascii=False))
        else:
            for r in rows:
                print(_row(r))
            print(f"{len(rows)} {t['clips']}")
        return EXIT_OK
    return _run(args, go)


def _day_ms(s: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(s).timestamp() * 1000)


def cmd_show(args: argparse.Namespace) -> int:
    def go(c: Any, t: dict[str, str]) -> int:
        sha = c.resolve(args.clip)
        r = c.accessed(sha, _who(args), "show")
        trail = c.trail(sha)
        if args.json:
            print(json.dumps({"clip": r, "trail": trail}, ensure_ascii=False, default=str))
            return EXIT_OK
        tr = r["track"]
        lines = [(t["sha256"], sha), (t["recorder"], r["device"]), (t["officer"], r["officer"] or "-"),
                 (t["start"], ts(r["start_ms"])), (t["end"], ts(r["end_ms"])), (t["size"], f"{r['size']} B"),
                 (t["state"], r["state"]), (t["file"], r["file"] or "-"),
                 (t["held"], (t["yes"] + (f" ({r['hold_by']}: {r['hold_reason']})" if r["hold_by"] else ""))
                  if r["hold"] else t["no"]),
                 (t["track"], f"{tr['lat0'] / 1e7:.6f},{tr['lon0'] / 1e7:.6f} -> {tr['lat1'] / 1e7:.6f},"
                              f"{tr['lon1'] / 1e7:.6f} ({tr['fixes']} fixes, WGS-84)" if tr else "-")]
        w = max(len(k) for k, _ in lines)
        for k, v in lines:
            print(f"{k:<{w}}  {v}")
        print(f"{t['trail']}:")
        for e in trail:
            print(f"  #{e['seq']:<6} {ts(e['ts'])}  {e['action']:<9} {e.get('operator') or e.get('device') or ''}")
        return EXIT_OK
    return _run(args, go)


def cmd_export(args: argparse.Namespace) -> int:
    def go(c: Any, t: dict[str, str]) -> int:
        sha = c.resolve(args.clip)
        size = c.get(sha)["size"]
        with _progress(size, f"{t['export']} {sha[:12]}", not args.no_progress and not args.json) as step:
            out = c.export(sha, args.dest, _who(args), step)
        print(json.dumps(out) if args.json else f"{t['exported']} {out['path']} ({out['size']} B, sha256 {sha})")
        return EXIT_OK
    return _run(args, go)


def cmd_verify(args: argparse.Namespace) -> int:
    def go(c: Any, t: dict[str, str]) -> int:
        sha = c.resolve(args.clip)
        size = c.get(sha)["size"]
        with _progress(size, f"{t['verify']} {sha[:12]}", not args.no_progress and not args.json) as step:
            rep = c.verify(sha, _who(args), step)
        if args.json:
            print(json.dumps(rep))
        elif rep["ok"]:
            print(f"{sha}  {t['ok']} ({' -> '.join(rep['trail'])})")
        else:
            print(f"{sha}  {t['bad']}:", file=sys.stderr)
            for p in rep["problems"]:
                print(f"  - {p}", file=sys.stderr)
        return EXIT_OK if rep["ok"] else EXIT_FAILED
    return _run(args, go)


def cmd_hold(args: argparse.Namespace) -> int:
    def go(c: Any, t: dict[str, str]) -> int:
        sha = c.resolve(args.clip)
        if args.clips_cmd == "hold":
            changed = c.hold(sha, _who(args), args.reason)
            print(f"{sha[:16]} {t['hold_done'] if changed else t['hold_already']}")
        else:
            changed = c.release(sha, _who(args), args.reason)
            print(f"{sha[:16]} {t['release_done'] if changed else t['release_not']}")
        return EXIT_OK
    return _run(args, go)


def add_parsers(sp: Any, list_parser: argparse.ArgumentParser) -> None:
    """Add the custody subcommands to ``lookout clips``'s subparsers; ``--recorded`` etc. to its ``list``."""
    store = argparse.ArgumentParser(add_help=False)
    g = store.add_argument_group("evidence store (on the gateway host)")
    g.add_argument("--data-dir", help="the gateway's data_dir (env LOOKOUT_DATA_DIR; default /var/lib/lookout)")
    g.add_argument("--lang", help="zh for 简体中文 (env LOOKOUT_LANG / LANG)")
    for act in store._actions:
        act.default = argparse.SUPPRESS
    lp = list_parser
    lp.add_argument("--recorded", action="store_true", help="recorder clips (evidence) instead of audio clips")
    lp.add_argument("--recorder", help="--recorded: only this recorder")
    lp.add_argument("--officer", dest="officer_filter", help="--recorded: only this officer's clips")
    lp.add_argument("--since", help="--recorded: recorded on or after this date (YYYY-MM-DD)")
    lp.add_argument("--held", action="store_true", help="--recorded: only clips held as evidence")
    lp.add_argument("--all", action="store_true", help="--recorded: also announced-only and expired clips")
    lp.add_argument("--limit", type=int, default=100)
    lp.add_argument("--data-dir", help="--recorded: the gateway's data_dir (env LOOKOUT_DATA_DIR)")
    lp.add_argument("--lang", help="zh for 简体中文")
    s = sp.add_parser("show", parents=[store], help="a recorder clip's metadata and custody trail (journaled)")
    s.add_argument("clip", help="SHA-256 or its first 8+ hex digits")
    s.add_argument("--json", action="store_true")
    e = sp.add_parser("export", parents=[store], help="copy a recorder clip out, hash-checked (journaled)")
    e.add_argument("clip", help="SHA-256 or its first 8+ hex digits")
    e.add_argument("dest", help="a new file, or a directory to put it in")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--json", action="store_true")
    v = sp.add_parser("verify", parents=[store], help="re-hash a recorder clip and check its custody trail")
    v.add_argument("clip", help="SHA-256 or its first 8+ hex digits")
    v.add_argument("--no-progress", action="store_true")
    v.add_argument("--json", action="store_true")
    for name, helptext in (("hold", "hold a clip as evidence: retention never removes it"),
                           ("release", "release a held clip (journaled): retention applies again")):
        h = sp.add_parser(name, parents=[store], help=helptext)
        h.add_argument("clip", help="SHA-256 or its first 8+ hex digits")
        h.add_argument("--reason", required=True, help="why (case number, order), journaled")


def dispatch(args: argparse.Namespace) -> int | None:
    """Run a custody subcommand if ``args`` names one; None otherwise."""
    cmd = getattr(args, "clips_cmd", None)
    if cmd == "list" and getattr(args, "recorded", False):
        return cmd_list(argparse.Namespace(**{**vars(args), "officer_id": args.officer_filter}))
    return {"show": cmd_show, "export": cmd_export, "verify": cmd_verify, "hold": cmd_hold,
            "release": cmd_hold}.get(cmd or "", lambda a: None)(args)


__all__ = ["add_parsers", "dispatch"]
