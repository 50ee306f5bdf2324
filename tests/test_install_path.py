"""The installer's path outside Python (issue 11, items 1, 2 and 4): the demo script hands its arguments to the
demo, Mosquitto started as root reads what `lookout broker-config` wrote, and the systemd unit runs what the
README installs.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import tempfile
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt
from broker import Mosquitto, free_port
from paho.mqtt.enums import CallbackAPIVersion

from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_operator
from lookout.gateway.cli.main import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
UNIT = (ROOT / "deploy" / "lookout-gateway.service").read_text()


def test_demo_script_hands_its_arguments_to_the_demo_not_to_pip(tmp_path):
    """scripts/demo sources scripts/bootstrap.sh; the user's arguments must not become pip extras."""
    (tmp_path / "scripts").mkdir()
    for f in ("demo", "bootstrap.sh"):
        shutil.copy(ROOT / "scripts" / f, tmp_path / "scripts" / f)
    (tmp_path / "pyproject.toml").write_text("")
    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    log = tmp_path / "calls.log"
    for name in ("python", "lookout"):  # stand-ins that record how they were called
        (venv / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\n')
        (venv / name).chmod(0o755)
    r = subprocess.run(["bash", "scripts/demo", "--speed", "10", "--nodes", "3"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert "python -m pip install -q -e ." in calls, calls
    assert not any("--speed" in c for c in calls if c.startswith("python")), calls
    assert calls[-1] == "lookout demo --speed 10 --nodes 3"


def test_mosquitto_started_as_the_readme_says_reads_its_files(tmp_path):
    """`mosquitto -c DIR/mosquitto.conf`, no --run-as: as root it drops to user mosquitto, which must still read
    passwd, acl and the server key and write its log and data (CI runs as root)."""
    etc = Path(tempfile.mkdtemp(prefix="lookout-etc-"))  # like /etc: every user may traverse it
    try:
        etc.chmod(0o755)
        d = ["--data-dir", str(tmp_path / "data")]
        assert cli_main(["pki", "init", "--site", "dongshan", *d]) == 0
        assert cli_main(["pki", "issue", "server", "--host", "127.0.0.1", *d]) == 0
        with KeyStore(tmp_path / "data" / "keystore.db") as ks:
            token = provision_operator(ks, "op-1", "Duty")
        port, op_port = free_port(), free_port()
        assert cli_main(["broker-config", "--out", str(etc / "lookout"), "--tls-port", str(port),
                         "--op-tls-port", str(op_port), *d]) == 0
        conf = etc / "lookout" / "mosquitto.conf"
        assert "\nuser " not in conf.read_text()  # Mosquitto's own default user, as on a real host
        if os.geteuid() == 0:
            for f in ("passwd", "passwd-ops", "acl", "tls/server.key"):
                st = (etc / "lookout" / f).stat()
                assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o640
                assert st.st_gid == pwd.getpwnam("mosquitto").pw_gid  # its group reads it
        b = Mosquitto(etc / "lookout", port=op_port, conf_file=conf).start()
        try:
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="op-1-x")
            c.username_pw_set("op-1", token)
            c.tls_set(ca_certs=str(tmp_path / "data" / "pki" / "ca.crt"))
            rc: list = []
            c.on_connect = lambda cl, u, f, code, p: rc.append(code)
            c.connect("127.0.0.1", op_port)
            for _ in range(100):
                c.loop(0.05)
                if rc:
                    break
            assert rc and not rc[0].is_failure, rc
            c.disconnect()
        finally:
            b.stop()
        assert (etc / "lookout" / "mosquitto.log").stat().st_size > 0  # it could open its log
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def _readme_install() -> tuple[str, str]:
    """(venv dir, gateway.toml destination) from the README's Deploy block."""
    venv = re.search(r"python3 -m venv (\S+) && (\S+)/bin/pip install \.", README)
    assert venv and venv.group(1) == venv.group(2), "README: the install line"
    dest = re.search(r"deploy/gateway\.example\.toml (/\S+/gateway\.toml)", README)
    assert dest, "README: where gateway.toml goes"
    return venv.group(1), dest.group(1)


def test_systemd_unit_runs_what_the_readme_installs():
    venv, toml_dest = _readme_install()
    exec_start = shlex.split(re.search(r"^ExecStart=(.+)$", UNIT, re.M).group(1))
    assert exec_start[0] == f"{venv}/bin/lookout", (exec_start, venv)
    assert exec_start[1] == "gateway" and exec_start[exec_start.index("--config") + 1] == toml_dest
    data_dir = tomllib.loads((ROOT / "deploy" / "gateway.example.toml").read_text())["gateway"]["data_dir"]
    assert data_dir in re.search(r"^ReadWritePaths=(.+)$", UNIT, re.M).group(1).split()
    assert f"StateDirectory={Path(data_dir).name}" in UNIT
    assert "ln -s" in README and f"{venv}/bin/lookout" in README  # `lookout` on PATH for the README's steps


def test_the_project_text_stands_on_its_own():
    """Docs, code and what the demo prints cite sources by name, never files a user of the project does not have
    (the team's shared brief, FIELD.md) (issue 11, item 9)."""
    shipped = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "deploy").iterdir())]
    for part in ("protocols", "firmware", "gateway", "simulators", "tools", "scripts", "bench"):
        shipped += [p for p in sorted((ROOT / part).rglob("*")) if p.is_file() and p.suffix in (".py", ".md", ".json",
                                                                                              ".sh", "")]
    outside = re.compile(r"FIELD\.md|\(FIELD\)|docs FIELD|shared brief|\.\./shared|/work/shared")
    bad = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in shipped if "__pycache__" not in p.parts
           for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if outside.search(line)]
    assert not bad, "\n".join(bad)
