"""The experiment lifecycle: ``start_logging`` -> :class:`Experiment` -> ``stop_logging``.

One experiment is active per process. How a run ends, and the status its manifest gets:

===============================================  ==========  ======================================
how                                              status      mechanism
===============================================  ==========  ======================================
``stop_logging()``, ``with`` block ends, exit    finished    ``atexit`` for runs never stopped
uncaught exception (also ``with`` block raising) failed      ``sys.excepthook`` (chained), ``__exit__``
``sys.exit(n != 0)`` inside the ``with`` block   failed      ``__exit__``
SIGTERM / SIGINT (Ctrl-C)                        killed      signal handlers, chained (see below)
SIGKILL, OOM kill, power loss                    running     nothing can run; data up to the last
                                                             flush is on disk and syncs
===============================================  ==========  ======================================

Signals: the previous handler always runs after ours. A Python handler (Lightning's, the
default ``KeyboardInterrupt`` raiser) is called as it was; for the default action (SIGTERM
terminates) the run is finalized first (events flushed, last sysmetrics part, manifest; at most
:data:`SIGNAL_FINALIZE_TIMEOUT_S`), then the signal is re-delivered with the default action, so
the parent still sees "terminated by SIGTERM". ``SIG_IGN`` stays ignored. In a forked child
(DataLoader workers) the hooks do nothing but chain. An uncaught exception in the interactive
interpreter does not end the run.
"""
from __future__ import annotations

import atexit
import copy
import dataclasses
import logging
import mmap
import os
import signal
import sys
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from .._fs import atomic_write_bytes
from .config import RecorderConfig, normalize_backends
from ..redact import Redactor, flatten_params
from .run import ARTIFACTS_DIR, ManifestFile, create_run
from .writer import RunWriter, hparams_pb

log = logging.getLogger("tracelet.recorder")

SIGNAL_FINALIZE_TIMEOUT_S = 10.0  # SLURM's default grace period before SIGKILL is 30 s
EXCEPTHOOK_FINALIZE_TIMEOUT_S = 300.0  # includes the final live sync, if any
_lock = threading.RLock()  # guards _active; re-entrant: signal handlers run on the main thread
_active: "Experiment | None" = None


def start_logging(exp_name: str | None = None, project: str | None = None,
                  backend: str | list[str] | None = None,
                  config: Mapping[str, Any] | None = None) -> "Experiment":
    """Start recording a run into ``<logdir>/<project>/<exp_name>`` and return its experiment.

    ``backend`` (``"mlflow"``, ``["mlflow", "wandb"]``) is only recorded in the manifest: the
    recorder never contacts a backend (``tracelet sync`` does, later); a name that is not a
    registered destination raises :class:`~tracelet.errors.UsageError` (with the closest valid
    name) before anything is written. A running experiment is stopped (finished) first. See
    docs/training.md for every ``config`` key.
    """
    global _active
    cfg = RecorderConfig.from_dict(config)
    backends = normalize_backends(backend)
    with _lock:
        if _active is not None:
            _active.stop()
        mf = create_run(cfg, project, exp_name, backends)
        try:
            exp = Experiment(mf, cfg)
        except BaseException:
            mf.finish("failed")
            raise
        _active = exp
        try:
            exp._start_components()
        except BaseException:
            exp.stop("failed")
            raise
    log.info("tracelet: recording run %s", exp.run_dir)
    return exp


def get_active_experiment() -> "Experiment | None":
    """The experiment started by :func:`start_logging` and not stopped yet, or None (also in a
    forked child such as a DataLoader worker: the run belongs to the process that started it)."""
    exp = _active
    return exp if _owned(exp) else None


def stop_logging(status: str | None = None) -> None:
    """Stop the active experiment (no-op without one); ``status`` overrides ``finished``."""
    exp = _active
    if _owned(exp):
        exp.stop(status)


class Experiment:
    """A run being recorded. Create it with :func:`tracelet.start_logging`."""

    def __init__(self, manifest: ManifestFile, config: RecorderConfig):
        self.config = config
        self.run_dir: Path = manifest.run_dir
        self._mf = manifest
        self._owner_pid = os.getpid()
        self._redactor = Redactor(config.redact_secrets, config.secret_patterns)
        self._writer = RunWriter(self.run_dir, config.flush_interval, config.max_image_size)
        self._writer.redactor = self._redactor  # its add_hparams outside log_params, too
        self._started_s = time.time()
        self._state = threading.RLock()
        self._stopped = False
        self._noted_status: str | None = None
        self._hparams_timer: threading.Timer | None = None
        self._sampler = self._patches = self._live = None

    def _start_components(self) -> None:
        cfg = self.config
        if cfg.track_system:
            from .sysmetrics import SystemSampler

            self._sampler = SystemSampler(self.run_dir, cfg.metrics_interval,
                                          cfg.metrics_flush_interval, cfg.metrics_part_samples)
            self._sampler.start()
        if cfg.track_tensorboard or cfg.track_lightning:
            from .tracking import FrameworkPatches

            self._patches = FrameworkPatches(self, cfg.track_tensorboard, cfg.track_lightning)
            self._patches.install()
        if cfg.sync == "live":
            from .live import LiveSync

            self._live = LiveSync(self.run_dir, self.backends, cfg.sync_interval,
                                  cfg.redact_secrets, cfg.secret_patterns)
            self._live.start()
        _hooks.install()

    # -- identity -------------------------------------------------------------------------
    name = property(lambda self: self._mf.data["name"])
    project = property(lambda self: self._mf.data["project"])
    run_id = property(lambda self: self._mf.data["run_id"])
    backends = property(lambda self: list(self._mf.data["backends"]))
    status = property(lambda self: self._mf.data["status"])
    flush_interval_s = property(lambda self: self.config.flush_interval)

    @property
    def is_active(self) -> bool:
        return not self._stopped and self._owner_pid == os.getpid()

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest as last written."""
        return copy.deepcopy(self._mf.data)

    @property
    def writer(self) -> RunWriter:
        """A ``SummaryWriter``-compatible writer into this run's event file."""
        return self._writer

    def __repr__(self) -> str:
        return f"<Experiment {self.project}/{self.name} {self.status} at {self.run_dir}>"

    # -- logging --------------------------------------------------------------------------
    def log_metric(self, name: str, value: Any, step: int | None = None) -> None:
        """A scalar (Python, numpy or torch). ``step=None``: this metric's last step + 1."""
        self._writer.add_scalar(name, value, step)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        for name, value in metrics.items():
            self._writer.add_scalar(name, value, step)

    def log_params(self, params: Any) -> dict[str, Any]:
        """Record hyperparameters; returns them as stored (flattened, redacted).

        Nested dicts are flattened with ``/`` (``{"opt": {"lr": 0.1}}`` -> ``opt/lr``);
        dataclasses and ``argparse.Namespace`` are accepted. Secrets are redacted by the one
        rule of :mod:`tracelet.redact` (names at any depth, token-shaped values, URL passwords)
        before anything is written. Params go to the manifest at once and to the
        event file (TensorBoard HParams) within ``flush_interval`` seconds, merged with earlier
        calls in that window: TensorBoard's HParams tab shows a run's *first* hparams record,
        while the manifest and ``tracelet sync`` use the latest.
        """
        flat = flatten_params(_as_mapping(params))
        clean = self._redactor.params({k: _jsonable(v) for k, v in flat.items()})
        with self._state:
            self._mf.update(params={**self._mf.data["params"], **clean})
            if self._hparams_timer is None and not self._stopped:
                self._hparams_timer = threading.Timer(self.config.flush_interval, self._write_hparams)
                self._hparams_timer.daemon = True
                self._hparams_timer.start()
        return clean

    def log_artifact(self, path: str | os.PathLike, name: str | None = None) -> Path:
        """Copy a file (or a directory, recursively) into ``<run>/artifacts/<name>`` now.

        The copy is atomic per file (temp name, then rename), so a sync never uploads half a
        file; later changes to ``path`` are not seen. Returns the copy's path.
        """
        src = Path(path)
        if not src.exists():
            raise FileNotFoundError(f"log_artifact: {src} does not exist")
        rel = PurePosixPath(name or src.name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"log_artifact: name {name!r} must be a relative path inside artifacts/")
        dest = self.run_dir / ARTIFACTS_DIR / rel
        if src.is_dir():
            for f in sorted(src.rglob("*")):
                if f.is_file():
                    _copy_file(f, dest / f.relative_to(src))
        else:
            _copy_file(src, dest)
        return dest

    def log_image(self, name: str, image: Any, step: int | None = None,
                  dataformats: str | None = None) -> bool:
        """An image: PIL image, array/tensor (``dataformats`` as PyTorch; None guesses CHW/HWC),
        encoded bytes or a file path. Subject to ``max_image_size``; False if skipped."""
        return self._writer.add_image(name, image, step, dataformats=dataformats)

    def log_histogram(self, name: str, values: Any, step: int | None = None, bins: int | str = 64) -> None:
        self._writer.add_histogram(name, values, step, bins=bins)

    def log_text(self, name: str, text: str, step: int | None = None) -> None:
        self._writer.add_text(name, text, step)

    def flush(self) -> None:
        self._writer.flush()

    def link_logdir(self, path: str) -> None:
        """Record a TensorBoard logdir written elsewhere during this run (``linked_logdirs``)."""
        self._mf.add_linked_logdir(os.path.abspath(path))

    # -- ending ---------------------------------------------------------------------------
    def __enter__(self) -> "Experiment":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            status = None
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "killed"
        elif issubclass(exc_type, SystemExit):
            status = None if exc.code in (0, None) else "failed"
        else:
            status = "failed"
        self.stop(status)
        return False

    def stop(self, status: str | None = None, final_sync: bool = True) -> None:
        """Flush everything, write the final manifest, undo patches (idempotent)."""
        global _active
        with self._state:
            if self._stopped:
                return
            self._stopped = True
            timer, self._hparams_timer = self._hparams_timer, None
        if self._noted_status == "killed":
            status = "killed"  # whatever unwinding followed the signal, the signal ended the run
        status = status or self._noted_status or "finished"
        with _lock:
            if _active is self:
                _active = None
        for what, step in (
            ("undo framework patches", lambda: self._patches and self._patches.uninstall()),
            ("write hparams", lambda: timer and (timer.cancel(), self._write_hparams(force=True))),
            ("stop the sysmetrics sampler", lambda: self._sampler and self._sampler.stop()),
            ("close the event file", self._writer.close_file),
            ("write the manifest", lambda: self._mf.finish(status)),
            ("final live sync", lambda: self._live and self._live.stop(final=final_sync)),
            ("restore exit hooks", _hooks.uninstall),
        ):
            try:
                step()
            except Exception:
                log.warning("tracelet: could not %s for run %s", what, self.run_dir, exc_info=True)
        log.info("tracelet: run %s %s", self.run_dir, status)

    def _write_hparams(self, force: bool = False) -> None:
        with self._state:
            if self._stopped and not force:
                return
            self._hparams_timer = None
            params = dict(self._mf.data["params"])
        try:
            self._writer.write([hparams_pb(params, self._started_s)])
        except Exception:
            log.warning("tracelet: could not write hparams to %s", self.run_dir, exc_info=True)

    def _note_signal(self) -> None:
        """A terminating signal arrived: the status is ``killed`` from now on, on disk too."""
        self._noted_status = "killed"
        try:
            self._mf.update(status="killed")
        except Exception:
            pass

    def _stop_within(self, timeout_s: float, status: str, final_sync: bool = False) -> None:
        """Stop on a helper thread, waiting at most ``timeout_s``.

        From a signal handler this avoids deadlocking on a lock the interrupted main thread
        holds (TensorBoard's writer takes a plain Lock). From ``sys.excepthook`` it keeps
        imports off the main thread: CPython forgets an uncaught Ctrl-C (and exits 1 instead
        of dying by SIGINT) when the hook imports a module for the first time.
        """
        helper = threading.Thread(target=self.stop, args=(status, final_sync), daemon=True)
        helper.start()
        helper.join(timeout_s)
        if helper.is_alive():
            log.warning("tracelet: finalizing %s took over %.0f s; exiting anyway", self.run_dir, timeout_s)
            self._mf.finish(status)


def _as_mapping(params: Any) -> Mapping[str, Any]:
    if isinstance(params, Mapping):
        return params
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return dataclasses.asdict(params)
    if hasattr(params, "__dict__"):  # argparse.Namespace, simple config objects
        return vars(params)
    raise TypeError(f"log_params: expected a dict, dataclass or Namespace, got {type(params).__name__}")


_MAX_LIST_DEPTH = 32  # lists/dicts nested deeper become text: the manifest stays under its depth limit


def _jsonable(v: Any, depth: int = 0) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        if depth >= _MAX_LIST_DEPTH:
            return str(v)
        return [_jsonable(x, depth + 1) for x in v]
    if isinstance(v, Mapping):  # a dict inside a list stays a dict: its keys are names to redact
        if depth >= _MAX_LIST_DEPTH:
            return str(v)
        return {str(k): _jsonable(x, depth + 1) for k, x in v.items()}
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:  # numpy / torch scalars
        try:
            return v.item()
        except Exception:
            pass
    return str(v)


def _copy_file(src: Path, dest: Path) -> None:
    # mmap feeds the one atomic-write helper without reading a multi-GB checkpoint into memory.
    with open(src, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            atomic_write_bytes(dest, b"")
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            atomic_write_bytes(dest, data)


# -- process exit -----------------------------------------------------------------------------
class _ExitHooks:
    """``atexit``, ``sys.excepthook`` and SIGTERM/SIGINT handlers, each chained to the previous."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.prev_signals: dict[int, Any] = {}
        self.prev_excepthook: Any = None
        self.atexit_registered = False

    def install(self) -> None:
        if not self.atexit_registered:
            atexit.register(_at_exit)
            self.atexit_registered = True
        if sys.excepthook is not _excepthook:
            self.prev_excepthook = sys.excepthook
            sys.excepthook = _excepthook
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                current = signal.getsignal(sig)
                if current is not _on_signal:
                    self.prev_signals[sig] = current
                    signal.signal(sig, _on_signal)

    def uninstall(self) -> None:
        if _active is not None:
            return  # another experiment started meanwhile and relies on the hooks
        if sys.excepthook is _excepthook and self.prev_excepthook is not None:
            sys.excepthook = self.prev_excepthook
        if threading.current_thread() is threading.main_thread():
            for sig, prev in list(self.prev_signals.items()):
                if signal.getsignal(sig) is _on_signal:
                    signal.signal(sig, signal.SIG_DFL if prev is None else prev)
                del self.prev_signals[sig]


_hooks = _ExitHooks()


def _owned(exp: Experiment | None) -> bool:
    return exp is not None and exp._owner_pid == os.getpid()


def _on_signal(signum: int, frame: Any) -> None:
    prev = _hooks.prev_signals.get(signum, signal.SIG_DFL)
    exp = _active
    if _owned(exp) and prev is not signal.SIG_IGN:
        exp._note_signal()
        if not callable(prev):  # default action: the process dies right after this handler
            exp._stop_within(SIGNAL_FINALIZE_TIMEOUT_S, "killed")
    if prev is signal.SIG_IGN:
        return
    if callable(prev):
        prev(signum, frame)  # e.g. default_int_handler raises KeyboardInterrupt: not swallowed
        return
    signal.signal(signum, signal.SIG_DFL)  # SIG_DFL or a C-level handler (None)
    os.kill(os.getpid(), signum)


def _excepthook(exc_type: Any, exc: Any, tb: Any) -> None:
    prev = _hooks.prev_excepthook or sys.__excepthook__
    prev(exc_type, exc, tb)
    exp = _active
    if _owned(exp) and not (hasattr(sys, "ps1") or sys.flags.interactive):
        status = "killed" if issubclass(exc_type, KeyboardInterrupt) else "failed"
        exp._stop_within(EXCEPTHOOK_FINALIZE_TIMEOUT_S, status, final_sync=True)


def _at_exit() -> None:
    exp = _active
    if _owned(exp):
        exp.stop()
