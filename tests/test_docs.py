"""Every example of docs/training.md runs here, and the run directory it leaves is checked.

How examples are found: a fenced ``python`` or ``bash`` block whose preceding line is a marker
``<!-- example: NAME -->`` (optionally ``<!-- example: NAME file=PATH -->``). Blocks sharing a
NAME form one test case, run in document order in one fresh working folder, with
``TRACELET_LOGDIR`` set to ``<that folder>/tracelet_runs`` (the default logdir, so the examples
read the same without it):

* ``python`` with ``file=PATH``: written to PATH, not run (a later ``bash`` block runs it);
* ``python``: executed in this process, in a fresh namespace, stdout captured, environment
  restored afterwards;
* ``bash``: ``bash -e -o pipefail`` in a subprocess whose ``python``, ``tracelet`` and
  ``torchrun`` run this interpreter with this checkout's sources; it must exit 0.

The examples are self-contained: the test provides no names, only the surroundings an example
states (a git checkout with an uncommitted change for ``git-env``). ``CHECKS[NAME]`` then asserts
what the guide says happened, reading the run back the way sync does (``tracelet.reader``,
the manifest, sidecar parts, ``artifacts/``, MLflow's own client). Real torch, tensorboardX,
Lightning and MLflow (a sqlite store) are used.

Guards: every ``python``/``bash`` fence in the guide carries a marker, every marker has a check
and every check has a marker, so an example that is removed, renamed, added without a check or
broken fails here. The configuration table, the manifest field list and the system-metric names
of the guide are compared with the code.
"""
from __future__ import annotations

import ast
import contextlib
import io
import math
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest

import tracelet  # noqa: F401
from tests.recorder.recorder_helpers import read_run  # the recorder tests' reader of a run
from tracelet.redact import REDACTED

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "training.md"

MARKER = re.compile(r"^<!-- example: (?P<name>[\w-]+)(?: file=(?P<file>[\w./-]+))? -->$")
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\s*$")
RUNNABLE = ("python", "bash")
BASH_TIMEOUT_S = 240


# -- parsing the guide ---------------------------------------------------------------------------
@dataclass
class Block:
    name: str
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    file: str | None = None


def parse_guide(text: str) -> tuple[list[Block], list[str]]:
    """``(examples, problems)``: problems name unmarked runnable fences and stray markers."""
    lines = text.splitlines()
    blocks: list[Block] = []
    problems: list[str] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            if MARKER.match(lines[i]) and not (i + 1 < len(lines) and FENCE.match(lines[i + 1])):
                problems.append(f"line {i + 1}: marker not directly followed by a fence")
            i += 1
            continue
        start = i
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        if end is None:
            problems.append(f"line {start + 1}: fence never closed")
            break
        lang = m.group("lang")
        marker = MARKER.match(lines[start - 1]) if start > 0 else None
        if lang in RUNNABLE:
            if marker is None:
                problems.append(f"line {start + 1}: ```{lang} block without an example marker")
            else:
                blocks.append(Block(marker.group("name"), lang, "\n".join(lines[start + 1:end]) + "\n",
                                    start + 1, marker.group("file")))
        elif marker is not None:
            problems.append(f"line {start + 1}: marker on a ```{lang} block (only python/bash run)")
        i = end + 1
    return blocks, problems


def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def examples() -> dict[str, list[Block]]:
    out: dict[str, list[Block]] = {}
    for b in parse_guide(guide_text())[0]:
        out.setdefault(b.name, []).append(b)
    return out


def section(text: str, heading: str) -> str:
    """The body of the ``## heading`` section."""
    m = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"docs/training.md has no section '## {heading}'"
    return m.group(1)


# -- running a case -------------------------------------------------------------------------------
@dataclass
class Result:
    block: Block
    stdout: str = ""
    ns: dict = field(default_factory=dict)
    stderr: str = ""


@dataclass
class Case:
    name: str
    cwd: Path
    results: list[Result] = field(default_factory=list)

    @property
    def logdir(self) -> Path:
        return self.cwd / "tracelet_runs"

    def ns(self, i: int = 0) -> dict:
        return [r for r in self.results if r.block.lang == "python" and not r.block.file][i].ns

    def out(self, i: int = 0) -> list[str]:
        """stdout lines of the i-th executed block (python or bash)."""
        return [r for r in self.results if not r.block.file][i].stdout.splitlines()

    def run(self, project: str, name: str):
        return read_run(self.logdir / project / name)


def _shims(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, argv in (("python", [sys.executable]),
                       ("tracelet", [sys.executable, "-m", "tracelet.cli"]),
                       ("torchrun", [sys.executable, "-m", "torch.distributed.run"])):
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\nexec {shlex.join(argv)} \"$@\"\n")
        shim.chmod(0o755)


def _run_python(block: Block) -> Result:
    saved_env = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    ns: dict = {"__name__": "__main__"}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            exec(compile(block.code, f"docs/training.md:{block.line}", "exec"), ns)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    return Result(block, out.getvalue(), ns, err.getvalue())


def _run_bash(block: Block, cwd: Path) -> Result:
    env = dict(os.environ)
    env["PATH"] = f"{cwd / '.bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "syncer"), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: a hung example is killed whole
    try:
        stdout, stderr = proc.communicate(timeout=BASH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"docs/training.md:{block.line}: bash example still running after "
                    f"{BASH_TIMEOUT_S} s\nstdout:\n{stdout}\nstderr:\n{stderr}")
    assert proc.returncode == 0, (f"docs/training.md:{block.line}: bash example exited "
                                  f"{proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}")
    return Result(block, stdout, stderr=stderr)


def run_case(name: str, cwd: Path) -> Case:
    blocks = examples().get(name)
    assert blocks, f"docs/training.md has no example named {name!r} (removed or renamed?)"
    _shims(cwd / ".bin")
    case = Case(name, cwd)
    for block in blocks:
        if block.file:
            assert block.lang == "python", f"line {block.line}: file= is for python blocks"
            (cwd / block.file).write_text(block.code)
            case.results.append(Result(block))
        elif block.lang == "python":
            case.results.append(_run_python(block))
        else:
            case.results.append(_run_bash(block, cwd))
    return case


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    monkeypatch.setenv("TRACELET_LOGDIR", str(d / "tracelet_runs"))
    return d


@pytest.fixture(autouse=True)
def _no_run_left_behind():
    """Every example ends with no active run and the exit hooks restored."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    hook = sys.excepthook
    yield
    from tracelet.recorder import experiment

    left = experiment._active
    if left is not None:
        left.stop()
    assert left is None, f"the example left run {left.run_dir} active"
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert sys.excepthook is hook


# -- what each example implies --------------------------------------------------------------------
def check_start(case: Case) -> None:
    exp = case.ns()["exp"]
    assert exp.run_dir == case.logdir / "vision" / "resnet50-lr0.1"
    assert case.out() == [str(exp.run_dir), "finished"]
    run = case.run("vision", "resnet50-lr0.1")
    m = run.manifest
    assert m["status"] == "finished" and m["ended_at"] and m["backends"] == ["mlflow", "wandb"]
    assert m["tags"] == {"dataset": "imagenet"} and m["name"] == "resnet50-lr0.1"
    assert m["project"] == "vision" and re.fullmatch(r"[0-9a-f]{32}", m["run_id"])
    assert exp.config.metrics_interval == 5.0
    assert run.scalars["loss"] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert run.parts and "cpu/utilization_percent" in run.sysmetric_names()


def check_with(case: Case) -> None:
    run = case.run("vision", "with-block")
    assert run.manifest["status"] == "finished"
    assert run.scalars["eval/acc"] == [(0, 0.5), (1, 0.75)]


def check_metrics(case: Case) -> None:
    run = case.run("vision", "metrics-demo")
    loss = run.scalars["loss"]
    assert [s for s, _ in loss] == [0, 1, 2, 3]
    assert [v for _, v in loss[:3]] == [1.0, 0.5, pytest.approx(1 / 3)] and math.isnan(loss[3][1])
    assert run.scalars["acc"] == [(0, 0.5), (1, pytest.approx(0.6)), (2, pytest.approx(0.7))]
    assert [s for s, _ in run.scalars["lr"]] == [0, 1, 2]


def check_params(case: Case) -> None:
    expected = {"epochs": 10, "model/depth": 50, "model/widths": [64, 128], "name": "adamw",
                "lr": 0.0003, "batch_size": 128}
    run = case.run("vision", "params-demo")
    assert run.manifest["params"] == expected
    assert case.out() == [str(expected)]
    # the event file: one merged HParams record (lists as text, as TensorBoard shows them)
    assert run.hparams == [{**expected, "model/widths": "[64, 128]"}]
    doc = section(guide_text(), "Logging values")
    assert f"# {expected}" in doc  # the output the guide shows is the real one


def check_media(case: Case) -> None:
    run = case.run("vision", "media-demo")
    hist = {h.tag: h for h in run.histograms}
    assert set(hist) == {"weights/fc", "activations"}
    assert len(hist["activations"].counts) == 32 and sum(hist["activations"].counts) == 1000
    assert len(hist["weights/fc"].counts) == 64 and hist["weights/fc"].num == 64
    sizes = {i.tag: (i.width, i.height) for i in run.images}
    assert sizes == {"samples/chw": (32, 32), "samples/hwc": (48, 24), "samples/grid": (48, 48)}
    assert all(i.encoded.startswith(b"\x89PNG") for i in run.images)
    assert [(t.tag, t.step, t.text) for t in run.texts] == [("notes", 0, "warm-up finished; lr=3e-4")]


def check_image_limit(case: Case) -> None:
    assert case.out() == ["True"]
    [img] = case.run("default", "image-limit").images
    assert len(img.encoded) <= 20 * 1024 and img.width == img.height < 512


def check_artifacts(case: Case) -> None:
    art = case.logdir / "default" / "artifacts-demo" / "artifacts"
    files = sorted(str(p.relative_to(art)) for p in art.rglob("*") if p.is_file())
    assert files == ["ckpt/epoch1.pt", "config.yaml", "configs/used.yaml"]
    assert (art / "config.yaml").read_text() == "lr: 0.1\n"
    assert (art / "ckpt" / "epoch1.pt").read_bytes() == b"\0" * 1024


def check_writer(case: Case) -> None:
    run = case.run("vision", "writer-demo")
    assert [s for s, _ in run.scalars["Loss/Train"]] == [0, 1, 2]
    assert run.scalars["Loss/train"] == [(0, 0.5), (1, 0.5), (2, 0.5)]
    assert [s for s, _ in run.scalars["Loss/val"]] == [0, 1, 2]
    assert run.scalars["hparam/acc"] == [(0, pytest.approx(0.9))]
    assert [h.tag for h in run.histograms] == ["fc/weight"]
    assert {(i.tag, i.width, i.height) for i in run.images} >= {("input", 8, 8)}
    assert "curve" in {i.tag for i in run.images}
    assert [t.text for t in run.texts] == ["first epoch done"]
    assert run.manifest["params"] == {"lr": 0.1, "api_token": REDACTED}
    assert case.out() == [str({"lr": 0.1, "api_token": REDACTED})]
    # add_graph went to torch's own writer: a second event file in the same run
    assert len(list(run.path.glob("events.out.tfevents.*"))) == 2


def check_own_writers(case: Case) -> None:
    run = case.run("vision", "own-writers")
    assert run.scalars["Loss/Train"] == [(0, 0.5)]
    assert run.scalars["Accuracy/Train"] == [(0, pytest.approx(0.8))]
    assert len(list(run.path.glob("events.out.tfevents.*"))) == 3  # the run's, torch's, tensorboardX's
    elsewhere = case.cwd / "tb_elsewhere"
    assert run.manifest["linked_logdirs"] == [str(elsewhere)]
    assert case.out() == [str([str(elsewhere)])]
    assert list(elsewhere.glob("events.out.tfevents.*")) and "extra" not in run.scalars


def check_lightning(case: Case) -> None:
    run = case.run("vision", "lightning-demo")
    assert len(run.scalars["train_loss"]) == 16  # 2 epochs x 8 batches, every step logged
    assert not (case.cwd / "lightning_logs").exists()  # save_dir was replaced by the run
    assert (run.path / "hparams.yaml").exists() and list((run.path / "checkpoints").glob("*.ckpt"))
    assert (run.path / "artifacts" / "best.ckpt").stat().st_size > 0
    assert run.hparams and run.hparams[0]["lr"] == 0.1  # Lightning's own hparams record


def _documented_metric_names(text: str) -> set[str]:
    return set(re.findall(r"`((?:cpu|memory|disk|network|process|gpu/<i>)/[a-z_]+)`", text))


def check_sysmetrics(case: Case) -> None:
    import psutil

    run = case.run("default", "sysmetrics-demo")
    names = run.sysmetric_names()
    assert case.out() == [str(sorted(names))]
    from tracelet.recorder import sysmetrics

    documented = _documented_metric_names(section(guide_text(), "System metrics"))
    in_code = set(re.findall(r"(?:cpu|memory|disk|network|process|gpu/<i>)/[a-z_]+", sysmetrics.__doc__))
    assert documented == in_code, "the guide's metric names differ from the sampler's"
    machine = {n for n in documented if not n.startswith(("gpu/", "disk/", "network/"))}
    if psutil.disk_io_counters() is not None:
        machine |= {"disk/read_bytes", "disk/write_bytes"}
    if psutil.net_io_counters() is not None:
        machine |= {"network/sent_bytes", "network/recv_bytes"}
    assert machine <= names, f"not sampled: {machine - names}"
    assert run.parts and all(t.num_rows for t in run.parts)


def setup_git_env(cwd: Path) -> dict:
    """A git checkout with a credentialed remote and an uncommitted change to a tracked file."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout

    git("init", "-q", "-b", "main")
    (cwd / "train.py").write_text("lr = 0.1\n")
    git("add", "train.py")
    git("-c", "user.name=doc", "-c", "user.email=doc@example.com", "commit", "-q", "-m", "init")
    git("remote", "add", "origin", "https://someone:ghp_s3cr3t@example.com/team/repo.git")
    (cwd / "train.py").write_text("lr = 0.2  # uncommitted\n")
    return {"commit": git("rev-parse", "HEAD").strip()}


def check_git_env(case: Case, commit: str) -> None:
    import torch

    run = case.run("default", "git-demo")
    g, env = run.manifest["git"], run.manifest["env"]
    assert g["is_repo"] and g["commit"] == commit and g["branch"] == "main" and g["dirty"] is True
    assert g["remote"] == "https://example.com/team/repo.git" and not g.get("diff_truncated")
    assert "ghp_s3cr3t" not in (run.path / "tracelet.json").read_text()
    diff = (run.path / "artifacts" / "git_diff.patch").read_text()
    assert "+lr = 0.2  # uncommitted" in diff and "-lr = 0.1" in diff
    assert env["torch"] == torch.__version__ and env["python"] and "torch" in env["packages"]
    out = case.out()
    assert out[0] == f"{commit} main True https://example.com/team/repo.git"
    assert out[1] == f"{env['python']} {torch.__version__} {len(env['packages'])} packages"
    assert "diff --git a/train.py b/train.py" in "\n".join(out[2:])


def check_secrets(case: Case) -> None:
    expected = {"hf_token": REDACTED, "db/password": REDACTED,
                "db/url": "postgres://trainer@db:5432/runs", "max_tokens": REDACTED, "lr": 0.1}
    assert case.ns()["stored"] == expected
    run = case.run("default", "secrets-demo")
    assert run.manifest["params"] == expected and run.hparams == [expected]
    for f in run.path.rglob("*"):  # the values are nowhere in the run directory
        if f.is_file():
            data = f.read_bytes()
            assert b"hunter2" not in data and b"hf_abc123" not in data, f


def check_secrets_config(case: Case) -> None:
    assert case.ns()["stored"] == {"max_tokens": 512, "hf_token": REDACTED, "wandb_key": REDACTED,
                                   "db_password": REDACTED, "tokenizer": "bpe"}


def check_backends(case: Case) -> None:
    from tracelet.destinations import known_destinations

    out = case.out()
    assert out[0] == "['mlflow', 'wandb']"
    message = (f"start_logging(backend=...): unknown backend 'mlfow'; did you mean mlflow? "
               f"valid: {', '.join(known_destinations())}")
    assert out[1] == message
    assert f"# {message}" in section(guide_text(), "Backends: recorded, not contacted")
    assert case.run("default", "multi-backend").manifest["backends"] == ["mlflow", "wandb"]
    assert not (case.logdir / "default" / "typo").exists()  # refused before anything was written
    assert not (case.cwd / "mlflow.db").exists() and not (case.cwd / "mlruns").exists()


def check_ends(case: Case) -> None:
    run = case.run("jobs", "diverged")
    assert run.manifest["status"] == "failed" and run.manifest["ended_at"]
    assert case.out() == [f"failed {run.manifest['ended_at']}"]
    assert run.scalars["loss"] == [(0, pytest.approx(0.7))]


def check_signals(case: Case) -> None:
    term, kill = case.out(0), case.out(1)
    assert "exit status 143" in term and '"status": "killed",' in [s.strip() for s in term]
    run = case.run("jobs", "preempted")
    assert run.manifest["status"] == "killed" and run.manifest["ended_at"]
    steps = [s for s, _ in run.scalars["loss"]]
    assert steps == list(range(len(steps))) and len(steps) > 10 and not run.corrupt
    assert run.parts  # the finalizer wrote the buffered system metrics

    assert "exit status 137" in kill and '"status": "running",' in [s.strip() for s in kill]
    run = case.run("jobs", "oom-killed")
    assert run.manifest["status"] == "running" and run.manifest["ended_at"] is None
    steps = [s for s, _ in run.scalars["loss"]]
    assert steps[:11] == list(range(11)) and not run.corrupt  # flushed before "training"


def check_ddp(case: Case) -> None:
    assert case.out(0) == ["ddp-demo"]
    assert [p.name for p in (case.logdir / "jobs").iterdir()] == ["ddp-demo"]
    run = case.run("jobs", "ddp-demo")
    assert [s for s, _ in run.scalars["loss"]] == [0, 1, 2, 3, 4]
    assert run.manifest["status"] == "finished"
    assert not (case.cwd / "runs").exists()


def check_record(case: Case) -> None:
    run = case.run("jobs", "plain")
    m = run.manifest
    assert m["command"] == ["python", "train_plain.py", "--api-key", REDACTED]
    assert m["status"] == "finished" and m["tags"] == {"team": "vision"} and m["backends"] == []
    assert run.scalars["loss"] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert run.parts and "process/rss_bytes" in run.sysmetric_names()
    assert m["env"].get("python") and "is_repo" in m["git"]
    assert "s3cr3t" not in (run.path / "tracelet.json").read_text()
    out = case.out(0)
    assert '"--api-key",' in [s.strip() for s in out] and f'"{REDACTED}"' in [s.strip() for s in out]
    assert out[-1] == "exit status 3"
    assert case.run("jobs", "crashing").manifest["status"] == "failed"


def _mlflow_run(cwd: Path, project: str, run_path: str):
    """The MLflow run of ``run_path``, found by its identity tag (its shown name may differ:
    README, Run names)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name(project)
    [r] = client.search_runs([exp.experiment_id],
                             filter_string=f"tags.`tracelet.run_path` = '{run_path}'")
    return client, r


def check_live(case: Case) -> None:
    client, r = _mlflow_run(case.cwd, "vision", "vision/live-demo")
    assert r.info.status == "FINISHED"
    history = client.get_metric_history(r.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(10))
    assert case.run("vision", "live-demo").manifest["status"] == "finished"
    line = "tracelet: vision/live-demo -> mlflow (sqlite:///mlflow.db): synced scalar "  # counts: passes
    assert line in case.results[0].stderr  # the pass lines the guide shows
    assert line in section(guide_text(), "Live sync").replace("\n", " ")
    assert [line.strip() for line in case.out(1)] == ['"points_sent": {},']  # nothing sent twice


def check_manifest(case: Case) -> None:
    assert case.out() == ["finished {'lr': 0.1} {'baseline': ''}"]
    manifest = case.ns()["manifest"]
    text = section(guide_text(), "The run directory")
    para = text[text.index("**The manifest**"):text.index("<!-- example: manifest -->")]
    documented = set(re.findall(r"`([a-z_]+)`", para)) - {"running", "finished", "failed", "killed"}
    assert set(manifest) | {"command"} == documented, "the guide's manifest fields differ from the code's"
    assert manifest["schema_version"] == 1 and manifest["pid"] == os.getpid()


def _table(text: str) -> dict[str, str]:
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\| `(\w+)` \| (.*?) \| .* \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def check_config_defaults(case: Case) -> None:
    from tracelet.recorder.config import RecorderConfig, parse_size_bytes

    keys = {f.name for f in fields(RecorderConfig)}
    config = case.ns()["config"]
    assert set(config) == keys, f"the guide's config misses {keys - set(config)} / has {set(config) - keys}"
    assert RecorderConfig.from_dict(config) == RecorderConfig()  # the values are the defaults
    assert case.ns()["exp"].config == RecorderConfig()
    table = _table(section(guide_text(), "Configuration reference"))
    assert set(table) == keys, f"the config table misses {keys - set(table)} / has {set(table) - keys}"
    defaults = RecorderConfig()
    for key, cell in table.items():
        if key == "logdir":
            assert "$TRACELET_LOGDIR" in cell and "./tracelet_runs" in cell
            continue
        literal = re.match(r"`([^`]*)`", cell).group(1)
        if key == "git_diff_max_bytes":
            value = parse_size_bytes(literal.replace(" ", ""), key)
        else:
            value = ast.literal_eval(literal)
        want = getattr(defaults, key)
        assert (list(value) if isinstance(want, tuple) else value) == \
            (list(want) if isinstance(want, tuple) else want), f"config table: {key} default {cell}"


def check_sync(case: Case) -> None:
    client, r = _mlflow_run(case.cwd, "vision", "vision/to-sync")
    assert sorted(m.step for m in client.get_metric_history(r.info.run_id, "loss")) == [0, 1, 2, 3, 4]
    assert r.info.status == "FINISHED"
    report = case.ns(1)["report"]
    assert report.exit_code == 0 and report.totals()["mlflow"]["runs_unchanged"] == 1
    assert case.out(2)[0].startswith("0 {'mlflow': {") and "'runs_unchanged': 1" in case.out(2)[0]
    status = case.out(1)
    assert any(line.split()[:2] == ["vision/to-sync", "mlflow"] and "up to date" in line for line in status)


CHECKS = {
    "start": check_start,
    "with": check_with,
    "metrics": check_metrics,
    "params": check_params,
    "media": check_media,
    "image-limit": check_image_limit,
    "artifacts": check_artifacts,
    "writer": check_writer,
    "own-writers": check_own_writers,
    "lightning": check_lightning,
    "sysmetrics": check_sysmetrics,
    "git-env": check_git_env,
    "secrets": check_secrets,
    "secrets-config": check_secrets_config,
    "backends": check_backends,
    "ends": check_ends,
    "signals": check_signals,
    "ddp": check_ddp,
    "record": check_record,
    "live": check_live,
    "manifest": check_manifest,
    "config-defaults": check_config_defaults,
    "sync": check_sync,
}
SETUP = {"git-env": setup_git_env}


# -- the tests ------------------------------------------------------------------------------------
def test_every_example_is_marked_and_checked():
    blocks, problems = parse_guide(guide_text())
    assert not problems, problems
    names = {b.name for b in blocks}
    assert names == set(CHECKS), (f"examples without a check: {sorted(names - set(CHECKS))}; "
                                  f"checks without an example: {sorted(set(CHECKS) - names)}")


def test_parser_refuses_unmarked_and_finds_marked_blocks():
    text = ("<!-- example: a file=x.py -->\n```python\nprint(1)\n```\n\n"
            "```bash\necho unmarked\n```\n<!-- example: b -->\n```text\nnot code\n```\n")
    blocks, problems = parse_guide(text)
    assert [(b.name, b.lang, b.file, b.code) for b in blocks] == [("a", "python", "x.py", "print(1)\n")]
    assert len(problems) == 2 and "without an example marker" in problems[0] and "```text" in problems[1]


@pytest.mark.parametrize("name", list(CHECKS))
def test_example(name, workdir):
    extra = SETUP[name](workdir) if name in SETUP else {}
    case = run_case(name, workdir)
    CHECKS[name](case, **extra)
