"""Canonical JSON: the one byte string both ends compute before signing or verifying a message.

Rules (docs/PROTOCOL.md, "Canonical form"; the string rules are RFC 8785's): objects with keys sorted by code
point, no whitespace, strings with only ``"``, ``\\`` and control characters (< 0x20) escaped (``\\b \\f \\n
\\r \\t`` where they exist, else ``\\u00xx`` in lower-case hex), everything else as raw UTF-8; integers in
plain decimal; ``true``/``false``/``null``.
Floats are refused: MicroPython on an ESP32 has 32-bit floats, so a float could not be reproduced bit for bit.
Neither CPython's nor MicroPython's ``json.dumps`` guarantees this form (MicroPython has no ``sort_keys``),
hence this encoder.
"""

from .errors import LocalProtocolError

MAX_DEPTH = 8
_ESC = '"\\\b\f\n\r\t'  # characters with a two-character escape: backslash + the letter at the same index in
_ESC_AS = '"\\bfnrt'  # this string (RFC 8785 §3.2.2.2); other control characters get \u00xx


def _enc(v, out, depth):
    if depth > MAX_DEPTH:
        raise LocalProtocolError("nesting deeper than %d" % MAX_DEPTH)
    if v is None or v is True or v is False:
        out.append("null" if v is None else "true" if v else "false")
    elif isinstance(v, int):
        out.append(str(v))
    elif isinstance(v, str):
        out.append('"')
        start = 0
        for i, c in enumerate(v):
            if c < " " or c in '"\\':
                out.append(v[start:i])
                j = _ESC.find(c)
                out.append("\\" + _ESC_AS[j] if j >= 0 else "\\u%04x" % ord(c))
                start = i + 1
        out.append(v[start:] + '"')
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, item in enumerate(v):
            if i:
                out.append(",")
            _enc(item, out, depth + 1)
        out.append("]")
    elif isinstance(v, dict):
        sep = "{"
        for k in sorted(v):
            if not isinstance(k, str):
                raise LocalProtocolError("object key %r is not a string" % (k,))
            out.append(sep)
            sep = ","
            _enc(k, out, depth)
            out.append(":")
            _enc(v[k], out, depth + 1)
        out.append("}" if v else "{}")
    elif isinstance(v, float):
        raise LocalProtocolError("floats are not allowed on the wire (got %r); use scaled integers" % (v,))
    else:
        raise LocalProtocolError("cannot encode %s" % type(v).__name__)


def dumps(obj, omit=None):
    """Canonical text of ``obj``; a top-level key named ``omit`` (e.g. ``"mac"``) is left out."""
    if omit is not None and isinstance(obj, dict) and omit in obj:
        obj = dict(obj)
        del obj[omit]
    out = []
    _enc(obj, out, 0)
    return "".join(out)


def dumpb(obj, omit=None):
    return dumps(obj, omit).encode()
