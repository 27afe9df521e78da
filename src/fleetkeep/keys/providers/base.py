"""The interface every key provider implements, bound to one key version."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from fleetkeep.keys.models import KeyVersion, ProviderName


@dataclass(frozen=True)
class VersionInfo:
    """A key version detached from the database session."""

    version: int
    provider: ProviderName
    kcv: str
    key_ref: str

    @classmethod
    def of(cls, row: KeyVersion) -> VersionInfo:
        return cls(row.version, row.provider, row.kcv, row.key_ref)


@dataclass(frozen=True)
class ProviderStatus:
    provider: ProviderName
    connected: bool
    detail: str


class KeyProvider(ABC):
    """Wraps and unwraps DEKs with the organization key of one key version.

    ``context`` names what the DEK belongs to (``user:42``); it is authenticated, so a wrapped
    key only unwraps for the context it was wrapped for. Failures raise
    ``KeyProviderNotConnected`` (unreachable), ``KeyAccessDenied`` (refused),
    ``KeyCheckMismatch`` (a different key) or ``WrappedKeyInvalid`` (bad wrapped bytes).
    """

    def __init__(self, info: VersionInfo) -> None:
        self.info = info

    @property
    def key_version(self) -> int:
        return self.info.version

    @abstractmethod
    def wrap(self, dek: bytes, context: str) -> bytes: ...

    @abstractmethod
    def unwrap(self, wrapped: bytes, context: str) -> bytes: ...

    @abstractmethod
    def status(self) -> ProviderStatus: ...
