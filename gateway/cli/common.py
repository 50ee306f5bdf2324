"""What every operator subcommand shares: exit codes, the connection options, one request with uniform errors,
the printing of a command's result.

Exit codes: 0 ok (including "queued: will be sent on the device's next birth"), 1 the operation failed (device
failed/rejected, timeout, partial group result, broker link lost), 2 usage or configuration error (bad
arguments, unknown device, unauthorized operator, the broker refused the login or nothing answers at its
address), 3 target offline and the command was refused (``--no-queue``).

``--json``: exactly one JSON document on stdout (docs/PROTOCOL.md §17): the gateway's response object, or for a
failure before any answer ``{"id": null, "ok": false, "code": <local code>, "error": <text>}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OFFLINE = 0, 1, 2, 3
CODE_EXIT = {"ok": EXIT_OK, "queued": EXIT_OK, "partial": EXIT_FAILED, "failed": EXIT_FAILED,
             "timeout": EXIT_FAILED, "expired": EXIT_FAILED, "internal": EXIT_FAILED, "bad_request": EXIT_USAGE,
             "unauthorized": EXIT_USAGE, "unknown_device": EXIT_USAGE, "offline": EXIT_OFFLINE, "busy": EXIT_FAILED}



def conn(args: argparse.Namespace) -> dict[str, Any]:
    missing = [n for n, v in (("--site/LOOKOUT_SITE", args.site), ("--operator/LOOKOUT_OPERATOR", args.operator),
                              ("--token/LOOKOUT_TOKEN", args.token)) if not v]
    if missing:
        raise Usage("missing " + ", ".join(missing))
    return {"url": args.broker, "site": args.site, "operator": args.operator, "token": args.token,
            "ca": args.ca}


class Usage(Exception):
    pass


async def one(args: argparse.Namespace, op: str, a: dict[str, Any]) -> dict[str, Any]:
    from lookout.gateway.links.opclient import OperatorClient

    async with OperatorClient(**conn(args)) as cl:
        return await cl.request(op, a, timeout=args.timeout)


def emit(doc: Any) -> None:
    """The one JSON document of a ``--json`` run: one line on stdout."""
    print(json.dumps(doc, ensure_ascii=False))


def fail(args: argparse.Namespace, code: str, msg: str, exit_code: int) -> int:
    """A failure before (or without) the gateway's answer: one line on stderr; with ``--json`` also the error
    document on stdout, shaped like a response (``code`` is one of LOCAL_CODES)."""
    print(f"lookout {args.command}: {msg}", file=sys.stderr)
    if getattr(args, "json", False):
        emit({"id": None, "ok": False, "code": code, "error": msg})
    return exit_code


# codes of the error document for failures on the operator's side (never sent by a gateway), with their exit code
LOCAL_CODES = {"bad_request": EXIT_USAGE, "unauthorized": EXIT_USAGE, "unreachable": EXIT_USAGE,
               "broker": EXIT_FAILED, "timeout": EXIT_FAILED, "bad_response": EXIT_FAILED}


def answer(args: argparse.Namespace, r: dict[str, Any]) -> int | None:
    """The gateway answered ``r``: with ``--json`` print it and return the exit code; without, report a code
    other than ok on stderr and return its exit code; None = ok, the caller prints the human view."""
    code = r.get("code", "internal")
    if getattr(args, "json", False):
        emit(r)
        return CODE_EXIT.get(code, EXIT_FAILED)
    if code != "ok":
        print(f"{code}: {r.get('error')}", file=sys.stderr)
        return CODE_EXIT.get(code, EXIT_FAILED)
    return None


def call(args: argparse.Namespace, fn: Callable[[], Coroutine[Any, Any, int]]) -> int:
    """Run an async operator action with uniform error handling: one clear line (and with ``--json`` one error
    document) per failure, exit 2 for what the operator must fix (arguments, login, address)."""
    from lookout.gateway.links.mqtt import MQTTError, MQTTRefused, MQTTUnreachable
    from lookout.gateway.links.opclient import ResponseError
    from lookout.protocols.opapi import OpAPIError

    try:
        return asyncio.run(fn())
    except Usage as e:
        return fail(args, "bad_request", str(e), EXIT_USAGE)
    except OpAPIError as e:
        return fail(args, "bad_request", f"bad argument: {e}", EXIT_USAGE)
    except MQTTRefused as e:
        if e.auth:
            return fail(args, "unauthorized", f"{e}: check LOOKOUT_OPERATOR / LOOKOUT_TOKEN (--operator, --token)",
                        EXIT_USAGE)
        return fail(args, "unreachable", f"{e}: check LOOKOUT_BROKER (--broker)", EXIT_USAGE)
    except MQTTUnreachable as e:
        return fail(args, "unreachable", f"{e}: check LOOKOUT_BROKER (--broker)"
                    + (" and LOOKOUT_CA (--ca)" if "TLS" in str(e) else ""), EXIT_USAGE)
    except MQTTError as e:
        return fail(args, "broker", f"broker: {e}", EXIT_FAILED)
    except ResponseError as e:
        return fail(args, "bad_response", str(e), EXIT_FAILED)
    except TimeoutError:
        return fail(args, "timeout", f"no answer from the gateway within {args.timeout:g} s "
                    "(is it running for this site?)", EXIT_FAILED)


def ts(ms: int | None) -> str:
    if not ms:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def age(ms: int | None) -> str:
    if not ms:
        return "-"
    s = max(0, int(time.time() - ms / 1000))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def deg(v: int | None) -> str:
    return "-" if v is None else f"{v / 1e7:.6f}"


def report(resp: dict[str, Any], as_json: bool) -> int:
    """Print a command-like response (one line per device) and map its code to an exit code."""
    code = resp.get("code", "internal")
    if as_json:
        emit(resp)
        return CODE_EXIT.get(code, EXIT_FAILED)
    data = resp.get("data") or {}
    for r in data.get("results", []):
        st = r["status"]
        extra = ""
        if st == "queued":
            extra = " - device offline: queued, will be sent on its next birth unless it expires first"
        elif st == "refused" and r.get("code") in (None, "offline"):
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


def delivery(args: argparse.Namespace) -> dict[str, Any]:
    a: dict[str, Any] = {"queue": not args.no_queue, "wait": args.wait, "priority": args.priority}
    if args.ttl is not None:
        a["ttl_s"] = args.ttl
    a["wait_s"] = max(0, int(args.timeout) - 2)
    return a


async def run_report(args: argparse.Namespace, op: str, a: dict[str, Any]) -> int:
    return report(await one(args, op, a), args.json)


def conn_parent(json_flag: bool = True) -> argparse.ArgumentParser:
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
    if json_flag:
        g.add_argument("--json", action="store_true",
                       help="print one JSON document on stdout: the gateway's response (docs/PROTOCOL.md §17)")
    return p


def prio(v: str) -> str | int:
    return int(v) if v.isdigit() else v


def delivery_parent() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--priority", default="normal", type=prio,
                   help="background|normal|priority|emergency or 0..3 (emergency overrides quiet hours)")
    p.add_argument("--ttl", type=int, help="seconds until the command expires (default from gateway config)")
    p.add_argument("--no-queue", action="store_true",
                   help="refuse instead of queueing when the target is offline (exit 3)")
    p.add_argument("--wait", choices=("none", "accepted", "final"), default="final",
                   help="wait for the device's final result (default), its acceptance, or nothing")
    return p
