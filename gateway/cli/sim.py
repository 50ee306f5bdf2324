"""``lookout sim KIND``: simulated hardware running against your own broker and gateway.

Each kind is a module ``lookout.simulators.sim_<kind>`` (``simulators/sim_<kind>.py``) offering ``HELP`` (one
line), ``add_arguments(parser)`` and ``run(args) -> int`` (the exit code), and keeping its heavy imports inside
``run`` (an optional ``DESCRIPTION`` is the ``--help`` text). This module finds them by that name, so adding
``lookout sim drone`` is adding ``simulators/sim_drone.py``: nothing here changes. The one gateway module besides ``gateway/demo`` that may import the simulators
(tests/test_layering.py).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from types import ModuleType
from typing import Any

from lookout import simulators

PREFIX = "sim_"


def kinds() -> dict[str, ModuleType]:
    """kind name -> its module, for every ``simulators/sim_<kind>.py``."""
    out: dict[str, ModuleType] = {}
    for info in sorted(pkgutil.iter_modules(simulators.__path__), key=lambda i: i.name):
        if info.name.startswith(PREFIX) and not info.ispkg:
            out[info.name[len(PREFIX):]] = importlib.import_module(f"{simulators.__name__}.{info.name}")
    return out


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("sim", help="simulated hardware against your own broker and gateway",
                              description="Simulated hardware (the real node firmware on the host hardware layer, "
                              "and more kinds as they come) against your own broker and gateway.")
    sp = p.add_subparsers(dest="sim_kind", metavar="KIND", required=True)
    for name, mod in kinds().items():
        k = sp.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(k)
        k.set_defaults(func=mod.run)
