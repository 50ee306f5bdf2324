"""Evidence store: camera snapshots from the REAL firmware land content-addressed with a custody entry; malicious
or broken uploads never land a file and never take the gateway down."""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import json
import os
import time

import paho.mqtt.client as paho
from gwserve import serving
from test_gateway_commands import make_cfg, until

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.service.app import Gateway
from lookout.protocols import canonical, cliptransfer, signing, topics
from lookout.simulators.node import SimNode, make_config

SITE = "dongshan"


def evidence_files(tmp_path):
    d = tmp_path / "data" / "clips" / "evidence"
    return sorted(p.name for p in d.iterdir() if p.name != ".part"), sorted(os.listdir(d / ".part"))


def test_camera_snapshot_lands_in_evidence_store_with_custody(mosquitto, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        ident = ks.ensure("cam-01", SITE, "camera")
        cfg = make_config("cam-01", SITE, "camera", binascii.hexlify(ident.hmac_key).decode(), mosquitto.host,
                          mosquitto.port, hb_s=5, sensor={"sensitivity": 100, "min_interval_s": 1})
        node = SimNode(tmp_path / "cam", cfg, camera=True, pir=True)
        image = node.hal.camera.image
        sha = hashlib.sha256(image).hexdigest()
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            await node.start()
            await node.wait_online()
            await until(lambda: gw.registry.get("cam-01") and gw.registry.get("cam-01").state == "online", 10)
            c = await gw.commands.issue("cam-01", "snapshot", {})
            [c] = await gw.commands.wait([c.id], "final", 8)
            assert c.status == "done" and c.data["sha256"] == sha, c
            await until(lambda: gw.clipstore.get(sha) is not None, 5)
            path = tmp_path / "data" / "clips" / "evidence" / f"{sha}.jpg"
            assert path.read_bytes() == image
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
            assert not os.access(path, os.W_OK) or os.geteuid() == 0  # stored read-only (root ignores modes)
            assert oct(path.stat().st_mode & 0o777) == "0o444"
            [cust] = [e for e in gw.journal.entries(kind="custody")]
            d = json.loads(cust.detail)
            assert cust.device == "cam-01" and d["action"] == "stored" and d["sha256"] == sha
            assert d["auth"] == "signed" and d["size"] == len(image) and d["tid"] == c.data["tid"]
            assert d["clip"] == c.data["clip"] and d["mime"] == "image/jpeg"

            # a detection: the node snapshots again (same bytes: recorded as a duplicate, the original kept) and
            # its event references the file, which the store links in the custody chain
            node.trigger_pir()
            await until(lambda: any(json.loads(e.detail).get("action") == "linked"
                                    for e in gw.journal.entries(kind="custody")), 8)
            acts = [json.loads(e.detail)["action"] for e in gw.journal.entries(kind="custody")]
            assert acts.count("stored") == 1 and "duplicate" in acts and "linked" in acts
            ev = gw.clipstore.get(sha)
            assert ev["events"] and ev["auth"] == "signed"
            [alert] = [e for e in gw.journal.entries(kind="alert")]
            assert ev["events"] == [alert.seq]
            r = await gw.handle_op("op-1", "clips", {"action": "evidence", "limit": 10}, "e1")
            assert r["code"] == "ok" and r["data"]["evidence"][0]["sha256"] == sha
            assert evidence_files(tmp_path) == ([f"{sha}.jpg"], [])
            assert gw.journal.verify().ok
            await node.stop()
        ks.close()

    asyncio.run(main())


def test_malicious_and_broken_uploads_never_land_a_file(mosquitto, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        key = ks.ensure("cam-01", SITE, "camera").hmac_key
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            await until(lambda: gw.link.connected.is_set(), 5)
            cl = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="evil")
            cl.connect(mosquitto.host, mosquitto.port)
            cl.loop_start()

            def pub(tid, payload, dev="cam-01"):
                cl.publish(f"{topics.ROOT}/{SITE}/{dev}/up/{tid}", payload, qos=1).wait_for_publish(5)

            data = b"\xff\xd8" + os.urandom(5000)
            good = cliptransfer.ClipSender(data, 1024, "snap-1", 1, "snapshot", "image/jpeg", 0)
            base = good.manifest.to_dict()

            def signed(d):
                d = dict(d)
                signing.sign(key, "up", d)
                return canonical.dumpb(d)
            try:
                # 1 path traversal in the id (raw JSON, the codec would refuse to build it)
                pub(2, json.dumps(dict(base, tid=2, id="../../../etc/passwd")).encode())
                # 2 huge size: over the gateway limit (and a 4 GiB sparse file must never be created)
                huge = dict(base, tid=3, size=2 ** 32 - 1, chunk=65536, n=65536)
                pub(3, signed(huge))
                # 3 forged MAC (wrong key)
                forged = dict(base, tid=4)
                signing.sign(b"\x01" * 32, "up", forged)
                pub(4, canonical.dumpb(forged))
                # 4 signed manifest, but a chunk altered: hash mismatch at the end
                m5 = dict(base, tid=5)
                pub(5, signed(m5))
                s5 = cliptransfer.ClipSender(data, 1024, "snap-1", 5, "snapshot", "image/jpeg", 0)
                for i, payload in s5.chunks():
                    pub(5, payload[:-1] + bytes([payload[-1] ^ 1]) if i == 3 else payload)
                # 5 tid in the topic differs from the manifest's; a non-numeric tid; garbage; stray chunks
                pub(6, signed(dict(base, tid=7)))
                pub("abc", signed(base))
                pub(8, b"\x00garbage")
                pub(8, b"{not json")
                pub(9, cliptransfer.encode_chunk(9, 0, b"x" * 1024))
                # 6 an unknown device
                pub(10, json.dumps(dict(base, tid=10)).encode(), dev="cam-99")
                # 7 nesting bomb
                pub(11, b"[" * 400 + b"]" * 400)
                # finally a good upload still works
                pub(1, signed(base))
                for _i, payload in good.chunks():
                    pub(1, payload)
            finally:
                cl.loop_stop()
                cl.disconnect()
            await until(lambda: gw.clipstore.get(base["sha256"]) is not None, 5)
            files, parts = evidence_files(tmp_path)
            assert files == [base["sha256"] + ".jpg"] and parts == []
            sec = [json.loads(e.detail) for e in gw.journal.entries(kind="security")]
            codes = {d.get("code") for d in sec}
            assert {"bad_manifest", "too_large", "bad_mac", "hash_mismatch", "bad_tid", "unknown_device"} <= codes
            assert gw.clipstore.stats["errors"] == 0 and gw.clipstore.stats["stray_chunks"] >= 1
            assert not gw.clipstore.uploads
            assert not any((tmp_path / "data").rglob("passwd"))
            # the gateway still answers
            r = await gw.handle_op("op-1", "status", {}, "s")
            assert r["code"] == "ok"
            assert gw.journal.verify().ok
        ks.close()

    asyncio.run(main())


def test_stalled_upload_asks_for_missing_ranges_then_expires(mosquitto, tmp_path):
    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        key = ks.ensure("cam-01", SITE, "camera").hmac_key
        t = [time.time_ns() // 1_000_000]
        async with Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks, clock=lambda: t[0]) as gw:
            got = []
            gw.clipstore.send = lambda site, dev, tid, payload: got.append((dev, tid, payload))
            s = cliptransfer.ClipSender(os.urandom(3000), 1024, "snap-2", 77, "snapshot", "image/jpeg", 0)
            d = s.manifest.to_dict()
            signing.sign(key, "up", d)
            gw.clipstore.on_message(SITE, "cam-01", "77", canonical.dumpb(d))
            gw.clipstore.on_message(SITE, "cam-01", "77", s.chunk(0))
            gw.clipstore.on_message(SITE, "cam-01", "77", s.chunk(2))
            t[0] += 6000
            gw.clipstore.tick()
            [(dev, tid, payload)] = got
            st = cliptransfer.decode_status(payload)
            assert (dev, tid, st["state"], st["missing"]) == ("cam-01", 77, "receiving", [(1, 2)])
            t[0] += 200_000
            gw.clipstore.tick()
            assert not gw.clipstore.uploads
            assert evidence_files(tmp_path) == ([], [])
            acts = [json.loads(e.detail)["action"] for e in gw.journal.entries(kind="custody")]
            assert acts == ["abandoned"]
        ks.close()

    asyncio.run(main())
