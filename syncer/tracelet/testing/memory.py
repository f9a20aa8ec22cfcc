"""The memory destination's harness (the reference example of a :class:`Harness`): a journal
folder, so that subprocess syncs and kill -9 tests can use it too, read back by replaying the
journal into a fresh store (not through the destination's client)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .harness import Harness, ReadBack


class MemoryHarness(Harness):
    name = "memory"
    label = "memory"
    kill_trials = 10
    supports = Harness.supports | {"audio"}

    def setup(self, tmp_path: Path, monkeypatch) -> dict[str, Any]:
        self.root = str(tmp_path / "memory-store")
        monkeypatch.delenv("TRACELET_MEMORY_STORE", raising=False)
        return {"memory_store": self.root}

    def env(self) -> dict[str, str]:
        return {"TRACELET_MEMORY_STORE": self.root}

    def read_back(self, project: str, run_path: str) -> ReadBack:
        from ..destinations.memory import MemoryStore

        store = MemoryStore(self.root)
        found = [r for r in store.runs.values() if r.project == project and r.run_path == run_path]
        if not found:
            return ReadBack()
        run = found[0]
        return ReadBack(runs_found=len(found), scalars=run.scalars(), params=dict(run.params),
                        system_points=len(run.system), histograms=run.count("histogram"),
                        images=run.count("image"), texts=run.count("text"),
                        audio=run.count("audio"), artifacts=sorted(run.artifacts),
                        status=run.status)


HARNESSES = [MemoryHarness]
