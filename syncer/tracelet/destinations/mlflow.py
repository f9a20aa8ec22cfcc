"""MLflow destination.

Identity (DESIGN §5): experiment = project; run name = run path; tags ``tracelet.run_id`` and
``tracelet.run_path``. A run is found again by its ``tracelet.run_id`` tag, so a lost state dir
never creates a second run.

Mapping:

==================  =========================================================================
TensorBoard kind    MLflow form
==================  =========================================================================
scalar              metric (``log_batch``, ≤1000 per call), step as written, timestamp = wall
                    time in ms; NaN/±Inf kept (MLflow's SQL store keeps ±Inf as ±max double)
histogram           artifact ``tensorboard/histograms/<tag>/step_<step>.json`` (edges, counts)
image               artifact ``tensorboard/images/<tag>/step_<step>_<index>.<png|jpeg|gif>``,
                    the writer's encoded bytes unchanged
text                artifact ``tensorboard/text/<tag>/step_<step>.txt``
audio               artifact ``tensorboard/audio/<tag>/step_<step>_<index>.<wav|...>``, the
                    writer's bytes unchanged
hparams, params     params (write-once: a changed value is reported, not applied)
system metrics      metrics ``system/<name>``, timestamp = sample time, step = whole seconds
                    since the run started
artifacts/          run artifacts under the same relative paths
status              run status (RUNNING/FINISHED/FAILED/KILLED) and end time
==================  =========================================================================

Tag names (:func:`mlflow_key`): a tag MLflow accepts is the key; any other is cleaned
(characters MLflow rejects become ``_``, the path is normalised, a leading ``..`` is escaped)
and ends in ``-<8 hex of the tag's SHA-1>`` so that no two tags share a key; the same for
params and run tags. Artifact paths use the same key.

Idempotency: metrics sent with ``dedupe=True`` are checked against ``get_metric_history`` (per
key, once per sync) and only missing points are logged; artifacts are written under
deterministic names (a re-send overwrites); params and status are set-if-different.
"""
from __future__ import annotations

import json
import math
import os
import posixpath
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa

from ..errors import DestinationError
from ..redact import scrub
from ..reader.points import AUDIO, HISTOGRAM, IMAGE, MAX_ABS_WALL_TIME, SCALAR, TEXT, Batch
from .base import Capabilities, Destination, RunHandle, RunRef
from .keys import suffixed

MAX_METRICS_PER_CALL = 1000  # MLflow's MAX_METRICS_PER_BATCH
MAX_PARAMS_PER_CALL = 100  # MLflow's MAX_PARAMS_TAGS_PER_BATCH
MAX_PARAM_VALUE_CHARS = 6000  # MLflow's MAX_PARAM_VAL_LENGTH
MAX_KEY_CHARS = 250  # MLflow's MAX_ENTITY_KEY_LENGTH
# MLflow's character rule (``re.match`` with ``$``, as MLflow writes it; Windows drops ``:``)
_MLFLOW_KEY_CHARS = re.compile(r"^[/\w.\- ]*$" if os.name == "nt" else r"^[/\w.\- :]*$")
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]" if os.name == "nt" else r"[^/\w.\- :]")
_MAX_DOUBLE = 1.7976931348623157e308
_RUN_ID_OK = re.compile(r"[0-9A-Za-z][\w-]{0,255}")  # MLflow's own run id rule
_STATUS = {"running": "RUNNING", "finished": "FINISHED", "failed": "FAILED", "killed": "KILLED"}


def mlflow_accepts(key: str) -> bool:
    """MLflow's own rule for metric, param and tag names (``mlflow.utils.validation``:
    ``validate_param_and_metric_name``, ``path_not_unique``, ``MAX_ENTITY_KEY_LENGTH``)."""
    if not _MLFLOW_KEY_CHARS.match(key) or len(key) > MAX_KEY_CHARS:
        return False
    norm = posixpath.normpath(key)
    return not (norm != key or norm == "." or norm.startswith("..") or norm.startswith("/"))


def mlflow_key(tag: str) -> str:
    """Map a TensorBoard tag (or param name) to a key MLflow accepts: the tag itself when MLflow
    takes it; else its characters outside ``letters digits _ - . / : space`` become ``_``, the
    path is normalised (no empty, ``.`` or ``..`` parts; a first part starting with ``..``
    gets a leading ``_``), the result is cut to fit and ends in ``-<8 hex of the tag's SHA-1>``
    (:mod:`.keys`), so distinct tags never share a key."""
    if mlflow_accepts(tag):
        return tag
    parts = [p for p in _BAD_KEY_CHARS.sub("_", tag).split("/") if p not in ("", ".", "..")]
    if parts and parts[0].startswith(".."):
        parts[0] = "_" + parts[0]  # MLflow refuses names that resolve to a parent folder
    return suffixed("/".join(parts) or "_", tag, MAX_KEY_CHARS)


def wall_ms(wall: float) -> int:
    """Wall time in ms; a NaN/Inf, negative or absurd (> 1e12 s) time (a broken clock: MLflow
    refuses a negative timestamp, SQL stores overflow on a huge one) becomes 0. The engine
    already sends event points with such times as 0; this covers sidecar samples too."""
    return int(wall * 1000) if 0 < wall < MAX_ABS_WALL_TIME else 0


def _canon(value: float) -> float | str:
    """A value as MLflow stores it, for comparing what landed with what we would send."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return _MAX_DOUBLE if value > 0 else -_MAX_DOUBLE
    return value


class MlflowDestination(Destination):
    name = "mlflow"
    capabilities = Capabilities(
        kinds=frozenset({SCALAR, HISTOGRAM, IMAGE, TEXT, AUDIO}),
        max_points_per_call=MAX_METRICS_PER_CALL,
    )

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        # One retry policy (tracelet.retry): MLflow's own urllib3 retries would multiply it and
        # hold a cron pass for minutes against a server that is down.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
        # Against a server, set_terminated/update_run print "View run ... at: <uri>" to stdout:
        # that breaks `sync --json` and shows a credentialed URI. MLflow's own switch, forced.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        from mlflow.tracking import MlflowClient

        self.uri = self.config.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI") or None
        self.client = MlflowClient(tracking_uri=self.uri)
        if self.uri is None:
            import mlflow

            self.uri = mlflow.get_tracking_uri()
        self._experiments: dict[str, str] = {}

    @property
    def target(self) -> str:
        return scrub(str(self.uri))  # reports and messages: never the URI's credentials

    def metric_key(self, tag: str) -> str:
        return mlflow_key(tag)

    def param_key(self, name: str) -> str:
        return mlflow_key(name)

    # -- identity ----------------------------------------------------------------------------
    def _experiment_id(self, project: str) -> str:
        if project in self._experiments:
            return self._experiments[project]
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(project)
        if exp is None:
            try:
                exp_id = self.client.create_experiment(project)
            except MlflowException as e:  # created meanwhile by another shard
                exp = self.client.get_experiment_by_name(project)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            if exp.lifecycle_stage == "deleted":
                raise DestinationError(
                    f"mlflow: experiment '{project}' is deleted on {self.target}; restore it "
                    "(mlflow experiments restore) or sync with another --project")
            exp_id = exp.experiment_id
        self._experiments[project] = exp_id
        return exp_id

    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        from mlflow.exceptions import MlflowException

        exp_id = self._experiment_id(run.project)
        rid, ignored = (identity or {}).get("run_id"), False
        if rid and not (isinstance(rid, str) and _RUN_ID_OK.fullmatch(rid)):
            rid, ignored = None, True  # not an MLflow run id: never handed to the store
        if rid:
            try:
                r = self.client.get_run(rid)
                if r.data.tags.get("tracelet.run_id") != run.run_id:
                    ignored = True  # another run's (a crafted checkpoint): never written to
                elif r.info.lifecycle_stage != "deleted":
                    return RunHandle(identity={"run_id": r.info.run_id, "experiment_id": exp_id},
                                     existed=True)
            except MlflowException as e:
                if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code):
                    raise
        found = self.client.search_runs(
            [exp_id], filter_string=f"tags.`tracelet.run_id` = '{run.run_id}'", max_results=2)
        if found:
            return RunHandle(identity={"run_id": found[0].info.run_id, "experiment_id": exp_id},
                             existed=True, identity_ignored=ignored)
        tags = {**{mlflow_key(k): v[:8000] for k, v in run.tags.items()},
                "tracelet.run_id": run.run_id, "tracelet.run_path": run.run_path,
                "mlflow.source.name": str(run.source_dir)}
        started = _started_at_ms(run)
        r = self.client.create_run(exp_id, start_time=started, tags=tags, run_name=run.run_path)
        return RunHandle(identity={"run_id": r.info.run_id, "experiment_id": exp_id}, existed=False,
                         identity_ignored=ignored)

    # -- points ------------------------------------------------------------------------------
    def send(self, handle: RunHandle, batch: Batch, *, dedupe: bool) -> None:
        try:
            self._send(handle, batch, dedupe)
        except BaseException:
            # Part of it may have landed (the file store writes metric by metric): what the
            # cache says landed is no longer known; the next dedupe asks MLflow again.
            handle.extra.pop("landed", None)
            raise

    def _send(self, handle: RunHandle, batch: Batch, dedupe: bool) -> None:
        from mlflow.entities import Metric

        run_id = handle.identity["run_id"]
        cols = batch.scalars
        if len(cols):
            keys: dict[str, str] = {}
            metrics = []
            for tag, step, wall, value in zip(cols.tags, cols.steps, cols.wall_times, cols.values):
                key = keys.get(tag)
                if key is None:
                    key = keys[tag] = mlflow_key(tag)
                metrics.append(Metric(key, value, wall_ms(wall), step))
            if dedupe:
                metrics = self._missing(handle, metrics)
            self._log_metrics(run_id, metrics)
        if batch.histograms or batch.images or batch.texts or batch.audio:
            self._send_artifact_points(run_id, batch)

    def _log_metrics(self, run_id: str, metrics: list) -> None:
        for i in range(0, len(metrics), MAX_METRICS_PER_CALL):
            self.client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS_PER_CALL],
                                  synchronous=True)

    def _missing(self, handle: RunHandle, metrics: list) -> list:
        """Drop the metrics that already landed (after a crash or a lost state dir)."""
        landed: dict[str, set] = handle.extra.setdefault("landed", {})
        run_id = handle.identity["run_id"]
        for key in {m.key for m in metrics} - landed.keys():
            landed[key] = {(m.step, m.timestamp, _canon(m.value))
                           for m in self.client.get_metric_history(run_id, key)}
        out = []
        for m in metrics:
            sig = (m.step, m.timestamp, _canon(m.value))
            seen = landed[m.key]
            if sig not in seen:
                seen.add(sig)
                out.append(m)
        return out

    def _send_artifact_points(self, run_id: str, batch: Batch) -> None:
        # Deterministic names: re-sending a batch overwrites the same files (idempotent).
        with tempfile.TemporaryDirectory(prefix="tracelet-mlflow-") as tmp:
            root = Path(tmp)
            for h in batch.histograms:
                p = root / "histograms" / mlflow_key(h.tag) / f"step_{h.step}.json"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(json.dumps({
                    "tag": h.tag, "step": h.step, "wall_time": h.wall_time,
                    "lefts": list(h.lefts), "rights": list(h.rights), "counts": list(h.counts),
                    "min": h.min, "max": h.max, "num": h.num, "sum": h.sum,
                    "sum_squares": h.sum_squares}, allow_nan=True))
            for im in batch.images:
                p = root / "images" / mlflow_key(im.tag) / f"step_{im.step}_{im.index}.{im.format}"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(im.encoded)
            for t in batch.texts:
                p = root / "text" / mlflow_key(t.tag) / f"step_{t.step}.txt"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text(t.text, encoding="utf-8")
            for a in batch.audio:
                p = root / "audio" / mlflow_key(a.tag) / f"step_{a.step}_{a.index}.{a.format}"
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(a.encoded)
            self.client.log_artifacts(run_id, str(root), artifact_path="tensorboard")

    def send_system(self, handle: RunHandle, table: pa.Table, run: RunRef, *, dedupe: bool) -> None:
        from mlflow.entities import Metric

        start = (_started_at_ms(run) or 0) / 1000.0
        ts = table.column("timestamp").to_pylist()
        names = table.column("name").to_pylist()
        values = table.column("value").to_pylist()
        metrics = [
            Metric(mlflow_key(f"system/{n}"), v, wall_ms(t),
                   max(0, int(t - start)) if start and wall_ms(t) else 0)
            for t, n, v in zip(ts, names, values) if v is not None
        ]
        try:
            if dedupe:
                metrics = self._missing(handle, metrics)
            self._log_metrics(handle.identity["run_id"], metrics)
        except BaseException:
            handle.extra.pop("landed", None)  # see send
            raise

    # -- params, artifacts, status -------------------------------------------------------------
    def log_params(self, handle: RunHandle, params: Mapping[str, Any]) -> list[str]:
        from mlflow.entities import Param

        from ..engine import param_text

        run_id = handle.identity["run_id"]
        existing = self.client.get_run(run_id).data.params
        conflicts, todo = [], []
        for k, v in params.items():
            key = mlflow_key(k)
            text = param_text(v)[:MAX_PARAM_VALUE_CHARS]
            if key in existing:
                if existing[key] != text:
                    conflicts.append(k)
                continue
            todo.append(Param(key, text))
        for i in range(0, len(todo), MAX_PARAMS_PER_CALL):
            self.client.log_batch(run_id, params=todo[i : i + MAX_PARAMS_PER_CALL], synchronous=True)
        return conflicts

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        run_id = handle.identity["run_id"]
        for path, rel in files:
            folder = posixpath.dirname(rel) or None
            self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def finish(self, handle: RunHandle, status: str, ended_at: float | None) -> None:
        run_id = handle.identity["run_id"]
        mstatus = _STATUS.get(status, "RUNNING")
        if mstatus == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        else:
            end_ms = int(ended_at * 1000) if ended_at else None
            self.client.set_terminated(run_id, status=mstatus, end_time=end_ms)


def _started_at_ms(run: RunRef) -> int | None:
    from ..engine import _as_unix

    started = _as_unix((run.manifest or {}).get("started_at"))
    return int(started * 1000) if started else None
