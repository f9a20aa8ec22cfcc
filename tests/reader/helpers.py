"""Shared helpers for the reader tests (the ``read_path`` fixture is in conftest.py): fixture
files, the oracle, and points made comparable.

The oracle is TensorBoard's own ``EventFileLoader`` (raw events, its read-time compat layers
``data_compat`` + ``dataclass_compat``, no sampling), decoded here with TensorBoard's
``tensor_util.make_ndarray``: nothing of Tracelet's reader is used to compute an expectation.
Points are turned into tuples of plain values with floats as ``float.hex()`` so that ``==``
is exact, NaN-aware and tells ``-0.0`` from ``0.0``.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"
# what build_fixtures.py did to each damaged file, at which byte (empty if fixtures/ is absent:
# the tests that need it then fail on their own, without breaking collection of the others)
_CORRUPTIONS_JSON = FIXTURES / "corruptions.json"
CORRUPTIONS = json.loads(_CORRUPTIONS_JSON.read_text()) if _CORRUPTIONS_JSON.exists() else {}
KINDS = ("scalar", "histogram", "image", "text", "hparams", "audio")
# Fixtures whose files are damaged on purpose: the oracle cannot read them as they are.
CORRUPT_FILES = {FIXTURES / rel for rel in CORRUPTIONS}


def all_event_files() -> list[Path]:
    """Every event file under fixtures/, hidden folders included (they are still event files)."""
    return sorted(p for p in FIXTURES.rglob("*") if p.is_file() and "tfevents" in p.name)


def intact_event_files() -> list[Path]:
    return [p for p in all_event_files() if p not in CORRUPT_FILES]


def fixture_id(p: Path) -> str:
    return p.relative_to(FIXTURES).as_posix()


def damaged_fixtures(kind: str) -> list:
    """``(path, info)`` parameters of the committed fixtures damaged with ``kind``
    (corruptions.json: ``bad_data_crc``, ``bad_length_crc``, ``truncated`` ...)."""
    return [pytest.param(FIXTURES / rel, info, id=rel)
            for rel, info in CORRUPTIONS.items() if info["kind"] == kind]


def record_ends(path) -> list[int]:
    """Byte offset after each record of an intact file (u64 length prefix trusted, no CRCs)."""
    import struct

    data = Path(path).read_bytes()
    ends, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        pos += 12 + length + 4
        if pos > len(data):
            break
        ends.append(pos)
    return ends


# -- the two read paths of the reader --------------------------------------------------------
def fastscan_available() -> bool:
    try:
        from tracelet.reader import _fastscan  # noqa: F401
    except ImportError:
        return False
    return True


# -- comparable values -----------------------------------------------------------------------
def canon(x):
    """Exact, NaN-aware, hashable form of a value (floats as hex, numbers in hparams as floats)."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (float, np.floating)):
        return float(x).hex()
    if isinstance(x, (tuple, list)):
        return tuple(canon(v) for v in x)
    return x


def canon_f32(values) -> tuple:
    """Float64 values as float32, for data TensorBoard's compat layer narrowed to float32."""
    return tuple(float(v).hex() for v in np.asarray(values, dtype=np.float64).astype(np.float32))


def canon_hparams(hp: dict) -> tuple:
    def one(v):
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, (int, float)):
            return float(v).hex()  # the reader may return 32 for 32.0: same number
        return v

    return tuple(sorted((k, one(v)) for k, v in hp.items()))


def points_of_batches(batches) -> dict:
    """Everything a list of :class:`Batch` holds, as comparable tuples, in file order."""
    out = {k: [] for k in KINDS}
    other = Counter()
    for b in batches:
        s = b.scalars
        out["scalar"] += [(t, st, canon(w), canon(v))
                          for t, st, w, v in zip(s.tags, s.steps, s.wall_times, s.values)]
        out["histogram"] += [(h.tag, h.step, canon(h.wall_time), canon(h.lefts), canon(h.rights),
                              canon(h.counts)) for h in b.histograms]
        out["image"] += [(i.tag, i.step, canon(i.wall_time), bytes(i.encoded), i.width, i.height,
                          i.index) for i in b.images]
        out["text"] += [(t.tag, t.step, canon(t.wall_time), t.text) for t in b.texts]
        out["hparams"] += [(h.step, canon(h.wall_time), canon_hparams(h.hparams), h.group_name)
                           for h in b.hparams]
        out["audio"] += [(a.tag, a.step, canon(a.wall_time), bytes(a.encoded), a.index, a.label)
                         for a in b.audio]
        other.update(b.other)
    out["other"] = other
    return out


def read_points(path, offset: int = 0, tag_plugins=None, max_points: int = 20_000):
    """One reader, read to the end: ``(points, reader, batches)``."""
    from tracelet.reader import EventFileReader

    reader = EventFileReader(path, offset, tag_plugins)
    batches = list(reader.batches(max_points=max_points))
    return points_of_batches(batches), reader, batches


# -- the oracle ------------------------------------------------------------------------------
def _text_expected(arr: np.ndarray) -> str:
    """Tracelet's documented text normalisation: a string; 1-D joined by newlines; a table as
    rows of cells joined by ``" | "``."""
    def s(x):
        return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)

    if arr.size == 1:
        return s(arr.reshape(-1)[0])
    if arr.size == 0:
        return ""
    if arr.ndim == 1:
        return "\n".join(s(x) for x in arr)
    return "\n".join(" | ".join(s(x) for x in row) for row in arr.reshape(arr.shape[0], -1))


_NON_SUMMARY = {"graph_def": "graph", "meta_graph_def": "meta_graph",
                "tagged_run_metadata": "run_metadata", "session_log": "session_log",
                "log_message": "log_message"}


def oracle_points(path) -> dict:
    """What TensorBoard itself reads from ``path``, decoded independently of Tracelet."""
    from tensorboard.backend.event_processing.event_file_loader import (EventFileLoader,
                                                                          LegacyEventFileLoader)
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util.tensor_util import make_ndarray

    out = {k: [] for k in KINDS}
    other = Counter()
    # histo extras (min/max/num/sum/sum_squares) only exist before data_compat's migration
    legacy_histos = []
    for ev in LegacyEventFileLoader(str(path)).Load():
        for v in ev.summary.value:
            if v.WhichOneof("value") == "histo":
                h = v.histo
                legacy_histos.append((v.tag, ev.step, h.min, h.max, h.num, h.sum, h.sum_squares))
    histo_f32 = []  # which histograms data_compat narrowed to float32
    # Plugin metadata may come only with a tag's first value (TF1 FileWriter strips the rest):
    # like TensorBoard's EventAccumulator, remember each tag's first metadata.
    tag_plugin: dict[str, str] = {}
    for ev in EventFileLoader(str(path)).Load():
        what = ev.WhichOneof("what")
        if what != "summary":
            if what in _NON_SUMMARY:
                other[_NON_SUMMARY[what]] += 1
            continue
        step, wall = ev.step, canon(ev.wall_time)
        for v in ev.summary.value:
            if v.tag == "__run_graph__":  # dataclass_compat's copy of a graph_def event
                continue
            if v.metadata.plugin_data.plugin_name:
                tag_plugin.setdefault(v.tag, v.metadata.plugin_data.plugin_name)
            plugin = tag_plugin.get(v.tag, "")
            if plugin == "hparams":
                data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
                which = data.WhichOneof("data")
                if which != "session_start_info":
                    other[f"hparams_{which}"] += 1
                    continue
                hp = {}
                for name, val in data.session_start_info.hparams.items():
                    kind = val.WhichOneof("kind")
                    hp[name] = getattr(val, kind) if kind else None
                out["hparams"].append((step, wall, canon_hparams(hp),
                                       data.session_start_info.group_name))
                continue
            arr = make_ndarray(v.tensor)
            if plugin == "scalars" and arr.size == 1 and arr.dtype != object:
                out["scalar"].append((v.tag, step, wall, canon(float(arr.reshape(-1)[0]))))
            elif plugin == "histograms" and arr.ndim == 2 and arr.shape[1:] == (3,):
                f = canon_f32 if arr.dtype == np.float32 else canon
                histo_f32.append(arr.dtype == np.float32)
                out["histogram"].append((v.tag, step, wall, f(arr[:, 0].tolist()),
                                         f(arr[:, 1].tolist()), f(arr[:, 2].tolist())))
            elif plugin == "images" and arr.dtype == object and arr.size >= 2:
                flat = arr.reshape(-1)
                for k, enc in enumerate(flat[2:]):
                    out["image"].append((v.tag, step, wall, bytes(enc), int(flat[0]),
                                         int(flat[1]), k))
            elif plugin == "text" and arr.dtype == object:
                out["text"].append((v.tag, step, wall, _text_expected(arr)))
            elif plugin == "audio" and arr.dtype == object:  # [k, 2]: (clip, label) per clip
                for k, row in enumerate(arr.reshape(arr.shape[0], -1)):
                    label = row[1].decode("utf-8", "replace") if row.size > 1 else ""
                    out["audio"].append((v.tag, step, wall, bytes(row[0]), k, label))
            else:
                other[plugin or "tensor"] += 1
    out["other"] = other
    out["_histo_f32"] = histo_f32
    out["_legacy_histos"] = legacy_histos
    return out


def _histogram_summary(h: tuple) -> tuple:
    """(tag, step, wall time, total count): what must agree however buckets are laid out."""
    tag, step, wall, _, _, counts = h
    return tag, step, wall, float(sum(float.fromhex(c) for c in counts)).hex()


def assert_same_as_oracle(got: dict, want: dict, where: str = "", legacy_buckets: bool = False):
    """Compare reader points with oracle points kind by kind, with a readable first difference.

    Histograms that came from a legacy ``histo`` proto (TensorBoard's compat layer turns them into
    float32 ``[k,3]`` tensors) are compared by tag/step/wall/total only, unless
    ``legacy_buckets``: then every bucket, at float32.
    """
    for kind in KINDS:
        g, w = got[kind], want[kind]
        assert len(g) == len(w), f"{where}: {kind}: reader {len(g)} points, TensorBoard {len(w)}"
        if kind == "histogram":
            pairs = []
            for a, b, legacy in zip(g, w, want["_histo_f32"]):
                if not legacy:
                    pairs.append((a, b))
                elif legacy_buckets:
                    t, s, wt, l, r, c = a
                    f = [[float.fromhex(x) for x in col] for col in (l, r, c)]
                    pairs.append(((t, s, wt, *map(canon_f32, f)), b))
                else:
                    pairs.append((_histogram_summary(a), _histogram_summary(b)))
        else:
            pairs = list(zip(g, w))
        for i, (a, b) in enumerate(pairs):
            assert a == b, (f"{where}: {kind} #{i} differs:\n  reader:      {a!r}\n"
                            f"  TensorBoard: {b!r}")
    assert dict(got["other"]) == dict(want["other"]), f"{where}: other kinds differ"


def is_nan_hex(h: str) -> bool:
    return math.isnan(float.fromhex(h))
