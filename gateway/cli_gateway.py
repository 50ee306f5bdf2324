"""Operator and service subcommands of ``lookout``: gateway, devices, watch, broadcast, stop, command, locate,
journal, clips.

Everything except ``gateway`` talks to a running gateway over MQTT (protocols/opapi.py), so it works from any
machine that reaches the broker: ``--broker URL --site S --operator ID --token T`` or the environment variables
LOOKOUT_BROKER, LOOKOUT_SITE, LOOKOUT_OPERATOR, LOOKOUT_TOKEN, LOOKOUT_CA.

Exit codes (gateway/cli.py): 0 ok (including "queued: will be sent on the device's next birth"), 1 the operation
failed (device failed/rejected, timeout, partial group result, broker unreachable), 2 usage or configuration
error (bad arguments, unknown device, unauthorized operator), 3 target offline and the command was refused
(``--no-queue``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OFFLINE = 0, 1, 2, 3
CODE_EXIT = {"ok": EXIT_OK, "queued": EXIT_OK, "partial": EXIT_FAILED, "failed": EXIT_FAILED,
             "timeout": EXIT_FAILED, "expired": EXIT_FAILED, "internal": EXIT_FAILED, "bad_request": EXIT_USAGE,
             "unauthorized": EXIT_USAGE, "unknown_device": EXIT_USAGE, "offline": EXIT_OFFLINE}


# -- gateway service -------------------------------------------------------------------------------------------

def cmd_gateway(args: argparse.Namespace) -> int:
    from gateway import config as cfgmod
    from gateway.service import configure_logging, run

    try:
        cfg = cfgmod.load(args.config)
    except cfgmod.ConfigError as e:
        for line in e.errors:
            print(f"lookout gateway: {line}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level or cfg.log_level, args.log_format or cfg.log_format)
    try:
        return asyncio.run(run(cfg, broker_url=args.broker))
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as e:  # noqa: BLE001 - startup failures (broker unreachable, data_dir not writable) in one line
        print(f"lookout gateway: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED


# -- operator side ---------------------------------------------------------------------------------------------

def _conn(args: argparse.Namespace) -> dict[str, Any]:
    missing = [n for n, v in (("--site/LOOKOUT_SITE", args.site), ("--operator/LOOKOUT_OPERATOR", args.operator),
                              ("--token/LOOKOUT_TOKEN", args.token)) if not v]
    if missing:
        raise _Usage("missing " + ", ".join(missing))
    return {"url": args.broker, "site": args.site, "operator": args.operator, "token": args.token,
            "ca": args.ca}


class _Usage(Exception):
    pass


async def _one(args: argparse.Namespace, op: str, a: dict[str, Any]) -> dict[str, Any]:
    from gateway.opclient import OperatorClient

    async with OperatorClient(**_conn(args)) as cl:
        return await cl.request(op, a, timeout=args.timeout)


def _call(args: argparse.Namespace, fn) -> int:
    """Run an async operator action with uniform error handling."""
    from gateway.mqtt import MQTTError
    from protocols.opapi import OpAPIError

    try:
        return asyncio.run(fn())
    except _Usage as e:
        print(f"lookout {args.command}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OpAPIError as e:
        print(f"lookout {args.command}: bad argument: {e}", file=sys.stderr)
        return EXIT_USAGE
    except MQTTError as e:
        print(f"lookout {args.command}: broker: {e}", file=sys.stderr)
        return EXIT_FAILED
    except TimeoutError:
        print(f"lookout {args.command}: no answer from the gateway within {args.timeout:g} s "
              "(is it running for this site?)", file=sys.stderr)
        return EXIT_FAILED


def _ts(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _age(ms: int | None) -> str:
    if not ms:
        return "-"
    s = max(0, int(time.time() - ms / 1000))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def _deg(v: int | None) -> str:
    return "-" if v is None else f"{v / 1e7:.6f}"


def device_table(devs: list[dict[str, Any]]) -> str:
    cols = ("ID", "KIND", "SITE", "STATE", "FW", "SEEN", "LAT", "LON", "GAPS")
    rows = [(d["id"], d["kind"], d["site"], d["state"], d.get("fw") or "-", _age(d.get("last_seen_ms")),
             _deg((d.get("loc") or {}).get("lat")), _deg((d.get("loc") or {}).get("lon")), str(d.get("gaps", 0)))
            for d in devs]
    w = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(cols))]
    lines += ["  ".join(v.ljust(w[i]) for i, v in enumerate(r)) for r in rows]
    counts: dict[str, int] = {}
    for d in devs:
        counts[d["state"]] = counts.get(d["state"], 0) + 1
    lines.append(f"{len(devs)} device(s): " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none"))
    return "\n".join(lines)


def _report(resp: dict[str, Any], as_json: bool) -> int:
    """Print a command-like response (one line per device) and map its code to an exit code."""
    code = resp.get("code", "internal")
    if as_json:
        print(json.dumps(resp, ensure_ascii=False))
        return CODE_EXIT.get(code, EXIT_FAILED)
    data = resp.get("data") or {}
    for r in data.get("results", []):
        st = r["status"]
        extra = ""
        if st == "queued":
            extra = " - device offline: queued, will be sent on its next birth unless it expires first"
        elif st == "refused":
            extra = " - device offline: refused (not queued, --no-queue)"
        elif r.get("code") and r["code"] != st:
            extra = f" - {r['code']}" + (f": {r['detail']}" if r.get("detail") else "")
        lat = f" in {r['latency_ms']} ms" if r.get("latency_ms") is not None and st == "done" else ""
        print(f"{r['device']:<16} {st:<9} {r['id']}{lat}{extra}")
    if resp.get("error") and code not in ("ok", "queued"):
        print(f"{code}: {resp['error']}", file=sys.stderr)
    elif code == "partial":
        print("partial: not every device succeeded", file=sys.stderr)
    return CODE_EXIT.get(code, EXIT_FAILED)


def cmd_devices(args: argparse.Namespace) -> int:
    async def go() -> int:
        a = {k: v for k, v in (("kind", args.kind), ("site", args.filter_site), ("state", args.state)) if v}
        r = await _one(args, "devices", a)
        if r["code"] != "ok":
            print(f"{r['code']}: {r.get('error')}", file=sys.stderr)
            return CODE_EXIT.get(r["code"], EXIT_FAILED)
        devs = r["data"]["devices"]
        print(json.dumps(devs, ensure_ascii=False, indent=1) if args.json else device_table(devs))
        return EXIT_OK
    return _call(args, go)


def cmd_watch(args: argparse.Namespace) -> int:
    from gateway.opclient import OperatorClient

    async def go() -> int:
        async with OperatorClient(**_conn(args)) as cl:
            n = 0
            while args.count == 0 or n < args.count:
                r = await cl.request("devices", {}, timeout=args.timeout)
                if r["code"] != "ok":
                    print(f"{r['code']}: {r.get('error')}", file=sys.stderr)
                    return CODE_EXIT.get(r["code"], EXIT_FAILED)
                if sys.stdout.isatty():
                    print("\x1b[H\x1b[2J", end="")
                print(f"{_ts(int(time.time() * 1000))}  site {args.site}")
                print(device_table(r["data"]["devices"]), flush=True)
                n += 1
                if args.count == 0 or n < args.count:
                    await asyncio.sleep(args.interval)
        return EXIT_OK
    try:
        return _call(args, go)
    except KeyboardInterrupt:
        return EXIT_OK


def _delivery(args: argparse.Namespace) -> dict[str, Any]:
    a: dict[str, Any] = {"queue": not args.no_queue, "wait": args.wait, "priority": args.priority}
    if args.ttl is not None:
        a["ttl_s"] = args.ttl
    a["wait_s"] = max(0, int(args.timeout) - 2)
    return a


def cmd_broadcast(args: argparse.Namespace) -> int:
    a = {"to": args.to, "clip": args.clip, "repeat": args.repeat, **_delivery(args)}
    if args.volume is not None:
        a["volume"] = args.volume
    return _call(args, lambda: _run_report(args, "broadcast", a))


def cmd_stop(args: argparse.Namespace) -> int:
    a = {"to": args.to, **_delivery(args)}
    return _call(args, lambda: _run_report(args, "stop", a))


def _kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k:
            raise _Usage(f"argument {it!r}: expected key=value")
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
        a = {"to": args.device, "name": args.name, "args": _kv(args.kv), **_delivery(args)}
        return await _run_report(args, "command", a)
    return _call(args, go)


async def _run_report(args: argparse.Namespace, op: str, a: dict[str, Any]) -> int:
    return _report(await _one(args, op, a), args.json)


def cmd_locate(args: argparse.Namespace) -> int:
    async def go() -> int:
        r = await _one(args, "locate", {"device": args.device})
        if r["code"] != "ok":
            print(f"{r['code']}: {r.get('error')}", file=sys.stderr)
            return CODE_EXIT.get(r["code"], EXIT_FAILED)
        d = r["data"]
        if args.json:
            print(json.dumps(d, ensure_ascii=False))
            return EXIT_OK
        loc = d.get("loc")
        dev = d["device"]
        if not loc:
            print(f"{dev['id']} ({dev['kind']}, {dev['state']}): no location reported yet")
            return EXIT_FAILED
        age = (d.get("loc_age_ms") or 0) // 1000
        print(f"{dev['id']} ({dev['kind']}, {dev['state']}): lat {_deg(loc['lat'])} lon {_deg(loc['lon'])} "
              f"(WGS-84) alt {loc.get('alt_mm', 0) / 1000:.1f} m, source {loc.get('src')}, {age} s ago")
        return EXIT_OK
    return _call(args, go)


def _parse_time(s: str | None) -> int | None:
    if s is None:
        return None
    if s.isdigit():
        return int(s)
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise _Usage(f"time {s!r}: expected ISO 8601 (2026-05-01T08:00) or Unix ms") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return int(dt.timestamp() * 1000)


def cmd_journal(args: argparse.Namespace) -> int:
    from gateway.opclient import OperatorClient

    async def go() -> int:
        async with OperatorClient(**_conn(args)) as cl:
            if args.verify:
                r = await cl.request("journal", {"verify": True}, timeout=args.timeout)
                d = r.get("data") or {}
                if r["code"] == "ok":
                    print(f"journal ok: {d['entries']} entries, head {d['head']}")
                    return EXIT_OK
                print(f"journal BROKEN at seq {d.get('bad_seq')}: {d.get('reason')}", file=sys.stderr)
                return EXIT_FAILED
            a: dict[str, Any] = {"limit": 1000}
            for k, v in (("from", _parse_time(args.since)), ("to", _parse_time(args.until)),
                         ("device", args.device)):
                if v is not None:
                    a[k] = v
            entries: list[dict[str, Any]] = []
            head = None
            after = 0
            while True:
                r = await cl.request("journal", {**a, "after": after}, timeout=args.timeout)
                if r["code"] != "ok":
                    print(f"{r['code']}: {r.get('error')}", file=sys.stderr)
                    return CODE_EXIT.get(r["code"], EXIT_FAILED)
                d = r["data"]
                entries += d["entries"]
                head = (d["head_seq"], d["head_hash"])
                if not d["more"] or not d["entries"]:
                    break
                after = d["entries"][-1]["seq"]
            if not args.export:
                for e in entries[-args.last:] if args.last else entries:
                    who = e["operator"] or "-"
                    print(f"{e['seq']:>6} {_ts(e['ts'])} {e['kind']:<8} {who:<10} {e['summary']}")
                return EXIT_OK
            text = _export(entries, args.format, a.get("from"), a.get("to"), head)
            if args.output:
                with open(args.output, "w", encoding="utf-8") as f:  # noqa: ASYNC230 - one small file
                    f.write(text)
                print(f"{len(entries)} entries written to {args.output}", file=sys.stderr)
            else:
                sys.stdout.write(text)
            return EXIT_OK
    return _call(args, go)


def _export(entries: list[dict[str, Any]], fmt: str, since: int | None, until: int | None,
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
        w.writerow([e["seq"], e["ts"], _ts(e["ts"]), e["operator"] or "", e["kind"], e["device"] or "",
                    e["summary"], json.dumps(e["detail"], ensure_ascii=False, sort_keys=True), e["prev_hash"],
                    e["hash"]])
    return buf.getvalue()


def cmd_clips(args: argparse.Namespace) -> int:
    from gateway import cli_clips

    if getattr(args, "clips_cmd", None) == "upload":
        return _call(args, lambda: cli_clips.upload(args))
    if getattr(args, "clips_cmd", None) == "evidence":
        return _call(args, lambda: cli_clips.evidence(args))

    async def go() -> int:
        r = await _one(args, "clips", {"action": "list"})
        if r["code"] != "ok":
            print(f"{r['code']}: {r.get('error')}", file=sys.stderr)
            return CODE_EXIT.get(r["code"], EXIT_FAILED)
        clips = r["data"]["clips"]
        if args.json:
            print(json.dumps(clips))
        else:
            for c in clips:
                fmt = f"{c['rate']} Hz {c['bits']}-bit {c['ms']} ms" if "rate" in c else "?"
                print(f"{c['id']:<24} {c['size']:>9} B  {fmt:<24} sha256 {c['sha256'][:16]}…")
            print(f"{len(clips)} clip(s) on the gateway")
        return EXIT_OK
    return _call(args, go)


# -- parsers ---------------------------------------------------------------------------------------------------

def _conn_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection (or environment variables)")
    g.add_argument("--broker", default=os.environ.get("LOOKOUT_BROKER", "mqtt://127.0.0.1:1883"),
                   help="broker URL, mqtt:// or mqtts:// (env LOOKOUT_BROKER)")
    g.add_argument("--site", default=os.environ.get("LOOKOUT_SITE"), help="site id (env LOOKOUT_SITE)")
    g.add_argument("--operator", default=os.environ.get("LOOKOUT_OPERATOR"),
                   help="operator id (env LOOKOUT_OPERATOR)")
    g.add_argument("--token", default=os.environ.get("LOOKOUT_TOKEN"),
                   help="operator token, also the broker password (env LOOKOUT_TOKEN)")
    g.add_argument("--ca", default=os.environ.get("LOOKOUT_CA"), help="CA certificate for mqtts:// (env LOOKOUT_CA)")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the gateway (default 30)")
    g.add_argument("--json", action="store_true", help="print the gateway's response as JSON")
    return p


def _prio(v: str) -> str | int:
    return int(v) if v.isdigit() else v


def _delivery_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--priority", default="normal", type=_prio,
                   help="background|normal|priority|emergency or 0..3 (emergency overrides quiet hours)")
    p.add_argument("--ttl", type=int, help="seconds until the command expires (default from gateway config)")
    p.add_argument("--no-queue", action="store_true",
                   help="refuse instead of queueing when the target is offline (exit 3)")
    p.add_argument("--wait", choices=("none", "accepted", "final"), default="final",
                   help="wait for the device's final result (default), its acceptance, or nothing")
    return p


def register(subparsers: Any) -> None:
    conn, deliv = _conn_parent(), _delivery_parent()

    p = subparsers.add_parser("gateway", help="run the gateway service")
    p.add_argument("--config", required=True, help="gateway.toml")
    p.add_argument("--broker", help="override [broker].url (mqtt://host:port)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", choices=("text", "json"), help="json: one object per line (journald, Loki)")
    p.set_defaults(func=cmd_gateway)

    p = subparsers.add_parser("devices", parents=[conn], help="the device table")
    p.add_argument("--kind")
    p.add_argument("--state", choices=("unknown", "online", "stale", "offline"))
    p.add_argument("--in-site", dest="filter_site", metavar="SITE", help="only devices of this site")
    p.set_defaults(func=cmd_devices)

    p = subparsers.add_parser("watch", parents=[conn], help="live device table")
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

    p = subparsers.add_parser("clips", parents=[conn], help="audio clips (list, upload to speakers) and evidence")
    p.set_defaults(func=cmd_clips, clips_cmd="list")
    from gateway import cli_clips
    cli_clips.register(p, _conn_parent(), _delivery_parent())
