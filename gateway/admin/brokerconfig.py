"""Mosquitto configuration from the keystore: ``mosquitto.conf``, a PBKDF2 password file and a per-login ACL.

Theory of operation:
- every broker login is stored in the keystore (``mqtt_users``) as the password-file hash only, with its role
  (``device``, ``gateway``, ``operator``) and, for devices, its site; this module renders those rows;
- password lines use Mosquitto 2's ``$7$`` format, exactly what ``mosquitto_passwd`` writes:
  ``user:$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512(password, salt, iterations, 64 bytes)>``
  with a 12-byte salt (mosquitto ``src/password_mosq.c``: SALT_LEN 12, default 101 iterations);
- the ACL confines each device to its own topics (docs/SECURITY.md, "Broker ACL"): it may publish only
  ``lookout/v1/<site>/<id>/{state,hb,loc,evt,res,up/#}`` and read only ``.../<id>/{cmd,dl/#}``; the site is pinned
  to the one the device was provisioned for. The gateway reads and writes ``lookout/v1/#``; an operator may
  publish only its own ``opreq`` and read only its own ``opres``. Explicit ``user`` blocks rather than ``pattern``
  lines, so a rule written for devices can never apply to an operator or the gateway;
- ``mosquitto.conf`` uses absolute paths and ``allow_anonymous false``, with two kinds of listener
  (``per_listener_settings true``): the **node** listener (TLS 8883) replaces every client id with the login
  (``use_username_as_clientid``), so a device holding its own valid password cannot knock another off the broker
  by borrowing its client id (MQTT session takeover); the **operator** listener (TLS 8884) admits only the gateway
  and operators (``passwd-ops``), whose client ids stay free so an operator can hold several sessions;
- a township broker may be bridged to the county broker (``Bridge``, ``broker-config --bridge``; docs/COUNTY.md):
  a Mosquitto bridge section in ``conf.d/bridge.conf`` (it holds the bridge's password, so it is 0640 like
  ``passwd``) sends the site's ``state``/``hb``/``loc``/``evt`` up and, for the county operators named, carries
  their ``opreq`` down and the gateway's ``opres`` up; on the county broker the bridge logs in with a ``bridge``
  login, whose ACL allows exactly that for its site;
- TLS only by default (certificates copied next to the config so the directory is self-contained); a plain
  listener is written only when asked for, and then on loopback unless an address is given;
- started as root, Mosquitto drops to its own user (``mosquitto`` unless ``user`` says otherwise) before it reads
  ``passwd``/``acl`` and opens its log and pid file: run as root, this module gives that user's group read access
  to the secret files and the log, pid and data paths to the user, so ``mosquitto -c DIR/mosquitto.conf`` runs
  unchanged, and ``kill -HUP "$(cat DIR/mosquitto.pid)"`` reloads it after the files are regenerated.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pwd
import secrets
import shutil
from pathlib import Path
from urllib.parse import urlsplit

from lookout.gateway.admin.keystore import KeyStore, MQTTUser
from lookout.gateway.admin.pki import SiteCA
from lookout.protocols.topics import ROOT, is_valid_id

PW_SALT_LEN = 12  # mosquitto src/password_mosq.c SALT_LEN
PW_ITERATIONS = 1000  # mosquitto_passwd's default is 101; logins here carry 256-bit random passwords anyway
MAX_PACKET_SIZE = 262144  # bytes; bounds every publish before the broker buffers it (clip chunks are far smaller)
# per-client queue (QoS 1), offline or behind; the gateway's own outbox is the durable copy. It must hold a whole
# site's retained states at once: a gateway that (re)subscribes is sent every device's retained birth together, and
# at 1000 Mosquitto dropped the rest (a 5,000-node site came back with 1,045 births, issue 17). Room for 20,000
# devices and their traffic; what a queue holds is the small message references, the payloads are shared.
MAX_QUEUED = 100_000

TLS_PORT, OP_TLS_PORT = 8883, 8884  # nodes (8883 is MQTT over TLS's registered port); gateway and operators
PLAIN_PORT, OP_PLAIN_PORT = 1883, 1884  # only when asked for (``--plain``)
PLAIN_BIND = "127.0.0.1"  # a plain listener stays on loopback unless an address is given
MOSQUITTO_USER = "mosquitto"  # Mosquitto's default ``user`` when started as root
OP_ROLES = ("gateway", "operator", "bridge")  # admitted on the operator listener
BRIDGE_OUT = (("state", 1), ("hb", 0), ("loc", 0), ("evt", 1))  # a township's device traffic, up to the county

DEVICE_PUBLISH = ("state", "hb", "loc", "evt", "res", "up/#")
DEVICE_READ = ("cmd", "dl/#")


def random_password() -> str:
    """A broker password: 32 random bytes, URL-safe base64 (43 chars, no ':' so it survives every file format)."""
    return secrets.token_urlsafe(32)


def pw_hash(password: str, salt: bytes | None = None, iterations: int = PW_ITERATIONS) -> str:
    """The ``$7$`` hash part of a Mosquitto password-file line (everything after ``user:``)."""
    salt = secrets.token_bytes(PW_SALT_LEN) if salt is None else salt
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def pw_check(password: str, hashed: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash (constant-time compare)."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7":
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        want = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return hmac.compare_digest(got, want)


def passwd_text(users: list[MQTTUser]) -> str:
    return "".join(f"{u.username}:{u.pw_line}\n" for u in users)


def acl_lines(u: MQTTUser, gateways: dict[str, list[str]] | None = None) -> list[str]:
    """``gateways``: site -> its gateway logins; a device may read their ``state`` (docs/PROTOCOL.md §5)."""
    if u.role == "gateway":  # its own site only: two sites can share one broker without seeing each other
        return [f"user {u.username}", f"topic readwrite {ROOT}/{u.site or '+'}/#" if u.site
                else f"topic readwrite {ROOT}/#"]
    if u.role == "operator":
        return [f"user {u.username}", f"topic write {ROOT}/+/{u.username}/opreq",
                f"topic read {ROOT}/+/{u.username}/opres"]
    if u.role == "bridge":  # a township broker on the county broker: its site's traffic up, requests down
        s = u.site or "+"
        return ([f"user {u.username}"] + [f"topic write {ROOT}/{s}/+/{c}" for c, _q in BRIDGE_OUT]
                + [f"topic write {ROOT}/{s}/+/opres", f"topic read {ROOT}/{s}/+/opreq"])
    site = u.site or "+"
    base = f"{ROOT}/{site}/{u.username}/"
    return ([f"user {u.username}"] + [f"topic write {base}{c}" for c in DEVICE_PUBLISH]
            + [f"topic read {base}{c}" for c in DEVICE_READ]
            + [f"topic read {ROOT}/{site}/{g}/state" for g in (gateways or {}).get(site, [])])


def acl_text(users: list[MQTTUser]) -> str:
    out = ["# Generated by `lookout broker-config` from the keystore: regenerate, do not edit.",
           "# Anything not granted here is denied (Mosquitto acl_file semantics).", ""]
    gateways: dict[str, list[str]] = {}
    for u in users:
        if u.role == "gateway" and u.site:
            gateways.setdefault(u.site, []).append(u.username)
    for u in users:
        out += [f"# {u.role}" + (f" at site {u.site}" if u.site else "")] + acl_lines(u, gateways) + [""]
    return "\n".join(out)


class Bridge:
    """One bridge from this (township) broker to a county broker: ``url`` mqtt[s]://host:port of the county
    broker, ``login``/``password`` its ``bridge`` login there, ``site`` the site whose traffic goes up,
    ``operators`` the county operators whose requests come down, ``ca`` the county broker's CA (mqtts)."""

    def __init__(self, url: str, login: str, password: str, site: str, operators: tuple[str, ...] = (),
                 ca: str | None = None):
        u = urlsplit(url)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError(f"--bridge {url!r}: expected mqtt://host:port or mqtts://host:port")
        for what, v in (("bridge login", login), ("site", site), *(("operator", o) for o in operators)):
            if not is_valid_id(v):
                raise ValueError(f"{what} {v!r}: expected an id of 1-32 chars [a-z0-9_-]")
        if not password or any(c.isspace() for c in password):
            raise ValueError("the bridge password is empty or contains white space")
        if u.scheme == "mqtts" and not ca:
            raise ValueError("an mqtts:// bridge needs the county broker's CA (--bridge-ca)")
        self.host, self.port = u.hostname, u.port or (8883 if u.scheme == "mqtts" else 1883)
        self.tls = u.scheme == "mqtts"
        self.login, self.password, self.site, self.operators, self.ca = login, password, site, operators, ca

    def text(self) -> str:
        """The Mosquitto bridge section (mosquitto.conf(5), "Configuring Bridges")."""
        root = f"{ROOT}/{self.site}"
        lines = ["# Generated by `lookout broker-config --bridge`: this site's traffic to the county broker.",
                 f"connection {self.login}", f"address {self.host}:{self.port}",
                 f"remote_clientid {self.login}", f"remote_username {self.login}",
                 f"remote_password {self.password}",
                 "bridge_protocol_version mqttv311",
                 "cleansession false",  # the county keeps the bridge's session; our side queues while it is away
                 "notifications false",  # no $SYS status topic on the county broker (its ACL would refuse it)
                 "restart_timeout 2 30",  # reconnect with jittered back-off, 2 s up to 30 s
                 "keepalive_interval 60"]
        if self.tls:
            lines += [f"bridge_cafile {self.ca}", "bridge_insecure false"]
        lines += [f"topic {root}/+/{c} out {q}" for c, q in BRIDGE_OUT]
        for op in self.operators:  # only these operators' requests cross, answered only to them
            lines += [f"topic {root}/{op}/opreq in 1", f"topic {root}/{op}/opres out 1"]
        return "\n".join(lines) + "\n"


def conf_text(out: Path, *, port: int | None, bind: str | None, tls: bool, tls_port: int,
              require_client_cert: bool, persistence: bool, log_file: Path | None,
              max_packet_size: int = MAX_PACKET_SIZE, run_as: str | None = None, op_port: int | None = None,
              op_tls_port: int | None = None, include_dir: Path | None = None) -> str:
    """``port``/``op_port``: plain node/operator listeners (None = none), on ``bind`` or loopback;
    ``tls_port``/``op_tls_port``: TLS listeners (when ``tls``; ``op_tls_port`` None = none), on ``bind`` or
    every interface."""
    tdir = out / "tls"

    def listener(p: int, plain: bool, ops: bool) -> list[str]:
        addr = bind or (PLAIN_BIND if plain else None)
        lines = [f"listener {p} {addr}" if addr else f"listener {p}", "allow_anonymous false",
                 f"password_file {out / ('passwd-ops' if ops else 'passwd')}", f"acl_file {out / 'acl'}"]
        if not ops:
            lines.append("use_username_as_clientid true")
        if not plain:
            lines += [f"cafile {tdir / 'ca.crt'}", f"certfile {tdir / 'server.crt'}",
                      f"keyfile {tdir / 'server.key'}", "tls_version tlsv1.2",
                      f"require_certificate {'true' if require_client_cert else 'false'}"]
        return lines + [""]

    lines = ["# Generated by `lookout broker-config`: run with `mosquitto -c " + str(out / "mosquitto.conf") + "`.",
             "# Regenerate after provisioning or revoking an identity, then send SIGHUP to reload passwd/acl.",
             "# Each listener names its own logins: nodes on one (client id = login), gateway and operators on",
             "# the other (free client ids, several sessions per operator; no device logins).",
             "per_listener_settings true",
             *([f"user {run_as}"] if run_as else []),
             # Mosquitto 2.0 leaves Nagle on; with delayed ACKs a QoS 1 round trip on loopback took 88 ms, not 0.7
             "set_tcp_nodelay true",
             f"max_packet_size {max_packet_size}",
             f"max_queued_messages {MAX_QUEUED}",
             "persistent_client_expiration 7d",
             # reload after regenerating: kill -HUP "$(cat OUT/mosquitto.pid)"
             f"pid_file {out / 'mosquitto.pid'}"]
    if persistence:
        lines += ["persistence true", f"persistence_location {out / 'data'}/", "autosave_interval 60"]
    else:
        lines += ["persistence false"]
    if log_file is not None:
        lines += [f"log_dest file {log_file}"]
    lines += ["log_type error", "log_type warning", "log_type notice", "log_type information",
              "connection_messages true", "log_timestamp true", ""]
    if port is not None:
        lines += ["# nodes, plain MQTT (asked for): passwords and commands in clear; keep it off the network"]
        lines += listener(port, plain=True, ops=False)
    if op_port is not None:
        lines += ["# gateway and operators, plain MQTT (asked for)"] + listener(op_port, plain=True, ops=True)
    if tls:
        lines += ["# nodes, MQTT over TLS with the site CA"] + listener(tls_port, plain=False, ops=False)
        if op_tls_port is not None:
            lines += ["# gateway and operators, MQTT over TLS with the site CA"]
            lines += listener(op_tls_port, plain=False, ops=True)
    if include_dir is not None:  # the bridge to the county broker (its password stays out of this file)
        lines += [f"include_dir {include_dir}", ""]
    return "\n".join(lines)


def write_broker_config(out_dir: str | os.PathLike, ks: KeyStore, pki_dir: str | os.PathLike | None = None, *,
                        port: int | None = None, bind: str | None = None, tls_port: int = TLS_PORT,
                        require_client_cert: bool = False, persistence: bool = True,
                        log_file: str | os.PathLike | None = "", run_as: str | None = None,
                        op_port: int | None = None, op_tls_port: int | None = None,
                        bridge: Bridge | None = None) -> dict:
    """Write ``mosquitto.conf``, ``passwd`` (every login), ``passwd-ops`` (gateway and operators), ``acl`` (and
    ``tls/`` when the PKI has a broker certificate).

    TLS listeners: ``tls_port`` for nodes and, if given, ``op_tls_port`` for the gateway and operators (the CLI
    passes 8884). Plain listeners only for a ``port``/``op_port`` given, on ``bind`` or loopback. ``run_as``:
    the user Mosquitto drops to when started as root (its default ``mosquitto``); when this runs as root, that
    user's group gets read access to the secret files and the user owns the log and data paths. ``log_file=""``
    means ``OUT/mosquitto.log``; None logs to Mosquitto's default (stderr). Returns a summary dict (paths, ports,
    login counts, whether TLS is on). ValueError when no listener would be written.
    """
    out = Path(out_dir).resolve()
    users = ks.mqtt_users()
    ca = SiteCA(pki_dir) if pki_dir is not None else None
    tls = bool(ca and ca.has_server())
    if port is None and op_port is None and not tls:
        raise ValueError("no listener: the site PKI has no broker certificate (`lookout pki issue server --host "
                         "NAME --host 127.0.0.1`) and no plain listener was asked for (--plain: loopback only "
                         "unless --bind)")
    owner = _mosquitto_owner(run_as)
    out.mkdir(parents=True, exist_ok=True)
    if tls and ca is not None:
        tdir = out / "tls"
        tdir.mkdir(exist_ok=True)
        for src, name, mode in ((ca.ca_crt, "ca.crt", 0o644), (ca.server_crt, "server.crt", 0o644),
                                (ca.server_key, "server.key", 0o640)):
            shutil.copyfile(src, tdir / name)
            os.chmod(tdir / name, mode)
            if mode == 0o640 and owner:
                os.chown(tdir / name, 0, owner[1])
    if persistence:
        (out / "data").mkdir(exist_ok=True)
        if owner:
            os.chown(out / "data", *owner)
    log = (out / "mosquitto.log") if log_file == "" else (Path(log_file).resolve() if log_file else None)
    for f in ([log] if log is not None else []) + [out / "mosquitto.pid"]:  # written after it dropped to its user
        if owner:
            f.touch(mode=0o640 if f == log else 0o644, exist_ok=True)
            os.chown(f, *owner)
    group = owner[1] if owner else None
    _write(out / "passwd", passwd_text(users), 0o640, group)
    _write(out / "passwd-ops", passwd_text([u for u in users if u.role in OP_ROLES]), 0o640, group)
    _write(out / "acl", acl_text(users), 0o640, group)
    confd = out / "conf.d"
    if bridge is not None:
        confd.mkdir(exist_ok=True)
        _write(confd / "bridge.conf", bridge.text(), 0o640, group)
    elif (confd / "bridge.conf").exists():
        (confd / "bridge.conf").unlink()  # regenerated without --bridge: no bridge any more
    _write(out / "mosquitto.conf", conf_text(out, port=port, bind=bind, tls=tls, tls_port=tls_port,
                                             require_client_cert=require_client_cert, persistence=persistence,
                                             log_file=log, run_as=run_as, op_port=op_port,
                                             op_tls_port=op_tls_port,
                                             include_dir=confd if bridge is not None else None), 0o644, None)
    roles: dict[str, int] = {}
    for u in users:
        roles[u.role] = roles.get(u.role, 0) + 1
    return {"conf": str(out / "mosquitto.conf"), "passwd": str(out / "passwd"),
            "passwd_ops": str(out / "passwd-ops"), "acl": str(out / "acl"), "tls": tls, "port": port,
            "op_port": op_port, "tls_port": tls_port if tls else None,
            "op_tls_port": op_tls_port if tls else None, "logins": roles,
            "bridge": None if bridge is None else {"to": f"{bridge.host}:{bridge.port}", "site": bridge.site,
                                                   "login": bridge.login, "operators": list(bridge.operators)},
            "run_as": (run_as or MOSQUITTO_USER) if owner else None}


def _mosquitto_owner(run_as: str | None) -> tuple[int, int] | None:
    """(uid, gid) Mosquitto will run as when this process (root) starts it; None when it keeps our user."""
    if os.geteuid() != 0 or run_as == "root":
        return None
    name = run_as or MOSQUITTO_USER
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"Mosquitto started as root runs as user {name!r}, which does not exist here: install "
                         "the mosquitto package (it creates the user) or pass --run-as USER") from None
    return pw.pw_uid, pw.pw_gid


def _write(path: Path, text: str, mode: int, group: int | None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    if group is not None:
        os.chown(tmp, 0, group)
    os.replace(tmp, path)
