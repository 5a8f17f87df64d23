"""The approval policy: which valid registrations are approved at once, held for an operator, or refused.
Pure: the caller reads the file (``worldland listen --policy FILE``) and hands its text to ``from_yaml``::

    mode: auto                 # auto | manual (manual: providers wait in Pending for `worldland approve`)
    allow_private_ips: false   # labs and on-prem fleets set true
    allowed_gpu_models: []     # canonical names (any spelling is canonicalised); empty = any model
    min_gpus: 1
    max_gpu_price_per_hour: 10.0   # null = no limit
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worldland.domain.names import UnknownGpuModel, canonical_gpu_model
from worldland.domain.registration import ANY_MODEL, Registration
from worldland.protocol.messages import MAX_GPUS, MAX_PRICE_PER_HOUR


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
    def from_yaml(cls, text: str, source: str = "policy") -> ApprovalPolicy:
        """A policy from its YAML text; ``PolicyError`` names ``source`` (the file) and the field."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy {source}: not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise PolicyError(f"policy {source}: must be a mapping of settings")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            field = ".".join(str(p) for p in first["loc"]) or "policy"
            raise PolicyError(f"policy {source}: {field}: {first['msg']}") from None

    def refusals(self, request: Registration) -> list[str]:
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
            for model, price in sorted(request.gpu_prices().items()):
                if price > self.max_gpu_price_per_hour:
                    what = "gpu_price_per_hour" if model == ANY_MODEL else f"gpu_prices_per_hour[{model}]"
                    reasons.append(
                        f"capacity.{what}: {price} exceeds the policy maximum {self.max_gpu_price_per_hour}"
                    )
        return reasons

    def changes_needing_approval(self, approved: Registration, new: Registration) -> list[str]:
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
        old_prices, new_prices = approved.gpu_prices(), new.gpu_prices()
        for model, price in sorted(new_prices.items()):
            if model in old_prices and price > old_prices[model]:
                reasons.append(f"price {price}/h for {model}; {old_prices[model]}/h approved")
        return reasons
