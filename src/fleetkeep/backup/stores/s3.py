"""A store in an S3 bucket (or any S3-compatible service) under an optional key prefix.

Each object is one ``PutObject``: S3 makes it visible whole or not at all, which is the
atomicity the repository needs. Packs stay well under the 5 GB single-PUT limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from fleetkeep.backup.errors import ObjectNotFound
from fleetkeep.backup.stores.base import ObjectInfo, Store, check_name

_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Store(Store):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region_name: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        # SigV4: pre-signed URLs in SigV2 are refused by most S3 regions and services.
        self._s3 = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region_name,
            config=Config(signature_version="s3v4"),
        )

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def put(self, name: str, data: bytes | bytearray) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self._key(name), Body=bytes(data))

    def _get(self, name: str, **extra: str) -> bytes:
        try:
            resp = self._s3.get_object(Bucket=self.bucket, Key=self._key(name), **extra)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise ObjectNotFound(f"object {name} not found") from None
            raise
        body: bytes = resp["Body"].read()
        return body

    def get(self, name: str) -> bytes:
        return self._get(name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        if offset < 0:
            return self._get(name, Range=f"bytes={offset}")[:length]
        return self._get(name, Range=f"bytes={offset}-{offset + length - 1}")

    def exists(self, name: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(name))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise
        return True

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        for page in pages:
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    obj["Key"][len(self.prefix) :], int(obj["Size"]), obj["LastModified"]
                )

    def delete(self, name: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._key(name))

    def presigned_put(self, name: str, expires_seconds: int = 900) -> str:
        """A URL that lets its holder PUT this one object, for a while (direct uploads)."""
        url: str = self._s3.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": self._key(name)},
            ExpiresIn=expires_seconds,
        )
        return url
