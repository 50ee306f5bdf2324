"""docs/PROTOCOL.md's normative statements, checked mechanically (issue 11, "close the contract's gaps").

Each statement the page marks with ``<!-- must:NAME -->`` has a checker here, and each checker a marker there: the
first test keeps the two lists equal, so a new MUST in the contract needs a check, and a check cannot outlive its
statement. The checkers use the reference codecs, the generated broker config, the real node firmware on a
recording in-process broker (the wire order), and a real gateway on Mosquitto (what it does with each uplink).
(test_protocol_doc.py decodes every example.)
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from aiowait import aio, until
from gwserve import serving
from loopback_broker import LoopbackBroker
from paho.mqtt.enums import CallbackAPIVersion
from test_gateway_commands import make_cfg
from test_protocol_doc import examples

from lookout.gateway.admin.brokerconfig import write_broker_config
from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_device, provision_gateway, provision_operator
from lookout.gateway.cli import common as cli_common
from lookout.gateway.core.config import RegistryConfig
from lookout.gateway.core.registry import STATES, Device, on_alive, on_birth, on_death
from lookout.gateway.links.opclient import OperatorClient
from lookout.gateway.service.app import Gateway
from lookout.gateway.service.operator_api import device_view
from lookout.protocols import messages, mqttserver, signing, topics
from lookout.protocols.errors import AuthError, MessageError, TopicError
from lookout.simulators.node import SimNode, make_config

DOC = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text()
KEY = bytes(range(32))  # the key every example in the page is signed with


def marked() -> set[str]:
    return set(re.findall(r"<!-- must:([a-z0-9-]+) -->", DOC))


def rejects(kind: str, obj: Any) -> bool:
    try:
        messages.decode(kind, obj if isinstance(obj, bytes) else json.dumps(obj).encode())
    except MessageError:
        return True
    return False


def table(after: str) -> list[list[str]]:
    """The rows of the first Markdown table after the text ``after`` (cells stripped, header and rule left out)."""
    rest = DOC[DOC.index(after):]
    rows = []
    for line in rest[rest.index("\n|"):].splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return [r for r in rows if not set(r[0]) <= {"-"}][1:]


# ---- the checkers -----------------------------------------------------------------------------------------------

def check_ids() -> None:
    assert topics.is_valid_id("spk-01") and topics.is_valid_id("a" * 32) and topics.is_valid_id("9_x")
    for bad in ("Spk-01", "-spk", "a" * 33, "spk.01", "", "spk 01"):
        assert not topics.is_valid_id(bad), bad
    evt = {"id": "cam-02.7_x-A", "seq": 1, "ts": 1764000000000, "kind": "presence", "sev": "info"}
    assert not rejects("evt", evt) and not rejects("evt", {**evt, "id": "e" * 48})
    assert rejects("evt", {**evt, "id": "e" * 49}) and rejects("evt", {**evt, "id": "a/b"})


def check_names() -> None:
    cmd = json.loads(next(b for _, k, b in examples() if k == "cmd"))
    assert not rejects("cmd", {**cmd, "name": "set_volume_2"}) and not rejects("cmd", {**cmd, "name": "n" * 24})
    for bad in ("Play", "play-it", "n" * 25, "play.x"):
        assert rejects("cmd", {**cmd, "name": bad}), bad
    assert rejects("cmd", {**cmd, "args": {"Clip": "x"}})
    birth = json.loads(next(b for _, k, b in examples() if k == "birth"))
    assert not rejects("birth", {**birth, "caps": ["c" * 80]}) and rejects("birth", {**birth, "caps": ["c" * 81]})


def check_example_key() -> None:
    signed = [(k, json.loads(b)) for _, k, b in examples() if k in ("evt", "cmd", "res") and '"mac"' in b]
    assert len(signed) >= 5
    for kind, msg in signed:
        signing.verify(KEY, kind, msg)  # raises on a MAC made with another key


def check_payload_limit() -> None:
    hb = {"seq": 1, "up_s": 1, "hb_s": 30}
    base = len(json.dumps({**hb, "x_pad": ""}, separators=(",", ":")))
    fits = {**hb, "x_pad": "p" * (4096 - base)}
    assert len(json.dumps(fits, separators=(",", ":"))) == 4096 and not rejects("hb", json.dumps(
        fits, separators=(",", ":")).encode())
    assert rejects("hb", json.dumps({**fits, "x_pad": fits["x_pad"] + "p"}, separators=(",", ":")).encode())


def check_strict_fields() -> None:
    hb = {"seq": 1, "up_s": 1, "hb_s": 30}
    assert not rejects("hb", hb) and not rejects("hb", {**hb, "x_vendor": 1})
    for bad in ({**hb, "vendor": 1}, {**hb, "seq": 1.0}, {**hb, "seq": True}, {"up_s": 1, "hb_s": 30},
                {**hb, "hb_s": 0}):
        assert rejects("hb", bad), bad


def check_seq_per_channel() -> None:
    d = Device("spk-01", "dongshan", "speaker")
    for ch, seqs in (("hb", (1, 2, 3)), ("loc", (1, 2)), ("evt", (1,))):
        for n in seqs:
            on_alive(d, 1000, n, channel=ch)
    assert d.gaps == 0  # each channel counts on its own
    on_alive(d, 1000, 6, channel="hb")
    assert d.gaps == 2  # hb 4 and 5 missing
    on_alive(d, 1000, 1, channel="hb")  # 1 starts the channel over
    on_alive(d, 1000, 2, channel="hb")
    assert d.gaps == 2


def check_topic_length() -> None:
    t = topics.topic("dongshan", "spk-01", "up", "1")
    long = t + "1" * (161 - len(t))
    assert len(long) == 161
    with pytest.raises(TopicError, match="161 chars, limit 160"):
        topics.parse(long)
    with pytest.raises(TopicError) as e:  # 160: refused for its sub level, not for its length
        topics.parse(long[:-1])
    assert "limit" not in str(e.value)


def check_stale_death() -> None:
    d = Device("spk-01", "dongshan", "speaker")
    on_birth(d, messages.birth("speaker", 5, "1", 30), RegistryConfig(), 1000)
    assert d.state == "online"
    on_death(d, messages.death(4, "connection lost"), 2000)
    assert d.state == "online"  # an older session's will
    on_death(d, messages.death(5), 3000)
    assert d.state == "offline"


def check_mac_purpose() -> None:
    evt = json.loads(next(b for _, k, b in examples() if k == "evt"))
    signing.verify(KEY, "evt", evt)
    for purpose in ("cmd", "res", "up"):
        with pytest.raises(AuthError):
            signing.verify(KEY, purpose, evt)


class Recording(LoopbackBroker):
    """The in-process broker, remembering every client packet in order."""

    def __init__(self) -> None:
        super().__init__()
        self.packets: list[Any] = []

    def _packet(self, c, p):  # noqa: ANN001 - the base class's signature
        self.packets.append(p)
        super()._packet(c, p)


def check_session_sequence(tmp_path: Path) -> None:
    async def run() -> list[Any]:
        broker = Recording()
        node = SimNode(tmp_path / "spk-01", make_config("spk-01", "dongshan", "speaker", KEY.hex(), hb_s=5,
                                                        loc_s=1))
        node.hal.open_connection = broker.open_connection
        await node.start()
        await node.wait_online()
        await until(lambda: {t.rsplit("/", 1)[1] for t, _ in broker.published} >= {"hb", "loc"}, 10, "hb, loc")
        await node.stop()
        return broker.packets

    packets = asyncio.run(asyncio.wait_for(run(), 30))
    kinds = [p.type for p in packets]
    c = packets[0]
    assert c.type == mqttserver.CONNECT and c.client_id == c.username == "spk-01" and c.clean_session is False
    death = json.loads(c.will_payload)
    assert c.will_topic == "lookout/v1/dongshan/spk-01/state" and c.will_qos == 1 and c.will_retain
    assert death["online"] is False
    sub, first_pub = kinds.index(mqttserver.SUBSCRIBE), kinds.index(mqttserver.PUBLISH)
    assert sub < first_pub and {f for f, _q in packets[sub].topics} >= {"lookout/v1/dongshan/spk-01/cmd",
                                                                        "lookout/v1/dongshan/spk-01/dl/+"}
    birth = packets[first_pub]
    assert birth.topic == c.will_topic and birth.retain and birth.qos == 1
    assert json.loads(birth.payload)["bdseq"] == death["bdseq"] and json.loads(birth.payload)["online"]
    assert kinds[-1] == mqttserver.DISCONNECT
    bye = [p for p in packets if p.type == mqttserver.PUBLISH][-1]
    assert bye.topic == c.will_topic and bye.retain and bye.qos == 1
    assert json.loads(bye.payload) == death
    pubs = [p for p in packets if p.type == mqttserver.PUBLISH]
    for ch in ("hb", "loc"):  # seq-per-channel, on the wire: each channel starts at 1
        first = next(json.loads(p.payload) for p in pubs if p.topic.endswith("/" + ch))
        assert first["seq"] == 1, (ch, first)


def check_client_ids(tmp_path: Path) -> None:
    with KeyStore(tmp_path / "ks.db") as ks:
        provision_device(ks, "spk-01", "dongshan", "speaker", tmp_path / "spk")
        provision_gateway(ks, "gw-1", "dongshan")
        provision_operator(ks, "op-1", "Duty")
        write_broker_config(tmp_path / "broker", ks, None, port=1883, op_port=1884, run_as="root")
    conf = (tmp_path / "broker" / "mosquitto.conf").read_text()
    blocks = [b for b in conf.split("\nlistener ")[1:]]
    node = [b for b in blocks if b.startswith("1883")][0]
    ops = [b for b in blocks if b.startswith("1884")][0]
    assert "use_username_as_clientid true" in node and "use_username_as_clientid" not in ops
    assert "per_listener_settings true" in conf
    ops_logins = (tmp_path / "broker" / "passwd-ops").read_text()
    assert "spk-01:" not in ops_logins and "op-1:" in ops_logins and "gw-1:" in ops_logins


def check_operator_client_ids() -> None:
    a = OperatorClient("mqtt://127.0.0.1:1", "dongshan", "op-1", "t")
    b = OperatorClient("mqtt://127.0.0.1:1", "dongshan", "op-1", "t")
    assert re.fullmatch(r"op-1-[0-9a-f]{8}", a.link.client_id) and a.link.client_id != b.link.client_id


def documented_device_fields() -> set[str]:
    names: set[str] = set()
    for row in table("Fields of `devices[]`"):
        names |= set(re.findall(r"`([a-z_]+)`", row[0]))
    return names


def check_devices_fields() -> None:
    d = Device("spk-01", "dongshan", "speaker")
    d.last_loc = {"lat": 1, "lon": 2, "alt_mm": 0, "ts": 1, "src": "gps", "seq": 3}
    d.info = {"bat_mv": 3900}
    v = device_view(d)
    assert set(v) == documented_device_fields()
    assert set(v["loc"]) == {"lat", "lon", "alt_mm", "ts", "src"}


def check_cli_json() -> None:
    local = {r[0].strip("`"): int(r[2]) for r in table("prints an error document")}
    assert local == cli_common.LOCAL_CODES
    gateway_codes = {r[0].strip("`"): int(r[2]) for r in table("`ok` is true for `ok` and `queued`")}
    assert gateway_codes == {k: v for k, v in cli_common.CODE_EXIT.items() if k in gateway_codes}
    assert set(gateway_codes) == set(cli_common.CODE_EXIT)


CHECKS = {
    "ids": check_ids, "names": check_names, "example-key": check_example_key, "payload-limit": check_payload_limit,
    "strict-fields": check_strict_fields, "seq-per-channel": check_seq_per_channel,
    "topic-length": check_topic_length, "stale-death": check_stale_death, "mac-purpose": check_mac_purpose,
    "session-sequence": check_session_sequence, "client-ids": check_client_ids,
    "operator-client-ids": check_operator_client_ids, "devices-fields": check_devices_fields,
    "cli-json": check_cli_json,
}
WITH_GATEWAY = {"registry-topic", "uplink-handling"}  # checked together by the gateway test below


def test_every_must_in_the_contract_has_a_check_and_back():
    assert marked() == set(CHECKS) | WITH_GATEWAY


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_must(name, tmp_path):
    fn = CHECKS[name]
    fn(tmp_path) if fn.__code__.co_argcount else fn()


@aio
async def test_gateway_handles_each_uplink_as_documented(mosquitto, tmp_path):
    """must:registry-topic and must:uplink-handling, on a real gateway and Mosquitto."""
    ks = KeyStore(tmp_path / "ks.db")
    ks.create("cam-02", "dongshan", "camera", key=KEY)
    got: dict[str, Any] = {}
    seen = threading.Event()
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="t-contract")

    def on_message(cl, u, m):  # noqa: ANN001 - paho's callback
        if m.topic.endswith("/registry") and m.payload:
            got["registry"] = json.loads(m.payload)
        elif "/registry/" in m.topic and m.payload:
            got.setdefault("states", {})[m.topic.rsplit("/", 1)[1]] = json.loads(m.payload)
        if "registry" in got and "cam-02" in got.get("states", {}):
            seen.set()

    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("lookout/v1/dongshan/gw-1/registry/#", 1)
    c.connect(mosquitto.host, mosquitto.port)
    c.loop_start()
    try:
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            # the documented event, re-signed with a fresh ts: one older than the de-duplication window is
            # journaled as stale, not as an alert (§18)
            fresh = dict(json.loads(next(b for _, k, b in examples() if k == "evt")), ts=int(time.time() * 1000))
            fresh.pop("mac")
            evt = json.dumps(signing.sign(KEY, "evt", dict(fresh))).encode()
            unsigned = dict(fresh, id="cam-02-7-312")
            t = "lookout/v1/dongshan/cam-02/"
            before = gw.journal.head()[0]
            invalid0 = gw.metrics.rejected.labels("invalid")._value.get()
            for topic, payload in ((t + "evt", evt), (t + "evt", json.dumps(unsigned).encode()),
                                   (t + "hb", b'{"seq":1}')):
                c.publish(topic, payload, qos=1).wait_for_publish(5)
            await until(lambda: gw.metrics.rejected.labels("invalid")._value.get() > invalid0, 10, "invalid hb")
            await until(lambda: any(e.kind == "security" for e in gw.journal.entries() if e.seq > before), 10,
                        "security entry")
            new = [e for e in gw.journal.entries() if e.seq > before]
            alerts = [e for e in new if e.kind == "alert"]
            assert len(alerts) == 1 and alerts[0].device == "cam-02" and "mac" not in json.loads(alerts[0].detail)
            sec = [e for e in new if e.kind == "security"]
            assert len(sec) == 1 and json.loads(sec[0].detail)["code"] == "unsigned"
            assert not [e for e in new if e.kind not in ("alert", "security", "state")], new  # invalid: none
            await until(seen.is_set, 10, "registry snapshot")
            snap = got["registry"]
            assert set(snap) == {"ts", "gateway", "site", "devices", "states"} and snap["gateway"] == "gw-1"
            assert snap["devices"] == len(gw.registry.devices) and set(snap["states"]) == set(STATES)
            states = got["states"]
            assert all(set(d) <= documented_device_fields() and d["id"] == i for i, d in states.items())
            assert states["cam-02"]["state"] == "online"
    finally:
        c.loop_stop()
        c.disconnect()
        ks.close()
