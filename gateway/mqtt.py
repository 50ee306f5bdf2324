"""A thin asyncio layer over paho-mqtt 2.x (MQTT 3.1.1).

Theory of operation: paho runs its network loop in its own thread (``loop_start``); every callback it fires is
handed to the asyncio loop with ``loop.call_soon_threadsafe`` so all gateway state is touched from one thread
only. ``publish()`` returns after PUBACK (QoS 1) or after the bytes were written (QoS 0): the future for a message
id is registered right after ``client.publish`` returns, and the PUBACK callback is scheduled *behind* that on the
loop, so the two can never race.

Delivery policy (the one place it lives for the gateway side):
- clean session, keepalive from the config; paho reconnects with backoff 1..30 s by itself;
- on every CONNACK: resubscribe every filter, then publish the retained birth (if any) — a reconnect is a new
  session as far as the broker is concerned;
- the last will (retained death) is set once per process; its bdseq matches the birth;
- QoS 1 publishes made while disconnected stay in paho's outbox and go out after the reconnect; a caller that
  needs more (commands) keeps its own durable queue — no guarantee rests on the broker's session queue.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

Handler = Callable[[str, bytes, bool], None]  # (topic, payload, retained)


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
                 on_connect: Callable[[], None] | None = None, on_disconnect: Callable[[], None] | None = None):
        u = urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError(f"broker url {url!r}: expected mqtt://host[:port] or mqtts://host[:port]")
        self.host = u.hostname
        self.port = u.port or (8883 if u.scheme == "mqtts" else 1883)
        self.tls = u.scheme == "mqtts"
        self.client_id = client_id
        self.birth = birth
        self.connect_timeout = connect_timeout
        self.on_connect_cb = on_connect
        self.on_disconnect_cb = on_disconnect
        self.keepalive = keepalive
        self.connected = asyncio.Event()
        self.messages_in = 0
        self.messages_out = 0
        self._subs: dict[str, tuple[int, Handler]] = {}
        self._routes: dict[str, list[tuple[str, Handler]]] = {}  # topic -> matching handlers (cache)
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._first: asyncio.Future[int] | None = None
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                        clean_session=True)
        c.reconnect_delay_set(1, 30)
        c.max_inflight_messages_set(1000)
        if username is not None:
            c.username_pw_set(username, password)
        if self.tls:
            ctx = ssl.create_default_context(cafile=ca)
            if cert:
                ctx.load_cert_chain(cert, key)
            c.tls_set_context(ctx)
        if will is not None:
            c.will_set(will.topic, will.payload, will.qos, will.retain)
        c.on_connect = self._t_connect
        c.on_disconnect = self._t_disconnect
        c.on_message = self._t_message
        c.on_publish = self._t_publish
        c.on_socket_open = nodelay
        self._client = c

    # -- paho thread -> loop ---------------------------------------------------------------------------------
    def _t_connect(self, client, userdata, flags, reason_code, properties) -> None:
        rc = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
        self._call(self._on_connect, rc)

    def _t_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._call(self._on_disconnect)

    def _t_message(self, client, userdata, msg) -> None:
        self._call(self._on_message, msg.topic, msg.payload, msg.retain)

    def _t_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._call(self._on_publish, mid)

    def _call(self, fn, *args) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # loop closing during shutdown
                pass

    # -- loop side -------------------------------------------------------------------------------------------
    def _on_connect(self, rc: int) -> None:
        if rc != 0:
            log.warning("broker %s:%d refused the connection (reason %d)", self.host, self.port, rc)
            if self._first is not None and not self._first.done():
                self._first.set_result(rc)
            return
        log.info("connected to %s:%d as %s", self.host, self.port, self.client_id)
        for filt, (qos, _h) in self._subs.items():
            self._client.subscribe(filt, qos)
        if self.birth is not None:
            b = self.birth
            self._client.publish(b.topic, b.payload, b.qos, b.retain)
        self.connected.set()
        if self._first is not None and not self._first.done():
            self._first.set_result(0)
        if self.on_connect_cb:
            self.on_connect_cb()

    def _on_disconnect(self) -> None:
        if self.connected.is_set():
            log.info("disconnected from %s:%d; paho reconnects", self.host, self.port)
        self.connected.clear()
        if self.on_disconnect_cb:
            self.on_disconnect_cb()

    def _on_message(self, topic: str, payload: bytes, retain: bool) -> None:
        self.messages_in += 1
        handlers = self._routes.get(topic)
        if handlers is None:  # paho's matcher builds a trie per call: match once per topic, then look it up
            handlers = [(f, h) for f, (_q, h) in self._subs.items() if paho.topic_matches_sub(f, topic)]
            if len(self._routes) >= 20000:
                self._routes.clear()
            self._routes[topic] = handlers
        for filt, handler in handlers:
            try:
                handler(topic, payload, retain)
            except Exception:
                log.exception("handler for %s failed on %s", filt, topic)

    def _on_publish(self, mid: int) -> None:
        fut = self._pending.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    # -- API -------------------------------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._first = self._loop.create_future()
        try:
            self._client.connect_async(self.host, self.port, self.keepalive)
            self._client.loop_start()
        except OSError as e:
            raise MQTTError(f"cannot connect to {self.host}:{self.port}: {e}") from e
        try:
            rc = await asyncio.wait_for(asyncio.shield(self._first), self.connect_timeout)
        except TimeoutError:
            self._stop()
            raise MQTTError(f"no CONNACK from {self.host}:{self.port} within {self.connect_timeout:g} s") from None
        if rc != 0:
            self._stop()
            raise MQTTError(f"broker {self.host}:{self.port} refused the connection: "
                            f"{paho.connack_string(rc)}")
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self, farewell: Message | None = None) -> None:
        """Publish ``farewell`` (e.g. a clean death) if connected, then disconnect."""
        if farewell is not None and self.connected.is_set():
            try:
                await asyncio.wait_for(self.publish(farewell.topic, farewell.payload, farewell.qos,
                                                    farewell.retain), 2.0)
            except (TimeoutError, MQTTError):
                pass
        self._stop()

    def _stop(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
        self.connected.clear()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(MQTTError("link closed before PUBACK"))
        self._pending.clear()

    def subscribe(self, filt: str, handler: Handler, qos: int = 1) -> None:
        """Register ``handler`` for ``filt``; (re)subscribed on every connect."""
        self._subs[filt] = (qos, handler)
        self._routes.clear()
        if self.connected.is_set():
            self._client.subscribe(filt, qos)

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> int:
        info = self._client.publish(topic, payload, qos, retain)
        self.messages_out += 1
        return info.mid

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                      timeout: float | None = None) -> None:
        """Publish; for QoS 1 return after PUBACK (MQTTError if the link closes first)."""
        if self._loop is None:
            raise MQTTError("link not open")
        info = self._client.publish(topic, payload, qos, retain)
        self.messages_out += 1
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN, paho.MQTT_ERR_QUEUE_SIZE):
            raise MQTTError(f"publish to {topic} failed: {paho.error_string(info.rc)}")
        if qos == 0:
            return
        fut = self._loop.create_future()
        self._pending[info.mid] = fut
        if timeout is None:
            await fut
        else:
            try:
                await asyncio.wait_for(fut, timeout)
            except TimeoutError:
                self._pending.pop(info.mid, None)
                raise MQTTError(f"no PUBACK for {topic} within {timeout:g} s") from None
