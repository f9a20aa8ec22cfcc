"""A plain run reached under another name (:mod:`tracelet.identity`): the W&B run created for
the same files when they were synced from another LOGDIR level.

Every W&B run of a plain run carries its source id in its config, ``tracelet = {run_id,
run_path, source_id}``. When this run's own W&B id has no run yet (its first sync, or a lost
state dir), :func:`find_offline` / :func:`find_online` look for a run with the same source id
(in every project when ``RunRef.source_anywhere``, else in the run's project) whose run path and
this one are two levels of one path (:func:`tracelet.identity.same_source_names`); the
destination then continues that run. Its config ``tracelet`` and display name are kept as they
were created (:class:`Adopted`), so it is found again the same way from either level.

A checkpoint naming such a run (its W&B id is not this run's own) is trusted only after the
run itself says it holds this source (:func:`offline_owner` / :func:`online_owner`): a crafted
or mixed-up checkpoint never makes tracelet write into another run.

Cost: offline, the Run record at the head of each ``offline-run-*`` fragment under
``WANDB_DIR``, read once per sync (:class:`OfflineIndex`) and only when a run needs a lookup;
online, one run lookup then one filtered run listing per project searched. Never on the no-op
path (``open_run`` is not called there).
"""
from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from ...identity import same_source_names
from ...redact import scrubbed_logger
from ..base import RunRef
from .mapping import _RUN_ID_OK as RUN_ID_OK, wandb_project
from .txlog import read_run_record

log = scrubbed_logger("tracelet.wandb")  # log lines never show a credential

CONFIG_KEY = "tracelet"  # the config entry that holds the run's tracelet identity


@dataclass(frozen=True)
class Adopted:
    """A W&B run found by source id: where it is and the identity it was created with."""

    run_id: str  # its W&B run id
    project: str
    display_name: str
    config: Mapping[str, Any] = field(default_factory=dict)  # its config ``tracelet``

    @property
    def run_path(self) -> str:
        path = self.config.get("run_path")
        return path if isinstance(path, str) else ""

    def where(self) -> str:
        """The phrase the engine's warning names it by (``RunHandle.same_source``)."""
        return f"'{self.run_path}' in project '{self.project}'"


def identity_config(run: RunRef) -> dict[str, str]:
    """The config ``tracelet`` of a run created for ``run``."""
    cfg = {"run_id": run.run_id, "run_path": run.run_path}
    if run.source_id:
        cfg["source_id"] = run.source_id
    return cfg


def _holds(cfg: Any, run: RunRef) -> bool:
    """Whether a W&B run's config ``tracelet`` says it holds ``run``'s source."""
    return (bool(run.source_id) and isinstance(cfg, Mapping)
            and cfg.get("source_id") == run.source_id
            and isinstance(cfg.get("run_path"), str)
            and same_source_names(cfg["run_path"], run.run_path))


def _record_config(rec) -> dict[str, Any]:
    """The config ``tracelet`` of a ``RunRecord`` ({} if absent or not JSON: the file is anyone's)."""
    for item in rec.config.update:
        if (item.key or "/".join(item.nested_key)) == CONFIG_KEY:
            try:
                value = json.loads(item.value_json)
            except ValueError:
                return {}
            return value if isinstance(value, dict) else {}
    return {}


# -- offline ----------------------------------------------------------------------------------
class OfflineIndex:
    """The runs under ``WANDB_DIR`` by source id, from the Run record of each fragment; built at
    the first lookup of a sync (one head read per fragment), then kept for that sync."""

    def __init__(self, root: str):
        self.root = root
        self._by_source: dict[str, list[tuple[tuple[int, int], Adopted]]] | None = None
        self._built_at = 0.0

    def _build(self) -> dict[str, list[tuple[tuple[int, int], Adopted]]]:
        out: dict[str, list[tuple[tuple[int, int], Adopted]]] = {}
        pattern = os.path.join(glob.escape(os.path.join(self.root, "wandb")), "offline-run-*",
                               "run-*.wandb")
        for path in glob.glob(pattern):
            try:
                rec = read_run_record(path)
            except Exception as e:  # anyone's file (DecodeError: not a Run record): not a lookup's
                log.warning("wandb: %s: its Run record cannot be read (%s: %s); it is left out "
                            "of the lookup of runs by source id (move it out of %s if it is not "
                            "a W&B run)", path, type(e).__name__, e, self.root)
                continue
            if rec is None:
                continue  # being started, or killed inside wandb.init: holds no data
            cfg = _record_config(rec)
            sid = cfg.get("source_id")
            if not isinstance(sid, str) or not sid:
                continue
            start = (rec.start_time.seconds, rec.start_time.nanos)
            out.setdefault(sid, []).append(
                (start, Adopted(rec.run_id, rec.project, rec.display_name, cfg)))
        for found in out.values():
            found.sort(key=lambda x: x[0])  # the first sync's fragment first: its name stays
        return out

    def find(self, run: RunRef) -> Adopted | None:
        """The earliest run holding ``run``'s source (see the module docstring), or None."""
        if not run.source_id:
            return None
        # once per sync; a long-lived destination (--follow) sees others' new runs a minute later
        if self._by_source is None or time.monotonic() - self._built_at > 60:
            self._built_at = time.monotonic()
            self._by_source = self._build()
        project = wandb_project(run.project)
        for _, found in self._by_source.get(run.source_id, ()):
            if (run.source_anywhere or found.project == project) and _holds(found.config, run):
                return found
        return None


def offline_owner(paths: list[str], run: RunRef) -> Adopted | None:
    """The run a checkpoint names, if the first of its ``.wandb`` files (``paths``, in
    ``wandb sync`` order) says it holds ``run``'s source; else None (not this run's: unused)."""
    for path in paths[:1]:
        rec = read_run_record(path)
        cfg = _record_config(rec) if rec is not None else {}
        if _holds(cfg, run):
            return Adopted(rec.run_id, rec.project, rec.display_name, cfg)
    return None


def named_run(ident: Mapping[str, Any]) -> tuple[str, str] | None:
    """The (W&B id, project) a checkpoint's identity names, if both are well-formed (they go
    into file patterns and API paths: anything else is not used)."""
    wid, project = ident.get("run_id"), ident.get("project")
    if not (isinstance(wid, str) and RUN_ID_OK.fullmatch(wid)):
        return None
    if not (isinstance(project, str) and project and wandb_project(project) == project):
        return None
    return wid, project


# -- online (not exercised by the test suite: it has no W&B account) ---------------------------
def online_owner(api, entity: str | None, project: str, wid: str, run: RunRef) -> Adopted | None:
    """Online :func:`offline_owner`: one run lookup."""
    from .client import _not_on_server

    entity = entity or api.default_entity
    try:
        r = api.run(f"{entity}/{project}/{wid}")
    except Exception as e:
        if _not_on_server(e):
            return None
        raise
    cfg = (r.config or {}).get(CONFIG_KEY)
    return Adopted(wid, project, r.name or "", cfg) if _holds(cfg, run) else None


def find_online(api, entity: str | None, run: RunRef, own_wid: str) -> Adopted | None:
    """Online lookup: None when this run's own W&B id already has a run (one lookup); else the
    earliest run with the same source id, by a config filter on the runs of the run's project
    (every project of the entity when ``run.source_anywhere``)."""
    from .client import _not_on_server

    if not run.source_id:
        return None
    entity = entity or api.default_entity
    project = wandb_project(run.project)
    try:
        api.run(f"{entity}/{project}/{own_wid}")
        return None  # the run's own id has a run: it is continued as always
    except Exception as e:
        if not _not_on_server(e):
            raise
    projects = [project]
    if run.source_anywhere:
        projects += [p.name for p in api.projects(entity) if p.name != project]
    for name in projects:
        try:
            runs = api.runs(f"{entity}/{name}",
                            filters={f"config.{CONFIG_KEY}.source_id": run.source_id},
                            order="+created_at", per_page=50)
            for r in runs:
                cfg = (r.config or {}).get(CONFIG_KEY)
                if _holds(cfg, run):
                    return Adopted(r.id, name, r.name or "", cfg)
        except Exception as e:
            if not _not_on_server(e):
                raise
    return None
