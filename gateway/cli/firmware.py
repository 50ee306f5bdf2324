"""`lookout firmware build` and `lookout firmware flash`: compile the node firmware and put it on a board.

    lookout firmware build [--out DIR]
    lookout firmware package            (regenerate firmware/speaker|sensor/package.json after adding a module)
    lookout firmware flash --port PORT --role speaker|sensor|camera --config provisioned/ID/config.json
                           [--romfs | --frozen] [--dry-run]

``flash`` validates the config with the firmware's own validator *before* touching the board (an installer sees
``hb_s: 2: expected an integer 5..3600``, not a node that never comes online), builds when the .mpy files are
missing or older than their sources, then runs one chained ``mpremote`` call; ``--dry-run`` prints it instead.
Layout and helpers: gateway/firmware_build.py. Guide: docs/FIRMWARE.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lookout.gateway.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from lookout.tools import firmware_build as fb


def _err(msg: str, code: int) -> int:
    print("lookout firmware: " + msg, file=sys.stderr)
    return code


def _build(out: Path, quiet: bool = False) -> int:
    try:
        rows = fb.build(out)
    except fb.BuildError as e:
        return _err("build failed: %s does not compile:\n%s" % (e.path, e.detail.strip()), EXIT_USAGE)
    if not quiet:
        w = max(len(r["dest"]) for r in rows)
        print("%-*s  %8s  %8s" % (w, "file (device path)", "source", "built"))
        for r in rows:
            print("%-*s  %8d  %8d" % (w, r["dest"], r["src_bytes"], r["bytes"]))
        total = sum(r["bytes"] for r in rows)
        mpy = sum(r["bytes"] for r in rows if r["dest"].endswith(".mpy"))
        src_total = sum(r["src_bytes"] for r in rows)
        print(f"{'total':<{w}}  {src_total:>8}  {total:>8}")
        print("%d files; .mpy %d bytes (%.1f KB)" % (len(rows), mpy, mpy / 1024))
    images = fb.build_romfs(out)
    if not quiet:
        for app, path in images.items():
            print("ROMFS image for %s nodes: %s (%d bytes)" % (app, path.name, path.stat().st_size))
        print("built into %s" % out)
    return EXIT_OK


def cmd_build(args) -> int:
    return _build(Path(args.out))


def cmd_flash(args) -> int:
    out = Path(args.out)
    cfg_path = Path(args.config)
    try:
        cfg = fb.load_node_config(cfg_path, args.role)
        side = fb.config_side_files(cfg, cfg_path)
    except fb.ConfigProblem as e:
        return _err("%s refused, nothing was written to the board: %s" % (cfg_path, e), EXIT_USAGE)
    if not fb.is_built(out) or (args.romfs and not fb.romfs_path(args.role, out).exists()):
        rc = _build(out, quiet=True)
        if rc:
            return rc
    code = "romfs" if args.romfs else "frozen" if args.frozen else "files"
    cmds = fb.flash_commands(args.port, args.role, cfg_path, out, side, code=code)
    if args.dry_run:
        for c in cmds:
            print(fb.shell_line(c))
        return EXIT_OK
    print("flashing %s (%s, site %s, transport %s) on %s" % (cfg["id"], args.role, cfg["site"], cfg["transport"],
                                                           args.port))
    for c in cmds:
        proc = subprocess.run(c, check=False)
        if proc.returncode != 0:
            return _err("mpremote exited with %d (is the board on %s and no REPL open?)"
                        % (proc.returncode, args.port), EXIT_FAILED)
    print("done: %s resets and connects with %s" % (cfg["id"], cfg_path))
    return EXIT_OK


def cmd_package(args) -> int:
    for app in ("speaker", "sensor"):
        path = fb.write_package_json(app)
        print("wrote %s (%d files)" % (path.relative_to(fb.ROOT), len(fb.package_json(app)["urls"])))
    return EXIT_OK


def register(subparsers) -> None:
    p = subparsers.add_parser("firmware", help="build the node firmware (.mpy) and flash a board over mpremote")
    ps = p.add_subparsers(dest="firmware_cmd", metavar="ACTION", required=True)
    b = ps.add_parser("build", help="compile protocols/ and firmware/lib/ to .mpy with mpy-cross")
    b.add_argument("--out", default=str(fb.DEFAULT_OUT), help="output directory (default build/firmware)")
    b.set_defaults(func=cmd_build)
    k = ps.add_parser("package", help="regenerate firmware/<app>/package.json (mip) from the apps' imports")
    k.set_defaults(func=cmd_package)
    f = ps.add_parser("flash", help="validate a node's config.json, build if needed, copy everything with mpremote")
    f.add_argument("--port", required=True, help="serial port of the board (e.g. /dev/ttyUSB0, COM5)")
    f.add_argument("--role", required=True, choices=fb.ROLES)
    f.add_argument("--config", required=True, help="the node's config.json (from `lookout provision device`)")
    f.add_argument("--out", default=str(fb.DEFAULT_OUT), help="build directory (default build/firmware)")
    where = f.add_mutually_exclusive_group()
    where.add_argument("--romfs", action="store_true",
                       help="deploy the libraries as a ROMFS image (MicroPython >= 1.25 built with ROMFS); "
                            "their bytecode then runs from flash instead of RAM")
    where.add_argument("--frozen", action="store_true",
                       help="the board runs a firmware image built with firmware/manifest.py: copy only "
                            "main.py and the config")
    f.add_argument("--dry-run", action="store_true", help="print the mpremote command instead of running it")
    f.set_defaults(func=cmd_flash)


if __name__ == "__main__":  # pragma: no cover
    from lookout.gateway.cli.main import main

    sys.exit(main(["firmware"] + sys.argv[1:]))

