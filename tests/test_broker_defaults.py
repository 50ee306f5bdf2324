"""The generated broker config's defaults (issue 10, items 6 and 7): TLS only unless a plain listener is asked
for (and then on loopback unless an address is given), nodes never provisioned for clear text by default, and a
device that cannot knock another off the broker by borrowing its client id, while an operator keeps several
sessions. Real Mosquitto, started from the generated mosquitto.conf unchanged; every wait is bounded.
"""

from __future__ import annotations

import json
import os

import pytest
from broker import Mosquitto, free_port
from test_security_broker import Client

from lookout.gateway.admin.brokerconfig import write_broker_config
from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_device, provision_gateway, provision_operator
from lookout.gateway.cli.main import main as cli_main

WAIT = 5.0


def _listeners(conf: str) -> list[str]:
    return [ln for ln in conf.splitlines() if ln.startswith("listener ")]


# -- item 7: TLS only by default -----------------------------------------------------------------------------------
def test_broker_config_without_flags_is_tls_only(tmp_path, capsys):
    d = ["--data-dir", str(tmp_path / "data")]
    assert cli_main(["pki", "init", "--site", "dongshan", *d]) == 0
    assert cli_main(["pki", "issue", "server", "--host", "gw.dongshan.local", "--host", "127.0.0.1", *d]) == 0
    assert cli_main(["provision", "gateway", "--id", "gw-1", "--site", "dongshan", *d]) == 0
    assert cli_main(["broker-config", "--out", str(tmp_path / "b"), *d]) == 0
    conf = (tmp_path / "b" / "mosquitto.conf").read_text()
    ls = _listeners(conf)
    assert ls == ["listener 8883", "listener 8884"], ls  # nodes; gateway and operators
    assert conf.count("certfile ") == 2 and "1883" not in conf


def test_no_certificate_and_no_plain_request_is_refused(tmp_path, capsys):
    d = ["--data-dir", str(tmp_path / "data")]
    assert cli_main(["provision", "gateway", "--id", "gw-1", "--site", "dongshan", *d]) == 0
    capsys.readouterr()
    assert cli_main(["broker-config", "--out", str(tmp_path / "b"), *d]) == 2
    err = capsys.readouterr().err
    assert "pki issue server" in err and "--plain" in err
    assert not (tmp_path / "b" / "mosquitto.conf").exists()


def test_plain_listener_only_when_asked_and_on_loopback_unless_an_address_is_given(tmp_path, capsys):
    d = ["--data-dir", str(tmp_path / "data")]
    assert cli_main(["provision", "gateway", "--id", "gw-1", "--site", "dongshan", *d]) == 0
    assert cli_main(["broker-config", "--out", str(tmp_path / "a"), "--plain", *d]) == 0
    assert _listeners((tmp_path / "a" / "mosquitto.conf").read_text()) == ["listener 1883 127.0.0.1",
                                                                            "listener 1884 127.0.0.1"]
    assert cli_main(["broker-config", "--out", str(tmp_path / "b"), "--plain", "--bind", "192.0.2.7", *d]) == 0
    assert _listeners((tmp_path / "b" / "mosquitto.conf").read_text()) == ["listener 1883 192.0.2.7",
                                                                            "listener 1884 192.0.2.7"]


def test_provision_device_defaults_to_tls_and_plain_must_be_asked_for(tmp_path, capsys):
    d = ["--data-dir", str(tmp_path / "data")]
    dev = ["provision", "device", "--site", "dongshan", "--role", "speaker"]
    # no site CA: refused rather than written for clear text
    assert cli_main([*dev, "--id", "spk-01", "--out", str(tmp_path / "s1"), *d]) == 2
    err = capsys.readouterr().err
    assert "pki init" in err and "--plain" in err
    assert not (tmp_path / "s1" / "config.json").exists()
    # with a site CA, TLS without saying so
    assert cli_main(["pki", "init", "--site", "dongshan", *d]) == 0
    assert cli_main([*dev, "--id", "spk-02", "--out", str(tmp_path / "s2"), *d]) == 0
    b = json.loads((tmp_path / "s2" / "config.json").read_text())["broker"]
    assert b["tls"] is True and b["port"] == 8883 and b["ca_sha256"]
    # clear text only when asked, and said out loud
    capsys.readouterr()
    assert cli_main([*dev, "--id", "spk-03", "--plain", "--out", str(tmp_path / "s3"), *d]) == 0
    b = json.loads((tmp_path / "s3" / "config.json").read_text())["broker"]
    assert b["tls"] is False and b["port"] == 1883
    assert "clear text" in capsys.readouterr().err
    assert cli_main([*dev, "--id", "spk-04", "--plain", "--tls", "--out", str(tmp_path / "s4"), *d]) == 2


# -- item 6: client ids tied to logins -----------------------------------------------------------------------------
# Client (test_security_broker): a paho client in its own thread. Subscriptions are made once, not on every
# connect, so a session knocked off (paho reconnects by itself) would no longer receive what it subscribed to.
@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    root = tmp_path_factory.mktemp("cid")
    s = type("Site", (), {})()
    with KeyStore(root / "keystore.db") as ks:
        s.a = provision_device(ks, "spk-a", "dongshan", "speaker", root / "a")[1]["broker"]["password"]
        s.b = provision_device(ks, "spk-b", "dongshan", "speaker", root / "b")[1]["broker"]["password"]
        s.gw = provision_gateway(ks, "gw-1", "dongshan")
        s.op = provision_operator(ks, "op-li", "Li Wei")
        s.port, s.op_port = free_port(), free_port()
        write_broker_config(root / "broker", ks, root / "pki", port=s.port, op_port=s.op_port,
                            persistence=False, run_as="root" if os.geteuid() == 0 else None)
    s.broker = Mosquitto(root / "broker", port=s.op_port, conf_file=root / "broker" / "mosquitto.conf").start()
    yield s
    s.broker.stop()


def test_a_device_cannot_knock_another_off_with_its_client_id(broker):
    s = broker
    gw = Client(s.op_port, "gw-1", s.gw, client_id="gw-1")
    b = Client(s.port, "spk-b", s.b, client_id="spk-b")
    assert gw.connect() and b.connect()
    assert b.subscribe("lookout/v1/dongshan/spk-b/cmd") == [1]
    thief = Client(s.port, "spk-a", s.a, client_id="spk-b")  # its own valid password, the other's client id
    try:
        assert thief.connect()  # admitted, but as itself: the broker replaced the id with the login
        gw.publish("lookout/v1/dongshan/spk-b/cmd", b"still there")
        assert b.msgs.get(timeout=WAIT) == ("lookout/v1/dongshan/spk-b/cmd", b"still there")
        assert b.disconnects == []
    finally:
        thief.close()
        b.close()
        gw.close()


def test_operators_keep_several_sessions_and_devices_stay_off_their_listener(broker):
    s = broker
    gw = Client(s.op_port, "gw-1", s.gw, client_id="gw-1")
    one = Client(s.op_port, "op-li", s.op, client_id="op-li-1")
    two = Client(s.op_port, "op-li", s.op, client_id="op-li-2")
    try:
        assert gw.connect() and one.connect() and two.connect()
        assert one.subscribe("lookout/v1/dongshan/op-li/opres") == [1]
        assert two.subscribe("lookout/v1/dongshan/op-li/opres") == [1]
        gw.publish("lookout/v1/dongshan/op-li/opres", b"answer")
        for cl in (one, two):
            assert cl.msgs.get(timeout=WAIT) == ("lookout/v1/dongshan/op-li/opres", b"answer")
        assert one.disconnects == [] and two.disconnects == []
        # a device login is not admitted where client ids are free
        dev = Client(s.op_port, "spk-a", s.a, client_id="spk-b")
        assert not dev.connect()
        dev.close()
    finally:
        for cl in (one, two, gw):
            cl.close()


def test_the_gateway_receives_every_retained_birth_of_a_large_site(broker):
    """A gateway that (re)subscribes is sent every device's retained ``state`` at once: one message per device,
    all queued for that one client. Mosquitto drops what exceeds ``max_queued_messages`` (it was 1000): the
    gateway of a larger site missed most births after every restart (issue 17, found at scale)."""
    s = broker
    n = 1500
    pub = Client(s.op_port, "gw-1", s.gw, client_id="gw-1-pub")
    gw = Client(s.op_port, "gw-1", s.gw, client_id="gw-1")
    try:
        assert pub.connect()
        infos = [pub.c.publish(f"lookout/v1/dongshan/gps-{i:05d}/state", b'{"online":true}', qos=1, retain=True)
                 for i in range(n)]
        for info in infos:
            info.wait_for_publish(WAIT)
        assert gw.connect() and gw.subscribe("lookout/v1/dongshan/+/state") == [1]
        got = set()
        while len(got) < n:
            topic, _payload = gw.msgs.get(timeout=WAIT)
            got.add(topic)
        assert len(got) == n
    finally:
        for i in range(n):  # leave the module's broker as it was
            pub.c.publish(f"lookout/v1/dongshan/gps-{i:05d}/state", b"", qos=1, retain=True)
        pub.close()
        gw.close()
