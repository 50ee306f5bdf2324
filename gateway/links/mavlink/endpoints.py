"""MAVLink endpoints: one class per transport behind one interface (mavlink-router's shape), all on the event loop.

Theory of operation
-------------------
An endpoint moves bytes; it knows nothing of messages. What it reads goes to ``on_data(endpoint, data, peer)``
(the router), which parses with the endpoint's ``parser(peer)``: one framing state per byte stream, so two UDP
senders on one port never splice each other's half frames. ``send(frame, peer)`` writes one frame, or drops and
counts it (``stats.tx_dropped``) when the link is down or its write buffer is full: a slow radio must never grow
the gateway's memory without bound.

- ``udpin:HOST:PORT``: listen; every sender's address is a peer (at most ``max_peers``, the least recently heard
  forgotten first). ``send`` without a peer goes to every peer.
- ``udpout:HOST:PORT``: send to one address, read the answers on the same socket.
- ``tcp:HOST:PORT``: a client; it reconnects with doubling waits while the server is away.
- ``serial:DEVICE:BAUD``: pyserial opens and configures the device; reads and writes then go through the file
  descriptor registered with the event loop (``add_reader``/``add_writer``), so no thread and no polling. A device
  that disappears (USB unplugged, the other end of a pseudo-terminal closed) is reopened like a TCP link.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from lookout.gateway.core.config_mavlink import EndpointConfig
from lookout.gateway.links.mavlink.codec import Parser
from lookout.gateway.links.mavlink.tuning import Tuning

log = logging.getLogger(__name__)

OnData = Callable[["Endpoint", bytes, Any], None]


class Stats:
    """Counters of one endpoint, read by the metrics collector and ``lookout drone links``."""

    __slots__ = ("bad", "dropped", "lost", "rx_bytes", "rx_frames", "seqs", "tx_dropped", "tx_frames")

    def __init__(self) -> None:
        self.rx_frames = 0
        self.rx_bytes = 0
        self.tx_frames = 0
        self.tx_dropped = 0
        self.bad = 0  # frames that failed to parse (CRC, length): pymavlink's BAD_DATA
        self.lost = 0  # frames missing from sequence numbers, all senders on this link
        self.dropped: collections.Counter[str] = collections.Counter()  # unsigned, bad_signature, replay
        self.seqs: dict[tuple[int, int], int] = {}

    def count_seq(self, sysid: int, compid: int, seq: int) -> None:
        key = (sysid, compid)
        last = self.seqs.get(key)
        self.seqs[key] = seq
        if last is not None:
            gap = (seq - last - 1) & 0xFF
            if gap and gap < 128:
                self.lost += gap

    def loss_pct(self) -> float:
        total = self.rx_frames + self.lost
        return 100.0 * self.lost / total if total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"rx": self.rx_frames, "rx_bytes": self.rx_bytes, "tx": self.tx_frames, "tx_dropped": self.tx_dropped,
                "bad": self.bad, "lost": self.lost, "loss_pct": round(self.loss_pct(), 1),
                "dropped": dict(self.dropped)}


class Endpoint:
    """The interface every transport implements."""

    def __init__(self, cfg: EndpointConfig, index: int, on_data: OnData, tuning: Tuning):
        self.cfg = cfg
        self.name = cfg.name
        self.index = index  # MAVLink 2 signing link id of what we send here
        self.forward = cfg.forward
        self.block = frozenset(cfg.block)
        self.on_data = on_data
        self.tuning = tuning
        self.stats = Stats()
        self.tx_seq = 0
        self._parser = Parser()

    def next_seq(self) -> int:
        s = self.tx_seq
        self.tx_seq = (s + 1) & 0xFF
        return s

    def parser(self, peer: Any) -> Parser:
        return self._parser

    @property
    def up(self) -> bool:
        raise NotImplementedError

    def peers(self) -> list[Any]:
        """Where a frame for "everyone on this link" goes (None = the link's one destination)."""
        return [None]

    async def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def send(self, frame: bytes, peer: Any = None) -> bool:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.cfg.url, "forward": self.forward, "up": self.up,
                **self.stats.as_dict()}


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, ep: _UDP):
        self.ep = ep

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.ep._received(data, addr)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable on udpout: the peer is away
        log.debug("%s: %s", self.ep.name, exc)


class _UDP(Endpoint):
    def __init__(self, cfg: EndpointConfig, index: int, on_data: OnData, tuning: Tuning):
        super().__init__(cfg, index, on_data, tuning)
        self._transport: asyncio.DatagramTransport | None = None
        self._peers: collections.OrderedDict[Any, Parser] = collections.OrderedDict()

    @property
    def up(self) -> bool:
        return self._transport is not None

    @property
    def local_port(self) -> int:
        assert self._transport is not None
        return self._transport.get_extra_info("sockname")[1]

    def parser(self, peer: Any) -> Parser:
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = Parser()
            if len(self._peers) > self.tuning.max_peers:
                self._peers.popitem(last=False)
        return p

    def _received(self, data: bytes, addr: Any) -> None:
        st = self.stats
        st.rx_bytes += len(data)
        if addr in self._peers:
            self._peers.move_to_end(addr)
        self.on_data(self, data, addr)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class UDPIn(_UDP):
    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self),
                                                                 local_addr=(self.cfg.host, self.cfg.port))

    def peers(self) -> list[Any]:
        return list(self._peers)

    def send(self, frame: bytes, peer: Any = None) -> bool:
        if self._transport is None:
            self.stats.tx_dropped += 1
            return False
        for addr in ([peer] if peer is not None else list(self._peers)):
            self._transport.sendto(frame, addr)
            self.stats.tx_frames += 1
        return True


class UDPOut(_UDP):
    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self),
                                                                 remote_addr=(self.cfg.host, self.cfg.port))

    def send(self, frame: bytes, peer: Any = None) -> bool:
        if self._transport is None:
            self.stats.tx_dropped += 1
            return False
        self._transport.sendto(frame)
        self.stats.tx_frames += 1
        return True


class _Reconnecting(Endpoint):
    """A stream link that may go away (TCP, serial): reopened by a task with doubling waits."""

    def __init__(self, cfg: EndpointConfig, index: int, on_data: OnData, tuning: Tuning):
        super().__init__(cfg, index, on_data, tuning)
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Event | None = None
        self._closed = False

    async def open(self) -> None:
        self._lost = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._keep_open(), name=f"mavlink-{self.name}")

    async def _keep_open(self) -> None:
        assert self._lost is not None
        wait = self.tuning.tcp_retry_s
        while not self._closed:
            self._lost.clear()
            try:
                await self._connect()
            except (OSError, ValueError) as e:
                log.info("%s (%s): cannot open (%s); again in %.0f s", self.name, self.cfg.url, e, wait)
                await asyncio.sleep(wait)
                wait = min(wait * 2, self.tuning.tcp_retry_max_s)
                continue
            wait = self.tuning.tcp_retry_s
            self._parser = Parser()  # a new byte stream: no half frame from the old one
            log.info("%s: connected (%s)", self.name, self.cfg.url)
            await self._lost.wait()
            if not self._closed:
                log.info("%s: link closed; reopening", self.name)
                await asyncio.sleep(self.tuning.tcp_retry_s)

    async def _connect(self) -> None:
        raise NotImplementedError

    def _gone(self) -> None:
        if self._lost is not None:
            self._lost.set()

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._gone()


class _Stream(asyncio.Protocol):
    def __init__(self, ep: TCPClient):
        self.ep = ep

    def data_received(self, data: bytes) -> None:
        self.ep.stats.rx_bytes += len(data)
        self.ep.on_data(self.ep, data, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.ep._transport = None
        self.ep._gone()


class TCPClient(_Reconnecting):
    def __init__(self, cfg: EndpointConfig, index: int, on_data: OnData, tuning: Tuning):
        super().__init__(cfg, index, on_data, tuning)
        self._transport: asyncio.Transport | None = None

    @property
    def up(self) -> bool:
        return self._transport is not None

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        tr, _ = await loop.create_connection(lambda: _Stream(self), self.cfg.host, self.cfg.port)
        self._transport = tr

    def send(self, frame: bytes, peer: Any = None) -> bool:
        tr = self._transport
        if tr is None or tr.get_write_buffer_size() > self.tuning.max_write_buffer:
            self.stats.tx_dropped += 1
            return False
        tr.write(frame)
        self.stats.tx_frames += 1
        return True

    def close(self) -> None:
        super().close()
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class SerialPort(_Reconnecting):
    """A telemetry radio or autopilot UART (``serial:DEVICE:BAUD``), 8N1, no flow control."""

    def __init__(self, cfg: EndpointConfig, index: int, on_data: OnData, tuning: Tuning):
        super().__init__(cfg, index, on_data, tuning)
        self._serial: Any = None
        self._fd: int | None = None
        self._out = bytearray()

    @property
    def up(self) -> bool:
        return self._fd is not None

    async def _connect(self) -> None:
        import serial  # pyserial: opens the device and sets baud/8N1/raw mode through termios

        ser = serial.Serial(self.cfg.path, self.cfg.baud, timeout=0, write_timeout=0, exclusive=True)
        fd = ser.fileno()
        os.set_blocking(fd, False)
        self._serial, self._fd = ser, fd
        asyncio.get_running_loop().add_reader(fd, self._readable)

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:  # EIO: the device went away (pty peer closed, USB unplugged)
            log.info("%s: read failed (%s)", self.name, e)
            data = b""
        if not data:
            self._shut()
            return
        self.stats.rx_bytes += len(data)
        self.on_data(self, data, None)

    def send(self, frame: bytes, peer: Any = None) -> bool:
        fd = self._fd
        if fd is None or len(self._out) + len(frame) > self.tuning.max_write_buffer:
            self.stats.tx_dropped += 1
            return False
        self.stats.tx_frames += 1
        if self._out:
            self._out += frame
            return True
        try:
            n = os.write(fd, frame)
        except BlockingIOError:
            n = 0
        except OSError as e:
            log.info("%s: write failed (%s)", self.name, e)
            self._shut()
            return False
        if n < len(frame):
            self._out += frame[n:]
            asyncio.get_running_loop().add_writer(fd, self._writable)
        return True

    def _writable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            n = os.write(fd, self._out)
        except BlockingIOError:
            return
        except OSError:
            self._shut()
            return
        del self._out[:n]
        if not self._out:
            asyncio.get_running_loop().remove_writer(fd)

    def _shut(self) -> None:
        fd, ser = self._fd, self._serial
        self._fd = self._serial = None
        self._out.clear()
        if fd is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(fd)
            loop.remove_writer(fd)
        if ser is not None:
            with contextlib.suppress(OSError):
                ser.close()
        self._gone()

    def close(self) -> None:
        super().close()
        with contextlib.suppress(RuntimeError):  # no running loop any more: nothing is registered with it
            self._shut()


KINDS: dict[str, type[Endpoint]] = {"udpin": UDPIn, "udpout": UDPOut, "tcp": TCPClient, "serial": SerialPort}


def make(cfg: EndpointConfig, index: int, on_data: OnData, tuning: Tuning) -> Endpoint:
    return KINDS[cfg.scheme](cfg, index, on_data, tuning)


__all__ = ["Endpoint", "SerialPort", "Stats", "TCPClient", "UDPIn", "UDPOut", "make"]
