"""Operator passwords for the web console: scrypt hashes, policy, constant-time verification.

Theory of operation: an operator's token is 256 random bits, so the key store keeps a plain SHA-256 of it; a
password chosen by a person is not, so it is stretched with scrypt (RFC 7914; stdlib ``hashlib.scrypt``) with a
random 16-byte salt. The stored form names its parameters (``scrypt$N$r$p$salt$hash``, base64 without padding),
so they can be raised later without invalidating existing hashes. N = 2**14, r = 8 (16 MiB, ~50 ms on one core)
is the interactive-login setting of RFC 7914 §2 / OWASP's password storage sheet. A password never reaches a log,
the journal or an exception message.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

SCRYPT_N = 2 ** 14
SCRYPT_R = 8
SCRYPT_P = 1
DKLEN = 32
MIN_LEN = 8
MAX_LEN = 128


class PasswordError(ValueError):
    """The password does not meet the policy (the message says which rule, never the password)."""


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s + "=" * (-len(s) % 4))


def check_policy(password: str, op_id: str = "") -> None:
    if not isinstance(password, str) or not MIN_LEN <= len(password) <= MAX_LEN:
        raise PasswordError(f"a password needs {MIN_LEN}..{MAX_LEN} characters")
    if op_id and password.lower() == op_id.lower():
        raise PasswordError("the password must not be the operator id")
    if len(set(password)) < 4:
        raise PasswordError("the password needs at least 4 different characters")


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P, dklen=DKLEN,
                        maxmem=256 * n * SCRYPT_R)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(dk)}"


def verify_password(password: str, stored: str | None) -> bool:
    """True if ``password`` matches ``stored``; False for anything malformed (never raises on bad input)."""
    if not stored or not isinstance(password, str) or len(password) > MAX_LEN:
        return False
    try:
        scheme, n_s, r_s, p_s, salt_s, dk_s = stored.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        if scheme != "scrypt" or not (2 ** 10 <= n <= 2 ** 20 and 1 <= r <= 32 and 1 <= p <= 16):
            return False
        salt, want = _unb64(salt_s), _unb64(dk_s)
        got = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(want), maxmem=256 * n * r)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


__all__ = ["PasswordError", "check_policy", "hash_password", "verify_password"]
