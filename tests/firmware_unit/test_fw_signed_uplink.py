"""Node-originated integrity on both runtimes: events (purpose ``evt``), results (``res``) and snapshot upload
manifests (``up``) carry the device key's MAC; the gateway-side check (protocols.signing.verify) accepts them
and rejects a tampered copy, another purpose, or another key."""

import json

from fwtest import arun, tmpdir

import binascii

from ptest import raises

from protocols import cliptransfer, messages, signing
from protocols.errors import AuthError
from lookout_node import hal_host, sensor
from lookout_node.node import Node

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
NOW = 1700000000000


def make_node(role="camera"):
    h = hal_host.HostHal(tmpdir("lksig"), clock=lambda: NOW, pir=True, camera=True)
    cfg = {"id": "cam-01", "site": "dongshan", "role": role, "key": binascii.hexlify(KEY).decode(),
           "broker": {"host": "loopback", "port": 1883}, "quiet_hours": [],
           "position": {"lat": 300000000, "lon": 1200000000}}
    h.fs.write("config.json", json.dumps(cfg).encode())
    return h, Node(h)


def rejects(key, purpose, msg):
    with raises(AuthError) as e:
        signing.verify(key, purpose, msg)
    return e.value.code == "bad_mac"


def test_event_signed_with_device_key():
    h, node = make_node()
    node.emit_event("presence", "general", conf=80, count=1)
    topic, payload = node.outbox.peek()
    assert topic == "lookout/v1/dongshan/cam-01/evt"
    m = messages.decode("evt", payload)
    signing.verify(KEY, "evt", m)  # what the gateway does
    assert rejects(OTHER, "evt", m)
    assert rejects(KEY, "res", m)  # an event can never pass as a result
    t = dict(m)
    t["sev"] = "serious"
    assert rejects(KEY, "evt", t)


def test_result_signed_with_device_key():
    h, node = make_node()
    node.proc._result("c1", "rejected", code="bad_args", detail="x")
    topic, payload = node.outbox.peek()
    assert topic.endswith("/res")
    m = messages.decode("res", payload)
    signing.verify(KEY, "res", m)
    t = dict(m)
    t["status"] = "done"
    assert rejects(KEY, "res", t)
    assert rejects(KEY, "evt", m)


def test_snapshot_manifest_signed_and_tamper_detected():
    async def body():
        h, node = make_node()
        sent = []

        async def publish(topic, payload, qos=0, retain=False):
            sent.append((topic, bytes(payload)))

        node.publish = publish
        m = await node.sensor.take_snapshot()
        assert sent[0][0] == "lookout/v1/dongshan/cam-01/up/%d" % m.tid
        d = json.loads(sent[0][1])
        signing.verify(KEY, "up", d)  # gateway side: the MAC first...
        got = cliptransfer.decode_manifest(sent[0][1])  # ...then the manifest rules (mac is allowed)
        assert got == m and got.sha256 == m.sha256
        assert len(sent) == 1 + m.chunks
        for field, value in (("sha256", "0" * 64), ("size", d["size"] + 1), ("id", "snap-evil")):
            t = dict(d)
            t[field] = value
            assert rejects(KEY, "up", t)
        assert rejects(OTHER, "up", d)
        assert rejects(KEY, "evt", d)
        u = dict(d)
        del u["mac"]
        assert rejects(KEY, "up", u)  # unsigned
    return arun(body())


def test_signed_manifest_helper_matches_mac_rule():
    s = cliptransfer.ClipSender(b"abc" * 100, 128, "snap-1", 7, "snapshot", "image/jpeg", NOW)
    raw = sensor.signed_manifest(KEY, s.manifest)
    d = json.loads(raw)
    assert d["mac"] == signing.compute_mac(KEY, "up", s.manifest.to_dict())
    assert raw.startswith(b"{") and b" " not in raw
    with raises(cliptransfer.TransferError):
        cliptransfer.decode_manifest(raw.replace(d["mac"].encode(), b"12"))  # malformed mac field
