"""ClearML mapping: pure, SDK-free functions (names, title/series, system metrics, session ids,
statuses, occurrence numbers, the rows and media specs a batch becomes, server error codes).

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
  ranges per tag in the checkpoint, :class:`_Copies`), so a re-send lands on the same event id:
  idempotent.
* NaN and ±Inf: the server's ``value`` field is an Elasticsearch ``float``, which rejects
  non-finite numbers (ClearML's SDK turns them into 0 by default). Such a point is kept as a
  marker point of value 0 in series ``<series> (nan)``, ``<series> (+inf)`` or
  ``<series> (-inf)`` at its step, so it is visible and counted, and never plotted as a real 0.

System metrics (``sysmetrics/`` parts) → titles ClearML's own resource monitor uses
(``clearml/utilities/resource_monitor.py``), with its units; iteration = whole seconds since
the run started (as ClearML's own monitor does):

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
"""
from __future__ import annotations

import hashlib
import math
import re
from typing import Any

from ...errors import DestinationError, PermanentDestinationError, TransientDestinationError
from ...reader.points import MAX_ABS_WALL_TIME, Batch
from ..base import RunRef, SystemRows
from ..keys import suffixed

EVENTS_PER_LINE = 2000  # one metrics.jsonl line = one events.add_batch request at import time
FLOAT32_MAX = 3.4028234663852886e38  # the server's `value` field is an Elasticsearch float
PARAM_SECTION = "General"  # ClearML's default section for Task.connect(dict)
TRACELET_SECTION = "tracelet"
SESSION_PREFIX = "offline-"
_RUN_HEX, _SEQ_HEX = 20, 12  # session id = offline-<run hash><sequence>, 32 hex like ClearML's
_SESSION_RE = re.compile(r"^offline-([0-9a-f]{20})([0-9a-f]{12})$")
STATUS = {"running": "in_progress", "finished": "completed", "failed": "failed",
          "killed": "stopped"}


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
    """(project name, task name) of a run on ClearML: the task name is the run's display name
    (``run.name``: ``--run-name``, else the run path); its identity is ``tracelet/run_id``."""
    return clearml_name(run.project, nested=True), clearml_name(run.name)


# Series endings this destination writes itself (a repeated step, a non-finite value's marker,
# item i of a TF2 image/audio tensor): a tag's own series ending so is renamed (split_tag).
_RESERVED_SERIES = re.compile(r"( #\d+| \((nan|\+inf|-inf)\)| \[\d+\])$")


def split_tag(tag: str) -> tuple[str, str]:
    """(title, series) of a TensorBoard tag: split at the last ``/``; no ``/`` → both the tag.

    Renamed (series ``<series>-<8 hex of the tag's SHA-1>``, :mod:`..keys`) where the plain
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


# ---------------------------------------------------------------------------------------------
# system metrics
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# offline session ids
# ---------------------------------------------------------------------------------------------
def run_hash(run: RunRef) -> str:
    """The 20 hex digits every offline session id of this run starts with."""
    text = f"{run.project}\n{run.run_path}\n{run.run_id}"
    return hashlib.sha1(text.encode()).hexdigest()[:_RUN_HEX]


def session_id(run_hex: str, seq: int) -> str:
    return f"{SESSION_PREFIX}{run_hex}{seq:0{_SEQ_HEX}x}"


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
# rows and media specs: what a batch becomes before any ClearML object is made
# ---------------------------------------------------------------------------------------------
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


def _system_rows(copies: _Copies, rows: SystemRows, started_at: float | None) -> list[tuple]:
    """The same rows for one sidecar part: iteration = whole seconds since ``started_at``."""
    start = started_at or 0.0
    out: list[tuple] = []
    specs: dict[str, tuple[str, str, float]] = {}
    for ts, name, value in zip(rows.timestamps, rows.names, rows.values):
        if value is None or ts is None:
            continue
        spec = specs.get(name)
        if spec is None:
            spec = specs[name] = system_series(name)
        title, series, scale = spec
        if not 0 <= ts < MAX_ABS_WALL_TIME:  # NaN or a broken clock: as event wall times
            ts = 0.0
        it = int(math.floor(ts - start))
        copy = copies.take("y:" + name, it)
        v, marker = _finite_or_marker(float(value) * scale)
        out.append((title, series_name(series, copy, marker), it, v, int(ts * 1000)))
    return out


def _media_specs(copies: _Copies, batch: Batch, refused: set[int] = frozenset()) -> list[tuple]:
    """(kind, title, series, step, wall, point) for histograms, images, audio and texts;
    ``refused``: indexes of images left out (quarantined; they take no copy number)."""
    specs: list[tuple[Any, ...]] = []
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


# ---------------------------------------------------------------------------------------------
# the server's error codes (clearml-server ``apiserver/apierrors``: HTTP code + subcode)
# ---------------------------------------------------------------------------------------------
# 400 replies the destination as a whole causes, not the content: the task or project is gone
# (deleted on the server underneath) or in a status that refuses the write, or the key is
# unknown. Every write of the run would fail alike, so quarantining them would drop the run.
_DESTINATION_SUBCODES = frozenset({
    75,  # InvalidAccessKey
    101, 130,  # InvalidTaskId, TaskNotFound
    110, 111, 112, 113, 114,  # InvalidTaskStatus, TaskNotStarted/InProgress/Published/Unknown
    401, 403,  # InvalidProjectId, ProjectNotFound
})
_TRANSIENT_SUBCODES = frozenset({
    121,  # FailedChangingTaskStatus: "probably someone changed it before you" (a race)
})


def server_error_class(code: int | None, subcode: int | None) -> type[DestinationError] | None:
    """The typed error a ClearML server reply stands for (HTTP ``code`` + ``subcode``); None
    when ``code`` is not an error status."""
    if not isinstance(code, int) or code < 400 or code >= 600:
        return None
    if code == 429 or code >= 500:
        return TransientDestinationError
    if code in (401, 403, 404, 405, 410):
        return DestinationError
    if code == 400 and subcode in _DESTINATION_SUBCODES:
        return DestinationError
    if code == 400 and subcode in _TRANSIENT_SUBCODES:
        return TransientDestinationError
    return PermanentDestinationError  # validation errors, events not added ...: the content
