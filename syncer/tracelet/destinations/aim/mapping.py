"""Aim mapping: pure functions that import neither Aim nor anything heavy.

Run identity (:func:`aim_run_hash`), metric names (:func:`aim_key`), system metric names
(:func:`aim_system_metric`), the context of a repeated step (:func:`repeat_context`), params as
Aim's nested tree (:func:`nest_params`), the run's reproducibility facts in Aim's own shape
(:func:`system_params`, :func:`manifest_record`), histograms as ``aim.Distribution``'s equal-width bins
(:func:`distribution_bins`), status and times (:func:`aim_end_time`, :func:`creation_time`),
and how the points of one send are grouped (:func:`media_groups`, :func:`system_samples`).
The mapping table itself is in ``client.py``'s docstring.
"""
from __future__ import annotations

import datetime
import hashlib
import math
import os
import re
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from ..keys import suffixed

if TYPE_CHECKING:
    from ...reader.points import HistogramPoint
    from ..base import SystemRows

REPEAT_CONTEXT_KEY = "tracelet_repeat"  # context key of the 2nd, 3rd... point at one step
AIM_SYSTEM_PREFIX = "__system__"  # aim.ext.resource.configs.AIM_RESOURCE_METRIC_PREFIX
# Sidecar name -> Aim resource-tracker name, where both mean the same thing.
AIM_SYSTEM_NAMES = {
    "process/cpu_percent": "cpu",  # Aim: the tracked process' cpu_percent (may exceed 100)
    "memory/utilization_percent": "memory_percent",  # Aim: system memory used, percent
}
AIM_GPU_NAMES = {  # gpu/<i>/<name> -> Aim name, context {"gpu": i}
    "utilization_percent": "gpu",
    "temperature_c": "gpu_temp",
    "power_watts": "gpu_power_watts",
}
_GPU_NAME = re.compile(r"gpu/(\d+)/(.+)")
MAX_HISTOGRAM_BINS = 512  # aim.Distribution's documented bin_count range is [1, 512]


def aim_run_hash(project: str, run_id: str) -> str:
    """The Aim run hash of a source run: 24 hex digits like Aim's own, stable per identity."""
    return hashlib.sha1(f"tracelet\n{project}\n{run_id}".encode()).hexdigest()[:24]


def aim_key(tag: str) -> str:
    """A tag as an Aim metric name: unchanged (Aim takes any non-empty string); the empty tag
    is ``_-<hash>`` (:mod:`.keys`), apart from a tag that is literally ``_``."""
    return tag or suffixed("_", tag)


def aim_system_metric(name: str) -> tuple[str, dict[str, Any]]:
    """(Aim metric name, context) of a sidecar metric: Aim's own resource-tracker name where one
    means the same (``gpu/<i>/...`` with context ``{"gpu": i}``), else ``system/<name>``."""
    aim_name = AIM_SYSTEM_NAMES.get(name)
    if aim_name:
        return AIM_SYSTEM_PREFIX + aim_name, {}
    m = _GPU_NAME.fullmatch(name)
    if m and m.group(2) in AIM_GPU_NAMES:
        return AIM_SYSTEM_PREFIX + AIM_GPU_NAMES[m.group(2)], {"gpu": int(m.group(1))}
    return f"system/{name}", {}


def repeat_context(repeat: int) -> dict[str, int]:
    """The context of the ``repeat``-th point at one (name, step): ``{}`` for the first, then
    ``{"tracelet_repeat": 1}``, 2, ... (Aim keeps one value per name, context and step)."""
    return {REPEAT_CONTEXT_KEY: repeat} if repeat else {}


def nest_params(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"model/depth": 50}`` -> ``{"model": {"depth": 50}}``; a key that would clash with a
    leaf (``a`` and ``a/b``) stays flat."""
    out: dict[str, Any] = {}
    for key in sorted(flat):
        value = _aim_value(flat[key])
        parts = key.split("/")
        if len(parts) == 1 or any(not p for p in parts):
            if isinstance(out.get(key), dict):
                out[f"{key}/"] = value  # a subtree already took the name
            else:
                out[key] = value
            continue
        node: dict[str, Any] | None = out
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                node = None
                break
            node = nxt
        if node is None or isinstance(node.get(parts[-1]), dict):
            out[key] = value
        else:
            node[parts[-1]] = value
    return out


def _aim_value(v: Any) -> Any:
    """A param value Aim can store (its tree holds None/bool/int/float/str/list/dict)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_aim_value(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _aim_value(x) for k, x in v.items()}
    return str(v)


def tracelet_record(current: Any, run_id: str, run_path: str,
                    tags: Mapping[str, str], manifest: Mapping[str, Any] | None = None,
                    source_id: str = "") -> dict[str, Any]:
    """The run's ``run["tracelet"]`` dict: what is there (``status``...) with the identity, the
    plain run's source id (:mod:`tracelet.identity`, when it has one), the manifest's tags (when
    it has any) and, given one, the manifest (:func:`manifest_record`) set."""
    want = {**(current if isinstance(current, dict) else {}), "run_id": run_id,
            "run_path": run_path}
    if source_id:
        want["source_id"] = source_id
    if tags:
        want["tags"] = dict(tags)
    if manifest is not None:
        want["manifest"] = dict(manifest)
    return want


def _text(v: Any) -> str | None:
    """A manifest field as text (None when absent or empty); anything not a string, number or
    bool (the manifest is untrusted) as its ``str``."""
    if v is None or v == "":
        return None
    return v if isinstance(v, str) else str(v)


def system_params(git: Mapping[str, Any], env: Mapping[str, Any], system: Mapping[str, Any],
                  command: Sequence[str], user: str = "") -> dict[str, Any]:
    """The run's ``run["__system_params"]`` in the shape Aim's own ``Run(log_system_params=True)``
    writes (``aim/sdk/run.py``, ``aim/ext/utils.py``), which Aim's run page shows as the
    Packages, Git Info and CLI Arguments cards, from the manifest's recorded sections:

    * ``packages``: distribution name -> version, as recorded;
    * ``git_info``: ``branch``, ``remote_origin_url`` (credentials already stripped), ``commit``
      ``{"hash", "timestamp", "author"}`` (the recorder keeps the full hash only: timestamp and
      author are None, Aim's own "unknown"), plus ``dirty``; absent outside a git repo;
    * ``executable`` (the interpreter), ``arguments`` (the recorded argv, redacted, as Aim's
      ``sys.argv``: without its first item when that is the executable, as ``start_logging``
      records it; a ``tracelet record`` command whole);
    * ``hostname``, ``user``, ``python``, ``platform`` (not Aim's keys: Aim records none of
      them; they show in the run's params, not on a card).

    ``env_variables`` is never written: Tracelet records no environment variable (and no value
    of one may be sent: it may be a secret). Empty ({}) for a run without a manifest."""
    out: dict[str, Any] = {}
    packages = env.get("packages")
    if isinstance(packages, Mapping) and packages:
        out["packages"] = {str(k): "" if v is None else str(v) for k, v in packages.items()
                           if str(k)}  # an empty key: not a name, and not one Aim's tree takes
    if any(_text(git.get(k)) for k in ("commit", "branch", "remote")):
        dirty = git.get("dirty")
        out["git_info"] = {
            "branch": _text(git.get("branch")),
            "remote_origin_url": _text(git.get("remote")),
            "commit": {"hash": _text(git.get("commit")), "timestamp": None, "author": None},
            "dirty": dirty if isinstance(dirty, bool) else None,
        }
    if _text(env.get("executable")):
        out["executable"] = _text(env.get("executable"))
    argv = [str(a) for a in command]
    if argv and argv[0] == out.get("executable"):
        argv = argv[1:]
    if argv:
        out["arguments"] = argv
    for key, value in (("hostname", system.get("hostname")), ("user", user),
                       ("python", env.get("python")), ("platform", env.get("platform"))):
        if _text(value):
            out[key] = _text(value)
    return out


def manifest_record(doc: Any) -> dict[str, Any] | None:
    """The redacted manifest (``tracelet/tracelet.json``) as kept in ``run["tracelet"]["manifest"]``
    where the run has no artifact storage: without ``env.packages``, which
    ``run["__system_params"]["packages"]`` holds already. None for a document that is not an
    object."""
    if not isinstance(doc, dict):
        return None
    out = dict(doc)
    env = out.get("env")
    if isinstance(env, dict) and "packages" in env:
        out["env"] = {k: v for k, v in env.items() if k != "packages"}
    return out


def aim_end_time(status: str, ended_at: float | None, now: float) -> float | None:
    """Aim knows only active (no end time) and finished: ``running`` stays active; any other
    status ends the run at the manifest's ``ended_at``, or ``now`` when it has none."""
    return None if status == "running" else float(ended_at or now)


def creation_time(started_at: float | None) -> datetime.datetime | None:
    """The manifest's ``started_at`` as Aim's run record stores its creation time (naive UTC),
    or None (unknown, or past what ``datetime`` takes: Aim then uses the sync time)."""
    if not started_at:
        return None
    try:
        return datetime.datetime.fromtimestamp(
            started_at, tz=datetime.timezone.utc).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        return None


def distribution_bins(h: "HistogramPoint") -> tuple[list[float], tuple[float, float]]:
    """Equal-width bins (weights, (low, high)) for ``aim.Distribution``, which stores only a
    range and a bin count. Equal-width sources are kept exactly; others are re-binned onto at
    most :data:`MAX_HISTOGRAM_BINS` bins, assuming each source bucket's mass is spread evenly
    over it."""
    lefts, rights, counts = list(h.lefts), list(h.rights), [float(c) for c in h.counts]
    edges = [x for x in lefts + rights if math.isfinite(x)]
    if not counts or not edges:
        lo = h.min if h.min is not None and math.isfinite(h.min) else 0.0
        return [float(h.num or 0.0)], (lo, lo + 1.0)
    lo, hi = min(edges), max(edges)
    if hi <= lo:
        return [float(sum(counts))], (lo - 0.5, lo + 0.5)
    widths = [r - l for l, r in zip(lefts, rights)]
    contiguous = all(rights[i] == lefts[i + 1] for i in range(len(lefts) - 1))
    if (contiguous and all(math.isfinite(w) and w > 0 for w in widths)
            and max(widths) - min(widths) <= 1e-9 * max(abs(lo), abs(hi), max(widths))):
        return counts, (lefts[0], rights[-1])
    n = min(MAX_HISTOGRAM_BINS, max(len(counts), 1))
    step = (hi - lo) / n
    out = [0.0] * n
    for l, r, c in zip(lefts, rights, counts):
        if not c:
            continue
        l = lo if not math.isfinite(l) else l
        r = hi if not math.isfinite(r) else r
        if r <= l:  # a zero-width bucket: all of it at one point
            out[min(n - 1, max(0, int((l - lo) / step)))] += c
            continue
        first, last = max(0, int((l - lo) / step)), min(n - 1, int((r - lo) / step))
        for b in range(first, last + 1):
            b_lo, b_hi = lo + b * step, lo + (b + 1) * step
            overlap = min(r, b_hi) - max(l, b_lo)
            if overlap > 0:
                out[b] += c * overlap / (r - l)
    return out, (lo, hi)


def media_groups(points: Sequence[Any], skip: Iterable[int] = ()
                 ) -> list[tuple[tuple[str, int, float], list[Any]]]:
    """Images (or audio clips) of one event as one list-valued Aim point: ``((tag, step,
    wall_time), points in tensor order)`` in the order the events come; ``skip`` holds indexes
    into ``points`` left out (refused by the decoder)."""
    skipped = set(skip)
    groups: dict[tuple[str, int, float], list[Any]] = {}
    for j, p in enumerate(points):
        if j not in skipped:
            groups.setdefault((p.tag, p.step, p.wall_time), []).append(p)
    return [(key, sorted(ps, key=lambda p: p.index)) for key, ps in groups.items()]


def system_part_key(rows: "SystemRows") -> str:
    """A sidecar part's name in Aim's landed record: a digest of its rows (a part's content
    never changes, whatever its file is called)."""
    digest = hashlib.sha1(repr((rows.timestamps, rows.names, rows.values)).encode()).hexdigest()
    return "sysmetrics:" + digest[:16]


def system_samples(rows: "SystemRows") -> Iterator[tuple[str, dict[str, Any], float, float]]:
    """(Aim name, context, time, value) of a part's samples in time order (Aim's resource
    tracker counts steps by sample: the step is the sample's index); empty values left out."""
    ts, names, values = rows.timestamps, rows.names, rows.values
    mapped: dict[str, tuple[str, dict[str, Any]]] = {}
    for i in sorted(range(len(ts)), key=lambda i: ts[i]):
        v = values[i]
        if v is None:
            continue
        m = mapped.get(names[i])
        if m is None:
            m = mapped[names[i]] = aim_system_metric(names[i])
        yield m[0], m[1], float(ts[i]), float(v)


def landed_source_key(path: str, source_dir: str) -> str:
    """A source file's name in Aim's landed record: its path in the run dir; for a file of a
    linked logdir its file name (event file names carry time, host and pid), so moving the
    logdir does not lose the record."""
    rel = os.path.relpath(os.path.abspath(path), source_dir)
    if rel.startswith(".."):
        return "linked:" + os.path.basename(path)
    return rel.replace(os.sep, "/")


__all__ = ["aim_run_hash", "aim_key", "aim_system_metric", "repeat_context", "nest_params",
           "tracelet_record", "system_params", "manifest_record", "aim_end_time",
           "creation_time", "distribution_bins", "media_groups", "system_part_key",
           "system_samples", "landed_source_key"]
