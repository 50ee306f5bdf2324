"""The command state (replay counter and recent ids) fails closed, on both runtimes: an unreadable or damaged
``cmdstate.json`` no longer resets the counter to 0. The node refuses every command (``state_lost``), says so in
its heartbeat with a fresh challenge, and takes its counter back only from a signed ``resync`` echoing that
challenge. The file is sealed with a check, and FileStore's write leaves a valid copy at every step even where
rename will not replace a file (FAT)."""

import json

from fwtest import MemFS, arun, tmpdir

import binascii

from protocols import messages, signing
from lookout_node import hal, hal_host
from lookout_node.commands import CommandProcessor
from lookout_node.node import Node

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
NOW = 1700000000000


def make(fs, clock=NOW):
    sent = []
    ran = []
    p = CommandProcessor("spk-01", KEY, fs, lambda: clock, sent.append)

    async def play(args, cmd):
        ran.append(cmd["id"])
        return {"played_ms": 1000}

    p.register("play", play)
    return p, sent, ran


def cmd(cid, ctr, name="play", args=None, key=KEY, ts=NOW):
    m = messages.command(cid, "spk-01", name, {"clip": "nofish"} if args is None else args, ts, ts + 60000, 1,
                         ctr)
    signing.sign(key, "cmd", m)
    return messages.encode("cmd", m)


def last(sent):
    m = sent[-1]
    signing.verify(KEY, "res", m)
    return m["id"], m["status"], m.get("code")


def good_state(ctr):
    """A state file as the node writes it, after accepting counter ``ctr`` (written before the handler runs)."""
    fs = MemFS()
    p, sent, ran = make(fs)
    p.receive(cmd("c0", ctr)).close()
    return fs.read("cmdstate.json")


def damaged_states():
    ok = good_state(9000)
    flipped = ok.replace(b"9000", b"1000")  # still JSON, a flipped digit: an older counter
    return [b"\xff\x00garbage", ok[:len(ok) // 2], b'{"ctr": 9000, "rec', b"", flipped, b'{"ctr":9000,"recent":[]}']


def test_unreadable_state_refuses_every_command_with_state_lost():
    """The bug: any unreadable file set the counter to 0, so every captured command ran again."""
    for raw in damaged_states():
        fs = MemFS()
        fs.write("cmdstate.json", raw)
        p, sent, ran = make(fs)
        assert p.receive(cmd("c1", 1)) == "rejected", raw
        assert last(sent) == ("c1", "rejected", "state_lost") and ran == []
        assert p.lost is not None and len(p.lost) == 16, raw
        assert p.receive(cmd("c2", 10 ** 12)) == "rejected" and ran == []
        assert p.receive(cmd("c3", 5, key=OTHER)) == "rejected"  # authentication still comes first
        assert last(sent) == ("c3", "rejected", "bad_mac")
        assert fs.read("cmdstate.json") == raw  # a refusal never turns a lost state into a fresh one


def test_fresh_node_without_a_state_file_starts_at_zero():
    async def body():
        p, sent, ran = make(MemFS())
        assert p.lost is None
        assert await p.receive(cmd("c1", 1)) == "done" and ran == ["c1"]
    return arun(body())


def test_written_state_is_sealed_and_survives_a_reboot():
    async def body():
        fs = MemFS()
        p, sent, ran = make(fs)
        await p.receive(cmd("c1", 77))
        raw = fs.read("cmdstate.json")
        assert hal.unseal(raw) is not None and json.loads(hal.unseal(raw))["ctr"] == 77
        p2, sent2, ran2 = make(fs)
        assert p2.lost is None and p2.last_ctr == 77
        assert p2.receive(cmd("c2", 76)) == "rejected" and last(sent2)[2] == "replay"
    return arun(body())


def test_resync_with_this_boots_challenge_restores_the_counter():
    async def body():
        fs = MemFS()
        fs.write("cmdstate.json", b"torn")
        p, sent, ran = make(fs)
        nonce = p.lost
        assert p.receive(cmd("r1", 5000, "resync", {"nonce": nonce}, key=OTHER)) == "rejected"
        assert last(sent)[2] == "bad_mac" and p.lost == nonce
        assert p.receive(cmd("r2", 5000, "resync", {"nonce": "00" * 8})) == "rejected"  # an old challenge
        assert last(sent) == ("r2", "rejected", "bad_nonce") and p.lost == nonce
        assert p.receive(cmd("r3", 5000, "resync", {"nonce": nonce}, ts=NOW - 120000)) == "rejected"
        assert last(sent)[2] == "expired"
        assert p.receive(cmd("r4", 5000, "resync", {"nonce": nonce})) == "done"
        assert last(sent) == ("r4", "done", None) and sent[-1]["data"] == {"ctr": 5000}
        assert p.lost is None and p.last_ctr == 5000
        assert p.receive(cmd("c1", 4999)) == "rejected" and last(sent)[2] == "replay"  # older ones stay dead
        assert await p.receive(cmd("c2", 5001)) == "done" and ran == ["c2"]
        assert p.receive(cmd("r4", 5000, "resync", {"nonce": nonce})) == "done"  # a redelivery: from the cache
        p2, sent2, ran2 = make(fs)  # and the counter is on flash again
        assert p2.lost is None and p2.last_ctr == 5001
    return arun(body())


def test_lost_state_stays_lost_across_reboots_with_a_new_challenge():
    fs = MemFS()
    fs.write("cmdstate.json", b"torn")
    p1, _, _ = make(fs)
    p1.finish("c9", "done")  # a result sent while lost (a config trial's end) does not write a fresh state
    p2, sent, ran = make(fs)
    assert p2.lost is not None and p2.lost != p1.lost
    assert p2.receive(cmd("r1", 5000, "resync", {"nonce": p1.lost})) == "rejected"
    assert last(sent)[2] == "bad_nonce"


def test_resync_on_a_healthy_node_is_an_ordinary_command():
    async def body():
        p, sent, ran = make(MemFS())
        await p.receive(cmd("c1", 10))
        assert p.receive(cmd("r1", 9, "resync", {"nonce": "00" * 8})) == "rejected"
        assert last(sent)[2] == "replay"
        assert await p.receive(cmd("r2", 11, "resync", {"nonce": "00" * 8})) == "done"
        assert sent[-1]["data"] == {"ctr": 11} and p.last_ctr == 11
    return arun(body())


def test_heartbeat_reports_state_lost_with_the_challenge():
    h = hal_host.HostHal(tmpdir("lkcs"), clock=lambda: NOW)
    cfg = {"id": "spk-01", "site": "dongshan", "role": "speaker", "key": binascii.hexlify(KEY).decode(),
           "broker": {"host": "loopback", "port": 1883}, "quiet_hours": []}
    h.fs.write("config.json", json.dumps(cfg).encode())
    h.fs.write("cmdstate.json", b"\x00" * 40)
    node = Node(h)
    hb = node.heartbeat()
    messages.validate("hb", hb)
    assert hb["state"] == "state_lost" and hb["nonce"] == node.proc.lost
    assert "resync" in node.proc.handlers
    assert node.proc.receive(cmd("r1", 7000, "resync", {"nonce": hb["nonce"]})) == "done"
    hb = node.heartbeat()
    assert hb["state"] == "ok" and "nonce" not in hb


# ---- FileStore: a valid copy at every step ------------------------------------------------------------------

class PowerCut(Exception):
    pass


class FatOs:
    """``os`` as FileStore sees it on a FAT volume (rename will not replace a file), losing power at the
    ``cut``-th rename/remove."""

    def __init__(self, real, cut):
        self.real = real
        self.cut = cut
        self.n = 0

    def _step(self):
        self.n += 1
        if self.n == self.cut:
            raise PowerCut()

    def rename(self, a, b):
        self._step()
        try:
            self.real.stat(b)
            exists = True
        except OSError:
            exists = False
        if exists:
            raise OSError(17, "FAT: destination exists")
        self.real.rename(a, b)

    def remove(self, p):
        self._step()
        self.real.remove(p)

    def stat(self, p):
        return self.real.stat(p)

    def mkdir(self, p):
        return self.real.mkdir(p)


def _write_cut(d, name, data, cut):
    real = hal.os
    hal.os = FatOs(real, cut)
    try:
        hal.FileStore(d).write(name, data)
        return False
    except PowerCut:
        return True
    finally:
        hal.os = real


def test_filestore_write_keeps_a_valid_copy_at_every_step_on_fat():
    """The bug: FAT's fallback removed the file and then renamed the new one over: a power cut in between left
    no file (and the command state read as lost, or before, as a counter of 0)."""
    for cut1 in range(1, 7):
        for cut2 in range(0, 7):
            d = tmpdir("lkfat")
            hal.FileStore(d).write("s", b"v1")
            _write_cut(d, "s", b"v2", cut1)
            got = hal.FileStore(d).read("s")
            assert got in (b"v1", b"v2"), (cut1, got)
            _write_cut(d, "s", b"v3", cut2)
            got = hal.FileStore(d).read("s")
            assert got in (b"v1", b"v2", b"v3"), (cut1, cut2, got)
            _write_cut(d, "s", b"v4", 0)  # no cut: the latest wins (a stale .old may stay, never read)
            fs = hal.FileStore(d)
            assert fs.read("s") == b"v4" and not fs.exists("s.tmp"), (cut1, cut2)
            assert fs.remove("s") and fs.read("s") is None and not fs.exists("s.old")
