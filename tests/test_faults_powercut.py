"""Fault injection (issue 17): a node's power cut at every write of a clip download and of a config change.

The real firmware runs in a child process (tests/support/powercut.py) that kills itself with SIGKILL at write
number k of the change, for every k (and, for each ``write`` call, once more after half its bytes: a torn write),
each on its own copy of the flash.
Then the test boots the firmware again on what that process left on "flash" and checks (docs/RELIABILITY.md,
"Node power cut"):
- clip download: the node boots, its clip is the old one or the complete new one, never a mixture, and it plays
  to the end; a download after the cut installs the new clip;
- config change on trial (a broker setting): the node boots, and on the old config at once or, after at most
  ``MAX_TRIAL_BOOTS`` + 1 boots that never reach the broker, by rollback;
- config change applied live: the node boots with the old config or the new one, whole.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lookout.simulators.node import make_config, wav_bytes

from lookout_node import hal_host  # noqa: E402  (board names: tests/conftest.py installs them)
from lookout_node.config import MAX_TRIAL_BOOTS  # noqa: E402
from lookout_node.node import Node  # noqa: E402

pytestmark = pytest.mark.faults

DRIVER = Path(__file__).parent / "support" / "powercut.py"
sys.path.insert(0, str(DRIVER.parent))
from powercut import new_clip  # noqa: E402

OLD = wav_bytes(300)
NEW = new_clip()
KEY = "11" * 32


def flash(root: Path) -> Path:
    """A speaker's flash before the change: its config and the old clip."""
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "nofish").write_bytes(OLD)
    (root / "config.json").write_text(json.dumps(make_config("spk-01", "dongshan", "speaker", KEY, port=1883)))
    return root


def cut(root: Path, scenario: str, k: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DRIVER), str(root), scenario, str(k)], capture_output=True,
                          text=True, timeout=60)


def every_write(tmp_path: Path, scenario: str) -> list[dict]:
    """One power cut per write of the change (and per torn write), each on its own copy of the flash."""
    base = flash(tmp_path / "base")
    r = subprocess.run([sys.executable, str(DRIVER), str(base), scenario, "every", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = json.loads(r.stdout.splitlines()[-1])
    assert len(runs) >= 15 and all(x["killed"] for x in runs), runs
    return runs


def boot(root: Path) -> tuple[Node, hal_host.HostHal]:
    hal = hal_host.HostHal(str(root), speed=50)  # audio time runs 50x: a clip plays in milliseconds
    return Node(hal), hal


async def play_to_the_end(node: Node, hal: hal_host.HostHal) -> int:
    sp = node.speaker
    player = asyncio.create_task(sp.run())
    try:
        cmd = {"id": "t", "prio": 1}
        await asyncio.wait_for(sp.play(sp.check_play({"clip": "nofish"}, cmd), cmd), 10)
    finally:
        player.cancel()
    return hal.audio.plays[-1]["bytes"]


def test_power_cut_at_every_write_of_a_clip_download(tmp_path):
    runs = every_write(tmp_path, "clip")
    for n, run in enumerate(runs):
        root, k, half = Path(run["dir"]), run["k"], run["half"]
        node, hal = boot(root)  # boots (a torn outbox record or cmdstate is the firmware's to survive)
        clip = hal.fs.read("clips/nofish")
        assert clip in (OLD, NEW), (k, half, len(clip or b""))
        played = asyncio.run(play_to_the_end(node, hal))
        assert played == len(clip) - 44, (k, half, played)
        if n % 8 == 0:  # and it can still get the new clip (the gateway sends a new fetch_clip)
            r = cut(root, "clip", 0)
            assert r.returncode == 0, r.stderr[-2000:]
            assert hal_host.HostHal(str(root)).fs.read("clips/nofish") == NEW
    assert sum(not r["half"] for r in runs) >= 20


def test_power_cut_at_every_write_of_a_config_change_on_trial(tmp_path):
    old_port = 1883
    for run in every_write(tmp_path, "config"):
        root, k, half = Path(run["dir"]), run["k"], run["half"]
        ports = []
        for _ in range(MAX_TRIAL_BOOTS + 2):  # boots that never reach the broker: the trial is rolled back
            node, _hal = boot(root)
            ports.append(node.cfg["broker"]["port"])
            if node.store.trial is None:
                break
        assert ports[-1] == old_port, (k, half, ports)
        assert len(ports) <= MAX_TRIAL_BOOTS + 1, (k, half, ports)


def test_power_cut_at_every_write_of_a_live_config_change(tmp_path):
    for run in every_write(tmp_path, "config-live"):
        root, k, half = Path(run["dir"]), run["k"], run["half"]
        node, _hal = boot(root)
        assert (node.cfg["volume"], node.cfg["hb_s"]) in ((80, 30), (35, 20)), (k, half, node.cfg)
