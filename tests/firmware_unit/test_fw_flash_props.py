"""Property tests (CPython, hypothesis) for what a node reads back from flash: whatever bytes the outbox log or the
command state hold (torn, flipped, garbage), boot never raises, loads items in order and invents none, and fails closed
for the counter."""

import json

from fwtest import MemFS
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import messages, signing
from lookout_node import hal
from lookout_node.commands import CommandProcessor
from lookout_node.outbox import Outbox

EVT = "lookout/v1/dongshan/nd-01/evt"
KEY = bytes(range(32))


def _live(ob):
    return [json.loads(it[3])["n"] for it in ob.items]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600), st.binary(max_size=600))
def test_any_bytes_in_the_outbox_files_boot_and_keep_working(a, b):
    fs = MemFS()
    fs.files["outbox.0"], fs.files["outbox.1"] = a, b
    ob = Outbox(fs, max_items=4, max_bytes=400, log_limit=300)
    assert len(ob) <= 4 and ob.bytes <= 400
    ob.put(EVT, json.dumps({"n": 7}))
    assert json.loads(Outbox(fs, max_items=4, max_bytes=400, log_limit=300).items[-1][3]) == {"n": 7}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), max_size=6), st.integers(0, 400))
def test_damaged_log_loads_a_subset_in_order(flips, cut):
    fs = MemFS()
    ob = Outbox(fs, max_items=8, max_bytes=2000)
    for i in range(6):
        ob.put(EVT, json.dumps({"n": i}))
    ob.ack(ob.take()[0])
    name = [n for n in fs.files if n.startswith("outbox.")][0]
    data = bytearray(fs.files[name])
    for pos, val in flips:
        data[pos % len(data)] = val
    fs.files[name] = bytes(data[:max(0, len(data) - cut)])
    got = _live(Outbox(fs, max_items=8, max_bytes=2000))
    assert got == sorted(got) and set(got) <= {0, 1, 2, 3, 4, 5}  # a torn ack may bring 0 back: at-least-once


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_command_state_bytes_fail_closed_or_check(raw):
    fs = MemFS()
    fs.write("cmdstate.json", raw)
    sent = []
    p = CommandProcessor("spk-01", KEY, fs, lambda: None, sent.append)
    if hal.unseal(raw) is None:
        assert p.lost is not None and p.last_ctr == 0
        m = messages.command("c1", "spk-01", "ping", {}, 1700000000000, 1700000060000, 1, 1)
        signing.sign(KEY, "cmd", m)
        assert p.receive(messages.encode("cmd", m)) == "rejected" and sent[-1]["code"] == "state_lost"
