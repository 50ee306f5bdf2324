"""The command path: every command is authenticated, de-duplicated and answered before and after it runs.

Theory of operation, in order, for each payload arriving on ``lookout/v1/<site>/<id>/cmd``:

1. decode (protocols.messages): malformed -> ``rejected`` code ``bad_message`` when an id can be read, else the
   payload is dropped and counted (no id, nothing to answer);
2. redelivery: an id already in the recent-command cache *with the same counter* is authenticated (MAC, target)
   and answered again with the result it already got; it is never executed twice (QoS 1 redelivery, a gateway
   retry after a lost result);
3. ``signing.check_command``: MAC, target device, counter above the last accepted one, not expired ->
   ``rejected`` with the check's code (``bad_mac``, ``wrong_device``, ``replay``, ``expired``);
4. the counter and the id are written to flash *before* the handler runs, so a crash mid-command cannot make a
   replayed copy acceptable after reboot; unknown commands and bad arguments -> ``rejected``
   (``unknown_command``, ``bad_args`` or the handler's own code) and cached like any result;
5. ``accepted`` is sent, the handler runs as its own task (a 10-minute broadcast must not block the next
   command, least of all ``stop``), and ``done`` (with the handler's data) or ``failed`` (with a code) follows.

Rare commands (schedules, clip download, key rotation, config changes, reboot) are registered with ``lazy``:
their module is imported only when the first such command has passed step 3, so its code is not in the heap of
a node that never gets one (the import happens after verification: nothing unauthenticated loads code).

Results are signed with the device key (purpose ``res``) and handed to ``publish(msg)``, which puts them in the
outbox, so they survive an outage. Handlers raise ``Rejected`` or ``Failed``; anything else becomes ``failed``
(``rejected`` when it escapes a check) with code ``error`` and is counted by the supervisor's error figure.

The counter fails closed. ``cmdstate.json`` is sealed (hal.seal: a SHA-256 check in front of the JSON) and
written through FileStore (old or new at every step, FAT included). A missing file is a fresh node (counter 0);
a file that is there but does not check is a *lost* state: the counter is unknown, so every command is refused
with ``state_lost`` after its MAC, target and expiry checks, and the heartbeat reports ``state_lost`` with
``nonce``, a random challenge drawn at this boot. Only a signed ``resync`` whose ``args.nonce`` is that challenge
is accepted: its own ``ctr`` becomes the last accepted counter (the gateway's counters only grow), and the state
is written again. A captured ``resync`` cannot be replayed later: the next loss draws another challenge. Nothing
is written while lost, so a reboot stays lost.
"""

import json

from protocols import messages, signing
from protocols.errors import AuthError, MessageError
from lookout_node.hal import seal, unseal

# The last 24 command ids are remembered (persisted in cmdstate.json): covers any plausible redelivery window.


class Rejected(Exception):
    """Refuse a command before it runs (bad arguments, quiet hours, busy...); raised as it runs: failed."""

    def __init__(self, code, detail=None, data=None):
        super().__init__(detail or code)
        self.code = code
        self.detail = detail
        self.data = data


class Failed(Rejected):
    """A command that was accepted but could not be completed; ``data`` says how far it got."""


def _nonce():
    """16 hex chars from the board's random source (os.urandom; MicroPython's ``random`` is seeded from the
    hardware RNG on ESP32)."""
    try:
        from os import urandom

        b = urandom(8)
    except ImportError:
        import random

        b = bytes([random.getrandbits(8) for _ in range(8)])
    return b.hex()


def safe_id(s):
    """[A-Za-z0-9._-]{1,48}: a command id (and, without a leading dot, a clip or schedule id)."""
    if type(s) is not str or not 0 < len(s) <= 48:
        return False
    for c in s:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "._-"):
            return False
    return True


def is_safe_clip_id(s):
    """Same rule as protocols.cliptransfer.is_safe_clip_id: [A-Za-z0-9_.-]{1,48}, no leading dot."""
    return safe_id(s) and s[0] != "."


def int_arg(args, name, default, lo, hi):
    v = args.get(name, default)
    if type(v) is not int or not lo <= v <= hi:  # type(): a bool is not a volume
        raise Rejected("bad_args", "%s: expected an integer %d..%d, got %r" % (name, lo, hi, v))
    return v


def load(name):
    """Import ``lookout_node.<name>`` (a module loaded on first use) and return it."""
    return getattr(__import__("lookout_node." + name), name)


def trim(s, n=200):
    """At most ``n`` printable characters: what goes into a result's ``detail`` or the heartbeat's ``err``."""
    return "".join(c if " " <= c != "\x7f" else " " for c in str(s)[:n]) or "?"


class CommandProcessor:
    def __init__(self, device_id, key, fs, clock, publish, spawn=None, on_error=None):
        self.device_id = device_id
        self.key = key
        self.fs = fs
        self.clock = clock  # -> Unix ms or None
        self.publish = publish  # (signed result dict) -> None
        self.spawn = spawn
        self.on_error = on_error  # (where, exception) -> None
        self.handlers = {}  # name -> (run, check, progress, after), or the loader of a lazy command
        self.last_ctr = 0
        self.recent = []  # [id, ctr, status, code, detail, data], oldest first; persisted
        self.seq = 0
        self.dropped = 0  # payloads with no readable id
        self.running = {}  # id -> task
        self.lost = None  # while the state file is unreadable: this boot's challenge (16 hex) for ``resync``
        raw = fs.read("cmdstate.json")
        if raw is not None:  # missing: a fresh node, counter 0
            try:
                d = json.loads(unseal(raw))
                self.last_ctr = int(d["ctr"])
                self.recent = [list(e) for e in d["recent"]][-24:]
            except (ValueError, TypeError, KeyError, AttributeError):  # fail closed: refuse until a resync
                self.last_ctr = 0
                self.recent = []
                self.lost = _nonce()
        self.register("resync", self._resync)

    def register(self, name, run, check=None, progress=False, after=None):
        """``check(args, cmd)`` (sync) returns normalised args or raises Rejected; ``await run(args, cmd)``
        returns result data (dict) or None, or raises Failed. ``run(args, cmd, progress)`` when the handler wants
        to report progress: ``progress(data)`` sends an extra ``accepted`` result carrying ``data`` (e.g. the
        moment playback actually starts). ``after(args, cmd)`` (sync) runs once a ``done`` result has been signed
        and queued (key rotation: the result must still carry the old key's MAC)."""
        self.handlers[name] = (run, check, progress, after)

    def lazy(self, names, load):
        """Commands whose handlers live in a module loaded on first use: ``load(proc)`` imports it and
        ``register``s them (replacing this entry)."""
        for n in names:
            self.handlers[n] = load

    def _find(self, cid):
        for e in self.recent:
            if e[0] == cid:
                return e
        return None

    def _result(self, cid, status, code=None, detail=None, data=None):
        self.seq += 1
        ts = self.clock()
        if ts is not None and ts < messages.MS_MIN:
            ts = None
        msg = messages.result(cid, status, ts=ts, code=code, detail=trim(detail) if detail else None,
                              data=data, seq=self.seq)
        signing.sign(self.key, "res", msg)
        self.publish(msg)
        return msg

    def _answer(self, cid, ctr, *res):
        """Remember (on flash) and send ``res`` = (status[, code, detail, data]) for command ``cid``."""
        if self.lost is None:  # while lost nothing is written: a reboot must find the state lost again
            self.recent = [e for e in self.recent if e[0] != cid][-23:] + [[cid, ctr] + list(res)]
            self.fs.write("cmdstate.json", seal(json.dumps({"ctr": self.last_ctr, "recent": self.recent}).encode()))
        self._result(cid, *res)

    async def _resync(self, args, cmd):
        """On a healthy node an ordinary command (it passed the counter check); see ``_take_resync``."""
        return {"ctr": self.last_ctr}

    def _take_resync(self, cmd, ctr):
        """A lost state: accept nothing but a ``resync`` echoing this boot's challenge; it sets the counter."""
        if cmd["name"] != "resync":
            raise AuthError("command state lost: commands are refused until the gateway sends resync",
                            field="ctr", code="state_lost")
        if cmd["args"].get("nonce") != self.lost:
            raise AuthError("resync nonce is not this boot's challenge (stale or replayed)", field="args.nonce",
                            code="bad_nonce")
        self.lost = None
        self.last_ctr = ctr
        self.recent = []
        self._answer(cmd["id"], ctr, "done", None, None, {"ctr": ctr})
        return "done"

    def _why(self, e, name):
        """(code, detail, data) of a handler's exception; an unexpected one is also counted as an error."""
        if isinstance(e, Rejected):
            return e.code, e.detail, e.data
        if self.on_error is not None:
            self.on_error("cmd:" + name, e)
        return "error", "%s: %s" % (type(e).__name__, e), None

    def receive(self, payload):
        """Handle one command payload; returns the status sent (or None when nothing could be answered)."""
        cid = None
        try:
            cmd = messages.decode("cmd", payload)
            cid = cmd["id"]
            seen = self._find(cid)
            if seen is not None and seen[1] == cmd["ctr"]:  # redelivery: authenticate the copy, answer again
                signing.check_command(self.key, cmd, self.device_id, seen[1] - 1, None)
                self._result(cid, *seen[2:])
                return seen[2]
            ctr = signing.check_command(self.key, cmd, self.device_id, self.last_ctr, self.clock())
            if self.lost is not None:
                return self._take_resync(cmd, ctr)
        except (MessageError, AuthError) as e:  # answered, not remembered: nothing was accepted
            if cid is None:
                try:  # best effort, so the sender learns why its command was refused
                    cid = json.loads(bytes(payload).decode()).get("id")
                except Exception:  # any garbage: no id to answer to
                    pass
                if not safe_id(cid):
                    self.dropped += 1
                    return None
            self._result(cid, "rejected", e.code, str(e))
            return "rejected"
        self.last_ctr = ctr
        name = cmd["name"]
        args = cmd["args"]
        h = self.handlers.get(name)
        try:
            if h is None:
                raise Rejected("unknown_command", "no command %r on this node" % name)
            if type(h) is not tuple:  # a lazy command, now authenticated: load its module
                h(self)
                h = self.handlers[name]
            if h[1] is not None:
                args = h[1](args, cmd)
        except Exception as e:
            self._answer(cid, ctr, "rejected", *self._why(e, name))
            return "rejected"
        self._answer(cid, ctr, "accepted")
        coro = self._run(cid, ctr, h, args, cmd)
        if self.spawn is None:
            return coro  # the caller awaits it (unit tests)
        self.running[cid] = self.spawn(coro)
        return "accepted"

    def finish(self, cid, status, code=None, detail=None, data=None):
        """Send and remember the final result of a command that ended outside its handler (a config change on
        trial is confirmed or rolled back after a restart)."""
        e = self._find(cid)
        self._answer(cid, e[1] if e else 0, status, code, detail, data)

    async def _run(self, cid, ctr, h, args, cmd):
        run, _, progress, after = h
        try:
            if progress:
                data = await run(args, cmd, lambda d: self._result(cid, "accepted", data=d))
            else:
                data = await run(args, cmd)
            res = ("done", None, None, data)
        except Exception as e:  # Failed, a late Rejected (pre-empted before it started), or a handler bug
            res = ("failed",) + self._why(e, cmd["name"])
        self.running.pop(cid, None)
        self._answer(cid, ctr, *res)
        if after is not None and res[0] == "done":
            after(args, cmd)
        return res[0]
