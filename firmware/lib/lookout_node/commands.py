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

Results are signed with the device key (purpose ``res``) and handed to ``publish(msg)``, which puts them in the
outbox, so they survive an outage. Handlers raise ``Rejected`` or ``Failed``; anything else becomes ``failed``
with code ``error`` and is counted by the supervisor's error figure (``errors``/``last_error``).
"""

import json

from protocols import messages, signing
from protocols.errors import AuthError, MessageError

CACHE_SIZE = 24  # recent command ids remembered (persisted): covers any plausible redelivery window
STATE_FILE = "cmdstate.json"


class Rejected(Exception):
    """Refuse a command before it runs (bad arguments, quiet hours, busy...)."""

    def __init__(self, code, detail=None):
        super().__init__(detail or code)
        self.code = code
        self.detail = detail


class Failed(Exception):
    """A command that was accepted but could not be completed."""

    def __init__(self, code, detail=None, data=None):
        super().__init__(detail or code)
        self.code = code
        self.detail = detail
        self.data = data


def _salvage_id(payload):
    """Best-effort id of an invalid command, so the sender learns why it was refused."""
    try:
        obj = json.loads(bytes(payload).decode())
        cid = obj.get("id")
    except Exception:  # any garbage: no id to answer to
        return None
    if isinstance(cid, str) and 0 < len(cid) <= 48:
        for c in cid:
            if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in "._-"):
                return None
        return cid
    return None


def _trim(text, n=200):
    text = str(text)
    out = []
    for c in text[:n]:
        out.append(c if " " <= c and c != "\x7f" else " ")
    return "".join(out) or "?"


class CommandProcessor:
    def __init__(self, device_id, key, fs, clock, publish, spawn=None, on_error=None):
        self.device_id = device_id
        self.key = key
        self.fs = fs
        self.clock = clock  # -> Unix ms or None
        self.publish = publish  # (signed result dict) -> None
        self.spawn = spawn
        self.on_error = on_error  # (where, exception) -> None
        self.handlers = {}
        self.last_ctr = 0
        self.recent = []  # [id, ctr, status, code, detail, data], oldest first
        self.seq = 0
        self.dropped = 0  # payloads with no readable id
        self.running = {}  # id -> task
        self._load()

    # ---- persistence --------------------------------------------------------------------------------------
    def _load(self):
        raw = self.fs.read(STATE_FILE) if self.fs is not None else None
        if not raw:
            return
        try:
            d = json.loads(raw)
            self.last_ctr = int(d.get("ctr", 0))
            self.recent = [list(e) for e in d.get("recent", [])][-CACHE_SIZE:]
        except (ValueError, TypeError, AttributeError):
            pass  # corrupt: keep 0 -> the gateway's counter is far above; only replays of old ids pass MAC

    def _save(self):
        if self.fs is not None:
            self.fs.write(STATE_FILE, json.dumps({"ctr": self.last_ctr, "recent": self.recent}).encode())

    def _find(self, cid):
        for e in self.recent:
            if e[0] == cid:
                return e
        return None

    def _remember(self, cid, ctr, status, code=None, detail=None, data=None):
        e = self._find(cid)
        if e is None:
            e = [cid, ctr, status, code, detail, data]
            self.recent.append(e)
            if len(self.recent) > CACHE_SIZE:
                self.recent.pop(0)
        else:
            e[2], e[3], e[4], e[5] = status, code, detail, data
        self._save()

    # ---- handlers -----------------------------------------------------------------------------------------
    def register(self, name, run, check=None, progress=False, after=None):
        """``check(args, cmd)`` (sync) returns normalised args or raises Rejected; ``await run(args, cmd)``
        returns result data (dict) or None, or raises Failed. ``run(args, cmd, progress)`` when the handler wants
        to report progress: ``progress(data)`` sends an extra ``accepted`` result carrying ``data`` (e.g. the
        moment playback actually starts). ``after(args, cmd)`` (sync) runs once a ``done`` result has been signed
        and queued (key rotation: the result must still carry the old key's MAC)."""
        self.handlers[name] = (run, check, progress, after)

    # ---- results ------------------------------------------------------------------------------------------
    def _result(self, cid, status, code=None, detail=None, data=None):
        self.seq += 1
        ts = self.clock()
        if ts is not None and ts < messages.MS_MIN:
            ts = None
        msg = messages.result(cid, status, ts=ts, code=code, detail=_trim(detail) if detail else None,
                              data=data, seq=self.seq)
        signing.sign(self.key, "res", msg)
        self.publish(msg)
        return msg

    # ---- the path -----------------------------------------------------------------------------------------
    def receive(self, payload):
        """Handle one command payload; returns the status sent (or None when nothing could be answered)."""
        try:
            cmd = messages.decode("cmd", payload)
        except MessageError as e:
            cid = _salvage_id(payload)
            if cid is None:
                self.dropped += 1
                return None
            self._result(cid, "rejected", code="bad_message", detail=str(e))
            return "rejected"
        cid = cmd["id"]
        seen = self._find(cid)
        if seen is not None and seen[1] == cmd["ctr"]:
            try:  # authenticate the copy: a forged "redelivery" learns nothing
                signing.check_command(self.key, cmd, self.device_id, cmd["ctr"] - 1, None)
            except AuthError as e:
                self._result(cid, "rejected", code=e.code, detail=str(e))
                return "rejected"
            self._result(cid, seen[2], code=seen[3], detail=seen[4], data=seen[5])
            return seen[2]
        try:
            ctr = signing.check_command(self.key, cmd, self.device_id, self.last_ctr, self.clock())
        except AuthError as e:
            self._result(cid, "rejected", code=e.code, detail=str(e))
            return "rejected"
        self.last_ctr = ctr
        h = self.handlers.get(cmd["name"])
        if h is None:
            self._remember(cid, ctr, "rejected", "unknown_command", "no command %r on this node" % cmd["name"])
            self._result(cid, "rejected", code="unknown_command", detail="no command %r on this node" % cmd["name"])
            return "rejected"
        run, check, wants_progress, after = h
        args = cmd["args"]
        try:
            if check is not None:
                args = check(args, cmd)
        except Rejected as e:
            self._remember(cid, ctr, "rejected", e.code, e.detail)
            self._result(cid, "rejected", code=e.code, detail=e.detail)
            return "rejected"
        self._remember(cid, ctr, "accepted")
        self._result(cid, "accepted")
        coro = self._run(cid, ctr, run, args, cmd, wants_progress, after)
        if self.spawn is None:
            return coro  # the caller awaits it (unit tests)
        self.running[cid] = self.spawn(coro)
        return "accepted"

    def finish(self, cid, status, code=None, detail=None, data=None):
        """Send and remember the final result of a command that ended outside its handler (a config change on
        trial is confirmed or rolled back after a restart)."""
        e = self._find(cid)
        self._remember(cid, e[1] if e else 0, status, code, detail, data)
        self._result(cid, status, code=code, detail=detail, data=data)

    async def _run(self, cid, ctr, run, args, cmd, wants_progress=False, after=None):
        try:
            if wants_progress:
                data = await run(args, cmd, lambda d: self._result(cid, "accepted", data=d))
            else:
                data = await run(args, cmd)
            status, code, detail = "done", None, None
        except Failed as e:
            status, code, detail, data = "failed", e.code, e.detail, e.data
        except Rejected as e:  # a late refusal (e.g. pre-empted before it started)
            status, code, detail, data = "failed", e.code, e.detail, None
        except Exception as e:  # noqa: BLE001 - a handler bug must still answer the operator
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            status, code, detail, data = "failed", "error", "%s: %s" % (type(e).__name__, e), None
            if self.on_error is not None:
                self.on_error("cmd:" + cmd["name"], e)
        self.running.pop(cid, None)
        self._remember(cid, ctr, status, code, detail, data)
        self._result(cid, status, code=code, detail=detail, data=data)
        if after is not None and status == "done":
            after(args, cmd)
        return status
