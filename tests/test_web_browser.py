"""The web console in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium), against
a real gateway, a real Mosquitto and simulated nodes running the real firmware (tests/support/webworld.py).

What an operator does on a shift, end to end: sign in, see the loudspeaker on the map, broadcast to it and watch
the result go accepted -> playing -> done, find the action in the duty journal under their name; device-supplied
strings stay text; an action without a session or CSRF token is refused; the big screen renders. Screenshots of
the map and the big screen land in the run's output directory (printed; ``LOOKOUT_SCREENSHOTS`` overrides).
One world and one browser serve the module, so the whole file takes a few seconds beyond Chromium's start.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from webworld import OPERATOR, PASSWORD, ConsoleWorld, chromium

pytestmark = pytest.mark.mosquitto

WAIT_S = 15  # bound on every wait for the page (loopback: normally well under a second)
XSS_NAME = "<img src=x onerror=alert(1)>"
STATUSTEXT = "<script>window.__pwned = 1</script>PreArm: check GPS"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    with ConsoleWorld(tmp_path_factory.mktemp("web")) as w:
        yield w


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("LOOKOUT_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots in {out}")
    return out


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    drv = chromium(tmp_path_factory.mktemp("chromium-profile"))
    drv.set_page_load_timeout(WAIT_S)
    yield drv
    drv.quit()


def wait(drv, cond, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(drv, WAIT_S, poll_frequency=0.05).until(cond, message=f"waiting for {what}")


def css(drv, sel: str):
    from selenium.webdriver.common.by import By

    return drv.find_elements(By.CSS_SELECTOR, sel)


def sign_in(drv, world) -> None:
    drv.get(world.url + "map")
    wait(drv, lambda d: "/login" in d.current_url and css(d, "#sign-in"), "the sign-in page")
    css(drv, "#operator")[0].send_keys(OPERATOR)
    css(drv, "#secret")[0].send_keys(PASSWORD)
    css(drv, "#sign-in")[0].click()
    wait(drv, lambda d: d.current_url.endswith("/map"), "the map after signing in")
    # the URL changes before the new page is built: wait for its navigation bar (read at once, it failed once)
    wait(drv, lambda d: css(d, "nav a.on"), "the map page's navigation")


def no_alert(drv) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        _ = drv.switch_to.alert  # raises when no alert is open
    except NoAlertPresentException:
        return True
    return False


def test_sign_in_see_node_broadcast_done_and_journal(world, browser, shots):
    drv = browser
    sign_in(drv, world)
    assert css(drv, "nav a.on")[0].text == "地图"  # zh-CN by default ([web].lang)
    wait(drv, lambda d: css(d, 'g.dev.st-online[data-id="spk-ferry"]'), "the speaker online on the map")
    label = css(drv, 'g.dev[data-id="spk-ferry"] text')[0].text
    assert label == "渡口喇叭 ferry"  # its name from the site map's GeoJSON
    wait(drv, lambda d: css(d, 'g.dev.st-online[data-id="cam-inlet"]'), "the camera online on the map")
    drv.save_screenshot(str(shots / "map.png"))

    css(drv, 'g.dev[data-id="spk-ferry"] path')[0].click()
    clip = wait(drv, lambda d: css(d, '#side-sel input.clip[data-ready="1"]'), "the form with the clip list")[0]
    assert clip.get_attribute("value") == "nofish"  # the gateway's clip, offered first
    # record every status the command shows, so that a fast result cannot skip a step unseen
    drv.execute_script("""window.__seen = [];
      new MutationObserver(() => { for (const li of document.querySelectorAll('#cmds li.cmd')) {
        const s = li.dataset.status; if (window.__seen[window.__seen.length - 1] !== s) window.__seen.push(s); } })
        .observe(document.getElementById('cmds'), {childList: true, subtree: true});""")
    css(drv, "#side-sel .act-broadcast")[0].click()
    wait(drv, lambda d: css(d, '#cmds li.cmd[data-status="done"]'), "the broadcast's result to turn to done")
    seen = drv.execute_script("return window.__seen")
    assert [s for s in seen if s in ("accepted", "playing", "done")] == ["accepted", "playing", "done"], seen
    assert world.sims["spk-ferry"].plays, "the node played nothing"

    drv.get(world.url + "journal")
    row = wait(drv, lambda d: [r for r in css(d, "#rows tr") if "broadcast play to spk-ferry" in r.text],
               "the broadcast in the journal")[0]
    assert css(row, "td.op")[0].text == OPERATOR
    [entry] = [e for e in world.call(world.gw.journal.entries, None, None, "operator")
               if "broadcast play to spk-ferry" in e.summary]
    assert entry.operator == OPERATOR and json.loads(entry.detail)["args"]["clip"] == "nofish"
    css(drv, "#verify")[0].click()
    wait(drv, lambda d: "ok" in css(d, "#chain")[0].get_attribute("class"), "the chain verified")


async def _until(pred, timeout: float = 8.0):
    import asyncio

    for _ in range(int(timeout / 0.05)):
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def test_evidence_custody_and_journaled_download(world, browser):
    drv = browser
    r = world.run(world.gw.handle_op(OPERATOR, "command", {"to": "cam-inlet", "name": "snapshot", "args": {},
                                                          "priority": 1, "queue": True, "wait": "final",
                                                          "wait_s": 10}, "snap1"))
    assert r["code"] == "ok", r
    sha = r["data"]["results"][0]["data"]["sha256"]
    world.run(_until(lambda: world.gw.clipstore.get(sha) is not None))
    world.sims["cam-inlet"].trigger_pir()  # a detection: an alert for the big screen, linked to the snapshot
    world.run(_until(lambda: world.gw.journal.entries(kind="alert")))
    drv.get(world.url + "clips")
    row = wait(drv, lambda d: css(d, f'#evidence tr[data-sha="{sha}"]'), "the snapshot in the evidence list")[0]
    assert css(row, "td.sha")[0].text == sha
    assert css(drv, '#audio tr[data-clip="nofish"] audio')  # the warning clip, playable in the page
    css(row, "button")[0].click()
    wait(drv, lambda d: css(d, f'#evidence tr[data-sha="{sha}"] ol.custody li'), "the custody trail")
    # the download itself is a custody event under the operator's name, journaled before any byte is sent
    drv.execute_async_script("""const done = arguments[arguments.length - 1];
      fetch(arguments[0]).then(r => r.arrayBuffer()).then(b => done(b.byteLength));""",
                             f"/evidence/{sha}?access=download")
    acts = [(e.operator, json.loads(e.detail).get("action")) for e in
            world.call(world.gw.journal.entries, None, None, "custody")]
    assert (OPERATOR, "downloaded") in acts and (None, "stored") in acts


def test_big_screen(world, browser, shots):
    drv = browser
    drv.get(world.url + "wall")
    wait(drv, lambda d: (css(d, "#map[data-rendered]") and
                         int(css(d, "#map")[0].get_attribute("data-rendered")) >= 2), "the big screen's map")
    wait(drv, lambda d: css(d, "#wall-alerts li"), "the alert list")
    size = drv.execute_script("return parseFloat(getComputedStyle(document.querySelector('#wall-alerts li')).fontSize)")
    assert size >= 24  # readable from 5 m
    drv.save_screenshot(str(shots / "wall.png"))


def _console_key():
    from lookout.gateway.web.console import CONSOLE

    return CONSOLE


def test_device_supplied_strings_render_as_text(world, browser):
    drv = browser

    def inject() -> None:
        reg, now = world.gw.registry, world.gw.clock()
        d = reg.ensure(XSS_NAME, "dongshan", "sensor")
        d.state, d.last_seen_ms, d.info = "online", now, {"name": XSS_NAME}
        d.last_loc = {"lat": 299020000, "lon": 1196080000, "ts": now, "src": "fixed"}
        reg.get("uav-1").info["statustext"] = STATUSTEXT  # as a drone bridge would pass STATUSTEXT on
        reg.location("uav-1", "dongshan", {"lat": 299100000, "lon": 1196140000, "ts": now, "src": "mavlink",
                                           "fix": 1, "seq": 2, "hdg_cd": 9000}, now)
        world.web.app[_console_key()].hub._dirty.add(XSS_NAME)  # ensure() is no input: tell the console
    world.call(inject)

    drv.get(world.url + "devices")
    link = wait(drv, lambda d: [a for a in css(d, "#dev-rows a.devname") if a.text == XSS_NAME], "the odd device")
    assert link and not css(drv, 'img[src="x"]')
    drv.get(world.url + "map")
    wait(drv, lambda d: css(d, 'g.dev[data-id="uav-1"]'), "the drone on the map")
    texts = [t.get_attribute("textContent") for t in css(drv, "g.dev text")]
    assert XSS_NAME in texts and any(t.startswith("uav-1 76") for t in texts), texts
    assert css(drv, 'g.dev[data-id="uav-1"] title')[0].get_attribute("textContent").endswith(STATUSTEXT)
    css(drv, 'g.dev[data-id="uav-1"] path')[0].click()
    cell = wait(drv, lambda d: [td for td in css(d, "#side-sel td") if "PreArm" in td.text], "the drone's status")
    assert cell[0].text == STATUSTEXT
    assert not css(drv, 'img[src="x"]') and not [s for s in css(drv, "script") if "__pwned" in
                                                  (s.get_attribute("textContent") or "")]
    assert drv.execute_script("return window.__pwned === undefined") and no_alert(drv)
    # the drone's heading turns its arrow (mavlink hdg_cd 9000 = east)
    assert "rotate(90)" in css(drv, 'g.dev[data-id="uav-1"] path')[0].get_attribute("transform")


def test_actions_without_session_or_csrf_are_refused(world, browser):
    drv = browser
    drv.get(world.url + "devices")
    before = world.call(lambda: len(world.gw.commands.active) + len(world.gw.commands._recent))
    call = """const [token, done] = [arguments[0], arguments[arguments.length - 1]];
      const h = {"Content-Type": "application/json"}; if (token) h["X-CSRF-Token"] = token;
      fetch("/api/op", {method: "POST", headers: h, body: JSON.stringify({op: "broadcast",
        args: {to: "spk-ferry", clip: "nofish", wait: "none"}})}).then(r => done(r.status));"""
    assert drv.execute_async_script(call, "") == 403  # signed in, no token
    assert drv.execute_async_script(call, "forged-token") == 403
    # no session at all: a request from outside the browser
    req = urllib.request.Request(world.url + "api/op", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"op": "stop", "args": {"to": "spk-ferry"}}).encode())
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 401
    after = world.call(lambda: len(world.gw.commands.active) + len(world.gw.commands._recent))
    assert after == before, "a refused action issued a command"
    refused = [e for e in world.call(world.gw.journal.entries, None, None, "security") if "CSRF" in e.summary]
    assert len(refused) >= 2 and all(e.operator == OPERATOR for e in refused)


def test_languages_per_operator(world, browser):
    drv = browser
    # English, chosen by this operator and kept for their next page
    drv.get(world.url + "devices")
    from selenium.webdriver.support.ui import Select

    Select(css(drv, "#lk-lang")[0]).select_by_value("en")
    wait(drv, lambda d: css(d, "nav a.on") and css(d, "nav a.on")[0].text == "Devices", "the English page")
    drv.get(world.url + "map")
    assert css(drv, "nav a.on")[0].text == "Map"
