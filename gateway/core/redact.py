"""Which command arguments are secret, and how they are taken out of anything the gateway writes down.

Theory of operation
-------------------
The duty journal refuses deletion and logs are copied around, so a secret written there is kept forever. The
node must still receive it (inside the signed command), so the gateway redacts *copies*: the journal detail of
a command and its results (``Command.summary``), the operator entry of a ``command`` request, and the stored row
of a command once it is final (its signed bytes are dropped then: no retry needs them any more).

Redaction follows a schema, not a guess at names: ``COMMAND_SECRETS`` lists, per command, the arguments that
are secret; ``set_config`` carries node-config keys, so its secret parts are the ``CONFIG_SECRETS`` paths of the
node config (docs/PROTOCOL.md §7), looked for in its top-level arguments and inside its ``patch`` (JSON text).
A ``patch`` that cannot be parsed is redacted whole: nobody can tell which part of it is secret. A node that
quotes a secret back in a result's ``detail`` (a validator naming the bad value) is scrubbed as well, by value.
"""

from __future__ import annotations

import json
from typing import Any

REDACTED = "<redacted>"

# paths in a node's config.json that hold secrets (provisioning writes them: gateway/admin/provision.py)
CONFIG_SECRETS: tuple[tuple[str, ...], ...] = (("key",), ("broker", "password"), ("wifi", "password"))

# per command: argument names whose value is secret; "config" = the arguments are node-config keys
COMMAND_SECRETS: dict[str, tuple[str, ...]] = {
    "rotate_key": ("key",),  # the new key wrapped with the old one: whoever holds the old key unwraps it
    "set_config": ("config",),
}


def command_args(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``args`` with the secret values of command ``name`` replaced by ``REDACTED``."""
    rule = COMMAND_SECRETS.get(name)
    if not rule or not isinstance(args, dict):
        return args
    if rule == ("config",):
        out = _config(args, CONFIG_SECRETS)
        if "patch" in args:
            obj = _parse(args["patch"])
            out["patch"] = REDACTED if obj is None else json.dumps(_config(obj, CONFIG_SECRETS), sort_keys=True,
                                                                   ensure_ascii=False)
        return out
    return {k: REDACTED if k in rule else v for k, v in args.items()}


def secret_values(name: str, args: dict[str, Any]) -> list[str]:
    """The secret strings inside ``args`` (to scrub text that may quote them back), longest first."""
    rule = COMMAND_SECRETS.get(name)
    if not rule or not isinstance(args, dict):
        return []
    if rule == ("config",):
        found = _collect({k: v for k, v in args.items() if k != "patch"}, CONFIG_SECRETS)
        if "patch" in args:
            obj = _parse(args["patch"])
            found += _strings(args["patch"]) if obj is None else _collect(obj, CONFIG_SECRETS)
    else:
        found = [s for k in rule if k in args for s in _strings(args[k])]
    return sorted({s for s in found if len(s) >= 4}, key=len, reverse=True)


def _parse(text: Any) -> dict[str, Any] | None:
    try:
        obj = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _below(paths: tuple[tuple[str, ...], ...] | list[tuple[str, ...]], k: str) -> list[tuple[str, ...]]:
    return [p[1:] for p in paths if p and p[0] == k]


def _config(value: Any, paths: Any) -> Any:
    """``value`` with the given paths below it redacted; a secret leaf, or a non-object where an object with
    secrets belongs, is redacted whole."""
    if any(not p for p in paths) or not isinstance(value, dict):
        return REDACTED
    return {k: _config(v, b) if (b := _below(paths, k)) else v for k, v in value.items()}


def _collect(value: Any, paths: Any) -> list[str]:
    if any(not p for p in paths) or not isinstance(value, dict):
        return _strings(value)
    return [s for k, v in value.items() if (b := _below(paths, k)) for s in _collect(v, b)]


def _strings(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, dict):
        return [s for x in v.values() for s in _strings(x)]
    if isinstance(v, list):
        return [s for x in v for s in _strings(x)]
    return []


def scrub(text: Any, secrets: list[str]) -> Any:
    """``text`` (a string, or a structure of them) with every occurrence of a secret replaced."""
    if not secrets:
        return text
    if isinstance(text, str):
        for s in secrets:
            text = text.replace(s, REDACTED)
        return text
    if isinstance(text, dict):
        return {k: scrub(v, secrets) for k, v in text.items()}
    if isinstance(text, list):
        return [scrub(v, secrets) for v in text]
    return text
