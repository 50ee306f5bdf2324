"""``lookout sim recorder``: one or several simulated body-worn recorders on pseudo-terminals.

Each recorder gets a device link (``--dev-dir``/``<id>``, a symlink to its pty, like udev's
``/dev/serial/by-id`` links) that a gateway configured with ``[recorders] devices = ["<dev-dir>/*"]`` picks up
by hot-plug. The line is paced at ``--baud`` with injectable faults (``--ber``, ``--drop``, ``--latency-ms``), and
``--pull-after``/``--pull-for`` pull the cable once. Keys come from the gateway's key store (the recorders must
be provisioned: ``lookout provision recorder --id ...``) or ``--key`` (hex, one recorder).

Registration: the ``sim`` command group lives in gateway/cli/sim.py; it calls ``register_sim(sim_subparsers)``
from here. Until then ``python -m lookout.gateway.cli.sim_recorder ...`` runs the same command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lookout.gateway.cli.common import EXIT_OK, EXIT_USAGE


def _keys(args: argparse.Namespace, ids: list[str]) -> dict[str, bytes]:
    if args.key:
        if len(ids) != 1:
            raise ValueError("--key names one recorder's key; use the key store for several")
        return {ids[0]: bytes.fromhex(args.key)}
    from lookout.gateway.admin.keystore import KeyStore

    path = Path(args.keystore or Path(args.data_dir or os.environ.get("LOOKOUT_DATA_DIR") or "/var/lib/lookout")
                / "keystore.db")
    if not path.exists():
        raise ValueError(f"no key store at {path} (--keystore / --data-dir, or --key)")
    ks = KeyStore(path)
    try:
        out = {}
        for i in ids:
            ident = ks.get(i)
            if ident is None or ident.kind != "recorder":
                raise ValueError(f"{i} is not a provisioned recorder: lookout provision recorder --id {i} --site ...")
            out[i] = bytes(ident.hmac_key)
        return out
    finally:
        ks.close()


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
    return EXIT_OK


def cmd_recorder(args: argparse.Namespace) -> int:
    ids = list(args.id or []) or [f"{args.id_prefix}{i:04d}" for i in range(1, args.count + 1)]
    try:
        keys = _keys(args, ids)
    except ValueError as e:
        print(f"lookout sim recorder: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_run(args, keys))
    except KeyboardInterrupt:
        return EXIT_OK


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", action="append", help="recorder id (repeat for several)")
    p.add_argument("--count", type=int, default=1, help="without --id: this many, <prefix>0001 ...")
    p.add_argument("--id-prefix", default="bwc-")
    p.add_argument("--key", help="the recorder's key, 64 hex digits (one recorder; else the key store)")
    p.add_argument("--keystore", help="the gateway's keystore.db (default DATA_DIR/keystore.db)")
    p.add_argument("--data-dir", help="the gateway's data_dir (env LOOKOUT_DATA_DIR)")
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
    p.set_defaults(func=cmd_recorder)


def register_sim(sim_subparsers: Any) -> None:
    """Add ``recorder`` to the ``lookout sim`` group (gateway/cli/sim.py calls this)."""
    add_arguments(sim_subparsers.add_parser("recorder", help="simulated body-worn recorders on pseudo-terminals"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lookout sim recorder", description=__doc__.splitlines()[0])
    add_arguments(p)
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["add_arguments", "cmd_recorder", "main", "register_sim"]
