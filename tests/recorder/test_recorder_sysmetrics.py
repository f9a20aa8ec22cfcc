"""System metrics: parts, schema, the loss bound, and the NVML path with a fake ``pynvml``.

This machine has no GPU: the NVML code path is proven here only against a fake module that
mimics nvidia-ml-py's API, not against a real driver.
"""
from __future__ import annotations

import logging
import sys
import time
import types
from collections import namedtuple

import pytest

import tracelet
from tests.recorder.recorder_helpers import FAST, read_run
from tracelet.recorder.capture import nvml_static_info
from tracelet.recorder.sysmetrics import SystemSampler, loss_bound_samples
from tracelet.sidecar import SCHEMA, list_parts, next_part_index, read_part, write_part

CPU_NAMES = {
    "cpu/utilization_percent", "memory/used_bytes", "memory/utilization_percent",
    "process/rss_bytes", "process/cpu_percent", "network/sent_bytes", "network/recv_bytes",
}
GPU_NAMES = {"utilization_percent", "memory_used_bytes", "memory_total_bytes", "temperature_c", "power_watts"}


def test_sampler_writes_parts_while_running(logdir):
    cfg = {**FAST, "metrics_interval": 0.1, "metrics_flush_interval": 0.35, "metrics_part_samples": 1000}
    exp = tracelet.start_logging("sys", config=cfg)
    deadline = time.monotonic() + 10
    while len(list_parts(exp.run_dir)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    parts_while_running = list_parts(exp.run_dir)
    assert len(parts_while_running) >= 2  # parts appear during the run, not only at stop
    first = parts_while_running[0].read_bytes()
    tracelet.stop_logging()
    run = read_run(exp.run_dir)
    assert parts_while_running[0].read_bytes() == first  # parts are immutable
    assert [p.name for p in list_parts(exp.run_dir)][:2] == ["part-000001.parquet", "part-000002.parquet"]
    assert all(t.schema == SCHEMA for t in run.parts)
    assert CPU_NAMES <= run.sysmetric_names()
    assert not any(n.startswith("gpu/") for n in run.sysmetric_names())  # no GPU here
    for t in run.parts:
        samples = len(set(t.column("timestamp").to_pylist()))
        assert 1 <= samples <= 5  # 0.35 s of 0.1 s samples per part (+1 for timing slack)
    rows = {n: v for t in run.parts for n, v in zip(t.column("name").to_pylist(), t.column("value").to_pylist())}
    assert rows["process/rss_bytes"] > 10 << 20 and 0 <= rows["memory/utilization_percent"] <= 100
    assert not [p for p in (exp.run_dir / "sysmetrics").iterdir() if not p.name.startswith("part-")]


def test_part_count_bound(tmp_path):
    sampler = SystemSampler(tmp_path, interval_s=0.02, flush_interval_s=60, part_samples=5)
    sampler.start()
    deadline = time.monotonic() + 10
    while sampler.parts_written < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    sampler.stop()
    parts = [read_part(p) for p in list_parts(tmp_path)]
    assert all(len(set(t.column("timestamp").to_pylist())) == 5 for t in parts[:2])
    assert loss_bound_samples(10, 60, 60) == 6 and loss_bound_samples(1, 60, 30) == 29


def test_short_run_gets_a_final_sample(logdir):
    with tracelet.start_logging("short", config={**FAST, "metrics_interval": 3600}) as exp:
        pass
    assert CPU_NAMES <= read_run(exp.run_dir).sysmetric_names()


def test_track_system_off_writes_no_parts(logdir):
    with tracelet.start_logging("off", config={**FAST, "track_system": False}) as exp:
        pass
    assert list_parts(exp.run_dir) == []


def test_sampler_never_raises_into_training(tmp_path, monkeypatch, caplog):
    import psutil

    def broken(*a, **k):
        raise OSError("no /proc here")

    monkeypatch.setattr(psutil, "virtual_memory", broken)
    sampler = SystemSampler(tmp_path, interval_s=0.02, flush_interval_s=0.05, part_samples=100)
    with caplog.at_level(logging.WARNING, logger="tracelet.recorder"):
        sampler.start()
        time.sleep(0.2)
        sampler.stop()
    assert sampler._thread is not None and not sampler._thread.is_alive()
    assert sum("system metrics sample failed" in r.getMessage() for r in caplog.records) == 1


def test_write_part_is_atomic_and_immutable(tmp_path):
    assert next_part_index(tmp_path) == 1
    p = write_part(tmp_path, 1, [1.0, 1.0], ["a/x_bytes", "b/y_percent"], [1.0, 2.0])
    assert p.name == "part-000001.parquet" and next_part_index(tmp_path) == 2
    assert read_part(p).to_pydict() == {"timestamp": [1.0, 1.0], "name": ["a/x_bytes", "b/y_percent"],
                                        "value": [1.0, 2.0]}
    with pytest.raises(FileExistsError):
        write_part(tmp_path, 1, [], [], [])
    assert sorted(x.name for x in (tmp_path / "sysmetrics").iterdir()) == ["part-000001.parquet"]


# -- NVML with a fake pynvml -----------------------------------------------------------------
Util = namedtuple("Util", "gpu memory")
Mem = namedtuple("Mem", "total free used")


class FakeNVMLError(Exception):
    pass


def fake_pynvml(n_gpus: int = 2, power_supported: bool = True, init_error: bool = False):
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    m.NVML_TEMPERATURE_GPU = 0
    m.calls = {"init": 0, "shutdown": 0}

    def init():
        if init_error:
            raise FakeNVMLError("NVML Shared Library Not Found")
        m.calls["init"] += 1

    def handle(i):
        if not 0 <= i < n_gpus:
            raise FakeNVMLError("Invalid Argument")
        return ("h", i)

    def power(h):
        if not power_supported and h[1] == 1:
            raise FakeNVMLError("Not Supported")
        return 250_000 + h[1]  # milliwatts

    m.nvmlInit = init
    m.nvmlShutdown = lambda: m.calls.__setitem__("shutdown", m.calls["shutdown"] + 1)
    m.nvmlDeviceGetCount = lambda: n_gpus
    m.nvmlDeviceGetHandleByIndex = handle
    m.nvmlDeviceGetHandleByUUID = lambda u: handle(int(u.rsplit("-", 1)[1]))
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"  # bytes in older bindings
    m.nvmlDeviceGetUUID = lambda h: f"GPU-fake-{h[1]}"
    m.nvmlDeviceGetUtilizationRates = lambda h: Util(gpu=50 + h[1], memory=10)
    m.nvmlDeviceGetMemoryInfo = lambda h: Mem(total=80 << 30, free=70 << 30, used=(10 + h[1]) << 30)
    m.nvmlDeviceGetTemperature = lambda h, sensor: 60 + h[1]
    m.nvmlDeviceGetPowerUsage = power
    m.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    m.nvmlSystemGetCudaDriverVersion = lambda: 12040
    return m


@pytest.fixture
def nvml(monkeypatch):
    """Install a fake pynvml; returns a function to configure it."""
    nvml_static_info.cache_clear()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def install(**kw):
        m = fake_pynvml(**kw)
        monkeypatch.setitem(sys.modules, "pynvml", m)
        return m

    yield install
    nvml_static_info.cache_clear()


def test_gpu_metrics_with_fake_nvml(logdir, nvml, caplog):
    m = nvml(n_gpus=2, power_supported=False)
    cfg = {"track_git": False, "metrics_interval": 0.1}
    with caplog.at_level(logging.INFO, logger="tracelet.recorder"):
        with tracelet.start_logging("gpu", config=cfg) as exp:
            time.sleep(0.35)
    run = read_run(exp.run_dir)
    names = run.sysmetric_names()
    assert {f"gpu/0/{n}" for n in GPU_NAMES} <= names
    assert {f"gpu/1/{n}" for n in GPU_NAMES - {"power_watts"}} <= names
    assert "gpu/1/power_watts" not in names  # unsupported on that board: dropped, logged once
    assert sum("gpu/1 power not recorded" in r.getMessage() for r in caplog.records) == 1
    values = {n: v for t in run.parts for n, v in zip(t.column("name").to_pylist(), t.column("value").to_pylist())}
    assert values["gpu/0/power_watts"] == 250.0 and values["gpu/1/temperature_c"] == 61
    assert values["gpu/1/memory_used_bytes"] == 11 << 30 and values["gpu/0/utilization_percent"] == 50
    system, env = run.manifest["system"], run.manifest["env"]
    assert [g["index"] for g in system["gpus"]] == [0, 1]
    assert system["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3" and system["gpus"][1]["uuid"] == "GPU-fake-1"
    assert system["gpus"][0]["memory_total_bytes"] == 80 << 30
    assert env["nvidia_driver"] == "550.54.15" and env["cuda_driver"] == "12.4"
    assert m.calls["init"] == m.calls["shutdown"] >= 2  # every init is paired with a shutdown


def test_cuda_visible_devices_maps_gpu_indices(tmp_path, nvml, monkeypatch):
    nvml(n_gpus=4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-fake-3,9,0")  # 9 is invalid: CUDA stops there
    sampler = SystemSampler(tmp_path, interval_s=3600)
    sampler.start()
    sampler.stop()
    t = read_part(list_parts(tmp_path)[0])
    values = dict(zip(t.column("name").to_pylist(), t.column("value").to_pylist()))
    assert values["gpu/0/temperature_c"] == 62 and values["gpu/1/temperature_c"] == 63  # physical 2, 3
    assert not any(n.startswith("gpu/2/") for n in values)


def test_no_nvml_means_no_gpu_rows_and_one_info_line(tmp_path, nvml, caplog):
    nvml(init_error=True)
    sampler = SystemSampler(tmp_path, interval_s=0.02, flush_interval_s=0.05)
    with caplog.at_level(logging.INFO, logger="tracelet.recorder"):
        sampler.start()
        time.sleep(0.15)
        sampler.stop()
    names = {n for p in list_parts(tmp_path) for n in read_part(p).column("name").to_pylist()}
    assert names and not any(n.startswith("gpu/") for n in names)
    lines = [r.getMessage() for r in caplog.records if "GPU" in r.getMessage()]
    assert len(lines) == 1 and "NVML Shared Library Not Found" in lines[0]
    assert nvml_static_info() == {}


def test_real_pynvml_without_gpu_is_harmless(tmp_path):
    """The installed nvidia-ml-py on a machine without a driver: no rows, no exception."""
    nvml_static_info.cache_clear()
    sampler = SystemSampler(tmp_path, interval_s=3600)
    sampler.start()
    sampler.stop()
    names = {n for p in list_parts(tmp_path) for n in read_part(p).column("name").to_pylist()}
    assert "cpu/utilization_percent" in names
