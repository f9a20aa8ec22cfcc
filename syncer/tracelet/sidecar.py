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

import pyarrow as pa

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
