"""The node's rare commands: ``reboot``, ``set_config`` and ``rotate_key`` (loaded on first use, see node.py).

Theory of operation:
- ``reboot`` answers ``done``, then asks the app to restart once the outbox has drained (at most 5 s), so
  the result reaches the broker before the link goes.
- ``set_config`` takes a partial config (arguments, and/or a JSON object in ``patch``), merged over the
  current one and validated by config.py before it is accepted (``bad_config`` names the field). A change
  that needs a fresh connection (broker, WiFi...) goes on *trial*: the app restarts on it and the final result
  follows from the session (committed once the broker was reached, else rolled back); anything else applies
  live.
- ``rotate_key`` unwraps the new key with the old one (protocols/signing), persists it, answers ``done`` still
  signed with the OLD key (so the gateway can verify it before it commits), then switches (``after``).
- ``shutdown``: the app's way out (a reboot, a config restart, a stop), as rare as the commands that cause it.
"""

import json

from protocols import signing
from lookout_node import config as cfgmod
from lookout_node.commands import Rejected
from lookout_node.hal import asyncio, sleep_ms, ticks_diff, ticks_ms


async def restart_soon(node, reason, delay_ms):
    t0 = ticks_ms()
    await sleep_ms(delay_ms)
    while len(node.outbox) and node.online() and ticks_diff(ticks_ms(), t0) < 5000:
        await sleep_ms(50)  # let the final result reach the broker first
    node.request_exit(reason)


async def reboot(node, args, cmd):
    asyncio.create_task(restart_soon(node, "reboot", 300))
    return {"rebooting": True}


def check_set_config(node, args, cmd):
    patch = {}
    for k in args:
        if k == "patch":
            try:
                p = json.loads(args["patch"])
            except (ValueError, TypeError):
                raise Rejected("bad_config", "patch: not JSON")
            if not isinstance(p, dict):
                raise Rejected("bad_config", "patch: expected a JSON object")
            patch.update(p)
        else:
            patch[k] = args[k]
    for k in ("key", "id"):
        if k in patch:
            raise Rejected("bad_config", "%s cannot be changed by set_config (use rotate_key / reprovision)"
                           % k)
    try:
        new = cfgmod.validate(cfgmod.merge(node.cfg, patch))
    except cfgmod.ConfigError as e:
        raise Rejected("bad_config", str(e))
    return {"new": new, "keys": sorted(patch)}


async def set_config(node, args, cmd):
    new = args["new"]
    if cfgmod.needs_trial(node.cfg, new):
        node.store.begin_trial(node.cfg, new, cmd["id"])
        asyncio.create_task(restart_soon(node, "config", 100))
        await asyncio.Event().wait()  # cancelled by the restart; the result follows the trial
    node.store.save(new)
    for k in new:
        node.cfg[k] = new[k]
    if node.speaker is not None:
        node.speaker.volume = node.cfg.get("volume", node.speaker.volume)
    return {"applied": args["keys"]}


def check_rotate_key(node, args, cmd):
    if node.store.trial is not None:  # the backup config holds the old key: a rollback would undo this
        raise Rejected("busy", "a config change is on trial; rotate after it is committed")
    try:
        k = signing.unwrap_key(node.key, args.get("key"), cmd["ctr"])
    except Exception as e:
        raise Rejected("bad_key", str(e))
    return {"key": k}


async def rotate_key(node, args, cmd):
    """Persist the new key (config.json written to a temp file, then renamed: a power cut leaves either the
    old or the new file, never half of one)."""
    new = dict(node.cfg)
    new["key"] = args["key"].hex()
    node.store.save(new)
    node.cfg["key"] = new["key"]
    return {"rotated": True}


def after_rotate_key(node, args, cmd):
    node.key = node.proc.key = args["key"]
    node.log("info", "device key rotated by %s" % cmd["id"])


async def _reap(task, tries=200):
    """Wait for a cancelled task to end. A task can swallow one cancellation (CPython 3.11: a ``wait_for``
    whose inner await completes as it is cancelled returns normally), then block forever (e.g. the sender back
    on an empty outbox), so cancel again until it is done; bounded, so a shutdown never hangs."""
    n = 0
    task.cancel()
    while not task.done() and n < tries:
        await sleep_ms(5)
        n += 1
        if n % 20 == 0:  # still running after 100 ms: it swallowed the cancellation (cleanup is never that slow)
            task.cancel()
    if task.done():
        try:
            await task
        except BaseException:  # CancelledError, or an error already counted
            pass


async def shutdown(node, graceful=True):
    """Stop the node's tasks; graceful = publish the death ourselves and DISCONNECT, else just drop the link."""
    for t in list(node.proc.running.values()) + node.tasks:
        t.cancel()
    for t in node.tasks:
        await _reap(t)
    node.tasks = []
    if node.speaker is not None and node.speaker.current is not None:
        node.hal.audio.stop(True)
    if node.client is not None:
        if not graceful and hasattr(node.hal, "kill_connections"):
            node.hal.kill_connections()
        await node.client.disconnect(publish_will=graceful)


def register(node, proc):
    """Put the real handlers in place of the lazy entries (node.Node.__init__)."""
    r = proc.register
    r("reboot", lambda a, c: reboot(node, a, c))
    r("set_config", lambda a, c: set_config(node, a, c), lambda a, c: check_set_config(node, a, c))
    r("rotate_key", lambda a, c: rotate_key(node, a, c), lambda a, c: check_rotate_key(node, a, c),
      after=lambda a, c: after_rotate_key(node, a, c))
