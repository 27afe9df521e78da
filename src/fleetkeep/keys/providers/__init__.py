"""Key providers: who holds the organization key (ekey) and performs wrap and unwrap.

``local`` reads a key file on the server box, ``connector`` asks customer-run key connectors
over their WebSocket, ``awskms`` calls AWS KMS. The server keeps only wrapped keys.
"""

from fleetkeep.keys.providers.base import KeyProvider, ProviderStatus, VersionInfo

__all__ = ["KeyProvider", "ProviderStatus", "VersionInfo"]
