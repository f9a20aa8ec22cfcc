"""``s3://bucket/prefix`` logdirs through boto3, the AWS SDK (Tracelet's ``[s3]`` extra).

Credentials and endpoint are found the way every AWS tool finds them: ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and ``~/.aws``, instance and
pod roles; ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) for MinIO, Ceph and other
S3-compatible servers.

Why boto3 and not s3fs: s3fs needs aiobotocore, which pins botocore to a narrow range (the
newest aiobotocore to botocore < 1.43.118); installing it next to a newer boto3 (as MLflow and
Aim users have) downgrades boto3. boto3 itself is all Tracelet needs: a paginated
``ListObjectsV2``, ``GetObject`` with ``Range`` and ``If-Match``, ``HeadObject``.
"""
from __future__ import annotations

from .objects import ObjectChangedError, ObjectLocation
from .paths import Entry
from ..errors import SourceError, UsageError


class S3Location(ObjectLocation):
    extra = "s3"

    def __init__(self, url: str):
        super().__init__(url)
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise UsageError(f"{url}: s3:// logdirs need boto3. Install it (pip install "
                             "boto3), or Tracelet's extra from your checkout or wheel: "
                             "pip install './[s3]'") from None
        self.bucket = self.root.anchor.partition("://")[2]
        self.prefix = self.root.key
        # Standard retry mode: bounded exponential backoff on throttling and 5xx, as the
        # AWS CLI does. One client serves every worker thread (boto3 clients are thread-safe).
        self.client = boto3.session.Session().client(
            "s3", config=Config(retries={"mode": "standard", "max_attempts": 6},
                                max_pool_connections=32))

    def _key(self, rel: str) -> str:
        if not rel:
            return self.prefix
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def _list(self):
        start = len(self.prefix) + 1 if self.prefix else 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=f"{self.prefix}/" if self.prefix else "")
        try:
            for page in pages:
                self.count("list_calls")
                for obj in page.get("Contents", ()):
                    yield obj["Key"][start:], Entry(int(obj["Size"]), obj.get("ETag", ""),
                                                    _timestamp(obj.get("LastModified")))
        except Exception as e:
            raise self._error(e, f"cannot list {self.display}") from e

    def _get(self, rel: str, start: int, end: int, etag: str) -> bytes:
        kw = {"IfMatch": etag} if etag else {}
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(rel),
                                          Range=f"bytes={start}-{end - 1}", **kw)
            return resp["Body"].read()
        except Exception as e:
            raise self._error(e, f"cannot read {self.display}/{rel} bytes {start}..{end}") from e

    def _head(self, rel: str) -> Entry | None:
        try:
            r = self.client.head_object(Bucket=self.bucket, Key=self._key(rel))
        except Exception as e:
            err = self._error(e, f"cannot read {self.display}/{rel}")
            if isinstance(err, ObjectChangedError):  # 404: no such object
                return None
            raise err from e
        return Entry(int(r["ContentLength"]), r.get("ETag", ""), _timestamp(r.get("LastModified")))

    def _error(self, e: Exception, what: str) -> Exception:
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
            return UsageError(f"{what}: no AWS credentials found ({e}). Set AWS_ACCESS_KEY_ID "
                              "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run where a role "
                              "applies.")
        if isinstance(e, ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "412") or status == 412:
                return ObjectChangedError(f"{what}: the object was rewritten after it was "
                                          "listed; read again at the next sync.")
            if code in ("NoSuchKey", "404") or (status == 404 and code != "NoSuchBucket"):
                return ObjectChangedError(f"{what}: the object was deleted after it was listed.")
            if code == "NoSuchBucket":
                return UsageError(f"{what}: no such bucket '{self.bucket}'. Check the URL (and "
                                  "AWS_ENDPOINT_URL for S3-compatible servers).")
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") \
                    or status == 403:
                return UsageError(f"{what}: access denied ({code}). Check the credentials and "
                                  "that they may list and read the bucket.")
        return SourceError(f"{what}: {type(e).__name__}: {e}")


def _timestamp(value) -> float | None:
    try:
        return value.timestamp()
    except AttributeError:
        return None
