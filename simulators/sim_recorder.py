"""``lookout sim recorder``: one or several simulated body-worn recorders on pseudo-terminals.

Each recorder gets a device link (``--dev-dir``/``<id>``, a symlink to its pty, like udev's
``/dev/serial/by-id`` links) that a gateway configured with ``[recorders] devices = ["<dev-dir>/*"]`` picks up
by hot-plug. The line is paced at ``--baud`` with injectable faults (``--ber``, ``--drop``, ``--latency-ms``), and
``--pull-after``/``--pull-for`` pull the cable once. Each ``--key FILE`` is what ``lookout provision recorder
--out FILE`` writes: the key is loaded into the recorder, as on a real one (a simulator never reads the gateway's
key store). Heavy imports happen in ``run()``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path

HELP = "simulated body-worn recorders on pseudo-terminals (paced line, injectable noise and cable pulls)"


def _keys(files: list[str]) -> dict[str, bytes]:
    """recorder id -> key, from ``lookout provision recorder --out`` files."""
    if not files:
        raise ValueError("give each recorder's key: --key FILE (the JSON of `lookout provision recorder --out`)")
    from lookout.simulators.keyfile import read_keys

    return read_keys(files, "recorder", lambda d: str(d["id"]))


async def _run(args: argparse.Namespace, keys: dict[str, bytes]) -> int:
    from lookout.simulators.recorder import LineConfig, SimRecorder

    line = LineConfig(baud=args.baud, ber=args.ber, drop=args.drop, latency_ms=args.latency_ms, seed=args.seed)
    dev_dir = Path(args.dev_dir)
    root = Path(args.state_dir)
    sims = []
    for n, (rid, key) in enumerate(sorted(keys.items())):
        officer = args.officer if len(keys) == 1 else (f"{args.officer}-{n + 1}" if args.officer else None)
        s = SimRecorder(rid, key, root / rid, dev_dir / rid, line, officer=officer, hb_s=args.hb_s,
                        loc_s=args.loc_s)
        for _ in range(args.clips):
            s.record_clip(args.clip_size, duration_s=max(1, args.clip_size // 500_000))
        sims.append(s)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    for s in sims:
        await s.start()
        print(f"{s.id}: {s.cable.path} -> {s.cable.slave_name} ({args.baud} baud, ber {args.ber}, "
              f"drop {args.drop}, latency {args.latency_ms} ms)", flush=True)
    print(f'gateway.toml: [recorders] devices = ["{dev_dir}/*"]', flush=True)
    t0 = time.monotonic()
    pulled = False
    try:
        while not stop.is_set():
            await asyncio.sleep(0.2)
            t = time.monotonic() - t0
            if args.pull_after is not None and not pulled and t >= args.pull_after:
                for s in sims:
                    s.unplug()
                pulled = True
                print(f"{t:.1f}s: cable pulled", flush=True)
            if pulled and args.pull_after is not None and t >= args.pull_after + args.pull_for and \
                    not sims[0].cable.plugged:
                for s in sims:
                    s.plug()
                print(f"{t:.1f}s: cable plugged back", flush=True)
            if args.duration and t >= args.duration:
                break
    finally:
        for s in sims:
            up = s.uploads
            print(f"{s.id}: {len(up)} upload(s) finished, session {s.stats()['session']}", flush=True)
            await s.stop()
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", action="append", default=[], metavar="FILE",
                   help="a recorder's key: the JSON of `lookout provision recorder --out` (repeatable); "
                        "one recorder per file, its id from the file")
    p.add_argument("--dev-dir", default="/tmp/lookout-recorders", help="where the device links appear")
    p.add_argument("--state-dir", default="/tmp/lookout-recorders-state", help="the recorders' flash (clips)")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--ber", type=float, default=0.0, help="bit error rate on data bits, e.g. 1e-5")
    p.add_argument("--drop", type=float, default=0.0, help="probability a byte is lost")
    p.add_argument("--latency-ms", type=float, default=0.0, help="one-way delay (a radio modem: 20-50)")
    p.add_argument("--seed", type=int, help="fault pattern")
    p.add_argument("--officer", help="officer id signed in on the recorder")
    p.add_argument("--clips", type=int, default=1, help="recordings waiting for upload at start")
    p.add_argument("--clip-size", type=int, default=1_000_000, help="bytes per recording")
    p.add_argument("--hb-s", type=int, default=30, help="heartbeat period (a body-cam: 30 s)")
    p.add_argument("--loc-s", type=int, default=5, help="GPS fix period (GB/T 28181 default 5 s)")
    p.add_argument("--pull-after", type=float, help="pull the cable after this many seconds")
    p.add_argument("--pull-for", type=float, default=5.0, help="... and plug it back after this many")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")



def run(args: argparse.Namespace) -> int:
    try:
        keys = _keys(args.key)
    except ValueError as e:
        print(f"lookout sim recorder: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args, keys))
    except KeyboardInterrupt:
        return 0
