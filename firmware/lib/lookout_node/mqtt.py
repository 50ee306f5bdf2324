"""Asyncio MQTT 3.1.1 client for nodes; runs unchanged on MicroPython 1.27 and CPython 3.11.

Theory of operation (the mqtt_as split, by composition rather than inheritance):

- ``protocols.mqttpacket`` owns every byte (encoders, ``PacketReader``); nothing here builds a packet by hand.
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
with no handler, messages go to a bounded inbox read by ``await next_message()`` and are acknowledged once
queued. A handler may itself ``await client.publish(...)``: the reader keeps running, so the PUBACK arrives.

Delivery policy (defaults in protocols/defaults.py, prose in docs/PROTOCOL.md §15): QoS 1 publish waits
for PUBACK ``puback_timeout_ms``, resends with DUP=1 up to ``publish_retries`` times, then declares the link
dead and raises ``DeliveryFailed``; ``publish()`` while offline raises ``NotConnected`` at once. Both are
``NotConnected``, so the app's outbox keeps the message and tries again later. Nothing is queued here.

Logging policy (``on_log(level, text)``): "debug" normal flow, "info" reconnects/resends, "warning" a
misbehaving broker or a refused CONNACK, "error" a bug in a handler. Passwords are never logged.

Written for a node's heap (every class, method and string constant is resident): three classes besides the
exceptions, waiters as small lists, one request routine for SUBSCRIBE, UNSUBSCRIBE and QoS 1 PUBLISH.
"""

import asyncio

from lookout_node.hal import ticks_diff, ticks_ms
from protocols import defaults as _D
from protocols import mqttpacket as mp
from protocols.errors import LocalProtocolError, MQTTPacketError


class NotConnected(Exception):
    """No live link: the message was NOT handed to the broker (or not confirmed); the caller keeps it."""


class DeliveryFailed(NotConnected):
    """A QoS 1 PUBLISH got no PUBACK after all resends; the link is being reset. The caller keeps it."""


class SubscribeRefused(Exception):
    """SUBACK return code 0x80 (§3.9.3), typically an ACL denial."""


def backoff_ms(attempt, min_ms=_D.MQTT_BACKOFF_MIN_MS, max_ms=_D.MQTT_BACKOFF_MAX_MS, rand=None):
    """Delay before reconnect ``attempt`` (0-based): ``cap = min(max_ms, min_ms * 2**attempt)``, then
    "equal jitter": half of ``cap`` fixed plus a random part of the other half, so it is never 0 and nodes
    spread out. ``rand`` returns a float in [0, 1) (inject a fixed one in tests)."""
    cap = min_ms
    while attempt > 0 and cap < max_ms:  # no big shifts: stops at max_ms
        cap *= 2
        attempt -= 1
    cap = min(cap, max_ms)
    return cap // 2 + int((rand or _rand)() * (cap - cap // 2))


def _rand():
    import random

    return random.getrandbits(24) / 16777216


def _msg_spec(spec, field):
    """``(topic, payload[, qos[, retain]])`` -> a validated 4-tuple; qos defaults to 1, retain to True."""
    if spec is None:
        return None
    if not isinstance(spec, (tuple, list)) or not 2 <= len(spec) <= 4:
        raise LocalProtocolError("must be (topic, payload[, qos[, retain]]), got %r" % (spec,), field=field)
    t = tuple(spec) + (1, True)[len(spec) - 2:]
    mp.validate_topic_name(t[0])
    if t[2] not in (0, 1):
        raise LocalProtocolError("qos must be 0 or 1, got %r" % (t[2],), field=field)
    return (t[0], t[1].encode() if isinstance(t[1], str) else t[1], t[2], bool(t[3]))


class Inbox:
    """Bounded FIFO of received messages; a full inbox drops and counts (``dropped``)."""

    def __init__(self, size):
        self.size = size
        self.dropped = 0
        self._items = []
        self._ready = asyncio.Event()

    def __len__(self):
        return len(self._items)

    def put_nowait(self, item):
        if len(self._items) >= self.size:
            self.dropped += 1
            return False
        self._items.append(item)
        self._ready.set()
        return True

    async def get(self):
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.pop(0)


class _Link:
    """One connection to the broker. Created per connect, discarded on any failure."""

    def __init__(self, reader, writer, client):
        self.reader = reader
        self.writer = writer
        self.packets = mp.PacketReader(client.max_packet_size)
        self.send_timeout_ms = client.send_timeout_ms
        self.waiters = {}  # packet id -> [Event, the ack or a NotConnected, expected ack type]
        self.dead = asyncio.Event()
        self.reason = None
        self.tasks = []
        self.last_sent = ticks_ms()
        self.ping_sent = None  # ticks of the outstanding PINGREQ, or None
        self.up_since = None
        self._wlock = asyncio.Lock()

    def kill(self, reason):
        if self.dead.is_set():
            return
        self.reason = reason
        self.dead.set()
        err = NotConnected("link lost: " + reason)
        for w in self.waiters.values():
            w[1] = err
            w[0].set()
        self.waiters = {}

    async def send(self, data):
        try:
            async with self._wlock:  # MicroPython's Stream loses bytes if two tasks drain at once
                if self.dead.is_set():
                    raise NotConnected("link lost: %s" % self.reason)
                self.writer.write(data)
                await asyncio.wait_for(self.writer.drain(), self.send_timeout_ms / 1000)
                self.last_sent = ticks_ms()
                return
        except asyncio.TimeoutError:  # before OSError (CPython's is one); MicroPython's asyncio has its own
            why = "send not drained within %d ms" % self.send_timeout_ms
        except OSError as e:
            why = "send failed: %r" % (e,)
        self.kill(why)
        raise NotConnected("link lost: " + self.reason)

    async def next_packet(self, chunk):
        """The next decoded packet, or ``mp.CLOSED`` at end of stream. Raises MQTTPacketError, OSError."""
        while True:
            ev = self.packets.next_event()
            if ev is not mp.NEED_DATA:
                return ev
            self.packets.receive_data(await self.reader.read(chunk))


class MQTTClient:
    """A node's connection to the broker, kept up until ``disconnect()``.

    ``will``/``birth``: ``(topic, payload[, qos=1[, retain=True]])``. ``ssl``: None, True or an SSLContext,
    passed to ``open_connection`` (both runtimes accept it). ``on_message(msg)``: plain or async function
    taking a PUBLISH ``mqttpacket.Packet`` (``topic``, ``payload``, ``qos``...); without it use ``await
    next_message()``. ``rand``: float in [0, 1) source for the jitter and the default client id.
    ``open_connection``: the transport (default ``asyncio.open_connection``; the node passes its HAL's).
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
        self.port = port if port is not None else (_D.MQTT_TLS_PORT if ssl else _D.MQTT_PORT)
        self._rand = rand or _rand
        if client_id is None:
            client_id = "lookout-%08x" % int(self._rand() * 0xFFFFFFFF)
        self.client_id = client_id
        self.will = _msg_spec(will, "will")
        self.birth = _msg_spec(birth, "birth")
        if backoff_min_ms < 1 or backoff_max_ms < backoff_min_ms:
            raise LocalProtocolError("need 1 <= backoff_min_ms <= backoff_max_ms, got %r, %r"
                                     % (backoff_min_ms, backoff_max_ms), field="backoff")
        w = self.will or (None, b"", 0, False)
        # Built (and so validated) once: a bad will topic or client id fails here, not on every reconnect.
        self._connect_packet = mp.encode_connect(client_id, clean_session, keepalive_s, username, password,
                                                 w[0], w[1], w[2], w[3])
        self.keepalive_ms = keepalive_s * 1000
        if ping_timeout_ms is None:
            ping_timeout_ms = min(_D.MQTT_PINGRESP_TIMEOUT_MS, max(1, self.keepalive_ms // 2))
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
        self.inbox = Inbox(inbox_size)
        self.connected = asyncio.Event()  # set while a link is up, subscribed and the birth is out
        self.connects = 0  # successful connections so far (a reconnect counter for heartbeats)
        self.last_error = None  # why the last link ended, for the heartbeat / diagnostics
        self._subs = {}  # topic filter -> requested qos; re-sent on every connect
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
            if self.on_message is not None:
                self._deliver_task = asyncio.create_task(self._deliver_loop())
        return self._task

    def is_connected(self):
        return self.connected.is_set()

    async def publish(self, topic, payload, qos=0, retain=False):
        """Send one message. Returns once written (QoS 0) or acknowledged (QoS 1).

        Raises ``NotConnected`` when offline or if the link drops first, ``DeliveryFailed`` when PUBACK never
        came; in both cases the broker may or may not have it, and the caller's outbox keeps it.
        """
        mp.check_int(qos, 0, 1, "qos")
        mp.validate_topic_name(topic)
        link = self._live_link()
        if link is None:
            raise NotConnected("not connected to %s:%d" % (self.host, self.port))
        await self._publish_on(link, topic, payload, qos, retain)

    async def subscribe(self, topic_filter, qos=1):
        """Remember the subscription (re-sent on every connect) and send it now if online.

        Returns the granted QoS, or None when offline (it goes out with the next connect). Raises
        ``SubscribeRefused`` (and forgets the filter) on SUBACK 0x80.
        """
        mp.validate_topic_filter(topic_filter)
        mp.check_int(qos, 0, 1, "qos")  # QoS 2 is not implemented
        self._subs[topic_filter] = qos
        link = self._live_link()
        if link is None:
            return None
        try:
            code = (await self._request(link, mp.SUBACK, [(topic_filter, qos)])).return_codes[0]
        except NotConnected:
            return None
        if code == 0x80:
            self._subs.pop(topic_filter, None)
            raise SubscribeRefused("broker refused subscription to %r (SUBACK 0x80)" % (topic_filter,))
        return code

    async def unsubscribe(self, topic_filter):
        """Forget the filter; send UNSUBSCRIBE if online (offline: a clean session forgets it anyway)."""
        mp.validate_topic_filter(topic_filter)
        self._subs.pop(topic_filter, None)
        link = self._live_link()
        if link is not None:
            try:
                await self._request(link, mp.UNSUBACK, [topic_filter])
            except NotConnected:
                pass

    def subscriptions(self):
        return dict(self._subs)

    async def next_message(self):
        """Next received PUBLISH ``Packet`` (only when no ``on_message`` handler was given)."""
        return (await self.inbox.get())[0]

    async def disconnect(self, publish_will=True):
        """Clean shutdown: publish the will ourselves (a DISCONNECT discards it, §3.14.4, and the retained
        birth would otherwise claim we are online), send DISCONNECT, close the socket and stop all tasks."""
        self._closing = True
        link = self._live_link()
        if link is not None:
            try:
                if publish_will and self.will is not None:
                    await self._publish_on(link, *self.will)
                await link.send(mp.encode_disconnect())
            except NotConnected:
                pass
        if self._link is not None:  # also a link still in its handshake
            self._link.kill("disconnect() called")
        for t in (self._task, self._deliver_task):
            if t is not None:
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    pass
        self._task = self._deliver_task = None
        if self._link is not None:
            await self._close_link(self._link)
            self._link = None
        self.connected.clear()

    # ---- connection policy ---------------------------------------------------------------------------------

    def _log(self, level, text):
        if self.on_log is not None:
            try:
                self.on_log(level, text)
            except Exception:  # a broken log hook must not take the link down
                pass

    def _live_link(self):
        link = self._link
        if link is None or not self.connected.is_set() or link.dead.is_set():
            return None
        return link

    def _check_closing(self):
        # Re-checked after each step: on CPython 3.11 a wait_for that completes just as the task is cancelled
        # swallows the cancellation, so disconnect() cannot rely on cancel() alone.
        if self._closing:
            raise NotConnected("disconnect() called")

    async def _run(self):
        attempt = 0
        while not self._closing:
            link = None
            level = "info"
            try:
                kw = {}
                if self.ssl is not None:
                    kw["ssl"] = self.ssl
                    if self.server_hostname is not None:
                        kw["server_hostname"] = self.server_hostname
                self._log("debug", "connecting to %s:%d as %s" % (self.host, self.port, self.client_id))
                timeout = self.connect_timeout_ms / 1000
                r, w = await asyncio.wait_for((self._open or asyncio.open_connection)(self.host, self.port, **kw),
                                              timeout)
                link = self._link = _Link(r, w, self)
                self._check_closing()
                # CONNECT, then the first packet from the broker MUST be CONNACK (§3.2)
                await link.send(self._connect_packet)
                ev = await asyncio.wait_for(link.next_packet(self.read_chunk), timeout)
                if ev is mp.CLOSED:
                    raise NotConnected("broker closed the connection before CONNACK")
                if ev.type != mp.CONNACK:
                    raise MQTTPacketError("first packet from the broker is %s; must be CONNACK (§3.2)"
                                          % mp.packet_name(ev.type), field="packet_type")
                rc = ev.return_code
                if rc:
                    level = "warning"
                    why = "broker refused the connection: %d (%s)" % (rc, mp.CONNACK_NAMES[rc])
                else:
                    self._check_closing()
                    await self._link_up(link)
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
                if link is not None:
                    up = link.up_since
                    if up is not None and ticks_diff(ticks_ms(), up) >= self.backoff_max_ms:
                        attempt = 0  # stable for a while: start the backoff from the bottom again
                    await self._close_link(link)
                    if self._link is link:
                        self._link = None
            self.last_error = why
            self._log(level, "link to %s:%d down: %s" % (self.host, self.port, why))
            if self._closing:
                break
            delay = backoff_ms(attempt, self.backoff_min_ms, self.backoff_max_ms, self._rand)
            attempt += 1
            self._log("info", "reconnecting in %d ms (attempt %d)" % (delay, attempt))
            await asyncio.sleep(delay / 1000)

    async def _link_up(self, link):
        """Start the link's tasks, resubscribe, publish the birth, then announce ``connected``.

        Subscriptions go first so that whoever reacts to our birth (the gateway sending a command) finds us
        already subscribed.
        """
        link.tasks.append(asyncio.create_task(self._read_loop(link)))
        if self.keepalive_ms:
            link.tasks.append(asyncio.create_task(self._keepalive_loop(link)))
        sent = {}
        await self._resubscribe(link, sent)
        if self.birth is not None:
            await self._publish_on(link, *self.birth)
            await self._resubscribe(link, sent)  # filters added by subscribe() while the birth was in flight
        link.up_since = ticks_ms()
        self.connects += 1
        self.connected.set()
        self._log("info", "connected to %s:%d as %s" % (self.host, self.port, self.client_id))

    async def _resubscribe(self, link, sent):
        """SUBSCRIBE every remembered filter not yet in ``sent``, in one packet per round, until none is left
        (subscribe() calls made while we wait are picked up by the next round)."""
        while True:
            items = [(f, q) for f, q in self._subs.items() if sent.get(f) != q]
            if not items:
                return
            codes = (await self._request(link, mp.SUBACK, items)).return_codes
            for i, (flt, qos) in enumerate(items):
                sent[flt] = qos
                if codes[i:i + 1] == [0x80]:
                    self._log("warning", "broker refused resubscription to %r (SUBACK 0x80)" % (flt,))

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
                self._log("error", "link task ended with %r" % (e,))
        try:
            link.writer.close()
            await asyncio.wait_for(link.writer.wait_closed(), 1)  # MicroPython closes the socket here
        except Exception as e:  # the socket is already broken: nothing more to do
            self._log("debug", "close: %r" % (e,))

    # ---- per-link tasks ------------------------------------------------------------------------------------

    async def _read_loop(self, link):
        try:
            while not link.dead.is_set():
                ev = await link.next_packet(self.read_chunk)
                if ev is mp.CLOSED:
                    link.kill("broker closed the connection")
                    return
                t = ev.type
                if t == mp.PUBLISH:
                    self._log("debug", "received %s qos %d (%d bytes)" % (ev.topic, ev.qos, len(ev.payload)))
                    if not self.inbox.put_nowait((ev, link)):
                        # Not acknowledged: a persistent session's broker redelivers it on the next connect.
                        self._log("warning", "inbox full (%d): dropped %s (dropped so far: %d)"
                                  % (self.inbox.size, ev.topic, self.inbox.dropped))
                    elif self.on_message is None and ev.qos:
                        await link.send(mp.encode_puback(ev.packet_id))  # queued = accepted
                elif t == mp.PINGRESP:
                    link.ping_sent = None
                elif t == mp.CONNACK:
                    raise MQTTPacketError("CONNACK after CONNACK; not allowed (§3.2)", field="packet_type")
                else:  # PUBACK, SUBACK, UNSUBACK
                    w = link.waiters.get(ev.packet_id)
                    if w is None or w[2] != t:  # e.g. the PUBACK of a first send after its DUP resend
                        self._log("debug", "unexpected %r" % (ev,))
                    else:
                        del link.waiters[ev.packet_id]
                        w[1] = ev
                        w[0].set()
        except MQTTPacketError as e:
            self._log("warning", "malformed packet from broker: %s" % e)
            link.kill("malformed packet: %s" % e)
        except (OSError, EOFError) as e:
            link.kill("read failed: %r" % (e,))
        except NotConnected:
            pass  # a PUBACK could not be sent: the link is already dead
        except Exception as e:
            self._log("error", "reader failed: %r" % (e,))
            link.kill("reader failed: %r" % (e,))

    async def _deliver_loop(self):
        """Runs ``on_message`` for each message in arrival order, then sends its PUBACK (§4.6 order)."""
        while True:
            msg, link = await self.inbox.get()
            try:
                r = self.on_message(msg)
                if r is not None and hasattr(r, "send"):  # coroutine (CPython) / generator (MicroPython)
                    await r
            except Exception as e:  # acknowledged anyway: a message that crashes the handler must not loop
                self._log("error", "message handler raised %r on %s" % (e, msg.topic))
            if msg.qos and not link.dead.is_set():
                try:
                    await link.send(mp.encode_puback(msg.packet_id))
                except NotConnected:
                    pass

    async def _keepalive_loop(self, link):
        """PINGREQ after keepalive/2 without sending; no PINGRESP in ping_timeout_ms = dead link (§3.1.2.10).

        Sleeps until the next deadline rather than polling.
        """
        interval = max(1, self.keepalive_ms // _D.MQTT_PING_IDLE_FRACTION)
        try:
            while not link.dead.is_set():
                now = ticks_ms()
                if link.ping_sent is not None:
                    waited = ticks_diff(now, link.ping_sent)
                    if waited >= self.ping_timeout_ms:
                        link.kill("no PINGRESP within %d ms" % self.ping_timeout_ms)
                        return
                    delay = self.ping_timeout_ms - waited
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

    async def _publish_on(self, link, topic, payload, qos, retain):
        if qos:
            await self._request(link, mp.PUBACK, (topic, payload, retain))
        else:
            await link.send(mp.encode_publish(topic, payload, 0, retain))

    async def _request(self, link, ack, arg):
        """Send SUBSCRIBE (``ack`` SUBACK, ``arg`` [(filter, qos)]), UNSUBSCRIBE (UNSUBACK, [filter]) or a
        QoS 1 PUBLISH (PUBACK, (topic, payload, retain)) and return the ack. A PUBLISH is resent with DUP=1 (same
        packet id and content, §3.3.1.1) up to ``publish_retries`` times; a missing ack means a dead link."""
        pid = self._pid
        for _ in range(65535):
            pid = pid % 65535 + 1
            if pid not in link.waiters:
                break
        else:
            raise NotConnected("all 65535 packet ids in flight")
        self._pid = pid
        sends = 1
        if ack == mp.PUBACK:
            packet = mp.encode_publish(arg[0], arg[1], 1, arg[2], False, pid)
            sends += self.publish_retries
        else:
            packet = (mp.encode_subscribe if ack == mp.SUBACK else mp.encode_unsubscribe)(pid, arg)
        w = link.waiters[pid] = [asyncio.Event(), None, ack]
        try:
            for n in range(sends):
                if n:
                    packet = bytearray(packet)
                    packet[0] |= 8
                    self._log("info", "no PUBACK for %d within %d ms: resend %d/%d with DUP"
                              % (pid, self.puback_timeout_ms, n, sends - 1))
                await link.send(packet)
                try:
                    await asyncio.wait_for(w[0].wait(), self.puback_timeout_ms / 1000)
                except asyncio.TimeoutError:
                    continue
                if isinstance(w[1], Exception):
                    raise w[1]
                return w[1]
        finally:
            link.waiters.pop(pid, None)
        why = "no %s for packet %d after %d send%s" % (mp.packet_name(ack), pid, sends,
                                                       "s" if sends > 1 else "")
        link.kill(why)
        raise (DeliveryFailed if ack == mp.PUBACK else NotConnected)(why)
