"""gateway.keystore: keys, counters, operators, broker logins."""

from __future__ import annotations

import itertools
import logging
import os
import stat
import threading

import pytest

from lookout.gateway.admin.keystore import KeyStore, KeyStoreError, token_hash


def test_file_created_0600(tmp_path):
    p = tmp_path / "sub" / "keys.db"
    ks = KeyStore(p)
    ks.ensure("spk-01", "dongshan", "speaker")
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    ks.close()


def test_existing_file_mode_tightened(tmp_path):
    p = tmp_path / "keys.db"
    p.touch(mode=0o644)
    os.chmod(p, 0o644)
    KeyStore(p).close()
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600


def test_ensure_get_and_random_keys(tmp_path):
    ks = KeyStore(tmp_path / "k.db")
    assert ks.get("spk-01") is None
    a = ks.ensure("spk-01", "dongshan", "speaker")
    b = ks.ensure("spk-02", "dongshan", "sensor")
    assert len(a.hmac_key) == 32 and len(b.hmac_key) == 32 and a.hmac_key != b.hmac_key
    again = ks.ensure("spk-01", "other", "camera")
    assert again.hmac_key == a.hmac_key and again.site == "dongshan" and again.kind == "speaker"
    got = ks.get("spk-01")
    assert (got.device_id, got.site, got.kind, got.hmac_key) == ("spk-01", "dongshan", "speaker", a.hmac_key)
    assert got.created_ms > 1_600_000_000_000


def test_key_never_in_repr_or_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    ks = KeyStore(tmp_path / "k.db")
    ident = ks.ensure("spk-01", "dongshan", "speaker")
    for text in (repr(ident), str(ident), repr(ks), caplog.text):
        assert ident.hmac_key.hex() not in text
        assert "hidden" in repr(ident)


def test_create_rejects_duplicates_bad_ids_kinds_keys(tmp_path):
    ks = KeyStore(tmp_path / "k.db")
    ks.create("drone-1", "dongshan", "drone", meta={"sysid": 1})
    assert ks.get("drone-1").meta == {"sysid": 1}
    with pytest.raises(KeyStoreError, match="exists"):
        ks.create("drone-1", "dongshan", "drone")
    with pytest.raises(KeyStoreError, match="invalid device_id"):
        ks.create("Bad/Id", "dongshan", "speaker")
    with pytest.raises(KeyStoreError, match="kind"):
        ks.create("x1", "dongshan", "toaster")
    with pytest.raises(KeyStoreError, match="32 bytes"):
        ks.create("x2", "dongshan", "speaker", key=b"short")
    assert [i.device_id for i in ks.list(kind="drone")] == ["drone-1"]


def test_counter_strictly_increasing_and_persistent(tmp_path):
    p = tmp_path / "k.db"
    ks = KeyStore(p)
    ks.ensure("spk-01", "dongshan", "speaker")
    seen = [ks.next_counter("spk-01") for _ in range(50)]
    assert all(b > a for a, b in itertools.pairwise(seen))
    assert ks.last_counter("spk-01") == seen[-1]
    ks.close()
    ks2 = KeyStore(p)
    assert ks2.next_counter("spk-01") > seen[-1]
    with pytest.raises(KeyStoreError):
        ks2.next_counter("nobody")


def test_counter_unique_across_threads(tmp_path):
    ks = KeyStore(tmp_path / "k.db")
    ks.ensure("spk-01", "dongshan", "speaker")
    out: list[int] = []

    def work():
        for _ in range(25):
            out.append(ks.next_counter("spk-01"))

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert len(out) == 100 and len(set(out)) == 100


def test_counter_above_restored_backup(tmp_path):
    """A keystore restored from an old backup still issues counters above what the node has seen."""
    ks = KeyStore(tmp_path / "k.db")
    ks.ensure("spk-01", "dongshan", "speaker")
    first = ks.next_counter("spk-01")
    assert first > 1_600_000_000_000  # time-based floor, see module docstring


def test_set_key_keeps_counter(tmp_path):
    ks = KeyStore(tmp_path / "k.db")
    ks.ensure("spk-01", "dongshan", "speaker")
    c = ks.next_counter("spk-01")
    ks.set_key("spk-01", b"\x01" * 32)
    assert ks.get("spk-01").hmac_key == b"\x01" * 32
    assert ks.get("spk-01").rotated_ms is not None
    assert ks.next_counter("spk-01") > c
    with pytest.raises(KeyStoreError):
        ks.set_key("spk-01", b"\x01" * 31)
    with pytest.raises(KeyStoreError):
        ks.set_key("nobody", b"\x01" * 32)


def test_operators(tmp_path):
    ks = KeyStore(tmp_path / "k.db")
    tok = ks.add_operator("op-li", "Li Wei", "operator")
    assert len(tok) >= 40
    op = ks.get_operator("op-li")
    assert (op.op_id, op.name, op.role) == ("op-li", "Li Wei", "operator")
    assert op.token_hash == token_hash(tok) and tok not in op.token_hash
    assert ks.verify_operator("op-li", tok) is not None
    assert ks.verify_operator("op-li", tok + "x") is None
    assert ks.verify_operator("op-zz", tok) is None
    assert ks.get_operator("op-zz") is None
    with pytest.raises(KeyStoreError):
        ks.add_operator("op-li", "again", "operator")
    with pytest.raises(KeyStoreError):
        ks.add_operator("op-x", "X", "god")
    tok2 = ks.add_operator("op-admin", "Chief", "admin")
    assert tok2 != tok
    assert ks.remove_operator("op-li") and ks.get_operator("op-li") is None


def test_mqtt_users_and_remove(tmp_path):
    ks = KeyStore(tmp_path / "k.db")
    ks.ensure("spk-01", "dongshan", "speaker")
    ks.set_mqtt_user("spk-01", "device", "$7$101$abc$def", site="dongshan")
    assert [(u.username, u.role, u.site) for u in ks.mqtt_users()] == [("spk-01", "device", "dongshan")]
    with pytest.raises(KeyStoreError):
        ks.set_mqtt_user("spk-02", "device", "user:$7$x")
    assert ks.remove("spk-01")
    assert ks.get("spk-01") is None and ks.mqtt_users() == []
    assert not ks.remove("spk-01")


def test_rotation_pending_key(tmp_path):
    from lookout.protocols import signing

    ks = KeyStore(tmp_path / "k.db")
    old = ks.ensure("spk-01", "dongshan", "speaker").hmac_key
    assert ks.pending_key("spk-01") is None
    new = ks.begin_rotation("spk-01")
    assert len(new) == 32 and new != old
    assert ks.begin_rotation("spk-01") == new  # a retried rotation re-sends the same key
    assert ks.get("spk-01").hmac_key == old  # still in force until confirmed
    ctr = ks.next_counter("spk-01")
    assert signing.unwrap_key(old, signing.wrap_key(old, new, ctr), ctr) == new
    ks.set_key("spk-01", new)
    assert ks.get("spk-01").hmac_key == new and ks.pending_key("spk-01") is None
    ks.begin_rotation("spk-01")
    ks.cancel_rotation("spk-01")
    assert ks.pending_key("spk-01") is None
    with pytest.raises(KeyStoreError):
        ks.begin_rotation("nobody")
