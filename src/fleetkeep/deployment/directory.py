"""What activation needs from directories: the deployment-cache lookup and a live password bind.

IMD v2/v5 find the user in the cache the last directory sync wrote (no directory round trip
while a device waits); only an optional password proof talks to the directory itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import ldap
from sqlalchemy.orm import Session

from fleetkeep.deployment.errors import ActivationRefused
from fleetkeep.directories.models import Directory
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
    """Prove the device user knows their directory password with a simple bind as them."""
    directory = session.get(Directory, candidate.directory_id)
    if directory is None:
        raise ActivationRefused("directory_unreachable", "the directory no longer exists")
    if not password:
        raise ActivationRefused("password_rejected", "an empty password proves nothing")
    uri = _uri(directory)
    conn = ldap.initialize(uri)
    conn.set_option(ldap.OPT_NETWORK_TIMEOUT, BIND_TIMEOUT_SECONDS)
    conn.set_option(ldap.OPT_TIMEOUT, BIND_TIMEOUT_SECONDS)
    conn.set_option(ldap.OPT_REFERRALS, 0)
    try:
        if directory.settings.get("start_tls"):
            conn.start_tls_s()
        conn.simple_bind_s(candidate.dn, password)
    except ldap.INVALID_CREDENTIALS:
        raise ActivationRefused(
            "password_rejected", "the directory rejected the password for this user"
        ) from None
    except ldap.LDAPError as exc:
        raise ActivationRefused(
            "directory_unreachable",
            f"directory {directory.name!r} at {uri} could not be reached: {_ldap_message(exc)}",
        ) from None
    finally:
        conn.unbind_s()


def _uri(directory: Directory) -> str:
    settings = directory.settings
    if settings.get("uri"):
        return str(settings["uri"])
    host = settings.get("host") or (settings.get("hosts") or ["localhost"])[0]
    scheme = "ldaps" if settings.get("use_ssl") or settings.get("tls") == "ldaps" else "ldap"
    port = settings.get("port") or (636 if scheme == "ldaps" else 389)
    return f"{scheme}://{host}:{port}"


def _ldap_message(exc: ldap.LDAPError) -> str:
    info = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return str(info.get("desc") or exc.__class__.__name__)
