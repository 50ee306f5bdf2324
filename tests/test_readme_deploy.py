"""The README's Deploy and Operating commands, run in order as root like CI (issue 11, evidence): the admin sets up
the CA, the logins, gateway.toml, the broker config and Mosquitto and starts the gateway from the systemd unit's
own ExecStart; the installer provisions spk-01 and runs it with `lookout sim node`; the operator lists devices,
broadcasts (done), distributes a clip and verifies the duty journal (ok).

The commands are read from README.md itself, so a README edit that breaks the path breaks this test. What the
test changes, and why (nothing else):
- paths: /opt/lookout is this checkout's .venv (the install line itself is not run: it would build a second
  venv; tests/test_install_path.py checks the unit against it); /var/lib/lookout, /etc/lookout and
  /etc/mosquitto are temporary directories; `ln -s` to /usr/local/bin is replaced by PATH;
- the host: gw.dongshan.local has no DNS entry here, so clients dial 127.0.0.1 (the certificate names both);
- ports: free ones instead of 8883/8884/9108, other test runs may hold those;
- things a test may not do to the machine: no `useradd` (and no `-g lookout`), no systemd (the unit's
  ExecStart runs as a child process, as this user), Mosquitto and the simulated node stay in the foreground as
  child processes so they can be stopped (the reload's `kill -HUP "$(cat …/mosquitto.pid)"` is checked to name
  that child, then sent to it); `firmware flash` without --dry-run needs a board;
- the node is provisioned with `--quiet-hours none`: at this test's hour the default 22:00-06:00 (UTC+8)
  could refuse the README's normal-priority broadcast, which is correct behaviour but not what is tested here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from broker import free_port, find_mosquitto

from lookout.simulators.node import wav_bytes

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
WAIT_S = 30.0
# Deploy subsections run by other tests, with why: they need hardware this site does not have
ELSEWHERE = {"### Drones": "a drone on a MAVLink link: tests/test_drone_cli.py runs these commands against "
                           "`lookout sim drone` and a gateway with [mavlink]",
             "### Body-worn recorders": "a recorder on a serial dock: tests/test_recorder_bridge.py runs the bridge, "
                                        "its commands and `lookout sim recorder` against simulated recorders on ptys"}


def readme_commands() -> list[list[str]]:
    """Every command of the README's Deploy section (Deploy and Operating), in order, as argument lists: lines
    joined at a trailing backslash, comments dropped, ``a && b`` split."""
    text = (ROOT / "README.md").read_text()
    deploy = text[text.index("## Deploy"):text.index("## Configuration")]
    for heading, why in ELSEWHERE.items():  # a subsection whose commands another test runs
        start = deploy.index(heading)
        end = deploy.find("\n### ", start + 1)
        deploy = deploy[:start] + (deploy[end:] if end != -1 else "")
        assert why
    out: list[list[str]] = []
    for block in re.findall(r"^```sh\n(.*?)^```", deploy, re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words:
                cut = words.index("&&") if "&&" in words else len(words)
                out.append(words[:cut])
                words = words[cut + 1:]
    return out


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port}")


class Site:
    """Runs README commands with the substitutions the module docstring lists."""

    def __init__(self, tmp: Path, etc: Path):
        self.work = tmp / "installer"
        self.work.mkdir()
        (self.work / "deploy").symlink_to(ROOT / "deploy")
        self.paths = {"/opt/lookout": str(VENV_BIN.parent), "/var/lib/lookout": str(tmp / "var-lib-lookout"),
                      "/etc/lookout": str(tmp / "etc-lookout"), "/etc/mosquitto": str(etc / "mosquitto"),
                      "/etc/systemd/system": str(tmp / "systemd")}
        (tmp / "systemd").mkdir()
        self.node_port, self.op_port, self.metrics_port = free_port(), free_port(), free_port()
        self.env = {**os.environ, "PATH": f"{VENV_BIN}:/usr/sbin:/usr/bin:/bin",
                    "LOOKOUT_DATA_DIR": self.paths["/var/lib/lookout"]}
        for k in [k for k in self.env if k.startswith("LOOKOUT_") and k != "LOOKOUT_DATA_DIR"]:
            del self.env[k]  # only what the README exports
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        self.out: dict[str, str] = {}

    def sub(self, word: str) -> str:
        for a, b in self.paths.items():
            word = word.replace(a, b)
        return word

    def run(self, words: list[str], expect: int = 0) -> str:
        words = [self.sub(w) for w in words]
        r = subprocess.run(words, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=120)
        assert r.returncode == expect, f"{shlex.join(words)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def start(self, words: list[str], port: int | None = None) -> subprocess.Popen:
        words = [self.sub(w) for w in words]
        log = self.work.parent / f"{len(self.procs)}-{Path(words[0]).name}.log"  # a file: a pipe could fill up
        with open(log, "w") as f:
            p = subprocess.Popen(words, cwd=self.work, env=self.env, stdout=f, stderr=subprocess.STDOUT)
        self.procs.append(p)
        self.logs.append(log)
        if port is not None:
            wait_port(port, p, words[0])
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def until_ok(self, words: list[str], check) -> str:
        """Run an operator command until it succeeds and ``check(stdout)`` holds (the gateway and node start)."""
        deadline = time.monotonic() + WAIT_S
        last = ""
        while time.monotonic() < deadline:
            r = subprocess.run([self.sub(w) for w in words], cwd=self.work, env=self.env, capture_output=True,
                               text=True, timeout=60)
            last = r.stdout + r.stderr
            if r.returncode == 0 and check(r.stdout):
                return r.stdout
            time.sleep(0.3)
        self.stop_all()
        logs = "\n".join(f"--- {shlex.join(p.args[:3])}:\n{log.read_text()[-3000:]}"
                         for p, log in zip(self.procs, self.logs, strict=True))
        raise AssertionError(f"{shlex.join(words)} never succeeded: {last}\n{logs}")


@pytest.fixture
def site(tmp_path):
    etc = Path(tempfile.mkdtemp(prefix="lookout-etc-"))  # like /etc: Mosquitto's own user may traverse it
    etc.chmod(0o755)
    s = Site(tmp_path, etc)
    try:
        yield s
    finally:
        s.stop_all()
        shutil.rmtree(etc, ignore_errors=True)


@pytest.mark.mosquitto
def test_readme_deploy_and_operating_commands_in_order(site):
    find_mosquitto()
    cmds = readme_commands()
    seen = []
    for words in cmds:
        prog, rest = words[0], words[1:]
        sub = rest[0] if rest else ""
        seen.append(f"{prog} {sub}".strip())
        if words[:3] == ["python3", "-m", "venv"] or prog == "/opt/lookout/bin/pip" or prog in ("ln", "useradd"):
            continue  # the install: this checkout's venv stands in; PATH instead of a link; no system user
        if prog == "install":
            if "-g" in words:
                i = words.index("-g")
                words = words[:i] + words[i + 2:]
            site.run(words)
            toml = Path(site.sub(words[-1]))
            login = site.out["provision gateway"]
            text = site.sub(toml.read_text())
            for key in ("username", "password"):  # "paste the [broker] login"
                value = re.search(rf'^{key} = "(.*)"$', login, re.M).group(1)
                text = re.sub(rf'^{key} = ".*?"', f'{key} = "{value}"', text, count=1, flags=re.M)
            text = text.replace(":8884", f":{site.op_port}").replace("127.0.0.1:9108",
                                                                     f"127.0.0.1:{site.metrics_port}")
            toml.write_text(text)
            continue
        if prog == "mosquitto":
            site.start([w for w in words if w != "-d"], port=site.op_port)
            continue
        if prog == "cp" and words[1].endswith(".service"):
            site.run(words)
            continue
        if prog == "systemctl":  # the unit's own ExecStart, as this user, in the foreground
            unit = (Path(site.paths["/etc/systemd/system"]) / "lookout-gateway.service").read_text()
            site.start(shlex.split(re.search(r"^ExecStart=(.+)$", unit, re.M).group(1)))
            continue
        if prog == "kill":  # kill -HUP "$(cat .../mosquitto.pid)": the pid file names the broker this test started
            pid = int(Path(site.sub(re.search(r"\$\(cat (\S+)\)", words[2]).group(1))).read_text())
            assert words[1] == "-HUP" and pid == site.procs[0].pid, (words, pid)
            os.kill(pid, signal.SIGHUP)
            continue
        if prog == "export":
            for a in rest:
                k, _, v = a.partition("=")
                v = v.replace("gw.dongshan.local:8884", f"127.0.0.1:{site.op_port}")
                site.env[k] = site.sub(v if v != "..." else site.out["provision operator"].strip().splitlines()[-1])
            continue
        assert prog == "lookout", f"a README command this test does not know how to run: {shlex.join(words)}"
        if sub == "broker-config":
            words = words + ["--tls-port", str(site.node_port), "--op-tls-port", str(site.op_port)]
        elif sub == "provision" and rest[1] == "device":
            words = [w.replace("gw.dongshan.local", "127.0.0.1") for w in words]
            words += ["--broker-port", str(site.node_port), "--quiet-hours", "none"]
        elif sub == "firmware" and rest[1] == "flash" and "--dry-run" not in words:
            continue  # needs a board on /dev/ttyUSB0; the --dry-run before it showed the plan
        elif sub == "sim":
            site.start(words)
            continue
        elif sub == "devices":  # the first operator command: wait for the gateway and the node to be up
            out = site.until_ok(words, lambda o: re.search(r"^spk-01 +speaker +dongshan +online", o, re.M))
            assert "gw-dongshan" in out
            continue
        elif sub == "clips":
            (site.work / words[3]).write_bytes(wav_bytes(500))  # the operator's new warning audio
        out = site.run(words)
        site.out[f"{sub} {rest[1]}" if sub in ("provision", "pki", "firmware", "clips") else sub] = out
        if sub == "broadcast":
            assert re.search(r"^spk-01 +done ", out, re.M), out
        if sub == "clips":
            assert re.search(r"^spk-01 .*done", out, re.M), out
        if sub == "journal":
            assert out.startswith("journal ok: "), out
    assert seen[-6:] == ["lookout devices", "lookout broadcast", "lookout clips", "lookout journal",
                         "lookout incidents", "lookout coverage"], seen
    assert "spk-01" in site.out["coverage"], site.out["coverage"]  # the node is on the coverage table
    assert {"lookout pki", "lookout provision", "install -D", "lookout broker-config", "mosquitto -d", "systemctl enable",
            "kill -HUP", "lookout firmware", "lookout sim"} <= set(seen), seen
