"""Drone bridge throughput and latency: D simulated drones streaming MAVLink at 50 Hz into the gateway.

    python bench/mavlink_bridge.py [--drones 20] [--rate 50] [--seconds 20] [--rounds 5] [--out bench/results/...]

The frames are made once, up front, by the drone simulator's aircraft model (simulators/drone/vehicle.py) in
simulated time: each drone flying (so every position differs), GLOBAL_POSITION_INT at ``--rate`` Hz plus what an
autopilot also streams (HEARTBEAT, SYS_STATUS, GPS_RAW_INT, VFR_HUD, ATTITUDE, BATTERY_STATUS), every frame
MAVLink 2 signed with the drone's key, as the gateway requires; each drone starts at its own phase (0..0.5 s), as
independent vehicles do. Both measurements then use the same bytes.

1. Ingest per core (in one process, CPU time by ``time.process_time``, rounds interleaved):
   - ``baseline``: pymavlink's parser alone (``MAVLink.parse_buffer``, robust parsing, one parser per sender, as
     the bridge keeps them) on the datagrams;
   - ``ingest``: the bridge's whole receive path on the same datagrams: parse, signature check per drone, sequence
     and loss counting, routing, latest-value state, decimation, and the MQTT payloads it builds and hands to the
     publish function (here a counter: the broker is measured in 2);
   ``ingest_ratio = ingest / baseline`` (target >= 0.30).
2. Live (real time): Mosquitto (``set_tcp_nodelay``), the gateway as its own process (``lookout gateway``, the
   bridge on ``udpin``), a sender process replaying each drone's frames at their real times from its own UDP
   socket, and a subscriber (paho) on ``lookout/v1/<site>/+/loc``. Latency = the moment a position's frame left
   the sender -> the moment the MQTT location carrying that position arrived (CLOCK_MONOTONIC is shared by the
   processes), over the positions sent after the warm-up and before the last second; the warm-up's (each drone's
   link-up: birth, journal entry) and the stream's end (the decimator's held last value, published up to 1.5
   periods later by design) are reported apart. Also: MQTT publishes per second and the gateway process's CPU
   (``/proc``) per ingested frame. Target: p99 <= 20 ms.
The last line printed is a JSON object; it is also written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

import paho.mqtt.client as paho
from broker import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from pymavlink.dialects.v20 import ardupilotmega as mav

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_drone
from lookout.gateway.core.config import from_dict
from lookout.gateway.core.journal import Journal
from lookout.gateway.core.registry import Registry
from lookout.gateway.links.mavlink import DroneBridge
from lookout.gateway.links.mavlink.signing import now_10us
from lookout.simulators.drone.vehicle import Config, SimVehicle

SITE = "bench"
Frames = list[tuple[float, int, bytes, int | None]]  # (time s, sysid, frame, key of a position frame or None)


def make_frames(drones: int, rate: int, seconds: float, keys: dict[int, bytes], t0_10us: int) -> Frames:
    """Every drone's telemetry for ``seconds`` in simulated time, signed, ordered by time."""
    out: Frames = []
    tick = 1.0 / rate
    for sysid in range(1, drones + 1):
        phase = (sysid - 1) / drones * 0.5  # independent vehicles: each drone's stream starts at its own moment
        v = SimVehicle(Config(sysid=sysid, lat=30.25 + 0.001 * sysid, pos_hz=rate), 0.0)
        v.armed, v.mode, v.alt = True, 4, 30.0
        v.target = (30.35, 120.25, 30.0)  # kilometres away: it flies the whole time, every position differs
        m = mav.MAVLink(None, sysid, 1)
        m.signing.secret_key, m.signing.sign_outgoing, m.signing.timestamp = keys[sysid], True, t0_10us
        n = int(seconds * rate)
        for i in range(n):
            t = i * tick
            v.step(t)
            for msg in v.telemetry(t):
                frame = msg.pack(m)
                m.seq = (m.seq + 1) % 256
                pos = msg.lat * 10**10 + msg.lon if msg.get_type() == "GLOBAL_POSITION_INT" else None
                out.append((round(phase + t, 6), sysid, frame, pos))
    out.sort(key=lambda x: x[0])
    return out


def datagrams(frames: Frames) -> list[tuple[int, bytes]]:
    """One datagram per drone per tick (what a radio modem or SITL sends), in time order."""
    out: list[tuple[int, bytes]] = []
    cur: dict[tuple[float, int], list[bytes]] = {}
    for t, sysid, f, _ in frames:
        cur.setdefault((t, sysid), []).append(f)
    for (_t, sysid), fs in cur.items():
        out.append((sysid, b"".join(fs)))
    return out


# -- 1. ingest per core ----------------------------------------------------------------------------------------

def baseline(dgrams: list[tuple[int, bytes]]) -> tuple[int, float]:
    parsers: dict[int, mav.MAVLink] = {}
    n = 0
    c0 = time.process_time()
    for sysid, d in dgrams:
        p = parsers.get(sysid)
        if p is None:
            p = parsers[sysid] = mav.MAVLink(None)
            p.robust_parsing = True
        n += len(p.parse_buffer(d) or ())
    return n, time.process_time() - c0


async def ingest(dgrams: list[tuple[int, bytes]], drones: int, tmp: Path, ks: KeyStore) -> tuple[int, float, int]:
    cfg = from_dict({"gateway": {"site": SITE, "data_dir": str(tmp)}, "mavlink": {
        "endpoint": [{"name": "radio", "url": "udpin:127.0.0.1:0"}], "stream_hz": 0, "link_timeout_ms": 600_000},
        "drone": [{"id": f"uav-{i}", "sysid": i} for i in range(1, drones + 1)]})
    published = 0

    def publish(topic: str, payload: bytes, qos: int, retain: bool) -> None:
        nonlocal published
        published += 1

    journal = Journal(tmp / f"journal-{time.monotonic_ns()}.db")
    bridge = DroneBridge(cfg.mavlink, SITE, ks, Registry(cfg.registry), journal, publish)
    async with bridge:
        ep = bridge.router.endpoints[0]
        on_data = bridge.router.on_data
        peers = {i: ("127.0.0.1", 20000 + i) for i in range(1, drones + 1)}
        c0 = time.process_time()
        for sysid, d in dgrams:
            on_data(ep, d, peers[sysid])
        cpu = time.process_time() - c0
        n = sum(v.received for v in bridge.vehicles.values())
        dropped = sum(sum(v.dropped.values()) for v in bridge.vehicles.values())
    journal.close()
    assert dropped == 0, f"{dropped} frames dropped by the bridge: the bench's signing is wrong"
    return n, cpu, published


# -- 2. live -------------------------------------------------------------------------------------------------

def sender(frames: list[tuple[float, int, bytes, int | None]], port: int, conn, start_at: float) -> None:
    """Replays the frames at their times, one UDP socket per drone; returns {(sysid, pos): (sent monotonic ns,
    stream time s)}."""
    import socket

    socks: dict[int, socket.socket] = {}
    sent: dict[tuple[int, int], tuple[int, float]] = {}
    by_tick: dict[tuple[float, int], list[tuple[bytes, int | None]]] = {}
    for t, sysid, f, pos in frames:
        by_tick.setdefault((t, sysid), []).append((f, pos))
    ticks = sorted(by_tick.items())
    while time.monotonic() < start_at:
        time.sleep(0.001)
    base = time.monotonic()
    for (t, sysid), fs in ticks:
        delay = base + t - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        s = socks.get(sysid)
        if s is None:
            s = socks[sysid] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
        now = time.monotonic_ns()
        try:
            s.sendto(b"".join(f for f, _ in fs), ("127.0.0.1", port))
        except BlockingIOError:
            continue
        for _f, pos in fs:
            if pos is not None:
                sent[(sysid, pos)] = (now, t)
    conn.send(sent)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def live(args: argparse.Namespace, frames: Frames, tmp: Path) -> dict:
    mq = Mosquitto(tmp / "mq", conf_extra="set_tcp_nodelay true\n").start()
    port = _free_udp_port()
    conf = tmp / "gw.toml"
    conf.write_text(f'[gateway]\nid = "gw-bench"\nsite = "{SITE}"\ndata_dir = "{tmp / "data"}"\nlog_level = "warning"\n'
                    f'[broker]\nurl = "{mq.url}"\n'
                    f'[mavlink]\nstream_hz = 0\nlink_timeout_ms = 3000\n'
                    f'[[mavlink.endpoint]]\nname = "radio"\nurl = "udpin:127.0.0.1:{port}"\n')
    gw = subprocess.Popen([sys.executable, "-m", "lookout", "gateway", "--config", str(conf)], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    got: list[tuple[str, bytes, int]] = []
    counts: dict[str, int] = {}
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-sub")

    import threading

    gw_up = threading.Event()

    def on_message(c, u, m):
        ch = m.topic.rsplit("/", 1)[1]
        if m.topic.endswith("/gw-bench/state") and b'"online":true' in m.payload:
            gw_up.set()
        counts[ch] = counts.get(ch, 0) + 1
        if ch == "loc":
            got.append((m.topic, m.payload, time.monotonic_ns()))

    sub.on_message = on_message
    sub.connect(mq.host, mq.port)
    sub.subscribe(f"lookout/v1/{SITE}/+/#", qos=0)
    sub.loop_start()
    try:
        gw_up.wait(20)  # the gateway's birth: it is connected and its bridge listens
        if gw.poll() is not None or not gw_up.is_set():
            raise RuntimeError("gateway exited: " + (gw.stderr.read().decode() if gw.stderr else ""))
        parent, child = multiprocessing.Pipe()
        start_at = time.monotonic() + 0.5
        snd = multiprocessing.Process(target=sender, args=(frames, port, child, start_at))
        snd.start()
        time.sleep(max(0.0, start_at - time.monotonic()) + args.warmup)
        c0, t0, n0 = cpu_ticks(gw.pid), time.monotonic(), sum(counts.values())
        sent_in_window = sum(1 for t, *_ in frames if args.warmup <= t < args.seconds - 0.5)
        time.sleep(args.seconds - args.warmup - 0.5)
        c1, t1, n1 = cpu_ticks(gw.pid), time.monotonic(), sum(counts.values())
        sent = parent.recv()
        snd.join(10)
        time.sleep(1.0)
    finally:
        sub.loop_stop()
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(15)
        except subprocess.TimeoutExpired:
            gw.kill()
        mq.stop()
    hz = os.sysconf("SC_CLK_TCK")
    lat = []
    tail = []
    early = []
    for topic, payload, at in got:
        d = json.loads(payload)
        sysid = int(topic.split("/")[3].split("-")[1])
        hit = sent.get((sysid, d["lat"] * 10**10 + d["lon"]))
        if hit is None:
            continue
        ms = (at - hit[0]) / 1e6
        # while the stream runs; its last position per drone is held by the decimator and published up to 1.5
        # periods later when the stream stops (by design: the latest value always goes out), counted apart
        # the first seconds (warm-up: each drone's link-up, birth and journal entry) are counted apart as well
        (early if hit[1] < args.warmup else lat if hit[1] < args.seconds - 1.0 else tail).append(ms)
        if os.environ.get("BENCH_DEBUG") and ms > 20:
            print(f"slow: uav-{sysid} t={hit[1]:.2f} s {ms:.1f} ms", file=sys.stderr)
    lat.sort()
    window = t1 - t0
    cpu_s = (c1 - c0) / hz
    return {"frames_per_s": round(sent_in_window / window), "mqtt_publishes_per_s": round((n1 - n0) / window, 1),
            "mqtt_by_channel": counts, "gateway_cpu_pct": round(100 * cpu_s / window, 1),
            "ingest_frames_per_cpu_s": round(sent_in_window / cpu_s) if cpu_s else None,
            "loc_samples": len(lat), "loc_p50_ms": _pct(lat, 50), "loc_p99_ms": _pct(lat, 99),
            "loc_max_ms": round(lat[-1], 3) if lat else None, "warmup_samples": len(early),
            "warmup_max_ms": round(max(early), 1) if early else None, "tail_samples": len(tail),
            "tail_max_ms": round(max(tail), 1) if tail else None}


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    return round(xs[min(len(xs) - 1, int(len(xs) * p / 100))], 3)


def _free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--drones", type=int, default=20)
    ap.add_argument("--rate", type=int, default=50, help="GLOBAL_POSITION_INT per drone per second")
    ap.add_argument("--seconds", type=float, default=20.0, help="live stream length (the ingest rounds use half)")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of the live stream not counted")
    ap.add_argument("--rounds", type=int, default=5, help="baseline/ingest alternate this many times")
    ap.add_argument("--skip-live", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "mavlink_bridge.json"))
    args = ap.parse_args()
    sys.setswitchinterval(0.001)  # as gateway.service.run() does
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "data").mkdir()
        ks = KeyStore(tmp / "data" / "keystore.db")
        keys = {i: provision_drone(ks, f"uav-{i}", SITE, i).hmac_key for i in range(1, args.drones + 1)}
        base_rates, ingest_rates, published = [], [], 0
        for r in range(args.rounds):  # fresh frames each round: a replayed signed frame is (rightly) dropped
            frames = make_frames(args.drones, args.rate, args.seconds / 2, keys, now_10us() - 1000)
            dg = datagrams(frames)
            n, cpu = baseline(dg)
            base_rates.append(n / cpu)
            m, cpu2, published = asyncio.run(ingest(dg, args.drones, tmp, ks))
            assert m == n, f"the bridge took {m} of {n} messages"
            ingest_rates.append(m / cpu2)
            if os.environ.get("BENCH_DEBUG"):
                print(f"round {r}: baseline {n / cpu:.0f}/s ingest {m / cpu2:.0f}/s", file=sys.stderr)
        res: dict = {"drones": args.drones, "rate_hz": args.rate, "frames_per_round": n,
                     "baseline_parse_msgs_per_cpu_s": round(statistics.median(base_rates)),
                     "ingest_msgs_per_cpu_s": round(statistics.median(ingest_rates)),
                     "ingest_publishes_per_round": published}
        res["ingest_ratio"] = round(res["ingest_msgs_per_cpu_s"] / res["baseline_parse_msgs_per_cpu_s"], 3)
        res["ingest_target"] = 0.30
        if not args.skip_live:
            frames = make_frames(args.drones, args.rate, args.seconds, keys, now_10us())
            res["live"] = live(args, frames, tmp)
            res["p99_target_ms"] = 20
        ks.close()
    res.update({"signed": True, "cpus": os.cpu_count(), "python": platform.python_version(),
                "pymavlink": _version("pymavlink"), "broker": "mosquitto (loopback, set_tcp_nodelay)"})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"{args.drones} drones x {args.rate} Hz positions (+ the rest of an autopilot's stream), signed")
    print(f"pymavlink parse alone  {res['baseline_parse_msgs_per_cpu_s']:>8} msg/s per core")
    print(f"bridge ingest          {res['ingest_msgs_per_cpu_s']:>8} msg/s per core  -> ratio {res['ingest_ratio']} "
          f"(target >= 0.30)")
    if "live" in res:
        lv = res["live"]
        print(f"live: {lv['frames_per_s']} frames/s in, {lv['mqtt_publishes_per_s']} MQTT publishes/s out, gateway "
              f"CPU {lv['gateway_cpu_pct']} %, frame -> MQTT location p50 {lv['loc_p50_ms']} ms "
              f"p99 {lv['loc_p99_ms']} ms (target <= 20), {lv['loc_samples']} samples")
    print(json.dumps(res))
    return 0


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    sys.exit(main())
