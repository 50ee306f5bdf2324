"""Creating identities: nodes, the gateway's broker login, operators, drones and serial recorders.

Theory of operation:
- one id namespace per keystore: a device, drone, recorder, gateway and operator can never share an id, because
  the id is the MQTT username and the device level of every topic (a collision would merge two ACLs);
- a node gets a random 32-byte HMAC key (keystore), a random broker password (only its PBKDF2 hash is kept, in
  the keystore's ``mqtt_users``) and a ``config.json`` for flashing that carries both; the file is written 0600
  and is the only place the plaintext password exists: flash it, then delete it (``lookout firmware flash`` reads
  it from wherever you keep it). With TLS the site CA (``ca.crt`` PEM, ``ca.der`` DER) is copied next to it for
  pinning, and optionally a client certificate (``client.crt``/``client.key``);
- drones get a 32-byte MAVLink 2 signing secret (``kind="drone"``, ``meta.sysid``), serial recorders a 32-byte key
  (``kind="recorder"``); neither logs into the broker (the gateway bridges them), so neither gets a password;
- an operator gets a token (the keystore keeps its SHA-256) that is also the operator's broker password, and
  optionally a password for the web console (scrypt, gateway/admin/passwords.py), which can be set later too;
- the gateway gets a broker login with the ``gateway`` role; its password goes into gateway.toml's ``[broker]``;
- ``revoke`` removes the key and the login; regenerate the broker files and reload Mosquitto (SIGHUP) afterwards.

Secrets are returned to the caller (the CLI shows them once) and never logged.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from lookout.gateway.admin.brokerconfig import pw_hash, random_password
from lookout.gateway.admin.keystore import DEVICE_KINDS, Identity, KeyStore, KeyStoreError
from lookout.gateway.admin.passwords import PasswordError, check_policy, hash_password
from lookout.gateway.admin.pki import SiteCA
from lookout.protocols.topics import is_valid_id

DEFAULT_NODE = {"hb_s": 30, "loc_s": 5, "quiet_hours": [22, 6], "local_warning": {"enabled": False, "clip": "nofish"}}


class ProvisionError(Exception):
    """The identity cannot be created as asked (id taken, no CA for TLS, bad argument)."""


def id_in_use(ks: KeyStore, ident: str) -> str | None:
    """What already uses ``ident`` ("speaker", "operator", "gateway login"...), or None."""
    got = ks.get(ident)
    if got is not None:
        return got.kind
    if ks.get_operator(ident) is not None:
        return "operator"
    for u in ks.mqtt_users():
        if u.username == ident:
            return f"{u.role} login"
    return None


def _claim(ks: KeyStore, ident: str, force: bool) -> None:
    used = id_in_use(ks, ident)
    if used is None:
        return
    if not force:
        raise ProvisionError(f"id {ident!r} is already used by a {used} (use --force to replace its keys)")
    if used == "operator":
        ks.remove_operator(ident)
    else:
        ks.remove(ident)


def _write_json_private(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(path, 0o600)


def deg_to_e7(deg: float) -> int:
    return round(deg * 1e7)


def provision_device(ks: KeyStore, device_id: str, site: str, role: str, out_dir: str | os.PathLike, *,
                     broker_host: str = "127.0.0.1", broker_port: int | None = None, tls: bool = False,
                     ca: SiteCA | None = None, client_cert: bool = False, transport: str = "mqtt",
                     coap_host: str | None = None, coap_port: int = 5683, position: dict | None = None,
                     wifi_ssid: str = "", wifi_password: str = "", keepalive: int = 60,
                     force: bool = False, quiet_hours: list[int] | None = None,
                     tz_min: int | None = None, gateway: str | None = None) -> tuple[Identity, dict, Path]:
    """Create a node identity and write ``OUT/config.json`` (+ CA / client cert with TLS).

    ``quiet_hours`` ([start, end] local hours, [] = none; default [22, 6]) and ``tz_min`` (the node's UTC offset
    in minutes, default 480 = UTC+8) set when a broadcast below emergency is refused. ``gateway``: the id of the
    site's gateway, whose retained birth the node waits for before it sends events and results (docs/PROTOCOL.md
    §5); by default the site's one gateway login in the key store, if there is exactly one.
    Returns ``(identity, config, config_path)``; ``config`` holds the key and broker password in clear.
    """
    if role not in DEVICE_KINDS:
        raise ProvisionError(f"role {role!r} not one of {', '.join(DEVICE_KINDS)}")
    if quiet_hours is not None and (len(quiet_hours) not in (0, 2) or any(not 0 <= h <= 23 for h in quiet_hours)):
        raise ProvisionError(f"quiet hours {quiet_hours!r}: expected [start, end] hours 0..23, or none")
    if tz_min is not None and not -720 <= tz_min <= 840:
        raise ProvisionError(f"tz_min {tz_min}: expected -720..840 (minutes east of UTC)")
    if transport not in ("mqtt", "coap"):
        raise ProvisionError(f"transport {transport!r}: expected mqtt or coap")
    if tls and (ca is None or not ca.exists()):
        raise ProvisionError("TLS (the default) needs a site CA: run `lookout pki init` and `lookout pki issue "
                             "server` first, or provision with --plain for a clear-text listener")
    if client_cert and not tls:
        raise ProvisionError("a client certificate is only used with --tls")
    out = Path(out_dir)
    _claim(ks, device_id, force)
    try:
        ident = ks.create(device_id, site, role, meta={"transport": transport})  # the CoAP bridge checks it
    except KeyStoreError as e:
        raise ProvisionError(str(e)) from None
    password = random_password()
    ks.set_mqtt_user(device_id, "device", pw_hash(password), site=site)
    broker = {"host": broker_host, "port": broker_port or (8883 if tls else 1883), "user": device_id,
              "password": password, "tls": tls, "ca": "ca.crt" if tls else "", "keepalive": keepalive}
    if tls and ca is not None:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca.ca_crt, out / "ca.crt")
        shutil.copyfile(ca.ca_der, out / "ca.der")
        broker["ca_sha256"] = ca.fingerprint()
        if client_cert:
            crt, key = ca.issue_client(device_id)
            shutil.copyfile(crt, out / "client.crt")
            shutil.copyfile(key, out / "client.key")
            os.chmod(out / "client.key", 0o600)
            broker["cert"] = "client.crt"
            broker["cert_key"] = "client.key"
    cfg: dict = {"id": device_id, "site": site, "role": role, "key": ident.hmac_key.hex(), "broker": broker,
                 "transport": transport, "wifi": {"ssid": wifi_ssid, "password": wifi_password}}
    if transport == "coap" or coap_host:
        cfg["coap"] = {"host": coap_host or broker_host, "port": coap_port}
    cfg.update(json.loads(json.dumps(DEFAULT_NODE)))
    if quiet_hours is not None:
        cfg["quiet_hours"] = list(quiet_hours)
    if tz_min is not None:
        cfg["tz_min"] = tz_min
    if position is not None:
        cfg["position"] = position
    if gateway is None:
        gws = [u.username for u in ks.mqtt_users() if u.role == "gateway" and u.site == site]
        gateway = gws[0] if len(gws) == 1 else None
    if gateway is not None and transport == "mqtt":
        cfg["gateway"] = gateway
    path = out / "config.json"
    _write_json_private(path, cfg)
    return ident, cfg, path


def provision_gateway(ks: KeyStore, gateway_id: str, site: str, force: bool = False) -> str:
    """Broker login with the gateway role (read/write ``lookout/v1/#``); returns the password."""
    _claim(ks, gateway_id, force)
    password = random_password()
    ks.set_mqtt_user(gateway_id, "gateway", pw_hash(password), site=site)
    return password


def provision_operator(ks: KeyStore, op_id: str, name: str, role: str = "operator", force: bool = False,
                       password: str | None = None, token: str | None = None) -> str:
    """Operator identity + broker login (own ``opreq``/``opres`` only); returns the token (= broker password).
    With ``password``, also the operator's web console password (checked against the policy first). ``token``:
    use this one (issued by another key store: a county operator known to every township's gateway)."""
    if password is not None:
        _password_ok(password, op_id)
    _claim(ks, op_id, force)
    try:
        token = ks.add_operator(op_id, name, role, token=token)
    except KeyStoreError as e:
        raise ProvisionError(str(e)) from None
    ks.set_mqtt_user(op_id, "operator", pw_hash(token))
    if password is not None:
        ks.set_operator_password(op_id, hash_password(password))
    return token


def set_operator_password(ks: KeyStore, op_id: str, password: str) -> None:
    """Set the web console password of an existing operator; its token stays valid."""
    _password_ok(password, op_id)
    if ks.get_operator(op_id) is None:
        raise ProvisionError(f"no operator {op_id!r} (create it with `lookout provision operator` first)")
    ks.set_operator_password(op_id, hash_password(password))


def _password_ok(password: str, op_id: str) -> None:
    try:
        check_policy(password, op_id)
    except PasswordError as e:
        raise ProvisionError(str(e)) from None


def provision_bridge(ks: KeyStore, login: str, site: str, force: bool = False) -> str:
    """A township broker's login on the county broker (``broker-config --bridge`` on the township side uses
    it): it may publish that site's device traffic and operator answers and read its operators' requests
    (brokerconfig ``acl_lines``). Returns the password."""
    _claim(ks, login, force)
    password = random_password()
    ks.set_mqtt_user(login, "bridge", pw_hash(password), site=site)
    return password


def provision_drone(ks: KeyStore, drone_id: str, site: str, sysid: int, force: bool = False) -> Identity:
    """A MAVLink 2 signing secret (32 bytes) for the drone with system id ``sysid`` (1..255)."""
    if not 1 <= sysid <= 255:
        raise ProvisionError(f"MAVLink sysid {sysid}: expected 1..255")
    for other in ks.list(kind="drone", site=site):
        if other.meta.get("sysid") == sysid and other.device_id != drone_id:
            raise ProvisionError(f"sysid {sysid} already belongs to drone {other.device_id!r} at {site}")
    _claim(ks, drone_id, force)
    return ks.create(drone_id, site, "drone", meta={"sysid": sysid})


def provision_recorder(ks: KeyStore, recorder_id: str, site: str, force: bool = False,
                       officer: str | None = None) -> Identity:
    """A 32-byte key for a serial body-worn recorder (the recorder bridge signs/verifies frames with it);
    ``officer``: the officer it is issued to (else whoever signs in on it, as its HELLO says)."""
    if officer is not None and not is_valid_id(officer):
        raise ProvisionError(f"officer {officer!r}: expected an id of 1-32 chars [a-z0-9_-]")
    _claim(ks, recorder_id, force)
    return ks.create(recorder_id, site, "recorder", meta={"officer": officer} if officer else None)


def key_file(ident: Identity) -> dict:
    """What ``lookout provision drone|recorder --out`` writes (0600) and ``lookout sim drone|recorder --key``
    reads: the identity, its key in hex and its facts (a drone's sysid, a recorder's officer)."""
    return {"id": ident.device_id, "site": ident.site, "kind": ident.kind, "key": ident.hmac_key.hex(), **ident.meta}


def revoke(ks: KeyStore, ident: str) -> str | None:
    """Remove a device/drone/recorder/gateway/operator; returns what it was, or None if unknown."""
    used = id_in_use(ks, ident)
    if used == "operator":
        ks.remove_operator(ident)
    elif used is not None:
        ks.remove(ident)
    return used
