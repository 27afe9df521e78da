"""SCIM Users and Groups stored as fleetkeep users: the provisioning rules live here.

* A SCIM User is a fleetkeep user with ``source = "scim"``; its SCIM ``id`` is our user id.
* ``active = false``, DELETE and un-assignment preserve the user (``preserved_by = "scim"``);
  nothing is ever hard-deleted. SCIM reactivates only users it preserved itself.
* A user that another source owns (``manual``, ``csv``, ``directory:3`` …) is never taken
  over: the request gets 409 ``uniqueness`` naming the owner.
* Profile, storage region and quota come from the import mappings of the directory of kind
  ``scim`` (the same rule JSON as every source: ``all``, ``group`` — SCIM group display
  names —, ``attribute`` on SCIM attribute names, ``filter``), first match by priority.
  A new user that no mapping matches is refused with 400 ``invalidValue`` naming the fix;
  a mapping ``{"type": "all"}`` with the lowest priority gives everyone a default.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property, lru_cache
from typing import Any, cast

from scim2_models import Context, GroupMember, GroupMembership, PatchOp, SearchRequest
from scim2_models.path.expressions import CompareOperator, Comparison, FilterNode, LogicalExpr
from sqlalchemy import (
    Row,
    Select,
    Table,
    Text,
    bindparam,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.orm import Session

from fleetkeep.alerts.service import raise_alert, resolve_alert
from fleetkeep.audit.service import Actor, record
from fleetkeep.db import utcnow
from fleetkeep.directories import service as directories
from fleetkeep.directories.mappings import Candidate, normalize_dn, parse_rule
from fleetkeep.directories.models import Directory, DirectoryKind, Mapping, MappingPurpose
from fleetkeep.directories.scim.models import ScimGroup, ScimGroupMember, ScimToken, ScimUser
from fleetkeep.directories.scim.protocol import (
    ENTERPRISE,
    GroupResource,
    ScimError,
    UserResource,
    apply_patch,
    apply_simple_patch,
    check_if_match,
    display_name,
    matches,
    membership,
    meta,
    sanitize_username,
    served_user,
    user_email,
)
from fleetkeep.directories.sync import CompiledMapping, first_match
from fleetkeep.errors import Conflict, InvalidInput, Unauthorized
from fleetkeep.identity import service as identity
from fleetkeep.identity.models import QuotaUnit, User, UserState
from fleetkeep.tokens import display_prefix, hash_token, new_token

SOURCE = "scim"
TOKEN_PREFIX = "fkscim"  # noqa: S105 - a kind prefix, not a secret
TOKEN_DAYS = 365
TOKEN_WARN_DAYS = 14
DIRECTORY_NAME = "SCIM"
ALERT_TOKEN_EXPIRY = "scim_token_expiry"  # noqa: S105


# Tokens ---------------------------------------------------------------------------------------


def create_token(
    session: Session, actor: Actor, *, days: int = TOKEN_DAYS, regenerate: bool = False
) -> tuple[str, ScimToken]:
    """Make the SCIM bearer token (shown once). ``regenerate`` revokes the current one."""
    if days < 1 or days > 3650:
        raise InvalidInput("a SCIM token lives 1 to 3650 days", field="days")
    current = active_token(session)
    if current is not None and not regenerate:
        raise Conflict(
            f"a SCIM token ({current.prefix}…) is already valid until "
            f"{current.expires_at:%Y-%m-%d}; regenerate it to replace it",
            code="scim_token_exists",
        )
    now = utcnow()
    session.execute(update(ScimToken).where(ScimToken.revoked_at.is_(None)).values(revoked_at=now))
    plain, digest = new_token(TOKEN_PREFIX)
    token = ScimToken(
        token_hash=digest,
        prefix=display_prefix(plain),
        created_by=actor.name,
        created_at=now,
        expires_at=now + timedelta(days=days),
    )
    session.add(token)
    session.flush()
    scim_directory(session, actor)
    record(
        session,
        actor,
        "scim.token.regenerate" if current is not None else "scim.token.create",
        "scim_token",
        token.id,
        after={"prefix": token.prefix, "expires_at": token.expires_at.isoformat()},
    )
    resolve_alert(session, ALERT_TOKEN_EXPIRY, "scim")
    return plain, token


def active_token(session: Session) -> ScimToken | None:
    return session.scalar(
        select(ScimToken)
        .where(ScimToken.revoked_at.is_(None), ScimToken.expires_at > utcnow())
        .order_by(ScimToken.id.desc())
        .limit(1)
    )


# Built once: building a statement costs more than running it on a warm connection.
_TOKEN_BY_HASH = select(ScimToken.revoked_at, ScimToken.expires_at).where(
    ScimToken.token_hash == bindparam("digest")
)


def authenticate(session: Session, plain: str | None) -> None:
    """Every request checks its token in the database (one indexed read, no cache): a revoked
    or regenerated token stops working at once, in every server process."""
    if not plain:
        raise Unauthorized("send 'Authorization: Bearer <SCIM token>'", code="no_token")
    token = session.connection().execute(_TOKEN_BY_HASH, {"digest": hash_token(plain)}).first()
    if token is None or token.revoked_at is not None:
        raise Unauthorized("the SCIM token is not valid", code="bad_token")
    if token.expires_at <= utcnow():
        raise Unauthorized(
            f"the SCIM token expired on {token.expires_at:%Y-%m-%d}; regenerate it",
            code="token_expired",
        )


def check_token_expiry(session: Session, now: datetime | None = None) -> ScimToken | None:
    """Alert 14 days before the SCIM token expires (and when it has), so pushes never stop."""
    now = now or utcnow()
    token = session.scalar(
        select(ScimToken).where(ScimToken.revoked_at.is_(None)).order_by(ScimToken.id.desc())
    )
    if token is None or token.expires_at - now > timedelta(days=TOKEN_WARN_DAYS):
        resolve_alert(session, ALERT_TOKEN_EXPIRY, "scim")
        return None
    expired = token.expires_at <= now
    raise_alert(
        session,
        ALERT_TOKEN_EXPIRY,
        "scim",
        "critical" if expired else "warning",
        (
            f"the SCIM token {token.prefix}… "
            + ("expired" if expired else "expires")
            + f" on {token.expires_at:%Y-%m-%d}; run 'fleetkeep scim token regenerate' "
            "and paste the new token into the identity provider"
        ),
        {"token_id": token.id, "expires_at": token.expires_at.isoformat()},
    )
    return token


# Mappings -------------------------------------------------------------------------------------


def scim_directory(session: Session, actor: Actor) -> Directory:
    """The one directory of kind ``scim``; its mappings decide profile/region/quota."""
    directory = session.scalar(select(Directory).where(Directory.kind == DirectoryKind.SCIM))
    if directory is None:
        directory = Directory(name=DIRECTORY_NAME, kind=DirectoryKind.SCIM, settings={})
        session.add(directory)
        session.flush()
        record(
            session, actor, "directory.create", "directory", directory.id, after={"kind": "scim"}
        )
    return directory


def add_mapping(
    session: Session,
    actor: Actor,
    *,
    rule: dict[str, Any],
    profile_id: int,
    storage_region_id: int,
    quota: tuple[int, QuotaUnit] | None = None,
    priority: int = 100,
    name: str = "",
) -> Mapping:
    """An import mapping of the SCIM directory (same rule JSON as every other directory)."""
    directory = scim_directory(session, actor)
    return directories.create_mapping(
        session,
        actor,
        directory.id,
        rule=rule,
        name=name,
        profile_id=profile_id,
        storage_region_id=storage_region_id,
        quota_value=quota[0] if quota else None,
        quota_unit=quota[1] if quota else None,
        priority=priority,
    )


def list_mappings(session: Session) -> list[Mapping]:
    directory = session.scalar(select(Directory).where(Directory.kind == DirectoryKind.SCIM))
    if directory is None:
        return []
    return [
        m
        for m in directories.list_mappings(session, directory.id)
        if m.purpose is MappingPurpose.IMPORT
    ]


def remove_mapping(session: Session, actor: Actor, mapping_id: int) -> None:
    directories.delete_mapping(session, actor, scim_directory(session, actor).id, mapping_id)


_IMPORT_MAPPINGS = (
    select(
        Mapping.id,
        # The rule as stored (JSON text): with the other columns, the key of ``_compiled``.
        Mapping.rule.cast(Text).label("rule"),
        Mapping.profile_id,
        Mapping.storage_region_id,
        Mapping.quota_value,
        Mapping.quota_unit,
        Mapping.auto_import,
    )
    .join(Directory, Directory.id == Mapping.directory_id)
    .where(Directory.kind == DirectoryKind.SCIM, Mapping.purpose == MappingPurpose.IMPORT)
    .order_by(Mapping.priority, Mapping.id)
)


def _import_mappings(session: Session) -> list[CompiledMapping]:
    """The SCIM directory's import mappings in decision order, read on every write (so a
    change made through any server process applies at once) in one round trip."""
    return [_compiled(m) for m in session.connection().execute(_IMPORT_MAPPINGS)]


@lru_cache(maxsize=256)
def _compiled(row: Row[Any]) -> CompiledMapping:
    """A mapping row compiled once per process: all its values are the key, so an edited
    mapping is a new key (parsing a rule costs more than matching it)."""
    return CompiledMapping.of(row, MappingPurpose.IMPORT, parse_rule(json.loads(row.rule)))


def rule_candidate(data: dict[str, Any], groups: Iterable[str]) -> Candidate:
    """A User (its DEFAULT-context dump) as mapping rules see it: flat attributes and the
    display names of its ``groups``.

    Attribute names are the SCIM ones (``department``, ``employeeNumber``, ``title``,
    ``userType``, ``emails`` …), so ``{"type": "attribute", "conditions": [{"attribute":
    "department", "op": "equals", "value": "Sales"}]}`` and ``{"type": "group", "group":
    "Sales"}`` mean for SCIM what they mean for every other source.
    """
    attributes: dict[str, list[str]] = {}
    extension = data.get(ENTERPRISE) or {}
    for key, value in [*data.items(), *extension.items()]:
        if key in {"schemas", "meta", "groups", ENTERPRISE}:
            continue
        if isinstance(value, dict):
            if "value" in value:
                attributes[key] = [str(value["value"])]
            for sub, sub_value in value.items():
                if isinstance(sub_value, str | int | bool):
                    attributes[sub if key == "name" else f"{key}.{sub}"] = [str(sub_value)]
        elif isinstance(value, list):
            attributes[key] = [
                str(v.get("value")) if isinstance(v, dict) else str(v) for v in value
            ]
        elif value is not None:
            attributes[key] = [str(value)]
    return Candidate("", attributes, frozenset(normalize_dn(g) for g in groups if g))


def match_mapping(
    mappings: Sequence[CompiledMapping], data: dict[str, Any], groups: Iterable[str]
) -> CompiledMapping | None:
    """The first import mapping (by priority) whose rule matches the User."""
    return first_match(mappings, rule_candidate(data, groups)) if mappings else None


def _assignment(mapping: CompiledMapping) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "profile_id": mapping.profile_id,
        "storage_region_id": mapping.storage_region_id,
    }
    if mapping.quota_value is not None:
        fields["quota_value"] = mapping.quota_value
        fields["quota_unit"] = QuotaUnit(mapping.quota_unit or QuotaUnit.GB)
    return fields


# Users ----------------------------------------------------------------------------------------


@dataclass
class Stored:
    """A User with the rows behind it; ``body`` is what responses serve."""

    user: User
    row: ScimUser
    groups: list[tuple[int, str]]
    base_url: str

    @property
    def version(self) -> int:
        return self.row.version

    @cached_property
    def body(self) -> dict[str, Any]:
        return _served(
            self.user.id,
            self.user.state,
            self.row.attributes,
            self.row.created_at,
            self.row.updated_at,
            self.row.version,
            self.groups,
            self.base_url,
        )

    @cached_property
    def resource(self) -> UserResource:
        """The validated model, for what needs one (PATCH, PUT, filters, projection)."""
        resource = UserResource.model_validate(self.row.attributes)
        resource.id = str(self.user.id)
        if resource.active is not None:
            resource.active = self.user.state is UserState.ACTIVE
        resource.groups = _memberships(self.groups)
        resource.meta = meta(
            "User",
            _location(self.base_url, self.user.id),
            self.row.created_at,
            self.row.updated_at,
            self.row.version,
        )
        return resource


def create_user(session: Session, actor: Actor, resource: UserResource, base_url: str) -> Stored:
    user_name = resource.user_name or ""
    _unique_user_name(session, user_name, None)
    data = resource.model_dump(scim_ctx=Context.DEFAULT)
    email = user_email(data)
    if email is None:
        raise ScimError(
            400, "the user needs an e-mail address (emails or an e-mail userName)", "invalidValue"
        )
    try:
        identity.validate_email(email)
    except InvalidInput as exc:
        raise ScimError(400, exc.detail, "invalidValue") from None
    mapping = match_mapping(_import_mappings(session), data, _group_names(resource))
    if mapping is None:
        raise ScimError(
            400,
            f"no SCIM mapping matches user {user_name!r}: add an import mapping whose rule "
            'matches it (or a catch-all {"type": "all"}) with \'fleetkeep scim mappings add\'',
            "invalidValue",
        )
    fields = {**_user_fields(data, email), **_assignment(mapping)}
    try:
        # New users are the common case: create_user's own e-mail check finds a known one
        # before it writes anything, sparing every creation a lookup of its own.
        user = identity.create_user(session, actor, source=SOURCE, **fields)
    except Conflict as exc:
        if exc.code != "email_taken":
            raise
        known = session.scalar(
            select(User).where(User.email_normalized == identity.normalize_email(email))
        )
        if known is None:
            raise
        _adopt(session, known, email)
        user = identity.update_user(session, actor, known.id, **fields)
    now = utcnow()
    values = {
        "user_id": user.id,
        "user_name": user_name,
        "user_name_key": user_name.lower(),
        "external_id": resource.external_id,
        "version": 1,
        "attributes": _stored_attributes(data),
        "created_at": now,
        "updated_at": now,
    }
    # A Core INSERT: nothing in this request reads the row back through the session.
    session.execute(_INSERT_SCIM_USER, values)
    _apply_active(session, actor, user, resource.active)
    session.flush()
    return Stored(user, ScimUser(**values), [], base_url)


_INSERT_SCIM_USER = insert(cast(Table, ScimUser.__table__))


def _adopt(session: Session, user: User, email: str) -> None:
    """Link a user SCIM itself provisioned and later released; refuse anybody else's."""
    if user.source != SOURCE:
        raise ScimError(
            409,
            f"{email} is already a fleetkeep user provisioned by {user.source!r}; SCIM does not "
            "take over users of another source (an admin can move the user to SCIM by setting "
            "its source to 'scim')",
            "uniqueness",
        )
    linked = session.get(ScimUser, user.id)
    if linked is not None:
        raise ScimError(
            409, f"{email} is already the SCIM user {user.id} ({linked.user_name})", "uniqueness"
        )
    if user.state is not UserState.ACTIVE and user.preserved_by != SOURCE:
        raise ScimError(
            409,
            f"{email} was {user.state} by {user.preserved_by or 'an administrator'}; only an "
            "administrator can restore this user",
            "uniqueness",
        )


def get_user(session: Session, user_id: str, base_url: str) -> Stored:
    found = _user_by_id(session, user_id)
    if not found:
        raise ScimError(404, f"User {user_id} not found")
    user, row, groups = found[0]
    return Stored(user, row, groups, base_url)


def replace_user(
    session: Session,
    actor: Actor,
    user_id: str,
    resource: UserResource,
    base_url: str,
    if_match: str | None = None,
) -> Stored:
    current = get_user(session, user_id, base_url)
    check_if_match(if_match, current.version)
    try:
        resource.replace(current.resource)
    except Exception as exc:  # scim2-models raises MutabilityException for immutable changes
        raise ScimError(400, str(exc), "mutability") from None
    return _save_user(session, actor, current, resource, base_url)


def patch_user(
    session: Session,
    actor: Actor,
    user_id: str,
    patch: PatchOp[UserResource],
    base_url: str,
    if_match: str | None = None,
) -> Stored:
    current = get_user(session, user_id, base_url)
    check_if_match(if_match, current.version)
    # Patched in place: nothing reads the current model again (the answer is built from the
    # stored attributes), and a failed PATCH rolls the transaction back.
    changed = current.resource
    if not apply_patch(changed, patch):
        return current
    return _save_user(session, actor, current, changed, base_url)


_USER_FOR_PATCH = (
    select(
        User.id,
        User.state,
        User.email,
        User.username,
        User.display_name,
        User.external_id,
        User.upn,
        User.profile_id,
        User.storage_region_id,
        User.quota_value,
        User.quota_unit,
        ScimUser.attributes,
        ScimUser.created_at,
        ScimUser.updated_at,
        ScimUser.version,
        ScimGroup.id.label("group_id"),
        ScimGroup.display_name.label("group_name"),
    )
    .join(ScimUser, ScimUser.user_id == User.id)
    .outerjoin(ScimGroupMember, ScimGroupMember.user_id == User.id)
    .outerjoin(ScimGroup, ScimGroup.id == ScimGroupMember.group_id)
    .where(User.id == bindparam("user_id"))
    .order_by(ScimGroup.id)
)
_SET_ATTRIBUTES = (
    update(ScimUser)
    .where(ScimUser.user_id == bindparam("id"), ScimUser.version == bindparam("old"))
    .values(
        attributes=bindparam("attributes"),
        version=bindparam("new"),
        updated_at=bindparam("now"),
    )
)


def patch_user_simply(
    session: Session,
    actor: Actor,
    user_id: str,
    operations: list[tuple[str, str]],
    base_url: str,
    if_match: str | None = None,
) -> tuple[dict[str, Any], int] | None:
    """A ``simple_patch`` applied with plain statements: the served User and its version.

    The same result and audit trail as ``patch_user`` (tests hold the two together) when the
    PATCH changes only SCIM attributes: one read, one UPDATE, one audit INSERT, no ORM objects
    and no resource models. None, having written nothing, when the user's columns or mapping
    would change too (or the user is unknown, or changed meanwhile): ``patch_user`` then does
    it all (and says what is wrong).
    """
    if not user_id.isdigit():
        return None
    rows = session.connection().execute(_USER_FOR_PATCH, {"user_id": int(user_id)}).all()
    if not rows:
        return None
    user = rows[0]
    check_if_match(if_match, user.version)
    groups = [(r.group_id, r.group_name) for r in rows if r.group_id is not None]
    attributes, changed = apply_simple_patch(user.attributes, operations)
    if not changed:
        body = _served(
            user.id,
            user.state,
            user.attributes,
            user.created_at,
            user.updated_at,
            user.version,
            groups,
            base_url,
        )
        return body, user.version
    if "active" in attributes:
        # What ``Stored.resource`` serves, so what a save through the models stores.
        attributes["active"] = user.state is UserState.ACTIVE
    try:
        fields = _decided_fields(session, {**attributes, "id": str(user.id)}, user.email, groups)
    except InvalidInput:
        return None
    if any(getattr(user, k) != v for k, v in fields.items()):
        return None
    version, now = user.version + 1, utcnow()
    saved = session.connection().execute(
        _SET_ATTRIBUTES,
        {"id": user.id, "old": user.version, "new": version, "attributes": attributes, "now": now},
    )
    if saved.rowcount != 1:
        return None
    _record_update(session, actor, user.id, version)
    body = _served(user.id, user.state, attributes, user.created_at, now, version, groups, base_url)
    return body, version


def delete_user(session: Session, actor: Actor, user_id: str, if_match: str | None = None) -> None:
    """DELETE releases the user from SCIM and preserves it; the data stays."""
    found = _user_by_id(session, user_id)
    if not found:
        raise ScimError(404, f"User {user_id} not found")
    user, row, _ = found[0]
    check_if_match(if_match, row.version)
    if user.state is UserState.ACTIVE:
        identity.change_state(session, actor, user, UserState.PRESERVED, by=SOURCE)
    session.execute(delete(ScimGroupMember).where(ScimGroupMember.user_id == user.id))
    session.delete(row)
    record(session, actor, "scim.user.delete", "user", user.id, before={"userName": row.user_name})
    session.flush()


def search_users(
    session: Session, search: SearchRequest[UserResource], base_url: str
) -> list[UserResource]:
    """Every User the search's filter selects, sorted as asked (the caller pages)."""
    query = select(User, ScimUser).join(ScimUser, ScimUser.user_id == User.id).order_by(User.id)
    pushed = _indexed_term(search.filter.ast if search.filter else None, USER_INDEXED)
    if pushed is not None:
        attr, value = pushed
        if attr == "username":
            query = query.where(ScimUser.user_name_key == value.lower())
        elif attr == "externalid":
            query = query.where(ScimUser.external_id == value)
        elif value.isdigit():
            query = query.where(User.id == int(value))
        else:
            return []
    resources = [
        Stored(user, row, groups, base_url).resource
        for user, row, groups in _users_with_groups(session, _with_groups(query))
    ]
    return _select(resources, search)


_USER_BY_NAME = (
    select(
        User.id,
        User.state,
        ScimUser.attributes,
        ScimUser.created_at,
        ScimUser.updated_at,
        ScimUser.version,
        ScimGroup.id.label("group_id"),
        ScimGroup.display_name,
    )
    .join(ScimUser, ScimUser.user_id == User.id)
    .outerjoin(ScimGroupMember, ScimGroupMember.user_id == User.id)
    .outerjoin(ScimGroup, ScimGroup.id == ScimGroupMember.group_id)
    .where(ScimUser.user_name_key == bindparam("key"))
    .order_by(ScimGroup.id)
)


def users_named(session: Session, user_name: str, base_url: str) -> list[dict[str, Any]]:
    """The served User whose userName is ``user_name`` (case-insensitively), if any.

    What ``filter=userName eq "…"`` finds, which identity providers ask before every push:
    one indexed read of plain columns, no ORM objects and no resource models.
    """
    rows = session.connection().execute(_USER_BY_NAME, {"key": user_name.lower()}).all()
    if not rows:
        return []
    first = rows[0]
    groups = [(r.group_id, r.display_name) for r in rows if r.group_id is not None]
    return [
        _served(
            first.id,
            first.state,
            first.attributes,
            first.created_at,
            first.updated_at,
            first.version,
            groups,
            base_url,
        )
    ]


def _select(resources: list[Any], search: SearchRequest[Any]) -> list[Any]:
    if search.filter is not None:
        compiled = search.filter
        resources = [r for r in resources if matches(compiled, r)]
    if search.sort_by is not None:
        resources = search.sort(resources)
    return resources


USER_INDEXED = frozenset({"username", "externalid", "id"})
GROUP_INDEXED = frozenset({"displayname", "externalid", "id"})


def _indexed_term(node: FilterNode | None, indexed: frozenset[str]) -> tuple[str, str] | None:
    """An ``eq`` on one of the ``indexed`` core attributes, which the database can answer."""
    if isinstance(node, Comparison) and node.op is CompareOperator.eq:
        path = node.attr_path
        core = path.uri in (None, "", UserResource.__schema__, GroupResource.__schema__)
        if core and not path.sub_attr and isinstance(node.value, str):
            attr = path.attr.lower()
            if attr in indexed:
                return attr, node.value
    if isinstance(node, LogicalExpr) and str(node.op).lower() == "and":
        for term in node.terms:
            found = _indexed_term(term, indexed)
            if found is not None:
                return found
    return None


def _save_user(
    session: Session, actor: Actor, current: Stored, resource: UserResource, base_url: str
) -> Stored:
    user, row, groups = current.user, current.row, current.groups
    user_name = resource.user_name or row.user_name
    if user_name.lower() != row.user_name_key:
        _unique_user_name(session, user_name, user.id)
    resource.groups = _memberships(groups)
    data = resource.model_dump(scim_ctx=Context.DEFAULT)
    try:
        fields = _decided_fields(session, data, user.email, groups)
    except InvalidInput as exc:
        raise ScimError(400, exc.detail, "invalidValue") from None
    # Only what changes: an unchanged profile or region needs no lookup, and a PATCH of an
    # attribute fleetkeep has no column for (title, phone …) no user update at all.
    fields = {k: v for k, v in fields.items() if getattr(user, k) != v}
    if fields:
        try:
            identity.update_user(session, actor, user.id, **fields)
        except Conflict as exc:
            raise ScimError(409, exc.detail, "uniqueness") from None
    _apply_active(session, actor, user, resource.active)
    row.user_name = user_name
    row.user_name_key = user_name.lower()
    row.external_id = resource.external_id
    row.attributes = _stored_attributes(data)
    row.version += 1
    row.updated_at = utcnow()
    # The flush first keeps the audit trail in order (the user's own events come before).
    session.flush()
    _record_update(session, actor, user.id, row.version)
    return Stored(user, row, groups, base_url)


def _decided_fields(
    session: Session, data: dict[str, Any], email: str, groups: list[tuple[int, str]]
) -> dict[str, Any]:
    """The user's columns that a User (its DEFAULT-context dump) and the first matching import
    mapping decide; ``email`` is the user's own when the User names none (InvalidInput when
    the address is not one)."""
    email = user_email(data) or email
    identity.validate_email(email)
    fields = _user_fields(data, email)
    mapping = match_mapping(_import_mappings(session), data, (name for _, name in groups))
    if mapping is not None:
        fields.update(_assignment(mapping))
    return fields


def _record_update(session: Session, actor: Actor, user_id: int, version: int) -> None:
    record(
        session,
        actor,
        "scim.user.update",
        "user",
        user_id,
        after={"version": version},
        at_once=True,
    )


def _apply_active(session: Session, actor: Actor, user: User, active: bool | None) -> None:
    if active is False and user.state is UserState.ACTIVE:
        identity.change_state(session, actor, user, UserState.PRESERVED, by=SOURCE)
    elif active is True and user.state is not UserState.ACTIVE:
        if user.state is UserState.PRESERVED and user.preserved_by == SOURCE:
            identity.change_state(session, actor, user, UserState.ACTIVE)
        else:
            raise ScimError(
                400,
                f"user {user.id} was {user.state} by {user.preserved_by or 'an administrator'}; "
                "SCIM only reactivates users it preserved itself — ask an administrator",
                "mutability",
            )


_USER_ID_BY_NAME = select(ScimUser.user_id).where(ScimUser.user_name_key == bindparam("key"))


def _unique_user_name(session: Session, user_name: str, own_id: int | None) -> None:
    clash = session.connection().scalar(_USER_ID_BY_NAME, {"key": user_name.lower()})
    if clash is not None and clash != own_id:
        raise ScimError(409, f"userName {user_name!r} is already SCIM user {clash}", "uniqueness")


def _user_fields(data: dict[str, Any], email: str) -> dict[str, Any]:
    """The user's columns a User (its DEFAULT-context dump) decides."""
    user_name = data.get("userName") or email
    return {
        "email": email,
        "username": sanitize_username(user_name),
        "display_name": display_name(data)[:256],
        "external_id": data.get("externalId"),
        "upn": user_name if "@" in user_name else None,
    }


def _stored_attributes(data: dict[str, Any]) -> dict[str, Any]:
    """What fleetkeep has no column for, from the User's DEFAULT-context dump; ``id``,
    ``meta`` and ``groups`` are ours, and a ``password`` (never served, fleetkeep has no use
    for it) is not kept.

    ``active`` is kept only to know whether the client assigned it: once assigned, the served
    value follows the user's state (an admin's preserve shows as ``false``).
    """
    return {k: v for k, v in data.items() if k not in ("id", "meta", "groups", "password")}


def _served(
    user_id: int,
    state: UserState,
    attributes: dict[str, Any],
    created: datetime,
    modified: datetime,
    version: int,
    groups: list[tuple[int, str]],
    base_url: str,
) -> dict[str, Any]:
    return served_user(
        attributes,
        user_id=user_id,
        active=state is UserState.ACTIVE,
        groups=[membership(group_id, name) for group_id, name in groups],
        location=_location(base_url, user_id),
        created=created,
        modified=modified,
        version=version,
    )


def _location(base_url: str, user_id: int) -> str:
    return f"{base_url}/Users/{user_id}"


def _memberships(groups: list[tuple[int, str]]) -> list[GroupMembership] | None:
    return [
        GroupMembership(value=str(group_id), display=name, type="direct")
        for group_id, name in groups
    ] or None


def _group_names(resource: UserResource) -> list[str]:
    return [g.display for g in resource.groups or [] if g.display]


def _with_groups(query: Select[User, ScimUser]) -> Select[User, ScimUser, int, str]:
    """The query's users with their SCIM groups (one row per membership)."""
    return (
        query.add_columns(ScimGroup.id, ScimGroup.display_name)
        .outerjoin(ScimGroupMember, ScimGroupMember.user_id == User.id)
        .outerjoin(ScimGroup, ScimGroup.id == ScimGroupMember.group_id)
        .order_by(ScimGroup.id)
    )


_USER_BY_ID = _with_groups(
    select(User, ScimUser)
    .join(ScimUser, ScimUser.user_id == User.id)
    .where(User.id == bindparam("user_id"))
)


def _user_by_id(
    session: Session, user_id: str
) -> list[tuple[User, ScimUser, list[tuple[int, str]]]]:
    if not user_id.isdigit():
        return []
    return _users_with_groups(session, _USER_BY_ID, {"user_id": int(user_id)})


def _users_with_groups(
    session: Session,
    joined: Select[User, ScimUser, int, str],
    params: dict[str, Any] | None = None,
) -> list[tuple[User, ScimUser, list[tuple[int, str]]]]:
    """The users and their groups (id, name) that a ``_with_groups`` query selects."""
    found: dict[int, tuple[User, ScimUser, list[tuple[int, str]]]] = {}
    for user, row, group_id, name in session.execute(joined, params):
        entry = found.setdefault(user.id, (user, row, []))
        if group_id is not None:
            entry[2].append((group_id, name))
    return list(found.values())


# Groups ---------------------------------------------------------------------------------------


@dataclass
class StoredGroup:
    resource: GroupResource
    version: int


def create_group(
    session: Session, actor: Actor, resource: GroupResource, base_url: str
) -> StoredGroup:
    name = resource.display_name or ""
    _unique_group_name(session, name, None)
    member_ids = _member_ids(session, resource.members)
    now = utcnow()
    group = ScimGroup(
        display_name=name,
        display_name_key=name.lower(),
        external_id=resource.external_id,
        created_at=now,
        updated_at=now,
    )
    session.add(group)
    session.flush()
    _set_members(session, actor, group, member_ids, base_url)
    record(
        session,
        actor,
        "scim.group.create",
        "scim_group",
        group.id,
        after={"displayName": name, "members": len(member_ids)},
    )
    return get_group(session, str(group.id), base_url)


def get_group(session: Session, group_id: str, base_url: str) -> StoredGroup:
    group = _load_group(session, group_id)
    return StoredGroup(_group_resource(session, group, base_url), group.version)


def replace_group(
    session: Session,
    actor: Actor,
    group_id: str,
    resource: GroupResource,
    base_url: str,
    if_match: str | None = None,
) -> StoredGroup:
    current = get_group(session, group_id, base_url)
    check_if_match(if_match, current.version)
    try:
        resource.replace(current.resource)
    except Exception as exc:
        raise ScimError(400, str(exc), "mutability") from None
    return _save_group(session, actor, group_id, resource, base_url)


def patch_group(
    session: Session,
    actor: Actor,
    group_id: str,
    patch: PatchOp[GroupResource],
    base_url: str,
    if_match: str | None = None,
) -> StoredGroup:
    current = get_group(session, group_id, base_url)
    check_if_match(if_match, current.version)
    changed = current.resource.model_copy(deep=True)
    if not apply_patch(changed, patch):
        return current
    return _save_group(session, actor, group_id, changed, base_url)


def delete_group(
    session: Session, actor: Actor, group_id: str, base_url: str, if_match: str | None = None
) -> None:
    group = _load_group(session, group_id)
    check_if_match(if_match, group.version)
    _set_members(session, actor, group, {}, base_url)
    record(
        session,
        actor,
        "scim.group.delete",
        "scim_group",
        group.id,
        before={"displayName": group.display_name},
    )
    session.delete(group)
    session.flush()


def search_groups(
    session: Session, search: SearchRequest[GroupResource], base_url: str
) -> list[GroupResource]:
    query = select(ScimGroup).order_by(ScimGroup.id)
    pushed = _indexed_term(search.filter.ast if search.filter else None, GROUP_INDEXED)
    if pushed is not None:
        attr, value = pushed
        if attr == "displayname":
            query = query.where(ScimGroup.display_name_key == value.lower())
        elif attr == "externalid":
            query = query.where(ScimGroup.external_id == value)
        elif attr == "id" and value.isdigit():
            query = query.where(ScimGroup.id == int(value))
        else:
            return []
    groups = list(session.scalars(query))
    resources = [_group_resource(session, g, base_url) for g in groups]
    return _select(resources, search)


def _save_group(
    session: Session, actor: Actor, group_id: str, resource: GroupResource, base_url: str
) -> StoredGroup:
    group = _load_group(session, group_id)
    name = resource.display_name or group.display_name
    if name.lower() != group.display_name_key:
        _unique_group_name(session, name, group.id)
    member_ids = _member_ids(session, resource.members)
    group.display_name = name
    group.display_name_key = name.lower()
    group.external_id = resource.external_id
    group.version += 1
    group.updated_at = utcnow()
    _set_members(session, actor, group, member_ids, base_url)
    record(
        session,
        actor,
        "scim.group.update",
        "scim_group",
        group.id,
        after={"displayName": name, "members": len(member_ids), "version": group.version},
    )
    session.flush()
    return StoredGroup(_group_resource(session, group, base_url), group.version)


def _set_members(
    session: Session, actor: Actor, group: ScimGroup, wanted: dict[int, str | None], base_url: str
) -> None:
    """Replace the group's members and re-map the users whose groups changed."""
    current = {
        m.user_id: m
        for m in session.scalars(
            select(ScimGroupMember).where(ScimGroupMember.group_id == group.id)
        )
    }
    added, removed = set(wanted) - set(current), set(current) - set(wanted)
    if removed:
        session.execute(
            delete(ScimGroupMember).where(
                ScimGroupMember.group_id == group.id, ScimGroupMember.user_id.in_(removed)
            )
        )
    for user_id, member in current.items():
        if user_id in wanted:
            member.display = wanted[user_id]
    for user_id in sorted(added):
        session.add(ScimGroupMember(group_id=group.id, user_id=user_id, display=wanted[user_id]))
    session.flush()
    if added or removed:
        _remap(session, actor, sorted(added | removed), base_url)


def _remap(session: Session, actor: Actor, user_ids: list[int], base_url: str) -> None:
    """Group membership can decide the mapping; apply the new first match, if any."""
    mappings = _import_mappings(session)
    if not any(m.rule.type == "group" or m.rule.type == "filter" for m in mappings):
        return
    for user_id in user_ids:
        stored = get_user(session, str(user_id), base_url)
        data = stored.resource.model_dump(scim_ctx=Context.DEFAULT)
        mapping = match_mapping(mappings, data, (name for _, name in stored.groups))
        if mapping is not None:
            identity.update_user(session, actor, user_id, **_assignment(mapping))


def _member_ids(session: Session, members: Iterable[GroupMember] | None) -> dict[int, str | None]:
    """Member user id → the ``display`` the client gave; unknown members are refused."""
    wanted = {str(m.value): m.display for m in members or [] if m.value is not None}
    ids = {int(v) for v in wanted if v.isdigit()}
    known = (
        set(session.scalars(select(ScimUser.user_id).where(ScimUser.user_id.in_(ids))))
        if ids
        else set()
    )
    unknown = sorted(set(wanted) - {str(i) for i in known})
    if unknown:
        raise ScimError(
            400,
            f"member(s) {', '.join(unknown[:10])} are not SCIM users of this service",
            "invalidValue",
        )
    return {user_id: wanted[str(user_id)] for user_id in known}


def _load_group(session: Session, group_id: str) -> ScimGroup:
    group = session.get(ScimGroup, int(group_id)) if group_id.isdigit() else None
    if group is None:
        raise ScimError(404, f"Group {group_id} not found")
    return group


def _unique_group_name(session: Session, name: str, own_id: int | None) -> None:
    clash = session.scalar(select(ScimGroup.id).where(ScimGroup.display_name_key == name.lower()))
    if clash is not None and clash != own_id:
        raise ScimError(409, f"displayName {name!r} is already SCIM group {clash}", "uniqueness")


def _group_resource(session: Session, group: ScimGroup, base_url: str) -> GroupResource:
    members = session.execute(
        select(User.id, ScimGroupMember.display, User.display_name, User.username)
        .join(ScimGroupMember, ScimGroupMember.user_id == User.id)
        .where(ScimGroupMember.group_id == group.id)
        .order_by(User.id)
    )
    resource = GroupResource(
        id=str(group.id),
        external_id=group.external_id,
        display_name=group.display_name,
        members=[
            GroupMember(
                value=str(user_id),
                display=given or name or username,
                type="User",
                ref=f"{base_url}/Users/{user_id}",
            )
            for user_id, given, name, username in members
        ]
        or None,
    )
    resource.meta = meta(
        "Group", f"{base_url}/Groups/{group.id}", group.created_at, group.updated_at, group.version
    )
    return resource


def counts(session: Session) -> dict[str, int]:
    return {
        "users": session.scalar(select(func.count()).select_from(ScimUser)) or 0,
        "groups": session.scalar(select(func.count()).select_from(ScimGroup)) or 0,
    }
