"""A minimal paho-based node for gateway tests and the latency bench (not firmware; simulators/ has the real one).

It does what the wire contract asks of a node and nothing more: a retained birth with a retained death as last
will, heartbeats on demand, and for each command a ``signing.check_command`` (MAC, target, counter, expiry) then
a signed ``accepted`` and a signed final result. ``behaviour`` picks the final result: ``done``, ``failed``,
``silent`` (never answers: tests retries and timeouts) or ``forge`` (answers with a wrong MAC).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from lookout.protocols import messages, signing, topics
from lookout.protocols.errors import AuthError, MessageError


def _now() -> int:
    return time.time_ns() // 1_000_000


def _nodelay(client: Any, userdata: Any, sock: Any) -> None:
    """paho ``on_socket_open``: no Nagle, as the gateway's link does (small, latency-bound messages)."""
    with contextlib.suppress(OSError, AttributeError):
        getattr(sock, "_sock", sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

class FakeNode:
    def __init__(self, host: str, port: int, device_id: str, site: str, key: bytes, kind: str = "speaker",
                 hb_s: int = 30, bdseq: int = 0, behaviour: str = "done", send_accepted: bool = True):
        self.id, self.site, self.key, self.kind = device_id, site, key, kind
        self.host, self.port, self.hb_s, self.bdseq = host, port, hb_s, bdseq
        self.behaviour = behaviour
        self.send_accepted = send_accepted
        self.received: list[dict[str, Any]] = []
        self.rejected: list[tuple[str, str]] = []
        self.last_ctr = 0
        self.seq = 0
        self.hb_seq = 0
        self.connected = threading.Event()
        self.got = threading.Condition()
        self._client: paho.Client | None = None

    def _topic(self, ch: str) -> str:
        return topics.topic(self.site, self.id, ch)

    def start(self, timeout: float = 5.0) -> FakeNode:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.id, protocol=paho.MQTTv311)
        death = messages.encode("death", messages.death(self.bdseq, "lost"))
        c.will_set(self._topic("state"), death, 1, True)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_socket_open = _nodelay
        self._client = c
        self.connected.clear()
        c.connect(self.host, self.port, 30)
        c.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError(f"{self.id}: no CONNACK")
        return self

    def _on_connect(self, client, userdata, flags, rc, props) -> None:
        client.subscribe(self._topic("cmd"), 1)
        birth = messages.encode("birth", messages.birth(self.kind, self.bdseq, "fake-1", self.hb_s, site=self.site,
                                                        caps=["play", "stop"]))
        client.publish(self._topic("state"), birth, 1, True)
        self.connected.set()

    def heartbeat(self) -> None:
        self.hb_seq += 1
        assert self._client is not None
        hb = messages.encode("hb", {"seq": self.hb_seq, "up_s": 1, "hb_s": self.hb_s, "bat_mv": 3900})
        self._client.publish(self._topic("hb"), hb, 0)

    def location(self, lat: int, lon: int) -> None:
        assert self._client is not None
        loc = messages.encode("loc", {"seq": self.hb_seq, "ts": _now(), "lat": lat, "lon": lon, "fix": 1,
                                      "src": "fixed"})
        self._client.publish(self._topic("loc"), loc, 0)

    def event(self, evt_id: str, kind: str = "fishing", sev: str = "general", sign: bool = True) -> None:
        assert self._client is not None
        self.seq += 1
        msg = {"id": evt_id, "seq": self.seq, "ts": _now(), "kind": kind, "sev": sev}
        if sign:
            signing.sign(self.key, "evt", msg)
        self._client.publish(self._topic("evt"), messages.encode("evt", msg), 1)

    def result(self, cmd_id: str, status: str, forge: bool = False, **kw: Any) -> None:
        assert self._client is not None
        self.seq += 1
        msg = messages.result(cmd_id, status, ts=_now(), seq=self.seq, **kw)
        signing.sign(bytes(32) if forge else self.key, "res", msg)
        self._client.publish(self._topic("res"), messages.encode("res", msg), 1)

    def _on_message(self, client, userdata, m) -> None:
        try:
            cmd = messages.decode("cmd", m.payload)
        except MessageError:
            return
        try:
            self.last_ctr = signing.check_command(self.key, cmd, self.id, self.last_ctr, _now())
        except AuthError as e:
            self.rejected.append((cmd["id"], e.code))
            self.result(cmd["id"], "rejected", code=e.code, detail=str(e)[:200])
            return
        with self.got:
            self.received.append(cmd)
            self.got.notify_all()
        if self.behaviour == "silent":
            return
        if self.send_accepted:
            self.result(cmd["id"], "accepted")
        if self.behaviour == "forge":
            self.result(cmd["id"], "done", forge=True)
        elif self.behaviour == "failed":
            self.result(cmd["id"], "failed", code="no_clip", detail="clip not stored")
        else:
            self.result(cmd["id"], "done", data={"played": 1})

    def wait_commands(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        with self.got:
            self.got.wait_for(lambda: len(self.received) >= n, timeout)
            return list(self.received)

    def die(self) -> None:
        """Drop the connection without DISCONNECT: the broker publishes the last will."""
        if self._client is not None:
            self._client.loop_stop()
            sock = self._client.socket()
            if sock is not None:
                sock.close()
            self._client = None

    def stop(self) -> None:
        if self._client is not None:
            death = messages.encode("death", messages.death(self.bdseq, "shutdown"))
            info = self._client.publish(self._topic("state"), death, 1, True)
            info.wait_for_publish(2)
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
