"""The run manifest (``tracelet.json``): schema, reading, and atomic rewriting.

Fields (DESIGN §2): ``schema_version``, ``run_id`` (fixed at creation), ``name``, ``project``,
``backends``, ``status`` (running | finished | failed | killed), ``started_at``, ``ended_at``,
``params`` (secrets redacted), ``tags``, ``git``, ``env``, ``system``, ``linked_logdirs``.
"""
from __future__ import annotations

import json
import os
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
