"""The node application: MQTT session, heartbeat, location, commands, role tasks, supervisor and watchdog.

Theory of operation:
- One ``Node`` per boot. It loads ``config.json`` through ``ConfigStore.boot()`` (which may roll back a change
  that failed on trial), bumps the persisted boot counter ``bdseq`` (Sparkplug B style: birth and death carry
  it, so the gateway can tell a stale death from the current session), and builds one ``MQTTClient`` with
  client id = username = device id, a persistent session (clean_session = 0: the broker queues QoS 1 commands
  while we are away; duplicates are harmless because the command path de-duplicates), the retained birth on
  ``state`` and the retained death as last will.
- Everything runs as supervised tasks (``_supervise``): an exception is counted (``errs`` and ``err`` in the
  heartbeat), logged, and the task restarted with a growing delay. The watchdog is fed only by the watchdog
  task, and only while the loop is healthy: no task in a crash loop, and the broker reachable within
  ``offline_reboot_s`` (a node that cannot get back online for half an hour is better off rebooting).
- Events and results go through the persistent ``Outbox``; one sender task publishes its head with QoS 1 and
  removes it only after PUBACK. Heartbeats and locations are QoS 0 and only sent while connected.
- Commands arrive on ``cmd`` and go to ``CommandProcessor`` (verification in front of every handler); clip
  chunks arrive on ``dl/<tid>``.
- ``run()`` returns when the app should restart (``exit_reason``): a reboot command, or a config change that
  needs a fresh connection. A device's main.py then resets the board; SimNode builds a new Node.
"""

import binascii
import json

from protocols import messages, signing, topics
from lookout_node import config as cfgmod
from lookout_node.commands import CommandProcessor, Rejected
from lookout_node.hal import asyncio, sleep_ms, ticks_diff, ticks_ms
from lookout_node.outbox import Outbox

FW = "lookout-node/0.1.0"
LOC_MOVE_E7 = 50  # ~5 m: a GPS position change that triggers an immediate location report
FIXED_LOC_EVERY = 60  # fixed-position reports every FIXED_LOC_EVERY * loc_s (and at each connect)
CRASH_LOOP = 5  # restarts of one task within CRASH_WINDOW_MS = unhealthy (watchdog stops being fed)
CRASH_WINDOW_MS = 60000
OFFLINE_REBOOT_S = 1800


class TLSConfigError(Exception):
    """The TLS settings cannot be honoured (CA missing or not the pinned one): the node stays off the broker."""


def pem_to_der(raw):
    """DER of the first certificate in a PEM file (what ``broker.ca_sha256`` pins); DER input is returned as is."""
    raw = bytes(raw)
    if not raw.startswith(b"-----BEGIN"):
        return raw
    body = []
    inside = False
    for line in raw.split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN"):
            inside = True
        elif line.startswith(b"-----END"):
            break
        elif inside:
            body.append(line)
    return binascii.a2b_base64(b"".join(body))


async def _reap(task, tries=200):
    """Wait for a cancelled task to end. A task can swallow one cancellation (CPython 3.11: a ``wait_for`` whose
    inner await completes as it is cancelled returns normally), then block forever (e.g. the sender back on an
    empty outbox), so cancel again until it is done; bounded, so a shutdown never hangs."""
    n = 0
    task.cancel()
    while not task.done() and n < tries:
        await sleep_ms(5)
        n += 1
        if n % 20 == 0:  # still running after 100 ms: it swallowed the cancellation (cleanup is never that slow)
            task.cancel()
    if task.done():
        try:
            await task
        except BaseException:  # CancelledError, or an error already counted
            pass


def _trim(s, n=200):
    s = str(s)
    return "".join(c if " " <= c != "\x7f" else " " for c in s[:n])


class Node:
    def __init__(self, hal, mqtt_opts=None, log=None):
        self.hal = hal
        self.fs = hal.fs
        self.log_fn = log
        self.store = cfgmod.ConfigStore(self.fs)
        self.cfg = self.store.boot()
        c = self.cfg
        self.id = c["id"]
        self.site = c["site"]
        self.role = c["role"]
        self.key = binascii.unhexlify(c["key"])
        self.mqtt_opts = mqtt_opts or {}
        self.bdseq = self._bump_bdseq()
        self.outbox = Outbox(self.fs)
        self.errors = 0
        self.last_error = None
        self.restarts = {}
        self.restart_delay_ms = 100  # first restart delay of a crashed task (doubles up to 30 s)
        self.wdt_period_ms = None  # watchdog feed period; None = wdt_ms // 4
        self.hb_seq = 0
        self.loc_seq = 0
        self.evt_seq = 0
        self.fix = None  # last GPS fix: dict lat, lon, alt_mm, fix, sats, hdop, spd_cms, hdg_cd
        self.client = None
        self.tasks = []
        self.exit_reason = None
        self._exit = asyncio.Event()
        self._offline_since = ticks_ms()
        self._tid = (ticks_ms() ^ (self.bdseq << 16)) & 0x7FFFFFFF
        self.proc = CommandProcessor(self.id, self.key, self.fs, self._clock, self._queue_result,
                                     spawn=asyncio.create_task, on_error=self.record_error)
        self.proc.register("ping", self.cmd_ping)
        self.proc.register("reboot", self.cmd_reboot)
        self.proc.register("set_config", self.cmd_set_config, self.check_set_config)
        self.proc.register("rotate_key", self.cmd_rotate_key, self.check_rotate_key, after=self.after_rotate_key)
        self.speaker = None
        self.sensor = None
        lw = c.get("local_warning") or {}
        if self.role == "speaker" or lw.get("enabled"):
            from lookout_node.speaker import Speaker

            self.speaker = Speaker(hal, c, self.emit_event, self.save_cfg, self._publish_up, self.record_error)
            if self.role == "speaker":
                self.speaker.register(self.proc)
        if self.role in ("sensor", "camera"):
            from lookout_node.sensor import Sensor

            self.sensor = Sensor(hal, c, self)
            self.sensor.register(self.proc)

    # ---- small helpers ------------------------------------------------------------------------------------
    def log(self, level, text):
        if self.log_fn is not None:
            self.log_fn(level, text)

    def _clock(self):
        t = self.hal.time_ms()
        return t if t is not None and t >= messages.MS_MIN else None

    def topic(self, channel, sub=None):
        return topics.topic(self.site, self.id, channel, sub)

    def _bump_bdseq(self):
        raw = self.fs.read("bdseq")
        try:
            n = int(raw) + 1 if raw else 0
        except ValueError:
            n = 0
        n %= 2147483647
        self.fs.write("bdseq", str(n).encode())
        return n

    def record_error(self, where, exc):
        self.errors += 1
        self.last_error = _trim("%s: %s: %s" % (where, type(exc).__name__, exc))
        self.log("error", self.last_error)

    def save_cfg(self, key, value):
        """Persist a live setting (volume, sensor settings...)."""
        self.cfg[key] = value
        self.store.save(self.cfg)

    def new_tid(self):
        self._tid = (self._tid + 1) & 0xFFFFFFFF
        return self._tid

    def upload_topic(self, tid):
        return self.topic("up", str(tid))

    def position(self):
        if self.fix is not None:
            return self.fix["lat"], self.fix["lon"]
        p = self.cfg.get("position")
        if p:
            return p["lat"], p["lon"]
        return None, None

    def online(self):
        return self.client is not None and self.client.is_connected()

    def offline_for_ms(self):
        """None while connected, else how long the gateway has been unreachable."""
        if self.online():
            return None
        return ticks_diff(ticks_ms(), self._offline_since)

    async def publish(self, topic, payload, qos=0, retain=False):
        if self.client is None:
            from lookout_node.mqtt import NotConnected

            raise NotConnected("no client")
        lose = getattr(self.hal, "lose_tx", None)  # host hal only: simulated loss on the radio link
        if lose is not None and lose(topic, payload):
            return
        await self.client.publish(topic, payload, qos, retain)

    async def _publish_up(self, tid, payload):
        await self.publish(self.upload_topic(tid), payload, 1)

    # ---- outgoing messages --------------------------------------------------------------------------------
    def _queue_result(self, msg):
        self.outbox.put(self.topic("res"), messages.encode("res", msg))

    def emit_event(self, kind, sev, detail=None, conf=None, count=None, evidence=None):
        self.evt_seq += 1
        ts = self._clock()
        if ts is None:  # no clock yet: the earliest legal time marks "unknown" (docs/FIRMWARE.md)
            ts = messages.MS_MIN
        lat, lon = self.position()
        m = {"id": "%s-%d-%d" % (self.id, self.bdseq, self.evt_seq), "seq": self.evt_seq, "ts": ts,
             "kind": kind, "sev": sev}
        for k, v in (("conf", conf), ("count", count), ("evidence", evidence), ("lat", lat), ("lon", lon),
                     ("detail", _trim(detail) if detail else None)):
            if v is not None:
                m[k] = v
        signing.sign(self.key, "evt", m)
        self.outbox.put(self.topic("evt"), messages.encode("evt", m))
        return m

    def local_warning(self, clip):
        if self.speaker is None or not self.speaker.has_clip(clip):
            return False
        from lookout_node.speaker import Broadcast

        try:
            self.speaker.policy(2)  # quiet hours and a broadcast of equal/higher priority win
            self.speaker.submit(Broadcast(None, clip, 1, self.cfg.get("volume", 80), 2))
        except Rejected as e:
            self.log("info", "local warning not played: %s" % e.code)
            return False
        return True

    def birth_payload(self):
        caps = ["ping", "reboot", "set_config", "rotate_key"]
        if self.role == "speaker":
            caps += list(self.speaker.CAPS)
        if self.sensor is not None:
            caps += list(self.sensor.CAPS)
        return messages.encode("birth", messages.birth(self.role, self.bdseq, FW, self.cfg["hb_s"], caps=caps,
                                                       site=self.site))

    def heartbeat(self):
        self.hb_seq += 1
        h = self.hal
        m = {"seq": self.hb_seq, "up_s": h.uptime_s(), "hb_s": self.cfg["hb_s"], "fw": FW, "errs": self.errors,
             "outbox": len(self.outbox), "dropped": self.outbox.dropped}
        ts = self._clock()
        for k, v in (("ts", ts), ("rssi", h.rssi()), ("bat_mv", h.battery_mv()), ("temp_dc", h.temperature_dc()),
                     ("heap", h.free_heap()), ("err", self.last_error)):
            if v is not None:
                m[k] = v
        st = "ok"
        if self.store.trial is not None:
            st = "trial"
        elif self.speaker is not None and self.speaker.current is not None:
            st = "playing"
        m["state"] = st
        return m

    # ---- commands common to every node --------------------------------------------------------------------
    async def cmd_ping(self, args, cmd):
        return {"pong": True, "up_s": self.hal.uptime_s(), "fw": FW, "bdseq": self.bdseq}

    async def cmd_reboot(self, args, cmd):
        asyncio.create_task(self._restart_soon("reboot", 300))
        return {"rebooting": True}

    async def _restart_soon(self, reason, delay_ms):
        t0 = ticks_ms()
        await sleep_ms(delay_ms)
        while len(self.outbox) and self.online() and ticks_diff(ticks_ms(), t0) < 5000:
            await sleep_ms(50)  # let the final result reach the broker first
        self.exit_reason = reason
        self._exit.set()

    def check_set_config(self, args, cmd):
        patch = {}
        for k in args:
            if k == "patch":
                try:
                    p = json.loads(args["patch"])
                except (ValueError, TypeError):
                    raise Rejected("bad_config", "patch: not JSON")
                if not isinstance(p, dict):
                    raise Rejected("bad_config", "patch: expected a JSON object")
                patch.update(p)
            else:
                patch[k] = args[k]
        for k in ("key", "id"):
            if k in patch:
                raise Rejected("bad_config", "%s cannot be changed by set_config (use rotate_key / reprovision)" % k)
        new = cfgmod.merge(self.cfg, patch)
        try:
            new = cfgmod.validate(new)
        except cfgmod.ConfigError as e:
            raise Rejected("bad_config", str(e))
        return {"new": new, "keys": sorted(patch)}

    async def cmd_set_config(self, args, cmd):
        new = args["new"]
        if cfgmod.needs_trial(self.cfg, new):
            self.store.begin_trial(self.cfg, new, cmd["id"])
            asyncio.create_task(self._restart_soon("config", 100))
            await asyncio.Event().wait()  # cancelled by the restart; the result follows the trial
        self.store.save(new)
        for k in new:
            self.cfg[k] = new[k]
        if self.speaker is not None:
            self.speaker.volume = self.cfg.get("volume", self.speaker.volume)
        return {"applied": args["keys"]}

    def check_rotate_key(self, args, cmd):
        if self.store.trial is not None:  # the backup config holds the old key: a rollback would undo this
            raise Rejected("busy", "a config change is on trial; rotate after it is committed")
        try:
            k = signing.unwrap_key(self.key, args.get("key"), cmd["ctr"])
        except Exception as e:
            raise Rejected("bad_key", str(e))
        return {"key": k}

    async def cmd_rotate_key(self, args, cmd):
        """Persist the new key (config.json written to a temp file, then renamed: a power cut leaves either the
        old or the new file, never half of one). The ``done`` result is still signed with the OLD key, so the
        gateway can verify it before it commits; ``after_rotate_key`` switches once that result is queued."""
        new = dict(self.cfg)
        new["key"] = binascii.hexlify(args["key"]).decode()
        self.store.save(new)
        self.cfg["key"] = new["key"]
        return {"rotated": True}

    def after_rotate_key(self, args, cmd):
        self.key = args["key"]
        self.proc.key = args["key"]
        self.log("info", "device key rotated by %s" % cmd["id"])

    # ---- incoming -----------------------------------------------------------------------------------------
    def _on_message(self, msg):
        try:
            _, _, ch, sub = topics.parse(msg.topic)
        except Exception as e:
            self.record_error("topic", e)
            return
        if ch == "cmd":
            r = self.proc.receive(msg.payload)
            if r is None:
                self.log("warning", "dropped a command with no readable id")
        elif ch == "dl" and sub is not None:
            try:
                tid = int(sub)
            except ValueError:
                return
            # a resume request (cliptransfer status) for one of our uploads, else a chunk of a clip download
            if self.sensor is not None and self.sensor.on_dl(tid, msg.payload):
                return
            if self.speaker is not None:
                self.speaker.on_dl(tid, msg.payload)

    # ---- tasks --------------------------------------------------------------------------------------------
    async def _supervise(self, name, fn):
        delay = self.restart_delay_ms
        while True:
            try:
                await fn()
                return
            except Exception as e:  # CancelledError is a BaseException on both runtimes: not caught here
                self.record_error(name, e)
                r = self.restarts.setdefault(name, [])
                r.append(ticks_ms())
                if len(r) > CRASH_LOOP:
                    r.pop(0)
                await sleep_ms(delay)
                delay = min(delay * 2, 30000)

    def healthy(self):
        now = ticks_ms()
        for r in self.restarts.values():
            if len(r) >= CRASH_LOOP and ticks_diff(now, r[0]) < CRASH_WINDOW_MS:
                return False
        off = self.offline_for_ms()
        return off is None or off < self.cfg.get("offline_reboot_s", OFFLINE_REBOOT_S) * 1000

    async def _watchdog(self):
        wdt_ms = self.cfg.get("wdt_ms", 30000)
        self.hal.wdt_start(wdt_ms)
        while True:
            if self.healthy():
                self.hal.wdt_feed()
            await sleep_ms(self.wdt_period_ms or wdt_ms // 4)

    async def _sender(self):
        from lookout_node.mqtt import NotConnected

        while True:
            await self.outbox.wait()
            await self.client.connected.wait()
            item = self.outbox.peek()
            if item is None:
                continue
            try:
                await self.client.publish(item[0], item[1], 1)
            except NotConnected:
                await sleep_ms(100)
                continue
            self.outbox.pop()

    async def _heartbeat(self):
        from lookout_node.mqtt import NotConnected

        while True:
            await self.client.connected.wait()
            try:
                await self.client.publish(self.topic("hb"), messages.encode("hb", self.heartbeat()), 0)
            except NotConnected:
                pass
            if self.sensor is not None:
                self.sensor.expire_uploads()
            await sleep_ms(self.cfg["hb_s"] * 1000)

    def _loc_msg(self):
        ts = self._clock()
        if ts is None:
            return None
        self.loc_seq += 1
        if self.fix is not None:
            f = self.fix
            m = {"seq": self.loc_seq, "ts": ts, "lat": f["lat"], "lon": f["lon"], "fix": f["fix"], "src": "gps"}
            for k in ("alt_mm", "spd_cms", "hdg_cd", "sats", "hdop"):
                if f.get(k) is not None:
                    m[k] = f[k]
            return m
        p = self.cfg.get("position")
        if not p:
            return None
        m = {"seq": self.loc_seq, "ts": ts, "lat": p["lat"], "lon": p["lon"], "fix": 1, "src": "fixed"}
        if "alt_mm" in p:
            m["alt_mm"] = p["alt_mm"]
        return m

    async def _send_loc(self):
        m = self._loc_msg()
        if m is None or not self.online():
            return
        from lookout_node.mqtt import NotConnected

        try:
            await self.client.publish(self.topic("loc"), messages.encode("loc", m), 0)
        except NotConnected:
            pass

    async def _location(self):
        """Periodic location: GPS every loc_s, fixed position at connect and every FIXED_LOC_EVERY * loc_s."""
        n = 0
        while True:
            await self.client.connected.wait()
            if self.fix is not None or n % FIXED_LOC_EVERY == 0:
                await self._send_loc()
            n += 1
            await sleep_ms(self.cfg["loc_s"] * 1000)

    async def _gps(self):
        """Read NMEA from the GNSS UART; update the fix; report at once when it moved or changed quality."""
        from protocols import nmea  # deferred: 25 KB of heap a GPS-less node never needs

        self._nmea = nmea
        rd = nmea.NMEAReader()
        step = rd.max_buffer // 2  # a UART read can be bigger than the reader's bound: feed it in slices
        while True:
            data = await self.hal.gps.read()
            if not data:
                continue
            changed = False
            for i in range(0, len(data), step):
                rd.receive_data(data[i:i + step])
                while True:
                    ev = rd.next_event()  # garbage comes out as NMEABadSentence (counted in rd.bad_count)
                    if ev is nmea.NEED_DATA or ev is nmea.CLOSED:
                        break
                    changed = self._gps_event(ev) or changed
            if changed:
                await self._send_loc()

    def _gps_event(self, ev):
        nmea = self._nmea
        if isinstance(ev, nmea.RMC):
            if ev.valid and ev.epoch_ms is not None:
                self.hal.set_time_ms(ev.epoch_ms)
            if ev.valid and self.fix is not None:
                self.fix["spd_cms"] = ev.speed_cms
                if ev.course_cdeg is not None:
                    self.fix["hdg_cd"] = ev.course_cdeg
            return False
        if not isinstance(ev, nmea.GGA):
            return False
        if not ev.valid:
            if self.fix is not None:
                self.fix = None
                return True
            return False
        old = self.fix
        self.fix = {"lat": ev.lat_e7, "lon": ev.lon_e7, "fix": ev.fix_quality, "sats": ev.satellites,
                    "hdop": ev.hdop_x100, "alt_mm": ev.alt_mm,
                    "spd_cms": old.get("spd_cms") if old else None, "hdg_cd": old.get("hdg_cd") if old else None}
        if old is None or old["fix"] != ev.fix_quality:
            return True
        return abs(old["lat"] - ev.lat_e7) > LOC_MOVE_E7 or abs(old["lon"] - ev.lon_e7) > LOC_MOVE_E7

    async def _session(self):
        """Connection bookkeeping: offline clock, config trial commit/rollback, rollback report."""
        c = self.client
        trial_deadline = None
        if self.store.trial is not None:
            trial_deadline = ticks_ms() + self.cfg.get("trial_s", 120) * 1000
        while True:
            if not c.is_connected():
                if trial_deadline is not None:
                    left = trial_deadline - ticks_ms()
                    try:
                        await asyncio.wait_for(c.connected.wait(), max(1, left) / 1000)
                    except asyncio.TimeoutError:
                        self.store.rollback("no broker connection within %d s" % self.cfg.get("trial_s", 120))
                        self.exit_reason = "rollback"  # restart on the restored config
                        self._exit.set()
                        return
                else:
                    await c.connected.wait()
            # connected
            trial_deadline = None
            if self.store.trial is not None:
                t = self.store.commit()
                if t and t.get("cmd"):
                    self.proc.finish(t["cmd"], "done", data={"trial": "committed"})
            note = self.store.take_rollback_note()
            if note and note.get("cmd"):
                self.proc.finish(note["cmd"], "failed", code="rolled_back", detail=note.get("reason"))
            await self._wait_disconnected()
            self._offline_since = ticks_ms()

    async def _wait_disconnected(self):
        while self.client.is_connected():
            await sleep_ms(200)

    def _tls_opts(self):
        """MQTTClient TLS arguments from ``broker``: ``tls``, ``ca`` (file on flash), optional ``ca_sha256`` (pin
        of the CA's DER, checked before use), ``cert``/``cert_key`` (client certificate). Without ``tls``: {}.

        Raises TLSConfigError (or the board's error) rather than ever falling back to plaintext."""
        b = self.cfg["broker"]
        if not b["tls"]:
            return {}
        ca = b.get("ca") or "ca.crt"
        raw = self.fs.read(ca)
        if not raw:
            raise TLSConfigError("broker.ca: %r is not on flash" % ca)
        pin = b.get("ca_sha256")
        if pin:
            import hashlib

            got = binascii.hexlify(hashlib.sha256(pem_to_der(raw)).digest()).decode()
            if got != str(pin).lower():
                raise TLSConfigError("broker.ca_sha256: %s is %s..., the pinned CA is %s..." % (ca, got[:16],
                                                                                             str(pin)[:16]))
        cert, key = b.get("cert"), b.get("cert_key")
        ctx = self.hal.tls_context(self.fs.path(ca), self.fs.path(cert) if cert else None,
                                   self.fs.path(key) if key else None)
        return {"ssl": ctx, "server_hostname": b.get("sni") or b["host"]}

    def _make_client(self):
        # MQTT or, for battery sensor nodes with transport "coap", the CoAP uplink with the same interface
        from lookout_node.uplink import make_uplink

        b = self.cfg["broker"]
        state = self.topic("state")
        opts = {"keepalive_s": b["keepalive"]}
        try:
            opts.update(self._tls_opts())
        except Exception as e:
            self.record_error("tls", e)
            raise
        opts.update(self.mqtt_opts)
        for k, v in (self.cfg.get("mqtt") or {}).items():
            opts[k] = v
        return make_uplink(self.cfg, client_id=self.id, username=b["user"] or self.id,
                           password=b["password"] or None, clean_session=False,
                           will=(state, messages.encode("death", messages.death(self.bdseq, "connection lost")), 1,
                                 True),
                           birth=(state, self.birth_payload(), 1, True),
                           on_message=self._on_message, on_log=self.log, open_connection=self.hal.open_connection,
                           **opts)

    async def run(self):
        """Run until a restart is requested; returns the reason."""
        self.client = self._make_client()
        await self.client.subscribe(self.topic("cmd"), 1)
        if self.speaker is not None or (self.sensor is not None and self.hal.camera is not None):
            # speaker: clip download chunks; camera: resume requests for its snapshot uploads
            await self.client.subscribe(topics.ROOT + "/%s/%s/dl/+" % (self.site, self.id), 1)
        self.client.start()
        jobs = [("session", self._session), ("sender", self._sender), ("hb", self._heartbeat),
                ("loc", self._location), ("wdt", self._watchdog)]
        if self.hal.gps is not None:
            jobs.append(("gps", self._gps))
        if self.speaker is not None:
            jobs.append(("player", self.speaker.run))
            jobs.append(("scheduler", self.speaker.run_scheduler))
        if self.sensor is not None:
            jobs.append(("sensor", self.sensor.run))
        for name, fn in jobs:
            self.tasks.append(asyncio.create_task(self._supervise(name, fn)))
        await self._exit.wait()
        await self.shutdown(graceful=self.exit_reason != "kill")
        return self.exit_reason

    def request_exit(self, reason):
        self.exit_reason = reason
        self._exit.set()

    async def shutdown(self, graceful=True):
        """Stop tasks; graceful = publish the death ourselves and DISCONNECT, else just drop the link."""
        for t in list(self.proc.running.values()) + self.tasks:
            t.cancel()
        for t in self.tasks:
            await _reap(t)
        self.tasks = []
        if self.speaker is not None and self.speaker.current is not None:
            self.hal.audio.stop(True)
        if self.client is not None:
            if not graceful and hasattr(self.hal, "kill_connections"):
                self.hal.kill_connections()
            await self.client.disconnect(publish_will=graceful)
