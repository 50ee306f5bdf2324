"""Device registry: every node, drone, recorder and the gateway itself, with its liveness state.

Theory of operation
-------------------
A device is ``online``, ``stale`` or ``offline`` (``unknown`` before the gateway heard anything). Two sources
drive the state, so a dropped connection *and* a silently dead node are both caught:

- the birth/death pair on ``state`` (Sparkplug-style, with the boot counter ``bdseq``): a birth makes the device
  online; a death (the broker-fired last will or a clean goodbye) makes it offline — unless its ``bdseq`` is older
  than the current birth's (a late will from a previous session must not kill the new one);
- a heartbeat deadline: every sign of life (birth, hb, loc, evt, res, or ``touch`` from a non-MQTT bridge)
  re-arms it. ``tick(now_ms)`` marks a device ``stale`` after ``stale_after_missed`` heartbeats were missed and
  ``offline`` after ``offline_after_missed`` (GB/T 28181: 3 × the period), each plus ``grace_ms`` of jitter.

The period is the device's own ``hb_s`` (birth/hb), clamped into ``[min_hb_s, max_hb_s]``: a node announcing 0.03 s
(an ms/s mix-up) would otherwise be declared dead 30 times a second, the classic false mass-offline. A clamp is
reported once as an ``interval_clamped`` event.

The gateway only knows a device is silent while *it* is listening: after a broker outage or a gateway restart
``rebase(now_ms)`` re-arms every live deadline from ``now`` instead of declaring the whole site offline.

Sequence numbers (``seq`` of hb/loc/evt/res, one counter per node session, reset at birth) are checked for gaps:
``seq > last + 1`` adds the difference to ``gaps`` (lost QoS 0 traffic, a sign of a bad radio link).

All transitions are plain functions of ``(device, message, now_ms)`` returning ``Change`` events, so tests drive
time explicitly. ``Registry`` adds the table, persistence (SQLite, written in batches by ``flush``) and listeners.
"""

from __future__ import annotations

import bisect
import heapq
import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lookout.gateway.core import walstore
from lookout.gateway.core.config import RegistryConfig

STATES = ("unknown", "online", "stale", "offline")
LIVE = ("online", "stale")


@dataclass
class Device:
    id: str
    site: str
    kind: str = "unknown"
    state: str = "unknown"
    fw: str | None = None
    hb_s: int | None = None  # effective (clamped) period
    hb_s_announced: int | None = None
    bdseq: int | None = None
    seqs: dict[str, int] = field(default_factory=dict)  # last seq per channel (hb, loc, evt, res)
    gaps: int = 0
    birth_ms: int | None = None
    last_seen_ms: int | None = None  # any sign of life
    last_hb_ms: int | None = None
    last_loc: dict[str, Any] | None = None
    last_loc_ms: int | None = None
    armed_ms: int | None = None  # deadlines re-armed here after a gateway restart/broker outage
    since_ms: int | None = None  # when the current state began
    reason: str | None = None
    caps: list[str] = field(default_factory=list)
    transport: str = "mqtt"
    info: dict[str, Any] = field(default_factory=dict)  # last hb extras (bat_mv, rssi, ...)
    officer: str | None = None  # a recorder's officer (its birth's x_officer)

    def to_dict(self) -> dict[str, Any]:
        """Shallow (``dataclasses.asdict`` deep-copies, ~50x slower; the result only feeds ``json.dumps``)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Device:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def live(self) -> bool:
        return self.state in LIVE


@dataclass(frozen=True)
class Change:
    """A registry event: a state transition (``old != new``) or a notable observation (``what``)."""

    device: str
    site: str
    kind: str
    old: str
    new: str
    what: str  # "birth", "death", "timeout", "heartbeat", "interval_clamped", "gap", "bdseq_stale"...
    ts: int
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def transition(self) -> bool:
        return self.old != self.new


# -- pure state functions ---------------------------------------------------------------------------------------

def effective_hb(dev: Device, announced: int | None, cfg: RegistryConfig, now_ms: int) -> list[Change]:
    """Set ``dev.hb_s`` from an announced period, clamped; return an ``interval_clamped`` change if needed."""
    if announced is None:
        if dev.hb_s is None:
            dev.hb_s = cfg.default_hb_s
        return []
    eff = min(max(announced, cfg.min_hb_s), cfg.max_hb_s)
    out: list[Change] = []
    if eff != announced and dev.hb_s_announced != announced:
        out.append(Change(dev.id, dev.site, dev.kind, dev.state, dev.state, "interval_clamped", now_ms,
                          {"announced_s": announced, "used_s": eff, "min_s": cfg.min_hb_s, "max_s": cfg.max_hb_s}))
    dev.hb_s_announced = announced
    dev.hb_s = eff
    return out


def _set(dev: Device, new: str, what: str, now_ms: int, detail: dict[str, Any] | None = None) -> list[Change]:
    old = dev.state
    if old == new:
        return []
    dev.state = new
    dev.since_ms = now_ms
    dev.reason = what
    return [Change(dev.id, dev.site, dev.kind, old, new, what, now_ms, detail or {})]


def on_birth(dev: Device, msg: dict[str, Any], cfg: RegistryConfig, now_ms: int) -> list[Change]:
    out: list[Change] = []
    dev.kind = msg.get("kind", dev.kind)
    dev.fw = msg.get("fw", dev.fw)
    dev.caps = list(msg.get("caps") or dev.caps)
    if isinstance(msg.get("x_officer"), str):
        dev.officer = msg["x_officer"]
    old_bdseq = dev.bdseq
    dev.bdseq = msg.get("bdseq")
    dev.seqs = {}  # new session: sequences restart
    dev.birth_ms = now_ms
    dev.last_seen_ms = now_ms
    out += effective_hb(dev, msg.get("hb_s"), cfg, now_ms)
    detail = {"bdseq": dev.bdseq, "fw": dev.fw, "prev_bdseq": old_bdseq}
    changed = _set(dev, "online", "birth", now_ms, detail)
    if not changed and old_bdseq != dev.bdseq:  # re-birth without a death in between (the will was lost)
        changed = [Change(dev.id, dev.site, dev.kind, "online", "online", "rebirth", now_ms, detail)]
    return out + changed


def on_death(dev: Device, msg: dict[str, Any], now_ms: int) -> list[Change]:
    bd = msg.get("bdseq")
    if dev.bdseq is not None and isinstance(bd, int) and bd != dev.bdseq and dev.live:
        # a will from an older session, delivered after the newer birth: ignore it
        return [Change(dev.id, dev.site, dev.kind, dev.state, dev.state, "bdseq_stale", now_ms,
                       {"death_bdseq": bd, "current_bdseq": dev.bdseq})]
    detail: dict[str, Any] = {"bdseq": bd}
    if msg.get("reason"):
        detail["reason"] = msg["reason"]
    return _set(dev, "offline", "death", now_ms, detail)


def on_alive(dev: Device, now_ms: int, seq: int | None = None, what: str = "heartbeat",
             channel: str = "hb") -> list[Change]:
    """Any sign of life (hb, loc, evt, res, a drone's MAVLink heartbeat...).

    ``seq`` is counted per channel (the node numbers each channel on its own; a result counter is not a
    heartbeat counter), and a jump of more than one is a gap of lost messages.
    """
    out: list[Change] = []
    if seq is not None:
        last = dev.seqs.get(channel)
        if last is not None and seq > last + 1:
            missing = seq - last - 1
            dev.gaps += missing
            out.append(Change(dev.id, dev.site, dev.kind, dev.state, dev.state, "gap", now_ms,
                              {"channel": channel, "after": last, "got": seq, "missing": missing}))
        if last is None or seq > last or seq <= 1:  # seq <= 1: the node restarted its counter
            dev.seqs[channel] = seq
    dev.last_seen_ms = now_ms
    if dev.state != "online":
        out += _set(dev, "online", what, now_ms)
    return out


EXT_MAX = 16  # x_ fields of a heartbeat kept in Device.info
EXT_TEXT_MAX = 64


def extensions(msg: dict[str, Any], taken: dict[str, Any]) -> dict[str, Any]:
    """A heartbeat's vendor extensions (``x_armed`` ...) for ``Device.info`` under their names without ``x_``:
    scalars only, text at most EXT_TEXT_MAX chars, at most EXT_MAX of them, never over a standard field. The
    drone bridge reports mode, link and GPS this way (docs/PROTOCOL.md §19)."""
    out: dict[str, Any] = {}
    for k, v in msg.items():
        if len(out) >= EXT_MAX:
            break
        if k.startswith("x_") and k[2:] not in taken and (isinstance(v, (bool, int)) or (
                isinstance(v, str) and len(v) <= EXT_TEXT_MAX)):
            out[k[2:]] = v
    return out


def deadlines(dev: Device, cfg: RegistryConfig) -> tuple[int, int] | None:
    """(stale_at_ms, offline_at_ms) for a live device, None otherwise."""
    if not dev.live or dev.last_seen_ms is None:
        return None
    base = max(dev.last_seen_ms, dev.armed_ms or 0)
    hb_ms = (dev.hb_s or cfg.default_hb_s) * 1000
    return (base + cfg.stale_after_missed * hb_ms + cfg.grace_ms,
            base + cfg.offline_after_missed * hb_ms + cfg.grace_ms)


def on_tick(dev: Device, cfg: RegistryConfig, now_ms: int) -> list[Change]:
    dl = deadlines(dev, cfg)
    if dl is None:
        return []
    stale_at, offline_at = dl
    if now_ms >= offline_at:
        return _set(dev, "offline", "timeout", now_ms, _silent(dev, now_ms))
    if now_ms >= stale_at and dev.state == "online":
        return _set(dev, "stale", "timeout", now_ms, _silent(dev, now_ms))
    return []


def _silent(dev: Device, now_ms: int) -> dict[str, Any]:
    return {"silent_ms": now_ms - (dev.last_seen_ms or now_ms), "hb_s": dev.hb_s}


def next_due(dev: Device, cfg: RegistryConfig) -> int | None:
    """When ``on_tick`` could next change ``dev``: its stale deadline while online, offline deadline while stale."""
    dl = deadlines(dev, cfg)
    if dl is None:
        return None
    return dl[0] if dev.state == "online" else dl[1]


# -- the table --------------------------------------------------------------------------------------------------

Listener = Callable[[Change], None]

LAZY_WRITE_MS = 300_000  # heartbeat-only changes reach registry.db at least this often (and at shutdown)
TICK_BATCH = 2000  # deadlines handled per tick() at most; the rest wait one tick (a mass outage is spread out)
URGENT = ("rebirth", "interval_clamped", "bdseq_stale")  # observations written at the next flush, like transitions


class Registry:
    """The device table with persistence. Methods return the changes they caused and tell listeners.

    Costs per input are independent of the number of devices (issue 17: at 5,000-20,000 devices the per-second
    flush and the liveness scan were O(N) and set the tail latency):

    - deadlines sit in a heap of ``(due_ms, id)`` with at most one live entry per device (``_queued``); an input
      that moves a deadline later leaves the entry alone, and ``tick`` re-checks an entry when it comes due
      (on time: re-armed at the real deadline), so a steady site costs one pop and push per device per period;
    - counts by (kind, state) are kept as devices change (``_count``), for metrics and the snapshot summary;
    - writes are split by what a crash may lose (docs/GATEWAY.md "Storage and durability"): a new device, a
      birth, a death and every state change are *urgent* (written at the next ``flush``, every second); a
      heartbeat or location only makes a device *lazy*, written by a sweep in id order every ``lazy_ms``
      (5 minutes) and at ``close``. Rewriting every touched row each second wrote ~9 KB per message ingested.
    """

    def __init__(self, cfg: RegistryConfig, path: str | Path | None = None, lazy_ms: int = LAZY_WRITE_MS):
        self.cfg = cfg
        self.lazy_ms = lazy_ms
        self.devices: dict[str, Device] = {}
        self._listeners: list[Listener] = []
        self._watchers: list[Callable[[Device], None]] = []
        self._urgent: set[str] = set()
        self._lazy: set[str] = set()
        self._sweep: list[str] = []  # lazy ids being written, sorted (neighbouring rows share pages)
        self._lazy_due: int | None = None
        self._order: list[str] | None = None  # the ids sorted, for page(); rebuilt after a device was added
        self._heap: list[tuple[int, str]] = []
        self._queued: dict[str, int] = {}  # id -> due of its live heap entry
        self._tally: dict[tuple[str, str], int] = {}  # (kind, state) -> devices
        self._counted: dict[str, tuple[str, str]] = {}  # id -> the (kind, state) it is counted under
        self._db: sqlite3.Connection | None = None
        self._checkpointer: walstore.Checkpointer | None = None
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = walstore.connect(path, checkpoint_in_background=True)
            self._checkpointer = walstore.Checkpointer(path)
            self._db.execute("CREATE TABLE IF NOT EXISTS devices (id TEXT PRIMARY KEY, doc TEXT NOT NULL)")
            for did, doc in self._db.execute("SELECT id, doc FROM devices"):
                try:
                    dev = Device.from_dict(json.loads(doc))
                except (ValueError, TypeError):
                    continue
                dev.seqs = {}  # written lazily, so possibly behind: gaps are counted while the gateway listens
                self.devices[did] = dev
                self._count(dev)
                self._arm(dev)

    def close(self) -> None:
        self.flush()
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def add_listener(self, fn: Listener) -> None:
        self._listeners.append(fn)

    def add_watcher(self, fn: Callable[[Device], None]) -> None:
        """``fn(device)`` after every input that touched a device (heartbeat, location...), transitions or not:
        for views that show the latest values (the web console coalesces these before pushing them)."""
        self._watchers.append(fn)

    def _emit(self, changes: list[Change]) -> list[Change]:
        for c in changes:
            for fn in self._listeners:
                fn(c)
        return changes

    def flush(self, limit: int | None = None, now_ms: int | None = None) -> int:
        """Write devices to SQLite, at most ``limit`` rows (the service writes in slices and yields between
        them, so a sweep of thousands of rows is no stall of the event loop); returns how many were written.
        Urgent rows first; the lazy ones when ``now_ms`` reaches the next sweep, or all of them when ``now_ms``
        is None (shutdown)."""
        if self._db is None:
            self._urgent.clear()
            self._lazy.clear()
            self._sweep = []
            return 0
        if now_ms is None or self._lazy_due is None or now_ms >= self._lazy_due:
            if now_ms is not None:
                sweep_now = self._lazy_due is not None
                self._lazy_due = now_ms + self.lazy_ms
            else:
                sweep_now = True
            if sweep_now and self._lazy:
                self._sweep = sorted(self._lazy.union(self._sweep), reverse=True)  # popped from the end
                self._lazy = set()
        room = len(self._urgent) + len(self._sweep) if limit is None else limit
        ids: list[str] = []
        while self._urgent and len(ids) < room:
            ids.append(self._urgent.pop())
        while self._sweep and len(ids) < room:
            ids.append(self._sweep.pop())
        if not ids:
            return 0
        ids.sort()
        devices = self.devices
        rows = [(d, json.dumps(devices[d].to_dict(), separators=(",", ":"))) for d in ids if d in devices]
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO devices (id, doc) VALUES (?, ?)", rows)
        self._db.execute("COMMIT")
        return len(ids)

    def pending_writes(self) -> int:
        """Devices with changes not yet in registry.db (metrics: a bounded queue, at most one entry a device)."""
        return len(self._urgent) + len(self._lazy) + len(self._sweep)

    # -- lookups ---------------------------------------------------------------------------------------------
    def get(self, device_id: str) -> Device | None:
        return self.devices.get(device_id)

    def ensure(self, device_id: str, site: str, kind: str | None = None) -> Device:
        dev = self.devices.get(device_id)
        if dev is None:
            dev = Device(device_id, site, kind or "unknown")
            self.devices[device_id] = dev
            self._order = None
            self._urgent.add(device_id)
            self._count(dev)
        else:
            if kind and dev.kind == "unknown":
                dev.kind = kind
                self._urgent.add(device_id)
                self._count(dev)
            self._lazy.add(device_id)
        return dev

    def remove(self, device_id: str) -> Device | None:
        """Forget a device (tests and benches that add and take away devices); not persisted."""
        dev = self.devices.pop(device_id, None)
        if dev is not None:
            key = self._counted.pop(device_id, None)
            if key is not None:
                self._tally[key] -= 1
            self._queued.pop(device_id, None)
            self._order = None
        return dev

    def select(self, kind: str | None = None, site: str | None = None, state: str | None = None,
               ids: Iterable[str] | None = None) -> list[Device]:
        want = set(ids) if ids is not None else None
        out = [d for d in self.devices.values()
               if (kind is None or d.kind == kind) and (site is None or d.site == site)
               and (state is None or d.state == state) and (want is None or d.id in want)]
        return sorted(out, key=lambda d: d.id)

    def page(self, after: str | None, limit: int, kind: str | None = None, site: str | None = None,
             state: str | None = None) -> tuple[list[Device], bool]:
        """Up to ``limit`` devices with an id above ``after``, in id order, and whether more follow: the
        operator's ``devices`` pages. A cursor, not an offset, so a device added during a reading shifts
        nothing (it is seen if its id is still ahead). The sorted ids are kept between pages: one sort after
        each addition, not one per page."""
        order = self._order
        if order is None:
            order = self._order = sorted(self.devices)
        out: list[Device] = []
        more = False
        devices = self.devices
        for i in range(bisect.bisect_right(order, after) if after is not None else 0, len(order)):
            d = devices.get(order[i])
            if d is None or (kind is not None and d.kind != kind) or (site is not None and d.site != site) \
                    or (state is not None and d.state != state):
                continue
            if len(out) == limit:
                more = True
                break
            out.append(d)
        return out, more

    def counts(self) -> dict[str, int]:
        c = {s: 0 for s in STATES}
        for (_kind, state), n in self._tally.items():
            c[state] = c.get(state, 0) + n
        return c

    def kind_state_counts(self) -> dict[tuple[str, str], int]:
        """Devices by (kind, state), kept as they change: O(kinds x states), not O(devices)."""
        return {k: n for k, n in self._tally.items() if n}

    def _count(self, dev: Device) -> None:
        key = (dev.kind, dev.state)
        old = self._counted.get(dev.id)
        if old == key:
            return
        if old is not None:
            self._tally[old] -= 1
        self._tally[key] = self._tally.get(key, 0) + 1
        self._counted[dev.id] = key

    # -- inputs ----------------------------------------------------------------------------------------------
    def birth(self, device_id: str, site: str, msg: dict[str, Any], now_ms: int) -> list[Change]:
        dev = self.ensure(device_id, site, msg.get("kind"))
        self._urgent.add(device_id)  # kind, fw, caps, bdseq, period: what a restart must know
        return self._track(dev, on_birth(dev, msg, self.cfg, now_ms), rearm=True)

    def death(self, device_id: str, site: str, msg: dict[str, Any], now_ms: int) -> list[Change]:
        dev = self.ensure(device_id, site)
        return self._track(dev, on_death(dev, msg, now_ms))

    def heartbeat(self, device_id: str, site: str, msg: dict[str, Any], now_ms: int) -> list[Change]:
        dev = self.ensure(device_id, site)
        hb_s = dev.hb_s
        out = effective_hb(dev, msg.get("hb_s"), self.cfg, now_ms)
        if msg.get("fw"):
            dev.fw = msg["fw"]
        dev.last_hb_ms = now_ms
        dev.info = {k: msg[k] for k in ("bat_mv", "bat_pct", "rssi", "temp_dc", "heap", "errs", "outbox",
                                         "dropped", "state", "up_s", "x_pending", "x_free_mb", "x_rec", "x_task")
                    if k in msg}
        dev.info.update(extensions(msg, dev.info))
        return self._track(dev, out + on_alive(dev, now_ms, msg.get("seq")), dev.hb_s != hb_s)

    def location(self, device_id: str, site: str, msg: dict[str, Any], now_ms: int) -> list[Change]:
        dev = self.ensure(device_id, site)
        dev.last_loc = {k: v for k, v in msg.items() if k != "mac"}
        dev.last_loc_ms = now_ms
        return self._track(dev, on_alive(dev, now_ms, msg.get("seq"), "location", "loc"))

    def touch(self, device_id: str, site: str, now_ms: int, kind: str | None = None, seq: int | None = None,
              hb_s: int | None = None, transport: str | None = None, channel: str = "evt") -> list[Change]:
        """A sign of life from any bridge (MQTT evt/res, MAVLink heartbeat, serial recorder, CoAP)."""
        dev = self.ensure(device_id, site, kind)
        if transport and dev.transport != transport:
            dev.transport = transport
            self._urgent.add(device_id)
        period = dev.hb_s
        out = effective_hb(dev, hb_s, self.cfg, now_ms) if hb_s is not None or dev.hb_s is None else []
        return self._track(dev, out + on_alive(dev, now_ms, seq, "activity", channel), dev.hb_s != period)

    def set_offline(self, device_id: str, now_ms: int, reason: str) -> list[Change]:
        dev = self.devices.get(device_id)
        if dev is None:
            return []
        return self._track(dev, _set(dev, "offline", reason, now_ms))

    def refresh(self, dev: Device) -> None:
        """A device was changed outside the input methods (the gateway's own entry at start): count it, arm its
        deadline and write it at the next flush."""
        self._urgent.add(dev.id)
        self._count(dev)
        self._arm(dev)

    def _track(self, dev: Device, changes: list[Change], rearm: bool = False) -> list[Change]:
        """After an input: count and re-arm ``dev`` if it changed (or ``rearm``: its period changed). A plain
        sign of life only moves its deadline later, which the heap entry it has tolerates (see ``_arm``)."""
        if changes or rearm or dev.id not in self._queued:
            for c in changes:
                if c.old != c.new or c.what in URGENT:
                    self._urgent.add(dev.id)
                    break
            self._count(dev)
            self._arm(dev)
        for fn in self._watchers:
            fn(dev)
        return self._emit(changes)

    def _arm(self, dev: Device) -> None:
        """Make sure the heap holds an entry for ``dev`` no later than its next deadline (later inputs that
        move the deadline on leave the entry as it is: ``tick`` re-checks it when it comes due)."""
        due = next_due(dev, self.cfg)
        if due is None:
            return
        q = self._queued.get(dev.id)
        if q is None or due < q:
            self._queued[dev.id] = due
            heapq.heappush(self._heap, (due, dev.id))

    def tick(self, now_ms: int) -> list[Change]:
        """Apply heartbeat deadlines: only the devices whose heap entry is due, at most TICK_BATCH of them."""
        out: list[Change] = []
        heap, queued, devices, cfg = self._heap, self._queued, self.devices, self.cfg
        n = 0
        while heap and heap[0][0] <= now_ms and n < TICK_BATCH:
            due, did = heapq.heappop(heap)
            if queued.get(did) != due:
                continue  # superseded by an earlier entry, already handled
            n += 1
            del queued[did]
            dev = devices.get(did)
            if dev is None:
                continue
            ch = on_tick(dev, cfg, now_ms)
            if ch:
                self._urgent.add(did)
                self._count(dev)
                out += ch
            self._arm(dev)
        return self._emit(out)

    def rebase(self, now_ms: int) -> None:
        """Re-arm live deadlines from ``now`` (after a gateway restart or a broker outage): O(devices), but only
        on a (re)connect. The heap keeps its entries; each is re-checked and re-armed when it comes due."""
        for dev in self.devices.values():
            if dev.live:
                dev.armed_ms = now_ms
                self._lazy.add(dev.id)
