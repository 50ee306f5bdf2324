"""Load: N simulated GPS nodes, drones and recorders against one gateway and Mosquitto, at the documented rates.

    python bench/load.py [--nodes 1000,5000,10000,20000] [--seconds 40] [--blast 40000] [--drones 20]
                         [--recorders 20] [--commands-per-s 5] [--profile N] [--out bench/results/load.json]

For each N, a fresh Mosquitto (the generated config's ``max_packet_size``, ``max_queued_messages`` and
``set_tcp_nodelay``) and a
fresh gateway (``lookout gateway``, its own process, metrics on loopback) and these processes:
- the fleet (simulators/fleet.py): N nodes over a few MQTT connections (one per 2,500 nodes; the gateway sees
  every node's own topics), a retained birth each, then a heartbeat every 30 s and a location every 5 s, each node
  at its own phase;
- drones: ``--drones`` simulated autopilots (simulators/drone) streaming signed MAVLink at 50 Hz into the gateway's
  bridge over UDP (the frames made by bench/mavlink_bridge.py's ``make_frames``);
- recorders: ``--recorders`` body-worn recorders (``lookout sim recorder``, its own process: pseudo-terminals at
  115,200 baud that the gateway's recorder bridge picks up by hot-plug), heartbeat 30 s, a fix every 5 s, and each
  uploads one 200 KB clip during the run (verified into the evidence store);
- the operator: 4 loudspeakers (simulators/fakenode.py: they verify every command and answer signed results) and a
  ``lookout`` operator client sending ``command`` requests (``wait: final``) at ``--commands-per-s``; latency is the
  operator's request to the final answer (operator -> gateway -> node -> gateway -> operator).

Phases per N: births (until the gateway shows every node online); the steady phase (``--seconds``), measured:
gateway CPU (% of one core, /proc/<pid>/stat) and RSS, bytes the gateway wrote to disk per message ingested
(``write_bytes`` of /proc/<pid>/io: what reached the block layer), messages ingested per second, command
p50/p99, queue depths (the gateway's ``lookout_queue_depth`` gauges sampled each second: max), journal and
database growth extrapolated to a day; then ``lookout devices`` read in full (every page; the count must be every
device); then saturation: the fleet sends ``--blast`` heartbeats as fast as the broker takes them, once to a site
the gateway does not serve with a bare paho subscriber (subscribes the same way, only decodes the JSON: the
baseline, measured in this run) and once to the gateway's site; ``ingest_ratio`` = gateway / bare messages per
second, each counted from the blast's start to its last message handled, and the gateway's CPU per message then
(``saturated_cpu_us_per_msg``: flat in N is the target). ``offline_wrong``: nodes and speakers not online at the end,
and ``state_changes_wrong``: their changes to stale or offline in the journal over the whole run (every one kept
sending, so each is wrong; drones are left out, their stream ends with the steady phase).

Last line: JSON with ``max_nodes_p99_under_1s`` (the largest N whose command p99 stayed under 1 s with nothing
wrongly offline and every device listed), ``ingest_ratio_min``, ``disk_bytes_per_msg`` (at 10,000 nodes, the issue's
target; each row has its own) and the table per N; also written to ``--out``. ``--profile N`` runs that N's gateway under cProfile and writes the top
functions (cumulative and own time) to bench/results/load_profile_<N>.txt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support"), str(ROOT / "bench")]

from broker import Mosquitto, free_port  # noqa: E402

SITE = "load"
BARE_SITE = "bare"
GW = "gw-load"
SPEAKERS = [f"spk-{i:02d}" for i in range(4)]
NODES_PER_CONN = 2500


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(len(s) * q / 100))], 2)


# -- /proc and /metrics ------------------------------------------------------------------------------------------

def proc_cpu_s(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def proc_io(pid: int) -> dict[str, int]:
    return {k: int(v) for k, v in (ln.split(": ") for ln in Path(f"/proc/{pid}/io").read_text().splitlines())}


def scrape(port: int) -> dict[str, float]:
    """The gateway's /metrics as {"name{labels}": value}."""
    out: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                out[k] = float(v)
    return out


def msgs_in(m: dict[str, float]) -> float:
    return sum(v for k, v in m.items() if k.startswith("lookout_messages_in_total"))


def wrong(m: dict[str, float]) -> float:
    return m.get('lookout_state_changes_total{to="offline"}', 0) + m.get('lookout_state_changes_total{to="stale"}', 0)


def gc_full(m: dict[str, float]) -> tuple[int, float, float | None]:
    """Full (generation 2) collections so far: count, total seconds, and the bucket bound the longest fits."""
    g = '{generation="2"'
    n = int(m.get(f"lookout_gc_pause_seconds_count{g}}}", 0))
    total = m.get(f"lookout_gc_pause_seconds_sum{g}}}", 0.0)
    bounds = sorted((float(k.split('le="')[1].split('"')[0]), v) for k, v in m.items()
                    if k.startswith(f"lookout_gc_pause_seconds_bucket{g}"))
    top = next((b for b, c in bounds if c >= n), None) if n else None
    return n, total, top


def wrong_changes(journal: Path) -> int:
    """Nodes' and speakers' state changes to stale or offline, from the journal (drones left out)."""
    import sqlite3

    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT count(*) FROM journal WHERE kind = 'state' AND device NOT LIKE 'uav-%' AND "
                          "(summary LIKE '% -> stale %' OR summary LIKE '% -> offline %')").fetchone()[0]
    finally:
        db.close()


def db_bytes(data: Path) -> dict[str, int]:
    """Each store's size as SQLite sees it (pages in use, the WAL's included), read-only beside the gateway."""
    import sqlite3

    out = {}
    for p in sorted(data.glob("*.db")):
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=5)
        try:
            out[p.name] = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
            if p.name == "journal.db":
                out["journal_entries"] = db.execute("SELECT count(*) FROM journal").fetchone()[0]
        finally:
            db.close()
    return out


# -- the fleet, the bare subscriber, the operator: processes --------------------------------------------------------

def fleet_process(host: str, port: int, site: str, ids: list[str], conn: Any) -> None:
    from lookout.simulators.fleet import Fleet

    async def main() -> None:
        async with Fleet(host, port, site, ids, conns=max(1, len(ids) // NODES_PER_CONN)) as fleet:
            loop = asyncio.get_running_loop()
            running: asyncio.Task[None] | None = None
            while True:
                job = await loop.run_in_executor(None, conn.recv)
                if job[0] == "births":  # then the nodes send at their rates until "stop", as real ones would
                    await fleet.births()
                    running = loop.create_task(fleet.run(1e9))
                    conn.send("ok")
                elif job[0] == "sent":
                    conn.send(dict(fleet.sent))
                elif job[0] == "pause":
                    if running is not None:
                        running.cancel()
                    conn.send("ok")
                elif job[0] == "blast":
                    conn.send(await fleet.blast(job[1]))
                elif job[0] == "resume":
                    running = loop.create_task(fleet.run(1e9))
                    conn.send("ok")
                else:
                    if running is not None:
                        running.cancel()
                    conn.send("bye")
                    return

    asyncio.run(main())


def bare_process(host: str, port: int, expect: int, conn: Any) -> None:
    """Mosquitto -> a plain paho subscriber that only decodes the JSON: the baseline of the same load."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    state = {"n": 0, "last": 0.0}
    subscribed = threading.Event()

    def on_message(c: Any, u: Any, m: Any) -> None:
        json.loads(m.payload)
        state["n"] += 1
        state["last"] = time.monotonic()

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=paho.MQTTv311)
    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(f"lookout/v1/{BARE_SITE}/+/hb", 1)
    c.on_subscribe = lambda *a: subscribed.set()
    c.max_inflight_messages_set(1000)
    c.connect(host, port, 60)
    c.loop_start()
    subscribed.wait(10)
    conn.send("ready")
    start = conn.recv()  # the blast's start (time.monotonic of this machine)
    end = time.monotonic() + 120
    while state["n"] < expect and time.monotonic() < end and (state["n"] == 0 or time.monotonic() - state["last"] < 3):
        time.sleep(0.05)
    c.loop_stop()
    conn.send((state["n"], state["last"] - start))


def operator_process(url: str, token: str, keys: dict[str, bytes], conn: Any) -> None:
    from lookout.gateway.cli.operator import all_devices
    from lookout.gateway.links.mqtt import MQTTError
    from lookout.gateway.links.opclient import OperatorClient
    from lookout.simulators.fakenode import FakeNode

    host, port = url.removeprefix("mqtt://").split(":")
    nodes = [FakeNode(host, int(port), d, SITE, keys[d]).start(10) for d in keys]
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(10):
            for n in nodes:
                n.heartbeat()

    threading.Thread(target=beat, daemon=True).start()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with OperatorClient(url, SITE, "op-load", token) as cl:
            conn.send("ready")
            while True:
                job = await loop.run_in_executor(None, conn.recv)
                if job[0] == "commands":
                    seconds, per_s = job[1], job[2]
                    out: list[float] = []
                    at: list[float] = []  # when each was sent, seconds into the steady phase
                    failed = 0
                    t0 = time.monotonic()
                    i = 0

                    async def listing() -> tuple[str, list[dict[str, Any]], float]:
                        await asyncio.sleep(seconds / 2)  # under load: halfway through the steady phase
                        t = time.perf_counter()
                        try:
                            r = await all_devices(cl, {}, 60)
                        except (TimeoutError, MQTTError):
                            return "timeout", [], time.perf_counter() - t
                        return r["code"], r.get("data", {}).get("devices", []), time.perf_counter() - t

                    mid = asyncio.get_running_loop().create_task(listing())
                    while time.monotonic() - t0 < seconds:
                        t = time.perf_counter()
                        try:
                            r = await cl.request("command", {"to": SPEAKERS[i % len(SPEAKERS)], "name": "set_volume",
                                                             "args": {"volume": 50}, "queue": False, "wait": "final",
                                                             "wait_s": 20}, timeout=30)
                            failed += r["code"] != "ok"
                        except (TimeoutError, MQTTError):  # past the ceiling: a failure at its full wait, not a crash
                            failed += 1
                        out.append((time.perf_counter() - t) * 1000)
                        at.append(round(time.monotonic() - t0, 1))
                        i += 1
                        await asyncio.sleep(max(0.0, t0 + i / per_s - time.monotonic()))
                    code, devs, took = await mid
                    slow = sorted(zip(out, at))[-5:]
                    conn.send((out, failed, (code, len(devs), len({d["id"] for d in devs}), took), slow))
                elif job[0] == "devices":
                    r = await all_devices(cl, {}, 60)
                    conn.send([(d["id"], d["kind"], d["state"], d["reason"]) for d in r["data"]["devices"]])
                else:
                    conn.send("bye")
                    return

    try:
        asyncio.run(main())
    finally:
        stop.set()
        for n in nodes:
            n.stop()


# -- one N -------------------------------------------------------------------------------------------------------

def run_one(n: int, args: argparse.Namespace) -> dict[str, Any]:
    from lookout.gateway.admin.keystore import KeyStore
    from lookout.gateway.admin.provision import key_file, provision_drone, provision_recorder
    from lookout.gateway.links.mavlink.signing import now_10us

    tmp = Path(tempfile.mkdtemp(prefix=f"lookout-load-{n}-", dir=args.tmp))
    data = tmp / "data"
    data.mkdir()
    from lookout.gateway.admin.brokerconfig import MAX_PACKET_SIZE, MAX_QUEUED
    mq = Mosquitto(tmp / "mq", conf_extra=f"max_packet_size {MAX_PACKET_SIZE}\nmax_queued_messages {MAX_QUEUED}\n"
                   "set_tcp_nodelay true\n").start()  # the limits `lookout broker-config` writes
    ks = KeyStore(data / "keystore.db")
    token = ks.add_operator("op-load", "load bench", "operator")
    keys = {d: ks.ensure(d, SITE, "speaker").hmac_key for d in SPEAKERS}
    dkeys = {i: provision_drone(ks, f"uav-{i}", SITE, i).hmac_key for i in range(1, args.drones + 1)}
    rec_keys = []  # what `lookout provision recorder --out` writes, one file per recorder
    for i in range(1, args.recorders + 1):
        ident = provision_recorder(ks, f"bwc-{i:02d}", SITE, officer=f"p-{i:02d}")
        f = tmp / f"bwc-{i:02d}.json"
        f.write_text(json.dumps(key_file(ident)))
        rec_keys.append(str(f))
    ks.close()
    mport, uport = free_port(), free_port()
    conf = tmp / "gw.toml"
    conf.write_text(f'[gateway]\nid = "{GW}"\nsite = "{SITE}"\ndata_dir = "{data}"\nlog_level = "warning"\n'
                    f'[broker]\nurl = "{mq.url}"\n[metrics]\nlisten = "127.0.0.1:{mport}"\n'
                    f'[commands]\nwait_s = 20\n'
                    + (f'[mavlink]\nstream_hz = 0\nlink_timeout_ms = 3000\n[[mavlink.endpoint]]\nname = "radio"\n'
                       f'url = "udpin:127.0.0.1:{uport}"\n' if args.drones else "")
                    + (f'[recorders]\ndevices = ["{tmp / "dev"}/*"]\n' if args.recorders else ""))
    cmd = [sys.executable]
    prof = tmp / "gw.prof"
    if args.profile == n:
        cmd += ["-m", "cProfile", "-o", str(prof)]
    cmd += ["-m", "lookout", "gateway", "--config", str(conf)]
    gw = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(tmp / "gw.log", "wb"))  # noqa: SIM115
    ctx = multiprocessing.get_context("spawn")
    ids = [f"gps-{i:05d}" for i in range(n)]
    procs: list[Any] = []
    res: dict[str, Any] = {"nodes": n, "drones": args.drones, "recorders": args.recorders}
    rec = None
    try:
        end = time.monotonic() + 30
        while True:
            try:
                scrape(mport)
                break
            except OSError:
                if gw.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("gateway did not start: " + (tmp / "gw.log").read_text()[-2000:]) from None
                time.sleep(0.2)
        fl, fl_child = ctx.Pipe()
        fp = ctx.Process(target=fleet_process, args=(mq.host, mq.port, SITE, ids, fl_child), daemon=True)
        op, op_child = ctx.Pipe()
        opp = ctx.Process(target=operator_process, args=(mq.url, token, keys, op_child), daemon=True)
        procs += [fp, opp]
        fp.start()
        opp.start()
        assert op.recv() == "ready"
        t_birth = time.monotonic()
        fl.send(("births",))
        assert fl.recv() == "ok"
        if rec_keys:  # 20 officers' recorders docked on serial lines, each with a clip to upload meanwhile
            rec = subprocess.Popen([sys.executable, "-m", "lookout", "sim", "recorder", *sum((["--key", k] for k in
                                    rec_keys), []), "--dev-dir", str(tmp / "dev"), "--state-dir", str(tmp / "rec"),
                                    "--clips", "1", "--clip-size", "200000"], cwd=ROOT,
                                   stdout=subprocess.DEVNULL, stderr=open(tmp / "rec.log", "wb"))  # noqa: SIM115
        want = n + len(SPEAKERS) + args.recorders + 1
        while True:
            m = scrape(mport)
            online = sum(v for k, v in m.items() if k.startswith("lookout_devices{") and 'state="online"' in k)
            if online >= want:
                break
            if time.monotonic() - t_birth > 300:
                raise RuntimeError(f"only {online} of {want} devices online after 300 s")
            time.sleep(0.5)
        res["births_s"] = round(time.monotonic() - t_birth, 1)
        # the births' retained states go out at 1,000 a second (a paced republish, as after every reconnect): the
        # steady phase starts once they are out, so that it measures the steady state
        while scrape(mport).get('lookout_queue_depth{queue="registry_retain"}', 0) > 0:
            time.sleep(0.5)
        time.sleep(2)
        res["settled_s"] = round(time.monotonic() - t_birth, 1)

        # -- steady phase
        frames = None
        if args.drones:
            import mavlink_bridge

            frames = mavlink_bridge.make_frames(args.drones, 50, args.seconds + 2, dkeys, now_10us())
        fl.send(("sent",))
        sent0 = fl.recv()
        m0, cpu0, io0, db0, t0 = scrape(mport), proc_cpu_s(gw.pid), proc_io(gw.pid), db_bytes(data), time.monotonic()
        wrong0 = wrong(m0)
        op.send(("commands", args.seconds, args.commands_per_s))
        if frames is not None:
            dp, dp_child = ctx.Pipe()
            sp = ctx.Process(target=mavlink_bridge.sender, args=(frames, uport, dp_child, time.monotonic() + 0.2),
                             daemon=True)
            procs.append(sp)
            sp.start()
        depth: dict[str, float] = {}
        rss_max = 0.0
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1.0)
            m = scrape(mport)
            for k, v in m.items():
                if k.startswith("lookout_queue_depth{"):
                    q = k.split('"')[1]
                    depth[q] = max(depth.get(q, 0), v)
            rss_max = max(rss_max, proc_rss_mb(gw.pid))
        fl.send(("sent",))
        sent1 = fl.recv()
        m1, cpu1, io1, db1, t1 = scrape(mport), proc_cpu_s(gw.pid), proc_io(gw.pid), db_bytes(data), time.monotonic()
        lat, failed, (code, listed, unique, took), slow = op.recv()
        if frames is not None:
            dp.recv()
        window = t1 - t0
        ingested = msgs_in(m1) - msgs_in(m0)
        res.update({
            "offered_msg_per_s": round((sent1["hb"] + sent1["loc"] - sent0["hb"] - sent0["loc"]) / window),
            "ingest_msg_per_s": round(ingested / window), "gateway_cpu_pct": round(100 * (cpu1 - cpu0) / window, 1),
            "cpu_us_per_msg": round(1e6 * (cpu1 - cpu0) / ingested, 1) if ingested else None,
            "rss_mb": round(rss_max, 1),
            "disk_bytes_per_msg": round((io1["write_bytes"] - io0["write_bytes"]) / ingested, 1) if ingested else None,
            "wchar_bytes_per_msg": round((io1["wchar"] - io0["wchar"]) / ingested, 1) if ingested else None,
            "cmd_p50_ms": pct(lat, 50), "cmd_p99_ms": pct(lat, 99), "cmd_max_ms": pct(lat, 100),
            "cmd_slowest_ms_at_s": [(round(ms, 1), t) for ms, t in slow],  # (latency, seconds into the phase)
            "commands": len(lat), "commands_failed": failed, "queue_depth_max": depth,
            "disk_kb_per_s": round((io1["write_bytes"] - io0["write_bytes"]) / window / 1024, 1),
            "journal_entries_per_day": round((db1["journal_entries"] - db0["journal_entries"]) / window * 86400),
            "journal_mb_per_day": round((db1["journal_entries"] - db0["journal_entries"]) / window * 86400
                                        * db1["journal.db"] / max(1, db1["journal_entries"]) / 2**20, 1),
            "db_mb_per_day": round((sum(v for k, v in db1.items() if k.endswith(".db"))
                                    - sum(v for k, v in db0.items() if k.endswith(".db"))) / window * 86400 / 2**20, 1),
            "db_mb": round(sum(v for k, v in db1.items() if k.endswith(".db")) / 2**20, 1),
            "gc_full": gc_full(m1)[0] - gc_full(m0)[0],
            "gc_full_mean_ms": round(1000 * (gc_full(m1)[1] - gc_full(m0)[1]) / max(1, gc_full(m1)[0] - gc_full(m0)[0]),
                                     1),
            "gc_full_max_ms_at_most": None if gc_full(m1)[2] is None else 1000 * gc_full(m1)[2],
            "drone_frames_per_s": round(sum(1 for f in frames if f[0] < args.seconds) / args.seconds) if frames else 0,
        })
        if os.environ.get("BENCH_DEBUG"):
            print({k: db1.get(k, 0) - db0.get(k, 0) for k in db1}, file=sys.stderr)
        # lookout devices, every page, taken halfway through the steady phase
        expect = n + len(SPEAKERS) + args.drones + args.recorders + 1
        res["devices_listed"] = listed
        res["devices_in_full"] = code == "ok" and listed == unique == expect
        res["devices_s"] = round(took, 2)

        # -- saturation: the bare subscriber on another site, then the gateway, the same blast; the steady traffic
        # pauses meanwhile (a few seconds, far below a heartbeat deadline), so both have the machine alike
        fl.send(("pause",))
        fl.recv()
        bl, bl_child = ctx.Pipe()
        bp = ctx.Process(target=bare_process, args=(mq.host, mq.port, args.blast, bl_child), daemon=True)
        procs.append(bp)
        bp.start()
        assert bl.recv() == "ready"
        f2, f2_child = ctx.Pipe()
        fp2 = ctx.Process(target=fleet_process, args=(mq.host, mq.port, BARE_SITE, ids, f2_child), daemon=True)
        procs.append(fp2)
        fp2.start()
        bl.send(time.monotonic())
        f2.send(("blast", args.blast))
        f2.recv()
        bare_n, bare_s = bl.recv()
        f2.send(("stop",))
        f2.recv()
        res["bare_msg_per_s"] = round(bare_n / bare_s) if bare_s > 0 else None

        base = msgs_in(scrape(mport))
        cpu_b = proc_cpu_s(gw.pid)
        start = time.monotonic()
        fl.send(("blast", args.blast))
        last, last_t = base, start
        while True:
            time.sleep(0.1)
            c = msgs_in(scrape(mport))
            if c > last:
                last, last_t = c, time.monotonic()
            elif time.monotonic() - last_t > 3 or c - base >= args.blast:
                break
        fl.recv()
        fl.send(("resume",))
        fl.recv()
        got = last - base
        res["saturated_cpu_us_per_msg"] = round(1e6 * (proc_cpu_s(gw.pid) - cpu_b) / got, 1) if got else None
        res["saturated_msg_per_s"] = round(got / (last_t - start)) if last_t > start else None
        res["blast_delivered"] = int(got)
        res["ingest_ratio"] = round(res["saturated_msg_per_s"] / res["bare_msg_per_s"], 2) \
            if res.get("saturated_msg_per_s") and res.get("bare_msg_per_s") else None
        # wrongly offline: every node and speaker kept sending, so each one not online at the end, and every state
        # change of one to stale or offline (the journal has them all), is wrong; drones are left out (their stream
        # ends with the steady phase)
        time.sleep(1)
        op.send(("devices",))
        states = op.recv()
        res["offline_wrong"] = sum(1 for d, kind, state, _why in states
                                   if kind != "drone" and d != GW and state != "online")
        res["state_changes_wrong"] = wrong_changes(data / "journal.db")
        ev = data / "clips" / "evidence"
        res["recorder_clips_stored"] = sum(1 for p in ev.iterdir() if p.is_file()) if ev.is_dir() else 0
        res["state_changes_to_stale_or_offline"] = int(wrong(scrape(mport)) - wrong0)
        fl.send(("stop",))
        op.send(("stop",))
        fl.recv()
        op.recv()
    finally:
        if rec is not None:
            rec.send_signal(signal.SIGTERM)
            try:
                rec.wait(10)
            except subprocess.TimeoutExpired:
                rec.kill()
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(60)
        except subprocess.TimeoutExpired:
            gw.kill()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
        mq.stop()
    if args.profile == n and prof.exists():
        res["profile"] = str(write_profile(prof, n))
    return res


def write_profile(prof: Path, n: int) -> Path:
    import io
    import pstats

    out = ROOT / "bench" / "results" / f"load_profile_{n}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    st = pstats.Stats(str(prof), stream=buf)
    st.sort_stats("cumulative").print_stats(45)
    st.sort_stats("tottime").print_stats(45)
    out.write_text(buf.getvalue())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="1000,5000,10000,20000", help="comma-separated N")
    ap.add_argument("--seconds", type=float, default=40.0, help="steady phase per N")
    ap.add_argument("--blast", type=int, default=40000, help="heartbeats sent as fast as possible per N")
    ap.add_argument("--drones", type=int, default=20, help="simulated drones at 50 Hz (0: none)")
    ap.add_argument("--recorders", type=int, default=20,
                    help="simulated body-worn recorders on serial lines, 115,200 baud (0: none)")
    ap.add_argument("--commands-per-s", type=float, default=5.0)
    ap.add_argument("--profile", type=int, default=0, help="run the gateway of this N under cProfile")
    ap.add_argument("--tmp", default=None, help="where the data directories go (a disk, not tmpfs: write_bytes)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.json"))
    args = ap.parse_args()
    rows = []
    for n in [int(x) for x in args.nodes.split(",")]:
        r = run_one(n, args)
        rows.append(r)
        print(f"N={n:>6}: ingest {r['ingest_msg_per_s']}/s of {r['offered_msg_per_s']} offered, CPU "
              f"{r['gateway_cpu_pct']} % ({r['cpu_us_per_msg']} us/msg), RSS {r['rss_mb']} MB, disk "
              f"{r['disk_bytes_per_msg']} B/msg, cmd p50 {r['cmd_p50_ms']} p99 {r['cmd_p99_ms']} ms, devices "
              f"{r['devices_listed']} in full={r['devices_in_full']}, saturated {r['saturated_msg_per_s']}/s vs bare "
              f"{r['bare_msg_per_s']}/s = {r['ingest_ratio']}, wrongly offline {r['offline_wrong']} (changes "
              f"{r['state_changes_wrong']})",
              file=sys.stderr, flush=True)
    ok = [r["nodes"] for r in rows if r["cmd_p99_ms"] is not None and r["cmd_p99_ms"] < 1000
          and r["offline_wrong"] == 0 and r["state_changes_wrong"] == 0 and r["devices_in_full"]]
    ratios = [r["ingest_ratio"] for r in rows if r.get("ingest_ratio") is not None]
    # the disk target is per message at 10,000 nodes; at 1,000 the bench's own commands (5 a second, each
    # ~50 KB of journal and command-store pages) outweigh 230 messages a second, so that row says little
    at = next((r for r in rows if r["nodes"] == 10000), max(rows, key=lambda r: r["nodes"]))
    res = {"max_nodes_p99_under_1s": max(ok) if ok else 0, "ingest_ratio_min": min(ratios) if ratios else None,
           "disk_bytes_per_msg": at.get("disk_bytes_per_msg"), "disk_bytes_per_msg_at_nodes": at["nodes"],
           "cmd_p99_ms_max": max((r["cmd_p99_ms"] or 0) for r in rows),
           "targets": {"cmd_p99_ms": 250, "ingest_ratio_min": 0.5, "disk_bytes_per_msg": 512},
           "rows": rows, "seconds": args.seconds, "blast": args.blast, "commands_per_s": args.commands_per_s,
           "cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_at_end": os.getloadavg(),
           "broker": "mosquitto (loopback, the limits of `lookout broker-config`, set_tcp_nodelay)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
