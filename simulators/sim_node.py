"""``lookout sim node``: the real node firmware on the host hardware layer, against your own broker and gateway.

Theory of operation: each ``--config`` is a ``config.json`` written by ``lookout provision device`` (validated
with the firmware's own validator, exactly as ``lookout firmware flash`` does). Each node gets a *flash*
directory (``--state``, default ``sim-flash/`` next to its config) that keeps what a board's flash keeps between
runs: boot counter, command counter, outbox, clips. config.json and the files it names (pinned CA, client
certificate) are copied into it on every start, so a re-provisioned node takes effect on the next run. A speaker
stores the clip ``nofish`` (a 2 s tone) unless ``--clip`` gives clips. ``SimNode`` then runs ``Node`` over
``SimHal`` with the firmware's own MQTT timings; a reboot command reboots it like a board.

``--count N`` runs N nodes in one process: ``--config`` then names one config per node with ``{n}`` (1..N, Python
format, e.g. ``spk-{n:02d}/config.json``), since every node needs its own identity and broker login.

One status line per node change on stdout (online, offline with the reason, each playback, each detection).
SIGINT/SIGTERM stop every node cleanly (each publishes its own death). Exit 0 after a clean stop, 2 for a config
that would not boot, 1 when a node's firmware stopped on its own (a TLS pin mismatch, for one).

Heavy imports (the firmware) happen in ``run()``: ``lookout --help`` must not load a node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

HELP = "run the real node firmware for provisioned config.json files (host hardware layer)"
DESCRIPTION = """Run the real node firmware (speaker, sensor, camera) on this machine's simulated hardware, against
your own broker and gateway, for nodes provisioned with `lookout provision device`.

Each node keeps a flash directory (--state; default sim-flash/ next to its config.json) with what a board keeps:
boot counter, command counter, outbox, clips. config.json and its CA / client certificate are copied in on each
start. A speaker stores the clip 'nofish' (a 2 s tone) unless --clip gives clips. One line per change on stdout
(online, offline and why, each playback). Ctrl-C stops every node cleanly (each publishes its death).

  lookout sim node --config ./spk-01/config.json
  lookout sim node --config 'provisioned/spk-{n:02d}/config.json' --count 20

Exit 0 after a clean stop, 2 for a config that would not boot, 1 if a node's firmware stopped by itself."""
DEFAULT_CLIP = "nofish"
DEFAULT_CLIP_MS = 2000
STATUS_PERIOD_S = 0.5  # how often the status lines look at the nodes (display only)


class SimConfigError(ValueError):
    """A node config that would not boot; the message names the file and the key."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="PATH",
                   help="config.json from `lookout provision device`; with --count, a pattern with {n}")
    p.add_argument("--count", type=int, default=1, metavar="N",
                   help="run N nodes, --config formatted with n = 1..N (e.g. spk-{n:02d}/config.json)")
    p.add_argument("--state", metavar="DIR",
                   help="flash directory (default sim-flash/ next to each config; with --count, DIR/<id>)")
    p.add_argument("--clip", action="append", default=[], metavar="ID=FILE.wav",
                   help="clips a speaker stores (repeat; default: a 2 s tone as 'nofish')")
    p.add_argument("--pir-every", type=float, metavar="S", help="sensor/camera: a PIR detection every S seconds")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the firmware's own log lines")


def config_paths(pattern: str, count: int) -> list[Path]:
    """The config file of each node: the path itself, or ``pattern`` formatted for n = 1..count."""
    if count < 1:
        raise SimConfigError(f"--count {count}: expected at least 1")
    if count == 1 and "{n" not in pattern:
        return [Path(pattern)]
    if "{n" not in pattern:
        raise SimConfigError(f"--count {count} needs one config per node: put {{n}} in --config "
                             "(e.g. provisioned/spk-{n:02d}/config.json)")
    try:
        paths = [Path(pattern.format(n=n)) for n in range(1, count + 1)]
    except (KeyError, IndexError, ValueError) as e:
        raise SimConfigError(f"--config {pattern!r}: {e}") from None
    if len(set(paths)) != len(paths):
        raise SimConfigError(f"--config {pattern!r} names the same file twice")
    return paths


def load(path: Path) -> tuple[dict[str, Any], list[tuple[Path, str]]]:
    """The checked config and the side files it names, as ``lookout firmware flash`` would put on a board."""
    from lookout.tools import firmware_build as fb

    try:
        role = json.loads(path.read_text()).get("role")
    except OSError as e:
        raise SimConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    except (ValueError, AttributeError) as e:
        raise SimConfigError(f"{path}: not a JSON object: {e}") from None
    if role not in fb.ROLES:
        raise SimConfigError(f"{path}: role: {role!r}, expected one of {', '.join(fb.ROLES)}")
    try:
        cfg = fb.load_node_config(path, role)
        return cfg, fb.config_side_files(cfg, path)
    except fb.ConfigProblem as e:
        raise SimConfigError(f"{path}: {e}") from None


def parse_clips(items: list[str]) -> list[tuple[str, Path]]:
    out = []
    for it in items:
        cid, sep, f = it.partition("=")
        if not sep or not cid or not f:
            raise SimConfigError(f"--clip {it!r}: expected ID=FILE.wav")
        if not Path(f).is_file():
            raise SimConfigError(f"--clip {it!r}: no file {f}")
        out.append((cid, Path(f)))
    return out


def prepare_flash(path: Path, side: list[tuple[Path, str]], flash: Path) -> None:
    """Copy config.json and its side files onto the node's flash (the rest of the flash stays)."""
    flash.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, flash / "config.json")
    for local, device_path in side:
        shutil.copyfile(local, flash / device_path.lstrip("/"))


def run(args: argparse.Namespace) -> int:
    try:
        paths = config_paths(args.config, args.count)
        clips = parse_clips(args.clip)
        nodes = []
        for p in paths:
            cfg, side = load(p)
            if args.state:
                flash = Path(args.state) / cfg["id"] if len(paths) > 1 else Path(args.state)
            else:
                flash = p.parent / "sim-flash"
            nodes.append((p, cfg, side, flash))
    except SimConfigError as e:
        print(f"lookout sim node: {e}", file=sys.stderr)
        return 2
    ids = [cfg["id"] for _p, cfg, _s, _f in nodes]
    if len(set(ids)) != len(ids):
        print(f"lookout sim node: the configs name the same device twice ({', '.join(ids)})", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_main(args, nodes, clips))
    except KeyboardInterrupt:
        return 0


async def _main(args: argparse.Namespace, nodes: list[tuple[Path, dict[str, Any], list, Path]],
                clips: list[tuple[str, Path]]) -> int:
    from lookout.simulators.node import SimNode, wav_bytes

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    sims: list[tuple[dict[str, Any], Any]] = []
    for path, cfg, side, flash in nodes:
        prepare_flash(path, side, flash)
        role = cfg["role"]
        log = (lambda level, text, i=cfg["id"]: print(f"{i} [{level}] {text}", flush=True)) if args.verbose \
            else None
        sim = SimNode(flash, None, pir=role in ("sensor", "camera"), camera=role == "camera", mqtt_opts={}, log=log)
        if role == "speaker":
            for cid, f in clips:
                sim.add_clip(cid, f.read_bytes())
            if not clips and not (flash / "clips" / DEFAULT_CLIP).exists():
                sim.add_clip(DEFAULT_CLIP, wav_bytes(DEFAULT_CLIP_MS))
        b = cfg["broker"]
        where = (f"coap://{cfg['coap']['host']}:{cfg['coap'].get('port', 5683)}" if cfg["transport"] == "coap"
                 else f"{'mqtts' if b['tls'] else 'mqtt'}://{b['host']}:{b['port']}")
        print(f"{cfg['id']} ({role}) -> {where}, flash {flash}", flush=True)
        sims.append((cfg, sim))
    for _cfg, sim in sims:
        await sim.start()
    status = [asyncio.create_task(_status(cfg, sim, stop), name=f"status-{cfg['id']}") for cfg, sim in sims]
    pirs = [asyncio.create_task(_pir(cfg["id"], sim, args.pir_every, stop)) for cfg, sim in sims
            if args.pir_every and cfg["role"] in ("sensor", "camera")]
    try:
        if args.duration:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.duration)
        else:
            await stop.wait()
    finally:
        stop.set()
        await asyncio.gather(*status, return_exceptions=True)  # each reports what happened up to now, then ends
        for t in pirs:
            t.cancel()
        for cfg, sim in sims:
            with contextlib.suppress(Exception):
                await sim.stop()
        await asyncio.gather(*pirs, return_exceptions=True)
    failed = [cfg["id"] for cfg, sim in sims if sim.exits and sim.exits[-1] not in ("stop", "kill")]
    return 1 if failed else 0


async def _status(cfg: dict[str, Any], sim: Any, stop: asyncio.Event) -> None:
    """Print what an installer wants to see: connected or not (and why), and what played."""
    dev = cfg["id"]
    shown: str | None = None
    plays = 0
    while True:
        task = sim._task
        if task is not None and task.done():  # the firmware stopped by itself: say why, then stop everything
            exc = None if task.cancelled() else task.exception()
            print(f"{dev} stopped: {exc or (sim.exits[-1] if sim.exits else 'exit')}", flush=True)
            stop.set()
            return
        client = sim.node.client if sim.node is not None else None
        if client is not None and client.is_connected():
            state: str | None = f"online (boot {sim.node.bdseq})"
        elif client is not None and client.last_error:
            state = f"offline: {client.last_error}"
        else:
            state = None  # still making its first attempt
        if state is not None and state != shown:
            print(f"{dev} {state}", flush=True)
            shown = state
        for p in sim.plays[plays:]:
            if p.get("t_end") is not None:
                print(f"{dev} played {p['tag']} ({p['ms']} ms{', cut' if p['cut'] else ''})", flush=True)
                plays += 1
            else:
                break
        if stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATUS_PERIOD_S)


async def _pir(dev: str, sim: Any, every: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await asyncio.sleep(every)
        sim.trigger_pir()
        print(f"{dev} PIR triggered", flush=True)
