"""JSON payloads of the MQTT (and CoAP) channels: schemas, strict validation, compact encoding.

Theory of operation: each message kind has a schema (``SCHEMAS``). ``decode(kind, payload)`` checks the
size limit *before* parsing, parses JSON, then validates every field and rejects unknown ones (extension
fields must start with ``x_``). ``encode(kind, obj)`` validates the same way, then writes canonical JSON
(sorted keys, no spaces, no floats; see protocols/canonical.py), so what a node signs goes on the wire.

All numbers are integers in fixed units (degE7, mm, cm/s, centidegrees, mV, deci-°C): the same value encodes
the same way on an ESP32 (32-bit floats) and on the gateway. Times are Unix epoch milliseconds (UTC).

Why the schemas are strings: this module is resident on every node. Tables of tuples built at import cost
about 2 KB of heap on MicroPython; one constant string per kind costs its bytes, and a validation splits it
(short-lived garbage) only while it runs. The gateway, which validates every message of a site, keeps each
kind's parsed schema instead (``_fields``); a node does not (``CACHE_SCHEMAS``).
"""

import json
import sys

from . import canonical
from .errors import LocalProtocolError, MessageError

MAX_PAYLOAD = 4096  # bytes, any JSON message; a clip chunk travels on up/dl, not here
MS_MAX = 2 ** 47  # Unix ms up to the year 6429: rejects seconds/µs mix-ups that overflow
MS_MIN = 1420070400000  # 2015-01-01: earlier timestamps mean a node without a clock

# A schema is the fields in checking order, separated by spaces; a field is "name,type[,a[,b]]".
# Type letter, upper case when the field is required:
#   i  integer a..b (default 0..2147483647)      t  timestamp, Unix ms MS_MIN..MS_MAX
#   s  string of 1..a chars of class b            e  one of the "/"-separated values a
#   b  true/false                                  d  object of <= a keys: command args / result data
#   l  list of <= a strings (1..80 chars of class b)
# Character classes: i id [A-Za-z0-9._-], n name [a-z0-9_], h lower-case hex, t text (no control characters),
# r evidence reference ("sha256:<64 hex>" or an id).
# Broadcast priorities ``prio`` (PA paging practice): 0 background, 1 normal, 2 priority, 3 emergency; a
# higher number pre-empts a lower one and 3 overrides quiet hours. 2147483647 = INT32 max; 2**53 = JSON's
# largest exact integer.
SCHEMAS = {
    "birth": "online,B kind,E,speaker/sensor/camera/drone/recorder/gateway/operator bdseq,I fw,S,32,t ts,t"
             " hb_s,I,1,86400 caps,l,16,n site,s,32,i mac,s,64,h",
    "death": "online,B bdseq,I ts,t reason,s,200,t mac,s,64,h",
    "hb": "seq,I ts,t up_s,I hb_s,I,1,86400 fw,s,32,t rssi,i,-150,0 bat_mv,i,0,60000 bat_pct,i,0,100"
          " temp_dc,i,-600,1500 heap,i errs,i err,s,200,t outbox,i dropped,i state,s,24,n nonce,s,16,h",
    "loc": "seq,I ts,T lat,I,-900000000,900000000 lon,I,-1800000000,1800000000 alt_mm,i,-1000000,100000000"
           " spd_cms,i,0,100000 hdg_cd,i,0,35999 fix,I,1,8 sats,i,0,99 hdop,i,0,9999"
           " src,E,gps/fixed/mavlink/recorder/manual",
    "evt": "id,S,48,i seq,I ts,T kind,S,24,n sev,E,info/general/serious/critical conf,i,0,100"
           " lat,i,-900000000,900000000 lon,i,-1800000000,1800000000 zone,s,32,i evidence,l,16,r"
           " detail,s,200,t count,i,1,2147483647 mac,s,64,h",
    "cmd": "id,S,48,i to,S,32,i name,S,24,n args,D,16 ts,T exp,T prio,I,0,3 ctr,I,1,9007199254740992"
           " op,s,32,i mac,S,64,h",
    "res": "id,S,48,i status,E,accepted/done/failed/rejected ts,t seq,i code,s,24,n detail,s,200,t data,d,16"
           " mac,s,64,h",
}
# id chars; names are the tail from "_", lower-case hex the last 16
_ID = "ABCDEFGHIJKLMNOPQRSTUVWXYZ.-_ghijklmnopqrstuvwxyz0123456789abcdef"


def _chars(v, c):
    """None when every character of ``v`` is of class ``c``, else the rule it breaks."""
    if c == "r":
        if v[:7] != "sha256:":
            c = "i"
        elif len(v) != 71 or _chars(v[7:], "h"):
            return "sha256:<64 lower-case hex>"
        else:
            return None
    ok = _ID if c == "i" else _ID[28:] if c == "n" else _ID[-16:]
    for ch in v:
        if (ch < " " or ch == "\x7f") if c == "t" else ch not in ok:
            return ("no control characters", "chars of [A-Za-z0-9._-]", "chars of [a-z0-9_]",
                    "lower-case hex")["tinh".index(c)]
    return None


def _check(v, t, a, b, f):
    """Check the value ``v`` of field ``f`` against type letter ``t`` and its ``a``, ``b`` (strings, see
    SCHEMAS); raise MessageError naming the field, the value and the rule. ``t`` "a" is one command argument
    or result datum: a scalar (no floats: a scaled integer), or if ``a`` a list of <= 16 scalars."""
    e = None
    if t == "a":
        if isinstance(v, list) and a:
            e = len(v) > 16 and "%d items, limit 16" % len(v)
            if not e:
                for i, x in enumerate(v):
                    _check(x, "a", 0, 0, "%s[%d]" % (f, i))
        elif isinstance(v, str):
            e = len(v) > 400 and "string of %d chars, limit 400" % len(v)
        elif isinstance(v, float):
            e = "floats are not allowed; use a scaled integer"
        elif not (v is None or isinstance(v, (bool, int))):
            e = ("unsupported value of type " + type(v).__name__ if a or not isinstance(v, (list, dict))
                 else "nested containers are not allowed")
    else:
        n = "itsebdl".index(t)
        if not isinstance(v, (int, int, str, object, bool, dict, list)[n]) or n < 2 and isinstance(v, bool):
            e = "must be %s, got %s" % (("an integer", "an integer", "a string", "", "true or false",
                                         "an object", "a list")[n], type(v).__name__)
        elif n < 2:
            lo, hi = (int(a or 0), int(b or 2147483647)) if n == 0 else (MS_MIN, MS_MAX)
            e = not lo <= v <= hi and "%d out of range %d..%d" % (v, lo, hi)
        elif n == 2:
            e = not v or len(v) > int(a)
            if e:
                e = "length %d, expected 1..%s" % (len(v), a)
            else:
                e = _chars(v, b)
                e = e and "%r: expected %s" % (v, e)
        elif n == 3:
            e = v not in a.split("/") and "%r not one of %s" % (v, a.replace("/", ", "))
        elif n > 4:
            e = len(v) > int(a) and "%d %s, limit %s" % (len(v), "keys" if n == 5 else "items", a)
            for i, k in enumerate(() if e else v):
                if n == 6:  # list of strings
                    _check(k, "s", "80", b, "%s[%d]" % (f, i))
                    continue
                e = (_chars(k, "n") if k else "a non-empty key") if isinstance(k, str) else "a string key"
                if e or len(k) > 24:
                    e = "key %r: expected 1..24 %s" % (k, e or "chars")
                    break
                _check(v[k], "a", 1, 0, f + "." + k)
    if e:
        raise MessageError(e, field=f)


# kind -> ((field, type letter, a, b, required), ...), {field: None}: SCHEMAS parsed once per kind. Not on
# MicroPython: the tables would be long-lived objects made after boot, scattered over a node's heap (about 9 KB
# more held after 100 commands, and a 4 KB clip chunk no longer fitting; docs/FIRMWARE.md "Smallest heap")
CACHE_SCHEMAS = sys.implementation.name != "micropython"
_FIELDS = {}  # type: dict


def _fields(kind):
    """The parsed schema of ``kind``, made on first use (a node parses only the kinds it decodes; the gateway
    spent a third of its per-message work splitting these strings again for every message)."""
    r = _FIELDS.get(kind)
    if r is None:
        spec = SCHEMAS.get(kind)
        if spec is None:
            raise LocalProtocolError("unknown message kind %r" % (kind,))
        fs = []
        for s in spec.split():
            f, t, a, b = (s + ",,").split(",")[:4]
            lt = t.lower()
            # the range of an integer or time field, for validate's fast path (what _check's else-branch uses)
            lo, hi = (int(a or 0), int(b or 2147483647)) if lt == "i" else (MS_MIN, MS_MAX) if lt == "t" \
                else (None, None)
            fs.append((f, lt, a, b, t < "a", lo, hi))
        r = (tuple(fs), {x[0]: None for x in fs})
        if CACHE_SCHEMAS:
            _FIELDS[kind] = r
    return r


def validate(kind, obj, err=MessageError):
    """Check ``obj`` against the schema of ``kind``; raise ``err`` naming the first bad field."""
    fields, names = _fields(kind)
    if not isinstance(obj, dict):
        raise err("%s message must be a JSON object, got %s" % (kind, type(obj).__name__))
    try:
        for f, t, a, b, required, lo, hi in fields:
            v = obj.get(f)
            if v is not None:
                if lo is None or type(v) is not int or not lo <= v <= hi:  # not an in-range int: the full check
                    _check(v, t, a, b, f)
            elif required:
                raise MessageError("required field missing from %s message" % kind, field=f)
        for k in obj:
            if k not in names and not (isinstance(k, str) and k.startswith("x_")):
                raise MessageError("unknown field in %s message (extensions must start with x_)" % kind,
                                   field=k)
        if kind in ("birth", "death") and obj["online"] is not (kind == "birth"):
            raise MessageError("must be %s in a %s message" % ("true" if kind == "birth" else "false", kind),
                               field="online")
        if kind == "cmd" and obj["exp"] < obj["ts"]:
            raise MessageError("expires before it was issued", field="exp")
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
    try:  # invalid UTF-8 raises UnicodeError, a ValueError (CPython and MicroPython)
        obj = json.loads(bytes(payload).decode())
    except (ValueError, TypeError, RuntimeError, IndexError, KeyError) as e:
        raise MessageError("not valid UTF-8 JSON (%s)" % (e.__class__.__name__,), field="payload")
    return validate(kind, obj)


def encode(kind, obj):
    """Validated dict -> canonical JSON bytes. Invalid content is the caller's bug: LocalProtocolError."""
    validate(kind, obj, err=LocalProtocolError)
    data = canonical.dumpb(obj)
    if len(data) > MAX_PAYLOAD:
        raise LocalProtocolError("%s message is %d bytes, limit %d" % (kind, len(data), MAX_PAYLOAD))
    return data


# -- constructors: keep the field names in one place; optional fields that are None (or empty) are left out --

def _opt(m, **kw):
    for k, v in kw.items():
        if v is not None:
            m[k] = v
    return m


def birth(kind, bdseq, fw, hb_s, ts=None, caps=None, site=None):
    return _opt({"online": True, "kind": kind, "bdseq": bdseq, "fw": fw, "hb_s": hb_s}, ts=ts,
                caps=list(caps) if caps else None, site=site or None)


def death(bdseq, reason=None):
    return _opt({"online": False, "bdseq": bdseq}, reason=reason or None)


def command(cmd_id, to, name, args, ts, exp, prio, ctr, op=None):
    return _opt({"id": cmd_id, "to": to, "name": name, "args": args, "ts": ts, "exp": exp, "prio": prio,
                 "ctr": ctr}, op=op or None)


def result(cmd_id, status, ts=None, detail=None, code=None, data=None, seq=None):
    return _opt({"id": cmd_id, "status": status}, ts=ts, detail=detail, code=code, data=data, seq=seq)


def is_final(status):
    return status in ("done", "failed", "rejected")
