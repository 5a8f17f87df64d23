"""Marking provider data unsafe before Ansible sees it (DESIGN.md, "Provider data is hostile")."""

from __future__ import annotations

from typing import Any

from ansible.utils.unsafe_proxy import wrap_var

_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})


def unsafe(value: Any) -> Any:
    """``wrap_var(value)``: every string in it marked unsafe, at a fraction of wrap_var's cost.

    In ansible-core >= 2.19 (which this collection requires) unsafe means "not tagged as trusted":
    ``wrap_var`` strips ``TrustedAsTemplate`` from each string, and a plain ``str``, the only kind
    of string JSON decoding or Redis gives, carries no tags at all. So a value made only of plain
    scalars, dicts and lists is already unsafe and is returned as it is; anything else (a tagged
    string, a tuple, ...) goes through ``wrap_var`` itself. Over 10,000 providers ``wrap_var`` on
    everything took longer than reading them from Redis.
    """
    return value if _plain(value) else wrap_var(value)


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or (type(item) not in _PLAIN_SCALARS and not _plain(item)):
                return False
        return True
    if kind is list:
        return all(type(item) in _PLAIN_SCALARS or _plain(item) for item in value)
    return kind in _PLAIN_SCALARS
