"""What the sync engine, ``status`` and ``export`` read of a run in object storage.

Each function is the object-store twin of a local one (named in its docstring) and takes a
:class:`~tracelet.reader.RunSource` whose ``location`` is an
:class:`~tracelet.storage.objects.ObjectLocation`. Everything that decides "changed or not"
comes from the pass's one listing; objects are read only when there is something to send.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import SourceError, StateError
from ..rundir import ARTIFACTS_DIR, MANIFEST_NAME, SIDECAR_DIR

PART_MAX_BYTES = 512 << 20  # a sidecar part holds about a minute of samples


class NotCached(SourceError):
    """The manifest's local copy is missing or older than the object (no-op path only)."""


def signature(run, event_files) -> str:
    """Twin of ``engine.source_signature``: size + ETag/generation of every object a sync
    would send, from the listing alone (no request)."""
    loc = run.location
    h = hashlib.sha1()
    for p in event_files:
        e = loc.entry(p)
        h.update((f"e {p}:{e.size}:{e.etag}\n" if e else f"e {p}:missing\n").encode())
    if run.has_manifest:
        e = loc.entry(run.path / MANIFEST_NAME)
        if e is not None:
            h.update(f"m {e.size}:{e.etag}\n".encode())
    # sidecar parts and artifacts sync for a run without a manifest too (see the twin)
    h.update(("s " + ",".join(p.name for p in sidecar_parts(run)) + "\n").encode())
    for rel, (size, etag) in sorted(artifacts(run).items()):
        h.update(f"a {rel}:{size}:{etag}\n".encode())
    return h.hexdigest()


def manifest(run, cache=None, fetch: bool = True, problems: list[str] | None = None,
             validate: bool = True) -> dict[str, Any] | None:
    """Twin of ``manifest.load_manifest`` (same size bound and checks), with a local copy kept
    in the state dir (``cache``: its :class:`~tracelet.checkpoint.CheckpointStore`, which never
    follows a link or opens a FIFO there).

    The copy is named by the run and headed by the object's size and ETag: while the listing
    shows the same, the manifest is read from local disk (the no-op cron pass reads no object).
    ``fetch=False`` raises :class:`NotCached` instead of reading the object."""
    from ..manifest import MAX_MANIFEST_BYTES, manifest_from_bytes

    loc = run.location
    path = run.path / MANIFEST_NAME
    entry = loc.entry(path)
    if entry is None:
        return None
    key = f"{entry.size}:{entry.etag}\n".encode()
    raw = None
    if cache is not None:
        data = cache.read_cached("manifests", run.name, MAX_MANIFEST_BYTES + len(key) + 1)
        if data is not None and data.startswith(key):
            raw = data[len(key):]
    if raw is None:
        if not fetch:
            raise NotCached(f"{path}: no local copy of this version yet")
        if entry.size > MAX_MANIFEST_BYTES:
            raise SourceError(f"{path}: manifest is {entry.size:,} bytes, over the "
                              f"{MAX_MANIFEST_BYTES:,} a manifest may be; ignored. The run's "
                              "events still sync, its params and status do not.")
        raw = loc.read_bytes(path, MAX_MANIFEST_BYTES)
        if cache is not None:
            try:
                cache.write_cached("manifests", run.name, key + raw)
            except (OSError, StateError):
                pass  # a read-only state dir (or a link there) costs one GET per pass
    return manifest_from_bytes(raw, path, problems, validate=validate)


def sidecar_parts(run) -> list:
    """Twin of ``sidecar.list_parts``: complete parts in write order, from the listing."""
    from ..sidecar import PART_RE

    folder = run.path / SIDECAR_DIR
    return [folder / rel for rel, _ in run.location.under(folder)
            if "/" not in rel and PART_RE.match(rel)]


def read_part(run, part, problems: list[str] | None = None):
    """Twin of the local sidecar read: the part's bytes (whole, bounded) through
    ``sidecar.read_part``, so the same checks apply (columns, types, rows dropped)."""
    import io

    from ..sidecar import read_part as read_sidecar_part

    raw = run.location.read_bytes(part, PART_MAX_BYTES)
    return read_sidecar_part(part, problems, io.BytesIO(raw))


def artifacts(run) -> dict[str, tuple[int, str]]:
    """Twin of ``engine.artifact_files``: relative name -> (size, ETag) under ``artifacts/``.
    Hidden temp files of an atomic write are left out, as locally."""
    out: dict[str, tuple[int, str]] = {}
    for rel, e in run.location.under(run.path / ARTIFACTS_DIR):
        parts = rel.split("/")
        if any(p.startswith(".tmp") for p in parts[:-1]) or (
                parts[-1].startswith(".") and ".tmp" in parts[-1]):
            continue
        out[rel] = (e.size, e.etag)
    return out


@contextmanager
def pinned(run, items: list[tuple[Any, str]]):
    """Twin of ``RunFiles.pinned`` for a cloud run: yield ``(views, errors)`` with
    ``views[rel] = (local copy, (size, ETag))`` for each ``(path, rel)`` under ``artifacts/``
    (downloaded block by block at the listed version into a private temp folder, removed on
    exit) and ``errors[rel] = why not``. Destinations upload from local files."""
    tmp = tempfile.mkdtemp(prefix="tracelet-artifacts-")
    views: dict[str, tuple[Path, tuple[int, str]]] = {}
    errors: dict[str, str] = {}
    try:
        for path, rel in items:
            if any(p in ("", ".", "..") for p in rel.split("/")):  # listing() drops these too
                errors[rel] = f"{path}: unsafe artifact name; skipped."
                continue
            entry = run.location.entry(path)
            if entry is None:
                errors[rel] = f"{path}: no longer in the bucket; retried at the next sync."
                continue
            dest = Path(tmp, *rel.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                run.location.download(path, dest, entry)
            except SourceError as e:
                errors[rel] = str(e)
                continue
            views[rel] = (dest, (entry.size, entry.etag))
        yield views, errors
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
