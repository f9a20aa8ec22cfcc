"""Event files built from real TensorBoard protobufs, framed with Tracelet's own
:func:`~tracelet.reader.frame_record`: the one place tests (Tracelet's and a destination
plugin's) make events, records and event files.

Two levels: ``*_event`` functions return an ``event_pb2.Event`` (serialize it, or hand it to
:func:`write_frames`); ``*_record`` functions return one framed record's bytes, ready to be
written or concatenated. Wall times default to ``T0 + step`` (a plausible 2023 clock).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterable, Sequence, Union

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2

from ..reader import frame_record

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
EVENT_NAME = "events.out.tfevents.1700000000.host.1.0"  # a PyTorch SummaryWriter's file name
Value = summary_pb2.Summary.Value
Payload = Union[bytes, event_pb2.Event]
# TensorFlow's DataType enum values (types.proto) used by the tests
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_STRING, DT_INT64, DT_BOOL, DT_BFLOAT16, DT_HALF = \
    1, 2, 3, 4, 7, 9, 10, 14, 19


def version_event(wall: float = T0) -> event_pb2.Event:
    """The ``file_version`` event every writer puts first."""
    return event_pb2.Event(wall_time=wall, file_version="brain.Event:2")


def summary_event(step: int, wall: float, values: Iterable[Value]) -> event_pb2.Event:
    """One event holding ``values`` (``Summary.Value`` protos of any kind)."""
    return event_pb2.Event(step=step, wall_time=wall, summary=summary_pb2.Summary(value=values))


def scalar_event(tag: str = "loss", step: int = 0, value: float = 0.0, wall: float | None = None,
                 *, pairs: Sequence[tuple[str, float]] | None = None) -> event_pb2.Event:
    """A ``simple_value`` scalar event (PyTorch's layout): ``tag`` = ``value`` at ``step``, or
    one value per ``(tag, value)`` of ``pairs`` in the same event (then ``tag`` and ``value``
    are not used). ``wall`` defaults to ``T0 + step``."""
    items = pairs if pairs is not None else [(tag, value)]
    return summary_event(step, T0 + step if wall is None else wall,
                         [Value(tag=t, simple_value=v) for t, v in items])


def tensor(dtype: int, dims: Sequence[int], **fields) -> tensor_pb2.TensorProto:
    """A ``TensorProto`` of ``dtype`` and shape ``dims`` (``[]``: a scalar) with ``fields``
    (``float_val=[...]``, ``string_val=[...]``, ``tensor_content=b"..."``) as given: nothing
    checks that they agree with the shape, so hostile tensors are made the same way."""
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape, **fields)


def plugin_metadata(plugin: str, content: bytes = b"") -> summary_pb2.SummaryMetadata:
    """Summary metadata naming the TensorBoard plugin (``scalars``, ``images``, ``hparams``)."""
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin, content=content))


def tensor_value(tag: str, t: tensor_pb2.TensorProto, plugin: str = "") -> Value:
    """A tensor summary value, with the plugin's metadata if ``plugin`` is given."""
    v = Value(tag=tag, tensor=t)
    if plugin:
        v.metadata.CopyFrom(plugin_metadata(plugin))
    return v


def hparams_event(hparams: dict, step: int = 0, wall: float | None = None) -> event_pb2.Event:
    """The hparams plugin's ``session_start_info`` event (what Keras' hparams callback, torch's
    ``add_hparams`` and Lightning write): strings, bools and numbers (numbers are doubles on the
    wire, so ``64`` reads back as ``64.0``)."""
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    def value(v) -> struct_pb2.Value:
        if isinstance(v, bool):
            return struct_pb2.Value(bool_value=v)
        if isinstance(v, str):
            return struct_pb2.Value(string_value=v)
        return struct_pb2.Value(number_value=float(v))

    info = plugin_data_pb2.SessionStartInfo(hparams={k: value(v) for k, v in hparams.items()})
    content = plugin_data_pb2.HParamsPluginData(version=0, session_start_info=info)
    return summary_event(step, T0 + step if wall is None else wall, [Value(
        tag="_hparams_/session_start_info",
        metadata=plugin_metadata("hparams", content.SerializeToString()))])


def framed(payload: Payload) -> bytes:
    """One TFRecord frame of an event (or of raw payload bytes, valid protobuf or not)."""
    return frame_record(payload if isinstance(payload, bytes) else payload.SerializeToString())


def header_record(wall: float = T0) -> bytes:
    """The framed ``file_version`` record."""
    return framed(version_event(wall))


def event_record(step: int, wall: float, values: Iterable[Value]) -> bytes:
    """One framed event holding ``values``."""
    return framed(summary_event(step, wall, values))


def write_frames(path: str | os.PathLike, payloads: Iterable[Payload], *,
                 append: bool = False) -> list[int]:
    """Write ``payloads`` (events or raw bytes) as framed records to ``path`` (its folder is
    created; ``append`` adds to an existing file). Returns each record's start offset."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pos = path.stat().st_size if append and path.exists() else 0
    offsets, frames = [], []
    for p in payloads:
        fr = framed(p)
        offsets.append(pos)
        pos += len(fr)
        frames.append(fr)
    with open(path, "ab" if append else "wb") as f:
        f.write(b"".join(frames))
    return offsets


def event_bytes(steps: Iterable[int], tag: str = "loss", scale: float = 0.5) -> bytes:
    """An event file's bytes: the ``file_version`` record, then one ``simple_value`` record
    per step (``tag`` = ``scale * step``)."""
    return header_record() + b"".join(framed(scalar_event(tag, k, scale * k)) for k in steps)


# -- payloads -------------------------------------------------------------------------------
def image_bytes(width: int = 8, height: int = 6, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A ``width`` x ``height`` RGB image of random pixels (``seed``), encoded by Pillow."""
    import numpy as np
    from PIL import Image

    arr = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def wav_bytes(frames: int, rate: int, seed: int | None = None) -> bytes:
    """A mono 16-bit WAV clip of ``frames`` samples at ``rate`` Hz: silence, or a sine whose
    pitch depends on ``seed``."""
    import wave

    import numpy as np

    if seed is None:
        pcm = np.zeros(frames, "<i2").tobytes()
    else:
        pcm = (np.sin(np.arange(frames) * (0.05 + seed / 100)) * 20000).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()
