"""Device key rotation, gateway side: send a signed ``rotate_key`` and commit the new key only on proof.

Theory of operation (node side: firmware/lib/lookout_node/node_admin.py ``check_rotate_key``, ``rotate_key``,
``after_rotate_key``, loaded on the first verified ``rotate_key``):

1. ``KeyStore.begin_rotation(id)`` makes the pending key (a retry reuses it); ``next_counter`` reserves ``ctr``;
   the command carries ``args.key = signing.wrap_key(old, new, ctr)`` and is signed with the OLD key. The wrapped
   key depends on the command's own counter, which is why this module builds and signs the command itself
   instead of the generic command path (that one assigns the counter only when it sends).
2. The node unwraps, writes the new key to flash (temp file + rename), answers ``done`` signed with the OLD key,
   then switches. ``judge`` commits (``KeyStore.set_key``) only when
   - that ``done`` verifies with the old key, or
   - an answer verifies with the PENDING key: the node already switched (its ``done`` was lost and a redelivery
     was answered ``bad_mac`` under the new key, or a probe signed with the pending key was accepted).
   A ``rejected``/``failed`` answer under the old key means the node kept the old key: nothing is committed.
   Anything verifying with neither key is ignored (forged).
3. No answer before the timeout: ``probe_command`` (a ``ping`` signed with the pending key) settles it. If the
   probe is not answered either, the outcome is ``unconfirmed`` and the pending key stays in the keystore, so a
   later ``lookout rotate-key`` re-sends the same new key (wrapped under a fresh counter).

``rotate_over_mqtt(link, ks, device_id)`` runs the whole exchange over a gateway MQTT login (gateway/mqtt.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from lookout.gateway.core.clock import now_ms as _now_ms
from lookout.gateway.links.mqtt import MQTTError
from lookout.protocols import messages, signing, topics
from lookout.protocols.errors import AuthError, MessageError

log = logging.getLogger(__name__)

COMMAND = "rotate_key"
PRIO = 2  # above routine traffic; a rotation must not wait behind a long broadcast queue


class RotationError(Exception):
    """The rotation cannot be started (unknown device)."""


@dataclass
class Outcome:
    status: str  # "committed" | "refused" | "unconfirmed"
    cmd_id: str
    code: str | None = None
    detail: str | None = None
    via: str | None = None  # "done" (old key), "new_key" (answer under the pending key), "probe"



def _verifies(key: bytes | None, msg: dict[str, Any]) -> bool:
    if key is None:
        return False
    try:
        signing.verify(key, "res", msg)
        return True
    except AuthError:
        return False


def rotation_command(ks: Any, device_id: str, now_ms: int | None = None, ttl_ms: int = 60000,
                     cmd_id: str | None = None, op: str | None = None) -> dict[str, Any]:
    """The signed ``rotate_key`` command for ``device_id`` (starts or resumes the pending rotation)."""
    ident = ks.get(device_id)
    if ident is None:
        raise RotationError(f"unknown device {device_id!r}: no key in the key store")
    new = ks.begin_rotation(device_id)
    ctr = ks.next_counter(device_id)
    now = _now_ms() if now_ms is None else now_ms
    msg = messages.command(cmd_id or "rk-" + secrets.token_hex(6), device_id, COMMAND,
                           {"key": signing.wrap_key(ident.hmac_key, new, ctr)}, now, now + ttl_ms, PRIO, ctr, op)
    return signing.sign(ident.hmac_key, "cmd", msg)


def probe_command(ks: Any, device_id: str, now_ms: int | None = None, ttl_ms: int = 30000,
                  cmd_id: str | None = None) -> dict[str, Any]:
    """A ``ping`` signed with the PENDING key: only a node that already switched accepts it."""
    pending = ks.pending_key(device_id)
    if pending is None:
        raise RotationError(f"{device_id}: no rotation pending")
    now = _now_ms() if now_ms is None else now_ms
    msg = messages.command(cmd_id or "rkp-" + secrets.token_hex(6), device_id, "ping", {}, now, now + ttl_ms, PRIO,
                           ks.next_counter(device_id))
    return signing.sign(pending, "cmd", msg)


def judge(ks: Any, device_id: str, cmd_id: str, res: dict[str, Any], probe_id: str | None = None
          ) -> Outcome | None:
    """Decide on one ``res`` message; commits the key when it proves the node switched. None = not decisive."""
    if res.get("id") not in (cmd_id, probe_id):
        return None
    ident = ks.get(device_id)
    pending = ks.pending_key(device_id)
    if ident is None or pending is None:
        return None
    status = res.get("status")
    if _verifies(pending, res) and not _verifies(ident.hmac_key, res):
        ks.set_key(device_id, pending)
        return Outcome("committed", cmd_id, via="probe" if res.get("id") == probe_id else "new_key")
    if not _verifies(ident.hmac_key, res):
        log.warning("rotation of %s: result %s verifies with neither key; ignored", device_id, res.get("id"))
        return None
    if res.get("id") == probe_id:  # probe answered under the old key: the node never switched
        return Outcome("refused", cmd_id, res.get("code") or "not_rotated",
                       "the node still uses the old key")
    if status == "done":
        ks.set_key(device_id, pending)
        return Outcome("committed", cmd_id, via="done")
    if status in ("rejected", "failed"):
        return Outcome("refused", cmd_id, res.get("code"), res.get("detail"))
    return None  # accepted: wait for the final result


async def rotate_over_mqtt(link: Any, ks: Any, device_id: str, timeout: float = 10.0, ttl_ms: int = 60000,
                           op: str | None = None) -> Outcome:
    """Send the rotation over ``link`` (gateway/mqtt.MQTTLink, gateway login) and wait for proof."""
    ident = ks.get(device_id)
    if ident is None:
        raise RotationError(f"unknown device {device_id!r}: no key in the key store")
    q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def on_res(topic: str, payload: bytes, retained: bool) -> None:
        try:
            q.put_nowait(messages.decode("res", payload))
        except (MessageError, ValueError):
            pass

    res_topic = topics.topic(ident.site, device_id, "res")
    link.subscribe(res_topic, on_res, 1)
    try:  # the node's answer is only seen once the broker acknowledged the subscription
        await link.subscribed(timeout)
    except MQTTError as e:
        raise RotationError(f"subscription to {res_topic}: {e}") from None
    if res_topic in link.refused:
        raise RotationError(f"the broker refused the subscription to {res_topic} (check its ACL)")
    cmd = rotation_command(ks, device_id, ttl_ms=ttl_ms, op=op)
    cmd_topic = topics.topic(ident.site, device_id, "cmd")
    await link.publish(cmd_topic, messages.encode("cmd", cmd), 1, timeout=timeout)

    async def collect(probe_id: str | None, wait: float) -> Outcome | None:
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while (left := end - loop.time()) > 0:
            try:
                async with asyncio.timeout(left):  # not wait_for: on 3.11 it can lose a cancel (mqtt.py)
                    res = await q.get()
            except TimeoutError:
                break
            out = judge(ks, device_id, cmd["id"], res, probe_id)
            if out is not None:
                return out
        return None

    out = await collect(None, timeout)
    if out is not None:
        return out
    probe = probe_command(ks, device_id)
    await link.publish(cmd_topic, messages.encode("cmd", probe), 1, timeout=timeout)
    out = await collect(probe["id"], timeout)
    if out is not None:
        return out
    return Outcome("unconfirmed", cmd["id"], "no_response",
                   "no answer to the rotation or the probe; the new key stays pending (run rotate-key again)")


def outcome_json(o: Outcome, device_id: str) -> str:
    return json.dumps({"device": device_id, **{k: v for k, v in vars(o).items() if v is not None}})
