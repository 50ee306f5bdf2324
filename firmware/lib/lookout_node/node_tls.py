"""TLS settings of the broker connection (loaded by node.py only when ``broker.tls`` is on).

Theory of operation: ``broker.ca`` (a file on flash, default ``ca.crt``; PEM with one certificate, or DER) is
the only CA the node trusts (no system store). It is read here, once, and turned into DER; an optional
``broker.ca_sha256`` pins the SHA-256 of exactly those DER bytes, and exactly those bytes are handed to the
board's ``tls_context`` as ``cadata``: no board layer reads a CA file of its own (the ESP32 layer used to load a
``ca.der`` twin the pin never saw), so a swapped CA file keeps the node off the broker instead of trusting it.
``cert``/``cert_key`` add a client certificate; ``sni`` overrides the server name (default ``broker.host``). Any
failure raises: the node never falls back to plaintext.
"""

import binascii
import hashlib


class TLSConfigError(Exception):
    """The TLS settings cannot be honoured (CA missing, or not the pinned one): the node stays offline."""


def pem_to_der(raw):
    """DER of the first certificate in a PEM file (what ``broker.ca_sha256`` pins); DER input is returned."""
    raw = bytes(raw)
    if not raw.startswith(b"-----BEGIN"):
        return raw
    body = []
    inside = False
    for line in raw.split(b"\n"):
        line = line.strip()
        if line.startswith(b"-----BEGIN"):
            inside = True
        elif line.startswith(b"-----END"):
            break
        elif inside:
            body.append(line)
    return binascii.a2b_base64(b"".join(body))


def tls_opts(cfg, fs, hal):
    """MQTTClient TLS arguments (``ssl``, ``server_hostname``) for ``cfg["broker"]``; raises TLSConfigError
    (or the board's error)."""
    b = cfg["broker"]
    ca = b.get("ca") or "ca.crt"
    raw = fs.read(ca)
    if not raw:
        raise TLSConfigError("broker.ca: %r is not on flash" % ca)
    der = pem_to_der(raw)
    if not der:
        raise TLSConfigError("broker.ca: %r holds no certificate" % ca)
    pin = b.get("ca_sha256")
    if pin:
        got = hashlib.sha256(der).digest().hex()
        if got != str(pin).lower():
            raise TLSConfigError("broker.ca_sha256: %s is %s..., the pinned CA is %s..." % (ca, got[:16],
                                                                                         str(pin)[:16]))
    cert, key = b.get("cert"), b.get("cert_key")
    ctx = hal.tls_context(der, fs.path(cert) if cert else None, fs.path(key) if key else None)  # the pinned bytes
    return {"ssl": ctx, "server_hostname": b.get("sni") or b["host"]}
