"""docs/PROTOCOL.md tells the truth: every tagged example decodes with the reference codecs.

A fenced block opened with ```<lang> lookout:<kind> is an example of <kind>. JSON kinds are message schemas;
binary kinds are hex dumps (a comment may follow the bytes on a line) fed to the matching decoder, ``<kind>-each``
holds one message per line; ``nmea`` blocks hold sentences.
"""

from __future__ import annotations

import binascii
import re
from pathlib import Path

import pytest

from lookout.protocols import messages, signing

DOC = Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md"
BLOCK = re.compile(r"^```(\w+) lookout:([\w-]+)\n(.*?)^```", re.S | re.M)


def examples() -> list[tuple[str, str, str]]:
    return [(m.group(1), m.group(2), m.group(3)) for m in BLOCK.finditer(DOC.read_text())]


def _hex(text: str) -> bytes:
    """Hex dumps may carry a comment after the bytes on each line: take the leading hex tokens only."""
    out = []
    for line in text.splitlines():
        for tok in line.split():
            if not re.fullmatch(r"(?:[0-9a-fA-F]{2})+", tok):
                break
            out.append(tok)
    return binascii.unhexlify("".join(out))


def _decode_binary(kind: str, data: bytes):
    if kind == "coap":
        from lookout.protocols import coap
        msg = coap.decode(data)
        assert coap.encode(msg) == data
        return msg
    if kind == "serialframe":
        from lookout.protocols import serialframe
        dec = serialframe.FrameDecoder()
        dec.receive_data(data)
        ev = dec.next_event()
        assert isinstance(ev, serialframe.Frame), ev
        return ev
    if kind == "mqtt":
        from lookout.protocols import mqttpacket
        r = mqttpacket.PacketReader()
        r.receive_data(data)
        ev = r.next_event()
        assert ev is not mqttpacket.NEED_DATA
        return ev
    if kind == "clipchunk":
        from lookout.protocols import cliptransfer
        return cliptransfer.decode_chunk(data)
    if kind == "clipdata":
        from lookout.protocols import cliptransfer
        p = cliptransfer.decode_data(data)
        assert cliptransfer.encode_data(p.tid, p.offset, bytes(p.data)) == data
        return p
    raise AssertionError("no decoder for example kind %r" % kind)


def test_doc_has_examples_of_every_message_kind():
    kinds = {k for _, k, _ in examples()}
    assert set(messages.SCHEMAS) <= kinds


@pytest.mark.parametrize("lang,kind,body", examples(), ids=lambda v: v if isinstance(v, str) and len(v) < 20 else "")
def test_example_decodes(lang: str, kind: str, body: str):
    if kind in messages.SCHEMAS:
        assert lang == "json"
        obj = messages.decode(kind, body.strip().encode())
        # examples are written in canonical form, exactly as a sender emits them
        assert messages.encode(kind, obj) == body.strip().encode()
    elif kind == "nmea":
        from lookout.protocols import nmea
        sentences = [ln.strip().replace("\u240d\u240a", "") for ln in body.splitlines() if ln.strip().startswith("$")]
        assert sentences
        for line in sentences:
            nmea.parse_sentence(line.encode())
    elif kind == "clipmanifest":
        from lookout.protocols import cliptransfer
        m = cliptransfer.decode_manifest(body.strip().encode())
        assert m.encode() == body.strip().encode()
    elif kind == "notify":
        from lookout.protocols import notify
        assert notify.encode(notify.decode(body.strip().encode())) == body.strip().encode()
    elif kind == "clipstatus":
        from lookout.protocols import cliptransfer
        cliptransfer.decode_status(body.strip().encode())
    elif kind in ("serialhello", "serialcatalog"):  # §20: HELLO steps (MACs with the example key) and catalogues
        from lookout.protocols import serialsession
        raw = body.strip().encode()
        if kind == "serialhello":
            d = serialsession.decode_hello(raw)
            assert serialsession.encode_hello(d) == raw
            if "mac" in d:
                signing.verify(bytes(range(32)), "hello", d)
        else:
            assert serialsession.encode_catalog(serialsession.decode_catalog(raw)) == raw
    elif kind.endswith("-each"):  # one message per line
        assert lang == "hex"
        for line in body.strip().splitlines():
            _decode_binary(kind[:-5], _hex(line))
    else:
        assert lang == "hex"
        _decode_binary(kind, _hex(body))


def test_worked_mac_example():
    text = DOC.read_text()
    cmd = messages.decode("cmd", next(b for _, k, b in examples() if k == "cmd").strip().encode())
    key = bytes(range(32))
    signing.verify(key, "cmd", cmd)
    assert signing.mac_input("cmd", cmd).decode() in text
    assert "and MAC `%s`" % cmd["mac"] in text
