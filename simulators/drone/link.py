"""The simulated drone's side of a MAVLink link: what a telemetry radio, SITL's UDP output or its TCP port would be.

``open_link(spec, on_bytes)`` returns a link with ``send(frame)`` and ``close()``; what it reads goes to
``on_bytes(data)``. Specs:
- ``udp:HOST:PORT``: send to a ground station listening there (ArduPilot SITL ``--out``), hear its answers;
- ``udpin:HOST:PORT``: listen, answer whoever sent last (a ground station with ``udpout:``);
- ``tcpin:HOST:PORT``: a TCP server (SITL's port 5760); every connected client gets every frame;
- ``serial:DEVICE:BAUD``: a serial device through pyserial;
- ``fd:N``: an open file descriptor, e.g. the master side of a pseudo-terminal;
- ``pty``: open a pseudo-terminal pair; ``link.path`` is the device a gateway opens (``serial:<path>:57600``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import Any

OnBytes = Callable[[bytes], None]


class Link:
    path: str | None = None
    local_port: int | None = None

    def send(self, frame: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _Udp(Link, asyncio.DatagramProtocol):
    def __init__(self, on_bytes: OnBytes, peer: Any = None):
        self.on_bytes = on_bytes
        self.peer = peer
        self.transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.peer = addr
        self.on_bytes(data)

    def error_received(self, exc: Exception) -> None:
        pass  # the ground station is not listening (yet): a radio would lose the frame too

    def send(self, frame: bytes) -> None:
        if self.transport is not None and self.peer is not None:
            self.transport.sendto(frame, self.peer)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class _TcpServer(Link):
    def __init__(self, on_bytes: OnBytes):
        self.on_bytes = on_bytes
        self.clients: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.add(writer)
        try:
            while data := await reader.read(4096):
                self.on_bytes(data)
        except (ConnectionError, OSError):
            pass
        finally:
            self.clients.discard(writer)
            writer.close()

    def send(self, frame: bytes) -> None:
        for w in list(self.clients):
            if w.transport.get_write_buffer_size() < 65536:
                w.write(frame)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.clients):
            w.close()


class _Fd(Link):
    """A file descriptor on the event loop (serial device, pseudo-terminal)."""

    def __init__(self, fd: int, on_bytes: OnBytes, owner: Any = None, path: str | None = None):
        self.fd: int | None = fd
        self.on_bytes = on_bytes
        self.owner = owner  # what must be closed with it (a pyserial Serial, or the pty's other end)
        self.path = path
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._read)

    def _read(self) -> None:
        if self.fd is None:
            return
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.fd)
            return
        self.on_bytes(data)

    def send(self, frame: bytes) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):  # a full line loses frames, like a radio
            os.write(self.fd, frame)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_reader(fd)
        if self.owner is not None and hasattr(self.owner, "close"):
            self.owner.close()
        else:
            with contextlib.suppress(OSError):
                os.close(fd)
        if isinstance(self.owner, int):
            with contextlib.suppress(OSError):
                os.close(self.owner)


def _hostport(rest: str) -> tuple[str, int]:
    host, _, port = rest.rpartition(":")
    return host.strip("[]"), int(port)


async def open_link(spec: str, on_bytes: OnBytes) -> Link:
    scheme, _, rest = spec.partition(":")
    loop = asyncio.get_running_loop()
    if scheme in ("udp", "udpin"):
        host, port = _hostport(rest)
        proto = _Udp(on_bytes, (host, port) if scheme == "udp" else None)
        kw: dict[str, Any] = {"local_addr": (host, port)} if scheme == "udpin" else \
            {"local_addr": ("::1" if ":" in host else "127.0.0.1", 0) if host in ("127.0.0.1", "::1", "localhost")
             else ("0.0.0.0", 0)}
        tr, _ = await loop.create_datagram_endpoint(lambda: proto, **kw)
        proto.transport = tr
        proto.local_port = tr.get_extra_info("sockname")[1]
        return proto
    if scheme == "tcpin":
        host, port = _hostport(rest)
        srv = _TcpServer(on_bytes)
        srv.server = await asyncio.start_server(srv.serve, host, port)
        srv.local_port = srv.server.sockets[0].getsockname()[1]
        return srv
    if scheme == "serial":
        import serial

        path, _, baud = rest.rpartition(":")
        ser = serial.Serial(path, int(baud), timeout=0, write_timeout=0)
        return _Fd(ser.fileno(), on_bytes, owner=ser, path=path)
    if scheme == "fd":
        return _Fd(int(rest), on_bytes)
    if scheme == "pty":
        import tty

        master, slave = os.openpty()
        tty.setraw(slave)
        return _Fd(master, on_bytes, owner=slave, path=os.ttyname(slave))
    raise ValueError(f"link {spec!r}: expected udp:, udpin:, tcpin:, serial:, fd: or pty")


__all__ = ["Link", "open_link"]
