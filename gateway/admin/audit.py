"""Who did it: attribution and journaling for the admin tools that run on the gateway host.

Theory of operation: ``lookout provision|pki|broker-config|rotate-key`` act on the key store, the site CA and the
broker files directly (they need the host's files, not the operator API), so the gateway never sees them. They
journal what they did themselves, as kind ``admin``, into the gateway's journal (``DATA_DIR/journal.db``;
gateway/journal.py ``record`` is safe while the gateway runs: the running gateway chains the row).

Who: ``--operator ID`` names an operator from the key store (``lookout provision operator``) whose role is
``admin``; it is checked against the key store, and an unknown id or a non-admin is refused (exit 2) and that
refusal journaled as ``security``. Without ``--operator`` the actor is ``admin:<OS user>``. No token is asked for:
these tools need write access to the gateway's data directory, which is the real gate, and the OS user is
recorded in every entry's detail (``os_user``) either way, so a claimed id never hides who ran the tool.

What is journaled: the action, the identity it concerns (``device``), the outcome, public facts (site, kind,
role, certificate fingerprint). Never keys, tokens, passwords or wrapped keys.

The journal is opened before the action: if it cannot be written the tool refuses to act (exit 2) rather than
act unrecorded.
"""

from __future__ import annotations

import getpass
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ADMIN_PREFIX = "admin:"


class AuditError(Exception):
    """The action may not run: the journal is not writable, or the operator is unknown or not an admin."""


class NotJournaled(AuditError):
    """The action was done but its journal entry could not be written."""


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers) and no LOGNAME/USER
        return f"uid{os.getuid()}"


def default_operator() -> str:
    return ADMIN_PREFIX + os_user()


class AdminJournal:
    """``AdminJournal(path, operator, tool)``: check the journal can be written; ``record`` after acting."""

    def __init__(self, path: str | os.PathLike, operator: str | None, tool: str):
        from lookout.gateway.core.journal import Journal

        self.path = Path(path)
        self.explicit = operator is not None
        self.operator = operator if operator is not None else default_operator()
        self.tool = tool
        self.os_user = os_user()
        try:
            Journal(self.path, owner_wait_s=0).close()  # creates the file/tables; chains any queued rows
        except (OSError, sqlite3.Error) as e:
            raise AuditError(f"cannot write the duty journal {self.path}: {e} (admin actions are journaled; "
                             "use --data-dir or --journal)") from None

    def check_operator(self, ks: Any) -> None:
        """An explicit ``--operator`` must be an admin in the key store; refusals are journaled."""
        if not self.explicit:
            return
        op = ks.get_operator(self.operator)
        if op is not None and op.role == "admin":
            return
        why = "unknown operator" if op is None else f"operator role is {op.role!r}, not 'admin'"
        self.record(f"{self.tool} by {self.operator} refused: {why}", kind="security",
                    detail={"outcome": "refused", "reason": why})
        raise AuditError(f"{self.tool} refused: {why} {self.operator!r} (--operator must name an admin "
                         "operator of this key store; omit it to act as admin:<OS user>)")

    def record(self, summary: str, *, device: str | None = None, detail: dict[str, Any] | None = None,
               kind: str = "admin") -> None:
        from lookout.gateway.core.journal import record

        d = {"tool": self.tool, "os_user": self.os_user, **(detail or {})}
        try:
            record(self.path, kind, summary, operator=self.operator, device=device, detail=d)
        except (OSError, sqlite3.Error, RuntimeError) as e:  # acted, but not recorded: say so loudly
            log.error("NOT JOURNALED (%s): %s", e, summary)
            raise NotJournaled(f"the action was done but could not be journaled in {self.path}: {e}") from None
