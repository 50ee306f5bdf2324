"""Run the node firmware on CPython under the names it has on a board: ``firmware_host.install()``.

On a device ``/lib`` holds two packages, ``protocols`` and ``lookout_node``, and the firmware imports them by those
names. Installed, Lookout keeps everything under ``lookout`` (``lookout.protocols``,
``lookout.firmware/lib/lookout_node``). ``install()`` makes exactly those two device names importable, and nothing
else:

- ``lookout_node``: the directory that holds it (``firmware/lib``, which holds nothing else) goes on ``sys.path``;
- ``protocols``: a finder hands out the very module objects of ``lookout.protocols`` under the device name, so the
  firmware and the gateway in one process share one copy of each codec (one ``MessageError`` class, not two).

Nothing happens at import time; ``install()`` is idempotent. The simulators call it before they load firmware.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import lookout.firmware

FIRMWARE_DIR = Path(lookout.firmware.__file__).resolve().parent
FIRMWARE_LIB = FIRMWARE_DIR / "lib"
DEVICE_PACKAGE = "protocols"


class _DeviceNames(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``protocols`` and ``protocols.X`` resolve to ``lookout.protocols`` and ``lookout.protocols.X``."""

    def __init__(self) -> None:
        self._own_specs: dict[int, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != DEVICE_PACKAGE and not fullname.startswith(DEVICE_PACKAGE + "."):
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == DEVICE_PACKAGE)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module("lookout." + spec.name)
        self._own_specs[id(module)] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system stamped the alias spec on the shared module in between: give it its own back
        own = self._own_specs.pop(id(module), None)
        if own is not None:
            module.__spec__ = own


_finder = _DeviceNames()


def install() -> Path:
    """Make ``protocols`` and ``lookout_node`` importable as on a board; returns the firmware library directory."""
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
    lib = str(FIRMWARE_LIB)
    if lib not in sys.path:
        sys.path.insert(0, lib)
    return FIRMWARE_LIB
