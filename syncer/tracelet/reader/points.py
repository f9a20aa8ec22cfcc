"""Typed points: what the reader hands to every other layer.

Scalars dominate (millions per run), so they travel column-wise in :class:`ScalarColumns`
(plain lists, cheap to append, turned into an Arrow table on demand) or, for ``tracelet export``,
in :class:`TypedScalars` (typed buffers and a tag table: no Python object per point). The rarer
kinds are small frozen dataclasses.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field, replace
from typing import Any

# A wall time outside [0, 1e12) s (NaN, ±Inf, a broken clock's 1e300 or -1) cannot be a
# destination's timestamp (MLflow: a non-negative int64 of ms); the engine sends such points
# with wall time 0.0 (1970-01-01).
MAX_ABS_WALL_TIME = 1e12  # seconds: year 33658


def _bad_wall(w: float) -> bool:
    return not 0.0 <= w < MAX_ABS_WALL_TIME

# Kinds, as they appear in `tracelet export`'s `kind` column and in reports.
SCALAR = "scalar"
HISTOGRAM = "histogram"
IMAGE = "image"
TEXT = "text"
HPARAMS = "hparams"
AUDIO = "audio"
KINDS = (SCALAR, HISTOGRAM, IMAGE, TEXT, HPARAMS, AUDIO)


@dataclass(frozen=True, slots=True)
class HistogramPoint:
    """One histogram. Bucket ``i`` spans ``[lefts[i], rights[i])`` and holds ``counts[i]``."""

    tag: str
    step: int
    wall_time: float
    lefts: tuple[float, ...]
    rights: tuple[float, ...]
    counts: tuple[float, ...]
    min: float | None = None
    max: float | None = None
    num: float | None = None
    sum: float | None = None
    sum_squares: float | None = None

    @property
    def total(self) -> float:
        return float(sum(self.counts)) if self.num is None else float(self.num)


@dataclass(frozen=True, slots=True)
class ImagePoint:
    """One encoded image (PNG/JPEG/GIF bytes exactly as the writer stored them)."""

    tag: str
    step: int
    wall_time: float
    encoded: bytes
    width: int
    height: int
    colorspace: int = 0
    index: int = 0  # position inside a TF2 image tensor holding several images

    @property
    def format(self) -> str:
        head = self.encoded[:8]
        if head.startswith(b"\x89PNG"):
            return "png"
        if head.startswith(b"\xff\xd8"):
            return "jpeg"
        if head.startswith(b"GIF8"):
            return "gif"
        return "bin"


@dataclass(frozen=True, slots=True)
class AudioPoint:
    """One encoded audio clip (the writer's bytes: WAV from every common writer)."""

    tag: str
    step: int
    wall_time: float
    encoded: bytes
    sample_rate: float = 0.0
    content_type: str = ""
    index: int = 0  # position inside a TF2 audio tensor holding several clips
    label: str = ""

    @property
    def format(self) -> str:
        head = self.encoded[:12]
        if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
            return "wav"
        if head.startswith(b"OggS"):
            return "ogg"
        if head.startswith(b"fLaC"):
            return "flac"
        if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
            return "mp3"
        return {"audio/wav": "wav", "audio/x-wav": "wav", "audio/ogg": "ogg",
                "audio/mpeg": "mp3", "audio/flac": "flac"}.get(self.content_type, "bin")


@dataclass(frozen=True, slots=True)
class TextPoint:
    tag: str
    step: int
    wall_time: float
    text: str


@dataclass(frozen=True, slots=True)
class HParamsPoint:
    """Hyperparameters of a session (TensorBoard ``hparams`` plugin, ``session_start_info``)."""

    step: int
    wall_time: float
    hparams: dict[str, Any]
    group_name: str = ""


@dataclass(slots=True)
class ScalarColumns:
    """Scalar points column-wise; index ``i`` across the four lists is one point."""

    tags: list[str] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    wall_times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.values)

    def append(self, tag: str, step: int, wall_time: float, value: float) -> None:
        self.tags.append(tag)
        self.steps.append(step)
        self.wall_times.append(wall_time)
        self.values.append(value)

    def to_arrow(self):
        import pyarrow as pa

        return pa.table(
            {
                "tag": pa.array(self.tags, pa.string()),
                "step": pa.array(self.steps, pa.int64()),
                "wall_time": pa.array(self.wall_times, pa.float64()),
                "value": pa.array(self.values, pa.float64()),
            }
        )


class TagTable:
    """The tags of one file in order of first sight: ``names[i]`` is tag number ``i``. Shared by
    every :class:`TypedScalars` of a file, so their numbers agree from batch to batch."""

    __slots__ = ("names", "index")

    def __init__(self) -> None:
        self.names: list[str] = []
        self.index: dict[str, int] = {}

    def id(self, tag: str) -> int:
        i = self.index.get(tag)
        if i is None:
            i = self.index[tag] = len(self.names)
            self.names.append(tag)
        return i


class TypedScalars:
    """Scalar points in typed buffers (``tracelet export``'s layout): point ``i`` is tag
    ``names[ids[i]]``, ``steps[i]``, ``wall_times[i]``, ``values[i]`` for ``i < n``. The buffers
    (``array('i'/'q'/'d'/'d')``) may be longer than ``n``; the C reader writes into them
    directly (``Scanner.scan_typed``) and calls :meth:`_grow` when they are full."""

    __slots__ = ("table", "names", "index", "ids", "steps", "wall_times", "values", "n")

    def __init__(self, table: TagTable | None = None, capacity: int = 1024) -> None:
        self.table = table if table is not None else TagTable()
        self.names, self.index = self.table.names, self.table.index
        capacity = max(int(capacity), 16)
        self.ids = array("i", bytes(4 * capacity))
        self.steps = array("q", bytes(8 * capacity))
        self.wall_times = array("d", bytes(8 * capacity))
        self.values = array("d", bytes(8 * capacity))
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def _grow(self) -> None:
        more = max(len(self.values), 16)  # doubling: appends stay amortised O(1)
        self.ids.frombytes(bytes(4 * more))
        for col in (self.steps, self.wall_times, self.values):
            col.frombytes(bytes(8 * more))

    def append(self, tag: str, step: int, wall_time: float, value: float) -> None:
        n = self.n
        if n >= len(self.values):
            self._grow()
        self.ids[n] = self.table.id(tag)
        self.steps[n] = step
        self.wall_times[n] = wall_time
        self.values[n] = value
        self.n = n + 1

    def to_columns(self) -> ScalarColumns:
        """The same points as :class:`ScalarColumns` (tests compare the two layouts)."""
        n, names = self.n, self.names
        return ScalarColumns([names[i] for i in self.ids[:n]], self.steps[:n].tolist(),
                             self.wall_times[:n].tolist(), self.values[:n].tolist())


@dataclass(slots=True)
class Batch:
    """Points decoded from one contiguous byte range ``[start_offset, end_offset)`` of one file.

    ``end_offset`` is where the next read resumes: committing it (with ``tag_plugins``) after the
    destination confirmed the batch is the whole checkpoint protocol for a file.
    """

    path: str
    start_offset: int
    end_offset: int = 0
    scalars: ScalarColumns = field(default_factory=ScalarColumns)
    histograms: list[HistogramPoint] = field(default_factory=list)
    images: list[ImagePoint] = field(default_factory=list)
    texts: list[TextPoint] = field(default_factory=list)
    hparams: list[HParamsPoint] = field(default_factory=list)
    audio: list[AudioPoint] = field(default_factory=list)
    other: dict[str, int] = field(default_factory=dict)  # plugin/kind name -> count not decoded
    records: int = 0
    skipped_records: int = 0  # bad data CRC, unparsable payload, a value refused as malformed
    tag_plugins: dict[str, str] = field(default_factory=dict)  # reader's map as of end_offset

    @property
    def points(self) -> int:
        return (
            len(self.scalars) + len(self.histograms) + len(self.images) + len(self.texts)
            + len(self.hparams) + len(self.audio)
        )

    def clamp_wall_times(self) -> int:
        """Set unusable wall times (NaN, ±Inf, negative, beyond 1e12 s) to 0.0, for every destination
        alike; returns how many were set. ``tracelet export`` shows them as written."""
        fixed = 0
        walls = self.scalars.wall_times
        if any(_bad_wall(w) for w in walls):
            for i, w in enumerate(walls):
                if _bad_wall(w):
                    walls[i] = 0.0
                    fixed += 1
        for name in ("histograms", "images", "texts", "hparams", "audio"):
            points = getattr(self, name)
            for i, p in enumerate(points):
                if _bad_wall(p.wall_time):
                    points[i] = replace(p, wall_time=0.0)
                    fixed += 1
        return fixed

    def count_other(self, name: str, n: int = 1) -> None:
        self.other[name] = self.other.get(name, 0) + n

    def point_counts(self) -> dict[str, int]:
        return {
            "scalar": len(self.scalars),
            "histogram": len(self.histograms),
            "image": len(self.images),
            "text": len(self.texts),
            "hparams": len(self.hparams),
            "audio": len(self.audio),
        }
