"""`lookout provision`, `lookout broker-config`, `lookout pki`: identities, broker files and the site CA.

Where things live: ``--data-dir`` (env ``LOOKOUT_DATA_DIR``, default /var/lib/lookout, the gateway's
``data_dir``) holds ``keystore.db`` and ``pki/``; ``--keystore`` and ``--pki`` override each. Secrets are printed
once on stdout (or written to 0600 files with ``--out``) and never logged.

Accountability (gateway/audit.py): every action that changes something (provision, revoke, broker-config, pki
init/issue) is journaled as kind ``admin`` in ``DATA_DIR/journal.db`` (``--journal`` overrides): who
(``--operator``, an admin operator of the key store, else ``admin:<OS user>``), what, which identity, the outcome;
never a key, token or password. The tool refuses to act (exit 2) when it cannot write the journal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lookout.gateway.admin.brokerconfig import OP_PLAIN_PORT, OP_TLS_PORT, PLAIN_PORT, TLS_PORT
from lookout.gateway.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def _data_dir(args) -> Path:
    return Path(args.data_dir or os.environ.get("LOOKOUT_DATA_DIR") or "/var/lib/lookout")


def _paths(args) -> tuple[Path, Path]:
    data = _data_dir(args)
    return Path(args.keystore or data / "keystore.db"), Path(args.pki or data / "pki")


def _audit(args, tool: str):
    """The journal for this admin action (raises AuditError before anything is done if it is not writable)."""
    from lookout.gateway.admin.audit import AdminJournal

    return AdminJournal(Path(args.journal or _data_dir(args) / "journal.db"), args.operator, tool)


def _audit_checked(args, tool: str):
    """``_audit`` for commands that do not open the keystore themselves: an explicit --operator is checked here."""
    audit = _audit(args, tool)
    if audit.explicit:
        with _open_ks(args) as ks:
            audit.check_operator(ks)
    return audit


def _audited(fn):
    """Map audit refusals to exit codes: 2 before acting, 1 when the action ran but was not journaled."""
    def run(args) -> int:
        from lookout.gateway.admin.audit import AuditError, NotJournaled

        try:
            return fn(args)
        except AuditError as e:
            return _err(str(e), EXIT_FAILED if isinstance(e, NotJournaled) else EXIT_USAGE)
    run.__name__ = fn.__name__
    return run


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("storage")
    g.add_argument("--data-dir", help="gateway data directory (env LOOKOUT_DATA_DIR; default /var/lib/lookout)")
    g.add_argument("--keystore", help="keystore file (default DATA_DIR/keystore.db)")
    g.add_argument("--pki", help="site CA directory (default DATA_DIR/pki)")
    a = p.add_argument_group("accountability")
    a.add_argument("--operator", help="admin operator id doing this, recorded in the duty journal (must be an "
                                      "admin in the key store; default admin:<OS user>)")
    a.add_argument("--journal", help="duty journal file (default DATA_DIR/journal.db, the gateway's)")
    return p


def _err(msg: str, code: int = EXIT_FAILED) -> int:
    print("lookout: " + msg, file=sys.stderr)
    return code


def _open_ks(args):
    from lookout.gateway.admin.keystore import KeyStore

    return KeyStore(_paths(args)[0])


def _write_secret_json(path: str, data: dict) -> None:
    from lookout.gateway.admin.provision import _write_json_private

    _write_json_private(Path(path), data)


# -- provision ---------------------------------------------------------------------------------------------------
def _hours(v: str) -> list[int]:
    """``22-6`` -> [22, 6]; ``none`` -> [] (never quiet)."""
    if v.lower() in ("none", "off"):
        return []
    a, sep, b = v.partition("-")
    if not (sep and a.isdigit() and b.isdigit() and int(a) <= 23 and int(b) <= 23):
        raise argparse.ArgumentTypeError(f"expected START-END hours 0..23 (e.g. 22-6) or none, got {v!r}")
    return [int(a), int(b)]


def _cmd_device(args) -> int:
    from lookout.gateway.admin.pki import SiteCA
    from lookout.gateway.admin.provision import ProvisionError, deg_to_e7, provision_device

    position = None
    if args.lat is not None or args.lon is not None:
        if args.lat is None or args.lon is None:
            return _err("--lat and --lon go together", EXIT_USAGE)
        position = {"lat": deg_to_e7(args.lat), "lon": deg_to_e7(args.lon), "alt_mm": round(args.alt_m * 1000)}
    if args.plain and args.tls:
        return _err("--plain and --tls contradict each other", EXIT_USAGE)
    tls = args.tls or (not args.plain and args.transport == "mqtt")  # a CoAP node has no broker session
    out = Path(args.out or f"provisioned/{args.id}")
    audit = _audit(args, "provision device")
    with _open_ks(args) as ks:
        audit.check_operator(ks)
        facts = {"site": args.site, "role": args.role, "transport": args.transport, "tls": tls,
                 "client_cert": args.client_cert, "force": args.force}
        try:
            ident, _cfg, path = provision_device(
                ks, args.id, args.site, args.role, out, broker_host=args.broker_host, broker_port=args.broker_port,
                tls=tls, ca=SiteCA(_paths(args)[1]), client_cert=args.client_cert, transport=args.transport,
                coap_host=args.coap_host, coap_port=args.coap_port, position=position, wifi_ssid=args.wifi_ssid,
                wifi_password=args.wifi_password, force=args.force, quiet_hours=args.quiet_hours,
                tz_min=args.tz_min)
        except ProvisionError as e:
            audit.record(f"provision device {args.id} refused: {e}", device=args.id,
                         detail={**facts, "outcome": "refused", "error": str(e)})
            return _err(str(e), EXIT_USAGE)
    audit.record(f"{audit.operator} provisioned {ident.kind} {ident.device_id} at {ident.site}",
                 device=ident.device_id, detail={**facts, "outcome": "ok", "config": str(path)})
    if not tls and args.transport == "mqtt":
        print(f"warning: {ident.device_id} will talk to the broker in clear text (password and commands readable "
              "on the network): only for a plain listener asked for with `broker-config --plain`", file=sys.stderr)
    print(f"provisioned {ident.kind} {ident.device_id} at {ident.site}: {path} (mode 0600)")
    print("flash it, then delete it; run `lookout broker-config` and reload the broker to admit the device")
    return EXIT_OK


def _cmd_gateway(args) -> int:
    from lookout.gateway.admin.provision import ProvisionError, provision_gateway

    audit = _audit(args, "provision gateway")
    with _open_ks(args) as ks:
        audit.check_operator(ks)
        try:
            pw = provision_gateway(ks, args.id, args.site, force=args.force)
        except ProvisionError as e:
            audit.record(f"provision gateway {args.id} refused: {e}", device=args.id,
                         detail={"site": args.site, "outcome": "refused", "error": str(e)})
            return _err(str(e), EXIT_USAGE)
    audit.record(f"{audit.operator} provisioned gateway login {args.id} at {args.site}", device=args.id,
                 detail={"site": args.site, "force": args.force, "outcome": "ok"})
    snippet = f'[broker]\nusername = "{args.id}"\npassword = "{pw}"\n'
    if args.out:
        _write_secret_json(args.out, {"username": args.id, "password": pw})
        print(f"gateway login {args.id} written to {args.out} (mode 0600)")
    else:
        print("# add to gateway.toml (shown once):\n" + snippet)
    return EXIT_OK


def _cmd_bridge(args) -> int:
    from lookout.gateway.admin.provision import ProvisionError, provision_bridge

    audit = _audit(args, "provision bridge")
    with _open_ks(args) as ks:
        audit.check_operator(ks)
        try:
            pw = provision_bridge(ks, args.id, args.site, force=args.force)
        except ProvisionError as e:
            audit.record(f"provision bridge {args.id} refused: {e}", device=args.id,
                         detail={"site": args.site, "outcome": "refused", "error": str(e)})
            return _err(str(e), EXIT_USAGE)
    audit.record(f"{audit.operator} provisioned bridge login {args.id} for {args.site}", device=args.id,
                 detail={"site": args.site, "force": args.force, "outcome": "ok"})
    if args.out:
        _write_secret_json(args.out, {"username": args.id, "password": pw})
        print(f"bridge login {args.id} written to {args.out} (mode 0600): give it to the {args.site} township's "
              "`lookout broker-config --bridge ... --bridge-password-file`")
    else:
        print(f"bridge login {args.id} for {args.site}; password (shown once):\n{pw}")
    return EXIT_OK


def _secret_from_file(path: str, key: str) -> str:
    """``key`` of a JSON file written by ``--out`` (or the whole file, stripped, when it is not JSON)."""
    text = Path(path).read_text()
    try:
        doc = json.loads(text)
    except ValueError:
        return text.strip()
    if not isinstance(doc, dict) or not isinstance(doc.get(key), str):
        raise ValueError(f"{path}: no {key!r} in it")
    return doc[key]


def _read_password(args) -> str:
    """The new web console password: one line of stdin (--password-stdin) or typed twice at a prompt."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    pw = getpass.getpass(f"web console password for {args.id}: ")
    if getpass.getpass("again: ") != pw:
        raise ValueError("the two passwords differ")
    return pw


def _cmd_operator(args) -> int:
    from lookout.gateway.admin.provision import ProvisionError, provision_operator, set_operator_password

    password = None
    if args.password or args.password_stdin:
        try:
            password = _read_password(args)
        except (ValueError, EOFError) as e:
            return _err(str(e) or "no password given", EXIT_USAGE)
    audit = _audit(args, "provision operator")
    with _open_ks(args) as ks:
        audit.check_operator(ks)
        if password is not None and not args.force and ks.get_operator(args.id) is not None:
            try:  # an existing operator: set its web console password, keep its token
                set_operator_password(ks, args.id, password)
            except ProvisionError as e:
                audit.record(f"web password of operator {args.id} not set: {e}", device=args.id,
                             detail={"password": "refused", "outcome": "refused", "error": str(e)})
                return _err(str(e), EXIT_USAGE)
            audit.record(f"{audit.operator} set the web console password of operator {args.id}", device=args.id,
                         detail={"password": "set", "outcome": "ok"})
            print(f"web console password of operator {args.id} set (its token is unchanged)")
            return EXIT_OK
        if not args.name:
            return _err("--name is required to create an operator", EXIT_USAGE)
        facts = {"name": args.name, "role": args.role, "force": args.force,
                 "password": "set" if password is not None else "none", "token": "imported" if args.token_file
                 else "new"}
        try:
            given = _secret_from_file(args.token_file, "token") if args.token_file else None
        except (OSError, ValueError) as e:
            return _err(f"--token-file: {e}", EXIT_USAGE)
        try:
            token = provision_operator(ks, args.id, args.name, args.role, force=args.force, password=password,
                                       token=given)
        except ProvisionError as e:
            audit.record(f"provision operator {args.id} refused: {e}", device=args.id,
                         detail={**facts, "outcome": "refused", "error": str(e)})
            return _err(str(e), EXIT_USAGE)
    audit.record(f"{audit.operator} provisioned operator {args.id} ({args.role})", device=args.id,
                 detail={**facts, "outcome": "ok"})
    if args.out:
        _write_secret_json(args.out, {"operator": args.id, "token": token})
        print(f"operator {args.id} ({args.role}) created; token written to {args.out} (mode 0600)")
    else:
        print(f"operator {args.id} ({args.role}) created; token (also the broker password, shown once):\n{token}")
    return EXIT_OK


def _cmd_keyed(args) -> int:
    from lookout.gateway.admin.provision import ProvisionError, key_file, provision_drone, provision_recorder

    audit = _audit(args, f"provision {args.what}")
    with _open_ks(args) as ks:
        audit.check_operator(ks)
        facts = {"site": args.site, "force": args.force, **({"sysid": args.sysid} if args.what == "drone" else {})}
        try:
            if args.what == "drone":
                ident = provision_drone(ks, args.id, args.site, args.sysid, force=args.force)
            else:
                ident = provision_recorder(ks, args.id, args.site, force=args.force, officer=args.officer_id)
        except ProvisionError as e:
            audit.record(f"provision {args.what} {args.id} refused: {e}", device=args.id,
                         detail={**facts, "outcome": "refused", "error": str(e)})
            return _err(str(e), EXIT_USAGE)
    audit.record(f"{audit.operator} provisioned {ident.kind} {ident.device_id} at {ident.site}",
                 device=ident.device_id, detail={**facts, "outcome": "ok"})
    data = key_file(ident)
    if args.out:
        _write_secret_json(args.out, data)
        print(f"{ident.kind} {ident.device_id} created; key written to {args.out} (mode 0600)")
    else:
        print(f"{ident.kind} {ident.device_id} created; 32-byte key (hex, shown once):\n{data['key']}")
    return EXIT_OK


def _cmd_revoke(args) -> int:
    from lookout.gateway.admin.provision import revoke

    audit = _audit(args, "provision revoke")
    with _open_ks(args) as ks:
        audit.check_operator(ks)
        what = revoke(ks, args.id)
    if what is None:
        audit.record(f"revoke {args.id} failed: no such identity", device=args.id,
                     detail={"outcome": "failed", "error": "no such identity"})
        return _err(f"no identity {args.id!r}")
    audit.record(f"{audit.operator} revoked {what} {args.id}", device=args.id,
                 detail={"revoked": what, "outcome": "ok"})
    print(f"revoked {what} {args.id}: run `lookout broker-config` and reload the broker (SIGHUP)")
    return EXIT_OK


def _cmd_list(args) -> int:
    with _open_ks(args) as ks:
        rows = [{"id": i.device_id, "site": i.site, "kind": i.kind, **i.meta} for i in ks.list()]
        rows += [{"id": o.op_id, "kind": "operator", "role": o.role, "name": o.name} for o in ks.list_operators()]
        logins = {u.username: u.role for u in ks.mqtt_users()}
    for r in rows:
        r["broker_login"] = logins.pop(r["id"], None)
    rows += [{"id": u, "kind": role, "broker_login": role} for u, role in logins.items()]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            extra = " ".join(f"{k}={v}" for k, v in r.items() if k not in ("id", "kind"))
            print(f"{r['id']:<24} {r['kind']:<10} {extra}")
    return EXIT_OK


# -- broker-config -----------------------------------------------------------------------------------------------
def _cmd_broker_config(args) -> int:
    from lookout.gateway.admin.brokerconfig import write_broker_config

    ks_path, pki = _paths(args)
    if not ks_path.exists():
        return _err(f"no keystore at {ks_path}: provision identities first", EXIT_USAGE)
    audit = _audit(args, "broker-config")
    with _open_ks(args) as ks:
        audit.check_operator(ks)
        try:
            bridge = _bridge(args, ks)
            summary = write_broker_config(args.out, ks, pki, port=args.port if args.plain else None,
                                          op_port=args.op_port if args.plain else None,
                                          op_tls_port=args.op_tls_port, bind=args.bind, tls_port=args.tls_port,
                                          require_client_cert=args.require_client_cert,
                                          persistence=not args.no_persistence,
                                          log_file=None if args.log_stderr else "", run_as=args.run_as,
                                          bridge=bridge)
        except ValueError as e:
            audit.record(f"broker-config to {args.out} refused: {e}",
                         detail={"out": str(args.out), "outcome": "refused", "error": str(e)})
            return _err(str(e), EXIT_USAGE)
    audit.record(f"{audit.operator} wrote broker config {summary['conf']}",
                 detail={"out": str(args.out), "conf": str(summary["conf"]), "tls": bool(summary["tls"]),
                         "logins": summary["logins"], "outcome": "ok"})
    if not summary["logins"].get("gateway"):
        print("warning: no gateway login yet (`lookout provision gateway`)", file=sys.stderr)
    where = []
    if summary["tls"]:
        where.append(f"TLS: nodes {summary['tls_port']}, gateway and operators {summary['op_tls_port']}")
    if summary["port"] is not None:
        where.append(f"plain (clear text): nodes {summary['port']}, gateway and operators {summary['op_port']} "
                     f"on {args.bind or '127.0.0.1'}")
    print(f"wrote {summary['conf']} ({'; '.join(where)}); logins: {summary['logins']}")
    if summary["bridge"]:
        b = summary["bridge"]
        print(f"bridge {b['login']} to {b['to']}: site {b['site']} up, requests of "
              f"{', '.join(b['operators']) or 'no operator'} down (conf.d/bridge.conf, mode 0640)")
    if summary["run_as"]:
        print(f"secret files readable by group {summary['run_as']}: Mosquitto started as root runs as that user")
    print(f"run: mosquitto -c {summary['conf']}")
    return EXIT_OK


def _bridge(args, ks):
    """The ``Bridge`` the --bridge options describe (None without --bridge); ValueError names what is wrong."""
    from lookout.gateway.admin.brokerconfig import Bridge

    if not args.bridge:
        if args.bridge_login or args.bridge_password_file or args.bridge_operator:
            raise ValueError("--bridge-login/--bridge-password-file/--bridge-operator need --bridge URL")
        return None
    if not args.bridge_login or not args.bridge_password_file:
        raise ValueError("--bridge needs --bridge-login and --bridge-password-file (`lookout provision bridge "
                         "--out FILE` on the county side)")
    try:
        password = _secret_from_file(args.bridge_password_file, "password")
    except OSError as e:
        raise ValueError(f"--bridge-password-file: {e.strerror}: {args.bridge_password_file}") from None
    site = args.bridge_site
    if site is None:
        sites = sorted({u.site for u in ks.mqtt_users() if u.role == "gateway" and u.site})
        if len(sites) != 1:
            raise ValueError(f"--bridge-site: give the site (this key store's gateway logins have sites {sites})")
        site = sites[0]
    return Bridge(args.bridge, args.bridge_login, password, site, tuple(args.bridge_operator), args.bridge_ca)


# -- pki ---------------------------------------------------------------------------------------------------------
def _cmd_pki_init(args) -> int:
    from lookout.gateway.admin.pki import PKIError, SiteCA

    audit = _audit_checked(args, "pki init")
    ca = SiteCA(_paths(args)[1])
    facts = {"site": args.site, "days": args.days, "force": args.force, "dir": str(ca.dir)}
    try:
        ca.init(args.site, days=args.days, force=args.force)
    except PKIError as e:
        audit.record(f"pki init refused: {e}", detail={**facts, "outcome": "refused", "error": str(e)})
        return _err(str(e), EXIT_USAGE)
    audit.record(f"{audit.operator} created the site CA for {args.site}",
                 detail={**facts, "ca_sha256": ca.fingerprint(), "outcome": "ok"})
    print(f"site CA in {ca.dir}: ca.crt sha256 {ca.fingerprint()}")
    return EXIT_OK


def _cmd_pki_issue(args) -> int:
    from lookout.gateway.admin.pki import LEAF_DAYS, PKIError, SiteCA

    audit = _audit_checked(args, "pki issue")
    ca = SiteCA(_paths(args)[1])
    facts = {"cert": args.kind, "hosts": args.host, "name": args.name, "days": args.days}
    try:
        if args.kind == "server":
            crt, _ = ca.issue_server(args.host or ["localhost", "127.0.0.1"], days=args.days or LEAF_DAYS)
        else:
            if not args.name:
                return _err("pki issue client needs --name", EXIT_USAGE)
            crt, _ = ca.issue_client(args.name, days=args.days or LEAF_DAYS)
    except PKIError as e:
        audit.record(f"pki issue {args.kind} refused: {e}", device=args.name,
                     detail={**facts, "outcome": "refused", "error": str(e)})
        return _err(str(e), EXIT_USAGE)
    audit.record(f"{audit.operator} issued a {args.kind} certificate" + (f" for {args.name}" if args.name else ""),
                 device=args.name, detail={**facts, "file": str(crt), "outcome": "ok"})
    print(f"issued {crt}")
    return EXIT_OK


def _cmd_pki_show(args) -> int:
    from lookout.gateway.admin.pki import SiteCA, describe

    ca = SiteCA(_paths(args)[1])
    if not ca.exists():
        return _err(f"no CA in {ca.dir}", EXIT_USAGE)
    out = {"ca": describe(ca.ca_crt)}
    if ca.server_crt.exists():
        out["server"] = describe(ca.server_crt)
    print(json.dumps(out, indent=2))
    return EXIT_OK


def register(subparsers) -> None:
    common = _common()

    # provision
    p = subparsers.add_parser("provision", help="create device, gateway, operator, drone and recorder identities")
    ps = p.add_subparsers(dest="what", metavar="WHAT", required=True)

    d = ps.add_parser("device", parents=[common], help="a node: HMAC key, broker login, config.json for flashing")
    d.add_argument("--id", required=True)
    d.add_argument("--site", required=True)
    d.add_argument("--role", required=True, choices=("speaker", "sensor", "camera"))
    d.add_argument("--out", help="directory for config.json (default provisioned/ID)")
    d.add_argument("--broker-host", default="127.0.0.1")
    d.add_argument("--broker-port", type=int)
    d.add_argument("--tls", action="store_true", help="connect over TLS, pinning the site CA (the default)")
    d.add_argument("--plain", action="store_true",
                   help="connect in clear text (port 1883) to a plain listener asked for with broker-config --plain")
    d.add_argument("--client-cert", action="store_true", help="also issue a TLS client certificate")
    d.add_argument("--transport", choices=("mqtt", "coap"), default="mqtt")
    d.add_argument("--coap-host")
    d.add_argument("--coap-port", type=int, default=5683)
    d.add_argument("--lat", type=float, help="fixed position, degrees WGS-84")
    d.add_argument("--lon", type=float)
    d.add_argument("--alt-m", type=float, default=0.0)
    d.add_argument("--quiet-hours", type=_hours, metavar="START-END|none",
                   help="local hours when only emergency broadcasts play (default 22-6; none: never quiet)")
    d.add_argument("--tz-min", type=int, help="the node's UTC offset in minutes for quiet hours (default 480, UTC+8)")
    d.add_argument("--wifi-ssid", default="")
    d.add_argument("--wifi-password", default="")
    d.add_argument("--force", action="store_true", help="replace an existing identity (the node must be reflashed)")
    d.set_defaults(func=_audited(_cmd_device))

    g = ps.add_parser("gateway", parents=[common], help="the gateway's broker login (read/write lookout/v1/#)")
    g.add_argument("--id", required=True)
    g.add_argument("--site", required=True)
    g.add_argument("--out", help="write {username, password} to this 0600 JSON file instead of printing")
    g.add_argument("--force", action="store_true")
    g.set_defaults(func=_audited(_cmd_gateway))

    o = ps.add_parser("operator", parents=[common], help="an operator: token + broker login for opreq/opres")
    o.add_argument("--id", required=True)
    o.add_argument("--name", help="the operator's name (required when creating)")
    o.add_argument("--role", choices=("operator", "admin", "viewer"), default="operator",
                   help="viewer: read-only (devices, journal, status, incidents; no command)")
    o.add_argument("--token-file", help="use the token in this file (written by --out of another key store: a "
                                        "county operator known to each township's gateway), not a new one")
    o.add_argument("--out", help="write the token to this 0600 JSON file instead of printing")
    o.add_argument("--password", action="store_true",
                   help="also set a web console password (prompted twice); on an existing operator without "
                        "--force, set only the password and keep the token")
    o.add_argument("--password-stdin", action="store_true", help="like --password, read from one line of stdin")
    o.add_argument("--force", action="store_true")
    o.set_defaults(func=_audited(_cmd_operator))

    br = ps.add_parser("bridge", parents=[common],
                       help="on the county broker: a township broker's bridge login (its site's traffic up)")
    br.add_argument("--id", required=True)
    br.add_argument("--site", required=True, help="the township's site")
    br.add_argument("--out", help="write {username, password} to this 0600 JSON file instead of printing")
    br.add_argument("--force", action="store_true")
    br.set_defaults(func=_audited(_cmd_bridge))

    for what, helptext in (("drone", "a 32-byte MAVLink 2 signing key"), ("recorder", "a serial recorder key")):
        k = ps.add_parser(what, parents=[common], help=helptext)
        k.add_argument("--id", required=True)
        k.add_argument("--site", required=True)
        if what == "drone":
            k.add_argument("--sysid", type=int, required=True, help="MAVLink system id 1..255")
        else:
            k.add_argument("--officer-id", help="the officer the recorder is issued to (警号-based id)")
        k.add_argument("--out", help="write the key to this 0600 JSON file instead of printing")
        k.add_argument("--force", action="store_true")
        k.set_defaults(func=_audited(_cmd_keyed))

    r = ps.add_parser("revoke", parents=[common], help="remove an identity's keys and broker login")
    r.add_argument("--id", required=True)
    r.set_defaults(func=_audited(_cmd_revoke))

    ls = ps.add_parser("list", parents=[common], help="list identities (no secrets)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_cmd_list)

    # broker-config
    b = subparsers.add_parser("broker-config", parents=[common],
                              help="write mosquitto.conf, passwd and acl from the keystore")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--plain", action="store_true",
                   help="also write plain (clear-text) listeners, on 127.0.0.1 unless --bind; default: TLS only")
    b.add_argument("--port", type=int, default=PLAIN_PORT, help="with --plain: the nodes' plain port (default 1883)")
    b.add_argument("--op-port", type=int, default=OP_PLAIN_PORT,
                   help="with --plain: the gateway's and operators' plain port (default 1884)")
    b.add_argument("--no-plain", action="store_true", help=argparse.SUPPRESS)  # the default now; still accepted
    b.add_argument("--bind", help="listen address (default: every interface for TLS, 127.0.0.1 for plain)")
    b.add_argument("--tls-port", type=int, default=TLS_PORT, help="the nodes' TLS port (default 8883)")
    b.add_argument("--op-tls-port", type=int, default=OP_TLS_PORT,
                   help="the gateway's and operators' TLS port (default 8884; free client ids)")
    b.add_argument("--require-client-cert", action="store_true")
    b.add_argument("--no-persistence", action="store_true")
    b.add_argument("--run-as", help="user Mosquitto runs as when started as root (Mosquitto's default: mosquitto)")
    b.add_argument("--log-stderr", action="store_true", help="log to stderr instead of OUT/mosquitto.log")
    b.add_argument("--bridge", metavar="URL", help="bridge this (township) broker to the county broker at URL "
                                                   "(mqtt[s]://host:port; docs/COUNTY.md)")
    b.add_argument("--bridge-login", help="the bridge's login on the county broker (`lookout provision bridge`)")
    b.add_argument("--bridge-password-file", help="its password: the JSON file `provision bridge --out` wrote")
    b.add_argument("--bridge-site", help="the site whose traffic goes up (default: this key store's gateway's)")
    b.add_argument("--bridge-operator", action="append", default=[], metavar="ID",
                   help="a county operator whose requests may come down (repeat for each)")
    b.add_argument("--bridge-ca", help="with mqtts://: the county broker's CA certificate")
    b.set_defaults(func=_audited(_cmd_broker_config))

    # pki
    k = subparsers.add_parser("pki", help="the site certificate authority")
    ks = k.add_subparsers(dest="pki_cmd", metavar="CMD", required=True)
    i = ks.add_parser("init", parents=[common], help="create the site CA (EC P-256)")
    i.add_argument("--site", required=True)
    i.add_argument("--days", type=int, default=3650)
    i.add_argument("--force", action="store_true")
    i.set_defaults(func=_audited(_cmd_pki_init))
    s = ks.add_parser("issue", parents=[common], help="issue the broker certificate or a client certificate")
    s.add_argument("kind", choices=("server", "client"))
    s.add_argument("--host", action="append",
                   help="server: every DNS name and IP address clients dial, repeated (the gateway on the broker's "
                        "host dials 127.0.0.1: --host gw.example.lan --host 127.0.0.1; default localhost, 127.0.0.1)")
    s.add_argument("--name", help="client: the device/gateway/operator id")
    s.add_argument("--days", type=int)
    s.set_defaults(func=_audited(_cmd_pki_issue))
    sh = ks.add_parser("show", parents=[common], help="show the CA and broker certificate")
    sh.set_defaults(func=_cmd_pki_show)
