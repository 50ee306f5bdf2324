"""A whole console world for browser tests and the web bench: a real Mosquitto, a gateway with its web console,
and simulated nodes running the real firmware (SimNode), on an asyncio loop in a background thread, so a
blocking browser driver (Selenium) can run in the test's own thread. Plus a headless Chromium started the way
the issue asks (Debian's ``chromium`` through ``chromium-driver``, fresh profile, nothing from the network)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import shutil
import threading
from pathlib import Path
from typing import Any

from broker import Mosquitto

SITE = "dongshan"
OPERATOR = "op-1"
OPERATOR_NAME = "值班员 张三"
PASSWORD = "duty-pass-1"
# (id, role, lat degE7, lon degE7): a loudspeaker at the ferry landing and a camera at the south inlet
NODES = (("spk-ferry", "speaker", 299062000, 1196108000), ("cam-inlet", "camera", 298990000, 1196070000))
OUTLINE = {"type": "FeatureCollection", "features": [
    {"type": "Feature", "properties": {"name": "东山水库"}, "geometry": {"type": "Polygon", "coordinates": [[
        [119.6040, 29.8985], [119.6130, 29.8980], [119.6185, 29.9060], [119.6160, 29.9150],
        [119.6070, 29.9160], [119.6030, 29.9080], [119.6040, 29.8985]]]}},
    {"type": "Feature", "properties": {"device": "spk-ferry", "name": "渡口喇叭 ferry"},
     "geometry": {"type": "Point", "coordinates": [119.6108, 29.9062]}},
    {"type": "Feature", "properties": {"name": "北坝 dam"}, "geometry": {"type": "Point",
                                                                         "coordinates": [119.6120, 29.9140]}}]}


class ConsoleWorld:
    def __init__(self, root: Path, nodes: tuple[tuple[str, str, int, int], ...] = NODES, hb_s: int = 5,
                 clip_ms: int = 600) -> None:
        self.root = Path(root)
        self.nodes_spec = nodes
        self.hb_s = hb_s
        self.clip_ms = clip_ms
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._thread, name="console-world", daemon=True)
        self.ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.url = ""
        self.gw: Any = None
        self.web: Any = None
        self.sims: dict[str, Any] = {}
        self._stop: asyncio.Event | None = None
        self.broker: Mosquitto | None = None

    def __enter__(self) -> ConsoleWorld:
        self.broker = Mosquitto(self.root / "broker").start()
        self.thread.start()
        self.ready.result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(timeout=30)
        if self.broker is not None:
            self.broker.stop()

    def call(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run a plain function on the world's loop thread (registry and stores are the loop's) and return."""
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                fut.set_exception(e)
        self.loop.call_soon_threadsafe(run)
        return fut.result(timeout=20)

    def run(self, coro, timeout: float = 20):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=timeout)

    def _thread(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as e:  # noqa: BLE001 - reported through ready
            if not self.ready.done():
                self.ready.set_exception(e)
        finally:
            self.loop.close()

    async def _main(self) -> None:
        import json

        from gwserve import serving

        from lookout.gateway.admin.keystore import KeyStore
        from lookout.gateway.admin.provision import provision_operator
        from lookout.gateway.core.config import from_dict
        from lookout.gateway.service.app import Gateway
        from lookout.gateway.web import WebConsole
        from lookout.simulators.node import SimNode, make_config, wav_bytes

        self._stop = asyncio.Event()
        assert self.broker is not None
        site_map = self.root / "site.geojson"
        site_map.write_text(json.dumps(OUTLINE, ensure_ascii=False))
        cfg = from_dict({"gateway": {"id": "gw-1", "site": SITE, "data_dir": str(self.root / "data")},
                         "broker": {"url": self.broker.url}, "registry": {"min_hb_s": 1},
                         "commands": {"retry_s": 2, "wait_s": 10}, "zones": {"ferry": ["spk-ferry"]},
                         "web": {"listen": "127.0.0.1:0", "site_map": str(site_map), "lang": "zh-CN",
                                 "circle_m": 900}})  # on foot: 15 min at 1.2 m/s, / 1.2 around the shore
        ks = KeyStore(self.root / "ks.db")
        if ks.get_operator(OPERATOR) is None:
            provision_operator(ks, OPERATOR, OPERATOR_NAME, password=PASSWORD)
        for dev, role, lat, lon in self.nodes_spec:
            ident = ks.ensure(dev, SITE, role)
            ncfg = make_config(dev, SITE, role, ident.hmac_key.hex(), self.broker.host, self.broker.port,
                               hb_s=self.hb_s, loc_s=2, position={"lat": lat, "lon": lon, "alt_mm": 112000},
                               **({} if role == "speaker" else {"sensor": {"sensitivity": 100, "min_interval_s": 1}}))
            sim = SimNode(self.root / "nodes" / dev, ncfg, speed=1, pir=role != "speaker", camera=role == "camera")
            if role == "speaker":
                sim.add_clip("nofish", ms=self.clip_ms)
            self.sims[dev] = sim
        try:
            async with serving(Gateway(cfg, keystore=ks)) as gw, WebConsole(gw) as web:
                self.gw, self.web, self.url = gw, web, web.url
                gw.clipdist.audio.put("nofish", wav_bytes(self.clip_ms))
                for sim in self.sims.values():
                    await sim.start()
                for sim in self.sims.values():
                    await sim.wait_online()
                bridged(gw)
                self.ready.set_result(None)
                await self._stop.wait()
                for sim in self.sims.values():
                    await sim.stop()
        finally:
            ks.close()


def bridged(gw: Any) -> None:
    """A drone and an officer's recorder as their bridges (being built elsewhere) would report them: through
    the registry with a position and their link/battery values in ``info``. The console draws them generically."""
    now = gw.clock()
    for dev, kind, lat, lon, info, extra in (
            ("uav-1", "drone", 299110000, 1196140000, {"bat_pct": 76, "statustext": "Mission: patrol north"},
             {"hdg_cd": 31500, "spd_cms": 800}),
            ("rec-07", "recorder", 299035000, 1196150000, {"bat_pct": 54, "rssi": -71}, {})):
        gw.registry.touch(dev, SITE, now, kind=kind, hb_s=30, transport="bridge")
        d = gw.registry.get(dev)
        d.info = info
        gw.registry.location(dev, SITE, {"lat": lat, "lon": lon, "ts": now, "src": "mavlink" if kind == "drone"
                                         else "recorder", "fix": 1, "seq": 1, **extra}, now)


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                  "--window-size=1600,900", "--lang=zh-CN")


def find_chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(browser).exists() and Path(driver).exists()):
        raise RuntimeError("chromium / chromium-driver not found: run scripts/test, which installs them (apt)")
    return browser, driver


def chromium(profile: Path, size: str = "1600,900"):  # type: ignore[no-untyped-def]
    """A headless Chromium with a fresh profile under ``profile``; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for f in CHROMIUM_FLAGS:
        opts.add_argument(f if not f.startswith("--window-size") else f"--window-size={size}")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(driver))
