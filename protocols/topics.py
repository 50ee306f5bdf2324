"""Topic schema: ``lookout/v1/<site>/<device>/<channel>[/<sub>]``.

Theory of operation: the device id always sits at level 3 so a broker ACL can confine a device to
``lookout/v1/+/%u/...`` (Mosquitto's ``pattern`` lines substitute the MQTT username for ``%u``; we make the
username equal to the device id). Operators are addressed the same way: the operator id takes the device level
on the ``opreq``/``opres`` channels, so an operator's login confines it to its own request/response topics.

Channels and directions are listed in ``CHANNELS`` (a tuple of names; the comments there give the direction,
``retained()``/``qos()`` the publish flags); docs/PROTOCOL.md has the full table.
"""

from .errors import LocalProtocolError, TopicError

PREFIX = "lookout"
VERSION = "v1"
ROOT = PREFIX + "/" + VERSION

# up = device to gateway, down = gateway to device
CHANNELS = (
    "state",  # up: birth/death (last will), retained, QoS 1
    "hb",  # up: heartbeat, QoS 0
    "loc",  # up: location, QoS 0
    "evt",  # up: events (detections, alarms)
    "res",  # up: command results
    "up",  # up: clip upload (manifest/chunks), sub-level: transfer id
    "cmd",  # down: commands
    "dl",  # down: clip download to a node, sub-level: transfer id
    "opreq",  # up: operator -> gateway requests (device level = operator id)
    "opres",  # down: gateway -> operator responses
    "registry",  # down: gateway's retained device table (device level = gateway id), retained
    "notify",  # down: incident notification for a person (device level = contact id), retained (protocols/notify)
)  # all QoS 1 but hb and loc; retained: state and registry

MAX_ID_LEN = 32
MAX_TOPIC_LEN = 160
_ID_RULE = "1-32 chars of [a-z0-9_-], first a letter or digit"
_LEVELS = ("prefix", "version", "site", "device", "channel", "sub")


def is_valid_id(s):
    """Site, device, operator and transfer ids: 1-32 of [a-z0-9_-], starting with a letter or digit.

    Lower case only because ids become MQTT usernames, file names and ACL patterns.
    """
    if not isinstance(s, str) or not 0 < len(s) <= MAX_ID_LEN:
        return False
    for i, c in enumerate(s):
        if not ("a" <= c <= "z" or "0" <= c <= "9" or (i and c in "-_")):
            return False
    return True


def _check(site, device, channel, wild=None):
    """LocalProtocolError unless the ids are valid and the channel known (values in ``wild`` pass as they are)."""
    for v, what in ((site, "site"), (device, "device")):
        if (wild is None or v != wild) and not is_valid_id(v):
            raise LocalProtocolError("invalid %s id %r: expected %s" % (what, v, _ID_RULE), field=what)
    if channel not in CHANNELS and not (wild and channel in ("+", "#")):
        raise LocalProtocolError("unknown channel %r" % (channel,), field="channel")
    return ROOT + "/" + site + "/" + device + "/" + channel


def topic(site, device, channel, sub=None):
    """Build a topic; raises LocalProtocolError on an id or channel the schema does not allow."""
    t = _check(site, device, channel)
    if sub is None:
        return t
    if not is_valid_id(sub):
        raise LocalProtocolError("invalid sub id %r: expected %s" % (sub, _ID_RULE), field="sub")
    return t + "/" + sub


def parse(t):
    """Split a received topic into ``(site, device, channel, sub_or_None)``; raises TopicError."""
    if isinstance(t, (bytes, bytearray)):
        try:
            t = bytes(t).decode()
        except UnicodeError:
            raise TopicError("topic is not valid UTF-8", field="topic")
    if not isinstance(t, str):
        raise TopicError("topic must be text, got %s" % type(t).__name__, field="topic")
    if len(t) > MAX_TOPIC_LEN:
        raise TopicError("topic is %d chars, limit %d" % (len(t), MAX_TOPIC_LEN), field="topic")
    p = t.split("/")
    if len(p) not in (5, 6):
        raise TopicError("expected %s/<site>/<device>/<channel>[/<sub>], got %d levels" % (ROOT, len(p)),
                         field="topic")
    for i, v in enumerate(p):
        if i == 0:
            ok, want = v == PREFIX, PREFIX
        elif i == 1:
            ok, want = v == VERSION, VERSION
        elif i == 4:
            ok, want = v in CHANNELS, "a known channel"
        else:
            ok, want = is_valid_id(v), _ID_RULE
        if not ok:
            raise TopicError("%s %r: expected %s" % (_LEVELS[i], v, want), field="topic" if i < 2 else _LEVELS[i])
    return p[2], p[3], p[4], p[5] if len(p) == 6 else None


def device_filter(site="+", device="+", channel="#"):
    """A subscription filter; ``+`` and ``#`` pass through unvalidated."""
    return _check(site, device, channel, "+")


def retained(channel):
    return channel in ("state", "registry", "notify")


def qos(channel):
    return 0 if channel in ("hb", "loc") else 1
