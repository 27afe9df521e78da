"""Errors the backup engine raises; all subclass ``fleetkeep.errors.FleetkeepError``."""

from __future__ import annotations

from fleetkeep.errors import Conflict, FleetkeepError, NotFound


class BackupError(FleetkeepError):
    code = "backup_error"
    title = "Backup error"


class IntegrityError(BackupError):
    """A stored object failed authentication or its hash: tampering or corruption, never
    silently returned as data."""

    status = 500
    code = "integrity_error"
    title = "Repository integrity error"


class WrongKey(BackupError):
    status = 403
    code = "wrong_key"
    title = "Wrong data key for this repository"


class ObjectNotFound(NotFound, BackupError):
    code = "object_not_found"


class RepositoryNotFound(ObjectNotFound):
    code = "repository_not_found"


class RepositoryExists(Conflict, BackupError):
    code = "repository_exists"


class SnapshotNotFound(ObjectNotFound):
    code = "snapshot_not_found"


class UnsupportedFormat(BackupError):
    code = "unsupported_format"


class UnsafePath(BackupError):
    """A snapshot tree names a path that would land outside the restore target."""

    code = "unsafe_path"
    title = "Unsafe path in snapshot"
