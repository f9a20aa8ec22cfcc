"""``gs://`` (gcsfs) and ``az://`` / ``abfs://`` (adlfs) logdirs through fsspec.

Credentials are each SDK's own: Google Application Default Credentials for GCS
(``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth application-default login``, the metadata
server; ``STORAGE_EMULATOR_HOST`` for an emulator); for Azure the connection string
``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT_NAME`` with
``AZURE_STORAGE_ACCOUNT_KEY`` / ``AZURE_STORAGE_SAS_TOKEN`` / a service principal
(``AZURE_STORAGE_CLIENT_ID``, ``…_SECRET``, ``…_TENANT_ID``), else Azure's default credential
chain; ``abfs://container@account.dfs.core.windows.net/prefix`` names the account in the URL.

Reads are pinned to the listed version: the GCS generation (``generation=`` on the GET), the
Azure ETag (``If-Match`` on the download). Other fsspec backends would read unpinned.
"""
from __future__ import annotations

from .objects import ObjectChangedError, ObjectLocation
from .paths import Entry
from ..errors import SourceError, UsageError

_MODULES = {"gcs": "gcsfs", "azure": "adlfs"}


class FsspecLocation(ObjectLocation):
    def __init__(self, url: str, extra: str):
        super().__init__(url)
        self.extra = extra
        try:
            import fsspec
            import importlib

            importlib.import_module(_MODULES[extra])
        except ImportError:
            raise UsageError(f"{url}: {url.partition('://')[0]}:// logdirs need "
                             f"{_MODULES[extra]}. Install it (pip install {_MODULES[extra]}), or "
                             f"Tracelet's extra from your checkout or wheel: pip install "
                             f"'./[{extra}]'") from None
        try:
            # A fresh instance: fsspec caches filesystems and their listings per process;
            # each pass must see the store as it is now.
            self.fs, self._fs_root = fsspec.core.url_to_fs(url, skip_instance_cache=True,
                                                           use_listings_cache=False)
        except Exception as e:
            raise UsageError(f"{url}: cannot open ({type(e).__name__}: {e}); check the URL "
                             "and the credentials.") from e
        self._fs_root = self._fs_root.rstrip("/")
        self._bucket = self._fs_root.split("/", 1)[0]

    def _path(self, rel: str) -> str:
        return f"{self._fs_root}/{rel}" if rel else self._fs_root

    def _list(self):
        self.count("list_calls")
        try:
            self.fs.invalidate_cache()
            found = self.fs.find(self._fs_root, detail=True)
        except FileNotFoundError:
            return
        except Exception as e:
            raise self._error(e, f"cannot list {self.display}") from e
        if not isinstance(found, dict):  # the URL names one object: nothing *under* it
            return
        start = len(self._fs_root) + 1
        for name, info in found.items():
            if info.get("type") == "directory" or not name.startswith(self._fs_root + "/"):
                continue
            yield name[start:], self._entry(info)

    def _entry(self, info: dict) -> Entry:
        version = info.get("generation") if self.extra == "gcs" else info.get("etag")
        return Entry(int(info.get("size") or 0), str(version or info.get("etag") or ""),
                     _mtime(info.get("last_modified") or info.get("updated")))

    def _container_exists(self) -> bool:
        try:
            return bool(self.fs.exists(self._bucket))
        except Exception:
            return True  # can't tell: let the empty listing stand

    def _get(self, rel: str, start: int, end: int, etag: str) -> bytes:
        path = self._path(rel)
        try:
            if self.extra == "azure" and etag:
                return self._azure_get(path, start, end, etag)
            kw = {"generation": etag} if self.extra == "gcs" and etag else {}
            return self.fs.cat_file(path, start=start, end=end, **kw)
        except ObjectChangedError:
            raise
        except FileNotFoundError as e:
            raise ObjectChangedError(f"{self.display}/{rel}: the object was deleted or "
                                     "rewritten after it was listed; read again at the next "
                                     "sync.") from e
        except Exception as e:
            raise self._error(e, f"cannot read {self.display}/{rel} bytes {start}..{end}") from e

    def _azure_get(self, path: str, start: int, end: int, etag: str) -> bytes:
        """adlfs' cat_file cannot send a condition: download through its own blob client."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from fsspec.asyn import sync

        container, blob, _ = self.fs.split_path(path)

        async def get() -> bytes:
            async with self.fs.service_client.get_blob_client(container=container,
                                                              blob=blob) as bc:
                stream = await bc.download_blob(offset=start, length=end - start, etag=etag,
                                                match_condition=MatchConditions.IfNotModified)
                return await stream.readall()

        try:
            return sync(self.fs.loop, get)
        except (ResourceModifiedError, ResourceNotFoundError) as e:
            raise ObjectChangedError(f"{path}: the object was rewritten or deleted after it "
                                     "was listed; read again at the next sync.") from e

    def _head(self, rel: str) -> Entry | None:
        try:
            self.fs.invalidate_cache()
            info = self.fs.info(self._path(rel))
        except FileNotFoundError:
            return None
        except Exception as e:
            raise self._error(e, f"cannot read {self.display}/{rel}") from e
        if info.get("type") == "directory":
            return None
        return self._entry(info)

    def _error(self, e: Exception, what: str) -> Exception:
        text = f"{type(e).__name__}: {e}"
        status = getattr(e, "status_code", None) or getattr(e, "code", None)
        if status in (401, 403) or "AuthenticationFailed" in text or "Forbidden" in text:
            return UsageError(f"{what}: access denied ({text}). Check the credentials.")
        return SourceError(f"{what}: {text}")


def _mtime(value) -> float | None:
    """A listing's modification time (Azure: a datetime; GCS: an ISO 8601 string)."""
    try:
        if isinstance(value, str):
            from datetime import datetime

            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return value.timestamp()
    except (AttributeError, ValueError, TypeError):
        return None
