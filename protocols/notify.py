"""Incident notifications for people (village cadres' phone apps): ``lookout/v1/<site>/<contact-id>/notify``.

Theory of operation: the gateway publishes one JSON object per notification, QoS 1, retained, so a phone that
connects later still finds the latest state of the incident it was called to (an update with ``state:
"closed"`` replaces it). ``encode`` validates and writes canonical JSON; ``decode`` checks the size before
parsing, then every field, and rejects unknown fields (extensions start with ``x_``), exactly as the node
messages do (protocols/messages.py; same schema letters). docs/PROTOCOL.md §16 is the contract.

Sans-IO and MicroPython-compatible (a handheld could subscribe too): json only.
"""

import json

from . import canonical
from .errors import LocalProtocolError, MessageError
from .messages import _check

MAX_PAYLOAD = 2048
STATES = "open/warned/dispatched/on_scene/closed"
# fields in checking order; letters as in messages.SCHEMAS (upper case = required)
SCHEMA = ("id,S,48,i incident,S,48,i site,S,32,i state,E," + STATES + " ts,T kind,S,24,n"
          " sev,E,info/general/serious/critical lat,i,-900000000,900000000 lon,i,-1800000000,1800000000"
          " zone,s,32,i rule,s,32,i text,S,200,t")


def validate(obj, err=MessageError):
    """Check a notification object; raise ``err`` naming the first bad field."""
    if not isinstance(obj, dict):
        raise err("notification must be a JSON object, got %s" % type(obj).__name__)
    names = []
    try:
        for s in SCHEMA.split():
            f, t, a, b = (s + ",,").split(",")[:4]
            names.append(f)
            if obj.get(f) is not None:
                _check(obj[f], t.lower(), a, b, f)
            elif t < "a":
                raise MessageError("required field missing from notification", field=f)
        for k in obj:
            if k not in names and not (isinstance(k, str) and k.startswith("x_")):
                raise MessageError("unknown field in notification (extensions must start with x_)", field=k)
    except MessageError as e:
        if err is MessageError:
            raise
        raise err(e.msg, field=e.field)
    return obj


def encode(obj):
    """Validated dict -> canonical JSON bytes; invalid content is the caller's bug (LocalProtocolError)."""
    validate(obj, LocalProtocolError)
    data = canonical.dumpb(obj)
    if len(data) > MAX_PAYLOAD:
        raise LocalProtocolError("notification is %d bytes, limit %d" % (len(data), MAX_PAYLOAD))
    return data


def decode(payload):
    """Bytes off the wire -> validated dict. Raises MessageError only."""
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise MessageError("payload is %d bytes, limit %d" % (n, MAX_PAYLOAD), field="payload")
    if n == 0:
        raise MessageError("empty payload", field="payload")
    try:
        obj = json.loads(bytes(payload).decode())
    except (ValueError, TypeError, RuntimeError, IndexError, KeyError) as e:
        raise MessageError("not valid UTF-8 JSON (%s)" % (e.__class__.__name__,), field="payload")
    return validate(obj)


def notification(nid, incident, site, state, ts, kind, sev, text, lat=None, lon=None, zone=None, rule=None):
    m = {"id": nid, "incident": incident, "site": site, "state": state, "ts": ts, "kind": kind, "sev": sev,
         "text": text}
    for k, v in (("lat", lat), ("lon", lon), ("zone", zone), ("rule", rule)):
        if v is not None:
            m[k] = v
    return m
