"""System metrics sampler: a daemon thread writing immutable parquet parts (README "Training side": the metric names).

Every ``interval_s`` one *sample* is taken: one timestamp, one row per metric::

    cpu/utilization_percent     system-wide, since the previous sample
    memory/used_bytes           memory/utilization_percent
    disk/read_bytes             disk/write_bytes        cumulative since the sampler started
    network/sent_bytes          network/recv_bytes      cumulative since the sampler started
    process/rss_bytes           process/cpu_percent     the training process and its children
                                                        (summed; cpu_percent may exceed 100)
    gpu/<i>/utilization_percent gpu/<i>/memory_used_bytes gpu/<i>/memory_total_bytes
    gpu/<i>/temperature_c       gpu/<i>/power_watts

``<i>`` is the index the training process sees: with ``CUDA_VISIBLE_DEVICES=2,3`` the GPUs are
``gpu/0`` and ``gpu/1`` (physical 2 and 3), matching ``cuda:0`` / ``cuda:1``.

Durability: samples are buffered and written as one part when the buffer holds
``part_samples`` samples or its oldest sample is ``flush_interval_s`` old, and at stop. A crash
(SIGKILL, OOM kill, power loss) therefore loses at most
``min(part_samples - 1, ceil(flush_interval_s / interval_s))`` samples, plus the one being
taken; with the defaults (10 s, 60 s, 60) that is 6 samples, one minute.

The sampler never raises into training: every failure is logged (once per kind) and skipped.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("tracelet.recorder")

_MAX_BUFFERED_SAMPLES = 10_000  # if parts cannot be written (disk full), drop the oldest beyond this


class Nvml:
    """The NVIDIA GPUs this process sees, through NVML (``pynvml`` from ``nvidia-ml-py``).

    No NVML library, no driver, or no GPU: :attr:`available` is False and :attr:`reason` says
    why; nothing raises. A metric a device does not support (power on some boards) is dropped
    for that device after its first failure.
    """

    def __init__(self) -> None:
        self.available = False
        self.reason = ""
        self.devices: list[tuple[int, Any]] = []  # (label, handle)
        self._unsupported: set[tuple[int, str]] = set()
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as e:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded ...
            self.reason = f"{type(e).__name__}: {e}".rstrip(": ")
            return
        self._nv = pynvml
        self.available = True
        try:
            self.devices = self._visible_devices()
        except Exception as e:
            self.reason = f"cannot list GPUs: {type(e).__name__}: {e}"
        if not self.devices and not self.reason:
            self.reason = "NVML found no GPU visible to this process"

    def _visible_devices(self) -> list[tuple[int, Any]]:
        nv = self._nv
        count = nv.nvmlDeviceGetCount()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return [(i, nv.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
        devices = []
        for label, entry in enumerate(e.strip() for e in visible.split(",") if e.strip()):
            try:
                if entry.isdigit():
                    if int(entry) >= count:
                        break  # CUDA ignores this entry and every one after it
                    handle = nv.nvmlDeviceGetHandleByIndex(int(entry))
                else:  # GPU-<uuid> / MIG-<uuid>
                    handle = nv.nvmlDeviceGetHandleByUUID(entry)
            except Exception:
                break
            devices.append((label, handle))
        return devices

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for label, h in self.devices:
            d: dict[str, Any] = {"index": label}
            for key, fn in (("name", lambda: _text(self._nv.nvmlDeviceGetName(h))),
                            ("uuid", lambda: _text(self._nv.nvmlDeviceGetUUID(h))),
                            ("memory_total_bytes", lambda: int(self._nv.nvmlDeviceGetMemoryInfo(h).total))):
                try:
                    d[key] = fn()
                except Exception:
                    pass
            out.append(d)
        return out

    def driver_versions(self) -> dict[str, str]:
        out = {}
        try:
            out["nvidia_driver"] = _text(self._nv.nvmlSystemGetDriverVersion())
        except Exception:
            pass
        try:
            v = int(self._nv.nvmlSystemGetCudaDriverVersion())  # e.g. 12040 -> "12.4"
            out["cuda_driver"] = f"{v // 1000}.{(v % 1000) // 10}"
        except Exception:
            pass
        return out

    def sample(self, rows: list[tuple[str, float]]) -> None:
        for label, h in self.devices:
            nv = self._nv
            p = f"gpu/{label}/"
            self._read(label, "util", rows,
                       lambda: [(p + "utilization_percent", nv.nvmlDeviceGetUtilizationRates(h).gpu)])
            self._read(label, "mem", rows, lambda: _mem_rows(p, nv.nvmlDeviceGetMemoryInfo(h)))
            self._read(label, "temp", rows, lambda: [
                (p + "temperature_c", nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))])
            self._read(label, "power", rows, lambda: [(p + "power_watts", nv.nvmlDeviceGetPowerUsage(h) / 1000.0)])

    def _read(self, label: int, what: str, rows: list, fn: Callable[[], list]) -> None:
        if (label, what) in self._unsupported:
            return
        try:
            rows.extend((name, float(v)) for name, v in fn())
        except Exception as e:
            self._unsupported.add((label, what))
            log.info("tracelet: gpu/%d %s not recorded (%s: %s)", label, what, type(e).__name__, e)

    def shutdown(self) -> None:
        if self.available:
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass
            self.available = False


def _mem_rows(prefix: str, mem: Any) -> list[tuple[str, float]]:
    return [(prefix + "memory_used_bytes", mem.used), (prefix + "memory_total_bytes", mem.total)]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class SystemSampler:
    """Sample system metrics every ``interval_s`` on a daemon thread into ``<run>/sysmetrics``.

    ``pid`` is the root of the process tree measured under ``process/*`` (default: this process;
    ``tracelet record`` passes the child's). :attr:`samples_taken`, :attr:`parts_written`,
    :attr:`setup_cpu_s` and :attr:`cpu_time_s` are for tests and ``scripts/bench_sampler.py``.
    """

    def __init__(self, run_dir: str | os.PathLike, interval_s: float = 10.0,
                 flush_interval_s: float = 60.0, part_samples: int = 60, pid: int | None = None,
                 clock: Callable[[], float] = time.time):
        self.run_dir = Path(run_dir)
        self.interval_s = interval_s
        self.flush_interval_s = flush_interval_s
        self.part_samples = part_samples
        self._pid = pid or os.getpid()
        self._clock = clock
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._buffer: list[tuple[float, list[tuple[str, float]]]] = []
        self._next_part: int | None = None
        self._procs: dict[int, Any] = {}
        self._baseline: dict[str, float] = {}
        self._warned: set[str] = set()
        self._nvml: Nvml | None = None
        self.samples_taken = 0
        self.parts_written = 0
        self.setup_cpu_s = 0.0  # CPU seconds of the thread's setup (imports, NVML init)
        self.cpu_time_s = 0.0  # CPU seconds of the thread so far, setup included

    def start(self, setup_timeout_s: float = 10.0) -> None:
        """Start the thread; return once it is set up (imports done, counters primed)."""
        self._thread = threading.Thread(target=self._run, name="tracelet-sysmetrics", daemon=True)
        self._thread.start()
        self._ready.wait(setup_timeout_s)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Take a last sample, write what is buffered, stop the thread (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    # -- the thread -------------------------------------------------------------------------
    def _run(self) -> None:
        self._guard("setup", self._setup)
        self.setup_cpu_s = time.thread_time()
        self._ready.set()
        while not self._stop.wait(self.interval_s):
            self._guard("sample", self._sample_and_maybe_write)
            self.cpu_time_s = time.thread_time()
        self._guard("sample", self._take_sample)  # the last sample: short runs get one too
        self._guard("write", self._write_part)
        if self._nvml is not None:
            self._nvml.shutdown()
        self.cpu_time_s = time.thread_time()

    def _guard(self, what: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception as e:  # never into training; one log line per kind of failure
            key = f"{what}:{type(e).__name__}"
            if key not in self._warned:
                self._warned.add(key)
                log.warning("tracelet: system metrics %s failed (%s: %s); continuing", what,
                            type(e).__name__, e)

    def _setup(self) -> None:
        import psutil
        import pyarrow.parquet  # noqa: F401  now, not at the last part: see below

        from ..sidecar import next_part_index

        # Imported here, while start() waits: a first import of a C extension between an
        # uncaught Ctrl-C and interpreter exit makes CPython exit 1 instead of dying by SIGINT.
        self._next_part = next_part_index(self.run_dir)
        psutil.cpu_percent(None)  # the first call only starts the measuring interval
        self._counters(psutil, baseline=True)
        self._process_rows(psutil)
        self._nvml = Nvml()
        if not self._nvml.devices:
            log.info("tracelet: no GPU metrics (%s)", self._nvml.reason)

    def _sample_and_maybe_write(self) -> None:
        self._take_sample()
        oldest = self._buffer[0][0] if self._buffer else None
        if len(self._buffer) >= self.part_samples or (
                oldest is not None and self._clock() - oldest >= self.flush_interval_s):
            self._write_part()

    def _take_sample(self) -> None:
        import psutil

        ts = self._clock()
        rows: list[tuple[str, float]] = [("cpu/utilization_percent", psutil.cpu_percent(None))]
        vm = psutil.virtual_memory()
        rows += [("memory/used_bytes", vm.used), ("memory/utilization_percent", vm.percent)]
        rows += self._counters(psutil)
        rows += self._process_rows(psutil)
        if self._nvml is not None:
            self._nvml.sample(rows)
        self._buffer.append((ts, rows))
        if len(self._buffer) > _MAX_BUFFERED_SAMPLES:
            del self._buffer[0]
        self.samples_taken += 1

    def _counters(self, psutil: Any, baseline: bool = False) -> list[tuple[str, float]]:
        now: dict[str, float] = {}
        disk = psutil.disk_io_counters()  # None in some containers
        if disk is not None:
            now["disk/read_bytes"], now["disk/write_bytes"] = disk.read_bytes, disk.write_bytes
        net = psutil.net_io_counters()
        if net is not None:
            now["network/sent_bytes"], now["network/recv_bytes"] = net.bytes_sent, net.bytes_recv
        rows = []
        for name, value in now.items():
            if baseline or name not in self._baseline or value < self._baseline[name]:
                self._baseline[name] = value  # first sight, or the counter was reset
            if not baseline:
                rows.append((name, float(value - self._baseline[name])))
        return rows

    def _process_rows(self, psutil: Any) -> list[tuple[str, float]]:
        try:
            pids = _process_tree(self._pid, psutil)
        except psutil.Error:
            return []  # the measured process is gone (record: the child exited)
        procs, rss, cpu = {}, 0.0, 0.0
        for pid in pids:
            try:
                # keep the object: cpu_percent measures since the previous call on it
                p = self._procs.get(pid) or psutil.Process(pid)
            except psutil.Error:
                continue
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    cpu += p.cpu_percent(None)
            except psutil.Error:
                continue
            procs[p.pid] = p
        self._procs = procs
        return [("process/rss_bytes", rss), ("process/cpu_percent", cpu)]

    def _write_part(self) -> None:
        if not self._buffer or self._next_part is None:
            return
        from ..sidecar import write_part

        ts, names, values = [], [], []
        for t, rows in self._buffer:
            for name, v in rows:
                ts.append(t)
                names.append(name)
                values.append(v)
        write_part(self.run_dir, self._next_part, ts, names, values)
        self._next_part += 1
        self.parts_written += 1
        self._buffer.clear()


def _process_tree(root: int, psutil: Any) -> list[int]:
    """``root`` and its descendants. Linux lists each thread's children in
    ``/proc/<pid>/task/<tid>/children``: reading those costs ~0.1 ms, where psutil's
    ``children()`` reads the stat file of every process on the machine (2.5 ms with 90
    processes, tens of ms on a busy node, every sample)."""
    if not os.path.exists(f"/proc/{root}/task/{root}/children"):
        if not os.path.exists(f"/proc/{root}"):  # Linux, but the process is gone
            raise psutil.NoSuchProcess(root)
        # not Linux, or a kernel without CONFIG_PROC_CHILDREN: ask psutil
        return [root, *(c.pid for c in psutil.Process(root).children(recursive=True))]
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue  # exited meanwhile
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                continue  # the thread exited meanwhile
    return tree


def loss_bound_samples(interval_s: float, flush_interval_s: float, part_samples: int) -> int:
    """The most samples a crash can lose (see the module docstring), the one in progress aside."""
    return min(part_samples - 1, math.ceil(flush_interval_s / interval_s))
