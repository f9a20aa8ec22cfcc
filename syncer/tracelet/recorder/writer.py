"""The run's own event file: TensorBoard protos written by TensorBoard's pure-Python writer.

:class:`RunWriter` is what ``Experiment.writer`` returns and what every ``Experiment.log_*``
method writes through, so one run has one Tracelet event file. It speaks the common part of
PyTorch's ``SummaryWriter`` API (``add_scalar``, ``add_scalars``, ``add_histogram``,
``add_image``, ``add_images``, ``add_figure``, ``add_text``, ``add_hparams``, ``flush``,
``close``) without needing torch; any other method (``add_graph``, ``add_embedding`` ...) is
forwarded to a ``torch.utils.tensorboard.SummaryWriter`` (or tensorboardX's) on the same run
directory, created on first use (its own event file in the same run).

Differences from PyTorch's writer, each deliberate:

* ``global_step=None`` means "next step of this tag" (0, 1, 2 ...), as in ``log_metric``.
* ``add_scalars`` writes tags ``main_tag/key`` in the run itself instead of sibling runs.
* ``add_image`` accepts a leading batch dimension of size 1 (``(1, C, H, W)`` with ``"CHW"``).
* images go through the ``max_image_size`` policy (:func:`encode_image`).
* ``close`` only flushes: the experiment owns the file and closes it at ``stop_logging``.
"""
from __future__ import annotations

import io
import logging
import math
import os
import threading
import time
from typing import Any, Mapping

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2

from ..params import flatten_params
from ..redact import DEFAULT as DEFAULT_REDACTOR

log = logging.getLogger("tracelet.recorder")

_DT_STRING = 7
_EVENT_QUEUE = 256  # events buffered before add_* blocks: bounds memory when images pile up
_MIN_IMAGE_SIDE = 8  # px: below this a downscaled image is useless, so it is skipped instead
_MAX_DOWNSCALE_TRIES = 8


# -- values -----------------------------------------------------------------------------------
def to_numpy(x: Any) -> np.ndarray:
    """torch tensors (any device, with grad), numpy arrays, lists -> ndarray."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if hasattr(x, "numpy"):
            return x.numpy()
    return np.asarray(x)


def to_float(value: Any, what: str) -> float:
    """A Python/numpy/torch scalar (or one-element array) as float; TypeError otherwise."""
    if isinstance(value, (int, float)):  # bool included
        return float(value)
    try:
        arr = to_numpy(value)
        if arr.size == 1:
            return float(arr.reshape(-1)[0])
    except (TypeError, ValueError):
        pass
    raise TypeError(f"{what}: expected a number or one-element tensor, got {type(value).__name__} "
                    f"{str(value)[:80]!r}")


# -- summary values ---------------------------------------------------------------------------
def scalar_pb(tag: str, value: float) -> summary_pb2.Summary.Value:
    return summary_pb2.Summary.Value(tag=tag, simple_value=value)


def histogram_pb(tag: str, values: Any, bins: int | str = 64) -> summary_pb2.Summary.Value | None:
    """A ``histo`` value of the finite entries of ``values`` (None when there are none)."""
    a = to_numpy(values).astype(np.float64, copy=False).reshape(-1)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return None
    counts, edges = np.histogram(a, bins=bins)
    histo = summary_pb2.HistogramProto(
        min=float(a.min()), max=float(a.max()), num=float(a.size), sum=float(a.sum()),
        sum_squares=float(np.dot(a, a)), bucket_limit=edges[1:].tolist(), bucket=counts.tolist(),
    )
    return summary_pb2.Summary.Value(tag=tag, histo=histo)


def text_pb(tag: str, text: str) -> summary_pb2.Summary.Value:
    meta = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
    tensor = tensor_pb2.TensorProto(
        dtype=_DT_STRING, string_val=[str(text).encode("utf-8")],
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]),
    )
    return summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor)


def image_pb(tag: str, encoded: bytes, width: int, height: int, channels: int) -> summary_pb2.Summary.Value:
    img = summary_pb2.Summary.Image(height=height, width=width, colorspace=channels,
                                    encoded_image_string=encoded)
    return summary_pb2.Summary.Value(tag=tag, image=img)


def hparams_pb(params: Mapping[str, Any], start_time_s: float) -> summary_pb2.Summary.Value:
    """TensorBoard HParams ``session_start_info``: what the HParams tab (and the reader) show."""
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionStartInfo(start_time_secs=start_time_s)
    for name, v in params.items():
        if isinstance(v, bool):
            info.hparams[name].bool_value = v
        elif isinstance(v, (int, float)):
            info.hparams[name].number_value = float(v)
        elif v is None:
            info.hparams[name].null_value = 0
        else:  # strings, lists (as their JSON-ish text), anything else as str()
            info.hparams[name].string_value = v if isinstance(v, str) else str(v)
    data = plugin_data_pb2.HParamsPluginData(version=metadata.PLUGIN_DATA_VERSION, session_start_info=info)
    return summary_pb2.Summary.Value(tag=metadata.SESSION_START_INFO_TAG,
                                     metadata=metadata.create_summary_metadata(data),
                                     tensor=metadata.NULL_TENSOR)


# -- images -----------------------------------------------------------------------------------
def to_pil_image(image: Any, dataformats: str | None = None):
    """A PIL image from a PIL image, an encoded image (bytes), a path, or an array/tensor.

    Arrays follow PyTorch's conventions: ``dataformats`` "CHW" | "HWC" | "HW" | "NCHW" | "NHWC"
    (a batch becomes a grid); None guesses CHW vs HWC from where the 1/3/4-sized axis is. Float
    pixels are in [0, 1], integers in [0, 255].
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(image)))
    if isinstance(image, (str, os.PathLike)):
        return Image.open(image)
    arr = to_numpy(image)
    fmt = (dataformats or _guess_dataformats(arr)).upper()
    while arr.ndim > len(fmt) and arr.shape[0] == 1:  # (1, C, H, W) given as CHW
        arr = arr[0]
    if arr.ndim != len(fmt):
        raise ValueError(f"image of shape {arr.shape} does not match dataformats {fmt!r}")
    if fmt.startswith("N"):
        arr = _grid(np.stack([_to_hwc(a, fmt[1:]) for a in arr]))
    else:
        arr = _to_hwc(arr, fmt)
    if arr.dtype.kind == "f":
        arr = np.clip(np.nan_to_num(arr) * 255.0 + 0.5, 0, 255)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.shape[2] == 1:
        return Image.fromarray(arr[:, :, 0], "L")
    if arr.shape[2] in (3, 4):
        return Image.fromarray(arr, "RGB" if arr.shape[2] == 3 else "RGBA")
    raise ValueError(f"image with {arr.shape[2]} channels: expected 1, 3 or 4")


def _guess_dataformats(arr: np.ndarray) -> str:
    if arr.ndim == 2:
        return "HW"
    if arr.ndim == 3:
        return "CHW" if arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4) else "HWC"
    if arr.ndim == 4:
        return "NCHW" if arr.shape[1] in (1, 3, 4) else "NHWC"
    raise ValueError(f"cannot interpret an array of shape {arr.shape} as an image")


def _to_hwc(arr: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "HW":
        return arr[:, :, None]
    if fmt == "CHW":
        return arr.transpose(1, 2, 0)
    if fmt == "HWC":
        return arr
    raise ValueError(f"unsupported dataformats {fmt!r}")


def _grid(batch: np.ndarray) -> np.ndarray:
    n, h, w, c = batch.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((rows * h, cols * w, c), dtype=batch.dtype)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * h:(r + 1) * h, k * w:(k + 1) * w] = batch[i]
    return out


def encode_image(image: Any, max_bytes: int | None, dataformats: str | None = None):
    """Encode ``image`` within ``max_bytes``: ``(encoded, width, height, channels)`` or None.

    Policy: already-encoded input (bytes or a file) is kept byte for byte when it fits; anything
    else is PNG (JPEG input stays JPEG). Too large -> downscaled (aspect kept, LANCZOS) by
    ``sqrt(limit/size)`` per try, up to 8 tries, never below 8 px a side; still too large ->
    None (the caller skips the image with a warning).
    """
    from PIL import Image

    raw = None
    if isinstance(image, (bytes, bytearray, memoryview)):
        raw = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            raw = f.read()
    pil = to_pil_image(raw if raw is not None else image, dataformats)
    fmt = "JPEG" if pil.format == "JPEG" else "PNG"
    channels = len(pil.getbands())
    if raw is not None and pil.format in ("PNG", "JPEG", "GIF") and (max_bytes is None or len(raw) <= max_bytes):
        return raw, pil.width, pil.height, channels
    if pil.mode not in ("L", "RGB", "RGBA"):
        pil = pil.convert("RGBA" if "A" in pil.getbands() else "RGB")
        channels = len(pil.getbands())
    if fmt == "JPEG" and pil.mode == "RGBA":
        pil = pil.convert("RGB")
    data = _encode(pil, fmt)
    img = pil
    for _ in range(_MAX_DOWNSCALE_TRIES):
        if max_bytes is None or len(data) <= max_bytes:
            return data, img.width, img.height, channels
        scale = min(0.9, math.sqrt(max_bytes / len(data)) * 0.95)
        w, h = int(img.width * scale), int(img.height * scale)
        if min(w, h) < _MIN_IMAGE_SIDE:
            break
        img = pil.resize((w, h), Image.LANCZOS)
        data = _encode(img, fmt)
    if max_bytes is None or len(data) <= max_bytes:
        return data, img.width, img.height, channels
    return None


def _encode(img, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {"optimize": False}))
    return buf.getvalue()


# -- the writer -------------------------------------------------------------------------------
class RunWriter:
    """A ``SummaryWriter``-compatible writer bound to one run directory (see module doc)."""

    redactor = DEFAULT_REDACTOR  # the experiment sets its own (its redact_secrets config)

    def __init__(self, run_dir: str | os.PathLike, flush_interval_s: float = 2.0,
                 max_image_bytes: int | None = None):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.log_dir = os.fspath(run_dir)
        self._flush_interval_s = flush_interval_s
        self._max_image_bytes = max_image_bytes
        # TensorBoard's writer thread appends each record as it dequeues it and flushes at least
        # every flush_secs, so a SIGKILL loses at most what is queued or unflushed.
        self._file = EventFileWriter(self.log_dir, max_queue_size=_EVENT_QUEUE,
                                     flush_secs=flush_interval_s)
        self._steps: dict[str, int] = {}
        self._lock = threading.Lock()
        self._delegate = None
        self._closed = False
        self._pid = os.getpid()

    @property
    def event_file(self) -> str:
        return self._file._file_name

    def get_logdir(self) -> str:
        return self.log_dir

    # -- the core -------------------------------------------------------------------------
    def next_step(self, tag: str, step: Any = None) -> int:
        """The step to write for ``tag``: ``step`` as int, or the tag's last step + 1."""
        with self._lock:
            if step is None:
                s = self._steps.get(tag, -1) + 1
            else:
                s = int(to_float(step, f"step of {tag!r}"))
            self._steps[tag] = s
            return s

    def write(self, values: list, step: int = 0, walltime: float | None = None) -> None:
        """Append one event holding ``values`` (``Summary.Value`` s)."""
        if self._closed:
            raise RuntimeError(f"the writer of run {self.log_dir} is closed (stop_logging was called)")
        if os.getpid() != self._pid:  # its writer thread did not survive fork(): it would hang
            raise RuntimeError(f"the writer of run {self.log_dir} belongs to process {self._pid}; "
                               "log from the process that called start_logging")
        event = event_pb2.Event(wall_time=walltime or time.time(), step=step,
                                summary=summary_pb2.Summary(value=values))
        self._file.add_event(event)

    # -- SummaryWriter API ----------------------------------------------------------------
    def add_scalar(self, tag: str, scalar_value: Any, global_step: Any = None,
                   walltime: float | None = None, **_ignored: Any) -> None:
        value = to_float(scalar_value, f"add_scalar({tag!r})")
        self.write([scalar_pb(tag, value)], self.next_step(tag, global_step), walltime)

    def add_scalars(self, main_tag: str, tag_scalar_dict: Mapping[str, Any], global_step: Any = None,
                    walltime: float | None = None) -> None:
        for key, v in tag_scalar_dict.items():
            self.add_scalar(f"{main_tag}/{key}", v, global_step, walltime)

    def add_histogram(self, tag: str, values: Any, global_step: Any = None, bins: Any = 64,
                      walltime: float | None = None, **_ignored: Any) -> None:
        if bins == "tensorflow" or not isinstance(bins, (int, str)):
            bins = 64  # PyTorch's default bucketing has no numpy equivalent
        value = histogram_pb(tag, values, bins)
        if value is None:
            log.warning("tracelet: histogram %r has no finite values; skipped", tag)
            return
        self.write([value], self.next_step(tag, global_step), walltime)

    def add_image(self, tag: str, img_tensor: Any, global_step: Any = None, walltime: float | None = None,
                  dataformats: str | None = "CHW") -> bool:
        """Write one image; False when it was skipped by the ``max_image_size`` policy."""
        encoded = encode_image(img_tensor, self._max_image_bytes, dataformats)
        step = self.next_step(tag, global_step)
        if encoded is None:
            log.warning("tracelet: image %r at step %d skipped: it does not fit max_image_size=%d "
                        "bytes even downscaled to %d px a side", tag, step, self._max_image_bytes,
                        _MIN_IMAGE_SIDE)
            return False
        data, w, h, c = encoded
        self.write([image_pb(tag, data, w, h, c)], step, walltime)
        return True

    def add_images(self, tag: str, img_tensor: Any, global_step: Any = None, walltime: float | None = None,
                   dataformats: str = "NCHW") -> bool:
        return self.add_image(tag, img_tensor, global_step, walltime, dataformats)

    def add_figure(self, tag: str, figure: Any, global_step: Any = None, close: bool = True,
                   walltime: float | None = None) -> bool:
        buf = io.BytesIO()
        figure.savefig(buf, format="png")
        if close:
            import matplotlib.pyplot as plt

            plt.close(figure)
        return self.add_image(tag, buf.getvalue(), global_step, walltime)

    def add_text(self, tag: str, text_string: str, global_step: Any = None,
                 walltime: float | None = None) -> None:
        self.write([text_pb(tag, text_string)], self.next_step(tag, global_step), walltime)

    def add_hparams(self, hparam_dict: Mapping[str, Any], metric_dict: Mapping[str, Any] | None = None,
                    **_ignored: Any) -> None:
        """Like PyTorch's, but params go to the experiment (manifest, redaction) and metrics are
        scalars of this run (no child run)."""
        from . import get_active_experiment

        exp = get_active_experiment()
        if exp is not None and exp.writer is self:
            exp.log_params(dict(hparam_dict))
        else:  # the run is over: straight to the file, under the same redaction rule
            self.write([hparams_pb(self.redactor.params(flatten_params(dict(hparam_dict))),
                                   time.time())])
        for k, v in (metric_dict or {}).items():
            self.add_scalar(k, v)

    def add_summary(self, summary: summary_pb2.Summary, global_step: Any = None,
                    walltime: float | None = None) -> None:
        self.write(list(summary.value), 0 if global_step is None else int(global_step), walltime)

    def flush(self) -> None:
        if not self._closed:
            self._file.flush()
        if self._delegate is not None:
            self._delegate.flush()

    def close(self) -> None:
        """Flush only: the run's writer is closed by ``stop_logging``."""
        self.flush()

    def close_file(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._delegate is not None:
            self._delegate.close()
        self._file.close()

    def __enter__(self) -> "RunWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.flush()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks (add_graph, add_embedding, add_pr_curve ...).
        if name.startswith("_") or not name.startswith(("add_", "get_")):
            raise AttributeError(name)
        if self._delegate is None:
            self._delegate = _framework_writer(self.log_dir, self._flush_interval_s)
            if self._delegate is None:
                raise AttributeError(f"RunWriter.{name} needs torch or tensorboardX installed")
        return getattr(self._delegate, name)


def _framework_writer(log_dir: str, flush_interval_s: float):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            return None
    return SummaryWriter(log_dir, flush_secs=flush_interval_s)
