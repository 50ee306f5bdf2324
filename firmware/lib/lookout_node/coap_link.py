"""CoAP uplink for battery sensor nodes (NB-IoT style): reports as Confirmable POSTs instead of an MQTT session.

Theory of operation
-------------------
A node on a metered, sleepy cellular link cannot keep a TCP session and its keepalives up. In CoAP mode every
report is one Confirmable POST (RFC 7252 §4.2) to the gateway's CoAP bridge (gateway/coap_bridge.py)::

    POST coap://<coap.host>:<coap.port>/v1/<site>/<device>/<hb|loc|evt|state>
    Content-Format: 50 (application/json)       payload: the exact bytes protocols/messages.encode() made

The bridge republishes the unchanged bytes on ``lookout/v1/<site>/<device>/<channel>``, so the gateway cannot
tell a CoAP node from an MQTT node (except that there is no last will: see docs/FIRMWARE.md).

Layers: ``protocols.coap`` owns every byte and the retransmission state machine (``Transmitter``: initial
timeout ACK_TIMEOUT x [1, ACK_RANDOM_FACTOR], doubling, MAX_RETRANSMIT resends, §4.8). This module only moves
datagrams: one non-blocking UDP socket (``socket.socket(AF_INET, SOCK_DGRAM)``, ``connect``ed so the stack
drops datagrams from anybody but the gateway, §5.3.2), polled every ``poll_ms`` with asyncio sleeps *while an
exchange is in flight* -- MicroPython's asyncio has no datagram endpoints -- and not at all when idle. The same
code runs on CPython (the socket module is the same there); tests inject a fake socket via ``sock_factory``.

``CoAPLink`` is a drop-in for the node's ``MQTTClient`` (the subset node.py uses): ``connected`` (an
``asyncio.Event``), ``is_connected()``, ``start()``, ``await publish(topic, payload, qos, retain)``,
``await subscribe(filter, qos)`` (remembered, never sent: CoAP mode has no downlink), ``await
disconnect(publish_will)``. Plus the transport-neutral ``await send(channel, payload) -> bool`` and ``await
post(channel, payload) -> Result``.

Delivery policy (one place; docs/FIRMWARE.md repeats it):

- NSTART = 1 (§4.7): one exchange at a time; concurrent callers queue on a lock.
- 2.xx                           -> delivered. ``publish`` returns; ``send`` returns True.
- 4.00/4.02/4.04/4.05/4.13/4.15 and other 4.xx  -> the gateway refuses *this message*; resending the same bytes
  gets the same answer. ``publish`` drops it (counted in ``rejected``, reason in ``last_error``, logged as a
  warning) so one bad report cannot block the outbox head forever; ``send`` returns False.
- 4.01 Unauthorized / 4.03 Forbidden -> the gateway refuses *this node* (not provisioned, wrong site, wrong key):
  like a refused CONNACK, the link goes down and ``publish`` raises ``NotConnected`` (the outbox keeps it; a
  config change on trial rolls back).
- 4.29 (RFC 8516), 5.xx, RST, no answer after MAX_RETRANSMIT, socket error -> transient: link goes down,
  ``publish`` raises ``NotConnected``, the outbox keeps the message.
- While down, a background task probes with jittered exponential backoff (same policy as the MQTT client;
  a 5.03 Max-Age is honoured as a minimum wait, §5.9.3.4): it POSTs the birth to ``state`` when one was given
  (the gateway learns the node is back), else sends a CoAP ping (Empty CON, answered with RST, §4.3). Success sets
  ``connected`` and the node's tasks resume.

Logging (``on_log(level, text)``): debug per delivered report, info for retransmissions and link changes,
warning for a report the gateway rejected.
"""

from lookout_node.hal import asyncio, sleep_ms, ticks_diff, ticks_ms
from protocols import backoff, coap, topics
from protocols import defaults as _D
from protocols.errors import CoAPError, LocalProtocolError, ProtocolError

CHANNELS = ("hb", "loc", "evt", "state")  # what the gateway's CoAP bridge accepts (gateway/coap_bridge.py)
PATH_VERSION = "v1"

# Outcome kinds (Result.kind)
OK = "ok"  # 2.xx
REJECTED = "rejected"  # 4.xx about the message: drop it
REFUSED = "refused"  # 4.01/4.03: the gateway does not accept this node
RETRY = "retry"  # 4.29, 5.xx: gateway up but cannot take it now
RESET = "reset"  # RST: the gateway's CoAP layer does not know the exchange
TIMEOUT = "timeout"  # no ACK after MAX_RETRANSMIT (or no separate response in time)
ERROR = "error"  # socket error (network down, DNS failure)

TOO_MANY_REQUESTS = 0x9D  # 4.29, RFC 8516
_EAGAIN = (11, 35, 115)  # EAGAIN (Linux / lwIP), EAGAIN (BSD), EINPROGRESS: "nothing to read yet"


def uri_path(site, device, channel):
    """``/v1/<site>/<device>/<channel>``; LocalProtocolError for an id or channel the bridge would 4.04."""
    if not topics.is_valid_id(site):
        raise LocalProtocolError("site %r: expected 1-32 chars of [a-z0-9_-]" % (site,), field="site")
    if not topics.is_valid_id(device):
        raise LocalProtocolError("device %r: expected 1-32 chars of [a-z0-9_-]" % (device,), field="device")
    if channel not in CHANNELS:
        raise LocalProtocolError("channel %r: CoAP carries only %s" % (channel, ", ".join(CHANNELS)),
                                 field="channel")
    return "/%s/%s/%s/%s" % (PATH_VERSION, site, device, channel)


def channel_of(topic_or_channel, site, device):
    """The channel for ``publish``: a bare channel name, or an MQTT topic of THIS device (node.py passes full
    topics to its uplink). LocalProtocolError for another device's topic or a sub-level topic."""
    if "/" not in topic_or_channel:
        return topic_or_channel
    s, d, ch, sub = topics.parse(topic_or_channel)
    if s != site or d != device:
        raise LocalProtocolError("topic %r is not this node's (%s/%s)" % (topic_or_channel, site, device),
                                 field="topic")
    if sub is not None:
        raise LocalProtocolError("topic %r: CoAP carries no sub-level channels" % (topic_or_channel,),
                                 field="topic")
    return ch


def classify(code):
    """Response code -> outcome kind (see the delivery policy in the module docstring)."""
    cls = code >> 5
    if cls == 2:
        return OK
    if code in (coap.UNAUTHORIZED, coap.FORBIDDEN):
        return REFUSED
    if code == TOO_MANY_REQUESTS or cls == 5:
        return RETRY
    if cls == 4:
        return REJECTED
    return RETRY  # not a response code: treat as "try again later"


class Result:
    """Outcome of one POST: ``kind`` (module constants), ``code`` (int or None), ``diagnostic`` (str),
    ``retransmits``, ``max_age_s`` (5.03 Max-Age or None)."""

    def __init__(self, kind, code=None, diagnostic="", retransmits=0, max_age_s=None):
        self.kind = kind
        self.code = code
        self.diagnostic = diagnostic
        self.retransmits = retransmits
        self.max_age_s = max_age_s

    @property
    def ok(self):
        return self.kind == OK

    def __repr__(self):
        return "<Result %s %s %r>" % (self.kind, coap.code_str(self.code) if self.code is not None else "-",
                                      self.diagnostic)


def result_of(response):
    """A response ``coap.Message`` (or an RST) -> ``Result``."""
    if response.mtype == coap.RST:
        return Result(RESET, None, "gateway answered RST")
    diag = ""
    if response.payload and response.code >= 0x80:
        try:
            diag = str(bytes(response.payload[:200]), "utf-8")
        except UnicodeError:
            diag = repr(bytes(response.payload[:40]))
    max_age = None
    if response.code == coap.SERVICE_UNAVAILABLE:
        v = response.option(coap.MAX_AGE)
        if v is not None and len(v) <= 4:
            max_age = coap.decode_uint(v)
    return Result(classify(response.code), response.code, diag, 0, max_age)


def _default_rand():
    import random

    return random.getrandbits(24) / 16777216


def _udp_socket(host, port):
    import socket

    addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.connect(addr)  # the stack filters datagrams from other peers; errors like ICMP unreachable surface
    except BaseException:
        s.close()
        raise
    return s


class CoAPLink:
    """A node's uplink to the gateway's CoAP bridge; see the module docstring for the delivery policy.

    ``birth``/``will``: ``(topic, payload[, qos[, retain]])`` as for MQTTClient; the birth is POSTed to
    ``state`` whenever the link comes (back) up, the will only on ``disconnect(publish_will=True)`` (CoAP has no
    last will). ``sock_factory(host, port)`` returns an object with ``send``, ``recv``, ``close``.
    """

    def __init__(self, host, port=_D.COAP_PORT, site=None, device=None, birth=None, will=None, on_log=None,
                 rand=None, ack_timeout_ms=_D.COAP_ACK_TIMEOUT_MS, random_factor=_D.COAP_ACK_RANDOM_FACTOR,
                 max_retransmit=_D.COAP_MAX_RETRANSMIT, response_timeout_ms=_D.COAP_MAX_TRANSMIT_WAIT_MS,
                 poll_ms=20, backoff_min_ms=_D.MQTT_BACKOFF_MIN_MS, backoff_max_ms=_D.MQTT_BACKOFF_MAX_MS,
                 sock_factory=None):
        if not topics.is_valid_id(site) or not topics.is_valid_id(device):
            raise LocalProtocolError("site %r / device %r: expected valid ids" % (site, device), field="site")
        if backoff_min_ms < 1 or backoff_max_ms < backoff_min_ms:
            raise LocalProtocolError("need 1 <= backoff_min_ms <= backoff_max_ms", field="backoff")
        self.host = host
        self.port = port
        self.site = site
        self.device = device
        self.birth = birth
        self.will = will
        self.on_log = on_log
        self._rand = rand if rand is not None else _default_rand
        self.ack_timeout_ms = ack_timeout_ms
        self.random_factor = random_factor
        self.max_retransmit = max_retransmit
        self.response_timeout_ms = response_timeout_ms
        self.poll_ms = poll_ms
        self.backoff_min_ms = backoff_min_ms
        self.backoff_max_ms = backoff_max_ms
        self._sock_factory = sock_factory if sock_factory is not None else _udp_socket
        self.connected = asyncio.Event()  # set while the gateway answers us
        self._lost = asyncio.Event()  # set when an exchange failed (wakes the prober)
        self._lock = asyncio.Lock()  # NSTART = 1 (§4.7)
        self._sock = None
        self._task = None
        self._closing = False
        self._hold_ms = 0  # minimum wait before the next probe (5.03 Max-Age)
        self._mid = int(self._rand() * 0xFFFF) & 0xFFFF  # §4.4: start at a random MID
        self._subs = {}
        # counters for the heartbeat / diagnostics
        self.sent = 0
        self.delivered = 0
        self.rejected = 0
        self.retransmits = 0
        self.timeouts = 0
        self.connects = 0
        self.last_error = None

    # ---- MQTTClient-compatible surface ---------------------------------------------------------------------

    def start(self):
        """Start the probe task (brings the link up, and back up after failures). Idempotent."""
        if self._task is None:
            self._closing = False
            self._lost.set()
            self._task = asyncio.create_task(self._run())
        return self._task

    def is_connected(self):
        return self.connected.is_set()

    async def publish(self, topic, payload, qos=0, retain=False):
        """MQTTClient.publish semantics: returns when delivered (or dropped as rejected); raises NotConnected
        when the outbox must keep the message. ``qos``/``retain`` are the bridge's business (topics.py)."""
        try:
            ch = channel_of(topic, self.site, self.device)
        except ProtocolError as e:
            self._reject("%s: %s" % (topic, e))
            return
        if ch not in CHANNELS:
            self._reject("%s: channel %r has no CoAP resource, dropped" % (topic, ch))
            return
        if not self.connected.is_set():
            raise _not_connected("coap link to %s:%d is down" % (self.host, self.port))
        r = await self.post(ch, payload)
        if r.kind == OK:
            return
        if r.kind == REJECTED:
            self._reject("%s: gateway answered %s %s" % (ch, coap.code_str(r.code), r.diagnostic))
            return
        raise _not_connected("coap %s: %s" % (ch, self.last_error))

    async def subscribe(self, topic_filter, qos=1):
        """CoAP mode has no downlink: remembered for symmetry, never sent; returns None ("not sent now")."""
        if topic_filter not in self._subs:
            self._subs[topic_filter] = qos
            self._log("info", "coap: no downlink, %s is not delivered in CoAP mode" % topic_filter)

    def subscriptions(self):
        return dict(self._subs)

    async def disconnect(self, publish_will=True):
        """Stop probing; with ``publish_will`` and a will, POST it to ``state`` first (a planned shutdown)."""
        self._closing = True
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            try:
                await t
            except BaseException:  # CancelledError (a BaseException on both runtimes)
                pass
        if publish_will and self.will is not None and self.connected.is_set():
            try:
                await self.post(channel_of(self.will[0], self.site, self.device), self.will[1])
            except ProtocolError as e:
                self._log("info", "coap: will not delivered: %s" % e)
        self.connected.clear()
        self._close_socket()

    close = disconnect

    # ---- transport-neutral API --------------------------------------------------------------------------

    async def send(self, channel, payload):
        """POST one report; True on 2.xx, False otherwise (4.xx, 5.xx, RST, timeout, socket error)."""
        return (await self.post(channel, payload)).ok

    async def post(self, channel, payload):
        """One Confirmable POST of ``payload`` to ``channel``; returns a ``Result``. Updates ``connected``."""
        path = uri_path(self.site, self.device, channel)
        async with self._lock:
            r = await self._exchange(self._request(path, payload))
        self._account(channel, r)
        return r

    async def ping(self):
        """CoAP ping (§4.3): Empty CON, the peer answers RST. True when it did."""
        async with self._lock:
            msg = coap.Message(coap.CON, coap.EMPTY, self._next_mid())
            r = await self._exchange(msg)
        return r.kind == RESET

    # ---- internals ----------------------------------------------------------------------------------------

    def _log(self, level, text):
        if self.on_log is not None:
            try:
                self.on_log(level, text)
            except Exception:  # noqa: BLE001 - a broken log hook must not take the uplink down
                pass

    def _reject(self, why):
        self.rejected += 1
        self.last_error = why[:200]
        self._log("warning", "coap: dropped report: " + self.last_error)

    def _next_mid(self):
        self._mid = (self._mid + 1) & 0xFFFF
        return self._mid

    def _request(self, path, payload):
        n = int(self._rand() * 0xFFFFFFFF) & 0xFFFFFFFF
        token = bytes(((n >> 24) & 0xFF, (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF))
        if isinstance(payload, str):
            payload = payload.encode()
        return coap.make_request(coap.POST, path, self._next_mid(), token, bytes(payload),
                                 content_format=coap.JSON)

    def _account(self, channel, r):
        self.retransmits += r.retransmits
        if r.kind == OK:
            self.delivered += 1
            self._hold_ms = 0
            self._log("debug", "coap %s: %s" % (channel, coap.code_str(r.code)))
            self._up()
        elif r.kind == REJECTED:
            self._up()  # the gateway is there and talking to us
        else:
            if r.kind == TIMEOUT:
                self.timeouts += 1
            self.last_error = ("%s %s %s" % (r.kind, coap.code_str(r.code) if r.code is not None else "",
                                             r.diagnostic)).strip()[:200]
            if r.max_age_s:
                self._hold_ms = min(r.max_age_s * 1000, self.backoff_max_ms)
            self._down(self.last_error)

    def _up(self):
        if not self.connected.is_set():
            self.connects += 1
            self._log("info", "coap: gateway %s:%d reachable" % (self.host, self.port))
            self.connected.set()
        self._lost.clear()

    def _down(self, why):
        if self.connected.is_set():
            self._log("info", "coap: link down (%s)" % why)
        self.connected.clear()
        self._lost.set()

    def _socket(self):
        if self._sock is None:
            self._sock = self._sock_factory(self.host, self.port)
        return self._sock

    def _close_socket(self):
        s, self._sock = self._sock, None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    def _recv(self, sock):
        """One datagram or None; OSError other than "would block" propagates."""
        try:
            return sock.recv(_D.COAP_MAX_MESSAGE_SIZE + 64)
        except OSError as e:
            if e.args and e.args[0] in _EAGAIN:
                return None
            raise

    async def _exchange(self, msg):
        try:
            sock = self._socket()
            while self._recv(sock) is not None:  # stale datagrams from an earlier, abandoned exchange
                pass
            return await self._transmit(sock, msg)
        except OSError as e:
            self._close_socket()  # re-resolve and rebind next time (network came back with a new address)
            return Result(ERROR, None, "socket: %s" % (e,))

    async def _transmit(self, sock, msg):
        tx = coap.Transmitter(msg, self.ack_timeout_ms, self.random_factor, self.max_retransmit)
        t0 = ticks_ms()
        sock.send(tx.start(0, self._rand()))
        self.sent += 1
        while True:
            data = self._recv(sock)
            while data is not None:
                m = tx.on_datagram(data)
                if tx.ack is not None:
                    sock.send(tx.ack)  # ACK a separate (CON) response, §5.2.2
                elif m is None:
                    rst = _reject_unmatched(data)
                    if rst is not None:
                        sock.send(rst)
                if tx.state == coap.DONE or tx.state == coap.RESET:
                    r = result_of(tx.response if tx.state == coap.DONE else m)
                    r.retransmits = tx.retransmits
                    return r
                data = self._recv(sock)
            now = ticks_diff(ticks_ms(), t0)
            again = tx.poll(now)
            if again is not None:
                self._log("info", "coap: retransmit %d of mid %d" % (tx.retransmits, msg.mid))
                sock.send(again)
            if tx.state == coap.TIMEOUT:
                return Result(TIMEOUT, None, "no ACK after %d retransmissions" % tx.retransmits, tx.retransmits)
            if tx.state == coap.ACKED and now >= self.response_timeout_ms:
                tx.cancel()
                return Result(TIMEOUT, None, "ACKed, but no separate response in %d ms" % now, tx.retransmits)
            wait = self.poll_ms
            if tx.deadline_ms is not None:
                wait = max(1, min(wait, tx.deadline_ms - now))
            await sleep_ms(wait)

    def _backoff_ms(self, attempt):
        return max(self._hold_ms, backoff.delay_ms(attempt, self.backoff_min_ms, self.backoff_max_ms, self._rand()))

    async def _run(self):
        """Bring the link up and keep probing while it is down (birth POST, else CoAP ping)."""
        attempt = 0
        while not self._closing:
            await self._lost.wait()
            if self.connected.is_set():
                self._lost.clear()
                continue
            if attempt:
                await sleep_ms(self._backoff_ms(attempt - 1))
            attempt += 1
            if self.connected.is_set():  # a report got through meanwhile
                attempt = 0
                continue
            if self.birth is not None:
                try:
                    ch = channel_of(self.birth[0], self.site, self.device)
                    r = await self.post(ch, self.birth[1])
                except ProtocolError as e:
                    self._log("error", "coap: bad birth: %s" % e)
                    self.birth = None
                    continue
                if r.kind == REJECTED:
                    self._log("warning", "coap: birth rejected: %s %s" % (coap.code_str(r.code), r.diagnostic))
            else:
                if await self.ping():
                    self._up()
            if self.connected.is_set():
                attempt = 0


def _reject_unmatched(data):
    """RST for a CON we cannot match (§4.2: reject it), or for an unparsable CON; None otherwise."""
    rst = coap.rst_for(data)
    if rst is not None:
        return rst
    try:
        m = coap.decode(data)
    except CoAPError:
        return None
    if m.mtype == coap.CON:
        return coap.encode_empty(coap.RST, m.mid)
    return None


def _not_connected(text):
    from lookout_node.mqtt import NotConnected  # node.py catches this type; loaded lazily (heap)

    return NotConnected(text)
