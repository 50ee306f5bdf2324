"""Helpers shared by the firmware unit tests, on CPython and MicroPython alike.

Importing this module makes ``lookout_node`` importable: on a device and in the MicroPython runner it sits in
/lib already; under CPython ``lookout.simulators.firmware_host.install()`` makes it (and ``protocols``) importable.
"""

import sys
import time

try:
    import lookout_node  # noqa: F401
except ImportError:
    from lookout.tools import firmware_host

    firmware_host.install()

_n = [0]


def arun(coro):
    """Run a coroutine: the MicroPython runner awaits a returned coroutine, CPython runs it here."""
    if sys.implementation.name == "micropython":
        return coro
    import asyncio

    asyncio.run(coro)


def tmpdir(prefix="lkfw"):
    """A fresh directory name under /tmp, unique within the run on both runtimes."""
    _n[0] += 1
    t = getattr(time, "time_ns", None)
    stamp = t() if t else int(time.time() * 1e9)
    return "/tmp/%s-%d-%d" % (prefix, stamp % 1000000007, _n[0])


class MemFS:
    """The flash-storage interface of lookout_node.hal, in memory; ``written`` counts the bytes written."""

    def __init__(self):
        self.files = {}
        self.written = 0

    def read(self, name):
        return self.files.get(name)

    def write(self, name, data):
        self.files[name] = bytes(data)
        self.written += len(data)

    def append(self, name, data):
        self.files[name] = self.files.get(name, b"") + bytes(data)
        self.written += len(data)

    def size(self, name):
        d = self.files.get(name)
        return None if d is None else len(d)

    def open(self, name, mode="rb"):
        import io

        if name not in self.files:
            raise OSError(2, "no such file")
        return io.BytesIO(self.files[name])

    def remove(self, name):
        return self.files.pop(name, None) is not None
