"""What activation needs from directories: the deployment-cache lookup and a live password bind.

IMD v2/v5 find the user in the cache the last directory sync wrote (no directory round trip
while a device waits); only an optional password proof talks to the directory itself.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy.orm import Session

from fleetkeep.deployment.errors import ActivationRefused
from fleetkeep.directories.ldap import FetchFailed, connect
from fleetkeep.directories.models import Directory
from fleetkeep.directories.service import ldap_config
from fleetkeep.directories.sync import AmbiguousUser, find_deployment_candidate
from fleetkeep.identity.models import QuotaUnit

BIND_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class DirectoryCandidate:
    """A directory user a deployment mapping admits, with what their account gets."""

    directory_id: int
    mapping_id: int
    email: str
    upn: str
    dn: str
    external_id: str
    username: str
    display_name: str
    profile_id: int
    storage_region_id: int
    quota: tuple[int, QuotaUnit] | None

    @property
    def source(self) -> str:
        return f"directory:{self.directory_id}"


def find_candidate(
    session: Session, *, by: str, value: str, domain: str | None
) -> DirectoryCandidate | None:
    try:
        if by == "upn":
            found = find_deployment_candidate(session, upn=value)
        else:
            found = find_deployment_candidate(session, username=value, domain=domain)
    except AmbiguousUser as exc:
        raise ActivationRefused("user_ambiguous", exc.detail) from None
    if found is None or not found.email:
        return None
    quota = None
    if found.quota_value is not None and found.quota_unit is not None:
        quota = (found.quota_value, QuotaUnit(found.quota_unit))
    return DirectoryCandidate(
        directory_id=found.directory_id,
        mapping_id=found.mapping_id,
        email=found.email,
        upn=found.upn,
        dn=found.dn,
        external_id=found.external_id,
        username=found.sam_account_name,
        display_name=found.display_name,
        profile_id=found.profile_id,
        storage_region_id=found.storage_region_id,
        quota=quota,
    )


def verify_password(session: Session, candidate: DirectoryCandidate, password: str) -> None:
    """Prove the device user knows their directory password: bind as them, with the directory's
    own hosts, fail-over, TLS and CA settings."""
    directory = session.get(Directory, candidate.directory_id)
    if directory is None:
        raise ActivationRefused("directory_unreachable", "the directory no longer exists")
    if not password:
        raise ActivationRefused("password_rejected", "an empty password proves nothing")
    config = replace(
        ldap_config(directory), bind_dn=candidate.dn, timeout_seconds=BIND_TIMEOUT_SECONDS
    )
    try:
        conn = connect(config, password)
    except FetchFailed as exc:
        if exc.stage == "bind":
            raise ActivationRefused(
                "password_rejected", "the directory rejected the password for this user"
            ) from None
        raise ActivationRefused(
            "directory_unreachable",
            f"directory {directory.name!r} could not be reached ({exc.stage}): {exc.detail}",
        ) from None
    conn.unbind_s()
