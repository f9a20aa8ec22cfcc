"""``tracelet export``: every point of a logdir as one tidy table, streamed to Parquet or CSV.

Columns (one row per point, in file order per run; within one reader batch the rows are grouped
by kind — sort by ``run, tag, step`` if you need a global order):

==========  =======  ===============================================================
column      type     meaning
==========  =======  ===============================================================
run         string   run path relative to the logdir (the folder's name for the logdir itself);
                     with several logdirs, prefixed by the logdir's name (:func:`run_prefixes`)
tag         string   TensorBoard tag; hparams rows use ``_hparams_/session_start_info``;
                     system rows the sidecar's metric name (``gpu/0/power_watts``)
kind        string   ``scalar`` | ``histogram`` | ``image`` | ``text`` | ``hparams`` | ``audio``
                     | ``system`` (sidecar rows, ``with_system``)
step        int64    TensorBoard step; system rows: whole seconds since the run's start
                     (manifest ``started_at``, else its first sample), as MLflow's ``system/*``
wall_time   float64  event wall time (system rows: the sample's time), unix seconds
value       float64  the scalar or system sample; null for every other kind
summary     string   null for scalars; otherwise a short description of the point:
                     histogram ``count=1000 min=-2.1 max=2.3 mean=0.01 buckets=30``
                     (TF2 tensor histograms carry no exact sum: their mean is estimated
                     from bucket centres and written ``mean~=``); image
                     ``png 64x48, 1234 bytes`` (``#k`` for the k-th image of a TF2 image
                     tensor); text: the text, cut to :data:`TEXT_SUMMARY_CHARS` characters
                     with ``…``; hparams: the hyperparameters as sorted JSON, secrets
                     redacted by :mod:`tracelet.redact` (``redact=False``: as written); audio
                     ``wav 16000 Hz, 32044 bytes`` (``#k``, ``: label`` where written)
==========  =======  ===============================================================

Memory stays flat whatever the size of the logdir: points travel from the reader in batches
(:data:`tracelet.reader.events.DEFAULT_BATCH_POINTS`) and are written batch by batch; at most one
Parquet row group (:data:`ROW_GROUP_ROWS` rows) is held. The table is written to a temporary file
beside the output and renamed over it only when complete, so a crash or Ctrl-C never leaves half a
table under the output's name. Output ``-`` streams CSV to a binary stream (standard output).

Damaged input never stops an export: intact records are exported, and every corrupt file,
truncated tail, skipped record and unreadable folder is listed in :attr:`ExportSummary.problems`
with its file and byte offset.

:func:`read_scalars` is the in-memory sibling for notebooks: a drop-in for tbparse's
``SummaryReader(logdir).scalars``.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .errors import NotRegularFileError, SourceError, UsageError
from .redact import DEFAULT as DEFAULT_REDACTOR, Redactor
from .reader import (AUDIO, HISTOGRAM, HPARAMS, IMAGE, KINDS, SCALAR, TEXT, Batch, EventFileReader,
                     HistogramPoint, discover_runs, root_run_name)
from .reader.points import TagTable, TypedScalars
from .reader.events import unreadable_message

STDOUT = "-"  # the output name that streams CSV to standard output
SYSTEM = "system"  # the kind of sidecar rows (``with_system``)

FORMATS = {".parquet": "parquet", ".csv": "csv"}
ROW_GROUP_ROWS = 128 * 1024  # rows per Parquet row group: big enough to compress well, small
#                              enough (~10 MB of scalars) that memory stays flat
TEXT_SUMMARY_CHARS = 200  # text points are summarised, not stored: the table stays scannable
HPARAMS_TAG = "_hparams_/session_start_info"  # the tag TensorBoard itself stores hparams under


KIND_NAMES = KINDS + (SYSTEM,)  # the kind column's dictionary: kind number = index here


def _schema(dictionary: bool = False):
    """The export schema; ``dictionary``: run, tag and kind as dictionary columns, the form the
    tables are built in (numbers into a few names, no string per row). The files say ``string``
    for them: Parquet stores them dictionary-encoded with plain string type (the Arrow schema is
    not stored), CSV writes the names."""
    import pyarrow as pa

    text = pa.dictionary(pa.int32(), pa.string()) if dictionary else pa.string()
    return pa.schema([
        ("run", text),
        ("tag", text),
        ("kind", text),
        ("step", pa.int64()),
        ("wall_time", pa.float64()),
        ("value", pa.float64()),
        ("summary", pa.string()),
    ])


@dataclass
class ExportSummary:
    """What :func:`export_logdir` wrote, and what it could not read."""

    output: Path | str  # "-": standard output
    format: str
    runs: int = 0
    files: int = 0
    records: int = 0
    points: dict[str, int] = field(default_factory=lambda: {k: 0 for k in KINDS})
    other: dict[str, int] = field(default_factory=dict)  # values read but not exported (graphs…)
    problems: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def total_points(self) -> int:
        return sum(self.points.values())

    def render(self) -> str:
        kinds = ", ".join(f"{n:,} {k}" for k, n in self.points.items() if n) or "no points"
        text = (f"exported {self.total_points:,} points ({kinds}) from {self.runs} run"
                f"{'' if self.runs == 1 else 's'} ({self.files} event file"
                f"{'' if self.files == 1 else 's'}) to "
                f"{'standard output' if self.output == STDOUT else self.output} in "
                f"{self.elapsed_s:.1f} s")
        if self.other:
            text += "\nnot exported (no tabular form): " + ", ".join(
                f"{k} {n:,}" for k, n in sorted(self.other.items()))
        if self.problems:
            n = len(self.problems)
            text += (f"\n{n} problem{'' if n == 1 else 's'} in the input (see the warnings); "
                     "every intact record was exported")
        return text

    def to_dict(self) -> dict:
        return {"output": str(self.output), "format": self.format, "runs": self.runs,
                "files": self.files, "records": self.records, "points": dict(self.points),
                "other": dict(self.other), "problems": list(self.problems),
                "elapsed_s": round(self.elapsed_s, 3)}


# -- shared with `tracelet inspect`: resolving a logdir and reading files with problem notes ------

def resolve_logdir(path: str | os.PathLike, *, allow_file: bool = False):
    """Check ``path`` and return ``(Discovery, None)`` for a folder or ``(None, file)`` for a file.

    Raises :class:`UsageError` for a missing path, a file when ``allow_file`` is false, and a
    folder holding no event files at any depth. ``path`` may be an object-store URL
    (``s3://bucket/runs``): its runs come from one listing; a URL naming one object is a file.
    """
    from .storage import is_object_url

    if is_object_url(path):
        return _resolve_objects(str(path), allow_file)
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{p}: no such file or folder. Give a TensorBoard logdir: a folder "
                         "holding events.out.tfevents.* files, directly or in subfolders.")
    if p.is_file():
        if allow_file:
            return None, p
        raise UsageError(f"{p} is a file; expected a logdir folder holding event files "
                         f"(try its folder: {p.parent}).")
    if not p.is_dir():
        raise UsageError(f"{p}: not a folder; expected a TensorBoard logdir.")
    discovery = discover_runs(p)
    if not any(r.event_files for r in discovery.runs):
        detail = f" ({'; '.join(discovery.problems)})" if discovery.problems else ""
        raise UsageError(f"{p}: no event files found; expected files named "
                         f"events.out.tfevents.* in it or its subfolders{detail}.")
    return discovery, None


def _resolve_objects(url: str, allow_file: bool):
    from .storage import open_location

    loc = open_location(url)
    discovery = discover_runs(loc)
    if any(r.event_files for r in discovery.runs):
        return discovery, None
    if loc.head(loc.root) is not None:  # the URL names one object
        if allow_file:
            return None, loc.root
        raise UsageError(f"{url} is an object (a file); expected the prefix (folder) that holds "
                         f"event files (try {loc.root.parent}).")
    detail = f" ({'; '.join(discovery.problems)})" if discovery.problems else ""
    raise UsageError(f"{url}: no event files found; expected objects named "
                     f"events.out.tfevents.* under it{detail}.")


class FileScan:
    """Read one event file batch by batch and describe what went wrong, with byte offsets.

    Iterate :meth:`batches`; afterwards :attr:`records`, :attr:`size_bytes` and
    :meth:`problems` describe the file. An unreadable file is a problem, not an exception.
    """

    def __init__(self, path: str | os.PathLike, location=None, typed_scalars: bool = False):
        from .storage import ObjectPath

        self.path = path if isinstance(path, ObjectPath) else Path(path)
        # an object store: the run's location (its listing has the size), or, for a URL that
        # names one object, a location rooted at it (asked with one HEAD)
        self.location = location
        # typed_scalars: the reader's TypedScalars (export's Arrow columns), not lists
        self.reader = EventFileReader(self.path, typed_scalars=typed_scalars)
        self.size_bytes = 0
        self.records = 0
        self.points = 0
        self.read_error = ""
        self._skipped_ranges: list[tuple[int, int, int]] = []  # (start, end, records skipped)

    def batches(self) -> Iterator[Batch]:
        try:
            # The signpost: bytes appended while we read wait for the next export.
            self.size_bytes = self._open_object() if self._is_object() else \
                os.stat(self.path).st_size
            for batch in self.reader.batches(end=self.size_bytes):
                self.records += batch.records
                self.points += batch.points
                if batch.skipped_records:
                    self._skipped_ranges.append(
                        (batch.start_offset, batch.end_offset, batch.skipped_records))
                yield batch
        except NotRegularFileError as e:
            self.read_error = str(e)
        except OSError as e:
            self.read_error = unreadable_message(self.path, e, self.reader.status.offset,
                                                 "the rest of the file was skipped")
        except SourceError as e:  # an object store: deleted, rewritten or unreachable
            self.read_error = (f"{self.path}: cannot read ({e}) at byte "
                               f"{self.reader.status.offset}; the rest of the file was skipped")

    def _is_object(self) -> bool:
        return not isinstance(self.path, Path)

    def _open_object(self) -> int:
        """Size and version of the object; the reader then reads it with ranged GETs."""
        from .storage import open_location

        loc = self.location
        entry = loc.entry(self.path) if loc is not None else None
        if entry is None:
            loc = open_location(self.path) if loc is None else loc
            entry = loc.head(self.path)
        if entry is None:
            raise SourceError(f"{self.path}: no longer in the bucket")
        self.reader._opener = lambda p: loc.open(self.path, entry.size, entry.etag)
        return entry.size

    def state(self) -> str:
        """A short label for tables: ``ok``, ``corrupt at byte N``, ``incomplete tail``…"""
        status, labels = self.reader.status, []
        if self.read_error:
            labels.append("unreadable")
        if status.corrupt_offset is not None:
            labels.append(f"corrupt at byte {status.corrupt_offset}")
        if status.pending_bytes:
            labels.append(f"incomplete tail at byte {status.offset}")
        skipped = sum(k for _, _, k in self._skipped_ranges)
        if skipped:
            labels.append(f"{skipped} record{'' if skipped == 1 else 's'} skipped")
        return ", ".join(labels) or "ok"

    def problems(self) -> list[str]:
        status, out = self.reader.status, []
        if self.read_error:
            out.append(self.read_error)
        if status.corrupt_offset is not None:
            out.append(
                f"{self.path}: corrupt at byte {status.corrupt_offset}: {status.corrupt_reason}; "
                f"{self.records:,} records before it were read, the remaining "
                f"{max(0, self.size_bytes - status.corrupt_offset):,} bytes skipped")
        if status.pending_bytes:
            out.append(
                f"{self.path}: incomplete record at byte {status.offset} (the last "
                f"{status.pending_bytes:,} bytes): a truncated tail, or a writer still appending; "
                "not read")
        if self._skipped_ranges:
            n = sum(k for _, _, k in self._skipped_ranges)
            causes = []
            if status.bad_data_crc:
                causes.append(f"{status.bad_data_crc} payload CRC mismatch")
            if self.reader.unparsable:
                causes.append(f"{self.reader.unparsable} not an Event")
            if self.reader.refused:
                causes.append(f"{self.reader.refused} with a malformed value")
            first, last = self._skipped_ranges[0], self._skipped_ranges[-1]
            where = (f"between bytes {first[0]} and {first[1]}" if len(self._skipped_ranges) == 1
                     else f"between bytes {first[0]} and {last[1]}")
            details = self.reader.skip_details()
            out.append(f"{self.path}: {n:,} record{'' if n == 1 else 's'} skipped {where} "
                       f"({', '.join(causes)}{': ' + details if details else ''}); the records "
                       "around them were read")
        return out


# -- export ---------------------------------------------------------------------------------------

def _fmt(x: float) -> str:
    return f"{x:.6g}"


def histogram_summary(h: HistogramPoint) -> str:
    """``count=… min=… max=… mean=… buckets=…`` for one histogram."""
    if h.num is not None:  # TF1/PyTorch `histo`: exact statistics come with the point
        count = h.num
        mean = f"mean={_fmt(h.sum / h.num)}" if h.num else "mean=nan"
        lo, hi = h.min, h.max
    else:  # TF2 tensor histogram: buckets only
        count = float(sum(h.counts))
        nonzero = [i for i, c in enumerate(h.counts) if c]
        lo = h.lefts[nonzero[0]] if nonzero else float("nan")
        hi = h.rights[nonzero[-1]] if nonzero else float("nan")
        est = (sum(c * (a + b) / 2 for a, b, c in zip(h.lefts, h.rights, h.counts)) / count
               if count else float("nan"))
        mean = f"mean~={_fmt(est)}"
    return f"count={_fmt(count)} min={_fmt(lo)} max={_fmt(hi)} {mean} buckets={len(h.counts)}"


def _text_summary(text: str) -> str:
    return text if len(text) <= TEXT_SUMMARY_CHARS else text[:TEXT_SUMMARY_CHARS] + "…"


def batch_to_table(batch: Batch, run: str, redactor: Redactor = DEFAULT_REDACTOR):
    """All points of one batch as a table with the export schema (see the module docstring) in
    its dictionary form (:func:`_schema`).

    Scalars come as :class:`TypedScalars` (a reader made with ``typed_scalars=True``, as
    export's :class:`FileScan`): their typed buffers become the step/wall_time/value columns as
    they are, their tag numbers the tag column's indices. Columns are built from raw buffers:
    ``pa.array`` and ``pa.scalar`` import pandas (~0.15 s) to check their input, which
    ``tracelet export`` never needs."""
    import pyarrow as pa

    schema = _schema(dictionary=True)
    s: TypedScalars = batch.scalars
    table = s.table
    parts = []
    n = s.n
    if n:
        parts.append(pa.Table.from_arrays([
            _repeat(run, n), _dictionary(s.ids, n, _TAG_NAMES.of(table)), _kind(SCALAR, n),
            _buffer(pa.int64(), s.steps, n), _buffer(pa.float64(), s.wall_times, n),
            _buffer(pa.float64(), s.values, n), pa.nulls(n, pa.string()),
        ], schema=schema))
    rows: list[tuple] = []  # (tag, kind, step, wall_time, summary): the rarer kinds
    for h in batch.histograms:
        rows.append((h.tag, HISTOGRAM, h.step, h.wall_time, histogram_summary(h)))
    for im in batch.images:
        desc = f"{im.format} {im.width}x{im.height}, {len(im.encoded)} bytes"
        if im.index:
            desc += f" #{im.index}"
        rows.append((im.tag, IMAGE, im.step, im.wall_time, desc))
    for t in batch.texts:
        rows.append((t.tag, TEXT, t.step, t.wall_time, _text_summary(t.text)))
    for a in batch.audio:
        desc = f"{a.format} {a.sample_rate:g} Hz, {len(a.encoded)} bytes"
        if a.index:
            desc += f" #{a.index}"
        if a.label:
            desc += f": {_text_summary(a.label)}"
        rows.append((a.tag, AUDIO, a.step, a.wall_time, desc))
    for hp in batch.hparams:
        rows.append((HPARAMS_TAG, HPARAMS, hp.step, hp.wall_time,
                     json.dumps(redactor.params(hp.hparams), sort_keys=True, default=str)))
    if rows:
        tags, kinds, steps, walls, summaries = zip(*rows)
        m = len(rows)
        tag_ids = array("i", map(table.id, tags))  # may add tags: the dictionary is read after
        parts.append(pa.Table.from_arrays([
            _repeat(run, m), _dictionary(tag_ids, m, _TAG_NAMES.of(table)),
            _dictionary(array("i", map(KIND_NAMES.index, kinds)), m, _kind_names()),
            _numbers(steps, "int64"), _numbers(walls, "float64"), pa.nulls(m, pa.float64()),
            _strings(summaries),
        ], schema=schema))
    if not parts:
        return schema.empty_table()
    return parts[0] if len(parts) == 1 else pa.concat_tables(parts)


def _numbers(values, dtype: str):
    import numpy as np
    import pyarrow as pa

    data = np.asarray(values, dtype=dtype)
    return pa.Array.from_buffers(pa.from_numpy_dtype(data.dtype), len(data),
                                 [None, pa.py_buffer(data)])


def _buffer(type_, data, n: int):
    """The first ``n`` items of a typed buffer (an ``array.array``) as an Arrow column, no copy."""
    import pyarrow as pa

    return pa.Array.from_buffers(type_, n, [None, pa.py_buffer(data)])


class _Names:
    """The dictionary (Arrow string array) of a :class:`TagTable`, rebuilt only when it grew: a
    column's dictionary stays the same object from batch to batch, so Parquet keeps one
    dictionary page per column chunk instead of falling back to plain encoding."""

    __slots__ = ("table", "size", "array")

    def __init__(self):
        self.table, self.size, self.array = None, -1, None

    def of(self, table: TagTable):
        names = table.names
        if table is not self.table or len(names) != self.size:
            encoded = [v.encode("utf-8", "surrogatepass") for v in names]
            self.table, self.size = table, len(names)
            self.array = _string_column([len(e) for e in encoded], b"".join(encoded), len(names))
        return self.array


_TAG_NAMES = _Names()  # tags of the file being exported (system rows: of the sidecar part)
_KIND_TABLE = TagTable()
for _k in KIND_NAMES:
    _KIND_TABLE.id(_k)
_KIND_NAMES = _Names()


def _kind_names():
    return _KIND_NAMES.of(_KIND_TABLE)


def _dictionary(ids, n: int, names):
    """A dictionary column: ``n`` numbers from the buffer ``ids`` into ``names`` (an Arrow string
    array)."""
    import pyarrow as pa

    return pa.DictionaryArray.from_buffers(pa.dictionary(pa.int32(), pa.string()), n,
                                           [None, pa.py_buffer(ids)], names)


def _kind(kind: str, n: int):
    import numpy as np

    return _dictionary(np.full(n, KIND_NAMES.index(kind), dtype=np.int32), n, _kind_names())


def _string_column(lengths, data: bytes, n: int):
    """A ``string`` column from each row's byte length and the rows' bytes joined."""
    import numpy as np
    import pyarrow as pa

    # The schema's ``string`` (32-bit offsets) unless a batch's text passes 2 GiB: a column of
    # another type would be cast by Arrow, which imports pyarrow.compute.
    big = len(data) >= 2**31
    offsets = np.zeros(n + 1, dtype=np.int64 if big else np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(pa.large_string() if big else pa.string(), n,
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _strings(values):
    """A string column built from raw buffers: the distinct values are encoded once and the
    rows' bytes joined in C."""
    import numpy as np

    encoded = {v: v.encode("utf-8", "surrogatepass") for v in dict.fromkeys(values)}
    size = {v: len(e) for v, e in encoded.items()}
    lengths = np.fromiter(map(size.__getitem__, values), dtype=np.int64, count=len(values))
    return _string_column(lengths, b"".join(map(encoded.__getitem__, values)), len(values))


def _repeat(value: str, n: int):
    """A dictionary column of one value ``n`` times (the run column)."""
    import numpy as np
    import pyarrow as pa

    encoded = value.encode("utf-8", "surrogatepass")
    names = _string_column([len(encoded)], encoded, 1)
    return pa.DictionaryArray.from_buffers(pa.dictionary(pa.int32(), pa.string()), n,
                                           [None, pa.py_buffer(np.zeros(n, dtype=np.int32))],
                                           names)


class _TableSink:
    """Streams tables to ``tmp``: Parquet row group by row group, or CSV batch by batch."""

    def __init__(self, fmt: str, tmp: Path | None, stream=None):
        import pyarrow as pa

        self.fmt, self.schema = fmt, _schema(dictionary=True)
        self._pending: list = []
        self._pending_rows = 0
        self._file = None
        if stream is not None:  # CSV to an open binary stream (stdout): not ours to close
            import pyarrow.csv as pacsv

            self._writer = pacsv.CSVWriter(stream, self.schema)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            # Dictionary pages only where values repeat: on floats they cost time and save
            # nothing. Snappy: Parquet's usual codec (every reader has it), cheaper than zstd.
            # store_schema=False: readers see run/tag/kind as the strings they are, not as
            # Arrow dictionary columns (still dictionary-encoded in the file)
            self._writer = pq.ParquetWriter(tmp, self.schema, compression="snappy",
                                            use_dictionary=["run", "tag", "kind"],
                                            store_schema=False)
        else:
            import pyarrow.csv as pacsv

            self._file = pa.OSFile(str(tmp), "wb")
            self._writer = pacsv.CSVWriter(self._file, self.schema)

    def write(self, table) -> None:
        if not table.num_rows:
            return
        if self.fmt == "csv":
            self._writer.write_table(table)
            return
        # ParquetWriter makes one row group per call: gather small batches into one.
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=1 << 30)
            self._pending, self._pending_rows = [], 0

    def close(self) -> None:
        if self.fmt == "parquet":
            self._flush()
            self._writer.close()
        else:
            self._writer.close()
            if self._file is not None:
                self._file.close()

    def abort(self) -> None:
        try:
            self._writer.close()
            if self._file is not None:
                self._file.close()
        except Exception:  # noqa: BLE001 - the temp file is deleted next; its state is moot
            pass


def _check_output(output: str | os.PathLike) -> tuple[Path, str]:
    out = Path(output)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(f"{out}: unknown output format '{out.suffix or '(no extension)'}'; "
                         "name the output *.parquet or *.csv.")
    if out.is_dir():
        raise UsageError(f"{out} is a folder; give a file name ending in .parquet or .csv.")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{out}: cannot create its folder {out.parent} ({e.strerror or e}); "
                         "choose a writable output path.") from e
    return out, fmt


def export_logdir(logdir: str | os.PathLike | list, output: str | os.PathLike,
                  redact: bool = True, with_system: bool = False, stream=None) -> ExportSummary:
    """Write every point of every run under ``logdir`` (one path, or a list of them) to
    ``output`` (``.parquet`` or ``.csv``; ``"-"``: CSV to ``stream``, default standard output).

    hparams rows pass through the redaction rule of ``tracelet sync`` unless ``redact`` is false.
    ``with_system`` adds each run's sidecar samples as ``system`` rows (see the module
    docstring). With several logdirs, each run's name is prefixed by its logdir's
    (:func:`run_prefixes`); a logdir given twice is read once.

    Streams batch by batch (memory stays flat), writes a temporary file beside ``output`` and
    renames it into place when complete. Damaged files do not stop the export: their intact
    records are written and the damage is listed in :attr:`ExportSummary.problems`.

    Raises :class:`UsageError` for a missing logdir, a file given instead of a folder, a folder
    without event files, an unknown output extension or an unwritable output; every logdir is
    checked before anything is written.
    """
    from ._fs import _fsync_dir, _unlink_quietly

    started = time.monotonic()
    logdirs = _unique_logdirs([logdir] if isinstance(logdir, (str, os.PathLike)) else logdir)
    found = [resolve_logdir(ld)[0] for ld in logdirs]
    prefixes = run_prefixes(logdirs)
    to_stdout = os.fspath(output) == STDOUT
    if to_stdout:
        out, fmt = STDOUT, "csv"
    else:
        out, fmt = _check_output(output)
    summary = ExportSummary(output=out, format=fmt,
                            problems=[p for d in found for p in d.problems])
    if with_system:
        summary.points[SYSTEM] = 0
    redactor = DEFAULT_REDACTOR if redact else Redactor(False)
    tmp = None
    if to_stdout:
        import sys

        sink = _TableSink(fmt, None, stream if stream is not None else sys.stdout.buffer)
    else:
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        try:
            sink = _TableSink(fmt, tmp)
        except OSError as e:
            raise UsageError(f"{out}: cannot write there ({e.strerror or e}); "
                             "choose a writable output path.") from e
    try:
        for discovery, prefix in zip(found, prefixes):
            for run in discovery.runs:
                name = _row_run_name(run, discovery.logdir, prefix)
                parts = _sidecar_parts(run, summary.problems) if with_system else []
                if not run.event_files and not parts:
                    continue
                summary.runs += 1
                for path in run.event_files:
                    summary.files += 1
                    scan = FileScan(path, run.location, typed_scalars=True)
                    for batch in scan.batches():
                        sink.write(batch_to_table(batch, name, redactor))
                        for kind, n in batch.point_counts().items():
                            summary.points[kind] += n
                        for other, n in batch.other.items():
                            summary.other[other] = summary.other.get(other, 0) + n
                    summary.records += scan.records
                    summary.problems.extend(scan.problems())
                if parts:
                    for table in _system_tables(run, parts, name, summary.problems):
                        sink.write(table)
                        summary.points[SYSTEM] += table.num_rows
        sink.close()
        if tmp is not None:
            with open(tmp, "rb+") as f:  # durable before it takes the output's name
                os.fsync(f.fileno())
            os.replace(tmp, out)
    except BaseException:
        sink.abort()
        if tmp is not None:
            _unlink_quietly(tmp)
        raise
    if tmp is not None:
        _fsync_dir(out.parent)
    summary.elapsed_s = time.monotonic() - started
    return summary


def _logdir_key(ld) -> str:
    from .storage import is_object_url

    text = os.fspath(ld)
    return text.rstrip("/") if is_object_url(text) else os.path.realpath(text)


def _unique_logdirs(logdirs) -> list:
    if not logdirs:
        raise UsageError("give at least one LOGDIR")
    seen: dict[str, object] = {}
    for ld in logdirs:
        seen.setdefault(_logdir_key(ld), ld)
    return list(seen.values())


def run_prefixes(logdirs: list) -> list[str | None]:
    """What tells the runs of several logdirs apart in the ``run`` column: nothing for one
    logdir; else each logdir's folder name (``/data/a/runs`` -> ``runs``), or, where two
    logdirs share a name, the logdir as given (``/data/a/runs``, normalised)."""
    from .storage import is_object_url

    if len(logdirs) < 2:
        return [None] * len(logdirs)
    names = []
    for ld in logdirs:
        text = os.fspath(ld)
        names.append(text.rstrip("/").rsplit("/", 1)[-1] if is_object_url(text)
                     else root_run_name(text))
    out: list[str | None] = []
    for ld, name in zip(logdirs, names):
        text = os.fspath(ld)
        if names.count(name) > 1:
            name = text.rstrip("/") if is_object_url(text) else os.path.normpath(text)
        out.append(name)
    return out


def _row_run_name(run, root, prefix: str | None) -> str:
    if prefix is None:
        return run.name
    if run.path == root:  # the logdir itself is the run: its name is the prefix already
        return prefix
    return f"{prefix}/{run.name}"


def _sidecar_parts(run, problems: list[str]) -> list:
    """The run's sidecar parts (links out of the run reported and skipped, as by sync)."""
    try:
        if run.location is not None:
            from .storage import runs as objects

            return objects.sidecar_parts(run)
        from .runfiles import RunFiles

        return RunFiles(run.path).sidecar_parts(problems)
    except (OSError, SourceError) as e:
        problems.append(f"{run.path}: sidecar parts not listed ({e}); its system rows are not "
                        "exported")
        return []


def _run_start(run, problems: list[str]) -> float | None:
    from .manifest import manifest_time

    if not run.has_manifest:
        return None
    try:
        if run.location is not None:
            from .storage import runs as objects

            m = objects.manifest(run, None, True, problems, validate=False)
        else:
            from .manifest import load_manifest

            m = load_manifest(run.path, problems, validate=False)
    except SourceError as e:
        problems.append(f"{e} (system rows are counted from the run's first sample)")
        return None
    return manifest_time((m or {}).get("started_at")) if isinstance(m, dict) else None


def _system_tables(run, parts: list, name: str, problems: list[str]):
    """One table per readable sidecar part: ``kind=system`` rows (module docstring). A part
    that cannot be read is a problem, never the end of the export."""
    import numpy as np
    import pyarrow as pa

    from .sidecar import read_part

    start = _run_start(run, problems)
    schema = _schema(dictionary=True)
    for part in parts:
        notes: list[str] = []
        try:
            if run.location is not None:
                from .storage import runs as objects

                table = objects.read_part(run, part, notes)
            else:
                from .runfiles import RunFiles

                fd = RunFiles(run.path).open(part)  # checked: a link swapped in is refused
                with os.fdopen(fd, "rb") as f:
                    table = read_part(part, notes, f)
        except FileNotFoundError:
            continue  # removed since listing
        except (OSError, SourceError) as e:
            problems.append(f"{e}" if isinstance(e, SourceError) else
                            f"{part}: cannot read ({e.strerror or e}); its system rows are not "
                            "exported")
            continue
        problems.extend(notes)
        n = table.num_rows
        if not n:
            continue
        ts = table.column("timestamp").to_numpy()
        if start is None:
            start = float(ts.min())
        steps = np.maximum(np.floor(ts - start), 0).astype("int64")
        metrics = TagTable()
        ids = array("i", map(metrics.id, table.column("name").to_pylist()))
        yield pa.Table.from_arrays([
            _repeat(name, n), _dictionary(ids, n, _TAG_NAMES.of(metrics)), _kind(SYSTEM, n),
            _numbers(steps, "int64"), _numbers(ts, "float64"),
            _numbers(table.column("value").to_numpy(), "float64"), pa.nulls(n, pa.string()),
        ], schema=schema)


# -- read_scalars: tbparse drop-in ---------------------------------------------------------------

SCALAR_COLUMNS = ["step", "tag", "value", "wall_time", "run"]


def read_scalars(logdir: str | os.PathLike):
    """Every scalar under ``logdir`` as a DataFrame: a drop-in for tbparse's
    ``SummaryReader(logdir).scalars``, plus ``wall_time`` and ``run`` columns.

    Same rows, values and order as tbparse: columns ``step`` (int64), ``tag`` (pandas string),
    ``value`` (float64), then ``wall_time`` (float64, unix s) and ``run`` (run path relative to
    ``logdir``, ``.`` for the logdir itself; PyTorch's ``add_hparams`` child folder belongs to
    its parent run); sorted stably by ``tag, step`` with files concatenated in tbparse's
    depth-first, name-sorted order. ``logdir`` may also be a single event file.

    Where it differs from tbparse, on purpose: TF2 tensor scalars (``tf.summary.scalar``) are
    scalars here (tbparse lists them under ``.tensors``); no points are dropped after a
    ``SessionLog.START`` restart (TensorBoard's accumulator purges them); an empty logdir gives
    an empty frame with the columns above instead of one without columns; damaged files are read
    up to the damage and each problem is reported with ``warnings.warn`` (file, byte offset).
    """
    import pandas as pd
    import pyarrow as pa

    discovery, single = resolve_logdir(logdir, allow_file=True)
    if single is not None:
        root, sources = single.parent, [(root_run_name(single.parent), single, None)]
        problems: list[str] = []
    else:
        root = discovery.logdir
        sources = [(run.name, p, run.location) for run in discovery.runs for p in run.event_files]
        problems = list(discovery.problems)
    # tbparse walks sorted os.listdir depth-first: ordering by path components gives that order.
    sources.sort(key=lambda rp: rp[1].relative_to(root).parts)
    tables = []
    for run, path, location in sources:
        scan = FileScan(path, location)
        for batch in scan.batches():
            n = len(batch.scalars)
            if n:
                t = batch.scalars.to_arrow()
                tables.append(t.append_column("run", pa.repeat(pa.scalar(run, pa.string()), n)))
        problems.extend(scan.problems())
    for p in problems:
        warnings.warn(p, RuntimeWarning, stacklevel=2)
    if tables:
        df = pa.concat_tables(tables).select(SCALAR_COLUMNS).to_pandas()
    else:
        df = pd.DataFrame({"step": pd.Series([], dtype="int64"), "tag": pd.Series([], dtype="str"),
                           "value": pd.Series([], dtype="float64"),
                           "wall_time": pd.Series([], dtype="float64"),
                           "run": pd.Series([], dtype="str")})
    return df.sort_values(["tag", "step"], kind="stable", ignore_index=True)
