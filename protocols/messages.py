"""JSON payloads of the MQTT (and CoAP) channels: schemas, strict validation, compact encoding.

Theory of operation: each message kind has a schema, a tuple of field specs. ``decode(kind, payload)`` checks the
size limit *before* parsing, parses JSON, then validates every field and rejects unknown ones (extension fields
must start with ``x_``). ``encode(kind, obj)`` validates the same way, then writes canonical JSON (sorted keys,
no spaces, no floats; see protocols/canonical.py), so what a node signs is what goes on the wire.

All numbers are integers in fixed units (degE7, mm, cm/s, centidegrees, mV, deci-°C): the same value encodes
the same way on an ESP32 (32-bit floats) and on the gateway. Times are Unix epoch milliseconds (UTC).
"""

import json

from protocols import canonical
from protocols.errors import LocalProtocolError, MessageError

MAX_PAYLOAD = 4096  # bytes, any JSON message; a clip chunk travels on up/dl, not here
MAX_STR = 200
MAX_ARGS = 16
MAX_LIST = 16
INT32 = 2147483647
MS_MAX = 2 ** 47  # Unix ms up to the year 6429: rejects seconds/µs mix-ups that overflow
MS_MIN = 1420070400000  # 2015-01-01: earlier timestamps mean a node without a clock

KINDS = ("speaker", "sensor", "camera", "drone", "recorder", "gateway", "operator")
SEVERITIES = ("info", "general", "serious", "critical")
STATUSES = ("accepted", "done", "failed", "rejected")
# Broadcast priorities (FIELD.md, PA practice): a higher number pre-empts a lower one; 3 overrides quiet hours.
PRIORITIES = {"background": 0, "normal": 1, "priority": 2, "emergency": 3}
LOC_SOURCES = ("gps", "fixed", "mavlink", "recorder", "manual")

# field spec: (name, type, required, a, b)
#   "int": a..b range; "str": max length a, b = char class ("id", "name", "text", "hex");
#   "enum": a = allowed values; "bool"; "ts": Unix ms; "dict": a = max keys; "list": a = max items, b = item class
REQ = True
OPT = False


def _F(name, typ, req, a=None, b=None):
    return (name, typ, req, a, b)


SCHEMAS = {
    "birth": (
        _F("online", "bool", REQ), _F("kind", "enum", REQ, KINDS), _F("bdseq", "int", REQ, 0, INT32),
        _F("fw", "str", REQ, 32, "text"), _F("ts", "ts", OPT), _F("hb_s", "int", REQ, 1, 86400),
        _F("caps", "list", OPT, MAX_LIST, "name"), _F("site", "str", OPT, 32, "id"),
    ),
    "death": (
        _F("online", "bool", REQ), _F("bdseq", "int", REQ, 0, INT32), _F("ts", "ts", OPT),
        _F("reason", "str", OPT, MAX_STR, "text"),
    ),
    "hb": (
        _F("seq", "int", REQ, 0, INT32), _F("ts", "ts", OPT), _F("up_s", "int", REQ, 0, INT32),
        _F("hb_s", "int", REQ, 1, 86400), _F("fw", "str", OPT, 32, "text"),
        _F("rssi", "int", OPT, -150, 0), _F("bat_mv", "int", OPT, 0, 60000), _F("bat_pct", "int", OPT, 0, 100),
        _F("temp_dc", "int", OPT, -600, 1500), _F("heap", "int", OPT, 0, INT32), _F("errs", "int", OPT, 0, INT32),
        _F("err", "str", OPT, MAX_STR, "text"), _F("outbox", "int", OPT, 0, INT32),
        _F("dropped", "int", OPT, 0, INT32), _F("state", "str", OPT, 24, "name"),
    ),
    "loc": (
        _F("seq", "int", REQ, 0, INT32), _F("ts", "ts", REQ),
        _F("lat", "int", REQ, -900000000, 900000000), _F("lon", "int", REQ, -1800000000, 1800000000),
        _F("alt_mm", "int", OPT, -1000000, 100000000), _F("spd_cms", "int", OPT, 0, 100000),
        _F("hdg_cd", "int", OPT, 0, 35999), _F("fix", "int", REQ, 0, 8), _F("sats", "int", OPT, 0, 99),
        _F("hdop", "int", OPT, 0, 9999), _F("src", "enum", REQ, LOC_SOURCES),
    ),
    "evt": (
        _F("id", "str", REQ, 48, "id"), _F("seq", "int", REQ, 0, INT32), _F("ts", "ts", REQ),
        _F("kind", "str", REQ, 24, "name"), _F("sev", "enum", REQ, SEVERITIES), _F("conf", "int", OPT, 0, 100),
        _F("lat", "int", OPT, -900000000, 900000000), _F("lon", "int", OPT, -1800000000, 1800000000),
        _F("zone", "str", OPT, 32, "id"), _F("evidence", "list", OPT, MAX_LIST, "ref"),
        _F("detail", "str", OPT, MAX_STR, "text"), _F("count", "int", OPT, 1, INT32), _F("mac", "str", OPT, 64, "hex"),
    ),
    "cmd": (
        _F("id", "str", REQ, 48, "id"), _F("to", "str", REQ, 32, "id"), _F("name", "str", REQ, 24, "name"),
        _F("args", "dict", REQ, MAX_ARGS), _F("ts", "ts", REQ), _F("exp", "ts", REQ),
        _F("prio", "int", REQ, 0, 3), _F("ctr", "int", REQ, 1, 2 ** 53), _F("op", "str", OPT, 32, "id"),
        _F("mac", "str", REQ, 64, "hex"),
    ),
    "res": (
        _F("id", "str", REQ, 48, "id"), _F("status", "enum", REQ, STATUSES), _F("ts", "ts", OPT),
        _F("seq", "int", OPT, 0, INT32), _F("code", "str", OPT, 24, "name"),
        _F("detail", "str", OPT, MAX_STR, "text"), _F("data", "dict", OPT, MAX_ARGS),
        _F("mac", "str", OPT, 64, "hex"),
    ),
}


def _idchar(c):
    return "a" <= c <= "z" or "0" <= c <= "9" or c == "-" or c == "_"


def _check_chars(value, cls):
    if cls == "id":  # command/event ids may use upper case and dots too
        for c in value:
            if not (_idchar(c) or "A" <= c <= "Z" or c == "."):
                return "chars of [A-Za-z0-9._-]"
        return None
    if cls == "name":
        for c in value:
            if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "_"):
                return "chars of [a-z0-9_]"
        return None
    if cls == "hex":
        for c in value:
            if not ("0" <= c <= "9" or "a" <= c <= "f"):
                return "lower-case hex"
        return None
    if cls == "ref":  # evidence reference: "sha256:<64 hex>" or a clip/transfer id
        if value.startswith("sha256:"):
            h = value[7:]
            if len(h) != 64 or _check_chars(h, "hex"):
                return "sha256:<64 lower-case hex>"
            return None
        return _check_chars(value, "id")
    # "text": printable, no control characters
    for c in value:
        if ord(c) < 0x20 or c == "\x7f":
            return "no control characters"
    return None


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _check_value(v, typ, a, b, name):
    if typ == "int" or typ == "ts":
        if not _is_int(v):
            raise MessageError("must be an integer, got %s" % type(v).__name__, field=name)
        lo, hi = (MS_MIN, MS_MAX) if typ == "ts" else (a, b)
        if not lo <= v <= hi:
            raise MessageError("%d out of range %d..%d" % (v, lo, hi), field=name)
    elif typ == "str":
        if not isinstance(v, str):
            raise MessageError("must be a string, got %s" % type(v).__name__, field=name)
        if not v or len(v) > a:
            raise MessageError("length %d, expected 1..%d" % (len(v), a), field=name)
        bad = _check_chars(v, b)
        if bad:
            raise MessageError("%r: expected %s" % (v, bad), field=name)
    elif typ == "enum":
        if v not in a or not isinstance(v, str):
            raise MessageError("%r not one of %s" % (v, ", ".join(a)), field=name)
    elif typ == "bool":
        if not isinstance(v, bool):
            raise MessageError("must be true or false, got %s" % type(v).__name__, field=name)
    elif typ == "dict":
        if not isinstance(v, dict):
            raise MessageError("must be an object, got %s" % type(v).__name__, field=name)
        if len(v) > a:
            raise MessageError("%d keys, limit %d" % (len(v), a), field=name)
        for k in v:
            bad = _check_chars(k, "name") if k else "a non-empty key"
            if bad or len(k) > 24:
                raise MessageError("key %r: expected 1..24 %s" % (k, bad or "chars"), field=name)
            _check_arg(v[k], name + "." + k)
    elif typ == "list":
        if not isinstance(v, list):
            raise MessageError("must be a list, got %s" % type(v).__name__, field=name)
        if len(v) > a:
            raise MessageError("%d items, limit %d" % (len(v), a), field=name)
        for i, item in enumerate(v):
            _check_value(item, "str", 80, b, "%s[%d]" % (name, i))


def _check_arg(v, name):
    """Command args and result data: scalars, or a short list of scalars. No floats, no nesting."""
    if v is None or isinstance(v, bool) or _is_int(v):
        return
    if isinstance(v, str):
        if len(v) > MAX_STR * 2:
            raise MessageError("string of %d chars, limit %d" % (len(v), MAX_STR * 2), field=name)
        return
    if isinstance(v, list):
        if len(v) > MAX_LIST:
            raise MessageError("%d items, limit %d" % (len(v), MAX_LIST), field=name)
        for i, item in enumerate(v):
            if isinstance(item, (list, dict)):
                raise MessageError("nested containers are not allowed", field="%s[%d]" % (name, i))
            _check_arg(item, "%s[%d]" % (name, i))
        return
    if isinstance(v, float):
        raise MessageError("floats are not allowed; use a scaled integer", field=name)
    raise MessageError("unsupported value of type %s" % type(v).__name__, field=name)


def validate(kind, obj, err=MessageError):
    """Check ``obj`` against the schema of ``kind``; raise ``err`` naming the first bad field."""
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise LocalProtocolError("unknown message kind %r" % (kind,))
    if not isinstance(obj, dict):
        raise err("%s message must be a JSON object, got %s" % (kind, type(obj).__name__))
    try:
        known = set()
        for name, typ, req, a, b in schema:
            known.add(name)
            if name not in obj or obj[name] is None:
                if req:
                    raise MessageError("required field missing from %s message" % kind, field=name)
                continue
            _check_value(obj[name], typ, a, b, name)
        for k in obj:
            if k not in known and not (isinstance(k, str) and k.startswith("x_")):
                raise MessageError("unknown field in %s message (extensions must start with x_)" % kind, field=k)
        if kind == "birth" and obj["online"] is not True:
            raise MessageError("birth must have online=true", field="online")
        if kind == "death" and obj["online"] is not False:
            raise MessageError("death must have online=false", field="online")
        if kind == "cmd" and obj["exp"] < obj["ts"]:
            raise MessageError("expires before it was issued", field="exp")
        if kind == "loc" and obj["fix"] == 0:
            raise MessageError("a location report needs a fix (fix=0 means no position)", field="fix")
    except MessageError as e:
        if err is MessageError:
            raise
        raise err(e.msg, field=e.field)
    return obj


def decode(kind, payload):
    """Bytes off the wire -> validated dict. Raises MessageError only."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise LocalProtocolError("payload must be bytes")
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise MessageError("payload is %d bytes, limit %d" % (n, MAX_PAYLOAD), field="payload")
    if n == 0:
        raise MessageError("empty payload", field="payload")
    try:
        text = bytes(payload).decode()
    except Exception:
        raise MessageError("payload is not valid UTF-8", field="payload")
    try:
        obj = json.loads(text)
    except (ValueError, TypeError, RuntimeError, IndexError, KeyError) as e:
        raise MessageError("not valid JSON (%s)" % (e.__class__.__name__,), field="payload")
    return validate(kind, obj)


def encode(kind, obj):
    """Validated dict -> canonical JSON bytes. Invalid content is the caller's bug: LocalProtocolError."""
    validate(kind, obj, err=LocalProtocolError)
    data = canonical.dumpb(obj)
    if len(data) > MAX_PAYLOAD:
        raise LocalProtocolError("%s message is %d bytes, limit %d" % (kind, len(data), MAX_PAYLOAD))
    return data


# -- constructors: keep the field names in one place -------------------------------------------------------

def birth(kind, bdseq, fw, hb_s, ts=None, caps=None, site=None):
    m = {"online": True, "kind": kind, "bdseq": bdseq, "fw": fw, "hb_s": hb_s}
    if ts is not None:
        m["ts"] = ts
    if caps:
        m["caps"] = list(caps)
    if site:
        m["site"] = site
    return m


def death(bdseq, reason=None):
    m = {"online": False, "bdseq": bdseq}
    if reason:
        m["reason"] = reason
    return m


def command(cmd_id, to, name, args, ts, exp, prio, ctr, op=None):
    m = {"id": cmd_id, "to": to, "name": name, "args": args, "ts": ts, "exp": exp, "prio": prio, "ctr": ctr}
    if op:
        m["op"] = op
    return m


def result(cmd_id, status, ts=None, detail=None, code=None, data=None, seq=None):
    m = {"id": cmd_id, "status": status}
    for k, v in (("ts", ts), ("detail", detail), ("code", code), ("data", data), ("seq", seq)):
        if v is not None:
            m[k] = v
    return m


def is_final(status):
    return status in ("done", "failed", "rejected")
