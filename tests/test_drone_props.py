"""Property tests of the drone bridge's MAVLink input (hypothesis, CPython): arbitrary and mutated bytes never raise
out of the receive path, and whatever the bridge publishes for them is a valid Lookout message."""

from __future__ import annotations

import asyncio
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from pymavlink.dialects.v20 import ardupilotmega as mav

from lookout.gateway.core.config import from_dict
from lookout.gateway.core.registry import Registry
from lookout.gateway.links.mavlink import DroneBridge
from lookout.gateway.links.mavlink.codec import Parser
from lookout.gateway.links.mavlink.endpoints import Endpoint
from lookout.gateway.links.mavlink.signing import Verifier, now_10us
from lookout.protocols import messages

KEY = bytes(range(32))
CFG = from_dict({"gateway": {"site": "s1", "data_dir": "/tmp/x"},
                 "mavlink": {"endpoint": [{"name": "radio", "url": "udpin:127.0.0.1:0"}], "stream_hz": 0},
                 "drone": [{"id": "uav-1", "sysid": 1, "signed": False}, {"id": "uav-2", "sysid": 2}]})


class _Ident:
    def __init__(self, dev: str, sysid: int):
        self.device_id, self.kind, self.hmac_key, self.meta = dev, "drone", KEY, {"sysid": sysid}


class _Keys:
    def get(self, dev):
        return {"uav-1": _Ident("uav-1", 1), "uav-2": _Ident("uav-2", 2)}.get(dev)

    def list(self, kind=None, site=None):
        return []


class _Journal:
    def append(self, *a, **kw):
        return None


class _Ep(Endpoint):
    up = True

    def send(self, frame, peer=None):
        return True


def _frames() -> list[bytes]:
    """A realistic stream: telemetry of an unsigned drone (1) and a signed one (2), signed *now* (a signed stream
    that starts more than a minute in the past is a replay)."""
    out = []
    for sysid in (1, 2):
        m = mav.MAVLink(None, sysid, 1)
        if sysid == 2:
            m.signing.secret_key, m.signing.sign_outgoing, m.signing.timestamp = KEY, True, now_10us()
        for msg in (mav.MAVLink_heartbeat_message(2, 3, 129, 4, 4, 3),
                    mav.MAVLink_global_position_int_message(1, 302500000, 1201500000, 20000, 0, 10, 10, 0, 100),
                    mav.MAVLink_sys_status_message(0, 0, 0, 0, 15000, 0, 80, 0, 0, 0, 0, 0, 0),
                    mav.MAVLink_statustext_message(2, b"EKF variance", 0, 0),
                    mav.MAVLink_camera_image_captured_message(0, 0, 1, 302500000, 1201500000, 0, 0, [1, 0, 0, 0],
                                                              3, 1, b"img")):
            out.append(msg.pack(m))
            m.seq += 1
    return out



def feed(chunks: list[bytes]) -> list[tuple[str, bytes]]:
    published: list[tuple[str, bytes]] = []

    async def go() -> None:
        b = DroneBridge(CFG.mavlink, "s1", _Keys(), Registry(CFG.registry), _Journal(),
                        lambda t, p, q, r: published.append((t, p)))
        b._load_vehicles()
        ep = _Ep(CFG.mavlink.endpoints[0], 0, b.router.on_data, b.tuning)
        b.router.add(ep)
        for c in chunks:
            b.router.on_data(ep, c, ("127.0.0.1", 1))
        for v in b.vehicles.values():  # timers the frames started
            for h in v.timers.values():
                h.cancel()
        for t in list(b._bg):
            t.cancel()
    asyncio.run(go())
    return published


def check(published: list[tuple[str, bytes]]) -> None:
    for topic, payload in published:
        ch = topic.split("/")[4]
        kind = ch if ch != "state" else ("birth" if json.loads(payload)["online"] else "death")
        messages.decode(kind, payload)  # raises if the bridge ever published something the contract forbids


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_arbitrary_bytes_never_raise(chunks):
    check(feed(chunks))
    for c in chunks:
        Parser().feed(c)
        Verifier().verify(c, 1, 1)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_mutated_frames_never_raise_and_publish_only_valid_messages(data):
    stream = bytearray(b"".join(_frames()))
    for _ in range(data.draw(st.integers(0, 6))):
        i = data.draw(st.integers(0, len(stream) - 1))
        stream[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(stream)))
    published = feed([bytes(stream[:cut]), bytes(stream[cut:])])
    check(published)
    for topic, payload in published:  # the signed drone: a changed byte never gets through as a changed value
        if topic.endswith("/uav-2/loc"):
            m = json.loads(payload)
            assert (m["lat"], m["lon"], m["alt_mm"]) == (302500000, 1201500000, 20000)


def test_the_unmutated_stream_is_published():
    published = feed([b"".join(_frames())])
    check(published)
    kinds = {(t.split("/")[3], t.split("/")[4]) for t, _ in published}
    assert {("uav-1", "state"), ("uav-1", "loc"), ("uav-1", "evt"), ("uav-2", "loc"), ("uav-2", "evt")} <= kinds
