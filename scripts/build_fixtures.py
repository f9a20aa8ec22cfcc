#!/usr/bin/env python3
"""(Re)build ``fixtures/``: small TensorBoard logdirs, one folder per behaviour they exercise.

Usage (from the repository root)::

    . .venv/bin/activate
    python scripts/build_fixtures.py                 # every fixture that needs no TensorFlow
    python scripts/build_fixtures.py --only nan_inf  # just these (repeatable)
    python scripts/build_fixtures.py --check         # rebuild in a temp dir, diff with fixtures/
    python scripts/build_fixtures.py --list          # names, writers, what each exercises

    # The TensorFlow fixtures (tf2_*, keras_fit) are built ONCE and committed, because TensorFlow
    # is not a dependency of Tracelet. To rebuild them, in a throwaway venv:
    python3 -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu tensorboard
    /tmp/tfvenv/bin/python scripts/build_fixtures.py --tf
    #   (the committed ones were written by tensorflow-cpu 2.21.0, keras 3.15.1, tensorboard 2.21.0,
    #    Python 3.11, on Linux x86-64)

Every event file is written by a REAL writer where one exists here: PyTorch's
``torch.utils.tensorboard.SummaryWriter``, tensorboardX's ``SummaryWriter``, TensorBoard's own
``EventFileWriter`` fed with ``tensorboard.plugins.*.summary_v2.*_pb`` protos, TensorFlow 2's
``tf.summary`` file writer, TensorFlow's ``tf.compat.v1.summary.FileWriter`` and Keras'
``TensorBoard`` callback. The damaged fixtures are real writer output damaged afterwards (a byte
flipped, a tail cut), and ``corruptions.json`` records exactly what was done, at which byte.

Where "plugin metadata only on a tag's first value" comes from: TF 2.21's own ``tf.summary``
writer (eager) puts the metadata on EVERY value; TensorFlow's ``tf.compat.v1.summary.FileWriter``
strips it from every value after a tag's first ("to save space", in TF's source). So each TF
fixture has two runs: ``tf2_summary_writer/`` (the TF2 writer's bytes) and ``tf1_file_writer/``
(the same summaries re-emitted through that FileWriter, plus typed-field tensors from
``tf.make_tensor_proto``). Wall times in ``tf1_file_writer/`` are the time of the build.

Determinism
-----------
* Seeds are fixed (``random``, ``numpy``, ``torch``, TensorFlow/Keras).
* Every value is written with an explicit ``walltime`` where the writer takes one; for what the
  writers stamp themselves (the ``file_version`` event, ``add_hparams``' child folder named
  ``str(time.time())``, the event file name's timestamp/hostname/pid) the clock, hostname and pid
  are frozen while the writer lives (:func:`frozen_writer_env`), and TensorBoard's process-wide
  file counter is reset. So the non-TF fixtures are byte-identical on every rebuild with the same
  library versions (``--check`` verifies it), except for the hparams map order in (2) below.
  The committed ones were built with torch 2.13.0+cpu, tensorboardX 2.6.5, tensorboard 2.21.0,
  protobuf 7.36.2 (upb), numpy 2.4.6, Pillow 13.0.0.
* What is NOT byte-stable: (1) PNG bytes come from Pillow's zlib; another Pillow/zlib may encode
  differently (the pixels are the same). (2) Protobuf serialisation is deterministic within one
  protobuf version only, and not at all for map fields: upb writes the hparams maps
  (``session_start_info.hparams``, inside the ``hparams`` plugin content) in hash-table order,
  which changes from process to process (PYTHONHASHSEED does not fix it). Files holding hparams
  therefore differ in bytes between rebuilds; ``--check`` compares those semantically (every
  record parsed, the hparams content parsed too) and says so. (3) The TensorFlow fixtures: TF
  stamps wall times in C++ from the real clock and writes the host/pid into the file name; the
  builder renames the files to the fixed pattern afterwards, but the wall times inside are the
  real time of the build. They are therefore built once and committed, never rebuilt by default.

Nothing here imports ``tracelet``: the fixtures must not depend on the code they test.
"""
from __future__ import annotations

import argparse
import contextlib
import filecmp
import json
import math
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"
CORRUPTIONS_JSON = "corruptions.json"

T0 = 1_700_000_000.0  # frozen wall clock (2023-11-14T22:13:20Z): every fixture's time zero
HOST = "fixturehost"
PID = 4242
SEED = 20240601


# --------------------------------------------------------------------------------------------
# Frozen clock / host / pid while a writer lives
# --------------------------------------------------------------------------------------------
class _Clock:
    now = T0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def frozen_writer_env(now: float = T0):
    """Freeze ``time.time``, the hostname and the pid the writers put in names and stamps.

    The writers' background flush threads call ``time.time`` too: with a frozen clock they never
    think a flush is due, so everything is written in order at ``close()``.
    """
    clock = _Clock()
    clock.now = now
    saved = time.time, socket.gethostname, os.getpid
    time.time = clock
    socket.gethostname = lambda: HOST
    os.getpid = lambda: PID
    try:
        try:  # TensorBoard's process-wide counter in event file names (".0", ".1", ...)
            from tensorboard.summary.writer import event_file_writer as efw

            efw._global_uid = efw.AtomicCounter(0)
        except ImportError:
            pass
        yield clock
    finally:
        time.time, socket.gethostname, os.getpid = saved


def seed_everything() -> None:
    random.seed(SEED)
    try:
        import numpy as np

        np.random.seed(SEED)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(SEED)
    except ImportError:
        pass


def _wt(step: int, k: float = 0.0) -> float:
    """A wall time for ``step``: half a second per step after T0 (exact in float64)."""
    return T0 + 0.5 * step + k


def _rng():
    import numpy as np

    return np.random.RandomState(SEED)


# --------------------------------------------------------------------------------------------
# TFRecord framing, just enough to find record boundaries in a file the writers made.
# (Deliberately not tracelet.reader: the damage must be placed independently of the reader.)
# --------------------------------------------------------------------------------------------
def record_spans(path: Path) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` of each record in an intact file (lengths trusted, no CRC check)."""
    data = path.read_bytes()
    spans, pos = [], 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length + 4
        if end > len(data):
            break
        spans.append((pos, end))
        pos = end
    assert pos == len(data), f"{path}: not a clean TFRecord file"
    return spans


def only_event_file(folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if "tfevents" in p.name)
    assert len(files) == 1, files
    return files[0]


# --------------------------------------------------------------------------------------------
# PyTorch fixtures
# --------------------------------------------------------------------------------------------
def _torch_writer(logdir: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(logdir), flush_secs=3600, max_queue=1000)


def _tiny_image_chw(seed_shift: int = 0):
    import numpy as np

    rng = np.random.RandomState(SEED + seed_shift)
    return (rng.rand(3, 6, 8)).astype(np.float32)  # C, H, W = 3, 6, 8


def build_torch_scalars(d: Path) -> None:
    """Everything PyTorch's writer does in one run, as a user would call it."""
    rng = _rng()
    run = d / "resnet"
    with frozen_writer_env(T0) as clock:
        w = _torch_writer(run)
        for step in range(25):
            wt = _wt(step)
            w.add_scalar("loss", float(2.0 / (step + 1)), step, walltime=wt)
            w.add_scalar("accuracy", float(step / 25.0), step, walltime=wt)
            w.add_scalar("lr", 0.1 * 0.9**step, step, walltime=wt)
            # torch's two other scalar encodings: a float tensor, and a double tensor
            w.add_scalar("new_style/loss", float(1.0 / (step + 1)), step, walltime=wt,
                         new_style=True)
            w.add_scalar("new_style/loss_f64", 1.0 / 3.0 + step, step, walltime=wt,
                         new_style=True, double_precision=True)
            # add_scalars: child runs resnet/Loss_compare_train and resnet/Loss_compare_val
            w.add_scalars("Loss/compare", {"train": 1.0 / (step + 1), "val": 1.5 / (step + 1)},
                          step, walltime=wt)
            if step % 5 == 0:
                w.add_histogram("weights/conv1", rng.randn(200) * (1 + step / 10), step,
                                walltime=wt)
                w.add_histogram("weights/fc", rng.rand(50), step, bins="fd", walltime=wt)
                w.add_image("input/sample", _tiny_image_chw(step), step, walltime=wt)
                w.add_text("notes", f"step **{step}**: loss {2.0 / (step + 1):.4f}", step,
                           walltime=wt)
        clock.now = T0 + 100.0  # add_hparams names its child folder str(time.time())
        w.add_hparams({"lr": 0.1, "batch_size": 32, "optimizer": "sgd", "nesterov": True},
                      {"hparam/accuracy": 0.96, "hparam/loss": 0.08})
        w.close()


def build_torch_audio(d: Path) -> None:
    """``add_audio``: a 16 kHz mono tone at every step (Summary.Audio, WAV bytes)."""
    import torch

    with frozen_writer_env(T0):
        w = _torch_writer(d / "speech")
        for step in range(6):
            w.add_scalar("loss", 1.0 / (step + 1), step, walltime=_wt(step))
            t = torch.arange(800, dtype=torch.float32) / 16000.0
            tone = 0.5 * torch.sin(2 * math.pi * (220.0 * (step + 1)) * t)
            w.add_audio("tts/sample", tone, step, sample_rate=16000, walltime=_wt(step))
        w.close()


def build_torch_add_hparams(d: Path) -> None:
    """Two ``add_hparams`` calls: two numeric child folders, both belong to the parent run."""
    run = d / "sweep"
    with frozen_writer_env(T0) as clock:
        w = _torch_writer(run)
        for step in range(5):
            w.add_scalar("train/loss", 1.0 / (step + 1), step, walltime=_wt(step))
        clock.now = T0 + 10.0
        w.add_hparams({"lr": 0.01, "layers": 4, "activation": "relu", "dropout": 0.25,
                       "use_bn": False},
                      {"hparam/accuracy": 0.91}, global_step=4)
        clock.now = T0 + 20.0
        w.add_hparams({"lr": 0.001, "layers": 8, "activation": "gelu", "dropout": 0.5,
                       "use_bn": True},
                      {"hparam/accuracy": 0.93}, global_step=4)
        w.close()


def build_torch_add_scalars(d: Path) -> None:
    """``add_scalars`` child folders ``<run>/<main_tag with / as _>_<key>`` are ordinary runs."""
    run = d / "mnist"
    with frozen_writer_env(T0):
        w = _torch_writer(run)
        for step in range(10):
            wt = _wt(step)
            w.add_scalar("loss", 1.0 / (step + 1), step, walltime=wt)
            w.add_scalars("Loss/compare", {"train": 1.0 / (step + 1), "val": 1.2 / (step + 1)},
                          step, walltime=wt)
            w.add_scalars("acc", {"top1": step / 10, "top5": min(1.0, step / 5)}, step,
                          walltime=wt)
        w.close()


def build_nan_inf(d: Path) -> None:
    run = d / "torch"
    specials = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e-45, 3.4028234663852886e38]
    with frozen_writer_env(T0):
        w = _torch_writer(run)
        for step, v in enumerate(specials):
            w.add_scalar("special/f32", v, step, walltime=_wt(step))
            w.add_scalar("special/f64", v, step, walltime=_wt(step), new_style=True,
                         double_precision=True)
        # a NaN wall time: a broken clock must not break the reader
        w.add_scalar("special/nan_walltime", 1.0, len(specials), walltime=float("nan"))
        w.close()


def build_negative_and_huge_steps(d: Path) -> None:
    run = d / "torch"
    steps = [-(2**63), -5, -1, 0, 1, 2**31, 2**40, 2**53 + 1, 2**62, 2**63 - 1]
    with frozen_writer_env(T0):
        w = _torch_writer(run)
        for i, s in enumerate(steps):
            w.add_scalar("loss", float(i), s, walltime=_wt(i))
        w.close()


UNICODE_TAGS = [
    "a/b:c d%e",
    "λ/损失",
    "🚀 launch/ratio (%)",
    "tab\tand\nnewline",
    "quotes'\"back\\slash",
    "  leading and trailing  ",
    "Ünïcödé/Ωμέγα/😀",
]


def build_unicode_tags(d: Path) -> None:
    """Tags as the writers pass them through, unchanged: non-ASCII, spaces, punctuation, emoji."""
    with frozen_writer_env(T0):
        w = _torch_writer(d / "torch")
        for step in range(3):
            for k, tag in enumerate(UNICODE_TAGS):
                w.add_scalar(tag, float(step * 10 + k), step, walltime=_wt(step))
        w.add_text("文本/text ✓", "héllo wörld ✓", 0, walltime=_wt(0))
        w.close()
    with frozen_writer_env(T0):
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.scalar import summary_v2 as scalar_v2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        ew = EventFileWriter(str(d / "tb_writer"), max_queue_size=1000, flush_secs=3600)
        for step in range(3):
            for k, tag in enumerate(UNICODE_TAGS):
                ew.add_event(event_pb2.Event(step=step, wall_time=_wt(step),
                                             summary=scalar_v2.scalar_pb(tag, step * 10.0 + k)))
        ew.close()


def build_restart_overlapping_steps(d: Path) -> None:
    """Training restarted from a checkpoint: a second file in the same run repeats steps 15..29."""
    run = d / "torch"
    with frozen_writer_env(T0):
        w = _torch_writer(run)
        for step in range(30):
            w.add_scalar("loss", 1.0 / (step + 1), step, walltime=_wt(step))
        w.close()
    with frozen_writer_env(T0 + 3600.0):
        w = _torch_writer(run)
        for step in range(15, 40):
            w.add_scalar("loss", 0.9 / (step + 1), step, walltime=_wt(step, 3600.0))
        w.close()


def _torch_base_file(run: Path, n_steps: int = 40) -> Path:
    """A plain PyTorch file to damage: file_version, then one scalar event per step (+ text)."""
    with frozen_writer_env(T0):
        w = _torch_writer(run)
        for step in range(n_steps):
            w.add_scalar("loss", 1.0 / (step + 1), step, walltime=_wt(step))
            if step % 10 == 0:
                w.add_text("log", f"step {step}", step, walltime=_wt(step))
        w.close()
    return only_event_file(run)


def _record_corruption(d: Path, path: Path, info: dict) -> None:
    """Write what was done to the file into fixtures/corruptions.json (merged by the caller)."""
    rel = path.relative_to(d.parent).as_posix()
    _CORRUPTIONS[rel] = dict(info, size_bytes=path.stat().st_size)


_CORRUPTIONS: dict[str, dict] = {}


def build_truncated_tail(d: Path) -> None:
    """The last record is cut in half, as if the writer died (or is still) mid-append."""
    path = _torch_base_file(d / "torch")
    spans = record_spans(path)
    start, end = spans[-1]
    cut = start + 12 + (end - start - 16) // 2
    with open(path, "r+b") as f:
        f.truncate(cut)
    _record_corruption(d, path, {
        "kind": "truncated_tail", "record_index": len(spans) - 1, "record_start": start,
        "record_end": end, "cut_at": cut, "records_before": len(spans) - 1,
    })


def build_flipped_data_byte(d: Path) -> None:
    """One payload byte of a middle record flipped: its data CRC fails, its length CRC holds."""
    path = _torch_base_file(d / "torch")
    spans = record_spans(path)
    k = len(spans) // 2
    start, end = spans[k]
    flip = start + 12 + (end - start - 16) // 2
    data = bytearray(path.read_bytes())
    data[flip] ^= 0x5A
    path.write_bytes(bytes(data))
    _record_corruption(d, path, {
        "kind": "bad_data_crc", "record_index": k, "record_start": start, "record_end": end,
        "flipped_byte": flip, "records_total": len(spans),
    })


def build_flipped_length_byte(d: Path) -> None:
    """A byte of a middle record's length field flipped: its length CRC fails, nothing after it
    can be framed."""
    path = _torch_base_file(d / "torch")
    spans = record_spans(path)
    k = len(spans) // 2
    start, end = spans[k]
    flip = start + 1  # second byte of the little-endian u64 length
    data = bytearray(path.read_bytes())
    data[flip] ^= 0x01
    path.write_bytes(bytes(data))
    _record_corruption(d, path, {
        "kind": "bad_length_crc", "record_index": k, "record_start": start, "record_end": end,
        "flipped_byte": flip, "records_before": k,
    })


def build_garbage_named_like_events(d: Path) -> None:
    """Random bytes under an event-file name (a copy gone wrong, an unrelated file)."""
    run = d / "run"
    run.mkdir(parents=True)
    path = run / f"events.out.tfevents.{int(T0)}.{HOST}.{PID}.0"
    path.write_bytes(random.Random(SEED).randbytes(4096))
    _record_corruption(d, path, {"kind": "garbage", "corrupt_offset": 0})


def build_empty_file(d: Path) -> None:
    """A zero-byte event file (writer created it, wrote nothing yet), beside a normal one."""
    run = d / "run"
    run.mkdir(parents=True)
    (run / f"events.out.tfevents.{int(T0)}.{HOST}.{PID}.0").write_bytes(b"")
    only_empty = d / "only_empty"
    only_empty.mkdir()
    (only_empty / f"events.out.tfevents.{int(T0)}.{HOST}.{PID}.1").write_bytes(b"")
    with frozen_writer_env(T0 + 1):
        w = _torch_writer(run)
        w.add_scalar("loss", 0.5, 0, walltime=_wt(0))
        w.close()


def build_tb_writer(d: Path) -> None:
    """TensorBoard's own writer and its TF-free ``*_pb`` summary builders (TF2 tensor layout)."""
    import numpy as np
    from PIL import Image
    import io

    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.histogram import summary_v2 as histogram_v2
    from tensorboard.plugins.hparams import summary_v2 as hparams_v2
    from tensorboard.plugins.image import metadata as image_metadata
    from tensorboard.plugins.scalar import summary_v2 as scalar_v2
    from tensorboard.plugins.text import summary_v2 as text_v2
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    from tensorboard.util import tensor_util

    rng = _rng()

    def png(seed_shift: int) -> bytes:
        px = (np.random.RandomState(SEED + seed_shift).rand(5, 7, 3) * 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(px).save(buf, format="PNG")
        return buf.getvalue()

    with frozen_writer_env(T0):
        ew = EventFileWriter(str(d / "run"), max_queue_size=1000, flush_secs=3600)

        def emit(step, summary):
            ew.add_event(event_pb2.Event(step=step, wall_time=_wt(step), summary=summary))

        emit(0, hparams_v2.hparams_pb({"lr": 0.05, "units": 64, "optimizer": "adam",
                                        "augment": False}, trial_id="trial-1",
                                       start_time_secs=int(T0)))
        for step in range(12):
            emit(step, scalar_v2.scalar_pb("loss", 1.0 / (step + 1)))
            emit(step, scalar_v2.scalar_pb("metrics/accuracy", step / 12.0))
            if step % 4 == 0:
                emit(step, histogram_v2.histogram_pb("activations", rng.randn(100), buckets=8))
                emit(step, text_v2.text_pb("notes", f"step {step} ✓"))
                emit(step, text_v2.text_pb("table", np.array([["k", "v"], ["lr", "0.05"]])))
                md = image_metadata.create_summary_metadata(display_name="", description="")
                t = tensor_util.make_tensor_proto(
                    np.array([b"7", b"5", png(step), png(step + 1)], dtype=object))
                emit(step, summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                    tag="samples", metadata=md, tensor=t)]))
        ew.close()


def build_nested_logdir(d: Path) -> None:
    """project/run/sub-run folders, a manifest-only run, and folders discovery must not enter."""
    layout = {
        "projA/run1": 3,
        "projA/run1/eval": 2,  # a sub-run: its own folder of event files inside a run folder
        "projA/run2": 2,
        "projB/baseline/seed0": 2,
    }
    for k, (rel, n) in enumerate(layout.items()):
        with frozen_writer_env(T0 + k) as clock:
            w = _torch_writer(d / rel)
            for step in range(n):
                w.add_scalar("loss", 1.0 / (step + 1), step, walltime=_wt(step))
            if rel == "projA/run2":  # an add_hparams child inside projA/run2
                clock.now = T0 + 60
                w.add_hparams({"lr": 0.3}, {"hparam/score": 1.0})
            w.close()
    # manifest only: a Tracelet run that has not written events (yet)
    only = d / "projB/manifest_only"
    only.mkdir(parents=True)
    (only / "tracelet.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "00000000-0000-4000-8000-000000000001",
        "name": "manifest_only", "project": "projB", "backends": [], "status": "running",
        "started_at": T0, "ended_at": None, "params": {"lr": 0.1}, "tags": {},
    }, indent=2, sort_keys=True) + "\n")
    # never runs: Tracelet's state dir, hidden folders
    for hidden in (".tracelet/projA", ".hidden_run", "projA/.ipynb_checkpoints"):
        with frozen_writer_env(T0 + 90):
            w = _torch_writer(d / hidden)
            w.add_scalar("must_not_be_found", 1.0, 0, walltime=_wt(0))
            w.close()


def build_tensorboardx_scalars(d: Path) -> None:
    """tensorboardX: simple_value scalars (also with display name/description metadata), histo,
    image, text, add_scalars, add_hparams, and a PR curve (a plugin Tracelet does not decode)."""
    import tensorboardX

    rng = _rng()
    with frozen_writer_env(T0) as clock:
        w = tensorboardX.SummaryWriter(logdir=str(d / "run"), flush_secs=3600, max_queue=1000)
        for step in range(20):
            wt = _wt(step)
            w.add_scalar("loss", 1.0 / (step + 1), step, walltime=wt)
            w.add_scalar("described/loss", 1.0 / (step + 2), step, walltime=wt,
                         display_name="Loss (described)", summary_description="with metadata")
            w.add_scalars("pair", {"a": float(step), "b": float(-step)}, step, walltime=wt)
            if step % 5 == 0:
                w.add_pr_curve("pr", rng.randint(0, 2, 30), rng.rand(30), step, num_thresholds=5,
                               walltime=wt)  # a plugin the reader does not decode: "other"
                w.add_histogram("hist", rng.randn(100), step, walltime=wt)
                w.add_image("img", _tiny_image_chw(step + 100), step, walltime=wt)
                w.add_text("txt", f"tbx step {step}", step, walltime=wt)
        clock.now = T0 + 200.0
        w.add_hparams({"lr": 0.2, "depth": 3, "opt": "adamw", "flag": True},
                      {"hparam/metric": 0.5})
        w.close()


# --------------------------------------------------------------------------------------------
# TensorFlow fixtures (run under a Python that has tensorflow; see the module docstring)
# --------------------------------------------------------------------------------------------
_TF2_NAME = re.compile(r"^events\.out\.tfevents\.(\d+)\.(.+?)\.(\d+)\.(\d+)\.v2$")
_TF1_NAME = re.compile(r"^events\.out\.tfevents\.(\d+)\.([^.]+)$")


def _normalise_tf_names(folder: Path) -> None:
    """TF2 writes ``events.out.tfevents.<now>.<host>.<pid>.<n>.v2``, TF1's FileWriter
    ``events.out.tfevents.<now>.<host>``: fix time/host/pid so rebuilds keep the names."""
    for p in sorted(folder.rglob("*tfevents*")):
        if m := _TF2_NAME.match(p.name):
            p.rename(p.with_name(f"events.out.tfevents.{int(T0)}.{HOST}.{PID}.{m.group(4)}.v2"))
        elif _TF1_NAME.match(p.name):
            p.rename(p.with_name(f"events.out.tfevents.{int(T0)}.{HOST}"))


def _tf_seed():
    import numpy as np
    import tensorflow as tf

    random.seed(SEED)
    np.random.seed(SEED)
    tf.random.set_seed(SEED)
    try:
        import keras

        keras.utils.set_random_seed(SEED)
    except ImportError:
        pass


SCALAR_DTYPES = ("float32", "float64", "float16", "int32", "int64", "bool")


def _scalar_value(dtype: str, step: int):
    if dtype == "bool":
        return step % 2 == 1
    if dtype.startswith("int"):
        return step * 1000 - 3000
    return 1.0 / (step + 1)


def build_tf2_tensor_scalars_v2(d: Path) -> None:
    """tf.summary (TF2 C++ writer): rank-0 tensors in ``tensor_content``, metadata every value."""
    import tensorflow as tf
    from tensorboard.plugins.scalar import metadata as scalar_metadata

    _tf_seed()
    md = scalar_metadata.create_summary_metadata(display_name="", description="")
    writer = tf.summary.create_file_writer(str(d / "tf2_summary_writer"))
    with writer.as_default():
        for step in range(12):
            tf.summary.scalar("loss", 2.0 / (step + 1), step=step)
            for dt in SCALAR_DTYPES:
                tf.summary.write(f"content/{dt}",
                                 tf.constant(_scalar_value(dt, step), dtype=getattr(tf, dt)),
                                 step=step, metadata=md)
    writer.close()


def build_tf2_histograms_images_text_v2(d: Path) -> None:
    """tf.summary histogram / image / text / hparams (TF2 writer), plus a custom-plugin scalar."""
    import numpy as np
    import tensorflow as tf
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api as hp

    _tf_seed()
    rng = _rng()
    custom_md = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="custom_plugin",
                                                           content=b"v1"))
    writer = tf.summary.create_file_writer(str(d / "tf2_summary_writer"))
    with writer.as_default():
        hp.hparams({"lr": 0.01, "units": 16, "optimizer": "adam", "dropout": 0.1,
                    "batchnorm": True}, trial_id="tf2-trial")
        for step in range(12):
            tf.summary.histogram("weights", rng.randn(64), step=step, buckets=6)
            tf.summary.histogram("empty_hist", np.zeros((0,), np.float32), step=step)
            imgs = rng.rand(2, 4, 5, 3).astype(np.float32)  # 2 images, H=4, W=5, RGB
            tf.summary.image("samples", imgs, step=step, max_outputs=2)
            tf.summary.text("notes", f"step {step}: ünïcode ✓", step=step)
            tf.summary.text("table", [["a", "b"], [f"{step}", "x"]], step=step)
            # a size-1 float tensor of another plugin: a scalar only to a reader that lost the map
            tf.summary.write("custom/thing", tf.constant(float(step), tf.float32), step=step,
                             metadata=custom_md)
    writer.close()


def _tf_v1_phase(args_dir: str) -> None:
    """Graph mode: re-emit the TF2 files through ``tf.compat.v1.summary.FileWriter``.

    That writer strips ``metadata`` from every value whose tag it has seen (comment in TF's
    ``SummaryToEventTransformer.add_summary``: "we just store the metadata on the first value
    with a specific tag"), which is the layout where the tag -> plugin map must survive a resume.
    Also adds the typed-field tensors (``float_val``, ``double_val``, ``half_val``, ``int_val``,
    ``int64_val``, ``bool_val``) that ``tf.make_tensor_proto`` makes for rank-0 values.
    """
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    from tensorboard.plugins.scalar import metadata as scalar_metadata

    md = scalar_metadata.create_summary_metadata(display_name="", description="")
    import numpy as np

    for fixture in ("tf2_tensor_scalars", "tf2_histograms_images_text"):
        d = Path(args_dir) / fixture
        src = only_event_file(d / "tf2_summary_writer")
        fw = tf.compat.v1.summary.FileWriter(str(d / "tf1_file_writer"))
        for ev in tf.compat.v1.train.summary_iterator(str(src)):
            if not ev.HasField("summary"):
                continue
            summ = tf.compat.v1.Summary()
            summ.CopyFrom(ev.summary)
            if fixture == "tf2_tensor_scalars":
                for v in ev.summary.value:
                    if v.tag.startswith("content/"):
                        dt = v.tag.split("/", 1)[1]
                        arr = tf.make_ndarray(v.tensor)
                        typed = summ.value.add()
                        typed.tag = f"typed/{dt}"
                        typed.metadata.ParseFromString(md.SerializeToString())
                        typed.tensor.CopyFrom(
                            tf.make_tensor_proto(np.asarray(arr, dtype=getattr(np, dt))))
            fw.add_summary(summ, ev.step)
        fw.close()


def build_keras_fit(d: Path) -> None:
    """Keras ``model.fit`` with the ``TensorBoard`` callback on a tiny model."""
    import numpy as np
    import keras

    _tf_seed()
    rng = _rng()
    x = rng.randn(64, 4).astype(np.float32)
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.0]], np.float32)).astype(np.float32)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="relu"),
                              keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    cb = keras.callbacks.TensorBoard(log_dir=str(d), histogram_freq=1, write_graph=True,
                                     update_freq="epoch")
    model.fit(x, y, epochs=4, batch_size=16, validation_split=0.25, callbacks=[cb], verbose=0)


def build_tf_all(root: Path) -> None:
    for name in TF_FIXTURES:
        shutil.rmtree(root / name, ignore_errors=True)
    build_tf2_tensor_scalars_v2(root / "tf2_tensor_scalars")
    build_tf2_histograms_images_text_v2(root / "tf2_histograms_images_text")
    build_keras_fit(root / "keras_fit")
    # graph mode cannot be entered once eager ran: a second process of this same script
    subprocess.run([sys.executable, __file__, "--_tf-v1-phase", str(root)], check=True)
    for name in TF_FIXTURES:
        _normalise_tf_names(root / name)


# --------------------------------------------------------------------------------------------
# Registry: fixture -> (builder, what it exercises, which writer made it)
# --------------------------------------------------------------------------------------------
BUILDERS = {
    "torch_scalars": (build_torch_scalars,
                      "scalars (simple_value, new_style float & double tensors), add_scalars "
                      "child runs, add_hparams child run, histo histograms, PNG images, markdown "
                      "text", "PyTorch SummaryWriter"),
    "torch_add_hparams": (build_torch_add_hparams,
                          "two add_hparams calls: two numeric child folders that belong to the "
                          "parent run; hparams experiment/session_start/session_end + metrics",
                          "PyTorch SummaryWriter"),
    "torch_audio": (build_torch_audio, "add_audio: Summary.Audio WAV clips (16 kHz tone) beside "
                    "scalars", "PyTorch SummaryWriter"),
    "torch_add_scalars": (build_torch_add_scalars,
                          "add_scalars: `<run>/Loss_compare_train`... children are ordinary "
                          "runs", "PyTorch SummaryWriter"),
    "tensorboardx_scalars": (build_tensorboardx_scalars,
                             "tensorboardX encodings: simple_value (plain and with metadata), "
                             "histo, image, text, add_scalars, add_hparams, a pr_curve (other)",
                             "tensorboardX SummaryWriter"),
    "tb_writer": (build_tb_writer,
                  "TF2 tensor layout without TF: tensor scalars, [k,3] histograms, string-tensor "
                  "images [w,h,png,png] and text (scalar and table), hparams session_start_info",
                  "TensorBoard EventFileWriter + tensorboard.plugins.*.summary_v2 *_pb"),
    "nan_inf": (build_nan_inf, "NaN, +Inf, -Inf, -0.0, denormal and max-float values as float32 "
                "and float64; a NaN wall time", "PyTorch SummaryWriter"),
    "negative_and_huge_steps": (build_negative_and_huge_steps,
                                "steps -2**63, -5, -1, 0, 2**31, 2**40, 2**53+1, 2**62, 2**63-1",
                                "PyTorch SummaryWriter"),
    "unicode_tags": (build_unicode_tags,
                     "tags with non-ASCII, spaces, `a/b:c d%e`, emoji, tab/newline, quotes",
                     "PyTorch SummaryWriter; TensorBoard EventFileWriter"),
    "restart_overlapping_steps": (build_restart_overlapping_steps,
                                  "two event files in one run; the second restarts at step 15 "
                                  "(steps 15..29 twice)", "PyTorch SummaryWriter (twice)"),
    "truncated_tail": (build_truncated_tail,
                       "last record cut mid-payload: 'not yet', pending_bytes > 0, offset kept "
                       "at the record start", "PyTorch SummaryWriter, then truncated"),
    "flipped_data_byte": (build_flipped_data_byte,
                          "one payload byte flipped in a middle record: that record skipped and "
                          "counted, later records read", "PyTorch SummaryWriter, then damaged"),
    "flipped_length_byte": (build_flipped_length_byte,
                            "one length byte flipped in a middle record: reading stops there, "
                            "corrupt_offset names it", "PyTorch SummaryWriter, then damaged"),
    "garbage_named_like_events": (build_garbage_named_like_events,
                                  "4 KiB of random bytes named events.out.tfevents.*: corrupt at "
                                  "byte 0", "random.Random(seed).randbytes"),
    "empty_file": (build_empty_file, "zero-byte event files (one beside a real file, one alone)",
                   "empty file; PyTorch SummaryWriter"),
    "nested_logdir": (build_nested_logdir,
                      "project/run/sub-run layout, add_hparams child, a run with only "
                      "tracelet.json; .tracelet/ and hidden folders that must not be runs",
                      "PyTorch SummaryWriter; hand-written tracelet.json"),
}
TF_FIXTURES = {
    "tf2_tensor_scalars": ("TF2 tensor scalars float32/float64/float16/int32/int64/bool: in "
                           "`tensor_content` (tf2_summary_writer/, metadata on every value) and "
                           "again plus typed fields (tf1_file_writer/, metadata ONLY on each "
                           "tag's first value)",
                           "TensorFlow 2.21 tf.summary; tf.compat.v1.summary.FileWriter"),
    "tf2_histograms_images_text": ("TF2 [k,3] tensor histograms (incl. empty), string-tensor "
                                   "images [w,h,png,png], string text (scalar, 2x2 table), "
                                   "hparams session_start_info, a custom-plugin rank-0 tensor; "
                                   "tf1_file_writer/ has metadata only on first values",
                                   "TensorFlow 2.21 tf.summary + tensorboard hparams api; "
                                   "tf.compat.v1.summary.FileWriter"),
    "keras_fit": ("Keras fit: train/ and validation/ runs, epoch scalars, weight histograms, "
                  "the model config (`keras` tag, plugin graph_keras_model: counted as other)",
                  "Keras 3.15 TensorBoard callback (TF 2.21)"),
}


def write_readme(root: Path) -> None:
    lines = [
        "# Fixtures",
        "",
        "Small TensorBoard logdirs, one folder per behaviour, made by real writers. Built by",
        "`scripts/build_fixtures.py` (see its docstring for determinism and for how the",
        "TensorFlow fixtures were made); `corruptions.json` records where each damaged file was",
        "damaged (byte offsets). Do not edit by hand: change the builder and rebuild.",
        "",
        "| fixture | what it exercises | written by |",
        "|---|---|---|",
    ]
    for name, (_, what, writer) in BUILDERS.items():
        lines.append(f"| `{name}/` | {what} | {writer} |")
    for name, (what, writer) in TF_FIXTURES.items():
        lines.append(f"| `{name}/` | {what} | {writer} (built once, committed) |")
    (root / "README.md").write_text("\n".join(lines) + "\n")


def build(root: Path, names: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    cj = root / CORRUPTIONS_JSON
    _CORRUPTIONS.clear()
    if cj.exists():
        _CORRUPTIONS.update(json.loads(cj.read_text()))
    for name in names:
        builder = BUILDERS[name][0]
        d = root / name
        shutil.rmtree(d, ignore_errors=True)
        for k in [k for k in _CORRUPTIONS if k.startswith(name + "/")]:
            del _CORRUPTIONS[k]
        d.mkdir(parents=True)
        seed_everything()
        builder(d)
        print(f"built {name}/ ({sum(p.stat().st_size for p in d.rglob('*') if p.is_file()):,} "
              "bytes)")
    cj.write_text(json.dumps(dict(sorted(_CORRUPTIONS.items())), indent=2) + "\n")
    write_readme(root)


def _events_of(path: Path) -> list:
    """Every record of an intact file as a comparable proto (hparams content parsed)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.plugins.hparams import plugin_data_pb2

    data, out = path.read_bytes(), []
    for start, end in record_spans(path):
        ev = event_pb2.Event.FromString(data[start + 12 : end - 4])
        hp = []
        for v in ev.summary.value:
            if v.metadata.plugin_data.plugin_name == "hparams":
                hp.append(plugin_data_pb2.HParamsPluginData.FromString(
                    v.metadata.plugin_data.content))
                v.metadata.plugin_data.content = b""
        out.append((ev, hp))
    return out


def _same_events(a: Path, b: Path) -> bool:
    try:
        return _events_of(a) == _events_of(b)
    except AssertionError:
        return False


def check() -> int:
    """Rebuild into a temp dir and compare byte for byte with fixtures/ (non-TF fixtures)."""
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp), list(BUILDERS))
        bad = 0
        for name in BUILDERS:
            cmp = filecmp.dircmp(FIXTURES / name, Path(tmp) / name)
            stack = [cmp]
            while stack:
                c = stack.pop()
                for f in c.left_only + c.right_only:
                    print(f"only on one side: {c.left}/{f}")
                    bad += 1
                _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files,
                                                       shallow=False)
                for f in mismatch + errors:
                    a, b = Path(c.left) / f, Path(c.right) / f
                    if "tfevents" in f and _same_events(a, b):
                        print(f"same events, other bytes (hparams map order): {a}")
                        continue
                    print(f"differs: {a}")
                    bad += 1
                stack.extend(c.subdirs.values())
        for extra in (CORRUPTIONS_JSON, "README.md"):
            if (FIXTURES / extra).read_bytes() != (Path(tmp) / extra).read_bytes():
                print(f"differs: {extra}")
                bad += 1
    print("fixtures match a rebuild" if not bad else f"{bad} difference(s)")
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(BUILDERS), help="build just these")
    ap.add_argument("--check", action="store_true", help="rebuild to a temp dir and diff")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--tf", action="store_true",
                    help="build the TensorFlow fixtures (needs tensorflow; see docstring)")
    ap.add_argument("--out", type=Path, default=FIXTURES, help=argparse.SUPPRESS)
    ap.add_argument("--_tf-v1-phase", dest="tf_v1_phase", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tf_v1_phase:
        _tf_v1_phase(args.tf_v1_phase)
        return 0
    if args.list:
        for name, (_, what, writer) in BUILDERS.items():
            print(f"{name:28} {writer}: {what}")
        for name, (what, writer) in TF_FIXTURES.items():
            print(f"{name:28} {writer}: {what}")
        return 0
    if args.check:
        return check()
    if args.tf:
        build_tf_all(args.out)
        write_readme(args.out)
        return 0
    build(args.out, args.only or list(BUILDERS))
    missing = [n for n in TF_FIXTURES if not (args.out / n).exists()]
    if missing:
        print(f"TensorFlow fixtures missing ({', '.join(missing)}): build them with --tf under a "
              "Python that has tensorflow (see this script's docstring)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
