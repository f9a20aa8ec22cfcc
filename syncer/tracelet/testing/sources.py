"""Deterministic source logdirs for the destination tests, with the truth they must produce.

Built from raw protos (:mod:`tracelet.testing.events`), so the tests know every point that
must land: each destination test compares what the vendor's own client reads back with
:class:`SourceTruth`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tensorboard.compat.proto import summary_pb2

from .events import (DT_DOUBLE, DT_FLOAT, DT_STRING, EVENT_NAME, T0, event_record, framed,
                     header_record, hparams_event, image_bytes, tensor, tensor_value, wav_bytes)


@dataclass
class SourceTruth:
    # (run_path, tag) -> list of (step, value, wall_time)
    scalars: dict[tuple[str, str], list[tuple[int, float, float]]] = field(default_factory=dict)
    histograms: dict[str, int] = field(default_factory=dict)  # run -> count
    images: dict[str, int] = field(default_factory=dict)
    texts: dict[str, int] = field(default_factory=dict)
    audio: dict[str, int] = field(default_factory=dict)
    params: dict[str, dict[str, str]] = field(default_factory=dict)
    system: dict[str, int] = field(default_factory=dict)  # run -> number of sidecar rows
    artifacts: dict[str, list[str]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)

    def add(self, run: str, tag: str, step: int, value: float, wall: float) -> None:
        self.scalars.setdefault((run, tag), []).append((step, value, wall))

    def runs(self) -> list[str]:
        return sorted({r for r, _ in self.scalars})


def f32(x: float) -> float:
    """``x`` as a float32 ``simple_value`` stores it."""
    return float(np.float32(x))


def write_simple_run(path: Path, run: str, truth: SourceTruth, tags: list[str], steps: list[int],
                     seed: int = 0, file_name: str = EVENT_NAME,
                     append: bool = False) -> Path:
    """PyTorch layout: one simple_value per event."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    f = path / file_name
    chunks = [] if append else [header_record()]
    for i, step in enumerate(steps):
        for tag in tags:
            v = f32(rng.standard_normal())
            wall = T0 + seed * 1000 + i * 0.5
            chunks.append(event_record(step, wall, [summary_pb2.Summary.Value(tag=tag, simple_value=v)]))
            truth.add(run, tag, step, v, wall)
    with open(f, "ab" if append else "wb") as fh:
        fh.write(b"".join(chunks))
    return f


def write_points(path: Path, points, *, file_name: str = EVENT_NAME, append: bool = False,
                 truth: SourceTruth | None = None, run: str = "") -> Path:
    """``(tag, step, value)`` or ``(tag, step, value, wall)`` points, one ``simple_value`` per
    event, into one file (raw protos: any value, any step order; ``wall`` defaults to ``T0`` +
    the point's index). With ``truth``, each point is added to it for ``run``."""
    path.mkdir(parents=True, exist_ok=True)
    chunks = [] if append else [header_record()]
    for k, (tag, step, value, *wall) in enumerate(points):
        wall = wall[0] if wall else T0 + k
        chunks.append(event_record(step, wall, [summary_pb2.Summary.Value(tag=tag,
                                                                          simple_value=value)]))
        if truth is not None:
            truth.add(run, tag, step, f32(value), wall)
    f = path / file_name
    with open(f, "ab" if append else "wb") as fh:
        fh.write(b"".join(chunks))
    return f


def write_tf2_run(path: Path, run: str, truth: SourceTruth) -> None:
    """TF2 layout: tensor scalars with plugin metadata on the first value only, a tensor
    histogram, a string-tensor image and text, and an hparams session_start_info."""
    path.mkdir(parents=True, exist_ok=True)
    chunks = [header_record()]

    def content(value, dtype: int, np_dtype):  # a scalar tensor in tensor_content
        return tensor(dtype, [], tensor_content=np.asarray(value, np_dtype).tobytes())

    for i in range(40):
        wall = T0 + 5000 + i
        v = 0.5 ** i
        val = tensor_value("epoch_loss", content(v, DT_FLOAT, np.float32), "scalars" if i == 0 else "")
        chunks.append(event_record(i, wall, [val]))
        truth.add(run, "epoch_loss", i, f32(v), wall)
        acc = tensor_value("epoch_accuracy", content(i / 40, DT_DOUBLE, np.float64),
                           "scalars" if i == 0 else "")
        chunks.append(event_record(i, wall, [acc]))
        truth.add(run, "epoch_accuracy", i, i / 40, wall)
    for i in range(3):
        wall = T0 + 6000 + i
        edges = np.linspace(-1, 1, 6)
        hist = np.stack([edges[:-1], edges[1:], np.arange(5, dtype=np.float64) + i], axis=1)
        t = tensor(DT_DOUBLE, [5, 3], tensor_content=hist.astype(np.float64).tobytes())
        hv = tensor_value("dense/kernel", t, "histograms" if i == 0 else "")
        chunks.append(event_record(i, wall, [hv]))
        iv = tensor_value("samples", tensor(DT_STRING, [3], string_val=[b"8", b"6", image_bytes(8, 6, i)]),
                          "images")
        chunks.append(event_record(i, wall, [iv]))
        tv = tensor_value("notes", tensor(DT_STRING, [], string_val=[f"note {i}".encode()]), "text")
        chunks.append(event_record(i, wall, [tv]))
    truth.histograms[run] = 3
    truth.images[run] = 3
    truth.texts[run] = 3
    # tf.summary.audio: a [k, 2] string tensor of (WAV clip, label), plugin "audio"
    for i in range(2):
        clips = [wav_bytes(400, 8000, i), b"clip a", wav_bytes(300, 8000, i + 5), b"clip b"]
        av = tensor_value("speech", tensor(DT_STRING, [2, 2], string_val=clips), "audio")
        chunks.append(event_record(i, T0 + 6500 + i, [av]))
    truth.audio[run] = 4
    chunks.append(framed(hparams_event({"optimizer": "adam", "units": 64}, 0, T0 + 7000)))
    truth.params.setdefault(run, {}).update({"optimizer": "adam", "units": "64"})
    (path / "events.out.tfevents.1700000000.tfhost.2.v2").write_bytes(b"".join(chunks))


def write_recorded_run(path: Path, run: str, truth: SourceTruth, project: str) -> None:
    """A Tracelet-recorder-style run: manifest, sidecar parts, artifacts, plus events."""
    write_simple_run(path, run, truth, ["Loss/Train/CrossEntropy", "Metrics/Accuracy/Validation"],
                     list(range(25)), seed=7)
    manifest = {
        "schema_version": 1, "run_id": f"rid-{run.replace('/', '-')}", "name": run.split("/")[-1],
        "project": project, "backends": ["mlflow"], "status": "finished",
        "started_at": T0, "ended_at": T0 + 3600,
        "params": {"learning_rate": 0.001, "batch_size": 32, "optimizer": "AdamW",
                   "api_key": "***REDACTED***", "model": {"depth": 50}},
        "tags": {"team": "vision"},
    }
    (path / "tracelet.json").write_text(json.dumps(manifest))
    truth.params.setdefault(run, {}).update({"learning_rate": "0.001", "batch_size": "32",
                                            "optimizer": "AdamW", "api_key": "***REDACTED***",
                                            "model/depth": "50"})
    truth.status[run] = "finished"
    side = path / "sysmetrics"
    side.mkdir()
    rows = 0
    for part in (1, 2):
        ts = [T0 + part * 100 + k for k in range(10)]
        names = ["cpu/utilization_percent", "memory/used_bytes"] * 5
        vals = [float(k) for k in range(10)]
        pq.write_table(pa.table({"timestamp": ts, "name": names, "value": vals}),
                       side / f"part-{part:06d}.parquet")
        rows += 10
    truth.system[run] = rows
    art = path / "artifacts"
    (art / "configs").mkdir(parents=True)
    (art / "config.yaml").write_text("lr: 0.001\n")
    (art / "configs" / "model.py").write_text("class Net: pass\n")
    truth.artifacts[run] = ["config.yaml", "configs/model.py"]


def build_conformance_logdir(root: Path, project: str = "conformance") -> SourceTruth:
    """Three runs covering every kind, writers' encodings and awkward values."""
    truth = SourceTruth()
    a = root / "torch" / "resnet"
    write_simple_run(a, "torch/resnet", truth, ["Loss/train", "Accuracy/val"], list(range(0, 300, 3)), seed=1)
    # awkward values and steps in a second file of the same run (a restart)
    f = a / "events.out.tfevents.1700000500.host.1.1"
    chunks = [header_record(T0 + 500)]
    odd = [(-5, float("nan")), (0, float("inf")), (2**40, float("-inf")), (7, 1e-30), (7, 3.5)]
    # ... and writers with a broken clock: NaN / absurd wall times (sent with wall time 0)
    odd += [(8, 0.25), (9, 0.5), (10, 0.75)]
    bad_walls = {5: float("nan"), 6: 1e300, 7: float("-inf")}
    for k, (step, v) in enumerate(odd):
        wall = bad_walls.get(k, T0 + 500 + k)
        chunks.append(event_record(step, wall, [summary_pb2.Summary.Value(tag="Loss/train", simple_value=v)]))
        truth.add("torch/resnet", "Loss/train", step, f32(v) if math.isfinite(v) else v, wall)
    # PyTorch / tensorboardX add_audio: Summary.Audio with the WAV bytes
    for k in range(2):
        au = summary_pb2.Summary.Audio(sample_rate=16000, num_channels=1, length_frames=500,
                                       encoded_audio_string=wav_bytes(500, 16000, k),
                                       content_type="audio/wav")
        chunks.append(event_record(k, T0 + 590 + k, [summary_pb2.Summary.Value(tag="audio/out", audio=au)]))
    truth.audio["torch/resnet"] = 2
    long_tag = "very/long/" + "x" * 300  # over MLflow's 250 characters and W&B's 128 for projects
    for k, tag in enumerate(["ünïcode/损失", "weird tag:with%chars", "a//b/./c", long_tag]):
        wall = T0 + 600 + k
        chunks.append(event_record(k, wall, [summary_pb2.Summary.Value(tag=tag, simple_value=float(k))]))
        truth.add("torch/resnet", tag, k, float(k), wall)
    f.write_bytes(b"".join(chunks))
    write_tf2_run(root / "keras" / "train", "keras/train", truth)
    write_recorded_run(root / project / "recorded", f"{project}/recorded", truth, project)
    return truth


def build_kill_logdir(root: Path, runs: int = 3, steps: int = 2000) -> SourceTruth:
    truth = SourceTruth()
    for r in range(runs):
        write_simple_run(root / f"run{r}", f"run{r}", truth, ["loss", "acc"], list(range(steps)), seed=r)
    return truth
