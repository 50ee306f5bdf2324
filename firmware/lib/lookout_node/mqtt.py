"""Asyncio MQTT 3.1.1 client for nodes; runs unchanged on MicroPython 1.27 and CPython 3.11.

Theory of operation (the mqtt_as split, by composition rather than inheritance):

- ``protocols.mqttpacket`` owns every byte (encoders, ``PacketReader``); nothing here builds a packet by hand.
- ``_Link`` is ONE connection: the stream pair, the packet reader, a write lock, the keepalive clock and the
  waiters for PUBACK/SUBACK/UNSUBACK keyed by packet id. A link is created per connection and thrown away with
  it, so no half-read packet, stale waiter or timer survives a reconnect. ``kill(reason)`` marks it dead,
  wakes every waiter with ``NotConnected`` and is the only way a link ends.
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
misbehaving broker, "error" a bug in a handler. Passwords are never logged.
"""

import asyncio

from protocols import defaults as _D
from protocols import mqttpacket as mp
from protocols.errors import LocalProtocolError, MQTTPacketError

try:  # MicroPython: wrapping millisecond ticks
    from time import ticks_diff as _ticks_diff
    from time import ticks_ms as _ticks_ms
except ImportError:  # CPython: monotonic milliseconds, no wrap
    import time as _time

    def _ticks_ms():
        return _time.monotonic_ns() // 1000000

    def _ticks_diff(a, b):
        return a - b


class MQTTClientError(Exception):
    """Base of the client's own errors (codec errors stay ``MQTTPacketError``/``LocalProtocolError``)."""


class NotConnected(MQTTClientError):
    """No live link: the message was NOT handed to the broker (or not confirmed); the caller keeps it."""


class DeliveryFailed(NotConnected):
    """A QoS 1 PUBLISH got no PUBACK after all resends; the link is being reset. The caller keeps it."""


class ConnectRefused(MQTTClientError):
    """CONNACK with a non-zero return code (§3.2.2.3); ``code`` and ``name`` say which."""

    def __init__(self, code, name):
        super().__init__("broker refused the connection: %d (%s)" % (code, name))
        self.code = code
        self.name = name


class SubscribeRefused(MQTTClientError):
    """SUBACK return code 0x80 (§3.9.3), typically an ACL denial."""


def backoff_ms(attempt, min_ms=_D.MQTT_BACKOFF_MIN_MS, max_ms=_D.MQTT_BACKOFF_MAX_MS, rand=None):
    """Delay before reconnect ``attempt`` (0-based): ``cap = min(max_ms, min_ms * 2**attempt)``, then
    "equal jitter": half of ``cap`` fixed plus a random part of the other half, so it is never 0 and nodes
    spread out. ``rand`` returns a float in [0, 1) (inject a fixed one in tests)."""
    if rand is None:
        rand = _default_rand
    cap = min_ms
    for _ in range(attempt):  # no big shifts: stops at max_ms
        if cap >= max_ms:
            break
        cap *= 2
    cap = min(cap, max_ms)
    half = cap // 2
    return half + int(rand() * (cap - half))


def _default_rand():
    import random

    return random.getrandbits(24) / 16777216


def _msg_spec(spec, field):
    """``(topic, payload[, qos[, retain]])`` -> a validated 4-tuple; qos defaults to 1, retain to True."""
    if spec is None:
        return None
    if not isinstance(spec, (tuple, list)) or not 2 <= len(spec) <= 4:
        raise LocalProtocolError("must be (topic, payload[, qos[, retain]]), got %r" % (spec,), field=field)
    topic = spec[0]
    payload = spec[1]
    qos = spec[2] if len(spec) > 2 else 1
    retain = bool(spec[3]) if len(spec) > 3 else True
    mp.validate_topic_name(topic)
    if qos not in (0, 1):
        raise LocalProtocolError("qos must be 0 or 1, got %r" % (qos,), field=field)
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return (topic, payload, qos, retain)


class _Waiter:
    """One expected reply (no asyncio.Future on MicroPython): an Event plus the result or the error."""

    def __init__(self):
        self.event = asyncio.Event()
        self.value = None
        self.error = None

    def resolve(self, value):
        self.value = value
        self.event.set()

    def fail(self, err):
        self.error = err
        self.event.set()


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

    def __init__(self, reader, writer, max_packet_size, send_timeout_ms):
        self.reader = reader
        self.writer = writer
        self.packets = mp.PacketReader(max_packet_size)
        self.send_timeout_ms = send_timeout_ms
        self.waiters = {}  # (packet type, packet id) -> _Waiter
        self.dead = asyncio.Event()
        self.reason = None
        self.tasks = []
        self.last_sent = _ticks_ms()
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
            w.fail(err)
        self.waiters = {}

    def expect(self, ptype, pid):
        w = _Waiter()
        self.waiters[(ptype, pid)] = w
        return w

    async def _write(self, data):
        async with self._wlock:  # MicroPython's Stream loses bytes if two tasks drain at once
            self.writer.write(data)
            await self.writer.drain()
            self.last_sent = _ticks_ms()

    async def send(self, data):
        if self.dead.is_set():
            raise NotConnected("link lost: %s" % self.reason)
        try:
            await asyncio.wait_for(self._write(data), self.send_timeout_ms / 1000)
        except asyncio.TimeoutError:  # not the builtin: MicroPython's asyncio has its own
            self.kill("send not drained within %d ms" % self.send_timeout_ms)
            raise NotConnected("link lost: %s" % self.reason) from None
        except OSError as e:
            self.kill("send failed: %r" % (e,))
            raise NotConnected("link lost: %s" % self.reason) from e

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
    taking a ``mqttpacket.Publish``; without it use ``await next_message()``. ``rand``: float in [0, 1) source
    for the jitter and the default client id. ``open_connection``: the transport (default
    ``asyncio.open_connection``; the node passes its HAL's).
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
        self._rand = rand if rand is not None else _default_rand
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
        mp.validate_topic_name(topic)
        if qos not in (0, 1):
            raise LocalProtocolError("must be 0 or 1, got %r" % (qos,), field="qos")
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
        if qos not in (0, 1):
            raise LocalProtocolError("must be 0 or 1 (QoS 2 is not implemented), got %r" % (qos,),
                                     field="qos")
        self._subs[topic_filter] = qos
        link = self._live_link()
        if link is None:
            return None
        try:
            ack = await self._request(link, mp.SUBACK,
                                      lambda pid: mp.encode_subscribe(pid, [(topic_filter, qos)]))
        except NotConnected:
            return None
        code = ack.return_codes[0]
        if code == mp.SUBACK_FAILURE:
            self._subs.pop(topic_filter, None)
            raise SubscribeRefused("broker refused subscription to %r (SUBACK 0x80)" % (topic_filter,))
        return code

    async def unsubscribe(self, topic_filter):
        """Forget the filter; send UNSUBSCRIBE if online (offline: a clean session forgets it anyway)."""
        mp.validate_topic_filter(topic_filter)
        self._subs.pop(topic_filter, None)
        link = self._live_link()
        if link is None:
            return
        try:
            await self._request(link, mp.UNSUBACK, lambda pid: mp.encode_unsubscribe(pid, [topic_filter]))
        except NotConnected:
            pass

    def subscriptions(self):
        return dict(self._subs)

    async def next_message(self):
        """Next received ``Publish`` (only when no ``on_message`` handler was given)."""
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
        for attr in ("_task", "_deliver_task"):
            t = getattr(self, attr)
            setattr(self, attr, None)
            if t is not None:
                t.cancel()
                try:
                    await t
                except asyncio.CancelledError:
                    pass
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

    async def _run(self):
        attempt = 0
        while not self._closing:
            link = None
            try:
                link = await self._open_link()
                self._link = link
                # Each step re-checks _closing: on CPython 3.11 a wait_for that completes just as the task is
                # cancelled swallows the cancellation, so disconnect() cannot rely on cancel() alone.
                self._check_closing()
                await self._handshake(link)
                self._check_closing()
                await self._link_up(link)
                self._check_closing()
                await link.dead.wait()
                self.last_error = link.reason
                self._log("info", "link down: %s" % link.reason)
            except ConnectRefused as e:
                self.last_error = str(e)
                self._log("warning", str(e))
            except MQTTPacketError as e:
                self.last_error = "malformed packet: %s" % e
                self._log("warning", "malformed packet from broker: %s" % e)
            except (OSError, EOFError, asyncio.TimeoutError, NotConnected) as e:
                self.last_error = "%s: %s" % (type(e).__name__, e)
                self._log("info", "connect to %s:%d failed: %s" % (self.host, self.port, self.last_error))
            except Exception as e:  # a bug must not kill the node's only uplink
                self.last_error = "%s: %s" % (type(e).__name__, e)
                self._log("error", "unexpected error in MQTT loop: %s" % self.last_error)
            finally:
                self.connected.clear()
                if link is not None:
                    if (link.up_since is not None
                            and _ticks_diff(_ticks_ms(), link.up_since) >= self.backoff_max_ms):
                        attempt = 0  # stable for a while: start the backoff from the bottom again
                    await self._close_link(link)
                    if self._link is link:
                        self._link = None
            if self._closing:
                break
            delay = backoff_ms(attempt, self.backoff_min_ms, self.backoff_max_ms, self._rand)
            attempt += 1
            self._log("info", "reconnecting in %d ms (attempt %d)" % (delay, attempt))
            await asyncio.sleep(delay / 1000)

    def _check_closing(self):
        if self._closing:
            raise NotConnected("disconnect() called")

    async def _open_link(self):
        opener = self._open if self._open is not None else asyncio.open_connection
        kw = {}
        if self.ssl is not None:
            kw["ssl"] = self.ssl
            if self.server_hostname is not None:
                kw["server_hostname"] = self.server_hostname
        self._log("debug", "connecting to %s:%d as %s" % (self.host, self.port, self.client_id))
        reader, writer = await asyncio.wait_for(opener(self.host, self.port, **kw),
                                                self.connect_timeout_ms / 1000)
        return _Link(reader, writer, self.max_packet_size, self.send_timeout_ms)

    async def _handshake(self, link):
        """CONNECT, then the first packet from the broker MUST be CONNACK (§3.2)."""
        await link.send(self._connect_packet)
        ev = await asyncio.wait_for(link.next_packet(self.read_chunk), self.connect_timeout_ms / 1000)
        if ev is mp.CLOSED:
            raise NotConnected("broker closed the connection before CONNACK")
        if not isinstance(ev, mp.ConnAck):
            raise MQTTPacketError("first packet from the broker is %s; must be CONNACK (§3.2)"
                                  % type(ev).__name__, field="packet_type")
        if not ev.accepted:
            raise ConnectRefused(ev.return_code, ev.name)

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
        link.up_since = _ticks_ms()
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
            ack = await self._request(link, mp.SUBACK,
                                      lambda pid, items=items: mp.encode_subscribe(pid, items))
            for i, (flt, qos) in enumerate(items):
                sent[flt] = qos
                if i < len(ack.return_codes) and ack.return_codes[i] == mp.SUBACK_FAILURE:
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
                await self._dispatch(link, ev)
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

    async def _dispatch(self, link, ev):
        if isinstance(ev, mp.Publish):
            await self._received(link, ev)
        elif isinstance(ev, mp.PingResp):
            link.ping_sent = None
        elif isinstance(ev, (mp.PubAck, mp.SubAck, mp.UnsubAck)):
            ptype = mp.PUBACK if isinstance(ev, mp.PubAck) else (
                mp.SUBACK if isinstance(ev, mp.SubAck) else mp.UNSUBACK)
            w = link.waiters.pop((ptype, ev.packet_id), None)
            if w is None:  # e.g. the PUBACK for the first send arriving after a DUP resend was acknowledged
                self._log("debug", "unexpected %r" % (ev,))
            else:
                w.resolve(ev)
        else:  # a second CONNACK
            raise MQTTPacketError("%s after CONNACK; not allowed (§3.2)" % type(ev).__name__,
                                  field="packet_type")

    async def _received(self, link, msg):
        self._log("debug", "received %s qos %d (%d bytes)" % (msg.topic, msg.qos, len(msg.payload)))
        if not self.inbox.put_nowait((msg, link)):
            # Not acknowledged: with a persistent session the broker redelivers it on the next connect.
            self._log("warning", "inbox full (%d): dropped %s (dropped so far: %d)"
                      % (self.inbox.size, msg.topic, self.inbox.dropped))
            return
        if self.on_message is None and msg.qos == 1:
            await link.send(mp.encode_puback(msg.packet_id))  # queued = accepted

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
            if msg.qos == 1 and not link.dead.is_set():
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
                now = _ticks_ms()
                if link.ping_sent is not None:
                    waited = _ticks_diff(now, link.ping_sent)
                    if waited >= self.ping_timeout_ms:
                        self._log("info", "no PINGRESP within %d ms" % self.ping_timeout_ms)
                        link.kill("no PINGRESP within %d ms" % self.ping_timeout_ms)
                        return
                    delay = self.ping_timeout_ms - waited
                else:
                    idle = _ticks_diff(now, link.last_sent)
                    if idle >= interval:
                        link.ping_sent = now
                        await link.send(mp.encode_pingreq())
                        self._log("debug", "PINGREQ")
                        continue
                    delay = interval - idle
                await asyncio.sleep(delay / 1000)
        except NotConnected:
            pass

    # ---- request/response ----------------------------------------------------------------------------------

    def _next_pid(self, link):
        for _ in range(65535):
            self._pid = self._pid % 65535 + 1
            if (mp.PUBACK, self._pid) not in link.waiters and (mp.SUBACK, self._pid) not in link.waiters \
                    and (mp.UNSUBACK, self._pid) not in link.waiters:
                return self._pid
        raise NotConnected("all 65535 packet ids in flight")

    async def _wait(self, w, timeout_ms):
        """True when the reply came, False on timeout; raises NotConnected if the link died meanwhile."""
        try:
            await asyncio.wait_for(w.event.wait(), timeout_ms / 1000)
        except asyncio.TimeoutError:
            return False
        if w.error is not None:
            raise w.error
        return True

    async def _request(self, link, ptype, make_packet):
        """SUBSCRIBE/UNSUBSCRIBE: send once and wait for the ack; a missing ack means a dead link."""
        pid = self._next_pid(link)
        w = link.expect(ptype, pid)
        try:
            await link.send(make_packet(pid))
            if await self._wait(w, self.puback_timeout_ms):
                return w.value
        finally:
            link.waiters.pop((ptype, pid), None)
        link.kill("no %s for packet %d within %d ms" % (mp.PACKET_NAMES[ptype], pid, self.puback_timeout_ms))
        raise NotConnected("link lost: %s" % link.reason)

    async def _publish_on(self, link, topic, payload, qos, retain):
        if qos == 0:
            await link.send(mp.encode_publish(topic, payload, 0, retain))
            return
        pid = self._next_pid(link)
        w = link.expect(mp.PUBACK, pid)
        packet = mp.encode_publish(topic, payload, 1, retain, False, pid)
        sends = self.publish_retries + 1
        try:
            for n in range(sends):
                if n == 1:
                    packet = bytearray(packet)
                    packet[0] |= 0x08  # DUP (§3.3.1.1): same packet id, same content
                if n:
                    self._log("info", "no PUBACK for %d within %d ms: resend %d/%d with DUP"
                              % (pid, self.puback_timeout_ms, n, self.publish_retries))
                await link.send(packet)
                if await self._wait(w, self.puback_timeout_ms):
                    return
        finally:
            link.waiters.pop((mp.PUBACK, pid), None)
        link.kill("no PUBACK for packet %d after %d sends" % (pid, sends))
        raise DeliveryFailed("no PUBACK for %s (packet %d) after %d sends" % (topic, pid, sends))
