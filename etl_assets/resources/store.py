"""The archive store: S3 (boto3) or a local directory, behind one small interface.

Every S3 object is written with server-side encryption (SSE-KMS with the configured key, else
SSE-S3/AES256: never unencrypted), a SHA-256 checksum that S3 verifies on receipt, and, when
configured and asked for, an Object Lock mode with a retain-until date. Large files go up as
multipart uploads. The endpoint comes from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (boto3 reads
them itself), so the same code talks to S3 or to an S3-compatible server.

The local directory backend writes through a temporary file, fsyncs, then renames, so a reader never
sees half a file; it is the embedded demo's stand-in and has no encryption or retention.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
from pydantic import Field

from etl_assets.lib import envvars

_MULTIPART_THRESHOLD = 32 * 1024 * 1024
_MULTIPART_CHUNK = 16 * 1024 * 1024
_S3_MIN_PART = 5 * 1024 * 1024  # S3 refuses multipart uploads whose parts (but the last) are smaller


class StoreError(RuntimeError):
    """An object could not be written, read, listed or removed."""


@dataclass(frozen=True)
class StoredObject:
    """What the store reports about an object after writing or inspecting it."""

    key: str
    size: int
    sha256: str = ""
    encryption: str = ""
    lock_mode: str = ""
    retain_until: str = ""


class ObjectStore(Protocol):
    """Operations the archive needs from a store; keys are `/`-separated relative paths."""

    def put_file(self, key: str, path: Path, *, lock: bool) -> StoredObject:
        """Upload a local file."""
        ...

    def put_bytes(self, key: str, data: bytes, *, lock: bool) -> StoredObject:
        """Upload a small document (manifests)."""
        ...

    def download(self, key: str, path: Path) -> None:
        """Download to a local file."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """Read a small document."""
        ...

    def head(self, key: str) -> StoredObject | None:
        """Metadata of an object, or None when it does not exist."""
        ...

    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a folder, without trailing slash)."""
        ...

    def copy(self, source_key: str, target_key: str, *, lock: bool) -> StoredObject:
        """Server-side copy, re-applying encryption and retention."""
        ...

    def delete(self, keys: list[str]) -> list[str]:
        """Remove objects; returns the keys that could not be removed (e.g. under retention)."""
        ...

    def abort_unfinished_uploads(self, prefix: str) -> int:
        """Discard uploads under `prefix` (a folder) that were started and never finished (a killed
        run's); returns how many. Only call it while no upload under `prefix` can be in flight."""
        ...

    def url(self, key: str) -> str:
        """Where a person finds the object (s3:// URL or file path)."""
        ...


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class LocalStore:
    """A directory on this machine, laid out exactly like the S3 bucket."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise StoreError(f"key {key!r} points outside the archive directory {self.root}")
        return path

    def _write(self, key: str, writer: Any) -> StoredObject:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                writer(handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return StoredObject(key=key, size=target.stat().st_size, sha256=_sha256_file(target))

    def put_file(self, key: str, path: Path, *, lock: bool) -> StoredObject:
        def copy(handle: Any) -> None:
            with path.open("rb") as source:
                shutil.copyfileobj(source, handle, 1 << 20)

        return self._write(key, copy)

    def put_bytes(self, key: str, data: bytes, *, lock: bool) -> StoredObject:
        return self._write(key, lambda handle: handle.write(data))

    def download(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise StoreError(f"{self.url(key)} does not exist")
        shutil.copyfile(source, path)

    def get_bytes(self, key: str) -> bytes:
        source = self._path(key)
        if not source.is_file():
            raise StoreError(f"{self.url(key)} does not exist")
        return source.read_bytes()

    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        return StoredObject(key=key, size=path.stat().st_size) if path.is_file() else None

    def list(self, prefix: str) -> list[str]:
        folder = self._path(prefix) if prefix else self.root
        if not folder.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        )

    def copy(self, source_key: str, target_key: str, *, lock: bool) -> StoredObject:
        return self.put_file(target_key, self._path(source_key), lock=lock)

    def delete(self, keys: list[str]) -> list[str]:
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        return []

    def abort_unfinished_uploads(self, prefix: str) -> int:
        # A write goes to a `.tmp-` file first and is renamed when complete (`_write`).
        folder = self._path(prefix) if prefix else self.root
        if not folder.is_dir():
            return 0
        unfinished = [p for p in folder.rglob(".tmp-*") if p.is_file()]
        for path in unfinished:
            path.unlink(missing_ok=True)
        return len(unfinished)

    def url(self, key: str) -> str:
        return str(self.root / key)


class S3Store:
    """An S3 bucket (or S3-compatible endpoint) under a key prefix."""

    def __init__(
        self,
        *,
        bucket: str,
        prefix: str,
        kms_key_id: str,
        lock_mode: str | None,
        lock_days: int | None,
        region: str,
        now: Any = None,
        multipart_threshold_bytes: int = _MULTIPART_THRESHOLD,
        multipart_chunk_bytes: int = _MULTIPART_CHUNK,
    ) -> None:
        import boto3
        from botocore.config import Config

        if multipart_chunk_bytes < _S3_MIN_PART or multipart_threshold_bytes < multipart_chunk_bytes:
            raise ValueError(
                f"multipart chunks must be at least {_S3_MIN_PART:,} bytes (S3's minimum part size) and "
                f"no larger than the multipart threshold; got chunk {multipart_chunk_bytes:,}, "
                f"threshold {multipart_threshold_bytes:,}"
            )
        # Files at or above the threshold go up as multipart uploads of `chunk`-sized parts, each
        # retried on its own; smaller ones as one PutObject.
        self.multipart_threshold_bytes = multipart_threshold_bytes
        self.multipart_chunk_bytes = multipart_chunk_bytes
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.kms_key_id = kms_key_id
        self.lock_mode = lock_mode
        self.lock_days = lock_days
        self._now = now
        # Standard retry mode retries 5xx, SlowDown and connection errors with backoff.
        self.client = boto3.client(
            "s3",
            region_name=region,
            config=Config(
                retries={"mode": "standard", "max_attempts": 6}, connect_timeout=10, read_timeout=120
            ),
        )

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full_key: str) -> str:
        return full_key[len(self.prefix) + 1 :] if self.prefix else full_key

    def _write_args(self, *, lock: bool) -> dict[str, Any]:
        args: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"}
        if self.kms_key_id:
            # S3 Bucket Keys (fewer KMS calls) are a bucket setting; the README shows how to enable them.
            args |= {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.kms_key_id}
        else:
            args["ServerSideEncryption"] = "AES256"
        if lock and self.lock_mode and self.lock_days:
            from etl_assets.config import utcnow

            now = self._now() if self._now else utcnow()
            args["ObjectLockMode"] = self.lock_mode
            args["ObjectLockRetainUntilDate"] = now + timedelta(days=self.lock_days)
        return args

    def _wrap(self, action: str, key: str, exc: Exception) -> StoreError:
        return StoreError(f"could not {action} s3://{self.bucket}/{self._full(key)}: {exc}")

    def put_file(self, key: str, path: Path, *, lock: bool) -> StoredObject:
        from boto3.s3.transfer import TransferConfig

        args = self._write_args(lock=lock)
        try:
            self.client.upload_file(
                str(path),
                self.bucket,
                self._full(key),
                ExtraArgs=args,
                Config=TransferConfig(
                    multipart_threshold=self.multipart_threshold_bytes,
                    multipart_chunksize=self.multipart_chunk_bytes,
                ),
            )
        except Exception as exc:
            raise self._wrap("upload", key, exc) from exc
        stored = self.head(key)
        expected = path.stat().st_size
        if stored is None or stored.size != expected:
            found = "is missing" if stored is None else f"has {stored.size:,} bytes"
            raise StoreError(
                f"s3://{self.bucket}/{self._full(key)} {found} after its upload of {expected:,} bytes: "
                "the upload was damaged on its way; the object is not used, re-run to upload it again"
            )
        return stored

    def put_bytes(self, key: str, data: bytes, *, lock: bool) -> StoredObject:
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._full(key), Body=data, **self._write_args(lock=lock)
            )
        except Exception as exc:
            raise self._wrap("write", key, exc) from exc
        return StoredObject(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def download(self, key: str, path: Path) -> None:
        try:
            self.client.download_file(self.bucket, self._full(key), str(path))
        except Exception as exc:
            raise self._wrap("download", key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
        except Exception as exc:
            raise self._wrap("read", key, exc) from exc

    def head(self, key: str) -> StoredObject | None:
        try:
            meta = self.client.head_object(Bucket=self.bucket, Key=self._full(key), ChecksumMode="ENABLED")
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._wrap("inspect", key, exc) from exc
        retain = meta.get("ObjectLockRetainUntilDate")
        return StoredObject(
            key=key,
            size=int(meta["ContentLength"]),
            sha256=str(meta.get("ChecksumSHA256", "")),
            encryption=str(meta.get("ServerSideEncryption", "")),
            lock_mode=str(meta.get("ObjectLockMode", "")),
            retain_until=retain.isoformat() if isinstance(retain, datetime) else str(retain or ""),
        )

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._full(prefix).rstrip("/") + "/"):
                keys.extend(self._relative(item["Key"]) for item in page.get("Contents", []))
        except Exception as exc:
            raise self._wrap("list", prefix, exc) from exc
        return sorted(keys)

    def copy(self, source_key: str, target_key: str, *, lock: bool) -> StoredObject:
        args = self._write_args(lock=lock)
        if "ObjectLockMode" in args:
            # A retained object must arrive with its retention in the same request (setting it afterwards
            # leaves a window without WORM protection), and CopyObject cannot carry the checksum header
            # S3 requires for that; so locked objects are re-uploaded through PutObject/multipart.
            with tempfile.TemporaryDirectory(prefix="etl-copy-") as tmp:
                local = Path(tmp) / "object"
                self.download(source_key, local)
                return self.put_file(target_key, local, lock=lock)
        try:
            # CopyObject is one server-side request (archive.part_mb is capped at 4096 MiB, below its
            # 5 GiB limit) and re-applies the encryption settings to the new object.
            self.client.copy_object(
                CopySource={"Bucket": self.bucket, "Key": self._full(source_key)},
                Bucket=self.bucket,
                Key=self._full(target_key),
                **args,
            )
        except Exception as exc:
            raise self._wrap("copy to", target_key, exc) from exc
        stored = self.head(target_key)
        if stored is None:
            raise StoreError(f"s3://{self.bucket}/{self._full(target_key)} is missing after copy")
        return stored

    def delete(self, keys: list[str]) -> list[str]:
        failed: list[str] = []
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            try:
                response = self.client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self._full(k)} for k in chunk], "Quiet": True},
                )
            except Exception:  # noqa: BLE001 - reported back as keys that could not be removed
                failed.extend(chunk)
                continue
            failed.extend(self._relative(err["Key"]) for err in response.get("Errors", []))
        return failed

    def abort_unfinished_uploads(self, prefix: str) -> int:
        # An incomplete multipart upload is invisible to listings and queries, but S3 keeps (and
        # bills) its parts until it is aborted; a run killed mid-upload leaves one behind.
        try:
            # Listed whole first: aborting while paging would move the listing's markers under it.
            paginator = self.client.get_paginator("list_multipart_uploads")
            uploads = [
                (upload["Key"], upload["UploadId"])
                for page in paginator.paginate(
                    Bucket=self.bucket, Prefix=self._full(prefix).rstrip("/") + "/"
                )
                for upload in page.get("Uploads", [])
            ]
            for key, upload_id in uploads:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except Exception as exc:
            raise self._wrap("abort unfinished uploads under", prefix, exc) from exc
        return len(uploads)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._full(key)}"

    def console_url(self, key: str, region: str) -> str:
        """Link to the object in the AWS console."""
        return f"https://s3.console.aws.amazon.com/s3/object/{self.bucket}?region={region}&prefix={self._full(key)}"


def open_store(
    url: str,
    *,
    kms_key_id: str = "",
    lock_mode: str | None = None,
    lock_days: int | None = None,
    region: str,
    multipart_threshold_bytes: int = _MULTIPART_THRESHOLD,
    multipart_chunk_bytes: int = _MULTIPART_CHUNK,
) -> ObjectStore:
    """A store for a resolved URL: `s3://bucket/prefix` or a local directory (`file://` optional).

    The multipart sizes apply to S3 only: files of at least `multipart_threshold_bytes` are uploaded
    in parts of `multipart_chunk_bytes` (at least 5 MiB, S3's minimum).
    """
    if url.startswith("s3://"):
        bucket, _, prefix = url[5:].partition("/")
        if not bucket:
            raise StoreError(f"'{url}' names no bucket; use s3://bucket/prefix")
        return S3Store(
            bucket=bucket,
            prefix=prefix,
            kms_key_id=kms_key_id,
            lock_mode=lock_mode,
            lock_days=lock_days,
            region=region,
            multipart_threshold_bytes=multipart_threshold_bytes,
            multipart_chunk_bytes=multipart_chunk_bytes,
        )
    root = Path(url.removeprefix("file://")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return LocalStore(root)


class ArchiveStore(dg.ConfigurableResource):
    """Where archived Parquet parts and manifests are written.

    Example:
        ```python
        ArchiveStore(url="s3://${ARCHIVE_BUCKET}/archive", kms_key_id="${ARCHIVE_KMS_KEY_ID:-}")
        ```
    """

    url: str = Field(
        description="s3://bucket/prefix or a local directory; ${VAR} templates resolved at run time"
    )
    kms_key_id: str = Field(
        default="", description="SSE-KMS key id/ARN (template); empty means SSE-S3 (AES256)"
    )
    object_lock_mode: str | None = Field(default=None, description="GOVERNANCE or COMPLIANCE, or none")
    object_lock_days: int | None = Field(
        default=None, description="Object Lock retention per object, in days"
    )
    region: str = Field(default="${AWS_DEFAULT_REGION:-us-east-1}", description="AWS region (template)")
    config_file: str = Field(default="", description="Config file the settings came from, for error messages")

    def open(self) -> ObjectStore:
        """Resolve templates and open the store (no network call yet)."""
        from etl_assets.config import resolve_setting

        return open_store(
            resolve_setting(self.config_file, "archive.url", self.url),
            kms_key_id=resolve_setting(self.config_file, "archive.kms_key_id", self.kms_key_id),
            lock_mode=self.object_lock_mode,
            lock_days=self.object_lock_days,
            region=envvars.resolve(self.region) or "us-east-1",
        )


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of at most `size` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
