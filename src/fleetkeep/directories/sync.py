"""The source-agnostic sync engine (fetch → plan → apply) that every directory source feeds.

A source turns its entries into ``SourceUser`` objects. ``plan_sync`` compares them with the
users the directory owns (``users.source == "directory:<id>"``, matched by ``external_id``) and
decides, per entry, one action; ``apply_plan`` writes the whole plan in bulk in the caller's
transaction. ``run_sync`` wraps both with history (``SyncRun``), the safety hold and alerts.

Rules (documented for admins in the same words):

- The first *import* mapping by priority that matches an entry decides its profile, storage
  region and quota; an entry no import mapping matches is out of scope.
- Entries without a valid email are skipped with the reason. Several entries with the same
  email: the entry already linked to a user with that email keeps it; otherwise an enabled
  entry beats a disabled one, then the smallest external id wins; the others are skipped as
  ``duplicate_email``. A multi-valued mail keeps the user's current address when it is still
  among the values, else the source's primary one.
- A sync never deletes. With auto-preserve on, a user it owns who vanished, no longer matches
  a mapping or is disabled at the source is preserved (``preserved_by = directory:<id>``);
  when the entry is back and enabled, only users the directory itself preserved are
  reactivated, never users an admin preserved. Deleted users are left alone.
- With auto-update on, email, username, display name, profile and region follow the source;
  DN and UPN always do (they identify the entry).
- A plan preserving more than ``hold_above_count`` users or ``hold_above_percent`` % of the
  active users the directory owns is held until an admin confirms it.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import gc
import itertools
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import String, and_, cast, delete, func, literal_column, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fleetkeep.alerts.models import Severity
from fleetkeep.alerts.service import raise_alert, resolve_alert
from fleetkeep.audit.service import Actor, record_from_select, record_many
from fleetkeep.db import copy_rows, insert_rows, transaction, utcnow
from fleetkeep.directories.mappings import Candidate, Rule, group_closure, normalize_dn, parse_rule
from fleetkeep.directories.models import (
    DeploymentCacheEntry,
    Directory,
    Mapping,
    MappingPurpose,
    SyncRun,
    SyncStatus,
)
from fleetkeep.errors import Conflict, FleetkeepError, InvalidInput, NotFound
from fleetkeep.identity.models import Profile, User, UserState
from fleetkeep.identity.service import normalize_email, validate_email

REPORT_LIMIT = 1000
_CHUNK = 500


@dataclass(slots=True)
class SourceUser:
    """One user entry as a source sees it. ``groups`` are direct groups (DNs or ids)."""

    external_id: str
    email: str | None = None
    username: str = ""
    display_name: str = ""
    upn: str | None = None
    dn: str = ""
    disabled: bool = False
    attributes: dict[str, list[str]] = field(default_factory=dict)
    # Any collection: a sync holds 100,000s of these, and a small tuple is a quarter of a set.
    groups: Collection[str] = ()
    other_emails: tuple[str, ...] = ()
    sam_account_name: str = ""
    domain: str = ""


@dataclass
class FetchResult:
    """Everything a source fetched: the users and, for nested groups, each group's parents."""

    users: list[SourceUser]
    group_parents: dict[str, set[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class Action(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    PRESERVE = "preserve"
    REACTIVATE = "reactivate"
    SKIP = "skip"
    LEAVE = "leave"


@dataclass(slots=True)
class Change:
    """One planned action. ``values`` are the new fields (all of them for a create)."""

    action: Action
    external_id: str
    email: str | None = None
    dn: str = ""
    reason: str = ""
    user_id: int | None = None
    mapping_id: int | None = None
    values: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    directory_id: int
    source: str
    complete: bool
    seen: int
    owned_active: int
    changes: list[Change] = field(default_factory=list)
    unchanged: int = 0
    out_of_scope: int = 0
    warnings: list[str] = field(default_factory=list)
    # Rows the deployment cache should hold after apply (None: leave the cache as it is).
    deployment: list[dict[str, Any]] | None = None
    hold_reason: str | None = None

    def count(self, action: Action) -> int:
        return sum(1 for c in self.changes if c.action is action)

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(c.action.value for c in self.changes)
        return {a.value: counted.get(a.value, 0) for a in Action if a is not Action.LEAVE} | {
            "unchanged": self.unchanged,
            "out_of_scope": self.out_of_scope,
        }

    def report(self) -> dict[str, Any]:
        """What a person reads: counts, skipped entries with reasons, warnings (capped)."""
        listed = [
            {
                "action": c.action.value,
                "external_id": c.external_id,
                "email": c.email,
                "dn": c.dn,
                "reason": c.reason,
                "user_id": c.user_id,
            }
            for c in self.changes[:REPORT_LIMIT]
        ]
        return {
            "counts": self.counts,
            "changes": listed,
            "truncated": len(self.changes) > REPORT_LIMIT,
            "warnings": self.warnings[:REPORT_LIMIT],
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["changes"] = [asdict(c) | {"action": c.action.value} for c in self.changes]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        changes = [Change(**(c | {"action": Action(c["action"])})) for c in data["changes"]]
        return cls(**(data | {"changes": changes}))


# Planning -------------------------------------------------------------------------------------


class _Owned(NamedTuple):
    """A user the directory owns, as planning reads it: the row itself (100,000s are read)."""

    id: int
    stored_email: str | None  # None when it is email_normalized (most are): saves a string
    email_normalized: str
    username: str
    display_name: str
    state: str  # a UserState value; compared with ==
    preserved_by: str | None
    profile_id: int
    storage_region_id: int
    dn: str | None
    upn: str | None
    external_id: str

    @property
    def email(self) -> str:
        return self.email_normalized if self.stored_email is None else self.stored_email


@dataclass(frozen=True)
class CompiledMapping:
    mapping_id: int
    purpose: MappingPurpose
    rule: Rule
    profile_id: int
    storage_region_id: int
    quota_value: int | None
    quota_unit: str | None
    auto_import: bool

    @classmethod
    def of(cls, m: Any, purpose: MappingPurpose, rule: Rule) -> CompiledMapping:
        """From a mapping row: an ORM ``Mapping`` or a Core row with its column names."""
        return cls(
            m.id,
            purpose,
            rule,
            m.profile_id,
            m.storage_region_id,
            m.quota_value,
            None if m.quota_unit is None else str(m.quota_unit),
            m.auto_import,
        )


def compiled_mappings(session: Session, directory_id: int) -> list[CompiledMapping]:
    """The directory's mappings in decision order (priority, then id)."""
    rows = session.scalars(
        select(Mapping)
        .where(Mapping.directory_id == directory_id)
        .order_by(Mapping.priority, Mapping.id)
    )
    return [CompiledMapping.of(m, MappingPurpose(m.purpose), parse_rule(m.rule)) for m in rows]


_Decision = tuple["CompiledMapping | None", "CompiledMapping | None"]


def _decider(
    imports: Sequence[CompiledMapping],
    deployments: Sequence[CompiledMapping],
    closure: dict[str, frozenset[str]],
) -> Callable[[SourceUser], _Decision]:
    """(deployment mapping, import mapping) for an entry, each the first that matches.

    Group, OU and "all" rules look only at an entry's groups and at the parent of its
    normalised DN (when the DN holds no escapes, its first comma ends the first RDN), so with
    only such rules the decision is worked out once per (parent, groups) rather than per
    entry: thousands of users share a few hundred of them.
    """

    def evaluate(user: SourceUser) -> _Decision:
        entry = candidate(user, closure)
        return (
            first_match(deployments, entry) if deployments else None,
            first_match(imports, entry) if imports else None,
        )

    if any(m.rule.type not in _STRUCTURAL_RULES for m in (*imports, *deployments)):
        return evaluate
    decisions: dict[tuple[str, tuple[str, ...]], _Decision] = {}

    def decide(user: SourceUser) -> _Decision:
        dn = normalize_dn(user.dn)
        if "\\" in dn:
            return evaluate(user)
        key = (dn.partition(",")[2], tuple(user.groups))
        found = decisions.get(key)
        if found is None:
            found = decisions[key] = evaluate(user)
        return found

    return decide


_STRUCTURAL_RULES = frozenset({"all", "group", "ou"})


def first_match(mappings: Sequence[CompiledMapping], entry: Candidate) -> CompiledMapping | None:
    for mapping in mappings:
        if mapping.rule.matches(entry):
            return mapping
    return None


def candidate(user: SourceUser, closure: dict[str, frozenset[str]]) -> Candidate:
    groups = frozenset(map(_group_key, user.groups))
    return Candidate(user.dn, user.attributes, groups, closure)


# Thousands of users share a few hundred groups: normalise each group DN once.
_group_key = functools.lru_cache(maxsize=65536)(normalize_dn)


def plan_sync(
    session: Session,
    directory: Directory,
    fetched: Sequence[SourceUser],
    *,
    group_parents: dict[str, set[str]] | None = None,
    complete: bool = True,
) -> Plan:
    """Decide what a sync would do. ``complete=False`` (a push of some users, e.g. SCIM) never
    treats absent users as vanished and leaves the deployment cache alone."""
    source = directory.source
    mappings = compiled_mappings(session, directory.id)
    imports = [m for m in mappings if m.purpose is MappingPurpose.IMPORT]
    deployments = [m for m in mappings if m.purpose is MappingPurpose.DEPLOYMENT]
    nested = any(m.rule.needs_nested_groups for m in mappings)
    closure = group_closure(group_parents) if nested and group_parents else {}
    owned = _owned_users(session, source)
    profile_quota = {
        p.id: (p.default_quota_value, str(p.default_quota_unit))
        for p in session.scalars(select(Profile))
    }
    plan = Plan(
        directory.id,
        source,
        complete,
        seen=len(fetched),
        owned_active=sum(1 for o in owned.values() if o.state == UserState.ACTIVE),
    )

    # Pass 1: scope, mapping and chosen email (and its normalised key) for every entry.
    scoped: list[_Scoped] = []
    settled: dict[str, SourceUser] = {}  # unchanged entries, by their email key
    auto_update = directory.auto_update  # read once: an ORM attribute costs per access
    seen_ids: set[str] = set()
    deployment_rows: list[dict[str, Any]] = []
    decide = _decider(imports, deployments, closure)
    active = UserState.ACTIVE
    for user in fetched:
        external_id = user.external_id
        if external_id in seen_ids:
            plan.warnings.append(f"entry {user.dn or external_id} was returned twice")
            continue
        seen_ids.add(external_id)
        existing = owned.get(external_id)
        deploy, mapping = decide(user)
        if deploy is not None and not user.disabled:
            deployment_rows.append(_deployment_row(directory, deploy, user))
        if mapping is None:
            if existing is not None and existing.state == active:
                _preserve_or_leave(plan, directory, external_id, existing, "no_mapping")
            elif existing is None:
                plan.out_of_scope += 1
            else:
                plan.unchanged += 1
            continue
        email = user.email
        if (
            existing is not None
            and email
            and not user.other_emails
            and (key := email.strip().lower()) == existing.email_normalized
        ):
            # A re-sync's common case, as _choose_email decides it: the address it already has.
            email, problem = email.strip(), ""
            if (
                key
                and not user.disabled
                and existing.state == active
                and _unchanged(auto_update, user, email, mapping, existing)
            ):
                # Settled here. The entry keeps its address: no other entry can outrank the
                # one linked to the user who has it.
                settled[key] = user
                plan.unchanged += 1
                continue
        else:
            email, problem = _choose_email(user, existing)
            key = normalize_email(email) if email and not problem else ""
        scoped.append((user, mapping, email, problem, key, existing))

    winners = _email_winners(scoped, owned, settled)
    email_holders = _email_holders(session, scoped, winners)
    planned_email: dict[int, str] = {}
    if directory.auto_update:
        for user, _mapping, email, _problem, key, existing in scoped:
            # Only address changes matter to _email_free (who frees an address for whom).
            if existing is None or not key or key == existing.email_normalized:
                continue
            if winners.get(key) is user:
                planned_email[existing.id] = email  # type: ignore[assignment]

    # Pass 2: one action per scoped entry.
    for user, mapping, email, problem, key, existing in scoped:
        base = Change(Action.SKIP, user.external_id, email, user.dn, mapping_id=mapping.mapping_id)
        if user.disabled:
            if existing is not None and existing.state == UserState.ACTIVE:
                _preserve_or_leave(plan, directory, user.external_id, existing, "disabled")
            elif existing is None:
                plan.changes.append(_with(base, reason="disabled"))
            else:
                plan.unchanged += 1
            continue
        if problem:
            plan.changes.append(_with(base, reason=problem, user_id=existing and existing.id))
            continue
        assert email is not None
        winner = winners.get(key)
        if winner is not user:
            assert winner is not None
            plan.changes.append(
                _with(
                    base,
                    reason=f"duplicate_email: kept for {winner.dn or winner.external_id}",
                    user_id=existing and existing.id,
                )
            )
            continue
        if (
            existing is not None
            and existing.state == UserState.ACTIVE
            and key == existing.email_normalized
        ):
            # The common case of a re-sync: the user keeps its address.
            if _unchanged(auto_update, user, email, mapping, existing):
                plan.unchanged += 1
                continue
            email_free = True
        else:
            email_free = _email_free(key, email_holders.get(key), existing, owned, planned_email)
        if existing is None:
            if not mapping.auto_import:
                plan.changes.append(_with(base, reason="not_auto_import"))
            elif not email_free:
                plan.changes.append(_with(base, reason="email_in_use"))
            else:
                plan.changes.append(_create(directory, user, email, mapping, profile_quota))
            continue
        _plan_existing(plan, directory, user, email, email_free, mapping, existing)

    if complete:
        for external_id, existing in owned.items():
            if external_id not in seen_ids and existing.state == UserState.ACTIVE:
                _preserve_or_leave(plan, directory, external_id, existing, "vanished")
        plan.deployment = deployment_rows
    plan.hold_reason = _hold_reason(directory, plan)
    return plan


# An entry as pass 1 leaves it: mapping, chosen email, problem, email key, owned user.
_Scoped = tuple[SourceUser, CompiledMapping, str | None, str, str, "_Owned | None"]
# Above this many addresses, reading every user's address beats IN lists.
_HOLDERS_BY_SCAN = 5000


def _email_holders(
    session: Session, scoped: list[_Scoped], winners: dict[str, SourceUser]
) -> dict[str, int]:
    """Who holds the addresses this plan wants to give out (new users, changed emails)."""
    wanted = [
        key
        for user, _mapping, _email, _problem, key, existing in scoped
        if key
        and winners.get(key) is user
        and (existing is None or existing.email_normalized != key)
    ]
    if len(wanted) > _HOLDERS_BY_SCAN:
        wanted_set = set(wanted)
        rows = _raw_rows(session, "SELECT email_normalized, id FROM users", ())
        return {email: user_id for email, user_id in rows if email in wanted_set}
    holders: dict[str, int] = {}
    for chunk in _chunks(wanted, 1000):
        query = select(User.email_normalized, User.id).where(User.email_normalized.in_(chunk))
        holders.update({email: user_id for email, user_id in session.execute(query)})
    return holders


def _raw_rows(session: Session, sql: str, params: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
    """Rows through the driver's own cursor (``?`` placeholders), one at a time: on 100,000
    rows SQLAlchemy's row objects and type processing cost seconds, a list of them memory,
    and callers read plain strings and integers."""
    raw = session.connection().connection.driver_connection
    assert raw is not None
    if session.get_bind().dialect.name == "postgresql":
        # A server-side cursor: the client never holds the whole result at once.
        cursor = raw.cursor(name=f"fleetkeep_sync_{next(_cursor_names)}")
        cursor.itersize = 10_000
        sql = sql.replace("?", "%s")
    else:
        cursor = raw.cursor()
    try:
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(10_000):
            yield from rows
    finally:
        cursor.close()


_cursor_names = itertools.count()


_OWNED_SQL = (
    "SELECT id, NULLIF(email, email_normalized), email_normalized, username, display_name,"
    " state, preserved_by, profile_id, storage_region_id, dn, upn, external_id"
    " FROM users WHERE source = ? AND external_id IS NOT NULL"
)


def _owned_users(session: Session, source: str) -> dict[str, _Owned]:
    """Every user the source owns, keyed by external id."""
    new = functools.partial(tuple.__new__, _Owned)  # no Python call per row
    return {row[11]: new(row) for row in _raw_rows(session, _OWNED_SQL, (source,))}


def _choose_email(user: SourceUser, existing: _Owned | None) -> tuple[str | None, str]:
    """(email, problem): the current address when still offered, else the primary one."""
    if (
        not user.other_emails
        and existing is not None
        and user.email
        and normalize_email(user.email) == existing.email_normalized
    ):
        return user.email.strip(), ""  # a re-sync's common case: the address it already has
    offered = [e for e in (user.email, *user.other_emails) if e and e.strip()]
    if not offered:
        return None, "no_email"
    chosen = offered[0]
    if existing is not None:
        for email in offered:
            if normalize_email(email) == existing.email_normalized:
                return email.strip(), ""  # the stored address, validated when it was stored
    try:
        return validate_email(chosen), ""
    except InvalidInput:
        return chosen, "invalid_email"


def _email_winners(
    scoped: list[_Scoped], owned: dict[str, _Owned], settled: dict[str, SourceUser]
) -> dict[str, SourceUser]:
    """For each email, the one entry allowed to have it (see the module rules)."""
    winners = settled  # extended in place: the caller has no further use for it
    claims: dict[str, list[SourceUser]] = {}
    for user, _mapping, _email, _problem, key, _existing in scoped:
        if not key:
            continue
        if key not in winners:
            winners[key] = user
        else:
            claims.setdefault(key, [winners[key]]).append(user)
    for email, users in claims.items():

        def rank(u: SourceUser, email: str = email) -> tuple[int, int, str]:
            linked = owned.get(u.external_id)
            return (
                0 if linked is not None and linked.email_normalized == email else 1,
                1 if u.disabled else 0,
                u.external_id,
            )

        winners[email] = min(users, key=rank)
    return winners


def _email_free(
    normalized: str,
    holder: int | None,
    existing: _Owned | None,
    owned: dict[str, _Owned],
    planned_email: dict[int, str],
) -> bool:
    """Is the address free for this entry, counting addresses this plan frees (renames)?"""
    if holder is None or (existing is not None and holder == existing.id):
        return True
    if holder not in planned_email:
        return False
    current = next(o.email_normalized for o in owned.values() if o.id == holder)
    return current == normalized and normalize_email(planned_email[holder]) != normalized


def _plan_existing(
    plan: Plan,
    directory: Directory,
    user: SourceUser,
    email: str,
    email_free: bool,
    mapping: CompiledMapping,
    existing: _Owned,
) -> None:
    if existing.state == UserState.ACTIVE and _unchanged(
        directory.auto_update, user, email, mapping, existing
    ):
        plan.unchanged += 1
        return
    base = Change(
        Action.SKIP,
        user.external_id,
        email,
        user.dn,
        user_id=existing.id,
        mapping_id=mapping.mapping_id,
    )
    if existing.state == UserState.DELETED:
        plan.changes.append(_with(base, reason="deleted"))
        return
    if existing.state == UserState.PRESERVED and existing.preserved_by != directory.source:
        plan.changes.append(_with(base, reason=f"preserved_by:{existing.preserved_by}"))
        return
    wanted: dict[str, Any] = {"dn": user.dn or None, "upn": user.upn or None}
    if directory.auto_update:
        wanted |= {
            "username": user.username,
            "display_name": user.display_name,
            "profile_id": mapping.profile_id,
            "storage_region_id": mapping.storage_region_id,
        }
        if normalize_email(email) != existing.email_normalized or email != existing.email:
            if email_free:
                wanted["email"] = email
            else:
                plan.warnings.append(
                    f"{user.dn or user.external_id}: email {email} is used by another user;"
                    f" kept {existing.email}"
                )
    values = {k: v for k, v in wanted.items() if getattr(existing, k) != v}
    before = {k: getattr(existing, k) for k in values}
    if existing.state == UserState.PRESERVED:
        plan.changes.append(
            _with(base, action=Action.REACTIVATE, reason="back", values=values, before=before)
        )
    elif values:
        plan.changes.append(_with(base, action=Action.UPDATE, values=values, before=before))
    else:
        plan.unchanged += 1


def _unchanged(
    auto_update: bool, user: SourceUser, email: str, mapping: CompiledMapping, existing: _Owned
) -> bool:
    """The common case of a re-sync, decided without building any change."""
    if existing.dn != (user.dn or None) or existing.upn != (user.upn or None):
        return False
    return not auto_update or (
        existing.email == email
        and existing.username == user.username
        and existing.display_name == user.display_name
        and existing.profile_id == mapping.profile_id
        and existing.storage_region_id == mapping.storage_region_id
    )


def _preserve_or_leave(
    plan: Plan, directory: Directory, external_id: str, existing: _Owned, reason: str
) -> None:
    if directory.auto_preserve:
        plan.changes.append(
            Change(
                Action.PRESERVE,
                external_id,
                existing.email,
                existing.dn or "",
                reason=reason,
                user_id=existing.id,
            )
        )
    else:
        plan.unchanged += 1


def _create(
    directory: Directory,
    user: SourceUser,
    email: str,
    mapping: CompiledMapping,
    profile_quota: dict[int, tuple[int, str]],
) -> Change:
    if mapping.quota_value is not None:
        quota = (mapping.quota_value, mapping.quota_unit or "GB")
    else:
        quota = profile_quota.get(mapping.profile_id, (0, "GB"))
    values = {
        "email": email,
        "username": user.username,
        "display_name": user.display_name,
        "profile_id": mapping.profile_id,
        "storage_region_id": mapping.storage_region_id,
        "quota_value": quota[0],
        "quota_unit": quota[1],
        "external_id": user.external_id,
        "dn": user.dn or None,
        "upn": user.upn or None,
    }
    return Change(
        Action.CREATE,
        user.external_id,
        email,
        user.dn,
        reason="new",
        mapping_id=mapping.mapping_id,
        values=values,
    )


def _deployment_row(
    directory: Directory, mapping: CompiledMapping, user: SourceUser
) -> dict[str, Any]:
    return {
        "directory_id": directory.id,
        "mapping_id": mapping.mapping_id,
        "external_id": user.external_id,
        "dn": user.dn,
        "email": normalize_email(user.email) if user.email else "",
        "upn": (user.upn or "").lower(),
        "sam_account_name": (user.sam_account_name or user.username).lower(),
        "domain": user.domain.lower(),
        "netbios_domain": str(directory.settings.get("netbios_domain", "")).lower(),
        "display_name": user.display_name,
    }


def _with(change: Change, **fields: Any) -> Change:
    data = {k: getattr(change, k) for k in change.__dataclass_fields__}
    return Change(**(data | fields))


def _hold_reason(directory: Directory, plan: Plan) -> str | None:
    preserving = plan.count(Action.PRESERVE)
    if preserving > directory.hold_above_count:
        return (
            f"the sync would preserve {preserving} users,"
            f" more than the threshold of {directory.hold_above_count}"
        )
    if plan.owned_active and preserving * 100 / plan.owned_active > directory.hold_above_percent:
        share = preserving * 100 / plan.owned_active
        return (
            f"the sync would preserve {preserving} of {plan.owned_active} users ({share:.1f} %),"
            f" more than the threshold of {directory.hold_above_percent:g} %"
        )
    return None


# Applying -------------------------------------------------------------------------------------


def apply_plan(session: Session, actor: Actor, plan: Plan) -> None:
    """Write the plan in bulk in the caller's transaction, auditing every change.

    State changes re-check the state they expect (a held plan may be applied later), so a
    user an admin restored or preserved meanwhile is not overridden.
    """
    session.execute(select(Directory.id).where(Directory.id == plan.directory_id).with_for_update())
    now = utcnow()
    audit: list[dict[str, Any]] = []
    by_action: dict[Action, list[Change]] = {a: [] for a in Action}
    for change in plan.changes:
        by_action[change.action].append(change)

    for chunk in _chunks(by_action[Action.PRESERVE]):
        session.execute(
            update(User)
            .where(
                User.id.in_([c.user_id for c in chunk]),
                User.state == UserState.ACTIVE,
                User.source == plan.source,
            )
            .values(
                state=UserState.PRESERVED,
                preserved_by=plan.source,
                state_changed_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        audit.extend(
            {
                "action": "user.preserve",
                "target_type": "user",
                "target_id": c.user_id,
                "before": {"state": "active"},
                "after": {"state": "preserved", "preserved_by": plan.source, "reason": c.reason},
            }
            for c in chunk
        )

    for chunk in _chunks(by_action[Action.REACTIVATE]):
        session.execute(
            update(User)
            .where(
                User.id.in_([c.user_id for c in chunk]),
                User.state == UserState.PRESERVED,
                User.preserved_by == plan.source,
            )
            .values(state=UserState.ACTIVE, preserved_by=None, state_changed_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        audit.extend(
            {
                "action": "user.restore",
                "target_type": "user",
                "target_id": c.user_id,
                "before": {"state": "preserved", "preserved_by": plan.source},
                "after": {"state": "active", "reason": "back at the source"},
            }
            for c in chunk
        )

    updates = [c for c in by_action[Action.UPDATE] + by_action[Action.REACTIVATE] if c.values]
    _write_updates(session, updates, now)
    audit.extend(
        {
            "action": "user.update",
            "target_type": "user",
            "target_id": c.user_id,
            "before": c.before,
            "after": c.values,
        }
        for c in updates
    )

    creates = by_action[Action.CREATE]
    if creates:
        _insert_users(session, actor, plan.source, creates, now)
    if plan.deployment is not None:
        _refresh_deployment_cache(session, plan.directory_id, plan.deployment, now)
    record_many(session, actor, audit)


def _write_updates(session: Session, updates: list[Change], now: Any) -> None:
    renames = [c for c in updates if "email" in c.values]
    # Two steps for renames so that swapping addresses between users never trips uniqueness.
    if renames:
        session.execute(
            update(User).execution_options(synchronize_session=False),
            [{"id": c.user_id, "email_normalized": f"~sync~{c.user_id}"} for c in renames],
        )
    by_keys: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in updates:
        row = dict(change.values)
        if "email" in row:
            row["email_normalized"] = normalize_email(row["email"])
        row |= {"id": change.user_id, "updated_at": now}
        by_keys.setdefault(tuple(sorted(row)), []).append(row)
    for rows in by_keys.values():
        session.execute(update(User).execution_options(synchronize_session=False), rows)


def _insert_users(
    session: Session, actor: Actor, source: str, creates: list[Change], now: Any
) -> None:
    """COPY new users, then audit them with one INSERT … SELECT over the rows just written.

    The rows are tuples built here, not dicts converted value by value; the audit's ``after``
    is built by the database from the new rows (created by this apply: this source, this
    ``now``), which hold exactly the values planned.
    """
    active = UserState.ACTIVE.value
    rows = (
        (
            *(v[c] for c in _CREATED),
            normalize_email(v["email"]),
            source,
            active,
            now,
            now,
            now,
        )
        for v in (c.values for c in creates)
    )
    try:
        copy_rows(session, User, _CREATE_COLUMNS, rows)
    except IntegrityError:
        raise Conflict(
            "another change created one of these users meanwhile; run the sync again",
            code="sync_conflict",
        ) from None
    if not creates:
        return
    as_json = (
        func.json_build_object
        if session.get_bind().dialect.name == "postgresql"
        else func.json_object
    )
    fields = [*_CREATED, "source", "state"]
    after = as_json(
        *itertools.chain.from_iterable(
            (literal_column(f"'{f}'"), User.__table__.c[f]) for f in fields
        )
    )
    record_from_select(
        session,
        actor,
        "user.create",
        "user",
        select(cast(User.id, String), after)
        .where(User.source == source, User.created_at == now)
        .order_by(User.id),
    )


# What a create's values hold, in the order its audit record lists them.
_CREATED = (
    "email",
    "username",
    "display_name",
    "profile_id",
    "storage_region_id",
    "quota_value",
    "quota_unit",
    "external_id",
    "dn",
    "upn",
)
_CREATE_COLUMNS = (
    *_CREATED,
    "email_normalized",
    "source",
    "state",
    "created_at",
    "updated_at",
    "state_changed_at",
)


def _refresh_deployment_cache(
    session: Session, directory_id: int, rows: list[dict[str, Any]], now: Any
) -> None:
    """Bring the cache to ``rows`` by difference: unchanged rows are not rewritten."""
    columns = [c for c in rows[0] if c != "directory_id"] if rows else []
    table = DeploymentCacheEntry.__table__
    current = {
        row.external_id: row
        for row in session.execute(
            select(table).where(table.c.directory_id == directory_id)
        ).mappings()
    }
    wanted = {r["external_id"]: r for r in rows}
    gone = [current[e]["id"] for e in current.keys() - wanted.keys()]
    changed = [
        r for e, r in wanted.items() if e in current and any(current[e][c] != r[c] for c in columns)
    ]
    for chunk in _chunks(gone + [current[r["external_id"]]["id"] for r in changed]):
        session.execute(delete(DeploymentCacheEntry).where(DeploymentCacheEntry.id.in_(chunk)))
    fresh = [r | {"updated_at": now} for e, r in wanted.items() if e not in current]
    fresh += [r | {"updated_at": now} for r in changed]
    insert_rows(session, DeploymentCacheEntry, fresh)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


# Running, holding, confirming -------------------------------------------------------------


Fetch = Callable[[], FetchResult]


def run_sync(
    factory: sessionmaker[Session],
    actor: Actor,
    directory_id: int,
    fetch: Fetch,
    *,
    dry_run: bool = False,
    trigger: str = "manual",
    complete: bool = True,
) -> SyncRun:
    """Fetch, plan and apply (or hold, or only report for a dry run), recording a SyncRun.

    A failed fetch or apply changes no user: the run is marked failed with the reason and a
    ``directory.sync_failed`` alert is raised. Returns the finished run.
    """
    with transaction(factory) as session:
        directory = _directory(session, directory_id)
        run = SyncRun(directory_id=directory_id, dry_run=dry_run, trigger=trigger, actor=actor.name)
        session.add(run)
        session.flush()
        run_id, subject = run.id, directory.source
    started = time.monotonic()
    try:
        with _collector_paused():
            fetched = fetch()
            with transaction(factory) as session:
                directory = _directory(session, directory_id)
                plan = plan_sync(
                    session,
                    directory,
                    fetched.users,
                    group_parents=fetched.group_parents,
                    complete=complete,
                )
                plan.warnings[:0] = fetched.warnings
                del fetched  # the plan holds what it needs; free the entries before applying
                run = _finish(session, run_id, plan, started)
                if dry_run:
                    run.status = SyncStatus.DRY_RUN
                elif plan.hold_reason:
                    run.status = SyncStatus.HELD
                    run.held_reason = plan.hold_reason
                    run.held_plan = plan.to_json()
                    raise_alert(
                        session,
                        "directory.sync_held",
                        subject,
                        Severity.WARNING,
                        f"sync of directory {directory.name!r} held: {plan.hold_reason}",
                        {"directory_id": directory_id, "sync_run_id": run_id},
                    )
                else:
                    apply_plan(session, actor, plan)
                    _succeeded(session, directory, run, plan)
            return run
    except Exception as exc:
        detail = exc.detail if isinstance(exc, FleetkeepError) else f"{type(exc).__name__}: {exc}"
        with transaction(factory) as session:
            directory = _directory(session, directory_id)
            run = _finish(session, run_id, None, started)
            run.status = SyncStatus.FAILED
            run.errors = 1
            run.error = detail
            raise_alert(
                session,
                "directory.sync_failed",
                subject,
                Severity.CRITICAL,
                f"sync of directory {directory.name!r} failed, nothing changed: {detail}",
                {"directory_id": directory_id, "sync_run_id": run_id},
            )
        return run


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while a sync holds 100,000s of fresh objects.

    It would otherwise rescan them over and over (measured: about 40 % of a large sync);
    nothing a sync builds forms reference cycles, so pausing loses nothing.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def confirm_sync(session: Session, actor: Actor, run_id: int) -> SyncRun:
    """Apply a held plan. Only the newest sync of the directory can be confirmed."""
    run = session.get(SyncRun, run_id)
    if run is None:
        raise NotFound(f"sync run {run_id} does not exist")
    if run.status is not SyncStatus.HELD or run.held_plan is None:
        raise Conflict(f"sync run {run_id} is {run.status}, not held", code="not_held")
    newer = session.scalar(
        select(SyncRun.id).where(
            SyncRun.directory_id == run.directory_id,
            SyncRun.id > run.id,
            SyncRun.dry_run.is_(False),
            SyncRun.status.in_([SyncStatus.SUCCEEDED, SyncStatus.HELD, SyncStatus.CONFIRMED]),
        )
    )
    if newer is not None:
        run.status = SyncStatus.SUPERSEDED
        raise Conflict(
            f"sync run {run_id} was superseded by run {newer}; confirm that one instead",
            code="superseded",
        )
    directory = _directory(session, run.directory_id)
    plan = Plan.from_json(run.held_plan)
    apply_plan(session, actor, plan)
    _succeeded(session, directory, run, plan)
    run.status = SyncStatus.CONFIRMED
    run.confirmed_by = actor.name
    return run


def _directory(session: Session, directory_id: int) -> Directory:
    directory = session.get(Directory, directory_id)
    if directory is None:
        raise NotFound(f"directory {directory_id} does not exist")
    return directory


def _finish(session: Session, run_id: int, plan: Plan | None, started: float) -> SyncRun:
    run = session.get(SyncRun, run_id)
    assert run is not None
    run.finished_at = utcnow()
    run.duration_ms = int((time.monotonic() - started) * 1000)
    if plan is not None:
        run.seen = plan.seen
        run.created = plan.count(Action.CREATE)
        run.updated = plan.count(Action.UPDATE)
        run.preserved = plan.count(Action.PRESERVE)
        run.reactivated = plan.count(Action.REACTIVATE)
        run.skipped = plan.count(Action.SKIP)
        run.report = plan.report()
    return run


def _succeeded(session: Session, directory: Directory, run: SyncRun, plan: Plan) -> None:
    run.status = SyncStatus.SUCCEEDED
    run.held_plan = None
    directory.last_sync_at = utcnow()
    session.execute(
        update(SyncRun)
        .where(
            SyncRun.directory_id == directory.id,
            SyncRun.id < run.id,
            SyncRun.status == SyncStatus.HELD,
        )
        .values(status=SyncStatus.SUPERSEDED, held_plan=None)
    )
    resolve_alert(session, "directory.sync_failed", directory.source)
    resolve_alert(session, "directory.sync_held", directory.source)


# Deployment lookups -----------------------------------------------------------------------


@dataclass(frozen=True)
class DeploymentCandidate:
    """A user who may activate a device, and what the matching deployment mapping gives."""

    directory_id: int
    mapping_id: int
    external_id: str
    dn: str
    email: str
    upn: str
    sam_account_name: str
    domain: str
    display_name: str
    profile_id: int
    storage_region_id: int
    quota_value: int | None
    quota_unit: str | None


class AmbiguousUser(Conflict):
    code = "ambiguous_user"


def find_deployment_candidate(
    session: Session,
    *,
    username: str | None = None,
    domain: str | None = None,
    upn: str | None = None,
    email: str | None = None,
) -> DeploymentCandidate | None:
    """Look a user up in the deployment cache by email, UPN, or username (+ domain).

    ``username`` may be ``DOMAIN\\user`` or ``user@domain``; ``domain`` matches the DNS
    domain or the NetBIOS name. Raises ``AmbiguousUser`` when several entries match.
    """
    entry = DeploymentCacheEntry
    conditions = []
    if email:
        conditions.append(entry.email == normalize_email(email))
    if upn:
        conditions.append(entry.upn == upn.strip().lower())
    if username:
        name = username.strip()
        if "\\" in name:
            domain, _, name = name.partition("\\")
        elif "@" in name:
            name, _, domain = name.partition("@")
        account = entry.sam_account_name == name.lower()
        if domain:
            wanted = domain.strip().lower()
            account = and_(account, or_(entry.domain == wanted, entry.netbios_domain == wanted))
        conditions.append(account)
    if not conditions:
        raise InvalidInput("give an email, a UPN or a username", field="username")
    rows = session.execute(
        select(entry, Mapping)
        .join(Mapping, Mapping.id == entry.mapping_id)
        .join(Directory, Directory.id == entry.directory_id)
        .where(or_(*conditions), Directory.enabled.is_(True))
        .order_by(entry.directory_id, entry.id)
    ).all()
    if not rows:
        return None
    distinct = {(row[0].directory_id, row[0].external_id) for row in rows}
    if len(distinct) > 1:
        raise AmbiguousUser(
            f"{len(distinct)} directory entries match; give the full UPN or email",
            candidates=[row[0].dn for row in rows][:10],
        )
    cached, mapping = rows[0]
    return DeploymentCandidate(
        cached.directory_id,
        cached.mapping_id,
        cached.external_id,
        cached.dn,
        cached.email,
        cached.upn,
        cached.sam_account_name,
        cached.domain,
        cached.display_name,
        mapping.profile_id,
        mapping.storage_region_id,
        mapping.quota_value,
        None if mapping.quota_unit is None else str(mapping.quota_unit),
    )


def due_directories(session: Session, kinds: Iterable[str]) -> list[int]:
    """Enabled directories of these kinds whose sync interval has elapsed since the last run."""
    now = utcnow()
    due = []
    for directory in session.scalars(
        select(Directory).where(Directory.enabled.is_(True), Directory.kind.in_(list(kinds)))
    ):
        last = session.scalar(
            select(SyncRun.started_at)
            .where(SyncRun.directory_id == directory.id, SyncRun.dry_run.is_(False))
            .order_by(SyncRun.id.desc())
            .limit(1)
        )
        if last is None or (now - last).total_seconds() >= directory.sync_interval_hours * 3600:
            due.append(directory.id)
    return due
