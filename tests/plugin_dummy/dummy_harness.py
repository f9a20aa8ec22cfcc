"""The dummy destination's test harness: reads the JSON-lines file itself (the "vendor's own
format"), never through the destination's code."""
from __future__ import annotations

import json
from pathlib import Path

from tracelet.testing.harness import Harness, ReadBack


class DummyHarness(Harness):
    name = "dummy"
    label = "dummy"
    supports = frozenset({"scalar", "params", "status"})

    def setup(self, tmp_path: Path, monkeypatch) -> dict:
        self.file = str(tmp_path / "dummy.jsonl")
        monkeypatch.delenv("TRACELET_DUMMY_FILE", raising=False)
        return {"dummy_file": self.file}

    def env(self) -> dict[str, str]:
        return {"TRACELET_DUMMY_FILE": self.file}

    def cli_args(self) -> list[str]:
        return ["--dummy-file", self.file]

    def read_back(self, project: str, run_path: str) -> ReadBack:
        try:
            lines = [json.loads(x) for x in Path(self.file).read_text().splitlines()]
        except FileNotFoundError:
            return ReadBack()
        uids = [e["uid"] for e in lines
                if e["op"] == "run" and e["project"] == project and e["run_path"] == run_path]
        rb = ReadBack(runs_found=len(uids))
        for e in lines:
            if e.get("uid") not in uids:
                continue
            if e["op"] == "scalars":
                for _ordinal, tag, step, _wall, value in e["points"]:
                    rb.scalars.setdefault(tag, []).append((step, value))
            elif e["op"] == "params":
                rb.params.update(e["params"])
            elif e["op"] == "finish":
                rb.status = e["status"]
        return rb

    def metric_key(self, tag: str) -> str:
        return tag  # the dummy keeps every tag as written
