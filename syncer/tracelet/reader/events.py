"""Layers 2-3: TFRecord payloads -> ``Event`` protos -> typed points, for every writer's encoding.

Writers disagree on how a scalar looks: PyTorch and tensorboardX write ``simple_value``; TF2
(and Keras) write a rank-0 tensor of float/double/half/int with plugin ``scalars`` in metadata
that comes **only with a tag's first value**. The tag -> plugin map therefore outlives a read: it
is returned in every :class:`Batch` and given back to resume, so a value read in a later sync
is classified the same way as if the whole file had been read at once.

Speed: the optional C extension ``_fastscan`` (built by setup.py) frames records, checks CRCs and
decodes plain ``simple_value`` events itself -- the bulk of PyTorch / tensorboardX files -- and
hands every other record back, undecoded and in file order, to the same Python code the
pure-Python path runs. Both paths yield identical batches (tests/reader/test_fastscan.py);
``TRACELET_NO_FASTSCAN=1`` forces the pure-Python path, which also runs when the extension was
not built (no C compiler at install time).
"""
from __future__ import annotations

import errno
import math
import os
import stat
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import numpy as np

from .points import (AudioPoint, Batch, HistogramPoint, HParamsPoint, ImagePoint, TagTable,
                     TextPoint, TypedScalars)
from .records import (FOOTER_BYTES, HEADER_BYTES, LENGTH_CRC_MISMATCH, MAX_NOTED,
                      MAX_RECORD_BYTES, FramingStatus, _refill, iter_records, length_too_large,
                      note_bad_data)

try:  # built by setup.py where a C compiler exists; optional, same results, tens of times faster
    from . import _fastscan
except ImportError:
    _fastscan = None

# protobuf and TensorBoard's Event class are imported on the first record C does not decode
# (:func:`_load_protobuf`): a PyTorch file read by the C scanner never needs them (~10 ms).
_parse_event = None


class DecodeError(Exception):
    """Stands for protobuf's DecodeError until :func:`_load_protobuf` replaces it."""


def _load_protobuf() -> None:
    global _parse_event, DecodeError
    from google.protobuf.message import DecodeError as _DecodeError
    from tensorboard.compat.proto import event_pb2

    DecodeError = _DecodeError
    _parse_event = event_pb2.Event.FromString

# TensorFlow DataType enum -> (numpy dtype, typed repeated field of TensorProto). numpy itself is
# imported where a tensor is decoded: a sync of PyTorch files never needs it (~50 ms at start).
_DTYPES = {
    1: ("float32", "float_val"),
    2: ("float64", "double_val"),
    3: ("int32", "int_val"),
    4: ("uint8", "int_val"),
    5: ("int16", "int_val"),
    6: ("int8", "int_val"),
    9: ("int64", "int64_val"),
    10: ("bool", "bool_val"),
    17: ("uint16", "int_val"),
    19: ("float16", "half_val"),
    22: ("uint32", "uint32_val"),
    23: ("uint64", "uint64_val"),
}
DT_STRING = 7
DT_BFLOAT16 = 14

# Event `what` kinds that are not summaries: counted under these names, never silently lost.
_NON_SUMMARY = {
    "graph_def": "graph",
    "meta_graph_def": "meta_graph",
    "tagged_run_metadata": "run_metadata",
    "session_log": "session_log",
    "log_message": "log_message",
}
DEFAULT_BATCH_POINTS = 20_000
# Set to 1 to read with the pure-Python path even where the C extension is built (debugging,
# or to rule the extension out when a read looks wrong).
NO_FASTSCAN_ENV = "TRACELET_NO_FASTSCAN"
_BATCH_IMAGE_BYTES = 32 << 20  # cap memory held by one batch of images


# Bounds on what a record may make the reader allocate. A TensorProto's shape is a promise the
# record does not have to keep: [65536, 65536, 16] with one float_val would be 256 GiB. Data
# given in full (tensor_content, one typed value per element) is bounded by the record itself;
# only TF's two compact forms -- no values (zeros) and "the last value repeats" -- make more
# elements than the record holds, and those are expanded up to these caps (a summary's tensor:
# a histogram's [k, 3], an image's [2 + n]; far below a million elements).
MAX_TENSOR_RANK = 32  # numpy's own limit before 2.0; no summary has more than 3
MAX_EXPANDED_ELEMENTS = 1 << 20  # elements a compact tensor may expand to
MAX_EXPANDED_BYTES = 64 << 20  # bytes a compact string tensor may expand to (repeated strings)
_MAX_IMAGE_SIDE = (1 << 31) - 1  # width/height of a TF2 image tensor: int32, like Summary.Image


class MalformedValue(ValueError):
    """A summary value whose own fields contradict each other (shape vs data, buckets vs
    limits): the reader skips its record and reports it with the record's byte offset."""


def _shape_of(t) -> tuple[list[int], int]:
    """The shape of a ``TensorProto`` and its element count, refusing impossible shapes."""
    dims = t.tensor_shape.dim
    if len(dims) > MAX_TENSOR_RANK:  # len() first: a record may hold millions of dims
        raise MalformedValue(f"tensor of rank {len(dims)} (at most {MAX_TENSOR_RANK} read)")
    shape = [d.size for d in dims]
    if any(s < 0 for s in shape):
        raise MalformedValue(f"tensor shape {shape} has a negative dimension")
    return shape, math.prod(shape)  # Python ints: no int64 overflow to wrap the product to 0


def _compact_fill(shape: list[int], n: int, have: int, what: str) -> None:
    """Refuse a tensor whose ``have`` values cannot stand for ``n`` elements within the caps."""
    if have > n:
        raise MalformedValue(f"tensor shape {shape} ({n:,} elements) holds {have:,} {what}")
    if have < n and n > MAX_EXPANDED_ELEMENTS:
        raise MalformedValue(
            f"tensor shape {shape} promises {n:,} elements but the record holds {have:,} {what}; "
            f"compact tensors are expanded to at most {MAX_EXPANDED_ELEMENTS:,} elements")


def tensor_to_ndarray(t) -> np.ndarray:
    """Decode a ``TensorProto`` (``tensor_content`` or typed fields) to a numpy array.

    Raises :class:`MalformedValue` when the shape and the data disagree (``tensor_content`` not
    exactly elements x item size, more values than elements, a compact form beyond the caps, a
    negative dimension, an absurd rank), and ``ValueError`` for a dtype it does not decode.
    """
    import numpy as np

    shape, n = _shape_of(t)
    if t.dtype == DT_STRING:
        vals = list(t.string_val)
        _compact_fill(shape, n, len(vals), "strings")
        if len(vals) < n:  # TensorFlow's MakeNdarray: the last string repeats ("" if none)
            last = vals[-1] if vals else b""
            if (n - len(vals)) * len(last) > MAX_EXPANDED_BYTES:
                raise MalformedValue(
                    f"tensor shape {shape} repeats a {len(last):,}-byte string to {n:,} "
                    f"elements: more than {MAX_EXPANDED_BYTES:,} bytes")
            vals.extend([last] * (n - len(vals)))
        arr = np.empty(n, dtype=object)
        arr[:] = vals
        return arr.reshape(shape)
    if t.dtype == DT_BFLOAT16:
        dtype, field = np.uint16, "half_val"
    else:
        try:
            dtype, field = _DTYPES[t.dtype]
        except KeyError:
            raise ValueError(f"unsupported tensor dtype enum {t.dtype}") from None
    if t.tensor_content:
        itemsize = np.dtype(dtype).itemsize
        if len(t.tensor_content) != n * itemsize:
            raise MalformedValue(
                f"tensor shape {shape} needs {n * itemsize:,} bytes of tensor_content, the "
                f"record holds {len(t.tensor_content):,}")
        arr = np.frombuffer(t.tensor_content, dtype=dtype)
    else:
        vals = getattr(t, field)
        _compact_fill(shape, n, len(vals), field)
        if t.dtype in (19, DT_BFLOAT16):  # half_val holds the 16-bit patterns in int32s
            arr = np.array(list(vals), np.int64).astype(np.uint16)
            if t.dtype == 19:
                arr = arr.view(np.float16)
        else:
            arr = np.array(list(vals), dtype=dtype)
        if arr.size == 0:
            arr = np.zeros(n, dtype=arr.dtype)
        elif arr.size < n:  # TF's compact form: the last value repeats to fill the shape
            arr = np.concatenate([arr, np.repeat(arr[-1:], n - arr.size)])
    if t.dtype == DT_BFLOAT16:
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.reshape(shape)


def _wav_rate(encoded: bytes) -> float:
    """Sample rate from a WAV header (RIFF/WAVE with its ``fmt `` chunk first), else 0."""
    if len(encoded) >= 28 and encoded[:4] == b"RIFF" and encoded[8:16] == b"WAVEfmt ":
        return float(int.from_bytes(encoded[24:28], "little"))
    return 0.0


def _text_of(arr: np.ndarray) -> str:
    def s(x) -> str:
        return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)

    if arr.ndim == 0 or arr.size == 1:
        return s(arr.reshape(-1)[0]) if arr.size else ""
    if arr.ndim == 1:
        return "\n".join(s(x) for x in arr)
    return "\n".join(" | ".join(s(x) for x in row) for row in arr.reshape(arr.shape[0], -1))


def _short(tag: str, limit: int = 80) -> str:
    """A tag for a message: quoted, and cut (a hostile record may hold a megabyte-long tag)."""
    return repr(tag) if len(tag) <= limit else repr(tag[:limit]) + "…"


def _fastscan_disabled() -> bool:
    return os.environ.get(NO_FASTSCAN_ENV, "").strip() not in ("", "0")


class EventFileReader:
    """Read one event file from a byte offset and yield :class:`Batch` es of typed points.

    ``end`` fixes the upper bound (the file size seen at sync start). After iteration,
    ``status.offset`` is where the next read resumes and ``tag_plugins`` the map to carry on with.
    """

    def __init__(self, path: str | os.PathLike, offset: int = 0, tag_plugins: dict | None = None,
                 opener=None, typed_scalars: bool = False):
        self.path = os.fspath(path)
        # typed_scalars: batches carry their scalars as :class:`TypedScalars` (one tag table for
        # the file) instead of lists: what ``tracelet export`` turns into Arrow columns as is
        self._tags = TagTable() if typed_scalars else None
        self._capacity = DEFAULT_BATCH_POINTS
        self.start_offset = offset
        self.tag_plugins: dict[str, str] = dict(tag_plugins or {})
        self.status = FramingStatus(offset=offset)
        self.unparsable = 0  # records whose payload is not an Event
        self.refused = 0  # records with a value refused as malformed (see _decode_event)
        # (record byte offset, why) of the unparsable and refused records, first MAX_NOTED
        self.skip_notes: list[tuple[int, str]] = []
        # opener(path) -> a seekable binary file: an object store's ranged reader
        # (tracelet.storage); None opens a local file
        self._opener = opener

    def batches(
        self, end: int | None = None, max_points: int = DEFAULT_BATCH_POINTS
    ) -> Iterator[Batch]:
        """Raises ``OSError`` if the file cannot be opened or read, and
        :class:`~tracelet.errors.NotRegularFileError` for a FIFO, socket or device (an object
        store's reader raises :class:`~tracelet.errors.SourceError`)."""
        with (self._opener(self.path) if self._opener else open_event_file(self.path)) as f:
            if end is None:
                end = os.fstat(f.fileno()).st_size if self._opener is None else f.seek(0, 2)
            self._capacity = max_points + 64  # a batch is sealed once it holds max_points
            yield from self._batches(f, end, max_points)

    def skip_details(self, limit: int = 10) -> str:
        """``byte N: why; …`` for the first ``limit`` unparsable or refused records."""
        shown = "; ".join(f"byte {o}: {why}" for o, why in self.skip_notes[:limit])
        more = self.unparsable + self.refused - min(limit, len(self.skip_notes))
        return shown + (f"; and {more:,} more" if more > 0 else "")

    def _new_batch(self, start: int) -> Batch:
        if self._tags is None:
            return Batch(path=self.path, start_offset=start)
        return Batch(path=self.path, start_offset=start,
                     scalars=TypedScalars(self._tags, self._capacity))

    def _batches(self, f, end: int, max_points: int) -> Iterator[Batch]:
        if _fastscan is not None and not _fastscan_disabled():
            return self._batches_fast(f, end, max_points)
        return self._batches_python(f, end, max_points)

    def _batches_python(self, f, end: int, max_points: int) -> Iterator[Batch]:
        """The reference path: every record through ``iter_records`` and protobuf."""
        status = self.status
        batch = self._new_batch(self.start_offset)
        crc_skipped_before = 0
        records = 0
        weight = 0  # scalars + non-scalar points + image bytes/1MB, to cap batch memory
        for after, data in iter_records(f, self.start_offset, end, status):
            records += 1
            w = self._decode_event(data, batch, after - len(data) - HEADER_BYTES - FOOTER_BYTES)
            if w is None:
                continue
            weight += w
            if weight >= max_points:
                batch.records = records
                yield self._seal(batch, crc_skipped_before)
                crc_skipped_before = status.bad_data_crc
                records = weight = 0
                batch = self._new_batch(status.offset)
        batch.records = records
        if status.offset > batch.start_offset or batch.points or batch.other:
            yield self._seal(batch, crc_skipped_before)

    def _batches_fast(self, f, end: int, max_points: int) -> Iterator[Batch]:
        """Same batches as :meth:`_batches_python`, with framing and simple_value events in C.

        The framing loop is ``iter_records``' (same refills, same outcomes); ``Scanner.scan``
        consumes whole records from the buffer and returns whenever Python must act: refill,
        decode a record C does not take (``SCAN_SLOW``: anything but simple_value scalars), seal a
        full batch, or stop. Records keep their file order because C stops *at* a slow record.
        """
        status = self.status
        status.offset = pos = self.start_offset
        scanner = _fastscan.Scanner()
        scan, typed = scanner.scan, self._tags is not None
        buf = b""
        i = 0  # index into buf of the next record; buf[0] is file offset `pos`
        batch = self._new_batch(self.start_offset)
        crc_skipped_before = 0
        records = 0
        weight = 0
        while True:
            cols = batch.scalars
            if typed:
                code, i, n_records, n_points, n_bad, x, y = scanner.scan_typed(
                    buf, i, cols, max_points - weight)
            else:
                code, i, n_records, n_points, n_bad, x, y = scan(
                    buf, i, cols.tags, cols.steps, cols.wall_times, cols.values,
                    max_points - weight)
            records += n_records
            weight += n_points
            status.bad_data_crc += n_bad
            status.offset = pos + i
            if code == _fastscan.SCAN_SLOW:
                records += 1
                w = self._decode_event(buf[x:y], batch, pos + x - HEADER_BYTES)
                if w is None:
                    continue
                weight += w
                if weight < max_points:
                    continue
            elif code == _fastscan.SCAN_NEED_HEADER:
                avail = len(buf) - i
                if pos + len(buf) >= end:
                    break
                buf, pos, i = _refill(f, buf, pos, i, end, HEADER_BYTES)
                if len(buf) == avail:
                    break  # file shrank under us; the identity check reports it
                continue
            elif code == _fastscan.SCAN_NEED_BODY:
                if x > MAX_RECORD_BYTES:  # C checked the length CRC; the length is impossible
                    status.corrupt_offset = pos + i
                    status.corrupt_reason = length_too_large(x)
                    break
                total = HEADER_BYTES + x + FOOTER_BYTES
                if pos + i + total > end:
                    break  # incomplete tail: "not yet"
                buf, pos, i = _refill(f, buf, pos, i, end, total)
                if len(buf) - i < total:
                    break  # file shrank under us; treat as not yet, identity check reports it
                continue
            elif code == _fastscan.SCAN_ZERO_HEADER:
                break  # hole not yet filled in by the FS: "not yet"
            elif code == _fastscan.SCAN_BAD_DATA:
                note_bad_data(status, pos + x, counted=True)  # C counted it in n_bad
                continue
            elif code == _fastscan.SCAN_CORRUPT:
                status.corrupt_offset = pos + i
                status.corrupt_reason = LENGTH_CRC_MISMATCH
                break
            # SCAN_FULL, or a slow record that filled the batch
            batch.records = records
            yield self._seal(batch, crc_skipped_before)
            crc_skipped_before = status.bad_data_crc
            records = weight = 0
            batch = self._new_batch(status.offset)
        status.pending_bytes = max(0, end - status.offset) if status.corrupt_offset is None else 0
        batch.records = records
        if status.offset > batch.start_offset or batch.points or batch.other:
            yield self._seal(batch, crc_skipped_before)

    def _note_skip(self, offset: int, why: str) -> None:
        if len(self.skip_notes) < MAX_NOTED:
            self.skip_notes.append((offset, why))

    def _decode_event(self, data: bytes, batch: Batch, offset: int) -> int | None:
        """Decode one record's payload (starting at byte ``offset``) into ``batch``; its weight,
        or None if unparsable. A value refused as malformed is left out and its record counted
        as skipped (once); the record's other values are kept."""
        if _parse_event is None:
            _load_protobuf()
        try:
            ev = _parse_event(data)
        except DecodeError as e:
            self.unparsable += 1
            batch.skipped_records += 1
            self._note_skip(offset, f"not an Event protobuf ({e or 'undecodable'})")
            return None
        values = ev.summary.value
        if not values:
            what = ev.WhichOneof("what")
            if what in _NON_SUMMARY:
                batch.count_other(_NON_SUMMARY[what])
            return 0
        step, wall = ev.step, ev.wall_time
        cols = batch.scalars
        weight = 0
        refused = False
        typed = self._tags is not None
        for v in values:
            kind = v.WhichOneof("value")
            if kind == "simple_value" and typed:
                cols.append(v.tag, step, wall, v.simple_value)
                weight += 1
            elif kind == "simple_value":  # inlined ScalarColumns.append: this is the hot loop
                cols.tags.append(v.tag)
                cols.steps.append(step)
                cols.wall_times.append(wall)
                cols.values.append(v.simple_value)
                weight += 1
            else:
                try:
                    weight += self._decode_value(v, kind, step, wall, batch)
                except (ValueError, TypeError, OverflowError) as e:
                    # MalformedValue, and what numpy/protobuf raise on values no writer makes
                    # (an int_val of 300 for uint8 ...): skip the value, name its record.
                    if not refused:
                        refused = True
                        self.refused += 1
                        batch.skipped_records += 1
                        self._note_skip(offset,
                                        f"{kind or 'value'} {_short(v.tag)} at step {step}: {e}")
        return weight

    def _seal(self, batch: Batch, crc_skipped_before: int) -> Batch:
        batch.end_offset = self.status.offset
        batch.skipped_records += self.status.bad_data_crc - crc_skipped_before
        batch.tag_plugins = dict(self.tag_plugins)
        return batch

    # -- everything that is not a simple_value -------------------------------------------------
    def _decode_value(self, v, kind: str | None, step: int, wall: float, batch: Batch) -> int:
        """Decode one non-``simple_value`` summary value into ``batch``; return its weight."""
        tag = v.tag
        if v.HasField("metadata") and v.metadata.plugin_data.plugin_name:
            plugin = v.metadata.plugin_data.plugin_name
            self.tag_plugins[tag] = plugin
        else:
            plugin = self.tag_plugins.get(tag, "")
        if plugin == "hparams":  # PyTorch writes hparams as metadata with no value at all
            return self._decode_hparams(v, step, wall, batch)
        if kind == "tensor":
            return self._decode_tensor(v, tag, plugin, step, wall, batch)
        if kind == "histo":
            # TensorBoard's own migration (data_compat): drop empty buckets at both ends, then
            # min/max are the outer edges. PyTorch/tensorboardX write an empty first bucket
            # whose limit lies below min; kept, it would make a backwards bucket.
            h = v.histo
            all_counts = list(h.bucket)
            n = len(all_counts)
            first = next((i for i in range(n) if all_counts[i] > 0), n)
            last = next((i for i in reversed(range(n)) if all_counts[i] > 0), -1)
            if first > last:
                lefts = rights = counts = ()
            else:
                if len(h.bucket_limit) < last:  # every bucket but the last needs its limit
                    raise MalformedValue(f"histogram with {n} buckets but "
                                         f"{len(h.bucket_limit)} bucket limits")
                inner = list(h.bucket_limit[first:last])
                lefts = tuple([h.min] + inner)
                rights = tuple(inner + [h.max])
                counts = tuple(all_counts[first : last + 1])
            batch.histograms.append(
                HistogramPoint(tag, step, wall, lefts, rights, counts, h.min, h.max, h.num,
                               h.sum, h.sum_squares)
            )
            return 1
        if kind == "image":
            im = v.image
            batch.images.append(
                ImagePoint(tag, step, wall, im.encoded_image_string, im.width, im.height,
                           im.colorspace)
            )
            return 1 + len(im.encoded_image_string) * DEFAULT_BATCH_POINTS // _BATCH_IMAGE_BYTES
        if kind == "audio":
            au = v.audio
            enc = au.encoded_audio_string
            rate = au.sample_rate if 0 < au.sample_rate < math.inf else 0.0  # NaN, <= 0: unknown
            batch.audio.append(AudioPoint(tag, step, wall, enc, rate or _wav_rate(enc),
                                          au.content_type))
            return 1 + len(enc) * DEFAULT_BATCH_POINTS // _BATCH_IMAGE_BYTES
        batch.count_other(kind or "empty_value")
        return 0

    def _decode_tensor(self, v, tag: str, plugin: str, step: int, wall: float, batch: Batch) -> int:
        import numpy as np

        t = v.tensor
        if plugin == "hparams":
            return self._decode_hparams(v, step, wall, batch)
        try:
            arr = tensor_to_ndarray(t)
        except MalformedValue:
            raise  # the record is skipped and reported with its offset (_decode_event)
        except (ValueError, TypeError) as e:  # a dtype the reader does not decode: counted
            batch.count_other(f"undecodable_tensor:{e}")
            return 0
        if plugin in ("scalars", "") and arr.dtype != object and arr.size == 1:
            batch.scalars.append(tag, step, wall, float(arr.reshape(-1)[0]))
            return 1
        if plugin in ("histograms", "") and arr.dtype != object and arr.ndim == 2 and arr.shape[1] == 3:
            a = arr.astype(np.float64)
            batch.histograms.append(
                HistogramPoint(tag, step, wall, tuple(a[:, 0].tolist()), tuple(a[:, 1].tolist()),
                               tuple(a[:, 2].tolist()))
            )
            return 1
        if plugin == "images" and arr.dtype == object and arr.size >= 2:
            flat = arr.reshape(-1)
            try:
                width, height = int(flat[0]), int(flat[1])
            except ValueError:
                width = height = 0
            if not (0 <= width <= _MAX_IMAGE_SIDE and 0 <= height <= _MAX_IMAGE_SIDE):
                width = height = 0  # unknown, as for an unparsable size
            weight = 0
            for k, enc in enumerate(flat[2:]):
                batch.images.append(ImagePoint(tag, step, wall, bytes(enc), width, height, 0, k))
                weight += 1 + len(enc) * DEFAULT_BATCH_POINTS // _BATCH_IMAGE_BYTES
            return weight
        if plugin == "audio" and arr.dtype == object and arr.size >= 1:
            # TF2 tf.summary.audio: shape [k, 2] = (encoded clip, label) per clip; older [k]
            rows = arr.reshape(arr.shape[0], -1) if arr.ndim >= 1 else arr.reshape(1, -1)
            weight = 0
            for k, row in enumerate(rows):
                enc = bytes(row[0])
                label = _text_of(row[1:2]) if row.size > 1 else ""
                batch.audio.append(AudioPoint(tag, step, wall, enc, _wav_rate(enc), "", k, label))
                weight += 1 + len(enc) * DEFAULT_BATCH_POINTS // _BATCH_IMAGE_BYTES
            return weight
        if plugin == "text" and arr.dtype == object:
            batch.texts.append(TextPoint(tag, step, wall, _text_of(arr)))
            return 1
        batch.count_other(plugin or "tensor")
        return 0

    def _decode_hparams(self, v, step: int, wall: float, batch: Batch) -> int:
        from tensorboard.plugins.hparams import plugin_data_pb2

        try:
            data = plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)
        except DecodeError:
            batch.count_other("hparams_undecodable")
            return 0
        which = data.WhichOneof("data")
        if which != "session_start_info":
            batch.count_other(f"hparams_{which or 'empty'}")
            return 0
        info = data.session_start_info
        hp = {}
        for name, val in info.hparams.items():
            k = val.WhichOneof("kind")
            if k == "number_value":
                num = val.number_value
                hp[name] = int(num) if num.is_integer() and abs(num) < 2**53 else num
            elif k == "string_value":
                hp[name] = val.string_value
            elif k == "bool_value":
                hp[name] = val.bool_value
            elif k == "null_value" or k is None:
                hp[name] = None
            else:  # struct/list: keep as JSON-able text
                from google.protobuf.json_format import MessageToJson

                try:
                    hp[name] = MessageToJson(val)
                except ValueError:  # NaN/Inf inside a struct or list: JSON cannot hold them
                    from google.protobuf.text_format import MessageToString

                    hp[name] = MessageToString(val, as_one_line=True)
        batch.hparams.append(HParamsPoint(step, wall, hp, info.group_name))
        return 1


def open_event_file(path: str):
    """Open an event file for reading, refusing anything but a regular file.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting forever for a writer;
    ``fstat`` on the opened descriptor (not a ``stat`` of the name, which could be swapped in
    between) then tells a FIFO, socket or device from a file. Blocking mode is restored for the
    reads (it changes nothing for a regular file)."""
    from ..errors import NotRegularFileError

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(path, file_kind(mode))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for messages."""
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "a special file"


def unreadable_message(path, err: OSError, offset: int, consequence: str) -> str:
    """``PATH: cannot read (Permission denied) at byte N; <consequence>. <what to do>``."""
    fix = ("Fix its permissions (the reader needs read access)"
           if err.errno in (errno.EACCES, errno.EPERM) else "Check the file and its file system")
    return (f"{path}: cannot read ({err.strerror or err}) at byte {offset}; {consequence}. "
            f"{fix}.")
