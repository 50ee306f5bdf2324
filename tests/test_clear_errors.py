"""What an operator or installer sees when something is wrong (issue 11, items 7 and 8): one clear line naming what
to check and exit 2 for a wrong token, an address where nothing listens, a port another gateway holds, and a demo
pointed at a broker that wants a login; broker outages and recoveries logged as warnings with their duration.
Real Mosquitto from the generated config, real sockets, the CLI as a subprocess where it configures logging.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from aiowait import aio
from broker import Mosquitto, free_port

from lookout.gateway.admin.brokerconfig import write_broker_config
from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.provision import provision_gateway, provision_operator
from lookout.gateway.cli.main import main
from lookout.gateway.links.mqtt import MQTTLink

ROOT = Path(__file__).resolve().parents[1]


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """A broker from `lookout broker-config --plain`: logins required."""
    root = tmp_path_factory.mktemp("locked")
    with KeyStore(root / "keystore.db") as ks:
        provision_gateway(ks, "gw-1", "dongshan")
        provision_operator(ks, "op-li", "Li Wei")
        port, op_port = free_port(), free_port()
        write_broker_config(root / "broker", ks, None, port=port, op_port=op_port, persistence=False,
                            run_as="root" if os.geteuid() == 0 else None)
    b = Mosquitto(root / "broker", port=op_port, conf_file=root / "broker" / "mosquitto.conf").start()
    yield b
    b.stop()


def test_wrong_operator_token_says_what_to_check(locked, capsys):
    conn = ["--broker", locked.url, "--site", "dongshan", "--operator", "op-li", "--token", "wrong"]
    assert main(["devices", *conn]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(lines(err)) == 1, err
    assert "not authorised" in err and "LOOKOUT_TOKEN" in err and f"127.0.0.1:{locked.port}" in err
    assert "unknown reason" not in err and "135" not in err
    assert main(["devices", "--json", *conn]) == 2
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["ok"] is False and doc["code"] == "unauthorized" and doc["id"] is None


def test_nothing_listening_fails_at_once_naming_the_address(capsys):
    port = free_port()
    rc = main(["devices", "--broker", f"mqtt://127.0.0.1:{port}", "--site", "s", "--operator", "op-1",
               "--token", "t", "--timeout", "60"])
    err = capsys.readouterr().err
    assert rc == 2 and len(lines(err)) == 1, err
    assert f"nothing listening at 127.0.0.1:{port}" in err and "LOOKOUT_BROKER" in err
    assert "no CONNACK" not in err  # failed on the refusal, not after waiting for a connect timeout


def _gateway(conf: Path) -> subprocess.CompletedProcess:
    """Run ``lookout gateway`` to its exit; the service's own log lines go to stderr too (INFO by default)."""
    return subprocess.run([sys.executable, "-m", "lookout", "gateway", "--config", str(conf)], cwd=conf.parent,
                          capture_output=True, text=True, timeout=60)


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in lines(stderr) if ln.startswith("lookout gateway:") or "Traceback" in ln]


def test_second_gateway_on_a_taken_port_names_the_address(mosquitto, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "metrics.toml"
        conf.write_text(f'[gateway]\nid = "gw-2"\nsite = "dongshan"\ndata_dir = "d1"\n'
                        f'[broker]\nurl = "{mosquitto.url}"\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
        r = _gateway(conf)
        assert r.returncode == 2 and len(error_lines(r.stderr)) == 1, r.stderr
        assert f"cannot listen on 127.0.0.1:{port} ([metrics].listen)" in r.stderr
        assert "connected to" not in r.stderr  # stopped before it touched the broker
        assert "already listens there" in r.stderr
        conf = tmp_path / "embedded.toml"
        conf.write_text(f'[gateway]\nid = "gw-3"\nsite = "dongshan"\ndata_dir = "d2"\n'
                        f'[broker]\nembedded_port = {port}\n')
        r = _gateway(conf)
        assert r.returncode == 2 and len(error_lines(r.stderr)) == 1, r.stderr
        assert f"cannot listen on 127.0.0.1:{port} ([broker].embedded_port)" in r.stderr


def test_demo_against_a_broker_that_wants_a_login(locked, tmp_path):
    r = subprocess.run([sys.executable, "-m", "lookout", "demo", "--broker", locked.url, "--data-dir",
                        str(tmp_path / "demo")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(lines(r.stderr)) == 1, r.stderr
    assert "refused the login: not authorised" in r.stderr and "Traceback" not in r.stdout + r.stderr


@aio
async def test_broker_outage_and_recovery_are_warnings_with_their_duration(mosquitto, caplog):
    caplog.set_level(logging.WARNING, logger="lookout.gateway.links.mqtt")
    async with MQTTLink(mosquitto.url, "t-outage") as link:
        await asyncio.to_thread(mosquitto.stop)
        async with asyncio.timeout(10):
            while link.connected.is_set():
                await asyncio.sleep(0.02)
        await asyncio.to_thread(mosquitto.start)
        async with asyncio.timeout(20):
            await link.connected.wait()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("lost the broker 127.0.0.1") for m in warned), warned
    back = [m for m in warned if "back after" in m]
    assert len(back) == 1 and float(back[0].split("back after ")[1].split(" s")[0]) > 0, warned


def test_certificate_without_the_dialled_address_says_how_to_issue_it(tmp_path, capsys):
    """Issue 11, item 3: a server certificate for a name only, dialled at 127.0.0.1."""
    d = ["--data-dir", str(tmp_path / "data")]
    assert main(["pki", "init", "--site", "dongshan", *d]) == 0
    assert main(["pki", "issue", "server", "--host", "gw.dongshan.local", *d]) == 0
    with KeyStore(tmp_path / "data" / "keystore.db") as ks:
        token = provision_operator(ks, "op-li", "Li Wei")
        port = free_port()
        write_broker_config(tmp_path / "broker", ks, tmp_path / "data" / "pki", tls_port=free_port(),
                            op_tls_port=port, persistence=False, run_as="root" if os.geteuid() == 0 else None)
    b = Mosquitto(tmp_path / "broker", port=port, conf_file=tmp_path / "broker" / "mosquitto.conf").start()
    try:
        capsys.readouterr()
        rc = main(["devices", "--broker", f"mqtts://127.0.0.1:{port}", "--ca",
                   str(tmp_path / "data" / "pki" / "ca.crt"), "--site", "dongshan", "--operator", "op-li",
                   "--token", token])
    finally:
        b.stop()
    err = capsys.readouterr().err
    assert rc == 2 and len(lines(err)) == 1, err
    assert "does not name 127.0.0.1" in err and "lookout pki issue server --host 127.0.0.1" in err
    assert "LOOKOUT_CA" in err
