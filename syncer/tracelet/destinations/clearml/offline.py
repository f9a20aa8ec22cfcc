"""ClearML offline sessions on disk: writing them with ClearML's own objects, reading them back.

Layout (ClearML's own, the folder ``Task.init`` uses offline):
``<cache>/offline/<session-id>/{task.json,metrics.jsonl,data/}`` + ``<session-id>.zip``;
``<cache>`` is ``CLEARML_CACHE_DIR``, else ``sdk.storage.cache.default_base_dir`` of
clearml.conf, else ``$TMPDIR/clearml_cache`` (:func:`offline_dir`). Session ids are
``offline-<20 hex of the run><12 hex sequence number>`` (``mapping.session_id``): the sessions
of a run sort by name in the order they must be imported.

A session is written with ClearML's own objects: ``clearml.Task`` (offline, without
``Task.init``'s process hooks, :func:`_task_class`) writes ``task.json`` (made atomic here),
ClearML's ``Metrics`` writer stores plots and debug samples, and scalars — the bulk — are
appended to the same ``metrics.jsonl`` as copies of the event dict ClearML builds
(``AddRequest(MetricsScalarEvent).to_dict()``, :class:`_Templates`) with only
``iter``/``value``/``timestamp`` set: the lines ClearML writes, without its per-point schema
validation and reporter queue. A session is finished — zipped, atomically, as ``Task.close``
does offline (:func:`_zip_session`) — when the sync closes the run. A session folder without its
zip was left by a killed sync (or is being written): the next sync of that run cuts an
unfinished last line (:func:`_cut_unfinished_line`; ClearML's importer would skip it, or crash
on a first line) and continues the same session.
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from ..._fs import atomic_file, atomic_write_bytes
from ...errors import DestinationError
from .mapping import _SESSION_RE, SESSION_PREFIX

IMPORTED_SUFFIX = ".imported"  # <zip>.imported: written by the import helper (task id)
REPRO_KEY = "tracelet_repro"  # task.json: digest of the reproducibility fields it holds
WRITER_KEY = "tracelet_writer"  # task.json: the checkpoint (state dir) that wrote the session


def offline_dir() -> Path:
    """ClearML's offline folder (``<cache>/offline``), resolved the way ClearML resolves it."""
    from clearml.config import get_offline_dir

    return Path(get_offline_dir()).expanduser().resolve()


# ---------------------------------------------------------------------------------------------
# ClearML objects (imported lazily)
# ---------------------------------------------------------------------------------------------
_SESSION_TASK = None


def _task_class():
    """clearml.Task with durable task.json writes and a chosen offline id (class built once)."""
    global _SESSION_TASK
    if _SESSION_TASK is not None:
        return _SESSION_TASK
    from clearml import Task

    class SessionTask(Task):  # type: ignore[misc, valid-type]
        """An offline ClearML task created without ``Task.init`` (no stdout/framework hooks,
        no singleton), whose id we choose, and whose ``task.json`` is replaced atomically: a
        kill -9 mid-write must never leave a session ClearML cannot import."""

        def __init__(self, chosen_id: str | None = None, **kw: Any):
            self._tracelet_id = chosen_id
            # task.json fields the offline data model (API 2.9) lacks or cannot write as JSON:
            # ``runtime`` (applied by the import on servers with API >= 2.13), ``started`` and
            # ``completed`` (ISO strings; the import leaves them to the server)
            self.tracelet_extra: dict[str, Any] = {}
            protection = Task._Task__create_protection  # type: ignore[attr-defined]
            super().__init__(private=protection, **kw)

        def _auto_generate(self, project_name=None, task_name=None, task_type=None):  # noqa: ANN001
            if self._offline_mode and self._tracelet_id:
                return self._tracelet_id
            return super()._auto_generate(project_name=project_name, task_name=task_name,
                                          task_type=task_type)

        def _save_data_to_offline_dir(self, **kwargs: Any) -> None:
            for k, v in kwargs.items():
                setattr(self.data, k, v)
            folder = self.get_offline_mode_folder()
            if not folder:
                return
            export = self.data.to_dict()
            export["project_name"] = self.get_project_name()
            export["offline_folder"] = Path(folder).as_posix()
            export["offline_output_models"] = self._offline_output_models
            export.update(self.tracelet_extra)
            atomic_write_bytes(Path(folder) / self._offline_filename,
                               json.dumps(export, ensure_ascii=True, sort_keys=True,
                                          default=_json_time).encode())

    _SESSION_TASK = SessionTask
    return SessionTask


def _json_time(o: Any) -> Any:
    """A datetime the data model parsed from a reloaded task.json, written back as it was."""
    if isinstance(o, datetime):
        return o.isoformat()
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


class _Templates:
    """Scalar event dicts exactly as ClearML's own writer produces them, one per (title, series);
    each point is a shallow copy with ``iter``/``value``/``timestamp`` set."""

    def __init__(self, task_id: str):
        from clearml.backend_api.services import events as api_events

        self._events = api_events
        self.task_id = task_id
        self.cache: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, title: str, series: str) -> dict[str, Any]:
        t = self.cache.get((title, series))
        if t is None:
            ev = self._events
            t = ev.AddRequest(event=ev.MetricsScalarEvent(
                task=self.task_id, metric=title, variant=series, value=0.0, iter=0,
                timestamp=1)).to_dict()
            self.cache[(title, series)] = t
        return t


# ---------------------------------------------------------------------------------------------
# sessions on disk
# ---------------------------------------------------------------------------------------------
def _list_sessions(folder: Path, run_hex: str) -> dict[int, dict[str, Path | None]]:
    """seq -> {"dir": folder, "zip": zip, "marker": ``<zip>.imported``, each or None} for one
    run's sessions. A session whose only trace is its marker was imported, then removed."""
    out: dict[int, dict[str, Path | None]] = {}
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return out
    prefix = SESSION_PREFIX + run_hex
    for name in names:
        if not name.startswith(prefix):
            continue
        if name.endswith(".zip" + IMPORTED_SUFFIX):
            stem, key = name[:-len(".zip" + IMPORTED_SUFFIX)], "marker"
        elif name.endswith(".zip"):
            stem, key = name[:-4], "zip"
        else:
            stem, key = name, "dir"
        m = _SESSION_RE.match(stem)
        if not m:
            continue
        entry = out.setdefault(int(m.group(2), 16), {"dir": None, "zip": None, "marker": None})
        entry[key] = folder / name
    return out


def missing_sessions(sessions: Mapping[int, Any], next_seq: int) -> list[tuple[int, int]]:
    """Ranges ``(first, last)`` of the sequence numbers below ``next_seq`` that have neither a
    folder, a zip nor an ``.imported`` marker: sessions this target wrote and someone removed.
    (Every number below ``next_seq`` had its folder: one is created before the number is
    recorded.) Walks the sessions present, never the numbers: a huge ``next_seq`` costs
    nothing."""
    gaps, expect = [], 1
    for seq in sorted(s for s in sessions if s < next_seq):
        if seq > expect:
            gaps.append((expect, seq - 1))
        expect = seq + 1
    if expect < next_seq:
        gaps.append((expect, next_seq - 1))
    return gaps


def _cut_unfinished_line(path: Path) -> None:
    """Drop a last line without its newline (a write cut by kill -9): ClearML's importer
    would fail on it and re-send the line before it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        pos, chunk = size, 1 << 16
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            data = f.read(pos - start)
            nl = data.rfind(b"\n")
            if nl >= 0:
                f.truncate(start + nl + 1)
                break
            pos = start
        else:
            f.truncate(0)
        f.flush()
        os.fsync(f.fileno())


def _read_session_doc(entry: Mapping[str, Path | None]) -> dict[str, Any]:
    """A session's task.json (folder first, else its zip); {} when unreadable."""
    d, z = entry.get("dir"), entry.get("zip")
    try:
        if d is not None and (d / "task.json").exists():
            return json.loads((d / "task.json").read_bytes())
        if z is not None:
            with zipfile.ZipFile(z) as zf:
                return json.loads(zf.read("task.json"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        pass
    return {}


def _read_session_events(entry: Mapping[str, Path | None]) -> list[dict[str, Any]]:
    """The events ClearML's import of this session would send, keyed fields untouched: what
    the session holds. The import (``Task.import_offline_session``) reads the zip of a
    finished session, else its folder; ``Metrics.report_offline_session`` then sends, per
    ``metrics.jsonl`` line, the events whose ``task`` is ``task.json``'s id (``only_with_id``),
    a debug sample's file only if it is in the session's ``data/``. So these are left out: every
    event of a session without a readable ``task.json`` (the import refuses it) or whose first
    line it cannot read (the import crashes on it); a line that is not a list of events (ClearML
    skips it); an event of another task id; a debug sample (``key`` + ``url``) whose file is
    missing. Used by dedupe: what is left out is written again, never counted present."""
    d, z = entry.get("dir"), entry.get("zip")
    if z is not None:
        try:
            with zipfile.ZipFile(z) as zf:
                names = set(zf.namelist())
                doc = zf.read("task.json") if "task.json" in names else b""
                data = zf.read("metrics.jsonl") if "metrics.jsonl" in names else b""
        except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError) as e:
            # The offline folder itself is damaged, not the points being sent: every resend
            # of this run would fail alike, so the destination fails (never a quarantine).
            raise DestinationError(
                f"clearml: offline session {z} is not a readable zip ({e}): it cannot be "
                "compared with what is being sent again (and ClearML cannot import it). Restore "
                "the zip from a copy, or move it out of the offline folder: the points sent "
                "again are then written into a new session (an event imported twice replaces "
                "itself).") from e
        has_file = names.__contains__
    elif d is not None:
        doc = (d / "task.json").read_bytes() if (d / "task.json").exists() else b""
        data = (d / "metrics.jsonl").read_bytes() if (d / "metrics.jsonl").exists() else b""
        folder = d

        def has_file(rel: str) -> bool:
            return (folder / rel).is_file()
    else:
        return []
    try:
        task_id = json.loads(doc).get("id") if doc else None
    except (ValueError, AttributeError):
        task_id = None
    if not isinstance(task_id, str) or not data:
        return []
    lines = data.split(b"\n")
    if not lines[-1]:
        lines.pop()  # the file ends with a newline
    out: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        events = _line_events(line)
        if events is None:
            if i == 0:
                return []  # ClearML's import stops on an unreadable first line
            continue  # an unfinished line of a killed sync; cut before it is ever zipped
        for e in events:
            if e["task"] != task_id:
                continue
            key = e.get("key")
            if key and e.get("url") and not (isinstance(key, str) and has_file("data/" + key)):
                continue
            out.append(e)
    return out


def _line_events(line: bytes) -> list[dict[str, Any]] | None:
    """One ``metrics.jsonl`` line's events, or None where ClearML's import cannot use the line
    (not JSON, not a list, an item that is not an event with a ``task``)."""
    try:
        events = json.loads(line)
    except ValueError:
        return None
    if not isinstance(events, list) or not all(isinstance(e, dict) and "task" in e
                                               for e in events):
        return None
    return events


def _zip_session(folder: Path) -> Path:
    """``<folder>.zip`` the way ``Task.close`` makes it offline, published atomically (a kill
    leaves only a ``.<name>.zip.tmp-*`` file, removed when the run is opened again)."""
    target = folder.with_name(folder.name + ".zip")
    with atomic_file(target) as f:
        with zipfile.ZipFile(f, "w", allowZip64=True, compression=zipfile.ZIP_DEFLATED) as zf:
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    zf.write(p, arcname=p.relative_to(folder).as_posix())
    return target
