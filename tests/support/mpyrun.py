"""Run Python code under the real MicroPython runtime (WebAssembly port under Node) from CPython tests/benches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HARNESS = ROOT / "tests" / "mpy"
RUNNER = HARNESS / "runner.mjs"


class MicroPythonUnavailable(RuntimeError):
    pass


def ensure_runtime() -> Path:
    """Install the npm MicroPython package on first use (scripts/test does it up front too)."""
    pkg = HARNESS / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
    if pkg.exists():
        return pkg
    npm = shutil.which("npm")
    if npm is None:
        raise MicroPythonUnavailable("npm is not on PATH; run scripts/test, which installs the MicroPython runtime")
    subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=HARNESS, check=True, capture_output=True)
    return pkg


def run_micropython(modules: list[str] = (), code: list[str] = (), timeout: float = 120,
                    lib_dir: str | None = None) -> dict:
    """Run test modules (paths relative to the repo) and/or code snippets; returns the runner's result dict.

    ``lib_dir`` replaces the sources in /lib with a prepared tree (e.g. .mpy files, as flashed on a node)."""
    ensure_runtime()
    node = shutil.which("node")
    if node is None:
        raise MicroPythonUnavailable("node is not on PATH")
    cmd = [node, str(RUNNER), "--root", str(ROOT)]
    for m in modules:
        cmd += ["--module", m]
    for c in code:
        cmd += ["--code", c]
    if lib_dir is not None:
        cmd += ["--lib", str(lib_dir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ})
    result = None
    lines = []
    for line in proc.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            result = json.loads(line[len("@@RESULT@@"):])
        elif line.startswith("@@ERROR@@"):
            raise RuntimeError("MicroPython runner failed: %s\n%s" % (line, "\n".join(lines)))
        else:
            lines.append(line)
    if result is None:
        raise RuntimeError("no result from MicroPython runner (rc=%s)\nstdout:\n%s\nstderr:\n%s"
                           % (proc.returncode, proc.stdout, proc.stderr))
    result["output"] = lines
    return result
