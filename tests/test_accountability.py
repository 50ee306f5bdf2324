"""Operator accountability (issue 5 item 6, issue 4 item 6): admin tools and key rotation journaled with who, what and
the outcome and never a secret; a CLI appending from another process while the gateway writes keeps the chain
valid; operator requests from unknown operators refused and journaled."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lookout.gateway.admin.audit import default_operator
from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.cli.main import main as cli_main
from lookout.gateway.core.journal import GENESIS, Journal, entry_hash

ROOT = Path(__file__).resolve().parents[1]


def rows(db: Path) -> list[dict]:
    j = Journal(db, owner_wait_s=0)
    try:
        return [e.to_dict() for e in j.entries()]
    finally:
        j.close()


def verify(db: Path):
    j = Journal(db, owner_wait_s=0)
    try:
        return j.verify()
    finally:
        j.close()


def no_secret(entries: list[dict], secrets: list[str]) -> None:
    text = json.dumps(entries)
    for s in secrets:
        assert s and s not in text, "secret material in the journal"


# -- admin tools ---------------------------------------------------------------------------------------------------
def test_provision_and_revoke_journaled_without_secrets(tmp_path, capsys):
    data = tmp_path / "data"
    d = ["--data-dir", str(data)]
    assert cli_main(["provision", "device", "--id", "spk-01", "--site", "dongshan", "--role", "speaker", "--plain",
                     "--out", str(tmp_path / "spk"), *d]) == 0
    assert cli_main(["provision", "operator", "--id", "adm-1", "--name", "Chief", "--role", "admin",
                     "--out", str(tmp_path / "adm.json"), *d]) == 0
    assert cli_main(["provision", "operator", "--id", "op-1", "--name", "Duty", *d]) == 0
    op_token = capsys.readouterr().out.strip().splitlines()[-1]
    assert cli_main(["provision", "recorder", "--id", "bwr-1", "--site", "dongshan", "--operator", "adm-1", *d]) == 0
    rec_key = capsys.readouterr().out.strip().splitlines()[-1]
    # an unknown operator, and a non-admin one, are refused before anything is done, and that is journaled
    assert cli_main(["provision", "recorder", "--id", "bwr-2", "--site", "dongshan", "--operator", "ghost", *d]) == 2
    assert cli_main(["provision", "revoke", "--id", "spk-01", "--operator", "op-1", *d]) == 2
    assert "refused" in capsys.readouterr().err
    assert cli_main(["provision", "device", "--id", "spk-01", "--site", "dongshan", "--role", "speaker", *d]) == 2
    assert cli_main(["provision", "revoke", "--id", "spk-01", "--operator", "adm-1", *d]) == 0
    assert cli_main(["broker-config", "--out", str(tmp_path / "broker"), "--plain", *d]) == 0

    es = rows(data / "journal.db")
    assert verify(data / "journal.db").ok
    me = default_operator()
    by = [(e["kind"], e["operator"], e["device"], e["detail"]["tool"], e["detail"].get("outcome")) for e in es]
    assert by == [
        ("admin", me, "spk-01", "provision device", "ok"),
        ("admin", me, "adm-1", "provision operator", "ok"),
        ("admin", me, "op-1", "provision operator", "ok"),
        ("admin", "adm-1", "bwr-1", "provision recorder", "ok"),
        ("security", "ghost", None, "provision recorder", "refused"),
        ("security", "op-1", None, "provision revoke", "refused"),
        ("admin", me, "spk-01", "provision device", "refused"),
        ("admin", "adm-1", "spk-01", "provision revoke", "ok"),
        ("admin", me, None, "broker-config", "ok"),
    ]
    assert all(e["detail"]["os_user"] for e in es)
    assert es[7]["detail"]["revoked"] == "speaker" and "revoked speaker spk-01" in es[7]["summary"]
    with KeyStore(data / "keystore.db") as ks:
        assert ks.get("bwr-2") is None  # the refused action did not happen
    node_cfg = json.loads((tmp_path / "spk" / "config.json").read_text())
    adm_token = json.loads((tmp_path / "adm.json").read_text())["token"]
    no_secret(es, [node_cfg["key"], node_cfg["broker"]["password"], adm_token, op_token, rec_key])


def test_admin_tool_refuses_to_act_without_a_writable_journal(tmp_path, capsys):
    (tmp_path / "ro").write_text("")  # a file where the journal's directory should be
    assert cli_main(["provision", "recorder", "--id", "bwr-1", "--site", "s", "--data-dir", str(tmp_path / "d"),
                     "--journal", str(tmp_path / "ro" / "journal.db")]) == 2
    assert "cannot write the duty journal" in capsys.readouterr().err
    with KeyStore(tmp_path / "d" / "keystore.db") as ks:
        assert ks.get("bwr-1") is None


def test_pki_journaled(tmp_path):
    d = ["--data-dir", str(tmp_path)]
    assert cli_main(["pki", "init", "--site", "dongshan", *d]) == 0
    assert cli_main(["pki", "issue", "client", "--name", "spk-01", *d]) == 0
    es = rows(tmp_path / "journal.db")
    assert [(e["detail"]["tool"], e["device"]) for e in es] == [("pki init", None), ("pki issue", "spk-01")]
    assert len(es[0]["detail"]["ca_sha256"]) == 64
    key = (tmp_path / "pki").glob("**/*.key")
    no_secret(es, [p.read_text().strip().splitlines()[1] for p in key])


# -- two processes, one chain --------------------------------------------------------------------------------------
_CLI_APPENDS = """
import sys
from lookout.gateway.core.journal import record
for i in range(int(sys.argv[2])):
    e = record(sys.argv[1], "admin", "cli %s %d" % (sys.argv[3], i), operator="admin:test", device="x")
    print(e.seq)
"""


def test_cross_process_appends_keep_the_chain_valid(tmp_path):
    db = tmp_path / "journal.db"
    gw = Journal(db)  # the running gateway: owns the chain
    assert gw.owner
    stop = threading.Event()

    def hot_path():
        i = 0
        while not stop.is_set():
            gw.append("alert", f"gw {i}", device="spk-01", detail={"i": i})
            i += 1
            time.sleep(0.002)

    t = threading.Thread(target=hot_path)
    t.start()
    try:
        procs = [subprocess.run([sys.executable, "-c", _CLI_APPENDS, str(db), "15", tag], cwd=ROOT,
                                capture_output=True, text=True, timeout=60, check=False) for tag in ("a", "b")]
    finally:
        stop.set()
        t.join()
    for p in procs:
        assert p.returncode == 0, p.stderr
        assert set(p.stdout.split()) == {"0"}  # queued: the gateway owns the chain
    gw.flush()
    deadline = time.monotonic() + 10
    while len([e for e in gw.entries(kind="admin")]) < 30 and time.monotonic() < deadline:
        time.sleep(0.1)  # the idle owner chains the inbox within INBOX_POLL_S
    es = gw.entries()
    assert [e.summary for e in es if e.kind == "admin"] == [f"cli a {i}" for i in range(15)] + \
        [f"cli b {i}" for i in range(15)]
    gw_rows = [e for e in es if e.kind == "alert"]
    assert [e.summary for e in gw_rows] == [f"gw {i}" for i in range(len(gw_rows))] and len(gw_rows) > 10
    v = gw.verify()
    assert v.ok and v.entries == len(es) and v.head == gw.head()[1]
    gw.close()
    assert verify(db).ok
    n = sqlite3.connect(db).execute("SELECT count(*) FROM journal_inbox").fetchone()[0]
    assert n == 0


def test_cli_without_gateway_chains_itself_and_queued_rows_are_chained_at_next_open(tmp_path):
    db = tmp_path / "journal.db"
    # two CLIs at once, no gateway: whoever holds the lock chains, the other queues; all end up chained
    ps = [subprocess.Popen([sys.executable, "-c", _CLI_APPENDS, str(db), "10", tag], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    for p in ps:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    j = Journal(db)
    assert j.owner and len(j.entries()) == 20 and j.verify().ok
    j.close()


def test_writer_outside_the_lock_is_rechained_not_forked(tmp_path):
    """Defence in depth: a writer that bypasses the owner lock (an old version) appends a chained row directly;
    the owner re-reads the head inside its transaction and links its batch after it."""
    db = tmp_path / "journal.db"
    j = Journal(db)
    j.append("system", "start")
    j.flush()
    seq, head = j.head()
    raw = sqlite3.connect(db, isolation_level=None)
    h = entry_hash(head, seq + 1, 1, None, "system", None, "rogue", "{}")
    raw.execute("INSERT INTO journal VALUES (?, 1, NULL, 'system', NULL, 'rogue', '{}', ?, ?)", (seq + 1, head, h))
    raw.close()
    j.append("system", "after")
    assert j.verify().ok and [e.summary for e in j.entries()] == ["start", "rogue", "after"]
    assert j.head()[0] == 3
    j.close()
    v = verify(db)
    assert v.ok and v.entries == 3 and v.head != GENESIS


# -- key rotation --------------------------------------------------------------------------------------------------
@pytest.mark.mosquitto
def test_rotate_key_journaled_with_operator_and_outcome(tmp_path, mosquitto):
    from lookout.simulators.node import SimNode, make_config

    old = bytes(range(32))
    with KeyStore(tmp_path / "keystore.db") as ks:
        ks.create("spk-01", "dongshan", "speaker", key=old)
        ks.add_operator("adm-1", "Chief", "admin")
    conf = tmp_path / "gateway.toml"
    conf.write_text(f'[gateway]\nid = "gw-1"\nsite = "dongshan"\ndata_dir = "{tmp_path}"\n'
                    f'[broker]\nurl = "{mosquitto.url}"\n')

    async def scenario():
        node = SimNode(tmp_path / "node", make_config("spk-01", "dongshan", "speaker", old.hex(), mosquitto.host,
                                                      mosquitto.port))
        await node.start()
        try:
            await node.wait_online()
            rc1 = await asyncio.to_thread(cli_main, ["rotate-key", "spk-01", "--config", str(conf), "--timeout", "5",
                                                     "--operator", "adm-1"])
            rc2 = await asyncio.to_thread(cli_main, ["rotate-key", "spk-01", "--config", str(conf), "--operator",
                                                     "nobody"])
        finally:
            await node.stop()
        rc3 = await asyncio.to_thread(cli_main, ["rotate-key", "spk-01", "--config", str(conf), "--timeout", "1"])
        return rc1, rc2, rc3

    rc = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert rc == (0, 2, 3)
    es = rows(tmp_path / "journal.db")
    assert verify(tmp_path / "journal.db").ok
    got = [(e["kind"], e["operator"], e["device"], e["detail"].get("outcome"), e["detail"].get("code")) for e in es]
    assert got == [("admin", "adm-1", "spk-01", "committed", None),
                   ("security", "nobody", None, "refused", None),
                   ("admin", default_operator(), "spk-01", "refused", "offline")]
    first = es[0]["detail"]
    assert first["cmd_id"].startswith("rk-") and first["via"] == "done" and first["tool"] == "rotate-key"
    assert "committed via done" in es[0]["summary"] and first["cmd_id"] in es[0]["summary"]
    with KeyStore(tmp_path / "keystore.db") as ks:
        new = ks.get("spk-01").hmac_key
    assert new != old
    no_secret(es, [old.hex(), new.hex()])


# -- unknown operators on the operator API -------------------------------------------------------------------------
@pytest.mark.mosquitto
def test_unknown_operator_refused_journaled_and_nothing_sent(tmp_path, mosquitto):
    from gwserve import serving

    from lookout.gateway.core.config import from_dict
    from lookout.gateway.links.opclient import OperatorClient
    from lookout.gateway.service.app import Gateway
    from lookout.simulators.fakenode import FakeNode

    cfg = from_dict({"gateway": {"id": "gw-1", "site": "dongshan", "data_dir": str(tmp_path / "data")},
                     "broker": {"url": mosquitto.url}, "registry": {"min_hb_s": 1},
                     "commands": {"retry_s": 1, "max_attempts": 2, "wait_s": 3}})

    async def main():
        ks = KeyStore(tmp_path / "ks.db")
        token = ks.add_operator("op-1", "Duty", "operator")
        ident = ks.ensure("spk-01", "dongshan", "speaker")
        n = FakeNode(mosquitto.host, mosquitto.port, "spk-01", "dongshan", ident.hmac_key)
        async with serving(Gateway(cfg, keystore=ks)) as gw:
            await asyncio.to_thread(n.start)
            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            while not (gw.registry.get("spk-01") and gw.registry.get("spk-01").live):
                assert loop.time() < end, "node not online"
                await asyncio.sleep(0.02)
            async with OperatorClient(mosquitto.url, "dongshan", "intruder", token) as cl:  # someone else's token
                r = await cl.request("broadcast", {"to": "spk-01", "clip": "nofish"}, timeout=5)
                assert r["code"] == "unauthorized"
            async with OperatorClient(mosquitto.url, "dongshan", "op-1", token) as cl:
                r = await cl.request("stop", {"to": "spk-01"}, timeout=5)
                assert r["code"] == "ok"
            assert [m["name"] for m in n.received] == ["stop"]  # the intruder's broadcast never reached the node
            sec = [e for e in gw.journal.entries(kind="security") if e.operator == "intruder"]
            assert len(sec) == 1 and "refused" in sec[0].summary and json.loads(sec[0].detail)["op"] == "broadcast"
            assert not [e for e in gw.journal.entries(kind="command") if e.operator == "intruder"]
            assert any(e.operator == "op-1" for e in gw.journal.entries(kind="command"))
            assert gw.journal.verify().ok
        n.stop()
        ks.close()

    asyncio.run(asyncio.wait_for(main(), 40))
