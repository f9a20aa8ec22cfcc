"""Hostile summary values built from real protobufs, shared by the reader tests and the CLI tests
(tests/test_hostile_input_reader.py): each is a value whose fields contradict each other, so
that a reader trusting the shape would allocate far more than the record holds.
"""
from __future__ import annotations

from tensorboard.compat.proto import summary_pb2

from tracelet.testing.events import (DT_BFLOAT16, DT_DOUBLE, DT_FLOAT, DT_HALF, DT_STRING, DT_UINT8,
                                     T0, Value, event_bytes, framed, scalar_event, summary_event,
                                     tensor, tensor_value)

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
    data = event_bytes(range(5))
    at = len(data)
    data += framed(summary_event(5, T0 + 5, [value]))
    data += b"".join(framed(scalar_event("loss", k, 0.5 * k)) for k in range(6, 10))
    text = tensor_value("after", tensor(DT_STRING, [], string_val=[b"still read"]), "text")
    data += framed(summary_event(10, T0 + 10, [text]))
    path.write_bytes(data)
    return at
