"""Command path (firmware/lib/lookout_node/commands.py) on both runtimes: every rejection code, acceptance,
duplicate ids re-acknowledged without re-execution, the counter surviving a reboot."""


from fwtest import arun, MemFS

from protocols import messages, signing
from lookout_node.commands import CommandProcessor, Failed, Rejected

KEY = bytes(range(32))
OTHER = bytes(range(1, 33))
NOW = 1700000000000


def make(fs=None, clock=NOW):
    sent = []
    ran = []
    p = CommandProcessor("spk-01", KEY, fs if fs is not None else MemFS(), lambda: clock, sent.append)

    async def play(args, cmd):
        ran.append(cmd["id"])
        return {"played_ms": 1000}

    async def boom(args, cmd):
        raise Failed("no_audio", "amplifier off")

    def check_play(args, cmd):
        if "clip" not in args:
            raise Rejected("bad_args", "clip missing")
        return args

    p.register("play", play, check_play)
    p.register("boom", boom)
    return p, sent, ran


def cmd(cid="c1", ctr=1, name="play", args=None, to="spk-01", ts=NOW, exp=NOW + 60000, key=KEY, prio=1):
    m = messages.command(cid, to, name, {"clip": "nofish"} if args is None else args, ts, exp, prio, ctr)
    signing.sign(key, "cmd", m)
    return messages.encode("cmd", m)


def statuses(sent):
    return [(m["id"], m["status"], m.get("code")) for m in sent]


def check_signed(sent):
    for m in sent:
        signing.verify(KEY, "res", m)
        messages.validate("res", m)


def test_valid_command_accepted_then_done():
    async def body():
        p, sent, ran = make()
        coro = p.receive(cmd())
        assert statuses(sent) == [("c1", "accepted", None)]
        assert await coro == "done"
        assert statuses(sent) == [("c1", "accepted", None), ("c1", "done", None)]
        assert sent[-1]["data"] == {"played_ms": 1000}
        assert ran == ["c1"]
        check_signed(sent)
    return arun(body())


def test_forged_mac_rejected():
    p, sent, ran = make()
    assert p.receive(cmd(key=OTHER)) == "rejected"
    assert statuses(sent) == [("c1", "rejected", "bad_mac")]
    assert ran == [] and p.last_ctr == 0
    check_signed(sent)


def test_altered_command_rejected():
    raw = cmd().replace(b'"nofish"', b'"evil00"')
    p, sent, ran = make()
    p.receive(raw)
    assert statuses(sent) == [("c1", "rejected", "bad_mac")]


def test_wrong_device_rejected():
    p, sent, ran = make()
    p.receive(cmd(to="spk-02"))
    assert statuses(sent) == [("c1", "rejected", "wrong_device")]


def test_replay_rejected():
    async def body():
        p, sent, ran = make()
        await p.receive(cmd("c1", ctr=5))
        p.receive(cmd("c2", ctr=5))  # same counter, different id: a replay/forgery, not a redelivery
        p.receive(cmd("c3", ctr=4))
        assert statuses(sent)[-2:] == [("c2", "rejected", "replay"), ("c3", "rejected", "replay")]
        assert ran == ["c1"]
    return arun(body())


def test_expired_rejected():
    p, sent, ran = make(clock=NOW + 120000)
    p.receive(cmd())
    assert statuses(sent) == [("c1", "rejected", "expired")]
    assert ran == []


def test_no_clock_skips_expiry_but_counter_still_guards():
    async def body():
        p, sent, ran = make(clock=None)
        await p.receive(cmd(ctr=3))
        assert ran == ["c1"]
        p.receive(cmd("c2", ctr=2))
        assert statuses(sent)[-1] == ("c2", "rejected", "replay")
        assert "ts" not in sent[0]
    return arun(body())


def test_malformed_rejected_with_reason_when_id_readable():
    p, sent, ran = make()
    assert p.receive(b'{"id": "bad1", "name": "play"}') == "rejected"
    assert sent[0]["id"] == "bad1" and sent[0]["code"] == "bad_message"
    assert "detail" in sent[0]
    assert p.receive(b"\xff\x00garbage") is None
    assert p.receive(b'{"id": "has space"}') is None
    assert p.dropped == 2 and len(sent) == 1


def test_unknown_command_and_bad_args_rejected_and_consume_counter():
    p, sent, ran = make()
    p.receive(cmd("c1", ctr=1, name="selfdestruct"))
    p.receive(cmd("c2", ctr=2, args={}))
    assert statuses(sent) == [("c1", "rejected", "unknown_command"), ("c2", "rejected", "bad_args")]
    assert p.last_ctr == 2


def test_duplicate_id_reacked_not_reexecuted():
    async def body():
        p, sent, ran = make()
        await p.receive(cmd())
        n = len(sent)
        assert p.receive(cmd()) == "done"  # redelivery of the same command
        assert ran == ["c1"]
        assert statuses(sent[n:]) == [("c1", "done", None)]
        assert sent[-1]["data"] == {"played_ms": 1000}
        # a forged copy of a known id gets no cached result
        p.receive(cmd(key=OTHER))
        assert statuses(sent)[-1] == ("c1", "rejected", "bad_mac")
    return arun(body())


def test_duplicate_while_running_reports_accepted():
    async def body():
        p, sent, ran = make()
        coro = p.receive(cmd())
        assert p.receive(cmd()) == "accepted"
        await coro
        assert ran == ["c1"]
    return arun(body())


def test_failed_handler_reports_code():
    async def body():
        p, sent, ran = make()
        await p.receive(cmd(name="boom", args={}))
        assert statuses(sent)[-1] == ("c1", "failed", "no_audio")
    return arun(body())


def test_counter_and_cache_survive_reboot():
    async def body():
        fs = MemFS()
        p, sent, ran = make(fs)
        await p.receive(cmd("c1", ctr=7))
        p2, sent2, ran2 = make(fs)  # a reboot: new processor, same flash
        assert p2.last_ctr == 7
        p2.receive(cmd("c0", ctr=6))
        assert statuses(sent2) == [("c0", "rejected", "replay")]
        assert p2.receive(cmd("c1", ctr=7)) == "done"  # redelivered after reboot: answered from flash
        assert ran2 == []
    return arun(body())


def test_counter_persisted_before_handler_runs():
    fs = MemFS()
    p, sent, ran = make(fs)
    coro = p.receive(cmd("c1", ctr=9))  # accepted, handler not run yet (a crash here...)
    p2, sent2, ran2 = make(fs)  # ...and the reboot still knows the counter
    assert p2.last_ctr == 9
    assert p2.receive(cmd("c1", ctr=9)) == "accepted"
    assert ran2 == []
    coro.close()


def test_every_rejection_is_answered_signed_with_code_and_detail():
    """No refusal is silent: each gets exactly one signed ``rejected`` result naming the check that failed, and
    none of the authentication failures moves the persisted counter."""
    async def body():
        fs = MemFS()
        p, sent, ran = make(fs)
        await p.receive(cmd("c0", ctr=5))
        state = fs.read("cmdstate.json")
        cases = [
            (cmd("f1", ctr=6, key=OTHER), "bad_mac"),
            (cmd("f2", ctr=6).replace(b'"ctr":6', b'"ctr":60'), "bad_mac"),  # counter bumped by a forger
            (cmd("f3", ctr=6, to="spk-02"), "wrong_device"),
            (cmd("f4", ctr=5), "replay"),
            (cmd("f5", ctr=4), "replay"),
            (cmd("f6", ctr=6, ts=NOW - 60000, exp=NOW - 1), "expired"),
        ]
        for raw, code in cases:
            n = len(sent)
            assert p.receive(raw) == "rejected"
            new = sent[n:]
            assert len(new) == 1, new
            assert new[0]["status"] == "rejected" and new[0]["code"] == code, new[0]
            assert new[0]["detail"]
        check_signed(sent)
        assert fs.read("cmdstate.json") == state and p.last_ctr == 5
        assert ran == ["c0"]
        for raw, code in ((cmd("u1", ctr=6, name="nope"), "unknown_command"), (cmd("u2", ctr=7, args={}), "bad_args"),
                          (b'{"id":"m1","name":"play"}', "bad_message")):
            n = len(sent)
            assert p.receive(raw) == "rejected"
            assert [(m["status"], m["code"]) for m in sent[n:]] == [("rejected", code)]
        check_signed(sent)
    return arun(body())


def test_expired_and_replayed_after_reboot():
    async def body():
        fs = MemFS()
        p, sent, ran = make(fs)
        raw = cmd("c1", ctr=3)
        await p.receive(raw)
        p2, sent2, ran2 = make(fs, clock=NOW + 120000)  # rebooted later: the same bytes are now also stale
        assert p2.receive(cmd("c2", ctr=3)) == "rejected"
        assert p2.receive(cmd("c3", ctr=4)) == "rejected"
        assert statuses(sent2) == [("c2", "rejected", "replay"), ("c3", "rejected", "expired")]
        assert ran2 == [] and p2.last_ctr == 3
    return arun(body())


def test_lazy_command_loaded_once_and_only_after_verification():
    """A rare command's module is imported by its first *authenticated* use, then stays registered."""
    async def body():
        p, sent, ran = make()
        loads = []

        def load(proc):
            loads.append(1)

            async def rare(args, cmd):
                return {"rare": 1}

            proc.register("rare", rare)

        p.lazy(("rare",), load)
        assert p.receive(cmd("c1", ctr=1, name="rare", args={}, key=OTHER)) == "rejected"
        assert loads == [] and statuses(sent) == [("c1", "rejected", "bad_mac")]
        assert await p.receive(cmd("c2", ctr=2, name="rare", args={})) == "done"
        assert await p.receive(cmd("c3", ctr=3, name="rare", args={})) == "done"
        assert loads == [1] and sent[-1]["data"] == {"rare": 1}
        check_signed(sent)
    return arun(body())


def test_bug_in_a_check_is_rejected_with_error_and_counted():
    errors = []
    p, sent, ran = make()
    p.on_error = lambda where, e: errors.append(where)

    def bad_check(args, cmd):
        return args["missing"]

    async def never(args, cmd):
        ran.append("never")

    p.register("buggy", never, bad_check)
    assert p.receive(cmd("c1", ctr=1, name="buggy", args={})) == "rejected"
    assert statuses(sent) == [("c1", "rejected", "error")] and "KeyError" in sent[0]["detail"]
    assert errors == ["cmd:buggy"] and ran == [] and p.last_ctr == 1
