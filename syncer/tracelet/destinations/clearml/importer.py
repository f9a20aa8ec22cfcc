"""Uploading Tracelet's ClearML offline sessions (run where the server is reachable).

On a machine that reaches the server (clearml.conf or ``CLEARML_API_*`` set; copy
``<cache>/offline`` there first if the sync ran elsewhere)::

    python -m tracelet.destinations.clearml import --dry-run [OFFLINE_DIR]   # the plan
    python -m tracelet.destinations.clearml import [OFFLINE_DIR]

For each run it imports the sessions in name order with ClearML's own
``Task.import_offline_session``: the first creates the task, each later one continues it
(``previous_task_id`` = the id the first returned). That ClearML call (1) creates, for a
continued session, an empty draft task with the same name, (2) replaces the task's artifact
list with the session's, (3) always marks the task completed; the helper deletes (1),
re-registers the artifacts (2) dropped (:func:`_repair_continuation`) and applies the status
the sessions recorded (3). A finished session gets ``<zip>.imported`` (holding the task id) and
is never imported again; an unfinished folder is imported as is and again once finished —
harmless, every event replaces itself. With the markers gone the task is found on the server by
``tracelet/run_id``. Plain ClearML works too, with caveats (1)-(3), and it sees a session only
once it has its zip::

    from pathlib import Path
    from clearml import Task
    task_id = None
    for z in sorted(Path(OFFLINE_DIR).glob("offline-<20 hex of the run>*.zip")):
        task_id = Task.import_offline_session(str(z), previous_task_id=task_id)

The server side (import, draft deletion, status) is written against clearml 2.1 but has not run
against a live server here (none is reachable); the plan, and ClearML's own offline reader over
the sessions, are tested.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from ..._fs import atomic_write_bytes
from .client import _find_online_task, _set_online_status
from .mapping import _SESSION_RE, SESSION_PREFIX, TRACELET_SECTION
from .offline import IMPORTED_SUFFIX, _read_session_doc, offline_dir


def plan_offline_import(folder: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Tracelet's sessions in ``folder`` (default: ClearML's offline folder), grouped per run,
    in import order. A session is its zip when finished, else its folder (left by a killed
    sync, or being written); ``imported_as`` is the task a finished one went into."""
    root = Path(folder) if folder else offline_dir()
    runs: dict[str, dict[str, Any]] = {}
    stems = sorted({p.name[:-4] if p.name.endswith(".zip") else p.name
                    for p in root.glob(f"{SESSION_PREFIX}*")})
    for stem in stems:
        m = _SESSION_RE.match(stem)
        if not m:
            continue
        entry = {"dir": root / stem if (root / stem / "task.json").is_file() else None,
                 "zip": root / (stem + ".zip") if (root / (stem + ".zip")).is_file() else None}
        if entry["dir"] is None and entry["zip"] is None:
            continue
        doc = _read_session_doc(entry)
        hp = doc.get("hyperparams") or {}
        run_id = ((hp.get(TRACELET_SECTION) or {}).get("run_id") or {}).get("value")
        if not run_id:
            continue  # not a Tracelet session
        path = entry["zip"] or entry["dir"]
        run = runs.setdefault(m.group(1), {
            "run_hash": m.group(1), "run_id": run_id, "project": doc.get("project_name"),
            "task_name": doc.get("name"), "sessions": [], "earlier_task_id": None})
        run["task_name"] = doc.get("name") or run["task_name"]  # the latest name
        run["sessions"].append({"path": str(path), "seq": int(m.group(2), 16),
                                "task_name": doc.get("name") or "",
                                "finished": entry["zip"] is not None, "status": doc.get("status"),
                                "imported_as": _marker_task(Path(f"{path}{IMPORTED_SUFFIX}"))})
    # Sessions imported and then removed (only their marker is left): the task they went into
    # is the one the run's new sessions continue.
    for marker in sorted(root.glob(f"{SESSION_PREFIX}*.zip{IMPORTED_SUFFIX}")):
        m = _SESSION_RE.match(marker.name[:-len(".zip" + IMPORTED_SUFFIX)])
        run = runs.get(m.group(1)) if m else None
        if run is not None and not marker.with_name(marker.name[:-len(IMPORTED_SUFFIX)]).exists():
            run["earlier_task_id"] = _marker_task(marker) or run["earlier_task_id"]
    for run in runs.values():
        run["sessions"].sort(key=lambda s: s["seq"])
    return list(runs.values())


def _marker_task(marker: Path) -> str | None:
    """The task id an ``.imported`` marker holds; None when absent or unreadable."""
    try:
        task_id = json.loads(marker.read_bytes()).get("task_id")
    except (OSError, ValueError, AttributeError):
        return None
    return task_id if isinstance(task_id, str) and task_id else None


def import_offline_sessions(folder: str | os.PathLike | None = None, *,
                            dry_run: bool = False) -> list[dict[str, Any]]:
    """Upload every run's offline sessions, in order, into ONE task per run.

    Uses ClearML's ``Task.import_offline_session`` for every session (the first creates the
    task, the others pass ``previous_task_id``) and repairs its side effects for continued
    sessions (see the module docstring). A finished session is marked imported
    (``<zip>.imported``); an unfinished one is imported now and again once finished, which is
    harmless: each event replaces itself on the server. Returns the plan with ``task_id``.
    """
    plan = plan_offline_import(folder)
    if dry_run:
        return plan
    from clearml import Task

    for run in plan:
        task_id = next((s["imported_as"] for s in reversed(run["sessions"]) if s["imported_as"]),
                       run.get("earlier_task_id"))
        if task_id is None:
            found = _find_online_task(run["project"], run["run_id"])
            task_id = found.id if found is not None else None
        status = None
        for s in run["sessions"]:
            status = s["status"] or status
            if s["imported_as"]:
                continue
            before_ids, before_artifacts = set(), []
            if task_id:
                before_ids = {t.id for t in Task.get_tasks(
                    project_name=run["project"], task_name=f"^{re.escape(s['task_name'])}$")}
                before_artifacts = list(Task.get_task(task_id=task_id).data.execution.artifacts
                                        or [])
            new_id = Task.import_offline_session(s["path"], previous_task_id=task_id)
            if task_id:
                _repair_continuation(run, s["task_name"], task_id, before_ids, before_artifacts)
            task_id = new_id or task_id
            if status and status != "completed":  # the importer always marks completed
                _set_online_status(Task.get_task(task_id=task_id), status)
            if s["finished"]:
                # atomic: a kill mid-write must not leave a marker the next plan cannot read
                atomic_write_bytes(s["path"] + IMPORTED_SUFFIX,
                                   json.dumps({"task_id": task_id}).encode())
                s["imported_as"] = task_id
        run["task_id"] = task_id
    return plan


def _repair_continuation(run: Mapping[str, Any], name: str, task_id: str, before_ids: set,
                         before_artifacts: list) -> None:
    from clearml import Task

    # The draft task import_offline_session creates (and leaves) for a continued session,
    # named as the session (a run renamed between sessions: each has its own name).
    for t in Task.get_tasks(project_name=run["project"], task_name=f"^{re.escape(name)}$"):
        if (t.id not in before_ids and t.id != task_id and str(t.get_status()) == "created"
                and str(t.get_parameter(f"{TRACELET_SECTION}/run_id") or "") == run["run_id"]):
            t.delete(delete_artifacts_and_models=False, raise_on_error=False)
    # Its merge replaces the artifact list with the session's: put the earlier ones back.
    task = Task.get_task(task_id=task_id)
    keys = {a.key for a in task.data.execution.artifacts or []}
    missing = [a for a in before_artifacts if a.key not in keys]
    if missing:
        task._add_artifacts(missing)


def _main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m tracelet.destinations.clearml",
        description="Upload Tracelet's ClearML offline sessions: one task per run, sessions in "
                    "order. Example: python -m tracelet.destinations.clearml import --dry-run")
    sub = p.add_subparsers(dest="cmd", required=True)
    imp = sub.add_parser("import", help="import the sessions not imported yet")
    imp.add_argument("folder", nargs="?", default=None,
                     help="offline folder (default: ClearML's, <cache>/offline)")
    imp.add_argument("--dry-run", action="store_true", help="print the plan, import nothing")
    args = p.parse_args(argv)
    plan = import_offline_sessions(args.folder, dry_run=args.dry_run)
    print(json.dumps(plan, indent=1))
    return 0
