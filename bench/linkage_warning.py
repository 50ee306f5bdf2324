"""Detection -> warning through the linkage vs the operator's own broadcast, same gateway, same speaker.

    python bench/linkage_warning.py [--detections 30] [--out bench/results/linkage_warning.json]

One Mosquitto (tests/support/broker.py), the gateway in this process, the REAL firmware (SimNode, speed 20) as a
PIR sensor and a loudspeaker 155 m away, one linkage rule (presence -> broadcast within 600 m, no cool-down).

- ``warn_*``: the sensor's firmware emits a signed event (``Node.emit_event``) -> broker -> gateway (MAC check,
  journal, rule, incident) -> ``play`` -> broker -> speaker -> ``accepted`` -> broker -> gateway: the incident is
  ``warned``. 3 broker traversals plus the gateway's work; timed from the emit to the ``warned`` transition.
- ``baseline_*``: the operator path inside the gateway, ``handle_op("broadcast", wait="accepted")`` to the same
  speaker: gateway -> speaker -> gateway, 2 traversals.
- ``p50_ratio``/``p99_ratio``: warn / baseline; what the linkage (one more hop, the rule, the incident's SQLite
  write) costs over an operator pressing the button at the same instant.

Paths alternate, each incident is closed before the next detection. The last line printed is a JSON object; it is
also written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from broker import Mosquitto  # noqa: E402

from lookout.gateway.admin.keystore import KeyStore  # noqa: E402
from lookout.gateway.core.config import from_dict  # noqa: E402
from lookout.gateway.service.app import Gateway  # noqa: E402
from lookout.simulators.node import SimNode, make_config  # noqa: E402

SPOTS = {"sen-ferry": ("sensor", 299050000, 1196100000), "spk-ferry": ("speaker", 299062000, 1196108000)}


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def run(n: int, tmp: Path, url: str, host: str, port: int) -> dict[str, object]:
    ks = KeyStore(tmp / "ks.db")
    cfg = from_dict({"gateway": {"id": "gw-1", "site": "dongshan", "data_dir": str(tmp / "data"),
                                 "log_level": "warning"},
                     "broker": {"url": url}, "registry": {"min_hb_s": 1},
                     "linkage": {"rule": [{"name": "bench", "cooldown_s": 0, "match": {"kind": "presence"},
                                           "act": {"broadcast": {"clip": "nofish", "within_m": 600}}}]}})
    warn: list[float] = []
    base: list[float] = []
    async with Gateway(cfg, keystore=ks) as gw:
        serve = asyncio.create_task(gw.serve())
        sims = {}
        for dev, (role, lat, lon) in SPOTS.items():
            key = binascii.hexlify(ks.ensure(dev, "dongshan", role).hmac_key).decode()
            sims[dev] = SimNode(tmp / dev, make_config(dev, "dongshan", role, key, host, port, hb_s=5,
                                                       position={"lat": lat, "lon": lon, "alt_mm": 0}), speed=20)
            if role == "speaker":
                sims[dev].add_clip("nofish", ms=200)
            await sims[dev].start()
            await sims[dev].wait_online()
        while not all((d := gw.registry.get(i)) and d.last_loc for i in SPOTS):
            await asyncio.sleep(0.02)
        for i in range(n + 2):  # two warm-up rounds
            before = set(gw.linkage.store.active)
            t0 = time.perf_counter()
            sims["sen-ferry"].node.emit_event("presence", "general")
            inc = None
            while inc is None or inc.state != "warned":
                await asyncio.sleep(0.001)
                new = set(gw.linkage.store.active) - before
                inc = gw.linkage.store.active[new.pop()] if new else None
            t_warn = time.perf_counter() - t0
            await gw.handle_op("op-1", "incident", {"action": "close", "incident": inc.id})
            await asyncio.sleep(0.25)  # the play finishes (200 ms of audio at speed 20)
            t0 = time.perf_counter()
            r = await gw.handle_op("op-1", "broadcast", {"to": "spk-ferry", "clip": "nofish", "repeat": 1,
                                                         "priority": 2, "queue": False, "wait": "accepted",
                                                         "wait_s": 10})
            t_base = time.perf_counter() - t0
            assert r["code"] == "ok", r
            await asyncio.sleep(0.25)
            if i >= 2:
                warn.append(t_warn * 1000)
                base.append(t_base * 1000)
        for s in sims.values():
            await s.stop()
        gw.stop()
        await serve
    ks.close()
    res: dict[str, object] = {"bench": "linkage_warning", "detections": n, "python": platform.python_version()}
    for name, xs in (("warn", warn), ("baseline", base)):
        res[f"{name}_p50_ms"] = round(statistics.median(xs), 2)
        res[f"{name}_p99_ms"] = round(pct(xs, 99), 2)
    res["p50_ratio"] = round(float(res["warn_p50_ms"]) / float(res["baseline_p50_ms"]), 2)  # type: ignore[arg-type]
    res["p99_ratio"] = round(float(res["warn_p99_ms"]) / float(res["baseline_p99_ms"]), 2)  # type: ignore[arg-type]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--detections", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "linkage_warning.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Mosquitto(tmp / "broker").start()
        try:
            res = asyncio.run(run(args.detections, tmp, broker.url, broker.host, broker.port))
        finally:
            broker.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"detection -> warned p50 {res['warn_p50_ms']} ms, p99 {res['warn_p99_ms']} ms; operator broadcast "
          f"(accepted) p50 {res['baseline_p50_ms']} ms, p99 {res['baseline_p99_ms']} ms")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
