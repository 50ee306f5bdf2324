"""Node tasks on both runtimes, the real ``Node`` over hal_host and the in-process loopback broker: GPS-driven
location (NMEA in, ``loc`` out, garbage never kills the reader), the supervisor and watchdog (crashes counted and
restarted, feeding stops in a crash loop and while the loop is stuck), and recurring broadcasts (fire, survive a
reboot, cancel, quiet hours vs emergency, missed slots not made up)."""

import json

from fwtest import arun, tmpdir
from loopback_broker import LoopbackBroker

import binascii

from protocols import messages, nmea, signing
from lookout_node import hal_host, node_gps, speaker_sched as sched
from lookout_node.commands import Rejected
from lookout_node.hal import sleep_ms, ticks_diff, ticks_ms
from lookout_node.node import Node
from lookout_node.speaker import Speaker

KEY = bytes(range(32))
NOON = 1700049600000  # 2023-11-15 12:00 UTC = 20:00 at UTC+8


async def until(pred, ms=5000, what="condition"):
    waited = 0
    while waited < ms:
        r = pred()
        if r:
            return r
        await sleep_ms(5)
        waited += 5
    raise AssertionError("timed out waiting for " + what)


async def start_node(role, gps=False, pir=False, camera=False, wdt_period_ms=None, **extra):
    h = hal_host.HostHal(tmpdir("lktask"), gps=gps, pir=pir, camera=camera)
    cfg = {"id": "nd-01", "site": "dongshan", "role": role, "key": binascii.hexlify(KEY).decode(),
           "broker": {"host": "loopback", "port": 1883}, "quiet_hours": [],
           "position": {"lat": 300000000, "lon": 1200000000, "alt_mm": 0}}
    for k in extra:
        cfg[k] = extra[k]
    h.fs.write("config.json", json.dumps(cfg).encode())
    broker = LoopbackBroker()
    h.open_connection = broker.open_connection
    node = Node(h)
    node.wdt_period_ms = wdt_period_ms
    node.restart_delay_ms = 1
    import asyncio

    task = asyncio.create_task(node.run())
    await until(lambda: node.client is not None and node.client.is_connected(), what="online")
    return h, node, broker, task


def block_ms(ms):
    """A stuck task: hold the CPU (the event loop) for ``ms`` without yielding; returns (t0, t1) ticks."""
    t0 = ticks_ms()
    while ticks_diff(ticks_ms(), t0) < ms:
        pass
    return t0, ticks_ms()


def feeds_between(h, t0, t1):
    """How many watchdog feeds hal_host recorded (``wdt_log``) at ticks t0 < t < t1."""
    return len([t for t in h.wdt_log if ticks_diff(t, t0) > 0 and ticks_diff(t1, t) > 0])


async def stop_node(node, task):
    node.request_exit("stop")
    await task


def published(broker, channel):
    return [json.loads(p) for t, p in broker.published if t.endswith("/" + channel)]


def decoded(line):
    rd = nmea.NMEAReader()
    rd.receive_data(line)
    return rd.next_event()


# ---- GPS -> loc ---------------------------------------------------------------------------------------------

def test_gps_fix_reported_with_sentence_values_and_garbage_never_kills_the_reader():
    async def body():
        h, node, broker, task = await start_node("speaker", gps=True, loc_s=1)
        await until(lambda: published(broker, "loc"), what="fixed position at connect")
        assert published(broker, "loc")[0]["src"] == "fixed"  # no fix yet: the surveyed position
        gga = nmea.encode_gga(43200000, 301234567, 1201234567, 1, satellites=8, hdop_x100=90, alt_mm=12345)
        want = decoded(gga)
        h.gps.feed(gga)
        loc = (await until(lambda: [m for m in published(broker, "loc") if m["src"] == "gps"], what="gps loc"))[0]
        messages.validate("loc", loc)
        assert (loc["lat"], loc["lon"], loc["fix"]) == (want.lat_e7, want.lon_e7, 1)
        assert (loc["sats"], loc["hdop"], loc["alt_mm"]) == (8, 90, 12345)
        # garbage: a bad checksum, binary noise, an overlong line, and one UART read bigger than the reader's
        # buffer; then RMC (speed/course) and a fix moved by ~30 m with DGPS quality
        h.gps.feed(b"$GPGGA,1,2,3*00\r\n\xff\xfe\x00\x01junk\r\n" + b"$GPXXX," + b"9" * 200 + b"\r\n")
        h.gps.feed(b"\x00" * 5000)
        rmc = nmea.encode_rmc(43201000, (2023, 11, 15), True, 301237000, 1201237000, speed_cms=150,
                              course_cdeg=9000, mode="A")
        gga2 = nmea.encode_gga(43201000, 301237000, 1201237000, 2, satellites=9, hdop_x100=80, alt_mm=12000)
        h.gps.feed(b"\xa5" * 300 + rmc + gga2)
        want2 = decoded(gga2)
        loc2 = (await until(lambda: [m for m in published(broker, "loc") if m.get("fix") == 2], what="moved"))[0]
        assert (loc2["lat"], loc2["lon"], loc2["src"]) == (want2.lat_e7, want2.lon_e7, "gps")
        assert loc2["spd_cms"] == 150 and loc2["hdg_cd"] == 9000
        assert node.errors == 0 and "gps" not in node.restarts  # the reader was never restarted
        # unchanged fix: still reported every loc_s
        n = len(published(broker, "loc"))
        later = await until(lambda: published(broker, "loc")[n:], ms=4000, what="periodic loc")
        assert later[0]["lat"] == want2.lat_e7 and later[0]["seq"] > loc2["seq"]
        # fix lost (quality 0): falls back at once to the configured position, src "fixed"
        h.gps.feed(nmea.encode_gga(43202000, None, None, 0))
        fb = await until(lambda: [m for m in published(broker, "loc") if m["seq"] > later[0]["seq"]
                                  and m["src"] == "fixed"], what="fallback")
        assert (fb[0]["lat"], fb[0]["lon"], fb[0]["fix"]) == (300000000, 1200000000, 1)
        await stop_node(node, task)
    return arun(body())


def test_no_fix_and_no_position_means_no_loc():
    h = hal_host.HostHal(tmpdir("lktask"), gps=True)
    cfg = {"id": "nd-02", "site": "dongshan", "role": "speaker", "key": binascii.hexlify(KEY).decode(),
           "broker": {"host": "loopback", "port": 1883}, "quiet_hours": []}
    h.fs.write("config.json", json.dumps(cfg).encode())
    node = Node(h)
    assert node._loc_msg() is None
    assert node_gps.on_event(node, decoded(nmea.encode_gga(43200000, None, None, 0))) is False
    assert node._loc_msg() is None
    assert node_gps.on_event(node, decoded(nmea.encode_gga(43200000, 301234567, 1201234567, 1))) is True
    assert node._loc_msg()["src"] == "gps"


# ---- supervisor and watchdog --------------------------------------------------------------------------------

def test_watchdog_fed_while_healthy_not_in_a_crash_loop_nor_while_the_loop_is_stuck():
    async def body():
        h, node, broker, task = await start_node("sensor", pir=True, wdt_period_ms=10,
                                                 sensor={"debounce_ms": 0, "min_interval_s": 0,
                                                         "sensitivity": 100})
        await until(lambda: h.wdt_feeds >= 3, what="feeds")
        assert h.wdt_timeout == 30000
        # a stuck task holds the event loop: nothing feeds the watchdog while it does
        t0, t1 = block_ms(150)
        assert feeds_between(h, t0, t1) == 0
        n = h.wdt_feeds
        await until(lambda: h.wdt_feeds > n, what="feeding resumes")
        # a task that crashes is restarted and counted; a crash loop stops the feeding
        real_wait = h.pir.wait

        async def broken():
            raise OSError("pir gone")

        h.pir.wait = broken
        h.pir.trigger()  # releases the pending wait; the next one raises
        await until(lambda: not node.healthy(), what="crash loop")
        h.pir.wait = real_wait
        hb = node.heartbeat()
        messages.validate("hb", hb)
        assert hb["errs"] >= 5 and hb["err"] == "sensor: OSError: pir gone"
        assert len(node.restarts["sensor"]) == 5
        n = h.wdt_feeds
        await sleep_ms(100)  # ten feed periods
        assert h.wdt_feeds == n
        # the restarted task works again
        h.pir.trigger()
        await until(lambda: published(broker, "evt"), what="event from the restarted task")
        await stop_node(node, task)
    return arun(body())


# ---- detections -> events ----------------------------------------------------------------------------------

def test_pir_edges_debounced_and_rate_limited_into_signed_events():
    async def body():
        h, node, broker, task = await start_node("sensor", pir=True,
                                                 sensor={"debounce_ms": 200, "min_interval_s": 10,
                                                         "sensitivity": 50})  # 2 edges within 3 s
        for t in (0, 50, 100):  # one edge and its contact bounce: not a detection yet
            h.pir.trigger(t)
        h.pir.trigger(1000)  # second edge: detection -> event
        for t in (4000, 5000, 8000, 9000):  # two more detections inside the 10 s rate limit: counted only
            h.pir.trigger(t)
        h.pir.trigger(12000)
        h.pir.trigger(13000)  # 12 s after the last event: sent, standing for 3 detections
        evts = await until(lambda: len(published(broker, "evt")) == 2 and published(broker, "evt"), what="evts")
        assert [(e["kind"], e.get("count"), e["conf"]) for e in evts] == [("presence", 1, 90), ("presence", 3, 90)]
        assert node.sensor.det.bounces == 2 and node.sensor.events == 2
        for e in evts:
            messages.validate("evt", e)
            signing.verify(KEY, "evt", e)
            assert (e["lat"], e["lon"]) == (300000000, 1200000000)
        await node.sensor.disarm({}, {})
        h.pir.trigger(30000)
        h.pir.trigger(31000)
        await sleep_ms(50)
        assert len(published(broker, "evt")) == 2  # disarmed: edges ignored
        await stop_node(node, task)
    return arun(body())


# ---- recurring broadcasts -----------------------------------------------------------------------------------

def make_speaker(clock, quiet=None, root=None):
    h = hal_host.HostHal(root or tmpdir("lktask"), clock=lambda: clock[0], speed=8)
    sp = Speaker(h, {"volume": 70, "quiet_hours": quiet or [], "tz_min": 480})
    sp.sched_tick_ms = 5
    h.fs.write("clips/short", bytes(16 * 300))
    events = []
    sp.emit_event = lambda kind, sev, detail=None: events.append(detail)
    return h, sp, events


def cmd(cid, prio=1):
    return {"id": cid, "prio": prio}


def test_schedule_fires_each_period_survives_reboot_and_cancel_stops_it():
    async def body():
        import asyncio

        clock = [NOON]
        h, sp, events = make_speaker(clock)
        tasks = [asyncio.create_task(sp.run()), asyncio.create_task(sp.run_scheduler())]
        r = await sched.schedule(sp, sched.check_schedule(sp, {"sid": "s1", "clip": "short", "every_s": 60},
                                                          cmd("c1")), cmd("c1"))
        assert r == {"sid": "s1", "next_ms": NOON}
        await until(lambda: len(events) == 1, what="first broadcast")
        assert events[0].startswith("schedule s1: done")
        assert [p["tag"] for p in h.audio.plays] == ["short"] and h.audio.plays[0]["volume"] == 70
        await sleep_ms(50)
        assert len(h.audio.plays) == 1  # not again before the period is up
        clock[0] += 60000
        await until(lambda: len(events) == 2, what="second broadcast")
        for t in tasks:
            t.cancel()
        # reboot: a new Speaker on the same flash has the schedule, due one period later
        sp2 = Speaker(h, {"volume": 70, "quiet_hours": [], "tz_min": 480})
        sp2.sched_tick_ms = 5
        sp2.emit_event = sp.emit_event
        assert sp2.schedules["s1"]["next_ms"] == NOON + 120000
        tasks = [asyncio.create_task(sp2.run()), asyncio.create_task(sp2.run_scheduler())]
        clock[0] += 60000
        await until(lambda: len(events) == 3, what="broadcast after reboot")
        with __import__("ptest").raises(Rejected) as e:
            sched.check_cancel(sp2, {"sid": "nope"}, cmd("x"))
        assert e.value.code == "no_schedule"
        assert await sched.cancel(sp2, sched.check_cancel(sp2, {"sid": "s1"}, cmd("c2")), cmd("c2")) == {
            "sid": "s1", "left": 0}
        clock[0] += 120000
        await sleep_ms(50)
        assert len(events) == 3 and len(h.audio.plays) == 3
        assert json.loads(h.fs.read("schedules.json")) == {}
        for t in tasks:
            t.cancel()
    return arun(body())


def test_schedule_quiet_hours_skip_normal_but_not_emergency_and_missed_slots_not_replayed():
    async def body():
        import asyncio

        clock = [NOON]
        h, sp, events = make_speaker(clock, quiet=[18, 23])  # 20:00 local: quiet
        tasks = [asyncio.create_task(sp.run()), asyncio.create_task(sp.run_scheduler())]
        # started 10 periods ago (e.g. while the node was off): one broadcast now, the next on the grid
        await sched.schedule(sp, sched.check_schedule(sp, {"sid": "n", "clip": "short", "every_s": 60,
                                                           "start_ms": NOON - 600000 + 1000}, cmd("a", 1)),
                             cmd("a", 1))
        await sched.schedule(sp, sched.check_schedule(sp, {"sid": "e", "clip": "short", "every_s": 60,
                                                           "count": 2}, cmd("b", 3)), cmd("b", 3))
        await until(lambda: len(events) == 1, what="emergency broadcast")
        assert events[0].startswith("schedule e: done") and h.audio.plays[0]["volume"] == 100
        assert sp.schedules["n"]["next_ms"] == NOON + 1000  # missed slots skipped, phase kept
        await sleep_ms(50)
        assert len(h.audio.plays) == 1  # the normal one was skipped in quiet hours, silently
        clock[0] += 60000
        await until(lambda: len(events) == 2, what="second emergency broadcast")
        assert "e" not in sp.schedules  # count 2 used up
        clock[0] += 4 * 3600000  # 00:00 local: quiet hours over
        await until(lambda: len(events) == 3, what="normal broadcast after quiet hours")
        assert events[2].startswith("schedule n: done") and len(h.audio.plays) == 3
        for t in tasks:
            t.cancel()
    return arun(body())


def test_schedule_command_through_the_node_loads_the_scheduler_and_fires():
    """The lazily loaded ``schedule`` handler, end to end: signed command in, ``done`` out, broadcast played."""
    async def body():
        h, node, broker, task = await start_node("speaker")
        h.fs.write("clips/short", bytes(16 * 300))
        node.speaker.sched_tick_ms = 5
        now = h.time_ms()
        m = messages.command("sc1", "nd-01", "schedule", {"sid": "s1", "clip": "short", "every_s": 60}, now,
                             now + 60000, 1, 1)
        signing.sign(KEY, "cmd", m)
        broker.inject("lookout/v1/dongshan/nd-01/cmd", messages.encode("cmd", m))
        res = await until(lambda: [r for r in published(broker, "res") if r["status"] == "done"], what="done")
        assert res[0]["id"] == "sc1" and res[0]["data"]["sid"] == "s1"
        await until(lambda: h.audio.plays, what="scheduled broadcast")
        assert h.audio.plays[0]["tag"] == "short" and "s1" in node.speaker.schedules
        await stop_node(node, task)
    return arun(body())
