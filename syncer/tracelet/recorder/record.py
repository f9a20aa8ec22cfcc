"""``tracelet record -- CMD``: run a command with system metrics and a manifest beside it.

The child gets ``TRACELET_RUN_DIR`` (write event files there, e.g.
``SummaryWriter(os.environ["TRACELET_RUN_DIR"])``) and ``TRACELET_LOGDIR``. The recorder owns
the manifest; ``process/*`` metrics measure the child and its descendants.

Status and return value from the child's exit: 0 -> ``finished``; killed by a signal, or exit
128+N after we forwarded signal N -> ``killed``; any other code -> ``failed``. The return value
is the child's exit code, 128+N for death by signal N (as a shell reports it), 127/126 when the
command cannot be found/executed.

Signals: SIGTERM is forwarded to the child. SIGINT is forwarded too, except when this process is
in the terminal's foreground process group: Ctrl-C then already reached the child from the
terminal, and a second SIGINT would interrupt its cleanup.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from ..errors import UsageError
from .config import DEFAULT_PROJECT, RecorderConfig
from .run import create_run, default_run_name
from .sysmetrics import SystemSampler

RUN_DIR_ENV = "TRACELET_RUN_DIR"
LOGDIR_ENV = "TRACELET_LOGDIR"
_FORWARDED = (signal.SIGTERM, signal.SIGINT)


def run_recorded(command: list[str], logdir: str | None = None, project: str | None = None,
                 name: str | None = None, config: dict | None = None) -> int:
    """Run ``command`` as a recorded run and return its exit code (see module doc).

    ``config`` takes the keys of ``start_logging``'s config that apply here (``metrics_interval``,
    ``metrics_flush_interval``, ``metrics_part_samples``, ``track_git``, ``track_env``, ``tags``);
    ``logdir`` wins over ``config["logdir"]``.
    """
    if not command:
        raise UsageError("tracelet record: no command given; usage: tracelet record -- CMD [ARGS...]")
    cfg = RecorderConfig.from_dict({**(config or {}), **({"logdir": logdir} if logdir else {})})
    mf = create_run(cfg, project or DEFAULT_PROJECT, name or default_run_name(_command_name(command)), [],
                    command=list(command))  # redacted by create_run
    env = dict(os.environ, **{RUN_DIR_ENV: str(mf.run_dir.resolve()),
                              LOGDIR_ENV: str(cfg.resolve_logdir().resolve())})
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as e:
        print(f"tracelet record: cannot run {command[0]!r}: {e.strerror or e}", file=sys.stderr)
        mf.finish("failed")
        return 127 if isinstance(e, FileNotFoundError) else 126

    received: list[int] = []
    previous = _forward_signals(child, received)
    sampler = SystemSampler(mf.run_dir, cfg.metrics_interval, cfg.metrics_flush_interval,
                            cfg.metrics_part_samples, pid=child.pid)
    sampler.start()
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        sampler.stop()
    if code == 0:
        status = "finished"
    elif code < 0 or (received and code - 128 in received):
        status = "killed"
    else:
        status = "failed"
    mf.finish(status)
    return 128 - code if code < 0 else code


def _command_name(command: list[str]) -> str:
    """``python train.py`` -> ``train``; ``./run.sh`` -> ``run.sh``."""
    first = Path(command[0]).name
    if first.startswith("python") and len(command) > 1 and not command[1].startswith("-"):
        return Path(command[1]).stem
    return first


def _forward_signals(child: subprocess.Popen, received: list[int]) -> dict[int, object]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if signum == signal.SIGINT and _terminal_delivers_to(child):
            return
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    previous = {}
    for sig in _FORWARDED:
        previous[sig] = signal.getsignal(sig)
        signal.signal(sig, forward)
    return previous


def _terminal_delivers_to(child: subprocess.Popen) -> bool:
    """True when Ctrl-C on our terminal reaches the child by itself (same foreground group)."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY)
    except OSError:
        return False  # no controlling terminal (batch job, cron): only we got the signal
    try:
        return os.tcgetpgrp(fd) == os.getpgrp() == os.getpgid(child.pid)
    except OSError:
        return False
    finally:
        os.close(fd)
