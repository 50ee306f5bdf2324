"""Fault injection (issue 17): a body-worn recorder's serial line at BER 1e-4 with byte drops both ways, and its
cable pulled again and again in the middle of an upload, under the real gateway and Mosquitto, on real
pseudo-terminals.

What must hold (docs/RELIABILITY.md, "Recorder line"): the clip lands bit-exact and verified, and not one byte
the gateway had confirmed crosses the line twice; the registry shows the recorder offline while its cable is out
and online while it is in, wrong for no longer than ``SHOWN_BOUND_S`` at any change; a command sent on the noisy
line reaches a final result, and one sent while the cable is out is refused ``offline`` without reaching it.

The line runs at 1 Mbaud so the test takes seconds; BER and drops are per bit and per byte, so the frames see
the same error odds as at 115,200 baud (bench/serial_goodput.py measures the rates).
"""

from __future__ import annotations

import asyncio

import pytest
from aiowait import aio, until
from gwserve import serving
from shown import Shown
from test_recorder_bridge import SITE, make_cfg, recorder

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.service.app import Gateway
from lookout.simulators.recorder import LineConfig

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

BER = 1e-4  # the issue's figure: a poor cable or a radio modem
DROP = 1e-5  # bytes lost outright
PULLS = 3
SHOWN_BOUND_S = 1.5  # beyond the pull: the port's read failing or the 100 ms scan, then the registry
DEV = "bwc-0001"



@aio
async def test_noisy_line_and_repeated_cable_pulls_mid_upload(mosquitto, tmp_path):
    ks = KeyStore(tmp_path / "ks.db")
    sim = recorder(tmp_path, ks, DEV, line=LineConfig(baud=1_000_000, ber=BER, drop=DROP, latency_ms=5, seed=17))
    clip = sim.record_clip(400_000)
    sha = sim.clip(clip)["sha256"]
    try:
        async with serving(Gateway(make_cfg(tmp_path, f"mqtt://{mosquitto.host}:{mosquitto.port}"),
                                   keystore=ks)) as gw:
            async with sim:
                await until(lambda: (d := gw.registry.get(DEV)) and d.state == "online", 10, "online")
                shown = Shown(gw, DEV, lambda: sim.cable.plugged)
                watcher = asyncio.create_task(shown.run())
                try:
                    # a command over the noisy line: a truthful final result
                    c = await gw.commands.issue(DEV, "dispatch", {"text": "东岸渡口有人钓鱼，请前往处置",
                                                                  "lat": 301234560, "lon": 1201234560})
                    [c] = await gw.commands.wait([c.id], "final", 15)
                    assert c.status == "done", c
                    for i in range(PULLS):
                        target = 400_000 * (i + 1) // (PULLS + 2)
                        await until(lambda t=target: sim.push and sim.push.stream.acked > t, 30, f"{target} B")
                        confirmed_before = sim.push.stream.acked
                        sim.unplug()
                        await until(lambda: gw.registry.get(DEV).state == "offline", SHOWN_BOUND_S + 1, "offline")
                        held = gw.clipstore.uploads[(DEV, sim.clip(clip)["tid"])].rx.offset
                        assert held >= confirmed_before  # all the recorder saw confirmed is in the gateway's file
                        # while the cable is out: an unqueued command is refused at once and never reaches the
                        # recorder; a queued one waits and is delivered once the recorder is back
                        c = await gw.commands.issue(DEV, "record_start", {"incident": f"inc-{i}"}, queue=False)
                        assert (c.status, c.code) == ("refused", "offline"), c
                        q = await gw.commands.issue(DEV, "dispatch", {"text": f"第{i + 1}次", "lat": 301234560,
                                                                      "lon": 1201234560})
                        assert q.status == "queued", q
                        await asyncio.sleep(0.3)
                        sim.plug()
                        await until(lambda: gw.registry.get(DEV).state == "online", SHOWN_BOUND_S + 3, "online")
                        [q] = await gw.commands.wait([q.id], "final", 15)
                        assert q.status == "done", q
                    await until(lambda: (r := gw.clipstore.custody.get(sha)) and r["state"] == "stored", 60,
                                "stored")
                    await until(lambda: sim.uploads, 5, "the recorder saw it complete")
                finally:
                    watcher.cancel()
                assert gw.clipstore.custody.path(sha).read_bytes() == (sim.clips_dir / f"{clip}.bin").read_bytes()
                up = sim.uploads[0]
                # one offer per plug-in at least (an offer or its answer lost to noise is offered again)
                assert up["resent_confirmed"] == 0 and up["offers"] >= PULLS + 1 and up["resumes"] >= PULLS
                [t] = [x for x in gw.clipstore.custody.trail(sha) if x["action"] == "uploaded"]
                assert t["duplicate_bytes"] == 0
                st = sim.stats()
                assert st["line_up"]["flipped"] > 100 and st["line_up"]["dropped"] > 0  # the line was that bad
                assert st["line_down"]["flipped"] > 0
                assert not sim.recording  # no record_start sent while the cable was out ever arrived
                assert shown.wrong_for() <= SHOWN_BOUND_S, f"state wrong for {shown.wrong_for():.2f} s"
                assert gw.journal.verify().ok
    finally:
        ks.close()
