"""W&B mapping: pure, SDK-free functions (names, ids, rows, source texts, buckets, exit codes).

Nothing here imports wandb (a test asserts it), so every rule below can be checked without the
SDK or its service.

Names
-----
- History keys (:func:`wandb_key`): a tag is kept unchanged (W&B accepts any text) unless it is
  empty or collides with a key W&B or this destination reserves (:data:`RESERVED_KEYS`,
  anything under ``system/`` or starting ``_wandb``): then ``tb/<tag>-<8 hex of its SHA-1>``
  (:mod:`..keys`).
- Config keys (:func:`param_key`): ``tracelet`` (this destination's own) and ``_wandb*``
  (W&B's) become ``params/<name>-<hash>``.
- Run id (:func:`wandb_run_id`): the tracelet run id when it is 1-64 letters/digits, else
  ``tl`` + 30 hex digits of its SHA-1. Project (:func:`wandb_project`): ``/ \\ # ? % :``
  become ``_``, a name over 128 characters is cut and ends in ``~<hash>``.
- Exit codes (:func:`exit_code`): finished 0, failed 1, killed 137; running (or no status):
  exit 0 after marking the run preempting.

Rows
----
Scalars (:func:`scalar_rows`): consecutive points of one step share a row; a key seen twice in
one step starts a new row. Histograms, texts, audio and images (:func:`media_rows`): one row
per step where keys allow, several images of one tag and step as one image list, audio one
clip per entry. System metrics (:func:`system_rows`): one row per sample time, keys
``system/<name>``, step metric ``system_step`` = seconds since the run started.

Source texts
------------
Every row carries the hidden history key ``_tracelet`` (:data:`SOURCE_KEY`) naming the exact
source points in it (:func:`source_text`, parsed back by :func:`parse_source`)::

    <file hash>:<kind code><first ordinal>[+<count>],...

``file hash`` is 10 hex digits of the SHA-1 of the event file's path relative to the run
(:func:`source_file`, :func:`source_hash`) or of a sidecar part's content
(:func:`system_part_hash`); ``kind code`` is one of :data:`KIND_CODE` (``s h i t a``) or
:data:`SYSTEM_CODE` (``y``); the ordinal is the point's index among the points of its kind in
its file (the row index in a sidecar part); ``+<count>`` is left out for one point.

Histograms (:func:`histogram_buckets`): TensorBoard's buckets as ``(counts, edges)``; more than
512 buckets are merged into 512 whole adjacent buckets (counts stay exact), non-finite edges
are replaced by their finite neighbours.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from ...reader.points import AUDIO, HISTOGRAM, IMAGE, SCALAR, TEXT, Batch
from ..keys import suffixed

if TYPE_CHECKING:
    from ..base import SystemRows
    from .landed import Landed

STEP_METRIC = "global_step"  # the key W&B's own TensorBoard integration uses
SYSTEM_STEP_METRIC = "system_step"
SOURCE_KEY = "_tracelet"  # hidden ("_") history key naming the source points of a row
MAX_HISTOGRAM_BINS = 512  # wandb.Histogram refuses more
RESERVED_KEYS = frozenset({"_step", "_runtime", "_timestamp", "_wandb", SOURCE_KEY, STEP_METRIC,
                           SYSTEM_STEP_METRIC})
MAX_PROJECT_CHARS = 128
EXIT_CODES = {"finished": 0, "failed": 1, "killed": 137}
KIND_CODE = {SCALAR: "s", HISTOGRAM: "h", IMAGE: "i", TEXT: "t", AUDIO: "a"}
SYSTEM_CODE = "y"

_RUN_ID_OK = re.compile(r"[A-Za-z0-9]{1,64}")  # whole id (fullmatch: `$` allows a final \n)
_PROJECT_REJECTED = re.compile(r"[/\\#?%:]")

Row = tuple[dict, str]  # (the row as run.log takes it, its source text)


# -- names ----------------------------------------------------------------------------------
def wandb_key(tag: str) -> str:
    """A TensorBoard tag as a W&B history key: unchanged unless it is empty or collides with a
    key W&B or this destination reserves; then ``tb/<tag>-<hash>`` (:mod:`..keys`: the suffix
    keeps it apart from a tag that is literally ``tb/<tag>``)."""
    if not tag:
        return suffixed("tb/untagged", tag)
    if tag in RESERVED_KEYS or tag.startswith(("system/", "_wandb")):
        return suffixed("tb/" + tag, tag)
    return tag


def param_key(key: str) -> str:
    """A param name as a W&B config key: ``tracelet`` (this destination's own) and ``_wandb*``
    (W&B's) become ``params/<name>-<hash>``."""
    if key == "tracelet" or key.startswith("_wandb"):
        return suffixed("params/" + key, key)
    return key


def json_value(v: Any) -> Any:
    """A param value as W&B's config takes it: itself when JSON can hold it, else its text."""
    try:
        json.dumps(v, allow_nan=True)
        return v
    except (TypeError, ValueError):
        return str(v)


def wandb_run_id(run_id: str) -> str:
    """The deterministic W&B run id for a tracelet run id (letters/digits, at most 64)."""
    if _RUN_ID_OK.fullmatch(run_id):
        return run_id
    return "tl" + hashlib.sha1(run_id.encode()).hexdigest()[:30]


def wandb_project(project: str) -> str:
    """W&B rejects ``/ \\ # ? % :`` in project names and names over 128 characters: those
    characters become ``_`` and a longer name is cut and ends in ``~<hash>``."""
    name = _PROJECT_REJECTED.sub("_", project).strip() or "tracelet"
    if len(name) > MAX_PROJECT_CHARS:
        name = name[: MAX_PROJECT_CHARS - 9] + "~" + hashlib.sha1(project.encode()).hexdigest()[:8]
    return name


def exit_code(status: str | None) -> tuple[int, bool]:
    """``(exit code, preempting)`` for a run status: a run still running (or of unknown
    status) exits 0 marked preempting (W&B shows "preempted" until the next sync resumes it)."""
    if status in EXIT_CODES:
        return EXIT_CODES[status], False
    return 0, True


def upload_hint(root: str) -> str:
    return (f"tracelet: W&B offline: runs are written to {root}/wandb/offline-run-*; upload "
            f"them from a machine with W&B access with: wandb sync {root}/wandb/offline-run-*")


# -- source texts -----------------------------------------------------------------------------
def source_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:10]


def source_file(source_dir: str, path: str) -> str:
    """An event file's name in the identity's ``ords`` and in source texts: its path relative
    to the run folder, or ``linked:<absolute path>`` for a file outside it."""
    p = os.path.abspath(path)
    try:
        rel = os.path.relpath(p, source_dir)
    except ValueError:
        rel = ".."
    return "linked:" + p if rel.startswith("..") else rel.replace(os.sep, "/")


def system_part_hash(timestamps: Sequence[float], names: Sequence[str]) -> str:
    """The file hash of a sidecar part (non-empty): parts are immutable, so their content
    (row count, first and last rows) names them."""
    return source_hash(f"part|{len(timestamps)}|{timestamps[0]!r}|{timestamps[-1]!r}|"
                       f"{names[0]}|{names[-1]}")


def source_text(fk: str, code: str, segs: Sequence[Sequence[int]]) -> str:
    """The ``_tracelet`` text of a row holding the points ``[first, first + count)`` of each
    ``[first, count]`` in ``segs`` (module docstring)."""
    return f"{fk}:" + ",".join(f"{code}{a}+{n}" if n > 1 else f"{code}{a}" for a, n in segs)


def parse_source(text: str) -> Iterator[tuple[str, str, int, int]]:
    """``(file hash, kind code, first ordinal, count)`` for each segment of a source text. The
    text was read back from W&B: a segment that does not parse is skipped."""
    fk, _, segs = text.partition(":")
    for seg in segs.split(","):
        if not seg:
            continue
        start, _, count = seg[1:].partition("+")
        try:
            a, n = int(start), int(count or 1)
        except ValueError:
            continue
        yield fk, seg[0], a, n


# -- rows -------------------------------------------------------------------------------------
def scalar_rows(batch: Batch, fk: str, base: int, landed: Landed | None) -> list[Row]:
    """Rows of consecutive same-step scalars; the scalar ordinals start at ``base``; those in
    ``landed`` are left out."""
    cols = batch.scalars
    n = len(cols)
    if not n:
        return []
    skip = landed.covered(fk, "s", base, n) if landed is not None else ()
    tags, steps, walls, values = cols.tags, cols.steps, cols.wall_times, cols.values
    keys: dict[str, str] = {}
    rows: list[Row] = []
    row: dict[str, Any] | None = None
    row_step = None
    segs: list[list[int]] = []
    for i in range(n):
        if skip and i in skip:
            continue
        tag = tags[i]
        key = keys.get(tag)
        if key is None:
            key = keys[tag] = wandb_key(tag)
        step = steps[i]
        if row is None or step != row_step or key in row:
            if row is not None:
                rows.append((row, source_text(fk, "s", segs)))
            row = {key: values[i], STEP_METRIC: step, "_timestamp": walls[i]}
            row_step = step
            segs = [[base + i, 1]]
        else:
            row[key] = values[i]
            if segs[-1][0] + segs[-1][1] == base + i:
                segs[-1][1] += 1
            else:
                segs.append([base + i, 1])
    if row is not None:
        rows.append((row, source_text(fk, "s", segs)))
    return rows


def media_rows(batch: Batch, fk: str, base: Sequence[int], landed: Landed | None,
               make: Mapping[str, Callable[[Any, int], Any]],
               refused: set[int] | frozenset[int] = frozenset()) -> list[Row]:
    """Histograms, texts, audio and images grouped into one row per step where keys allow.

    ``base`` = the first ordinals ``[scalars, histograms, images, texts, audio]`` of this
    batch; ``make[kind](point, ordinal)`` builds the value W&B logs (called in file order per
    kind, once per point; images once per image, then grouped); images in ``refused`` are
    left out (their ordinals stay used)."""
    items: list[tuple[int, float, str, Any, str, list[int]]] = []  # step, wall, key, value, code, ords
    # one point per entry; audio too (a list of wandb.Audio needs the soundfile package)
    for kind, points, b in ((HISTOGRAM, batch.histograms, base[1]), (TEXT, batch.texts, base[3]),
                            (AUDIO, batch.audio, base[4])):
        code = KIND_CODE[kind]
        skip = landed.covered(fk, code, b, len(points)) if landed is not None else ()
        for j, p in enumerate(points):
            if j not in skip:
                items.append((p.step, p.wall_time, wandb_key(p.tag), make[kind](p, b + j), code,
                              [b + j]))
    skip = landed.covered(fk, "i", base[2], len(batch.images)) if landed is not None else ()
    groups: dict[tuple[str, int], list[int]] = {}
    for j, im in enumerate(batch.images):
        if j not in skip and j not in refused:
            groups.setdefault((im.tag, im.step), []).append(j)
    for (tag, step), idx in groups.items():
        images = [make[IMAGE](batch.images[j], base[2] + j) for j in idx]
        value = images[0] if len(images) == 1 else images
        items.append((step, batch.images[idx[0]].wall_time, wandb_key(tag), value, "i",
                      [base[2] + j for j in idx]))
    rows: list[tuple[dict, list[str]]] = []
    open_rows: dict[int, tuple[dict, list[str]]] = {}
    for step, wall, key, value, code, ords in items:
        cur = open_rows.get(step)
        if cur is None or key in cur[0]:
            cur = ({STEP_METRIC: step, "_timestamp": wall}, [])
            open_rows[step] = cur
            rows.append(cur)
        cur[0][key] = value
        cur[1].extend(f"{code}{o}" for o in ords)
    return [(row, f"{fk}:" + ",".join(src)) for row, src in rows]


def landed_points(batch: Batch, fk: str, base: Sequence[int], landed: Landed | None,
                  refused: set[int] | frozenset[int] = frozenset()) -> int:
    """How many points of the batch ``landed`` holds: those :func:`scalar_rows` and
    :func:`media_rows` leave out of a dedupe send (images in ``refused`` are the mapping's
    rejections, not points W&B holds). ``base`` as for :func:`media_rows`."""
    if landed is None:
        return 0
    n = 0
    for kind, points, b in ((SCALAR, batch.scalars, base[0]),
                            (HISTOGRAM, batch.histograms, base[1]), (IMAGE, batch.images, base[2]),
                            (TEXT, batch.texts, base[3]), (AUDIO, batch.audio, base[4])):
        skip = landed.covered(fk, KIND_CODE[kind], b, len(points))
        n += len(skip - set(refused)) if kind == IMAGE else len(skip)
    return n


def system_rows(part: SystemRows, fk: str, started_at: float | None,
                skip: set[int] | tuple = ()) -> list[Row]:
    """The rows of one sidecar part: one per sample time (a name seen twice at one time
    starts a new row), ``system_step`` = seconds since ``started_at`` (the sample time when
    the start is unknown); null values and the row indexes in ``skip`` are left out."""
    rows: list[Row] = []
    row: dict[str, Any] | None = None
    row_ts = None
    segs: list[list[int]] = []
    for i, (t, name, v) in enumerate(zip(part.timestamps, part.names, part.values)):
        if v is None or i in skip:
            continue
        key = "system/" + str(name)
        if row is None or t != row_ts or key in row:
            if row is not None:
                rows.append((row, source_text(fk, SYSTEM_CODE, segs)))
            sys_step = round(t - started_at, 3) if started_at else t
            row = {SYSTEM_STEP_METRIC: sys_step, "_timestamp": t}
            row_ts = t
            segs = [[i, 1]]
        elif segs[-1][0] + segs[-1][1] == i:
            segs[-1][1] += 1
        else:
            segs.append([i, 1])
        row[key] = v
    if row is not None:
        rows.append((row, source_text(fk, SYSTEM_CODE, segs)))
    return rows


# -- histograms -------------------------------------------------------------------------------
def histogram_buckets(h) -> tuple[Any, Any]:
    """``(counts, edges)`` numpy arrays of a :class:`~tracelet.reader.points.HistogramPoint` as
    ``wandb.Histogram(np_histogram=...)`` takes them: at most :data:`MAX_HISTOGRAM_BINS`
    buckets, finite edges; an empty histogram is one empty bucket at its minimum (or 0)."""
    import numpy as np

    counts = np.asarray(h.counts, dtype=np.float64)
    if len(counts):
        edges = np.asarray(list(h.lefts) + [h.rights[-1]], dtype=np.float64)
    else:  # an empty histogram still lands as one (empty) bucket
        lo = h.min if h.min is not None and math.isfinite(h.min) else 0.0
        counts, edges = np.zeros(1), np.asarray([lo, lo])
    return merge_buckets(counts, finite_edges(edges))


def merge_buckets(counts, edges, max_bins: int = MAX_HISTOGRAM_BINS) -> tuple[Any, Any]:
    """At most ``max_bins`` buckets: whole adjacent buckets merged (counts stay exact)."""
    import numpy as np

    if len(counts) <= max_bins:
        return counts, edges
    groups = np.array_split(np.arange(len(counts)), max_bins)
    return (np.asarray([counts[g].sum() for g in groups]),
            np.asarray([edges[g[0]] for g in groups] + [edges[-1]]))


def finite_edges(edges):
    """Replace non-finite bucket edges (±Inf, ±DBL_MAX sentinels) by their finite neighbours."""
    import numpy as np

    ok = np.isfinite(edges) & (np.abs(edges) < 1e300)
    if ok.all() or not ok.any():
        return np.where(ok, edges, 0.0)
    idx = np.arange(len(edges))
    return np.interp(idx, idx[ok], edges[ok])


# -- reproducibility: what W&B's run page shows (Overview: git, command, host, python) ----------
REPRO_ALIASES = {"tracelet/requirements.txt": "requirements.txt"}  # W&B's own names for them
DIFF_ARTIFACT, DIFF_FILE = "git_diff.patch", "diff.patch"  # W&B's own name for the diff


def program_args(command: Sequence[str]) -> tuple[str, list[str], str]:
    """``(program, args, executable)`` of a recorded argv as W&B records a run's
    (``sys.argv[0]``, ``sys.argv[1:]``, the interpreter): ``python train.py --lr 1`` ->
    ``("train.py", ["--lr", "1"], "python")``; ``python -m pkg x`` -> ``("-m pkg", ["x"], ...)``."""
    argv = [str(a) for a in command]
    if not argv:
        return "", [], ""
    if os.path.basename(argv[0]).startswith("python") and len(argv) > 1:
        if argv[1] == "-m" and len(argv) > 2:
            return f"-m {argv[2]}", argv[3:], argv[0]
        if not argv[1].startswith("-"):
            return argv[1], argv[2:], argv[0]
    return argv[0], argv[1:], ""


def environment(run: Any, started_at: float | None) -> dict[str, Any]:
    """The fields of W&B's ``EnvironmentRecord`` (what ``wandb-metadata.json`` and the run's
    Overview show) for a source run: the TRAINING's program, args, python, host, git (the
    remote without credentials), not the syncing machine's. Empty fields are left out."""
    program, args, executable = program_args(run.command)
    env, system, git = (dict(x) if isinstance(x, Mapping) else {}
                        for x in (run.env, run.system, run.git))
    out: dict[str, Any] = {
        "os": env.get("platform"), "python": env.get("python"),
        "executable": env.get("executable") or executable, "program": program, "args": args,
        "host": system.get("hostname"), "username": run.user, "root": git.get("root"),
        "cpu_count": system.get("cpus_physical") or system.get("cpus"),
        "cpu_count_logical": system.get("cpus"),
    }
    root, cwd = git.get("root"), env.get("cwd")
    where = program
    if program and not os.path.isabs(program) and not program.startswith("-m ") and \
            isinstance(cwd, str) and os.path.isabs(cwd):
        where = os.path.join(cwd, program)  # a relative script: from the training's folder
    if where and isinstance(root, str) and os.path.isabs(root) and os.path.isabs(where):
        rel = os.path.relpath(os.path.normpath(where), root)
        if not rel.startswith(".."):
            out["code_path"] = rel.replace(os.sep, "/")  # W&B: the program from the repo root
    if git.get("commit") or git.get("remote"):
        out["git"] = {"commit": git.get("commit") or "", "remote_url": git.get("remote") or ""}
    gpus = system.get("gpus")
    if isinstance(gpus, list) and gpus:
        out["gpu_count"] = len(gpus)
        first = gpus[0] if isinstance(gpus[0], dict) else {}
        out["gpu_type"] = first.get("name")
    if system.get("memory_bytes") is not None:
        out["memory"] = {"total": system["memory_bytes"]}
    if isinstance(started_at, (int, float)) and math.isfinite(started_at) and 0 < started_at < 1e11:
        out["started_at"] = started_at
    return {k: v for k, v in out.items() if _fits(k, v)}


_COUNTS = ("cpu_count", "cpu_count_logical", "gpu_count")


def _fits(key: str, v: Any) -> bool:
    """The manifest is untrusted: only values of the record's types are kept (a count that is
    not a small int, a name that is not text, is left out rather than failing the run)."""
    if key in _COUNTS:
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2 ** 32
    if key == "args":
        return isinstance(v, list) and bool(v) and all(isinstance(a, str) for a in v)
    if key == "git":
        return all(isinstance(x, str) for x in v.values()) and any(v.values())
    if key == "memory":
        return isinstance(v["total"], int) and not isinstance(v["total"], bool) and \
            0 < v["total"] < 2 ** 64
    if key == "started_at":
        return isinstance(v, (int, float))
    return isinstance(v, str) and v != ""


def summary_value(v: float) -> Any:
    """A scalar as the identity keeps it (JSON without NaN/Inf)."""
    return v if math.isfinite(v) else repr(float(v))


def update_summary(summary: dict[str, list], keys: Sequence[str], walls: Sequence[float],
                   values: Sequence[float]) -> None:
    """Keep, per history key, the ``[wall time, value]`` of its latest point (by wall time;
    a tie: the later point): the run summary shows each scalar's last value whatever order
    files and batches are sent in."""
    for key, wall, value in zip(keys, walls, values):
        cur = summary.get(key)
        if cur is None or wall >= cur[0]:
            summary[key] = [wall, summary_value(float(value))]
