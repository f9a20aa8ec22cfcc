"""Which source points are on W&B already: the ordinal ranges named by the ``_tracelet`` texts
read back (offline: earlier fragments, :func:`.txlog.source_texts`; online: the API's history).
Pure: no SDK, no files."""
from __future__ import annotations

import bisect

from .mapping import parse_source


class Landed:
    """Source points present on the destination: ``(file hash, kind) -> [start, end)`` ranges."""

    def __init__(self) -> None:
        self.ranges: dict[tuple[str, str], list[list[int]]] = {}

    def add_source(self, text: str) -> None:
        for fk, code, a, n in parse_source(text):
            self.ranges.setdefault((fk, code), []).append([a, a + n])

    def finish(self) -> "Landed":
        for key, rs in self.ranges.items():
            rs.sort()
            merged: list[list[int]] = []
            for a, b in rs:
                if merged and a <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], b)
                else:
                    merged.append([a, b])
            self.ranges[key] = merged
        return self

    def covered(self, fk: str, kind: str, start: int, n: int) -> set[int]:
        """Indexes ``i`` in ``[0, n)`` whose ordinal ``start + i`` landed."""
        rs = self.ranges.get((fk, kind))
        out: set[int] = set()
        if not rs or n <= 0:
            return out
        k = max(0, bisect.bisect_right(rs, [start, float("inf")]) - 1)
        while k < len(rs) and rs[k][0] < start + n:
            a, b = max(rs[k][0], start), min(rs[k][1], start + n)
            out.update(range(a - start, b - start))
            k += 1
        return out
