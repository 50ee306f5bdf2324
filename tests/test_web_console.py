"""The web console without a browser: configuration, the site map, languages, sign-in, sessions, CSRF, the
operator API behind every action, and the live feed (aiohttp's own client against the real application and a
real gateway on a real Mosquitto). The browser end of it is tests/test_web_browser.py."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from aiowait import aio, until
from gwserve import serving

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.passwords import PasswordError, check_policy, hash_password, verify_password
from lookout.gateway.admin.provision import provision_operator
from lookout.gateway.core.config import ConfigError, from_dict
from lookout.gateway.links.opclient import OperatorClient
from lookout.gateway.service.app import Gateway
from lookout.gateway.web import WebConsole, i18n
from lookout.gateway.web.auth import MAX_FAILS, Sessions
from lookout.gateway.web.live import CLIENT_QUEUE, Client
from lookout.gateway.web.sitemap import SiteMap, SiteMapError, from_geojson
from lookout.protocols import opapi

WEB = Path(__file__).resolve().parents[1] / "gateway" / "web"
SITE = "dongshan"
PASSWORD = "duty-pass-1"


# ---- pure parts -------------------------------------------------------------------------------------------------

def test_web_section_of_the_config():
    base = {"gateway": {"site": SITE}}
    assert from_dict(base).web.listen is None  # off unless configured
    c = from_dict({**base, "web": {"listen": "127.0.0.1:8080", "lang": "en", "timezone": "Asia/Urumqi",
                                   "session_idle_s": 600, "site_map": "site.geojson", "cookie_secure": True}},
                  base=Path("/etc/lookout"))
    assert c.web.listen == "127.0.0.1:8080" and c.web.lang == "en" and c.web.timezone == "Asia/Urumqi"
    assert c.web.site_map == Path("/etc/lookout/site.geojson") and c.web.cookie_secure
    with pytest.raises(ConfigError) as e:
        from_dict({**base, "web": {"listen": "8080", "lang": "fr", "timezone": "Mars/Olympus",
                                   "session_idle_s": 90000, "session_max_s": 3600, "typo": 1}})
    errs = "\n".join(e.value.errors)
    for want in ("[web].listen: expected host:port", "[web].lang: expected one of zh-CN, en",
                 "[web].timezone: expected an IANA time zone", "[web].session_idle_s: expected integer",
                 "[web].typo: unknown key"):
        assert want in errs, errs


def test_site_map_projects_to_local_metres_and_names_bad_features():
    sm = from_geojson({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {"type": "LineString",
                                                          "coordinates": [[119.60, 29.90], [119.62, 29.92]]}},
        {"type": "Feature", "properties": {"device": "spk-01", "name": "渡口 <b>"},
         "geometry": {"type": "Point", "coordinates": [119.61, 29.91]}}]})
    assert sm.origin == pytest.approx((29.91, 119.61))
    assert sm.labels == {"spk-01": "渡口 <b>"}
    x, y = sm.project(29.92, 119.62)  # 0.01 deg north ~ 1112 m; 0.01 deg east at 29.9 N ~ 964 m
    assert abs(y - 1111.9) < 1 and abs(x - 964.6) < 1.5
    lat, lon = sm.unproject(x, y)
    assert abs(lat - 29.92) < 1e-6 and abs(lon - 119.62) < 1e-6
    for bad, msg in (({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {
                          "type": "Point", "coordinates": [200, 10]}}]}, "features[0]: position"),
                     ({"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": {
                          "type": "Circle", "coordinates": []}}]}, "geometry type 'Circle'"),
                     ([1, 2], "expected a GeoJSON")):
        with pytest.raises(SiteMapError, match=re.escape(msg)):
            from_geojson(bad)
    grid = SiteMap()  # no map file: the first position fixes the origin
    assert grid.project_e7({"lat": 299000000, "lon": 1196000000}) == (0.0, 0.0)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2 ** 40, 2 ** 40), st.floats(allow_nan=True),
              st.text(max_size=12)),
    lambda c: st.one_of(st.lists(c, max_size=5), st.dictionaries(st.text(max_size=12), c, max_size=5)),
    max_leaves=25)
geometry_types = st.sampled_from(["Point", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "Circle"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, st.fixed_dictionaries({"type": st.just("FeatureCollection"), "features": st.lists(
    st.fixed_dictionaries({"type": st.just("Feature"), "properties": json_values, "geometry": st.fixed_dictionaries(
        {"type": geometry_types, "coordinates": json_values})}), max_size=4)})))
def test_any_site_map_file_is_loaded_or_refused_with_site_map_error(doc):
    try:
        sm = from_geojson(doc)
    except SiteMapError:
        return
    json.dumps(sm.to_json())  # whatever loaded can be drawn


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200), st.one_of(st.none(), st.text(max_size=120)))
def test_password_check_never_raises(password, stored):
    assert verify_password(password, stored) in (True, False)


def _keys_used() -> set[str]:
    used = set()
    for p in (WEB / "templates").glob("*.html"):
        used |= set(re.findall(r"\bt\.([a-z_0-9]+)", p.read_text()))
    for p in (WEB / "static").glob("*.js"):
        used |= set(re.findall(r"\bt\(\"([a-z_0-9]+)\"", p.read_text()))
    for p in WEB.rglob("*.py"):
        if p.name != "i18n.py":
            used |= set(re.findall(r"\bt\.([a-z_][a-z_0-9]+)", p.read_text())) - {"format"}
        used |= set(re.findall(r'View\([^)]*"(nav_[a-z]+)"', p.read_text()))
    return {k for k in used if not k.endswith("_")}  # a prefix the script completes from a value


def test_both_languages_have_every_key_the_pages_use():
    zh, en = i18n.catalog("zh-CN"), i18n.catalog("en")
    assert set(zh) == set(en)
    missing = _keys_used() - set(en)
    assert not missing, missing
    for prefix in ("state_", "kind_", "cmd_", "jk_", "prio_"):  # keys the scripts build from values
        assert any(k.startswith(prefix) for k in en), prefix
    assert zh["nav_map"] == "地图" and en["nav_map"] == "Map"


def test_scripts_never_turn_data_into_markup():
    """Device strings reach the page only as text: no script may parse markup or code at run time."""
    for p in (WEB / "static").glob("*.js"):
        src = p.read_text()
        for bad in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                    "setAttribute(\"on", "DOMParser"):
            assert bad not in src, f"{p.name} uses {bad}"
    for p in (WEB / "templates").glob("*.html"):
        src = p.read_text()
        assert "|safe" not in src and "<script>" not in src, p.name  # no inline code: the CSP forbids it


def test_passwords_are_stretched_and_checked_in_constant_time():
    h = hash_password("duty-pass-1", n=2 ** 10)
    assert h.startswith("scrypt$1024$8$1$") and "duty-pass-1" not in h
    assert verify_password("duty-pass-1", h) and not verify_password("duty-pass-2", h)
    assert hash_password("duty-pass-1", n=2 ** 10) != h  # salted
    for junk in (None, "", "scrypt$x", "md5$1$2$3$4$5", "scrypt$2$8$1$AA$AA", h + "$"):
        assert not verify_password("duty-pass-1", junk)
    for bad in ("short", "op-1", "aaaaaaaaaa"):
        with pytest.raises(PasswordError):
            check_policy(bad, "op-1")


def test_provision_operator_password_cli(tmp_path, monkeypatch, capsys):
    from lookout.gateway.cli.main import main

    common = ["--data-dir", str(tmp_path)]
    monkeypatch.setattr("sys.stdin", io.StringIO("first-pass-1\n"))
    assert main(["provision", "operator", "--id", "op-7", "--name", "李四", "--password-stdin", *common]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    with KeyStore(tmp_path / "keystore.db") as ks:
        assert verify_password("first-pass-1", ks.operator_password("op-7"))
    # an existing operator: only the password changes, the token stays valid
    monkeypatch.setattr("sys.stdin", io.StringIO("second-pass-2\n"))
    assert main(["provision", "operator", "--id", "op-7", "--password-stdin", *common]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["provision", "operator", "--id", "op-7", "--password-stdin", *common]) == 2
    with KeyStore(tmp_path / "keystore.db") as ks:
        assert verify_password("second-pass-2", ks.operator_password("op-7"))
        assert ks.verify_operator("op-7", token) is not None
    text = (tmp_path / "journal.db").read_bytes()
    for secret in (b"first-pass-1", b"second-pass-2", token.encode()):
        assert secret not in text
    assert b"set the web console password of operator op-7" in text


def test_sessions_expire_when_idle_and_after_a_shift():
    now = [1000.0]
    ss = Sessions(idle_s=60, max_s=300, clock=lambda: now[0])
    s = ss.create("op-1", "n", "operator", "zh-CN", "token")
    assert ss.get(s.sid) is s and s.check_csrf(s.csrf) and not s.check_csrf("x") and not s.check_csrf(None)
    for _ in range(5):  # used every 50 s: idle never reached, the shift limit is
        now[0] += 50
        assert ss.get(s.sid) is s
    now[0] += 55
    assert ss.get(s.sid) is None and ss.expire() == [s]
    s2 = ss.create("op-1", "n", "operator", "zh-CN", "token")
    now[0] += 61
    assert ss.get(s2.sid) is None and [x.sid for x in ss.expire()] == [s2.sid] and len(ss) == 0


def test_a_slow_browser_gets_a_snapshot_instead_of_a_backlog():
    cl = Client(ws=None, session=None, wall=False)  # type: ignore[arg-type]
    for i in range(CLIENT_QUEUE + 10):
        cl.put({"t": "devices", "n": i})
    assert cl.resync and cl.dropped == 10 and cl.queue.qsize() == CLIENT_QUEUE


# ---- against a running gateway -----------------------------------------------------------------------------------

def make_cfg(tmp_path, url, **web):
    return from_dict({"gateway": {"id": "gw-1", "site": SITE, "data_dir": str(tmp_path / "data")},
                      "broker": {"url": url}, "registry": {"min_hb_s": 1},
                      "commands": {"retry_s": 1, "wait_s": 3}, "zones": {"north": ["spk-01"]},
                      "web": {"listen": "127.0.0.1:0", **web}})


@contextlib.asynccontextmanager
async def console(tmp_path, mosquitto, clock=None):
    """A gateway, its web console and a signed-in-able operator; yields (gw, web, token)."""
    ks = KeyStore(tmp_path / "ks.db")
    token = provision_operator(ks, "op-1", "值班员 <i>张三</i>")
    ks.set_operator_password("op-1", hash_password(PASSWORD, n=2 ** 10))
    ks.ensure("spk-01", SITE, "speaker")
    try:
        async with serving(Gateway(make_cfg(tmp_path, mosquitto.url), keystore=ks)) as gw, \
                WebConsole(gw, clock=clock) as web:
            yield gw, web, token
    finally:
        ks.close()


def client() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def sign_in(s, web, op="op-1", secret=PASSWORD, status=302, nxt="/map"):
    html = await (await s.get(web.url + "login")).text()
    pre = re.search(r'name="pre" value="([^"]+)"', html).group(1)
    r = await s.post(web.url + "login", data={"operator": op, "secret": secret, "pre": pre, "next": nxt},
                     allow_redirects=False)
    assert r.status == status, (r.status, await r.text())
    return r


async def csrf_of(s, web) -> str:
    html = await (await s.get(web.url + "devices")).text()
    return re.search(r'name="csrf-token" content="([^"]+)"', html).group(1)


@aio
async def test_sign_in_with_token_or_password_and_the_brake_on_guessing(mosquitto, tmp_path):
    async with console(tmp_path, mosquitto) as (gw, web, token), client() as s:
        r = await s.get(web.url + "map", allow_redirects=False)
        assert r.status == 302 and r.headers["Location"].startswith("/login?next=")
        assert (await s.get(web.url + "api/device/spk-01")).status == 401
        await sign_in(s, web, secret=token)
        page = await (await s.get(web.url + "map")).text()
        assert "值班员 &lt;i&gt;张三&lt;/i&gt;" in page  # the operator's name, escaped
        assert (await s.post(web.url + "logout", headers={"X-CSRF-Token": await csrf_of(s, web)})).status == 200
        assert (await s.get(web.url + "map", allow_redirects=False)).status == 302
        r = await sign_in(s, web, nxt="//evil.example/x")
        assert r.headers["Location"] == "/map"  # never an open redirect
        async with client() as s2:  # the sign-in form's own token: a POST without its cookie is refused
            r = await s2.post(web.url + "login", data={"operator": "op-1", "secret": PASSWORD, "pre": "x"},
                              allow_redirects=False)
            assert r.status == 403
            for _ in range(MAX_FAILS):
                await sign_in(s2, web, secret="wrong-pass-9", status=401)
            await sign_in(s2, web, status=429)  # locked out: even the right password is not checked now
            entries = gw.journal.entries()
        texts = " ".join(e.summary + e.detail for e in entries)
        assert "wrong-pass-9" not in texts and PASSWORD not in texts and token not in texts
        refused = [e for e in entries if e.kind == "security" and "sign-in" in e.summary]
        assert len(refused) == MAX_FAILS and "locked out" in refused[-1].summary
        signed = [json.loads(e.detail)["how"] for e in entries if "signed in to the web console" in e.summary]
        assert signed == ["token", "password"]


@aio
async def test_sessions_expire_on_the_server(mosquitto, tmp_path):
    now = [0.0]
    async with console(tmp_path, mosquitto, clock=lambda: now[0]) as (gw, web, token), client() as s:
        await sign_in(s, web)
        assert (await s.get(web.url + "api/device/spk-01")).status == 200
        now[0] += gw.cfg.web.session_idle_s + 1
        assert (await s.get(web.url + "api/device/spk-01")).status == 401
        await until(lambda: any(e.summary == "op-1's web console session expired"
                                for e in gw.journal.entries(kind="operator")), 5, "the expiry journaled")


@aio
async def test_every_action_needs_session_csrf_and_same_origin(mosquitto, tmp_path):
    async with console(tmp_path, mosquitto) as (gw, web, token), client() as s:
        body = {"op": "broadcast", "args": {"to": "spk-01", "clip": "nofish", "wait": "none"}}
        assert (await s.post(web.url + "api/op", json=body)).status == 401  # no session
        await sign_in(s, web)
        tok = await csrf_of(s, web)
        assert (await s.post(web.url + "api/op", json=body)).status == 403  # no token
        assert (await s.post(web.url + "api/op", json=body, headers={"X-CSRF-Token": tok + "x"})).status == 403
        r = await s.post(web.url + "api/op", json=body, headers={"X-CSRF-Token": tok, "Origin": "http://evil.example"})
        assert r.status == 403
        assert not gw.commands.active, "a refused action issued a command"
        r = await s.post(web.url + "api/op", json=body, headers={"X-CSRF-Token": tok})
        assert r.status == 200 and (await r.json())["code"] == "queued"  # spk-01 has not been heard: queued
        # validated exactly like an MQTT request, and the refusal journaled like one
        r = await (await s.post(web.url + "api/op", headers={"X-CSRF-Token": tok}, json={
            "op": "broadcast", "args": {"to": "spk-01", "clip": "nofish", "volume": 300}})).json()
        assert r["code"] == "bad_request" and "args.volume" in r["error"]
        r = await (await s.post(web.url + "api/op", headers={"X-CSRF-Token": tok}, json={
            "op": "clip_put", "args": {}})).json()
        assert r["code"] == "bad_request" and r["error"].startswith("op:")
        # the live feed refuses another origin (cross-site WebSocket hijacking) and serves our own
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await s.ws_connect(web.url + "ws", origin="http://evil.example")
        sec = [e for e in gw.journal.entries(kind="security") if e.operator == "op-1"]
        assert len(sec) == 4  # two tokens refused, two other-origin requests
        assert len([e for e in gw.journal.entries(kind="operator") if e.summary == "bad request from op-1"]) == 2


@aio
async def test_a_web_action_is_journaled_exactly_as_from_the_cli(mosquitto, tmp_path):
    args = {"to": "north", "clip": "nofish", "repeat": 2, "priority": "priority", "wait": "none"}
    async with console(tmp_path, mosquitto) as (gw, web, token), client() as s:
        await sign_in(s, web)
        r = await s.post(web.url + "api/op", json={"op": "broadcast", "args": dict(args)},
                         headers={"X-CSRF-Token": await csrf_of(s, web)})
        assert (await r.json())["code"] == "queued"
        async with OperatorClient(mosquitto.url, SITE, "op-1", token) as opc:
            assert (await opc.request("broadcast", dict(args)))["code"] == "queued"

        def shape(e):
            d = json.loads(e.detail)
            d.pop("commands", None)
            d.pop("group", None)
            return (e.kind, e.operator, e.device, e.summary, d)
        issued = [shape(e) for e in gw.journal.entries() if "broadcast play to north" in e.summary]
        assert len(issued) == 2 and issued[0] == issued[1], issued
        assert issued[0][1] == "op-1" and issued[0][4]["args"]["repeat"] == 2


@aio
async def test_live_feed_pushes_coalesced_devices_and_commands(mosquitto, tmp_path):
    async with console(tmp_path, mosquitto) as (gw, web, token), client() as s:
        await sign_in(s, web)
        ws = await s.ws_connect(web.url + "ws", origin=web.url.rstrip("/"))
        snap = await ws.receive_json(timeout=5)
        assert snap["t"] == "snapshot" and {d["id"] for d in snap["devices"]} >= {"gw-1"}
        now = gw.clock()
        for i in range(1, 4):  # three heartbeats within one push period: one message, the latest values
            gw.registry.heartbeat("spk-01", SITE, {"seq": i, "up_s": i, "hb_s": 5, "bat_pct": 90 - i}, now + i)
        gw.registry.location("spk-01", SITE, {"seq": 1, "ts": now, "lat": 299062000, "lon": 1196108000,
                                              "fix": 7, "src": "fixed"}, now)
        msg = await ws.receive_json(timeout=5)
        assert msg["t"] == "devices" and len(msg["devices"]) == 1
        d = msg["devices"][0]
        assert d["id"] == "spk-01" and d["info"]["bat_pct"] == 87 and d["xy"] == [0.0, 0.0]
        r = await s.post(web.url + "api/op", headers={"X-CSRF-Token": await csrf_of(s, web)},
                         json={"op": "broadcast", "args": {"to": "spk-01", "clip": "nofish", "wait": "none"}})
        cid = (await r.json())["data"]["results"][0]["id"]
        seen = []
        while "sent" not in seen:
            m = await ws.receive_json(timeout=5)
            if m["t"] == "cmd" and m["cmd"]["id"] == cid:
                seen.append(m["cmd"]["status"])
        assert seen[-1] == "sent"
        hist = await (await s.get(web.url + "api/device/spk-01")).json()
        assert [h["bat_pct"] for h in hist["heartbeats"]] == [89, 88, 87] and len(hist["track"]) == 1
        assert [c["id"] for c in hist["commands"]] == [cid]
        await ws.close()


@aio
async def test_journal_pages_newest_first_with_filters(mosquitto, tmp_path):
    async with console(tmp_path, mosquitto) as (gw, web, token):
        for i in range(7):
            gw.journal.append("alert", f"general pir {i}", device="sen-01", detail={"sev": "general"})
        gw.journal.append("operator", "op-2 did something", operator="op-2")
        def page(**a):
            return gw.handle_op("op-1", "journal", opapi.validate_args("journal", a), "j")
        r = await page(desc=True, limit=3, kind="alert")
        page1 = [e["summary"] for e in r["data"]["entries"]]
        assert page1 == ["general pir 6", "general pir 5", "general pir 4"] and r["data"]["more"]
        before = r["data"]["entries"][-1]["seq"]
        r = await page(desc=True, limit=10, kind="alert", before=before)
        assert [e["summary"] for e in r["data"]["entries"]][-1] == "general pir 0" and not r["data"]["more"]
        r = await page(operator="op-2", limit=5)
        assert [e["summary"] for e in r["data"]["entries"]] == ["op-2 did something"]
        reads = [e for e in gw.journal.entries(kind="operator") if e.summary == "op-1 read the journal"]
        assert len(reads) == 2  # the first page of each reading; the "before" page is not a new reading
        assert json.loads(reads[0].detail) == {"from": None, "to": None, "device": None, "kind": "alert"}


def test_cli_gateway_serves_the_console_when_configured(tmp_path, monkeypatch):
    """``[web].listen`` is what turns it on: ``lookout gateway`` hands the console to ``run(attach=...)``."""
    import lookout.gateway.service.app as appmod
    from lookout.gateway.cli.main import main

    seen = []

    async def fake_run(cfg, broker_url=None, attach=None):
        seen.append(attach)
        return 0
    monkeypatch.setattr(appmod, "run", fake_run)
    cfgfile = tmp_path / "gw.toml"
    for web in ("", '[web]\nlisten = "127.0.0.1:0"\n'):
        cfgfile.write_text(f'[gateway]\nsite = "{SITE}"\ndata_dir = "{tmp_path}"\n' + web)
        assert main(["gateway", "--config", str(cfgfile)]) == 0
    assert seen[0] is None and seen[1].__name__ == "web_console"


@aio
async def test_journal_times_are_the_sites_local_time(mosquitto, tmp_path):
    """The journal view's from/to are wall-clock times at the site (Asia/Shanghai, UTC+8), not the browser's."""
    from datetime import datetime, timezone

    async with console(tmp_path, mosquitto) as (gw, web, _token), client() as s:
        t0 = int(datetime(2026, 3, 1, 1, 30, tzinfo=timezone.utc).timestamp() * 1000)  # 09:30 in Shanghai
        gw.journal.append("alert", "before nine", device="sen-01", ts=t0 - 3600_000)
        gw.journal.append("alert", "after nine", device="sen-01", ts=t0)
        await sign_in(s, web)
        r = await (await s.post(web.url + "api/journal", headers={"X-CSRF-Token": await csrf_of(s, web)},
                                json={"kind": "alert", "from": "2026-03-01T09:00", "to": "2026-03-01T10:00"})).json()
        assert [e["summary"] for e in r["data"]["entries"]] == ["after nine"], r
        r = await (await s.post(web.url + "api/journal", headers={"X-CSRF-Token": await csrf_of(s, web)},
                                json={"from": "yesterday"})).json()
        assert r["code"] == "bad_request" and "from" in r["error"]


@aio
async def test_garbage_bodies_get_a_clear_refusal_never_a_crash(mosquitto, tmp_path):
    """Seeded garbage at every action endpoint: always a JSON answer that says what was wrong, no 5xx, and the
    gateway's journal still verifies."""
    import random

    rnd = random.Random(15)
    junk = [b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe", json.dumps({"op": "broadcast", "args": []}).encode(),
            json.dumps({"op": "broadcast", "args": {"to": "x" * 5000, "clip": "c"}}).encode(),
            json.dumps({"op": "journal", "args": {"before": -1}}).encode(),
            json.dumps({"x": "1", "y": None}).encode(), b'{"x": 1e999, "y": NaN}']
    for _ in range(60):
        body = {"op": rnd.choice(["broadcast", "stop", "command", "journal", "clips", "devices", "nope", 5]),
                "args": {rnd.choice(["to", "clip", "repeat", "name", "args", "kind", "before", "action"]):
                         rnd.choice([None, -1, 2 ** 60, "", "spk-01", "<b>", [], {}, True, "a" * 100])}}
        junk.append(json.dumps(body).encode())
    async with console(tmp_path, mosquitto) as (gw, web, _token), client() as s:
        await sign_in(s, web)
        h = {"X-CSRF-Token": await csrf_of(s, web), "Content-Type": "application/json"}
        for path in ("api/op", "api/near", "api/goto", "api/journal", "api/lang"):
            for b in junk:
                r = await s.post(web.url + path, data=b, headers=h)
                assert r.status in (200, 400), (path, b[:80], r.status, await r.text())
                body = await r.json()
                assert body.get("ok") is not True or path == "api/op" or path == "api/journal", (path, b[:80])
        r = await s.post(web.url + "api/op", data=b"x" * 70000, headers=h)
        assert r.status == 413  # bounded: the body limit
        assert gw.journal.verify().ok
