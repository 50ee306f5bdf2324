"""The console's two languages: zh-CN (the township staff's) and English, one JSON catalog each.

Theory of operation: ``gateway/web/i18n/<lang>.json`` maps a key to its text. Templates get the catalog of the
session's language as ``t`` (``{{ t.nav_map }}``, escaped like any value); the browser gets the same catalog in
the page's boot data for what its scripts draw (``LK.t("state_online")``). Both catalogs must have the same keys
(tests/test_web_console.py checks it, and that every key the templates and scripts use exists). A missing key
renders as the key itself, never as an error on the duty screen.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

LANGS = ("zh-CN", "en")
DIR = Path(__file__).with_name("i18n")


@cache
def catalog(lang: str) -> dict[str, str]:
    if lang not in LANGS:
        raise ValueError(f"language {lang!r} not one of {', '.join(LANGS)}")
    data = json.loads((DIR / f"{lang}.json").read_text(encoding="utf-8"))
    return {str(k): str(v) for k, v in data.items()}


class Catalog(dict):
    """``t.key`` in templates; an unknown key shows as itself."""

    def __getattr__(self, key: str) -> str:
        return self.get(key, key)

    def __missing__(self, key: str) -> str:
        return key


def for_lang(lang: str) -> Catalog:
    return Catalog(catalog(lang if lang in LANGS else LANGS[0]))


__all__ = ["LANGS", "Catalog", "catalog", "for_lang"]
