"""`lookout demo`: registers the subcommand (gateway/demo/script.py does the work)."""

from __future__ import annotations

import argparse
import sys


def _positive(v: str) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if f <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {v!r}")
    return f


def _cmd(args: argparse.Namespace) -> int:
    from lookout.gateway.demo import script as demo
    from lookout.gateway.links.mqtt import MQTTError, MQTTRefused
    from lookout.gateway.service.app import ListenError

    try:
        return demo.run(
            speed=args.speed,
            duration=args.duration,
            scenario=args.scenario,
            broker=args.broker,
            data_dir=args.data_dir,
            refresh=args.refresh,
            verbose=args.verbose,
            web=None if args.web == "off" else args.web,
            linger=args.linger,
        )
    except ValueError as e:
        print(f"lookout demo: {e}", file=sys.stderr)
        return 2
    except MQTTRefused as e:  # the demo logs in without credentials: the broker must allow that on loopback
        print(f"lookout demo: {e}: the demo connects without a login; give --broker a broker that allows "
              "anonymous clients on loopback, or leave --broker out (embedded broker)", file=sys.stderr)
        return 2
    except (MQTTError, ListenError) as e:
        print(f"lookout demo: {e.strerror if isinstance(e, ListenError) else e}", file=sys.stderr)
        return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the whole system on this machine through a reservoir scenario (start here)",
        description="Embedded broker, the gateway with its linkage rules, and a simulated reservoir: nodes running "
        "the real firmware, officers with body-worn recorders, drones. A night detection at the ferry, the "
        "nearest loudspeaker's warning, the escalation, officer and drone dispatched, the cadre notified, on "
        "scene, the officer's clip verified, the incident closed; a node going silent. Every decision is the "
        "gateway's. Ends with a summary; exit code 0 when every expected outcome held.",
    )
    p.add_argument(
        "--speed",
        type=_positive,
        default=15.0,
        help="time compression: the world, and the rules' delays and speeds, run SPEED times faster; node "
        "heartbeat 30 s / SPEED (min 5 s) (default 15: the default story takes ~25 s)",
    )
    p.add_argument(
        "--duration",
        type=_positive,
        default=None,
        help="upper bound on the run in seconds (default 60 + the scenario's end_s / SPEED); the story "
        "normally ends well before it",
    )
    p.add_argument("--scenario", metavar="FILE", default=None,
                   help="a scenario file (TOML; default: the built-in night_ferry.toml, see docs/GATEWAY.md \"Demo\")")
    p.add_argument(
        "--broker",
        metavar="URL",
        default=None,
        help="mqtt://host:port of an existing broker (default: embedded amqtt on 127.0.0.1)",
    )
    p.add_argument(
        "--data-dir", default=None, help="keep key store, registry and journal here (default: temp)"
    )
    p.add_argument("--refresh", type=_positive, default=None,
                   help="seconds between the plain-text table blocks when stdout is not a terminal (default 5)")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the gateway's and nodes' logs")
    p.add_argument("--web", default="127.0.0.1:8080", metavar="HOST:PORT",
                   help="the web console's address (default 127.0.0.1:8080, any free port if taken; off: none)")
    p.add_argument("--linger", type=_positive, default=0.0, metavar="S",
                   help="keep the web console up this many seconds after the script ends")
    p.set_defaults(func=_cmd)
