"""A small deterministic fuzzer that runs the same inputs on CPython and MicroPython.

Hypothesis does not exist on MicroPython, yet that is where a bad packet would crash a node, and MicroPython's
``json``, ``str`` and ``struct`` raise different exception types than CPython's. So the dual-runtime modules feed
every decoder seeded mutations of golden inputs (bit flips, truncation, insertion, splices, random bytes) and
check that nothing but the codec's own error escapes.
"""


class Rng:
    """xorshift32: the same sequence on every runtime (no ``random`` module differences)."""

    def __init__(self, seed):
        self.s = (seed & 0xFFFFFFFF) or 1

    def next(self):
        x = self.s
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        self.s = x
        return x

    def below(self, n):
        return self.next() % n


def mutate(rng, data):
    b = bytearray(data)
    for _ in range(1 + rng.below(4)):
        op = rng.below(6)
        if op == 0 and b:  # flip a bit
            i = rng.below(len(b))
            b[i] ^= 1 << rng.below(8)
        elif op == 1 and b:  # replace a byte
            b[rng.below(len(b))] = rng.below(256)
        elif op == 2:  # truncate
            b = b[:rng.below(len(b) + 1)]
        elif op == 3:  # insert random bytes
            i = rng.below(len(b) + 1)
            b[i:i] = bytes(rng.below(256) for _ in range(1 + rng.below(8)))
        elif op == 4 and b:  # duplicate a slice
            i = rng.below(len(b))
            j = i + rng.below(len(b) - i + 1)
            b[j:j] = b[i:j]
        else:  # an interesting byte
            i = rng.below(len(b) + 1)
            b[i:i] = bytes([(0x00, 0xFF, 0x7F, 0x80, 0x22, 0x5C, 0x7B, 0x2C)[rng.below(8)]])
    return bytes(b)


def inputs(golden, count, seed=1):
    """``count`` inputs: the golden ones, mutations of them, and some pure noise."""
    rng = Rng(seed)
    for g in golden:
        yield g
    for k in range(count):
        if k % 10 == 9:
            yield bytes(rng.below(256) for _ in range(rng.below(64)))
        else:
            yield mutate(rng, golden[rng.below(len(golden))])


TOTAL = [0]  # inputs fed so far in this process (read by bench/fuzz_soak.py)


def only_raises(fn, golden, allowed, count=300, seed=1):
    """Call ``fn(data)`` on every input; anything but ``allowed`` fails with the offending input in hex."""
    n = 0
    for data in inputs(golden, count, seed):
        try:
            fn(data)
        except allowed:
            pass
        except Exception as e:  # noqa: BLE001 - the point: report any other escape
            import binascii

            raise AssertionError("%s escaped on input %s: %s" % (type(e).__name__,
                                                                 binascii.hexlify(data).decode(), e))
        n += 1
    TOTAL[0] += n
    return n
