"""One benchmark report: run every bench in bench/ and write bench/results/<date>.json and <date>.md.

    python bench/run_all.py            # quick: each bench with small sizes (a few minutes in all)
    python bench/run_all.py --full     # each bench with its own defaults (the documented figures; long)
    python bench/run_all.py --only command_latency,fuzz_entries

Each bench is a separate process (its own interpreter and Mosquitto, one after another, so they do not load the
machine for each other) whose last stdout line is a JSON object; ``BENCHES`` says how to run it quick and full and
which of its figures go into the report: the figure, the baseline measured in the same run, their ratio, the
target (from the docs that state it) and whether it was met. A bench that fails or cannot run here (no Chromium,
no MicroPython runtime) is a row saying so, never a silent gap; a bench file this table does not know yet (one
added later) is still run, with ``--quick`` when its ``--help`` offers it, and its JSON kept. Exit 1 if any bench
failed; a missed target is a "no" in the table (some are known misses, documented where the target is stated).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "bench"
NOT_BENCHES = {"run_all.py", "fuzz_total.py"}  # this script, and fuzz_soak's pytest plugin


@dataclass
class Row:
    figure: str
    value: Any
    baseline: Any = None
    ratio: float | None = None
    target: str = "—"
    met: bool | None = None  # None: no target stated


def _get(d: dict, path: str) -> Any:
    for k in path.split("."):
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _ratio(a: Any, b: Any) -> float | None:
    try:
        return round(float(a) / float(b), 2)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


@dataclass
class Bench:
    name: str
    quick: list[str]
    full: list[str] = field(default_factory=list)
    rows: Callable[[dict], list[Row]] = lambda r: []
    timeout_s: int = 1800


def _latency(r: dict) -> list[Row]:
    return [Row("operator command p99 (ms)", r.get("p99_ms"), r.get("baseline_p99_ms"), r.get("p99_ratio"),
                "p99_ratio ≤ 2 (docs/GATEWAY.md, Latency)",
                None if r.get("p99_ratio") is None else r["p99_ratio"] <= 2),
            Row("operator command p50 (ms)", r.get("p50_ms"), r.get("baseline_p50_ms"), r.get("p50_ratio"))]


def _linkage(r: dict) -> list[Row]:
    return [Row("detection → warned p99 (ms)", r.get("warn_p99_ms"), r.get("baseline_p99_ms"), r.get("p99_ratio"),
                "≤ 5000 ms (the integration bound, docs/GATEWAY.md, Linkage)",
                None if r.get("warn_p99_ms") is None else r["warn_p99_ms"] <= 5000)]


def _mavlink(r: dict) -> list[Row]:
    rows = [Row("drone ingest (msg/s per core)", r.get("ingest_msgs_per_cpu_s"),
                r.get("baseline_parse_msgs_per_cpu_s"), r.get("ingest_ratio"), "ratio ≥ 0.30",
                None if r.get("ingest_ratio") is None else r["ingest_ratio"] >= 0.30)]
    if r.get("live"):
        p99 = _get(r, "live.loc_p99_ms")
        rows.append(Row("drone frame → MQTT location p99 (ms)", p99, None, None, "≤ 20 ms",
                        None if p99 is None else p99 <= 20))
    return rows


def _offloop(r: dict) -> list[Row]:
    idle = _get(r, "idle.p99_ms")
    return [Row(f"devices p99 during {k} (ms)", _get(r, f"{k}.p99_ms"), idle, r.get(f"{k}_p99_ratio"))
            for k in ("verify", "clips_cold", "page") if k in r]


def _web(r: dict) -> list[Row]:
    return [Row(f"map first render, {r.get('devices')} devices (ms)", r.get("first_render_ms"),
                r.get("baseline_first_render_ms"), r.get("render_ratio")),
            Row("map page weight (bytes, gzip)", r.get("page_gzip_bytes"))]


def _footprint(r: dict) -> list[Row]:
    return [Row("node heap after boot (KB)", r.get("heap_after_boot_kb"), r.get("heap_runtime_baseline_kb"),
                _ratio(r.get("heap_after_boot_kb"), r.get("heap_runtime_baseline_kb")),
                f"≤ {r.get('target_heap_after_boot_kb')} KB (docs/FIRMWARE.md)", r.get("meets_target")),
            Row("node heap peak, playing (KB)", r.get("heap_peak_playback_kb"))]


def _soak(r: dict) -> list[Row]:
    ok = bool(r.get("cpython_ok")) and bool(r.get("micropython_ok"))
    return [Row("decoder fuzz, MicroPython (inputs/s)", r.get("micropython_inputs_per_s"),
                r.get("cpython_inputs_per_s"), r.get("micropython_speed_ratio"),
                "no input escapes a decoder's own error", ok)]


def _entries(r: dict) -> list[Row]:
    rows = [Row(f"entry fuzz: {r.get('entries')} entries, fewest cases", r.get("cases_min"), None, None,
                "no crash, no hang, world still serving", bool(r.get("ok")))]
    if r.get("ok"):
        rows.append(Row("entry fuzz, slowest MQTT entry (cases/s)",
                        min(v["per_s"] for k, v in r["per_entry"].items() if k.startswith("mqtt")),
                        r.get("baseline_status_per_s"), r.get("mqtt_cases_per_s_ratio")))
    return rows


def _load(r: dict) -> list[Row]:
    """bench/load.py (issue 17, part A): the figures its last JSON line carries."""
    rows = []
    if "ingest_ratio_min" in r:
        rows.append(Row("ingest vs bare subscriber, worst N", r["ingest_ratio_min"], None, r["ingest_ratio_min"],
                        "≥ 0.5", r["ingest_ratio_min"] >= 0.5))
    if "disk_bytes_per_msg" in r:
        rows.append(Row("disk bytes written per message", r["disk_bytes_per_msg"], None, None, "≤ 500",
                        r["disk_bytes_per_msg"] <= 500))
    if "max_nodes_p99_under_1s" in r:
        rows.append(Row("largest N with command p99 < 1 s", r["max_nodes_p99_under_1s"]))
    return rows


BENCHES = {b.name: b for b in (
    Bench("command_latency", ["--nodes", "100", "--commands", "200", "--rounds", "2"], rows=_latency),
    Bench("linkage_warning", ["--detections", "10"], rows=_linkage),
    Bench("mavlink_bridge", ["--drones", "5", "--seconds", "4", "--rounds", "2"], rows=_mavlink),
    Bench("offloop_latency", ["--entries", "20000", "--clips", "5", "--requests", "60"], rows=_offloop),
    Bench("web_console", ["--devices", "50", "--runs", "2"], rows=_web),
    Bench("firmware_footprint", [], rows=_footprint),
    Bench("fuzz_soak", ["--inputs", "1000"], rows=_soak),
    Bench("fuzz_entries", ["--quick"], rows=_entries),
    Bench("load", ["--quick"], rows=_load, timeout_s=7200),
)}


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.py") if p.name not in NOT_BENCHES)


def run_one(name: str, full: bool, out_dir: Path) -> dict:
    """One bench in its own process; returns {"ok", "seconds", "result" (its last JSON line), "error"}."""
    b = BENCHES.get(name) or Bench(name, [])
    args = b.full if full else b.quick
    if name not in BENCHES and not full:  # a bench added after this table: quick if it says it can be
        h = subprocess.run([sys.executable, str(HERE / f"{name}.py"), "--help"], capture_output=True, text=True,
                           timeout=60, cwd=ROOT)
        args = ["--quick"] if "--quick" in h.stdout else []
    if "--out" in (HERE / f"{name}.py").read_text():  # keep each bench's own file beside the report
        args = [*args, "--out", str(out_dir / f"{name}.json")]
    env = {**os.environ, "PATH": "/usr/sbin:" + os.environ.get("PATH", "")}  # mosquitto lives there on Debian
    t0 = time.monotonic()
    try:
        cp = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *args], capture_output=True, text=True,
                            timeout=b.timeout_s, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": round(time.monotonic() - t0, 1), "args": args,
                "error": f"no result within {b.timeout_s} s"}
    secs = round(time.monotonic() - t0, 1)
    last = next((ln for ln in reversed(cp.stdout.strip().splitlines()) if ln.startswith("{")), None)
    result = None
    if last is not None:
        try:
            result = json.loads(last)
        except ValueError:
            result = None
    if cp.returncode != 0 or result is None:
        why = (cp.stderr.strip().splitlines() or cp.stdout.strip().splitlines() or ["no output"])[-1]
        return {"ok": False, "seconds": secs, "args": args, "result": result,
                "error": f"exit {cp.returncode}: {why[:300]}"}
    return {"ok": True, "seconds": secs, "args": args, "result": result}


def _fmt(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table(report: dict) -> str:
    lines = [f"# Benchmark report {report['date']} ({report['mode']})", "",
             f"Machine: {report['machine']}; Python {report['python']}; {report['cpus']} CPUs. Each bench ran alone, "
             "one after another; every baseline was measured in the same run as its figure.", "",
             "| bench | figure | value | baseline | ratio | target | met? |", "|---|---|---|---|---|---|---|"]
    for name, r in report["benches"].items():
        if not r["ok"]:
            lines.append(f"| {name} | did not run: {r['error'].replace('|', '/')} | | | | | no |")
            continue
        rows = [Row(**x) for x in r.get("rows", [])]
        if not rows:
            lines.append(f"| {name} | (figures in {name}.json) | | | | | |")
        for x in rows:
            met = "—" if x.met is None else ("yes" if x.met else "**no**")
            lines.append(f"| {name} | {x.figure} | {_fmt(x.value)} | {_fmt(x.baseline)} | {_fmt(x.ratio)} | "
                         f"{x.target} | {met} |")
    lines += ["", f"{report['failed']} bench(es) failed, {report['missed']} target(s) missed; "
              f"{report['seconds']:.0f} s in all."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="each bench with its own (documented) defaults")
    ap.add_argument("--only", help="comma-separated bench names")
    ap.add_argument("--out", default=str(HERE / "results"), help="directory for <date>.json and <date>.md")
    args = ap.parse_args()
    names = discover()
    if args.only:
        want = args.only.split(",")
        unknown = [n for n in want if n not in names]
        if unknown:
            ap.error(f"no such bench: {', '.join(unknown)} (have {', '.join(names)})")
        names = want
    out = Path(args.out)
    day = datetime.date.today().isoformat()
    per = out / day
    per.mkdir(parents=True, exist_ok=True)
    import platform

    report: dict[str, Any] = {"date": day, "mode": "full" if args.full else "quick", "machine": platform.platform(),
                              "python": platform.python_version(), "cpus": os.cpu_count(), "benches": {}}
    t0 = time.monotonic()
    for name in names:
        print(f"== {name} ...", file=sys.stderr, flush=True)
        r = run_one(name, args.full, per)
        if r["ok"]:
            maker = BENCHES[name].rows if name in BENCHES else (lambda _r: [])
            r["rows"] = [vars(x) for x in maker(r["result"])]
        report["benches"][name] = r
        print(f"   {'ok' if r['ok'] else 'FAILED: ' + r['error']} ({r['seconds']} s)", file=sys.stderr, flush=True)
    report["seconds"] = round(time.monotonic() - t0, 1)
    report["failed"] = sum(not r["ok"] for r in report["benches"].values())
    report["missed"] = sum(x["met"] is False for r in report["benches"].values() for x in r.get("rows", []))
    (out / f"{day}.json").write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    md = table(report)
    (out / f"{day}.md").write_text(md)
    print(md)
    print(json.dumps({"report": str(out / f"{day}.json"), "benches": len(names), "failed": report["failed"],
                      "missed": report["missed"], "seconds": report["seconds"]}))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
