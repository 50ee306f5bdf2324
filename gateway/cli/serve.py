"""``lookout gateway``: run the gateway service in the foreground (systemd runs exactly this)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from lookout.gateway.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def cmd_gateway(args: argparse.Namespace) -> int:
    from lookout.gateway.core import config as cfgmod
    from lookout.gateway.links.mqtt import MQTTRefused
    from lookout.gateway.service.app import ListenError, configure_logging, run

    try:
        cfg = cfgmod.load(args.config)
    except cfgmod.ConfigError as e:
        for line in e.errors:
            print(f"lookout gateway: {line}", file=sys.stderr)
        return EXIT_USAGE
    from lookout.gateway.linkage import rules

    try:
        rules.from_config(cfg)  # checked before anything starts, like the rest of the file
    except rules.RulesError as e:
        for line in e.errors:
            print(f"lookout gateway: linkage: {line}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args.log_level or cfg.log_level, args.log_format or cfg.log_format)
    attach: Any = None
    if cfg.web.listen:
        from lookout.gateway.web.server import web_console  # the duty console beside the gateway

        attach = web_console
    try:
        return asyncio.run(run(cfg, broker_url=args.broker, attach=attach))
    except KeyboardInterrupt:
        return EXIT_OK
    except ListenError as e:  # a taken port: restarting will not fix it (systemd: RestartPreventExitStatus=2)
        print(f"lookout gateway: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except MQTTRefused as e:  # wrong [broker] login: the same
        print(f"lookout gateway: {e}: check [broker] username/password in {args.config}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # noqa: BLE001 - startup failures (broker unreachable, data_dir not writable) in one line
        print(f"lookout gateway: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILED


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("gateway", help="run the gateway service")
    p.add_argument("--config", required=True, help="gateway.toml")
    p.add_argument("--broker", help="override [broker].url (mqtt://host:port)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    p.add_argument("--log-format", choices=("text", "json"), help="json: one object per line (journald, Loki)")
    p.set_defaults(func=cmd_gateway)
