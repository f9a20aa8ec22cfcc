"""System-metrics sidecar: immutable parquet parts in ``<run>/sysmetrics/part-NNNNNN.parquet``.

Long format (README "Training side"): ``timestamp`` float64 unix seconds, ``name`` string with its unit in it
(``cpu/utilization_percent``, ``gpu/0/power_watts`` ...), ``value`` float64. A part is written to
a temporary name and renamed, so a part that exists is complete and never changes: the sync
engine tracks parts done by name.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from ._fs import atomic_write_bytes
from .errors import SourceError

from .rundir import SIDECAR_DIR
PART_RE = re.compile(r"^part-(\d{6,})\.parquet$")
SCHEMA = pa.schema([("timestamp", pa.float64()), ("name", pa.string()), ("value", pa.float64())])


def list_parts(run_dir: str | os.PathLike) -> list[Path]:
    """Complete parts of a run, in write order (temp files are never listed)."""
    folder = Path(run_dir) / SIDECAR_DIR
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise SourceError(f"{folder}: cannot list sidecar parts ({e.strerror}).") from e
    return sorted((folder / n for n in names if PART_RE.match(n)), key=lambda p: p.name)


def part_path(run_dir: str | os.PathLike, index: int) -> Path:
    """Where part number ``index`` (1-based) of a run lives."""
    return Path(run_dir) / SIDECAR_DIR / f"part-{index:06d}.parquet"


def next_part_index(run_dir: str | os.PathLike) -> int:
    """1 + the highest part number already in the run (1 for a new run), so a resumed writer
    never overwrites a part the sync engine may already have marked done."""
    parts = list_parts(run_dir)
    return int(PART_RE.match(parts[-1].name).group(1)) + 1 if parts else 1


def write_part(
    run_dir: str | os.PathLike,
    index: int,
    timestamps: list[float],
    names: list[str],
    values: list[float],
) -> Path:
    """Write one immutable part with :data:`SCHEMA` and return its path.

    The part is encoded in memory and published with :func:`tracelet._fs.atomic_write_bytes`
    (temp name -> fsync -> rename), so :func:`list_parts` never sees a half-written part. An
    existing part is never replaced: ``FileExistsError`` if ``index`` is taken.
    """
    import pyarrow.parquet as pq

    path = part_path(run_dir, index)
    if path.exists():
        raise FileExistsError(f"{path}: sidecar part already exists; parts are immutable.")
    table = pa.Table.from_arrays(
        [_float64_array(timestamps), _string_array(names), _float64_array(values)], schema=SCHEMA
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path


# Arrays are built from raw buffers because ``pa.array`` imports pandas (when installed) to
# check its input: ~1 s of CPU and tens of MB in every training process that records metrics.
def _float64_array(values: list[float]) -> pa.Array:
    data = np.asarray(values, dtype=np.float64)
    return pa.Array.from_buffers(pa.float64(), len(data), [None, pa.py_buffer(data)])


def _string_array(strings: list[str]) -> pa.Array:
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))])


# Parts are read from a folder anyone may write to: bounds and types are checked from the footer
# before any data is decoded (a few bytes of RLE can claim a billion rows).
MAX_PART_ROWS = 1_000_000  # the recorder writes ~60 samples x tens of metrics per part
MAX_NAME_BYTES = 256  # a metric name is a short path; destinations cap keys near this (MLflow 250)
_MAX_ABS_TIMESTAMP = 1e12  # seconds, as for event wall times (reader.points.MAX_ABS_WALL_TIME)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


_COLUMN_TYPES = {"timestamp": (_is_number, "a number (float64 unix seconds)"),
                 "name": (_is_text, "a string"), "value": (_is_number, "a number (float64)")}


def read_part(path: str | os.PathLike, problems: list[str] | None = None,
              source=None) -> pa.Table:
    """One part as an Arrow table with :data:`SCHEMA` (extra columns dropped, types cast).

    A part is untrusted input. It is skipped whole (:class:`SourceError` naming the part, and
    the column where one is at fault) when it is not a readable parquet file, lacks a column,
    has a column of another kind (``timestamp``/``value`` must be integer, floating or decimal;
    ``name`` a string) or claims more than :data:`MAX_PART_ROWS` rows. Rows that cannot be a
    point -- a null, NaN/±Inf or beyond ±1e12 s timestamp, a null, empty or over
    :data:`MAX_NAME_BYTES` name, a null value -- are dropped, counted in one line appended to
    ``problems``; NaN and ±Inf values are kept, as for scalars.

    ``source``: an open binary file to read instead of opening ``path`` (the sync engine passes
    the descriptor it checked to lie inside the run, :meth:`tracelet.runfiles.RunFiles.open`);
    ``path`` then only names the part in messages.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    cols = ["timestamp", "name", "value"]
    try:
        where = source if source is not None else path
        footer = pq.ParquetFile(where)  # the footer only, so far
        schema, rows = footer.schema_arrow, footer.metadata.num_rows
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError with little context
        raise SourceError(f"{path}: unreadable sidecar part ({e}); skipped. Delete or restore it.") from e
    missing = [c for c in cols if c not in schema.names]
    if missing:
        raise SourceError(f"{path}: sidecar part lacks columns {missing}; skipped.")
    for c in cols:
        if len(schema.get_all_field_indices(c)) != 1:
            raise SourceError(f"{path}: sidecar part has {len(schema.get_all_field_indices(c))} "
                              f"columns named '{c}'; skipped. Delete or restore it.")
        ok, want = _COLUMN_TYPES[c]
        typ = schema.field(c).type
        if not (ok(typ) or pa.types.is_null(typ)):
            raise SourceError(f"{path}: sidecar part column '{c}' is {typ}, not {want}; part "
                              "skipped (no row of it synced). Delete or rewrite it.")
    if rows > MAX_PART_ROWS:
        raise SourceError(f"{path}: sidecar part claims {rows:,} rows, more than the "
                          f"{MAX_PART_ROWS:,} a part may hold; skipped (not read). Delete it "
                          "or split it into parts.")
    try:
        # names stay dictionary-encoded until checked: a long name repeated in a dictionary page
        # costs its length once here, not once per row
        table = pq.ParquetFile(where, read_dictionary=["name"]).read(columns=cols,
                                                                     use_threads=False)
        ts = pc.cast(table.column("timestamp"), pa.float64())
        values = pc.cast(table.column("value"), pa.float64())
    except Exception as e:  # damaged pages, a decimal beyond float64 ...
        raise SourceError(f"{path}: unreadable sidecar part ({e}); skipped. Delete or restore it.") from e
    names = table.column("name")
    bad_ts = pc.invert(pc.fill_null(pc.less(pc.abs(ts), _MAX_ABS_TIMESTAMP), False))  # NaN too
    bad_value = pc.is_null(values)
    bad_name = pc.invert(pc.fill_null(_name_ok(names), False))
    bad = pc.or_(pc.or_(bad_ts, bad_name), bad_value)
    dropped = pc.sum(bad).as_py() or 0
    if dropped:
        table = pa.table({"timestamp": ts, "name": names, "value": values}).filter(pc.invert(bad))
        ts, names, values = (table.column(c) for c in cols)
        if problems is not None:
            why = ", ".join(f"{what} {n:,}" for what, n in (
                ("null, NaN/Inf or beyond ±1e12 s timestamp", pc.sum(bad_ts).as_py() or 0),
                (f"null, empty or over {MAX_NAME_BYTES}-byte name", pc.sum(bad_name).as_py() or 0),
                ("null value", pc.sum(bad_value).as_py() or 0)) if n)
            problems.append(f"{path}: {dropped:,} of {rows:,} sidecar rows dropped ({why}); the "
                            "other rows were synced.")
    return pa.Table.from_arrays([ts, pc.cast(names, pa.string()), values], schema=SCHEMA)


def _name_ok(names: pa.ChunkedArray) -> pa.ChunkedArray:
    """Per row: the name is non-empty and at most MAX_NAME_BYTES (null where it is null).
    Measured on each chunk's dictionary, so a hostile name is never repeated in memory."""
    import pyarrow.compute as pc

    out = []
    for chunk in names.chunks:
        if pa.types.is_null(chunk.type):
            out.append(pa.nulls(len(chunk), pa.bool_()))
            continue
        if pa.types.is_dictionary(chunk.type):
            lengths = pc.binary_length(chunk.dictionary)
            ok = pc.and_(pc.greater(lengths, 0), pc.less_equal(lengths, MAX_NAME_BYTES))
            out.append(pc.take(ok, chunk.indices))
        else:
            lengths = pc.binary_length(chunk)
            out.append(pc.and_(pc.greater(lengths, 0), pc.less_equal(lengths, MAX_NAME_BYTES)))
    return pa.chunked_array(out, pa.bool_())
