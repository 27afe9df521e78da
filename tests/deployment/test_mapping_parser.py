"""Property tests of the IMD v4 CSV parser: what a spreadsheet writes is what gets stored."""

from __future__ import annotations

import csv
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from fleetkeep.audit.service import SYSTEM
from fleetkeep.deployment.mappings import parse_rows
from fleetkeep.identity.service import create_profile, create_region, create_user

HEADER = ["emailID", "userName", "deviceName", "deviceIdentifierType", "deviceIdentifier"]
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\x00"),
    min_size=1,
    max_size=40,
).filter(lambda v: v.strip() == v and v)
row = st.tuples(text, text, st.sampled_from(["serial-number", "uuid", "hostname"]), text)


def _users(db: Session) -> None:
    if db.info.get("seeded"):
        return
    profile = create_profile(db, SYSTEM, name="P")
    region = create_region(db, SYSTEM, name="R", store_url="file:///x")
    create_user(
        db, SYSTEM, email="ann@example.com", profile_id=profile.id, storage_region_id=region.id
    )
    db.flush()
    db.info["seeded"] = True


def _csv(rows: list[tuple[str, str, str, str]], encoding: str) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(HEADER)
    for user_name, device_name, kind, identifier in rows:
        writer.writerow(["ann@example.com", user_name, device_name, kind, identifier])
    return out.getvalue().encode(encoding)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(row, min_size=1, max_size=8), st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]))
def test_quoted_commas_newlines_and_any_script_survive_the_round_trip(
    db: Session, rows: list[tuple[str, str, str, str]], encoding: str
) -> None:
    _users(db)
    parsed, errors = parse_rows(db, _csv(rows, encoding))
    first: dict[tuple[str, str], tuple[str, str, str, str]] = {}
    for r in rows:
        first.setdefault((r[2], r[3].upper() if r[2] == "serial-number" else r[3].lower()), r)
    duplicates = len(rows) - len(first)
    assert len(errors) == duplicates
    assert all("also on line" in e.reason for e in errors)
    assert len(parsed) == len(first)
    for stored in parsed:
        original = first[(str(stored["identifier_type"]), stored["identifier"])]
        assert (stored["username"], stored["device_name"]) == (original[0], original[1])
