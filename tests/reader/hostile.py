"""Hostile summary values built from real protobufs, shared by the reader tests and the CLI tests
(tests/test_hostile_input_reader.py): each is a value whose fields contradict each other, so
that a reader trusting the shape would allocate far more than the record holds.
"""
from __future__ import annotations

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2

from tracelet.reader import frame_record

Value = summary_pb2.Summary.Value


def scalar_event(step: int, value: float, tag: str = "loss") -> event_pb2.Event:
    return event_pb2.Event(step=step, wall_time=1000.0 + step,
                           summary=summary_pb2.Summary(value=[Value(tag=tag, simple_value=value)]))


def tensor(dtype: int, dims, **fields) -> tensor_pb2.TensorProto:
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **fields)


def value_event(step: int, value: Value) -> event_pb2.Event:
    return event_pb2.Event(step=step, wall_time=1000.0 + step,
                           summary=summary_pb2.Summary(value=[value]))


def tensor_value(tag: str, t: tensor_pb2.TensorProto, plugin: str = "") -> Value:
    v = Value(tag=tag, tensor=t)
    if plugin:
        v.metadata.plugin_data.plugin_name = plugin
    return v


DT_FLOAT, DT_DOUBLE, DT_UINT8, DT_STRING, DT_BFLOAT16, DT_HALF = 1, 2, 4, 7, 14, 19
# Each would make the old reader allocate from the shape (64 GiB to 256 GiB and beyond, or an
# int64 product that wraps), or holds data its shape contradicts. Sizes are far beyond this
# machine's memory on purpose: a regression fails at once with MemoryError, it cannot thrash.
HOSTILE_VALUES = {
    "float_last_value_repeats_256GiB": lambda: tensor_value(
        "loss_t", tensor(DT_FLOAT, [65536, 65536, 16], float_val=[1.0]), "scalars"),
    "float_no_values_256GiB": lambda: tensor_value(
        "loss_t", tensor(DT_FLOAT, [65536, 65536, 16]), "scalars"),
    "histogram_no_values_huge": lambda: tensor_value(
        "w", tensor(DT_DOUBLE, [1 << 40, 3]), "histograms"),
    "product_wraps_int64": lambda: tensor_value(
        "x", tensor(DT_FLOAT, [1 << 62, 4, 4])),
    "negative_dimension": lambda: tensor_value(
        "x", tensor(DT_FLOAT, [-1, 3], float_val=[1.0, 2.0, 3.0])),
    "rank_1000": lambda: tensor_value("x", tensor(DT_FLOAT, [1] * 1000, float_val=[1.0])),
    "tensor_content_too_short": lambda: tensor_value(
        "w", tensor(DT_DOUBLE, [1000, 3], tensor_content=b"\0" * 8), "histograms"),
    "tensor_content_too_long": lambda: tensor_value(
        "x", tensor(DT_FLOAT, [2], tensor_content=b"\0" * 12), "scalars"),
    "more_values_than_shape": lambda: tensor_value(
        "x", tensor(DT_FLOAT, [2], float_val=[1.0, 2.0, 3.0, 4.0, 5.0])),
    "bfloat16_no_values_huge": lambda: tensor_value(
        "x", tensor(DT_BFLOAT16, [1 << 30, 1 << 10]), "scalars"),
    "half_last_value_repeats_huge": lambda: tensor_value(
        "x", tensor(DT_HALF, [1 << 40], half_val=[15360]), "scalars"),
    "uint8_value_out_of_range": lambda: tensor_value(
        "x", tensor(DT_UINT8, [], int_val=[300]), "scalars"),
    "text_string_repeats_2^40": lambda: tensor_value(
        "notes", tensor(DT_STRING, [1 << 40], string_val=[b"x"]), "text"),
    "image_string_repeats_512MiB": lambda: tensor_value(
        "img", tensor(DT_STRING, [3 + (1 << 19)], string_val=[b"64", b"48", b"x" * 1024]),
        "images"),
    "audio_clips_repeat_huge": lambda: tensor_value(
        "clip", tensor(DT_STRING, [1 << 35, 2], string_val=[b"RIFF", b"label"]), "audio"),
    "histo_buckets_without_limits": lambda: Value(tag="h", histo=summary_pb2.HistogramProto(
        min=0.0, max=3.0, num=6, sum=9.0, bucket=[1.0, 2.0, 3.0], bucket_limit=[])),
}


def hostile_event_file(path, value: Value) -> int:
    """file_version, scalars 0..4, the hostile value at step 5, scalars 6..9 (and a text after
    it). Returns the byte offset of the hostile record."""
    events = [event_pb2.Event(wall_time=1.0, file_version="brain.Event:2")]
    events += [scalar_event(k, 0.5 * k) for k in range(5)]
    data = b"".join(frame_record(e.SerializeToString()) for e in events)
    at = len(data)
    data += frame_record(value_event(5, value).SerializeToString())
    data += b"".join(frame_record(scalar_event(k, 0.5 * k).SerializeToString())
                     for k in range(6, 10))
    text = tensor_value("after", tensor(DT_STRING, [], string_val=[b"still read"]), "text")
    data += frame_record(value_event(10, text).SerializeToString())
    path.write_bytes(data)
    return at
