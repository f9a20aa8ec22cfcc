"""The import rules of the layers (README "Architecture"), checked on the source itself.

* ``reader`` imports nothing of Tracelet above it: only ``tracelet.reader.*`` and the leaf
  modules ``errors``, ``rundir``, ``faults``.
* destinations never import the engine (nor the CLI, nor the presentation side); each
  destination's ``factory.py`` and ``mapping.py`` import no vendor SDK.
* the engine never imports the presentation side (``tracelet.output``, ``tracelet.cli``).
* ``tracelet.testing`` is imported by nothing in the package (it needs pytest).
* vendor names are listed only in the registry (``destinations/registry.py``) and the
  destinations' own packages, not in the engine or the command line.

Imports are read with ``ast`` (every ``import``/``from`` at any depth, relative ones resolved),
so a lazy import inside a function counts as much as one at the top.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "syncer" / "tracelet"
LEAVES = {"tracelet.errors", "tracelet.rundir", "tracelet.faults"}
VENDORS = ("mlflow", "wandb", "clearml", "aim", "aimrocks")


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports (relative imports resolved, ``from x import y`` also
    counting ``x.y`` so a submodule import is seen)."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def ours(names: set[str]) -> set[str]:
    return {n for n in names if n == "tracelet" or n.startswith("tracelet.")}


def modules(sub: str = "") -> list[Path]:
    root = PKG / sub if sub else PKG
    return sorted(p for p in root.rglob("*.py"))


def test_the_rule_checker_sees_relative_and_lazy_imports(tmp_path):
    mod = PKG / "destinations" / "mlflow" / "client.py"
    found = imports_of(mod)
    assert "tracelet.destinations.base" in found and "tracelet.params" in found


def test_reader_imports_nothing_above_it():
    bad = {}
    for path in modules("reader"):
        up = {n for n in ours(imports_of(path))
              if not n.startswith("tracelet.reader") and not any(
                  n == leaf or n.startswith(leaf + ".") for leaf in LEAVES)}
        if up:
            bad[module_name(path)] = sorted(up)
    assert not bad, f"reader modules importing upward: {bad}"


def test_destinations_never_import_the_engine_or_the_cli():
    bad = {}
    for path in modules("destinations"):
        up = {n for n in ours(imports_of(path))
              if n.split(".")[1:2] and n.split(".")[1] in ("engine", "cli", "output", "api")}
        if up:
            bad[module_name(path)] = sorted(up)
    assert not bad, f"destination modules importing the engine/CLI: {bad}"


@pytest.mark.parametrize("name", ["mlflow", "wandb", "clearml", "aim", "memory"])
def test_factories_and_mappings_import_no_vendor_sdk(name):
    for leaf in ("factory.py", "mapping.py"):
        path = PKG / "destinations" / name / leaf
        if not path.exists():
            continue
        vendor = {n for n in imports_of(path) if n.split(".")[0] in VENDORS}
        assert not vendor, f"{path}: imports {sorted(vendor)}"


def test_engine_never_imports_the_presentation_side():
    bad = {}
    for path in modules("engine"):
        up = {n for n in ours(imports_of(path))
              if n.split(".")[1:2] and n.split(".")[1] in ("output", "cli")}
        if up:
            bad[module_name(path)] = sorted(up)
    assert not bad, bad


def test_nothing_in_the_package_imports_the_testing_helpers():
    bad = [module_name(p) for p in modules() if "testing" not in p.parts
           and any(n.startswith("tracelet.testing") for n in imports_of(p))]
    assert not bad, bad


def test_vendor_names_are_listed_only_by_the_registry():
    """No ``if name == "wandb"`` outside the destinations: the engine and the CLI go through
    the registry and the factories."""
    bad = {}
    for path in modules():
        rel = path.relative_to(PKG).as_posix()
        if rel.startswith(("destinations/", "recorder/", "testing/")):
            continue  # the destinations themselves; the recorder's framework hooks
        hits = []
        for node in ast.walk(ast.parse(path.read_text())):
            consts = []
            if isinstance(node, ast.Compare):  # name == "wandb", name in ("mlflow", ...)
                for side in [node.left, *node.comparators]:
                    consts.extend(side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set))
                                  else [side])
            elif isinstance(node, ast.Dict):  # {"mlflow": ...} tables
                consts.extend(k for k in node.keys if k is not None)
            if any(isinstance(c, ast.Constant) and c.value in VENDORS for c in consts):
                hits.append(node.lineno)
        if hits:
            bad[rel] = hits
    assert not bad, f"vendor names outside the registry and the destinations: {bad}"


def test_import_tracelet_and_a_no_op_pass_import_no_sdk_and_no_pandas(tmp_path):
    code = ("import sys, tracelet, tracelet.engine, tracelet.cli, tracelet.destinations; "
            "from tracelet.destinations import known_destinations, target_key; "
            "[target_key(n, {}) for n in known_destinations()]; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{VENDORS + ('pandas', 'torch', 'jsonschema', 'pyarrow')!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", out
