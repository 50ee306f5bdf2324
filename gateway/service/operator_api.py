"""The operator API: what an authenticated operator may ask of the gateway, and what it answers.

Theory of operation
-------------------
``OperatorAPI.handle(op_id, op, args, rid)`` takes one request that ``protocols/opapi.py`` has already decoded and
validated and whose operator the gateway has authenticated; it journals the request under the operator's name,
runs it against the registry, the command path or the journal, and returns the response object. Transport (MQTT
``opreq``/``opres``) stays in ``app.py``; the CLI, the demo and tests call the same ``handle``.

Commands fan out through ``command()``: a device id, a zone (``[zones]``) or a site resolves to device ids, each
gets a signed command from ``CommandService``, and the response aggregates their results (``ok``, ``queued``,
``partial``, ``failed``, ``offline``, ``timeout``, ``expired``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Protocol

from lookout.gateway.core.commands import Command, CommandError, CommandService, GroupRefused
from lookout.gateway.core import redact
from lookout.gateway.core.config import Config
from lookout.gateway.core.journal import Journal, VerifyResult
from lookout.gateway.core.registry import Device, Registry
from lookout.protocols import opapi

NODE_KINDS = ("speaker", "sensor", "camera")
RECORDER_BUSY = ("recording", "dispatched")  # a recorder's hb ``state`` values that make its officer busy
# an armed drone in one of these modes (hb ``state``) is free for the gateway to guide: holding or already guided;
# armed in any other mode it is flying someone else's job (a mission, RTL, landing, a pilot's manual control)
DRONE_FREE_MODES = ("guided", "loiter", "brake", "poshold", "offboard")
READ_ONLY = ("devices", "locate", "journal", "status", "incidents", "coverage")  # all a ``viewer`` may ask
READ_ONLY_ACTIONS = {"clips": ("list", "progress", "evidence", "custody"), "incident": ("show",)}


def read_only(op: str, a: dict[str, Any]) -> bool:
    """True when ``op`` only reads (a ``viewer`` operator, e.g. the county's, may send nothing else)."""
    return op in READ_ONLY or a.get("action", "list" if op == "clips" else None) in READ_ONLY_ACTIONS.get(op, ())


class ClipOps(Protocol):
    async def handle_op(self, op_id: str, op: str, a: dict[str, Any], rid: str | None) -> dict[str, Any]: ...


def device_view(d: Device) -> dict[str, Any]:
    """What operators see of a device (registry snapshot, ``devices`` op)."""
    v: dict[str, Any] = {"id": d.id, "site": d.site, "kind": d.kind, "state": d.state, "fw": d.fw,
                         "hb_s": d.hb_s, "last_seen_ms": d.last_seen_ms, "since_ms": d.since_ms,
                         "reason": d.reason, "gaps": d.gaps, "transport": d.transport}
    if d.last_loc:
        v["loc"] = {k: d.last_loc[k] for k in ("lat", "lon", "alt_mm", "ts", "src") if k in d.last_loc}
    if d.info:
        v["info"] = d.info
    if d.kind == "recorder":  # for dispatch: who carries it, and whether they are free (recording or on a task)
        v["officer"] = d.officer
        v["busy"] = d.info.get("state") in RECORDER_BUSY
        v["recording"] = d.info.get("state") == "recording"
    elif d.kind == "drone":  # for dispatch: free on the ground (the gateway launches it) or holding in the air
        v["busy"] = bool(d.info.get("armed")) and d.info.get("state") not in DRONE_FREE_MODES
    return v


class OperatorAPI:
    def __init__(self, cfg: Config, registry: Registry, commands: CommandService, journal: Journal, keystore: Any,
                 clock: Callable[[], int], bdseq: Callable[[], int]) -> None:
        self.cfg = cfg
        self.registry = registry
        self.commands = commands
        self.journal = journal
        self.keystore = keystore
        self.clock = clock
        self.bdseq = bdseq
        self.clips: ClipOps | None = None  # set by the service once the clip distributor exists
        self.linkage: ClipOps | None = None  # the same shape: incidents, incident, coverage (gateway/linkage)
        self.storage: Any = None  # core/storage.StorageHealth: while its ``problem`` is set, no new work
        self.verifying: dict[str, int] | None = None  # {"done", "of"} while a journal verify runs
        self._verify_task: asyncio.Task[VerifyResult] | None = None

    def resolve(self, to: str, op: str) -> list[str]:
        """A device id, a zone ([zones] in the config) or a site id -> device ids. Group ops address speakers."""
        ident = self.keystore.get(to)
        if ident is not None and ident.site != self.cfg.site:  # a key store shared by the gateways of a broker
            raise CommandError(f"{to!r} belongs to site {ident.site!r}; this gateway serves {self.cfg.site!r}",
                               "unknown_device")
        if ident is not None or to in self.registry.devices:
            return [to]
        kinds = ("speaker",) if op in ("broadcast", "stop", "clips") else NODE_KINDS
        if to in self.cfg.zones:
            return list(self.cfg.zones[to])
        if to == self.cfg.site or any(d.site == to for d in self.registry.devices.values()):
            ids = {d.id for d in self.registry.devices.values() if d.site == to and d.kind in kinds}
            if hasattr(self.keystore, "list"):
                ids |= {i.device_id for i in self.keystore.list(site=to) if i.kind in kinds}
            return sorted(ids)
        raise CommandError(f"unknown device, zone or site {to!r}", "unknown_device")

    def refuse_role(self, op_id: str, role: str, op: str, a: dict[str, Any], rid: str | None
                    ) -> dict[str, Any] | None:
        """The ``unauthorized`` response (journaled) when ``role`` may not ``op``; None when it may."""
        if role != "viewer" or read_only(op, a):
            return None
        self.journal.append("security", f"{op} from read-only operator {op_id} refused", operator=op_id,
                            detail={"op": op, "role": role, "id": rid})
        return opapi.response(rid, "unauthorized", error=f"operator {op_id!r} is read-only (viewer): {op} refused")

    async def handle(self, op_id: str, op: str, a: dict[str, Any], rid: str | None = None,
                     drain: bool = True) -> dict[str, Any]:
        """Run one validated request of an authenticated operator; journal it; return the response object.

        ``drain=False`` leaves the journal entries deferred on the way (``Journal.append_soon``) for the caller to
        chain after it has sent the response (the MQTT path does, to answer sooner)."""
        try:
            return await self._handle(op_id, op, a, rid)
        finally:
            if drain:
                self.journal.drain()

    async def _handle(self, op_id: str, op: str, a: dict[str, Any], rid: str | None = None) -> dict[str, Any]:
        problem = self.storage.problem if self.storage is not None and not read_only(op, a) else None
        if problem is not None:  # it could not be kept: refuse it, rather than take it and lose it
            self.storage.refused += 1
            self.journal.append("operator", f"{op_id} {op} refused: {problem}", operator=op_id,
                                detail={"op": op, "code": "busy", "why": problem})
            return opapi.response(rid, "busy", error=f"{problem}: new work is refused until the gateway can "
                                                     "write again; nothing already accepted is lost")
        if op == "devices":
            return self._devices(op_id, a, rid)
        if op == "locate":
            d = self.registry.get(a["device"])
            self.journal.append("operator", f"{op_id} located {a['device']}", operator=op_id,
                                device=a["device"])
            if d is None:
                return opapi.response(rid, "unknown_device", error=f"unknown device {a['device']!r}")
            return opapi.response(rid, "ok", {"device": device_view(d), "loc": d.last_loc,
                                              "loc_age_ms": None if d.last_loc_ms is None
                                              else self.clock() - d.last_loc_ms})
        if op == "journal":
            return await self._journal(op_id, a, rid)
        if op == "status":
            seq, head = self.journal.head()
            data = {"gateway": self.cfg.gateway_id, "site": self.cfg.site, "bdseq": self.bdseq(),
                    "devices": self.registry.counts(), "commands": self.commands.depths(), "journal_seq": seq,
                    "journal_head": head}
            if self.verifying is not None:
                data["journal_verify"] = dict(self.verifying)
            if self.storage is not None and self.storage.problem is not None:  # disk full, read-only
                data["storage"] = {"problem": self.storage.problem, "since_ms": self.storage.since_ms}  # a verify in progress: entries done of total
            return opapi.response(rid, "ok", data)
        if op in ("incidents", "incident", "coverage"):
            if self.linkage is None:
                return opapi.response(rid, "internal", error="linkage is not running")
            return await self.linkage.handle_op(op_id, op, a, rid)
        if op in ("clips", "clip_put"):
            if self.clips is None:
                return opapi.response(rid, "internal", error="clip handling is not running")
            return await self.clips.handle_op(op_id, op, a, rid)
        if op == "broadcast":
            name, args = "play", {"clip": a["clip"], "repeat": a["repeat"]}
            if a.get("volume") is not None:
                args["volume"] = a["volume"]
        elif op == "stop":
            name, args = "stop", {"all": True}
        else:
            name, args = a["name"], a["args"]
        return await self.command(op_id, op, a, name, args, rid)

    async def command(self, op_id: str, op: str, a: dict[str, Any], name: str, args: dict[str, Any],
                      rid: str | None) -> dict[str, Any]:
        """Issue ``name(args)`` to what ``a[\"to\"]`` names, on behalf of ``op_id``; journaled; aggregated result."""
        to = a["to"]
        try:
            targets = self.resolve(to, op)
            if not targets:
                raise CommandError(f"{to!r} has no {'speakers' if op != 'command' else 'devices'}",
                                   "unknown_device")
            kw = {"prio": a["priority"], "ttl_s": a.get("ttl_s"), "op": op_id, "queue": a["queue"]}
            if len(targets) == 1 and targets[0] == to:
                group = None
                cmds = [await self.commands.issue(to, name, args, **kw)]
            else:
                group, cmds = await self.commands.issue_group(targets, name, args, **kw)
        except CommandError as e:
            detail: dict[str, Any] = {"op": op, "args": _journal_args(a, name), "code": e.code}
            data = None
            if isinstance(e, GroupRefused):  # nothing was stored or sent; each target's problem, as the CLI shows
                detail["refused"] = data = e.refused
            self.journal.append("operator", f"{op_id} {op} to {to} refused: {e}", operator=op_id, device=to,
                                detail=detail)
            return opapi.response(rid, e.code, None if data is None else {"to": to, "refused": data},
                                  error=str(e))
        self.journal.append_soon("operator", f"{op_id} {op} {name} to {to} ({len(cmds)} device(s))",
                                 operator=op_id, device=to, detail={"op": op, "args": _journal_args(a, name),
                                                                    "group": group,
                                                                    "commands": [c.id for c in cmds]})
        wait = a["wait"]
        if wait != "none":
            wait_s = a.get("wait_s")
            wait_s = self.cfg.commands.wait_s if wait_s is None else wait_s
            sent = [c.id for c in cmds if c.status != "queued"]  # queued ones wait for their device's birth
            if sent:
                await self.commands.wait(sent, wait, wait_s)
        cmds = [self.commands.get(c.id) or c for c in cmds]
        results = [_result_view(c) for c in cmds]
        return opapi.response(rid, _aggregate(cmds, wait), {"group": group, "to": to, "results": results},
                              error=_first_error(cmds))

    def _devices(self, op_id: str, a: dict[str, Any], rid: str | None) -> dict[str, Any]:
        """One page of the device table (docs/PROTOCOL.md §9): at most ``limit`` devices above the cursor
        ``after``, cut shorter to fit the response limit; journaled once per reading (the first page)."""
        limit = a.get("limit") or opapi.DEVICES_PAGE
        devs, more = self.registry.page(a.get("after"), limit, a.get("kind"), a.get("site"), a.get("state"))
        views, cut = fit([device_view(d) for d in devs], opapi.page_bytes())
        more = more or cut
        if a.get("after") is None:
            self.journal.append("operator", f"{op_id} listed devices", operator=op_id,
                                detail={k: v for k, v in a.items() if k not in ("after", "limit")})
        return opapi.response(rid, "ok", {"devices": views, "more": more,
                                          "next": views[-1]["id"] if more and views else None})

    async def _verify(self) -> VerifyResult:
        """``Journal.verify`` in a worker thread (it hashes every row); requests arriving while one runs share it.
        Its progress is in ``verifying`` (shown by ``status``)."""
        if self._verify_task is None:
            loop = asyncio.get_running_loop()
            state = self.verifying = {"done": 0, "of": 0}

            def progress(done: int, total: int) -> None:  # worker thread: a dict update is enough
                state["done"], state["of"] = done, total

            async def run() -> VerifyResult:
                try:
                    return await asyncio.to_thread(self.journal.verify, progress)
                finally:
                    self._verify_task, self.verifying = None, None

            self._verify_task = loop.create_task(run(), name="journal-verify")
        return await asyncio.shield(self._verify_task)

    async def _journal(self, op_id: str, a: dict[str, Any], rid: str | None) -> dict[str, Any]:
        """Every read runs in a worker thread: it may wait for the journal writer (a locked file) and SQLite."""
        if a["verify"]:
            v = await self._verify()
            self.journal.append("operator", f"{op_id} verified the journal: {'ok' if v.ok else 'BROKEN'}",
                                operator=op_id, detail={"ok": v.ok, "entries": v.entries, "bad_seq": v.bad_seq})
            data = {"ok": v.ok, "entries": v.entries, "bad_seq": v.bad_seq, "reason": v.reason, "head": v.head}
            return opapi.response(rid, "ok" if v.ok else "failed", data,
                                  error=None if v.ok else f"chain broken at seq {v.bad_seq}: {v.reason}")
        desc = a.get("desc", False)  # newest first, below ``before``: the console's pages
        rows = await asyncio.to_thread(  # a cursor page (limit + 1 rows), read off the event loop
            self.journal.entries, a.get("from"), a.get("to"), kind=a.get("kind"), device=a.get("device"),
            operator=a.get("operator"), after_seq=a["after"] or None, before_seq=a.get("before"),
            limit=a["limit"] + 1, last=desc)
        if desc:
            rows.reverse()
        more = len(rows) > a["limit"]
        entries, cut = fit([e.to_dict() for e in rows[:a["limit"]]], opapi.page_bytes())
        more = more or cut
        if a["after"] == 0 and a.get("before") is None:  # the first page of a reading, not each page
            self.journal.append("operator", f"{op_id} read the journal", operator=op_id,
                                detail={k: a.get(k) for k in ("from", "to", "device", "kind", "operator")
                                        if k in ("from", "to", "device") or a.get(k) is not None})
        seq, head = self.journal.head()
        return opapi.response(rid, "ok", {"entries": entries, "more": more,
                                          "head_seq": seq, "head_hash": head})


def fit(items: list[dict[str, Any]], budget: int) -> tuple[list[dict[str, Any]], bool]:
    """The longest head of ``items`` whose JSON fits ``budget`` bytes (at least one item, so a reading always
    advances), and whether it was cut. A page's size is measured once; items only when it does not fit."""
    if len(json.dumps(items, separators=(",", ":"))) <= budget:  # ASCII, as opapi.encode_response writes it
        return items, False
    used = 2
    for i, it in enumerate(items):
        used += len(json.dumps(it, separators=(",", ":"))) + 1
        if used > budget:
            return items[:max(i, 1)], True
    return items, False


def _journal_args(a: dict[str, Any], name: str) -> dict[str, Any]:
    """The request's arguments as journaled: the command's secret arguments redacted (gateway/core/redact.py)."""
    if isinstance(a.get("args"), dict) and name in redact.COMMAND_SECRETS:
        return {**a, "args": redact.command_args(name, a["args"])}
    return a


def _result_view(c: Command) -> dict[str, Any]:
    v = {"device": c.device, "id": c.id, "status": c.status}
    for k in ("code", "detail", "data", "attempts", "latency_ms"):
        val = getattr(c, k)
        if val:
            v[k] = val
    return v


def _aggregate(cmds: list[Command], wait: str) -> str:
    st = [c.status for c in cmds]
    if all(s == "queued" for s in st):
        return "queued"
    if len(cmds) == 1:
        s = st[0]
        if s == "refused":
            return "offline" if cmds[0].code == "offline" else "failed"  # else the transport refused it
        if s in ("failed", "rejected"):
            return "failed"
        if s in ("expired", "timeout"):
            return s
        if wait == "final" and s not in ("done",):
            return "timeout"
        return "ok"
    good = ("done",) if wait == "final" else ("done", "accepted", "sent") if wait == "accepted" else \
        ("done", "accepted", "sent", "queued")
    if all(s in good for s in st):
        return "ok"
    if all(s == "refused" for s in st):
        return "offline"
    return "partial"


def _first_error(cmds: list[Command]) -> str | None:
    for c in cmds:
        if c.status in ("failed", "rejected", "refused", "expired", "timeout"):
            return f"{c.device}: {c.status}" + (f" ({c.code}: {c.detail})" if c.detail else "")
    return None


__all__ = ["NODE_KINDS", "OperatorAPI", "device_view"]
