"""Layers 2-3: TFRecord payloads -> ``Event`` protos -> typed points, for every writer's encoding.

Writers disagree on how a scalar looks: PyTorch and tensorboardX write ``simple_value``; TF2
(and Keras) write a rank-0 tensor of float/double/half/int with plugin ``scalars`` in metadata
that comes **only with a tag's first value**. The tag -> plugin map therefore outlives a read: it
is returned in every :class:`Batch` and given back to resume, so a value read in a later sync
is classified the same way as if the whole file had been read at once.
"""
from __future__ import annotations

import os
from typing import Iterator

import numpy as np
from google.protobuf.message import DecodeError
from tensorboard.compat.proto import event_pb2

from .points import Batch, HistogramPoint, HParamsPoint, ImagePoint, TextPoint
from .records import FramingStatus, iter_records

# TensorFlow DataType enum -> (numpy dtype, typed repeated field of TensorProto)
_DTYPES = {
    1: (np.float32, "float_val"),
    2: (np.float64, "double_val"),
    3: (np.int32, "int_val"),
    4: (np.uint8, "int_val"),
    5: (np.int16, "int_val"),
    6: (np.int8, "int_val"),
    9: (np.int64, "int64_val"),
    10: (np.bool_, "bool_val"),
    17: (np.uint16, "int_val"),
    19: (np.float16, "half_val"),
    22: (np.uint32, "uint32_val"),
    23: (np.uint64, "uint64_val"),
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
_BATCH_IMAGE_BYTES = 32 << 20  # cap memory held by one batch of images


def tensor_to_ndarray(t) -> np.ndarray:
    """Decode a ``TensorProto`` (``tensor_content`` or typed fields) to a numpy array."""
    shape = [d.size for d in t.tensor_shape.dim]
    n = int(np.prod(shape)) if shape else 1
    if t.dtype == DT_STRING:
        vals = list(t.string_val)
        arr = np.empty(len(vals), dtype=object)
        arr[:] = vals
        return arr.reshape(shape) if len(vals) == n else arr
    if t.dtype == DT_BFLOAT16:
        raw = np.frombuffer(t.tensor_content, np.uint16) if t.tensor_content else np.array(
            list(t.half_val), np.uint16
        )
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    try:
        dtype, field = _DTYPES[t.dtype]
    except KeyError:
        raise ValueError(f"unsupported tensor dtype enum {t.dtype}") from None
    if t.tensor_content:
        return np.frombuffer(t.tensor_content, dtype=dtype).reshape(shape)
    vals = getattr(t, field)
    if t.dtype == 19:  # half_val holds the float16 bit patterns in int32s
        arr = np.array(list(vals), np.uint16).view(np.float16)
    else:
        arr = np.array(list(vals), dtype=dtype)
    if arr.size == n:
        return arr.reshape(shape)
    if arr.size == 0:
        return np.zeros(shape, dtype=dtype)
    # TF's compact form: the last value repeats to fill the shape
    return np.concatenate([arr, np.repeat(arr[-1:], n - arr.size)]).reshape(shape)


def _text_of(arr: np.ndarray) -> str:
    def s(x) -> str:
        return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)

    if arr.ndim == 0 or arr.size == 1:
        return s(arr.reshape(-1)[0]) if arr.size else ""
    if arr.ndim == 1:
        return "\n".join(s(x) for x in arr)
    return "\n".join(" | ".join(s(x) for x in row) for row in arr.reshape(arr.shape[0], -1))


class EventFileReader:
    """Read one event file from a byte offset and yield :class:`Batch` es of typed points.

    ``end`` fixes the upper bound (the file size seen at sync start). After iteration,
    ``status.offset`` is where the next read resumes and ``tag_plugins`` the map to carry on with.
    """

    def __init__(self, path: str | os.PathLike, offset: int = 0, tag_plugins: dict | None = None):
        self.path = os.fspath(path)
        self.start_offset = offset
        self.tag_plugins: dict[str, str] = dict(tag_plugins or {})
        self.status = FramingStatus(offset=offset)
        self.unparsable = 0

    def batches(
        self, end: int | None = None, max_points: int = DEFAULT_BATCH_POINTS
    ) -> Iterator[Batch]:
        with open(self.path, "rb") as f:
            if end is None:
                end = os.fstat(f.fileno()).st_size
            yield from self._batches(f, end, max_points)

    def _new_batch(self, start: int) -> Batch:
        return Batch(path=self.path, start_offset=start)

    def _batches(self, f, end: int, max_points: int) -> Iterator[Batch]:
        status = self.status
        parse = event_pb2.Event.FromString
        batch = self._new_batch(self.start_offset)
        crc_skipped_before = 0
        cols = batch.scalars
        tags_append, steps_append = cols.tags.append, cols.steps.append
        walls_append, values_append = cols.wall_times.append, cols.values.append
        n_scalars = 0
        records = 0
        heavy = 0  # non-scalar points + image bytes/1MB, to cap batch memory
        for _, data in iter_records(f, self.start_offset, end, status):
            records += 1
            try:
                ev = parse(data)
            except DecodeError:
                self.unparsable += 1
                batch.skipped_records += 1
                continue
            values = ev.summary.value
            if values:
                step, wall = ev.step, ev.wall_time
                for v in values:
                    kind = v.WhichOneof("value")
                    if kind == "simple_value":
                        tags_append(v.tag)
                        steps_append(step)
                        walls_append(wall)
                        values_append(v.simple_value)
                        n_scalars += 1
                    else:
                        heavy += self._decode_value(v, kind, step, wall, batch)
            else:
                what = ev.WhichOneof("what")
                if what in _NON_SUMMARY:
                    batch.count_other(_NON_SUMMARY[what])
            if n_scalars + heavy >= max_points:
                batch.records = records
                yield self._seal(batch, crc_skipped_before)
                crc_skipped_before = status.bad_data_crc
                records = n_scalars = heavy = 0
                batch = self._new_batch(status.offset)
                cols = batch.scalars
                tags_append, steps_append = cols.tags.append, cols.steps.append
                walls_append, values_append = cols.wall_times.append, cols.values.append
        batch.records = records
        if status.offset > batch.start_offset or batch.points or batch.other:
            yield self._seal(batch, crc_skipped_before)

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
        if kind == "tensor":
            return self._decode_tensor(v, tag, plugin, step, wall, batch)
        if kind == "histo":
            h = v.histo
            limits = list(h.bucket_limit)
            counts = tuple(h.bucket)
            if limits:
                lefts = tuple([h.min] + limits[:-1])
                rights = tuple(limits[:-1] + [h.max])
            else:
                lefts = rights = ()
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
        batch.count_other(kind or "empty_value")
        return 0

    def _decode_tensor(self, v, tag: str, plugin: str, step: int, wall: float, batch: Batch) -> int:
        t = v.tensor
        if plugin == "hparams":
            return self._decode_hparams(v, step, wall, batch)
        try:
            arr = tensor_to_ndarray(t)
        except (ValueError, TypeError) as e:
            batch.count_other(f"undecodable_tensor:{e}")
            return 0
        if plugin in ("scalars", "") and arr.dtype != object and arr.size == 1:
            batch.scalars.append(tag, step, wall, float(arr.reshape(-1)[0]))
            return 0
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
            weight = 0
            for k, enc in enumerate(flat[2:]):
                batch.images.append(ImagePoint(tag, step, wall, bytes(enc), width, height, 0, k))
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

                hp[name] = MessageToJson(val)
        batch.hparams.append(HParamsPoint(step, wall, hp, info.group_name))
        return 1
