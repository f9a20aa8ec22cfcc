"""Runs without a manifest (start/end from their events, --finish-idle, Lightning's
hparams.yaml) and run naming (--run-name, the default rule), against the memory destination."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from tracelet.cli import main
from tracelet.destinations.memory import store_named
from tracelet.engine import SyncOptions, parse_run_name, run_sync
from tracelet.errors import UsageError
from tracelet.testing.events import T0, scalar_event, version_event, write_frames


def sync(logdir, **kw):
    return run_sync([str(logdir)], SyncOptions(destinations=["memory"], progress=False,
                                               dest_config={"memory_store": "mem:t"}, **kw))


def runs() -> dict:
    return {r.run_path: r for r in store_named("mem:t").runs.values()}


def plain_run(folder: Path, steps: int = 5, start: float = T0, first: int = 0) -> float:
    """file_version at ``start``, one scalar per step at start+10+s; returns the last wall."""
    folder.mkdir(parents=True, exist_ok=True)
    name = folder / f"events.out.tfevents.{int(start)}.h.{first}"
    frames = ([version_event(start)] if not first else []) + [
        scalar_event("loss", s, 1.0 / (s + 1), wall=start + 10 + s)
        for s in range(first, first + steps)]
    write_frames(name, frames)
    return start + 10 + first + steps - 1


def age(folder: Path, seconds: float = 7200) -> None:
    t = time.time() - seconds
    for p in folder.rglob("events.out.tfevents.*"):
        os.utime(p, (t, t))


def recorded_run(folder: Path, project: str, name: str) -> None:
    plain_run(folder)
    (folder / "tracelet.json").write_text(json.dumps({
        "schema_version": 1, "run_id": "r" * 32, "name": name, "project": project,
        "status": "running", "started_at": T0 - 50}))


# -- what the no-op pass looks at ------------------------------------------------------------------
def test_a_sidecar_part_or_artifact_added_to_a_plain_run_is_not_unchanged(tmp_path):
    """A run without a manifest syncs its sidecar parts and artifacts too, so the stat-only
    no-op check must see them: a part or an artifact written after the last event (the
    training's last system sample, a checkpoint saved at the end) syncs at the next pass,
    without waiting for an event file to change."""
    from tracelet.sidecar import write_part

    logdir = tmp_path / "logs"
    plain_run(logdir / "a")
    write_part(logdir / "a", 1, [T0 + 1, T0 + 2], ["cpu/percent"] * 2, [1.0, 2.0])
    first = sync(logdir)
    assert first.runs[0].destinations["memory"].points_sent == {"scalar": 5, "system": 2}
    assert sync(logdir).runs[0].destinations["memory"].state == "unchanged"
    write_part(logdir / "a", 2, [T0 + 3], ["cpu/percent"], [3.0])
    second = sync(logdir).runs[0].destinations["memory"]
    assert second.state == "synced" and second.points_sent == {"system": 1}
    assert len(runs()["a"].system) == 3
    (logdir / "a" / "artifacts").mkdir()
    (logdir / "a" / "artifacts" / "model.txt").write_text("weights")
    third = sync(logdir).runs[0].destinations["memory"]
    assert third.state == "synced" and third.artifacts_sent == 1
    assert runs()["a"].artifacts == {"model.txt": b"weights"}
    assert sync(logdir).runs[0].destinations["memory"].state == "unchanged"


# -- start / end / --finish-idle -------------------------------------------------------------------
def test_plain_run_starts_at_its_first_event_and_is_finished_when_idle(tmp_path):
    logdir = tmp_path / "logs"
    last = plain_run(logdir / "a")
    age(logdir)
    assert sync(logdir).exit_code == 0
    run = runs()["a"]
    assert run.started_at == T0 and run.status is None  # not asked: stays running
    report = sync(logdir, finish_idle_s=3600)
    assert report.runs[0].destinations["memory"].state == "synced"
    run = runs()["a"]
    assert (run.status, run.ended_at) == ("finished", last)
    assert sync(logdir, finish_idle_s=3600).runs[0].destinations["memory"].state == "unchanged"


def test_a_finished_idle_run_that_grows_runs_again(tmp_path):
    logdir = tmp_path / "logs"
    plain_run(logdir / "a")
    age(logdir)
    sync(logdir, finish_idle_s=60)
    assert runs()["a"].status == "finished"
    last = plain_run(logdir / "a", first=5, start=T0 + 100)  # a second file: training resumed
    sync(logdir, finish_idle_s=3600)
    assert (runs()["a"].status, runs()["a"].ended_at) == ("running", None)
    age(logdir)
    sync(logdir, finish_idle_s=3600)
    assert (runs()["a"].status, runs()["a"].ended_at) == ("finished", last)


def test_a_recorded_run_keeps_its_manifest_status_and_start(tmp_path):
    logdir = tmp_path / "logs"
    recorded_run(logdir / "p" / "rec", "p", "rec")
    age(logdir)
    sync(logdir, finish_idle_s=1)
    run = runs()["p/rec"]
    assert (run.status, run.started_at) == ("running", T0 - 50)


def test_finish_idle_must_be_positive_in_the_python_api(tmp_path):
    plain_run(tmp_path / "logs" / "a")
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(UsageError, match="finish_idle_s"):
            sync(tmp_path / "logs", finish_idle_s=bad)


@pytest.mark.parametrize("text", ["24", "1x", "-5m", "0s", "1h30m", "", "nan", "5 m"])
def test_cli_finish_idle_bad_value_is_exit_2(tmp_path, text):
    plain_run(tmp_path / "logs" / "a")
    r = CliRunner().invoke(main, ["sync", str(tmp_path / "logs"), "--to", "memory",
                                  "--memory-store", "mem:t", "--finish-idle", text])
    assert r.exit_code == 2, r.output
    assert "--finish-idle" in r.output and "24h" in r.output
    assert runs() == {}


# -- hparams.yaml ----------------------------------------------------------------------------------
def test_hparams_yaml_lands_as_params_redacted_and_flattened(tmp_path):
    logdir = tmp_path / "logs"
    plain_run(logdir / "lit" / "version_0")
    (logdir / "lit" / "version_0" / "hparams.yaml").write_text(
        "lr: 0.1\nlayers: 3\ndb_password: hunter2\noptim:\n  name: adam\n"
        "  betas: !!python/tuple\n  - 0.9\n  - 0.99\n")
    assert sync(logdir).exit_code == 0
    params = runs()["lit/version_0"].params
    assert params["lr"] == "0.1" and params["layers"] == "3"
    assert params["db_password"] == "***REDACTED***"
    assert params["optim/name"] == "adam" and json.loads(params["optim/betas"]) == [0.9, 0.99]


BIG = 300 * 1024


@pytest.mark.parametrize("content,why", [
    (b"lr: [0.1\n", "not valid YAML at line"),
    (b"- 1\n- 2\n", "not a mapping"),
    (b"lr: \xff\xfe\n", "not UTF-8"),
    (b"a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
     b"e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n", "YAML alias"),
    (b"x: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested"),
    (b"x: !!python/object/apply:os.system ['touch /tmp/pwned']\n", None),  # never executed
    (b"lr: 0.1\n" + b"#" * BIG + b"\n", "hparams file"),
])
def test_a_bad_hparams_yaml_is_a_warning_naming_it_and_the_run_still_syncs(tmp_path, content,
                                                                            why):
    logdir = tmp_path / "logs"
    plain_run(logdir / "a")
    path = logdir / "a" / "hparams.yaml"
    path.write_bytes(content)
    report = sync(logdir)
    assert report.exit_code == 0, report.to_dict()
    rr = report.runs[0]
    assert sorted(runs()["a"].scalars()["loss"]) == [(s, pytest.approx(1.0 / (s + 1)))
                                                      for s in range(5)]
    if why is None:  # a python tag is text, nothing is constructed
        assert runs()["a"].params["x"].startswith("!!python/")
        return
    assert any(str(path) in p and why in p for p in rr.problems), rr.problems
    assert runs()["a"].params == {}


def test_hparams_yaml_linked_out_of_the_run_is_not_read(tmp_path):
    logdir = tmp_path / "logs"
    plain_run(logdir / "a")
    secret = tmp_path / "elsewhere.yaml"
    secret.write_text("token_like: 1\n")
    (logdir / "a" / "hparams.yaml").symlink_to(secret)
    report = sync(logdir)
    assert report.exit_code == 0
    assert runs()["a"].params == {}
    assert any("hparams.yaml" in p for p in report.runs[0].problems), report.runs[0].problems


def test_a_changed_hparams_yaml_is_a_change(tmp_path):
    logdir = tmp_path / "logs"
    plain_run(logdir / "a")
    sync(logdir)
    (logdir / "a" / "hparams.yaml").write_text("lr: 0.5\n")
    assert sync(logdir).runs[0].destinations["memory"].state == "synced"
    assert runs()["a"].params["lr"] == "0.5"


# -- naming ----------------------------------------------------------------------------------------
def test_default_names_recorded_runs_without_their_project_and_plain_runs_as_before(tmp_path):
    logdir = tmp_path / "proj"
    recorded_run(logdir / "proj" / "run1", "proj", "run1")  # the recorder's <project>/<name>
    plain_run(logdir / "proj" / "plain")  # a plain folder named like the logdir: unchanged
    plain_run(logdir / "other")
    sync(logdir)
    names = {p: (r.name, r.project) for p, r in runs().items()}
    assert names == {"proj/run1": ("run1", "proj"), "proj/plain": ("proj/plain", "proj"),
                     "other": ("other", "proj")}


def test_run_name_template_renames_without_new_runs(tmp_path):
    logdir = tmp_path / "logs"
    recorded_run(logdir / "p" / "rec", "p", "rec")
    plain_run(logdir / "x" / "a")
    sync(logdir)
    uids = {p: r.run_uid for p, r in runs().items()}
    report = sync(logdir, run_name="{project}:{name} ({run_path})")
    assert {r.destinations["memory"].state for r in report.runs} == {"synced"}  # renamed
    assert {p: r.name for p, r in runs().items()} == {"p/rec": "p:rec (p/rec)",
                                                       "x/a": "logs:a (x/a)"}
    assert {p: r.run_uid for p, r in runs().items()} == uids  # the same runs
    again = sync(logdir, run_name="{project}:{name} ({run_path})")
    assert {r.destinations["memory"].state for r in again.runs} == {"unchanged"}


@pytest.mark.parametrize("template,why", [
    ("{nme}", "unknown field {nme}"), ("{0}", "unknown field {0}"), ("{}", "unknown field"),
    ("{name.upper}", "unknown field"), ("{name[0]}", "unknown field"), ("{name", "braces"),
    ("{name:d}", "--run-name"), ("   ", "empty"),
])
def test_bad_run_name_templates_are_usage_errors_listing_the_fields(template, why):
    with pytest.raises(UsageError) as e:
        parse_run_name(template)
    assert why in str(e.value)
    if "field" in why:
        assert "{run_path}, {name}, {project}" in str(e.value)


def test_cli_unknown_run_name_field_is_exit_2_and_nothing_synced(tmp_path):
    plain_run(tmp_path / "logs" / "a")
    r = CliRunner().invoke(main, ["sync", str(tmp_path / "logs"), "--to", "memory",
                                  "--memory-store", "mem:t", "--run-name", "{user}/{name}"])
    assert r.exit_code == 2, r.output
    assert "{user}" in r.output and "{run_path}, {name}, {project}" in r.output
    assert runs() == {}
