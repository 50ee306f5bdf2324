"""The node's whole network path on real MicroPython: the unchanged firmware, frozen into the 32-bit Unix port
(tests/support/mpy32.py), with the host hardware layer and a board-sized heap (100 KB), against a real
Mosquitto over TCP on loopback and the gateway's CoAP bridge over UDP. paho stands in for the gateway and
signs commands (tests/support/mpynode.py); the node is steered only as a board is from outside: power cut,
network switch, PIR edge. TLS stays with the CPython runs (this build has no ssl module).

Each test boots one node process and drives several checks through it; the build's own properties (32-bit,
what is frozen, where the source is found) are checked first.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mpy32 import Mpy32Unavailable, find_source, frozen_key, search_order
from mpynode import MpyNode, PahoGateway, fetch_clip

from lookout.protocols import cliptransfer, messages, signing
from lookout.simulators.node import make_config, wav_bytes

pytestmark = pytest.mark.micropython  # real MicroPython (here the 32-bit Unix port)

KEY = bytes(range(32))
SITE = "dongshan"
FAST = {"backoff_min_ms": 50, "backoff_max_ms": 400}  # reconnect quickly after a broker restart


def node_cfg(device: str, role: str, mosquitto, **kw) -> dict:
    return make_config(device, SITE, role, KEY.hex(), mosquitto.host, mosquitto.port, hb_s=5, **kw)


@pytest.fixture
def gw(mosquitto):
    g = PahoGateway(mosquitto.host, mosquitto.port, SITE, KEY)
    yield g
    g.close()


@pytest.fixture
def nodes():
    """Every node process a test starts is killed at the end, whatever happened."""
    started: list[MpyNode] = []
    yield started
    for n in started:
        n.close()


def boot(mpy32, nodes, root: Path, cfg: dict | None = None, **kw) -> MpyNode:
    n = MpyNode(mpy32.frozen, root, cfg, **kw)
    nodes.append(n)
    n.start()
    return n


# ---- the build ---------------------------------------------------------------------------------------------

def run_mpy(exe: Path, code: str) -> str:
    r = subprocess.run([str(exe), "-c", "import sys\nsys.path[:] = ['.frozen']\n" + code],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.strip()


def test_interpreters_are_32_bit_and_only_the_frozen_one_holds_the_node(mpy32):
    probe = ("import vfs, socket, asyncio, hashlib\nprint(sys.maxsize, hasattr(vfs, 'VfsRom'))\n"
             "try:\n import lookout_node.node as n\n print(n.__file__)\n"
             "except ImportError:\n print('none')\n")
    assert run_mpy(mpy32.plain, probe).split() == [str(2 ** 31 - 1), "True", "none"]
    assert run_mpy(mpy32.frozen, probe).split() == [str(2 ** 31 - 1), "True", "lookout_node/node.py"]
    # every node module and protocol codec is in the image (the .frozen path entry finds them)
    mods = sorted(p.stem for p in (Path(__file__).parents[1] / "firmware/lib/lookout_node").glob("*.py"))
    board_only = ("boot", "hal_esp32", "node_tls")  # need machine, network or ssl
    code = "import %s\nprint('ok')" % ", ".join("lookout_node." + m for m in mods if m not in board_only)
    assert run_mpy(mpy32.frozen, code) == "ok"


def test_source_search_order_and_the_message_without_one(tmp_path):
    repo = tmp_path / "wt" / "h16"
    repo.mkdir(parents=True)
    labels = [str(p) for _, p in search_order({}, repo)]
    assert labels == [str(tmp_path / "wt/shared/micropython"), str(tmp_path / "shared/micropython")]
    with pytest.raises(Mpy32Unavailable) as e:
        find_source({}, repo)
    assert "MICROPYTHON_SRC" in str(e.value) and str(tmp_path / "shared/micropython") in str(e.value)
    # CI's layout (../shared beside the checkout) is found, and before the worktree layout
    for where in (tmp_path / "shared/micropython", tmp_path / "wt/shared/micropython"):
        where.mkdir(parents=True)
        (where / "micropython-1.28.0-src.tar.gz").write_bytes(where.name.encode() + str(where).encode())
        assert find_source({}, repo).path == where
    # MICROPYTHON_SRC wins; a checkout of another version, or a wrong path, is an error, not a fall-back
    co = tmp_path / "checkout"
    (co / "ports/unix").mkdir(parents=True)
    (co / "ports/unix/Makefile").write_text("")
    (co / "py").mkdir()
    (co / "py/mpconfig.h").write_text("#define MICROPY_VERSION_MAJOR 1\n#define MICROPY_VERSION_MINOR 28\n")
    assert find_source({"MICROPYTHON_SRC": str(co)}, repo).tarball is None
    (co / "py/mpconfig.h").write_text("#define MICROPY_VERSION_MAJOR 1\n#define MICROPY_VERSION_MINOR 22\n")
    with pytest.raises(Mpy32Unavailable, match="1.22, expected v1.28"):
        find_source({"MICROPYTHON_SRC": str(co)}, repo)
    with pytest.raises(Mpy32Unavailable, match="MICROPYTHON_SRC=.*nowhere"):
        find_source({"MICROPYTHON_SRC": str(tmp_path / "nowhere")}, repo)


def test_frozen_build_is_keyed_by_the_manifests_and_the_frozen_code(tmp_path):
    for rel in ("firmware/manifest_unix.py", "tests/support/mpy32_manifest.py", "tests/support/mpyhost.py",
                "protocols/messages.py", "firmware/lib/lookout_node/node.py", "gateway/core/x.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("# " + rel)
    k0 = frozen_key(tmp_path)
    (tmp_path / "gateway/core/x.py").write_text("changed")  # not frozen: same image
    assert frozen_key(tmp_path) == k0
    for rel in ("firmware/lib/lookout_node/node.py", "tests/support/mpy32_manifest.py",
                "protocols/messages.py"):
        (tmp_path / rel).write_text("changed " + rel)
        assert frozen_key(tmp_path) != k0, rel
        k0 = frozen_key(tmp_path)


# ---- MQTT: the speaker -------------------------------------------------------------------------------------

def plays(n: MpyNode) -> list[tuple]:
    return [(p["tag"], p["ms"], p["volume"], p["cut"]) for p in n.ask("status")["plays"]]


@pytest.mark.mosquitto
def test_speaker_birth_heartbeat_commands_preemption_and_will(mpy32, mosquitto, gw, nodes, tmp_path):
    root = tmp_path / "spk-01"
    n = MpyNode(mpy32.frozen, root, node_cfg("spk-01", "speaker", mosquitto))
    n.add_clip("nofish", wav_bytes(400))
    n.add_clip("long", wav_bytes(3000))
    nodes.append(n)
    n.start()
    # birth (retained, on state), first heartbeat and location, all valid to the gateway's schemas
    birth = gw.wait(lambda: [m for m in gw.of("spk-01", "state") if m["online"]], what="birth")[0]
    messages.validate("birth", birth)
    assert birth["kind"] == "speaker" and "play" in birth["caps"] and "fetch_clip" in birth["caps"]
    messages.validate("hb", gw.wait(lambda: gw.of("spk-01", "hb"), what="heartbeat")[0])
    loc = gw.wait(lambda: gw.of("spk-01", "loc"), what="location")[0]
    messages.validate("loc", loc)
    assert loc["src"] == "fixed" and loc["lat"] == 300000000

    # a signed play: accepted, playing, done; the speaker played it twice at the asked volume
    gw.send("spk-01", "c1", "play", {"clip": "nofish", "repeat": 2, "volume": 60})
    assert gw.final("c1")["data"]["played_ms"] == 800
    assert [(m["status"], (m.get("data") or {}).get("phase")) for m in gw.results("c1")] == \
        [("accepted", None), ("accepted", "playing"), ("done", None)]
    assert plays(n) == [("nofish", 800, 60, False)]
    # forged MAC, expired, malformed, unknown clip: answered with a reason, nothing played
    gw.send("spk-01", "f1", "play", {"clip": "nofish"}, key=bytes(32))
    gw.send("spk-01", "x1", "play", {"clip": "nofish"}, exp_ms=1000, age_ms=5000)
    gw.send("spk-01", "m1", "play", raw=b'{"id":"m1","name":"play"}')
    gw.send("spk-01", "c2", "play", {"clip": "missing"})
    assert [gw.final(c)["code"] for c in ("f1", "x1", "m1", "c2")] == ["bad_mac", "expired", "bad_message",
                                                                       "no_clip"]
    # a redelivered command is answered again from the node's cache, not played again
    raw = gw.send("spk-01", "d1", "play", {"clip": "nofish"})
    gw.final("d1")
    gw.send("spk-01", "d1", "play", raw=raw)
    gw.wait(lambda: len([m for m in gw.results("d1") if m["status"] == "done"]) == 2, what="re-answer of d1")
    assert len(plays(n)) == 2

    # pre-emption: a normal broadcast is busy-refused, an emergency cuts in at full volume, the first resumes
    gw.send("spk-01", "n1", "play", {"clip": "long"}, prio=1)
    gw.wait(lambda: any((m.get("data") or {}).get("phase") for m in gw.results("n1")), what="n1 playing")
    gw.send("spk-01", "n2", "play", {"clip": "nofish"}, prio=1)
    assert gw.final("n2")["code"] == "busy"
    gw.send("spk-01", "e1", "play", {"clip": "nofish"}, prio=3)
    assert gw.final("e1")["status"] == "done"
    fin = gw.final("n1")
    assert fin["status"] == "done" and fin["data"]["preempted"] == 1
    assert [(t, v, cut) for t, _, v, cut in plays(n)[2:]] == [("long", 80, True), ("nofish", 100, False),
                                                              ("long", 80, False)]
    assert n.ask("status")["errs"] == 0

    # power cut: the broker publishes the retained will with this boot's counter
    n.kill()
    death = gw.wait(lambda: [m for m in gw.of("spk-01", "state") if not m["online"]], what="last will")[0]
    assert death["bdseq"] == birth["bdseq"]
    late = PahoGateway(mosquitto.host, mosquitto.port, SITE, KEY, client_id="late")
    try:
        retained = late.wait(lambda: late.by[("spk-01", "state")], what="retained state")
        assert retained[0][1] is True and retained[0][0]["online"] is False
    finally:
        late.close()
    # booting again from the same flash: the next boot counter
    boot(mpy32, nodes, root)
    gw.wait(lambda: [m for m in gw.of("spk-01", "state") if m["online"] and m["bdseq"] == birth["bdseq"] + 1],
            what="second birth")


@pytest.mark.mosquitto
def test_speaker_fetches_a_clip_checked_by_sha256(mpy32, mosquitto, gw, nodes, tmp_path):
    n = MpyNode(mpy32.frozen, tmp_path / "spk-02", node_cfg("spk-02", "speaker", mosquitto))
    nodes.append(n)
    n.start()
    gw.wait(lambda: gw.of("spk-02", "state"), what="birth")
    clip = wav_bytes(500)  # 8 KB: 8 chunks of 1 KiB
    s = cliptransfer.ClipSender(clip, 1024, "warn", 7, "audio", "audio/wav", 0)
    m = s.manifest
    gw.send("spk-02", "g1", "fetch_clip", {"clip": "warn", "tid": 7, "size": m.size, "chunk": 1024,
                                           "sha256": m.sha256})
    gw.wait(lambda: gw.results("g1"), what="fetch accepted")
    order = list(s.chunks())
    for i, payload in order[::-1] + order[:2]:  # out of order, two duplicates
        gw.c.publish(gw.topic("spk-02", "dl/7"), payload, 1)
    done = gw.final("g1")
    assert done["status"] == "done" and done["data"] == {"clip": "warn", "size": len(clip),
                                                         "sha256": hashlib.sha256(clip).hexdigest()}
    assert (n.root / "clips/warn").read_bytes() == clip
    # a download whose bytes do not match the signed SHA-256 fails and leaves the good clip in place
    other = wav_bytes(700)
    s2 = cliptransfer.ClipSender(other, 1024, "warn", 8, "audio", "audio/wav", 0)
    gw.send("spk-02", "g2", "fetch_clip", {"clip": "warn", "tid": 8, "size": s2.manifest.size, "chunk": 1024,
                                           "sha256": m.sha256})
    gw.wait(lambda: gw.results("g2"), what="second fetch accepted")
    for i, payload in s2.chunks():
        gw.c.publish(gw.topic("spk-02", "dl/8"), payload, 1)
    bad = gw.final("g2")
    assert bad["status"] == "failed" and bad["code"] == "hash_mismatch"
    assert (n.root / "clips/warn").read_bytes() == clip and not (n.root / "clips/warn.part").exists()
    gw.send("spk-02", "p1", "play", {"clip": "warn"})
    assert gw.final("p1")["data"]["played_ms"] == 500
    assert n.ask("status")["errs"] == 0


# ---- MQTT: the sensor's outbox across a broker restart and a reboot ----------------------------------------

@pytest.mark.mosquitto
def test_sensor_events_from_an_outage_arrive_after_it(mpy32, mosquitto, gw, nodes, tmp_path):
    root = tmp_path / "sen-01"
    cfg = node_cfg("sen-01", "sensor", mosquitto, sensor={"debounce_ms": 0, "min_interval_s": 0,
                                                           "sensitivity": 100})
    n = MpyNode(mpy32.frozen, root, cfg, pir=True, opts=FAST)
    nodes.append(n)
    n.start()
    n.ask("pir")
    gw.wait(lambda: len(gw.of("sen-01", "evt")) == 1, what="first event")
    # the broker goes away; five detections during the outage are kept
    mosquitto.stop()
    n._wait(lambda: not n.ask("status")["online"], 10, "node to notice the outage")
    for _ in range(5):
        n.ask("pir")
    n._wait(lambda: n.ask("status")["outbox"] == 5, 10, "five events queued")
    n.ask("net 0")  # hold the node back until the stand-in gateway has resubscribed (it keeps no session)
    mosquitto.start()
    gw.wait(lambda: gw.subscribed, 15, "gateway resubscribed")
    n.ask("net 1")
    gw.wait(lambda: len(gw.of("sen-01", "evt")) >= 6, 15, "the outage's events")
    n._wait(lambda: n.ask("status")["outbox"] == 0, 10, "outbox emptied by PUBACKs")
    # queued while offline, then a power cut: they come out of flash after the next boot
    mosquitto.stop()
    n._wait(lambda: not n.ask("status")["online"], 10, "node to notice the second outage")
    n.ask("pir")
    n.ask("pir")
    n._wait(lambda: n.ask("status")["outbox"] == 2, 10, "two events queued")
    n.kill()
    mosquitto.start()
    gw.wait(lambda: gw.subscribed, 15, "gateway resubscribed")
    boot(mpy32, nodes, root, pir=True, opts=FAST)
    evts = gw.wait(lambda: len(gw.of("sen-01", "evt")) >= 8 and gw.of("sen-01", "evt"), 15,
                   "events after boot")
    assert len({e["id"] for e in evts}) == 8  # each detection once (a QoS 1 duplicate would repeat an id)
    for e in evts:
        messages.validate("evt", e)
        signing.verify(KEY, "evt", e)
    hb = gw.wait(lambda: [h for h in gw.of("sen-01", "hb") if h["outbox"] == 0 and h["dropped"] == 0],
                 what="heartbeat with an empty outbox")
    assert hb


# ---- CoAP: the battery sensor through the gateway's bridge -------------------------------------------------

@pytest.mark.mosquitto
def test_sensor_reports_over_coap_through_the_gateway_bridge(mpy32, mosquitto, gw, nodes, tmp_path):
    from lookout.gateway.admin.keystore import KeyStore
    from lookout.gateway.links.coap_bridge import CoAPBridge, paho_publisher

    ks = KeyStore(tmp_path / "keys.db")
    key = ks.ensure("sen-05", SITE, "sensor", meta={"transport": "coap"}).hmac_key  # provisioned for CoAP
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="gw-coap")
    up = threading.Event()
    pub.on_connect = lambda *_a: up.set()
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    assert up.wait(10)
    gw.key = key

    def drive(port: int) -> None:
        cfg = make_config("sen-05", SITE, "sensor", key.hex(), mosquitto.host, mosquitto.port, hb_s=5,
                          transport="coap", coap={"host": "127.0.0.1", "port": port, "ack_timeout_ms": 200},
                          sensor={"debounce_ms": 0, "min_interval_s": 0, "sensitivity": 100})
        n = boot(mpy32, nodes, tmp_path / "sen-05", cfg, pir=True, opts=FAST)
        birth = gw.wait(lambda: [m for m in gw.of("sen-05", "state") if m["online"]],
                        what="birth via CoAP")[0]
        messages.validate("birth", birth)
        messages.validate("hb", gw.wait(lambda: gw.of("sen-05", "hb"), what="heartbeat via CoAP")[0])
        messages.validate("loc", gw.wait(lambda: gw.of("sen-05", "loc"), what="location via CoAP")[0])
        n.ask("pir")
        ev = gw.wait(lambda: gw.of("sen-05", "evt"), what="event via CoAP")[0]
        signing.verify(key, "evt", ev)  # the node's MAC survived CoAP, the bridge and MQTT
        assert n.stop() == "stop"  # graceful: the death is POSTed to state (CoAP has no last will)
        gw.wait(lambda: [m for m in gw.of("sen-05", "state") if not m["online"]], what="death via CoAP")

    async def main() -> dict:
        async with CoAPBridge(paho_publisher(pub), port=0, keystore=ks) as br:
            await asyncio.to_thread(drive, br.port)
            return dict(br.stats)

    try:
        stats = asyncio.run(main())
        assert stats["rejected"] == 0 and stats["accepted"] >= 5
    finally:
        pub.disconnect()
        pub.loop_stop()
        ks.close()


# ---- a board-sized heap over time --------------------------------------------------------------------------

@pytest.mark.mosquitto
def test_speaker_on_a_72_kb_heap_fetches_a_clip_after_100_broadcasts(mpy32, mosquitto, gw, nodes, tmp_path):
    """The issue's min-heap run, with a margin over the 64 KB bench/firmware_footprint.py measured. (It failed
    about half its runs once the node kept parsed message schemas and its last results: docs/FIRMWARE.md,
    "Smallest heap".) Each
    broadcast leaves small long-lived objects behind (the recent-command cache, the outbox), scattered over
    the heap unless the node collects early; the clip chunks that follow need 4 KB blocks in one piece (the
    gateway sends 4 KiB chunks, a window of them at once). A MemoryError anywhere fails a result or counts an
    error."""
    cfg = node_cfg("spk-72", "speaker", mosquitto)
    n = MpyNode(mpy32.frozen, tmp_path / "spk-72", cfg, heap_kb=72, speed=16)
    n.add_clip("beep", bytes(3200))  # 200 ms of raw 8 kHz 16-bit audio
    nodes.append(n)
    n.start()
    for i in range(100):
        gw.send("spk-72", "b%d" % i, "play", {"clip": "beep"})
        assert gw.final("b%d" % i)["status"] == "done", i
    clip = bytes(range(256)) * 128  # 32 KB: 8 chunks of 4 KiB, sent in one burst
    assert fetch_clip(gw, "spk-72", "f1", "warn", clip, tid=72)["status"] == "done"
    assert (n.root / "clips/warn").read_bytes() == clip
    st = n.ask("status")
    assert st["errs"] == 0 and st["online"], st["err"]
    assert "MemoryError" not in n.output()
