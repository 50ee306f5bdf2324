"""Clip distribution end to end: `lookout clips upload --to` -> gateway -> fetch_clip on REAL firmware speakers."""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import os

import paho.mqtt.client as paho
from gwserve import serving
from test_gateway_commands import make_cfg, until

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.cli.main import main
from lookout.gateway.clips.distribution import ClipError, check_wav
from lookout.gateway.service.app import Gateway
from lookout.protocols import cliptransfer, topics
from lookout.simulators.node import SimNode, make_config, wav_bytes

SITE = "dongshan"


async def start_speakers(tmp_path, mosquitto, ks, ids):
    nodes = []
    for dev in ids:
        ident = ks.ensure(dev, SITE, "speaker")
        cfg = make_config(dev, SITE, "speaker", binascii.hexlify(ident.hmac_key).decode(), mosquitto.host,
                          mosquitto.port, hb_s=5)
        n = SimNode(tmp_path / dev, cfg, speed=20)
        await n.start()
        nodes.append(n)
    for n in nodes:
        await n.wait_online()
    return nodes


def cli_env(mosquitto, token):
    return {"LOOKOUT_BROKER": mosquitto.url, "LOOKOUT_SITE": SITE, "LOOKOUT_OPERATOR": "op-1",
            "LOOKOUT_TOKEN": token}


def test_check_wav_rules():
    info = check_wav(wav_bytes(500, 16000))
    assert info == {"rate": 16000, "bits": 16, "channels": 1, "ms": 500}
    for bad in (b"", b"RIFF\x00\x00\x00\x00WAVE", b"OggS" + bytes(60), wav_bytes(100)[:50]):
        try:
            check_wav(bad)
        except ClipError:
            continue
        raise AssertionError(f"accepted {bad[:16]!r}")
    # a LIST chunk before fmt pushes the data header past the 64 bytes a node reads: refused
    w = wav_bytes(100)
    listed = w[:12] + b"LIST" + (40).to_bytes(4, "little") + bytes(40) + w[12:]
    try:
        check_wav(listed)
        raise AssertionError("accepted a header the node cannot parse")
    except ClipError as e:
        assert "64" in str(e)


def test_upload_and_distribute_to_two_speakers_then_play(mosquitto, tmp_path, monkeypatch, capsys):
    async def main_():
        ks = KeyStore(tmp_path / "ks.db")
        token = ks.add_operator("op-1", "Duty officer", "operator")
        nodes = await start_speakers(tmp_path, mosquitto, ks, ["spk-01", "spk-02"])
        clip = wav_bytes(1500)  # 24 KB: 6 chunks of 4 KiB, 3 pieces of 8 KiB
        f = tmp_path / "nofish.wav"
        f.write_bytes(clip)
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            await until(lambda: all(gw.registry.get(d) and gw.registry.get(d).state == "online"
                                    for d in ("spk-01", "spk-02")), 10)
            for k, v in cli_env(mosquitto, token).items():
                monkeypatch.setenv(k, v)
            rc = await asyncio.to_thread(main, ["clips", "upload", str(f), "--id", "nofish", "--to", "north",
                                                "--timeout", "8"])
            out, err = capsys.readouterr()
            assert rc == 0, (out, err)
            assert "devices 2/2 done" in err and "spk-01" in out and "spk-02" in out
            assert (tmp_path / "data" / "clips" / "audio" / "nofish.wav").read_bytes() == clip
            for n in nodes:
                assert (n.root / "clips" / "nofish").read_bytes() == clip
                assert not (n.root / "clips" / "nofish.part").exists()
            # the clip plays afterwards
            r = await gw.handle_op("op-1", "broadcast", {"to": "north", "clip": "nofish", "repeat": 1,
                                                         "priority": 1, "queue": True, "wait": "final",
                                                         "wait_s": 8}, "b1")
            assert r["code"] == "ok", r
            for n in nodes:
                assert any(p["tag"] == "nofish" and p["ms"] >= 1400 for p in n.plays)
            # `clips list` shows it; the journal has the upload and the fetch_clip results
            rc = await asyncio.to_thread(main, ["clips", "list", "--json", "--timeout", "5"])
            out, _ = capsys.readouterr()
            assert rc == 0 and '"nofish"' in out and hashlib.sha256(clip).hexdigest() in out
            summaries = [e.summary for e in gw.journal.entries()]
            assert any("uploaded clip nofish" in s for s in summaries)
            assert sum("fetch_clip" in s and ": done" in s for s in summaries) == 2
            assert gw.journal.verify().ok
            for n in nodes:
                await n.stop()
        ks.close()

    asyncio.run(main_())


def test_offline_target_is_queued_and_partial_exit(mosquitto, tmp_path, monkeypatch, capsys):
    async def main_():
        ks = KeyStore(tmp_path / "ks.db")
        token = ks.add_operator("op-1", "Duty officer", "operator")
        ks.ensure("spk-02", SITE, "speaker")  # provisioned, never online
        nodes = await start_speakers(tmp_path, mosquitto, ks, ["spk-01"])
        f = tmp_path / "warn.wav"
        f.write_bytes(wav_bytes(300))
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").state == "online", 10)
            for k, v in cli_env(mosquitto, token).items():
                monkeypatch.setenv(k, v)
            rc = await asyncio.to_thread(main, ["clips", "upload", str(f), "--id", "warn", "--to", "north",
                                                "--timeout", "8"])
            out, err = capsys.readouterr()
            assert rc == 1, (out, err)
            assert "queued" in out and "next birth" in out and "partial" in err
            assert (nodes[0].root / "clips" / "warn").read_bytes() == f.read_bytes()
            await nodes[0].stop()
        ks.close()

    asyncio.run(main_())


def test_corrupted_chunk_never_replaces_the_good_clip(mosquitto, tmp_path):
    async def main_():
        ks = KeyStore(tmp_path / "ks.db")
        ks.add_operator("op-1", "Duty officer", "operator")
        [node] = await start_speakers(tmp_path, mosquitto, ks, ["spk-01"])
        good = wav_bytes(600)
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").state == "online", 10)
            gw.clipdist.audio.put("nofish", good)
            r = await gw.handle_op("op-1", "clips", {"action": "distribute", "to": "spk-01", "clip": "nofish",
                                                     "priority": 1, "queue": True, "wait": "final",
                                                     "wait_s": 8}, "d1")
            assert r["code"] == "ok", r
            assert (node.root / "clips" / "nofish").read_bytes() == good

            # a new version, fetched by a signed command, but one chunk on dl/<tid> is corrupted in transit
            new = wav_bytes(900, 16000)
            tid = 4242
            c = await gw.commands.issue("spk-01", "fetch_clip", {"clip": "nofish", "tid": tid, "size": len(new),
                                                                 "chunk": 4096,
                                                                 "sha256": hashlib.sha256(new).hexdigest()})
            [c] = await gw.commands.wait([c.id], "accepted", 5)
            assert c.status == "accepted", c
            sender = cliptransfer.ClipSender(new, 4096, "nofish", tid, "audio", "audio/wav", 0)
            inj = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="injector")
            inj.connect(mosquitto.host, mosquitto.port)
            inj.loop_start()
            try:
                t = topics.topic(SITE, "spk-01", "dl", str(tid))
                for i, payload in sender.chunks():
                    if i == 1:
                        payload = payload[:20] + bytes([payload[20] ^ 0xFF]) + payload[21:]
                    inj.publish(t, payload, qos=1).wait_for_publish(5)
            finally:
                inj.loop_stop()
                inj.disconnect()
            [c] = await gw.commands.wait([c.id], "final", 8)
            assert c.status == "failed" and c.code == "hash_mismatch", c
            assert (node.root / "clips" / "nofish").read_bytes() == good
            assert not (node.root / "clips" / "nofish.part").exists()
            r = await gw.handle_op("op-1", "broadcast", {"to": "spk-01", "clip": "nofish", "repeat": 1,
                                                         "priority": 1, "queue": True, "wait": "final",
                                                         "wait_s": 8}, "b2")
            assert r["code"] == "ok", r
            assert node.plays[-1]["tag"] == "nofish" and node.plays[-1]["bytes"] == len(good) - 44
            await node.stop()
        ks.close()

    asyncio.run(main_())


def test_status_request_gets_missing_ranges_resent(mosquitto, tmp_path):
    """The node's resume request (status on up/<tid>) makes the gateway re-send exactly the listed chunks."""
    async def main_():
        ks = KeyStore(tmp_path / "ks.db")
        [node] = await start_speakers(tmp_path, mosquitto, ks, ["spk-01"])
        clip = wav_bytes(1000)
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw:
            await until(lambda: gw.registry.get("spk-01") and gw.registry.get("spk-01").state == "online", 10)
            gw.clipdist.audio.put("nofish", clip)
            drop = {2}
            sp = node.node.speaker
            real = sp.on_dl

            def lossy(tid, payload):  # the node "loses" chunk 2 the first time
                i = int.from_bytes(payload[6:10], "big")
                if i in drop:
                    drop.discard(i)
                    return None
                return real(tid, payload)
            sp.on_dl = lossy
            r = await gw.handle_op("op-1", "clips", {"action": "distribute", "to": "spk-01", "clip": "nofish",
                                                     "priority": 1, "queue": True, "wait": "accepted"}, "d1")
            dist = r["data"]["dist"]
            p = gw.clipdist.dists[dist].devices["spk-01"]
            await until(lambda: p.sent == r["data"]["n"], 5)
            # instead of waiting the node's 15 s idle timer, publish the status it would send
            [(rx, *_)] = list(sp.downloads.values())
            # the gateway has sent every chunk; wait until the node holds all but the one it "lost", so the
            # status names exactly that one (chunks still in flight would be listed as missing too)
            await until(lambda: rx.received == r["data"]["n"] - 1, 5)
            await node.node.publish(node.node.upload_topic(dist), cliptransfer.encode_status(rx), 1)
            cid = r["data"]["results"][0]["id"]
            [c] = await gw.commands.wait([cid], "final", 8)
            assert c.status == "done", c
            assert p.resent == 1 and p.have == r["data"]["n"] - 1
            assert (node.root / "clips" / "nofish").read_bytes() == clip
            await node.stop()
        ks.close()

    asyncio.run(main_())


def test_clip_put_rejects_bad_uploads(mosquitto, tmp_path):
    async def main_():
        ks = KeyStore(tmp_path / "ks.db")
        async with Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks) as gw:
            import base64
            data = b"not a wav file at all" * 10
            sha = hashlib.sha256(data).hexdigest()
            a = {"clip": "bad", "size": len(data), "sha256": sha, "chunk": 8192, "index": 0,
                 "data": base64.b64encode(data).decode()}
            r = await gw.handle_op("op-1", "clip_put", dict(a), "p1")
            assert r["code"] == "failed" and "RIFF" in r["error"]
            wrong = dict(a, sha256="0" * 64)
            r = await gw.handle_op("op-1", "clip_put", wrong, "p2")
            assert r["code"] == "failed" and "hash" in r["error"]
            r = await gw.handle_op("op-1", "clip_put", dict(a, clip=".hidden"), "p3")
            assert r["code"] == "bad_request"
            r = await gw.handle_op("op-1", "clips", {"action": "distribute", "to": "spk-01", "clip": "nope",
                                                     "priority": 1, "queue": True, "wait": "none"}, "d")
            assert r["code"] == "bad_request" and "upload it first" in r["error"]
            assert sorted(os.listdir(tmp_path / "data" / "clips" / "audio")) == []
        ks.close()

    asyncio.run(main_())
