"""Long run: the frozen speaker on a capped heap through 10,000 signed broadcasts and 100 broker restarts.

    python bench/firmware_longrun.py [--heap-kb 64] [--broadcasts 10000] [--restarts 100]

The node runs frozen into MicroPython's 32-bit Unix port (tests/support/mpy32.py) with ``-X heapsize`` capped
at ``--heap-kb`` (the issue's target, 64 KB) against a real Mosquitto (``set_tcp_nodelay``, as a production
broker would be tuned); a paho client stands in for the gateway and signs each ``play``. After each
broadcast's final result the node answers ``gc.mem_alloc()`` after ``gc.collect()``: one heap sample per
broadcast. Every ``broadcasts / restarts`` broadcasts Mosquitto is stopped and started again on the same port;
the run goes on once the node is back (its next birth) with its own reconnect policy (backoff and jitter as
shipped).

Reports the samples' first, last and max, and the mean of the samples in the first and the last tenth after
the first 100 broadcasts (the recent-command cache fills with the first 24 commands, so earlier samples are
warm-up): ``grew_kb`` is last minus first of those means; ``heap_grew`` is ``grew_kb > 1``. A broadcast that
does not end ``done``, or a counted error, stops the run. Prints one JSON object on its last line and writes
bench/results/firmware_longrun.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

import mpy32  # noqa: E402
from broker import Mosquitto  # noqa: E402
from mpynode import MpyNode, PahoGateway  # noqa: E402

from lookout.simulators.node import make_config  # noqa: E402

KEY = bytes(range(32))
SITE = "dongshan"
DEVICE = "spk-long"
WARMUP = 100


def _kb(n: float) -> float:
    return round(n / 1024, 2)


def run(heap_kb: int, broadcasts: int, restarts: int, work: Path) -> dict:
    it = mpy32.interpreters()
    mosq = Mosquitto(work / "broker", conf_extra="set_tcp_nodelay true\n").start()
    gw = PahoGateway(mosq.host, mosq.port, SITE, KEY, client_id="gw-longrun")
    cfg = make_config(DEVICE, SITE, "speaker", KEY.hex(), mosq.host, mosq.port, hb_s=30)
    n = MpyNode(it.frozen, work / DEVICE, cfg, heap_kb=heap_kb, speed=16, log=False)
    n.add_clip("beep", bytes(3200))  # 200 ms of raw 8 kHz 16-bit audio
    every = max(1, broadcasts // restarts) if restarts else broadcasts + 1
    samples: list[int] = []
    after_restart: list[int] = []
    done = restarted = 0
    why = None
    t0 = time.monotonic()
    try:
        boot = n.start(15)
        for i in range(broadcasts):
            cid = "L%d" % i
            gw.send(DEVICE, cid, "play", {"clip": "beep"})
            fin = gw.final(cid, 30)
            if fin["status"] != "done":
                why = "broadcast %d: %s %s" % (i, fin["status"], fin.get("code"))
                break
            done += 1
            samples.append(n.heap())
            if restarts and (i + 1) % every == 0 and restarted < restarts:
                births = len([m for m in gw.of(DEVICE, "state") if m["online"]])
                mosq.restart()
                restarted += 1
                gw.wait(lambda: gw.subscribed, 30, "gateway back after restart %d" % restarted)
                gw.wait(lambda b=births: len([m for m in gw.of(DEVICE, "state") if m["online"]]) > b, 120,
                        "node back after restart %d" % restarted)
                after_restart.append(n.heap())
        st = n.ask("status")
        if st["errs"]:
            why = why or "errors counted: %d, last %s" % (st["errs"], st["err"])
    except AssertionError as e:  # a timeout or the node process died: the run failed, report how far it got
        why = str(e).splitlines()[0][:300]
        boot = n.online or {}
    finally:
        memory_error = "MemoryError" in n.output()
        n.close()
        gw.close()
        mosq.stop()
    body = samples[WARMUP:] if len(samples) > 2 * WARMUP else samples
    tenth = max(1, len(body) // 10)
    first_mean = sum(body[:tenth]) / tenth if body else 0
    last_mean = sum(body[-tenth:]) / tenth if body else 0
    return {
        "heap_cap_kb": heap_kb,
        "broadcasts_done": done,
        "broadcasts_asked": broadcasts,
        "broker_restarts": restarted,
        "heap_after_boot_kb": _kb(boot.get("boot", 0)),
        "heap_first_kb": _kb(samples[0]) if samples else None,
        "heap_last_kb": _kb(samples[-1]) if samples else None,
        "heap_max_kb": _kb(max(samples)) if samples else None,
        "heap_min_kb": _kb(min(samples)) if samples else None,
        "heap_after_restarts_first_last_max_kb": ([_kb(after_restart[0]), _kb(after_restart[-1]),
                                                   _kb(max(after_restart))] if after_restart else None),
        "first_tenth_mean_kb": _kb(first_mean),
        "last_tenth_mean_kb": _kb(last_mean),
        "grew_kb": _kb(last_mean - first_mean),
        "heap_grew": (last_mean - first_mean) > 1024,
        "memory_error": memory_error,
        "failed": why,
        "wall_s": round(time.monotonic() - t0, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heap-kb", type=int, default=64)
    ap.add_argument("--broadcasts", type=int, default=10000)
    ap.add_argument("--restarts", type=int, default=100)
    args = ap.parse_args()
    try:
        mpy32.interpreters()
    except mpy32.Mpy32Unavailable as e:
        raise SystemExit("bench needs the 32-bit Unix port: %s" % e)
    with tempfile.TemporaryDirectory() as td:
        result = run(args.heap_kb, args.broadcasts, args.restarts, Path(td))
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "firmware_longrun.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result["failed"] is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
