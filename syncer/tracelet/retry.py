"""The one retry policy: bounded exponential backoff for transient destination errors, and the
one-line cause of a destination failure (:func:`cause_line`, its full chain: :func:`error_chain`)."""
from __future__ import annotations

import errno as _errno
import os
import re
import threading
import urllib.parse
from typing import Any, Callable

from .errors import (DestinationError, PermanentDestinationError, RetriesExhaustedError,
                     TraceletError, TransientDestinationError)
from .redact import scrub, scrubbed_logger

log = scrubbed_logger("tracelet.sync")

# 6 tries, 0.5 s doubling to 8 s: ~15 s of patience, enough for a tracking server restart or a
# 429 burst, short enough that a destination that stays down fails itself within one cron period.
RETRY_ATTEMPTS = int(os.environ.get("TRACELET_RETRY_ATTEMPTS", "6"))
RETRY_BASE_DELAY_S = float(os.environ.get("TRACELET_RETRY_BASE_DELAY_S", "0.5"))
RETRY_MAX_DELAY_S = 8.0


def call_with_retry(
    fn: Callable[..., Any],
    *args: Any,
    what: str,
    stop: threading.Event | None = None,
    sleep: Callable[[float], Any] | None = None,
    attempts: int | None = None,
    base_delay_s: float | None = None,
    max_delay_s: float | None = None,
    abort: Callable[[], BaseException | None] | None = None,
    on_retry: Callable[[BaseException], Any] | None = None,
    **kwargs: Any,
) -> Any:
    """Call ``fn`` (a destination's contract method: it raises typed errors, see
    ``destinations/base.py``); retry :class:`TransientDestinationError` with backoff. Raises:
    :class:`RetriesExhaustedError` once retries ran out, ``PermanentDestinationError`` (content
    the vendor refused) or ``DestinationError`` (the destination refuses) at once. Each error
    raised carries ``cause`` (one line, :func:`cause_line`) and ``detail`` (the whole chain,
    :func:`error_chain`), both without credentials.

    ``attempts``/``base_delay_s``/``max_delay_s`` replace the policy's budget for a wait that
    is known to be short (Aim's index lock, held by ``aim up`` while it indexes one run).
    ``abort`` is asked before each retry: an exception it returns is raised instead of trying
    again (the engine's circuit breaker, opened meanwhile by another run of the pass).
    ``on_retry(error)`` is told of each transient failure that will be retried (the breaker
    counts the runs failing at once)."""
    tries = RETRY_ATTEMPTS if attempts is None else max(1, attempts)
    delay = RETRY_BASE_DELAY_S if base_delay_s is None else base_delay_s
    cap = RETRY_MAX_DELAY_S if max_delay_s is None else max_delay_s
    wait = sleep or (stop.wait if stop is not None else threading.Event().wait)
    for attempt in range(1, tries + 1):
        try:
            return fn(*args, **kwargs)
        except TraceletError as e:
            if isinstance(e, PermanentDestinationError):
                raise _explained(PermanentDestinationError(
                    f"{what}: {_short(e)} (not retried (not a transient error))"), e) from e
            if not isinstance(e, TransientDestinationError):
                if isinstance(e, DestinationError) and getattr(e, "detail", None) is None:
                    _explained(e, e)
                raise
            if attempt == tries:
                raise _exhausted(what, e, attempt) from e
            last: BaseException = e
        except Exception as e:  # not through a Destination's boundary (a plain callable)
            from .destinations.base import classify_error, typed_error

            cls = classify_error(e)
            if cls is not TransientDestinationError:
                raise _explained(typed_error(cls, e), e) from e
            if attempt == tries:
                raise _exhausted(what, e, attempt) from e
            last = e
        log.debug("%s: try %d of %d failed: %s; again in %.2f s", what, attempt, tries,
                  cause_line(last), delay)
        if on_retry is not None:
            on_retry(last)
        _check(abort, last)
        wait(delay)
        _check(abort, last)
        delay = min(delay * 2, cap)
    raise AssertionError("unreachable")


def _check(abort: Callable[[], BaseException | None] | None, last: BaseException) -> None:
    err = abort() if abort is not None else None
    if err is not None:
        raise err from last


def _exhausted(what: str, e: BaseException, attempt: int) -> RetriesExhaustedError:
    cause = cause_line(e)
    err = RetriesExhaustedError(f"{what}: {cause} (still failing after {attempt} tries; it is "
                                "retried at the next sync)")
    err.cause, err.detail = cause, error_chain(e)
    return err


def _explained(err: BaseException, e: BaseException) -> BaseException:
    err.cause, err.detail = cause_line(e), error_chain(e)  # type: ignore[attr-defined]
    return err


def _short(e: BaseException, limit: int = 400) -> str:
    # vendor text becomes ours here: a URI with its credentials must not go on
    text = scrub(str(e).strip().replace("\n", " "))
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# the cause of a failure, in one line: "connection refused at http://127.0.0.1:5000"
# ---------------------------------------------------------------------------------------------
_ERRNO_CAUSES = {
    _errno.ECONNREFUSED: "connection refused", _errno.ECONNRESET: "connection reset",
    _errno.ECONNABORTED: "connection aborted", _errno.ETIMEDOUT: "timed out",
    _errno.EHOSTUNREACH: "host unreachable", _errno.ENETUNREACH: "network unreachable",
    _errno.EPIPE: "connection closed (broken pipe)", _errno.EHOSTDOWN: "host down",
    _errno.ENETDOWN: "network down", _errno.EACCES: "permission denied",
    _errno.EPERM: "operation not permitted", _errno.ENOSPC: "no space left on device",
    _errno.EROFS: "read-only file system", _errno.EDQUOT: "disk quota exceeded",
    _errno.ENOENT: "no such file or folder",
}
# Exception classes (by name anywhere in the MRO, as in destinations/base.py: no HTTP library
# is imported here) that say what happened when no errno does.
_CLASS_CAUSES = (
    ({"gaierror"}, "host name not resolved"),
    ({"ConnectTimeout", "ConnectTimeoutError"}, "connection timed out"),
    ({"ReadTimeout", "ReadTimeoutError", "TimeoutError", "Timeout", "TimeoutException",
      "timeout"}, "timed out"),
    ({"SSLError", "SSLCertVerificationError"}, "TLS error"),
    ({"RemoteDisconnected", "ServerDisconnectedError", "ConnectionClosed",
      "ConnectionClosedError"}, "connection closed by the server"),
    ({"IncompleteRead", "ChunkedEncodingError", "ProtocolError", "RemoteProtocolError"},
     "reply cut off"),
    ({"ConnectionRefusedError"}, "connection refused"),
    ({"ConnectionResetError"}, "connection reset"),
    ({"NewConnectionError", "ConnectError", "ClientConnectionError"}, "cannot connect"),
)
_HTTP_REASONS = {429: "too many requests", 500: "server error", 502: "bad gateway",
                 503: "service unavailable", 504: "gateway timeout", 401: "unauthorized",
                 403: "forbidden", 404: "not found"}
_URL = re.compile(r"\b(?:https?|grpcs?|wss?)://[^\s'\"<>()\[\]]+", re.IGNORECASE)
_HOST_PORT = re.compile(r"host='([^']+)', port=(\d+)")


# Causes that mean nothing is there to answer at all: no process listens on the port, the host
# or its network cannot be reached, its name does not resolve. Unlike a timeout, a reset or an
# HTTP 429/503 (a server that is there, busy or restarting its workers), trying again within
# seconds learns nothing new: the circuit breaker opens after a few of these in a row.
NOTHING_THERE = frozenset({"connection refused", "host unreachable", "network unreachable",
                           "host down", "network down", "host name not resolved"})


def _transport_cause(links: list[BaseException]) -> str | None:
    for e in reversed(links):  # the deepest link knows best: the socket's errno over a wrapper
        if isinstance(e, OSError) and e.errno in _ERRNO_CAUSES:
            return _ERRNO_CAUSES[e.errno]
        names = {c.__name__ for c in type(e).__mro__}
        what = next((c for group, c in _CLASS_CAUSES if names & group), None)
        if what is not None:
            return what
    return None


def nothing_there(exc: BaseException) -> bool:
    """``exc`` says no server is there at all (:data:`NOTHING_THERE`): refused, unreachable,
    unresolvable."""
    from .destinations.base import chain

    return _transport_cause(list(chain(exc))) in NOTHING_THERE


def cause_line(exc: BaseException) -> str:
    """What went wrong, in one line, from ``exc``'s chain (types, errnos, HTTP status, the URL
    of the failing request reduced to scheme://host:port): ``connection refused at
    http://127.0.0.1:5000``, ``HTTP 503 (service unavailable) at https://api.wandb.ai``. When
    nothing in the chain names a transport cause, the vendor's own message (shortened)."""
    from .destinations.base import chain, http_status

    links = list(chain(exc))
    what = _transport_cause(links)
    if what is None:  # a status is attached by the outermost vendor exception
        for e in links:
            status = http_status(e)
            if status is not None:
                reason = _HTTP_REASONS.get(status)
                what = f"HTTP {status}" + (f" ({reason})" if reason else "")
                break
    if what is None:
        vendor = next((e for e in links if not isinstance(e, TraceletError)), exc)
        text = _short(vendor, 200)
        if isinstance(vendor, TraceletError) or text.startswith(type(vendor).__name__):
            return text
        return f"{type(vendor).__name__}: {text}" if text else type(vendor).__name__
    where = endpoint(links)
    return f"{what} at {where}" if where else what


def endpoint(links: list[BaseException]) -> str | None:
    """``scheme://host:port`` of the request that failed (never a path, query or user info):
    from the request object an HTTP library attaches, else from a URL or host/port in the text."""
    for e in links:
        try:  # httpx raises when no request was attached
            url = getattr(getattr(e, "request", None), "url", None)
        except Exception:
            url = None
        base = _base_url(str(url)) if url is not None else None
        if base:
            return base
    for e in links:
        text = str(e)
        m = _URL.search(text)
        if m:
            base = _base_url(m.group(0))
            if base:
                return base
        m = _HOST_PORT.search(text)
        if m:
            return f"{m.group(1)}:{m.group(2)}"
    return None


def _base_url(url: str) -> str | None:
    try:
        u = urllib.parse.urlsplit(url.strip())
        host, port = u.hostname, u.port
    except ValueError:
        return None
    if not u.scheme or not host:
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{u.scheme}://{host}" + (f":{port}" if port else "")


def error_chain(exc: BaseException, limit: int = 4000) -> str:
    """Every link of ``exc``'s chain, outermost first (``module.Class: message <- ...``),
    scrubbed: for ``--json`` (``error_detail``) and ``-v``."""
    from .destinations.base import chain

    parts = []
    for e in chain(exc):
        cls = type(e)
        name = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__name__}"
        text = " ".join(str(e).split())
        parts.append(f"{name}: {text}" if text else name)
    out = scrub(" <- ".join(parts))
    return out if len(out) <= limit else out[: limit - 3] + "..."
