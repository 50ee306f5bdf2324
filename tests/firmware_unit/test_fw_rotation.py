"""Key rotation by signed command (``rotate_key``) on both runtimes: the real Node app over hal_host, with the
in-process LoopbackBroker standing in for Mosquitto. After a rotation the old key is dead, the new one works, the
``done`` result carries the OLD key's MAC, the counter and the key survive a reboot, a replayed rotation is
refused, and a bad or ill-timed rotation leaves the old key in force."""

import json

from fwtest import arun, tmpdir
from loopback_broker import LoopbackBroker

import binascii

from ptest import raises

from protocols import messages, signing
from protocols.errors import AuthError
from lookout_node import hal_host
from lookout_node.hal import sleep_ms
from lookout_node.node import Node

OLD = bytes(range(32))
NEW = bytes(range(100, 132))
NOW = 1700000000000


def hexs(b):
    return binascii.hexlify(b).decode()


class Rig:
    """One node directory; ``boot()`` starts a Node on it (again after a reboot), ``send`` injects commands."""

    def __init__(self):
        self.root = tmpdir("lkrot")
        self.hal = hal_host.HostHal(self.root, clock=lambda: NOW)
        cfg = {"id": "spk-01", "site": "dongshan", "role": "sensor", "key": hexs(OLD),
               "broker": {"host": "loopback", "port": 1883}, "quiet_hours": [],
               "position": {"lat": 300000000, "lon": 1200000000}}
        self.hal.fs.write("config.json", json.dumps(cfg).encode())
        self.node = None
        self.task = None
        self.broker = None

    async def boot(self):
        import asyncio

        self.broker = LoopbackBroker()
        self.hal.open_connection = self.broker.open_connection
        self.node = Node(self.hal)
        self.task = asyncio.create_task(self.node.run())
        for _ in range(300):
            if self.node.client is not None and self.node.client.is_connected():
                return
            await sleep_ms(10)
        raise AssertionError("node did not come online on the loopback broker")

    async def halt(self):
        self.node.request_exit("stop")
        for _ in range(500):  # bounded (asyncio.wait_for cannot be used at the wasm runner's top level)
            if self.task.done():
                break
            await sleep_ms(10)
        assert self.task.done(), "node did not stop within 5 s"
        await self.task

    def send(self, cid, name, args, ctr, key):
        m = messages.command(cid, "spk-01", name, args, NOW, NOW + 60000, 1, ctr)
        signing.sign(key, "cmd", m)
        raw = messages.encode("cmd", m)
        self.broker.inject("lookout/v1/dongshan/spk-01/cmd", raw)
        return raw

    def inject(self, raw):
        self.broker.inject("lookout/v1/dongshan/spk-01/cmd", raw)

    def results(self, cid):
        out = []
        for t, p in self.broker.published:
            if t.endswith("/res"):
                m = json.loads(p)
                if m["id"] == cid:
                    out.append(m)
        return out

    async def final(self, cid, n=1):
        """The ``n``-th final result for ``cid`` (a redelivery gets its own)."""
        for _ in range(300):
            fin = [m for m in self.results(cid) if m["status"] != "accepted"]
            if len(fin) >= n:
                return fin[n - 1]
            await sleep_ms(10)
        raise AssertionError("no final result for %s: %r" % (cid, self.results(cid)))

    def rotate(self, cid, ctr, new=NEW, key=OLD):
        return self.send(cid, "rotate_key", {"key": signing.wrap_key(key, new, ctr)}, ctr, key)


def signed_by(key, msg):
    try:
        signing.verify(key, "res", msg)
        return True
    except AuthError:
        return False


def test_rotate_then_old_key_dead_new_key_works_and_survives_reboot():
    async def body():
        r = Rig()
        await r.boot()
        raw_rotate = r.rotate("rk1", 10)
        done = await r.final("rk1")
        assert done["status"] == "done" and done["data"] == {"rotated": True}
        assert signed_by(OLD, done) and not signed_by(NEW, done)  # the gateway verifies it with the key it has
        for m in r.results("rk1"):
            assert signed_by(OLD, m)
        assert json.loads(r.hal.fs.read("config.json"))["key"] == hexs(NEW)  # persisted
        assert r.node.key == NEW and r.node.proc.key == NEW

        r.send("p-old", "ping", {}, 11, OLD)
        m = await r.final("p-old")
        assert (m["status"], m["code"]) == ("rejected", "bad_mac")
        assert signed_by(NEW, m)  # from now on the node signs with the new key
        r.send("p-new", "ping", {}, 12, NEW)
        m = await r.final("p-new")
        assert m["status"] == "done" and m["data"]["pong"] is True and signed_by(NEW, m)

        r.inject(raw_rotate)  # the rotation replayed (or redelivered) after the switch: never re-applied
        m = await r.final("rk1", 2)
        assert (m["status"], m["code"]) == ("rejected", "bad_mac")
        assert r.node.key == NEW

        await r.halt()
        await r.boot()  # reboot: same flash
        assert r.node.key == NEW and r.node.proc.last_ctr == 12
        r.send("p-rep", "ping", {}, 12, NEW)  # counter survived the reboot
        m = await r.final("p-rep")
        assert (m["status"], m["code"]) == ("rejected", "replay")
        r.send("p-ok", "ping", {}, 13, NEW)
        assert (await r.final("p-ok"))["status"] == "done"
        r.send("p-old2", "ping", {}, 14, OLD)
        assert (await r.final("p-old2"))["code"] == "bad_mac"
        await r.halt()
    return arun(body())


def test_rotation_replayed_with_a_new_id_is_rejected():
    async def body():
        r = Rig()
        await r.boot()
        r.rotate("rk1", 20)
        assert (await r.final("rk1"))["status"] == "done"
        r.rotate("rk2", 21, new=bytes(32), key=OLD)  # someone holding only the old key tries again
        m = await r.final("rk2")
        assert (m["status"], m["code"]) == ("rejected", "bad_mac")
        assert r.node.key == NEW
        await r.halt()
    return arun(body())


def test_bad_wrapped_key_rejected_old_key_kept():
    async def body():
        r = Rig()
        await r.boot()
        r.send("rk-bad", "rotate_key", {"key": "zz" * 32}, 5, OLD)
        m = await r.final("rk-bad")
        assert (m["status"], m["code"]) == ("rejected", "bad_key") and signed_by(OLD, m)
        r.send("rk-short", "rotate_key", {"key": "ab" * 16}, 6, OLD)
        assert (await r.final("rk-short"))["code"] == "bad_key"
        assert r.node.key == OLD and json.loads(r.hal.fs.read("config.json"))["key"] == hexs(OLD)
        r.send("p", "ping", {}, 7, OLD)
        assert (await r.final("p"))["status"] == "done"
        await r.halt()
    return arun(body())


def test_rotation_refused_while_config_on_trial():
    async def body():
        r = Rig()
        await r.boot()
        r.node.store.trial = {"cmd": "c-x", "boots": 1}  # a broker change awaiting confirmation
        r.rotate("rk1", 5)
        m = await r.final("rk1")
        assert (m["status"], m["code"]) == ("rejected", "busy")
        assert r.node.key == OLD
        r.node.store.trial = None
        await r.halt()
    return arun(body())


def test_crash_mid_write_leaves_old_key():
    async def body():
        r = Rig()
        # a power cut while the new config was being written leaves only a partial temp file
        r.hal.fs.makedirs("")
        f = r.hal.fs.open("config.json.tmp", "wb")
        f.write(b'{"id": "spk-01", "key": "6465')
        f.close()
        await r.boot()
        assert r.node.key == OLD
        r.send("p", "ping", {}, 3, OLD)
        assert (await r.final("p"))["status"] == "done"
        await r.halt()
    return arun(body())


def test_wrap_unwrap_round_trip_and_wrong_counter():
    w = signing.wrap_key(OLD, NEW, 42)
    assert signing.unwrap_key(OLD, w, 42) == NEW
    assert signing.unwrap_key(OLD, w, 43) != NEW  # the pad depends on the command's counter
    assert signing.unwrap_key(NEW, w, 42) != NEW
    with raises(AuthError) as e:
        signing.unwrap_key(OLD, w[:-2], 42)
    assert e.value.code == "bad_key"
