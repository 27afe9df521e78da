"""Refusals counted per source address and per deployment token, and the limits on them.

Refused activations and forged device tokens are both counted in ``activation_failures``
(in the database, so every replica sees the same counts). Past a limit the caller answers
429 ``rate_limited``, an ``activation_brute_force`` alert is raised (refreshed, not
duplicated, while it lasts) and the refused attempt is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, ScalarSelect, bindparam, func, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from fleetkeep.alerts.models import Severity
from fleetkeep.alerts.service import raise_alert
from fleetkeep.audit.service import Actor, record
from fleetkeep.db import utcnow
from fleetkeep.deployment.models import ActivationFailure
from fleetkeep.errors import RateLimited
from fleetkeep.settings import Settings


@dataclass(frozen=True)
class LimitExceeded:
    kind: str  # "source" or "token"
    key: str
    failures: int
    window_seconds: int

    def error(self) -> RateLimited:
        return RateLimited(
            f"too many refused attempts for this {self.kind}; try again later",
            retry_after=self.window_seconds,
        )


# Refusals in the window by the request's source and by a token, as scalar subqueries that
# activation's first read carries along (no round trip of their own). Built once: the
# parameters come from ``failure_params``.
FAILURES_BY_SOURCE = (
    select(func.count())
    .where(
        ActivationFailure.at >= bindparam("failures_since"),
        ActivationFailure.source == bindparam("failures_source"),
    )
    .scalar_subquery()
)


def failures_by_token(
    token_id: ColumnElement[int] | InstrumentedAttribute[int],
) -> ScalarSelect[int]:
    return (
        select(func.count())
        .where(
            ActivationFailure.at >= bindparam("failures_since"),
            ActivationFailure.token_id == token_id,
        )
        .scalar_subquery()
    )


_COUNTS = select(FAILURES_BY_SOURCE, failures_by_token(bindparam("failures_token_id")))


def failure_params(window_seconds: int, source: str) -> dict[str, Any]:
    since = utcnow() - timedelta(seconds=window_seconds)
    return {"failures_since": since, "failures_source": source}


def exceeded_limit(
    session: Session, settings: Settings, source: str, token_id: int | None
) -> LimitExceeded | None:
    """The limit this source (or deployment token) is over, if any; one query for both."""
    params = failure_params(settings.activation_failure_window_seconds, source)
    params["failures_token_id"] = token_id
    by_source, by_token = session.execute(_COUNTS, params).one()
    return over_limit(settings, source, token_id, by_source, by_token)


def over_limit(
    settings: Settings, source: str, token_id: int | None, by_source: int, by_token: int
) -> LimitExceeded | None:
    """The rule, given the counts of refusals in the window."""
    window = settings.activation_failure_window_seconds
    if by_source >= settings.activation_max_failures:
        return LimitExceeded("source", source, by_source, window)
    if token_id is not None and by_token >= settings.activation_max_failures_per_token:
        return LimitExceeded("token", str(token_id), by_token, window)
    return None


def record_limited(session: Session, actor: Actor, limit: LimitExceeded, action: str) -> None:
    """Raise (or refresh) the brute-force alert and audit the attempt that was turned away.

    The attempt itself is not counted: the window then ends when the caller was told it would.
    """
    raise_alert(
        session,
        "activation_brute_force",
        f"{limit.kind}:{limit.key}",
        Severity.WARNING,
        f"{limit.failures} refused attempts from {limit.kind} {limit.key} in "
        f"{limit.window_seconds} s; further attempts are refused until the window passes",
        {
            "kind": limit.kind,
            "key": limit.key,
            "failures": limit.failures,
            "window_seconds": limit.window_seconds,
        },
    )
    record(
        session,
        actor,
        action,
        "device",
        "",
        after={"code": "rate_limited", "kind": limit.kind, "key": limit.key},
    )
    session.flush()


def count_failure(session: Session, source: str, code: str, token_id: int | None = None) -> None:
    session.add(ActivationFailure(source=source[:64], token_id=token_id, code=code))


def refuse_device_token(
    session: Session, settings: Settings, source: str, reason: str
) -> RateLimited | None:
    """A device token that matches no device (forged, guessed or superseded): audited and
    counted against the source. Returns the 429 to answer instead once the source is over
    its limit. The caller commits."""
    actor = Actor(f"device@{source}", source_ip=source)
    limit = exceeded_limit(session, settings, source, None)
    if limit is not None:
        record_limited(session, actor, limit, "device.token_refused")
        return limit.error()
    count_failure(session, source, "device_token_invalid")
    record(session, actor, "device.token_refused", "device", "", after={"code": reason})
    session.flush()
    return None
