"""Every dual-runtime test module passes under real MicroPython with exactly the tests CPython collects.

Modules under tests/protocols/ and tests/firmware_unit/ (except the hypothesis ``*_props.py`` ones, which need
CPython) are run by pytest on CPython as usual; this file runs the very same modules under MicroPython 1.27.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from mpyrun import ROOT, run_micropython

DUAL_DIRS = ["tests/protocols", "tests/firmware_unit"]


def dual_modules() -> list[str]:
    mods = []
    for d in DUAL_DIRS:
        for p in sorted((ROOT / d).glob("test_*.py")):
            if not p.name.endswith("_props.py"):
                mods.append(str(p.relative_to(ROOT)))
    return mods


def cpython_test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_")
    }


def test_there_are_dual_runtime_modules():
    assert len(dual_modules()) >= 1


@pytest.mark.micropython
@pytest.mark.parametrize("module", dual_modules())
def test_module_passes_under_micropython(module: str):
    result = run_micropython(modules=[module])
    assert result["implementation"] == "micropython"
    name = Path(module).stem
    expected = {name + "::" + t for t in cpython_test_names(ROOT / module)}
    failed = result["failed"]
    assert not failed, "failed under MicroPython:\n" + "\n".join(
        "%s: %s" % (f["name"], f["error"]) for f in failed) + "\n" + "\n".join(result["output"][-40:])
    assert set(result["passed"]) == expected
