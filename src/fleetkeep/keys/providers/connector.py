"""The connector provider: the ekey stays with the customer's key connectors.

The server sends a DEK (to wrap) or a wrapped DEK (to unwrap) and gets the result back; the
ekey never crosses the wire. Use TLS (``https://`` server URL) outside a loopback set-up: the
unwrap answer is a DEK.
"""

from __future__ import annotations

from fleetkeep.keys.hub import ConnectorHub
from fleetkeep.keys.models import ProviderName
from fleetkeep.keys.providers.base import KeyProvider, ProviderStatus, VersionInfo


class ConnectorProvider(KeyProvider):
    def __init__(self, info: VersionInfo, hub: ConnectorHub) -> None:
        super().__init__(info)
        self.hub = hub

    def wrap(self, dek: bytes, context: str) -> bytes:
        return self.hub.call("wrap", self.info.kcv, context, dek)

    def unwrap(self, wrapped: bytes, context: str) -> bytes:
        return self.hub.call("unwrap", self.info.kcv, context, wrapped)

    def status(self) -> ProviderStatus:
        links = [link for link in self.hub.links() if self.info.kcv in link.kcvs]
        if not links:
            return ProviderStatus(ProviderName.CONNECTOR, False, "Key connector not connected")
        hosts = ", ".join(sorted(link.host for link in links))
        return ProviderStatus(ProviderName.CONNECTOR, True, f"{len(links)} connected: {hosts}")
