"""Node configuration: persistence, the boot check, and the try-then-keep-or-roll-back protocol for changes.

Theory of operation:
- ``ConfigStore`` keeps ``config.json`` (the live file), ``config.bak.json`` (the last known-good one while a
  change is on trial) and ``config.trial.json`` (which command started the trial, how many boots it had).
- A change that touches how the node reaches the gateway (``config_check.CONNECTION_KEYS``) is put on trial: the
  new file is written, the app restarts with it, and ``commit()`` is called once the node is back on the broker.
  If it does not get there within ``trial_s`` seconds, or the node restarts ``MAX_TRIAL_BOOTS`` times while on
  trial (a crash loop), ``rollback()`` restores the backup. Other keys apply live.
- ``validate(cfg)`` (full check of every known key: types, ranges, intervals especially, since a bad heartbeat
  period is how a whole site goes falsely offline; unknown keys kept), ``merge``, ``needs_trial``,
  ``check_identity`` (the cheap structural check ``validate`` starts with), ``ConfigError`` and the defaults live in
  ``config_check``; this module's ``__getattr__`` imports it on first use of one of those names (a node needs
  them only when a ``set_config`` command arrives).
- At boot ``ConfigStore.boot()`` runs the full ``validate`` (a hand-copied file with ``hb_s: 2`` must not take a
  node to the field; an invalid file falls back to the backup) and then forgets ``config_check``: it is boot-time
  code, and keeping its bytecode in RAM for months to serve a rare ``set_config`` is the wrong trade, so that
  command imports it again.
"""

import json

MAX_TRIAL_BOOTS = 2


def __getattr__(name):
    """``validate``, ``merge``, ``needs_trial``, ``check_identity``, ``DEFAULTS``, ``ConfigError``...: from
    ``config_check``."""
    if name[0] == "_":  # import machinery probes (__path__...): never load the checker for those
        raise AttributeError(name)
    from lookout_node import config_check

    return getattr(config_check, name)


class ConfigStore:
    def __init__(self, fs):
        self.fs = fs
        self.trial = None  # {"cmd": id|None, "boots": n} while a change is on trial
        self.rolled_back = None  # {"cmd": id, "reason": ...} after a rollback, until reported

    def _read(self, name):
        raw = self.fs.read(name)
        try:
            return json.loads(raw) if raw is not None else None
        except ValueError:
            return None

    def save(self, cfg, name="config.json"):
        self.fs.write(name, json.dumps(cfg).encode())

    def boot(self):
        """Load the config at start-up, counting a boot on trial and rolling back a change that keeps failing."""
        import sys

        from lookout_node import config_check as cc

        t = self.trial = self._read("config.trial.json")
        if t is not None:
            t["boots"] = t.get("boots", 0) + 1
            if t["boots"] > MAX_TRIAL_BOOTS:
                self.rollback("restarted %d times on the new config" % (t["boots"] - 1))
            else:
                self.save(t, "config.trial.json")
        try:
            try:
                return cc.validate(self._read("config.json"))
            except cc.ConfigError:
                bak = self._read("config.bak.json")
                if bak is None:
                    raise
                self.rollback("config.json is invalid")
                return cc.validate(bak)
        finally:  # forget the checker: its code is collected (imported again by a set_config)
            sys.modules.pop("lookout_node.config_check", None)
            pkg = sys.modules.get("lookout_node")
            if pkg is not None and "config_check" in pkg.__dict__:
                delattr(pkg, "config_check")

    def begin_trial(self, old, new, cmd_id=None):
        self.save(old, "config.bak.json")
        self.trial = {"cmd": cmd_id, "boots": 0}
        self.save(self.trial, "config.trial.json")
        self.save(new)

    def commit(self):
        """The new config reached the broker: keep it (returns the trial record)."""
        t = self.trial
        self.trial = None
        self.fs.remove("config.trial.json")
        self.fs.remove("config.bak.json")
        return t

    def rollback(self, reason):
        bak = self.fs.read("config.bak.json")
        if bak is not None:
            self.fs.write("config.json", bak)
        t = self.commit()  # the backup is live again: drop the trial record and files
        self.rolled_back = {"cmd": t.get("cmd") if t else None, "reason": reason}
        self.save(self.rolled_back, "config.rollback.json")
        return self.rolled_back

    def take_rollback_note(self):
        """The rollback to report (once) after the node is back online with the old config."""
        note = self.rolled_back or self._read("config.rollback.json")
        self.rolled_back = None
        self.fs.remove("config.rollback.json")
        return note
