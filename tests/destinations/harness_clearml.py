"""ClearML harness: offline sessions, read back as ClearML's importer and server would show them.

No ClearML server runs here, so read-back applies the vendor's own rules to the files ClearML's
format holds (nothing from Tracelet's destination code is used):

* ``Task.import_offline_session`` (clearml/task.py) + ``Metrics.report_offline_session``
  (clearml/backend_interface/metrics/interface.py): each ``metrics.jsonl`` line is one list of
  events; only events whose ``task`` is the session's ``task.json`` id are sent
  (``only_with_id``); an unreadable line is skipped (the stale list it re-sends is harmless), an
  unreadable FIRST line crashes the import; a debug sample is uploaded only if its file is in the
  session's ``data/`` folder; ``task.json`` hyperparameters are merged into the task
  (``merge_dicts``).
* The server (clearml-server ``EventBLL.add_events``): an event's id is
  ``md5(task-iter-metric-variant[-key])`` and a later event with the same id replaces the
  earlier one (log events excepted: none are written); the ``value`` field is an Elasticsearch
  ``float``: a non-finite or out-of-float32 value is rejected.
* The documented upload: a run's sessions are imported in name order into one task.

The series a point lands in is folded back into its TensorBoard tag with the rule the
destination documents: title/series (``X`` when both are ``X``), ``<series> (nan|+inf|-inf)``
for a non-finite value, ``<series> #n`` for the n-th occurrence of a step.
"""
from __future__ import annotations

import json
import math
import re
import zipfile
from pathlib import Path

from tracelet.testing.harness import Harness, ReadBack

_FLOAT32_MAX = 3.4028234663852886e38
_COPY = re.compile(r"^(.*) #(\d+)$")
_MARKER = re.compile(r"^(.*) \((nan|\+inf|-inf)\)$")
_MARKER_VALUE = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}
_STATUS = {"completed": "finished", "failed": "failed", "stopped": "killed",
           "in_progress": "running"}
_IMAGE_EXT = (".png", ".jpeg", ".jpg", ".gif")


class Session:
    """One offline session as ClearML's importer reads it: folder, else its zip."""

    def __init__(self, folder: Path | None, zip_path: Path | None):
        self.folder, self.zip_path = folder, zip_path
        self.name = (folder.name if folder else zip_path.name[:-4])  # type: ignore[union-attr]
        self.doc = json.loads(self.read("task.json"))

    def read(self, rel: str) -> bytes:
        if self.folder is not None:
            return (self.folder / rel).read_bytes()
        with zipfile.ZipFile(self.zip_path) as zf:  # type: ignore[arg-type]
            return zf.read(rel)

    def has(self, rel: str) -> bool:
        if self.folder is not None:
            return (self.folder / rel).is_file()
        with zipfile.ZipFile(self.zip_path) as zf:  # type: ignore[arg-type]
            return rel in zf.namelist()

    def lines(self) -> list[bytes]:
        return self.read("metrics.jsonl").splitlines() if self.has("metrics.jsonl") else []

    @property
    def run_id(self) -> str | None:
        hp = self.doc.get("hyperparams") or {}
        return ((hp.get("tracelet") or {}).get("run_id") or {}).get("value")


def offline_sessions(offline: Path) -> list[Session]:
    """Every session in ClearML's offline folder, in name order (the import order)."""
    if not offline.is_dir():
        return []
    names = {}
    for p in offline.iterdir():
        if p.name.startswith("offline-") and p.is_dir():
            names.setdefault(p.name, [None, None])[0] = p
        elif p.name.startswith("offline-") and p.name.endswith(".zip"):
            names.setdefault(p.name[:-4], [None, None])[1] = p
    out = []
    for name in sorted(names):
        folder, zp = names[name]
        if folder is not None and not (folder / "task.json").exists():
            continue  # a folder whose task.json was never written holds nothing to import
        out.append(Session(folder, zp))
    return out


def imported_events(sessions: list[Session]) -> dict[tuple, dict]:
    """The task's events after importing ``sessions`` in order, keyed by the server's id."""
    store: dict[tuple, dict] = {}
    for s in sessions:
        sid = s.doc["id"]
        seen_line = False
        for i, line in enumerate(s.lines()):
            try:
                reqs = json.loads(line)
            except ValueError:
                assert seen_line, (f"{s.name}: metrics.jsonl line {i} unreadable: ClearML's "
                                   "importer crashes on it")
                continue
            seen_line = True
            for r in reqs:
                if r.get("task") != sid:
                    continue  # only_with_id
                if r.get("key") and r.get("url"):
                    if not s.has("data/" + r["key"]):
                        continue  # no file to upload: the sample would point at a local path
                if r.get("type") == "training_stats_scalar":
                    v = r.get("value")
                    if not isinstance(v, (int, float)) or not math.isfinite(v) \
                            or abs(v) > _FLOAT32_MAX:
                        continue  # Elasticsearch float field rejects it
                key = (r.get("key") or "").replace(f".{sid}/", ".TASK/", 1) or None
                store[(r.get("type"), r.get("iter"), r.get("metric") or "",
                       r.get("variant") or "", key)] = r
    return store


def fold_series(title: str, variant: str) -> tuple[str, str | None]:
    """(metric key, marker) of a ClearML (title, series) under the destination's rule."""
    m = _COPY.match(variant)
    if m and int(m.group(2)) >= 2:
        variant = m.group(1)
    marker = None
    m = _MARKER.match(variant)
    if m:
        variant, marker = m.group(1), m.group(2)
    return (title if title == variant else f"{title}/{variant}"), marker


class ClearmlOfflineHarness(Harness):
    """`tracelet sync --to clearml --clearml-offline`, ClearML's cache in the test's tmp dir."""

    name = "clearml"
    label = "clearml-offline"
    kill_trials = 10
    supports = Harness.supports | {"audio"}

    def setup(self, tmp_path, monkeypatch):
        self.cache = tmp_path / "clearml-cache"
        conf = tmp_path / "clearml.conf"
        conf.write_text("# empty: never read the user's ~/clearml.conf\n")
        self._env = {"CLEARML_OFFLINE_MODE": "1", "CLEARML_CACHE_DIR": str(self.cache),
                     "CLEARML_CONFIG_FILE": str(conf)}
        for k, v in self._env.items():
            monkeypatch.setenv(k, v)
        return {"clearml_offline": True}

    def env(self):
        return dict(self._env)

    def cli_args(self):
        return ["--clearml-offline"]

    @property
    def offline(self) -> Path:
        return self.cache / "offline"

    def sessions(self, project: str, run_path: str) -> list[Session]:
        # names as the README maps them (ClearML wants 3+ characters: "r" -> "r__")
        from tracelet.destinations.clearml import clearml_name

        project, run_path = clearml_name(project, nested=True), clearml_name(run_path)
        return [s for s in offline_sessions(self.offline)
                if s.doc.get("name") == run_path and s.doc.get("project_name") == project]

    def read_back(self, project: str, run_path: str) -> ReadBack:
        rb = ReadBack()
        sessions = self.sessions(project, run_path)
        # One task per run: the documented import chains the sessions sharing an id prefix
        # ("offline-<20 hex of the run>") into one task; they must also share one run id.
        rb.runs_found = max(len({s.name[:28] for s in sessions}), len({s.run_id for s in sessions}))
        params: dict[str, str] = {}
        artifacts: set[str] = set()
        status = None
        for s in sessions:
            for name, p in ((s.doc.get("hyperparams") or {}).get("General") or {}).items():
                params[name] = p.get("value")
            folder = (s.doc.get("offline_folder") or "") + "/data/"
            for a in ((s.doc.get("execution") or {}).get("artifacts") or []):
                if s.has("data/" + a["uri"].replace(folder, "", 1)):
                    artifacts.add(a["key"])
            status = s.doc.get("status") or status
        rb.params = params
        rb.artifacts = sorted(artifacts)
        rb.status = _STATUS.get(status or "", status)
        for (etype, it, metric, variant, key), ev in sorted(
                imported_events(sessions).items(), key=lambda kv: str(kv[0])):
            if etype == "training_stats_scalar":
                if metric.startswith(":monitor:"):
                    rb.system_points += 1
                    continue
                k, marker = fold_series(metric, variant)
                value = _MARKER_VALUE[marker] if marker else float(ev["value"])
                rb.scalars.setdefault(k, []).append((it, value))
            elif etype == "plot":
                rb.histograms += 1
            elif etype == "training_debug_image":
                if (key or "").endswith(".txt"):
                    rb.texts += 1
                elif (key or "").lower().endswith(".wav"):
                    rb.audio += 1
                elif (key or "").lower().endswith(_IMAGE_EXT):
                    rb.images += 1
        return rb


HARNESSES = [ClearmlOfflineHarness]
