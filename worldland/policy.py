"""The approval policy: which valid registrations are approved at once, held for an operator, or refused.

Loaded from a YAML file (``worldland listen --policy FILE``)::

    mode: auto                 # auto | manual (manual: providers wait in Pending for `worldland approve`)
    allow_private_ips: false   # labs and on-prem fleets set true
    allowed_gpu_models: []     # canonical names (any spelling is canonicalised); empty = any model
    min_gpus: 1
    max_gpu_price_per_hour: 10.0   # null = no limit
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worldland.models import MAX_GPUS, MAX_PRICE_PER_HOUR, RegistrationRequest
from worldland.names import UnknownGpuModel, canonical_gpu_model


class ApprovalMode(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class PolicyError(ValueError):
    """The policy file is unusable; the message names the file and the field."""


class ApprovalPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: ApprovalMode = ApprovalMode.MANUAL
    allow_private_ips: bool = False
    allowed_gpu_models: list[str] = []
    min_gpus: Annotated[int, Field(ge=0, le=MAX_GPUS)] = 1
    max_gpu_price_per_hour: Annotated[float, Field(ge=0, le=MAX_PRICE_PER_HOUR)] | None = None

    @field_validator("allowed_gpu_models")
    @classmethod
    def _canonical(cls, models: list[str]) -> list[str]:
        try:
            return sorted({canonical_gpu_model(m) for m in models})
        except UnknownGpuModel as exc:
            raise ValueError(f"{exc}; list GPU models such as RTX-4090") from None

    @classmethod
    def load(cls, path: str | Path) -> ApprovalPolicy:
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise PolicyError(f"policy {path}: cannot read: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy {path}: not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise PolicyError(f"policy {path}: must be a mapping of settings")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "policy"
            raise PolicyError(f"policy {path}: {field}: {first['msg']}") from None

    def refusals(self, request: RegistrationRequest) -> list[str]:
        """Why the policy refuses this (already valid) registration; empty when it does not."""
        reasons = []
        offered = request.offered_gpus()
        total = sum(offered.values())
        if total < self.min_gpus:
            reasons.append(f"spec.gpus: offers {total} GPU(s); the policy requires at least {self.min_gpus}")
        if self.allowed_gpu_models:
            refused = sorted(set(offered) - set(self.allowed_gpu_models))
            if refused:
                reasons.append(
                    f"spec.gpus: model(s) {', '.join(refused)} not accepted; "
                    f"accepted: {', '.join(self.allowed_gpu_models)}"
                )
        if self.max_gpu_price_per_hour is not None:
            for model, price in sorted(_prices(request).items()):
                if price > self.max_gpu_price_per_hour:
                    what = "gpu_price_per_hour" if model == "*" else f"gpu_prices_per_hour[{model}]"
                    reasons.append(
                        f"capacity.{what}: {price} exceeds the policy maximum {self.max_gpu_price_per_hour}"
                    )
        return reasons

    def changes_needing_approval(self, approved: RegistrationRequest, new: RegistrationRequest) -> list[str]:
        """What a re-registration of an approved provider adds that an operator has not approved.

        Under a manual policy, offering more than was approved needs a new approval: a GPU model not
        approved, more GPUs of a model, or a higher price per GPU hour. Offering less, and any change
        under an automatic policy (which the refusals above already checked), applies at once.
        """
        if self.mode is ApprovalMode.AUTO:
            return []
        reasons = []
        before, after = approved.offered_gpus(), new.offered_gpus()
        for model, count in sorted(after.items()):
            if count > before.get(model, 0):
                reasons.append(f"offers {count} {model} GPU(s); {before.get(model, 0)} approved")
        old_prices, new_prices = _prices(approved), _prices(new)
        for model, price in sorted(new_prices.items()):
            if model in old_prices and price > old_prices[model]:
                reasons.append(f"price {price}/h for {model}; {old_prices[model]}/h approved")
        return reasons


def _prices(request: RegistrationRequest) -> dict[str, float]:
    """Per-GPU-hour prices by canonical model ("*" for the one price of the seed's shape)."""
    prices = dict(request.capacity.prices_by_model())
    if request.capacity.gpu_price_per_hour is not None:
        prices.setdefault("*", request.capacity.gpu_price_per_hour)
    return prices
