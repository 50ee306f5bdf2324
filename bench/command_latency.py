"""Command round trip through the gateway vs the same round trip through a bare paho relay, N nodes connected.

    python bench/command_latency.py [--nodes 1000] [--commands 1000] [--rounds 5] [--out bench/results/...json]

Everything goes through one Mosquitto started here (tests/support/broker.py, ``set_tcp_nodelay true``). Processes:
the node farm (N nodes), the operator (a remote ``lookout`` client), and the bench process holding the gateway
(or, for the baseline, the paho relay standing in for it). Nodes and operator are other machines in the field, so
they never share the gateway's GIL.

- nodes: N real MQTT connections (one paho client per node: own client id, retained birth, last will, its own
  ``cmd`` subscription), driven by one selector thread (paho's external-loop API). Each node checks every command
  like firmware does (``signing.check_command``: MAC, target, counter, expiry) and answers a signed ``accepted``
  and a signed ``done``.

Paths measured (B = one traversal of the broker: publisher -> broker -> subscriber, QoS 1):
- ``p50_ms``/``p99_ms`` (the issue's figure): operator ``command`` request over MQTT, answered when the node's
  final result is in: operator -B-> gateway -B-> node -B-> gateway (accepted, done) -B-> operator = 4 B plus the
  gateway's work (operator check, target lookup, journal, command store, counter, signing, MAC check of results);
- ``baseline_*``: the same request path with a bare paho client in the gateway's place: operator -B-> relay -B->
  node -B-> relay (accepted, done) -B-> operator = 4 B; the relay only forwards bytes (the operator sends a command
  already signed; the node does the same checks and answers the same two signed results). The relay runs in the
  gateway's process, in paho's network thread, with no asyncio and no storage;
- ``p99_ratio = p99_ms / baseline_p99_ms``: what the gateway's own processing adds over forwarding (target <= 2);
- ``in_gateway_*``: ``Gateway.handle_op('command')`` called inside the gateway process: gateway -B-> node -B->
  gateway = 2 B plus the gateway's work; compared with ``echo_*``: a client publishing to a bare paho echo that
  publishes it back = 2 B; ``in_gateway_p99_ratio`` is that comparison.

The paths run interleaved in ``--rounds`` rounds (so machine noise hits them alike), each path ``--commands``
commands in all, after a warm-up. The last line printed is a JSON object; it is also written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import selectors
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

import paho.mqtt.client as paho
from broker import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.core.config import from_dict
from lookout.gateway.links.mqtt import MQTTLink, nodelay
from lookout.gateway.links.opclient import OperatorClient
from lookout.gateway.service.app import Gateway
from lookout.protocols import messages, signing, topics
from lookout.protocols.errors import AuthError, MessageError

SITE = "bench"
RELAY = "bench/relay"  # the baseline's namespace: RELAY/req/<dev>, RELAY/<dev>/cmd, RELAY/<dev>/res
RELAY_OP = "bench/relay-op/res"  # relay -> operator (outside RELAY/+/res, which the relay subscribes to)
ECHO = "bench/echo"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class NodeFarm(threading.Thread):
    """N paho clients, one selector thread. Commands on the gateway's topic and on the relay's get the same
    treatment (a relay command has its own counter sequence: the relay is another signer as far as the bench
    goes)."""

    def __init__(self, host: str, port: int, keys: dict[str, bytes]):
        super().__init__(name="node-farm", daemon=True)
        self.host, self.port, self.keys = host, port, keys
        self.sel = selectors.DefaultSelector()
        self.clients: dict[str, paho.Client] = {}
        self.last_ctr = {d: 0 for d in keys}
        self.relay_ctr = {d: 0 for d in keys}
        self.seq = {d: 0 for d in keys}
        self.connected = 0
        self.running = True
        self.lock = threading.Lock()

    def connect_all(self) -> None:
        for dev in self.keys:
            c = paho.Client(CallbackAPIVersion.VERSION2, client_id=dev, protocol=paho.MQTTv311, userdata=dev)
            st = topics.topic(SITE, dev, "state")
            c.will_set(st, messages.encode("death", messages.death(0, "lost")), 1, True)
            c.on_connect = self._on_connect
            c.on_message = self._on_message
            c.on_socket_open = nodelay
            c.connect(self.host, self.port, 60)
            self.clients[dev] = c
            with self.lock:
                self.sel.register(c.socket(), selectors.EVENT_READ, c)

    def _on_connect(self, c, dev, flags, rc, props) -> None:
        c.subscribe([(topics.topic(SITE, dev, "cmd"), 1), (f"{RELAY}/{dev}/cmd", 1)])
        c.publish(topics.topic(SITE, dev, "state"),
                  messages.encode("birth", messages.birth("speaker", 0, "bench", 60, site=SITE)), 1, True)
        self.connected += 1

    def _reply(self, c, dev: str, topic: str, cid: str, status: str, **kw) -> None:
        self.seq[dev] += 1
        msg = messages.result(cid, status, seq=self.seq[dev], **kw)
        signing.sign(self.keys[dev], "res", msg)
        c.publish(topic, messages.encode("res", msg), 1)

    def _on_message(self, c, dev, m) -> None:
        relay = m.topic.startswith(RELAY)
        last = self.relay_ctr if relay else self.last_ctr
        try:
            cmd = messages.decode("cmd", m.payload)
            last[dev] = signing.check_command(self.keys[dev], cmd, dev, last[dev], now_ms())
        except (MessageError, AuthError) as e:
            print(f"node {dev} rejected a command: {e}", file=sys.stderr)
            return
        res = f"{RELAY}/{dev}/res" if relay else topics.topic(SITE, dev, "res")
        self._reply(c, dev, res, cmd["id"], "accepted")
        self._reply(c, dev, res, cmd["id"], "done", data={"ok": True})

    def run(self) -> None:
        last_misc = time.monotonic()
        while self.running:
            with self.lock:
                events = self.sel.select(0.05)
            for key, _ in events:
                key.data.loop_read()
            for c in self.clients.values():
                if c.want_write():
                    c.loop_write()
            if time.monotonic() - last_misc > 1.0:
                for c in self.clients.values():
                    c.loop_misc()
                last_misc = time.monotonic()

    def stop(self) -> None:
        self.running = False
        self.join(5)
        for c in self.clients.values():
            c.disconnect()


def farm_process(host: str, port: int, keys: dict[str, bytes], ready, stop) -> None:
    farm = NodeFarm(host, port, keys)
    farm.connect_all()
    farm.start()
    while farm.connected < len(keys):
        time.sleep(0.05)
    ready.set()
    stop.wait()
    farm.stop()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


class Relay:
    """The baseline's stand-in for the gateway: a bare paho client forwarding bytes in its network thread."""

    def __init__(self, host: str, port: int):
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-relay", protocol=paho.MQTTv311)
        c.on_connect = lambda c, u, f, rc, p: c.subscribe([(f"{RELAY}/req/+", 1), (f"{RELAY}/+/res", 1),
                                                           (f"{ECHO}/req", 1)])
        c.on_message = self._on_message
        c.on_socket_open = nodelay
        c.max_inflight_messages_set(1000)
        self.ready = threading.Event()
        c.on_subscribe = lambda *a: self.ready.set()
        c.connect(host, port, 60)
        c.loop_start()
        self.c = c

    def _on_message(self, c, u, m) -> None:
        t = m.topic
        if t.startswith(f"{RELAY}/req/"):  # operator -> relay: forward to the node
            c.publish(f"{RELAY}/{t.rsplit('/', 1)[1]}/cmd", m.payload, 1)
        elif t == f"{ECHO}/req":  # the 2-traversal echo
            c.publish(f"{ECHO}/res", m.payload, 1)
        elif b'"status":"done"' in m.payload:  # node's final result -> operator
            c.publish(RELAY_OP, m.payload, 1)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


# -- the operator (its own process) --------------------------------------------------------------------------

def _op(dev: str) -> dict:
    return {"to": dev, "name": "set_volume", "args": {"volume": 50}, "priority": 1, "queue": False,
            "wait": "final", "wait_s": 10}


def presigned(keys: dict[str, bytes], devs: list[str], ctr0: int) -> list[tuple[str, str, bytes]]:
    """Signed commands for the relay path (made before the clock starts: signing is gateway work)."""
    from lookout.gateway.core.commands import canonical_fast, mac_hex
    out = []
    now = now_ms()
    for i, d in enumerate(devs):
        cid = f"r{ctr0 + i:011d}"
        msg = messages.command(cid, d, "set_volume", {"volume": 50}, now, now + 600_000, 1, ctr0 + i + 1,
                               "op-bench")
        msg["mac"] = mac_hex(keys[d], "cmd", msg)
        out.append((d, cid, canonical_fast(msg)))
    return out


async def operator_main(url: str, token: str, keys: dict[str, bytes], conn) -> None:
    loop = asyncio.get_running_loop()
    waiting: dict[str, asyncio.Future[None]] = {}

    def on_res(topic: str, payload: bytes, retained: bool) -> None:
        key = json.loads(payload)["id"] if topic == RELAY_OP else payload[:16].decode()
        f = waiting.pop(key, None)
        if f is not None and not f.done():
            f.set_result(None)

    link = MQTTLink(url, "bench-operator-raw")
    link.subscribe(RELAY_OP, on_res, 1)
    link.subscribe(f"{ECHO}/res", on_res, 1)
    ctr0 = 0
    pad = b"x" * 300  # about the size of a signed command
    async with link, OperatorClient(url, SITE, "op-bench", token) as cl:
        while True:
            job = await loop.run_in_executor(None, conn.recv)
            if job is None:
                break
            path, devs = job
            out: list[float] = []
            if path == "gateway":
                for d in devs:
                    t = time.perf_counter()
                    r = await cl.request("command", _op(d), timeout=20)
                    out.append((time.perf_counter() - t) * 1000)
                    if r["code"] != "ok":
                        raise RuntimeError(f"operator command to {d}: {r}")
            elif path == "relay":
                cmds = presigned(keys, devs, ctr0)
                ctr0 += len(devs)
                for d, cid, wire in cmds:
                    fut = loop.create_future()
                    waiting[cid] = fut
                    t = time.perf_counter()
                    link.publish_nowait(f"{RELAY}/req/{d}", wire, 1)
                    await asyncio.wait_for(fut, 10)
                    out.append((time.perf_counter() - t) * 1000)
            elif path == "echo":
                for i in range(len(devs)):
                    key = f"{ctr0 + i:016d}"
                    fut = loop.create_future()
                    waiting[key] = fut
                    t = time.perf_counter()
                    link.publish_nowait(f"{ECHO}/req", key.encode() + pad, 1)
                    await asyncio.wait_for(fut, 10)
                    out.append((time.perf_counter() - t) * 1000)
                ctr0 += len(devs)
            conn.send(out)


def operator_process(url: str, token: str, keys: dict[str, bytes], conn) -> None:
    sys.setswitchinterval(0.001)
    asyncio.run(operator_main(url, token, keys, conn))


# -- the run -------------------------------------------------------------------------------------------------

async def bench(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lookout-bench-"))
    mq = Mosquitto(tmp / "broker", conf_extra="max_queued_messages 100000\nset_tcp_nodelay true\n").start()
    loop = asyncio.get_running_loop()
    times: dict[str, list[float]] = {"gateway": [], "relay": [], "in_gateway": [], "echo": []}
    try:
        ks = KeyStore(tmp / "ks.db")
        token = ks.add_operator("op-bench", "bench", "operator")
        ids = [f"spk-{i:04d}" for i in range(args.nodes)]
        keys = {d: ks.ensure(d, SITE, "speaker").hmac_key for d in ids}
        cfg = from_dict({"gateway": {"id": "gw-bench", "site": SITE, "data_dir": str(tmp / "data")},
                         "broker": {"url": mq.url}, "commands": {"retry_s": 10, "wait_s": 10}})
        ctx = multiprocessing.get_context("fork")
        ready, stop = ctx.Event(), ctx.Event()
        farm = ctx.Process(target=farm_process, args=(mq.host, mq.port, keys, ready, stop), daemon=True)
        t0 = time.monotonic()
        farm.start()
        ready.wait(120)
        mine, theirs = ctx.Pipe()  # fork the operator before this process has threads
        opp = ctx.Process(target=operator_process, args=(mq.url, token, keys, theirs), daemon=True)
        opp.start()
        relay = Relay(mq.host, mq.port)
        relay.ready.wait(10)
        async with Gateway(cfg, keystore=ks) as gw:
            serve = asyncio.create_task(gw.serve())
            while gw.registry.counts()["online"] < args.nodes and time.monotonic() - t0 < 120:
                await asyncio.sleep(0.1)
            online = gw.registry.counts()["online"]
            setup_s = time.monotonic() - t0
            await asyncio.sleep(2.5)  # let the births' journal entries, registry flush and snapshot settle

            async def remote(path: str, devs: list[str]) -> list[float]:
                mine.send((path, devs))
                return await loop.run_in_executor(None, mine.recv)

            async def in_gateway(devs: list[str], tag: str) -> list[float]:
                out = []
                for i, d in enumerate(devs):
                    t = time.perf_counter()
                    r = await gw.handle_op("op-bench", "command", _op(d), f"{tag}{i}")
                    out.append((time.perf_counter() - t) * 1000)
                    if r["code"] != "ok":
                        raise RuntimeError(f"command to {d}: {r}")
                return out

            rnd = random.Random(1)
            warm = ids[: min(20, len(ids))]
            await remote("gateway", warm), await remote("relay", warm), await remote("echo", warm)
            await in_gateway(warm, "w")
            per = max(1, args.commands // args.rounds)
            for r in range(args.rounds):
                n = per if r < args.rounds - 1 else args.commands - per * (args.rounds - 1)
                for path in ("gateway", "relay", "in_gateway", "echo"):
                    devs = [rnd.choice(ids) for _ in range(n)]
                    times[path] += await (in_gateway(devs, f"r{r}.") if path == "in_gateway"
                                          else remote(path, devs))
                    if os.environ.get("BENCH_DEBUG"):  # per-round figures on stderr
                        x = sorted(times[path][-n:])
                        print(f"round {r} {path}: p50 {x[n // 2]:.2f} p99 {x[int(n * .99)]:.2f}", file=sys.stderr)
            mine.send(None)
            opp.join(10)
            verify_ok = gw.journal.verify().ok
            journal_entries = gw.journal.head()[0]
            gw.stop()
            await serve
        relay.close()
        stop.set()
        farm.join(10)
        ks.close()
    finally:
        mq.stop()

    def q(path: str, p: float) -> float:
        return round(pct(times[path], p), 3)

    return {
        "p50_ms": q("gateway", 50), "p99_ms": q("gateway", 99),
        "baseline_p50_ms": q("relay", 50), "baseline_p99_ms": q("relay", 99),
        "p99_ratio": round(pct(times["gateway"], 99) / pct(times["relay"], 99), 2),
        "p50_ratio": round(pct(times["gateway"], 50) / pct(times["relay"], 50), 2),
        "gateway_added_p50_ms": round(pct(times["gateway"], 50) - pct(times["relay"], 50), 3),
        "in_gateway_p50_ms": q("in_gateway", 50), "in_gateway_p99_ms": q("in_gateway", 99),
        "echo_p50_ms": q("echo", 50), "echo_p99_ms": q("echo", 99),
        "in_gateway_p99_ratio": round(pct(times["in_gateway"], 99) / pct(times["echo"], 99), 2),
        "max_ms": q("gateway", 100), "baseline_max_ms": q("relay", 100),
        "nodes": args.nodes, "nodes_online": online, "commands": args.commands, "rounds": args.rounds,
        "setup_s": round(setup_s, 1), "journal_ok": verify_ok, "journal_entries": journal_entries,
        "hops": {"p50/p99": "operator -B-> gateway -B-> node -B-> gateway -B-> operator (4 B) + gateway work",
                 "baseline": "operator -B-> paho relay -B-> node -B-> relay -B-> operator (4 B), relay forwards bytes",
                 "in_gateway": "gateway -B-> node -B-> gateway (2 B) + gateway work, timed inside the gateway",
                 "echo": "client -B-> paho echo -B-> client (2 B)",
                 "B": "one QoS 1 traversal of the broker (publisher -> broker -> subscriber)"},
        "node_model": "one paho client (own TCP connection, birth, will, cmd subscription) per node, all "
                      "driven by one selector thread in a separate process; each node verifies MAC/counter/expiry "
                      "and answers signed accepted + done (same on the gateway and relay paths)",
        "broker": "mosquitto (local, loopback, set_tcp_nodelay)", "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--commands", type=int, default=1000, help="commands per path")
    ap.add_argument("--rounds", type=int, default=5, help="the paths alternate this many times")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "command_latency.json"))
    args = ap.parse_args()
    sys.setswitchinterval(0.001)  # as gateway.service.run() does
    res = asyncio.run(bench(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"nodes {res['nodes_online']}/{res['nodes']} online in {res['setup_s']} s; "
          f"{res['commands']} commands per path in {res['rounds']} rounds")
    print(f"operator via gateway  p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms  (4 B + gateway)")
    print(f"operator via relay    p50 {res['baseline_p50_ms']:.2f} ms  p99 {res['baseline_p99_ms']:.2f} ms  "
          f"(4 B, baseline)  -> p99_ratio {res['p99_ratio']}")
    print(f"in-gateway            p50 {res['in_gateway_p50_ms']:.2f} ms  p99 {res['in_gateway_p99_ms']:.2f} ms  "
          f"(2 B + gateway)")
    print(f"bare echo             p50 {res['echo_p50_ms']:.2f} ms  p99 {res['echo_p99_ms']:.2f} ms  (2 B)  "
          f"-> in_gateway_p99_ratio {res['in_gateway_p99_ratio']}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
