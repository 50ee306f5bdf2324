"""Loudspeaker logic on both runtimes: pre-emption and resume, stop mid-playback, quiet hours, clip download
verified before it replaces a clip. Runs the real Speaker over hal_host (files in a temp directory)."""


from fwtest import arun, tmpdir

import hashlib
import binascii

from ptest import raises

from protocols import cliptransfer
from lookout_node import hal_host
from lookout_node.commands import Failed, Rejected
from lookout_node.hal import sleep_ms
from lookout_node import speaker, speaker_fetch
from lookout_node.speaker import Speaker, in_quiet_hours, parse_wav

NOON = 1700049600000  # 2023-11-15 12:00 UTC = 20:00 at UTC+8


def raw_clip(ms):
    return bytes(16 * ms)  # 8 kHz 16-bit mono: 16 bytes per ms


def make(quiet=None, clock=NOON, speed=1):
    h = hal_host.HostHal(tmpdir("lkfw"), clock=lambda: clock, speed=speed)
    cfg = {"volume": 70, "quiet_hours": quiet or [], "tz_min": 480}
    sp = Speaker(h, cfg)
    h.fs.write("clips/short", raw_clip(300))
    h.fs.write("clips/long", raw_clip(2000))
    return h, sp


def cmd(cid, prio=1):
    return {"id": cid, "prio": prio}


def test_quiet_hours_math():
    assert in_quiet_hours([22, 6], 480, NOON + 2 * 3600000)  # 22:00 local
    assert in_quiet_hours([22, 6], 480, NOON + 9 * 3600000)  # 05:00 local
    assert not in_quiet_hours([22, 6], 480, NOON)  # 20:00 local
    assert in_quiet_hours([12, 14], 0, NOON + 3600000)
    assert not in_quiet_hours([22, 6], 480, None)  # unknown time: never silently refuse a warning
    assert not in_quiet_hours([], 480, NOON)


def test_parse_wav_header():
    import struct

    data = b"\x00\x01" * 10
    w = (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000,
         32000, 2, 16) + b"data" + struct.pack("<I", len(data)) + data)
    assert parse_wav(w) == (16000, 16, 1, 44, 20)
    assert parse_wav(b"\x00" * 44) is None
    with raises(ValueError):
        parse_wav(w.replace(b"\x01\x00\x01\x00\x80>", b"\x03\x00\x01\x00\x80>"))


def test_play_reports_start_and_played_ms():
    async def body():
        h, sp = make()
        task = __import__("asyncio").create_task(sp.run())
        phases = []
        args = sp.check_play({"clip": "short", "repeat": 2}, cmd("a"))
        data = await sp.play(args, cmd("a"), phases.append)
        assert data["played_ms"] == 600 and data["repeats"] == 2
        assert phases == [{"phase": "playing", "clip": "short"}]
        assert h.audio.plays[0]["tag"] == "short" and h.audio.plays[0]["ms"] == 600
        assert h.audio.plays[0]["volume"] == 70
        task.cancel()
    return arun(body())


def test_rejections_before_playing():
    h, sp = make(quiet=[18, 23])  # 20:00 local is quiet
    with raises(Rejected) as r:
        sp.check_play({"clip": "short"}, cmd("a", prio=2))
    assert r.value.code == "quiet_hours"
    assert sp.check_play({"clip": "short"}, cmd("e", prio=3))["volume"] == 100  # emergency overrides
    for args, code in (({"clip": "nope"}, "no_clip"), ({"clip": "../x"}, "bad_args"),
                       ({"clip": "short", "repeat": 0}, "bad_args"), ({"clip": "short", "volume": 101}, "bad_args")):
        with raises(Rejected) as r:
            sp.check_play(args, cmd("e", prio=3))
        assert r.value.code == code


def test_emergency_preempts_and_normal_resumes():
    async def body():
        import asyncio

        h, sp = make()
        task = asyncio.create_task(sp.run())
        normal = asyncio.create_task(sp.play(sp.check_play({"clip": "long"}, cmd("n", 1)), cmd("n", 1)))
        await sleep_ms(200)
        with raises(Rejected) as r:
            sp.check_play({"clip": "short"}, cmd("n2", 1))  # equal priority cannot interrupt
        assert r.value.code == "busy"
        em = await sp.play(sp.check_play({"clip": "short"}, cmd("e", 3)), cmd("e", 3))
        assert em["played_ms"] == 300
        res = await normal
        assert res["preempted"] == 1 and res["repeats"] == 1
        tags = [(p["tag"], p["cut"]) for p in h.audio.plays]
        assert tags == [("long", True), ("short", False), ("long", False)]
        assert h.audio.plays[1]["volume"] == 100
        task.cancel()
    return arun(body())


def test_stop_mid_playback_is_quick_and_reported():
    async def body():
        import asyncio

        h, sp = make()
        task = asyncio.create_task(sp.run())
        play = asyncio.create_task(sp.play(sp.check_play({"clip": "long", "repeat": 3}, cmd("p")), cmd("p")))
        await sleep_ms(300)
        # measured in audio time, not wall time: what a listener hears after the stop, whatever the CPU load
        heard_at_stop = h.audio.cur["ms"]
        r = await sp.stop({"all": True}, cmd("s"))
        assert r["stopped"] == 1 and "cut_ms" in r
        assert h.audio.plays[-1]["ms"] - heard_at_stop <= speaker.CHUNK_MS
        with raises(Failed) as f:
            await play
        assert f.value.code == "stopped" and 0 < f.value.data["played_ms"] < 6000
        assert h.audio.plays[-1]["cut"] and not h.audio.playing
        task.cancel()
    return arun(body())


def test_fetch_clip_verified_and_bad_download_keeps_old_clip():
    async def body():
        import asyncio

        h, sp = make()
        good = bytes(range(256)) * 5
        digest = binascii.hexlify(hashlib.sha256(good).digest()).decode()
        # 1. a corrupted download (right size, wrong content) must not replace the stored clip
        old = h.fs.read("clips/short")
        args = speaker_fetch.check_fetch(sp, {"clip": "short", "tid": 7, "size": len(good), "chunk": 512,
                                              "sha256": digest}, cmd("f1"))
        t = asyncio.create_task(speaker_fetch.fetch_clip(sp, args, cmd("f1")))
        await sleep_ms(0)
        bad = bytearray(good)
        bad[3] ^= 1
        s = cliptransfer.ClipSender(bytes(bad), 512, "short", 7, "audio", "audio/wav", 0)
        for i, payload in s.chunks():
            sp.on_dl(7, payload)
        with raises(Failed) as f:
            await t
        assert f.value.code == "hash_mismatch"
        assert h.fs.read("clips/short") == old and not h.fs.exists("clips/short.part")
        # 2. the real one, chunks out of order and duplicated
        args = speaker_fetch.check_fetch(sp, {"clip": "short", "tid": 8, "size": len(good), "chunk": 512,
                                              "sha256": digest}, cmd("f2"))
        t = asyncio.create_task(speaker_fetch.fetch_clip(sp, args, cmd("f2")))
        await sleep_ms(0)
        s = cliptransfer.ClipSender(good, 512, "short", 8, "audio", "audio/wav", 0)
        for i in (2, 0, 0, 1):
            sp.on_dl(8, s.chunk(i))
        r = await t
        assert r == {"clip": "short", "size": len(good), "sha256": digest}
        assert h.fs.read("clips/short") == good
    return arun(body())


def test_set_volume_applies_to_current_and_default():
    async def body():
        import asyncio

        h, sp = make()
        task = asyncio.create_task(sp.run())
        play = asyncio.create_task(sp.play(sp.check_play({"clip": "long"}, cmd("p")), cmd("p")))
        await sleep_ms(100)
        await sp.set_volume(sp.check_volume({"volume": 40}, cmd("v")), cmd("v"))
        assert sp.volume == 40 and h.audio.plays[0]["volumes"][-1] == 40
        await sp.stop({"all": True}, cmd("s"))
        try:
            await play
        except Failed:
            pass
        task.cancel()
    return arun(body())


def test_quiet_hours_refusal_shows_the_node_local_time():
    """The operator reads why at any hour: the window as clock times and the node's own local time and zone."""
    h, sp = make(quiet=[18, 23])  # 20:00 local (UTC+8) is quiet
    with raises(Rejected) as r:
        sp.check_play({"clip": "short"}, cmd("a", prio=1))
    assert r.value.code == "quiet_hours"
    assert "quiet hours 18:00\u201323:00, node time 20:00 +08:00" in r.value.detail, r.value.detail
    assert "emergency (3) overrides" in r.value.detail
    h2 = hal_host.HostHal(tmpdir("lkfw"), clock=lambda: NOON + 30 * 60000)  # 12:30 UTC = 07:00 at UTC-05:30
    sp2 = Speaker(h2, {"volume": 70, "quiet_hours": [22, 8], "tz_min": -330})
    h2.fs.write("clips/short", raw_clip(300))
    with raises(Rejected) as r:
        sp2.check_play({"clip": "short"}, cmd("b", prio=2))
    assert "quiet hours 22:00\u201308:00, node time 07:00 -05:30" in r.value.detail, r.value.detail
