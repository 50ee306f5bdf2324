"""A thin asyncio layer over paho-mqtt 2.x (MQTT 3.1.1), driven from the event loop.

Theory of operation: paho runs no thread of its own here. Its external-loop API is wired to the asyncio loop
(the pattern of paho's ``examples/loop_asyncio.py``): ``on_socket_open`` adds the socket as a reader calling
``client.loop_read``, ``on_socket_register_write``/``unregister_write`` add and remove a writer calling
``client.loop_write`` while paho has bytes queued, ``on_socket_close`` removes both, and a task calls
``client.loop_misc`` every second (keepalive PINGREQ, dead-broker detection). So every paho callback — CONNACK,
message, PUBACK, disconnect — already runs on the loop thread and touches gateway state directly: no thread
hand-off, no socket-pair wake-up, no waiting for the GIL (that was ~0.35 ms per publish and one hand-off per
received message with ``loop_start``). ``publish()`` returns after PUBACK (QoS 1) or after the bytes were handed
to paho (QoS 0): the future for a message id is registered right after ``client.publish`` returns, and paho only
reads (so only sees a PUBACK) in ``loop_read``, which runs in a later loop iteration.

Only the TCP connect + TLS handshake (``client.reconnect``: DNS, blocking ``connect``, ``do_handshake``) runs in
a worker thread, so an unreachable broker never stalls the loop; the socket callbacks it fires are marshalled to
the loop (``_on_loop``). A ``publish_nowait`` from another thread stays safe the same way (paho's own locks guard
its queues; the writer registration is marshalled).

TLS: paho's ``tls_set_context`` + ``loop_read``/``loop_write`` handle the SSL socket (``SSLWantRead``/``Write``
become "try again"); an SSL socket can hold decrypted bytes the selector cannot see, so ``_readable`` calls
``loop_read`` again while ``sock.pending()``.

Delivery policy (the one place it lives for the gateway side):
- clean session, keepalive from the config; our own supervisor task reconnects (paho's automatic reconnect lives
  in loop_forever/loop_start, which are not used) with jittered exponential backoff RECONNECT_MIN_S..MAX_S, reset
  after a successful CONNACK; an attempt without CONNACK within ``connect_timeout`` is dropped and retried;
- on every CONNACK: resubscribe every filter, then publish the retained birth (if any) — a reconnect is a new
  session as far as the broker is concerned; ``subscribed()`` returns once every SUBSCRIBE has its SUBACK, and a
  filter the broker refuses (SUBACK 0x80, e.g. its ACL) is logged and kept in ``refused``;
- the last will (retained death) is set once per process; its bdseq matches the birth;
- QoS 1 publishes made while disconnected stay in paho's outbox and go out after the reconnect; a caller that
  needs more (commands) keeps its own durable queue — no guarantee rests on the broker's session queue;
- paho's outbox is bounded (``max_queued``, default ``MAX_QUEUED``): beyond it a publish is refused
  (``publish``/``start_publish`` raise MQTTError, ``publish_nowait`` returns -1) and counted in ``dropped``.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import random
import socket
import ssl
import struct
import termios
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.matcher import MQTTMatcher

from lookout.protocols import backoff

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes, bool], None]  # (topic, payload, retained)

# Reconnect backoff: 1 s doubling to 30 s (what paho's reconnect_delay_set(1, 30) gave the threaded version),
# each wait half fixed, half random (protocols/backoff.py) so a broker restart is not met by every gateway/operator at once.
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
READ_BATCH = 64  # packets read per readable event at most (see MQTTLink._read)
MISC_PERIOD_S = 1.0  # loop_misc cadence: keepalive checks have 1 s resolution (paho's own loop uses 1 s too)
# Messages paho may hold for the broker (QoS 1 unacknowledged or waiting for a connection; QoS 0 packets not yet
# written). At most ~4 KiB each (protocols/messages.py), so ~40 MiB: a minute of a busy site's traffic. Beyond
# it a publish is refused and counted (``dropped``): commands and CoAP reports have their own durable queue
# and retry, a registry snapshot is republished, so nothing depends on paho's memory.
MAX_QUEUED = 10_000
# Topics whose matching handlers are remembered. A site has a few topics per device (state, hb, loc, evt, res,
# up/...): at 20,000 devices ~100,000; with the old cap of 20,000 the cache was cleared every few seconds and
# each topic matched again (1 in 9 of the gateway's CPU at 5,000 nodes).
ROUTE_CACHE = 200_000


def _unread(sock: Any) -> bool:
    """Bytes wait on ``sock``: decrypted (TLS) or in the kernel's receive buffer."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0] > 0
    except (OSError, ValueError):  # closed meanwhile
        return False


def nodelay(client, userdata, sock) -> None:
    """paho ``on_socket_open``: disable Nagle. MQTT messages are small and latency-bound; with Nagle on both
    ends a QoS 1 exchange waits for delayed ACKs (~40 ms each on Linux) — measured 88 ms loopback round trips."""
    try:
        s = sock._sock if hasattr(sock, "_sock") else sock
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class MQTTError(Exception):
    """Connection failed or was lost while waiting."""


class MQTTRefused(MQTTError):
    """The broker answered CONNECT with a refusal (``rc``): retrying with the same login will not help."""

    def __init__(self, host: str, port: int, rc: int):
        self.rc = rc
        self.auth = rc in AUTH_REFUSALS
        super().__init__(f"the broker at {host}:{port} refused the login: {refusal_text(rc)}")


class MQTTUnreachable(MQTTError):
    """No MQTT broker could be reached at the address (nothing listening, no route, DNS, TLS handshake)."""


# CONNACK refusals: MQTT 3.1.1 §3.2.2.3 return codes, and the MQTT 5 reason codes paho 2 reports them as
REFUSALS = {1: "unsupported protocol version", 2: "client id not allowed", 3: "server unavailable",
            4: "bad user name or password", 5: "not authorised", 132: "unsupported protocol version",
            133: "client id not allowed", 134: "bad user name or password", 135: "not authorised",
            136: "server unavailable"}
AUTH_REFUSALS = (4, 5, 134, 135)


def refusal_text(rc: int) -> str:
    return REFUSALS.get(rc, f"reason code {rc}")


def unreachable_text(host: str, port: int, e: BaseException) -> str:
    """One line for a failed TCP connect or TLS handshake, naming the address and what to check."""
    if isinstance(e, ConnectionRefusedError):
        return f"nothing listening at {host}:{port} (connection refused)"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve {host!r} ({e.strerror})"
    if isinstance(e, ssl.SSLCertVerificationError):
        hint = (f": the broker's certificate does not name {host} (issue it with "
                f"`lookout pki issue server --host {host}` among its --host names)") \
            if "mismatch" in (e.verify_message or "") else ""
        return f"TLS to {host}:{port}: certificate not accepted: {e}{hint}"
    return f"cannot connect to {host}:{port}: {getattr(e, 'strerror', None) or e}"


class Message:
    __slots__ = ("payload", "qos", "retain", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain


class MQTTLink:
    """``async with MQTTLink(url, client_id, ...) as link:`` — connected on entry, disconnected on exit."""

    def __init__(self, url: str, client_id: str, *, username: str | None = None, password: str | None = None,
                 ca: str | None = None, cert: str | None = None, key: str | None = None, keepalive: int = 30,
                 will: Message | None = None, birth: Message | None = None, connect_timeout: float = 10.0,
                 on_connect: Callable[[], None] | None = None, on_disconnect: Callable[[], None] | None = None,
                 max_queued: int = MAX_QUEUED,
                 fail_fast: bool = False):
        u = urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError(f"broker url {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
        self.host = u.hostname
        self.port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        self.tls = u.scheme == "mqtts"
        self.client_id = client_id
        self.birth = birth
        self.connect_timeout = connect_timeout
        self.fail_fast = fail_fast  # entering raises at the first failed attempt (CLI), not after connect_timeout
        self._down_since: float | None = None  # monotonic time the broker was lost (outage logging)
        self.on_connect_cb = on_connect
        self.on_disconnect_cb = on_disconnect
        self.keepalive = keepalive
        self.connected = asyncio.Event()
        self.messages_in = 0
        self.messages_out = 0
        self.max_queued = max_queued
        self.dropped = 0  # publishes refused because max_queued messages were waiting
        self.last_error: str | None = None  # why the last connect attempt failed (for error messages)
        self._subs: dict[str, tuple[int, Handler]] = {}
        # topic -> matching handlers (cache); the values are shared (interned): one tuple per distinct set of
        # handlers, not a container per topic for the garbage collector to walk (40,000 at 20,000 devices)
        self._routes: dict[str, tuple[tuple[str, Handler], ...]] = {}
        self._interned: dict[tuple[tuple[str, Handler], ...], tuple[tuple[str, Handler], ...]] = {}
        self._matcher = MQTTMatcher()  # filter trie: a miss costs one walk of the topic's levels
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._subacks: dict[int, list[str]] = {}  # SUBSCRIBE packet id -> its filters, until the SUBACK
        self._settled = asyncio.Event()  # no SUBACK outstanding
        self._settled.set()
        self.refused: set[str] = set()  # filters the broker refused at the last SUBACK for them
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_tid = 0
        self._first: asyncio.Future[int] | None = None    # first CONNACK's return code, for __aenter__
        self._connack: asyncio.Future[int | None] | None = None  # current attempt: rc, or None if the link dropped
        self._lost = asyncio.Event()
        self._closing = False
        self._opening = False  # client.reconnect() is running in a worker thread
        self._sock: Any = None  # the socket being watched (socket.socket or ssl.SSLSocket)
        self._fd = -1
        self._in_paho = False  # a paho call is running on the loop thread (see _drive)
        self._tasks: list[asyncio.Task[None]] = []
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                        clean_session=True)
        c.max_inflight_messages_set(1000)
        c.max_queued_messages_set(max_queued)  # QoS 1; QoS 0 is bounded in _publish
        if username is not None:
            c.username_pw_set(username, password)
        if self.tls:
            ctx = ssl.create_default_context(cafile=ca)
            if cert:
                ctx.load_cert_chain(cert, key)
            c.tls_set_context(ctx)
        if will is not None:
            c.will_set(will.topic, will.payload, will.qos, will.retain)
        c.on_connect = self._p_connect
        c.on_disconnect = self._p_disconnect
        c.on_message = self._p_message
        c.on_publish = self._p_publish
        c.on_subscribe = self._p_subscribe
        c.on_socket_open = self._p_socket_open
        c.on_socket_close = self._p_socket_close
        c.on_socket_register_write = self._p_want_write
        c.on_socket_unregister_write = self._p_done_write
        self._client = c

    # -- paho callbacks ----------------------------------------------------------------------------------------
    # Protocol callbacks fire inside loop_read/loop_write/loop_misc, i.e. on the loop thread. Socket callbacks
    # may also fire in the connect worker thread (reconnect()) or in a thread calling publish_nowait.
    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_tid:
            fn(*args)
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop closing during shutdown
                pass

    def _p_socket_open(self, client, userdata, sock) -> None:
        nodelay(client, userdata, sock)
        self._on_loop(self._watch, sock, sock.fileno())

    def _p_socket_close(self, client, userdata, sock) -> None:
        self._on_loop(self._unwatch, sock.fileno())  # called before paho closes it: the fd is still valid

    def _p_want_write(self, client, userdata, sock) -> None:
        self._on_loop(self._want_write, sock.fileno())

    def _p_done_write(self, client, userdata, sock) -> None:
        self._on_loop(self._done_write, sock.fileno())

    def _p_connect(self, client, userdata, flags, reason_code, properties) -> None:
        rc = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
        self._on_loop(self._on_connect, rc)

    def _p_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._on_loop(self._on_disconnect)

    def _p_message(self, client, userdata, msg) -> None:
        self._on_message(msg.topic, msg.payload, msg.retain)

    def _p_publish(self, client, userdata, mid, reason_code, properties) -> None:
        fut = self._pending.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _p_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._on_suback(mid, [rc.value if hasattr(rc, "value") else int(rc) for rc in reason_codes])

    # -- socket watching (loop thread) ---------------------------------------------------------------------
    def _watch(self, sock: Any, fd: int) -> None:
        loop = self._loop
        if self._closing or loop is None or loop.is_closed() or fd < 0:
            return
        self._sock, self._fd = sock, fd
        loop.add_reader(fd, self._readable)

    def _unwatch(self, fd: int) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or fd < 0:
            return
        loop.remove_reader(fd)
        loop.remove_writer(fd)
        if fd == self._fd:
            self._sock, self._fd = None, -1

    def _want_write(self, fd: int) -> None:
        if self._in_paho:  # the caller flushes when paho returns (_drive): no selector round trip
            return
        loop = self._loop
        if fd == self._fd and loop is not None and not loop.is_closed():
            loop.add_writer(fd, self._writable)

    def _done_write(self, fd: int) -> None:
        loop = self._loop
        if fd == self._fd and loop is not None and not loop.is_closed():
            loop.remove_writer(fd)

    def _drive(self, fn: Callable[[], Any], what: str, catch: bool = True) -> Any:
        """Run one paho call on the loop thread, then write whatever it (or the callbacks it ran: PUBACKs,
        handler publishes, subscribes) queued, at once. While it runs, publishes are not written from inside:
        paho calls its callbacks holding a non-reentrant lock that its own loop_write takes again (QoS 0)."""
        if self._in_paho:  # nested (a handler publishing inside loop_read): the outer _drive flushes
            return fn()
        self._in_paho = True
        try:
            return fn()
        except Exception:
            if not catch:
                raise
            log.exception("paho %s failed (%s:%d)", what, self.host, self.port)
            return None
        finally:
            self._in_paho = False
            self._flush()

    def _flush(self) -> None:
        c = self._client
        if not c.want_write() or self._fd < 0:
            return
        self._in_paho = True
        try:
            c.loop_write()
        except Exception:
            log.exception("paho loop_write failed (%s:%d)", self.host, self.port)
        finally:
            self._in_paho = False
        # paho only calls register-write on a change of its own flag, which may already be set: if bytes are
        # left (socket buffer full), register here; loop_write's unregister callback removes it when done.
        if c.want_write() and self._fd >= 0 and self._loop is not None:
            self._loop.add_writer(self._fd, self._writable)

    def _readable(self) -> None:
        self._drive(self._read, "loop_read")

    def _read(self) -> None:
        """paho's ``loop_read`` reads one packet when nothing is in flight, so a busy link cost one pass of the
        event loop (selector, callbacks) per message: ~1 in 6 of the gateway's work at saturation. Read on while
        the socket still holds bytes (FIONREAD; for TLS also what is decrypted but unread, which the selector
        cannot see), at most READ_BATCH packets, so timers and other sockets still get their turn."""
        sock = self._sock
        c = self._client
        rc = c.loop_read()
        n = 1
        while (rc == paho.MQTT_ERR_SUCCESS and n < READ_BATCH and sock is not None and self._sock is sock
               and _unread(sock)):
            rc = c.loop_read()
            n += 1

    def _writable(self) -> None:
        self._drive(self._client.loop_write, "loop_write")

    # -- connection supervision (loop thread) --------------------------------------------------------------
    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(MISC_PERIOD_S)
            if not self._opening:
                self._drive(self._client.loop_misc, "loop_misc")

    def _open_blocking(self) -> None:
        """Worker thread: TCP connect + TLS handshake + queue CONNECT (paho's reconnect)."""
        self._client.reconnect()
        if self._closing:  # closed while we were connecting: say goodbye from here, nobody watches the socket
            self._client.disconnect()
            self._client.loop_write()

    async def _attempt(self) -> bool:
        """One connect attempt; True once the broker accepted (CONNACK 0)."""
        loop = asyncio.get_running_loop()
        self._lost.clear()
        self._connack = loop.create_future()
        self._opening = True
        try:
            await asyncio.to_thread(self._open_blocking)
        except (OSError, ValueError) as e:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            self.last_error = unreachable_text(self.host, self.port, e)
            log.info("%s", self.last_error)
            first = self._first
            if self.fail_fast and first is not None and not first.done():
                first.set_exception(MQTTUnreachable(self.last_error))
            return False
        finally:
            self._opening = False
        try:
            async with asyncio.timeout(self.connect_timeout):
                rc = await self._connack
        except TimeoutError:
            self.last_error = f"no CONNACK within {self.connect_timeout:g} s"
            log.info("%s:%d: %s; retrying", self.host, self.port, self.last_error)
            self._drop()
            return False
        if rc is None:
            self.last_error = "connection closed before CONNACK"
            return False
        return rc == 0

    def _drop(self) -> None:
        """Close the socket here on the loop thread (unwatched before it closes), not in the next reconnect()
        running in the worker while the loop could still be reading it."""
        if self._client.socket() is not None:
            self._client._sock_close()  # paho 2.x internal: on_socket_close (unwatch), then close

    async def _supervise(self) -> None:
        failed = 0
        while not self._closing:
            if await self._attempt():
                failed = 0
                await self._lost.wait()
                if self._closing:
                    return
                wait = random.uniform(0.0, RECONNECT_MIN_S)  # dropped after a good session: retry soon
            else:
                wait = backoff.delay_ms(failed, int(RECONNECT_MIN_S * 1000), int(RECONNECT_MAX_S * 1000),
                                        random.random()) / 1000
                failed += 1
            await asyncio.sleep(wait)

    # -- protocol events (loop thread) ---------------------------------------------------------------------
    def _on_connect(self, rc: int) -> None:
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_result(rc)
        if rc != 0:
            self.last_error = f"refused the login: {refusal_text(rc)}"
            log.warning("broker %s:%d refused the login as %s: %s (reason %d)", self.host, self.port,
                        self.client_id, refusal_text(rc), rc)
            if self._first is not None and not self._first.done():
                self._first.set_result(rc)
            return
        if self._down_since is not None:  # an outage ends: WARNING, so a log_level = "warning" site sees it
            log.warning("broker %s:%d back after %.1f s without it", self.host, self.port,
                        time.monotonic() - self._down_since)
            self._down_since = None
        else:
            log.info("connected to %s:%d as %s", self.host, self.port, self.client_id)
        self._subacks.clear()  # a new session: what the old one waited for is asked again below
        if self._subs:
            self._send_subscribe([(filt, qos) for filt, (qos, _h) in self._subs.items()])
        else:
            self._settled.set()
        if self.birth is not None:
            b = self.birth
            self._client.publish(b.topic, b.payload, b.qos, b.retain)
        self.connected.set()
        if self._first is not None and not self._first.done():
            self._first.set_result(0)
        if self.on_connect_cb:
            self.on_connect_cb()

    def _on_disconnect(self) -> None:
        if self.connected.is_set() and not self._closing:
            self._down_since = time.monotonic()
            log.warning("lost the broker %s:%d; reconnecting", self.host, self.port)
        self.connected.clear()
        fut = self._connack
        if fut is not None and not fut.done():
            fut.set_result(None)
        self._lost.set()
        if self.on_disconnect_cb:
            self.on_disconnect_cb()

    def _send_subscribe(self, items: list[tuple[str, int]]) -> None:
        rc, mid = self._client.subscribe(items)
        if rc == paho.MQTT_ERR_SUCCESS and mid is not None:
            self._subacks[mid] = [f for f, _q in items]
            self._settled.clear()

    def _on_suback(self, mid: int, codes: list[int]) -> None:
        for filt, code in zip(self._subacks.pop(mid, ()), codes, strict=False):
            if code >= 0x80:  # MQTT 3.1.1 §3.9.3: failure
                if filt not in self.refused:
                    log.warning("broker %s:%d refused the subscription to %s (SUBACK 0x%02x): check its ACL",
                                self.host, self.port, filt, code)
                self.refused.add(filt)
            else:
                self.refused.discard(filt)
        if not self._subacks:
            self._settled.set()

    def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages_in += 1
        handlers = self._routes.get(topic)
        if handlers is None:  # match once per topic in the filter trie, then look it up
            found = tuple(self._matcher.iter_match(topic))
            handlers = self._interned.setdefault(found, found)
            if len(self._routes) >= ROUTE_CACHE:
                self._routes.clear()
            self._routes[topic] = handlers
        for filt, handler in handlers:
            try:
                handler(topic, payload, retain)
            except Exception:
                log.exception("handler for %s failed on %s", filt, topic)

    # -- API -------------------------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        loop = self._loop = asyncio.get_running_loop()
        self._loop_tid = threading.get_ident()
        self._closing = False
        self._first = loop.create_future()
        self._client.connect_async(self.host, self.port, self.keepalive)  # sets host/port/keepalive; no I/O
        self._tasks = [loop.create_task(self._supervise(), name=f"mqtt-connect-{self.client_id}"),
                       loop.create_task(self._misc_loop(), name=f"mqtt-misc-{self.client_id}")]
        try:
            async with asyncio.timeout(self.connect_timeout):
                rc = await asyncio.shield(self._first)
        except TimeoutError:
            self._stop()
            why = f" (last error: {self.last_error})" if self.last_error else ""
            raise MQTTError(f"no CONNACK from {self.host}:{self.port} within {self.connect_timeout:g} s{why}") \
                from None
        except BaseException:
            self._stop()
            raise
        if rc != 0:
            self._stop()
            raise MQTTRefused(self.host, self.port, rc)
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self, farewell: Message | None = None) -> None:
        """Publish ``farewell`` (e.g. a clean death) if connected, then disconnect."""
        if farewell is not None and self.connected.is_set():
            try:
                async with asyncio.timeout(2.0):
                    await self.publish(farewell.topic, farewell.payload, farewell.qos, farewell.retain)
            except (TimeoutError, MQTTError):
                pass
        self._stop()

    def _stop(self) -> None:
        self._closing = True
        for t in self._tasks:
            t.cancel()
        self._tasks = []
        c = self._client
        self._in_paho = True  # on_disconnect runs inside loop_write: nothing may write from inside it
        try:
            if c.disconnect() == paho.MQTT_ERR_SUCCESS:
                c.loop_write()  # DISCONNECT out now; paho closes the socket once it is written
        finally:
            self._in_paho = False
            self._drop()  # could not flush (send buffer full) or no DISCONNECT sent: close it anyway
            fd = self._fd
            if fd >= 0:
                self._unwatch(fd)
        self.connected.clear()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(MQTTError("link closed before PUBACK"))
        self._pending.clear()

    def subscribe(self, filt: str, handler: Handler, qos: int = 1) -> None:
        """Register ``handler`` for ``filt``; (re)subscribed on every connect."""
        self._subs[filt] = (qos, handler)
        self._matcher[filt] = (filt, handler)
        self._routes.clear()
        self._interned.clear()
        if self.connected.is_set():
            self._send_subscribe([(filt, qos)])

    async def subscribed(self, timeout: float = 10.0) -> None:
        """Return once connected with every SUBSCRIBE answered by a SUBACK (see ``refused`` for any the broker
        turned down); MQTTError after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                while not (self.connected.is_set() and self._settled.is_set()):
                    await self.connected.wait()
                    await self._settled.wait()
        except TimeoutError:
            raise MQTTError(f"subscriptions not acknowledged within {timeout:g} s") from None

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        """Hand a message to paho; its mid, or -1 when it was refused (queue full: counted in ``dropped``)."""
        info = self._publish(topic, payload, qos, retain)
        return -1 if info.rc == paho.MQTT_ERR_QUEUE_SIZE else info.mid

    def queued(self) -> int:
        """Messages paho holds for the broker: QoS 1 not yet acknowledged, packets not yet written."""
        return len(self._client._out_messages) + len(self._client._out_packet)  # paho 2.x internals, read only

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> paho.MQTTMessageInfo:
        """client.publish, written at once when on the loop thread (after loop_read when a handler publishes
        from on_message). From another thread paho's register-write callback is marshalled to the loop.
        Refused with MQTT_ERR_QUEUE_SIZE once ``max_queued`` messages wait (paho counts QoS 1 itself; QoS 0
        packets pile up only behind a broker that stopped reading)."""
        if qos == 0 and len(self._client._out_packet) >= self.max_queued:
            info = paho.MQTTMessageInfo(0)
            info.rc = paho.MQTT_ERR_QUEUE_SIZE
        elif threading.get_ident() != self._loop_tid:
            info = self._client.publish(topic, payload, qos, retain)
        else:
            info = self._drive(lambda: self._client.publish(topic, payload, qos, retain), "publish", catch=False)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("%d messages wait for %s:%d; publish to %s refused (%d so far)", self.max_queued,
                            self.host, self.port, topic, self.dropped)
        else:
            self.messages_out += 1
        return info

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                      timeout: float | None = None) -> None:
        """Publish; for QoS 1 return after PUBACK (MQTTError if the link closes first)."""
        await self.wait_puback(self.start_publish(topic, payload, qos, retain), topic, timeout)

    def start_publish(self, topic: str, payload: bytes, qos: int = 1,
                      retain: bool = False) -> tuple[int, asyncio.Future[None] | None]:
        """The synchronous half of ``publish``: on the loop thread the message is written when this returns.
        Returns ``(mid, future of its PUBACK)`` (no future for QoS 0) for ``wait_puback``."""
        if self._loop is None:
            raise MQTTError("link not open")
        info = self._publish(topic, payload, qos, retain)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            raise MQTTError(f"publish to {topic} refused: {self.max_queued} messages already wait for the broker")
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise MQTTError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if qos == 0:
            return info.mid, None
        fut = self._loop.create_future()
        self._pending[info.mid] = fut
        return info.mid, fut

    async def wait_puback(self, started: tuple[int, asyncio.Future[None] | None], topic: str = "",
                          timeout: float | None = None) -> None:
        mid, fut = started
        if fut is None:
            return
        if timeout is None:
            await fut
        else:
            # asyncio.timeout, not wait_for: on 3.11 wait_for returns the result instead of raising when the
            # task is cancelled in the loop turn the PUBACK lands, and a cancel lost there kept a stopping
            # TaskGroup waiting forever
            try:
                async with asyncio.timeout(timeout):
                    await fut
            except TimeoutError:
                self._pending.pop(mid, None)
                raise MQTTError(f"no PUBACK for {topic} within {timeout:g} s") from None
