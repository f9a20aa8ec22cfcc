"""The run manifest (``tracelet.json``): schema, reading, and atomic rewriting.

Fields (DESIGN §2): ``schema_version``, ``run_id`` (fixed at creation), ``name``, ``project``,
``backends``, ``status`` (running | finished | failed | killed), ``started_at``, ``ended_at``,
``params`` (secrets redacted), ``tags``, ``git``, ``env``, ``system``, ``linked_logdirs``.

Written by the recorder (:mod:`tracelet.recorder`); extra fields it adds: ``pid`` (of the
recording process, to tell a live run from a crashed one on the same host) and ``command`` (argv
of ``tracelet record``, secret-looking option values redacted). Timestamps are ISO 8601 strings
in UTC (``2024-05-01T12:00:00.123456+00:00``; ``datetime.fromisoformat`` parses them).
``tags`` is an object of string -> string.
"""
from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._fs import atomic_write_json
from .errors import SourceError

MANIFEST_NAME = "tracelet.json"
SCHEMA_VERSION = 1
STATUSES = ("running", "finished", "failed", "killed")


def load_manifest(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run's manifest, or ``None`` when the run has none (plain TensorBoard logdir)."""
    path = Path(run_dir) / MANIFEST_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise SourceError(f"{path}: cannot read manifest ({e.strerror}); fix permissions.") from e
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise SourceError(
            f"{path}: manifest is not valid JSON ({e}); the run's events still sync, its params "
            "and status do not until the file is repaired."
        ) from e
    if not isinstance(data, dict):
        raise SourceError(f"{path}: manifest must be a JSON object, found {type(data).__name__}.")
    return data


def write_manifest(run_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Rewrite the manifest atomically (readers never see half a file)."""
    manifest.setdefault("schema_version", SCHEMA_VERSION)
    atomic_write_json(Path(run_dir) / MANIFEST_NAME, manifest)


def utc_now_iso() -> str:
    """The manifest's timestamp format: ISO 8601, UTC, microseconds."""
    return datetime.now(timezone.utc).isoformat()


def new_manifest(name: str, project: str, backends: list[str], **fields: Any) -> dict[str, Any]:
    """A fresh ``running`` manifest with every field present (empty where not known yet)."""
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "run_id": uuid.uuid4().hex,
        "name": name,
        "project": project,
        "backends": list(backends),
        "status": "running",
        "started_at": utc_now_iso(),
        "ended_at": None,
        "params": {},
        "tags": {},
        "git": {},
        "env": {},
        "system": {},
        "linked_logdirs": [],
        "pid": os.getpid(),
    }
    manifest.update(fields)
    return manifest
