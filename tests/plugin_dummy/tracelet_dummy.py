"""A minimal third-party Tracelet destination: every call appends one JSON line to one file.

The factory (what the registry and ``tracelet sync --help`` know without the "SDK") and the
client (the contract of ``tracelet.destinations.base``) are all a destination needs. It stores
scalars, params and the run status; the engine reports the other kinds as unsupported.

Exactly once: a scalar is identified by its position in its source file, i.e. (file, ordinal
among the file's scalars). The ordinal at a batch's start is 0 for offset 0, else what this
destination recorded at the end of the batch that ended there (the engine only resumes at a
committed batch end). With ``dedupe=True`` the positions already in the file are skipped.
"""
from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Mapping

from tracelet.destinations.base import (Capabilities, Destination, DestinationFactory, Option,
                                        RunHandle, env_or)
from tracelet.errors import DestinationError
from tracelet.params import param_text
from tracelet.reader.points import SCALAR

NAME = "dummy"
ENV = "TRACELET_DUMMY_FILE"


class DummyFactory(DestinationFactory):
    name = NAME
    extra = ""
    vendor_module = None  # nothing to install: the "vendor" is a file
    client = "tracelet_dummy:DummyDestination"
    summary = "test plugin: one JSON-lines file"
    options = (Option("dummy_file", "--dummy-file", env=ENV,
                      help="dummy destination: the JSON-lines file (default TRACELET_DUMMY_FILE)."),)

    def target(self, config: Mapping[str, Any]) -> str:
        return os.path.abspath(env_or(config, "dummy_file", ENV, "dummy.jsonl"))


FACTORY = DummyFactory()


def read_lines(path: str | os.PathLike) -> list[dict]:
    """Every complete line of the file (a line cut by a kill -9 never returned: not there)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.splitlines(keepends=True) if line.endswith(b"\n")]


class DummyDestination(Destination):
    name = NAME
    capabilities = Capabilities(kinds=frozenset({SCALAR}), system_metrics=False, artifacts=False)

    def __init__(self, config: Mapping[str, Any] | None = None):
        super().__init__(config)
        self.path = FACTORY.target(self.config)
        self.lock = threading.Lock()

    @property
    def target(self) -> str:
        return f"dummy:{self.path}"

    def _append(self, entry: dict) -> None:
        line = (json.dumps(entry) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)  # durable before the call returns: the engine commits after it
        finally:
            os.close(fd)

    def _runs(self) -> dict[str, dict]:
        return {e["uid"]: e for e in read_lines(self.path) if e["op"] == "run"}

    # -- the contract ---------------------------------------------------------------------------
    def open_run(self, run, identity):
        runs = self._runs()
        uid = (identity or {}).get("uid")
        mine = runs.get(uid) if isinstance(uid, str) else None
        if mine is not None and mine["run_id"] == run.run_id:
            return RunHandle(identity={"uid": uid}, existed=True)
        # an identity naming another run (a crafted or mixed-up checkpoint) is never used
        ignored = mine is not None or (uid is not None and not isinstance(uid, str))
        for other in runs.values():  # found again by run id: a lost state dir makes no 2nd run
            if other["run_id"] == run.run_id and other["project"] == run.project:
                return RunHandle(identity={"uid": other["uid"]}, existed=True,
                                 identity_ignored=ignored)
        uid = uuid.uuid4().hex
        self._append({"op": "run", "uid": uid, "run_id": run.run_id, "project": run.project,
                      "run_path": run.run_path})
        return RunHandle(identity={"uid": uid}, existed=False, identity_ignored=ignored)

    def send(self, handle, batch, *, dedupe):
        uid = handle.identity["uid"]
        with self.lock:
            lines = [e for e in read_lines(self.path) if e.get("uid") == uid]
            if not any(e["op"] == "run" for e in lines):
                raise DestinationError(f"dummy: run {uid} is not in {self.path}")
            mine = [e for e in lines if e["op"] == "scalars" and e["path"] == batch.path]
            ends = {e["end"]: e["end_ord"] for e in mine}
            base = 0 if batch.start_offset == 0 else ends.get(batch.start_offset)
            if base is None:
                raise DestinationError(f"dummy: no batch of {batch.path} ended at byte "
                                       f"{batch.start_offset}")
            landed = {p[0] for e in mine for p in e["points"]} if dedupe else set()
            c = batch.scalars
            points = [[base + i, t, s, w, v]
                      for i, (t, s, w, v) in enumerate(zip(c.tags, c.steps, c.wall_times, c.values))
                      if base + i not in landed]
            self._append({"op": "scalars", "uid": uid, "path": batch.path, "points": points,
                          "end": batch.end_offset, "end_ord": base + len(c)})

    def log_params(self, handle, params):
        self._append({"op": "params", "uid": handle.identity["uid"],
                      "params": {k: param_text(v) for k, v in params.items()}})
        return []

    def finish(self, handle, status, ended_at):
        self._append({"op": "finish", "uid": handle.identity["uid"], "status": status,
                      "ended_at": ended_at})
