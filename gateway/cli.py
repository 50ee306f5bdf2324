"""`lookout` command line: one entry point for the admin, the operator and the installer.

Each area registers its own subcommands from a module of its own (``register(subparsers)`` adds parsers whose
``func(args) -> int`` runs the command), so this file only assembles them. Exit codes: 0 ok, 1 the operation
failed (device rejected, timeout), 2 bad usage or configuration, 3 target offline and the command was refused.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from protocols import __version__

# modules that contribute subcommands; a missing one is skipped so partial installs still run
AREAS = (
    "gateway.cli_gateway",  # gateway, demo, devices, watch, broadcast, stop, command, locate, clips, journal
    "gateway.cli_security",  # provision, broker-config, pki
    "gateway.cli_firmware",  # firmware build / flash
    "gateway.cli_demo",  # demo
    "gateway.cli_rotation",  # rotate-key
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_OFFLINE = 0, 1, 2, 3


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
