"""The run manifest (``tracelet.json``): schema, reading, and atomic rewriting.

Written by the recorder (:mod:`tracelet.recorder`), but any user or program may write one, so
``tracelet sync`` reads it as untrusted input, in three steps:

1. **Bounded read** (:data:`MAX_MANIFEST_BYTES`, 16 MiB): a larger file is not read at all; the
   run's events, sidecar and artifacts still sync, its manifest fields do not. The file is opened
   without following a link out of the run folder (:mod:`tracelet.runfiles`).
2. **Depth check** before parsing (:data:`MAX_DEPTH`, 64 levels of nested ``[``/``{``), by a loop
   that cannot itself recurse: deeper JSON would make ``json.loads`` raise ``RecursionError``.
3. **Schema** (:data:`SCHEMA`, JSON Schema validated with ``jsonschema``): a field that does not
   match is treated as absent, with one warning naming the file and the field
   (``.../tracelet.json: field 'params' must be an object, found list; ignored``); the run's
   valid fields and its events still sync. Fields not listed here are kept as written.

=================  ===========================================  =================================
field              type                                         limits
=================  ===========================================  =================================
``schema_version`` integer                                      1 ... 1000
``run_id``         string (fixed at creation)                   1-128 characters, no control chars
``name``           string                                       up to 255 characters, no control
``project``        string                                       up to 255 characters, no control
``backends``       string, or list of strings                   (unknown names are ignored)
``status``         ``running|finished|failed|killed`` or null
``started_at``     ISO 8601 string, unix seconds, or null       1970-01-01 ... 9999-12-31 UTC
``ended_at``       ISO 8601 string, unix seconds, or null       same (NaN, Inf, 1e300 invalid)
``params``         object (nested objects joined with ``/``)    secrets redacted by the recorder
``tags``           object of string -> string
``git``            object                                       written by the recorder
``env``            object                                       written by the recorder
``system``         object                                       written by the recorder
``linked_logdirs`` list of strings (folder paths)               up to 4096 characters each
``pid``            integer or null                              of the recording process
``command``        list of strings                              argv of the training
``user``           string of at most 256 characters             who ran it (login name)
=================  ===========================================  =================================

``pid`` tells a live run from a crashed one on the same host; ``command`` has secret-looking
option values redacted. Timestamps written by the recorder are ISO 8601 strings in UTC
(``2024-05-01T12:00:00.123456+00:00``; ``datetime.fromisoformat`` parses them); a naive string is
read as local time. Relative ``linked_logdirs`` are relative to the run folder.

The no-op cron path (:meth:`tracelet.engine.SyncEngine._unchanged_without_lock`) reads the
manifest with ``validate=False``: steps 1 and 2 and a type check of the two fields it uses
(``backends``, ``linked_logdirs``), no ``jsonschema``.
"""
from __future__ import annotations

import json
import math
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ._fs import atomic_write_bytes
from .errors import SourceError
from .reader.points import MAX_ABS_WALL_TIME

from .rundir import MANIFEST_NAME
SCHEMA_VERSION = 1
STATUSES = ("running", "finished", "failed", "killed")
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_UNIX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: the largest time datetime can show
TIME_FORMAT = "tracelet-time"

_NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"
_TIME = {"type": ["string", "number", "null"], "maxLength": 64, "format": TIME_FORMAT}
_STRINGS = {"type": "array", "items": {"type": "string"}}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "properties": {
        "schema_version": {"type": "integer", "minimum": 1, "maximum": 1000},
        "run_id": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": _NO_CONTROL},
        "name": {"type": "string", "maxLength": 255, "pattern": _NO_CONTROL},
        "project": {"type": "string", "maxLength": 255, "pattern": _NO_CONTROL},
        "backends": {"anyOf": [{"type": "string"}, _STRINGS]},
        "status": {"enum": [*STATUSES, None]},
        "started_at": _TIME,
        "ended_at": _TIME,
        "params": {"type": "object"},
        "tags": {"type": "object", "additionalProperties": {"type": "string"}},
        "git": {"type": "object"},
        "env": {"type": "object"},
        "system": {"type": "object"},
        "linked_logdirs": {"type": "array",
                           "items": {"type": "string", "minLength": 1, "maxLength": 4096}},
        "pid": {"type": ["integer", "null"], "minimum": 0},
        "command": _STRINGS,
        "user": {"type": "string", "maxLength": 256},
    },
}

# What each field must be, in the words of the warning ("field 'x' must be <this>, found ...").
EXPECTED = {
    "schema_version": "an integer from 1 to 1000",
    "run_id": "a string of 1 to 128 characters without control characters",
    "name": "a string of at most 255 characters without control characters",
    "project": "a string of at most 255 characters without control characters",
    "backends": "a destination name or a list of them (strings)",
    "status": "one of " + ", ".join(STATUSES) + " (or null)",
    "started_at": "an ISO 8601 time or unix seconds between 1970 and 9999 (or null)",
    "ended_at": "an ISO 8601 time or unix seconds between 1970 and 9999 (or null)",
    "params": "an object",
    "tags": "an object of string -> string",
    "git": "an object",
    "env": "an object",
    "system": "an object",
    "linked_logdirs": "a list of folder paths (strings of 1 to 4096 characters)",
    "pid": "a non-negative integer (or null)",
    "command": "a list of strings",
    "user": "a string of at most 256 characters",
}


def load_manifest(run_dir: str | os.PathLike, problems: list[str] | None = None, *,
                  validate: bool = True, follow_links: bool = False) -> dict[str, Any] | None:
    """The run's manifest, or ``None`` when the run has none (plain TensorBoard logdir).

    Raises :class:`SourceError` when the file as a whole is unusable (unreadable, a link out of
    the run, over :data:`MAX_MANIFEST_BYTES`, deeper than :data:`MAX_DEPTH`, not JSON, not an
    object). With ``validate`` every field is checked against :data:`SCHEMA`; an invalid field
    is dropped and a warning appended to ``problems``. Without it (the no-op fast path) only
    ``backends`` and ``linked_logdirs`` are type-checked (dropped silently when wrong).
    """
    from .runfiles import RunFiles

    path = Path(run_dir) / MANIFEST_NAME
    try:
        raw = RunFiles(run_dir, follow_links).read_bounded(path, MAX_MANIFEST_BYTES, "manifest")
    except FileNotFoundError:
        return None
    return manifest_from_bytes(raw, path, problems, validate=validate)


def manifest_from_bytes(raw: bytes, path, problems: list[str] | None = None, *,
                        validate: bool = True) -> dict[str, Any]:
    """:func:`load_manifest` on bytes already read (``path`` names them in messages): a
    manifest in object storage is read by :mod:`tracelet.storage.runs`, then checked the same."""
    data = parse_manifest(raw, path)
    if validate:
        for problem in drop_invalid_fields(data, path):
            if problems is not None:
                problems.append(problem)
    else:
        _cheap_check(data)
    return data


def parse_manifest(raw: bytes, path: str | os.PathLike) -> dict[str, Any]:
    """JSON object from ``raw`` after the depth check; :class:`SourceError` when unusable."""
    if too_deep(raw):
        raise SourceError(
            f"{path}: manifest nests more than {MAX_DEPTH} levels deep; ignored. The run's "
            "events still sync, its params and status do not until the file is repaired.")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: belt and braces after the check
        raise SourceError(
            f"{path}: manifest is not valid JSON ({_short(str(e))}); the run's events still "
            "sync, its params and status do not until the file is repaired.") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: manifest must be a JSON object, found {_json_type(data)}; "
                          "ignored. The run's events still sync.")
    return data


def too_deep(raw: bytes) -> bool:
    """``raw`` nests deeper than :data:`MAX_DEPTH` (scanned only when it has enough brackets)."""
    return raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and json_depth(raw) > MAX_DEPTH


# Strings (with their escapes) and brackets: brackets inside strings must not count.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def json_depth(raw: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in ``raw``, by a loop (no recursion, whatever the input);
    the scan stops at the first level over :data:`MAX_DEPTH`."""
    depth = deepest = 0
    for m in _TOKENS.finditer(raw):
        c = m.group()[:1]
        if c in (b"[", b"{"):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest  # enough to refuse; the rest need not be scanned
        elif c in (b"]", b"}"):
            depth -= 1
    return deepest


_VALIDATOR = None


def _validator():
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema  # only on the locked path: the no-op fast path never imports it

        checker = jsonschema.FormatChecker(formats=())
        checker.checks(TIME_FORMAT)(valid_time)
        _VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=checker)
    return _VALIDATOR


def validate_manifest(data: Any, path: str | os.PathLike = MANIFEST_NAME) -> list[str]:
    """One warning per invalid field of ``data`` (nothing changed); ``[]`` when it is valid."""
    if not isinstance(data, dict):
        return [f"{path}: manifest must be a JSON object, found {_json_type(data)}"]
    return [msg for _, msg in _field_errors(data, path)]


def drop_invalid_fields(data: dict[str, Any], path: str | os.PathLike) -> list[str]:
    """Remove every field of ``data`` that does not match :data:`SCHEMA`; the warnings."""
    out = []
    for field_name, msg in _field_errors(data, path):
        data.pop(field_name, None)
        out.append(msg + "; ignored")
    return out


def _field_errors(data: dict[str, Any], path) -> list[tuple[str, str]]:
    first: dict[str, Any] = {}
    for err in _validator().iter_errors(data):
        if not err.absolute_path:
            continue  # the root is an object (checked before): nothing else fails at the root
        first.setdefault(str(err.absolute_path[0]), err)
    out = []
    for name in sorted(first):
        err = first[name]
        where = list(err.absolute_path)
        found = _found(err.instance, err.validator)
        if len(where) > 1:
            found += " at " + "".join(f"[{_short(repr(k), 40)}]" for k in where[1:])
        out.append((name, f"{path}: field '{name}' must be {EXPECTED.get(name, 'valid')}, "
                          f"found {found}"))
    return out


def _found(value: Any, validator: str) -> str:
    """The offending value, short: its type, and why it is wrong when the type is not why."""
    kind = _json_type(value)
    if validator in ("type", "anyOf"):
        return kind
    if isinstance(value, str):
        if validator in ("maxLength", "minLength"):
            return f"a string of {len(value)} characters"
        if validator == "pattern":
            return "a string with control characters"
        return f"{_short(repr(value), 60)}"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (int, float)):
        return _short(repr(value), 60)
    return kind


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(text: str, limit: int = 200) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def valid_time(value: Any) -> bool:
    """``started_at``/``ended_at``: ISO 8601 or unix seconds, finite, 1970 ... 9999 UTC."""
    if isinstance(value, bool) or value is None:
        return value is None
    if isinstance(value, (int, float)):
        return math.isfinite(value) and 0 <= value <= MAX_UNIX_TIME
    if isinstance(value, str):
        try:
            ts = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError, OSError):
            return False
        return 0 <= ts <= MAX_UNIX_TIME
    return True  # other types: the "type" keyword reports them


def _cheap_check(data: dict[str, Any]) -> None:
    """The fast path's check of the fields it reads: right type, else absent (no warning: the
    locked path, which validates everything, reports it)."""
    backends = data.get("backends")
    if backends is not None and not (isinstance(backends, str) or (
            isinstance(backends, list) and all(isinstance(b, str) for b in backends))):
        del data["backends"]
    linked = data.get("linked_logdirs")
    if linked is not None and not (isinstance(linked, list) and all(
            isinstance(d, str) and 0 < len(d) <= 4096 for d in linked)):
        del data["linked_logdirs"]


def write_manifest(run_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Rewrite the manifest atomically (readers never see half a file). ``ValueError`` (file
    untouched) when it would be over :data:`MAX_MANIFEST_BYTES` or :data:`MAX_DEPTH`: a
    manifest ``tracelet sync`` would ignore is refused where it is written, not found later."""
    manifest.setdefault("schema_version", SCHEMA_VERSION)
    path = Path(run_dir) / MANIFEST_NAME
    data = json.dumps(manifest, indent=1, sort_keys=True, default=str).encode()
    if len(data) > MAX_MANIFEST_BYTES:
        raise ValueError(f"{path}: the manifest would be {len(data):,} bytes, over the "
                         f"{MAX_MANIFEST_BYTES:,}-byte limit of tracelet sync; not written. Log "
                         "large values as artifacts (log_artifact), not params.")
    if too_deep(data):
        raise ValueError(f"{path}: the manifest would nest more than {MAX_DEPTH} levels deep; "
                         "not written. Flatten the nested params.")
    atomic_write_bytes(path, data)


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


def manifest_time(value: Any) -> float | None:
    """A manifest time (unix seconds or ISO 8601) as unix seconds; None when absent or unusable
    (NaN, ±Inf, negative or beyond 1e12 s, unparsable): every destination then does without it
    (a start time MLflow, Aim or W&B would refuse must never fail the run)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        t = float(value)
    else:
        try:
            t = datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except (ValueError, OverflowError, OSError):
            return None
    return t if 0 <= t < MAX_ABS_WALL_TIME else None
