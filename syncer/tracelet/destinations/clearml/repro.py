"""What reproduces a run, in the fields ClearML's own ``Task.init`` fills (pure, SDK-free).

``Task.init`` (clearml 2.1: ``ScriptInfo._get_script_info``, ``Task._update_repository``,
``Task._update_requirements``; the resource monitor's ``_get_machine_specs``) records:

* ``script`` (EXECUTION tab): ``repository`` (the remote without credentials), ``branch``,
  ``version_num`` (the commit), ``diff`` (uncommitted changes; over 500,000 bytes ClearML keeps a
  warning and the full diff as an artifact), ``entry_point`` (the script, relative to
  ``working_dir``; ``-m module args`` for a module), ``working_dir`` (the current folder,
  relative to the repository root; ``.`` outside it or without a repository), ``binary``
  (``python3.11``) and ``requirements`` (INSTALLED PACKAGES: ``{"pip": "# Python <version>\\n\\n
  <name>==<version>...", "conda": ""}``, the shape of its ``detect_with_pip_freeze`` mode, which
  is what the recorder's installed-package list is);
* ``runtime`` properties (INFO tab): ``hostname``, ``python_version``, ``python_exec``, ``OS``,
  ``cpu_cores``, ``memory_gb``, ``gpu_count``, ``gpu_type``, ``gpu_memory``,
  ``gpu_driver_version``, ``gpu_driver_cuda_version``.

:func:`script_section` and :func:`runtime_properties` build the same from the run's manifest
(``RunRef.git/env/system/command``), adding ``user``, ``started_at`` and ``ended_at`` (ISO 8601
UTC) to the runtime properties: the server sets a task's ``started``/``completed`` itself when
its status changes (no API call takes them), so the source's times are kept there.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ..base import RunRef

MAX_DIFF_BYTES = 500_000  # ClearML's ScriptInfo.max_diff_size_bytes
MAX_REQUIREMENTS_BYTES = 512 * 1024  # ClearML's ScriptRequirements._max_requirements_size
DIFF_ARTIFACT = "git_diff.patch"  # the recorder's diff, in the run's artifacts/
_PYTHON = re.compile(r"^python(\d+(\.\d+)*)?[dmu]?(\.exe)?$", re.IGNORECASE)
_PYTHON_OPTS_WITH_VALUE = frozenset({"-W", "-X", "-Q"})  # python's options that take a value
_GIB = float(1 << 30)


def iso_utc(t: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC (``2024-05-01T12:00:00+00:00``); None stays None."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


def _text(v: Any) -> str:
    return v if isinstance(v, str) else ""


def locate_script(command: tuple[str, ...] | list[str], git_root: str | None,
                  cwd: str | None) -> tuple[str, str]:
    """(``working_dir``, ``entry_point``) of a recorded command, as ``ScriptInfo`` computes them.

    The script is the first argument after the interpreter and its options (``python -u
    train.py``), or the command itself when it is not a python interpreter (``./train.py``);
    ``python -m pkg.mod args`` gives ``-m pkg.mod args``. With the repository root and the
    folder the training ran in (``env.cwd``), ``working_dir`` is that folder relative to the
    root (``.`` outside it) and ``entry_point`` the script relative to it. Without the folder
    (manifests written before it was recorded), ``working_dir`` is ``.`` and an absolute
    script path is made relative to the root; without a repository, the script's file name
    (as ClearML does for a script outside any repository)."""
    argv = [str(a) for a in command]
    kind, what = _script_of(argv)
    if kind is None:
        return ".", ""
    working_dir = _working_dir(git_root, cwd)
    if kind == "module":
        return working_dir, " ".join(["-m", *what])
    if kind == "program":  # not python (`bash run.sh`): the command line is what runs
        return working_dir, shlex.join(what)
    script = what[0]
    if not git_root:
        return ".", posixpath.basename(script.replace(os.sep, "/"))
    if not cwd and not os.path.isabs(script):
        return working_dir, Path(script).as_posix()  # relative to an unknown folder: as written
    absolute = os.path.normpath(os.path.join(cwd or git_root, script))
    return working_dir, Path(os.path.relpath(absolute, os.path.join(git_root, working_dir))
                             ).as_posix()


def _working_dir(git_root: str | None, cwd: str | None) -> str:
    if not git_root or not cwd:
        return "."
    rel = os.path.relpath(os.path.normpath(cwd), os.path.normpath(git_root))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep):
        return "."  # not under the repository: ClearML uses its root
    return Path(rel).as_posix()


def _script_of(argv: list[str]) -> tuple[str | None, list[str]]:
    """("script", [path]), ("module", [module, args...]), ("program", argv) or (None, []) for
    ``python -c ...``, an interactive interpreter or an empty command."""
    if not argv:
        return None, []
    if not _PYTHON.match(posixpath.basename(argv[0].replace("\\", "/"))):
        if argv[0].endswith(".py"):
            return "script", [argv[0]]  # `./train.py` (a shebang script)
        return "program", argv
    i = 1
    while i < len(argv):
        a = argv[i]
        if a == "-m":
            return ("module", argv[i + 1:]) if i + 1 < len(argv) else (None, [])
        if a.startswith("-m") and not a.startswith("--"):
            return "module", [a[2:], *argv[i + 1:]]
        if a.startswith("-c") and not a.startswith("--"):
            return None, []
        if a in _PYTHON_OPTS_WITH_VALUE:
            i += 2
            continue
        if a.startswith("-") and a != "-":
            i += 1
            continue
        return "script", [a]
    return None, []


def requirements(run: RunRef) -> dict[str, str] | None:
    """``script.requirements`` from the run's installed packages (``env.packages``)."""
    packages = run.env.get("packages")
    if not isinstance(packages, Mapping) or not packages:
        return None
    lines = "".join(f"{name}=={version}\n" if version else f"{name}\n"
                    for name, version in sorted(packages.items(), key=lambda kv: str(kv[0]).lower()))
    python = _text(run.env.get("python"))
    pip = f"# Python {python}\n\n{lines}" if python else lines
    if len(pip) >= MAX_REQUIREMENTS_BYTES:  # ClearML's limit: the full list stays an artifact
        pip = (f"# Python {python}\n# {len(packages)} packages: the list is over "
               f"{MAX_REQUIREMENTS_BYTES} bytes; see the artifact tracelet/requirements.txt\n")
    return {"pip": pip, "conda": ""}


def diff_text(raw: bytes | None, over_limit: bool = False) -> str:
    """``script.diff`` from the run's ``artifacts/git_diff.patch`` (over ClearML's size limit:
    ClearML's own warning, pointing at the artifact that holds it)."""
    if over_limit or (raw is not None and len(raw) > MAX_DIFF_BYTES):
        return ("# WARNING! git diff too large to store, clear this section to execute without "
                f"it.\n# full git diff available in Artifacts/{DIFF_ARTIFACT}\n"
                "# Clear the section before enqueueing Task!\n")
    if not raw:
        return ""
    return raw.decode("utf-8", errors="replace")


def script_section(run: RunRef, diff: str) -> dict[str, Any]:
    """The task's ``script`` (execution section) for ``run``, ``diff`` from :func:`diff_text`."""
    git = run.git or {}
    env = run.env or {}
    root = _text(git.get("root")) or None
    working_dir, entry = locate_script(run.command, root, _text(env.get("cwd")) or None)
    python = _text(env.get("python"))
    major_minor = ".".join(python.split(".")[:2]) if python else ""
    return {
        "repository": _text(git.get("remote")),
        "branch": _text(git.get("branch")),
        "version_num": _text(git.get("commit")),
        "diff": diff,
        "entry_point": entry,
        "working_dir": working_dir,
        "binary": f"python{major_minor}" if major_minor else "python",
        "requirements": requirements(run) or {},
    }


def runtime_properties(run: RunRef) -> dict[str, Any]:
    """The task's ``runtime`` properties: ClearML's machine-spec keys, then the run's user and
    source times. Only what the manifest holds (no key with an unknown value)."""
    env, system = run.env or {}, run.system or {}
    props: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, bool) or value is None or value == "":
            return
        if isinstance(value, (str, int, float)):
            props[key] = value

    put("hostname", system.get("hostname"))
    put("python_version", env.get("python"))
    put("python_exec", env.get("executable"))
    put("OS", env.get("platform"))
    put("cpu_cores", system.get("cpus"))
    memory = system.get("memory_bytes")
    if isinstance(memory, (int, float)) and not isinstance(memory, bool) and memory > 0:
        props["memory_gb"] = round(memory / _GIB, 1)
    gpus = [g for g in system.get("gpus") or [] if isinstance(g, Mapping)]
    if "gpus" in system:
        props["gpu_count"] = len(gpus)
    if gpus:
        put("gpu_type", ", ".join(str(g.get("name", "?")) for g in gpus))
        mem = [g.get("memory_total_bytes") for g in gpus]
        if all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in mem):
            props["gpu_memory"] = ", ".join(f"{round(m / 1024.0 ** 3)}GB" for m in mem)
    put("gpu_driver_version", env.get("nvidia_driver"))
    put("gpu_driver_cuda_version", env.get("cuda_driver"))
    put("user", run.user)
    put("started_at", iso_utc(run.started_at))
    put("ended_at", iso_utc(run.ended_at))
    return props


def command_line(run: RunRef) -> str:
    """The recorded command as one shell line (``tracelet/command``), "" when unknown."""
    return shlex.join(run.command) if run.command else ""


def digest(*parts: Any) -> str:
    """A short, stable digest of JSON-able parts (what the checkpoint remembers was written)."""
    text = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]
