"""Aim harness: a local Aim repo in the test's tmp dir, read back with Aim's own SDK."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tracelet.testing.harness import Harness, ReadBack

SYSTEM_PREFIXES = ("__system__", "system/")
REPEAT_CONTEXT_KEY = "tracelet_repeat"


def param_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, (list, dict)):
        return json.dumps(v, default=str, sort_keys=True)
    return str(v)


def flat_params(tree: Any, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in (tree or {}).items():
        key = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flat_params(v, key))
        else:
            out[key] = param_str(v)
    return out


def find_aim_runs(repo, project: str, run_path: str) -> list[str]:
    """Every run in the repo's folder of runs (what ``aim runs ls`` lists, indexed or not) that
    carries this run path in this experiment, read from each run's own storage."""
    from aim import Repo

    Repo._all_run_hashes.cache_clear()  # Aim caches the listing 0.5 s; list as a fresh process
    found = []
    for h in sorted(repo.list_all_runs()):
        tree = repo.request_tree("meta", h, read_only=True, skip_read_optimization=True)
        tracelet = tree.subtree(("meta", "chunks", h, "attrs")).get("tracelet") or {}
        if tracelet.get("run_path") != run_path:
            continue
        props = repo.structured_db.find_run(h)
        if props is not None and props.experiment == project:
            found.append(h)
    return found


def read_aim_run(repo, run_hash: str) -> ReadBack:
    """A run as Aim's SDK shows it (``Repo.iter_runs`` view: the index)."""
    from aim.sdk.run import Run
    from aim.sdk.sequences.distribution_sequence import Distributions
    from aim.sdk.sequences.audio_sequence import Audios
    from aim.sdk.sequences.image_sequence import Images
    from aim.sdk.sequences.text_sequence import Texts

    indexed = {r.hash for r in repo.iter_runs()}
    assert run_hash in indexed, f"aim run {run_hash} is not in Aim's index (Repo.iter_runs)"
    run = Run(run_hash, repo=repo, read_only=True)
    rb = ReadBack(runs_found=1)
    for metric in run.metrics():
        ctx = metric.context.to_dict()
        steps, (values,) = metric.data.view(["val"]).items_list()
        if metric.name.startswith(SYSTEM_PREFIXES):
            rb.system_points += len(steps)
            continue
        key = metric.name
        if ctx and set(ctx) != {REPEAT_CONTEXT_KEY}:
            key = f"{metric.name} {json.dumps(ctx, sort_keys=True)}"  # unexpected: shows up
        rb.scalars.setdefault(key, []).extend(
            (int(s), float(v)) for s, v in zip(steps, values))
    for name, ctx, _ in run.iter_sequence_info_by_type(Distributions.allowed_dtypes()):
        rb.histograms += len(run.get_distribution_sequence(name, ctx).data.indices_list())
    for name, ctx, _ in run.iter_sequence_info_by_type(Images.allowed_dtypes()):
        _, (values,) = run.get_image_sequence(name, ctx).data.view(["val"]).items_list()
        rb.images += sum(len(v) if isinstance(v, list) else 1 for v in values)
    for name, ctx, _ in run.iter_sequence_info_by_type(Audios.allowed_dtypes()):
        _, (values,) = run.get_audio_sequence(name, ctx).data.view(["val"]).items_list()
        rb.audio += sum(len(v) if isinstance(v, list) else 1 for v in values)
    for name, ctx, _ in run.iter_sequence_info_by_type(Texts.allowed_dtypes()):
        rb.texts += len(run.get_text_sequence(name, ctx).data.indices_list())
    rb.params = flat_params(run.get("hparams") or {})
    rb.artifacts = sorted(run.artifacts)
    tracelet = run.get("tracelet") or {}
    rb.status = "running" if run.active else (tracelet.get("status") or "finished")
    rb.aim_run = run  # type: ignore[attr-defined]  # for Aim-specific tests
    rb.name = run.name  # type: ignore[attr-defined]
    return rb


class AimLocalHarness(Harness):
    """A local Aim repo (``--aim-repo <tmp>``), the embedded default of ``--to aim``."""

    name = "aim"
    label = "aim-local"
    kill_trials = 10
    supports = Harness.supports | {"audio"}

    def setup(self, tmp_path: Path, monkeypatch) -> dict[str, Any]:
        self.root = str(tmp_path / "aim-repo")
        monkeypatch.delenv("AIM_REPO", raising=False)
        return {"aim_repo": self.root}

    def cli_args(self) -> list[str]:
        return ["--aim-repo", self.root]

    def repo(self):
        from aim import Repo

        return Repo(self.root)  # not Repo.from_path: a fresh view of the index, not a pooled one

    def read_back(self, project: str, run_path: str) -> ReadBack:
        from aim import Repo

        if not Repo.exists(self.root):
            return ReadBack()
        repo = self.repo()
        found = find_aim_runs(repo, project, run_path)
        if not found:
            return ReadBack()
        rb = read_aim_run(repo, found[0])
        rb.runs_found = len(found)
        assert rb.name == run_path, (rb.name, run_path)  # type: ignore[attr-defined]
        return rb


HARNESSES = [AimLocalHarness]
