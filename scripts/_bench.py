"""What every benchmark script shares: the environment its CLI subprocesses run in.

This machine sets ``PYTHONDONTWRITEBYTECODE=1``, so every ``python -m tracelet.cli`` would
recompile all it imports (~0.3-0.5 s that a real install never pays). CLI timings therefore
run with a warm byte-code cache in a folder of the benchmark's own (``PYTHONPYCACHEPREFIX``),
filled by one untimed run first; each script says so next to its figures.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

WARM_NOTE = "CLI runs with a warm byte-code cache (PYTHONPYCACHEPREFIX)"


def warm_env(cache: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with byte-code written to and read from
    ``cache``."""
    env = dict(os.environ if base is None else base)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def fill_cache(env: Mapping[str, str], *modules: str) -> None:
    """Import ``modules`` once in a subprocess with ``env``: their byte-code lands in the
    cache before anything is timed."""
    code = "".join(f"import {m}\n" for m in modules or ("tracelet.cli",))
    subprocess.run([sys.executable, "-c", code], env=dict(env), check=True)
