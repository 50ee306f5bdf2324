"""Fuzz every network-facing entry of a running gateway and node at length (issue 17: >= 10,000 cases each).

Runs tests/support/fuzz_entries.py's ``World`` against a Mosquitto of its own: MQTT payloads on every topic the
gateway and the node subscribe to, CoAP and MAVLink datagrams, a recorder's serial byte stream (a real pty),
then gateway.toml and a node's config.json through their loaders; after each network entry the world must
still serve (operator API, a broadcast done, the drone answering, CoAP 2.04, a recorder heartbeat through) and
no handler may have raised. Reports cases and cases per second per entry; the baseline is the same run's
valid-input rate (the operator's status request round trips, measured before and after), so a rate means
"garbage handled per second" beside "requests served per second". Prints JSON on its last line and writes
bench/results/fuzz_entries.json. Exit 1 on any failure. ``--quick`` runs 1,000 per entry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

from broker import Mosquitto  # noqa: E402

from lookout.tools import firmware_host  # noqa: E402

firmware_host.install()

from fuzz_entries import World, fuzz_configs  # noqa: E402

from lookout.gateway.links.opclient import OperatorClient  # noqa: E402


async def status_rate(w: World, n: int = 200) -> float:
    """Valid operator requests answered per second (the baseline)."""
    async with OperatorClient(w.broker.url, "dongshan", "op-1", w.token) as cl:
        t0 = time.perf_counter()
        for _ in range(n):
            assert (await cl.request("status", {}, timeout=10))["code"] == "ok"
        return n / (time.perf_counter() - t0)


async def network(tmp: Path, cases: int) -> dict:
    broker = Mosquitto(tmp / "broker").start()
    try:
        async with World(tmp, broker) as w:
            base0 = await status_rate(w)
            rates = {}
            t_all = time.perf_counter()
            counts: dict[str, int] = {}
            for ch, (topic, golden) in w.golden_mqtt().items():
                w.current = f"mqtt:{ch}"
                t0 = time.perf_counter()
                counts[f"mqtt:{ch}"] = await w.mqtt(ch, topic, golden, cases, 1)
                rates[f"mqtt:{ch}"] = counts[f"mqtt:{ch}"] / (time.perf_counter() - t0)
                await w.serving(15 + cases / 500)
            for name, fn in (("coap", w.coap), ("mavlink", w.mavlink), ("serial", w.serial)):
                w.current = name
                t0 = time.perf_counter()
                counts[name] = await fn(cases, 1)
                rates[name] = counts[name] / (time.perf_counter() - t0)
                await w.serving(15 + cases / 500)
            for name, (topic, golden) in w.golden_node().items():
                w.current = f"node:{name}"
                t0 = time.perf_counter()
                counts[f"node:{name}"] = await w.mqtt(name, topic, golden, cases, 1)
                rates[f"node:{name}"] = counts[f"node:{name}"] / (time.perf_counter() - t0)
                if name == "gwstate":
                    await w.gateway_seen(cases)
                await w.serving(15 + cases / 500)
            base1 = await status_rate(w)
            return {"counts": counts, "rates": rates, "baseline_status_per_s": [base0, base1],
                    "node_reconnects": w.node.node.client.connects - 1,
                    "gwstate_settle_s": round(getattr(w, "settle_s", 0.0), 1),
                    "node_inbox_dropped": w.node.node.client.dropped,
                    "network_s": time.perf_counter() - t_all, "forged": w.gw.commands.forged}
    finally:
        broker.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000, help="cases per entry (default 10,000)")
    ap.add_argument("--quick", action="store_true", help="1,000 per entry")
    args = ap.parse_args()
    cases = 1000 if args.quick else args.cases
    with tempfile.TemporaryDirectory(prefix="lookout-fuzz-") as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        try:
            net = asyncio.run(network(tmp / "net", cases))
            cfg_t = time.perf_counter()
            cfg = fuzz_configs(tmp, cases)
            cfg_s = time.perf_counter() - cfg_t
        except AssertionError as e:
            print(f"FAILED: {e}", file=sys.stderr)
            print(json.dumps({"bench": "fuzz_entries", "ok": False, "error": str(e)[:500]}))
            return 1
    counts = {**net["counts"], **cfg}
    base = sum(net["baseline_status_per_s"]) / 2
    rows = {k: {"cases": n, "per_s": round(net["rates"][k], 1) if k in net["rates"] else None}
            for k, n in counts.items()}  # the config files: only their total time (config_s) is measured
    for name, r in rows.items():
        print(f"{name:14} {r['cases']:7d} cases  " + (f"{r['per_s']:9.1f}/s" if r["per_s"] else ""))
    print(f"baseline: {base:.0f} valid operator requests/s (before {net['baseline_status_per_s'][0]:.0f}, "
          f"after {net['baseline_status_per_s'][1]:.0f}); forged signatures refused: {net['forged']}")
    out = {"bench": "fuzz_entries", "ok": True, "cases_per_entry": cases, "entries": len(counts),
           "cases_min": min(counts.values()), "cases_total": sum(counts.values()), "per_entry": rows,
           "baseline_status_per_s": round(base, 1), "node_reconnects": net["node_reconnects"],
           "node_inbox_dropped": net["node_inbox_dropped"], "gwstate_settle_s": net["gwstate_settle_s"],
           "mqtt_cases_per_s_ratio": round(min(v for k, v in net["rates"].items() if k.startswith("mqtt"))
                                            / base, 2),
           "config_s": round(cfg_s, 1), "elapsed_s": round(time.perf_counter() - t0, 1)}
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "fuzz_entries.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
