"""Fault injection (issue 17): the gateway's data directory fills up, then turns read-only, under a running gateway
with real firmware nodes; and a gateway asked to start on a read-only one.

The data directory is a real file system of its own: a small tmpfs the test mounts (it runs as root, as CI does),
filled with a file until the kernel says ENOSPC. Read-only: Linux refuses to remount a file system read-only while
files on it are open for writing (the gateway's SQLite files are), so the running gateway gets a read-only bind
mount over its data directory instead (new files fail with EROFS, statvfs says read-only; files already open
still write), and the start-up case a tmpfs mounted read-only. What must hold
(docs/RELIABILITY.md, "Disk full, read-only data directory"):
- new work is refused with a clear error (``busy``, naming the directory and the cause) and the gateway keeps
  serving reads and the nodes' traffic;
- nothing already accepted is lost: a command queued before is delivered after, every event that arrived
  meanwhile is journaled once the disk takes writes again, and the chain verifies;
- it recovers by itself when space returns (or the mount is writable again), and says so in the journal.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest
from aiowait import until
from gwserve import serving

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.cli.main import main as lookout
from lookout.gateway.core.config import from_dict
from lookout.gateway.service.app import Gateway
from lookout.simulators.node import SimNode, make_config

pytestmark = [pytest.mark.faults, pytest.mark.mosquitto]

SITE = "dongshan"
BROADCAST = {"to": "spk-01", "clip": "nofish", "repeat": 1, "priority": 1, "queue": True, "wait": "final",
             "wait_s": 8}


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "6m"):
    """A real, small file system at ``path`` for the length of the block (needs root, which CI has)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def bind_read_only(path: Path) -> None:
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)


def fill(path: Path) -> int:
    """Write ``path`` until the file system is full; returns the bytes written."""
    n = 0
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
                n += 65536
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    return n


def alerts(gw) -> set[str]:
    import json

    return {json.loads(e.detail)["id"] for e in gw.journal.entries(kind="alert")}


def test_disk_full_then_read_only_refuses_new_work_loses_nothing_and_recovers(mosquitto, tmp_path):
    with tmpfs(tmp_path / "mnt") as mnt:
        async def main():
            data = mnt / "data"
            cfg = from_dict({"gateway": {"id": "gw-1", "site": SITE, "data_dir": str(data), "min_free_mb": 1},
                             "broker": {"url": mosquitto.url}, "commands": {"retry_s": 1, "wait_s": 8}})
            data.mkdir()
            ks = KeyStore(data / "keystore.db")
            nodes = {}
            for dev in ("spk-01", "spk-02"):
                ident = ks.ensure(dev, SITE, "speaker")
                nodes[dev] = SimNode(tmp_path / dev, make_config(
                    dev, SITE, "speaker", binascii.hexlify(ident.hmac_key).decode(), mosquitto.host,
                    mosquitto.port, hb_s=5, gateway="gw-1"), speed=20)
                nodes[dev].add_clip("nofish", ms=200)
            spk, later = nodes["spk-01"], nodes["spk-02"]
            emitted: set[str] = set()
            try:
                async with serving(Gateway(cfg, keystore=ks)) as gw:
                    await spk.start()
                    await until(lambda: (d := gw.registry.get("spk-01")) and d.state == "online", 10, "online")
                    assert (await gw.handle_op("op-1", "broadcast", BROADCAST, "r0"))["code"] == "ok"
                    queued = await gw.handle_op("op-1", "broadcast", {**BROADCAST, "to": "spk-02"}, "r1")
                    assert queued["code"] == "queued"  # accepted: spk-02 is off; it must survive what follows

                    for fault in ("full", "read-only"):
                        if fault == "full":
                            fill(mnt / "filler")
                        else:
                            bind_read_only(data)
                        await until(lambda: gw.storage.problem is not None, 5, f"{fault} noticed")
                        r = await gw.handle_op("op-1", "broadcast", BROADCAST, "r2")
                        assert r["code"] == "busy", r
                        why = "no space left" if fault == "full" else "read-only"
                        assert str(data) in r["error"] and why in r["error"], r
                        status = await gw.handle_op("op-1", "status", {}, "s1")
                        assert status["code"] == "ok" and why in status["data"]["storage"]["problem"]
                        assert (await gw.handle_op("op-1", "devices", {}, "d1"))["code"] == "ok"  # reads work
                        for _ in range(3):  # the node's events keep coming, and are handled
                            emitted.add(spk.node.emit_event("presence", "general")["id"])
                            await asyncio.sleep(0.3)
                        await until(lambda: len(spk.node.outbox) == 0, 5, "events delivered")
                        await asyncio.sleep(1.5)  # the stores keep failing for a while: nothing gives up
                        assert gw.storage.problem is not None
                        assert gw.journal.pending > 0 or fault == "read-only"  # (open files still write there)

                        if fault == "full":
                            (mnt / "filler").unlink()
                        else:
                            subprocess.run(["umount", str(data)], check=True)
                        await until(lambda: gw.storage.problem is None, 8, f"recovery after {fault}")
                        await until(lambda: gw.journal.pending == 0, 5, "the waiting journal rows written")
                        assert emitted <= alerts(gw), emitted - alerts(gw)
                        r = await gw.handle_op("op-1", "broadcast", BROADCAST, "r3")
                        assert r["code"] == "ok", r  # new work again

                    await later.start()  # the command queued before both faults is delivered now
                    [c] = await gw.commands.wait([queued["data"]["results"][0]["id"]], "final", 10)
                    assert c.status == "done" and later.plays
                    system = [e.summary for e in gw.journal.entries(kind="system")]
                    assert sum("writable again" in s for s in system) == 2
                    assert any("no space left" in s for s in system) and any("read-only" in s for s in system)
                    refused = [e for e in gw.journal.entries(kind="operator") if "refused" in e.summary]
                    assert len(refused) == 2
                    assert gw.journal.verify().ok
                    for n in nodes.values():
                        await n.stop()
            finally:
                for n in nodes.values():
                    if n._task is not None and not n._task.done():
                        await n.kill()
                ks.close()

        asyncio.run(asyncio.wait_for(main(), 90))


def test_gateway_refuses_to_start_on_a_read_only_data_directory(mosquitto, tmp_path, capsys):
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        (mnt / "data").mkdir()
        conf = tmp_path / "gateway.toml"
        conf.write_text(f'[gateway]\nid = "gw-1"\nsite = "{SITE}"\ndata_dir = "{mnt / "data"}"\n'
                        f'[broker]\nurl = "{mosquitto.url}"\n')
        remount(mnt, "ro")
        assert lookout(["gateway", "--config", str(conf)]) == 1
        err = capsys.readouterr().err
        assert f"data directory {mnt / 'data'}: the file system is read-only" in err, err
        assert "Traceback" not in err
