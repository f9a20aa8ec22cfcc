"""What a run without a manifest still tells: its start and end from its events, whether it
stopped growing (``--finish-idle``), and Lightning's ``hparams.yaml``.

* Start: the wall time of the first usable record of the run's first event file (a writer's
  first record is its ``file_version`` event, stamped when it opened the file). Read from the
  first :data:`FIRST_RECORDS_BYTES` bytes only: cheap and bounded, never a full read.
* End: the latest point wall time the sync has delivered, kept per destination in the
  checkpoint (``Checkpoint.last_wall_time``) as batches land (:func:`note_wall_time`).
* Idle: the newest event file's modification time is at least ``--finish-idle`` old. Folded into
  the run's source signature (:func:`~.plan.source_signature`), so a run that becomes idle gets
  one pass (which finishes it) and an idle run already finished stays on the no-op fast path.
* ``hparams.yaml`` (written by Lightning's ``TensorBoardLogger`` beside its event files):
  params, read bounded, with PyYAML's safe loader; a file that is not a bounded mapping is a
  warning naming it.
"""
from __future__ import annotations

import functools
import io
import math
import os
from typing import Any

from ..checkpoint import HEAD_HASH_BYTES
from ..errors import NotRegularFileError, SourceError
from ..params import flatten_params
from ..reader.points import MAX_ABS_WALL_TIME

FIRST_RECORDS_BYTES = 64 * 1024  # a file's first records: its file_version event and a few more
FIRST_RECORDS = 16  # records looked at for a usable wall time
FIRST_FILES = 3  # event files tried, in order, when the first has no usable wall time yet
HPARAMS_FILE = "hparams.yaml"
MAX_HPARAMS_BYTES = 256 * 1024  # far above a Lightning hparams file (KBs); parsed in Python
MAX_HPARAMS_NODES = 50_000  # values and containers visited (aliases count at every use)
MAX_HPARAMS_DEPTH = 64


def usable_wall(w: Any) -> bool:
    return isinstance(w, float) and math.isfinite(w) and 0.0 < w < MAX_ABS_WALL_TIME


# -- start -----------------------------------------------------------------------------------------
def first_wall_time(run, event_files) -> float | None:
    """The first usable wall time of the run's first event file(s) (see the module docstring);
    None when none is readable yet (the events facet reports unreadable files itself)."""
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import event_pb2

    from ..reader.records import FramingStatus, iter_records

    for path in list(event_files)[:FIRST_FILES]:
        try:
            head = _head(run, path)
        except (OSError, NotRegularFileError, SourceError):
            continue
        status = FramingStatus()
        for n, (_, data) in enumerate(iter_records(io.BytesIO(head), 0, len(head), status)):
            if n >= FIRST_RECORDS:
                break
            try:
                wall = event_pb2.Event.FromString(data).wall_time
            except DecodeError:
                continue
            if usable_wall(wall):
                return wall
    return None


def _head(run, path) -> bytes:
    if run.location is None:
        from ..reader.events import open_event_file

        with open_event_file(os.fspath(path)) as f:  # refuses a FIFO or device
            return f.read(FIRST_RECORDS_BYTES)
    entry = run.location.entry(path)
    if entry is None:
        return b""
    # the bytes the identity check reads (one GET per version, shared with it)
    return run.location.head_bytes(path, min(entry.size, HEAD_HASH_BYTES), entry.etag)


# -- end -------------------------------------------------------------------------------------------
def note_wall_time(ck, batch) -> None:
    """Keep the latest usable point wall time delivered to this checkpoint's destination."""
    walls = [w for w in batch.scalars.wall_times if w > 0.0]
    for name in ("histograms", "images", "texts", "hparams", "audio"):
        walls.extend(p.wall_time for p in getattr(batch, name) if p.wall_time > 0.0)
    if walls:
        latest = max(walls)
        if usable_wall(float(latest)) and (ck.last_wall_time is None
                                           or latest > ck.last_wall_time):
            ck.last_wall_time = float(latest)


# -- idle ------------------------------------------------------------------------------------------
def newest_mtime(run, event_files) -> float | None:
    """The newest event file's modification time (objects: the listing's); None if none."""
    times = []
    for p in event_files:
        if run.location is not None:
            e = run.location.entry(p)
            if e is not None and e.mtime:
                times.append(float(e.mtime))
            continue
        try:
            times.append(os.stat(p).st_mtime)
        except OSError:
            pass
    return max(times) if times else None


def is_idle(newest: float | None, idle_after_s: float | None, now: float) -> bool:
    return idle_after_s is not None and newest is not None and now - newest >= idle_after_s


# -- hparams.yaml ----------------------------------------------------------------------------------
def hparams_file_params(run, follow_links: bool, problems: list[str]) -> dict[str, Any]:
    """The params of the run folder's ``hparams.yaml``, flattened like manifest params
    (``{"opt": {"lr": 0.1}}`` -> ``opt/lr``); redaction is the params facet's. {} when there is
    none; a bad one adds a warning to ``problems`` and gives {}."""
    path = run.path / HPARAMS_FILE
    try:
        raw = _read_hparams(run, path, follow_links)
    except FileNotFoundError:
        return {}
    except SourceError as e:
        problems.append(f"{e} (Lightning's hparams file: its params are not sent)")
        return {}
    if raw is None:
        return {}
    try:
        doc = _load_yaml(raw)
        _check_bounded(doc)
    except _BadHParams as e:
        problems.append(f"{path}: {e}; its params are not sent (the run's events still sync). "
                        "Fix or remove the file.")
        return {}
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        problems.append(f"{path}: holds a {type(doc).__name__}, not a mapping of names to "
                        "values; its params are not sent (the run's events still sync).")
        return {}
    return flatten_params(doc)


def _read_hparams(run, path, follow_links: bool) -> bytes | None:
    if run.location is not None:
        if run.location.entry(path) is None:
            return None
        return run.location.read_bytes(path, MAX_HPARAMS_BYTES)
    from ..runfiles import RunFiles

    # confined to the run (a link out of it is refused unless links may be followed)
    return RunFiles(run.path, follow_links).read_bounded(path, MAX_HPARAMS_BYTES,
                                                         "the hparams file")


class _BadHParams(ValueError):
    pass


def hparams_signature(run) -> str:
    """Stat-only part of the source signature for ``hparams.yaml`` (absent: "")."""
    path = run.path / HPARAMS_FILE
    if run.location is not None:
        e = run.location.entry(path)
        return f"y {e.size}:{e.etag}\n" if e is not None else ""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"y {st.st_size}:{st.st_mtime_ns}\n"


@functools.lru_cache(maxsize=1)
def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """``safe_load``'s loader (pure Python: a deep nesting is a RecursionError, caught,
        never a crash) plus what PyYAML's own ``yaml.dump`` writes for Lightning: a tuple
        (``!!python/tuple``) is a list; any other ``!!python/...`` value is its tag as text.
        Nothing is ever imported or constructed from a tag."""

    def as_list(loader, node):
        return loader.construct_sequence(node, deep=True)

    def as_text(loader, suffix, node):
        return f"!!python/{suffix}"

    Loader.add_constructor("tag:yaml.org,2002:python/tuple", as_list)
    Loader.add_multi_constructor("tag:yaml.org,2002:python/", as_text)
    return Loader


def _load_yaml(raw: bytes) -> Any:
    import yaml

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _BadHParams(f"not UTF-8 text (byte {e.start})") from None
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise _BadHParams(f"not valid YAML{where} ({what})") from None
    except RecursionError:
        raise _BadHParams("nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a timestamp out of range
        raise _BadHParams(f"a value PyYAML cannot read ({e})") from None


def _check_bounded(doc: Any) -> None:
    """Aliases let a small file name a huge (or endless) structure; flattening it would expand
    every use. Count what a walk visits, each alias use again."""
    budget = [MAX_HPARAMS_NODES]
    stack = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        budget[0] -= 1
        if budget[0] < 0:
            raise _BadHParams(f"more than {MAX_HPARAMS_NODES:,} values (counting each use of a "
                              "YAML alias)")
        if depth > MAX_HPARAMS_DEPTH:
            raise _BadHParams(f"nested deeper than {MAX_HPARAMS_DEPTH} levels")
        if isinstance(value, dict):
            for k, v in value.items():
                stack.append((k, depth + 1))
                stack.append((v, depth + 1))
        elif isinstance(value, (list, tuple, set)):
            stack.extend((v, depth + 1) for v in value)
