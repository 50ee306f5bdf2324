"""How long the operator API takes to answer ``devices`` while heavy work runs, against the same answer idle.

    python bench/offloop_latency.py [--entries 200000] [--clips 40] [--requests 200] [--out bench/results/...json]

One gateway (real Mosquitto from tests/support/broker.py) with a journal of ``--entries`` rows and ``--clips``
WAVs of 1 MiB. ``devices`` requests (``Gateway.handle_op``), one every 5 ms, are timed from when each was due (so a loop held
up by blocking work shows as latency):

- ``idle``: nothing else running (the baseline, measured in the same run);
- ``verify``: while ``journal verify`` walks and hashes the whole chain (a worker thread since issue 10);
- ``clips_cold``: while ``clips list`` reads and hashes every WAV for the first time (worker thread);
- ``page``: while journal pages of 5,000 rows are read one after another (cursor paging, worker thread).

Printed per case: p50/p99/max in ms and ``*_p99_ratio`` = case p99 / idle p99 (the event loop shares the GIL with
the worker, so some lag remains; before, each case held the loop for its whole duration). The last line is a
JSON object, also written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import struct
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


def wav(n: int, seed: int) -> bytes:
    body = bytes((seed + i) & 0xFF for i in range(256)) * (n // 256)
    return (b"RIFF" + struct.pack("<I", 36 + len(body)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000,
                                                                                      8000, 1, 8)
            + b"data" + struct.pack("<I", len(body)) + body)


async def timed_devices(gw: Gateway, n: int, busy: asyncio.Task | None = None) -> list[float]:
    out = []
    for i in range(n):
        if busy is not None and busy.done():
            break
        t0 = time.perf_counter()
        await asyncio.sleep(0.005)  # a request "arrives" 5 ms from now; a blocked loop serves it late
        await gw.handle_op("op-1", "devices", {}, f"d{i}")
        out.append(max(0.0, (time.perf_counter() - t0) * 1000 - 5.0))
    return out


def stats(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    return {"n": len(xs), "p50_ms": round(statistics.median(xs), 3),
            "p99_ms": round(xs[min(len(xs) - 1, int(len(xs) * 0.99))], 3), "max_ms": round(xs[-1], 3)}


async def bench(args: argparse.Namespace, tmp: Path) -> dict:
    broker = Mosquitto(tmp / "broker").start()
    try:
        cfg = from_dict({"gateway": {"id": "gw-1", "site": "dongshan", "data_dir": str(tmp / "data")},
                         "broker": {"url": f"mqtt://{broker.host}:{broker.port}"}})
        ks = KeyStore(tmp / "ks.db")
        for i in range(50):
            ks.ensure(f"spk-{i:02d}", "dongshan", "speaker")
        async with Gateway(cfg, keystore=ks) as gw:
            for i in range(50):
                gw.registry.ensure(f"spk-{i:02d}", "dongshan", "speaker")
            for i in range(args.entries):
                gw.journal.append("state", f"entry {i}", device=f"spk-{i % 50:02d}", detail={"i": i})
            gw.journal.flush()
            for i in range(args.clips):
                gw.clipdist.audio.put(f"clip{i:03d}", wav(1 << 20, i))
            gw.clipdist.audio._facts.clear()  # cold: as after a restart
            res: dict = {"entries": args.entries, "clips": args.clips, "python": platform.python_version()}
            res["idle"] = stats(await timed_devices(gw, args.requests))

            async def run_case(name: str, coro) -> None:
                task = asyncio.create_task(coro)
                await asyncio.sleep(0.01)
                t0 = time.perf_counter()
                lat = await timed_devices(gw, args.requests, task)
                await task
                res[name] = {**stats(lat or [0.0]), "work_s": round(time.perf_counter() - t0, 3)}
                res[f"{name}_p99_ratio"] = round(res[name]["p99_ms"] / res["idle"]["p99_ms"], 2)

            await run_case("verify", gw.handle_op("op-1", "journal", {"verify": True}, "v"))
            await run_case("clips_cold", gw.handle_op("op-1", "clips", {"action": "list"}, "c"))

            async def pages() -> None:
                after = 0
                while True:
                    r = await gw.handle_op("op-1", "journal", {"verify": False, "after": after, "limit": 5000}, "p")
                    if not r["data"]["more"]:
                        return
                    after = r["data"]["entries"][-1]["seq"]

            await run_case("page", pages())
        ks.close()
        return res
    finally:
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "offloop_latency.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        res = asyncio.run(bench(args, Path(d)))
    for k in ("idle", "verify", "clips_cold", "page"):
        print(f"{k:>10}: {res[k]}" + (f"  p99 ratio {res[k + '_p99_ratio']}" if k != "idle" else ""))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
