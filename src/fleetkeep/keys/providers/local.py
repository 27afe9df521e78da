"""The local provider: the ekey sits in a key file on the server box (single-box set-ups).

Anyone with root on that box and a copy of the database can read backups; choose the key
connector or KMS when the server's operator must not be able to.
"""

from __future__ import annotations

from pathlib import Path

from fleetkeep.keys.errors import KeyCheckMismatch, KeyFileInvalid, WrappedKeyInvalid
from fleetkeep.keys.keyfile import Ekey, load_keys
from fleetkeep.keys.models import ProviderName
from fleetkeep.keys.providers.base import KeyProvider, ProviderStatus, VersionInfo
from fleetkeep.keys.wrapping import UnwrapFailed, unwrap_dek, wrap_dek


class LocalProvider(KeyProvider):
    def __init__(self, info: VersionInfo, key_file: Path) -> None:
        super().__init__(info)
        self.key_file = key_file
        self._ekey: Ekey | None = None

    def _key(self) -> Ekey:
        if self._ekey is None:
            keys = {k.kcv: k for k in load_keys(self.key_file)}
            if self.info.kcv not in keys:
                raise KeyCheckMismatch(
                    f"the key file {self.key_file} holds keys with check values "
                    f"{', '.join(keys)}, but key version {self.info.version} has check value "
                    f"{self.info.kcv}: this is a different organization key file"
                )
            self._ekey = keys[self.info.kcv]
        return self._ekey

    def wrap(self, dek: bytes, context: str) -> bytes:
        return wrap_dek(self._key().key, dek, context)

    def unwrap(self, wrapped: bytes, context: str) -> bytes:
        try:
            return unwrap_dek(self._key().key, wrapped, context)
        except UnwrapFailed as exc:
            raise WrappedKeyInvalid(f"{context}, key version {self.info.version}: {exc}") from None

    def status(self) -> ProviderStatus:
        try:
            self._key()
        except (KeyFileInvalid, KeyCheckMismatch) as exc:
            return ProviderStatus(ProviderName.LOCAL, False, exc.detail)
        return ProviderStatus(ProviderName.LOCAL, True, f"key file {self.key_file}")
