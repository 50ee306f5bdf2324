"""Past one machine (issue 17): townships of one county, with real Mosquitto processes on loopback.

- Two gateways for two sites on ONE Mosquitto (broker files from ``lookout broker-config``): each gateway's login
  reads and writes only its own site, so each registry holds only its site's nodes.
- A county broker fed by Mosquitto bridges from two township brokers (``lookout broker-config --bridge``): three
  Mosquitto processes. The sites' device traffic arrives at the county; a county operator (a ``viewer`` in each
  township's key store, one token) reads both sites' devices and journals through the county broker, and a
  broadcast from it is refused by the township's gateway and plays nowhere.

How the same layout maps onto an EMQX cluster: docs/COUNTY.md.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from aiowait import until
from broker import Mosquitto, free_port
from gwserve import serving

from lookout.gateway.admin.brokerconfig import pw_hash
from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.cli.main import main as lookout
from lookout.gateway.core.config import from_dict
from lookout.gateway.links.opclient import OperatorClient
from lookout.gateway.service.app import Gateway
from lookout.simulators.node import SimNode

pytestmark = pytest.mark.mosquitto


def _run(*argv: str) -> None:
    assert lookout(list(argv)) == 0, argv


class Township:
    """One site's data directory, key store, gateway login, nodes and broker files (all through the CLI)."""

    def __init__(self, root: Path, site: str, nodes: tuple[str, ...]):
        self.site, self.dir = site, root / site
        self.dd = ["--data-dir", str(self.dir)]
        self.gw_id = f"gw-{site}"
        self.port, self.op_port = free_port(), free_port()
        _run("provision", "gateway", "--id", self.gw_id, "--site", site, "--out", str(self.dir / "gw.json"),
             *self.dd)
        self.gw_password = json.loads((self.dir / "gw.json").read_text())["password"]
        self.nodes = nodes

    def provision_nodes(self, port: int) -> None:
        for n in self.nodes:
            _run("provision", "device", "--id", n, "--site", self.site, "--role", "speaker", "--plain",
                 "--broker-port", str(port), "--out", str(self.dir / n), *self.dd)

    def broker_files(self, *extra: str) -> Path:
        out = self.dir / "broker"
        _run("broker-config", "--out", str(out), "--plain", "--port", str(self.port), "--op-port",
             str(self.op_port), "--run-as", "root", *extra, *self.dd)
        return out / "mosquitto.conf"

    def gateway(self, op_port: int) -> Gateway:
        cfg = from_dict({"gateway": {"id": self.gw_id, "site": self.site, "data_dir": str(self.dir / "gw")},
                         "broker": {"url": f"mqtt://127.0.0.1:{op_port}", "username": self.gw_id,
                                    "password": self.gw_password}})
        return Gateway(cfg, keystore=KeyStore(self.dir / "keystore.db"))

    def sim_nodes(self) -> list[SimNode]:
        return [SimNode(self.dir / n / "node", json.loads((self.dir / n / "config.json").read_text()))
                for n in self.nodes]


def _watch(port: int, user: str, password: str, topic: str) -> tuple[paho.Client, list[str]]:
    """A paho subscriber (its own thread) that records the topics it receives."""
    got: list[str] = []
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"{user}-watch")
    c.username_pw_set(user, password)
    c.on_connect = lambda cl, *_a: cl.subscribe(topic, 1)
    c.on_message = lambda _c, _u, m: got.append(m.topic)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c, got


async def _kill_all(nodes: list[SimNode]) -> None:
    """After a failure: stop every node still running, so the test ends instead of hanging."""
    for n in nodes:
        if n._task is not None and not n._task.done():
            await n.kill()


async def _online(gw: Gateway, ids) -> None:
    await until(lambda: all((d := gw.registry.get(i)) and d.state == "online" for i in ids), 15,
                f"{list(ids)} online at {gw.cfg.gateway_id}", seen=lambda: sorted(gw.registry.devices))


def test_two_gateways_for_two_sites_on_one_broker_each_see_only_their_site(tmp_path):
    async def main():
        shared = tmp_path / "shared"
        dd = ["--data-dir", str(shared)]
        port, op_port = free_port(), free_port()
        sites = {"dongshan": ("spk-d1", "spk-d2"), "xishan": ("spk-x1",)}
        pw: dict[str, str] = {}
        for site, nodes in sites.items():
            _run("provision", "gateway", "--id", f"gw-{site}", "--site", site, "--out", str(shared / f"{site}.json"),
                 *dd)
            pw[site] = json.loads((shared / f"{site}.json").read_text())["password"]
            for n in nodes:
                _run("provision", "device", "--id", n, "--site", site, "--role", "speaker", "--plain",
                     "--broker-port", str(port), "--out", str(shared / n), *dd)
        _run("broker-config", "--out", str(shared / "broker"), "--plain", "--port", str(port), "--op-port",
             str(op_port), "--run-as", "root", *dd)
        broker = Mosquitto(shared / "broker", port=port, conf_file=shared / "broker" / "mosquitto.conf").start()
        ks = KeyStore(shared / "keystore.db")
        nodes = [SimNode(shared / n / "node", json.loads((shared / n / "config.json").read_text()))
                 for ns in sites.values() for n in ns]
        spy, seen = _watch(op_port, "gw-dongshan", pw["dongshan"], "lookout/v1/xishan/#")
        try:
            gws = [Gateway(from_dict({"gateway": {"id": f"gw-{s}", "site": s, "data_dir": str(tmp_path / s)},
                                      "broker": {"url": f"mqtt://127.0.0.1:{op_port}", "username": f"gw-{s}",
                                                 "password": pw[s]}}), keystore=ks) for s in sites]
            async with serving(gws[0]) as gd, serving(gws[1]) as gx:
                for n in nodes:
                    await n.start()
                await _online(gd, sites["dongshan"])
                await _online(gx, sites["xishan"])
                await asyncio.sleep(0.5)  # heartbeats and locations of both sites flow meanwhile
                assert {d.id for d in gd.registry.devices.values()} == {"gw-dongshan", *sites["dongshan"]}
                assert {d.id for d in gx.registry.devices.values()} == {"gw-xishan", *sites["xishan"]}
                r = await gx.handle_op("op", "broadcast", {"to": "spk-d1", "clip": "x", "repeat": 1, "priority": 1,
                                                           "queue": False, "wait": "none"}, "r1")
                assert r["code"] == "unknown_device", r  # another site's node is no target of this gateway
                assert seen == []  # dongshan's gateway login cannot read xishan's topics (ACL)
                for n in nodes:
                    await n.stop()
        finally:
            await _kill_all(nodes)
            spy.loop_stop()
            spy.disconnect()
            broker.stop()
            ks.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_county_broker_bridged_from_two_townships_and_a_read_only_county_operator(tmp_path):
    async def main():
        county = tmp_path / "county"
        cd = ["--data-dir", str(county)]
        c_port, c_op_port = free_port(), free_port()
        towns = [Township(tmp_path, "dongshan", ("spk-d1", "spk-d2")), Township(tmp_path, "xishan", ("spk-x1",))]
        # the county: one operator (its token also known to each township) and one bridge login per township
        _run("provision", "operator", "--id", "county-li", "--name", "County duty officer", "--out",
             str(county / "op.json"), *cd)
        token = json.loads((county / "op.json").read_text())["token"]
        for t in towns:
            _run("provision", "bridge", "--id", f"br-{t.site}", "--site", t.site, "--out",
                 str(county / f"br-{t.site}.json"), *cd)
        with KeyStore(county / "keystore.db") as cks:  # a county screen that reads what the bridges bring up
            cks.set_mqtt_user("county-screen", "gateway", pw_hash("screen-password-0123456789"))
        _run("broker-config", "--out", str(county / "broker"), "--plain", "--port", str(c_port), "--op-port",
             str(c_op_port), "--run-as", "root", *cd)
        brokers = [Mosquitto(county / "broker", port=c_port, conf_file=county / "broker" / "mosquitto.conf")]
        for t in towns:
            t.provision_nodes(t.port)
            _run("provision", "operator", "--id", "county-li", "--name", "County duty officer", "--role", "viewer",
                 "--token-file", str(county / "op.json"), *t.dd)
            conf = t.broker_files("--bridge", f"mqtt://127.0.0.1:{c_op_port}", "--bridge-login", f"br-{t.site}",
                                  "--bridge-password-file", str(county / f"br-{t.site}.json"),
                                  "--bridge-operator", "county-li")
            text = (conf.parent / "conf.d" / "bridge.conf").read_text()
            assert (conf.parent / "conf.d" / "bridge.conf").stat().st_mode & 0o777 == 0o640  # it holds a password
            assert f"topic lookout/v1/{t.site}/county-li/opreq in 1" in text
            assert "remote_password" not in conf.read_text()
            brokers.append(Mosquitto(t.dir / "broker", port=t.port, conf_file=conf))
        for b in brokers:
            b.start()
        screen, arrived = _watch(c_op_port, "county-screen", "screen-password-0123456789", "lookout/v1/#")
        nodes = [n for t in towns for n in t.sim_nodes()]
        try:
            async with serving(towns[0].gateway(towns[0].op_port)) as gd, \
                    serving(towns[1].gateway(towns[1].op_port)) as gx:
                for n in nodes:
                    await n.start()
                await _online(gd, towns[0].nodes)
                await _online(gx, towns[1].nodes)
                # the sites' traffic reached the county through the bridges
                await until(lambda: {f"lookout/v1/{t.site}/{n}/state" for t in towns for n in t.nodes}
                            <= set(arrived), 10, "both sites' births at the county", seen=lambda: sorted(set(arrived)))
                for t, gw in zip(towns, (gd, gx), strict=True):
                    async with OperatorClient(f"mqtt://127.0.0.1:{c_op_port}", t.site, "county-li", token) as cl:
                        r = await cl.request("devices", {}, timeout=10)
                        assert r["code"] == "ok", r
                        assert {d["id"] for d in r["data"]["devices"] if d["kind"] == "speaker"} == set(t.nodes)
                        assert {d["site"] for d in r["data"]["devices"]} == {t.site}
                        r = await cl.request("journal", {"limit": 50, "desc": True}, timeout=10)
                        assert r["code"] == "ok" and r["data"]["entries"], r
                        assert any("county-li listed devices" in e["summary"] for e in r["data"]["entries"])
                        r = await cl.request("journal", {"verify": True}, timeout=10)
                        assert r["code"] == "ok" and r["data"]["ok"], r
                        r = await cl.request("broadcast", {"to": t.site, "clip": "nofish", "repeat": 1,
                                                           "priority": 1, "queue": False, "wait": "none"}, timeout=10)
                        assert r["code"] == "unauthorized" and "read-only" in r["error"], r
                    assert gw.commands.active == {}  # nothing was issued
                    gw.journal.drain()
                    assert any(e.summary == "broadcast from read-only operator county-li refused"
                               for e in gw.journal.entries(kind="security"))
                assert not any(p for n in nodes for p in n.plays)
                for n in nodes:
                    await n.stop()
        finally:
            await _kill_all(nodes)
            screen.loop_stop()
            screen.disconnect()
            for b in brokers:
                b.stop()

    asyncio.run(asyncio.wait_for(main(), 60))
