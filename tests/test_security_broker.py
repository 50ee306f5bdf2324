"""Real Mosquitto configured only from `lookout broker-config`: logins, per-device ACLs, TLS with the site CA.

One broker for the module (started from the generated mosquitto.conf, unchanged); every wait is bounded.
"""

from __future__ import annotations

import os
import queue
import ssl
import threading
import uuid

import paho.mqtt.client as mqtt
import pytest
from broker import Mosquitto, free_port
from paho.mqtt.enums import CallbackAPIVersion

from lookout.gateway.admin.brokerconfig import write_broker_config
from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.pki import SiteCA
from lookout.gateway.admin.provision import provision_device, provision_gateway, provision_operator

pytestmark = pytest.mark.mosquitto
WAIT = 5.0


class Setup:
    pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("sec")
    s = Setup()
    s.ca = SiteCA(root / "pki")
    s.ca.init("dongshan")
    s.ca.issue_server(["localhost", "127.0.0.1"])
    s.other_ca = SiteCA(root / "pki-other")
    s.other_ca.init("elsewhere")
    with KeyStore(root / "keystore.db") as ks:
        s.a = provision_device(ks, "spk-a", "dongshan", "speaker", root / "a")[1]["broker"]["password"]
        s.b = provision_device(ks, "spk-b", "dongshan", "sensor", root / "b")[1]["broker"]["password"]
        s.gw = provision_gateway(ks, "gw-1", "dongshan")
        s.op = provision_operator(ks, "op-li", "Li Wei")
        s.port, s.tls_port = free_port(), free_port()
        summary = write_broker_config(root / "broker", ks, s.ca.dir, port=s.port, bind="127.0.0.1",
                                      tls_port=s.tls_port, persistence=False,
                                      run_as="root" if os.geteuid() == 0 else None)
    assert summary["tls"]
    s.broker = Mosquitto(root / "broker", port=s.port, conf_file=root / "broker" / "mosquitto.conf").start()
    yield s
    s.broker.stop()


class Client:
    """A paho client run in its own thread; messages land in a queue."""

    def __init__(self, port, user=None, password=None, ca=None, version=mqtt.MQTTv311, client_id=None):
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "t-" + uuid.uuid4().hex[:8],
                             protocol=version)
        if user is not None:
            self.c.username_pw_set(user, password)
        if ca is not None:
            self.c.tls_set(ca_certs=str(ca))
        self.msgs: queue.Queue = queue.Queue()
        self.connected = threading.Event()
        self.rc = None
        self.subacks: queue.Queue = queue.Queue()
        self.c.on_connect = self._on_connect
        self.disconnects: list = []  # reason codes of every disconnect (paho's loop reconnects by itself)
        self.c.on_disconnect = lambda c, u, f, rc, p: self.disconnects.append(rc)
        self.c.on_message = lambda c, u, m: self.msgs.put((m.topic, m.payload))
        self.c.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put([int(x.value) for x in codes])
        self.port = port

    def _on_connect(self, c, u, flags, rc, props):
        self.rc = rc
        self.connected.set()

    def connect(self):
        self.c.connect("127.0.0.1", self.port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(WAIT), "no CONNACK"
        return not self.rc.is_failure

    def subscribe(self, topic):
        self.c.subscribe(topic, qos=1)
        return self.subacks.get(timeout=WAIT)

    def publish(self, topic, payload):
        self.c.publish(topic, payload, qos=1).wait_for_publish(WAIT)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def _connected(port, user, pw, **kw):
    cl = Client(port, user, pw, **kw)
    assert cl.connect(), f"{user} refused: {cl.rc}"
    return cl


def _drain(cl, until_topic):
    """Messages received up to and including ``until_topic`` (a marker published last)."""
    got = []
    while True:
        topic, payload = cl.msgs.get(timeout=WAIT)
        got.append((topic, payload))
        if topic == until_topic:
            return got


def test_generated_conf_has_the_production_settings(site):
    conf = (site.broker.conf_file).read_text().splitlines()
    for line in ("allow_anonymous false", "set_tcp_nodelay true", "per_listener_settings true",
                 "use_username_as_clientid true"):
        assert line in conf


def test_anonymous_refused(site):
    cl = Client(site.port)
    assert not cl.connect()
    assert cl.rc == "Not authorized" or cl.rc.value in (5, 0x87)
    cl.close()


def test_wrong_password_refused(site):
    for user, pw in (("spk-a", site.b), ("spk-a", site.a + "x"), ("nobody", site.a)):
        cl = Client(site.port, user, pw)
        assert not cl.connect()
        cl.close()


def test_device_cannot_publish_on_other_devices_topics(site):
    gw = _connected(site.port, "gw-1", site.gw)
    gw.subscribe("lookout/v1/#")
    a = _connected(site.port, "spk-a", site.a)
    forged = ["lookout/v1/dongshan/spk-b/evt", "lookout/v1/dongshan/spk-b/state", "lookout/v1/dongshan/spk-b/res",
              "lookout/v1/dongshan/spk-a/cmd", "lookout/v1/dongshan/spk-b/cmd", "lookout/v1/other/spk-a/evt",
              "lookout/v1/dongshan/op-li/opreq", "lookout/v1/dongshan/spk-a/registry"]
    for t in forged:
        a.publish(t, b"forged")
    a.publish("lookout/v1/dongshan/spk-a/evt", b"marker")
    got = _drain(gw, "lookout/v1/dongshan/spk-a/evt")
    assert got == [("lookout/v1/dongshan/spk-a/evt", b"marker")]
    a.close()
    gw.close()


def test_device_cannot_subscribe_to_other_devices_commands(site):
    gw = _connected(site.port, "gw-1", site.gw)
    a = _connected(site.port, "spk-a", site.a)
    assert a.subscribe("lookout/v1/dongshan/spk-a/cmd") == [1]
    codes = a.subscribe("lookout/v1/dongshan/spk-b/cmd")
    a.subscribe("lookout/v1/#")
    a.subscribe("lookout/v1/+/+/cmd")
    gw.publish("lookout/v1/dongshan/spk-b/cmd", b"for b")
    gw.publish("lookout/v1/dongshan/spk-b/dl/x1", b"for b")
    gw.publish("lookout/v1/dongshan/spk-a/cmd", b"for a")
    got = _drain(a, "lookout/v1/dongshan/spk-a/cmd")
    assert all(t.split("/")[3] == "spk-a" for t, _ in got), got
    assert codes in ([0x80], [1])  # Mosquitto 2 refuses (0x80); either way nothing of B's was delivered
    a.close()
    gw.close()


def test_operator_confined_to_own_requests(site):
    gw = _connected(site.port, "gw-1", site.gw)
    gw.subscribe("lookout/v1/#")
    op = _connected(site.port, "op-li", site.op)
    op.subscribe("lookout/v1/+/op-li/opres")
    op.subscribe("lookout/v1/#")
    op.publish("lookout/v1/dongshan/op-zhang/opreq", b"forged")
    op.publish("lookout/v1/dongshan/spk-a/cmd", b"forged")
    op.publish("lookout/v1/dongshan/op-li/opreq", b"mine")
    assert _drain(gw, "lookout/v1/dongshan/op-li/opreq") == [("lookout/v1/dongshan/op-li/opreq", b"mine")]
    gw.publish("lookout/v1/dongshan/spk-a/evt", b"not for operators")
    gw.publish("lookout/v1/dongshan/op-li/opres", b"answer")
    assert _drain(op, "lookout/v1/dongshan/op-li/opres") == [("lookout/v1/dongshan/op-li/opres", b"answer")]
    op.close()
    gw.close()


def test_tls_with_site_ca_works(site):
    a = _connected(site.tls_port, "spk-a", site.a, ca=site.ca.ca_crt)
    assert a.subscribe("lookout/v1/dongshan/spk-a/cmd") == [1]
    a.close()


def test_tls_with_other_ca_fails(site):
    cl = Client(site.tls_port, "spk-a", site.a, ca=site.other_ca.ca_crt)
    with pytest.raises(ssl.SSLError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        cl.c.connect("127.0.0.1", site.tls_port, keepalive=30)
    cl.c.loop_stop()


def test_tls_still_needs_password(site):
    cl = Client(site.tls_port, "spk-a", "wrong", ca=site.ca.ca_crt)
    assert not cl.connect()
    cl.close()
