"""Full node-config validation, merging and the trial decision: what ``set_config`` and ``lookout firmware flash``
need, loaded on first use (``config.validate``/``merge``/``needs_trial``/``check_identity`` resolve here through
config.py's module ``__getattr__``) so it is not resident on a node that never gets a config change.

``validate(cfg)`` checks every known key (types, ranges; intervals especially: a bad heartbeat period is how a
whole site goes falsely offline) and keeps unknown keys untouched, so a newer provisioning tool does not lose
data on an older node. It returns a new dict with defaults filled in and raises ``ConfigError(field, ...)``
naming the first bad key, its value and the rule.
"""

from protocols import topics


class ConfigError(ValueError):
    """A config key that a node cannot run with; ``field`` names it (``broker.port``), ``msg`` says why."""

    def __init__(self, field, msg):
        super().__init__("%s: %s" % (field, msg))
        self.field = field
        self.msg = msg

ROLES = ("speaker", "sensor", "camera")
DEFAULTS = {
    "transport": "mqtt", "hb_s": 30, "loc_s": 5, "quiet_hours": [22, 6], "tz_min": 480, "volume": 80,
    "trial_s": 120, "wdt_ms": 30000,
}
BROKER_DEFAULTS = {"port": 1883, "user": "", "password": "", "tls": False, "ca": "", "keepalive": 60}

# keys whose change could cut the node off the gateway: such a change goes on trial (config.ConfigStore)
CONNECTION_KEYS = ("id", "site", "key", "broker", "transport", "coap", "wifi", "gateway")


def check_identity(cfg):
    """A copy of ``cfg`` with defaults filled in, after checking what a node cannot start without (id, site,
    role, key, transport, broker object); raises ConfigError naming the first bad key."""
    if not isinstance(cfg, dict):
        raise ConfigError("config", "expected a JSON object")
    c = dict(cfg)
    for k, v in DEFAULTS.items():
        if k not in c:
            c[k] = list(v) if isinstance(v, list) else v
    for k in ("id", "site"):
        if not topics.is_valid_id(c.get(k)):
            raise ConfigError(k, "%r: expected 1-32 chars of [a-z0-9_-]" % (c.get(k),))
    if c.get("role") not in ROLES:
        raise ConfigError("role", "%r: expected one of %s" % (c.get("role"), ", ".join(ROLES)))
    key = c.get("key")
    try:
        ok = len(key) == 64 and len(bytes.fromhex(key)) == 32  # fromhex: ValueError on a non-hex digit
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError("key", "expected 64 hex characters (a 32-byte HMAC key)")
    if c["transport"] not in ("mqtt", "coap"):
        raise ConfigError("transport", "%r: expected mqtt or coap" % (c["transport"],))
    b = c.get("broker")
    if not isinstance(b, dict):
        raise ConfigError("broker", "expected an object, got %s" % type(b).__name__)
    c["broker"] = dict(BROKER_DEFAULTS)
    c["broker"].update(b)
    return c


def _int(v, lo, hi, field):
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ConfigError(field, "%r: expected an integer %d..%d" % (v, lo, hi))


def _str(v, maxlen, field, empty=True):
    if not isinstance(v, str) or len(v) > maxlen or (not empty and not v):
        raise ConfigError(field, "%r: expected a string of %d..%d chars" % (v, 0 if empty else 1, maxlen))


def _dict(d, k):
    v = d.get(k)
    if not isinstance(v, dict):
        raise ConfigError(k, "expected an object, got %s" % type(v).__name__)
    return v


def _bool(v, field):
    if not isinstance(v, bool):
        raise ConfigError(field, "expected true or false")


def validate(cfg):
    """Return a checked copy of ``cfg`` with defaults filled in; raise ConfigError naming the first bad key."""
    c = check_identity(cfg)  # object, defaults, id, site, role, key, transport, broker object
    b = c["broker"]
    _str(b.get("host"), 253, "broker.host", empty=False)
    _int(b["port"], 1, 65535, "broker.port")
    _str(b["user"], 64, "broker.user")
    _str(b["password"], 128, "broker.password")
    _bool(b["tls"], "broker.tls")
    _str(b["ca"], 64, "broker.ca")
    _int(b["keepalive"], 10, 1200, "broker.keepalive")
    if c["transport"] == "coap" or "coap" in c:
        co = _dict(c, "coap")
        _str(co.get("host"), 253, "coap.host", empty=False)
        if "port" in co:
            _int(co["port"], 1, 65535, "coap.port")
    for k, lo, hi in (("hb_s", 5, 3600), ("loc_s", 1, 3600), ("tz_min", -720, 840), ("volume", 0, 100),
                      ("trial_s", 5, 3600), ("wdt_ms", 5000, 120000)):
        _int(c[k], lo, hi, k)
    if c.get("gateway") is not None and not topics.is_valid_id(c["gateway"]):
        raise ConfigError("gateway", "%r: expected the gateway's id (1-32 chars of [a-z0-9_-])" % (c["gateway"],))
    if c.get("position") is not None:
        p = _dict(c, "position")
        _int(p.get("lat"), -900000000, 900000000, "position.lat")
        _int(p.get("lon"), -1800000000, 1800000000, "position.lon")
        if "alt_mm" in p:
            _int(p["alt_mm"], -1000000, 100000000, "position.alt_mm")
    if "wifi" in c:
        w = _dict(c, "wifi")
        _str(w.get("ssid"), 32, "wifi.ssid")
        _str(w.get("password"), 64, "wifi.password")
    q = c["quiet_hours"]
    if q is not None:
        if not isinstance(q, list) or len(q) not in (0, 2):
            raise ConfigError("quiet_hours", "expected [start_hour, end_hour] or []")
        for i, h in enumerate(q):
            if not isinstance(h, int) or isinstance(h, bool) or not 0 <= h <= 23:
                raise ConfigError("quiet_hours[%d]" % i, "%r: expected an hour 0..23" % (h,))
    if "local_warning" in c:
        lw = _dict(c, "local_warning")
        _bool(lw.get("enabled", False), "local_warning.enabled")
        if lw.get("enabled") and not topics.is_valid_id(lw.get("clip")):
            raise ConfigError("local_warning.clip", "%r: expected a clip id" % (lw.get("clip"),))
    if "sensor" in c:
        s = _dict(c, "sensor")
        for k, lo, hi in (("debounce_ms", 0, 60000), ("min_interval_s", 0, 86400), ("sensitivity", 0, 100),
                          ("offline_after_s", 1, 86400)):
            if k in s:
                _int(s[k], lo, hi, "sensor." + k)
    return c


def needs_trial(old, new):
    """True when the change could cut the node off the gateway (so it must prove itself)."""
    for k in CONNECTION_KEYS:
        if old.get(k) != new.get(k):
            return True
    return False


def merge(base, patch):
    """Shallow-merge ``patch`` into a copy of ``base``; nested objects (broker, position...) merge one level."""
    out = dict(base)
    for k in patch:
        v = patch[k]
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            d = dict(out[k])
            d.update(v)
            out[k] = d
        else:
            out[k] = v
    return out
