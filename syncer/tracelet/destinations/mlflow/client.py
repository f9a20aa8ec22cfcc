"""MLflow destination.

Identity: experiment = ``--experiment``, else ``MLFLOW_EXPERIMENT_NAME``, else the
project; run name = the run's name; tags ``tracelet.run_id``, ``tracelet.run_path`` and, for
plain runs, ``tracelet.source_id`` (:mod:`tracelet.identity`). A run is found again by its
``tracelet.run_id`` tag, so a lost state dir never creates a second run; else by its source id
(the same files synced from another LOGDIR level).
``open_run`` confirms the run its checkpoint names with one ``get_run``: deleted, gone (the
store wiped) or carrying another tracelet run id is drift (``RunHandle.drift``); the run is
then found by its tag or created anew, never restored. A run that lacks the checkpoint's
sentinel point (a store restored from an older copy, :mod:`.sentinel`) is drift too, and kept.
Tags (:func:`.mapping.run_tags`: MLflow's
``mlflow.source.*``/``mlflow.user``/``mlflow.runName`` from the recorded git, command and user,
``tracelet.*``) are set at creation and set-if-different at every open; the reproducibility
files are uploaded as ``tracelet/...`` artifacts when their content changed.

Mapping:

==================  =========================================================================
TensorBoard kind    MLflow form
==================  =========================================================================
scalar              metric (``log_batch``, ≤1000 per call), step as written, timestamp = wall
                    time in ms (a point MLflow would merge with an earlier one of its file: the
                    next free ms, :mod:`.stamps`); NaN/±Inf kept (SQL stores: ±Inf as ±max
                    double)
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

import hashlib
import json
import os
import posixpath
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from ...errors import (DestinationError, PermanentDestinationError, TraceletError,
                       TransientDestinationError)
from ...identity import SOURCE_ID_TAG, same_source_names
from ...params import param_text
from ...reader.points import AUDIO, HISTOGRAM, IMAGE, SCALAR, TEXT, Batch
from ...redact import scrub
from ..base import (CHECK_ONLY, Capabilities, Destination, ParamsResult, RunHandle, RunRef,
                    SendResult, SystemRows, chain, classify_error, typed_error)
from .mapping import (MAX_METRICS_PER_CALL, MAX_PARAM_VALUE_CHARS, MAX_PARAMS_PER_CALL,
                      RUN_ID_OK, STATUS, canon, mlflow_key, run_tags, wall_ms)
from .sentinel import sentinel_gone, sentinel_of
from .stamps import file_key, stamp

# MLflow error codes (mlflow.protos.databricks_pb2) by what the engine does about them.
_DESTINATION_CODES = frozenset({
    "PERMISSION_DENIED", "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "RESOURCE_DOES_NOT_EXIST",
    "ENDPOINT_NOT_FOUND", "INVALID_STATE", "FEATURE_DISABLED", "NOT_IMPLEMENTED"})
_TRANSIENT_CODES = frozenset({
    "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED", "ABORTED", "SERVICE_UNDER_MAINTENANCE", "WORKSPACE_TEMPORARILY_UNAVAILABLE"})

# Every drift line starts so (the same words for every destination), then says what happened.
_MISSING = "run missing on mlflow:"


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

        _quiet_mlflow_logging()
        self.uri = self.config.get("mlflow_uri") or os.environ.get("MLFLOW_TRACKING_URI") or None
        if self.uri is None:
            import mlflow

            self.uri = mlflow.get_tracking_uri()
        if self.config.get(CHECK_ONLY) and not self._store_exists():
            self.client = None  # status --check of a wiped sqlite store: MLflow would make it
        else:
            self.client = MlflowClient(tracking_uri=self.uri)
        self._experiments: dict[str, tuple[str, int]] = {}  # name -> (id, creation time ms)
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
                    f"mlflow: run {run_id} was deleted on {self.target} during the sync; the "
                    "next sync sends the whole run to a new MLflow run (to continue this one "
                    f"instead, restore it first: mlflow runs restore --run-id {run_id})") from e
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
    def experiment_name(self, run: RunRef) -> str:
        """``--experiment`` (config ``mlflow_experiment``), else ``MLFLOW_EXPERIMENT_NAME``, else
        the project. Not part of the target: the checkpoint is the same whichever is used."""
        return str(self.config.get("mlflow_experiment") or os.environ.get("MLFLOW_EXPERIMENT_NAME")
                   or run.project)

    def _find_experiment(self, name: str):
        """(id, creation time in ms) of the experiment ``name``, or None; creates nothing."""
        if name in self._experiments:
            return self._experiments[name]
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return None
        if exp.lifecycle_stage == "deleted":
            raise DestinationError(
                f"mlflow: experiment '{name}' is deleted on {self.target}; restore it "
                "(mlflow experiments restore) or sync with another --experiment/--project")
        self._experiments[name] = found = (exp.experiment_id, exp.creation_time)
        return found

    def _experiment(self, name: str):
        found = self._find_experiment(name)
        if found is not None:
            return found
        from mlflow.exceptions import MlflowException

        try:
            exp_id = self.client.create_experiment(name)
        except MlflowException:  # created meanwhile by another shard
            if self._find_experiment(name) is None:
                raise
        else:
            exp = self.client.get_experiment(exp_id)
            self._experiments[name] = (exp_id, exp.creation_time)
        if self._listed is not None:
            self._listed.setdefault(self._experiments[name][0], name)
        return self._experiments[name]

    def _confirm(self, run: RunRef, identity: dict[str, Any] | None, exp) -> tuple[Any, str | None, bool]:
        """Is the run ``identity`` names still this run's? (the MLflow run or None, the drift
        line or None, whether the identity is not this run's). One ``get_run``."""
        from mlflow.exceptions import MlflowException

        if identity is None:
            return None, None, False
        rid = identity.get("run_id") if isinstance(identity, dict) else None
        if not (isinstance(rid, str) and RUN_ID_OK.fullmatch(rid)):
            return None, None, True  # not an MLflow run id: never handed to the store
        try:
            r = self.client.get_run(rid)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            return None, self._missing_cause(run, identity, rid, exp), False
        owner = r.data.tags.get("tracelet.run_id")
        if not _ours(r.data.tags, run):
            # another run's (a crafted or mixed-up checkpoint, or the run id now names a run
            # someone made anew): never written to
            return None, (f"{_MISSING} replaced at {self.target}: MLflow run {rid} belongs to "
                          f"{'tracelet run ' + repr(owner) if owner else 'no tracelet run'}, "
                          f"not to {run.run_id!r}"), True
        if r.info.lifecycle_stage == "deleted":
            return None, (f"{_MISSING} deleted at {self.target}: MLflow run {rid} (tracelet "
                          "does not restore a run you deleted)"), False
        gone = sentinel_gone(r, identity.get("sentinel"))
        if gone:
            return r, (f"{_MISSING} points gone at {self.target}: MLflow run {rid} no longer "
                       f"holds {gone}, sent by an earlier sync (the store restored from an "
                       "older copy?)"), False
        return r, None, False

    def _missing_cause(self, run: RunRef, identity: dict, rid: str, exp) -> str:
        """Why the run is gone: a store that was wiped (its experiment is gone or was created
        again since the run was) or a run deleted for good (``mlflow gc``)."""
        name = self.experiment_name(run)
        created = identity.get("experiment_created")
        if identity.get("experiment") not in (None, name):  # --experiment changed: cannot tell
            exp = ()
        if exp is None:
            return (f"{_MISSING} store wiped at {self.target}: MLflow run {rid} and its "
                    f"experiment '{name}' are gone")
        if exp and ((_int(created) and created != exp[1])
                    or identity.get("experiment_id") not in (None, exp[0])):
            return (f"{_MISSING} store wiped at {self.target}: MLflow run {rid} is gone and "
                    f"experiment '{name}' was created again since")
        return (f"{_MISSING} gone from {self.target}: MLflow run {rid} no longer exists (deleted "
                "for good, e.g. by mlflow gc, or the store was replaced)")

    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        name = self.experiment_name(run)
        exp = self._find_experiment(name)  # a wiped sqlite store: MLflow makes an empty one
        r, drift, ignored = self._confirm(run, identity, exp)
        tags = run_tags(run, _source_type_local())
        if run.source_id:
            tags[SOURCE_ID_TAG] = run.source_id
        if r is not None:  # the run the checkpoint names, confirmed: its state carries on
            exp_id, exp_created = exp if exp is not None else (None, None)
            kept = {k: v for k, v in identity.items()  # type: ignore[union-attr]
                    if k in ("stamps", "repro", "sentinel")}
            if drift:  # points gone: the reproducibility files may be gone too: upload again
                kept.pop("repro", None)
            same = r.info.experiment_id == exp_id  # else --experiment changed since: it stays
            handle = RunHandle(identity={
                "run_id": r.info.run_id, "experiment_id": r.info.experiment_id,
                "experiment": name if same else identity.get("experiment"),  # type: ignore[union-attr]
                "experiment_created": exp_created if same else identity.get("experiment_created"),  # type: ignore[union-attr]
                **kept}, existed=True, drift=drift)
            self._update_tags(r, tags, run)
        else:
            found = self.client.search_runs(
                [exp[0]], filter_string=f"tags.`tracelet.run_id` = '{run.run_id}'",
                max_results=2) if exp is not None else []
            same_source = None if found else self._find_by_source(run, exp[0] if exp else None)
            if found:
                r = found[0]
                self._update_tags(r, tags, run)
            elif same_source is not None:  # the same files, synced from another LOGDIR level
                r, where = same_source
                self._update_tags(r, tags, run)
            else:
                exp = exp if exp is not None else self._experiment(name)  # created only now
                r = self.client.create_run(
                    exp[0], start_time=_started_at_ms(run), run_name=run.name,
                    tags={k: v for k, v in tags.items() if k != "mlflow.runName"})
            if drift:
                drift += (f"; continued in run {r.info.run_id}, found by its tracelet.run_id tag"
                          if found else f"; continued in run {r.info.run_id} ({where})"
                          if same_source else f"; a new run {r.info.run_id} was created")
            if same_source is not None:
                handle = RunHandle(identity={"run_id": r.info.run_id,
                                             "experiment_id": r.info.experiment_id},
                                   existed=True, identity_ignored=ignored, drift=drift,
                                   same_source=where)
            else:
                handle = RunHandle(identity={"run_id": r.info.run_id, "experiment_id": exp[0],
                                             "experiment": name, "experiment_created": exp[1]},
                                   existed=bool(found), identity_ignored=ignored, drift=drift)
        handle.extra["source_dir"] = str(run.source_dir)
        self._upload_repro(handle, run)
        return handle

    def check_run(self, run: RunRef, identity: dict[str, Any] | None) -> str | None:
        """``tracelet status --check``: one ``get_run`` (and, for a run that is gone, one
        experiment lookup); creates nothing, not even a missing sqlite file."""
        try:
            if not self._store_exists():
                return f"{_MISSING} store wiped at {self.target}: no database file"
            rid = (identity or {}).get("run_id") if isinstance(identity, dict) else None
            if not isinstance(rid, str) or not RUN_ID_OK.fullmatch(rid):
                return f"{_MISSING} the checkpoint names no MLflow run on {self.target}"
            exp = self._find_experiment(self.experiment_name(run))
            return self._confirm(run, identity, exp)[1]
        except TraceletError:
            raise
        except Exception as e:  # not a contract call: typed here as the boundary would
            raise typed_error(self.classify(e), e) from e

    def _store_exists(self) -> bool:
        """False for a local sqlite store whose file is gone (wiped). Other stores: True."""
        path = _sqlite_path(str(self.uri))
        return path is None or os.path.exists(path)

    def _update_tags(self, r, tags: dict[str, str], run: RunRef) -> None:
        """Set the tags that are missing or differ (one call; none when all are as wanted). A run
        adopted by source id keeps the identity tags (run id, path, name) it was created with:
        synced from either LOGDIR level, it is found again the same way."""
        from mlflow.entities import RunTag

        have = r.data.tags
        if have.get("tracelet.run_id") != run.run_id:
            tags = {k: v for k, v in tags.items()
                    if k not in ("tracelet.run_id", "tracelet.run_path", "mlflow.runName")}
        todo = [RunTag(k, v) for k, v in tags.items() if have.get(k) != v]
        for i in range(0, len(todo), MAX_PARAMS_PER_CALL):
            self.client.log_batch(r.info.run_id, tags=todo[i: i + MAX_PARAMS_PER_CALL],
                                  synchronous=True)

    def _upload_repro(self, handle: RunHandle, run: RunRef) -> None:
        """``tracelet/tracelet.json`` and ``tracelet/requirements.txt`` as run artifacts under
        their names (overwritten), skipped when this run already got the same content."""
        done = handle.identity.get("repro")
        done = dict(done) if isinstance(done, dict) else {}
        todo = []
        for rel, path in sorted(run.repro_files.items()):
            digest = hashlib.sha1(Path(path).read_bytes()).hexdigest()
            if done.get(rel) != digest:
                todo.append((Path(path), rel, digest))
        if not todo:
            return
        self._upload(handle.identity["run_id"], [(p, rel) for p, rel, _ in todo])
        done.update({rel: digest for _, rel, digest in todo})
        handle.identity["repro"] = done

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
        :meth:`_experiment`; ``--follow`` sees others' new experiments a minute later)."""
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

    # -- points ------------------------------------------------------------------------------
    def send(self, handle: RunHandle, batch: Batch, *, dedupe: bool) -> SendResult:
        try:
            with self._on_run(handle.identity["run_id"]):
                return SendResult(present=self._send(handle, batch, dedupe))
        except BaseException:
            # Part of it may have landed (the file store writes metric by metric): what the
            # cache says landed is no longer known; the next dedupe asks MLflow again.
            handle.extra.pop("landed", None)
            raise

    def _send(self, handle: RunHandle, batch: Batch, dedupe: bool) -> int:
        """Send the batch; the number of its scalars MLflow already held (dedupe)."""
        from mlflow.entities import Metric

        run_id = handle.identity["run_id"]
        cols = batch.scalars
        present = 0
        if len(cols):
            keys: dict[str, str] = {}
            names = []
            for tag in cols.tags:
                key = keys.get(tag)
                if key is None:
                    key = keys[tag] = mlflow_key(tag)
                names.append(key)
            # MLflow keeps one row per (key, ms, step, value): points it would merge get the
            # next free ms (stamps.py), the same at every re-send; committed once landed
            stamps = handle.identity.get("stamps")
            stamps = stamps if isinstance(stamps, dict) else {}
            rel = file_key(handle.extra.get("source_dir", ""), batch.path)
            times, state = stamp(stamps.get(rel), batch.start_offset, batch.end_offset, names,
                                 cols.steps, [wall_ms(w) for w in cols.wall_times], cols.values)
            metrics = [Metric(k, v, t, s) for k, v, t, s in zip(names, cols.values, times, cols.steps)]
            top = sentinel_of(metrics)  # held by MLflow once this batch landed (sentinel_gone)
            if dedupe:
                n = len(metrics)
                metrics = self._missing(handle, metrics)
                present = n - len(metrics)
            self._log_metrics(run_id, metrics)
        if batch.histograms or batch.images or batch.texts or batch.audio:
            self._send_artifact_points(run_id, batch)
        if len(cols):  # only now: a retry of this batch computes the same timestamps again
            handle.identity["stamps"] = {**stamps, rel: state}
            if top is not None:
                handle.identity["sentinel"] = top
        return present

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
                    dedupe: bool) -> SendResult:
        from mlflow.entities import Metric

        start = (_started_at_ms(run) or 0) / 1000.0
        kept = [(t, mlflow_key(f"system/{n}"), v)
                for t, n, v in zip(rows.timestamps, rows.names, rows.values) if v is not None]
        steps = [max(0, int(t - start)) if start and wall_ms(t) else 0 for t, _, _ in kept]
        # a part is sent whole: rows it holds twice in one ms get distinct ms (stamps.py)
        times, _ = stamp(None, 0, 0, [k for _, k, _ in kept], steps,
                         [wall_ms(t) for t, _, _ in kept], [v for _, _, v in kept])
        metrics = [Metric(k, v, ms, s) for (_, k, v), ms, s in zip(kept, times, steps)]
        try:
            with self._on_run(handle.identity["run_id"]):
                n = len(metrics)
                if dedupe:
                    metrics = self._missing(handle, metrics)
                self._log_metrics(handle.identity["run_id"], metrics)
        except BaseException:
            handle.extra.pop("landed", None)  # see send
            raise
        return SendResult(present=n - len(metrics))

    # -- params, artifacts, status -------------------------------------------------------------
    def log_params(self, handle: RunHandle, params: Mapping[str, Any]) -> ParamsResult:
        from mlflow.entities import Param

        run_id = handle.identity["run_id"]
        existing = self.client.get_run(run_id).data.params
        conflicts, present, todo = [], [], []
        for k, v in params.items():
            key = mlflow_key(k)
            text = param_text(v)[:MAX_PARAM_VALUE_CHARS]
            if key in existing:
                # write-once: another value is a conflict, the same one is already present
                (conflicts if existing[key] != text else present).append(k)
                continue
            todo.append(Param(key, text))
        with self._on_run(run_id):
            for i in range(0, len(todo), MAX_PARAMS_PER_CALL):
                self.client.log_batch(run_id, params=todo[i: i + MAX_PARAMS_PER_CALL],
                                      synchronous=True)
        return ParamsResult(conflicts=conflicts, present=present)

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        run_id = handle.identity["run_id"]
        with self._on_run(run_id):
            self._upload(run_id, files)

    def _upload(self, run_id: str, files: list[tuple[Path, str]]) -> None:
        """Each file as the artifact ``rel`` (MLflow names it after the local file: one with
        another name goes through a copy named ``rel``)."""
        for path, rel in files:
            folder = posixpath.dirname(rel) or None
            name = posixpath.basename(rel)
            if Path(path).name == name:
                self.client.log_artifact(run_id, str(path), artifact_path=folder)
                continue
            with tempfile.TemporaryDirectory(prefix="tracelet-mlflow-") as tmp:
                copy = Path(tmp) / name
                shutil.copyfile(path, copy)
                self.client.log_artifact(run_id, str(copy), artifact_path=folder)

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


def _quiet_mlflow_logging() -> None:
    """MLflow logs at INFO by default ("Creating initial MLflow database tables...", "Updating
    database tables" for a new sqlite store): lines in Tracelet's output that say nothing about
    the sync. Its loggers go to WARNING unless the user chose a level with MLflow's own
    ``MLFLOW_LOGGING_LEVEL``. (Importing mlflow has configured them: set after the import.)"""
    if os.environ.get("MLFLOW_LOGGING_LEVEL", "").strip():
        return
    import logging

    logger = logging.getLogger("mlflow")
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)


def _started_at_ms(run: RunRef) -> int | None:
    started = run.started_at
    return int(started * 1000) if started else None


def _int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _source_type_local() -> str:
    from mlflow.entities import SourceType

    return SourceType.to_string(SourceType.LOCAL)


def _sqlite_path(uri: str) -> str | None:
    """The file of a ``sqlite:///path`` store (None for other stores and in-memory sqlite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return path if path and path != ":memory:" else None
