"""Every destination harness of this repository, collected from ``harness_*.py`` (each has a
module-level ``HARNESSES`` list) plus the memory destination's, which lives in
:mod:`tracelet.testing.memory` as the example for plugin authors."""
from __future__ import annotations

import importlib
from pathlib import Path

from tracelet.testing.harness import Harness
from tracelet.testing.memory import HARNESSES as MEMORY_HARNESSES

HERE = Path(__file__).resolve().parent


def _all_harnesses() -> list[type[Harness]]:
    out: list[type[Harness]] = []
    for path in sorted(HERE.glob("harness_*.py")):
        out.extend(getattr(importlib.import_module(f"{__package__}.{path.stem}"), "HARNESSES", []))
    return out + list(MEMORY_HARNESSES)


HARNESS_CLASSES = _all_harnesses()
