"""The backup engine: a pure library shared by the agent and the server's admin tools.

It imports nothing from the server side. A repository is a store plus the user's data key.
"""

from fleetkeep.backup.archiver import BackupProgress
from fleetkeep.backup.chunker import ChunkerParams
from fleetkeep.backup.errors import (
    BackupError,
    IntegrityError,
    ObjectNotFound,
    RepositoryExists,
    RepositoryNotFound,
    SnapshotNotFound,
    UnsafePath,
    UnsupportedFormat,
    WrongKey,
)
from fleetkeep.backup.repository import Repository, Snapshot
from fleetkeep.backup.restorer import RestoreStats

__all__ = [
    "BackupError",
    "BackupProgress",
    "ChunkerParams",
    "IntegrityError",
    "ObjectNotFound",
    "Repository",
    "RepositoryExists",
    "RepositoryNotFound",
    "RestoreStats",
    "Snapshot",
    "SnapshotNotFound",
    "UnsafePath",
    "UnsupportedFormat",
    "WrongKey",
]
