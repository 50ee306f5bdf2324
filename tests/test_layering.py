"""Who may import whom: the layering rules, written once, here (docs/ARCHITECTURE.md repeats them in prose).

Every import statement of every source file counts, at module level or deferred inside a function, because a
deferred import is still a dependency (and a deferred cycle is still a cycle). The rules:

1. ``protocols/`` imports only the standard library subset MicroPython has, and itself (relative imports);
2. ``firmware/`` imports only ``protocols`` and ``lookout_node`` (by their names on a board) and MicroPython's
   own modules;
3. ``simulators/`` never imports ``lookout.gateway``;
4. ``gateway/`` never imports the firmware (``lookout_node``, ``lookout.firmware``) or ``lookout.simulators``,
   except its ``demo`` package, which runs a simulated world beside the real gateway;
5. inside ``gateway/`` the subpackages form layers (``GATEWAY_LAYERS``): a package imports only those listed;
6. ``tools/`` (firmware build, host loader) never imports ``lookout.gateway`` or ``lookout.simulators``;
7. CPython code names the project's packages through ``lookout.`` (never a bare ``gateway``/``simulators``);
8. no import cycle between files.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# rule 1: what protocols/ may import (all present in MicroPython's port as builtins or micropython-lib)
PROTOCOLS_STDLIB = {"struct", "json", "hashlib", "binascii", "sys", "micropython"}
# rule 2: modules a board provides (MicroPython builtins, its port modules, micropython-lib) besides ours
BOARD_MODULES = {"asyncio", "binascii", "errno", "esp32", "gc", "hashlib", "io", "json", "machine", "micropython",
                 "network", "ntptime", "operator", "os", "random", "select", "socket", "ssl", "struct", "sys",
                 "time", "vfs"}
# rule 5: gateway subpackage -> the gateway subpackages it may import (itself always allowed)
GATEWAY_LAYERS = {
    "core": set(),
    "links": {"core"},
    "clips": {"core"},
    "admin": {"core", "links"},
    "service": {"core", "links", "clips", "admin"},
    "web": {"core", "links", "clips", "admin", "service"},
    "demo": {"core", "links", "clips", "admin", "service"},
    "cli": {"core", "links", "clips", "admin", "service", "demo", "web"},
}
# rule 4's exceptions besides gateway/demo: CLI modules that start simulated hardware for testing a real gateway
# (``lookout sim recorder``); they may import lookout.simulators, never the firmware
SIM_CLI = ("lookout.gateway.cli.sim_recorder",)


# ---- the import graph ------------------------------------------------------------------------------------------

def module_of(path: Path, root: Path) -> str:
    """A source file -> the module name it is imported as (installed names; device names for the firmware)."""
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    if parts[:2] == ["firmware", "lib"]:
        return ".".join(parts[2:])  # lookout_node.x: its name on a board
    if parts[0] == "firmware" and len(parts) == 3 and parts[2] == "main":
        return "firmware-main:" + parts[1]
    if parts[0] == "lookout":
        return ".".join(parts)
    return ".".join(["lookout"] + parts)


def project_sources(root: Path) -> list[Path]:
    dirs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    out: list[Path] = []
    for d in sorted(set(dirs)):
        out += [p for p in sorted((root / d).rglob("*.py")) if "__pycache__" not in p.parts]
    return out


def imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file; ``from X import Y`` yields X and X.Y (Y may be a
    submodule: the graph keeps whichever is a known module)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_pkg:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            out += [(node.lineno, f"{target}.{a.name}") for a in node.names if a.name != "*"]
    return out


def device_to_installed(name: str) -> str:
    """``protocols.x`` as the firmware names it is ``lookout.protocols.x`` in the graph."""
    return "lookout." + name if name == "protocols" or name.startswith("protocols.") else name


def graph(root: Path) -> tuple[dict[str, Path], dict[str, list[tuple[int, str, str]]]]:
    """modules -> file, and module -> [(line, imported module as written, resolved project module or "")]."""
    files = {module_of(p, root): p for p in project_sources(root)}
    edges: dict[str, list[tuple[int, str, str]]] = {}
    for mod, path in files.items():
        seen = []
        for line, name in imports_of(path, mod if not mod.startswith("firmware-main:") else "main"):
            resolved = device_to_installed(name)
            seen.append((line, name, resolved if resolved in files else ""))
        edges[mod] = seen
    return files, edges


# ---- the rules ---------------------------------------------------------------------------------------------------

def top(name: str) -> str:
    return name.split(".")[0]


def gateway_package(mod: str) -> str | None:
    parts = mod.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["lookout", "gateway"] else None


def violations(root: Path) -> list[str]:
    files, edges = graph(root)
    bad: list[str] = []
    for mod, imps in edges.items():
        where = files[mod].relative_to(root)
        for line, name, resolved in imps:
            def no(why: str) -> None:
                bad.append(f"{where}:{line}: imports {name}: {why}")  # noqa: B023 - used at once

            t = top(name)
            if mod.startswith("lookout.protocols"):
                if not (name.startswith("lookout.protocols") or t in PROTOCOLS_STDLIB):
                    no("protocols/ may import only itself and " + ", ".join(sorted(PROTOCOLS_STDLIB)))
                continue
            if mod.startswith("lookout_node") or mod.startswith("firmware-main:") \
                    or mod.startswith("lookout.firmware"):
                if mod.startswith("lookout.firmware"):  # firmware/__init__ and manifest: no imports at all
                    no("firmware/ package files hold no code that imports")
                elif not (t in ("protocols", "lookout_node") or t in BOARD_MODULES):
                    no("firmware/ may import only protocols, lookout_node and the board's modules")
                continue
            if t in ("gateway", "simulators", "tools", "protocols", "firmware") and mod.startswith("lookout."):
                if not (t == "protocols" and mod == "lookout.tools.firmware_host"):
                    no("CPython code names the project's packages as lookout.<part>")
                continue
            if mod.startswith("lookout.simulators") and name.startswith("lookout.gateway"):
                no("simulators/ never import the gateway")
            if mod.startswith("lookout.tools") and (name.startswith("lookout.gateway")
                                                     or name.startswith("lookout.simulators")):
                no("tools/ never import the gateway or the simulators")
            pkg = gateway_package(mod)
            if mod.startswith("lookout.gateway"):
                firmware = t == "lookout_node" or name.startswith("lookout.firmware")
                sims = name.startswith("lookout.simulators")
                if (firmware or sims) and pkg != "demo" and not (sims and mod in SIM_CLI):
                    no("only gateway/demo (and the sim CLI modules, SIM_CLI) may run firmware or simulators")
                other = gateway_package(name)
                if pkg and other and other != pkg and other not in GATEWAY_LAYERS.get(pkg, set()):
                    no(f"gateway/{pkg} may import only " + (", ".join(sorted(GATEWAY_LAYERS.get(pkg, ())))
                                                            or "nothing else in gateway/"))
                if pkg is None and other is not None and mod != "lookout.gateway":
                    no("gateway/ keeps its code in subpackages")
    seen: set[str] = set()  # one report per line: "from X import Y" yields X and X.Y
    once = [b for b in bad if not (b.split(": imports ")[0] in seen or seen.add(b.split(": imports ")[0]))]
    return once + cycles({m: p.relative_to(root) for m, p in files.items()}, edges)


def cycles(files: dict[str, Path], edges: dict[str, list[tuple[int, str, str]]]) -> list[str]:
    """Tarjan's strongly connected components over file-to-file edges; each component of >1 file is a cycle."""
    adj = {m: sorted({r for _, _, r in imps if r and r != m}) for m, imps in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[str] = []
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append("import cycle: " + " <-> ".join(sorted(str(files[c]) for c in comp)))

    for m in sorted(adj):
        if m not in index:
            visit(m)
    return out


# ---- tests -------------------------------------------------------------------------------------------------------

def test_the_tree_keeps_the_layering_rules():
    bad = violations(ROOT)
    assert not bad, "\n".join(bad)


def test_every_part_of_the_tree_is_in_the_graph():
    """The checker sees every package the distribution ships (a new top-level folder would be unchecked)."""
    files, edges = graph(ROOT)
    tops = {top(m) if not m.startswith("lookout.") else m.split(".")[1] for m in files if "." in m or m == "lookout"}
    assert {"protocols", "gateway", "simulators", "tools", "lookout_node"} <= tops
    assert sum(len(e) for e in edges.values()) > 300  # imports were really read


def _tree(tmp: Path, files: dict[str, str]) -> Path:
    (tmp / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    for d in ("lookout", "protocols", "firmware", "gateway", "simulators", "tools"):
        (tmp / d).mkdir()
        (tmp / d / "__init__.py").write_text("")
    for rel, text in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp


def test_the_checker_catches_each_kind_of_violation(tmp_path):
    """The rules bite: one planted violation of each kind is reported, with file and line."""
    tree = _tree(tmp_path, {
        "protocols/codec.py": "import socket\nfrom . import errors\n",
        "protocols/errors.py": "",
        "firmware/lib/lookout_node/app.py": "import paho.mqtt\nfrom protocols import codec\n",
        "simulators/world.py": "from lookout.gateway.core import registry\n",
        "gateway/core/__init__.py": "",
        "gateway/core/registry.py": "from lookout.gateway.links import mqtt\n",
        "gateway/links/__init__.py": "",
        "gateway/links/mqtt.py": "from lookout.simulators import world\nimport gateway.core.registry\n",
        "tools/build.py": "from lookout.gateway.core import registry\n",
        "gateway/clips/__init__.py": "",
        "gateway/clips/a.py": "from lookout.gateway.clips import b\n",
        "gateway/clips/b.py": "def f():\n    from lookout.gateway.clips import a\n",
    })
    bad = "\n".join(violations(tree))
    for expected in ("protocols/codec.py:1: imports socket",
                     "firmware/lib/lookout_node/app.py:1: imports paho.mqtt",
                     "simulators/world.py:1: imports lookout.gateway.core",
                     "gateway/core/registry.py:1: imports lookout.gateway.links: gateway/core may import only nothing",
                     "gateway/links/mqtt.py:1: imports lookout.simulators",
                     "gateway/links/mqtt.py:2: imports gateway.core.registry: CPython code names",
                     "tools/build.py:1: imports lookout.gateway.core",
                     "import cycle: gateway/clips/a.py <-> gateway/clips/b.py"):
        assert expected in bad, f"{expected!r} not reported in:\n{bad}"
    assert "from . import errors" not in bad and "protocols/codec.py:2" not in bad  # allowed ones pass
