"""Mapping rules (group incl. nested, OU, attribute conditions, raw LDAP filter) and their tests.

Rules are evaluated on our side, against the entries a sync already fetched, never by one
server-side search per mapping. Why: a sync makes a single paged search whatever the number
of mappings; nested groups are resolved the same way on AD, OpenLDAP, Entra and Google (AD's
``LDAP_MATCHING_RULE_IN_CHAIN`` is slow on large forests and OpenLDAP lacks it); dry runs and
"why did this user land in that profile" work without a directory round trip; and a mapping
means the same thing whatever the source. The price: a raw filter can only look at attributes
the sync fetches, so the LDAP source adds every attribute a filter names to its search.

Rule JSON, by ``type``:

- ``{"type": "all"}``
- ``{"type": "group", "group": "<DN or name>", "nested": true}``
- ``{"type": "ou", "ou": "<DN>", "subtree": true}``
- ``{"type": "attribute", "match": "all"|"any", "conditions":
  [{"attribute": "department", "op": "equals", "value": "Sales"}, …]}``
- ``{"type": "filter", "filter": "(&(objectClass=user)(department=Sales))"}`` (RFC 4515)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import ldap.dn

from fleetkeep.errors import InvalidInput

# Matching rules of Active Directory that a filter may use (extensible match).
BIT_AND = "1.2.840.113556.1.4.803"
BIT_OR = "1.2.840.113556.1.4.804"
IN_CHAIN = "1.2.840.113556.1.4.1941"
# Attributes whose values are DNs: compared after DN normalisation.
DN_ATTRIBUTES = frozenset(
    {"memberof", "member", "uniquemember", "manager", "distinguishedname", "entrydn"}
)
CONDITION_OPS = (
    "equals",
    "not_equals",
    "contains",
    "starts_with",
    "ends_with",
    "present",
    "absent",
)

_DN_SPACES = re.compile(r"(?<!\\)\s*([,=+])\s*")
_SPACED = re.compile(r"\s[,=+]|[,=+]\s")


def normalize_dn(dn: str) -> str:
    """Case, spacing and escaping do not matter in a DN: ``CN=Smith\\, Ann , OU=X`` equals
    ``cn=smith\\2c ann,ou=x``."""
    lowered = dn.strip().lower()
    if "\\" in lowered:
        return _canonical_dn(lowered)
    # Fast path: most DNs have no space next to a separator (syncs normalise every DN).
    if " " not in lowered or not _SPACED.search(lowered):
        return lowered
    return _DN_SPACES.sub(_separator, lowered)


def _canonical_dn(lowered: str) -> str:
    """Servers escape differently (``\\,`` or ``\\2c``): parse and re-escape one way."""
    try:
        rdns = ldap.dn.str2dn(lowered)
    except ldap.DECODING_ERROR:
        return _DN_SPACES.sub(_separator, lowered)
    canonical: str = ldap.dn.dn2str(
        [[(name, value.strip(), kind) for name, value, kind in rdn] for rdn in rdns]
    )
    return canonical.lower()


def _separator(match: re.Match[str]) -> str:
    return match.group(1)


def _first_rdn_value(dn: str) -> str:
    first = re.split(r"(?<!\\),", dn, maxsplit=1)[0]
    return first.partition("=")[2]


# Evaluation context -------------------------------------------------------------------------


@dataclass(slots=True)
class Candidate:
    """What rules look at for one entry: its DN, attributes and group memberships.

    ``groups`` are the direct groups (normalised DNs or ids); ``group_closure`` maps a group
    to every group it is nested in, for rules that follow nesting. A sync builds one per
    entry, so the derived fields are plain attributes, not cached properties.
    """

    dn: str
    attributes: Mapping[str, list[str]]
    groups: frozenset[str]
    group_closure: Mapping[str, frozenset[str]] = field(default_factory=dict)
    normalized_dn: str = field(init=False)
    all_groups: frozenset[str] = field(init=False)
    _lower: dict[str, list[str]] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.normalized_dn = normalize_dn(self.dn)
        if not self.group_closure or not self.groups:
            self.all_groups = self.groups
            return
        found = set(self.groups)
        for group in self.groups:
            found.update(self.group_closure.get(group, ()))
        self.all_groups = frozenset(found)

    @property
    def lower_attributes(self) -> dict[str, list[str]]:
        if self._lower is None:
            attrs = {k.lower(): v for k, v in self.attributes.items()}
            attrs.setdefault("distinguishedname", [self.dn])
            attrs.setdefault("entrydn", [self.dn])
            if self.groups:
                attrs.setdefault("memberof", sorted(self.groups))
            self._lower = attrs
        return self._lower

    def values(self, attribute: str) -> list[str]:
        return self.lower_attributes.get(attribute.lower(), [])


def group_closure(parents: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    """For each group, every group it is nested in (transitively); cycles are harmless."""
    graph = {normalize_dn(g): {normalize_dn(p) for p in ps} for g, ps in parents.items()}
    result: dict[str, frozenset[str]] = {}
    for start in graph:
        seen: set[str] = set()
        stack = list(graph[start])
        while stack:
            group = stack.pop()
            if group in seen or group == start:
                continue
            seen.add(group)
            known = result.get(group)
            if known is not None:
                seen.update(known)
                continue
            stack.extend(graph.get(group, ()))
        result[start] = frozenset(seen)
    return result


# LDAP filters (RFC 4515) ----------------------------------------------------------------------


class FilterError(ValueError):
    """A malformed filter; ``position`` is the 0-based offset of the problem."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.position = position


@dataclass(frozen=True)
class And:
    items: tuple[Filter, ...]

    def __str__(self) -> str:
        return "(&" + "".join(str(i) for i in self.items) + ")"


@dataclass(frozen=True)
class Or:
    items: tuple[Filter, ...]

    def __str__(self) -> str:
        return "(|" + "".join(str(i) for i in self.items) + ")"


@dataclass(frozen=True)
class Not:
    item: Filter

    def __str__(self) -> str:
        return f"(!{self.item})"


@dataclass(frozen=True)
class Compare:
    """``attr=value``, ``attr~=value``, ``attr>=value``, ``attr<=value``."""

    attribute: str
    op: Literal["=", "~=", ">=", "<="]
    value: str

    def __str__(self) -> str:
        return f"({self.attribute}{self.op}{escape_value(self.value)})"


@dataclass(frozen=True)
class Present:
    attribute: str

    def __str__(self) -> str:
        return f"({self.attribute}=*)"


@dataclass(frozen=True)
class Substring:
    attribute: str
    initial: str
    any: tuple[str, ...]
    final: str

    def __str__(self) -> str:
        middle = "*".join(escape_value(p) for p in self.any)
        body = escape_value(self.initial) + "*" + (middle + "*" if self.any else "")
        return f"({self.attribute}={body}{escape_value(self.final)})"


@dataclass(frozen=True)
class Extensible:
    attribute: str
    rule: str
    value: str
    dn_attributes: bool = False

    def __str__(self) -> str:
        dn = ":dn" if self.dn_attributes else ""
        rule = f":{self.rule}" if self.rule else ""
        return f"({self.attribute}{dn}{rule}:={escape_value(self.value)})"


Filter = And | Or | Not | Compare | Present | Substring | Extensible

_ATTR = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)(?:;[A-Za-z0-9-]+)*")
_OID = re.compile(r"[0-9]+(?:\.[0-9]+)*|[A-Za-z][A-Za-z0-9-]*")
_ESCAPE = {"\\": "\\5c", "*": "\\2a", "(": "\\28", ")": "\\29", "\0": "\\00"}
MAX_FILTER_LENGTH = 4096
MAX_FILTER_DEPTH = 50


def escape_value(value: str) -> str:
    return "".join(_ESCAPE.get(c, c) for c in value)


def parse_filter(text: str) -> Filter:
    """Parse an RFC 4515 filter (a bare ``attr=value`` is accepted too) or raise FilterError."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"filter is longer than {MAX_FILTER_LENGTH} characters", 0)
    source = text.strip()
    if not source:
        raise FilterError("filter is empty", 0)
    offset = len(text) - len(text.lstrip())
    if not source.startswith("("):
        source, offset = f"({source})", offset - 1
    parser = _FilterParser(source, offset, len(text))
    result = parser.filter(0)
    if parser.pos != len(source):
        parser.fail("unexpected text after the filter")
    return result


class _FilterParser:
    def __init__(self, text: str, offset: int, limit: int) -> None:
        self.text = text
        self.pos = 0
        self.offset = offset
        self.limit = limit  # the length of what the admin typed

    def fail(self, message: str) -> None:
        # A bare filter was wrapped in parentheses: its missing ')' is at the end of the text.
        raise FilterError(message, min(max(self.pos + self.offset, 0), self.limit))

    def expect(self, char: str) -> None:
        if self.pos >= len(self.text) or self.text[self.pos] != char:
            found = self.text[self.pos] if self.pos < len(self.text) else "end of filter"
            self.fail(f"expected {char!r}, found {found!r}")
        self.pos += 1

    def filter(self, depth: int) -> Filter:
        if depth > MAX_FILTER_DEPTH:
            self.fail(f"filter is nested deeper than {MAX_FILTER_DEPTH}")
        self.expect("(")
        head = self.text[self.pos : self.pos + 1]
        result: Filter
        if head in ("&", "|"):
            self.pos += 1
            items = []
            while self.text[self.pos : self.pos + 1] == "(":
                items.append(self.filter(depth + 1))
            if not items:
                self.fail(f"'{head}' needs at least one filter")
            result = And(tuple(items)) if head == "&" else Or(tuple(items))
        elif head == "!":
            self.pos += 1
            result = Not(self.filter(depth + 1))
        else:
            result = self.item()
        self.expect(")")
        return result

    def item(self) -> Filter:
        start = self.pos
        match = _ATTR.match(self.text, self.pos)
        attribute = ""
        if match:
            attribute = match.group(0)
            self.pos = match.end()
        rest = self.text[self.pos :]
        if rest.startswith(":"):
            return self.extensible(attribute, start)
        if not attribute:
            self.fail("expected an attribute name")
        ops: tuple[Literal["~=", ">=", "<="], ...] = ("~=", ">=", "<=")
        for op in ops:
            if rest.startswith(op):
                self.pos += 2
                return Compare(attribute, op, self.value())
        self.expect("=")
        return self.equality_or_substring(attribute)

    def extensible(self, attribute: str, start: int) -> Filter:
        dn_attributes = False
        if self.text.startswith(":dn:", self.pos):
            dn_attributes = True
            self.pos += 3
        rule = ""
        if self.text.startswith(":=", self.pos):
            self.pos += 2
        else:
            self.expect(":")
            match = _OID.match(self.text, self.pos)
            if not match:
                self.fail("expected a matching rule after ':'")
            assert match is not None
            rule = match.group(0)
            self.pos = match.end()
            self.expect(":")
            self.expect("=")
        if not attribute and not rule:
            self.pos = start
            self.fail("an extensible match needs an attribute or a matching rule")
        return Extensible(attribute, rule, self.value(), dn_attributes)

    def equality_or_substring(self, attribute: str) -> Filter:
        parts: list[str] = []
        current: list[str] = []
        stars = 0
        while self.pos < len(self.text) and self.text[self.pos] != ")":
            char = self.text[self.pos]
            if char == "*":
                parts.append("".join(current))
                current = []
                stars += 1
                self.pos += 1
            else:
                current.append(self.char())
        parts.append("".join(current))
        if stars == 0:
            return Compare(attribute, "=", parts[0])
        if stars == 1 and parts == ["", ""]:
            return Present(attribute)
        if any(p == "" for p in parts[1:-1]):
            self.fail("'**' is not allowed in a substring filter")
        return Substring(attribute, parts[0], tuple(parts[1:-1]), parts[-1])

    def value(self) -> str:
        out = []
        while self.pos < len(self.text) and self.text[self.pos] != ")":
            if self.text[self.pos] == "*":
                self.fail("'*' is only allowed in equality filters (escape it as \\2a)")
            out.append(self.char())
        return "".join(out)

    def char(self) -> str:
        char = self.text[self.pos]
        if char == "(":
            self.fail("unescaped '(' in a value (escape it as \\28)")
        if char != "\\":
            self.pos += 1
            return char
        # Escapes are \XX bytes; consecutive ones may form one UTF-8 character.
        raw = bytearray()
        while self.text.startswith("\\", self.pos):
            hexpair = self.text[self.pos + 1 : self.pos + 3]
            if len(hexpair) != 2 or not all(c in "0123456789abcdefABCDEF" for c in hexpair):
                self.fail("'\\' must be followed by two hex digits")
            raw.append(int(hexpair, 16))
            self.pos += 3
        return raw.decode("utf-8", errors="replace")


def filter_attributes(node: Filter) -> set[str]:
    """Every attribute a filter looks at (lower case), so that a fetch can request them."""
    if isinstance(node, And | Or):
        return set().union(*(filter_attributes(i) for i in node.items))
    if isinstance(node, Not):
        return filter_attributes(node.item)
    return {node.attribute.lower()} if node.attribute else set()


def evaluate_filter(node: Filter, entry: Candidate) -> bool:
    """Does the entry satisfy the filter? Comparisons ignore case (AD's default rules)."""
    if isinstance(node, And):
        return all(evaluate_filter(i, entry) for i in node.items)
    if isinstance(node, Or):
        return any(evaluate_filter(i, entry) for i in node.items)
    if isinstance(node, Not):
        return not evaluate_filter(node.item, entry)
    if isinstance(node, Present):
        return bool(entry.values(node.attribute))
    if isinstance(node, Substring):
        return any(_substring_match(node, v.casefold()) for v in entry.values(node.attribute))
    if isinstance(node, Compare):
        return _compare(node, entry)
    return _extensible(node, entry)


def _comparable(attribute: str, value: str) -> str:
    return normalize_dn(value) if attribute.lower() in DN_ATTRIBUTES else value.casefold()


def _compare(node: Compare, entry: Candidate) -> bool:
    values = entry.values(node.attribute)
    wanted = _comparable(node.attribute, node.value)
    if node.op == "=":
        return any(_comparable(node.attribute, v) == wanted for v in values)
    if node.op == "~=":
        squeeze = "".join(wanted.split())
        return any("".join(v.casefold().split()) == squeeze for v in values)
    for value in values:
        if _is_int(value) and _is_int(node.value):
            order = (int(value) > int(node.value)) - (int(value) < int(node.value))
        else:
            order = (value.casefold() > wanted) - (value.casefold() < wanted)
        if (node.op == ">=" and order >= 0) or (node.op == "<=" and order <= 0):
            return True
    return False


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit() and text.count("-") <= 1


def _substring_match(node: Substring, value: str) -> bool:
    initial, final = node.initial.casefold(), node.final.casefold()
    if not value.startswith(initial):
        return False
    pos = len(initial)
    for part in node.any:
        found = value.find(part.casefold(), pos)
        if found < 0:
            return False
        pos = found + len(part)
    return len(value) - pos >= len(final) and value.endswith(final)


def _extensible(node: Extensible, entry: Candidate) -> bool:
    if node.rule in (BIT_AND, BIT_OR):
        if not _is_int(node.value):
            return False
        mask = int(node.value)
        for value in entry.values(node.attribute):
            if not _is_int(value):
                continue
            bits = int(value) & mask
            if (node.rule == BIT_AND and bits == mask) or (node.rule == BIT_OR and bits):
                return True
        return False
    if node.rule == IN_CHAIN:
        wanted = normalize_dn(node.value)
        if node.attribute.lower() == "memberof":
            return wanted in entry.all_groups
        return any(normalize_dn(v) == wanted for v in entry.values(node.attribute))
    # Any other rule: treat as equality (case-insensitive), the common server default.
    return _compare(Compare(node.attribute, "=", node.value), entry)


# Rules ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """A parsed, validated mapping rule. ``target`` is the normalised group or OU and
    ``deep`` its nested/subtree flag, worked out once rather than per entry."""

    type: str
    spec: dict[str, Any]
    filter: Filter | None = None
    target: str = ""
    deep: bool = True

    def matches(self, entry: Candidate) -> bool:
        if self.type == "all":
            return True
        if self.type == "group":
            return _in_group(entry, self.target, self.deep)
        if self.type == "ou":
            return _in_ou(entry, self.target, self.deep)
        if self.type == "attribute":
            results = (_condition(c, entry) for c in self.spec["conditions"])
            return all(results) if self.spec.get("match", "all") == "all" else any(results)
        assert self.filter is not None
        return evaluate_filter(self.filter, entry)

    @property
    def attributes(self) -> set[str]:
        """Attributes (lower case) the rule reads, beyond DN and groups."""
        if self.type == "attribute":
            return {str(c["attribute"]).lower() for c in self.spec["conditions"]}
        if self.filter is not None:
            return filter_attributes(self.filter)
        return set()

    def named_attributes(self, field_name: str = "rule") -> list[tuple[str, str]]:
        """(field, attribute) for each attribute the rule names, to check against a schema."""
        if self.type == "attribute":
            return [
                (f"{field_name}.conditions[{i}].attribute", str(c["attribute"]))
                for i, c in enumerate(self.spec["conditions"])
            ]
        if self.filter is not None:
            return [(f"{field_name}.filter", a) for a in sorted(filter_attributes(self.filter))]
        return []

    @property
    def needs_nested_groups(self) -> bool:
        if self.type == "group":
            return bool(self.spec.get("nested", True))
        return self.type == "filter" and IN_CHAIN in str(self.filter)


def _in_group(entry: Candidate, wanted: str, nested: bool) -> bool:
    """``wanted``: a normalised group DN, or a bare group name."""
    groups = entry.all_groups if nested else entry.groups
    if wanted in groups:
        return True
    if "=" in wanted:
        return False
    # A bare name matches a group whose first RDN value (its cn) is that name.
    return any(_first_rdn_value(g) == wanted for g in groups)


def _in_ou(entry: Candidate, wanted: str, subtree: bool) -> bool:
    dn = entry.normalized_dn
    if subtree:
        return dn.endswith("," + wanted)
    parts = re.split(r"(?<!\\),", dn, maxsplit=1)
    return len(parts) == 2 and parts[1] == wanted


def _condition(condition: Mapping[str, Any], entry: Candidate) -> bool:
    values = [v.casefold() for v in entry.values(condition["attribute"])]
    op = condition["op"]
    if op == "present":
        return bool(values)
    if op == "absent":
        return not values
    wanted = str(condition.get("value", "")).casefold()
    if op == "equals":
        return wanted in values
    if op == "not_equals":
        return wanted not in values
    if op == "contains":
        return any(wanted in v for v in values)
    if op == "starts_with":
        return any(v.startswith(wanted) for v in values)
    return any(v.endswith(wanted) for v in values)


def parse_rule(raw: Any, field_name: str = "rule") -> Rule:
    """Validate rule JSON; errors are InvalidInput naming the offending field."""
    if not isinstance(raw, dict):
        raise InvalidInput("a rule is an object with a 'type'", field=field_name)
    kind = raw.get("type")
    allowed: dict[str, set[str]] = {
        "all": {"type"},
        "group": {"type", "group", "nested"},
        "ou": {"type", "ou", "subtree"},
        "attribute": {"type", "match", "conditions"},
        "filter": {"type", "filter"},
    }
    if kind not in allowed:
        raise InvalidInput(
            f"rule type must be one of {', '.join(allowed)}", field=f"{field_name}.type"
        )
    unknown = set(raw) - allowed[kind]
    if unknown:
        raise InvalidInput(
            f"unknown field(s) for a {kind} rule: {', '.join(sorted(unknown))}",
            field=f"{field_name}.{sorted(unknown)[0]}",
        )
    for flag in ("nested", "subtree"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise InvalidInput(f"{flag} must be true or false", field=f"{field_name}.{flag}")
    if kind == "group":
        _non_empty_string(raw, "group", field_name)
    elif kind == "ou":
        _non_empty_string(raw, "ou", field_name)
        if "=" not in raw["ou"]:
            raise InvalidInput(
                "ou must be a DN such as ou=Sales,dc=example,dc=com", field=f"{field_name}.ou"
            )
    elif kind == "attribute":
        _check_conditions(raw, field_name)
    elif kind == "filter":
        _non_empty_string(raw, "filter", field_name)
        try:
            parsed = parse_filter(raw["filter"])
        except FilterError as exc:
            raise InvalidInput(
                f"filter is not a valid LDAP filter: {exc}",
                field=f"{field_name}.filter",
                position=exc.position,
            ) from None
        return Rule("filter", dict(raw), parsed)
    if kind == "group":
        return Rule(
            kind, dict(raw), target=normalize_dn(raw["group"]), deep=raw.get("nested", True)
        )
    if kind == "ou":
        return Rule(kind, dict(raw), target=normalize_dn(raw["ou"]), deep=raw.get("subtree", True))
    return Rule(kind, dict(raw))


def _non_empty_string(raw: dict[str, Any], key: str, field_name: str) -> None:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{key} must be a non-empty string", field=f"{field_name}.{key}")


def _check_conditions(raw: dict[str, Any], field_name: str) -> None:
    if raw.get("match", "all") not in ("all", "any"):
        raise InvalidInput("match must be 'all' or 'any'", field=f"{field_name}.match")
    conditions = raw.get("conditions")
    if not isinstance(conditions, list) or not conditions:
        raise InvalidInput("conditions must be a non-empty list", field=f"{field_name}.conditions")
    for i, cond in enumerate(conditions):
        where = f"{field_name}.conditions[{i}]"
        if not isinstance(cond, dict):
            raise InvalidInput("a condition is an object", field=where)
        unknown = set(cond) - {"attribute", "op", "value"}
        if unknown:
            raise InvalidInput(
                f"unknown field(s): {', '.join(sorted(unknown))}", field=f"{where}.{min(unknown)}"
            )
        attribute = cond.get("attribute")
        if not isinstance(attribute, str) or not _ATTR.fullmatch(attribute):
            raise InvalidInput("attribute must be an attribute name", field=f"{where}.attribute")
        if cond.get("op") not in CONDITION_OPS:
            raise InvalidInput(f"op must be one of {', '.join(CONDITION_OPS)}", field=f"{where}.op")
        if cond["op"] not in ("present", "absent") and not isinstance(cond.get("value"), str):
            raise InvalidInput(f"value must be a string for '{cond['op']}'", field=f"{where}.value")
