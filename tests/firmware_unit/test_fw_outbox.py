"""The node's outbox on both runtimes: the sender removes exactly the acknowledged item, a full outbox drops by
rank (locations, then results, events last; oldest first; never the item in flight) and counts it, each message
costs two small appends, and the log survives reboots, torn records and a power cut at any write."""

import json

from fwtest import MemFS, arun, tmpdir

import binascii

from lookout_node import hal_host
from lookout_node.hal import asyncio, sleep_ms, ticks_ms
from lookout_node.node import Node
from lookout_node.outbox import Outbox

KEY = bytes(range(32))
EVT = "lookout/v1/dongshan/nd-01/evt"
RES = "lookout/v1/dongshan/nd-01/res"
LOC = "lookout/v1/dongshan/nd-01/loc"


def msg(n, pad=0):
    return json.dumps({"n": n, "x": "y" * pad})


def drain(ob):
    """Send everything (take + ack, as the sender does); returns the numbers in sending order."""
    out = []
    for _ in range(1000):
        it = ob.take()
        if it is None:
            return out
        assert ob.ack(it[0])
        out.append(json.loads(it[2])["n"])
    raise AssertionError("outbox did not drain")


def log_file(fs, ob):
    names = [n for n in fs.files if n.startswith(ob.name)]
    assert len(names) == 1, names
    return names[0]


def copy_fs(fs):
    c = MemFS()
    c.files = dict(fs.files)
    return c


async def until(pred, ms=3000, what="condition"):
    for _ in range(ms // 2):
        if pred():
            return
        await sleep_ms(2)
    raise AssertionError("timed out waiting for " + what)


class AckGate:
    """An MQTT client stand-in whose QoS 1 publish returns (PUBACK) only when the test says so."""

    def __init__(self):
        self.connected = asyncio.Event()
        self.connected.set()
        self.sent = []
        self.acks = 0
        self.connects = 1  # the client's connection counter (node.py remembers on which one a PUBACK came)

    async def publish(self, topic, payload, qos=0, retain=False):
        self.sent.append(json.loads(payload)["id"])
        n = len(self.sent)
        while self.acks < n:
            await sleep_ms(1)


def test_sender_removes_exactly_the_acknowledged_item_and_counts_the_victim():
    """The bug: the sender peeked the head, awaited PUBACK, then popped whatever was the head by then. Here the
    outbox is full while a result is in flight; an event arrives: the other (not in flight) result is the victim,
    and after the PUBACK the delivered result leaves, not the never-sent event behind it."""
    async def body():
        h = hal_host.HostHal(tmpdir("lkob"))
        cfg = {"id": "nd-01", "site": "dongshan", "role": "sensor", "key": binascii.hexlify(KEY).decode(),
               "broker": {"host": "loopback", "port": 1883}}
        h.fs.write("config.json", json.dumps(cfg).encode())
        node = Node(h)
        node.outbox = Outbox(h.fs, "ob-test", max_items=3)
        node.client = c = AckGate()
        node.proc._result("c1", "done")
        e2 = node.emit_event("presence", "general")["id"]
        node.proc._result("c3", "done")
        task = asyncio.create_task(node.sender())
        await until(lambda: c.sent == ["c1"], what="c1 in flight")
        e4 = node.emit_event("presence", "general")["id"]  # full: c3 goes (c1 is in flight, events last)
        assert len(node.outbox) == 3 and node.outbox.dropped == 1
        c.acks = 1
        await until(lambda: len(c.sent) == 2, what="second send")
        c.acks = 10
        await until(lambda: len(node.outbox) == 0, what="outbox drained")
        assert c.sent == ["c1", e2, e4]
        assert node.heartbeat()["dropped"] == 1 and node.heartbeat()["outbox"] == 0
        task.cancel()
        await sleep_ms(5)
        again = Outbox(h.fs, "ob-test", max_items=3)  # and so it stays after a reboot
        assert len(again) == 0 and again.dropped == 1
    return arun(body())


class _Msg:
    def __init__(self, topic, payload):
        self.topic, self.payload = topic, payload


def test_sender_holds_until_the_gateway_is_online_on_this_connection_and_replays_after_a_break():
    """With ``gateway`` in the config nothing leaves before that gateway's birth arrived on the current
    connection (a broker acknowledges what no gateway is subscribed to, and drops it); a death or a new
    connection holds the outbox again. What the broker acknowledged shortly before a connection broke goes
    back into the outbox on the next one (a crashed broker may never have delivered it)."""
    async def body():
        h = hal_host.HostHal(tmpdir("lkgw"))
        cfg = {"id": "nd-01", "site": "dongshan", "role": "sensor", "key": binascii.hexlify(KEY).decode(),
               "broker": {"host": "loopback", "port": 1883}, "gateway": "gw-1"}
        h.fs.write("config.json", json.dumps(cfg).encode())
        node = Node(h)
        node.client = c = AckGate()
        c.acks = 1000
        gw_state = "lookout/v1/dongshan/gw-1/state"
        link1 = asyncio.Event()  # a connection's token: set when it is gone
        c.msg_link = link1
        e1 = node.emit_event("presence", "general")["id"]
        task = asyncio.create_task(node.sender())
        await sleep_ms(20)
        assert c.sent == []  # connected, but no gateway birth yet
        node.on_message(_Msg(gw_state, b'{"bdseq":3,"online":true}'))
        await until(lambda: c.sent == [e1], what="sent after the birth")
        node.on_message(_Msg(gw_state, b'{"bdseq":3,"online":false,"reason":"connection lost"}'))
        e2 = node.emit_event("presence", "general")["id"]
        await sleep_ms(20)
        assert c.sent == [e1] and len(node.outbox) == 1  # the gateway died: held
        node.on_message(_Msg(gw_state, b"not json"))
        await sleep_ms(10)
        assert c.sent == [e1]
        node.on_message(_Msg(gw_state, b'{"bdseq":4,"online":true}'))
        await until(lambda: c.sent == [e1, e2], what="sent after the gateway's new birth")
        # the connection breaks (its token is set) and a new one comes up: e1 and e2 were acknowledged on
        # the old one just before, so they go out again, but only once the gateway is seen on the new one
        link1.set()
        node._offline_since = ticks_ms()
        c.connects = 2
        node._replay()
        assert len(node.outbox) == 2 and node.recent == []
        await sleep_ms(20)
        assert c.sent == [e1, e2]
        c.msg_link = asyncio.Event()
        node.on_message(_Msg(gw_state, b'{"bdseq":4,"online":true}'))
        await until(lambda: c.sent == [e1, e2, e1, e2], what="replayed after the birth on the new connection")
        task.cancel()
        await sleep_ms(5)
    return arun(body())


def test_full_outbox_drops_locations_then_results_then_events_oldest_first():
    fs = MemFS()
    ob = Outbox(fs, max_items=4)
    for t, n in ((EVT, 1), (LOC, 2), (RES, 3), (EVT, 4)):
        assert ob.put(t, msg(n)) == 0
    assert ob.put(LOC, msg(5)) == 1  # victim: the location 2
    assert ob.put(RES, msg(6)) == 1  # the location 5
    assert ob.put(EVT, msg(7)) == 1  # the result 3 (oldest result)
    assert ob.put(EVT, msg(8)) == 1  # the result 6
    assert ob.put(RES, msg(9)) == 1  # only events left: the new result itself
    assert ob.put(EVT, msg(10)) == 1  # the oldest event, 1
    assert ob.dropped == 6
    rebooted = Outbox(copy_fs(fs), max_items=4)
    assert rebooted.dropped == 6 and drain(rebooted) == [4, 7, 8, 10]
    assert drain(ob) == [4, 7, 8, 10]


def test_item_in_flight_is_never_the_victim_and_ack_after_a_drop_removes_nothing_else():
    ob = Outbox(MemFS(), max_items=2)
    ob.put(EVT, msg(1))
    iid, _, _ = ob.take()
    ob.put(EVT, msg(2))
    ob.put(EVT, msg(3))  # 1 is in flight: 2 goes
    assert ob.dropped == 1
    assert ob.ack(iid) is True
    assert drain(ob) == [3]
    ob.put(EVT, msg(4))
    iid, _, _ = ob.take()
    ob.release()  # the send failed: 4 may go again
    ob.put(EVT, msg(5))
    ob.put(EVT, msg(6))
    assert ob.ack(iid) is False  # 4 was dropped meanwhile: nothing else is removed
    assert drain(ob) == [5, 6] and ob.dropped == 2


def test_put_and_ack_each_append_one_small_record():
    """Flash wear: the old outbox rewrote the whole queue on every put and every pop."""
    fs = MemFS()
    ob = Outbox(fs)
    for i in range(40):
        ob.put(EVT, msg(i, 150))
    before = fs.written
    ob.put(EVT, msg(40, 150))
    assert fs.written - before <= len(EVT) + len(msg(40, 150)) + 24, fs.written - before
    before = fs.written
    iid, _, _ = ob.take()
    ob.ack(iid)
    assert fs.written - before <= 16, fs.written - before


def test_log_stays_bounded_and_compaction_at_most_doubles_the_writes():
    fs = MemFS()
    ob = Outbox(fs, max_items=8, max_bytes=2048)  # log_limit 4096
    records = 0
    biggest = 0
    for i in range(1500):
        p = msg(i, i % 50)
        ob.put(EVT, p)
        records += 8 + len("P%d %s %s" % (i + 1, EVT, p)) + 1
        if len(ob) > 5:
            iid, _, _ = ob.take()
            ob.ack(iid)
            records += 8 + len("A%d" % iid) + 1
        biggest = max(biggest, sum(len(d) for d in fs.files.values()))
    assert biggest <= ob.log_limit + 2048 + 256, biggest
    assert fs.written <= 2 * records, (fs.written, records)
    assert len(drain(Outbox(copy_fs(fs), max_items=8, max_bytes=2048))) == 5


def test_torn_last_record_is_skipped_and_never_glues_onto_the_next():
    fs = MemFS()
    ob = Outbox(fs)
    for i in range(3):
        ob.put(EVT, msg(i))
    name = log_file(fs, ob)
    data = fs.files[name]
    last = len(_last_line(data))
    for cut in range(1, last):
        f2 = copy_fs(fs)
        f2.files[name] = data[:-cut]
        ob2 = Outbox(f2)
        assert [json.loads(ob2.items[i][3])["n"] for i in range(len(ob2))] == [0, 1], cut
        ob2.put(EVT, msg(3))
        assert drain(Outbox(copy_fs(f2))) == [0, 1, 3], cut


def _last_line(data):
    return data[data.rfind(b"\n", 0, len(data) - 1) + 1:]


def test_damaged_record_in_the_middle_is_skipped_the_rest_loads():
    fs = MemFS()
    ob = Outbox(fs)
    for i in range(3):
        ob.put(EVT, msg(i))
    name = log_file(fs, ob)
    lines = fs.files[name].split(b"\n")
    lines[2] = b"\x00" * len(lines[2])  # header, 0, [1], 2: a zeroed FAT sector
    fs.files[name] = b"\n".join(lines)
    assert drain(Outbox(fs)) == [0, 2]


def test_garbage_files_start_empty():
    fs = MemFS()
    fs.files["outbox.0"] = b"{not a log"
    fs.files["outbox.1"] = b"\xff" * 100
    ob = Outbox(fs)
    assert len(ob) == 0 and ob.dropped == 0
    ob.put(EVT, msg(1))
    assert drain(Outbox(copy_fs(fs))) == [1]


def test_oversized_item_dropped_and_counted_across_reboot():
    fs = MemFS()
    ob = Outbox(fs, max_items=4, max_bytes=100)
    assert ob.put(EVT, msg(1, 200)) == 1
    ob.put(EVT, msg(2))
    assert Outbox(copy_fs(fs), max_items=4, max_bytes=100).dropped == 1


class PowerCut(Exception):
    pass


class CutFS(MemFS):
    """Flash that loses power in the middle of write operation number ``at``: an append keeps ``keep`` bytes of
    its data (a torn record); a whole-file write (FileStore: temp file, then rename) leaves the old file."""

    def __init__(self, at, keep):
        MemFS.__init__(self)
        self.ops = 0
        self.at = at
        self.keep = keep

    def _op(self):
        self.ops += 1
        return self.ops == self.at

    def append(self, name, data):
        if self._op():
            MemFS.append(self, name, bytes(data)[:min(self.keep, len(data) - 1)])  # torn: never all of it
            raise PowerCut()
        MemFS.append(self, name, data)

    def write(self, name, data):
        if self._op():
            raise PowerCut()
        MemFS.write(self, name, data)

    def remove(self, name):
        if self._op():
            raise PowerCut()
        return MemFS.remove(self, name)


def _live(ob):
    return [json.loads(it[3])["n"] for it in ob.items]


def _script(fs, state):
    """Puts and acks through compactions; ``state`` records what completed: put, acked, gone (victims)."""
    ob = Outbox(fs, max_items=4, max_bytes=400, log_limit=300)
    for i in range(30):
        before = _live(ob)
        state["doomed"] = before  # a put cut short may have chosen its victim already
        ob.put((EVT, RES, LOC)[i % 3], msg(i, i % 7))
        state["doomed"] = []
        state["put"].append(i)
        state["gone"] += [n for n in before + [i] if n not in _live(ob)]
        state["dropped"] = ob.dropped
        if i % 4 == 3:
            while len(ob) > 1:
                iid, _, p = ob.take()
                state["doomed"] = [json.loads(p)["n"]]  # its ack record may be written before the cut
                ob.ack(iid)
                state["doomed"] = []
                state["acked"].append(json.loads(p)["n"])


def test_power_cut_at_any_write_keeps_every_unacknowledged_item():
    full = {"put": [], "acked": [], "gone": [], "doomed": [], "dropped": 0}
    probe = CutFS(0, 0)
    _script(probe, full)
    total = probe.ops
    assert total > 60 and full["dropped"] > 0 and full["gone"]  # the script compacts and drops
    for at in range(1, total + 1):
        for keep in (0, 1, 9, 30):
            fs = CutFS(at, keep)
            st = {"put": [], "acked": [], "gone": [], "doomed": [], "dropped": 0}
            try:
                _script(fs, st)
                raise AssertionError("no power cut at %d" % at)
            except PowerCut:
                pass
            back = MemFS()
            back.files = fs.files
            ob = Outbox(back, max_items=4, max_bytes=400, log_limit=300)
            got = _live(ob)
            where = (at, keep, got, st)
            assert got == sorted(got), where  # order kept
            assert not set(got) & set(st["acked"]), where  # a completed ack is final
            lost = set(st["put"]) - set(st["acked"]) - set(st["gone"]) - set(got)
            # nothing lost but what the interrupted operation itself removed
            assert len(lost) <= 1 and lost <= set(st["doomed"]), where
            assert set(got) <= set(st["put"]) | {len(st["put"])}, where  # nothing invented
            assert ob.dropped >= st["dropped"], where
            ob.put(EVT, msg(99))  # and the log takes new records after the reboot
            assert _live(Outbox(back, max_items=4, max_bytes=400, log_limit=300))[-1] == 99, where
