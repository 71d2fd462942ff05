"""Debian version ordering (deb-version(7)), pure: used to pick the newest kernel build."""

from __future__ import annotations

import functools
import re

_EPOCH = re.compile(r"^(\d+):")


def _split(version: str) -> tuple[int, str, str]:
    epoch = 0
    m = _EPOCH.match(version)
    if m:
        epoch = int(m.group(1))
        version = version[m.end() :]
    upstream, sep, revision = version.rpartition("-")
    if not sep:
        upstream, revision = version, ""
    return epoch, upstream, revision


def _order(ch: str) -> int:
    # '~' sorts before everything, even the end of the string; letters before non-letters.
    if ch == "~":
        return -1
    if ch.isalpha():
        return ord(ch)
    return ord(ch) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        # non-digit prefix, compared character by character with the special order
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ca = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            cb = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ca != cb:
                return -1 if ca < cb else 1
            if i < len(a) and not a[i].isdigit():
                i += 1
            if j < len(b) and not b[j].isdigit():
                j += 1
        na = ""
        while i < len(a) and a[i].isdigit():
            na += a[i]
            i += 1
        nb = ""
        while j < len(b) and b[j].isdigit():
            nb += b[j]
            j += 1
        da, db = int(na or "0"), int(nb or "0")
        if da != db:
            return -1 if da < db else 1
    return 0


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian orders versions a and b (same answers as dpkg --compare-versions)."""
    ea, ua, ra = _split(a)
    eb, ub, rb = _split(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


sort_key = functools.cmp_to_key(compare)
