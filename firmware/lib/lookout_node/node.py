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
- Code a node may never run is loaded on first use, never at boot: ``node_admin`` (reboot, set_config,
  rotate_key, and ``shutdown``) when such a command has passed verification or the app stops, ``node_tls`` (CA pin, TLS context) only when
  ``broker.tls`` is on, ``node_gps`` (NMEA reader) only on a board with a GPS.
- ``run()`` returns when the app should restart (``exit_reason``): a reboot command, or a config change that
  needs a fresh connection. A device's main.py then resets the board; SimNode builds a new Node.
"""

from protocols import messages, signing, topics
from lookout_node import config as cfgmod
from lookout_node.commands import CommandProcessor, Rejected, trim
from lookout_node.hal import asyncio, sleep_ms, ticks_diff, ticks_ms
from lookout_node.outbox import Outbox

FW = "lookout-node/0.1.0"
FIXED_LOC_EVERY = 60  # fixed-position reports every FIXED_LOC_EVERY * loc_s (and at each connect)
CRASH_LOOP = 5  # restarts of one task within CRASH_WINDOW_MS = unhealthy (watchdog stops being fed)
CRASH_WINDOW_MS = 60000
OFFLINE_REBOOT_S = 1800


class Node:
    def __init__(self, hal, mqtt_opts=None, log=None):
        self.hal = hal
        self.fs = fs = hal.fs
        self.log_fn = log
        self.store = cfgmod.ConfigStore(fs)
        self.cfg = c = self.store.boot()
        self.id = c["id"]
        self.site = c["site"]
        self.role = c["role"]
        self.key = bytes.fromhex(c["key"])  # validated by config.py: 64 hex
        self.mqtt_opts = mqtt_opts or {}
        raw = fs.read("bdseq")  # boot counter (Sparkplug B bdSeq): birth and death carry it
        try:
            n = int(raw) + 1 if raw else 0
        except ValueError:
            n = 0
        self.bdseq = n % 2147483647
        fs.write("bdseq", str(self.bdseq).encode())
        self.outbox = Outbox(fs)
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
        self.proc = p = CommandProcessor(self.id, self.key, fs, self._clock, self._queue_result,
                                         spawn=asyncio.create_task, on_error=self.record_error)
        p.register("ping", self.cmd_ping)
        p.lazy(("reboot", "set_config", "rotate_key"), self._admin)
        self.speaker = None
        self.sensor = None
        lw = c.get("local_warning") or {}
        if self.role == "speaker" or lw.get("enabled"):
            from lookout_node.speaker import Speaker

            self.speaker = Speaker(hal, c, self.emit_event, self.save_cfg, self._publish_up, self.record_error)
            if self.role == "speaker":
                self.speaker.register(p)
        if self.role in ("sensor", "camera"):
            from lookout_node.sensor import Sensor

            self.sensor = Sensor(hal, c, self)
            self.sensor.register(p)

    def _admin(self, proc):
        """Loads the rare commands (reboot, set_config, rotate_key) when the first one arrives."""
        from lookout_node import node_admin

        node_admin.register(self, proc)

    # ---- small helpers ------------------------------------------------------------------------------------
    def log(self, level, text):
        if self.log_fn is not None:
            self.log_fn(level, text)

    def _clock(self):
        t = self.hal.time_ms()
        return t if t is not None and t >= messages.MS_MIN else None

    def topic(self, channel, sub=None):
        return topics.topic(self.site, self.id, channel, sub)

    def record_error(self, where, exc):
        self.errors += 1
        self.last_error = trim("%s: %s: %s" % (where, type(exc).__name__, exc))
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
        p = self.fix or self.cfg.get("position") or {}  # GPS fix, else the fixed position
        m = {"id": "%s-%d-%d" % (self.id, self.bdseq, self.evt_seq), "seq": self.evt_seq, "ts": ts,
             "kind": kind, "sev": sev}
        for k, v in (("conf", conf), ("count", count), ("evidence", evidence), ("lat", p.get("lat")),
                     ("lon", p.get("lon")), ("detail", trim(detail) if detail else None)):
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
            self.speaker.submit(Broadcast(clip, 1, self.cfg.get("volume", 80), 2))
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
        for k, v in (("ts", self._clock()), ("rssi", h.rssi()), ("bat_mv", h.battery_mv()),
                     ("temp_dc", h.temperature_dc()), ("heap", h.free_heap()), ("err", self.last_error)):
            if v is not None:
                m[k] = v
        st = "ok"
        if self.store.trial is not None:
            st = "trial"
        elif self.speaker is not None and self.speaker.current is not None:
            st = "playing"
        m["state"] = st
        return m

    # ---- commands common to every node (the rare ones: node_admin.py) -------------------------------------
    async def cmd_ping(self, args, cmd):
        return {"pong": True, "up_s": self.hal.uptime_s(), "fw": FW, "bdseq": self.bdseq}

    # ---- incoming -----------------------------------------------------------------------------------------
    def _on_message(self, msg):
        try:
            _, _, ch, sub = topics.parse(msg.topic)
        except Exception as e:
            self.record_error("topic", e)
            return
        if ch == "cmd":
            if self.proc.receive(msg.payload) is None:
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

    async def _pub0(self, kind, m):
        """QoS 0 (heartbeat, location): sent only while connected, never queued."""
        from lookout_node.mqtt import NotConnected

        try:
            await self.client.publish(self.topic(kind), messages.encode(kind, m), 0)
        except NotConnected:
            pass

    async def _heartbeat(self):
        while True:
            await self.client.connected.wait()
            await self._pub0("hb", self.heartbeat())
            if self.sensor is not None:
                self.sensor.expire_uploads()
            await sleep_ms(self.cfg["hb_s"] * 1000)

    def _loc_msg(self):
        ts = self._clock()
        if ts is None:
            return None
        f = self.fix
        if f is not None:
            m = {"lat": f["lat"], "lon": f["lon"], "fix": f["fix"], "src": "gps"}
            keys = ("alt_mm", "spd_cms", "hdg_cd", "sats", "hdop")
        else:
            f = self.cfg.get("position")
            if not f:
                return None
            m = {"lat": f["lat"], "lon": f["lon"], "fix": 1, "src": "fixed"}
            keys = ("alt_mm",)
        for k in keys:
            if f.get(k) is not None:
                m[k] = f[k]
        self.loc_seq += 1
        m["seq"] = self.loc_seq
        m["ts"] = ts
        return m

    async def _send_loc(self):
        m = self._loc_msg()
        if m is not None and self.online():
            await self._pub0("loc", m)

    async def _location(self):
        """Periodic location: GPS every loc_s, fixed position at connect and every FIXED_LOC_EVERY * loc_s."""
        n = 0
        while True:
            await self.client.connected.wait()
            if self.fix is not None or n % FIXED_LOC_EVERY == 0:
                await self._send_loc()
            n += 1
            await sleep_ms(self.cfg["loc_s"] * 1000)

    async def _session(self):
        """Connection bookkeeping: offline clock, config trial commit/rollback, rollback report."""
        c = self.client
        trial_s = self.cfg.get("trial_s", 120)
        trial_deadline = None
        if self.store.trial is not None:
            trial_deadline = ticks_ms() + trial_s * 1000
        while True:
            if not c.is_connected():
                if trial_deadline is not None:
                    try:
                        await asyncio.wait_for(c.connected.wait(), max(1, trial_deadline - ticks_ms()) / 1000)
                    except asyncio.TimeoutError:
                        self.store.rollback("no broker connection within %d s" % trial_s)
                        self.request_exit("rollback")  # restart on the restored config
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
            while c.is_connected():
                await sleep_ms(200)
            self._offline_since = ticks_ms()

    def _make_client(self):
        # MQTT or, for battery sensor nodes with transport "coap", the CoAP uplink with the same interface
        from lookout_node.uplink import make_uplink

        b = self.cfg["broker"]
        state = self.topic("state")
        opts = {"keepalive_s": b["keepalive"]}
        if b["tls"]:  # CA pinning and client certificate: node_tls.py; never a fall back to plaintext
            from lookout_node.node_tls import tls_opts

            try:
                opts.update(tls_opts(self.cfg, self.fs, self.hal))
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
            from lookout_node import node_gps  # only on a board with a GPS

            jobs.append(("gps", lambda: node_gps.run(self)))
        if self.speaker is not None:
            jobs.append(("player", self.speaker.run))
            jobs.append(("scheduler", self.speaker.run_scheduler))
        if self.sensor is not None:
            jobs.append(("sensor", self.sensor.run))
        for name, fn in jobs:
            self.tasks.append(asyncio.create_task(self._supervise(name, fn)))
        await self._exit.wait()
        from lookout_node import node_admin  # the way out, like a reboot, is a rare path

        await node_admin.shutdown(self, self.exit_reason != "kill")
        return self.exit_reason

    def request_exit(self, reason):
        self.exit_reason = reason
        self._exit.set()
