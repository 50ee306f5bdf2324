"""The CPython side's type hints hold: mypy over the installed package's layout ([tool.mypy]).

mypy cannot follow setuptools' editable-install finder, so the test lays out ``lookout/`` as the wheel has it
(symlinks to the repository's folders, from ``[tool.setuptools.package-dir]``) and checks that tree.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_tree(dest: Path) -> Path:
    """``dest/lookout`` with each mapped part linked in, as ``pip install .`` would place it."""
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    pkg = dest / "lookout"
    pkg.mkdir(parents=True)
    for f in (ROOT / dirs["lookout"]).glob("*.py"):
        (pkg / f.name).symlink_to(f)
    for name, folder in dirs.items():
        if name != "lookout":
            (pkg / name.split(".", 1)[1]).symlink_to(ROOT / folder, target_is_directory=True)
    return dest


def test_mypy_finds_no_errors(tmp_path):
    src = package_tree(tmp_path / "src")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                           "--cache-dir", str(tmp_path / "cache"), "--no-error-summary", "--hide-error-context"],
                          cwd=src, capture_output=True, text=True, timeout=110, check=False)
    errors = [ln for ln in proc.stdout.splitlines() if ": error:" in ln]
    assert proc.returncode == 0 and not errors, "\n".join(errors) or proc.stdout + proc.stderr
    checked = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                              "--cache-dir", str(tmp_path / "cache"), "--verbose"], cwd=src, capture_output=True,
                             text=True, timeout=110, check=False).stderr
    # the tree was really checked, not skipped as "missing": the service module was among the files
    assert "lookout.gateway.service.app" in checked
