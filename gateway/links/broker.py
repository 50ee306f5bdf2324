"""Embedded default broker: an in-process amqtt broker on loopback, for `lookout demo` and a first run.

Theory of operation
-------------------
With no broker configured the gateway still needs one, so that one command runs the whole system on a bare
machine. amqtt (pure Python, asyncio, MIT) runs inside the gateway's own event loop: no second process, no
package from the OS. ``EmbeddedBroker`` is an async context manager that starts it on ``127.0.0.1`` (port 0 =
any free port) and yields its ``mqtt://host:port`` URL; leaving the block shuts it down.

Why amqtt and what it is trusted with (measured on the project's CI machine kind): amqtt 0.12.1 keeps
retained messages and fires last wills correctly, which is all the registry needs (birth/death on ``state``).
It delivered only 2 of 5 QoS 1 messages queued for an offline persistent session (Mosquitto: 5 of 5) and
moves ~0.4x Mosquitto's message rate. So **no delivery guarantee rests on its session queue**: the gateway's
durable command queue re-sends to a node on its next birth. A production site points the gateway at
Mosquitto/EMQX (``--broker mqtt://host:port``).

Configuration choices:
- one TCP listener bound to loopback only; anonymous login is allowed *because* nothing off the machine can
  reach it (binding anything other than a loopback address is refused here, LocalProtocolError-style
  ``ValueError``);
- plugins are given explicitly (the config-dict form), so amqtt loads no entry-point plugins: no ``$SYS``
  topics, no packet/event logger, only ``AnonymousAuthPlugin``;
- two amqtt 0.12.1 defects are patched in a thin subclass (``_patched_broker_class``), each covered by a test:
  (1) on every CONNECT it iterates the *shared* subscription dict across ``await``s, so clients connecting
  while others subscribe crash with "dictionary changed size during iteration" (seen with 5 nodes starting
  together): the dict now iterates over a snapshot; (2) in the same loop it sends the retained messages of
  *every* client's filters to the connecting client, subscribed or not (a node would receive other nodes'
  retained state): retained messages now go only to sessions that hold the filter;
- amqtt's own loggers are turned down to ERROR unless the caller already configured them (``quiet``).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from types import TracebackType

log = logging.getLogger(__name__)

_AMQTT_LOGGERS = ("amqtt", "transitions")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def broker_config(host: str = "127.0.0.1", port: int = 0) -> dict:
    """The amqtt configuration dict used by ``EmbeddedBroker`` (exposed for tests and docs)."""
    bind_host = f"[{host}]" if ":" in host else host
    return {
        "listeners": {"default": {"type": "tcp", "bind": "%s:%d" % (bind_host, port), "max_connections": 0}},
        # explicit plugin list: amqtt then loads nothing from entry points ($SYS broker plugin, loggers stay
        # off)
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        "timeout_disconnect_delay": 0,
    }


class _SnapshotDict(dict):
    """A dict whose iteration walks a copy of the keys, so an ``await`` inside a ``for k in d`` loop is
    safe."""

    def __iter__(self):
        return iter(list(dict.keys(self)))


def _patched_broker_class():
    from amqtt.broker import Broker  # deferred: only a gateway without a configured broker needs amqtt

    class PatchedBroker(Broker):
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self._subscriptions = _SnapshotDict()

        async def _publish_retained_messages_for_subscription(self, subscription, session) -> None:
            holders = self._subscriptions.get(subscription[0], ())
            if not any(s.client_id == session.client_id for s, _qos in holders):
                return  # amqtt calls this for every client's filters on each CONNECT
            await super()._publish_retained_messages_for_subscription(subscription, session)

    return PatchedBroker


class EmbeddedBroker:
    """``async with EmbeddedBroker() as url:`` -> ``"mqtt://127.0.0.1:<port>"``.

    ``host`` must be a loopback address (anonymous access is only acceptable there); ``port`` 0 picks a free
    port, readable afterwards from ``.port``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, quiet: bool = True) -> None:
        if not _is_loopback(host):
            raise ValueError(f"embedded broker host {host!r}: expected a loopback address (anonymous access)")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"embedded broker port {port!r}: expected 0..65535")
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        self.quiet = quiet
        self._broker = None

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return "mqtt://%s:%d" % (h, self.port)

    @property
    def running(self) -> bool:
        return self._broker is not None

    async def start(self) -> str:
        if self._broker is not None:
            raise RuntimeError("embedded broker already started")
        if self.quiet:
            for name in _AMQTT_LOGGERS:
                lg = logging.getLogger(name)
                if lg.level == logging.NOTSET:
                    lg.setLevel(
                        logging.ERROR
                    )  # amqtt warns about benign races (e.g. duplicate PUBACK waiters)
        if self.port:  # a taken port fails here, as an OSError naming nothing else, before amqtt logs a traceback
            with socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server will
                probe.bind((self.host, self.port))
        broker = _patched_broker_class()(broker_config(self.host, self.port))
        await broker.start()
        server = broker._servers.get("default")  # amqtt exposes no public accessor for the bound socket
        if server is not None and getattr(server.instance, "sockets", None):
            self.port = server.instance.sockets[0].getsockname()[1]
        self._broker = broker
        log.info("embedded broker listening on %s (amqtt, loopback only, anonymous)", self.url)
        return self.url

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        try:
            await broker.shutdown()
        except Exception:  # a failing shutdown must not mask the caller's own exception
            log.warning("embedded broker shutdown failed", exc_info=True)
        log.info("embedded broker stopped")

    async def __aenter__(self) -> str:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
