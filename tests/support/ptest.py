"""The few test helpers that exist on both CPython and MicroPython.

Test modules under tests/protocols/ and tests/firmware_unit/ run unchanged under pytest (CPython) and under the
real MicroPython runtime (tests/mpy/runner.mjs), so they use plain ``assert`` and this ``raises`` instead of
``pytest.raises``.
"""


class raises:
    """``with raises(FrameError) as r: ...`` then ``r.value`` holds the exception."""

    def __init__(self, exc_type, match=None):
        self.exc_type = exc_type
        self.match = match
        self.value = None

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            raise AssertionError("expected %s, nothing was raised" % self.exc_type.__name__)
        if not issubclass(et, self.exc_type):
            return False
        if self.match is not None and self.match not in str(ev):
            raise AssertionError("%s raised with %r, expected text %r" % (et.__name__, str(ev), self.match))
        self.value = ev
        return True


def run_async(coro):
    """Drive a coroutine to completion on either runtime (MicroPython's wasm port has no asyncio.run)."""
    import asyncio

    if hasattr(asyncio, "run"):
        return asyncio.run(coro)
    loop = asyncio.get_event_loop()
    return loop.run_until_complete(coro)
