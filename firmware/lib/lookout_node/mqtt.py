"""Asyncio MQTT 3.1.1 client for nodes; runs unchanged on MicroPython 1.27 and CPython 3.11.

Theory of operation (the mqtt_as split, by composition rather than inheritance):

- ``protocols.mqttpacket`` owns every byte (encoders, ``PacketReader``) and every argument check: the client
  validates a topic, QoS or will by encoding it, never twice. Only the packet id of a request is patched in.
- ``MQTTClient`` holds ONE connection at a time: the stream pair, the packet reader, the keepalive clock and
  the waiters for PUBACK/SUBACK/UNSUBACK keyed by packet id (ids are shared by all three, §2.3.1). Each
  connection gets a fresh ``asyncio.Event`` as its token (``_dead``), set by ``_kill(token, reason)``, the only
  way a connection ends: it wakes every waiter with ``NotConnected``. Whatever was started for a connection
  holds its token, so no stale waiter, PUBACK or timer acts on the next one; its tasks are cancelled and its
  waiter table replaced before a reconnect.
- The policy: connect, resubscribe everything it remembers, publish the retained birth, set ``connected``; on
  any failure (socket error, malformed packet, missing PUBACK/PINGRESP, refused CONNACK) log through the hook,
  back off exponentially with jitter and connect again. It never dies on bad input.

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

Written for a node's heap (every class, method, identifier and string constant is resident): one class,
exceptions made with ``type()`` (cheaper than a class statement on MicroPython), waiters as small lists, one
request routine for every PUBLISH, SUBSCRIBE and UNSUBSCRIBE, tunables kept as the constructor's arguments
only where read after construction, short log texts.
"""

import asyncio
import random

from lookout_node.hal import ticks_diff, ticks_ms
from protocols import backoff
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


def backoff_ms(n, backoff_min_ms=_D.MQTT_BACKOFF_MIN_MS, backoff_max_ms=_D.MQTT_BACKOFF_MAX_MS, rand=None):
    """Delay before reconnect attempt ``n`` (0-based): protocols/backoff.py's policy with the MQTT defaults.
    ``rand`` returns a float in [0, 1) (inject a fixed one in tests)."""
    return backoff.delay_ms(n, backoff_min_ms, backoff_max_ms, (rand or random.random)())


def _publish_packet(spec, field):
    """``(topic, payload[, qos=1[, retain=True]])`` -> ``(packet, qos, spec as a 4-tuple)``, checked by
    encoding it (a QoS 1 packet carries packet id 1 until ``_request`` patches in its own)."""
    if not isinstance(spec, (tuple, list)) or not 2 <= len(spec) <= 4:
        raise LocalProtocolError("must be (topic, payload[, qos[, retain]]), got %r" % (spec,), field)
    t = tuple(spec) + (1, True)[len(spec) - 2:]
    return mp.encode_publish(t[0], t[1], t[2], t[3], False, t[2] or None), t[2], t


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
        self.rand = rand = rand or random.random
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
        self.keepalive_ms = keepalive_s = keepalive_s * 1000
        self.ping_timeout_ms = ping_timeout_ms or min(_D.MQTT_PINGRESP_TIMEOUT_MS, keepalive_s // 2 or 1)
        # open_connection's keyword arguments (the wasm port's asyncio has no open_connection: looked up late)
        self._kw = {"ssl": ssl, "server_hostname": server_hostname} if ssl else {}
        self._open = open_connection
        self.on_message = on_message
        self.on_log = on_log
        self.puback_timeout_ms = puback_timeout_ms
        self.publish_retries = publish_retries
        self.connect_timeout_ms = connect_timeout_ms
        self.send_timeout_ms = send_timeout_ms
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self.max_packet_size = max_packet_size
        self.read_chunk = read_chunk
        self.inbox_size = inbox_size
        self.inbox = []  # (message, token of its connection) received and not yet handled
        self.dropped = 0  # messages a full inbox dropped (not acknowledged: a persistent session redelivers)
        self._ready = asyncio.Event()  # set when the inbox holds something
        self.connected = asyncio.Event()  # set while a link is up, subscribed and the birth is out
        self.connects = 0  # successful connections so far (a reconnect counter for heartbeats)
        self.last_error = None  # why the last link ended, for the heartbeat / diagnostics
        self.subs = {}
        self.msg_link = None  # token of the connection the message being handled arrived on
        # the current (or last) connection: its token, streams, packet reader, waiters, tasks, clocks
        self._dead = self.reader = self.writer = self._packets = self._task = self._deliver_task = None
        self._waiters = {}  # packet id -> [Event, the ack or a NotConnected, expected ack type]
        self._tasks = []
        self._last_sent = self._ping_sent = None  # ticks: last write; the outstanding PINGREQ (or None)
        self._wlock = asyncio.Lock()  # MicroPython's Stream loses bytes if two tasks drain at once
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
        await self._request(mp.encode_publish(topic, payload, qos, retain, False, qos or None),  # validates
                            qos and mp.PUBACK)

    async def subscribe(self, topic_filter, qos=1):
        """Remember the subscription (re-sent on every connect) and send it now if online.

        Returns the granted QoS, or None when offline (it goes out with the next connect). Raises
        ``SubscribeRefused`` (and forgets the filter) on SUBACK 0x80.
        """
        mp.check_int(qos, 0, 1, "qos")  # QoS 2 is not implemented
        pkt = mp.encode_subscribe(1, [(topic_filter, qos)])  # validates
        self.subs[topic_filter] = qos
        try:
            code = (await self._request(pkt, mp.SUBACK)).return_codes[0]
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
            await self._request(pkt, mp.UNSUBACK)
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
        try:
            if publish_will and self.will:
                await self._request(self.will[0], self.will[1] and mp.PUBACK)
            await self._request(mp.DISCONNECT_BYTES)
        except NotConnected:  # offline: nothing to say
            pass
        if self._dead:  # also a connection still in its handshake
            self._kill(self._dead, "disconnect() called")
        for t in (self._task, self._deliver_task):
            if t:
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    pass
        self._task = self._deliver_task = None
        await self._close()
        self.connected.clear()

    # ---- connection policy ---------------------------------------------------------------------------------

    def _log(self, level, fmt, *args):
        if self.on_log:
            try:
                self.on_log(level, fmt % args)
            except Exception:  # a broken log hook must not take the link down
                pass

    async def _run(self):
        attempt = 0
        where = "%s:%d as %s" % (self.host, self.port, self.client_id)
        while not self._closing:
            link = up = None
            level = "info"
            try:
                self._log("debug", "connecting to %s", where)
                timeout = self.connect_timeout_ms / 1000
                r, w = await asyncio.wait_for((self._open or asyncio.open_connection)(self.host, self.port,
                                                                                     **self._kw), timeout)
                self.reader = r
                self.writer = w
                self._packets = mp.PacketReader(self.max_packet_size)
                self._last_sent = ticks_ms()
                self._ping_sent = None
                self._dead = link = asyncio.Event()
                # Checked once the socket is open: on CPython 3.11 a wait_for that completes just as the task
                # is cancelled swallows the cancellation, so disconnect() cannot rely on cancel() alone (later
                # steps fail on their own: disconnect() kills the connection's token).
                if self._closing:
                    raise NotConnected("disconnect() called")
                # CONNECT, then the first packet from the broker MUST be CONNACK (§3.2)
                await self._send(self._connect_packet, link)
                ev = await asyncio.wait_for(self._next(), timeout)
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
                    await self._link_up(link)
                    up = ticks_ms()
                    self._log("info", "connected to %s", where)
                    await link.wait()
                    why = self.last_error
            except MQTTPacketError as e:
                level = "warning"
                why = "malformed packet: %s" % e
            except Exception as e:
                why = "%s: %s" % (type(e).__name__, e)
                if not isinstance(e, (OSError, EOFError, asyncio.TimeoutError, NotConnected)):
                    level = "error"  # a bug must not kill the node's only uplink
            finally:
                self.connected.clear()
                if up is not None and ticks_diff(ticks_ms(), up) >= self.backoff_max_ms:
                    attempt = 0  # stable for a while: start the backoff from the bottom again
                if link:
                    await self._close()
            self.last_error = why
            if self._closing:
                break
            delay = backoff_ms(attempt, self.backoff_min_ms, self.backoff_max_ms, self.rand)
            attempt += 1
            self._log(level, "link to %s down: %s; reconnecting in %d ms (attempt %d)", where, why, delay,
                      attempt)
            await asyncio.sleep(delay / 1000)

    async def _link_up(self, link):
        """Start the connection's tasks, resubscribe, publish the birth, then announce ``connected``.

        Subscriptions go first so that whoever reacts to our birth (the gateway sending a command) finds us
        already subscribed. Every remembered filter not yet in ``sent`` goes out in one SUBSCRIBE per round
        until none is left (subscribe() calls made while we wait, e.g. during the birth, join the next round).
        """
        self._tasks.append(asyncio.create_task(self._read_loop(link)))
        if self.keepalive_ms:
            self._tasks.append(asyncio.create_task(self._keepalive_loop(link)))
        sent = {}
        birth = self.birth
        while True:
            items = [(f, q) for f, q in self.subs.items() if sent.get(f) != q]
            if items:
                codes = (await self._request(mp.encode_subscribe(1, items), mp.SUBACK, link)).return_codes
                for i, (flt, qos) in enumerate(items):
                    sent[flt] = qos
                    if codes[i:i + 1] == [0x80]:
                        self._log("warning", "SUBACK 0x80 for %r", flt)
            elif birth:
                await self._request(birth[0], birth[1] and mp.PUBACK, link)
                birth = None
            else:
                break
        self.connects += 1
        self.connected.set()

    def _kill(self, link, why):
        """End the connection whose token is ``link`` (a no-op if it already ended): wake its waiters."""
        if not link.is_set():
            self.last_error = why
            link.set()
            for w in self._waiters.values():
                w[1] = NotConnected("link lost: " + why)
                w[0].set()
            self._waiters = {}

    async def _close(self):
        """Kill the current connection, stop its tasks and close its socket (idempotent)."""
        if self._dead:
            self._kill(self._dead, "closed")
        tasks = self._tasks
        self._tasks = []
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
            except Exception as e:
                self._log("error", "link task: %r", e)
        w = self.writer
        if w:
            try:
                w.close()
                await asyncio.wait_for(w.wait_closed(), 1)  # MicroPython closes the socket here
            except Exception as e:  # the socket is already broken: nothing more to do
                self._log("debug", "close: %r", e)
            self.writer = None

    async def _send(self, data, link):
        """Write ``data`` on the connection whose token is ``link`` (False: offline); ``NotConnected`` if it is
        not the live one or the write fails (which kills it)."""
        ms = self.send_timeout_ms
        try:
            async with self._wlock:
                if link is self._dead and not link.is_set():
                    self.writer.write(data)
                    await asyncio.wait_for(self.writer.drain(), ms / 1000)
                    self._last_sent = ticks_ms()
                    return
        except asyncio.TimeoutError:  # before OSError (CPython's is one); MicroPython's asyncio has its own
            self._kill(link, "send not drained in %d ms" % ms)
        except OSError as e:
            self._kill(link, "send failed: %r" % (e,))
        raise NotConnected("not connected; last error: %s" % self.last_error)

    async def _next(self):
        """The next decoded packet, or ``mp.CLOSED`` at end of stream. Raises MQTTPacketError, OSError."""
        while True:
            ev = self._packets.next_event()
            if ev is not mp.NEED_DATA:
                return ev
            self._packets.receive_data(await self.reader.read(self.read_chunk))

    # ---- per-connection tasks ------------------------------------------------------------------------------

    async def _read_loop(self, link):
        why = "broker closed the connection"
        try:
            while not link.is_set():
                ev = await self._next()
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
                        await self._send(mp.encode_puback(ev.packet_id), link)  # queued = accepted
                elif t == mp.PINGRESP:
                    self._ping_sent = None
                elif t == mp.CONNACK:
                    raise MQTTPacketError("second CONNACK (§3.2)", "packet_type")
                else:  # PUBACK, SUBACK, UNSUBACK
                    w = self._waiters.get(ev.packet_id)
                    if not w or w[2] != t:  # e.g. the PUBACK of a first send after its DUP resend
                        self._log("debug", "unexpected %r", ev)
                    else:
                        del self._waiters[ev.packet_id]
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
        self._kill(link, why)  # a no-op if the link died first

    async def _deliver_loop(self):
        """Runs ``on_message`` for each message in arrival order, then sends its PUBACK (§4.6 order) on the
        connection it came from (if that one is gone, the broker redelivers it)."""
        while True:
            while not self.inbox:
                self._ready.clear()
                await self._ready.wait()
            msg, link = self.inbox.pop(0)
            self.msg_link = link  # the handler may ask which connection this came on (its token: set = gone)
            try:
                r = self.on_message(msg)
                if hasattr(r, "send"):  # coroutine (CPython) / generator (MicroPython)
                    await r
            except Exception as e:  # acknowledged anyway: a message that crashes the handler must not loop
                self._log("error", "handler raised %r on %s", e, msg.topic)
            if msg.qos:
                try:
                    await self._send(mp.encode_puback(msg.packet_id), link)
                except NotConnected:
                    pass

    async def _keepalive_loop(self, link):
        """PINGREQ after keepalive/2 without sending; no PINGRESP in ping_timeout_ms = dead link (§3.1.2.10).

        Sleeps until the next deadline rather than polling.
        """
        interval = max(1, self.keepalive_ms // _D.MQTT_PING_IDLE_FRACTION)
        limit = self.ping_timeout_ms
        try:
            while not link.is_set():
                now = ticks_ms()
                if self._ping_sent is not None:
                    delay = limit - ticks_diff(now, self._ping_sent)
                    if delay <= 0:
                        self._kill(link, "no PINGRESP in %d ms" % limit)
                else:
                    delay = interval - ticks_diff(now, self._last_sent)
                    if delay <= 0:
                        self._ping_sent = now
                        await self._send(mp.PINGREQ_BYTES, link)
                        self._log("debug", "PINGREQ")
                        continue
                await asyncio.sleep(delay / 1000)
        except NotConnected:
            pass

    # ---- request/response ----------------------------------------------------------------------------------

    async def _request(self, data, t=0, link=None):
        """Send the packet ``data`` on the connection whose token is ``link`` (default: the live one, if any). ``t`` 0:
        just write it (QoS 0 PUBLISH, DISCONNECT). Otherwise ``data`` is a SUBSCRIBE (``t`` SUBACK),
        UNSUBSCRIBE (UNSUBACK) or QoS 1 PUBLISH (PUBACK) encoded with packet id 1: it goes out under a free
        packet id and the ack is returned. A PUBLISH is resent with DUP=1 (same packet id and content,
        §3.3.1.1) up to ``publish_retries`` times; a missing ack means a dead link."""
        if link is None:
            link = self.connected.is_set() and self._dead
        if not t:
            return await self._send(data, link)
        ws = self._waiters  # this connection's: _kill() replaces it
        pid = self._pid
        for _ in range(65535):
            pid = pid % 65535 + 1
            if pid not in ws:
                break
        else:
            raise NotConnected("all packet ids in flight")
        self._pid = pid
        data = bytearray(data)
        i = 2  # the packet id follows the Remaining Length (§2.2.3), in a PUBLISH also the topic (§3.3.2)
        while data[i - 1] & 0x80:
            i += 1
        if t == mp.PUBACK:
            i += 2 + (data[i] << 8 | data[i + 1])
        data[i] = pid >> 8
        data[i + 1] = pid & 255
        sends = 1 + (self.publish_retries if t == mp.PUBACK else 0)
        w = ws[pid] = [asyncio.Event(), None, t]
        try:
            for n in range(sends):
                if n:
                    data = bytearray(data)  # a transport may still hold the first one
                    data[0] |= 8
                    self._log("info", "no PUBACK for %d: resend %d/%d with DUP", pid, n, sends - 1)
                await self._send(data, link)
                try:
                    await asyncio.wait_for(w[0].wait(), self.puback_timeout_ms / 1000)
                except asyncio.TimeoutError:
                    continue
                if isinstance(w[1], Exception):
                    raise w[1]
                return w[1]
        finally:
            ws.pop(pid, None)
        why = "no %s for %d after %d sends" % (mp.packet_name(t), pid, sends)
        self._kill(link, why)
        raise (DeliveryFailed if t == mp.PUBACK else NotConnected)(why)
