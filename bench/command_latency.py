"""Command round trip through the gateway vs a bare broker echo, with N simulated nodes connected.

    python bench/command_latency.py [--nodes 1000] [--commands 1000] [--out bench/results/command_latency.json]

What is measured (all through one Mosquitto started here, tests/support/broker.py):
- nodes: N real MQTT connections (one paho client per node: own client id, retained birth, last will, its own
  ``cmd`` subscription), all driven by ONE thread with a selector (paho's external-loop API) instead of N
  threads, in a separate process (nodes are other devices: they must not share the gateway's GIL). Each node checks every command like firmware does (``signing.check_command``: MAC, target, counter,
  expiry) and answers with a signed ``accepted`` and a signed ``done``;
- gateway (primary figure, ``p50_ms``/``p99_ms``): an operator ``command`` request handled by the gateway
  (``Gateway.handle_op``: target lookup, operator journal entry, command stored in SQLite, counter reserved,
  signed, published QoS 1, PUBACK, node result MAC-checked, journaled) until the final result is in - i.e. one
  broker round trip gateway -> node -> gateway plus everything the gateway adds;
- operator over MQTT (``operator_*``): the same request sent by a remote ``lookout`` client on ``opreq`` and
  answered on ``opres``: two broker round trips (operator->gateway->operator around gateway->node->gateway);
- baseline: a client publishing QoS 1 and a bare paho client echoing it back QoS 1 through the same broker
  while the nodes are connected: one broker round trip.

``p99_ratio = p99_ms / baseline_p99_ms``; the target (issue 4) is <= 2: the gateway adds at most the broker's
own round trip. The last line printed is a JSON object; it is also written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
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

from gateway.config import from_dict
from gateway.keystore import KeyStore
from gateway.mqtt import MQTTLink, nodelay
from gateway.opclient import OperatorClient
from gateway.service import Gateway
from protocols import messages, signing, topics
from protocols.errors import AuthError, MessageError

SITE = "bench"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class NodeFarm(threading.Thread):
    """N paho clients, one selector thread."""

    def __init__(self, host: str, port: int, keys: dict[str, bytes]):
        super().__init__(name="node-farm", daemon=True)
        self.host, self.port, self.keys = host, port, keys
        self.sel = selectors.DefaultSelector()
        self.clients: dict[str, paho.Client] = {}
        self.last_ctr = {d: 0 for d in keys}
        self.seq = {d: 0 for d in keys}
        self.connected = 0
        self.handled = 0
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
        c.subscribe(topics.topic(SITE, dev, "cmd"), 1)
        c.publish(topics.topic(SITE, dev, "state"),
                  messages.encode("birth", messages.birth("speaker", 0, "bench", 60, site=SITE)), 1, True)
        self.connected += 1

    def _reply(self, c, dev: str, cid: str, status: str, **kw) -> None:
        self.seq[dev] += 1
        msg = messages.result(cid, status, seq=self.seq[dev], **kw)
        signing.sign(self.keys[dev], "res", msg)
        c.publish(topics.topic(SITE, dev, "res"), messages.encode("res", msg), 1)

    def _on_message(self, c, dev, m) -> None:
        try:
            cmd = messages.decode("cmd", m.payload)
            self.last_ctr[dev] = signing.check_command(self.keys[dev], cmd, dev, self.last_ctr[dev], now_ms())
        except (MessageError, AuthError) as e:
            print(f"node {dev} rejected a command: {e}", file=sys.stderr)
            return
        self._reply(c, dev, cmd["id"], "accepted")
        self._reply(c, dev, cmd["id"], "done", data={"ok": True})
        self.handled += 1

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
    """The node farm in its own process: nodes are separate devices and must not share the gateway's GIL."""
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


async def baseline(url: str, n: int) -> list[float]:
    """QoS 1 request -> bare paho echo -> QoS 1 reply, through the same broker."""
    host, port = url.split("//")[1].split(":")
    echo = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-echo", protocol=paho.MQTTv311)
    echo.on_connect = lambda c, u, f, rc, p: c.subscribe("bench/echo/req", 1)
    echo.on_message = lambda c, u, m: c.publish("bench/echo/res", m.payload, 1)
    echo.on_socket_open = nodelay
    echo.connect(host, int(port), 60)
    echo.loop_start()
    out: list[float] = []
    waiter: dict[str, asyncio.Future[None]] = {}

    def on_res(topic: str, payload: bytes, retained: bool) -> None:
        f = waiter.pop(payload[:16].decode(), None)
        if f is not None and not f.done():
            f.set_result(None)

    link = MQTTLink(url, "bench-client")
    link.subscribe("bench/echo/res", on_res, 1)
    async with link:
        await asyncio.sleep(0.5)
        pad = b"x" * 300  # about the size of a signed command
        loop = asyncio.get_running_loop()
        for i in range(n):
            key = f"{i:016d}"
            fut = loop.create_future()
            waiter[key] = fut
            t0 = time.perf_counter()
            link.publish_nowait("bench/echo/req", key.encode() + pad, 1)
            await asyncio.wait_for(fut, 10)
            out.append((time.perf_counter() - t0) * 1000)
    echo.loop_stop()
    echo.disconnect()
    return out


async def bench(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="lookout-bench-"))
    mq = Mosquitto(tmp / "broker", conf_extra="max_queued_messages 100000\nset_tcp_nodelay true\n").start()
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
        async with Gateway(cfg, keystore=ks) as gw:
            serve = asyncio.create_task(gw.serve())
            while gw.registry.counts()["online"] < args.nodes and time.monotonic() - t0 < 120:
                await asyncio.sleep(0.1)
            online = gw.registry.counts()["online"]
            setup_s = time.monotonic() - t0
            await asyncio.sleep(2.5)  # let the births' journal entries, registry flush and snapshot settle
            rnd = random.Random(1)
            for d in ids[: min(20, len(ids))]:  # warm-up
                await gw.handle_op("op-bench", "command", _op(d), "w")
            gw_ms: list[float] = []
            for i in range(args.commands):
                d = rnd.choice(ids)
                t = time.perf_counter()
                r = await gw.handle_op("op-bench", "command", _op(d), f"r{i}")
                gw_ms.append((time.perf_counter() - t) * 1000)
                if r["code"] != "ok":
                    raise RuntimeError(f"command to {d}: {r}")
            op_ms: list[float] = []
            async with OperatorClient(mq.url, SITE, "op-bench", token) as cl:
                for i in range(min(args.commands, args.operator_commands)):
                    d = rnd.choice(ids)
                    t = time.perf_counter()
                    r = await cl.request("command", _op(d), timeout=20)
                    op_ms.append((time.perf_counter() - t) * 1000)
                    if r["code"] != "ok":
                        raise RuntimeError(f"operator command to {d}: {r}")
            base_ms = await baseline(mq.url, args.commands)
            verify_ok = gw.journal.verify().ok
            gw.stop()
            await serve
        stop.set()
        farm.join(10)
        ks.close()
    finally:
        mq.stop()
    res = {
        "p50_ms": round(pct(gw_ms, 50), 3), "p99_ms": round(pct(gw_ms, 99), 3),
        "baseline_p50_ms": round(pct(base_ms, 50), 3), "baseline_p99_ms": round(pct(base_ms, 99), 3),
        "p99_ratio": round(pct(gw_ms, 99) / pct(base_ms, 99), 2),
        "operator_p50_ms": round(pct(op_ms, 50), 3), "operator_p99_ms": round(pct(op_ms, 99), 3),
        "operator_p99_ratio": round(pct(op_ms, 99) / pct(base_ms, 99), 2),
        "nodes": args.nodes, "nodes_online": online, "commands": args.commands,
        "operator_commands": len(op_ms), "setup_s": round(setup_s, 1), "journal_ok": verify_ok,
        "node_model": "one paho client (own TCP connection, birth, will, cmd subscription) per node, all "
                      "driven by one selector thread in a separate process; each node verifies MAC/counter/expiry and answers "
                      "signed accepted + done",
        "measure": "p50/p99: Gateway.handle_op('command') until the node's final result (1 broker round trip "
                   "+ gateway work); operator_*: same via MQTT opreq/opres (2 broker round trips); baseline: "
                   "QoS 1 publish -> bare paho echo -> QoS 1 reply (1 broker round trip)",
        "broker": "mosquitto (local, loopback)", "python": platform.python_version(),
    }
    return res


def _op(dev: str) -> dict:
    return {"to": dev, "name": "set_volume", "args": {"volume": 50}, "priority": 1, "queue": False,
            "wait": "final", "wait_s": 10}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--commands", type=int, default=1000)
    ap.add_argument("--operator-commands", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "command_latency.json"))
    args = ap.parse_args()
    sys.setswitchinterval(0.001)  # as gateway.service.run() does
    res = asyncio.run(bench(args))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"nodes {res['nodes_online']}/{res['nodes']} online in {res['setup_s']} s; {res['commands']} commands")
    print(f"gateway  p50 {res['p50_ms']:.2f} ms  p99 {res['p99_ms']:.2f} ms")
    print(f"operator p50 {res['operator_p50_ms']:.2f} ms  p99 {res['operator_p99_ms']:.2f} ms (over MQTT)")
    print(f"baseline p50 {res['baseline_p50_ms']:.2f} ms  p99 {res['baseline_p99_ms']:.2f} ms (bare echo)")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
