"""Properties of the LDAP filter parser and of rule evaluation (hypothesis)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetkeep.directories.mappings import (
    And,
    Candidate,
    Compare,
    Extensible,
    Filter,
    FilterError,
    Not,
    Or,
    Present,
    Substring,
    evaluate_filter,
    parse_filter,
    parse_rule,
)
from fleetkeep.errors import InvalidInput

names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,8}(;[a-z]{1,5})?", fullmatch=True)
values = st.text(max_size=12)
parts = st.text(min_size=1, max_size=6)
oids = st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,5}){0,6}", fullmatch=True)


leaves = st.one_of(
    st.builds(Compare, names, st.sampled_from(["=", "~=", ">=", "<="]), values),
    st.builds(Present, names),
    st.builds(
        lambda a, i, m, f: Substring(a, i, tuple(m), f),
        names,
        values,
        st.lists(parts, max_size=3),
        values,
    ).filter(lambda s: bool(s.initial or s.any or s.final)),
    st.builds(Extensible, names | st.just(""), oids, values, st.booleans()),
)
filters = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.builds(lambda xs: And(tuple(xs)), st.lists(inner, min_size=1, max_size=4)),
        st.builds(lambda xs: Or(tuple(xs)), st.lists(inner, min_size=1, max_size=4)),
        st.builds(Not, inner),
    ),
    max_leaves=12,
)


@given(filters)
def test_printing_then_parsing_gives_the_same_filter(node: Filter) -> None:
    assert parse_filter(str(node)) == node


@given(st.text(alphabet="()&|!=*~<>:\\abcAB01 .;-", max_size=40) | st.text(max_size=40))
@settings(max_examples=500)
def test_the_parser_accepts_or_names_a_position_never_crashes(text: str) -> None:
    error: FilterError | None = None
    try:
        node = parse_filter(text)
    except FilterError as exc:
        error = exc
    if error is not None:
        assert 0 <= error.position <= max(len(text), 1)
    else:
        assert parse_filter(str(node)) == node


small_attrs = st.sampled_from(["cn", "mail", "department", "uid"])
small_values = st.sampled_from(["a", "B", "ab", "sales", "Sales", "12", "3", "x*y"])
entries = st.dictionaries(small_attrs, st.lists(small_values, max_size=3), max_size=4)
small_leaves = st.one_of(
    st.builds(Compare, small_attrs, st.sampled_from(["=", ">=", "<="]), small_values),
    st.builds(Present, small_attrs),
    st.builds(
        lambda a, i, f: Substring(a, i, (), f),
        small_attrs,
        st.sampled_from(["", "a", "s"]),
        st.sampled_from(["", "b", "es"]),
    ),
)
small_filters = st.recursive(
    small_leaves,
    lambda inner: st.one_of(
        st.builds(lambda xs: And(tuple(xs)), st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: Or(tuple(xs)), st.lists(inner, min_size=1, max_size=3)),
        st.builds(Not, inner),
    ),
    max_leaves=8,
)


def candidate(attrs: dict[str, list[str]]) -> Candidate:
    return Candidate("cn=x,dc=example", attrs, frozenset())


@given(small_filters, small_filters, entries)
def test_boolean_operators_follow_de_morgan(
    a: Filter, b: Filter, attrs: dict[str, list[str]]
) -> None:
    entry = candidate(attrs)
    left = evaluate_filter(Not(And((a, b))), entry)
    right = evaluate_filter(Or((Not(a), Not(b))), entry)
    assert left == right
    assert evaluate_filter(And((a, b)), entry) == (
        evaluate_filter(a, entry) and evaluate_filter(b, entry)
    )


@given(small_filters, entries)
def test_attribute_names_are_case_insensitive(node: Filter, attrs: dict[str, list[str]]) -> None:
    upper = {k.upper(): v for k, v in attrs.items()}
    assert evaluate_filter(node, candidate(attrs)) == evaluate_filter(node, candidate(upper))


@given(
    small_attrs,
    st.sampled_from(["", "a", "s"]),
    st.lists(parts, max_size=2),
    st.sampled_from(["", "b", "es"]),
    entries,
)
def test_substring_matches_like_the_equivalent_regular_expression(
    attr: str, initial: str, middle: list[str], final: str, attrs: dict[str, list[str]]
) -> None:
    node = Substring(attr, initial, tuple(middle), final)
    pattern = ".*".join(re.escape(p.casefold()) for p in (initial, *middle, final))
    expected = any(re.fullmatch(pattern, v.casefold(), re.DOTALL) for v in attrs.get(attr, []))
    assert evaluate_filter(node, candidate(attrs)) == expected


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
rule_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["all", "group", "ou", "attribute", "filter", "x"])},
    optional={
        "group": json_values,
        "ou": json_values,
        "nested": json_values,
        "subtree": json_values,
        "match": json_values,
        "conditions": json_values,
        "filter": json_values | st.text(alphabet="()&|=*ab", max_size=20),
    },
)


@given(rule_like | json_values)
@settings(max_examples=300)
def test_rule_validation_accepts_or_refuses_with_a_field_never_crashes(raw: Any) -> None:
    error: InvalidInput | None = None
    try:
        rule = parse_rule(raw)
    except InvalidInput as exc:
        error = exc
    if error is not None:
        assert str(error.extra["field"]).startswith("rule")
    else:
        rule.matches(candidate({"cn": ["a"]}))


@pytest.mark.parametrize(
    ("text", "position"),
    [("(cn=a", 5), ("(&(cn=a)", 8), ("(cn=a\\zz)", 5), ("(cn=a(b)", 5), ("(=a)", 1), ("", 0)],
)
def test_malformed_filters_point_at_the_problem(text: str, position: int) -> None:
    with pytest.raises(FilterError) as caught:
        parse_filter(text)
    assert caught.value.position == position
