"""MLflow destination.

Identity: experiment = project; run name = run path; tags ``tracelet.run_id``,
``tracelet.run_path`` and, for plain runs, ``tracelet.source_id`` (:mod:`tracelet.identity`). A
run is found again by its ``tracelet.run_id`` tag, so a lost state dir never creates a second
run; else by its source id in any experiment (the same files synced from another LOGDIR level).

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

Tag names: see :mod:`.mapping` (a tag MLflow accepts is the key; any other is cleaned and
ends in ``-<8 hex of the tag's SHA-1>``).

Errors (:meth:`MlflowDestination.classify`): MLflow's error code decides (permission, not found,
deleted → the destination; rate limits, unavailable → transient; an invalid value → the content,
quarantined), then the cause (a refused connection is transient), then HTTP status. A call on a
run MLflow refuses because the run is no longer active is checked against the run: deleted
underneath means the destination, not the points.

Idempotency: metrics sent with ``dedupe=True`` are checked against ``get_metric_history`` (per
key, once per sync) and only missing points are logged; artifacts are written under
deterministic names (a re-send overwrites); params and status are set-if-different.
"""
from __future__ import annotations

import json
import os
import posixpath
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from ...errors import DestinationError, PermanentDestinationError, TransientDestinationError
from ...identity import SOURCE_ID_TAG, same_source_names
from ...params import param_text
from ...reader.points import AUDIO, HISTOGRAM, IMAGE, SCALAR, TEXT, Batch
from ...redact import scrub
from ..base import (Capabilities, Destination, RunHandle, RunRef, SystemRows, chain,
                    classify_error)
from .mapping import (MAX_METRICS_PER_CALL, MAX_PARAM_VALUE_CHARS, MAX_PARAMS_PER_CALL,
                      RUN_ID_OK, STATUS, canon, mlflow_key, wall_ms)

# MLflow error codes (mlflow.protos.databricks_pb2) by what the engine does about them.
_DESTINATION_CODES = frozenset({
    "PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "RESOURCE_DOES_NOT_EXIST",
    "ENDPOINT_NOT_FOUND", "INVALID_STATE", "FEATURE_DISABLED", "NOT_IMPLEMENTED"})
_TRANSIENT_CODES = frozenset({
    "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED", "ABORTED", "SERVICE_UNDER_MAINTENANCE", "WORKSPACE_TEMPORARILY_UNAVAILABLE"})

class MlflowDestination(Destination):
    name = "mlflow"
    capabilities = Capabilities(kinds=frozenset({SCALAR, HISTOGRAM, IMAGE, TEXT, AUDIO}))

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
        self._listed: dict[str, str] | None = None  # every experiment, for source-id lookups
        self._listed_at = 0.0

    @property
    def target(self) -> str:
        return scrub(str(self.uri))  # reports and messages: never the URI's credentials

    def classify(self, exc: BaseException) -> type[DestinationError]:
        from mlflow.exceptions import MlflowException, RestException

        for e in chain(exc):
            if not isinstance(e, MlflowException):
                continue
            code = str(e.error_code or "")
            if code in _DESTINATION_CODES:
                return DestinationError
            if code in _TRANSIENT_CODES:
                return TransientDestinationError
            if code == "INTERNAL_ERROR":
                # MLflow's catch-all: what it wraps decides (a refused connection, a locked
                # sqlite); an internal error reported by a server (HTTP 500) is transient
                cause = e.__cause__ or e.__context__
                inner = classify_error(cause) if cause is not None else None
                if inner not in (None, PermanentDestinationError):
                    return inner
                return TransientDestinationError if isinstance(e, RestException) \
                    else PermanentDestinationError
            return PermanentDestinationError  # INVALID_PARAMETER_VALUE, BAD_REQUEST ...: content
        return classify_error(exc)

    @contextmanager
    def _on_run(self, run_id: str) -> Iterator[None]:
        """MLflow refuses writes to a deleted run with the code it uses for a bad value: ask the
        run, so a run deleted underneath fails the destination instead of quarantining points."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as e:
            if e.error_code == "INVALID_PARAMETER_VALUE" and self._run_deleted(run_id):
                raise DestinationError(
                    f"mlflow: run {run_id} was deleted on {self.target} after an earlier sync; "
                    "restore it (mlflow runs restore --run-id ...) to continue it") from e
            raise

    def _run_deleted(self, run_id: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "deleted"
        except MlflowException as e:
            return e.error_code == "RESOURCE_DOES_NOT_EXIST"

    def metric_key(self, tag: str) -> str:
        return mlflow_key(tag)

    def param_key(self, name: str) -> str:
        return mlflow_key(name)

    # -- identity ----------------------------------------------------------------------------
    def _experiment_id(self, project: str, create: bool = True) -> str | None:
        if project in self._experiments:
            return self._experiments[project]
        from mlflow.exceptions import MlflowException

        exp = self.client.get_experiment_by_name(project)
        if exp is None and not create:
            return None
        if exp is None:
            try:
                exp_id = self.client.create_experiment(project)
            except MlflowException:  # created meanwhile by another shard
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
        if self._listed is not None:
            self._listed.setdefault(exp_id, project)
        return exp_id

    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        from mlflow.exceptions import MlflowException

        rid, ignored = (identity or {}).get("run_id"), False
        if rid and not (isinstance(rid, str) and RUN_ID_OK.fullmatch(rid)):
            rid, ignored = None, True  # not an MLflow run id: never handed to the store
        if rid:
            try:
                r = self.client.get_run(rid)
                if not _ours(r.data.tags, run):
                    ignored = True  # another run's (a crafted checkpoint): never written to
                elif r.info.lifecycle_stage != "deleted":
                    self._tag_source(r, run)
                    return RunHandle(identity={"run_id": r.info.run_id,
                                               "experiment_id": r.info.experiment_id},
                                     existed=True)
            except MlflowException as e:
                if "RESOURCE_DOES_NOT_EXIST" not in str(e.error_code):
                    raise
        exp_id = self._experiment_id(run.project, create=False)
        found = self.client.search_runs(
            [exp_id], filter_string=f"tags.`tracelet.run_id` = '{run.run_id}'",
            max_results=2) if exp_id else []
        if found:
            self._tag_source(found[0], run)
            return RunHandle(identity={"run_id": found[0].info.run_id, "experiment_id": exp_id},
                             existed=True, identity_ignored=ignored)
        same = self._find_by_source(run, exp_id)
        if same is not None:
            r, where = same
            return RunHandle(identity={"run_id": r.info.run_id,
                                       "experiment_id": r.info.experiment_id},
                             existed=True, identity_ignored=ignored, same_source=where)
        exp_id = exp_id or self._experiment_id(run.project)
        tags = {**{mlflow_key(k): v[:8000] for k, v in run.tags.items()},
                "tracelet.run_id": run.run_id, "tracelet.run_path": run.run_path,
                "mlflow.source.name": str(run.source_dir)}
        if run.source_id:
            tags[SOURCE_ID_TAG] = run.source_id
        started = _started_at_ms(run)
        r = self.client.create_run(exp_id, start_time=started, tags=tags, run_name=run.run_path)
        return RunHandle(identity={"run_id": r.info.run_id, "experiment_id": exp_id}, existed=False,
                         identity_ignored=ignored)

    # -- the same files synced from another LOGDIR level (tracelet.identity) --------------------
    def _find_by_source(self, run: RunRef, exp_id: str | None) -> tuple[Any, str] | None:
        """The run created for the same plain-run files under another run path or experiment
        (``tracelet sync sub`` then ``sub/exp``): found by ``tracelet.source_id`` in every
        active experiment (``run.source_anywhere``: the project was not given) or in this
        one, taken only if its run path and this one are two levels of one path. Asked only
        when no run of this experiment has this run's ``tracelet.run_id`` (a run's first sync
        or a lost state dir), never on the no-op path."""
        if not run.source_id:
            return None
        if run.source_anywhere:
            names = self._all_experiments()
        elif exp_id:
            names = {exp_id: run.project}
        else:
            return None
        exp_ids = list(names)
        for i in range(0, len(exp_ids), 100):
            for r in self.client.search_runs(
                    exp_ids[i:i + 100], order_by=["attributes.start_time ASC"], max_results=50,
                    filter_string=f"tags.`{SOURCE_ID_TAG}` = '{run.source_id}'"):
                path = r.data.tags.get("tracelet.run_path", "")
                if same_source_names(path, run.run_path):
                    exp = names.get(r.info.experiment_id, r.info.experiment_id)
                    return r, f"'{path}' in experiment '{exp}'"
        return None

    def _all_experiments(self) -> dict[str, str]:
        """Experiment id -> name of every active experiment, listed at most once a minute
        (a pass over many new runs lists once; those this sync creates are added by
        :meth:`_experiment_id`; ``--follow`` sees others' new experiments a minute later)."""
        if self._listed is None or time.monotonic() - self._listed_at > 60:
            self._listed_at = time.monotonic()
            names: dict[str, str] = {}
            token = None
            while True:  # paged: a server may hold more experiments than one page
                page = self.client.search_experiments(max_results=1000, page_token=token)
                names.update((e.experiment_id, e.name) for e in page)
                token = page.token
                if not token:
                    break
            self._listed = names
        return self._listed

    def _tag_source(self, r: Any, run: RunRef) -> None:
        """Runs created before source ids (or before the first record was whole) get theirs on
        their next changed sync: one tag, once."""
        if run.source_id and SOURCE_ID_TAG not in r.data.tags:
            self.client.set_tag(r.info.run_id, SOURCE_ID_TAG, run.source_id)

    # -- points ------------------------------------------------------------------------------
    def send(self, handle: RunHandle, batch: Batch, *, dedupe: bool) -> None:
        try:
            with self._on_run(handle.identity["run_id"]):
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
            landed[key] = {(m.step, m.timestamp, canon(m.value))
                           for m in self.client.get_metric_history(run_id, key)}
        out = []
        for m in metrics:
            sig = (m.step, m.timestamp, canon(m.value))
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

    def send_system(self, handle: RunHandle, rows: SystemRows, run: RunRef, *,
                    dedupe: bool) -> None:
        from mlflow.entities import Metric

        start = (_started_at_ms(run) or 0) / 1000.0
        ts = rows.timestamps
        names = rows.names
        values = rows.values
        metrics = [
            Metric(mlflow_key(f"system/{n}"), v, wall_ms(t),
                   max(0, int(t - start)) if start and wall_ms(t) else 0)
            for t, n, v in zip(ts, names, values) if v is not None
        ]
        try:
            with self._on_run(handle.identity["run_id"]):
                if dedupe:
                    metrics = self._missing(handle, metrics)
                self._log_metrics(handle.identity["run_id"], metrics)
        except BaseException:
            handle.extra.pop("landed", None)  # see send
            raise

    # -- params, artifacts, status -------------------------------------------------------------
    def log_params(self, handle: RunHandle, params: Mapping[str, Any]) -> list[str]:
        from mlflow.entities import Param

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
        with self._on_run(run_id):
            for i in range(0, len(todo), MAX_PARAMS_PER_CALL):
                self.client.log_batch(run_id, params=todo[i: i + MAX_PARAMS_PER_CALL],
                                      synchronous=True)
        return conflicts

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        run_id = handle.identity["run_id"]
        with self._on_run(run_id):
            for path, rel in files:
                folder = posixpath.dirname(rel) or None
                self.client.log_artifact(run_id, str(path), artifact_path=folder)

    def finish(self, handle: RunHandle, status: str, ended_at: float | None) -> None:
        run_id = handle.identity["run_id"]
        mstatus = STATUS.get(status, "RUNNING")
        with self._on_run(run_id):
            if mstatus == "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
            else:
                end_ms = int(ended_at * 1000) if ended_at else None
                self.client.set_terminated(run_id, status=mstatus, end_time=end_ms)


def _ours(tags: Mapping[str, str], run: RunRef) -> bool:
    """Whether an MLflow run's identity tags name this tracelet run: its run id, or its source
    id under a run path that is another level of this one (tracelet.identity)."""
    if tags.get("tracelet.run_id") == run.run_id:
        return True
    return bool(run.source_id) and tags.get(SOURCE_ID_TAG) == run.source_id \
        and same_source_names(tags.get("tracelet.run_path", ""), run.run_path)


def _started_at_ms(run: RunRef) -> int | None:
    started = run.started_at
    return int(started * 1000) if started else None
