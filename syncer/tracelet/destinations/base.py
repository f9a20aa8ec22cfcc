"""The destination contract: the five calls the engine makes, and what each must guarantee.

A destination is a vendor adapter (MLflow, W&B, ClearML, Aim). The engine owns reading,
batching, checkpoints and retries; a destination only turns points into vendor calls. The
contract is narrow on purpose, so each guarantee can be written next to the call it binds:

=================  ============================================================================
call               guarantee
=================  ============================================================================
``open_run``       Find or create the run **idempotently**. ``identity`` is what this method
                   returned last time (from the checkpoint) or ``None`` (first sync, or the
                   state dir was lost): with ``None`` it must first look the run up by
                   ``tracelet.run_id`` on the destination and set ``existed=True`` if found,
                   so a lost state dir never creates a second run. An ``identity`` that
                   does not name a run of *this* tracelet run (a damaged or crafted
                   checkpoint) is never used: look the run up as with ``None`` and set
                   ``identity_ignored=True`` (the engine then rebuilds the checkpoint).
``send``           Write one batch of points durably before returning. When ``dedupe`` is
                   true, some of these points may already be on the destination (a crash
                   between send and commit, or a lost state dir): the destination must not
                   store them twice (ask what landed, or rely on a write that is idempotent).
                   A point the vendor can never take (an image it cannot decode) is left out
                   and returned as a :class:`Rejected`; the engine quarantines it (reported,
                   never retried). Any batch of whole records, in file order, may be sent:
                   the engine resends parts of a refused batch to isolate a bad record.
                   It returns None, a list of :class:`Rejected`, or a :class:`SendResult`
                   (``rejected`` and ``present``: how many points of a dedupe send were
                   already there and were not stored again), so that a resync that only
                   confirmed what had landed says so ("confirmed N already present").
``send_system``    Same contract for the rows of one sidecar part (:class:`SystemRows`);
                   returns None or a :class:`SendResult` (``present``: rows already there).
``log_params``     Set params; return the names the destination refused because a different
                   value is already there (write-once params): reported, never raised. It
                   returns that list, or a :class:`ParamsResult` (``conflicts`` and
                   ``present``: the names it already held with the same value), so that the
                   TensorBoard hparams of a resync whose params were all there count as
                   "already present" too (:func:`params_outcome`).
``log_artifacts``  Upload files under their relative names; re-uploading a name overwrites.
``finish``         Set the run's status/end time; idempotent.
=================  ============================================================================

Anything a destination lacks is declared in :class:`Capabilities`; the engine takes those
points out of the batch before ``send`` and counts them as "unsupported" in the report.

Errors are typed at the vendor boundary. Every contract method of a subclass is wrapped (see
:meth:`Destination.__init_subclass__`): an exception that is not already a
:class:`~tracelet.errors.TraceletError` is turned into one by :meth:`Destination.classify`,
from its type, errno, HTTP status or vendor error code (never its message text):

==============================  ===============================================================
``TransientDestinationError``   connection refused/reset, timeouts, HTTP 429/5xx, a busy
                                database: retried with backoff (``tracelet.retry``)
``PermanentDestinationError``   the vendor refused this content (a bad key, value, file): the
                                engine isolates the record, param or file and quarantines it
``DestinationError``            the destination as a whole refuses (permission, 401/403/404,
                                deleted, read-only, disk full) or a programming error: this
                                destination fails for the run, the others go on
==============================  ===============================================================

A destination may raise these itself where it knows better (a vendor reply that says "refused
3 events" is content; a run deleted underneath is the destination).

Third-party destinations: a package exposes a :class:`DestinationFactory` in the entry point
group ``tracelet.destinations`` (README "Writing a destination"); ``tracelet.testing`` holds
the conformance suite to run against it.
"""
from __future__ import annotations

import abc
import errno
import functools
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import (DestinationError, MissingExtraError, PermanentDestinationError,
                      TraceletError, TransientDestinationError)
from ..reader.points import AUDIO, HISTOGRAM, HPARAMS, IMAGE, SCALAR, TEXT, Batch

POINT_KINDS = frozenset({SCALAR, HISTOGRAM, IMAGE, TEXT, AUDIO})  # what ``send`` may carry


@dataclass(frozen=True)
class Capabilities:
    """What a destination can store natively. Points of other kinds are taken out of a batch by
    the engine and reported as unsupported; a destination splits its own calls to the vendor's
    limits (MLflow: 1000 metrics per ``log_batch``)."""

    kinds: frozenset[str] = frozenset({SCALAR})  # point kinds sent by ``send``
    system_metrics: bool = True
    params: bool = True
    artifacts: bool = True
    status: bool = True


@dataclass(frozen=True)
class Rejected:
    """A point ``send`` left out because the vendor can never take it: ``kind`` and ``index``
    into the batch's list of that kind (``batch.images[index]``), ``reason`` in one line."""

    kind: str
    index: int
    reason: str


@dataclass(frozen=True)
class SendResult:
    """What ``send`` / ``send_system`` may return instead of a list of :class:`Rejected`.

    ``present``: points (rows) of this call that the destination already held and did not
    store again (a ``dedupe`` send after a lost state dir, a ``--resync``, or the retry of a send
    that had landed in part); 0 when the destination cannot tell. The engine reports them as
    ``points_present`` ("confirmed N already present") instead of "synced"."""

    rejected: list[Rejected] = field(default_factory=list)
    present: int = 0


def send_outcome(result: Any) -> tuple[list[Rejected], int]:
    """``(rejected, present)`` of whatever ``send``/``send_system`` returned (None, a list of
    :class:`Rejected`, or a :class:`SendResult`)."""
    if isinstance(result, SendResult):
        return list(result.rejected), max(int(result.present or 0), 0)
    return list(result or ()), 0


@dataclass(frozen=True)
class ParamsResult:
    """What ``log_params`` may return instead of the list of conflicting names.

    ``conflicts``: the names refused because the destination keeps another value (write-once);
    ``present``: the names it already held with the same value as given (nothing written for
    them). A name in neither was written. The engine counts a batch's TensorBoard hparams as
    ``points_present`` only when every one of their params was present; a destination that
    cannot tell returns a plain list (nothing present)."""

    conflicts: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)


def params_outcome(result: Any) -> tuple[list[str], list[str]]:
    """``(conflicts, present)`` of whatever ``log_params`` returned (None, a list of names, or a
    :class:`ParamsResult`): a plain list is conflicts only, nothing present."""
    if isinstance(result, ParamsResult):
        return [str(k) for k in result.conflicts], [str(k) for k in result.present]
    return list(result or ()), []


@dataclass(frozen=True)
class RunRef:
    """A source run as a destination sees it. The engine has read and validated the manifest;
    destinations use these fields and never parse times or files themselves."""

    run_id: str
    run_path: str  # relative to the logdir: the run's name on every destination
    project: str
    source_dir: Path
    manifest: Mapping[str, Any] | None = None  # validated, tags redacted
    started_at: float | None = None  # unix seconds: manifest ``started_at``, else the first
    #                                  event's wall time (plain TensorBoard runs)
    ended_at: float | None = None  # manifest ``ended_at`` (a plain run finished by
    #                                ``--finish-idle`` gets its last event's wall time in finish())
    status: str | None = None  # running | finished | failed | killed | None (no manifest)
    display_name: str = ""  # the run's name on the destination (``--run-name``); "" = run_path
    # What reproduces the run (manifest ``git``/``env``/``system``/``command``; redacted, the
    # git remote without credentials): destinations put them in their native fields.
    git: Mapping[str, Any] = field(default_factory=dict)  # commit, branch, dirty, remote
    env: Mapping[str, Any] = field(default_factory=dict)  # python, platform, packages (list)
    system: Mapping[str, Any] = field(default_factory=dict)  # hostname, cpus, memory, gpus
    command: tuple[str, ...] = ()  # argv of the training (recorded, secret values redacted)
    user: str = ""  # who ran it (manifest ``user``), "" unknown
    # A plain run's content identity (tracelet.identity): the same files give the same id
    # whatever LOGDIR level they were synced from. Destinations store it in their identity tags
    # (``tracelet.source_id``) and, when no run has this ``run_id``, find the run by it (a run
    # path that is one of the two names' tail: ``identity.same_source_names``). "" for
    # manifest runs (``run_id`` is theirs) and plain runs whose first record is not whole yet.
    source_id: str = ""
    # Where to look for ``source_id``: True when the project was not given (no manifest
    # ``project``, no ``--project``: it is the LOGDIR folder's name, which changes with the
    # level) — in every project; False — only in ``project`` (the project asked for wins).
    source_anywhere: bool = False
    # Files the engine prepared for reproducibility (rel name -> local path, for this run's
    # sync only): the redacted manifest ``tracelet/tracelet.json`` and
    # ``tracelet/requirements.txt`` (installed packages). Each destination stores them where
    # its UI shows them (its own files/artifacts, in ``open_run`` or ``close_run``, overwriting
    # by name). The diff is the run's own ``artifacts/git_diff.patch``.
    repro_files: Mapping[str, Path] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The display name (``display_name`` or the run path)."""
        return self.display_name or self.run_path

    @property
    def tags(self) -> dict[str, str]:
        m = self.manifest or {}
        tags = m.get("tags") or {}
        return {str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {}


@dataclass(frozen=True)
class SystemRows:
    """The rows of one sidecar part (``sysmetrics/part-NNNNNN.parquet``), cleaned by the reader:
    ``timestamps[i]`` (unix s), ``names[i]`` (``gpu/0/power_watts``), ``values[i]``."""

    part: str  # the part's file name: immutable content, so a stable identity
    timestamps: list[float]
    names: list[str]
    values: list[float]

    @property
    def num_rows(self) -> int:
        return len(self.timestamps)

    @classmethod
    def from_table(cls, part: str, table) -> "SystemRows":
        return cls(part, table.column("timestamp").to_pylist(), table.column("name").to_pylist(),
                   table.column("value").to_pylist())


@dataclass
class RunHandle:
    """An open destination run. ``identity`` is JSON-able and saved in the checkpoint after
    every commit, so a destination may keep counters in it (W&B's next ``_step``)."""

    identity: dict[str, Any]
    existed: bool = False  # found on the destination rather than created by this open
    identity_ignored: bool = False  # the identity given was not this run's: not used
    # Drift: ``identity`` named a run the destination no longer has ("run missing: deleted on
    # the server", "recreated: the store was wiped"...), one line. The run was found again
    # or created anew; the engine then re-sends the WHOLE run with dedupe and reports it.
    drift: str | None = None
    # Found by ``RunRef.source_id`` under another run path or project (the same files synced
    # from another LOGDIR level): where, one phrase ("'exp/r1' in experiment 'sub'"). The
    # engine warns with both names; points are sent with dedupe (``existed``).
    same_source: str | None = None
    # Written by another sync since this checkpoint's last one (another state dir, or the same
    # files from another LOGDIR level), one line: the engine reports it and sends with dedupe
    # until a whole pass completes (what the checkpoint says was sent is still there).
    shared: str | None = None
    client: Any = None  # vendor objects; never persisted
    extra: dict[str, Any] = field(default_factory=dict)


_BOUNDARY = ("open_run", "send", "send_system", "log_params", "log_artifacts", "finish",
             "close_run")


class Destination(abc.ABC):
    """Base class of every destination. Subclasses live in ``tracelet.destinations.<name>``
    and import their vendor SDK lazily (inside methods), so ``import tracelet`` stays cheap."""

    name: str = ""
    capabilities: Capabilities = Capabilities()

    def __init__(self, config: Mapping[str, Any] | None = None):
        self.config = dict(config or {})

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for method in _BOUNDARY:  # the vendor boundary: every contract call returns typed errors
            fn = cls.__dict__.get(method)
            if fn is not None and not getattr(fn, "_vendor_boundary", False):
                setattr(cls, method, _boundary(fn, method))

    @property
    def target(self) -> str:
        """Human-readable target (URI, repo path, mode) for reports, without credentials."""
        return self.name

    @abc.abstractmethod
    def open_run(self, run: RunRef, identity: dict[str, Any] | None) -> RunHandle: ...

    @abc.abstractmethod
    def send(self, handle: RunHandle, batch: Batch, *,
             dedupe: bool) -> "list[Rejected] | SendResult | None": ...

    def send_system(self, handle: RunHandle, rows: SystemRows, run: RunRef, *,
                    dedupe: bool) -> "SendResult | None":
        """Send one sidecar part's rows as ``system/<name>`` (or the vendor's own names)."""
        raise NotImplementedError

    def log_params(self, handle: RunHandle,
                   params: Mapping[str, Any]) -> "list[str] | ParamsResult":
        """Set ``params``; return the names refused (a list) or a :class:`ParamsResult`."""
        raise NotImplementedError

    def log_artifacts(self, handle: RunHandle, files: list[tuple[Path, str]]) -> None:
        raise NotImplementedError

    def finish(self, handle: RunHandle, status: str, ended_at: float | None) -> None:
        raise NotImplementedError

    def close_run(self, handle: RunHandle) -> None:
        """Release per-run resources (flush writers). Called once per open_run."""

    def close(self) -> None:
        """Release clients. Called once at the end of a sync."""

    def check_run(self, run: RunRef, identity: dict[str, Any] | None) -> str | None:
        """``tracelet status --check``: is the run ``identity`` names still there? None if it
        is, else the same one-line drift description ``open_run`` would give. Cheap (one
        lookup), creates nothing. Destinations that cannot tell return "cannot check".
        ``status --check`` makes the destination with ``config[CHECK_ONLY]`` true: its
        constructor must not create a missing store (repo, database, folder) either."""
        return "cannot check"

    def classify(self, exc: BaseException) -> type[DestinationError]:
        """The typed error a vendor exception stands for (module docstring). Override to add
        the vendor's own error codes; fall back to :func:`classify_error`."""
        return classify_error(exc)

    def metric_key(self, tag: str) -> str:
        """The destination's name for a TensorBoard tag (unchanged where accepted; a tag that
        must be rewritten ends in ``-<8 hex of its SHA-1>``, see ``keys.py``)."""
        return tag

    def param_key(self, name: str) -> str:
        """The destination's name for a (flattened) param, by the same rule."""
        return name


def _boundary(fn: Callable, method: str) -> Callable:
    @functools.wraps(fn)
    def call(self: Destination, *args: Any, **kw: Any) -> Any:
        try:
            return fn(self, *args, **kw)
        except TraceletError:
            raise
        except Exception as e:  # the vendor's: typed here, once, from its type/code
            raise typed_error(self.classify(e), e) from e

    call._vendor_boundary = True  # type: ignore[attr-defined]
    return call


def typed_error(cls: type[DestinationError], e: BaseException) -> DestinationError:
    from ..redact import scrub  # vendor text becomes ours: never a credential in it

    text = scrub(" ".join(str(e).split()))
    if len(text) > 400:
        text = text[:397] + "..."
    return cls(f"{type(e).__name__}: {text}" if text else type(e).__name__)


# -- classification by type, errno, status code -----------------------------------------------
# Class names (anywhere in the MRO) of transport failures in the HTTP/RPC stacks the vendors
# use (requests, urllib3, http.client, httpx, aiohttp, grpc, websockets), matched by name so
# that none of those libraries is imported here.
_TRANSIENT_TYPES = frozenset({
    "ConnectionError", "ConnectTimeout", "ReadTimeout", "Timeout", "TimeoutError",
    "TimeoutException", "ConnectError", "ReadError", "WriteError", "RemoteProtocolError",
    "ProtocolError", "RemoteDisconnected", "IncompleteRead", "NewConnectionError",
    "MaxRetryError", "ChunkedEncodingError", "ClientConnectionError", "ServerDisconnectedError",
    "ConnectionClosed", "ConnectionClosedError", "ServiceUnavailable", "BrokenPipeError",
    "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError",
})
_TRANSIENT_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED,
                               errno.ETIMEDOUT, errno.EPIPE, errno.EHOSTUNREACH,
                               errno.ENETUNREACH, errno.EAGAIN, errno.EBUSY})
_DESTINATION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EROFS,
                                 errno.EDQUOT, errno.ENOENT})
_SQLITE_TRANSIENT = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_DESTINATION = frozenset({3, 8, 10, 11, 13, 14, 26})  # PERM READONLY IOERR CORRUPT FULL CANTOPEN NOTADB
# A bug (ours or the SDK's) is no reason to drop data: it fails the destination loudly.
_PROGRAMMING_ERRORS = (TypeError, AttributeError, NameError, ImportError, AssertionError,
                       NotImplementedError, KeyError, IndexError, RecursionError)


def chain(exc: BaseException | None):
    """``exc`` and its causes/contexts, each once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def http_status(e: BaseException) -> int | None:
    """The HTTP status an exception carries (``e.response.status_code``, ``e.status_code``,
    MLflow's ``get_http_status_code()``), if any."""
    for value in (getattr(getattr(e, "response", None), "status_code", None),
                  getattr(e, "status_code", None), getattr(e, "status", None)):
        if isinstance(value, int) and 100 <= value < 600:
            return value
    getter = getattr(e, "get_http_status_code", None)
    if callable(getter):
        try:
            value = getter()
        except Exception:
            return None
        return value if isinstance(value, int) else None
    return None


def classify_error(exc: BaseException) -> type[DestinationError]:
    """Transient, content or destination, from types, errnos, sqlite codes and HTTP status
    anywhere in the exception's chain (the first decisive one wins); content by default."""
    for e in chain(exc):
        if isinstance(e, TraceletError):
            if isinstance(e, DestinationError):
                return type(e) if isinstance(e, (TransientDestinationError,
                                                  PermanentDestinationError)) else DestinationError
            return DestinationError
        if isinstance(e, _PROGRAMMING_ERRORS):
            return DestinationError
        if isinstance(e, MemoryError):
            return PermanentDestinationError  # this content is too big for the vendor
        names = {c.__name__ for c in type(e).__mro__}
        if names & _TRANSIENT_TYPES:
            return TransientDestinationError
        if isinstance(e, OSError) and e.errno is not None:
            if e.errno in _TRANSIENT_ERRNOS:
                return TransientDestinationError
            if e.errno in _DESTINATION_ERRNOS:
                return DestinationError
        code = getattr(e, "sqlite_errorcode", None)
        if isinstance(code, int):
            if code & 0xFF in _SQLITE_TRANSIENT:
                return TransientDestinationError
            if code & 0xFF in _SQLITE_DESTINATION:
                return DestinationError
        status = http_status(e)
        if status is not None:
            if status == 429 or status >= 500:
                return TransientDestinationError
            if status in (401, 403, 404, 405, 410):
                return DestinationError
            if 400 <= status < 500:
                return PermanentDestinationError
    return PermanentDestinationError


CHECK_ONLY = "check_only"  # config key: made for ``status --check`` only (see check_run)


# -- the factory side: what the registry and the command line know without the SDK ---------------
@dataclass(frozen=True)
class Option:
    """A destination option on ``tracelet sync``/``status`` (cli.py builds them from these).

    ``flag`` is the click declaration (``--mlflow-uri`` or ``--clearml-offline/--no-...``);
    ``key`` the config key the destination reads; ``env`` the vendor's own variable that is the
    default when the option is not given (shown in ``--help``); ``aliases`` other spellings
    (``--experiment`` for ``--mlflow-experiment``), dropped when another destination's option
    already uses them (built-in destinations come first)."""

    key: str
    flag: str
    help: str
    env: str | None = None
    choices: tuple[str, ...] = ()
    is_flag: bool = False
    aliases: tuple[str, ...] = ()


class DestinationFactory:
    """Everything about a destination that is known without importing its SDK.

    A subclass (one per ``destinations/<name>/factory.py``) sets ``name``, ``extra`` (the pip
    extra), ``vendor_module`` (must be importable, else :class:`MissingExtraError`), ``client``
    (``"module:Class"`` of the :class:`Destination`), ``options`` and ``summary``, and defines
    :meth:`target`. :meth:`target_key` names the checkpoint folder of a target: it must stay
    the same across versions (a new key starts a new checkpoint, and the run is reconciled with
    the destination)."""

    name: str = ""
    extra: str = ""
    vendor_module: str | None = None
    client: str = ""
    options: tuple[Option, ...] = ()
    summary: str = ""

    def target(self, config: Mapping[str, Any]) -> str:
        """The target this config points at (URI, folder, mode), computed without the SDK."""
        return self.name

    def target_key(self, config: Mapping[str, Any]) -> str:
        # Credentials are not part of the target (a rotated password is the same server), and
        # not even their hash goes into the state dir's folder names.
        from ..redact import strip_url_credentials

        digest = hashlib.sha1(strip_url_credentials(self.target(config)).encode()).hexdigest()
        return f"{self.name}-{digest[:10]}"

    def available(self) -> bool:
        import importlib.util

        return self.vendor_module is None or importlib.util.find_spec(self.vendor_module) is not None

    def create(self, config: Mapping[str, Any]) -> Destination:
        """The destination client; raises :class:`MissingExtraError` without its SDK."""
        import importlib

        if not self.available():
            raise MissingExtraError(self.name, self.vendor_module or self.name, self.extra)
        module_name, _, class_name = self.client.partition(":")
        return getattr(importlib.import_module(module_name), class_name)(dict(config))


def env_or(config: Mapping[str, Any], key: str, env: str, default: str | None = None) -> str | None:
    """``config[key]`` if given, else the environment variable, else ``default``."""
    value = config.get(key)
    if value is None or value == "":
        value = os.environ.get(env) or default
    return value


ALL_KINDS = frozenset({SCALAR, HISTOGRAM, IMAGE, TEXT, HPARAMS, AUDIO})
