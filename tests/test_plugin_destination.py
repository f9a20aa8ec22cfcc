"""A third-party destination, as a user installs one: a separate distribution (``plugin_dummy/``:
a JSON-lines destination and a plugin that fails on import) built and installed with pip into a
venv of its own, found by Tracelet only through the ``tracelet.destinations`` entry points.

In that venv: ``tracelet sync --help`` lists it with its option, ``tracelet sync --to dummy``
lands every point exactly once, the plugin's own pytest run of ``tracelet.testing.conformance``
passes, and the broken plugin is reported while built-in destinations work.

The venv is made with ``--without-pip``; a ``.pth`` file adds this interpreter's site-packages
(``site.addsitedir``, so their own ``.pth`` files count too): pip, setuptools and the vendor
SDKs come from there, nothing from the network. (``--system-site-packages`` would not do: from
inside a venv it exposes the base interpreter's packages, not this venv's.) ``PYTHONPATH`` names
the folder of the ``tracelet`` this test imported, so the venv runs the same sources.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

import tracelet
from tracelet.testing.conformance import assert_exactly_once, project_fn
from tracelet.testing.memory import MemoryHarness
from tracelet.testing.sources import build_kill_logdir

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "plugin_dummy"
TRACELET_ROOT = Path(tracelet.__file__).resolve().parent.parent  # the folder holding tracelet/
BUILTINS = ("mlflow", "wandb", "clearml", "aim", "memory")
BROKEN = "destination plugin 'broken' (tracelet_broken:FACTORY) not loaded: RuntimeError"


def _load_dummy_harness():
    """The plugin's own harness (its tests' file), read here from its path: it reads the
    JSON-lines file back without the destination's code."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("dummy_harness", PLUGIN / "dummy_harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DummyHarness


class PluginVenv:
    def __init__(self, root: Path):
        self.root = root
        self.python = str(root / "bin" / "python")
        self.env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
                        PYTHONPATH=str(TRACELET_ROOT))
        for key in [k for k in self.env if k.startswith("TRACELET_")]:
            del self.env[key]

    def run(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
        p = subprocess.run([self.python, *args], env={**self.env, **env}, cwd=cwd,
                           capture_output=True, text=True, timeout=600)
        assert "Traceback" not in p.stderr, p.stderr
        return p

    def tracelet(self, *args: str, **env: str) -> subprocess.CompletedProcess:
        return self.run("-m", "tracelet.cli", *args, **env)


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory) -> PluginVenv:
    root = tmp_path_factory.mktemp("plugin")
    pkg = root / "tracelet-dummy"
    pkg.mkdir()
    for name in ("pyproject.toml", "tracelet_dummy.py", "tracelet_broken.py"):
        shutil.copy(PLUGIN / name, pkg / name)
    venv.EnvBuilder(with_pip=False).create(root / "venv")
    v = PluginVenv(root / "venv")
    purelib = v.run("-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout
    shared = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (Path(purelib.strip()) / "_shared_site.pth").write_text(
        f"import site; list(map(site.addsitedir, {shared!r}))\n")
    p = v.run("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
              "--quiet", str(pkg))
    assert p.returncode == 0, p.stdout + p.stderr
    # installed in the venv, not in the interpreter running this test
    assert v.run("-c", "import tracelet_dummy; print(tracelet_dummy.__file__)").stdout.startswith(
        str(root / "venv"))
    assert subprocess.run([sys.executable, "-c", "import tracelet_dummy"],
                          capture_output=True).returncode != 0
    return v


def test_help_lists_the_plugin_its_option_and_the_broken_plugin(plugin_venv):
    p = plugin_venv.tracelet("sync", "--help")
    assert p.returncode == 0, p.stderr
    dests = p.stdout.split("Destinations:")[1]
    listed = re.findall(r"^  (\S+)  +\S", dests, flags=re.M)  # the name column
    assert listed[:len(BUILTINS)] == list(BUILTINS) and "dummy" in listed, p.stdout
    assert "test plugin: one JSON-lines file" in dests
    assert "--dummy-file" in p.stdout and "--to DESTS" in p.stdout
    assert "broken" not in listed
    assert BROKEN in " ".join(p.stdout.split()), p.stdout  # said where the list is shown
    assert "dummy" in p.stdout.split("--to DESTS")[1].split("--")[0]  # named in --to's help


def test_sync_to_the_plugin_lands_every_point_once(plugin_venv, tmp_path):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=300)
    h = _load_dummy_harness()()
    h.file = str(tmp_path / "store.jsonl")
    args = ["sync", str(logdir), "--to", "dummy", "--dummy-file", h.file, "--project", "plug",
            "--json"]
    first = plugin_venv.tracelet(*args, TRACELET_BATCH_POINTS="70")  # several commits per file
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert {r["run"]: r["destinations"]["dummy"]["state"] for r in report["runs"]} == \
        {"run0": "synced", "run1": "synced"}, report
    assert BROKEN in first.stderr  # the broken plugin is named, and fails nothing
    again = plugin_venv.tracelet(*args)
    assert again.returncode == 0, again.stderr
    assert all(r["destinations"]["dummy"]["state"] == "unchanged"
               for r in json.loads(again.stdout)["runs"])
    assert_exactly_once(h, truth, project_fn("plug"))
    # the option's default: the environment variable the factory names
    (logdir / ".tracelet").rename(tmp_path / "state-lost")
    env_run = plugin_venv.tracelet("sync", str(logdir), "--to", "dummy", "--project", "plug",
                                   TRACELET_DUMMY_FILE=h.file)
    assert env_run.returncode == 0, env_run.stderr
    assert_exactly_once(h, truth, project_fn("plug"))  # found again, nothing twice


def test_builtin_destinations_work_beside_a_broken_plugin(plugin_venv, tmp_path, monkeypatch):
    logdir = tmp_path / "logs"
    truth = build_kill_logdir(logdir, runs=2, steps=50)
    h = MemoryHarness()
    h.config = h.setup(tmp_path, monkeypatch)
    p = plugin_venv.tracelet("sync", str(logdir), "--to", "memory", "--memory-store", h.root,
                             "--project", "plug")
    assert p.returncode == 0, p.stderr
    assert BROKEN in p.stderr
    assert_exactly_once(h, truth, project_fn("plug"))
    # the registry itself: the problem recorded once, every other name still there
    code = ("import json; from tracelet.destinations import registry as r\n"
            "names = r.known_destinations(); r.known_destinations()\n"
            "print(json.dumps([names, r.PLUGIN_PROBLEMS, type(r.create_destination('dummy', "
            "{'dummy_file': 'x'})).__name__, r.get_factory('mlflow').available()]))\n")
    names, problems, dummy, mlflow_ok = json.loads(plugin_venv.run("-c", code).stdout)
    assert names == [*BUILTINS, "dummy"] and dummy == "DummyDestination" and mlflow_ok
    assert len(problems) == 1 and problems[0].startswith(BROKEN), problems
    unknown = plugin_venv.tracelet("sync", str(logdir), "--to", "broken")
    assert unknown.returncode == 2, unknown.stderr
    assert "unknown destination(s) broken; choose from" in unknown.stderr, unknown.stderr


def test_the_conformance_suite_runs_against_the_plugin(plugin_venv, tmp_path):
    """The plugin's own test folder: a conftest and a test module that imports the suite and
    defines its ``harness`` fixture; run by pytest in the venv, as the plugin's CI would."""
    suite = tmp_path / "plugin-tests"
    suite.mkdir()
    shutil.copy(PLUGIN / "dummy_harness.py", suite / "dummy_harness.py")
    shutil.copy(PLUGIN / "suite_conftest.py", suite / "conftest.py")
    shutil.copy(PLUGIN / "suite_conformance.py", suite / "test_conformance.py")
    p = plugin_venv.run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(suite),
                        cwd=suite)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "5 passed" in p.stdout, p.stdout
    for test in ("test_roundtrip_every_kind", "test_resync_unchanged_sends_nothing",
                 "test_incremental_append_lands_once", "test_lost_state_dir_sends_nothing_twice",
                 "test_small_batches_and_state_dir_option"):
        assert f"PASSED test_conformance.py::{test}[dummy]" in p.stdout, p.stdout


def test_tracelet_never_imports_its_test_helpers():
    """``import tracelet`` and the command line load neither ``tracelet.testing`` nor pytest;
    of ``tracelet.testing`` only the conformance module needs pytest."""
    code = ("import sys, tracelet, tracelet.cli, tracelet.api, tracelet.engine\n"
            "from tracelet.destinations import all_factories; all_factories()\n"
            "print(sorted(m for m in sys.modules if m.startswith('tracelet.testing') or "
            "m.split('.')[0] == 'pytest'))\n"
            "import tracelet.testing.events, tracelet.testing.sources, tracelet.testing.harness\n"
            "import tracelet.testing.memory\n"
            "print('pytest' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(TRACELET_ROOT)))
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["[]", "False"], p.stdout
