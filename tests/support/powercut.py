"""A node's power cut at a chosen write: run the REAL firmware through one change and SIGKILL this process there.

``python powercut.py ROOT SCENARIO KILL_AT [HALF]`` boots ``lookout_node.node.Node`` on the host hardware layer from
``ROOT`` (its flash), then counts every write to flash from that moment: each ``open`` for writing, each
``write`` on such a file, each ``rename``, ``remove`` and ``mkdir``. At write number ``KILL_AT`` the process kills
itself with SIGKILL before doing it (with ``HALF``, a ``write`` first writes half its bytes and flushes them: a torn
write). ``KILL_AT`` 0 counts only and prints the total as JSON on the last line. ``python powercut.py ROOT
SCENARIO every OUT`` does it for every write (and every torn write), each on a copy of ROOT under OUT, in forked
children of one process (a process each, killed each; forking after the imports keeps a run to milliseconds).

Scenarios (the change arrives as a signed command, through ``CommandProcessor.receive``, as from the broker):
- ``clip``: ``fetch_clip`` of a new ``nofish`` clip, its chunks fed as the gateway's ClipSender makes them;
- ``config``: ``set_config`` of a connection key (the broker port), which puts the new config on trial;
- ``config-live``: ``set_config`` of the volume and heartbeat period, applied live.

The driver needs no broker: the node's uplink is absent, so results wait in its outbox (which is flash, and
counted). ``new_clip(n)`` and ``command(...)`` are shared with the test that runs it.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
import os
import signal
import struct
import sys
import time

from lookout.tools import firmware_host

firmware_host.install()

from lookout_node import hal_host  # noqa: E402
from lookout_node.node import Node  # noqa: E402
from protocols import cliptransfer, messages, signing  # noqa: E402

TID = 4242
CHUNK = 1024


def new_clip(ms: int = 300) -> bytes:
    """A WAV unlike ``simulators.node.wav_bytes``: a square wave, so old and new clips differ in every block."""
    n = 8000 * ms // 1000
    data = b"".join(struct.pack("<h", 8000 if (i // 40) % 2 else -8000) for i in range(n))
    return (b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000,
            16000, 2, 16) + b"data" + struct.pack("<I", len(data)) + data)


def command(key: bytes, device: str, cid: str, ctr: int, name: str, args: dict) -> bytes:
    now = int(time.time() * 1000)
    m = messages.command(cid, device, name, args, now, now + 600_000, 1, ctr)
    signing.sign(key, "cmd", m)
    return messages.encode("cmd", m)


class Cut:
    """Counts flash writes; SIGKILL at the chosen one."""

    def __init__(self, kill_at: int, half: bool):
        self.n = 0
        self.kill_at = kill_at
        self.half = half
        self.kinds: list[str] = []  # what each write was (printed when only counting)

    def step(self, kind: str, data: bytes | None = None, f=None) -> None:
        self.n += 1
        self.kinds.append(kind)
        if self.n == self.kill_at:
            if self.half and data is not None and f is not None and len(data) > 1:
                f.raw_write(data[:len(data) // 2])
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def install(cut: Cut, root: str) -> None:
    real_open, real_rename, real_remove, real_mkdir = builtins.open, os.rename, os.remove, os.mkdir

    class Counted:
        def __init__(self, f):
            self._f = f

        def raw_write(self, data):
            return self._f.write(data)

        def write(self, data):
            cut.step("write", bytes(data), self)
            return self._f.write(data)

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    def opener(path, mode="r", *a, **kw):
        if str(path).startswith(root) and any(c in mode for c in "wa+"):
            cut.step("open")
            return Counted(real_open(path, mode, *a, **kw))
        return real_open(path, mode, *a, **kw)

    def guard(real, kind):
        def op(a, *rest, **kw):
            if str(a).startswith(root):
                cut.step(kind)
            return real(a, *rest, **kw)
        return op

    builtins.open = opener
    os.rename, os.remove = guard(real_rename, "rename"), guard(real_remove, "remove")
    os.mkdir = guard(real_mkdir, "mkdir")


async def run(root: str, scenario: str, cut: Cut) -> None:
    hal = hal_host.HostHal(root)
    node = Node(hal)
    key, dev = node.key, node.id
    ctr = node.proc.last_ctr + 1
    install(cut, root)
    if scenario == "clip":
        clip = new_clip()
        args = {"clip": "nofish", "tid": TID, "size": len(clip), "chunk": CHUNK,
                "sha256": hashlib.sha256(clip).hexdigest()}
        node.proc.receive(command(key, dev, f"f{ctr}", ctr, "fetch_clip", args))
        for _ in range(500):
            if TID in node.speaker.downloads:
                break
            await asyncio.sleep(0.005)
        sender = cliptransfer.ClipSender(clip, CHUNK, "nofish", TID, "audio", "audio/wav", 0)
        for _i, payload in sender.chunks():
            node.on_message(type("M", (), {"topic": node.topic("dl", str(TID)), "payload": payload})())
            await asyncio.sleep(0)
    else:
        args = ({"patch": json.dumps({"broker": dict(node.cfg["broker"], port=node.cfg["broker"]["port"] + 1)})}
                if scenario == "config" else {"volume": 35, "hb_s": 20})
        node.proc.receive(command(key, dev, f"s{ctr}", ctr, "set_config", args))
    for _ in range(400):  # the final result is in the outbox (or the trial has begun)
        if scenario == "config" and node.store.trial is not None and hal.fs.exists("config.json") \
                and not hal.fs.exists("config.json.tmp"):
            break
        if any('"done"' in item[3] or '"failed"' in item[3] for item in node.outbox.items):
            break
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.05)


def in_child(root: str, scenario: str, kill_at: int, half: bool) -> tuple[int, list[str]]:
    """Run the scenario in a forked child (imports are done: a fork costs milliseconds, not an interpreter);
    returns the child's wait status and, when it ran to the end, the kinds of its writes."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the node that loses power
        os.close(r)
        cut = Cut(kill_at, half)
        try:
            asyncio.run(run(root, scenario, cut))
            os.write(w, json.dumps(cut.kinds).encode())
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    _pid, status = os.waitpid(pid, 0)
    return status, json.loads(out) if out else []


def every_write(base: str, scenario: str, out: str) -> list[dict]:
    """Copy ``base`` once per write of the scenario (and per torn ``write``) under ``out``, cut the power there."""
    import shutil

    ref = os.path.join(out, "ref")
    shutil.copytree(base, ref)
    status, kinds = in_child(ref, scenario, 0, False)
    assert status == 0 and kinds, (status, kinds)
    runs = []
    for k, half in [(k, False) for k in range(1, len(kinds) + 1)] + \
            [(k, True) for k, kind in enumerate(kinds, 1) if kind == "write"]:
        d = os.path.join(out, "%d%s" % (k, "h" if half else ""))
        shutil.copytree(base, d)
        status, _ = in_child(d, scenario, k, half)
        runs.append({"dir": d, "k": k, "half": half, "kind": kinds[k - 1],
                     "killed": os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL})
    return runs


def main() -> None:
    root, scenario = sys.argv[1], sys.argv[2]
    if sys.argv[3] == "every":  # ROOT SCENARIO every OUT: one power cut per write, each on its own copy
        print(json.dumps(every_write(root, scenario, sys.argv[4])))
        return
    cut = Cut(int(sys.argv[3]), len(sys.argv) > 4)
    asyncio.run(run(root, scenario, cut))
    print(json.dumps({"writes": cut.n, "kinds": cut.kinds}))


if __name__ == "__main__":
    main()
