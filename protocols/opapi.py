"""Operator API over MQTT: requests on ``.../<operator-id>/opreq``, responses on ``.../<operator-id>/opres``.

Theory of operation: an operator tool (the ``lookout`` CLI, a console on another machine) publishes one JSON
request per action; the gateway answers with one JSON response carrying the same ``id``. A request names its
``op`` and carries the operator's ``token`` (checked against the gateway's key store; the broker login already
confined the operator to its own two topics). ``decode_request`` validates the envelope and the op's arguments and
raises ``OpAPIError`` naming the field; the gateway turns that into a response with ``code = "bad_request"``.

Response codes (``code``; docs/PROTOCOL.md §9):
``ok``, ``queued`` (target offline, command stored until its next birth), ``partial`` (group: some devices did
not succeed), ``bad_request``, ``unauthorized``, ``unknown_device``, ``offline`` (target offline and the request
asked not to queue: refused), ``failed`` (device answered failed/rejected), ``timeout`` (no final result within
``wait_s``; the command is still tracked), ``expired``, ``internal``.

Sans-IO and MicroPython-compatible (a handheld console may run it): json only, no time, no I/O.
"""

import json

from .errors import MessageError

MAX_REQUEST = 4096
# clip_put carries one piece of an audio clip (base64) per request. 8 KiB of audio per request (10,924 base64
# chars) needs a larger envelope than the 4 KiB every other op fits in: 256 requests for the 2 MiB node clip
# limit instead of ~700 at 3 KiB, and still far below the broker's 256 KiB max_packet_size. The larger limit
# applies to clip_put only; every other op is held to MAX_REQUEST after parsing.
MAX_CLIP_PUT_REQUEST = 12288
CLIP_PUT_MAX_DATA = 8192  # raw bytes per clip_put piece
CLIP_PUT_MAX_SIZE = 2 * 1024 * 1024  # = defaults.CLIP_MAX_SIZE_NODE: a clip no loudspeaker could store is refused
MAX_RESPONSE = 262144
# ``devices`` answers in pages (id order, ``after`` = the last id of the previous page): at ~400 bytes a device, one
# response of a whole site passed MAX_RESPONSE at ~640 devices and the client dropped it. A page of ``devices`` or
# ``journal`` holds at most ``limit`` items and at most PAGE_SHARE sixteenths of MAX_RESPONSE of JSON (the rest
# is envelope slack); the gateway cuts it shorter and says ``more``.
DEVICES_PAGE = 500
DEVICES_PAGE_MAX = 5000
PAGE_SHARE = 15

OPS = ("devices", "broadcast", "stop", "command", "locate", "journal", "clips", "status", "clip_put",
       "incidents", "incident", "coverage")  # the last three: linkage (gateway/linkage/)
INCIDENT_STATES = ("open", "warned", "dispatched", "on_scene", "closed")
INCIDENT_ACTIONS = ("show", "ack", "dispatch", "close")
WAITS = ("none", "accepted", "final")
CODES = ("ok", "queued", "partial", "bad_request", "unauthorized", "unknown_device", "offline", "failed",
         "timeout", "expired", "internal", "busy")
PRIORITY_NAMES = ("background", "normal", "priority", "emergency")
DEVICE_STATES = ("unknown", "online", "stale", "offline")
CLIP_ACTIONS = ("list", "distribute", "progress", "evidence", "custody")
CUSTODY_ACCESS = ("none", "view", "download")  # clips custody: what the operator does with the file
JOURNAL_KINDS = ("alert", "command", "result", "state", "operator", "security", "system", "custody", "admin")


class OpAPIError(MessageError):
    code = "bad_request"


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _idlike(s, extra=""):
    if not isinstance(s, str) or not 0 < len(s) <= 48:
        return False
    for c in s:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c in "-_" or c in extra):
            return False
    return True


def _int(a, key, lo, hi, default=None):
    v = a.get(key, default)
    if v is None:
        return None
    if not _is_int(v) or not lo <= v <= hi:
        raise OpAPIError("expected integer %d..%d, got %r" % (lo, hi, v), field="args." + key)
    a[key] = v
    return v


def _id(a, key, required=True, extra=""):
    v = a.get(key)
    if v is None:
        if required:
            raise OpAPIError("required", field="args." + key)
        return None
    if not _idlike(v, extra):
        raise OpAPIError("expected an id of [a-z0-9_-], got %r" % (v,), field="args." + key)
    return v


def _enum(a, key, allowed, default=None):
    v = a.get(key, default)
    if v is None:
        return None
    if v not in allowed:
        raise OpAPIError("%r not one of %s" % (v, ", ".join(allowed)), field="args." + key)
    a[key] = v
    return v


def _is_sha256(h):
    if not isinstance(h, str) or len(h) != 64:
        return False
    for c in h:
        if c not in "0123456789abcdef":
            return False
    return True


def _bool(a, key, default):
    v = a.get(key, default)
    if not isinstance(v, bool):
        raise OpAPIError("expected true or false, got %r" % (v,), field="args." + key)
    a[key] = v
    return v


def _prio(a):
    v = a.get("priority", "normal")
    if isinstance(v, str):
        if v not in PRIORITY_NAMES:
            raise OpAPIError("%r not one of %s or 0..3" % (v, ", ".join(PRIORITY_NAMES)), field="args.priority")
        v = PRIORITY_NAMES.index(v)
    if not _is_int(v) or not 0 <= v <= 3:
        raise OpAPIError("expected 0..3 or a priority name, got %r" % (v,), field="args.priority")
    a["priority"] = v


def _delivery(a):
    """Common to every command-like op: queue when offline, how long to wait, time to live."""
    _bool(a, "queue", True)
    _enum(a, "wait", WAITS, "final")
    _int(a, "wait_s", 0, 3600)
    _int(a, "ttl_s", 1, 7 * 86400)


def _check_cmd_args(v):
    if not isinstance(v, dict) or len(v) > 16:
        raise OpAPIError("expected an object of at most 16 keys", field="args.args")
    for k in v:
        if not _idlike(k) or "-" in k:
            raise OpAPIError("key %r: expected [a-z0-9_]" % (k,), field="args.args")
        x = v[k]
        if isinstance(x, (float, dict, list)):
            raise OpAPIError("value of %r: scalars only (int, str, bool, null)" % (k,), field="args.args")


def validate_args(op, a):
    """Check and normalise (defaults filled in) the arguments of ``op``; returns ``a``."""
    if op == "devices":
        _enum(a, "kind", ("speaker", "sensor", "camera", "drone", "recorder", "gateway"))
        _id(a, "site", False)
        _enum(a, "state", DEVICE_STATES)
        _id(a, "after", False)
        _int(a, "limit", 1, DEVICES_PAGE_MAX, DEVICES_PAGE)
    elif op == "broadcast":
        _id(a, "to")
        _id(a, "clip", True, ".")
        _int(a, "repeat", 1, 20, 1)
        _int(a, "volume", 0, 100)
        _prio(a)
        _delivery(a)
    elif op == "stop":
        _id(a, "to")
        _prio(a)
        _delivery(a)
    elif op == "command":
        _id(a, "to")
        name = a.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= 24 or not _idlike(name) or "-" in name:
            raise OpAPIError("expected a command name of [a-z0-9_], got %r" % (name,), field="args.name")
        if "args" not in a:
            a["args"] = {}
        _check_cmd_args(a["args"])
        _prio(a)
        _delivery(a)
    elif op == "locate":
        _id(a, "device")
    elif op == "journal":
        _bool(a, "verify", False)
        _int(a, "from", 0, 2 ** 47)
        _int(a, "to", 0, 2 ** 47)
        _int(a, "after", 0, 2 ** 53, 0)
        _int(a, "limit", 1, 5000, 200)
        _id(a, "device", False)
        _enum(a, "kind", JOURNAL_KINDS)
        _id(a, "operator", False, ":.")  # admin tools journal as admin:<OS user>
        _bool(a, "desc", False)
        _int(a, "before", 1, 2 ** 53)
    elif op == "clips":
        _enum(a, "action", CLIP_ACTIONS, "list")
        if a["action"] == "distribute":
            _id(a, "to")
            _id(a, "clip", True, ".")
            _prio(a)
            _delivery(a)
        elif a["action"] == "progress":
            if _int(a, "dist", 0, 0xFFFFFFFF) is None:
                raise OpAPIError("required: the distribution id", field="args.dist")
        elif a["action"] == "evidence":
            _int(a, "limit", 1, 1000, 100)
            h = a.get("sha256")
            if h is not None and not _is_sha256(h):
                raise OpAPIError("expected 64 lower-case hex digits", field="args.sha256")
        elif a["action"] == "custody":
            if not _is_sha256(a.get("sha256")):
                raise OpAPIError("required: 64 lower-case hex digits", field="args.sha256")
            _enum(a, "access", CUSTODY_ACCESS, "none")
    elif op == "clip_put":
        _id(a, "clip", True, ".")
        if _int(a, "size", 1, CLIP_PUT_MAX_SIZE) is None:
            raise OpAPIError("required", field="args.size")
        if not _is_sha256(a.get("sha256")):
            raise OpAPIError("expected 64 lower-case hex digits", field="args.sha256")
        if _int(a, "chunk", 64, CLIP_PUT_MAX_DATA) is None:
            raise OpAPIError("required", field="args.chunk")
        if _int(a, "index", 0, CLIP_PUT_MAX_SIZE // 64) is None:
            raise OpAPIError("required", field="args.index")
        d = a.get("data")
        if not isinstance(d, str) or not 0 < len(d) <= (CLIP_PUT_MAX_DATA + 2) // 3 * 4 or len(d) % 4:
            raise OpAPIError("expected base64 of 1..%d bytes" % CLIP_PUT_MAX_DATA, field="args.data")
    elif op == "status":
        pass
    elif op in ("incidents", "incident", "coverage"):
        _linkage_args(op, a)
    else:
        raise OpAPIError("unknown op %r (expected one of %s)" % (op, ", ".join(OPS)), field="op")
    return a


def _linkage_args(op, a):
    if op == "incidents":
        _enum(a, "state", INCIDENT_STATES + ("active", "all"), "active")
        _int(a, "limit", 1, 500, 50)
    elif op == "coverage":
        _int(a, "cutoff_s", 60, 4 * 3600)
    else:
        _enum(a, "action", INCIDENT_ACTIONS)
        if a.get("action") is None:
            raise OpAPIError("required: one of " + ", ".join(INCIDENT_ACTIONS), field="args.action")
        _id(a, "incident")
        if a["action"] == "dispatch":
            _id(a, "to")
            _enum(a, "drone", ("goto", "orbit"))
        w = a.get("why")
        if w is not None and (not isinstance(w, str) or not 0 < len(w) <= 200):
            raise OpAPIError("expected 1-200 characters", field="args.why")


def request(req_id, op, token, args=None):
    return {"id": req_id, "op": op, "token": token, "args": args or {}}


def encode_request(req):
    """Validated request -> JSON bytes (the caller's copy of ``args`` is normalised in place)."""
    validate_request(req)
    return json.dumps(req).encode()


def validate_request(req):
    if not isinstance(req, dict):
        raise OpAPIError("request must be a JSON object", field="request")
    for k in req:
        if k not in ("id", "op", "token", "args"):
            raise OpAPIError("unknown field", field=k)
    rid = req.get("id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 48 or not _idlike(rid, ".ABCDEFGHIJKLMNOPQRSTUVWXYZ"):
        raise OpAPIError("expected 1-48 chars of [A-Za-z0-9._-], got %r" % (rid,), field="id")
    tok = req.get("token")
    if not isinstance(tok, str) or not 0 < len(tok) <= 128:
        raise OpAPIError("required: the operator's token (1-128 chars)", field="token")
    op = req.get("op")
    if op not in OPS:
        raise OpAPIError("unknown op %r (expected one of %s)" % (op, ", ".join(OPS)), field="op")
    a = req.get("args")
    if a is None:
        a = {}
        req["args"] = a
    if not isinstance(a, dict):
        raise OpAPIError("expected an object", field="args")
    validate_args(op, a)
    return req


def decode_request(payload):
    if len(payload) > MAX_CLIP_PUT_REQUEST:
        raise OpAPIError("request is %d bytes, limit %d" % (len(payload), MAX_CLIP_PUT_REQUEST), field="payload")
    try:
        req = json.loads(bytes(payload).decode())
    except Exception:  # noqa: BLE001 - MicroPython's json and decode raise assorted types
        raise OpAPIError("not valid UTF-8 JSON", field="payload")
    if len(payload) > MAX_REQUEST and not (isinstance(req, dict) and req.get("op") == "clip_put"):
        raise OpAPIError("request is %d bytes, limit %d" % (len(payload), MAX_REQUEST), field="payload")
    return validate_request(req)


def peek_id(payload):
    """Best-effort request id of an invalid request, so the error response can still be matched."""
    try:
        rid = json.loads(bytes(payload).decode()).get("id")
    except Exception:  # noqa: BLE001 - any garbage: no id (MicroPython's json raises assorted types)
        return None
    return rid if isinstance(rid, str) and len(rid) <= 48 else None


def response(req_id, code, data=None, error=None):
    if code not in CODES:
        raise ValueError("unknown response code %r" % (code,))
    r = {"id": req_id, "ok": code in ("ok", "queued"), "code": code}
    if data is not None:
        r["data"] = data
    if error:
        r["error"] = error
    return r


def page_bytes():
    """The JSON budget of the items of one page (read at call time: tests lower MAX_RESPONSE)."""
    return MAX_RESPONSE * PAGE_SHARE // 16


def encode_response(resp):
    return json.dumps(resp, separators=(",", ":")).encode()


def decode_response(payload):
    if len(payload) > MAX_RESPONSE:
        raise OpAPIError("response is %d bytes, limit %d" % (len(payload), MAX_RESPONSE), field="payload")
    try:
        r = json.loads(bytes(payload).decode())
    except Exception:  # noqa: BLE001 - MicroPython's json and decode raise assorted types
        raise OpAPIError("not valid UTF-8 JSON", field="payload")
    if not isinstance(r, dict) or not isinstance(r.get("id"), (str, type(None))) or r.get("code") not in CODES:
        raise OpAPIError("not an operator response", field="payload")
    return r
