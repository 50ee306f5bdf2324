"""Gateway configuration: one TOML file, validated completely before anything starts.

Theory of operation: ``load(path)`` parses with ``tomllib`` and hands the dict to ``from_dict``, which walks a
fixed schema section by section. Every error names the key the way an operator sees it in the file
(``[broker].port: expected integer 1..65535, got 'x'``) and all errors are collected, so one run shows every
mistake. Unknown sections and keys are errors too: a typo (``offline_after_mised``) must not silently fall back
to a default. The result is a tree of small frozen dataclasses; nothing else in the gateway reads TOML.

``[broker]`` absent (or ``url`` empty) means the embedded broker (gateway/broker.py) on loopback.
"""

from __future__ import annotations

import builtins
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lookout.gateway.core.config_mavlink import MavlinkConfig
from lookout.gateway.core.config_mavlink import parse as parse_mavlink
from lookout.protocols.topics import is_valid_id


class ConfigError(Exception):
    """One or more configuration errors; ``errors`` lists them, each naming its key."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class BrokerConfig:
    url: str | None = None  # None = embedded broker
    username: str | None = None
    password: str | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    keepalive_s: int = 30
    embedded_port: int = 1883  # where the embedded broker listens (loopback) when no url is given

    @property
    def embedded(self) -> bool:
        return self.url is None

    @property
    def host(self) -> str:
        return urlsplit(self.url or "mqtt://127.0.0.1").hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        u = urlsplit(self.url or "mqtt://127.0.0.1")
        return u.port or (8883 if u.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return (self.url or "").startswith("mqtts://")


@dataclass(frozen=True)
class RegistryConfig:
    offline_after_missed: int = 3  # GB/T 28181: offline after 3 missed heartbeats
    stale_after_missed: int = 1
    grace_ms: int = 2000  # tolerance on top of each expected heartbeat (network and scheduling jitter)
    min_hb_s: int = 5  # a node announcing a shorter period is clamped to this (no false mass-offline)
    max_hb_s: int = 3600  # ... and a longer one to this (an ms/s mix-up must not hide a dead node for days)
    default_hb_s: int = 60  # GB/T 28181 default, for devices seen before their birth


@dataclass(frozen=True)
class CommandsConfig:
    default_ttl_s: int = 300
    retry_s: int = 10
    max_attempts: int = 3
    queue_limit: int = 1000  # queued commands per device; more is refused
    wait_s: int = 30  # how long the operator API waits for a result before answering with the current status


@dataclass(frozen=True)
class WebConfig:
    """The duty operator's web console (gateway/web/); off unless ``listen`` is set."""

    listen: str | None = None  # "host:port"
    lang: str = "zh-CN"  # default language of the console (each operator may switch)
    timezone: str = "Asia/Shanghai"  # the site's time zone: every time on screen is shown in it
    session_idle_s: int = 3600  # a session unused this long expires
    session_max_s: int = 43200  # ... and any session after one 12-hour shift
    site_map: Path | None = None  # GeoJSON: the site's outline (lines/polygons) and named points; None = grid
    circle_m: int = 4200  # 15-minute enforcement circle: 15 min at 20 km/h on roads, / 1.2 road factor
    cookie_secure: bool = False  # set when a TLS proxy serves the console: cookies then only travel over HTTPS


@dataclass(frozen=True)
class RecordersConfig:
    """Serial body-worn recorders (gateway/links/recorder.py). Empty ``devices``: no recorder bridge."""

    devices: tuple[str, ...] = ()  # glob patterns of serial device paths, e.g. /dev/serial/by-id/usb-*Recorder*
    baud: int = 115200  # USB-CDC ignores it; a UART or radio modem needs the right one
    scan_ms: int = 1000  # hot-plug: how often the device paths are looked at (a dock is noticed within this)
    mtu: int = 1024  # largest frame payload offered in HELLO (protocols/defaults: SERIAL_MAX_PAYLOAD)
    window: int = 64  # frames buffered out of order (protocols/defaults: SERIAL_WINDOW)
    retention_days: int = 183  # clips not held as evidence are removed after this (evidence practice: at least 6 months)
    max_clip_mb: int = 4095  # largest clip accepted (the manifest's 32-bit size)


@dataclass(frozen=True)
class Config:
    gateway_id: str = "gw-1"
    site: str = "site"
    data_dir: Path = Path("/var/lib/lookout")
    keystore: Path | None = None  # default data_dir/keystore.db
    log_level: str = "info"
    log_format: str = "text"  # text | json (one object per line)
    min_free_mb: int = 16  # below this free in data_dir, new work is refused (gateway/core/storage.py)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    metrics_listen: str | None = None  # "host:port"
    coap_listen: str | None = None  # "host:port"
    zones: dict[str, tuple[str, ...]] = field(default_factory=dict)
    linkage: dict[str, Any] = field(default_factory=dict)  # [linkage] as written: gateway/linkage/rules.py checks it
    source: Path | None = None  # the gateway.toml this came from (SIGHUP re-reads its [linkage])
    web: WebConfig = field(default_factory=WebConfig)
    mavlink: MavlinkConfig | None = None  # [mavlink] + [[drone]]: the drone bridge (gateway/core/config_mavlink.py)
    recorders: RecordersConfig = field(default_factory=RecordersConfig)

    @property
    def keystore_path(self) -> Path:
        return self.keystore or self.data_dir / "keystore.db"


class _V:
    """Collects errors while reading one section."""

    def __init__(self, errors: list[str], section: str, table: Any):
        self.errors = errors
        self.section = section
        if table is None:
            table = {}
        if not isinstance(table, dict):
            errors.append(f"[{section}]: expected a table, got {table!r}")
            table = {}
        self.table = dict(table)
        self.used: set[str] = set()

    def _err(self, key: str, msg: str) -> None:
        self.errors.append(f"[{self.section}].{key}: {msg}")

    def int(self, key: str, default: int, lo: int, hi: int) -> int:
        self.used.add(key)
        v = self.table.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self._err(key, f"expected integer {lo}..{hi}, got {v!r}")
            return default
        return v

    def str(self, key: str, default: str | None, check=None, rule: str = "") -> str | None:
        self.used.add(key)
        v = self.table.get(key, default)
        if v is None:
            return None
        if not isinstance(v, str) or (check is not None and not check(v)):
            self._err(key, f"expected {rule or 'a string'}, got {v!r}")
            return default
        return v

    def flag(self, key: builtins.str, default: bool) -> bool:
        self.used.add(key)
        v = self.table.get(key, default)
        if not isinstance(v, bool):
            self._err(key, f"expected true or false, got {v!r}")
            return default
        return v

    def finish(self) -> None:
        for k in self.table:
            if k not in self.used:
                self._err(k, "unknown key")


def _hostport(v: str) -> bool:
    host, sep, port = v.rpartition(":")
    return bool(sep) and bool(host) and port.isdigit() and 0 <= int(port) <= 65535


def _broker_url(v: str) -> bool:
    try:
        u = urlsplit(v)
        return u.scheme in ("mqtt", "mqtts") and bool(u.hostname) and (u.port is None or 0 < u.port < 65536)
    except ValueError:
        return False


SECTIONS = ("gateway", "broker", "registry", "commands", "metrics", "coap", "zones", "linkage", "web", "mavlink",
            "drone", "recorders")



def _timezone(v: str) -> bool:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def from_dict(d: dict[str, Any], base: Path | None = None) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    errors: list[str] = []
    for k in d:
        if k not in SECTIONS:
            errors.append(f"[{k}]: unknown section (expected one of {', '.join(SECTIONS)})")

    g = _V(errors, "gateway", d.get("gateway"))
    gid = g.str("id", "gw-1", is_valid_id, "an id of 1-32 chars [a-z0-9_-]")
    site = g.str("site", None, is_valid_id, "an id of 1-32 chars [a-z0-9_-]")
    if site is None and "site" not in g.table:
        errors.append("[gateway].site: required (the site id this gateway serves)")
    data_dir = g.str("data_dir", "/var/lib/lookout")
    keystore = g.str("keystore", None)
    level = g.str("log_level", "info", lambda s: s in ("debug", "info", "warning", "error"),
                  "one of debug, info, warning, error")
    log_format = g.str("log_format", "text", lambda s: s in ("text", "json"), "one of text, json")
    min_free_mb = g.int("min_free_mb", 16, 0, 1_000_000)
    g.finish()

    b = _V(errors, "broker", d.get("broker"))
    url = b.str("url", None, _broker_url, "mqtt://host[:port] or mqtts://host[:port]") or None
    broker = BrokerConfig(
        url=url, username=b.str("username", None), password=b.str("password", None),
        ca=b.str("ca", None), cert=b.str("cert", None), key=b.str("key", None),
        keepalive_s=b.int("keepalive_s", 30, 5, 3600),
        embedded_port=b.int("embedded_port", 1883, 0, 65535),
    )
    if (broker.cert is None) != (broker.key is None):
        errors.append("[broker].cert: cert and key must be given together")
    if broker.ca and not broker.tls:
        errors.append("[broker].ca: a CA is only used with an mqtts:// url")
    b.finish()

    r = _V(errors, "registry", d.get("registry"))
    reg = RegistryConfig(
        offline_after_missed=r.int("offline_after_missed", 3, 1, 100),
        stale_after_missed=r.int("stale_after_missed", 1, 1, 100),
        grace_ms=r.int("grace_ms", 2000, 0, 600_000),
        min_hb_s=r.int("min_hb_s", 5, 1, 86400),
        max_hb_s=r.int("max_hb_s", 3600, 1, 86400),
        default_hb_s=r.int("default_hb_s", 60, 1, 86400),
    )
    if reg.stale_after_missed >= reg.offline_after_missed:
        errors.append(f"[registry].stale_after_missed: must be below offline_after_missed "
                      f"({reg.offline_after_missed}), got {reg.stale_after_missed}")
    if reg.min_hb_s > reg.max_hb_s:
        errors.append(f"[registry].min_hb_s: must not exceed max_hb_s ({reg.max_hb_s}), got {reg.min_hb_s}")
    r.finish()

    c = _V(errors, "commands", d.get("commands"))
    cmds = CommandsConfig(
        default_ttl_s=c.int("default_ttl_s", 300, 1, 7 * 86400),
        retry_s=c.int("retry_s", 10, 1, 3600),
        max_attempts=c.int("max_attempts", 3, 1, 100),
        queue_limit=c.int("queue_limit", 1000, 1, 1_000_000),
        wait_s=c.int("wait_s", 30, 1, 3600),
    )
    c.finish()

    m = _V(errors, "metrics", d.get("metrics"))
    metrics_listen = m.str("listen", None, _hostport, "host:port")
    m.finish()
    co = _V(errors, "coap", d.get("coap"))
    coap_listen = co.str("listen", None, _hostport, "host:port")
    co.finish()

    w = _V(errors, "web", d.get("web"))
    web_listen = w.str("listen", None, _hostport, "host:port")
    web_lang = w.str("lang", "zh-CN", lambda s: s in ("zh-CN", "en"), "one of zh-CN, en")
    web_tz = w.str("timezone", "Asia/Shanghai", _timezone, "an IANA time zone such as Asia/Shanghai")
    web_idle = w.int("session_idle_s", 3600, 60, 86400)
    web_max = w.int("session_max_s", 43200, 300, 7 * 86400)
    web_map = w.str("site_map", None)
    web_circle = w.int("circle_m", 4200, 100, 100_000)
    web_secure = w.flag("cookie_secure", False)
    if web_idle > web_max:
        errors.append(f"[web].session_idle_s: must not exceed session_max_s ({web_max}), got {web_idle}")
    w.finish()

    zones: dict[str, tuple[str, ...]] = {}
    zt = d.get("zones") or {}
    if not isinstance(zt, dict):
        errors.append(f"[zones]: expected a table, got {zt!r}")
        zt = {}
    for z, members in zt.items():
        if not is_valid_id(z):
            errors.append(f"[zones].{z}: zone name must be an id of 1-32 chars [a-z0-9_-]")
        elif not isinstance(members, list) or not all(isinstance(x, str) and is_valid_id(x) for x in members):
            errors.append(f"[zones].{z}: expected a list of device ids, got {members!r}")
        else:
            zones[z] = tuple(members)

    linkage = d.get("linkage") or {}
    if not isinstance(linkage, dict):
        errors.append(f"[linkage]: expected a table, got {linkage!r}")
        linkage = {}
    mavlink = parse_mavlink(d.get("mavlink"), d.get("drone"), errors)
    recorders = _recorders(errors, d.get("recorders"))

    if errors:
        raise ConfigError(errors)
    ddir = Path(data_dir or "/var/lib/lookout")
    if base is not None and not ddir.is_absolute():
        ddir = base / ddir
    ks = Path(keystore) if keystore else None
    if ks is not None and base is not None and not ks.is_absolute():
        ks = base / ks
    site_map = Path(web_map) if web_map else None
    if site_map is not None and base is not None and not site_map.is_absolute():
        site_map = base / site_map
    web = WebConfig(listen=web_listen, lang=web_lang or "zh-CN", timezone=web_tz or "Asia/Shanghai",
                    session_idle_s=web_idle, session_max_s=web_max, site_map=site_map, circle_m=web_circle,
                    cookie_secure=web_secure)
    return Config(gateway_id=gid or "gw-1", site=site or "site", data_dir=ddir, keystore=ks,
                  log_level=level or "info", log_format=log_format or "text", min_free_mb=min_free_mb,
                  broker=broker, registry=reg,
                  commands=cmds, metrics_listen=metrics_listen, coap_listen=coap_listen, zones=zones,
                  linkage=linkage, web=web, mavlink=mavlink, recorders=recorders)


def _recorders(errors: list[str], table: Any) -> RecordersConfig:
    r = _V(errors, "recorders", table)
    r.used.add("devices")
    devs = r.table.get("devices", [])
    if not isinstance(devs, list) or not all(isinstance(x, str) and x.startswith("/") for x in devs):
        errors.append(f"[recorders].devices: expected a list of absolute device paths or globs, got {devs!r}")
        devs = []
    cfg = RecordersConfig(devices=tuple(devs), baud=r.int("baud", 115200, 300, 12_000_000),
                          scan_ms=r.int("scan_ms", 1000, 50, 60_000), mtu=r.int("mtu", 1024, 512, 65535),
                          window=r.int("window", 64, 1, 64), retention_days=r.int("retention_days", 183, 1, 36500),
                          max_clip_mb=r.int("max_clip_mb", 4095, 1, 4095))
    r.finish()
    return cfg


def load(path: str | Path) -> Config:
    """Read and validate a TOML file; relative paths inside it are relative to the file."""
    p = Path(path)
    try:
        text = p.read_bytes().decode()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read ({e.strerror})"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{p}: not UTF-8 text"]) from None
    try:
        d = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{p}: TOML syntax error: {e}"]) from None
    cfg = from_dict(d, base=p.resolve().parent)
    return replace(cfg, source=p.resolve())
