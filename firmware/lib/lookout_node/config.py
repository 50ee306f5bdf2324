"""Node configuration: persistence, the boot check, and the try-then-keep-or-roll-back protocol for changes.

Theory of operation:
- ``ConfigStore`` keeps ``config.json`` (the live file), ``config.bak.json`` (the last known-good one while a
  change is on trial) and ``config.trial.json`` (which command started the trial, how many boots it had).
- A change that touches how the node reaches the gateway (``config_check.CONNECTION_KEYS``) is put on trial: the
  new file is written, the app restarts with it, and ``commit()`` is called once the node is back on the broker.
  If it does not get there within ``trial_s`` seconds, or the node restarts ``MAX_TRIAL_BOOTS`` times while on
  trial (a crash loop), ``rollback()`` restores the backup. Other keys apply live.
- ``validate(cfg)`` (full check of every known key: types, ranges, intervals especially, since a bad heartbeat
  period is how a whole site goes falsely offline; unknown keys kept), ``merge`` and ``needs_trial`` live in
  ``config_check``, imported on first use: a node needs them only when a ``set_config`` command arrives.
- At boot ``ConfigStore.boot()`` runs the full ``validate`` (a hand-copied file with ``hb_s: 2`` must not take a
  node to the field; an invalid file falls back to the backup) and then forgets ``config_check``: it is boot-time
  code, and keeping its bytecode in RAM for months to serve a rare ``set_config`` is the wrong trade, so that
  command imports it again. ``check_identity`` is the cheap structural check ``validate`` starts with.
"""

import json

from protocols import topics

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


def validate(cfg):
    """Return a checked copy of ``cfg`` with defaults filled in; raise ConfigError naming the first bad key."""
    from lookout_node import config_check

    return config_check.validate(cfg)


def forget_checker():
    """Drop ``config_check`` from the module table so its code can be collected (it is imported again on use)."""
    import sys

    sys.modules.pop("lookout_node.config_check", None)
    pkg = sys.modules.get("lookout_node")
    if pkg is not None and "config_check" in pkg.__dict__:
        delattr(pkg, "config_check")


def merge(base, patch):
    """Shallow-merge ``patch`` into a copy of ``base``; nested objects (broker, position...) merge one level."""
    from lookout_node import config_check

    return config_check.merge(base, patch)


def needs_trial(old, new):
    """True when the change could cut the node off the gateway (so it must prove itself)."""
    from lookout_node import config_check

    return config_check.needs_trial(old, new)


class ConfigStore:
    FILE = "config.json"
    BAK = "config.bak.json"
    TRIAL = "config.trial.json"
    NOTE = "config.rollback.json"

    def __init__(self, fs):
        self.fs = fs
        self.trial = None  # {"cmd": id|None, "boots": n} while a change is on trial
        self.rolled_back = None  # {"cmd": id, "reason": ...} after a rollback, until reported

    def _read_json(self, name):
        raw = self.fs.read(name)
        try:
            return json.loads(raw) if raw is not None else None
        except ValueError:
            return None

    def _write_json(self, name, obj):
        self.fs.write(name, json.dumps(obj).encode())

    def save(self, cfg):
        self._write_json(self.FILE, cfg)

    def boot(self):
        """Load the config at start-up, counting a boot on trial and rolling back a change that keeps failing."""
        t = self.trial = self._read_json(self.TRIAL)
        if t is not None:
            t["boots"] = t.get("boots", 0) + 1
            if t["boots"] > MAX_TRIAL_BOOTS:
                self.rollback("restarted %d times on the new config" % (t["boots"] - 1))
            else:
                self._write_json(self.TRIAL, t)
        try:
            try:
                return validate(self._read_json(self.FILE))
            except ConfigError:
                bak = self._read_json(self.BAK)
                if bak is None:
                    raise
                self.rollback("config.json is invalid")
                return validate(bak)
        finally:
            forget_checker()

    def begin_trial(self, old, new, cmd_id=None):
        self._write_json(self.BAK, old)
        self.trial = {"cmd": cmd_id, "boots": 0}
        self._write_json(self.TRIAL, self.trial)
        self.save(new)

    def commit(self):
        """The new config reached the broker: keep it (returns the trial record)."""
        t = self.trial
        self.trial = None
        self.fs.remove(self.TRIAL)
        self.fs.remove(self.BAK)
        return t

    def rollback(self, reason):
        bak = self.fs.read(self.BAK)
        if bak is not None:
            self.fs.write(self.FILE, bak)
        t = self.commit()  # the backup is live again: drop the trial record and files
        self.rolled_back = {"cmd": t.get("cmd") if t else None, "reason": reason}
        self._write_json(self.NOTE, self.rolled_back)
        return self.rolled_back

    def take_rollback_note(self):
        """The rollback to report (once) after the node is back online with the old config."""
        note = self.rolled_back or self._read_json(self.NOTE)
        self.rolled_back = None
        self.fs.remove(self.NOTE)
        return note
