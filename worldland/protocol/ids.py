"""Identifiers on the wire and in keys: provider ids and job ids, one pattern for both.

``\\Z`` (not ``$``) ends every pattern: ``$`` also matches before a final newline (``job-1\\n``).
"""

from __future__ import annotations

import re

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}\Z"
PROVIDER_ID_RE = re.compile(ID_PATTERN)
JOB_ID_RE = re.compile(ID_PATTERN)
ID_RULE = "must be 1 to 128 characters of letters, digits and . _ : -"


def check_provider_id(value: str) -> str:
    if not PROVIDER_ID_RE.match(value):
        raise ValueError(ID_RULE)
    return value


def is_job_id(value: object) -> bool:
    return isinstance(value, str) and bool(JOB_ID_RE.match(value))
