"""Fuzz soak: every decoder fed many seeded mutations, on CPython and on real MicroPython.

The test suite runs tests/protocols/test_fuzz.py with a few hundred inputs per decoder; this script runs the same
module with ``--inputs`` per decoder (default 20,000) under both runtimes, and reports decoded inputs per second
on each, MicroPython's as a ratio of CPython's (the baseline measured in the same run). Prints a JSON object on its
last line and writes bench/results/fuzz_soak.json. Exit 1 if any input escapes a decoder's own error type.
Also runnable as ``pytest -m slow tests/test_soak.py``.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from mpyrun import run_micropython  # noqa: E402

MODULE = ROOT / "tests" / "protocols" / "test_fuzz.py"


def soak_module(n: int) -> Path:
    """A copy of the fuzz module with N inputs per decoder, placed beside it so imports resolve the same way."""
    text = re.sub(r"^N = \d+$", "N = %d" % n, MODULE.read_text(), flags=re.M)
    fd, name = tempfile.mkstemp(prefix="test_fuzzsoak_", suffix=".py", dir=MODULE.parent)
    Path(name).write_text(text)
    return Path(name)


def _total(lines: list[str]) -> int:
    for line in lines:
        if line.startswith("@@TOTAL@@"):
            return int(line[len("@@TOTAL@@"):])
    raise RuntimeError("the fuzz run printed no input count")


def run(n: int) -> dict:
    mod = soak_module(n)
    try:
        rel = str(mod.relative_to(ROOT))
        t0 = time.perf_counter()
        cp = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", rel, "-p",
                             "fuzz_total"], cwd=ROOT, capture_output=True, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent)})
        t_cpy = time.perf_counter() - t0
        t0 = time.perf_counter()
        mp = run_micropython(modules=[rel], code=['import fuzz\nprint("@@TOTAL@@%d" % fuzz.TOTAL[0])'],
                             timeout=3600)
        t_mpy = time.perf_counter() - t0
    finally:
        mod.unlink()
    tests = len(mp["passed"]) + len(mp["failed"])
    cp_total = _total(cp.stdout.splitlines())
    mp_total = _total(mp["output"])
    return {
        "inputs_per_decoder": n,
        "cpython_ok": cp.returncode == 0,
        "cpython_s": round(t_cpy, 2),
        "micropython_ok": not mp["failed"],
        "micropython_failed": mp["failed"],
        "micropython_s": round(t_mpy, 2),
        "tests": tests,
        "inputs_cpython": cp_total,
        "inputs_micropython": mp_total,
        "cpython_inputs_per_s": round(cp_total / t_cpy),
        "micropython_inputs_per_s": round(mp_total / t_mpy),
        "micropython_speed_ratio": round((mp_total / t_mpy) / (cp_total / t_cpy), 3),
        "cpython_tail": [ln for ln in cp.stdout.strip().splitlines() if "passed" in ln or "failed" in ln][-1:],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", type=int, default=20000)
    args = ap.parse_args(argv)
    result = run(args.inputs)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fuzz_soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0 if result["cpython_ok"] and result["micropython_ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
