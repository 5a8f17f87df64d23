"""The agent's settings: a YAML file (default ``/etc/worldland/provider.yml``), each setting overridable
by a flag and an environment variable (flag > environment > file > default).

A setting that is not valid is one line naming it and the reason (``SettingsError``; the command exits 2).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worldland.domain.names import UnknownGpuModel, canonical_gpu_model
from worldland.protocol.ids import check_provider_id
from worldland.protocol.messages import MAX_PRICE_PER_HOUR, check_wallet_address

DEFAULT_CONFIG = Path("/etc/worldland/provider.yml")
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
PROVIDER_ID_FILE = "provider-id"  # next to the config: the id generated on first use, kept for good
ENV_PREFIX = "WORLDLAND_"
# Setting -> environment variable (WORLDLAND_REDIS_URL is the control plane's name too).
ENVIRONMENT = {
    name: ENV_PREFIX + name.upper()
    for name in ("provider_id", "wallet_addr", "redis_url", "public_ip", "heartbeat_interval", "data_path")
}


class SettingsError(ValueError):
    """A setting is missing or not valid; the message names it."""


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    provider_id: str
    wallet_addr: str | None = None
    redis_url: str = DEFAULT_REDIS_URL
    public_ip: str | None = None
    heartbeat_interval: Annotated[float, Field(ge=1, le=3600)] = 30.0
    gpu_prices_per_hour: dict[str, Annotated[float, Field(ge=0, le=MAX_PRICE_PER_HOUR)]] = {}
    data_path: Path = Path("/")

    @field_validator("provider_id")
    @classmethod
    def _provider_id(cls, value: str) -> str:
        return check_provider_id(value)

    @field_validator("wallet_addr")
    @classmethod
    def _wallet(cls, value: str | None) -> str | None:
        return None if value is None else check_wallet_address(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("gpu_prices_per_hour")
    @classmethod
    def _canonical_prices(cls, prices: dict[str, float]) -> dict[str, float]:
        try:
            return {canonical_gpu_model(name): price for name, price in prices.items()}
        except UnknownGpuModel as exc:
            raise ValueError(str(exc)) from None

    def require_wallet(self) -> str:
        if self.wallet_addr is None:
            where = f"in the config, --wallet-addr or {ENVIRONMENT['wallet_addr']}"
            raise SettingsError(f"wallet_addr: required to register ({where})")
        return self.wallet_addr


def _read_file(path: Path, explicit: bool) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise SettingsError(f"config: {path} does not exist") from None
        return {}
    except OSError as exc:
        raise SettingsError(f"config: cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SettingsError(f"config: {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config: {path} must be a mapping of settings")
    return data


def stored_provider_id(directory: Path, persist: bool = True) -> str:
    """The id generated the first time and kept next to the config, so the machine keeps its identity
    (``persist`` False: generated but not kept, for a dry run)."""
    path = directory / PROVIDER_ID_FILE
    try:
        return path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SettingsError(f"provider_id: cannot read {path}: {exc.strerror}") from None
    new = str(uuid.uuid4())
    if not persist:
        return new
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(new + "\n")
    except FileExistsError:  # another process wrote it first: use that one
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(
            f"provider_id: not set and cannot store a generated one in {path}: {exc.strerror}"
        ) from None
    return new


def load_settings(
    config: Path | None, overrides: dict[str, Any], *, must_exist: bool = True, persist_id: bool = True
) -> AgentSettings:
    """File (``config``, else the default if present), then the environment, then ``overrides`` (flags;
    None values are left out). A ``config`` named but missing is an error unless not ``must_exist``
    (``install`` creates it)."""
    path = config or DEFAULT_CONFIG
    values = _read_file(path, explicit=config is not None and must_exist)
    for name, variable in ENVIRONMENT.items():
        if os.environ.get(variable):
            values[name] = os.environ[variable]
    values.update({k: v for k, v in overrides.items() if v is not None})
    if not values.get("provider_id"):
        values["provider_id"] = stored_provider_id(path.parent, persist_id)
    if isinstance(values.get("heartbeat_interval"), str):
        try:
            values["heartbeat_interval"] = float(values["heartbeat_interval"])
        except ValueError:
            raise SettingsError(
                f"heartbeat_interval: {values['heartbeat_interval']!r} is not a number"
            ) from None
    try:
        return AgentSettings.model_validate(values)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or "config"
        reason = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            reason = f"not a setting (known: {', '.join(AgentSettings.model_fields)})"
        raise SettingsError(f"{field}: {reason}") from None
