"""``lookout sim drone``: simulated MAVLink multicopters (simulators/drone) that a gateway or a ground station flies.

Examples::

    lookout sim drone --count 3 --link udp:127.0.0.1:14550           # to a gateway's udpin:0.0.0.0:14550
    lookout sim drone --link tcpin:127.0.0.1:5760                      # like ArduPilot SITL; port + i per drone
    lookout sim drone --link pty                                        # prints the serial device to use
    lookout sim drone --key uav-1.json --link udp:...                   # signed with a provisioned key

``--key FILE`` (repeatable) is what ``lookout provision drone --out FILE`` writes (``id``, ``sysid``, ``key``): the
drone with that system id signs with it and refuses unsigned frames, as an autopilot with MAVLink 2 signing set up
does (the key is loaded into the drone, not read from the gateway's key store); drones without a key run
unsigned. ``--loss``, ``--corrupt`` and ``--wind`` inject faults and weather. Heavy imports happen in ``run()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

HELP = "simulated MAVLink multicopters (a gateway or MAVProxy can fly them)"


def _links(spec: str, count: int) -> list[str]:
    """One link per drone: listening links get consecutive ports, ``udp:`` (to a ground station) shares one."""
    scheme, _, rest = spec.partition(":")
    if scheme in ("udpin", "tcpin") and count > 1:
        host, _, port = rest.rpartition(":")
        return [f"{scheme}:{host}:{int(port) + i}" for i in range(count)]
    if scheme in ("fd", "serial") and count > 1:
        raise ValueError(f"{scheme}: one drone per device (use --count 1)")
    return [spec] * count


def _keys(files: list[str]) -> dict[int, bytes]:
    """sysid -> signing key, from ``lookout provision drone --out`` files."""
    from lookout.simulators.keyfile import read_keys

    return read_keys(files, "drone", lambda d: int(d["sysid"]))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=1, help="how many drones (default 1)")
    p.add_argument("--sysid", type=int, default=1, help="system id of the first one (default 1)")
    p.add_argument("--link", default="udp:127.0.0.1:14550",
                   help="udp:HOST:PORT (send to a listener), udpin:HOST:PORT, tcpin:HOST:PORT, serial:DEV:BAUD, pty")
    p.add_argument("--key", action="append", default=[], metavar="FILE",
                   help="a drone's signing key (the JSON of `lookout provision drone --out`); repeatable")
    p.add_argument("--lat", type=float, default=30.25, help="home latitude, degrees (WGS-84)")
    p.add_argument("--lon", type=float, default=120.15, help="home longitude, degrees")
    p.add_argument("--pos-hz", type=float, default=10.0, help="GLOBAL_POSITION_INT rate (default 10)")
    p.add_argument("--battery", type=float, default=100.0, help="battery at start, %%")
    p.add_argument("--wind", help="N,E wind in m/s, e.g. 2,-1")
    p.add_argument("--loss", type=float, default=0.0, help="outgoing frames lost, %%")
    p.add_argument("--corrupt", type=float, default=0.0, help="outgoing frames with a flipped byte, %%")
    p.add_argument("--duration", type=float, default=0.0, help="stop after S seconds (default: until Ctrl-C)")


def run(args: argparse.Namespace) -> int:
    from lookout.simulators.drone import Config, Faults, SimDrone

    sysids = list(range(args.sysid, args.sysid + args.count))
    try:
        links = _links(args.link, args.count)
        keys = _keys(args.key)
        wind_n, wind_e = (float(x) for x in args.wind.split(",")) if args.wind else (0.0, 0.0)
    except ValueError as e:
        print(f"lookout sim drone: {e}", file=sys.stderr)
        return 2

    async def main() -> int:
        async with contextlib.AsyncExitStack() as stack:
            for i, (sysid, link) in enumerate(zip(sysids, links, strict=True)):
                cfg = Config(sysid=sysid, lat=args.lat + 0.0003 * i, lon=args.lon, pos_hz=args.pos_hz,
                             battery_pct=args.battery, wind_n=wind_n, wind_e=wind_e)
                d = await stack.enter_async_context(SimDrone(cfg, link, key=keys.get(sysid),
                                                             faults=Faults(args.loss, args.corrupt, seed=sysid)))
                where = d.link.path if d.link is not None and d.link.path else link
                print(f"drone sysid {sysid} on {where}" + (" (signed)" if sysid in keys else " (unsigned)"),
                      flush=True)
            if args.duration:
                await asyncio.sleep(args.duration)
            else:
                await asyncio.Event().wait()
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except OSError as e:
        print(f"lookout sim drone: {e}", file=sys.stderr)
        return 1
