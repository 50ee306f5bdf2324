"""Clip upload goodput over a paced serial line: sliding window vs stop-and-wait, clean and at BER 1e-5.

    python bench/serial_goodput.py [--quick] [--out bench/results/serial_goodput-<time>.json]

What runs: a simulated recorder (simulators/recorder.py) on a real pseudo-terminal, its line paced at the baud
rate (8N1: baud / 10 bytes/s) with a one-way latency of ``--latency-ms`` (25 ms: a radio modem, 50 ms round
trip, the classic stop-and-wait figure of about 64 %) and injected bit errors; the gateway side is the real
recorder bridge (gateway/links/recorder.py, pyserial) writing into the real evidence store (gateway/clips/store.py,
files and SQLite) on the same event loop. MQTT is left out (the bridge's publish goes nowhere): it does not carry
the clip bytes.

Measured per case: the time from the recorder's CLIP_OFFER to the gateway's ``complete`` status as the recorder
sees it, so handshake-free but with the offer round trip, every resend and the final round trip included;
``goodput = clip bytes / that time / (baud / 10)``, i.e. the fraction of the line's byte rate that became clip
bytes. Cases: 115,200 and 921,600 baud, each clean and at BER 1e-5 (both directions, every data bit), with the
protocol as shipped (64-frame window, adaptive piece length, single-bit CRC repair checked by the session tag);
and the same lines with stop-and-wait (window 1, fixed 1,012-byte blocks) as the contrast. ``sliding_vs_stop_and_wait`` is the ratio measured in the same run.
``frame_bound`` is the best the framing allows for the piece length used at the end (L / (L + 24)).
``sliding_no_repair`` repeats the noisy 921,600-baud case with the CRC repair off: the resends it saves.

Targets (issue 13): >= 0.95 clean, >= 0.90 at BER 1e-5. The last line printed is a JSON object; it is also
written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_recorder
from lookout.gateway.clips.store import ClipStore
from lookout.gateway.core.journal import Journal
from lookout.gateway.links.recorder import RecorderBridge, RecorderWatcher
from lookout.simulators.recorder import LineConfig, SimRecorder

SITE = "bench"


class Host:
    """The service side of the bridge, minus MQTT: clips go to a real evidence store."""

    site = SITE
    gateway_id = "gw-bench"

    def __init__(self, store: ClipStore, key: bytes):
        self.store, self.key = store, key

    def key_for(self, dev: str) -> bytes | None:
        return self.key if dev == "bwc-bench" else None

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        pass

    def online(self, dev: str, info: dict[str, Any], port: str) -> None:
        pass

    def offline(self, dev: str, reason: str) -> None:
        pass

    def offer(self, dev: str, payload: bytes, officer: str | None) -> dict[str, Any]:
        return self.store.recorder_offer(SITE, dev, payload, officer)

    def piece(self, dev: str, tid: int, offset: int, data: Any) -> dict[str, Any] | None:
        return self.store.recorder_piece(dev, tid, offset, data)

    def catalog(self, dev: str, clips: list[dict[str, Any]], officer: str | None) -> None:
        pass

    def security(self, dev: str | None, code: str, detail: str, port: str) -> None:
        print(f"refused: {code} {detail}", file=sys.stderr)


async def run_case(tmp: Path, baud: int, ber: float, window: int, piece: int | None, size: int,
                   latency_ms: float, seed: int, repair: bool = True) -> dict[str, Any]:
    ks = KeyStore(tmp / "ks.db")
    key = provision_recorder(ks, "bwc-bench", SITE).hmac_key
    journal = Journal(tmp / "journal.db")
    store = ClipStore(tmp / "clips", journal, ks)
    bridge = RecorderBridge(Host(store, key), baud=baud, mtu=1024, window=window, repair=repair)
    dev = tmp / "dev" / "rec"
    watcher = RecorderWatcher(bridge, [str(dev)], scan_ms=50)
    sim = SimRecorder("bwc-bench", key, tmp / "rec", dev, LineConfig(baud=baud, ber=ber, latency_ms=latency_ms,
                                                                     seed=seed),
                      hb_s=3600, loc_s=3600, piece_len=piece)
    sim.record_clip(size)
    task = asyncio.get_running_loop().create_task(watcher.run())
    t0 = time.monotonic()
    try:
        await sim.start()
        while not sim.uploads:
            if time.monotonic() - t0 > 600:
                raise TimeoutError("upload did not finish in 600 s")
            await asyncio.sleep(0.05)
        up = sim.uploads[0]
        st = sim.stats()
        s = st["session"]
        gw_port = next(iter(bridge.ports.values()), None)
        last_piece = sim.session.piece_len() if piece is None and sim.session else (piece or 0)
    finally:
        task.cancel()
        await sim.stop()
        bridge.close()
        store.close()
        journal.close()
        ks.close()
    secs = up["ms"] / 1000
    rate = baud / 10
    return {"baud": baud, "ber": ber, "window": window, "piece": piece or "adaptive", "bytes": size, "repair": repair,
            "seconds": round(secs, 3), "goodput": round(size / secs / rate, 4),
            "frame_bound": round(last_piece / (last_piece + 24), 4) if last_piece else None,
            "last_piece_len": last_piece, "frames_out": s["frames_out"], "frames_resent": s["frames_resent"],
            "losses": s["losses"], "rto_fires": s["rto"], "repaired_frames": gw_port.session.stats["corrected"]
            if gw_port and gw_port.session else None, "bits_flipped": st["line_up"]["flipped"] +
            st["line_down"]["flipped"], "resent_confirmed_bytes": up["resent_confirmed"],
            "gateway_frame_errors": gw_port.session.stats["frame_errors"] if gw_port and gw_port.session else None}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    q = args.quick
    # sizes: ~15 s of line time per sliding-window case (~5 s with --quick)
    cases = [
        ("sliding", 115200, 0.0, 64, None, 60_000 if q else 170_000),
        ("sliding", 115200, 1e-5, 64, None, 60_000 if q else 170_000),
        ("sliding", 921600, 0.0, 64, None, 450_000 if q else 1_400_000),
        ("sliding", 921600, 1e-5, 64, None, 450_000 if q else 1_400_000),
        ("stop_and_wait", 115200, 0.0, 1, 1012, 30_000 if q else 80_000),
        ("stop_and_wait", 921600, 0.0, 1, 1012, 100_000 if q else 250_000),
        ("sliding_no_repair", 921600, 1e-5, 64, None, 450_000 if q else 1_400_000),  # what the CRC repair is worth
    ]
    out = []
    for i, (mode, baud, ber, win, piece, size) in enumerate(cases):
        with tempfile.TemporaryDirectory(prefix="lookout-goodput-") as d:
            r = await run_case(Path(d), baud, ber, win, piece, size, args.latency_ms, args.seed + i,
                               repair=mode != "sliding_no_repair")
        r["mode"] = mode
        out.append(r)
        print(f"{mode:<14} {baud:>7} baud  BER {ber:<7g} {size:>9} B in {r['seconds']:>7.2f} s  "
              f"goodput {r['goodput']:.3f}  (resent {r['frames_resent']} of {r['frames_out']} frames, "
              f"piece {r['last_piece_len']})", flush=True)

    def get(mode: str, baud: int, ber: float) -> float:
        return next(r["goodput"] for r in out if r["mode"] == mode and r["baud"] == baud and r["ber"] == ber)

    summary = {}
    for baud in (115200, 921600):
        clean, noisy, sw = get("sliding", baud, 0.0), get("sliding", baud, 1e-5), get("stop_and_wait", baud, 0.0)
        summary[str(baud)] = {"clean": clean, "ber_1e-5": noisy, "stop_and_wait": sw,
                              "sliding_vs_stop_and_wait": round(clean / sw, 2),
                              "target_clean_0.95": clean >= 0.95, "target_ber_0.90": noisy >= 0.90}
    summary["921600"]["ber_1e-5_without_repair"] = get("sliding_no_repair", 921600, 1e-5)
    return {"bench": "serial_goodput", "latency_ms_one_way": args.latency_ms, "quick": q,
            "python": platform.python_version(), "machine": platform.machine(), "cases": out,
            "summary": summary, "ts": int(time.time())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller clips (~1/3 of the time)")
    p.add_argument("--latency-ms", type=float, default=25.0, help="one-way line latency (radio modem)")
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--out", help="JSON result file (default bench/results/serial_goodput-<time>.json)")
    args = p.parse_args()
    res = asyncio.run(main_async(args))
    out = Path(args.out or Path(__file__).parent / "results" / f"serial_goodput-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
