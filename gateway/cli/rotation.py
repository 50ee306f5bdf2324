"""`lookout rotate-key DEVICE`: rotate a node's HMAC key by signed command (gateway/rotation.py).

Runs next to the gateway with its config file: opens the same keystore (SQLite; counters stay strictly increasing
across processes) and logs in to the broker with the gateway's own credentials. Refuses (exit 3) when the node's
retained state says it is offline: a rotation must be confirmed while both sides are reachable.
Exit codes: 0 committed, 1 refused or unconfirmed, 2 usage/config error, 3 device offline.

Accountability (gateway/audit.py): every attempt once the config is read is journaled as kind ``admin`` in the
gateway's journal (``data_dir/journal.db``; the running gateway chains it): who (``--operator``, an admin operator
of the key store, default ``admin:<OS user>``; the OS user is recorded too), the device, the command id and the
outcome (committed via done/new_key/probe, refused with the node's code, unconfirmed after an unanswered probe,
offline, failed), never key material. The command's signed ``op`` field carries the operator id when it is a
valid id (``admin:<user>`` is not, and is left out of the command).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys

from lookout.gateway.cli.common import EXIT_FAILED, EXIT_OFFLINE, EXIT_OK, EXIT_USAGE
from lookout.protocols import topics


def _err(msg: str, code: int) -> int:
    print("lookout: " + msg, file=sys.stderr)
    return code


async def _state(link, site: str, device: str, wait: float = 1.0) -> bool | None:
    """The node's retained birth/death: True online, False offline, None unknown."""
    got: asyncio.Queue[bytes] = asyncio.Queue()
    link.subscribe(topics.topic(site, device, "state"), lambda t, p, r: got.put_nowait(p), 1)
    try:
        async with asyncio.timeout(wait):
            payload = await got.get()
    except TimeoutError:
        return None
    try:
        return bool(json.loads(payload).get("online"))
    except (ValueError, AttributeError):
        return None


async def _run(args: argparse.Namespace) -> int:
    from lookout.gateway.admin.audit import AdminJournal, AuditError
    from lookout.gateway.admin.keystore import KeyStore
    from lookout.gateway.admin.rotation import RotationError, outcome_json, rotate_over_mqtt
    from lookout.gateway.core import config as gwconfig
    from lookout.gateway.links.mqtt import MQTTError, MQTTLink

    def fail(msg: str, exit_code: int, status: str, code: str) -> int:
        """One line on stderr; with --json also the outcome document (status refused or failed)."""
        if args.json:
            print(json.dumps({"device": args.device, "status": status, "code": code, "detail": msg}))
        return _err(msg, exit_code)

    try:
        cfg = gwconfig.load(args.config)
    except (OSError, gwconfig.ConfigError) as e:
        return fail(f"config {args.config}: {e}", EXIT_USAGE, "refused", "bad_config")
    b = cfg.broker
    url = b.url or f"mqtt://{b.host}:{b.port}"
    dev = args.device
    try:
        audit = AdminJournal(cfg.data_dir / "journal.db", args.op, "rotate-key")
    except AuditError as e:
        return fail(str(e), EXIT_USAGE, "refused", "unauthorized")
    facts = {"force": args.force, "timeout_s": args.timeout, "ttl_s": args.ttl}

    def journal(summary: str, **detail) -> bool:
        try:
            audit.record(f"{audit.operator}: rotate-key {dev}: {summary}", device=dev, detail={**facts, **detail})
            return True
        except AuditError as e:
            print("lookout: " + str(e), file=sys.stderr)
            return False

    with KeyStore(cfg.keystore_path) as ks:
        try:
            audit.check_operator(ks)
        except AuditError as e:
            return fail(str(e), EXIT_USAGE, "refused", "unauthorized")
        ident = ks.get(dev)
        if ident is None or ident.kind not in ("speaker", "sensor", "camera"):
            journal("refused: not a provisioned node", outcome="refused", code="unknown_device")
            return fail(f"{dev}: not a provisioned node in {cfg.keystore_path}", EXIT_USAGE, "refused",
                        "unknown_device")
        cmd_op = audit.operator if topics.is_valid_id(audit.operator) else None
        try:
            async with MQTTLink(url, f"{cfg.gateway_id}-rk-{secrets.token_hex(3)}", username=b.username,
                                password=b.password, ca=b.ca, cert=b.cert, key=b.key, fail_fast=True) as link:
                online = await _state(link, ident.site, ident.device_id)
                if online is False and not args.force:
                    journal("refused: device offline", outcome="refused", code="offline")
                    return fail(f"{dev} is offline; not rotating (--force to send anyway)", EXIT_OFFLINE,
                                "refused", "offline")
                out = await rotate_over_mqtt(link, ks, ident.device_id, timeout=args.timeout,
                                             ttl_ms=int(args.ttl * 1000), op=cmd_op)
        except (MQTTError, RotationError, OSError) as e:
            journal(f"failed: {e}", outcome="failed", error=str(e))
            return fail(str(e), EXIT_FAILED, "failed", "broker" if isinstance(e, (MQTTError, OSError)) else "failed")
    said = {"cmd_id": out.cmd_id, "outcome": out.status, "code": out.code, "via": out.via,
            "reason": out.detail, "online": online}
    ok_journal = journal(f"{out.status}" + (f" via {out.via}" if out.via else "")
                         + (f" ({out.code})" if out.code else "") + f", command {out.cmd_id}",
                         **{k: v for k, v in said.items() if v is not None})
    if args.json:
        print(outcome_json(out, args.device))
    elif out.status == "committed":
        print(f"{args.device}: key rotated (confirmed via {out.via}, command {out.cmd_id})")
    else:
        print(f"{args.device}: {out.status} ({out.code}: {out.detail})")
    return EXIT_OK if out.status == "committed" and ok_journal else EXIT_FAILED


def cmd_rotate_key(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


def register(subparsers) -> None:
    p = subparsers.add_parser("rotate-key", help="rotate a node's HMAC key by signed command",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("device", help="node id, e.g. spk-01")
    p.add_argument("--config", "-c", default="gateway.toml", help="gateway config file (default gateway.toml)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the node's answer (default 10)")
    p.add_argument("--ttl", type=float, default=60.0, help="command lifetime in seconds (default 60)")
    p.add_argument("--operator", "--op", dest="op",
                   help="admin operator id doing this (must be an admin in the key store), recorded in the duty "
                        "journal and the signed command; default admin:<OS user>, journal only")
    p.add_argument("--force", action="store_true", help="send even if the node's retained state says offline")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=cmd_rotate_key)
