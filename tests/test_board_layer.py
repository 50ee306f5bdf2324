"""The ESP32 board layer runs under real MicroPython (the Unix port) against stand-in peripherals."""

from __future__ import annotations

import ast
import json

from mpyrun import ROOT
from mpyunix import run_unix

MODULE = ROOT / "tests" / "board" / "esp32_layer.py"

RUNNER = r'''
import sys, json
sys.path[:0] = [%(board)r, %(lib)r, %(root)r, %(support)r]
import esp32_layer as m
passed, failed = [], []
for name in sorted(n for n in dir(m) if n.startswith("test_")):
    try:
        getattr(m, name)()
        passed.append(name)
    except Exception as e:
        sys.print_exception(e)
        failed.append("%%s: %%s: %%s" %% (name, type(e).__name__, e))
print("@@RESULT@@" + json.dumps({"passed": passed, "failed": failed}))
'''


def test_esp32_layer_under_micropython():
    tree = ast.parse(MODULE.read_text())
    expected = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
    assert len(expected) >= 5
    proc = run_unix(RUNNER % {"board": str(MODULE.parent), "lib": str(ROOT / "firmware" / "lib"),
                              "root": str(ROOT), "support": str(ROOT / "tests" / "support")})
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("@@RESULT@@")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(line[len("@@RESULT@@"):])
    assert not result["failed"], "\n".join(result["failed"]) + "\n" + proc.stdout[-3000:]
    assert set(result["passed"]) == expected
