"""CoAP bridge: battery sensor nodes (NB-IoT style) POST heartbeat, location and events; we republish to MQTT.

Theory of operation
-------------------
A battery node cannot hold a TCP/MQTT session open, so it sends each report as one confirmable CoAP POST
(RFC 7252) and sleeps. This module is an aiocoap server (``aiocoap.Context.create_server_context``, UDP only)
with one path-capable root resource that answers::

    POST /v1/<site>/<device>/<channel>      channel in hb, loc, evt, state     payload: the JSON message

For each request, in this order (the first failing check decides the response code):

1. path shape and channel                     -> 4.04 Not Found (diagnostic names the bad segment)
2. method is POST                             -> 4.05 Method Not Allowed
3. Content-Format absent or 50 (JSON)         -> 4.15 Unsupported Content-Format
4. payload size <= ``max_payload``            -> 4.13 Request Entity Too Large (Size1 option = the limit)
5. ``protocols.messages.decode(channel, ..)`` -> 4.00 Bad Request, diagnostic payload ``"<field>: <reason>"``
6. with a keystore: device provisioned, site matches, provisioned for CoAP (``meta.transport``; an MQTT
   device never reports through here)  -> 4.03 Forbidden;
   an event's or a birth/death's MAC verifies with the device key (purpose ``evt`` / ``state``,
   protocols/signing.py) -> 4.01 Unauthorized
7. republish the *unchanged* payload on ``lookout/v1/<site>/<device>/<channel>`` with the channel's QoS/retain
   (protocols/topics.py), via the ``publish(topic, payload, qos, retain)`` callback -> 2.04 Changed only once
   the callback returned, i.e. the broker has it (``mqttlink_publisher``: PUBACK for QoS 1; a QoS 0 report is
   handed to a connected session); if it fails (link down, no PUBACK within ``PUBACK_TIMEOUT_S``) -> 5.03
   Service Unavailable with Max-Age ``RETRY_AFTER_S``: the node keeps the report in its outbox and tries again.
   A report whose PUBACK was merely late may then arrive twice; the gateway's event de-duplication absorbs it.

So the registry sees a CoAP node exactly like an MQTT node: same topics, same bytes, same MAC. Differences
that remain, by nature of the transport:

- **No last will.** A CoAP node has no session, so nothing tells the broker it died: it is marked
  stale/offline by the registry's heartbeat timeout only (missed heartbeats x ``hb_s``). A node *may* POST a
  birth/death to
  ``state`` (retained, like an MQTT node's), e.g. a death before a planned shutdown.
- **Authentication.** The MQTT path authenticates the connection (username == device id); CoAP here is plain
  UDP on the township network, so with a keystore configured only devices provisioned for CoAP are accepted,
  and events and birth/death must carry a valid MAC. hb/loc are not signed by the wire contract (a spoofed
  heartbeat of a CoAP node could delay its offline transition; DTLS/OSCORE would close that, not done here).
- **Duplicates.** A retransmitted CON (same message id, same peer) is answered from aiocoap's message-layer
  deduplication (RFC 7252 §4.5) and is not republished twice.

Logging policy (aiocoap's): debug for each accepted report, warning for a rejected one (a misbehaving peer).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any

import aiocoap
import aiocoap.resource
from aiocoap.numbers.codes import Code

from lookout.protocols import messages, signing, topics
from lookout.protocols.errors import AuthError, MessageError

log = logging.getLogger(__name__)

CHANNELS = ("hb", "loc", "evt", "state")
CT_JSON = 50  # RFC 7252 §12.3 application/json
MAX_PAYLOAD = (
    1024  # RFC 7252 §4.6: payload upper bound when the path MTU is unknown (one datagram, no blockwise)
)

PublishFn = Callable[[str, bytes, int, bool], Any]  # may return an awaitable
# 5.03's Max-Age: a node waits at least this long before it tries again. Long enough for a broker restart or a
# reconnect with back-off (mqtt.py: 1 s doubling), short against a battery node's report period (minutes).
RETRY_AFTER_S = 30
PUBACK_TIMEOUT_S = 5.0  # no PUBACK by then: 5.03 (the node's CoAP exchange waits up to 93 s for a response)


class CoAPReject(Exception):
    """A request we answer with a CoAP error code and a diagnostic payload (RFC 7252 §5.5.2)."""

    def __init__(self, code: Code, diagnostic: str, size1: int | None = None, max_age: int | None = None) -> None:
        super().__init__(diagnostic)
        self.code = code
        self.diagnostic = diagnostic
        self.size1 = size1
        self.max_age = max_age

    def to_message(self) -> aiocoap.Message:
        m = aiocoap.Message(code=self.code, payload=self.diagnostic.encode()[:200])
        m.opt.content_format = 0  # text/plain; charset=utf-8, as §5.5.2 prescribes for diagnostics
        if self.size1 is not None:
            m.opt.size1 = self.size1
        if self.max_age is not None:
            m.opt.max_age = self.max_age  # 5.03: when to try again (§5.9.3.4)
        return m


class _BridgeRoot(aiocoap.resource.Resource, aiocoap.resource.PathCapable):
    """Root resource that sees the whole Uri-Path (PathCapable) and dispatches on it."""

    def __init__(self, bridge: CoAPBridge) -> None:
        super().__init__()
        self.bridge = bridge

    async def render(self, request: aiocoap.Message) -> aiocoap.Message:
        try:
            return await self.bridge.handle(request)
        except CoAPReject as r:
            log.warning(
                "coap %s from %s: %s %s",
                "/".join(request.opt.uri_path),
                request.remote.hostinfo,
                r.code,
                r.diagnostic,
            )
            self.bridge.stats["rejected"] += 1
            return r.to_message()

    def get_link_description(self):
        return {}


def _peer_id(site: str, device: str, channel: str) -> str:
    return f"{site}/{device}/{channel}"


def _bad_options_unparsable() -> None:
    """Make aiocoap drop a datagram whose options do not decode, instead of raising out of its transport.

    aiocoap 0.4's ``Message.decode`` lets the ``UnicodeDecodeError`` of a string option (Uri-Path...) that is not
    UTF-8 escape the UDP transport's read callback: asyncio logs a traceback for every such datagram, which anyone
    who can reach the port may send (upstream: chrysn/aiocoap#176, "Option decoding errors not tested for"; found
    by tests/test_fuzz_entries.py). Such errors become ``UnparsableMessage``, which the transport already ignores
    with one warning. Process-wide and idempotent; applied when a bridge starts, not at import."""
    from aiocoap import error
    from aiocoap.message import Message

    if getattr(getattr(Message.decode, "__func__", None), "lookout_strict", False):
        return
    original = Message.decode  # bound to the class

    def decode(cls: type, rawdata: bytes, remote: Any = None) -> Any:
        try:
            return original(rawdata, remote)
        except error.UnparsableMessage:
            raise
        except (ValueError, TypeError, IndexError) as e:
            raise error.UnparsableMessage(f"undecodable option: {type(e).__name__}") from None

    decode.lookout_strict = True  # type: ignore[attr-defined]
    Message.decode = classmethod(decode)  # type: ignore[method-assign, assignment]


class CoAPBridge:
    """``async with CoAPBridge(publish, host, port, keystore) as bridge:`` serves until the block ends.

    ``publish(topic, payload, qos, retain)`` is called for every accepted report (sync or async). ``keystore``
    is anything with ``get(device_id) -> Identity | None`` (gateway/keystore.py) or None (dev mode: no device
    or MAC checks). ``port`` 0 binds a free port, readable from ``.port`` after start.
    """

    def __init__(
        self,
        publish: PublishFn,
        host: str = "127.0.0.1",
        port: int = 5683,
        keystore: Any = None,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"coap port {port!r}: expected 0..65535")
        if not 16 <= max_payload <= messages.MAX_PAYLOAD:
            raise ValueError("max_payload %r: expected 16..%d" % (max_payload, messages.MAX_PAYLOAD))
        self.publish = publish
        self.host = host
        self.port = port
        self.keystore = keystore
        self.max_payload = max_payload
        self.stats = {"accepted": 0, "rejected": 0, "unavailable": 0}
        self._ctx: aiocoap.Context | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    async def start(self) -> CoAPBridge:
        if self._ctx is not None:
            raise RuntimeError("coap bridge already started")
        _bad_options_unparsable()
        self._ctx = await aiocoap.Context.create_server_context(
            _BridgeRoot(self), bind=(self.host, self.port), transports=["udp6"], loggername="lookout.coap"
        )
        self.port = self._bound_port() or self.port
        log.info("coap bridge listening on udp %s:%d", self.host, self.port)
        return self

    def _bound_port(self) -> int | None:
        # aiocoap has no public accessor for the bound port (needed when port=0)
        for ri in getattr(self._ctx, "request_interfaces", ()):
            mi = getattr(getattr(ri, "token_interface", None), "message_interface", None)
            transport = getattr(mi, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None:
                return sock.getsockname()[1]
        return None

    async def stop(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            await ctx.shutdown()
            log.info("coap bridge stopped")

    async def __aenter__(self) -> CoAPBridge:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- request handling ------------------------------------------------------------------------------------
    def _route(self, path: tuple[str, ...]) -> tuple[str, str, str]:
        if len(path) != 4 or path[0] != "v1":
            raise CoAPReject(
                Code.NOT_FOUND,
                "uri-path: expected /v1/<site>/<device>/<{}>, got /{}".format(
                    "|".join(CHANNELS), "/".join(path)
                ),
            )
        _, site, device, channel = path
        if not topics.is_valid_id(site):
            raise CoAPReject(Code.NOT_FOUND, f"site: {site[:40]!r} is not a valid id")
        if not topics.is_valid_id(device):
            raise CoAPReject(Code.NOT_FOUND, f"device: {device[:40]!r} is not a valid id")
        if channel not in CHANNELS:
            raise CoAPReject(
                Code.NOT_FOUND, "channel: {!r}, expected one of {}".format(channel[:24], ", ".join(CHANNELS))
            )
        return site, device, channel

    def _decode(self, channel: str, payload: bytes) -> dict:
        kind = channel
        if channel == "state":  # birth or death, told apart by "online" (validated by the schema either way)
            kind = "death" if b'"online":false' in payload.replace(b" ", b"") else "birth"
        try:
            return messages.decode(kind, payload)
        except MessageError as e:
            raise CoAPReject(Code.BAD_REQUEST, str(e)) from None

    def _authenticate(self, site: str, device: str, channel: str, msg: dict) -> None:
        if self.keystore is None:
            return
        ident = self.keystore.get(device)
        if ident is None:
            raise CoAPReject(Code.FORBIDDEN, f"device: {device!r} is not provisioned on this gateway")
        if ident.site != site:
            raise CoAPReject(
                Code.FORBIDDEN, f"site: device {device!r} belongs to site {ident.site!r}, not {site!r}"
            )
        if (ident.meta or {}).get("transport") != "coap":  # the bridge publishes under the gateway's login
            raise CoAPReject(Code.FORBIDDEN, f"device: {device!r} is not a CoAP device (provisioned for MQTT)")
        if channel in ("evt", "state"):  # state: a forged birth/death would decide what the registry believes
            try:
                signing.verify(ident.hmac_key, channel, msg)
            except AuthError as e:
                raise CoAPReject(Code.UNAUTHORIZED, str(e)) from None

    async def handle(self, request: aiocoap.Message) -> aiocoap.Message:
        site, device, channel = self._route(tuple(request.opt.uri_path))
        if request.code != Code.POST:
            raise CoAPReject(Code.METHOD_NOT_ALLOWED, f"method: {request.code}, expected POST")
        cf = request.opt.content_format
        if cf is not None and int(cf) != CT_JSON:
            raise CoAPReject(
                Code.UNSUPPORTED_CONTENT_FORMAT,
                "content-format: %d, expected %d (application/json)" % (int(cf), CT_JSON),
            )
        payload = bytes(request.payload)
        if len(payload) > self.max_payload:
            raise CoAPReject(
                Code.REQUEST_ENTITY_TOO_LARGE,
                "payload: %d bytes, limit %d" % (len(payload), self.max_payload),
                size1=self.max_payload,
            )
        msg = self._decode(channel, payload)
        self._authenticate(site, device, channel, msg)
        topic = topics.topic(site, device, channel)
        try:
            r = self.publish(topic, payload, topics.qos(channel), topics.retained(channel))
            if inspect.isawaitable(r):
                await r
        except Exception as e:  # broker down or no PUBACK: the node keeps the report and retries
            self.stats["unavailable"] += 1
            log.warning("coap %s: republish to MQTT failed: %r", _peer_id(site, device, channel), e)
            raise CoAPReject(Code.SERVICE_UNAVAILABLE, "mqtt: broker unavailable, retry later",
                             max_age=RETRY_AFTER_S) from None
        self.stats["accepted"] += 1
        log.debug(
            "coap %s from %s -> %s (%d bytes)",
            _peer_id(site, device, channel),
            request.remote.hostinfo,
            topic,
            len(payload),
        )
        return aiocoap.Message(code=Code.CHANGED)


def mqttlink_publisher(link: Any, puback_timeout: float = PUBACK_TIMEOUT_S) -> PublishFn:
    """Adapter for the gateway's ``MQTTLink`` (gateway/links/mqtt.py): returns once the broker has the message
    (PUBACK for QoS 1; handed to a connected session for QoS 0), raises while the link is down, so the node is
    told 5.03 instead of a 2.04 for a message waiting in memory."""

    async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if link is None or not link.connected.is_set():
            raise ConnectionError("broker link down")
        if qos == 0:
            if link.publish_nowait(topic, payload, 0, retain) < 0:
                raise ConnectionError("broker outbox full")
            return
        await link.publish(topic, payload, qos, retain, timeout=puback_timeout)

    return publish


def paho_publisher(client: Any, puback_timeout: float = PUBACK_TIMEOUT_S) -> PublishFn:
    """Adapter for a paho client running its own network thread (``loop_start``): the same contract as
    ``mqttlink_publisher``; the wait for the PUBACK runs in a worker thread."""

    async def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if not client.is_connected():
            raise ConnectionError("broker link down")
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != 0:
            raise ConnectionError("paho publish rc=%d" % info.rc)
        if qos:
            await asyncio.to_thread(info.wait_for_publish, puback_timeout)
            if not info.is_published():
                raise ConnectionError("no PUBACK within %g s" % puback_timeout)

    return publish
