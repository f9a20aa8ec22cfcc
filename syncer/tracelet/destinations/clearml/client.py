"""ClearML destination: offline sessions (ClearML's own format) or a ClearML server.

Identity (DESIGN §5): project = project; task name = run path; hyperparameters
``tracelet/run_id`` and ``tracelet/run_path``; the same task is reused on resync.

* **Online** (ClearML's config file, ``CLEARML_API_HOST`` ...): the task id is kept in the
  checkpoint; with no checkpoint the task is looked up by project + exact task name and its
  ``tracelet/run_id`` hyperparameter, so a lost state dir never creates a second task.
* **Offline** (``--clearml-offline`` or ``CLEARML_OFFLINE_MODE=1``): each sync that has something
  to write adds ONE offline session holding only what is new, in ClearML's own layout
  (``<cache>/offline/<session-id>/{task.json,metrics.jsonl,data/}`` + ``<session-id>.zip``, the
  folder ClearML's ``Task.init`` uses offline; ``<cache>`` is ``CLEARML_CACHE_DIR``, else
  ``sdk.storage.cache.default_base_dir`` of clearml.conf, else ``$TMPDIR/clearml_cache``).
  Session ids are ``offline-<20 hex of the run><12 hex sequence number>``: the sessions of a
  run sort by name in the order they must be imported.

Mapping:

==================  =========================================================================
TensorBoard kind    ClearML form
==================  =========================================================================
scalar              scalar event: title/series from the tag (below), iteration = TensorBoard
                    step (never shifted), event ``timestamp`` = the event's wall time (ms):
                    ClearML's "wall time" x-axis shows when the point was written
                    (``Logger.report_scalar`` cannot carry it: it stamps "now")
histogram           plot event per step (``create_2d_histogram_plot``: bars over the bucket
                    edges) under the same title/series; shown in PLOTS with an iteration slider
image               debug sample (``ImageEvent``) from the writer's encoded bytes, unchanged
                    (PNG/JPEG/GIF), file ``iter_<step>.<ext>``; image ``i`` of a TF2 image
                    tensor goes to series ``<series> [i]``. A truncated or corrupt PNG/JPEG/GIF
                    (checked without decoding, ``tracelet.media``) is quarantined
text                debug sample ``.txt`` (``MediaEvent``, as ClearML's TensorBoard binding
                    does), file ``iter_<step>.txt``
audio               debug sample (``MediaEvent``, as ``Logger.report_media`` of an audio file
                    does): the writer's clip bytes, file ``iter_<step>.<wav|...>``; clip ``i``
                    of a TF2 audio tensor goes to series ``<series> [i]``
hparams, params     hyperparameters, section ``General`` (``General/model/depth``); ClearML
                    params are not write-once: a changed value replaces the old one
system metrics      ClearML's resource-monitor titles (table below), iteration = whole
                    seconds since the run started (as ClearML's own monitor does)
artifacts/          ``Task.upload_artifact(<relative path>, file)``; re-uploading a name
                    replaces it
status              task status: running → in_progress, finished → completed,
                    failed → failed, killed → stopped (offline: recorded in the session's
                    ``task.json`` and applied by :func:`import_offline_sessions`)
==================  =========================================================================

Tag → title/series: the last ``/`` splits: ``Loss/Train/CrossEntropy`` → title
``Loss/Train``, series ``CrossEntropy``; a tag without ``/`` (or with an empty side) is both:
``loss`` → title ``loss``, series ``loss``. No character is replaced (ClearML accepts any
string). Where two tags would meet (``X/X`` and ``X``), or a tag's series ends like a series
this destination makes itself (``loss #2``, ``loss (nan)``, ``img [1]``), the series of the
first kind is renamed ``<series>-<8 hex of the tag's SHA-1>`` (:func:`split_tag`).

What ClearML cannot hold, and what this destination does instead:

* One value per (title, series, iteration): the server's event id is
  ``md5(task-iter-metric-variant[-key])`` and a later event with that id REPLACES the earlier
  one. A step repeated within a tag (restarted training, two writers) would silently overwrite,
  so the n-th occurrence of a (tag, step) goes to series ``<series> #n`` (n ≥ 2) at the same
  step. The occurrence number is a pure function of the source order (kept as compact step
  ranges per tag in the checkpoint), so a re-send lands on the same event id: idempotent.
* NaN and ±Inf: the server's ``value`` field is an Elasticsearch ``float``, which rejects
  non-finite numbers (ClearML's SDK turns them into 0 by default). Such a point is kept as a
  marker point of value 0 in series ``<series> (nan)``, ``<series> (+inf)`` or
  ``<series> (-inf)`` at its step, so it is visible and counted, and never plotted as a real 0.

System metrics (``sysmetrics/`` parts, DESIGN §2) → titles ClearML's own resource monitor uses
(``clearml/utilities/resource_monitor.py``), with its units:

===============================  ===============  ==============================================
Tracelet name                    title            series (value)
===============================  ===============  ==============================================
cpu/utilization_percent          :monitor:machine cpu_usage
memory/used_bytes                :monitor:machine memory_used_gb (bytes / 2**30)
disk/read_bytes, write_bytes     :monitor:machine io_read_mb_total, io_write_mb_total (cumulative)
network/recv_bytes, sent_bytes   :monitor:machine network_rx_mb_total, network_tx_mb_total
gpu/<i>/utilization_percent      :monitor:gpu     gpu_<i>_utilization
gpu/<i>/memory_used_bytes        :monitor:gpu     gpu_<i>_mem_used_gb (bytes / 2**30)
gpu/<i>/memory_total_bytes       :monitor:gpu     gpu_<i>_mem_total_gb
gpu/<i>/temperature_c            :monitor:gpu     gpu_<i>_temperature
gpu/<i>/power_watts              :monitor:gpu     gpu_<i>_power_draw
anything else (``a/b_unit``)     :monitor:machine ``a_b_unit`` (``gpu/...`` under :monitor:gpu)
===============================  ===============  ==============================================

ClearML's monitor reports disk/network as MB/s rates; Tracelet's sidecar has cumulative
counters, so they keep their own ``*_mb_total`` series instead of faking a rate.

Offline sessions, exactly once. A session is written with ClearML's own objects:
``clearml.Task`` (offline, without ``Task.init``'s process hooks) writes ``task.json`` (made
atomic here), ClearML's ``Metrics`` writer stores plots and debug samples, and scalars — the
bulk — are appended to the same ``metrics.jsonl`` as copies of the event dict ClearML builds
(``AddRequest(MetricsScalarEvent).to_dict()``) with only ``iter``/``value``/``timestamp`` set:
the lines ClearML writes, without its per-point schema validation and reporter queue.
Measured on 2 shared cores (``scripts/bench_clearml.py --points 200000 --naive-points 20000``):
``Logger.report_scalar`` with defaults 564 points/s; with ``report_use_subprocess: false`` and
a 10000-event flush threshold 6.9k/s; ClearML's ``ScalarEvent`` + ``Metrics.write_events``
7.7k/s; this path, a whole ``tracelet sync`` (read, write, fsync, checkpoints, zip) 45.5k/s
(26.6k/s counting the SDK import and config load). Each batch is fsynced before
``send`` returns and is cut back on error (no half batch stays). A session is finished — zipped,
atomically, as ``Task.close`` does offline — when the sync closes the run. A session folder
without its zip was left by a killed sync (or is being written): the next sync of that run cuts
an unfinished last line (ClearML's importer would skip it, or crash on a first line) and
continues the same session. A batch sent again after a crash (``dedupe``) is compared with what
the run's sessions hold and only missing events are written; after a lost state dir the
sessions on disk are the truth (found by the run's id prefix) and the same comparison applies,
to params (merged hyperparameters), artifacts (key + sha256) and status too, so a resync with
nothing new writes no session. Online, nothing is asked: a re-sent event carries the same id
and replaces itself on the server.

How to upload (on a machine that reaches the server, clearml.conf or ``CLEARML_API_*`` set;
copy ``<cache>/offline`` there first if the sync ran elsewhere)::

    python -m tracelet.destinations.clearml import --dry-run [OFFLINE_DIR]   # the plan
    python -m tracelet.destinations.clearml import [OFFLINE_DIR]

For each run it imports the sessions in name order with ClearML's own
``Task.import_offline_session``: the first creates the task, each later one continues it
(``previous_task_id`` = the id the first returned). That ClearML call (1) creates, for a
continued session, an empty draft task with the same name, (2) replaces the task's artifact
list with the session's, (3) always marks the task completed; the helper deletes (1),
re-registers the artifacts (2) dropped and applies the status the sessions recorded (3). A
finished session gets ``<zip>.imported`` (holding the task id) and is never imported again; an
unfinished folder is imported as is and again once finished — harmless, every event replaces
itself. With the markers gone the task is found on the server by ``tracelet/run_id``. Plain
ClearML works too, with caveats (1)-(3), and it sees a session only once it has its zip::

    from pathlib import Path
    from clearml import Task
    task_id = None
    for z in sorted(Path(OFFLINE_DIR).glob("offline-<20 hex of the run>*.zip")):
        task_id = Task.import_offline_session(str(z), previous_task_id=task_id)

Limits: after a lost state dir, occurrence numbers are recomputed by replaying the source from
its start; if two event files of one run grew during the same syncs AND repeat the same
(tag, step), the replay order differs from the original one and those points may trade their
``#n`` series (each is still there once). The helper's server side (import, draft deletion,
status) and the online mode are written against clearml 2.1 but have not run against a live
server here (none is reachable); the session files, and ClearML's own offline reader over
them, are tested. A run's offline folder must not change between syncs: the offline target's
checkpoint key does not include it, so the destination refuses such a resync.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import pyarrow as pa

from ..._fs import atomic_write_bytes
from ...errors import DestinationError
from ...media import image_problem
from ...reader.points import AUDIO, HISTOGRAM, IMAGE, MAX_ABS_WALL_TIME, SCALAR, TEXT, Batch
from ...params import param_text
from ...redact import scrubbed_logger
from ..base import SystemRows, Capabilities, Destination, Rejected, RunHandle, RunRef
from ..keys import suffixed

log = scrubbed_logger("tracelet.clearml")  # log lines never show a credential

EVENTS_PER_LINE = 2000  # one metrics.jsonl line = one events.add_batch request at import time
FLOAT32_MAX = 3.4028234663852886e38  # the server's `value` field is an Elasticsearch float
PARAM_SECTION = "General"  # ClearML's default section for Task.connect(dict)
TRACELET_SECTION = "tracelet"
SESSION_PREFIX = "offline-"
_RUN_HEX, _SEQ_HEX = 20, 12  # session id = offline-<run hash><sequence>, 32 hex like ClearML's
_SESSION_RE = re.compile(r"^offline-([0-9a-f]{20})([0-9a-f]{12})$")
_STATUS = {"running": "in_progress", "finished": "completed", "failed": "failed",
           "killed": "stopped"}
_GIB = float(1 << 30)
_MIB = float(1 << 20)
_MONITOR_MACHINE, _MONITOR_GPU = ":monitor:machine", ":monitor:gpu"
_SYSTEM_MAP = {  # tracelet sidecar name -> (title, series, scale)
    "cpu/utilization_percent": (_MONITOR_MACHINE, "cpu_usage", 1.0),
    "memory/used_bytes": (_MONITOR_MACHINE, "memory_used_gb", 1 / _GIB),
    "disk/read_bytes": (_MONITOR_MACHINE, "io_read_mb_total", 1 / _MIB),
    "disk/write_bytes": (_MONITOR_MACHINE, "io_write_mb_total", 1 / _MIB),
    "network/recv_bytes": (_MONITOR_MACHINE, "network_rx_mb_total", 1 / _MIB),
    "network/sent_bytes": (_MONITOR_MACHINE, "network_tx_mb_total", 1 / _MIB),
}
_GPU_MAP = {  # gpu/<i>/<name> -> (series template, scale)
    "utilization_percent": ("gpu_{i}_utilization", 1.0),
    "memory_used_bytes": ("gpu_{i}_mem_used_gb", 1 / _GIB),
    "memory_total_bytes": ("gpu_{i}_mem_total_gb", 1 / _GIB),
    "temperature_c": ("gpu_{i}_temperature", 1.0),
    "power_watts": ("gpu_{i}_power_draw", 1.0),
}
_GPU_RE = re.compile(r"^gpu/(\d+)/(.+)$")


# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------
MIN_NAME_CHARS = 3  # ClearML: "project_name / task_name: minimum length of 3 characters"


def clearml_name(name: str, nested: bool = False) -> str:
    """A project or task name ClearML accepts: a name (with ``nested``: each ``/``-separated
    part of a project name) shorter than 3 characters is padded with ``_`` (``r`` -> ``r__``)."""
    parts = name.split("/") if nested else [name]
    return "/".join(p.ljust(MIN_NAME_CHARS, "_") for p in parts)


def _names(run: RunRef) -> tuple[str, str]:
    """(project name, task name) of a run on ClearML."""
    return clearml_name(run.project, nested=True), clearml_name(run.run_path)


# Series endings this destination writes itself (a repeated step, a non-finite value's marker,
# item i of a TF2 image/audio tensor): a tag's own series ending so is renamed (split_tag).
_RESERVED_SERIES = re.compile(r"( #\d+| \((nan|\+inf|-inf)\)| \[\d+\])$")


def split_tag(tag: str) -> tuple[str, str]:
    """(title, series) of a TensorBoard tag: split at the last ``/``; no ``/`` → both the tag.

    Renamed (series ``<series>-<8 hex of the tag's SHA-1>``, :mod:`.keys`) where the plain
    split would meet another tag or a series this destination makes: ``X/X`` (``X`` alone is
    (``X``, ``X``) too) and a series ending like ``loss #2``, ``loss (nan)`` or ``img [1]``."""
    title, sep, series = tag.rpartition("/")
    if not sep or not title or not series:
        title = series = tag
        if _RESERVED_SERIES.search(series):
            series = suffixed(series, tag)
        return title, series
    if title == series or _RESERVED_SERIES.search(series):
        series = suffixed(series, tag)
    return title, series


def clearml_key(tag: str) -> str:
    """The tag as ClearML shows it: ``title/series``, or ``title`` where both are the same."""
    title, series = split_tag(tag)
    return title if title == series else f"{title}/{series}"


def series_name(series: str, copy: int = 1, marker: str | None = None) -> str:
    """Series of the ``copy``-th occurrence of a (tag, step); ``marker`` for a non-finite value."""
    if marker:
        series = f"{series} ({marker})"
    return series if copy <= 1 else f"{series} #{copy}"


def system_series(name: str) -> tuple[str, str, float]:
    """(title, series, scale) of a sidecar metric name (see the module table)."""
    hit = _SYSTEM_MAP.get(name)
    if hit:
        return hit
    m = _GPU_RE.match(name)
    if m and m.group(2) in _GPU_MAP:
        template, scale = _GPU_MAP[m.group(2)]
        return _MONITOR_GPU, template.format(i=m.group(1)), scale
    flat = re.sub(r"[/\s]+", "_", name.strip("/")) or "unnamed"
    return (_MONITOR_GPU if name.startswith("gpu/") else _MONITOR_MACHINE), flat, 1.0


def run_hash(run: RunRef) -> str:
    """The 20 hex digits every offline session id of this run starts with."""
    text = f"{run.project}\n{run.run_path}\n{run.run_id}"
    return hashlib.sha1(text.encode()).hexdigest()[:_RUN_HEX]


def session_id(run_hex: str, seq: int) -> str:
    return f"{SESSION_PREFIX}{run_hex}{seq:0{_SEQ_HEX}x}"


def offline_dir() -> Path:
    """ClearML's offline folder (``<cache>/offline``), resolved the way ClearML resolves it."""
    from clearml.config import get_offline_dir

    return Path(get_offline_dir()).expanduser().resolve()


def _finite_or_marker(value: float) -> tuple[float, str | None]:
    if math.isfinite(value):
        if abs(value) <= FLOAT32_MAX:
            return value, None
        return 0.0, "+inf" if value > 0 else "-inf"  # overflows the server's float32 field
    if math.isnan(value):
        return 0.0, "nan"
    return 0.0, "+inf" if value > 0 else "-inf"


# ---------------------------------------------------------------------------------------------
# copies: which occurrence of a (tag, step) a point is, as a pure function of the source order
# ---------------------------------------------------------------------------------------------
class _Copies:
    """Per key, the steps seen so far as segments ``[lo, hi, stride]`` (``stride`` 0: one step).

    A point's copy number is 1 + the number of segments covering its step; then the step is
    recorded (extending the last segment when the step moves forward, else opening a new one).
    Coverage of a step only grows, so two occurrences of a step never share a copy number.
    Segments may over-cover (a gcd stride, a forward jump): a first occurrence may then get a
    copy number > 1 — still unique and deterministic, only less pretty. Monotonic steps keep
    one segment per key, so the state stays a few numbers per tag.

    Changes go to a working copy; :meth:`commit` publishes them after the write succeeded, so a
    failed or repeated send computes the same copy numbers again.
    """

    def __init__(self, state: dict[str, list[list[int]]]):
        self.state = state
        self.work: dict[str, list[list[int]]] = {}

    def take(self, key: str, step: int) -> int:
        segs = self.work.get(key)
        if segs is None:
            segs = self.work[key] = [list(s) for s in self.state.get(key, ())]
        if not segs:
            segs.append([step, step, 0])
            return 1
        last = segs[-1]
        if len(segs) == 1 and step > last[1]:  # the common case: moving forward
            cover = 0
        else:
            cover = 0
            for lo, hi, stride in segs:
                if lo <= step <= hi and (step == lo if stride == 0 else (step - lo) % stride == 0):
                    cover += 1
        if step > last[1]:
            last[2] = (step - last[0]) if last[2] == 0 else math.gcd(last[2], step - last[1])
            last[1] = step
        else:
            segs.append([step, step, 0])
        return cover + 1

    def commit(self) -> None:
        self.state.update(self.work)
        self.work = {}


# ---------------------------------------------------------------------------------------------
# ClearML objects (imported lazily)
# ---------------------------------------------------------------------------------------------
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
            atomic_write_bytes(Path(folder) / self._offline_filename,
                               json.dumps(export, ensure_ascii=True, sort_keys=True).encode())

    _SESSION_TASK = SessionTask
    return SessionTask


_SESSION_TASK = None


def _quiet_clearml() -> None:
    for name in ("clearml", "clearml.metrics", "clearml.Task", "clearml.storage"):
        logging.getLogger(name).setLevel(logging.ERROR)


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
# offline sessions on disk
# ---------------------------------------------------------------------------------------------
def _list_sessions(folder: Path, run_hex: str) -> dict[int, dict[str, Path | None]]:
    """seq -> {"dir": folder or None, "zip": zip or None} for one run's sessions."""
    out: dict[int, dict[str, Path | None]] = {}
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return out
    prefix = SESSION_PREFIX + run_hex
    for name in names:
        if not name.startswith(prefix):
            continue
        stem, is_zip = (name[:-4], True) if name.endswith(".zip") else (name, False)
        m = _SESSION_RE.match(stem)
        if not m:
            continue
        entry = out.setdefault(int(m.group(2), 16), {"dir": None, "zip": None})
        entry["zip" if is_zip else "dir"] = folder / name
    return out


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


_SCALAR_TYPE = "training_stats_scalar"


def _row_id(row: tuple) -> tuple:
    """The server's identity of a scalar row (``EventBLL.event_id_fields`` minus the task)."""
    return (_SCALAR_TYPE, row[2], row[0], row[1])


def _media_id(m: tuple) -> tuple:
    return ("plot" if m[0] == "plot" else "training_debug_image", m[3], m[1], m[2])


def _scalar_rows(copies: _Copies, batch: Batch) -> list[tuple]:
    """(title, series, iteration, value, timestamp_ms) per scalar point."""
    cols = batch.scalars
    split: dict[str, tuple[str, str, str]] = {}
    out: list[tuple] = []
    append = out.append
    take = copies.take
    for tag, step, wall, value in zip(cols.tags, cols.steps, cols.wall_times, cols.values):
        sp = split.get(tag)
        if sp is None:
            title, series = split_tag(tag)
            sp = split[tag] = (title, series, "s:" + tag)
        copy = take(sp[2], step)
        if copy == 1 and -FLOAT32_MAX <= value <= FLOAT32_MAX:  # finite and fits: fast path
            append((sp[0], sp[1], step, value, int(wall * 1000)))
        else:
            v, marker = _finite_or_marker(value)
            append((sp[0], series_name(sp[1], copy, marker), step, v, int(wall * 1000)))
    return out


def _media_specs(copies: _Copies, batch: Batch, refused: set[int] = frozenset()) -> list[tuple]:
    """(kind, title, series, step, wall, point) for histograms, images, audio and texts;
    ``refused``: indexes of images left out (quarantined; they take no copy number)."""
    specs = []
    for h in batch.histograms:
        title, series = split_tag(h.tag)
        specs.append(("plot", title, series_name(series, copies.take("h:" + h.tag, h.step)),
                      h.step, h.wall_time, h))
    for kind, points in (("image", batch.images), ("audio", batch.audio)):
        for j, p in enumerate(points):  # item i of a TF2 image/audio tensor: series "<series> [i]"
            if kind == "image" and j in refused:
                continue
            title, series = split_tag(p.tag)
            if p.index:
                series = f"{series} [{p.index}]"
            copy = copies.take(f"{kind[0]}:{p.index}:{p.tag}", p.step)
            specs.append((kind, title, series_name(series, copy), p.step, p.wall_time, p))
    for t in batch.texts:
        title, series = split_tag(t.tag)
        specs.append(("text", title, series_name(series, copies.take("t:" + t.tag, t.step)),
                      t.step, t.wall_time, t))
    return specs


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
    """Events of one session, from its folder (or its zip when the folder is gone)."""
    lines: list[bytes] = []
    d, z = entry.get("dir"), entry.get("zip")
    if d is not None and (d / "metrics.jsonl").exists():
        lines = (d / "metrics.jsonl").read_bytes().splitlines()
    elif z is not None:
        with zipfile.ZipFile(z) as zf:
            if "metrics.jsonl" in zf.namelist():
                lines = zf.read("metrics.jsonl").splitlines()
    out: list[dict[str, Any]] = []
    for line in lines:
        try:
            out.extend(json.loads(line))
        except ValueError:
            continue  # an unfinished line of a killed sync; cut before it is ever zipped
    return out


def _zip_session(folder: Path) -> Path:
    """``<folder>.zip`` the way ``Task.close`` makes it offline, published atomically."""
    target = folder.with_name(folder.name + ".zip")
    tmp = folder.with_name(f".{folder.name}.zip.tmp-{os.getpid()}")
    with zipfile.ZipFile(tmp, "w", allowZip64=True, compression=zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, arcname=p.relative_to(folder).as_posix())
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    fd = os.open(folder.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return target


# ---------------------------------------------------------------------------------------------
# the destination
# ---------------------------------------------------------------------------------------------
class ClearmlDestination(Destination):
    name = "clearml"
    capabilities = Capabilities(
        kinds=frozenset({SCALAR, HISTOGRAM, IMAGE, TEXT, AUDIO}),
    )

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        from .factory import clearml_offline  # the same rule as destinations.target_key

        self.offline = clearml_offline(self.config)
        _quiet_clearml()
        from clearml import Task

        if self.offline:
            Task.set_offline(True)
            self.folder = offline_dir()
            self._target = f"offline:{self.folder}"
        else:
            self.folder = None
            try:
                _bounded_default_session()
            except Exception as e:  # no config, bad credentials, server down: this sync's
                raise DestinationError(  # ClearML target fails; the other destinations go on
                    f"clearml: cannot reach a ClearML server ({type(e).__name__}: "
                    f"{str(e).strip().splitlines()[0][:300]}). Configure clearml.conf or "
                    "CLEARML_API_HOST/ACCESS_KEY/SECRET_KEY, or write offline sessions with "
                    "--clearml-offline (CLEARML_OFFLINE_MODE=1).") from e
            self._target = "online:" + _api_host()

    @property
    def target(self) -> str:
        return self._target

    def metric_key(self, tag: str) -> str:
        return clearml_key(tag)

    # -- identity ----------------------------------------------------------------------------
    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        if self.offline:
            return self._open_offline(run, identity)
        return self._open_online(run, identity)

    def _open_offline(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        folder = self.folder
        assert folder is not None
        ignored = False
        if identity and identity.get("run_hash") != run_hash(run):
            identity, ignored = None, True  # another run's sessions: never used
        if identity and identity.get("dir") and Path(identity["dir"]) != folder:
            raise DestinationError(
                f"clearml: run '{run.run_path}' was synced to offline sessions in "
                f"{identity['dir']}, but ClearML's offline folder is now {folder} "
                "(CLEARML_CACHE_DIR / clearml.conf changed). Point it back, or use another "
                "--state-dir to start this target over.")
        folder.mkdir(parents=True, exist_ok=True)
        rhex = run_hash(run)
        for stale in folder.glob(f".{SESSION_PREFIX}{rhex}*.zip.tmp-*"):
            stale.unlink(missing_ok=True)  # a zip cut by kill -9: the folder is still there
        sessions = _list_sessions(folder, rhex)
        last_seq = max(sessions, default=0)
        ident = dict(identity or {})
        ident.update({"mode": "offline", "dir": str(folder), "run_hash": rhex,
                      "next_seq": max(int(ident.get("next_seq", 1)), last_seq + 1)})
        ident.setdefault("copies", {})
        handle = RunHandle(identity=ident, existed=identity is not None or bool(sessions),
                           identity_ignored=ignored)
        handle.extra.update(run=run, sessions=sessions, task=None, templates=None, landed=None)
        last = sessions.get(last_seq)
        if last and last["dir"] is not None and last["zip"] is None:
            # A session a killed sync left unfinished: continue it (it was never zipped, so
            # never imported), after cutting a line the kill may have left half-written.
            if (last["dir"] / "task.json").exists():
                _cut_unfinished_line(last["dir"] / "metrics.jsonl")
                handle.extra["task"] = self._reopen_session(run, session_id(rhex, last_seq),
                                                            last_seq)
                handle.extra["seq"] = last_seq
        return handle

    def _new_session(self, handle: RunHandle) -> Any:
        run: RunRef = handle.extra["run"]
        ident = handle.identity
        seq = int(ident["next_seq"])
        sid = session_id(ident["run_hash"], seq)
        cls = _task_class()
        from clearml import Task

        project, name = _names(run)
        task = cls(chosen_id=sid, project_name=project, task_name=name,
                   task_type=Task.TaskTypes.training)
        _prepare_session_task(task, run, seq)
        handle.extra["sessions"][seq] = {"dir": Path(task.get_offline_mode_folder()), "zip": None}
        handle.extra["seq"] = seq
        ident["next_seq"] = seq + 1
        return task

    def _reopen_session(self, run: RunRef, sid: str, seq: int) -> Any:
        task = _task_class()(task_id=sid)
        task._project_name = (None, _names(run)[0])  # offline: not restored by reload
        _prepare_session_task(task, run, seq)  # again: the kill may have come before it
        return task

    def _open_online(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle:
        from clearml import Task

        task, ignored = None, False
        if identity and identity.get("task_id"):
            try:
                task = Task.get_task(task_id=str(identity["task_id"]))
            except ValueError:  # deleted on the server
                task = None
            if task is not None and \
                    str(task.get_parameter(f"{TRACELET_SECTION}/run_id") or "") != run.run_id:
                task, ignored, identity = None, True, None  # another run's task: never used
        existed = task is not None
        if task is None:
            task = _find_online_task(*_names(run), run.run_id)
            existed = task is not None
        if task is None:
            project, name = _names(run)
            task = Task.create(project_name=project, task_name=name,
                               task_type=Task.TaskTypes.training)
            _prepare_session_task(task, run, None)
            task.mark_started(force=True)
        ident = {"mode": "online", "task_id": task.id,
                 "copies": dict((identity or {}).get("copies") or {})}
        handle = RunHandle(identity=ident, existed=existed, identity_ignored=ignored)
        handle.extra.update(run=run, task=task, templates=None, landed=None)
        return handle

    def _task(self, handle: RunHandle) -> Any:
        task = handle.extra.get("task")
        if task is None:
            task = handle.extra["task"] = self._new_session(handle)
        return task

    # -- points ------------------------------------------------------------------------------
    # Points become rows (title, series, iteration, value, timestamp_ms) first: the dedupe
    # check needs no session, so a re-send of what landed opens no new (empty) session.
    def send(self, handle: RunHandle, batch: Batch, *, dedupe: bool) -> list[Rejected]:
        # ClearML stores an image's bytes as they are and its UI cannot show a broken one: a
        # truncated or corrupt PNG/JPEG/GIF (checked without decoding) is quarantined instead
        rejected = [Rejected(IMAGE, j, why) for j, im in enumerate(batch.images)
                    if (why := image_problem(im.encoded))]
        copies = _Copies(handle.identity["copies"])
        rows = _scalar_rows(copies, batch)
        media = _media_specs(copies, batch, {r.index for r in rejected})
        self._write(handle, rows, media, dedupe)
        copies.commit()
        return rejected

    def send_system(self, handle: RunHandle, part: SystemRows, run: RunRef, *,
                    dedupe: bool) -> None:
        start = run.started_at or 0.0
        copies = _Copies(handle.identity["copies"])
        rows = []
        names: dict[str, tuple[str, str, float]] = {}
        for ts, name, value in zip(part.timestamps, part.names, part.values):
            if value is None or ts is None:
                continue
            spec = names.get(name)
            if spec is None:
                spec = names[name] = system_series(name)
            title, series, scale = spec
            if not 0 <= ts < MAX_ABS_WALL_TIME:  # NaN or a broken clock: as event wall times
                ts = 0.0
            it = int(math.floor(ts - start))
            copy = copies.take("y:" + name, it)
            v, marker = _finite_or_marker(float(value) * scale)
            rows.append((title, series_name(series, copy, marker), it, v, int(ts * 1000)))
        self._write(handle, rows, [], dedupe)
        copies.commit()

    def _templates(self, handle: RunHandle, task: Any) -> _Templates:
        t = handle.extra.get("templates")
        if t is None or t.task_id != task.id:
            t = handle.extra["templates"] = _Templates(task.id)
        return t

    # -- writing -------------------------------------------------------------------------------
    def _write(self, handle: RunHandle, rows: list[tuple], media: list[tuple],
               dedupe: bool) -> None:
        if dedupe and self.offline:
            landed = self._landed(handle)
            rows = [r for r in rows if landed.get(_row_id(r), _MISSING) != r[3]]
            media = [m for m in media if _media_id(m) not in landed]
        if not rows and not media:
            return
        task = self._task(handle)
        templates = self._templates(handle, task)
        events = []
        append = events.append
        get = templates.get
        for title, series, it, value, ts in rows:
            ev = dict(get(title, series))
            ev["iter"], ev["value"], ev["timestamp"] = it, value, ts
            append(ev)
        if not self.offline:
            # No dedupe query: an event's server id is (task, iter, metric, variant[, key]),
            # so a re-sent event replaces itself.
            self._write_online(task, events, media)
            return
        path = Path(task.get_offline_mode_folder()) / "metrics.jsonl"
        size0 = path.stat().st_size if path.exists() else 0
        try:
            if events:
                with open(path, "ab") as f:
                    for i in range(0, len(events), EVENTS_PER_LINE):
                        f.write(json.dumps(events[i:i + EVENTS_PER_LINE]).encode() + b"\n")
            if media:
                self._write_media(task, media)
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        except BaseException:
            # Leave no half batch behind: the retry (or the next sync) writes it whole.
            if path.exists():
                with open(path, "rb+") as f:
                    f.truncate(size0)
            raise
        landed = handle.extra.get("landed")
        if landed is not None:
            for r in rows:
                landed[_row_id(r)] = r[3]
            for m in media:
                landed[_media_id(m)] = True

    def _landed(self, handle: RunHandle) -> dict[tuple, Any]:
        """What this run's offline sessions already hold, keyed as the server keys events."""
        landed = handle.extra.get("landed")
        if landed is None:
            landed = handle.extra["landed"] = {}
            for seq in sorted(handle.extra["sessions"]):
                for ev in _read_session_events(handle.extra["sessions"][seq]):
                    key = (ev.get("type"), ev.get("iter"), ev.get("metric") or "",
                           ev.get("variant") or "")
                    landed[key] = ev.get("value") if ev.get("type") == _SCALAR_TYPE else True
        return landed

    def _write_media(self, task: Any, media: list[tuple]) -> None:
        from clearml.backend_interface.metrics.events import ImageEvent, MediaEvent, PlotEvent

        events = []
        for kind, title, series, step, wall, p in media:
            ts = int(wall * 1000) or None
            if kind == "plot":
                events.append(PlotEvent(metric=title, variant=series, iter=step, timestamp=ts,
                                        plot_str=_histogram_plot(title, series, p)))
            elif kind == "image":
                events.append(ImageEvent(
                    metric=title, variant=series, iter=step, timestamp=ts,
                    image_data=io.BytesIO(p.encoded), file_history_size=-1,
                    override_filename=f"iter_{step}", override_filename_ext="." + p.format))
            elif kind == "audio":
                events.append(MediaEvent(
                    metric=title, variant=series, iter=step, timestamp=ts,
                    stream=io.BytesIO(p.encoded), file_history_size=-1,
                    override_filename=f"iter_{step}", override_filename_ext="." + p.format))
            else:
                events.append(MediaEvent(
                    metric=title, variant=series, iter=step, timestamp=ts,
                    stream=io.BytesIO(p.text.encode("utf-8")), file_history_size=-1,
                    override_filename=f"iter_{step}", override_filename_ext=".txt"))
        metrics = task._get_metrics_manager(storage_uri=task._get_default_report_storage_uri())
        res = metrics.write_events(events, async_enable=False)
        failed = [e for e in events if e.upload_exception is not None]
        if failed:
            # not a DestinationError: one sample's file may be what fails (a name too long for
            # the file system), which the engine isolates; a folder it cannot write fails the
            # destination (tracelet.quarantine.destination_wide reads the cause)
            raise RuntimeError(
                f"clearml: storing {len(failed)} debug sample(s) failed: "
                f"{failed[0].upload_exception}") from failed[0].upload_exception
        if res is not None and not res.ok():
            raise RuntimeError(f"clearml: events.add_batch failed: {res.meta}")

    def _write_online(self, task: Any, events: list[dict], media: list[tuple]) -> None:
        session = task.session
        for i in range(0, len(events), EVENTS_PER_LINE):
            responses = session.send_request_batch("events", "add_batch",
                                                   json=events[i:i + EVENTS_PER_LINE])
            for r in responses or []:
                if r is None:
                    continue
                if r.status_code != 200:
                    import requests

                    raise requests.HTTPError(  # status_code makes 5xx/429 transient
                        f"clearml events.add_batch: HTTP {r.status_code}: {r.text[:300]}",
                        response=r)
                data = (r.json() or {}).get("data") or {}
                if data.get("errors"):  # some events refused: never silently dropped
                    raise RuntimeError(f"clearml events.add_batch refused {data['errors']} "
                                       f"event(s): {str(data.get('errors_info'))[:300]}")
        if media:
            self._write_media(task, media)

    # -- params, artifacts, status -------------------------------------------------------------
    # Offline, what earlier sessions recorded is read back first (hyperparams merge, artifacts
    # by key + sha256, the last status): after a lost state dir nothing already recorded is
    # written again, and a sync with nothing new opens no session.
    def _known(self, handle: RunHandle) -> dict[str, Any]:
        known = handle.extra.get("known")
        if known is None:
            known = handle.extra["known"] = {"params": {}, "artifacts": {}, "status": None}
            for seq in sorted(handle.extra.get("sessions") or {}):
                doc = _read_session_doc(handle.extra["sessions"][seq])
                for name, p in ((doc.get("hyperparams") or {}).get(PARAM_SECTION) or {}).items():
                    known["params"][name] = p.get("value")
                for a in ((doc.get("execution") or {}).get("artifacts") or []):
                    known["artifacts"][a.get("key")] = a.get("hash")
                known["status"] = doc.get("status") or known["status"]
        return known

    def log_params(self, handle: RunHandle, params: Mapping[str, Any]) -> list[str]:
        values = {str(k): param_text(v) for k, v in params.items()}
        if self.offline:
            have = self._known(handle)["params"]
            values = {k: v for k, v in values.items() if have.get(k) != v}
            if not values:
                return []
        task = self._task(handle)
        with _editable(task, self.offline):
            task._set_parameters({f"{PARAM_SECTION}/{k}": v for k, v in values.items()},
                                 __update=True)
        if self.offline:
            self._known(handle)["params"].update(values)
        return []  # ClearML params are not write-once: the new value replaces the old one

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        todo = [(Path(p), rel, _sha256(p)) for p, rel in files]
        if self.offline:
            have = self._known(handle)["artifacts"]
            todo = [t for t in todo if have.get(t[1]) != t[2]]
            if not todo:
                return
        task = self._task(handle)
        with _editable(task, self.offline):
            for path, rel, digest in todo:
                if not task.upload_artifact(rel, path, wait_on_upload=True):
                    raise RuntimeError(f"clearml: upload_artifact('{rel}') returned False")
                if self.offline:
                    self._known(handle)["artifacts"][rel] = digest

    def finish(self, handle: RunHandle, status: str, ended_at: float | None) -> None:
        cstatus = _STATUS.get(status, "in_progress")
        if not self.offline:
            _set_online_status(self._task(handle), cstatus)
            return
        known = self._known(handle)
        if known["status"] == cstatus:
            return
        # Offline mark_*() calls are no-ops: the status is recorded in the session's task.json
        # and applied by import_offline_sessions (ClearML's importer marks tasks completed).
        self._task(handle)._edit(status=cstatus)
        known["status"] = cstatus

    def close_run(self, handle: RunHandle) -> None:
        task = handle.extra.get("task")
        if task is None:
            return
        if self.offline:
            task._edit()  # the session's final task.json
            folder = Path(task.get_offline_mode_folder())
            target = _zip_session(folder)
            seq = handle.extra.get("seq")
            if seq is not None:
                handle.extra["sessions"].setdefault(seq, {})["zip"] = target
            log.info("clearml: offline session %s", target)
        else:
            task.flush(wait_for_uploads=True)
        handle.extra["task"] = None

    def close(self) -> None:
        try:
            from clearml.backend_interface.metrics import Metrics

            Metrics.close_async_threads()
        except Exception:  # closing must not hide the sync's own result
            pass


_MISSING = object()


def _sha256(path: str | os.PathLike) -> str:
    """The content hash ClearML records for a file artifact (``Artifact.hash``)."""
    from clearml.storage.hashing import sha256sum

    return sha256sum(os.fspath(path), block_size=1 << 20)[0]


def _prepare_session_task(task: Any, run: RunRef, seq: int | None) -> None:
    """Identity hyperparameters, tags and the data folder of a new task/session."""
    if task.is_offline():
        from clearml.backend_api.services import tasks

        Path(task._get_default_report_storage_uri()).mkdir(parents=True, exist_ok=True)
        if not task.data.type:
            task._edit(type=tasks.TaskTypeEnum.training)
    values = {f"{TRACELET_SECTION}/run_id": run.run_id,
              f"{TRACELET_SECTION}/run_path": run.run_path}
    if seq is not None:
        values[f"{TRACELET_SECTION}/session"] = str(seq)
    task._set_parameters(values, __update=True)
    tags = [f"{k}:{v}" for k, v in sorted(run.tags.items())]
    if tags:
        task.set_tags(tags)


@contextmanager
def _editable(task: Any, offline: bool) -> Iterator[None]:
    """Online, a completed/failed/stopped task refuses edits: reopen it, then restore."""
    status = None if offline else str(task.get_status())
    if status in (None, "created", "in_progress"):
        yield
        return
    task.mark_started(force=True)
    try:
        yield
    finally:
        _set_online_status(task, status)


def _set_online_status(task: Any, status: str) -> None:
    if status == "completed":
        if str(task.get_status()) != "in_progress":
            task.mark_started(force=True)
        task.mark_completed(force=True)
    elif status == "failed":
        task.mark_failed(force=True)
    elif status == "stopped":
        task.mark_stopped(force=True)
    else:
        task.mark_started(force=True)


def _histogram_plot(title: str, series: str, h: Any) -> str:
    import numpy as np
    from clearml.utilities.plotly_reporter import create_2d_histogram_plot

    lefts = [float(x) for x in h.lefts]
    widths = [float(r) - float(l) for l, r in zip(h.lefts, h.rights)]
    plot = create_2d_histogram_plot(
        np_row_wise=np.array([list(h.counts)], dtype=float), labels=[series], title=title,
        series=series, xlabels=lefts, xtitle="value", ytitle="count",
        data_args={"width": widths, "offset": 0},
        comment=", ".join(f"{k} {v:g}" for k, v in (("min", h.min), ("max", h.max),
                                                       ("num", h.num), ("sum", h.sum))
                          if v is not None) or None)
    return json.dumps(plot, default=_json_default)


def _json_default(o: Any) -> Any:
    try:
        return o.tolist()
    except AttributeError:
        return str(o)


# ClearML's own HTTP retries (api.http.retries: 240 tries) would hold a cron pass for many
# minutes against a server that is down; tracelet.retry is the one retry policy.
_HTTP_RETRIES = {"total": 2, "connect": 2, "read": 2, "redirect": 2, "status": 2,
                 "backoff_factor": 0.5}


def _bounded_default_session() -> None:
    from clearml.backend_api import Session
    from clearml.backend_api.session.defs import ENV_ACCESS_KEY, ENV_SECRET_KEY
    from clearml.backend_interface.base import InterfaceBase
    from clearml.config import config_obj

    if InterfaceBase._default_session is None:
        InterfaceBase._default_session = Session(
            initialize_logging=False, config=config_obj, api_key=ENV_ACCESS_KEY.get(),
            secret_key=ENV_SECRET_KEY.get(), http_retries_config=dict(_HTTP_RETRIES))


def _api_host() -> str:
    host = os.environ.get("CLEARML_API_HOST")
    if host:
        return host
    try:
        from clearml.backend_api import Session

        return str(Session.get_api_server_host())
    except Exception:
        return "config"


def _find_online_task(project: str, task_name: str, run_id: str) -> Any:
    """The task of this run on the server: exact name in the project + ``tracelet/run_id``."""
    from clearml import Task

    found = Task.get_tasks(project_name=project, task_name=f"^{re.escape(task_name)}$",
                           allow_archived=True)
    for t in found or []:
        if t.name != task_name:
            continue
        if str(t.get_parameter(f"{TRACELET_SECTION}/run_id") or "") == run_id:
            return t
    return None


# ---------------------------------------------------------------------------------------------
# uploading offline sessions (run where the server is reachable)
# ---------------------------------------------------------------------------------------------
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
        marker = Path(f"{path}.imported")
        imported = json.loads(marker.read_text()).get("task_id") if marker.exists() else None
        run = runs.setdefault(m.group(1), {
            "run_hash": m.group(1), "run_id": run_id, "project": doc.get("project_name"),
            "task_name": doc.get("name"), "sessions": []})
        run["sessions"].append({"path": str(path), "seq": int(m.group(2), 16),
                                "finished": entry["zip"] is not None,
                                "status": doc.get("status"), "imported_as": imported})
    for run in runs.values():
        run["sessions"].sort(key=lambda s: s["seq"])
    return list(runs.values())


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
                       None)
        if task_id is None:
            found = _find_online_task(run["project"], run["task_name"], run["run_id"])
            task_id = found.id if found is not None else None
        status = None
        for s in run["sessions"]:
            status = s["status"] or status
            if s["imported_as"]:
                continue
            before_ids, before_artifacts = set(), []
            if task_id:
                before_ids = {t.id for t in Task.get_tasks(
                    project_name=run["project"], task_name=f"^{re.escape(run['task_name'])}$")}
                before_artifacts = list(Task.get_task(task_id=task_id).data.execution.artifacts
                                        or [])
            new_id = Task.import_offline_session(s["path"], previous_task_id=task_id)
            if task_id:
                _repair_continuation(run, task_id, before_ids, before_artifacts)
            task_id = new_id or task_id
            if status and status != "completed":  # the importer always marks completed
                _set_online_status(Task.get_task(task_id=task_id), status)
            if s["finished"]:
                Path(s["path"] + ".imported").write_text(json.dumps({"task_id": task_id}))
                s["imported_as"] = task_id
        run["task_id"] = task_id
    return plan


def _repair_continuation(run: Mapping[str, Any], task_id: str, before_ids: set,
                         before_artifacts: list) -> None:
    from clearml import Task

    # The draft task import_offline_session creates (and leaves) for a continued session.
    for t in Task.get_tasks(project_name=run["project"],
                            task_name=f"^{re.escape(run['task_name'])}$"):
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

