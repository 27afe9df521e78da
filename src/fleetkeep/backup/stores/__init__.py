"""Where repositories live: the abstract store and its filesystem and S3 implementations."""

from fleetkeep.backup.stores.base import InvalidName, ObjectInfo, Store
from fleetkeep.backup.stores.fs import FilesystemStore

__all__ = ["FilesystemStore", "InvalidName", "ObjectInfo", "Store"]
