"""The backup parts of a profile's ``policy`` dict: validated on write, defaults on read.

``{"retention": {"daily": 7, "weekly": 4, "monthly": 12}}`` keeps the last snapshot of each
of the last 7 days, 4 ISO weeks and 12 months per device, plus each device's latest. Missing
fields take the library's defaults. Imports nothing from identity, so identity can call it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetkeep.backup.retention import RetentionPolicy
from fleetkeep.errors import InvalidInput

_DEFAULT = RetentionPolicy()
_MAX_DAYS = 3660  # ten years of daily snapshots is already more than anyone restores from


class RetentionFields(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    daily: int = Field(default=_DEFAULT.daily, ge=0, le=_MAX_DAYS)
    weekly: int = Field(default=_DEFAULT.weekly, ge=0, le=_MAX_DAYS // 7)
    monthly: int = Field(default=_DEFAULT.monthly, ge=0, le=_MAX_DAYS // 30)


def validate_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """The policy with its ``retention`` checked and normalised; other keys unchanged."""
    if not isinstance(policy, dict):
        raise InvalidInput("policy must be an object", field="policy")
    if "retention" not in policy:
        return policy
    try:
        fields = RetentionFields.model_validate(policy["retention"])
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in ("retention", *problem["loc"]))
        raise InvalidInput(f"policy.{where}: {problem['msg']}", field=f"policy.{where}") from None
    return {**policy, "retention": fields.model_dump(exclude_unset=True)}


def retention_policy(policy: dict[str, Any]) -> RetentionPolicy:
    """The retention a profile's (already validated) policy asks for."""
    fields = RetentionFields.model_validate(policy.get("retention") or {})
    return RetentionPolicy(daily=fields.daily, weekly=fields.weekly, monthly=fields.monthly)
