"""W&B harness: offline mode, read back from the ``.wandb`` files as ``wandb sync`` uploads them.

wandb 0.31 has no Python reader for its run files any more (``wandb.sdk.internal.datastore`` is
gone; ``wandb-core`` reads them), so the framing is read here, independently of tracelet's code:
leveldb-log records (32 KiB blocks, 7-byte chunk headers, CRC-32 over type byte + data) holding
``wandb.proto.wandb_internal_pb2.Record`` messages, after the 7-byte ``:W&B`` file header.

What the server keeps is modelled on wandb-core's sync (``core/internal/runsync``):

- the fragments (``offline-run-*`` folders) of one run id are uploaded one after another in the
  order of their first Run record's ``start_time`` (a later Run record updates the run);
- a fragment without a Run record makes ``wandb sync`` fail before uploading anything;
- a fragment is read up to its first unreadable record; a file ending inside a record stops
  that fragment with an error and the run's later fragments are not uploaded;
- history rows: each fragment's sync starts at the server's next step (last kept ``_step`` + 1)
  and a row whose ``_step`` is below it is **renumbered and kept** (wandb 0.31's
  HistoryStepTracker ``clampStep``). ``STEP_RULE = "drop"`` models older servers instead (such
  rows are dropped). Either way a destination that re-sends rows is caught: as duplicates, or as
  lost points when the re-sent row was merged differently;
- config is merged across fragments (resume keeps earlier keys); the last fragment's exit record
  gives the state (no exit record: ``wandb sync`` adds exit code 1).
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from tracelet.testing.harness import Harness, ReadBack

STEP_RULE = os.environ.get("TRACELET_TEST_WANDB_STEP_RULE", "renumber")  # or "drop"
BLOCK, HEADER = 32768, 7


class TornFile(Exception):
    pass


def read_records(path: str | Path):
    """Yield the ``Record`` protos of a ``.wandb`` file; raise TornFile at an unfinished one."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B" or struct.unpack("<H", data[4:6])[0] != 0xBEE1:
        raise ValueError(f"{path}: not a W&B run file")
    pos, parts = HEADER, None
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            if pos + left > len(data):
                break  # block padding at the very end
            pos += left
            continue
        if pos + HEADER > len(data):
            raise TornFile(f"{path}: chunk header cut at byte {pos}")
        crc, length, kind = struct.unpack_from("<IHB", data, pos)
        body = data[pos + HEADER: pos + HEADER + length]
        if len(body) < length:
            raise TornFile(f"{path}: chunk cut at byte {pos}")
        pos += HEADER + length
        if zlib.crc32(bytes([kind]) + body) & 0xFFFFFFFF != crc:
            raise TornFile(f"{path}: bad checksum at byte {pos}")
        if kind == 1:
            parts = [body]
        elif kind == 2:
            parts = [body]
            continue
        elif kind == 3 and parts is not None:
            parts.append(body)
            continue
        elif kind == 4 and parts is not None:
            parts.append(body)
        else:
            raise TornFile(f"{path}: unexpected chunk type {kind} at byte {pos}")
        rec = pb.Record()
        rec.ParseFromString(b"".join(parts))
        parts = None
        yield rec
    if parts is not None:
        raise TornFile(f"{path}: ends inside a record")


def _value(item):
    if item.value_json:
        return json.loads(item.value_json)
    which = item.WhichOneof("value")
    return None if which in (None, "none") else getattr(item, which)


def _row(history) -> dict:
    row: dict = {}
    for item in history.item:
        path = list(item.nested_key) or [item.key]
        if len(path) == 1:
            row[path[0]] = _value(item)
        else:
            node = row.setdefault(path[0], {})
            for p in path[1:-1]:
                node = node.setdefault(p, {})
            node[path[-1]] = _value(item)
    return row


@dataclass
class Fragment:
    path: Path
    run_id: str = ""
    project: str = ""
    start: tuple = (0, 0)  # the first Run record's start time: `wandb sync` upload order
    run_start: float = 0.0  # the run's start time after every Run record (the last one's)
    config: dict = field(default_factory=dict)
    rows: list = field(default_factory=list)  # (written _step, row)
    files: list = field(default_factory=list)
    exit_code: int | None = None
    preempting: bool = False
    torn: str | None = None
    has_run: bool = False
    display_name: str = ""
    entity: str = ""
    host: str = ""
    git: dict = field(default_factory=dict)  # the Run record's (remote_url, commit)
    environment: dict = field(default_factory=dict)  # EnvironmentRecord: wandb-metadata.json
    summary: dict = field(default_factory=dict)


def load_fragment(path: Path) -> Fragment:
    frag = Fragment(path)
    try:
        for rec in read_records(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                if not frag.has_run:  # wandb-core orders fragments by the first Run record's
                    frag.start = (rec.run.start_time.seconds, rec.run.start_time.nanos)
                frag.has_run = True
                frag.run_id, frag.project = rec.run.run_id, rec.run.project
                # later Run records update the run (RunParams.Update): the last start wins
                frag.run_start = rec.run.start_time.ToMicroseconds() / 1e6
                frag.display_name, frag.host = rec.run.display_name, rec.run.host
                frag.entity = rec.run.entity
                frag.git = {"remote_url": rec.run.git.remote_url, "commit": rec.run.git.commit}
                for u in rec.run.config.update:
                    frag.config[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
            elif kind == "config":
                for u in rec.config.update:
                    frag.config[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
            elif kind == "history":
                row = _row(rec.history)
                step = row.get("_step", rec.history.step.num)
                frag.rows.append((int(step), row))
            elif kind == "environment":
                from google.protobuf import json_format

                # as wandb-core writes wandb-metadata.json (protojson, camelCase names)
                frag.environment.update(json_format.MessageToDict(rec.environment))
            elif kind == "summary":
                for u in rec.summary.update:
                    frag.summary[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
            elif kind == "files":
                frag.files.extend(f.path for f in rec.files.files)
            elif kind == "exit":
                frag.exit_code = rec.exit.exit_code
            elif kind == "preempting":
                frag.preempting = True
    except TornFile as e:
        frag.torn = str(e)
    return frag


def upload(fragments: list[Fragment], rule: str = STEP_RULE) -> dict:
    """What the server holds after ``wandb sync`` of these fragments of one run."""
    kept: list[tuple[int, dict]] = []
    config: dict = {}
    summary: dict = {}  # summary records are updates: the last value of each key wins
    files: list[str] = []
    state = None
    for frag in sorted(fragments, key=lambda f: f.start):
        next_step = kept[-1][0] + 1 if kept else 0
        for step, row in frag.rows:
            if step < next_step:
                if rule == "drop":
                    continue
                step = next_step
            kept.append((step, row))
            next_step = step + 1
        config.update(frag.config)
        summary.update(frag.summary)
        files.extend(frag.files)
        code = 1 if frag.exit_code is None or frag.torn else frag.exit_code
        state = "preempted" if frag.preempting and code == 0 else (
            "finished" if code == 0 else "failed")
        if frag.torn:
            break  # wandb-core stops this run's sync at the error
    return {"rows": kept, "config": config, "summary": summary, "files": files, "state": state}


def _text(v) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (list, dict)):
        return json.dumps(v, sort_keys=True)
    return str(v)


class WandbOfflineHarness(Harness):
    name = "wandb"
    label = "wandb-offline"
    kill_trials = 10
    supports = frozenset({"scalar", "histogram", "image", "text", "audio", "params", "system",
                          "artifacts", "status"})

    def setup(self, tmp_path, monkeypatch):
        self.root = tmp_path / "wandb-root"
        self.root.mkdir()
        self._env = {"WANDB_MODE": "offline", "WANDB_DIR": str(self.root), "WANDB_SILENT": "true",
                     "WANDB_DISABLE_GIT": "true", "WANDB__DISABLE_STATS": "true"}
        for k, v in self._env.items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("WANDB_API_KEY", raising=False)
        return {"wandb_mode": "offline"}

    def env(self):
        return dict(self._env)

    def fragments(self) -> list[Fragment]:
        out = []
        for path in sorted((self.root / "wandb").glob("*/*.wandb")):
            frag = load_fragment(path)
            # one fragment without a Run record fails `wandb sync` of the whole folder
            assert frag.has_run, f"{path}: no Run record; `wandb sync` would fail ({frag.torn})"
            out.append(frag)
        return out

    def read_back(self, project: str, run_path: str) -> ReadBack:
        rb = ReadBack()
        mine: dict[str, list[Fragment]] = {}
        all_frags = self.fragments()
        ids = {f.run_id for f in all_frags if f.project == project
               and (f.config.get("tracelet") or {}).get("run_path") == run_path}
        for f in all_frags:
            if f.project == project and f.run_id in ids:
                mine.setdefault(f.run_id, []).append(f)
        rb.runs_found = len(mine)
        if not mine:
            return rb
        server = upload(next(iter(mine.values())))
        for _, row in server["rows"]:
            gstep = row.get("global_step")
            for key, value in row.items():
                if key.startswith("_") or key in ("global_step", "system_step"):
                    continue
                if key.startswith("system/"):
                    rb.system_points += 1
                    continue
                if isinstance(value, dict) or (isinstance(value, list) and value
                                               and isinstance(value[0], dict)):
                    kind = value.get("_type") if isinstance(value, dict) else "list"
                    if kind == "histogram":
                        rb.histograms += 1
                    elif kind in ("image-file",):
                        rb.images += 1
                    elif kind == "images/separated":
                        rb.images += int(value.get("count", len(value.get("filenames", []))))
                    elif kind in ("html-file", "table-file"):
                        rb.texts += 1
                    elif kind == "audio-file":
                        rb.audio += 1
                    continue
                v = float(value)
                # one NaN object for every NaN, so (step, nan) tuples compare equal
                rb.scalars.setdefault(key, []).append((int(gstep), math.nan if v != v else v))
        rb.params = {k: _text(v) for k, v in server["config"].items()
                     if k not in ("_wandb", "tracelet")}
        rb.artifacts = sorted({p for p in server["files"] if not p.startswith("media/")})
        rb.status = server["state"]
        return rb


HARNESSES = [WandbOfflineHarness]
