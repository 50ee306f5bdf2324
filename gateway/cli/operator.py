"""Operator subcommands of ``lookout``: devices, watch, broadcast, stop, command, locate, journal.

Each talks to a running gateway over MQTT (protocols/opapi.py), so it works from any machine that reaches the
broker: ``--broker URL --site S --operator ID --token T`` or the environment variables LOOKOUT_BROKER,
LOOKOUT_SITE, LOOKOUT_OPERATOR, LOOKOUT_TOKEN, LOOKOUT_CA. Exit codes: gateway/cli/common.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from datetime import datetime
from typing import Any

from lookout.gateway.cli.common import (
    CODE_EXIT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Usage,
    age,
    answer,
    call,
    conn,
    conn_parent,
    deg,
    delivery,
    delivery_parent,
    emit,
    fail,
    one,
    run_report,
    ts,
)
from lookout.gateway.cli.drone import drone_table


def device_table(devs: list[dict[str, Any]]) -> str:
    cols = ("ID", "KIND", "SITE", "STATE", "FW", "SEEN", "LAT", "LON", "GAPS")
    rows = [(d["id"], d["kind"], d["site"], d["state"], d.get("fw") or "-", age(d.get("last_seen_ms")),
             deg((d.get("loc") or {}).get("lat")), deg((d.get("loc") or {}).get("lon")), str(d.get("gaps", 0)))
            for d in devs]
    w = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(cols))]
    lines += ["  ".join(v.ljust(w[i]) for i, v in enumerate(r)) for r in rows]
    counts: dict[str, int] = {}
    for d in devs:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    lines.append(f"{len(devs)} device(s): " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))
    drones = drone_table(devs)  # battery, flight mode and link quality of the drones, if any
    if drones:
        lines += ["", drones]
    return "\n".join(lines)


MAX_PAGES = 10_000  # a reading of more pages than this is a gateway bug, not a site (5 million devices)


async def all_devices(cl: Any, a: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Every page of ``devices`` (docs/PROTOCOL.md §9: id order, ``after`` = the previous page's ``next``) as
    one response: the last page's, carrying every device and ``more: false``; or the first answer that is not
    ``ok``, as it came."""
    devs: list[dict[str, Any]] = []
    after = None
    for _ in range(MAX_PAGES):
        r: dict[str, Any] = await cl.request("devices", a if after is None else {**a, "after": after},
                                             timeout=timeout)
        if r.get("code") != "ok":
            return r
        d = r["data"]
        devs += d["devices"]
        nxt = d.get("next")
        if not d.get("more") or not isinstance(nxt, str) or (after is not None and nxt <= after):
            return {**r, "data": {**d, "devices": devs, "more": False, "next": None}}
        after = nxt
    raise RuntimeError(f"devices: more than {MAX_PAGES} pages")


def cmd_devices(args: argparse.Namespace) -> int:
    from lookout.gateway.links.opclient import OperatorClient

    async def go() -> int:
        a = {k: v for k, v in (("kind", args.kind), ("site", args.filter_site), ("state", args.state)) if v}
        async with OperatorClient(**conn(args)) as cl:
            r = await all_devices(cl, a, args.timeout)
        done = answer(args, r)
        if done is not None:
            return done
        print(device_table(r["data"]["devices"]))
        return EXIT_OK
    return call(args, go)


def cmd_watch(args: argparse.Namespace) -> int:
    from lookout.gateway.links.opclient import OperatorClient

    async def go() -> int:
        async with OperatorClient(**conn(args)) as cl:
            n = 0
            while args.count == 0 or n < args.count:
                r = await all_devices(cl, {}, args.timeout)
                if r["code"] != "ok":
                    print(f"{r['code']}: {r.get('error')}", file=sys.stderr)
                    return CODE_EXIT.get(r["code"], EXIT_FAILED)
                if sys.stdout.isatty():
                    print("\x1b[H\x1b[2J", end="")
                print(f"{ts(int(time.time() * 1000))}  site {args.site}")
                print(device_table(r["data"]["devices"]), flush=True)
                n += 1
                if args.count == 0 or n < args.count:
                    await asyncio.sleep(args.interval)
        return EXIT_OK
    try:
        return call(args, go)
    except KeyboardInterrupt:
        return EXIT_OK


def cmd_broadcast(args: argparse.Namespace) -> int:
    a = {"to": args.to, "clip": args.clip, "repeat": args.repeat, **delivery(args)}
    if args.volume is not None:
        a["volume"] = args.volume
    return call(args, lambda: run_report(args, "broadcast", a))


def cmd_stop(args: argparse.Namespace) -> int:
    a = {"to": args.to, **delivery(args)}
    return call(args, lambda: run_report(args, "stop", a))


def kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise Usage(f"argument {it!r}: expected key=value")
        if v.lstrip("-").isdigit():
            out[k] = int(v)
        elif v in ("true", "false"):
            out[k] = v == "true"
        elif v == "null":
            out[k] = None
        else:
            out[k] = v
    return out


def cmd_command(args: argparse.Namespace) -> int:
    async def go() -> int:
        a = {"to": args.device, "name": args.name, "args": kv(args.kv), **delivery(args)}
        return await run_report(args, "command", a)
    return call(args, go)


def cmd_locate(args: argparse.Namespace) -> int:
    async def go() -> int:
        r = await one(args, "locate", {"device": args.device})
        done = answer(args, r)
        if done is not None:
            return done if done or r["data"].get("loc") else EXIT_FAILED  # no fix yet: 1, as in text
        d = r["data"]
        loc = d.get("loc")
        dev = d["device"]
        if not loc:
            print(f"{dev['id']} ({dev['kind']}, {dev['state']}): no location reported yet")
            return EXIT_FAILED
        age = (d.get("loc_age_ms") or 0) // 1000
        print(f"{dev['id']} ({dev['kind']}, {dev['state']}): lat {deg(loc['lat'])} lon {deg(loc['lon'])} "
              f"(WGS-84) alt {loc.get('alt_mm', 0) / 1000:.1f} m, source {loc.get('src')}, {age} s ago")
        return EXIT_OK
    return call(args, go)


def parse_time(s: str | None) -> int | None:
    if s is None:
        return None
    if s.isdigit():
        return int(s)
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise Usage(f"time {s!r}: expected ISO 8601 (2026-05-01T08:00) or Unix ms") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return int(dt.timestamp() * 1000)


def cmd_journal(args: argparse.Namespace) -> int:
    from lookout.gateway.links.opclient import OperatorClient

    if args.json and args.export:
        return fail(args, "bad_request", "--export writes its own format (--format json); leave out --json",
                    EXIT_USAGE)

    async def go() -> int:
        async with OperatorClient(**conn(args)) as cl:
            if args.verify:
                r = await cl.request("journal", {"verify": True}, timeout=args.timeout)
                if args.json or r.get("code") not in ("ok", "failed"):
                    return answer(args, r) or EXIT_OK
                d = r.get("data") or {}
                if r["code"] == "ok":
                    print(f"journal ok: {d['entries']} entries, head {d['head']}")
                    return EXIT_OK
                print(f"journal BROKEN at seq {d.get('bad_seq')}: {d.get('reason')}", file=sys.stderr)
                return EXIT_FAILED
            a: dict[str, Any] = {"limit": 1000}
            for k, v in (("from", parse_time(args.since)), ("to", parse_time(args.until)),
                         ("device", args.device)):
                if v is not None:
                    a[k] = v
            entries: list[dict[str, Any]] = []
            head = None
            after = 0
            while True:
                r = await cl.request("journal", {**a, "after": after}, timeout=args.timeout)
                if r["code"] != "ok":
                    return answer(args, r) or EXIT_FAILED
                d = r["data"]
                entries += d["entries"]
                head = (d["head_seq"], d["head_hash"])
                if not d["more"] or not d["entries"]:
                    break
                after = d["entries"][-1]["seq"]
            shown = entries[-args.last:] if args.last else entries
            if args.json:  # one document: the last page's response carrying every entry shown
                emit({**r, "data": {**r["data"], "entries": shown, "more": False}})
                return EXIT_OK
            if not args.export:
                for e in shown:
                    who = e["operator"] or "-"
                    print(f"{e['seq']:>6} {ts(e['ts'])} {e['kind']:<8} {who:<10} {e['summary']}")
                return EXIT_OK
            text = export(entries, args.format, a.get("from"), a.get("to"), head)
            if args.output:
                with open(args.output, "w", encoding="utf-8") as f:  # noqa: ASYNC230 - one small file
                    f.write(text)
                print(f"{len(entries)} entries written to {args.output}", file=sys.stderr)
            else:
                sys.stdout.write(text)
            return EXIT_OK
    return call(args, go)


def export(entries: list[dict[str, Any]], fmt: str, since: int | None, until: int | None,
            head: tuple[int, str] | None) -> str:
    import csv
    import io

    if fmt == "json":
        return json.dumps({"from": since, "to": until, "head_seq": head[0] if head else None,
                           "head_hash": head[1] if head else None, "entries": entries},
                          ensure_ascii=False, indent=1) + "\n"
    buf = io.StringIO()
    w = csv.writer(buf)
    cols = ("seq", "ts", "time", "operator", "kind", "device", "summary", "detail", "prev_hash", "hash")
    w.writerow(cols)
    for e in entries:
        w.writerow([e["seq"], e["ts"], ts(e["ts"]), e["operator"] or "", e["kind"], e["device"] or "",
                    e["summary"], json.dumps(e["detail"], ensure_ascii=False, sort_keys=True), e["prev_hash"],
                    e["hash"]])
    return buf.getvalue()


# -- parsers ---------------------------------------------------------------------------------------------------

def register(subparsers: Any) -> None:
    conn, deliv = conn_parent(), delivery_parent()

    p = subparsers.add_parser("devices", parents=[conn], help="the device table")
    p.add_argument("--kind")
    p.add_argument("--state", choices=("unknown", "online", "stale", "offline"))
    p.add_argument("--in-site", dest="filter_site", metavar="SITE", help="only devices of this site")
    p.set_defaults(func=cmd_devices)

    p = subparsers.add_parser("watch", parents=[conn_parent(json_flag=False)],
                              help="live device table (for JSON: devices --json)")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--count", type=int, default=0, help="stop after N refreshes (0 = until Ctrl-C)")
    p.set_defaults(func=cmd_watch)

    p = subparsers.add_parser("broadcast", parents=[conn, deliv], help="play a clip on a speaker, zone or site")
    p.add_argument("--to", required=True, help="device id, zone or site")
    p.add_argument("--clip", required=True)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--volume", type=int)
    p.set_defaults(func=cmd_broadcast)

    p = subparsers.add_parser("stop", parents=[conn, deliv], help="stop playback on a speaker, zone or site")
    p.add_argument("--to", required=True)
    p.set_defaults(func=cmd_stop)

    p = subparsers.add_parser("command", parents=[conn, deliv], help="send any command to a device")
    p.add_argument("device")
    p.add_argument("name")
    p.add_argument("kv", nargs="*", metavar="key=value")
    p.set_defaults(func=cmd_command)

    p = subparsers.add_parser("locate", parents=[conn], help="last known position of a device")
    p.add_argument("device")
    p.set_defaults(func=cmd_locate)

    p = subparsers.add_parser("journal", parents=[conn], help="read, verify or export the duty journal")
    p.add_argument("--verify", action="store_true", help="check the hash chain")
    p.add_argument("--export", action="store_true", help="write CSV/JSON for a shift report")
    p.add_argument("--from", dest="since", help="start (ISO 8601 local time or Unix ms)")
    p.add_argument("--to", dest="until", help="end, exclusive")
    p.add_argument("--device")
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--output", "-o", help="file to write the export to (default stdout)")
    p.add_argument("--last", type=int, default=50, help="show the last N entries (0 = all)")
    p.set_defaults(func=cmd_journal)
