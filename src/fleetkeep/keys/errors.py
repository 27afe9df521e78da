"""Errors of the key capability; each has a stable ``code`` for API clients and scripts."""

from __future__ import annotations

from fleetkeep.errors import Conflict, FleetkeepError, Unauthorized, Unavailable


class KeyProviderNotConnected(Unavailable):
    """The provider of a needed key version cannot be reached: no connector, KMS down …"""

    code = "key_provider_not_connected"
    title = "Key provider not connected"


class KeyAccessDenied(KeyProviderNotConnected):
    """The provider answered but refused: KMS denied the call, the key is disabled …"""

    code = "key_provider_access_denied"
    title = "Key provider refused access"


class WrappedKeyInvalid(FleetkeepError):
    """A wrapped key failed authentication: it was altered, truncated or wrapped elsewhere."""

    status = 500
    code = "wrapped_key_invalid"
    title = "Wrapped key failed authentication"


class KeyCheckMismatch(FleetkeepError):
    """A provider holds a different organization key than the one the database expects."""

    status = 409
    code = "key_check_mismatch"
    title = "Different organization key"


class KeyFileInvalid(FleetkeepError):
    status = 500
    code = "key_file_invalid"
    title = "Key file unusable"


class RotationRefused(Conflict):
    code = "key_rotation_refused"
    title = "Key rotation refused"


class ConnectorTokenInvalid(Unauthorized):
    code = "connector_token_invalid"
    title = "Connector token invalid"
