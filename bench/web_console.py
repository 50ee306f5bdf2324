"""Web console: page weight and time to first map render with N devices, in a real headless Chromium.

    python bench/web_console.py [--devices 200] [--runs 5] [--out bench/results/web_console.json]

A real gateway with its console on loopback (tests/support/webworld.py: Mosquitto, gateway, console), N devices
entered into the registry as bridges would (speakers, sensors, cameras, drones and officers spread over 2 km),
and Debian's Chromium through chromium-driver with a fresh profile. Signed in once, then:

- ``page_bytes``: what the map page costs to load: its HTML, every script and style sheet it references, and the
  live feed's first message (the snapshot with N devices), each as sent (no compression on loopback), plus
  ``page_gzip_bytes``, the same compressed at level 6 (what a proxy with gzip would send);
- ``first_render_ms``: from navigation start to the map's first full drawing of the snapshot (the page's own
  ``performance.mark("lk-map-rendered")``), median of ``--runs`` loads;
- ``baseline_first_render_ms``: the same page with 2 devices, measured in the same run, alternating with the N
  device loads; ``render_ratio`` = first_render_ms / baseline_first_render_ms (what N devices add).

The last line printed is a JSON object; it is also written to ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import re
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from webworld import OPERATOR, PASSWORD, ConsoleWorld, chromium  # noqa: E402

KINDS = ("speaker", "sensor", "camera", "drone", "recorder")


def add_devices(world: ConsoleWorld, n: int, prefix: str) -> None:
    def go() -> None:
        gw = world.gw
        now = gw.clock()
        for i in range(n):
            kind = KINDS[i % len(KINDS)]
            dev = f"{prefix}{i:03d}"
            gw.registry.touch(dev, "dongshan", now, kind=kind, hb_s=30)
            gw.registry.get(dev).info = {"bat_pct": 40 + i % 60, "rssi": -60 - i % 30}
            gw.registry.location(dev, "dongshan", {"seq": 1, "ts": now, "fix": 1, "src": "gps",
                                                   "lat": 298990000 + (i * 7919) % 17000,
                                                   "lon": 1196040000 + (i * 104729) % 14000,
                                                   "hdg_cd": (i * 3600) % 36000}, now)
    world.call(go)


def remove_devices(world: ConsoleWorld, prefix: str) -> None:
    def go() -> None:
        for d in [d for d in world.gw.registry.devices if d.startswith(prefix)]:
            world.gw.registry.remove(d)
    world.call(go)


def page_weight(drv, url: str) -> tuple[int, int, dict[str, int]]:
    cookies = "; ".join(f"{c['name']}={c['value']}" for c in drv.get_cookies())
    req = urllib.request.Request(url + "map", headers={"Cookie": cookies})
    html = urllib.request.urlopen(req, timeout=10).read()
    parts = {"html": html}
    for ref in re.findall(rb'(?:src|href)="(/static/[^"]+)"', html):
        parts[ref.decode().split("?")[0]] = urllib.request.urlopen(url.rstrip("/") + ref.decode(), timeout=10).read()
    snap = drv.execute_async_script("""const done = arguments[arguments.length - 1];
      const ws = new WebSocket("ws://" + location.host + "/ws");
      ws.onmessage = (e) => { ws.close(); done(e.data); };""")
    parts["snapshot"] = snap.encode()
    raw = sum(len(b) for b in parts.values())
    gz = sum(len(gzip.compress(b, 6)) for b in parts.values())
    return raw, gz, {k: len(v) for k, v in parts.items()}


def first_render(drv, url: str) -> float:
    drv.get(url + "map")
    return float(drv.execute_async_script("""const done = arguments[arguments.length - 1];
      const t0 = Date.now();
      (function poll() {
        const m = performance.getEntriesByName("lk-map-rendered");
        if (m.length) done(m[0].startTime); else if (Date.now() - t0 > 20000) done(-1); else setTimeout(poll, 5);
      })();"""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "web_console.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lookout-web-bench-") as tmp, ConsoleWorld(Path(tmp), nodes=()) as w:
        drv = chromium(Path(tmp) / "profile")
        try:
            drv.get(w.url + "login")
            drv.find_element("id", "operator").send_keys(OPERATOR)
            drv.find_element("id", "secret").send_keys(PASSWORD)
            drv.find_element("id", "sign-in").click()
            base, many = [], []
            first_render(drv, w.url)  # warm the browser's caches of our assets once
            for _ in range(a.runs):
                base.append(first_render(drv, w.url))  # uav-1 and rec-07 only
                add_devices(w, a.devices, "b")
                many.append(first_render(drv, w.url))
                remove_devices(w, "b")
            add_devices(w, a.devices, "b")
            drv.get(w.url + "map")
            raw, gz, parts = page_weight(drv, w.url)
        finally:
            drv.quit()
    if min(base + many) < 0:
        raise SystemExit("the map never rendered")
    res = {"bench": "web_console", "devices": a.devices, "runs": a.runs,
           "first_render_ms": round(statistics.median(many), 1),
           "baseline_first_render_ms": round(statistics.median(base), 1),
           "render_ratio": round(statistics.median(many) / statistics.median(base), 2),
           "page_bytes": raw, "page_gzip_bytes": gz, "parts": parts,
           "first_render_runs_ms": [round(x, 1) for x in many], "baseline_runs_ms": [round(x, 1) for x in base],
           "machine": platform.platform(), "python": platform.python_version()}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"map page with {a.devices} devices: {raw} bytes ({gz} gzipped), first render "
          f"{res['first_render_ms']} ms (2 devices: {res['baseline_first_render_ms']} ms)")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
