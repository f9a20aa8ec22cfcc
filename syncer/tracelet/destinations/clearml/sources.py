"""The same plain-run files synced from another LOGDIR level (:mod:`tracelet.identity`), on
ClearML: finding the task (offline: the sessions) created under the other name, and taking it.

A run's task stores its source id in the hyperparameter ``tracelet/source_id`` next to
``tracelet/run_id`` and ``tracelet/run_path``. When no task (offline: no session) has this
run's own identity, the one with the same source id whose run path and this one are two levels
of one path (:func:`~tracelet.identity.same_source_names`) is this run, looked for in every
project (``RunRef.source_anywhere``) or only in the run's. Its identity stays the one it was
created with: :func:`adopted_run` is the run as that task knows it (run id, run path, project,
task name), so new sessions continue it (same session prefix, same hyperparameters) and the
import puts them into ONE task.

Offline, the lookup reads one ``task.json`` per run in the offline folder (its last readable
session: it carries the latest name, and the source id even for a run whose earlier sessions
were written before source ids existed), once a minute at most (:class:`SourceIndex`), and
only on a run's first sync or after a lost state dir; never on the no-op path. A run not found
lists the folder once more and reads only the runs that appeared since (another sync may have
just written it under its other name: :mod:`.claim` makes that sync finish first).
"""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Mapping

from ...identity import same_source_names
from ..base import RunRef
from .mapping import _SESSION_RE, SESSION_PREFIX, TRACELET_SECTION, clearml_name
from .offline import IMPORTED_SUFFIX, _read_session_doc

SOURCE_PARAM = f"{TRACELET_SECTION}/source_id"
_FIELDS = ("run_id", "run_path", "project", "name", "source_id")
_RELIST_S = 60  # a pass over many new runs lists the folder once


def source_info(doc: Mapping[str, Any]) -> dict[str, str] | None:
    """What a session's ``task.json`` says of the run (its identity hyperparameters, project
    and task name), or None when it is not a Tracelet run with a source id (or is malformed)."""
    hp = doc.get("hyperparams") if isinstance(doc, Mapping) else None
    section = hp.get(TRACELET_SECTION) if isinstance(hp, Mapping) else None
    if not isinstance(section, Mapping):
        return None

    def value(key: str) -> Any:
        p = section.get(key)
        return p.get("value") if isinstance(p, Mapping) else None

    info = {"run_id": value("run_id"), "run_path": value("run_path"),
            "project": doc.get("project_name"), "name": doc.get("name"),
            "source_id": value("source_id")}
    return info if valid_info(info) else None


def valid_info(info: Any) -> bool:
    """Whether ``info`` (read from a file or a checkpoint: untrusted) is a whole identity."""
    return isinstance(info, Mapping) and all(isinstance(info.get(k), str) and info.get(k)
                                             for k in _FIELDS)


def matches(info: Mapping[str, Any], run: RunRef) -> bool:
    """Whether the run ``info`` describes is this run seen from another LOGDIR level: the same
    source id, run paths that are two levels of one path, and (a project given) its project."""
    if not run.source_id or not valid_info(info) or info["source_id"] != run.source_id:
        return False
    if not run.source_anywhere and info["project"] != clearml_name(run.project, nested=True):
        return False
    return same_source_names(info["run_path"], run.run_path)


def adopted_run(run: RunRef, info: Mapping[str, str]) -> RunRef:
    """The run as the adopted task knows it: its run id, run path, project and task name (never
    rewritten); everything read from the source (times, files, repro) is this run's."""
    return dataclasses.replace(run, run_id=info["run_id"], run_path=info["run_path"],
                               project=info["project"], display_name=info["name"])


def where(info: Mapping[str, str]) -> str:
    """The phrase of the engine's warning: ``'exp/r1' in project 'sub'``."""
    return f"'{info['run_path']}' in project '{info['project']}'"


class SourceIndex:
    """Source id -> the runs (session prefix, :func:`source_info`) of an offline folder."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._by_source: dict[str, list[tuple[str, dict[str, str]]]] | None = None
        self._seen: set[str] = set()  # session prefixes read (or added by this sync)
        self._at = 0.0

    def find(self, run: RunRef) -> tuple[str, dict[str, str]] | None:
        """(session prefix, info) of the run this one continues, else None. Several: the first
        by session prefix (deterministic; two would mean an earlier sync made a second one).

        A miss looks again at the runs that appeared in the folder since the index was read
        (one listing; a ``task.json`` only for a run not seen before): the caller holds the
        run's claim (:mod:`.claim`), and another sync may have written the run under its other
        name just before — an older index would make it a second task."""
        if not run.source_id:
            return None
        found = self._find(run)
        if found is None and self._by_source is not None:
            self._add_new()
            found = self._find(run)
        return found

    def _find(self, run: RunRef) -> tuple[str, dict[str, str]] | None:
        for rhex, info in sorted(self._index().get(run.source_id, ())):
            if matches(info, run):
                return rhex, info
        return None

    def add(self, rhex: str, info: Mapping[str, str]) -> None:
        """A run this sync starts: later runs of the same pass find it without a new listing."""
        if self._by_source is not None and valid_info(info):
            self._by_source.setdefault(info["source_id"], []).append((rhex, dict(info)))
            self._seen.add(rhex)

    def _index(self) -> dict[str, list[tuple[str, dict[str, str]]]]:
        if self._by_source is None or time.monotonic() - self._at > _RELIST_S:
            self._at = time.monotonic()
            self._by_source, self._seen = {}, set()
            self._add_new()
        assert self._by_source is not None
        return self._by_source

    def _add_new(self) -> None:
        """Read the runs of the folder not read yet. A run read is not read again before the
        next whole listing (its run id, run path and source id are those it was created with);
        one whose last session is an unfinished folder without them (its task.json not whole
        yet) is read again."""
        assert self._by_source is not None
        for rhex, entry in sorted(_last_sessions(self.folder, skip=self._seen).items()):
            info = source_info(_read_session_doc(entry))
            if info is not None or entry["zip"] is not None:
                self._seen.add(rhex)
            if info is not None:
                self._by_source.setdefault(info["source_id"], []).append((rhex, info))


def last_session_info(folder: Path, rhex: str) -> dict[str, str] | None:
    """:func:`source_info` of the last readable session of the run ``rhex``."""
    entry = _last_sessions(folder, SESSION_PREFIX + rhex).get(rhex)
    return source_info(_read_session_doc(entry)) if entry else None


def _last_sessions(folder: Path, prefix: str = SESSION_PREFIX,
                   skip: set[str] | frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """Session prefix -> the highest-numbered session of that run that has a ``task.json``
    folder or a zip (one that was imported and removed has neither: nothing to read); the
    prefixes in ``skip`` are left out."""
    try:
        names = os.listdir(folder)
    except OSError:
        return {}
    best: dict[str, tuple[int, dict[str, Any]]] = {}
    for name in names:
        if not name.startswith(prefix) or name.endswith(IMPORTED_SUFFIX):
            continue
        stem = name[:-4] if name.endswith(".zip") else name
        m = _SESSION_RE.match(stem)
        if not m or m.group(1) in skip:
            continue
        seq = int(m.group(2), 16)
        have = best.get(m.group(1))
        if have is not None and have[0] > seq:
            continue
        entry = have[1] if have is not None and have[0] == seq else {"dir": None, "zip": None}
        path = folder / name
        if name.endswith(".zip"):
            entry["zip"] = path
        elif (path / "task.json").is_file():
            entry["dir"] = path
        else:
            continue
        best[m.group(1)] = (seq, entry)
    return {rhex: entry for rhex, (_, entry) in best.items()}


def find_online_task(run: RunRef) -> tuple[Any, dict[str, str]] | None:
    """Online: the task created for the same files under another run path (in every project, or
    the run's), found by its ``tracelet/source_id`` hyperparameter (one query, filtered by the
    server). Written against clearml 2.1, not run against a live server here."""
    if not run.source_id:
        return None
    from clearml import Task

    found = Task.get_tasks(
        project_name=None if run.source_anywhere else clearml_name(run.project, nested=True),
        allow_archived=True, task_filter={
            "_allow_extra_fields_": True, "order_by": ["created"],
            f"hyperparams.{TRACELET_SECTION}.source_id.value": [run.source_id]})
    for t in found or []:
        info = online_info(t)
        if info is not None and matches(info, run):
            return t, info
    return None


def online_info(task: Any) -> dict[str, str] | None:
    """:func:`source_info` of a server task."""
    info = {"run_id": str(task.get_parameter(f"{TRACELET_SECTION}/run_id") or ""),
            "run_path": str(task.get_parameter(f"{TRACELET_SECTION}/run_path") or ""),
            "project": str(task.get_project_name() or ""), "name": str(task.name or ""),
            "source_id": str(task.get_parameter(SOURCE_PARAM) or "")}
    return info if valid_info(info) else None
