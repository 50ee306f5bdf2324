"""PKI, Mosquitto password hashes, provisioning and the security CLI (no broker needed)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from lookout.gateway.admin.brokerconfig import acl_text, pw_check, pw_hash
from lookout.gateway.admin.keystore import KeyStore
from lookout.gateway.admin.pki import PKIError, SiteCA
from lookout.gateway.admin.provision import (
    ProvisionError,
    provision_device,
    provision_drone,
    provision_operator,
    revoke,
)
from lookout.gateway.cli.main import main as cli_main
from lookout.protocols import signing

# `mosquitto_passwd -b pwfile u1 secret` (Mosquitto 2.0.11) wrote this line
GOLDEN_LINE = ("u1:$7$101$lm9S+sVnGUCR184v$f7nFiWixCjN0/OE8PHB3wcGTleJwrsHkBKZ67zqllaRx8g5hnqH6qaZiBkG9+aUaWG4S"
               "7hGIh1fAhvPX95fKig==")


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


# -- passwords -----------------------------------------------------------------------------------------------------
def test_pw_hash_matches_mosquitto_passwd_golden():
    hashed = GOLDEN_LINE.split(":", 1)[1]
    salt = base64.b64decode(hashed.split("$")[3])
    assert len(salt) == 12
    assert pw_hash("secret", salt=salt, iterations=101) == hashed
    assert pw_check("secret", hashed) and not pw_check("Secret", hashed)
    assert not pw_check("secret", "$6$abc$def") and not pw_check("secret", "$7$x$y$z")


def test_pw_hash_random_salt_and_shape():
    a, b = pw_hash("pw"), pw_hash("pw")
    assert a != b and a.startswith("$7$1000$") and pw_check("pw", a) and pw_check("pw", b)
    assert len(base64.b64decode(a.split("$")[4])) == 64


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None, reason="mosquitto_passwd not installed")
def test_mosquitto_passwd_lines_verify(tmp_path):
    f = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(f), "u2", "p@ss:word"], check=True, timeout=10)
    hashed = f.read_text().strip().split(":", 1)[1]
    assert pw_check("p@ss:word", hashed)


# -- PKI -----------------------------------------------------------------------------------------------------------
def test_pki_chain_and_extensions(tmp_path):
    ca = SiteCA(tmp_path / "pki")
    ca.init("dongshan")
    with pytest.raises(PKIError, match="already exists"):
        ca.init("dongshan")
    srv, srv_key = ca.issue_server(["broker.local", "10.0.0.5"])
    cli, cli_key = ca.issue_client("spk-01")
    assert _mode(ca.ca_key) == 0o600 and _mode(srv_key) == 0o600 and _mode(cli_key) == 0o600
    root = x509.load_pem_x509_certificate(ca.ca_crt.read_bytes())
    assert x509.load_der_x509_certificate(ca.ca_der.read_bytes()) == root
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey) and root.public_key().curve.name == "secp256r1"
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    s = x509.load_pem_x509_certificate(srv.read_bytes())
    c = x509.load_pem_x509_certificate(cli.read_bytes())
    s.verify_directly_issued_by(root)
    c.verify_directly_issued_by(root)
    san = s.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.local"]
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in s.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert c.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "spk-01"
    assert len(ca.fingerprint()) == 64
    with pytest.raises(PKIError):
        ca.issue_client("../etc")
    with pytest.raises(PKIError, match="no CA"):
        SiteCA(tmp_path / "none").issue_server([])


# -- provisioning --------------------------------------------------------------------------------------------------
def _firmware_validate():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware" / "lib"))
    try:
        from lookout_node import config
    except ImportError:
        return None
    finally:
        sys.path.pop(0)
    return config.validate


def test_device_config_matches_keystore_and_firmware_validator(tmp_path):
    ca = SiteCA(tmp_path / "pki")
    ca.init("dongshan")
    ca.issue_server([])
    with KeyStore(tmp_path / "ks.db") as ks:
        _ident, cfg, path = provision_device(ks, "spk-01", "dongshan", "speaker", tmp_path / "out", tls=True, ca=ca,
                                            client_cert=True, position={"lat": 301000000, "lon": 1202000000,
                                                                        "alt_mm": 0})
        assert _mode(path) == 0o600 and _mode(tmp_path / "out" / "client.key") == 0o600
        on_disk = json.loads(path.read_text())
        assert on_disk == cfg
        assert bytes.fromhex(cfg["key"]) == ks.get("spk-01").hmac_key
        assert cfg["broker"]["user"] == "spk-01" and cfg["broker"]["tls"] and cfg["broker"]["port"] == 8883
        assert (tmp_path / "out" / cfg["broker"]["ca"]).read_bytes() == ca.ca_crt.read_bytes()
        (login,) = ks.mqtt_users()
        assert login.username == "spk-01" and login.role == "device" and login.site == "dongshan"
        assert pw_check(cfg["broker"]["password"], login.pw_line)
        assert cfg["broker"]["password"] not in login.pw_line
        # the key in config.json is what the node signs with; the gateway verifies with the keystore's copy
        msg = signing.sign(bytes.fromhex(cfg["key"]), "evt", {"id": "spk-01", "t": 1})
        signing.verify(ks.get("spk-01").hmac_key, "evt", msg)
    validate = _firmware_validate()
    if validate is not None:
        validate(on_disk)


def test_ids_are_one_namespace_and_force_replaces(tmp_path):
    with KeyStore(tmp_path / "ks.db") as ks:
        _, cfg1, _ = provision_device(ks, "spk-01", "dongshan", "speaker", tmp_path / "o1")
        with pytest.raises(ProvisionError, match="already used"):
            provision_device(ks, "spk-01", "dongshan", "speaker", tmp_path / "o2")
        with pytest.raises(ProvisionError, match="already used"):
            provision_operator(ks, "spk-01", "X")
        _, cfg2, _ = provision_device(ks, "spk-01", "dongshan", "speaker", tmp_path / "o2", force=True)
        assert cfg1["key"] != cfg2["key"] and cfg1["broker"]["password"] != cfg2["broker"]["password"]
        assert len(ks.mqtt_users()) == 1
        with pytest.raises(ProvisionError, match="needs a site CA"):
            provision_device(ks, "spk-02", "dongshan", "speaker", tmp_path / "o3", tls=True, ca=None)


def test_drone_and_recorder_keys(tmp_path):
    with KeyStore(tmp_path / "ks.db") as ks:
        d = provision_drone(ks, "uav-1", "dongshan", 7)
        assert len(d.hmac_key) == 32 and d.kind == "drone" and ks.get("uav-1").meta == {"sysid": 7}
        with pytest.raises(ProvisionError, match="sysid 7"):
            provision_drone(ks, "uav-2", "dongshan", 7)
        with pytest.raises(ProvisionError):
            provision_drone(ks, "uav-3", "dongshan", 0)
        assert ks.mqtt_users() == []  # drones are bridged, they never log into the broker
        assert revoke(ks, "uav-1") == "drone" and ks.get("uav-1") is None
        assert revoke(ks, "uav-1") is None


def test_acl_text_roles():
    from lookout.gateway.admin.keystore import MQTTUser

    text = acl_text([MQTTUser("gw-1", "gateway", "s", "x", 0), MQTTUser("op-li", "operator", None, "x", 0),
                     MQTTUser("spk-a", "device", "s", "x", 0)])
    assert "user gw-1\ntopic readwrite lookout/v1/s/#\n" in text  # its own site only (issue 17: sites share)
    assert "topic read lookout/v1/s/spk-a/dl/#\ntopic read lookout/v1/s/gw-1/state\n" in text  # its gateway
    assert "topic write lookout/v1/+/op-li/opreq\ntopic read lookout/v1/+/op-li/opres" in text
    assert "topic read lookout/v1/s/spk-a/cmd\ntopic read lookout/v1/s/spk-a/dl/#" in text
    assert "pattern" not in text


# -- CLI -----------------------------------------------------------------------------------------------------------
def test_cli_end_to_end(tmp_path, capsys):
    d = ["--data-dir", str(tmp_path / "data")]
    assert cli_main(["pki", "init", "--site", "dongshan", *d]) == 0
    assert cli_main(["pki", "issue", "server", "--host", "127.0.0.1", *d]) == 0
    assert cli_main(["provision", "device", "--id", "spk-01", "--site", "dongshan", "--role", "speaker", "--tls",
                     "--out", str(tmp_path / "spk"), "--lat", "30.1", "--lon", "120.2", *d]) == 0
    assert cli_main(["provision", "gateway", "--id", "gw-1", "--site", "dongshan", *d]) == 0
    assert cli_main(["provision", "operator", "--id", "op-li", "--name", "Li Wei",
                     "--out", str(tmp_path / "op.json"), *d]) == 0
    assert cli_main(["provision", "drone", "--id", "uav-1", "--site", "dongshan", "--sysid", "1", *d]) == 0
    assert cli_main(["provision", "recorder", "--id", "bwr-1", "--site", "dongshan",
                     "--out", str(tmp_path / "bwr.json"), *d]) == 0
    assert cli_main(["provision", "device", "--id", "spk-01", "--site", "dongshan", "--role", "speaker", *d]) == 2
    out = tmp_path / "broker"
    assert cli_main(["broker-config", "--out", str(out), "--plain", "--port", "18830", "--bind", "127.0.0.1",
                     *d]) == 0
    capsys.readouterr()
    assert cli_main(["provision", "list", "--json", *d]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["spk-01"]["broker_login"] == "device" and rows["uav-1"]["sysid"] == 1
    assert rows["op-li"]["broker_login"] == "operator" and rows["gw-1"]["kind"] == "gateway"
    assert "key" not in json.dumps(rows)
    cfg = json.loads((tmp_path / "spk" / "config.json").read_text())
    assert cfg["position"] == {"lat": 301000000, "lon": 1202000000, "alt_mm": 0}
    conf = (out / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf and "listener 18830 127.0.0.1" in conf and "listener 8883" in conf
    assert [ln.split(":")[0] for ln in (out / "passwd").read_text().splitlines()] == ["gw-1", "op-li", "spk-01"]
    assert _mode(tmp_path / "op.json") == 0o600 and _mode(tmp_path / "data" / "keystore.db") == 0o600
    assert cli_main(["provision", "revoke", "--id", "spk-01", *d]) == 0
    assert cli_main(["provision", "revoke", "--id", "spk-01", *d]) == 1
    assert cli_main(["broker-config", "--out", str(out), *d]) == 0
    assert "spk-01" not in (out / "passwd").read_text() and "spk-01" not in (out / "acl").read_text()


# -- docs/PROTOCOL.md §8 vectors ---------------------------------------------------------------------------
def test_security_wire_doc_vectors():
    import binascii

    from lookout.protocols import canonical, messages

    doc = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text()
    old, new = bytes(range(32)), bytes(range(32, 64))
    pad = binascii.hexlify(signing.hmac_sha256(old, b"rotate|43")).decode()
    wrapped = signing.wrap_key(old, new, 43)
    assert f"pad      = {pad}" in doc and f"args.key = {wrapped}" in doc
    assert signing.unwrap_key(old, wrapped, 43) == new
    cmd = messages.command("c-20261126-0002", "spk-01", "rotate_key", {"key": wrapped}, 1764000000000,
                           1764000060000, 0, 43, op="op-wang")
    signing.sign(old, "cmd", cmd)
    assert canonical.dumpb(cmd).decode() in doc
    assert signing.check_command(old, cmd, "spk-01", 42, 1764000000500) == 43
    res = messages.result("c-20261126-0002", "done", ts=1764000001000, data={"rotated": True})
    signing.sign(old, "res", res)
    assert canonical.dumpb(res).decode() in doc
    for code in ("bad_mac", "wrong_device", "replay", "expired", "bad_key"):
        assert f"`{code}`" in doc
