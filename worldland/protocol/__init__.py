"""The wire protocol of the deployed WorldLand Go agent: messages (pydantic), stream and group names, ids
and their patterns, the 30 s / 120 s timing.

Imports nothing of the project (checked by import-linter, ``pyproject.toml``).
"""
