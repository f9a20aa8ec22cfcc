"""The destination test harness: how a test configures a destination and reads it back.

A destination's tests subclass :class:`Harness` once per way of running it (MLflow: a local
store, a real server): ``setup`` returns the destination's config, ``read_back`` reads one run
back into a :class:`ReadBack`. The conformance suite (:mod:`tracelet.testing.conformance`)
runs each test against each harness. Reading back uses the vendor's OWN client or on-disk
format, never the destination's code: the question is what the vendor will show, not what we
think we sent. :class:`tracelet.testing.memory.MemoryHarness` is the smallest example.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ReadBack:
    """A run as the vendor shows it."""

    runs_found: int = 0  # runs on the destination carrying this run's identity (must be 1)
    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # key -> [(step, value)]
    params: dict[str, str] = field(default_factory=dict)
    system_points: int = 0
    histograms: int = 0
    images: int = 0
    texts: int = 0
    audio: int = 0
    artifacts: list[str] = field(default_factory=list)
    status: str | None = None


class Harness:
    name = ""  # destination name for --to
    label = ""  # pytest id
    kill_trials = 10  # kill -9 trials of Tracelet's own crash suite
    # what the destination stores and read_back reads: the conformance suite checks these
    # (a kind missing here must be reported by the sync as unsupported)
    supports = frozenset({"scalar", "histogram", "image", "text", "params", "system", "artifacts",
                          "status"})

    def setup(self, tmp_path: Path, monkeypatch) -> dict[str, Any]:
        """Prepare the destination; return the ``dest_config`` for SyncOptions. Env vars the
        destination reads must be set with ``monkeypatch`` AND returned in ``env()`` for
        subprocess syncs."""
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return {}

    def cli_args(self) -> list[str]:
        return []

    def read_back(self, project: str, run_path: str) -> ReadBack:
        """The run ``run_path`` of ``project`` as the vendor shows it (``ReadBack()`` if none)."""
        raise NotImplementedError

    def metric_key(self, tag: str) -> str:
        """The destination's name for a tag (its ``Destination.metric_key``)."""
        import importlib

        from tracelet.destinations import get_factory

        module, _, cls = get_factory(self.name).client.partition(":")
        return getattr(importlib.import_module(module), cls).metric_key(None, tag)  # type: ignore[arg-type]

    def teardown(self) -> None:
        pass


def canon(v: float) -> Any:
    """A value as every destination can compare it: NaN and infinities by name, floats
    rounded to what a float32 round trip keeps."""
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "+inf" if v > 0 else "-inf"
    if isinstance(v, float) and abs(v) >= 1.7976931348623157e308:  # MLflow stores ±Inf so
        return "+inf" if v > 0 else "-inf"
    return round(float(v), 6) if abs(v) >= 1e-3 or v == 0 else float(f"{v:.6g}")
