"""Recurring broadcasts of the loudspeaker: ``schedule``, ``cancel``/``cancel_schedule``, the scheduler tick.

Theory of operation: a schedule plays a stored clip every ``every_s`` seconds (60..86400) from ``start_ms``
(default now), ``count`` times (0 = until cancelled), 16 at most; it needs the wall clock. Schedules live in
``Speaker.schedules`` and in ``schedules.json`` on flash (loaded by the Speaker at boot), so they survive a
reboot. The speaker's scheduler task calls ``tick`` once a second while any exist: a due schedule starts a
``Broadcast`` through the same priority/quiet-hours policy as ``play``. A slot missed while the node was off
or busy is not made up: the next one is the first slot of the schedule's grid after now.

This module is loaded lazily (speaker.py): by the first schedule command, or by the first tick after a boot
that found schedules on flash. A node that never gets a schedule never holds this code.
"""

import json

from lookout_node.commands import Rejected, int_arg, is_safe_clip_id


def _save(sp):
    sp.fs.write(sp.SCHEDULES, json.dumps(sp.schedules).encode())


def check_schedule(sp, args, cmd):
    sid = args.get("sid")
    if not is_safe_clip_id(sid):
        raise Rejected("bad_args", "sid: expected an id, got %r" % (sid,))
    clip = args.get("clip")
    if not sp.has_clip(clip):
        raise Rejected("no_clip", "clip %r is not stored on this node" % (clip,))
    every = int_arg(args, "every_s", None, 60, 86400)
    if len(sp.schedules) >= 16 and sid not in sp.schedules:
        raise Rejected("full", "16 schedules at most")
    now = sp.hal.time_ms()
    if now is None:
        raise Rejected("no_clock", "schedules need the wall clock (GPS or NTP) and it is not set")
    prio = cmd.get("prio", 1)  # an emergency schedule (3) plays through quiet hours, at volume 100 by default
    return {"sid": sid, "clip": clip, "every_s": every, "repeat": int_arg(args, "repeat", 1, 1, sp.MAX_REPEAT),
            "volume": int_arg(args, "volume", 100 if prio == 3 else sp.volume, 0, 100), "prio": prio,
            "count": int_arg(args, "count", 0, 0, 100000),
            "next_ms": int_arg(args, "start_ms", now, 0, 2 ** 47)}


async def schedule(sp, args, cmd):
    sid = args.pop("sid")
    sp.schedules[sid] = args
    _save(sp)
    return {"sid": sid, "next_ms": args["next_ms"]}


def check_cancel(sp, args, cmd):
    sid = args.get("sid")
    if sid not in sp.schedules:
        raise Rejected("no_schedule", "no schedule %r" % (sid,))
    return {"sid": sid}


async def cancel(sp, args, cmd):
    del sp.schedules[args["sid"]]
    _save(sp)
    return {"sid": args["sid"], "left": len(sp.schedules)}


def tick(sp):
    """Start the schedules that are due; move each to its next slot after now (same phase)."""
    now = sp.hal.time_ms()
    if now is None:
        return
    changed = False
    for sid in list(sp.schedules):
        s = sp.schedules[sid]
        if s["next_ms"] > now:
            continue
        changed = True
        every = s["every_s"] * 1000
        s["next_ms"] += every * ((now - s["next_ms"]) // every + 1)  # strictly after now, same phase
        try:
            sp.policy(s["prio"])
            if not sp.has_clip(s["clip"]):
                raise Rejected("no_clip")
            sp.submit(sp.Broadcast(s["clip"], s["repeat"], s["volume"], s["prio"], sid=sid))
        except Rejected as e:  # quiet hours are expected, not news: no event every period all night
            if sp.emit_event is not None and e.code != "quiet_hours":
                sp.emit_event("broadcast", "info", "schedule %s skipped: %s" % (sid, e.code))
        if s["count"]:
            s["count"] -= 1
            if s["count"] == 0:
                del sp.schedules[sid]
    if changed:
        _save(sp)


def register(sp, proc):
    """Put the real handlers in place of the lazy entries (speaker.Speaker.register)."""
    proc.register("schedule", lambda a, c: schedule(sp, a, c), lambda a, c: check_schedule(sp, a, c))
    for n in ("cancel", "cancel_schedule"):  # the same, by its longer name
        proc.register(n, lambda a, c: cancel(sp, a, c), lambda a, c: check_cancel(sp, a, c))
