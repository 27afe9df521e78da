"""The AWS KMS provider: Encrypt and Decrypt with a customer-managed key, by ARN.

The encryption context carries the DEK's context, so KMS authenticates it like our AAD, and
CloudTrail shows which user's key was unwrapped. Endpoints and credentials come from the usual
AWS environment (``AWS_ENDPOINT_URL_KMS`` points tests at moto); the region from the ARN.
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from fleetkeep.keys.errors import (
    KeyAccessDenied,
    KeyCheckMismatch,
    KeyProviderNotConnected,
    WrappedKeyInvalid,
)
from fleetkeep.keys.models import ProviderName
from fleetkeep.keys.providers.base import KeyProvider, ProviderStatus, VersionInfo

_DENIED = {
    "AccessDeniedException",
    "DisabledException",
    "KMSInvalidStateException",
    "NotFoundException",
    "KMSInvalidSignatureException",
    "UnrecognizedClientException",
    "InvalidKeyUsageException",
    "IncorrectKeyException",
}
_CLIENT_CONFIG = Config(connect_timeout=2, read_timeout=5, retries={"max_attempts": 2})
# At DEBUG, botocore logs request parameters and response bodies: Encrypt's Plaintext and
# Decrypt's Plaintext are DEKs. Keep its loggers at INFO whatever the root level is.
for _name in ("botocore", "boto3"):
    logging.getLogger(_name).setLevel(logging.INFO)


def kms_client(key_arn: str) -> Any:
    parts = key_arn.split(":")
    if len(parts) < 6 or parts[0] != "arn" or parts[2] != "kms":
        raise ValueError(f"not a KMS key ARN: {key_arn!r}")
    return boto3.client("kms", region_name=parts[3], config=_CLIENT_CONFIG)


def describe_key(key_arn: str) -> str:
    """The key's canonical ARN, after checking that KMS knows it and it can encrypt."""
    try:
        metadata = kms_client(key_arn).describe_key(KeyId=key_arn)["KeyMetadata"]
    except ValueError as exc:
        raise KeyCheckMismatch(str(exc)) from None
    except ClientError as exc:
        raise KeyAccessDenied(f"AWS KMS refused {key_arn}: {_describe(exc)}") from None
    except BotoCoreError as exc:
        raise KeyProviderNotConnected(f"AWS KMS unreachable: {exc}") from None
    usage = metadata.get("KeyUsage", "ENCRYPT_DECRYPT")
    if metadata.get("KeyState") != "Enabled" or usage != "ENCRYPT_DECRYPT":
        raise KeyAccessDenied(
            f"KMS key {key_arn} is {metadata.get('KeyState')}, "
            f"usage {usage}; it must be an enabled "
            "ENCRYPT_DECRYPT key"
        )
    return str(metadata["Arn"])


class KmsProvider(KeyProvider):
    def __init__(self, info: VersionInfo, client: Any | None = None) -> None:
        super().__init__(info)
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = kms_client(self.info.key_ref)
        return self._client

    def wrap(self, dek: bytes, context: str) -> bytes:
        try:
            response = self.client.encrypt(
                KeyId=self.info.key_ref, Plaintext=dek, EncryptionContext=_context(context)
            )
        except ClientError as exc:
            raise self._refused(exc) from None
        except BotoCoreError as exc:
            raise KeyProviderNotConnected(f"AWS KMS unreachable: {exc}") from None
        return bytes(response["CiphertextBlob"])

    def unwrap(self, wrapped: bytes, context: str) -> bytes:
        try:
            response = self.client.decrypt(
                CiphertextBlob=wrapped, KeyId=self.info.key_ref, EncryptionContext=_context(context)
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidCiphertextException":
                raise WrappedKeyInvalid(
                    f"{context}, key version {self.info.version}: AWS KMS could not "
                    "authenticate the wrapped key (altered, truncated or another user's)"
                ) from None
            raise self._refused(exc) from None
        except BotoCoreError as exc:
            raise KeyProviderNotConnected(f"AWS KMS unreachable: {exc}") from None
        return bytes(response["Plaintext"])

    def status(self) -> ProviderStatus:
        try:
            arn = describe_key(self.info.key_ref)
        except (KeyProviderNotConnected, KeyCheckMismatch) as exc:
            return ProviderStatus(ProviderName.AWSKMS, False, exc.detail)
        return ProviderStatus(ProviderName.AWSKMS, True, arn)

    def _refused(self, exc: ClientError) -> KeyProviderNotConnected:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in _DENIED:
            return KeyAccessDenied(f"AWS KMS refused key {self.info.key_ref}: {_describe(exc)}")
        return KeyProviderNotConnected(f"AWS KMS error: {_describe(exc)}")


def _context(context: str) -> dict[str, str]:
    return {"fleetkeep": context}


def _describe(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'error')}: {error.get('Message', '')}".strip()
