"""The real node firmware (SimNode, host hardware layer) over TLS to a real Mosquitto configured by
`lookout broker-config`, with the node's flash written by `lookout provision device --tls`:

- with the site CA the node comes online (a TLS paho subscriber sees its retained birth);
- with a CA from another site it never comes online and its MQTT error names the certificate failure;
- with a CA file that does not match the provisioned ``broker.ca_sha256`` pin it refuses to connect at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import uuid

import paho.mqtt.client as mqtt
import pytest
from aiowait import aio
from broker import Mosquitto, free_port
from paho.mqtt.enums import CallbackAPIVersion

from lookout.gateway.admin.brokerconfig import write_broker_config
from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.pki import SiteCA
from lookout.gateway.admin.provision import provision_device, provision_gateway
from lookout.simulators.node import SimNode

pytestmark = pytest.mark.mosquitto
WAIT = 5.0


class Site:
    pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    s = Site()
    s.root = root
    s.ca = SiteCA(root / "pki")
    s.ca.init("dongshan")
    s.ca.issue_server(["localhost", "127.0.0.1"])
    s.other = SiteCA(root / "pki-other")
    s.other.init("elsewhere")
    s.port, s.tls_port = free_port(), free_port()
    with KeyStore(root / "keystore.db") as ks:
        s.node_dir = root / "flash-spk-01"
        provision_device(ks, "spk-01", "dongshan", "speaker", s.node_dir, broker_host="127.0.0.1",
                         broker_port=s.tls_port, tls=True, ca=s.ca)
        s.gw = provision_gateway(ks, "gw-1", "dongshan")
        write_broker_config(root / "broker", ks, s.ca.dir, port=s.port, bind="127.0.0.1", tls_port=s.tls_port,
                            persistence=False, run_as="root" if os.geteuid() == 0 else None)
    s.broker = Mosquitto(root / "broker", port=s.port, conf_file=root / "broker" / "mosquitto.conf").start()
    yield s
    s.broker.stop()


def flash_copy(site, name, ca: SiteCA | None = None, pin: str | None = None):
    """A copy of the provisioned flash; optionally with another CA's files and/or another pin."""
    d = site.root / name
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(site.node_dir, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["hb_s"] = 30
    if ca is not None:
        shutil.copyfile(ca.ca_crt, d / "ca.crt")
        shutil.copyfile(ca.ca_der, d / "ca.der")
    if pin is not None:
        cfg["broker"]["ca_sha256"] = pin
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def tls_subscriber(site, topic):
    q: queue.Queue = queue.Queue()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t-" + uuid.uuid4().hex[:8])
    c.username_pw_set("gw-1", site.gw)
    c.tls_set(ca_certs=str(site.ca.ca_crt))
    c.on_message = lambda cl, u, m: q.put((m.topic, bytes(m.payload), bool(m.retain)))
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, 1)
    c.connect("127.0.0.1", site.tls_port)
    c.loop_start()
    return c, q


@aio
async def test_node_online_over_tls_with_site_ca(site):
    d = flash_copy(site, "good")
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["broker"]["tls"] is True and cfg["broker"]["ca"] == "ca.crt" and cfg["broker"]["ca_sha256"]
    node = SimNode(d)
    await node.start()
    try:
        await node.wait_online(8)
        c, q = tls_subscriber(site, "lookout/v1/dongshan/spk-01/state")
        try:
            _topic, payload, retained = await asyncio.to_thread(q.get, True, WAIT)
            birth = json.loads(payload)
            assert retained and birth["online"] is True and birth["kind"] == "speaker"
        finally:
            c.loop_stop()
            c.disconnect()
        assert node.node.client.port == site.tls_port
        kw = node.node.client._kw  # what the client passes to open_connection
        assert kw["ssl"] is not None and kw["server_hostname"] == "127.0.0.1"
    finally:
        await node.stop()


@aio
async def test_node_with_foreign_ca_never_online(site):
    d = flash_copy(site, "foreign", ca=site.other, pin=site.other.fingerprint())  # consistent, but not ours
    logs: list[str] = []
    node = SimNode(d, log=lambda level, text: logs.append(text))
    await node.start()
    try:
        for _ in range(40):  # ~2 s: several connection attempts (backoff 100..1000 ms)
            await asyncio.sleep(0.05)
            assert not node.node.client.is_connected()
        err = node.node.client.last_error or ""
        assert "CERTIFICATE_VERIFY_FAILED" in err or "certificate verify failed" in err, err
        assert any("certificate verify failed" in t or "CERTIFICATE_VERIFY_FAILED" in t for t in logs), logs[-5:]
        assert node.node.client.connects == 0
    finally:
        await node.stop()


@aio
async def test_ca_file_not_matching_pin_refused_before_connecting(site):
    d = flash_copy(site, "swapped", ca=site.other)  # ca.crt replaced on flash; the provisioned pin stays
    logs: list[str] = []
    node = SimNode(d, log=lambda level, text: logs.append(text))
    await node.start()
    with pytest.raises(Exception, match="ca_sha256"):
        await asyncio.wait_for(node._task, 5)
    assert node.node.client is None  # no connection was even attempted
    assert "ca_sha256" in (node.node.last_error or "")


def test_host_layer_trusts_exactly_the_pinned_ca_bytes(site):
    """The pin covers what the TLS context trusts on the host layer too: with the site's ca.crt (matching the
    pin) and another site's CA in ca.der beside it, the context holds exactly the pinned certificate."""
    import hashlib
    import ssl

    from lookout.tools import firmware_host

    firmware_host.install()
    from lookout_node import hal_host, node_tls

    d = flash_copy(site, "der-twin")
    shutil.copyfile(site.other.ca_der, d / "ca.der")  # a CA the pin never saw
    cfg = json.loads((d / "config.json").read_text())
    h = hal_host.HostHal(str(d))
    opts = node_tls.tls_opts(cfg, h.fs, h)
    ctx: ssl.SSLContext = opts["ssl"]
    trusted = ctx.get_ca_certs(binary_form=True)
    assert [hashlib.sha256(c).hexdigest() for c in trusted] == [cfg["broker"]["ca_sha256"]]
    assert cfg["broker"]["ca_sha256"] == site.ca.fingerprint()
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
