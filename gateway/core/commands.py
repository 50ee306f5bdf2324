"""Commands: one path for every device kind, from the operator's request to the device's final result.

Theory of operation
-------------------
``issue()`` gives a command an id, a deadline (``exp``) and a priority, stores it in SQLite, and then either sends
it (target online or stale) or leaves it ``queued`` (target offline/unknown; or ``refused`` if the caller asked
not to queue). Sending reserves the device's next counter from the key store, signs the canonical message
(protocols/signing.py, purpose ``cmd``) and hands the bytes to the device's ``Transport``; only when the
transport confirms (MQTT: PUBACK) does the command become ``sent``. The signed bytes are stored, so a retry
re-sends the *identical* message: a node that already ran it rejects the copy as a replay instead of running it
twice, and that ``replay`` rejection of a retry is ignored.

Status machine (``STATUS_NEXT``)::

    queued -> sent -> accepted -> done | failed | rejected
       |        |         \\-> timeout (no final result by exp)
       |        +-> queued (target went offline before answering) / timeout (max_attempts, no answer)
       +-> expired (exp passed while waiting)          refused (offline and queue=False, or the transport's
                                                       ``check`` refused it: a drone's geofence, bad args)

Delivery policy: re-send every ``retry_s`` while no result arrived, at most ``max_attempts`` times; a command
whose target goes offline returns to the queue and is re-sent on the next birth unless expired. The queue is
the gateway's own (SQLite), because no broker session queue can be trusted with it (amqtt delivered 2 of 5).

Results (``res``) and events (``evt``) must carry a valid MAC from the device's key (purpose ``res``/``evt``);
unsigned or forged ones are counted, journaled by the caller and never acted on.

Device-kind specifics (MQTT node, MAVLink drone, serial recorder) live behind ``Transport``: a transport only
moves bytes to one device and reports when they left.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import logging
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lookout.gateway.core import redact, walstore
from lookout.gateway.core.clock import now_ms
from lookout.gateway.core.config import CommandsConfig
from lookout.gateway.core.registry import Device, Registry
from lookout.protocols import canonical, messages, signing
from lookout.protocols.errors import LocalProtocolError

log = logging.getLogger(__name__)

MAX_SENDING = 500  # sends waiting for their transport (PUBACK) at once; bounded like paho's queue (mqtt.py)
FLUSH_SLICE = 25  # status rows written per event-loop step by tick() (~0.3 ms of JSON + one WAL commit)
FINAL = ("done", "failed", "rejected", "expired", "timeout", "refused")
STATUS_NEXT = {
    "queued": ("sent", "expired", "refused", "accepted", "done", "failed", "rejected"),
    "sent": ("queued", "accepted", "done", "failed", "rejected", "expired", "timeout"),
    "accepted": ("done", "failed", "rejected", "timeout", "expired"),
}



class CommandError(Exception):
    """A command could not be issued; ``code`` is an operator-API code (unknown_device, offline, bad_request)."""

    def __init__(self, msg: str, code: str):
        super().__init__(msg)
        self.code = code


class GroupRefused(CommandError):
    """A group command refused as a whole because some targets would be; ``refused`` names each of them."""

    def __init__(self, refused: list[dict[str, str]], of: int):
        first = refused[0]
        super().__init__(f"{len(refused)} of {of} target(s) refused, nothing sent: "
                         + "; ".join(f"{r['device']}: {r['error']}" for r in refused),
                         first["code"])
        self.refused = refused


class Transport(Protocol):
    """Moves one signed command to one device. ``send`` returns when the bytes left (MQTT: after PUBACK).

    A transport may also have ``check(device, name, args) -> (code, detail) | None``: a refusal there makes the
    command ``refused`` with that code before anything is sent (the drone bridge's geofence and argument rules)."""

    async def send(self, device: Device, wire: bytes, cmd: dict[str, Any]) -> None: ...


@dataclass
class Command:
    id: str
    device: str
    site: str
    name: str
    args: dict[str, Any]
    prio: int
    issued_ms: int
    exp_ms: int
    status: str = "queued"
    op: str | None = None
    group: str | None = None
    attempts: int = 0
    ctr: int | None = None
    wire: str | None = None  # the signed message, re-sent unchanged on retry
    first_sent_ms: int | None = None
    sent_ms: int | None = None
    accepted_ms: int | None = None
    final_ms: int | None = None
    code: str | None = None
    detail: str | None = None
    data: dict[str, Any] | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def latency_ms(self) -> int | None:
        if self.final_ms is None or self.first_sent_ms is None:
            return None
        return self.final_ms - self.first_sent_ms

    def summary(self) -> dict[str, Any]:
        """What the journal keeps of a command: everything but its signed bytes, with secrets redacted."""
        d = {k: v for k, v in vars(self).items() if k != "wire" and v is not None}
        if self.name in redact.COMMAND_SECRETS:
            found = redact.secret_values(self.name, self.args)
            d["args"] = redact.command_args(self.name, self.args)
            for k in ("detail", "data"):
                if k in d:
                    d[k] = redact.scrub(d[k], found)
        return d

    def seal(self) -> None:
        """Once final: drop the signed bytes (no retry needs them) and the secrets from what is stored."""
        self.wire = None
        if self.name in redact.COMMAND_SECRETS:
            found = redact.secret_values(self.name, self.args)
            self.args = redact.command_args(self.name, self.args)
            self.detail = redact.scrub(self.detail, found)
            self.data = redact.scrub(self.data, found)


@dataclass(frozen=True)
class SignatureProblem:
    device: str
    purpose: str
    code: str  # "unsigned", "bad_mac", "unknown_device"
    detail: str


Listener = Callable[[Command, str], None]  # (command, previous status)


def canonical_fast(msg: dict[str, Any]) -> bytes:
    """protocols/canonical.py's form via CPython's C json encoder (the gateway's hot path).

    With sorted keys, compact separators and ``ensure_ascii=False`` the C encoder writes exactly the canonical
    form except for control characters (it uses ``\\n``-style short escapes where canonical uses ``\\u000a``),
    so any output containing a backslash-escaped control character falls back to the reference encoder.
    Floats are refused by the fallback as well.
    """
    text = json.dumps(msg, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if "\\" in text or any(isinstance(v, float) for v in msg.values()):
        return canonical.dumpb(msg)
    return text.encode()


def mac_hex(key: bytes, purpose: str, msg: dict[str, Any]) -> str:
    """Same value as ``signing.compute_mac`` (tests check), with stdlib C HMAC and the fast canonical form."""
    body = {k: v for k, v in msg.items() if k != "mac"}
    return hmac.new(key, signing.DOMAIN + purpose.encode() + b"|" + canonical_fast(body), hashlib.sha256).hexdigest()


def check_signature(keystore: Any, device_id: str, purpose: str, msg: dict[str, Any]) -> SignatureProblem | None:
    """None if ``msg`` carries a valid MAC from ``device_id``'s key, else what is wrong."""
    ident = keystore.get(device_id)
    if ident is None:
        return SignatureProblem(device_id, purpose, "unknown_device", "no key for this device")
    got = msg.get("mac")
    if got is None:
        return SignatureProblem(device_id, purpose, "unsigned", f"{purpose} message without mac")
    if not isinstance(got, str) or not hmac.compare_digest(got.encode(), mac_hex(ident.hmac_key, purpose, msg).encode()):
        return SignatureProblem(device_id, purpose, "bad_mac", "mac does not match (wrong key or altered message)")
    return None


class CommandService:
    def __init__(self, cfg: CommandsConfig, keystore: Any, registry: Registry, path: str | Path | None = None,
                 clock: Callable[[], int] = now_ms):
        self.cfg = cfg
        self.keystore = keystore
        self.registry = registry
        self.clock = clock
        self.transports: dict[str, Transport] = {}
        self.active: dict[str, Command] = {}
        self._recent: dict[str, Command] = {}  # final commands kept for late lookups (bounded)
        self._listeners: list[Listener] = []
        self._progress_listeners: list[Callable[[Command], None]] = []
        self._waiters: dict[str, list[tuple[str, _Wait]]] = {}
        self._bg: set[asyncio.Task[Any]] = set()
        self._sending: set[str] = set()  # ids whose transport send is in progress
        self._reserving: set[str] = set()
        self._last_used: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.forged = 0
        self.unsigned = 0
        self.orphans = 0
        self._db: sqlite3.Connection | None = None
        self._dirty: dict[str, Command] = {}  # status changes waiting for flush()
        self.store_error: sqlite3.Error | None = None  # why the last write failed (None: it worked)
        self._checkpointer: walstore.Checkpointer | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            # WAL + synchronous=NORMAL, checkpoints in a background thread: a status change is a ~30 us commit
            # that survives a gateway crash (an OS crash/power loss may lose the last second, see walstore.py)
            self._db = walstore.connect(path, checkpoint_in_background=True)
            self._checkpointer = walstore.Checkpointer(path)
            self._db.execute("CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, device TEXT NOT NULL,"
                             " status TEXT NOT NULL, issued_ms INTEGER NOT NULL, doc TEXT NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS commands_status ON commands (status, device)")
            ph = ",".join("?" * len(FINAL))
            for (doc,) in self._db.execute(f"SELECT doc FROM commands WHERE status NOT IN ({ph})", FINAL):
                c = Command(**json.loads(doc))
                self.active[c.id] = c

    def close(self) -> None:
        for t in list(self._bg):
            t.cancel()
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._db is not None:
            self.flush()
            self._db.close()
            self._db = None

    # -- plumbing --------------------------------------------------------------------------------------------
    def register_transport(self, name: str, transport: Transport) -> None:
        self.transports[name] = transport

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def add_progress_listener(self, fn: Callable[[Command], None]) -> None:
        """``fn(command)`` for progress reports within ``accepted`` (``data`` changed, no status change): what
        a screen needs to show "playing" between accepted and done; status listeners are not called for it."""
        self._progress_listeners.append(fn)

    def _progress(self, c: Command) -> None:
        for fn in self._progress_listeners:
            try:
                fn(c)
            except Exception:
                log.exception("command progress listener failed")

    def _save(self, c: Command, sync: bool = True) -> None:
        """Store ``c``: now (``sync``), or with the next ``flush`` (``tick`` runs it every few hundred ms).

        Written at once: a command queued for an offline device (the durable queue); the signed message in the
        loop iteration after its first transmission (``_store_now``: a retry after a restart must re-send the
        identical bytes, never re-sign; a crash in between loses the command as a whole, never its bytes).
        Status changes after that are batched: each SQLite call on the event loop thread releases the GIL, and
        losing the last few hundred ms of them in a crash only means a ``sent`` command is re-sent (identical
        bytes: the node answers ``replay``) instead of being known ``done`` (docs/GATEWAY.md).
        """
        if self._db is None:
            return
        if not sync:
            self._dirty[c.id] = c
            return
        try:
            self._db.execute("INSERT OR REPLACE INTO commands (id, device, status, issued_ms, doc)"
                             " VALUES (?, ?, ?, ?, ?)", (c.id, c.device, c.status, c.issued_ms, json.dumps(vars(c))))
        except sqlite3.Error as e:  # disk full, read-only: the command cannot be kept, so it is not taken
            self.store_error = e
            raise CommandError(f"cannot store the command ({e}): the gateway cannot write its data directory",
                               "busy") from None
        self._dirty.pop(c.id, None)

    def _store_now(self, c: Command) -> None:
        if self._dirty.get(c.id) is c:
            try:
                self._save(c)
            except CommandError:  # stays dirty: tick()'s flush writes it once the disk takes writes again
                log.error("command %s: its signed bytes could not be stored yet (%s)", c.id, self.store_error)

    def retry_writes(self) -> sqlite3.Error | None:
        """Write what waits (after a disk-full or read-only spell); the error if it still cannot."""
        try:
            self.flush()
        except sqlite3.Error:
            pass
        return self.store_error

    def flush(self, limit: int | None = None) -> int:
        """Write the batched status changes in one transaction; at most ``limit`` of them (``tick`` writes in
        slices and yields between them: serialising a few hundred commands at once held the loop for ms)."""
        if self._db is None or not self._dirty:
            self.store_error = None  # nothing waits to be written
            return 0
        if limit is None or limit >= len(self._dirty):
            cmds = list(self._dirty.values())
            self._dirty.clear()
        else:
            cmds = [self._dirty.pop(k) for k in list(itertools.islice(self._dirty, limit))]
        rows = [(c.id, c.device, c.status, c.issued_ms, json.dumps(vars(c))) for c in cmds]
        try:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO commands (id, device, status, issued_ms, doc)"
                                 " VALUES (?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as e:  # disk full, read-only: keep them dirty (newer changes win) and try again later
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            for c in cmds:
                self._dirty.setdefault(c.id, c)
            self.store_error = e
            raise
        self.store_error = None
        return len(rows)

    def _set(self, c: Command, status: str, now: int, code: str | None = None, detail: str | None = None) -> None:
        old = c.status
        if old == status:
            return
        if old in FINAL or status not in STATUS_NEXT.get(old, ()):
            raise LocalProtocolError(f"command {c.id}: illegal transition {old} -> {status}")
        c.status = status
        if code is not None:
            c.code = code
        if detail is not None:
            c.detail = detail
        if status == "accepted":
            c.accepted_ms = now
        if status in FINAL:
            c.final_ms = now
            c.seal()
            self.active.pop(c.id, None)
            self._recent[c.id] = c
            if len(self._recent) > 10000:
                self._recent.pop(next(iter(self._recent)))
        self._save(c, sync=False)
        for fn in self._listeners:
            try:
                fn(c, old)
            except Exception:
                log.exception("command listener failed")
        self._wake(c)

    def _wake(self, c: Command) -> None:
        ws = self._waiters.get(c.id)
        if not ws:
            return
        keep = []
        for until, w in ws:
            if w.fut.done():
                continue
            if c.final or (until == "accepted" and c.status in ("accepted",)) or (until == "sent" and c.status != "queued"):
                w.left -= 1
                if w.left == 0:
                    w.fut.set_result(None)
            else:
                keep.append((until, w))
        if keep:
            self._waiters[c.id] = keep
        else:
            self._waiters.pop(c.id, None)

    def active_for(self, device_id: str, name: str | None = None) -> list[Command]:
        """Commands not yet final for one device (optionally of one name), oldest first."""
        return [c for c in list(self.active.values()) if c.device == device_id and (name is None or c.name == name)]

    def get(self, cmd_id: str) -> Command | None:
        c = self.active.get(cmd_id) or self._recent.get(cmd_id)
        if c is None and self._db is not None:
            row = self._db.execute("SELECT doc FROM commands WHERE id = ?", (cmd_id,)).fetchone()
            if row:
                c = Command(**json.loads(row[0]))
        return c

    def queued(self, device: str | None = None) -> list[Command]:
        out = [c for c in self.active.values() if c.status == "queued" and (device is None or c.device == device)]
        return sorted(out, key=lambda c: (-c.prio, c.issued_ms, c.id))

    def depths(self) -> dict[str, int]:
        d = {"queued": 0, "sent": 0, "accepted": 0}
        for c in self.active.values():
            d[c.status] = d.get(c.status, 0) + 1
        return d

    def _spawn(self, coro) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._bg.add(t)
        t.add_done_callback(self._bg.discard)

    # -- issuing ---------------------------------------------------------------------------------------------
    def new_id(self) -> str:
        return "c" + secrets.token_hex(6)

    def check(self, device_id: str, name: str, args: dict[str, Any] | None = None, *, prio: int = 1,
              queue: bool = True, op: str | None = None) -> None:
        """Raise ``CommandError`` if ``prepare`` would refuse this command; stores and sends nothing."""
        self._check_target(device_id, queue)
        now = self.clock()
        try:
            messages.validate("cmd", messages.command("c0", device_id, name, dict(args or {}), now, now, prio, 1, op)
                              | {"mac": "0" * 64}, err=LocalProtocolError)
        except LocalProtocolError as e:
            raise CommandError(f"invalid command: {e}", "bad_request") from None

    def _check_target(self, device_id: str, queue: bool) -> None:
        if self.keystore.get(device_id) is None:
            raise CommandError(f"unknown device {device_id!r}: no key in the key store", "unknown_device")
        dev = self.registry.get(device_id)
        if queue and (dev is None or not dev.live) and len(self.queued(device_id)) >= self.cfg.queue_limit:
            raise CommandError(f"queue for {device_id} is full ({self.cfg.queue_limit})", "offline")

    def prepare(self, device_id: str, name: str, args: dict[str, Any] | None = None, *, prio: int = 1,
                ttl_s: int | None = None, op: str | None = None, queue: bool = True, group: str | None = None,
                cmd_id: str | None = None) -> Command:
        """Validate and store a command (status ``queued`` or ``refused``); ``dispatch`` sends it."""
        self._check_target(device_id, queue)
        ident = self.keystore.get(device_id)
        dev = self.registry.get(device_id)
        if dev is None:
            dev = self.registry.ensure(device_id, ident.site, ident.kind)
        now = self.clock()
        ttl = ttl_s if ttl_s is not None else self.cfg.default_ttl_s
        c = Command(cmd_id or self.new_id(), device_id, dev.site, name, dict(args or {}), prio, now,
                    now + ttl * 1000, op=op, group=group)
        # validate the wire form now (ctr/mac placeholders) so a bad argument fails at the operator, not later
        try:
            messages.validate("cmd", messages.command(c.id, device_id, name, c.args, now, c.exp_ms, prio, 1, op)
                              | {"mac": "0" * 64}, err=LocalProtocolError)
        except LocalProtocolError as e:
            raise CommandError(f"invalid command: {e}", "bad_request") from None
        # a transport may refuse a command before it is stored as sendable (a drone: geofence, unknown command)
        check = getattr(self.transports.get(dev.transport), "check", None)
        refusal = check(dev, name, c.args) if check is not None else None
        if refusal is not None:
            return self._refuse(c, now, *refusal)
        if not dev.live and not queue:
            return self._refuse(c, now, "offline", f"{device_id} is {dev.state}; not queued")
        self.active[c.id] = c
        self._save(c, sync=not dev.live)  # live: sent at once; _transmit stores it with its bytes
        for fn in self._listeners:
            fn(c, "new")
        return c

    def _refuse(self, c: Command, now: int, code: str, detail: str) -> Command:
        """Final at once, never sent: ``offline`` (and queue=False), or a transport's refusal (its code)."""
        c.status = "refused"
        c.code = code
        c.detail = detail
        c.final_ms = now
        c.seal()
        self._save(c, sync=False)
        self._recent[c.id] = c
        for fn in self._listeners:
            fn(c, "new")
        return c

    async def issue(self, device_id: str, name: str, args: dict[str, Any] | None = None, **kw: Any) -> Command:
        c = self.prepare(device_id, name, args, **kw)
        if c.status == "queued":
            dev = self.registry.get(device_id)
            if dev is not None and dev.live:
                await self._send(c)
        return c

    async def issue_group(self, device_ids: Iterable[str], name: str, args: dict[str, Any] | None = None,
                          **kw: Any) -> tuple[str, list[Command]]:
        """The same command to many devices; each gets its own id, counter, MAC and result."""
        ids = list(device_ids)
        problems = []
        for target in ids:  # every target first: a refusal must mean that nothing was stored or sent
            try:
                self.check(target, name, args, prio=kw.get("prio", 1), queue=kw.get("queue", True),
                           op=kw.get("op"))
            except CommandError as e:
                problems.append({"device": target, "code": e.code, "error": str(e)})
        if problems:
            raise GroupRefused(problems, len(ids))
        gid = "g" + secrets.token_hex(6)
        cmds = [self.prepare(target, name, args, group=gid, **kw) for target in ids]
        await asyncio.gather(*(self._send(c) for c in cmds
                               if c.status == "queued" and (d := self.registry.get(c.device)) and d.live))
        return gid, cmds

    async def _send(self, c: Command) -> None:
        """Sign (first time only) and hand to the transport; one send per command at a time."""
        if c.id in self._sending or c.final:
            return
        self._sending.add(c.id)
        try:
            await self._send_locked(c)
        finally:
            self._sending.discard(c.id)

    async def _send_locked(self, c: Command) -> None:
        dev = self.registry.get(c.device)
        if dev is None:
            return
        transport = self.transports.get(dev.transport)
        if transport is None:
            log.warning("no transport %r for %s; %s stays queued", dev.transport, dev.id, c.id)
            return
        if self.clock() > c.exp_ms:
            self._set(c, "expired", self.clock(), "expired", "deadline passed before delivery")
            return
        if c.wire is not None:  # a retry or a re-send after a birth: the identical signed bytes
            await self._transmit(c, dev, transport)
            return
        ident = self.keystore.get(c.device)
        if ident is None:
            self._set(c, "expired", self.clock(), "unknown_device", "key removed before delivery")
            return
        async with self._device_lock(c.device):  # counters reach the transport in the order reserved
            c.ctr = await self._counter(c.device)
            if c.final:
                return
            # fields were validated in prepare() (with placeholders); ctr comes from the key store, mac is hex
            msg = messages.command(c.id, c.device, c.name, c.args, self.clock(), c.exp_ms, c.prio, c.ctr, c.op)
            msg["mac"] = mac_hex(ident.hmac_key, "cmd", msg)
            c.wire = canonical_fast(msg).decode()
            await self._transmit(c, dev, transport, msg)

    async def _counter(self, device_id: str) -> int:
        """The device's next command counter, persisted by the key store before we use it.

        The key store reserves counters in blocks (a high-water mark committed ahead, gateway/keystore.py), so
        this is an in-memory step except when a block is renewed (a WAL commit, no fsync: tens of
        microseconds). ``reserve_counter`` (at birth) renews the block in a worker thread ahead of need.
        """
        ctr = self.keystore.next_counter(device_id)
        self._last_used[device_id] = ctr
        return ctr

    def reserve_counter(self, device_id: str) -> None:
        """Make sure the device's counter block is ready, in the background (no-op if on its way)."""
        if device_id in self._reserving or self.keystore.get(device_id) is None:
            return
        self._reserving.add(device_id)

        async def reserve() -> None:
            try:  # a counter drawn and never used only leaves a gap; the node wants larger, not consecutive
                await asyncio.to_thread(self.keystore.next_counter, device_id)
            finally:
                self._reserving.discard(device_id)
        self._spawn(reserve())

    def _device_lock(self, device_id: str) -> asyncio.Lock:
        lock = self._locks.get(device_id)
        if lock is None:
            lock = self._locks[device_id] = asyncio.Lock()
        return lock

    async def _transmit(self, c: Command, dev: Device, transport: Transport,
                        msg: dict[str, Any] | None = None) -> None:
        assert c.wire is not None
        now = self.clock()
        c.attempts += 1
        c.sent_ms = now
        if c.first_sent_ms is None:
            c.first_sent_ms = now
            # the signed bytes are stored in the loop iteration after they first leave, so the write is not on
            # the way to the node (nor is the GIL hand-off each SQLite call makes); until then c is dirty, so a
            # flush()/close() in between writes it as well
            self._dirty[c.id] = c
            asyncio.get_running_loop().call_soon(self._store_now, c)
        else:
            self._save(c, sync=False)
        try:
            await transport.send(dev, c.wire.encode(), msg if msg is not None else json.loads(c.wire))
        except Exception as e:  # noqa: BLE001 - link down or no PUBACK: tick() or the next birth re-sends
            c.attempts -= 1  # an attempt is a copy the broker took; an outage must not use them up
            log.info("sending %s to %s failed (%s); re-sent after retry_s", c.id, c.device, e)
            return
        if c.status == "queued" and dev.live:  # (a device that died meanwhile keeps it queued for its birth)
            self._set(c, "sent", self.clock())

    # -- inputs ----------------------------------------------------------------------------------------------
    def on_result(self, device_id: str, msg: dict[str, Any], signed_ok: bool = True) -> Command | None:
        """A validated ``res`` message from ``device_id`` (signature already checked by the caller)."""
        c = self.active.get(msg["id"])
        if c is None:
            self.orphans += 1
            return None
        if c.device != device_id:
            self.orphans += 1
            log.warning("%s answered command %s addressed to %s; ignored", device_id, c.id, c.device)
            return None
        status = msg["status"]
        now = self.clock()
        if status == "rejected" and msg.get("code") == "replay" and c.attempts > 1:
            return c  # our own retry of a command the node already had
        if msg.get("data") is not None:
            c.data = msg["data"]
        if c.status == "queued":  # result for a command we re-queued: it did arrive after all
            c.status = "sent"
        if status == "accepted":
            if c.status == "sent":
                self._set(c, "accepted", now, msg.get("code"), msg.get("detail"))
            elif c.status == "accepted" and msg.get("data") is not None:
                self._progress(c)  # e.g. play's {"phase": "playing"}: the audio reached the DAC
        else:
            self._set(c, status, now, msg.get("code") or status, msg.get("detail"))
        return c

    def resync(self, device_id: str, nonce: str | None) -> None:
        """A node's heartbeat says ``state_lost``: its replay counter is unknown and it refuses every command.
        Send it a signed ``resync`` echoing its challenge ``nonce``; the command's own counter becomes the node's
        (docs/SECURITY.md). One at a time per device; a heartbeat is unauthenticated, but the nonce makes the
        command useless anywhere else, so a forged one costs a command, nothing more."""
        dev = self.registry.get(device_id)
        if not nonce or dev is None or dev.transport not in self.transports or self.active_for(device_id, "resync"):
            return
        try:
            c = self.prepare(device_id, "resync", {"nonce": nonce})  # now: active before the next heartbeat
        except CommandError as e:
            log.warning("resync for %s not sent: %s", device_id, e)
            return
        if c.status == "queued" and dev.live:
            self._spawn(self._send(c))

    async def on_birth(self, device_id: str) -> None:
        """Send what waited for this device (queued, or sent in a session that has just ended)."""
        self.reserve_counter(device_id)
        for c in [c for c in self.active.values() if c.device == device_id and c.status == "sent"]:
            self._set(c, "queued", self.clock())
        for c in self.queued(device_id):
            await self._send(c)

    def on_offline(self, device_id: str) -> None:
        """The device went offline: commands it has not answered go back to the queue."""
        now = self.clock()
        for c in [c for c in self.active.values() if c.device == device_id and c.status == "sent"]:
            self._set(c, "queued", now)

    async def tick(self) -> None:
        """Retries and deadlines, and the batched status writes; the service calls this every few hundred ms.
        A failing disk stops only the writes (the changes stay in memory): retries and deadlines go on."""
        try:
            while self.flush(FLUSH_SLICE) == FLUSH_SLICE:
                await asyncio.sleep(0)
        except sqlite3.Error as e:
            log.debug("command status writes wait for the disk: %s", e)
        now = self.clock()
        for c in list(self.active.values()):
            if now > c.exp_ms:
                if c.status == "accepted":
                    self._set(c, "timeout", now, "timeout", "accepted, but no final result before the deadline")
                else:
                    self._set(c, "expired", now, "expired", "deadline passed without a result")
            elif c.id in self._sending:
                continue  # its send is still waiting for the transport
            elif c.status == "queued" and (d := self.registry.get(c.device)) is not None and d.live \
                    and (c.sent_ms is None or now - c.sent_ms >= self.cfg.retry_s * 1000):
                self._send_soon(c)  # live again without a birth we saw (e.g. after our own reconnect)
            elif c.status == "sent" and c.sent_ms is not None and now - c.sent_ms >= self.cfg.retry_s * 1000:
                if c.attempts >= self.cfg.max_attempts:
                    self._set(c, "timeout", now, "no_response", f"no answer after {c.attempts} attempts")
                else:
                    self._send_soon(c)

    def _send_soon(self, c: Command) -> None:
        """Start a (re-)send in its own task: a broker that does not answer must not hold up the tick, whose
        deadlines and whose caller's offline scan keep their schedule. At most ``MAX_SENDING`` at a time; the
        rest wait for a later tick."""
        if len(self._sending) < MAX_SENDING:
            self._sending.add(c.id)  # claimed now, so the next tick does not start it twice
            self._spawn(self._send_claimed(c))

    async def _send_claimed(self, c: Command) -> None:
        try:
            if not c.final:
                await self._send_locked(c)
        finally:
            self._sending.discard(c.id)

    async def wait(self, cmd_ids: Iterable[str], until: str = "final", timeout: float | None = None
                   ) -> list[Command]:
        """Wait until each command is ``final`` (or ``accepted``/``sent``) or the timeout; return them all.

        One future for the whole wait, resolved by ``_wake`` when the last command gets there (or by a timer):
        the waiting task resumes in the next loop iteration (``asyncio.wait`` over per-command futures took
        two more, one for its completion callback and one for its own waiter)."""
        loop = asyncio.get_running_loop()
        w = _Wait(loop.create_future())
        cmds: list[Command] = []
        for cid in cmd_ids:
            c = self.get(cid)
            if c is None:
                continue
            cmds.append(c)
            if c.final or (until == "accepted" and c.status == "accepted") or (until == "sent" and c.status != "queued"):
                continue
            w.left += 1
            self._waiters.setdefault(cid, []).append((until, w))
        if w.left:
            timer = None if timeout is None else loop.call_later(timeout, _expire, w.fut)
            try:
                await w.fut
            finally:
                if timer is not None:
                    timer.cancel()
                if not w.fut.done():
                    w.fut.cancel()  # our task was cancelled: _wake drops the entries
        return [self.get(c.id) or c for c in cmds]


class _Wait:
    """One ``CommandService.wait`` call: ``left`` commands still to reach the state, ``fut`` set at zero."""

    __slots__ = ("fut", "left")

    def __init__(self, fut: asyncio.Future[None]):
        self.fut = fut
        self.left = 0


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
