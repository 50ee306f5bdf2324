"""What ``--speed S`` does: the simulated world runs S times faster, and so do the gateway's own clocks for it.

Theory of operation
-------------------
The gateway keeps real time (its journal, command expiry and node clocks are wall-clock Unix ms); what a demo
compresses are the *durations and speeds* the scenario is written in. ``linkage`` returns the rules with every
delay divided by S (escalation ``after_s``, persistence windows, cool-downs, absorb and auto-close times, the
dispatch cut-off, the launch time, the oldest usable position) and every speed multiplied by S (officers, drones),
so an ETA the gateway computes comes true in the world, where officers and drones move S times faster. Which rule
acts, which unit is chosen and in what order things happen are unchanged; times in the journal are wall time,
and the demo's summary multiplies them back by S ("scenario seconds"). Latencies that are not delays in the
story (the detection reaching the speaker) are reported as measured.
"""

from __future__ import annotations

from dataclasses import replace

from lookout.gateway.linkage.rules import LinkageConfig, Match, Rule

FW_MIN_HB_S = 5  # the firmware's config validator refuses hb_s under 5 (a typo must not take a site offline)
HB_S = 30  # the nodes' real heartbeat period (what GB/T 28181 body-cam simulators use)


def seconds(v: float, speed: float, least: int = 1) -> int:
    """A duration in whole seconds (the rules' unit), divided by ``speed``, at least ``least``."""
    return max(least, round(v / speed))


def hb_s(speed: float) -> int:
    """The nodes' heartbeat at this speed (never under the firmware's minimum)."""
    return max(FW_MIN_HB_S, round(HB_S / speed))


def _rule(r: Rule, s: float) -> Rule:
    m: Match = r.match
    if m.persist_count > 1:
        m = replace(m, persist_s=seconds(m.persist_s, s))
    after = seconds(r.escalate_after_s, s) if r.escalate_after_s is not None else None
    return replace(r, match=m, escalate_after_s=after, cooldown_s=seconds(r.cooldown_s, s, 0))


def linkage(cfg: LinkageConfig, speed: float) -> LinkageConfig:
    """The rules as the gateway applies them in a world ``speed`` times faster (see the module doc)."""
    if speed == 1:
        return cfg
    p = cfg.dispatch
    params = replace(p, cutoff_s=seconds(p.cutoff_s, speed), officer_mps=p.officer_mps * speed,
                     drone_mps=p.drone_mps * speed, drone_launch_s=seconds(p.drone_launch_s, speed, 0),
                     max_fix_age_s=seconds(p.max_fix_age_s, speed, 5))
    return replace(cfg, rules=tuple(_rule(r, speed) for r in cfg.rules), dispatch=params,
                   absorb_s=seconds(cfg.absorb_s, speed), auto_close_s=seconds(cfg.auto_close_s, speed))


__all__ = ["FW_MIN_HB_S", "HB_S", "hb_s", "linkage", "seconds"]
