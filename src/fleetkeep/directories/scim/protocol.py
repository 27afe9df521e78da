"""SCIM 2.0 protocol rules (RFC 7643/7644) as pure functions: no database, no HTTP.

The RFC's resource models, filter grammar and evaluation, PATCH semantics, ``attributes`` /
``excludedAttributes`` projection and error keywords come from ``scim2-models``; this module
adds what a service provider decides: the limits, the discovery documents, ETags, paging, the
tolerated client quirks (Entra ID's ``"False"``) and the translation of failures into
``ScimError`` with the right ``status`` and ``scimType``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any, TypeVar

from pydantic import ValidationError
from scim2_models import (
    AuthenticationScheme,
    Bulk,
    ChangePassword,
    Context,
    EnterpriseUser,
    Error,
    ETag,
    Filter,
    Group,
    ListResponse,
    Meta,
    Pagination,
    Patch,
    PatchOp,
    Required,
    Resource,
    ResourceType,
    Schema,
    SCIMException,
    ScimFilter,
    ScimPolicy,
    SearchRequest,
    ServiceProviderConfig,
    Sort,
    User,
)

from fleetkeep.errors import FleetkeepError

UserResource = User[EnterpriseUser]
GroupResource = Group
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"
SEARCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:SearchRequest"
MEDIA_TYPE = "application/scim+json"
MAX_RESULTS = 1000
MAX_FILTER_CHARS = 2048
MAX_FILTER_DEPTH = 32
MAX_PATCH_OPERATIONS = 100
# Characters that fleetkeep user names cannot hold (they become path components on devices).
UNSAFE_NAME_CHARS = str.maketrans({c: "_" for c in "?*/\\<>"})

R = TypeVar("R", bound=Resource[Any])
# ``filter=userName eq "…"``, what identity providers send before every push; the value is a
# JSON string (RFC 7644 §3.4.2.2). Attribute names and operators are case-insensitive.
USER_NAME_EQ = re.compile(r'\s*username\s+eq\s+("(?:[^"\\]|\\.)*")\s*', re.IGNORECASE)
# User attributes never returned (RFC 7643 §4.1.1: ``password`` is ``returned: never``).
NEVER_RETURNED = ("password",)

# Single-valued core User attributes holding a plain string (no type, no rule beyond ``str``)
# that fleetkeep keeps no column for: ``simple_patch`` sets them without the PATCH engine.
# Paths are case-insensitive and may carry the core schema URN.
_PLAIN_ATTRIBUTES = {
    prefix + name.lower(): name
    for name in ("nickName", "title", "userType", "preferredLanguage", "locale", "timezone")
    for prefix in ("", User.__schema__.lower() + ":")
}

# What real identity providers send and the RFC's strict reading refuses: Entra ID removes
# members with ``remove`` + ``value`` and adds emails through an unmatched path filter;
# Okta and Entra send attributes of custom schemas we do not keep.
POLICY = ScimPolicy(
    unknown=ScimPolicy.Unknown.ignore,
    remove_value_as_filter=ScimPolicy.RemoveValue.apply,
    unmatched_path_filter=ScimPolicy.UnmatchedPathFilter.create,
)


class ScimError(FleetkeepError):
    """A refusal in SCIM's own error format (RFC 7644 §3.12)."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail, code=scim_type or "scim_error")
        self.status = status
        self.scim_type = scim_type

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "schemas": [ERROR_SCHEMA],
            "status": str(self.status),
            "detail": self.detail,
        }
        if self.scim_type:
            body["scimType"] = self.scim_type
        return body


def not_found(kind: str, resource_id: str) -> ScimError:
    return ScimError(404, f"{kind} {resource_id} not found")


def from_library(exc: SCIMException) -> ScimError:
    return ScimError(exc.status, exc.detail, exc.scim_type or None)


def from_validation(exc: ValidationError) -> ScimError:
    errors = Error.from_validation_errors(exc)
    first = errors[0]
    detail = "; ".join(e.detail or "" for e in errors)
    return ScimError(first.status or 400, detail, first.scim_type)


# Requests -------------------------------------------------------------------------------------


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or ``invalidSyntax``."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScimError(400, f"the body is not valid JSON: {exc}", "invalidSyntax") from None
    if not isinstance(data, dict):
        raise ScimError(400, "the body must be a JSON object", "invalidSyntax")
    return data


def parse_resource(model: type[R], data: dict[str, Any], context: Context) -> R:
    """Validate a creation or replacement payload against the RFC model."""
    schemas = data.get("schemas")
    if not isinstance(schemas, list) or not schemas:
        raise ScimError(400, "'schemas' must list the resource's schema URNs", "invalidSyntax")
    known = {model.__schema__, *(m.__schema__ for m in model.get_extension_models().values())}
    unknown = [s for s in schemas if not isinstance(s, str) or s not in known]
    if unknown:
        raise ScimError(400, f"unknown schema(s): {', '.join(map(str, unknown))}", "invalidSyntax")
    if model.__schema__ not in schemas:
        raise ScimError(400, f"'schemas' must contain {model.__schema__}", "invalidSyntax")
    try:
        return model.model_validate(_tolerate_clients(data), scim_ctx=context, scim_policy=POLICY)
    except ValidationError as exc:
        raise from_validation(exc) from None
    except SCIMException as exc:
        raise from_library(exc) from None


def parse_search(model: type[R], params: dict[str, Any]) -> SearchRequest[R]:
    """Query parameters (or a ``/.search`` body) → a validated search request."""
    text = params.get("filter")
    if text is not None and len(str(text)) > MAX_FILTER_CHARS:
        raise ScimError(
            400, f"filters longer than {MAX_FILTER_CHARS} characters are refused", "invalidFilter"
        )
    if text is not None and _nesting(str(text)) > MAX_FILTER_DEPTH:
        raise ScimError(
            400, f"filters nested over {MAX_FILTER_DEPTH} levels are refused", "invalidFilter"
        )
    try:
        search: SearchRequest[R] = _generic(SearchRequest, model).model_validate(params)
    except ValidationError as exc:
        raise from_validation(exc) from None
    except SCIMException as exc:
        raise from_library(exc) from None
    except RecursionError:
        raise ScimError(400, "the filter is nested too deeply", "invalidFilter") from None
    return search


def user_name_filter(params: dict[str, Any]) -> str | None:
    """The userName of a search that is only ``filter=userName eq "…"``, else None.

    Such a search is answered from the unique index alone (userName is ``caseExact: false``,
    so the index on its lower-cased form finds exactly the matches) without the filter parser
    and the resource models, which cost a GET most of its time.
    """
    text = params.get("filter")
    if len(params) != 1 or not isinstance(text, str) or len(text) > MAX_FILTER_CHARS:
        return None
    found = USER_NAME_EQ.fullmatch(text)
    if found is None:
        return None
    try:
        value = json.loads(found.group(1))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, str) else None


@cache
def _generic(generic: Any, model: type[Resource[Any]]) -> Any:
    """``SearchRequest[User]`` and the like, made once: each subscript costs ~10-40 µs."""
    return generic[model]


def _nesting(text: str) -> int:
    """The deepest bracket nesting outside quoted strings (bounds parser recursion)."""
    depth = deepest = 0
    quoted = escaped = False
    for char in text:
        if quoted:
            escaped, quoted = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            quoted = True
        elif char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]":
            depth -= 1
    return deepest


def parse_patch(model: type[R], data: dict[str, Any]) -> PatchOp[R]:
    operations = data.get("Operations")
    if isinstance(operations, list):
        operations = [t for op in operations for t in _tolerate_operation(op)]
        if len(operations) > MAX_PATCH_OPERATIONS:
            raise ScimError(
                400, f"at most {MAX_PATCH_OPERATIONS} operations per PATCH", "invalidValue"
            )
        data = {**data, "Operations": operations}
    try:
        patch: PatchOp[R] = _generic(PatchOp, model).model_validate(
            data, scim_ctx=Context.RESOURCE_PATCH_REQUEST, scim_policy=POLICY
        )
    except ValidationError as exc:
        raise from_validation(exc) from None
    except SCIMException as exc:
        raise from_library(exc) from None
    except RecursionError:
        raise ScimError(400, "a path filter is nested too deeply", "invalidPath") from None
    return patch


def apply_patch(resource: R, patch: PatchOp[R]) -> bool:
    """Apply the operations in order; returns whether the resource changed."""
    try:
        return patch.patch(resource, POLICY)
    except SCIMException as exc:
        raise from_library(exc) from None
    except ValidationError as exc:
        raise from_validation(exc) from None


def simple_patch(data: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The (attribute, value) pairs of a PATCH that only sets plain strings, else None.

    What identity providers push most (a title, a locale …): ``add``/``replace`` of a
    single-valued core attribute that holds a string and that fleetkeep keeps no column for.
    ``apply_simple_patch`` gives such a PATCH the result the scim2-models engine gives (tests
    hold the two together) without validating the resource and the operations as models, which
    costs a PATCH most of its time. Anything else (other paths, values, shapes) returns None
    and takes the engine, which also refuses what is wrong.
    """
    operations = data.get("Operations")
    if (
        data.keys() != {"schemas", "Operations"}
        or data["schemas"] != [PatchOp.__schema__]
        or not isinstance(operations, list)
        or not 0 < len(operations) <= MAX_PATCH_OPERATIONS
    ):
        return None
    found = []
    for operation in operations:
        if not isinstance(operation, dict) or operation.keys() != {"op", "path", "value"}:
            return None
        op, path, value = operation["op"], operation["path"], operation["value"]
        if not isinstance(op, str) or op.lower() not in {"add", "replace"}:
            return None
        # Entra ID's "True"/"False" strings are booleans to us (``_tolerate_operation``).
        if not isinstance(value, str) or not value or value.lower() in {"true", "false"}:
            return None
        name = _PLAIN_ATTRIBUTES.get(path.lower()) if isinstance(path, str) else None
        if name is None:
            return None
        found.append((name, value))
    return found


def apply_simple_patch(
    attributes: dict[str, Any], operations: list[tuple[str, str]]
) -> tuple[dict[str, Any], bool]:
    """The stored attributes with ``simple_patch``'s operations applied, and whether they
    changed (setting an attribute to the value it has changes nothing, as in the engine)."""
    patched = dict(attributes)
    changed = False
    for name, value in operations:
        if patched.get(name) != value:
            patched[name] = value
            changed = True
    return patched, changed


def _tolerate_clients(data: dict[str, Any]) -> dict[str, Any]:
    """Entra ID sends booleans as the strings "True"/"False" and managers without ``$ref``."""
    data = dict(data)
    active = data.get("active")
    if isinstance(active, str) and active.lower() in {"true", "false"}:
        data["active"] = active.lower() == "true"
    extension = data.get(ENTERPRISE)
    if isinstance(extension, dict) and "manager" in extension:
        data[ENTERPRISE] = {**extension, "manager": _manager(extension["manager"])}
    return data


def _manager(value: Any) -> Any:
    if isinstance(value, str):
        value = {"value": value}
    if isinstance(value, dict) and value.get("value") and not value.get("$ref"):
        return {**value, "$ref": f"../Users/{value['value']}"}
    return value


def _tolerate_operation(operation: Any) -> list[Any]:
    """The operation as the RFC would have it (Entra ID's shapes made explicit).

    A path-less ``add``/``replace`` whose value names a filtered path
    (``{"emails[type eq \"work\"].value": "x"}``) becomes one operation per such key, so the
    value is applied rather than ignored.
    """
    if not isinstance(operation, dict):
        return [operation]
    value = operation.get("value")
    path = operation.get("path")
    if isinstance(path, str) and path.lower().endswith("manager") and value is not None:
        return [{**operation, "value": _manager(value)}]
    if isinstance(value, str) and value.lower() in {"true", "false"}:
        return [{**operation, "value": value.lower() == "true"}]
    if isinstance(value, dict):
        filtered = {k: v for k, v in value.items() if isinstance(k, str) and "[" in k}
        plain = {k: v for k, v in value.items() if k not in filtered}
        expanded = [
            _tolerate_operation({**operation, "path": k, "value": v}) for k, v in filtered.items()
        ]
        rest = [{**operation, "value": _tolerate_clients(plain)}] if plain or not filtered else []
        return rest + [op for ops in expanded for op in ops]
    return [operation]


# Responses ------------------------------------------------------------------------------------


def matches(compiled: ScimFilter[R], resource: R) -> bool:
    try:
        return bool(compiled.match(resource))
    except (SCIMException, TypeError, ValueError):
        return False


def etag(version: int) -> str:
    return f'W/"{version}"'


def check_if_match(if_match: str | None, version: int) -> None:
    """RFC 7644 §3.14: a stale ``If-Match`` is refused with 412 and changes nothing."""
    if if_match is None:
        return
    wanted = {tag.strip() for tag in if_match.split(",")}
    if "*" in wanted or etag(version) in wanted or f'"{version}"' in wanted:
        return
    raise ScimError(412, f"the resource changed: its version is now {etag(version)}")


def meta(
    resource_type: str, location: str, created: datetime, modified: datetime, version: int
) -> Meta:
    return Meta(
        resource_type=resource_type,
        created=created,
        last_modified=modified,
        location=location,
        version=etag(version),
    )


def served_user(
    attributes: dict[str, Any],
    *,
    user_id: int,
    active: bool,
    groups: list[dict[str, str]],
    location: str,
    created: datetime,
    modified: datetime,
    version: int,
) -> dict[str, Any]:
    """A User as every response serves it, from its stored attributes (a model dump).

    Equal to ``dump`` of the validated resource with these ``id``, ``active``, ``groups`` and
    ``meta`` (tests hold the two together), without the model round trip that would cost a
    request about 0.8 ms. ``active`` follows the user's state once the client assigned it.
    """
    body = {k: v for k, v in attributes.items() if k not in NEVER_RETURNED}
    body["id"] = str(user_id)
    body["meta"] = {
        "resourceType": "User",
        "created": _timestamp(created),
        "lastModified": _timestamp(modified),
        "location": location,
        "version": etag(version),
    }
    if "active" in body:
        body["active"] = active
    if groups:
        body["groups"] = groups
    return body


def membership(group_id: int, name: str) -> dict[str, str]:
    """One of a User's ``groups`` as served (fleetkeep has direct memberships only)."""
    return {"value": str(group_id), "display": name, "type": "direct"}


def _timestamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def dump(resource: Resource[Any], context: Context, search: SearchRequest[Any] | None) -> Any:
    return resource.model_dump(scim_ctx=context, response_parameters=search)


def list_response(
    found: Sequence[tuple[Resource[Any], SearchRequest[Any]]], search: SearchRequest[Any]
) -> dict[str, Any]:
    """One page (``startIndex``/``count``, capped at ``MAX_RESULTS``) of what a search found.

    Each resource is projected with the search of its own type (a root ``/.search`` mixes
    Users and Groups).
    """
    offset = (search.start_index or 1) - 1
    count = MAX_RESULTS if search.count is None else min(search.count, MAX_RESULTS)
    page = found[offset : offset + count]
    return list_page(
        len(found), search.start_index or 1, [dump(r, Context.SEARCH_RESPONSE, s) for r, s in page]
    )


def list_page(total: int, start: int, page: list[Any]) -> dict[str, Any]:
    """A ListResponse holding ``page``, the served resources from ``start`` on."""
    return {
        "schemas": [ListResponse.__schema__],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": len(page),
        "Resources": page,
    }


def sanitize_username(name: str) -> str:
    return name.translate(UNSAFE_NAME_CHARS)


def user_email(data: dict[str, Any]) -> str | None:
    """The primary e-mail, else a work one, else any, else ``userName`` when it is an address.

    ``data`` is a User's DEFAULT-context dump (or stored attributes), so the rule applies
    alike to a validated resource and to what a simple PATCH changed without the models.
    """
    emails = [e for e in data.get("emails") or [] if e.get("value")]
    for wanted in (
        lambda e: e.get("primary"),
        lambda e: str(e.get("type")) == "work",
        lambda e: True,
    ):
        for email in emails:
            if wanted(email):
                return str(email["value"])
    user_name = data.get("userName")
    if user_name and "@" in user_name:
        return str(user_name)
    return None


def display_name(data: dict[str, Any]) -> str:
    """``displayName``, else the given and family names (from a DEFAULT-context dump)."""
    if data.get("displayName"):
        return str(data["displayName"])
    name = data.get("name") or {}
    return " ".join(name[p] for p in ("givenName", "familyName") if name.get(p))


# Discovery ------------------------------------------------------------------------------------


def service_provider_config(base_url: str) -> dict[str, Any]:
    config = ServiceProviderConfig(
        documentation_uri="https://fleetkeep.dev/docs/scim",
        patch=Patch(supported=True),
        bulk=Bulk(supported=False, max_operations=0, max_payload_size=0),
        filter=Filter(supported=True, max_results=MAX_RESULTS),
        change_password=ChangePassword(supported=False),
        sort=Sort(supported=True),
        etag=ETag(supported=True),
        pagination=Pagination(cursor=False, index=True, default_pagination_method="index"),
        authentication_schemes=[
            AuthenticationScheme(
                type="oauthbearertoken",
                name="Bearer token",
                description="A SCIM token made with 'fleetkeep scim token create'",
                primary=True,
            )
        ],
        meta=Meta(
            resource_type="ServiceProviderConfig", location=f"{base_url}/ServiceProviderConfig"
        ),
    )
    return dict(config.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE))


def resource_types(base_url: str) -> list[dict[str, Any]]:
    found = []
    for model in (UserResource, GroupResource):
        resource_type = ResourceType.from_resource(model)
        resource_type.meta = Meta(
            resource_type="ResourceType", location=f"{base_url}/ResourceTypes/{resource_type.id}"
        )
        found.append(dict(resource_type.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)))
    return found


def schemas(base_url: str) -> list[dict[str, Any]]:
    found = []
    for model in (User, EnterpriseUser, Group):
        schema = model.to_schema()
        if model is User:
            _require_email(schema)
        schema.meta = Meta(resource_type="Schema", location=f"{base_url}/Schemas/{schema.id}")
        found.append(dict(schema.model_dump(scim_ctx=Context.RESOURCE_QUERY_RESPONSE)))
    return found


def _require_email(schema: Schema) -> None:
    """Every fleetkeep user has an e-mail address, so our User schema requires ``emails``."""
    for attribute in schema.attributes or []:
        if attribute.name == "emails":
            attribute.required = Required.true
            for sub in attribute.sub_attributes or []:
                if sub.name == "value":
                    sub.required = Required.true


def discovery_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return list_page(len(items), 1, items)
