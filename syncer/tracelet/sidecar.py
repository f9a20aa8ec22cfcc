"""System-metrics sidecar: immutable parquet parts in ``<run>/sysmetrics/part-NNNNNN.parquet``.

Long format (DESIGN §2): ``timestamp`` float64 unix seconds, ``name`` string with its unit in it
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

SIDECAR_DIR = "sysmetrics"
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


def read_part(path: str | os.PathLike) -> pa.Table:
    """One part as an Arrow table with :data:`SCHEMA` (extra columns dropped, types cast)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError with little context
        raise SourceError(f"{path}: unreadable sidecar part ({e}); skipped. Delete or restore it.") from e
    missing = {"timestamp", "name", "value"} - set(table.column_names)
    if missing:
        raise SourceError(f"{path}: sidecar part lacks columns {sorted(missing)}; skipped.")
    return table.select(["timestamp", "name", "value"]).cast(SCHEMA)
