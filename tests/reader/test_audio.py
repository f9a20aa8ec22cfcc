"""Audio from every writer's encoding: PyTorch/tensorboardX ``Summary.Audio`` and TF2's
``tf.summary.audio`` string tensor ``[k, 2]`` (clip, label) with plugin ``audio``."""
from __future__ import annotations

import io
import wave

from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2

from tracelet.reader import EventFileReader, frame_record
from tracelet.testing.events import wav_bytes


def _read(path):
    out = []
    for b in EventFileReader(path).batches():
        out.extend(b.audio)
    return out


def test_torch_add_audio(tmp_path):
    import torch
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path)) as w:
        for step in range(3):
            w.add_audio("speech/out", torch.zeros(800), step, sample_rate=16000)
    (path,) = tmp_path.glob("events.out.tfevents.*")
    clips = _read(path)
    assert [(a.tag, a.step, a.format, a.sample_rate, a.index) for a in clips] == [
        ("speech/out", s, "wav", 16000.0, 0) for s in range(3)]
    with wave.open(io.BytesIO(clips[0].encoded)) as wf:  # the writer's bytes, unchanged
        assert wf.getframerate() == 16000 and wf.getnframes() == 800


def test_tf2_audio_tensor_with_labels(tmp_path):
    clips = [wav_bytes(100, 8000), b"first", wav_bytes(50, 22050), b"second"]
    t = tensor_pb2.TensorProto(dtype=7, string_val=clips, tensor_shape=tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2), tensor_shape_pb2.TensorShapeProto.Dim(size=2)]))
    md = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="audio"))
    path = tmp_path / "events.out.tfevents.1.host.v2"
    events = [event_pb2.Event(wall_time=1.0, file_version="brain.Event:2")]
    for step in range(2):  # metadata only with the tag's first value: the tag->plugin map carries it
        v = summary_pb2.Summary.Value(tag="a", tensor=t)
        if step == 0:
            v.metadata.CopyFrom(md)
        events.append(event_pb2.Event(step=step, wall_time=2.0 + step, summary=summary_pb2.Summary(value=[v])))
    path.write_bytes(b"".join(frame_record(e.SerializeToString()) for e in events))
    got = _read(path)
    assert [(a.step, a.index, a.label, a.sample_rate, a.format) for a in got] == [
        (0, 0, "first", 8000.0, "wav"), (0, 1, "second", 22050.0, "wav"),
        (1, 0, "first", 8000.0, "wav"), (1, 1, "second", 22050.0, "wav")]
    assert got[1].encoded == clips[2]
