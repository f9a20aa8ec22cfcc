"""What the manifest records about the code and the machine: ``git``, ``env``, ``system``.

Each capture is best effort: a failure becomes an ``"error"`` entry in its section, never an
exception into training.

* ``env`` records **no environment variables at all** (neither names nor values): names alone
  (``ACME_PROD_DB_PASSWORD``) can be sensitive, and values are where secrets live. It holds the
  Python version, platform, installed distributions, and CUDA/driver versions when present.
* ``git`` remote URLs lose embedded credentials (:func:`~.redact.strip_url_credentials`).
"""
from __future__ import annotations

import functools
import logging
import os
import platform
import socket
import sys
from typing import Any

from ..redact import strip_url_credentials

log = logging.getLogger("tracelet.recorder")


def capture_git(path: str, diff_max_bytes: int) -> tuple[dict[str, Any], bytes | None]:
    """``(git section, diff bytes or None)``. The diff (``git diff HEAD``: staged and unstaged
    changes of tracked files) is returned only when the tree is dirty, cut at ``diff_max_bytes``
    with a marker line. ``dirty`` ignores untracked files (logdirs, data) like ``git describe``."""
    try:
        import git  # gitpython; importing it runs `git version`, so it is imported here only
    except Exception as e:  # ImportError, or git binary missing (gitpython raises on import)
        return {"is_repo": None, "error": f"gitpython unavailable: {e}"}, None
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return {"is_repo": False}, None
    info: dict[str, Any] = {"is_repo": True, "root": repo.working_tree_dir}
    diff = None
    try:
        try:
            info["commit"] = repo.head.commit.hexsha
        except ValueError:  # a repository without commits
            info["commit"] = None
        info["branch"] = None if repo.head.is_detached else repo.active_branch.name
        info["dirty"] = repo.is_dirty(untracked_files=False)
        remotes = {r.name: r for r in repo.remotes}
        remote = remotes.get("origin") or next(iter(remotes.values()), None)
        info["remote"] = strip_url_credentials(next(remote.urls)) if remote is not None else None
        if info["dirty"] and info["commit"]:
            text = repo.git.diff("HEAD").encode("utf-8", "surrogateescape") + b"\n"
            info["diff_bytes"] = len(text)
            if len(text) > diff_max_bytes:
                marker = f"\n# tracelet: diff cut at {diff_max_bytes} of {len(text)} bytes\n".encode()
                text = text[: max(0, diff_max_bytes - len(marker))] + marker
                info["diff_truncated"] = True
            diff = text
    except Exception as e:  # git binary errors, odd repository states
        info["error"] = f"{type(e).__name__}: {e}"
    return info, diff


def capture_env() -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "cwd": os.getcwd(),  # where the training ran: with git.root, ClearML's working_dir
    }
    try:
        env["packages"] = installed_packages()
    except Exception as e:
        env["packages_error"] = str(e)
    torch = sys.modules.get("torch")  # never imported here: too heavy for a capture
    if torch is not None:
        env["torch"] = getattr(torch, "__version__", None)
        env["torch_cuda"] = getattr(getattr(torch, "version", None), "cuda", None)
    nv = nvml_static_info()
    for key in ("nvidia_driver", "cuda_driver"):
        if nv.get(key):
            env[key] = nv[key]
    return env


def installed_packages() -> dict[str, str]:
    """Distribution name -> version, as ``importlib.metadata`` finds them (first on sys.path
    wins). Only the header of each METADATA is read: ``dist.metadata`` parses the whole file
    with the email parser and takes ~10x longer (0.3 s for 150 packages)."""
    from importlib import metadata

    packages: dict[str, str] = {}
    for dist in metadata.distributions():
        header = (dist.read_text("METADATA") or dist.read_text("PKG-INFO") or "").partition("\n\n")[0]
        fields = {}
        for line in header.splitlines():
            key, sep, value = line.partition(":")
            if sep and key in ("Name", "Version") and key not in fields:
                fields[key] = value.strip()
        if fields.get("Name"):
            packages.setdefault(fields["Name"], fields.get("Version", ""))
    return dict(sorted(packages.items(), key=lambda kv: kv[0].lower()))


def capture_system() -> dict[str, Any]:
    import psutil

    system: dict[str, Any] = {"hostname": socket.gethostname(), "cpus": os.cpu_count()}
    try:
        system["cpus_available"] = len(os.sched_getaffinity(0))  # what SLURM/cgroups allot us
    except (AttributeError, OSError):
        pass
    try:
        system["cpus_physical"] = psutil.cpu_count(logical=False)
        system["memory_bytes"] = psutil.virtual_memory().total
    except Exception as e:
        system["error"] = str(e)
    system["gpus"] = nvml_static_info().get("gpus", [])
    return system


@functools.lru_cache(maxsize=1)
def nvml_static_info() -> dict[str, Any]:
    """GPUs (as the process sees them), driver and CUDA driver versions; ``{}`` without NVML."""
    from .sysmetrics import Nvml

    nv = Nvml()
    if not nv.devices and not nv.available:
        return {}
    try:
        return {"gpus": nv.describe(), **nv.driver_versions()}
    finally:
        nv.shutdown()
