"""Node configuration: validation, persistence, and the try-then-keep-or-roll-back protocol for changes.

Theory of operation:
- ``validate(cfg)`` checks every known key (types, ranges; intervals especially: a bad heartbeat period is how a
  whole site goes falsely offline) and keeps unknown keys untouched, so a newer provisioning tool does not lose
  data on an older node. It returns a new dict with defaults filled in and raises ``ConfigError(field, ...)``.
- ``ConfigStore`` keeps ``config.json`` (the live file), ``config.bak.json`` (the last known-good one while a
  change is on trial) and ``config.trial.json`` (which command started the trial, how many boots it had).
- A change that touches how the node reaches the gateway (``CONNECTION_KEYS``) is put on trial: the new file is
  written, the app restarts with it, and ``commit()`` is called once the node is back on the broker. If it does
  not get there within ``trial_s`` seconds, or the node restarts ``MAX_TRIAL_BOOTS`` times while on trial (a
  crash loop), ``rollback()`` restores the backup. Other keys apply live.
"""

import json

from protocols import topics

CONNECTION_KEYS = ("id", "site", "key", "broker", "transport", "coap", "wifi")
MAX_TRIAL_BOOTS = 2
ROLES = ("speaker", "sensor", "camera")

DEFAULTS = {
    "transport": "mqtt", "hb_s": 30, "loc_s": 5, "quiet_hours": [22, 6], "tz_min": 480, "volume": 80,
    "trial_s": 120, "wdt_ms": 30000,
}
BROKER_DEFAULTS = {"port": 1883, "user": "", "password": "", "tls": False, "ca": "", "keepalive": 60}


class ConfigError(ValueError):
    def __init__(self, field, msg):
        super().__init__("%s: %s" % (field, msg))
        self.field = field
        self.msg = msg


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _int(d, k, lo, hi, field=None):
    v = d.get(k)
    if not _is_int(v) or not lo <= v <= hi:
        raise ConfigError(field or k, "%r: expected an integer %d..%d" % (v, lo, hi))
    return v


def _str(d, k, maxlen, field=None, empty=True):
    v = d.get(k)
    if not isinstance(v, str) or len(v) > maxlen or (not empty and not v):
        raise ConfigError(field or k, "%r: expected a string of %d..%d chars" % (v, 0 if empty else 1, maxlen))
    return v


def _dict(d, k, field=None):
    v = d.get(k)
    if not isinstance(v, dict):
        raise ConfigError(field or k, "expected an object, got %s" % type(v).__name__)
    return v


def _is_hex(s):
    for c in s:
        if not ("0" <= c <= "9" or "a" <= c <= "f" or "A" <= c <= "F"):
            return False
    return True


def validate(cfg):
    """Return a checked copy of ``cfg`` with defaults filled in; raise ConfigError naming the first bad key."""
    if not isinstance(cfg, dict):
        raise ConfigError("config", "expected a JSON object")
    c = dict(cfg)
    for k in DEFAULTS:
        if k not in c:
            v = DEFAULTS[k]
            c[k] = list(v) if isinstance(v, list) else v
    for k in ("id", "site"):
        if not topics.is_valid_id(c.get(k)):
            raise ConfigError(k, "%r: expected 1-32 chars of [a-z0-9_-]" % (c.get(k),))
    if c.get("role") not in ROLES:
        raise ConfigError("role", "%r: expected one of %s" % (c.get("role"), ", ".join(ROLES)))
    key = c.get("key")
    if not isinstance(key, str) or len(key) != 64 or not _is_hex(key):
        raise ConfigError("key", "expected 64 hex characters (a 32-byte HMAC key)")
    if c["transport"] not in ("mqtt", "coap"):
        raise ConfigError("transport", "%r: expected mqtt or coap" % (c["transport"],))
    b = dict(BROKER_DEFAULTS)
    b.update(_dict(c, "broker"))
    _str(b, "host", 253, "broker.host", empty=False)
    _int(b, "port", 1, 65535, "broker.port")
    _str(b, "user", 64, "broker.user")
    _str(b, "password", 128, "broker.password")
    if not isinstance(b["tls"], bool):
        raise ConfigError("broker.tls", "expected true or false")
    _str(b, "ca", 64, "broker.ca")
    _int(b, "keepalive", 10, 1200, "broker.keepalive")
    c["broker"] = b
    if c["transport"] == "coap" or "coap" in c:
        co = _dict(c, "coap")
        _str(co, "host", 253, "coap.host", empty=False)
        if "port" in co:
            _int(co, "port", 1, 65535, "coap.port")
    _int(c, "hb_s", 5, 3600)
    _int(c, "loc_s", 1, 3600)
    _int(c, "tz_min", -720, 840)
    _int(c, "volume", 0, 100)
    _int(c, "trial_s", 5, 3600)
    _int(c, "wdt_ms", 5000, 120000)
    if "position" in c and c["position"] is not None:
        p = _dict(c, "position")
        _int(p, "lat", -900000000, 900000000, "position.lat")
        _int(p, "lon", -1800000000, 1800000000, "position.lon")
        if "alt_mm" in p:
            _int(p, "alt_mm", -1000000, 100000000, "position.alt_mm")
    if "wifi" in c:
        w = _dict(c, "wifi")
        _str(w, "ssid", 32, "wifi.ssid")
        _str(w, "password", 64, "wifi.password")
    q = c["quiet_hours"]
    if q is not None:
        if not isinstance(q, list) or len(q) not in (0, 2):
            raise ConfigError("quiet_hours", "expected [start_hour, end_hour] or []")
        for i, h in enumerate(q):
            if not _is_int(h) or not 0 <= h <= 23:
                raise ConfigError("quiet_hours[%d]" % i, "%r: expected an hour 0..23" % (h,))
    if "local_warning" in c:
        lw = _dict(c, "local_warning")
        if not isinstance(lw.get("enabled", False), bool):
            raise ConfigError("local_warning.enabled", "expected true or false")
        if lw.get("enabled") and not topics.is_valid_id(lw.get("clip")):
            raise ConfigError("local_warning.clip", "%r: expected a clip id" % (lw.get("clip"),))
    if "sensor" in c:
        s = _dict(c, "sensor")
        for k, lo, hi in (("debounce_ms", 0, 60000), ("min_interval_s", 0, 86400), ("sensitivity", 0, 100),
                          ("offline_after_s", 1, 86400)):
            if k in s:
                _int(s, k, lo, hi, "sensor." + k)
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


class ConfigStore:
    FILE = "config.json"
    BAK = "config.bak.json"
    TRIAL = "config.trial.json"

    def __init__(self, fs):
        self.fs = fs
        self.trial = None  # {"cmd": id|None, "boots": n} while a change is on trial
        self.rolled_back = None  # {"cmd": id, "reason": ...} after a rollback, until reported

    def _read_json(self, name):
        raw = self.fs.read(name)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return None

    def save(self, cfg):
        self.fs.write(self.FILE, json.dumps(cfg).encode())

    def boot(self):
        """Load the config at start-up, counting a boot on trial and rolling back a change that keeps failing."""
        self.trial = self._read_json(self.TRIAL)
        if self.trial is not None:
            self.trial["boots"] = self.trial.get("boots", 0) + 1
            if self.trial["boots"] > MAX_TRIAL_BOOTS:
                self.rollback("restarted %d times on the new config" % (self.trial["boots"] - 1))
            else:
                self.fs.write(self.TRIAL, json.dumps(self.trial).encode())
        try:
            return validate(self._read_json(self.FILE))
        except ConfigError:
            bak = self._read_json(self.BAK)
            if bak is None:
                raise
            self.rollback("config.json is invalid")
            return validate(bak)

    def begin_trial(self, old, new, cmd_id=None):
        self.fs.write(self.BAK, json.dumps(old).encode())
        self.trial = {"cmd": cmd_id, "boots": 0}
        self.fs.write(self.TRIAL, json.dumps(self.trial).encode())
        self.save(new)

    def commit(self):
        """The new config reached the broker: keep it."""
        t = self.trial
        self.trial = None
        self.fs.remove(self.TRIAL)
        self.fs.remove(self.BAK)
        return t

    def rollback(self, reason):
        bak = self.fs.read(self.BAK)
        cmd = self.trial.get("cmd") if self.trial else None
        if bak is not None:
            self.fs.write(self.FILE, bak)
        self.fs.remove(self.TRIAL)
        self.fs.remove(self.BAK)
        self.trial = None
        self.rolled_back = {"cmd": cmd, "reason": reason}
        self.fs.write("config.rollback.json", json.dumps(self.rolled_back).encode())
        return self.rolled_back

    def take_rollback_note(self):
        """The rollback to report (once) after the node is back online with the old config."""
        note = self.rolled_back or self._read_json("config.rollback.json")
        self.rolled_back = None
        self.fs.remove("config.rollback.json")
        return note
