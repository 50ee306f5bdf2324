"""`lookout` command line: one entry point for the admin, the operator and the installer.

Each area registers its own subcommands from a module of its own (``register(subparsers)`` adds parsers whose
``func(args) -> int`` runs the command), so this file only assembles them. Exit codes: 0 ok, 1 the operation
failed (device rejected, timeout), 2 bad usage or configuration, 3 target offline and the command was refused.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lookout import __version__
from lookout.gateway.cli.common import EXIT_OK

# modules that contribute subcommands; a missing one is skipped so partial installs still run
AREAS = (
    "lookout.gateway.cli.serve",  # gateway (the service itself)
    "lookout.gateway.cli.operator",  # devices, watch, broadcast, stop, command, locate, journal
    "lookout.gateway.cli.clips",  # clips list / upload / evidence
    "lookout.gateway.cli.security",  # provision, broker-config, pki
    "lookout.gateway.cli.firmware",  # firmware build / flash
    "lookout.gateway.cli.demo",  # demo
    "lookout.gateway.cli.rotation",  # rotate-key
    "lookout.gateway.cli.incidents",  # incidents, incident show/ack/dispatch/close, coverage
    "lookout.gateway.cli.sim",  # sim node (and other simulated hardware: simulators/sim_<kind>.py)
    "lookout.gateway.cli.drone",  # drone goto / orbit / rtl / land / photo / mission / list
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookout", description="Lookout: reservoir nodes, gateway and operator tools")
    p.add_argument("--version", action="version", version="lookout " + __version__)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name in AREAS:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_OK
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
