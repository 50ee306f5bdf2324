"""``lookout clips list|upload|evidence``: audio clips to loudspeakers, and the evidence store; recorder clips
(``list --recorded``, ``show``, ``export``, ``verify``, ``hold``, ``release``) are gateway/cli/clips_custody.py's.

``upload FILE --id ID [--to NODE|ZONE|SITE]`` checks the WAV locally, sends it to the gateway as ``clip_put``
requests (8 KiB pieces, base64, a few in flight; the broker ACL lets an operator publish only its own ``opreq``),
then, with ``--to``, asks the gateway to distribute it (``clips distribute``: one ``fetch_clip`` command per
speaker) and polls ``clips progress`` for a progress line until every reachable target has a final result.
Exit 0 only if every target is ``done``; 1 otherwise (failed, timed out, or still queued for an offline device —
the table says which); 2 for usage errors; 3 if every target was offline and ``--no-queue`` refused them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import sys
import time
from typing import Any

from lookout.gateway.cli import clips_custody
from lookout.gateway.cli.common import (
    CODE_EXIT,
    EXIT_FAILED,
    EXIT_OK,
    Usage,
    answer,
    call,
    conn,
    conn_parent,
    delivery,
    delivery_parent,
    emit,
    one,
    ts,
)
from lookout.protocols import opapi

PIECE = opapi.CLIP_PUT_MAX_DATA
IN_FLIGHT = 4
FINAL = ("done", "failed", "rejected", "expired", "timeout", "refused")


async def _put(cl: Any, clip: str, data: bytes, timeout: float, show: bool) -> dict[str, Any]:
    sha = hashlib.sha256(data).hexdigest()
    n = (len(data) + PIECE - 1) // PIECE
    sem = asyncio.Semaphore(IN_FLIGHT)
    sent = 0
    last: dict[str, Any] = {}

    async def one(i: int) -> dict[str, Any]:
        nonlocal sent, last
        piece = data[i * PIECE:(i + 1) * PIECE]
        async with sem:
            r = await cl.request("clip_put", {"clip": clip, "size": len(data), "sha256": sha, "chunk": PIECE,
                                              "index": i, "data": base64.b64encode(piece).decode()},
                                 timeout=timeout)
        sent += 1
        if show:
            print(f"\rupload {clip}: {sent}/{n} pieces", end="", file=sys.stderr, flush=True)
        if r.get("code") != "ok":
            raise _Failed(r)
        if (r.get("data") or {}).get("state") == "complete":
            last = r
        return r

    await asyncio.gather(*(one(i) for i in range(n)))
    if show:
        print(file=sys.stderr)
    return last


class _Failed(Exception):
    def __init__(self, resp: dict[str, Any]):
        super().__init__(resp.get("error"))
        self.resp = resp


def _table(view: dict[str, Any]) -> str:
    cols = ("DEVICE", "STATUS", "CHUNKS", "DETAIL")
    rows = []
    for d in view["devices"]:
        st = d["status"]
        if st == "queued":
            det = "device offline: queued, fetches the clip on its next birth unless the command expires"
        elif st == "refused":
            det = "device offline: refused (--no-queue)"
        else:
            det = " ".join(x for x in (d.get("code") if d.get("code") != st else None, d.get("detail")) if x)
        chunks = f"{d['sent']}/{view['n']}" + (f" +{d['resent']} resent" if d.get("resent") else "")
        rows.append((d["device"], st, chunks, det or "-"))
    w = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w[i]) for i, c in enumerate(cols))]
    out += ["  ".join(v.ljust(w[i]) for i, v in enumerate(r)) for r in rows]
    return "\n".join(line.rstrip() for line in out)


async def upload(args: argparse.Namespace) -> int:
    from lookout.gateway.clips.distribution import ClipError, check_wav
    from lookout.gateway.links.opclient import OperatorClient

    try:
        with open(args.file, "rb") as f:  # noqa: ASYNC230 - one small file, before any network
            data = f.read(opapi.CLIP_PUT_MAX_SIZE + 1)
    except OSError as e:
        raise Usage(f"{args.file}: {e.strerror}") from None
    if len(data) > opapi.CLIP_PUT_MAX_SIZE:
        raise Usage(f"{args.file}: larger than the {opapi.CLIP_PUT_MAX_SIZE} bytes a loudspeaker can store")
    try:
        info = check_wav(data)
    except ClipError as e:
        raise Usage(f"{args.file}: {e}") from None
    show = not args.json
    async with OperatorClient(**conn(args)) as cl:
        try:
            r = await _put(cl, args.id, data, args.timeout, show)
        except _Failed as e:
            if args.json:
                emit(e.resp)
            print(f"upload failed: {e.resp.get('code')}: {e.resp.get('error')}", file=sys.stderr)
            return CODE_EXIT.get(e.resp.get("code", "internal"), EXIT_FAILED)
        sha = (r.get("data") or {}).get("sha256", hashlib.sha256(data).hexdigest())
        if show:
            print(f"clip {args.id} on the gateway: {len(data)} B, {info['rate']} Hz {info['bits']}-bit "
                  f"{info['channels']} ch, {info['ms']} ms, sha256 {sha}")
        if not args.to:
            if args.json:
                emit(r)
            return EXIT_OK
        a = {"action": "distribute", "to": args.to, "clip": args.id, **delivery(args), "wait": "none"}
        r = await cl.request("clips", a, timeout=args.timeout)
        code = r.get("code", "internal")
        if code in ("bad_request", "unauthorized", "unknown_device", "internal", "offline"):
            if args.json:
                emit(r)
            print(f"distribute: {code}: {r.get('error')}", file=sys.stderr)
            return CODE_EXIT.get(code, EXIT_FAILED)
        dist = r["data"]["dist"]
        deadline = time.monotonic() + args.timeout
        view = None
        while True:
            pr = await cl.request("clips", {"action": "progress", "dist": dist}, timeout=args.timeout)
            if pr.get("code") != "ok":
                if args.json:
                    emit(pr)
                print(f"progress: {pr.get('code')}: {pr.get('error')}", file=sys.stderr)
                return EXIT_FAILED
            view = pr["data"]
            if show:
                sent = sum(d["sent"] for d in view["devices"])
                queued = sum(d["status"] == "queued" for d in view["devices"])
                print(f"\rdistribute {args.id}: chunks {sent}/{view['n'] * view['total']} sent, "
                      f"devices {view['done']}/{view['total']} done" + (f", {queued} queued" if queued else ""),
                      end="", file=sys.stderr, flush=True)
            if view["final"] or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.25)
        if show:
            print(file=sys.stderr)
    sts = [d["status"] for d in view["devices"]]
    outcome = ("ok" if view["done"] == view["total"] else "timeout" if not view["final"]
               else "offline" if sts and all(s == "refused" for s in sts) else "partial")
    if args.json:  # the last progress response, its code giving the distribution's outcome
        emit({**pr, "ok": outcome == "ok", "code": outcome})
    else:
        print(_table(view))
    if outcome == "timeout":
        print(f"timeout: no final result from every device within {args.timeout:g} s "
              "(the commands are still tracked)", file=sys.stderr)
    elif outcome == "partial":
        print(f"partial: {view['done']} of {view['total']} device(s) have the clip", file=sys.stderr)
    return CODE_EXIT[outcome]


async def evidence(args: argparse.Namespace) -> int:
    from lookout.gateway.links.opclient import OperatorClient

    a: dict[str, Any] = {"action": "evidence", "limit": args.limit}
    if args.sha256:
        a["sha256"] = args.sha256
    async with OperatorClient(**conn(args)) as cl:
        r = await cl.request("clips", a, timeout=args.timeout)
    done = answer(args, r)
    ev = (r.get("data") or {}).get("evidence") or []
    if done is not None:
        return done if done or ev or not args.sha256 else EXIT_FAILED
    for e in ev:
        evs = ",".join(str(s) for s in e.get("events", [])) or "-"
        print(f"{e['sha256']}  {e['size']:>9} B  {e['mime']:<11} {e['device']:<12} {e['auth']:<8} "
              f"{ts(e['received_ms'])}  events {evs}")
    print(f"{len(ev)} evidence file(s)")
    return EXIT_OK if ev or not args.sha256 else EXIT_FAILED


def _actions(p: argparse.ArgumentParser, conn: argparse.ArgumentParser, deliv: argparse.ArgumentParser) -> None:
    """Sub-subcommands of ``clips``. ``conn``'s defaults are suppressed so options given before the
    sub-subcommand (``lookout clips --site s upload ...``) are not reset by the sub-parser's defaults."""
    for act in conn._actions:
        act.default = argparse.SUPPRESS
    sp = p.add_subparsers(dest="clips_cmd", metavar="{list,upload,evidence,show,export,verify,hold,release}")
    lp = sp.add_parser("list", parents=[conn], help="audio clips stored on the gateway (--recorded: recorder clips)")
    u = sp.add_parser("upload", parents=[conn, deliv], help="upload a WAV to the gateway and optionally to speakers")
    u.add_argument("file", help="WAV file: PCM 16-bit mono, 8 or 16 kHz recommended")
    u.add_argument("--id", required=True, help="clip id used by broadcast --clip ([a-z0-9_.-])")
    u.add_argument("--to", help="distribute to a speaker, zone or site after the upload")
    e = sp.add_parser("evidence", parents=[conn], help="evidence files uploaded by nodes (sha256, custody)")
    e.add_argument("--sha256", help="only this file")
    e.add_argument("--limit", type=int, default=100)
    clips_custody.add_parsers(sp, lp)  # recorder clips: list --recorded, show, export, verify, hold, release


__all__ = ["evidence", "register", "upload"]


def cmd_clips(args: argparse.Namespace) -> int:
    done = clips_custody.dispatch(args)
    if done is not None:
        return done
    if getattr(args, "clips_cmd", None) == "upload":
        return call(args, lambda: upload(args))
    if getattr(args, "clips_cmd", None) == "evidence":
        return call(args, lambda: evidence(args))

    async def go() -> int:
        r = await one(args, "clips", {"action": "list"})
        done = answer(args, r)
        if done is not None:
            return done
        clips = r["data"]["clips"]
        for c in clips:
            fmt = f"{c['rate']} Hz {c['bits']}-bit {c['ms']} ms" if "rate" in c else "?"
            print(f"{c['id']:<24} {c['size']:>9} B  {fmt:<24} sha256 {c['sha256'][:16]}…")
        print(f"{len(clips)} clip(s) on the gateway")
        return EXIT_OK
    return call(args, go)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("clips", parents=[conn_parent()],
                              help="audio clips (list, upload to speakers) and evidence")
    p.set_defaults(func=cmd_clips, clips_cmd="list")
    _actions(p, conn_parent(), delivery_parent())
