"""Topic schema: ``lookout/v1/<site>/<device>/<channel>[/<sub>]``.

Theory of operation: the device id always sits at level 3 so a broker ACL can confine a device to
``lookout/v1/+/%u/...`` (Mosquitto's ``pattern`` lines substitute the MQTT username for ``%u``; we make the
username equal to the device id). Operators are addressed the same way: the operator id takes the device level
on the ``opreq``/``opres`` channels, so an operator's login confines it to its own request/response topics.

Channels and directions are listed in ``CHANNELS``; docs/PROTOCOL.md has the full table.
"""

from protocols.errors import LocalProtocolError, TopicError

PREFIX = "lookout"
VERSION = "v1"
ROOT = PREFIX + "/" + VERSION

# channel -> (direction, retained, qos); direction "up" = device to gateway, "down" = gateway to device
CHANNELS = {
    "state": ("up", True, 1),  # birth/death (last will), retained
    "hb": ("up", False, 0),  # heartbeat
    "loc": ("up", False, 0),  # location
    "evt": ("up", False, 1),  # events (detections, alarms)
    "res": ("up", False, 1),  # command results
    "up": ("up", False, 1),  # clip upload (manifest/chunks), sub-level: transfer id
    "cmd": ("down", False, 1),  # commands
    "dl": ("down", False, 1),  # clip download to a node, sub-level: transfer id
    "opreq": ("up", False, 1),  # operator -> gateway requests (device level = operator id)
    "opres": ("down", False, 1),  # gateway -> operator responses
    "registry": ("down", True, 1),  # gateway's retained device table (device level = gateway id)
}

MAX_ID_LEN = 32
MAX_TOPIC_LEN = 160
_ID_EXTRA = "-_"


def is_valid_id(s):
    """Site, device, operator and transfer ids: 1-32 of [a-z0-9_-], starting with a letter or digit.

    Lower case only because ids become MQTT usernames, file names and ACL patterns.
    """
    if not isinstance(s, str) or not 0 < len(s) <= MAX_ID_LEN:
        return False
    for i, c in enumerate(s):
        if "a" <= c <= "z" or "0" <= c <= "9":
            continue
        if i > 0 and c in _ID_EXTRA:
            continue
        return False
    return True


def _check_id(value, what):
    if not is_valid_id(value):
        raise LocalProtocolError("invalid %s id %r: expected 1-%d chars of [a-z0-9_-], first a letter or digit"
                                 % (what, value, MAX_ID_LEN), field=what)


def topic(site, device, channel, sub=None):
    """Build a topic; raises LocalProtocolError on an id or channel the schema does not allow."""
    _check_id(site, "site")
    _check_id(device, "device")
    if channel not in CHANNELS:
        raise LocalProtocolError("unknown channel %r" % (channel,), field="channel")
    t = ROOT + "/" + site + "/" + device + "/" + channel
    if sub is not None:
        _check_id(sub, "sub")
        t += "/" + sub
    return t


def parse(t):
    """Split a received topic into ``(site, device, channel, sub_or_None)``; raises TopicError."""
    if isinstance(t, (bytes, bytearray)):
        try:
            t = bytes(t).decode()
        except Exception:
            raise TopicError("topic is not valid UTF-8", field="topic")
    if not isinstance(t, str):
        raise TopicError("topic must be text, got %s" % type(t).__name__, field="topic")
    if len(t) > MAX_TOPIC_LEN:
        raise TopicError("topic is %d chars, limit %d" % (len(t), MAX_TOPIC_LEN), field="topic")
    parts = t.split("/")
    if len(parts) not in (5, 6):
        raise TopicError("expected %s/<site>/<device>/<channel>[/<sub>], got %d levels" % (ROOT, len(parts)),
                         field="topic")
    if parts[0] != PREFIX:
        raise TopicError("prefix %r, expected %r" % (parts[0], PREFIX), field="topic")
    if parts[1] != VERSION:
        raise TopicError("version %r, expected %r" % (parts[1], VERSION), field="topic")
    if not is_valid_id(parts[2]):
        raise TopicError("invalid site id %r" % parts[2], field="site")
    if not is_valid_id(parts[3]):
        raise TopicError("invalid device id %r" % parts[3], field="device")
    if parts[4] not in CHANNELS:
        raise TopicError("unknown channel %r" % parts[4], field="channel")
    sub = None
    if len(parts) == 6:
        if not is_valid_id(parts[5]):
            raise TopicError("invalid sub-level %r" % parts[5], field="sub")
        sub = parts[5]
    return parts[2], parts[3], parts[4], sub


def device_filter(site="+", device="+", channel="#"):
    """A subscription filter; ``+`` and ``#`` pass through unvalidated."""
    for v, what in ((site, "site"), (device, "device")):
        if v != "+":
            _check_id(v, what)
    if channel not in ("+", "#") and channel not in CHANNELS:
        raise LocalProtocolError("unknown channel %r" % (channel,), field="channel")
    return ROOT + "/" + site + "/" + device + "/" + channel


def retained(channel):
    return CHANNELS[channel][1]


def qos(channel):
    return CHANNELS[channel][2]
