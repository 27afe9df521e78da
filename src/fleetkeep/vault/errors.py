"""Refusals of the vault; each has a stable ``code`` the agent acts on."""

from __future__ import annotations

from fleetkeep.errors import Conflict, FleetkeepError, Forbidden, InvalidInput


class QuotaExceeded(Forbidden):
    """The user's repository is at or over quota: the backup fails, nothing is committed."""

    code = "quota_exceeded"
    title = "Storage quota exceeded"


class SessionClosed(Conflict):
    """The backup session is no longer open (committed, aborted, replaced by a newer one)."""

    code = "backup_session_closed"
    title = "Backup session closed"


class ObjectRejected(InvalidInput):
    """An uploaded object's name or content is not acceptable (wrong hash, folder, size)."""

    code = "object_rejected"
    title = "Object rejected"


class ObjectTooLarge(FleetkeepError):
    status = 413
    code = "object_too_large"
    title = "Object too large"
