"""Asyncio MQTT 3.1.1 client for nodes; runs unchanged on MicroPython 1.27 and CPython 3.11.

Theory of operation (the mqtt_as split, by composition rather than inheritance):

- ``protocols.mqttpacket`` owns every byte (encoders, ``PacketReader``) and every argument check: the client
  validates a topic, QoS or will by encoding it, never twice. Only the packet id of a request is patched in.
- ``_Link`` is ONE connection: the stream pair, the packet reader, a write lock, the keepalive clock and the
  waiters for PUBACK/SUBACK/UNSUBACK keyed by packet id (ids are shared by all three, §2.3.1). A link is
  created per connection and thrown away with it, so no half-read packet, stale waiter or timer survives a
  reconnect. ``kill(reason)`` marks it dead, wakes every waiter with ``NotConnected`` and is the only way a
  link ends.
- ``MQTTClient`` is the policy: connect, resubscribe everything it remembers, publish the retained birth, set
  ``connected``; on any failure (socket error, malformed packet, missing PUBACK/PINGRESP, refused CONNACK) log
  through the hook, back off exponentially with jitter and connect again. It never dies on bad input.

Tasks per link: a reader (decodes packets, resolves waiters, queues incoming messages) and a keepalive timer
(sleeps until the next deadline; no polling). One client-wide delivery task runs the ``on_message`` handler in
arrival order and sends the QoS 1 PUBACK after the handler ran (MQTT 3.1.1 §4.6: PUBACKs in receive order);
with no handler, messages go to a bounded inbox (``inbox``, at most ``inbox_size``; a full inbox drops and
counts in ``dropped``) read by ``await next_message()`` and are acknowledged once queued. A handler may itself
``await client.publish(...)``: the reader keeps running, so the PUBACK arrives.

Delivery policy (defaults in protocols/defaults.py, prose in docs/PROTOCOL.md §15): QoS 1 publish waits
for PUBACK ``puback_timeout_ms``, resends with DUP=1 up to ``publish_retries`` times, then declares the link
dead and raises ``DeliveryFailed``; ``publish()`` while offline raises ``NotConnected`` at once. Both are
``NotConnected``, so the app's outbox keeps the message and tries again later. Nothing is queued here.

Logging policy (``on_log(level, text)``): "debug" normal flow, "info" reconnects/resends, "warning" a
misbehaving broker or a refused CONNACK, "error" a bug in a handler. Passwords are never logged.

Written for a node's heap (every class, method, identifier and string constant is resident): two classes,
exceptions made with ``type()`` (cheaper than a class statement on MicroPython), waiters as small lists, one
request routine for SUBSCRIBE, UNSUBSCRIBE and QoS 1 PUBLISH, short log texts.
"""

import asyncio
import random

from lookout_node.hal import ticks_diff, ticks_ms
from protocols import defaults as _D
from protocols import mqttpacket as mp
from protocols.errors import LocalProtocolError, MQTTPacketError

# NotConnected: no live link, the message was NOT handed to the broker (or not confirmed); the caller keeps
# it.
# DeliveryFailed: a QoS 1 PUBLISH got no PUBACK after all resends; the link is reset; the caller keeps it.
# SubscribeRefused: SUBACK return code 0x80 (§3.9.3), typically an ACL denial.
NotConnected = type("NotConnected", (Exception,), {})
DeliveryFailed = type("DeliveryFailed", (NotConnected,), {})
SubscribeRefused = type("SubscribeRefused", (Exception,), {})


def backoff_ms(attempt, min_ms=_D.MQTT_BACKOFF_MIN_MS, max_ms=_D.MQTT_BACKOFF_MAX_MS, rand=None):
    """Delay before reconnect ``attempt`` (0-based): ``cap = min(max_ms, min_ms * 2**attempt)``, then
    "equal jitter": half of ``cap`` fixed plus a random part of the other half, so it is never 0 and nodes
    spread out. ``rand`` returns a float in [0, 1) (inject a fixed one in tests)."""
    cap = min_ms
    while attempt > 0 and cap < max_ms:  # no big shifts: stops at max_ms
        cap *= 2
        attempt -= 1
    cap = min(cap, max_ms)
    return cap // 2 + int((rand or random.random)() * (cap - cap // 2))


def _publish_packet(spec, field):
    """``(topic, payload[, qos=1[, retain=True]])`` -> ``(packet, qos, spec as a 4-tuple)``, checked by
    encoding it (a QoS 1 packet carries packet id 1 until ``_request`` patches in its own)."""
    if not isinstance(spec, (tuple, list)) or not 2 <= len(spec) <= 4:
        raise LocalProtocolError("must be (topic, payload[, qos[, retain]]), got %r" % (spec,), field)
    t = tuple(spec) + (1, True)[len(spec) - 2:]
    return mp.encode_publish(t[0], t[1], t[2], t[3], False, t[2] or None), t[2], t


class _Link:
    """One connection to the broker. Created per connect, discarded on any failure."""

    def __init__(self, reader, writer, client):
        self.reader = reader
        self.writer = writer
        self.client = client
        self.packets = mp.PacketReader(client.max_packet_size)
        self.waiters = {}  # packet id -> [Event, the ack or a NotConnected, expected ack type]
        self.dead = asyncio.Event()
        self.reason = None
        self.tasks = []
        self.last_sent = ticks_ms()
        self.ping_sent = None  # ticks of the outstanding PINGREQ, or None
        self.up_since = None
        self._wlock = asyncio.Lock()

    def kill(self, reason):
        if not self.dead.is_set():
            self.reason = reason
            self.dead.set()
            for w in self.waiters.values():
                w[1] = NotConnected("link lost: " + reason)
                w[0].set()
            self.waiters = {}

    async def send(self, data):
        ms = self.client.send_timeout_ms
        try:
            async with self._wlock:  # MicroPython's Stream loses bytes if two tasks drain at once
                if not self.dead.is_set():
                    self.writer.write(data)
                    await asyncio.wait_for(self.writer.drain(), ms / 1000)
                    self.last_sent = ticks_ms()
                    return
        except asyncio.TimeoutError:  # before OSError (CPython's is one); MicroPython's asyncio has its own
            self.kill("send not drained in %d ms" % ms)
        except OSError as e:
            self.kill("send failed: %r" % (e,))
        raise NotConnected("link lost: %s" % self.reason)

    async def next_packet(self):
        """The next decoded packet, or ``mp.CLOSED`` at end of stream. Raises MQTTPacketError, OSError."""
        while True:
            ev = self.packets.next_event()
            if ev is not mp.NEED_DATA:
                return ev
            self.packets.receive_data(await self.reader.read(self.client.read_chunk))


class MQTTClient:
    """A node's connection to the broker, kept up until ``disconnect()``.

    ``will``/``birth``: ``(topic, payload[, qos=1[, retain=True]])``. ``ssl``: None, True or an SSLContext,
    passed to ``open_connection`` (both runtimes accept it). ``on_message(msg)``: plain or async function
    taking a PUBLISH ``mqttpacket.Packet`` (``topic``, ``payload``, ``qos``...); without it use ``await
    next_message()``. ``rand``: float in [0, 1) source for the jitter and the default client id.
    ``open_connection``: the transport (default ``asyncio.open_connection``; the node passes its HAL's).
    ``subs``: topic filter -> requested QoS, re-sent on every connect.
    """

    def __init__(self, host, port=None, client_id=None, username=None, password=None,
                 keepalive_s=_D.MQTT_KEEPALIVE_S, clean_session=True, will=None, birth=None, ssl=None,
                 server_hostname=None, on_message=None, on_log=None, rand=None, open_connection=None,
                 puback_timeout_ms=_D.MQTT_PUBACK_TIMEOUT_MS, publish_retries=_D.MQTT_PUBLISH_RETRIES,
                 ping_timeout_ms=None, connect_timeout_ms=_D.MQTT_CONNECT_TIMEOUT_MS,
                 send_timeout_ms=_D.MQTT_SEND_TIMEOUT_MS, backoff_min_ms=_D.MQTT_BACKOFF_MIN_MS,
                 backoff_max_ms=_D.MQTT_BACKOFF_MAX_MS, inbox_size=_D.MQTT_INBOX_SIZE,
                 max_packet_size=_D.MQTT_MAX_PACKET_SIZE, read_chunk=_D.MQTT_READ_CHUNK):
        self.host = host
        self.port = port or (_D.MQTT_TLS_PORT if ssl else _D.MQTT_PORT)
        self._rand = rand = rand or random.random
        if client_id is None:
            client_id = "lookout-%08x" % int(rand() * 0xFFFFFFFF)
        self.client_id = client_id
        if not 1 <= backoff_min_ms <= backoff_max_ms:
            raise LocalProtocolError("need 1 <= min <= max, got %r, %r" % (backoff_min_ms, backoff_max_ms),
                                     "backoff")
        # Encoded (and so validated) once: a bad will, birth or client id fails here, not on every reconnect.
        self.will = w = will and _publish_packet(will, "will")
        self.birth = birth and _publish_packet(birth, "birth")
        w = w[2] if w else (None, b"", 0, False)
        self._connect_packet = mp.encode_connect(client_id, clean_session, keepalive_s, username, password,
                                                 w[0], w[1], w[2], w[3])
        self.keepalive_ms = keepalive_s * 1000
        if ping_timeout_ms is None:
            ping_timeout_ms = min(_D.MQTT_PINGRESP_TIMEOUT_MS, self.keepalive_ms // 2 or 1)
        self.ping_timeout_ms = ping_timeout_ms
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.on_message = on_message
        self.on_log = on_log
        self._open = open_connection
        self.puback_timeout_ms = puback_timeout_ms
        self.publish_retries = publish_retries
        self.connect_timeout_ms = connect_timeout_ms
        self.send_timeout_ms = send_timeout_ms
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.max_packet_size = max_packet_size
        self.read_chunk = read_chunk
        self.inbox_size = inbox_size
        self.inbox = []  # (message, link) received and not yet handled
        self.dropped = 0  # messages a full inbox dropped (not acknowledged: a persistent session redelivers)
        self._ready = asyncio.Event()  # set when the inbox holds something
        self.connected = asyncio.Event()  # set while a link is up, subscribed and the birth is out
        self.connects = 0  # successful connections so far (a reconnect counter for heartbeats)
        self.last_error = None  # why the last link ended, for the heartbeat / diagnostics
        self.subs = {}
        self._link = None
        self._task = None
        self._deliver_task = None
        self._closing = False
        self._pid = 0

    # ---- public API ----------------------------------------------------------------------------------------

    def start(self):
        """Start the connect/reconnect loop in the background; returns its task. Idempotent."""
        if self._task is None:
            self._closing = False
            self._task = asyncio.create_task(self._run())
            if self.on_message:
                self._deliver_task = asyncio.create_task(self._deliver_loop())
        return self._task

    def is_connected(self):
        return self.connected.is_set()

    async def publish(self, topic, payload, qos=0, retain=False):
        """Send one message. Returns once written (QoS 0) or acknowledged (QoS 1).

        Raises ``NotConnected`` when offline or if the link drops first, ``DeliveryFailed`` when PUBACK never
        came; in both cases the broker may or may not have it, and the caller's outbox keeps it.
        """
        pkt = mp.encode_publish(topic, payload, qos, retain, False, qos or None)  # validates
        await self._send_publish(self._live_link(), pkt, qos)

    async def subscribe(self, topic_filter, qos=1):
        """Remember the subscription (re-sent on every connect) and send it now if online.

        Returns the granted QoS, or None when offline (it goes out with the next connect). Raises
        ``SubscribeRefused`` (and forgets the filter) on SUBACK 0x80.
        """
        mp.check_int(qos, 0, 1, "qos")  # QoS 2 is not implemented
        pkt = mp.encode_subscribe(1, [(topic_filter, qos)])  # validates
        self.subs[topic_filter] = qos
        try:
            code = (await self._request(self._live_link(), mp.SUBACK, pkt)).return_codes[0]
        except NotConnected:
            return None
        if code == 0x80:
            self.subs.pop(topic_filter, None)
            raise SubscribeRefused("SUBACK 0x80 for %r" % (topic_filter,))
        return code

    async def unsubscribe(self, topic_filter):
        """Forget the filter; send UNSUBSCRIBE if online (offline: a clean session forgets it anyway)."""
        pkt = mp.encode_unsubscribe(1, [topic_filter])  # validates
        self.subs.pop(topic_filter, None)
        try:
            await self._request(self._live_link(), mp.UNSUBACK, pkt)
        except NotConnected:
            pass

    async def next_message(self):
        """Next received PUBLISH ``Packet`` (only when no ``on_message`` handler was given)."""
        while not self.inbox:
            self._ready.clear()
            await self._ready.wait()
        return self.inbox.pop(0)[0]

    async def disconnect(self, publish_will=True):
        """Clean shutdown: publish the will ourselves (a DISCONNECT discards it, §3.14.4, and the retained
        birth would otherwise claim we are online), send DISCONNECT, close the socket and stop all tasks."""
        self._closing = True
        link = self._live_link()
        if link:
            try:
                if publish_will and self.will:
                    await self._send_publish(link, self.will[0], self.will[1])
                await link.send(mp.encode_disconnect())
            except NotConnected:
                pass
        if self._link:  # also a link still in its handshake
            self._link.kill("disconnect() called")
        for t in (self._task, self._deliver_task):
            if t:
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    pass
        self._task = self._deliver_task = None
        if self._link:
            await self._close_link(self._link)
            self._link = None
        self.connected.clear()

    # ---- connection policy ---------------------------------------------------------------------------------

    def _log(self, level, fmt, *args):
        if self.on_log:
            try:
                self.on_log(level, fmt % args)
            except Exception:  # a broken log hook must not take the link down
                pass

    def _live_link(self):
        link = self._link
        if link and self.connected.is_set() and not link.dead.is_set():
            return link
        return None

    def _check_closing(self):
        # Re-checked after each step: on CPython 3.11 a wait_for that completes just as the task is cancelled
        # swallows the cancellation, so disconnect() cannot rely on cancel() alone.
        if self._closing:
            raise NotConnected("disconnect() called")

    async def _run(self):
        attempt = 0
        where = "%s:%d as %s" % (self.host, self.port, self.client_id)
        while not self._closing:
            link = None
            level = "info"
            try:
                kw = {}
                if self.ssl:
                    kw["ssl"] = self.ssl
                    if self.server_hostname:
                        kw["server_hostname"] = self.server_hostname
                self._log("debug", "connecting to %s", where)
                timeout = self.connect_timeout_ms / 1000
                op = self._open or asyncio.open_connection  # looked up late: the wasm port has none
                r, w = await asyncio.wait_for(op(self.host, self.port, **kw), timeout)
                link = self._link = _Link(r, w, self)
                self._check_closing()
                # CONNECT, then the first packet from the broker MUST be CONNACK (§3.2)
                await link.send(self._connect_packet)
                ev = await asyncio.wait_for(link.next_packet(), timeout)
                if ev is mp.CLOSED:
                    raise NotConnected("closed before CONNACK")
                if ev.type != mp.CONNACK:
                    raise MQTTPacketError("%s first, must be CONNACK (§3.2)" % mp.packet_name(ev.type),
                                          "packet_type")
                rc = ev.return_code
                if rc:
                    level = "warning"
                    why = "refused: %d (%s)" % (rc, mp.CONNACK_NAMES[rc])
                else:
                    self._check_closing()
                    await self._link_up(link)
                    self._log("info", "connected to %s", where)
                    self._check_closing()
                    await link.dead.wait()
                    why = link.reason
            except MQTTPacketError as e:
                level = "warning"
                why = "malformed packet: %s" % e
            except Exception as e:
                why = "%s: %s" % (type(e).__name__, e)
                if not isinstance(e, (OSError, EOFError, asyncio.TimeoutError, NotConnected)):
                    level = "error"  # a bug must not kill the node's only uplink
            finally:
                self.connected.clear()
                if link:
                    up = link.up_since
                    if up is not None and ticks_diff(ticks_ms(), up) >= self.backoff_max_ms:
                        attempt = 0  # stable for a while: start the backoff from the bottom again
                    await self._close_link(link)
                    if self._link is link:
                        self._link = None
            self.last_error = why
            if self._closing:
                break
            delay = backoff_ms(attempt, self.backoff_min_ms, self.backoff_max_ms, self._rand)
            attempt += 1
            self._log(level, "link to %s down: %s; reconnecting in %d ms (attempt %d)", where, why, delay,
                      attempt)
            await asyncio.sleep(delay / 1000)

    async def _link_up(self, link):
        """Start the link's tasks, resubscribe, publish the birth, then announce ``connected``.

        Subscriptions go first so that whoever reacts to our birth (the gateway sending a command) finds us
        already subscribed. Every remembered filter not yet in ``sent`` goes out in one SUBSCRIBE per round
        until none is left (subscribe() calls made while we wait, e.g. during the birth, join the next round).
        """
        link.tasks.append(asyncio.create_task(self._read_loop(link)))
        if self.keepalive_ms:
            link.tasks.append(asyncio.create_task(self._keepalive_loop(link)))
        sent = {}
        birth = self.birth
        while True:
            items = [(f, q) for f, q in self.subs.items() if sent.get(f) != q]
            if items:
                codes = (await self._request(link, mp.SUBACK, mp.encode_subscribe(1, items))).return_codes
                for i, (flt, qos) in enumerate(items):
                    sent[flt] = qos
                    if codes[i:i + 1] == [0x80]:
                        self._log("warning", "SUBACK 0x80 for %r", flt)
            elif birth:
                await self._send_publish(link, birth[0], birth[1])
                birth = None
            else:
                break
        link.up_since = ticks_ms()
        self.connects += 1
        self.connected.set()

    async def _close_link(self, link):
        link.kill(link.reason or "closed")
        tasks = link.tasks
        link.tasks = []
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception as e:
                self._log("error", "link task: %r", e)
        try:
            link.writer.close()
            await asyncio.wait_for(link.writer.wait_closed(), 1)  # MicroPython closes the socket here
        except Exception as e:  # the socket is already broken: nothing more to do
            self._log("debug", "close: %r", e)

    # ---- per-link tasks ------------------------------------------------------------------------------------

    async def _read_loop(self, link):
        why = "broker closed the connection"
        try:
            while not link.dead.is_set():
                ev = await link.next_packet()
                if ev is mp.CLOSED:
                    break
                t = ev.type
                if t == mp.PUBLISH:
                    self._log("debug", "received %s qos %d", ev.topic, ev.qos)
                    if len(self.inbox) >= self.inbox_size:
                        # Not acknowledged: a persistent session's broker redelivers it on the next connect.
                        self.dropped += 1
                        self._log("warning", "inbox full: dropped %s (%d so far)", ev.topic, self.dropped)
                        continue
                    self.inbox.append((ev, link))
                    self._ready.set()
                    if not self.on_message and ev.qos:
                        await link.send(mp.encode_puback(ev.packet_id))  # queued = accepted
                elif t == mp.PINGRESP:
                    link.ping_sent = None
                elif t == mp.CONNACK:
                    raise MQTTPacketError("second CONNACK (§3.2)", "packet_type")
                else:  # PUBACK, SUBACK, UNSUBACK
                    w = link.waiters.get(ev.packet_id)
                    if not w or w[2] != t:  # e.g. the PUBACK of a first send after its DUP resend
                        self._log("debug", "unexpected %r", ev)
                    else:
                        del link.waiters[ev.packet_id]
                        w[1] = ev
                        w[0].set()
        except MQTTPacketError as e:
            why = "malformed packet: %s" % e
            self._log("warning", "%s", why)
        except (OSError, EOFError) as e:
            why = "read failed: %r" % (e,)
        except NotConnected:
            pass  # a PUBACK could not be sent: the link is already dead
        except Exception as e:
            why = "reader failed: %r" % (e,)
            self._log("error", "%s", why)
        link.kill(why)  # a no-op if the link died first

    async def _deliver_loop(self):
        """Runs ``on_message`` for each message in arrival order, then sends its PUBACK (§4.6 order)."""
        while True:
            while not self.inbox:
                self._ready.clear()
                await self._ready.wait()
            msg, link = self.inbox.pop(0)
            try:
                r = self.on_message(msg)
                if hasattr(r, "send"):  # coroutine (CPython) / generator (MicroPython)
                    await r
            except Exception as e:  # acknowledged anyway: a message that crashes the handler must not loop
                self._log("error", "handler raised %r on %s", e, msg.topic)
            if msg.qos:
                try:
                    await link.send(mp.encode_puback(msg.packet_id))
                except NotConnected:
                    pass

    async def _keepalive_loop(self, link):
        """PINGREQ after keepalive/2 without sending; no PINGRESP in ping_timeout_ms = dead link (§3.1.2.10).

        Sleeps until the next deadline rather than polling.
        """
        interval = max(1, self.keepalive_ms // _D.MQTT_PING_IDLE_FRACTION)
        limit = self.ping_timeout_ms
        try:
            while not link.dead.is_set():
                now = ticks_ms()
                if link.ping_sent is not None:
                    delay = limit - ticks_diff(now, link.ping_sent)
                    if delay <= 0:
                        link.kill("no PINGRESP in %d ms" % limit)
                else:
                    delay = interval - ticks_diff(now, link.last_sent)
                    if delay <= 0:
                        link.ping_sent = now
                        await link.send(mp.encode_pingreq())
                        self._log("debug", "PINGREQ")
                        continue
                await asyncio.sleep(delay / 1000)
        except NotConnected:
            pass

    # ---- request/response ----------------------------------------------------------------------------------

    async def _send_publish(self, link, pkt, qos):
        if qos:
            await self._request(link, mp.PUBACK, pkt)
        elif link:
            await link.send(pkt)
        else:
            raise NotConnected("not connected")

    async def _request(self, link, ack, pkt):
        """Send a SUBSCRIBE (``ack`` SUBACK), UNSUBSCRIBE (UNSUBACK) or QoS 1 PUBLISH (PUBACK) encoded with
        packet id 1, under a free packet id, and return the ack. A PUBLISH is resent with DUP=1 (same packet
        id and content, §3.3.1.1) up to ``publish_retries`` times; a missing ack means a dead link."""
        if not link:
            raise NotConnected("not connected")
        pid = self._pid
        for _ in range(65535):
            pid = pid % 65535 + 1
            if pid not in link.waiters:
                break
        else:
            raise NotConnected("all packet ids in flight")
        self._pid = pid
        pkt = bytearray(pkt)
        i = 2  # the packet id follows the Remaining Length (§2.2.3), in a PUBLISH also the topic (§3.3.2)
        while pkt[i - 1] & 0x80:
            i += 1
        if ack == mp.PUBACK:
            i += 2 + (pkt[i] << 8 | pkt[i + 1])
        pkt[i] = pid >> 8
        pkt[i + 1] = pid & 255
        sends = 1 + (self.publish_retries if ack == mp.PUBACK else 0)
        w = link.waiters[pid] = [asyncio.Event(), None, ack]
        try:
            for n in range(sends):
                if n:
                    pkt = bytearray(pkt)  # a transport may still hold the first one
                    pkt[0] |= 8
                    self._log("info", "no PUBACK for %d: resend %d/%d with DUP", pid, n, sends - 1)
                await link.send(pkt)
                try:
                    await asyncio.wait_for(w[0].wait(), self.puback_timeout_ms / 1000)
                except asyncio.TimeoutError:
                    continue
                if isinstance(w[1], Exception):
                    raise w[1]
                return w[1]
        finally:
            link.waiters.pop(pid, None)
        why = "no %s for %d after %d sends" % (mp.packet_name(ack), pid, sends)
        link.kill(why)
        raise (DeliveryFailed if ack == mp.PUBACK else NotConnected)(why)
