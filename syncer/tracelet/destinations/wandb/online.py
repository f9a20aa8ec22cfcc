"""Online W&B: is the server reachable, and if not, why (one line naming the cause).

Without this, an unreachable ``WANDB_BASE_URL`` surfaced only after wandb.init's 90 s timeout,
and the engine's retry then met W&B's own service still holding the run: "run ID ... is in
use", which names no cause. :func:`reach` asks the server once (``requests``, so proxies and CA
bundles apply as for W&B itself) before a run is opened; a connection that fails is a
:class:`~tracelet.errors.TransientDestinationError` saying what happened (connection refused,
unknown host, no answer within the timeout, TLS refused), retried with the engine's backoff
and then left for the next sync. Any HTTP answer (even an error status) means reachable: what
the server then says is W&B's to report.
"""
from __future__ import annotations

import socket

from ...errors import DestinationError, TransientDestinationError
from ...redact import strip_url_credentials

CONNECT_TIMEOUT_S = 10.0  # TCP (and TLS) connect to the server
ANSWER_TIMEOUT_S = 20.0  # its first answer
INIT_TIMEOUT_S = 60.0  # wandb.init (Settings.init_timeout; W&B's default is 90 s)


def _cause(exc: BaseException) -> tuple[str, bool]:
    """``(what happened, transient)`` for a failed request: the innermost cause decides."""
    seen, todo, found = set(), [exc], []
    while todo:  # requests/urllib3 keep the socket error in args, __cause__, __context__ or .reason
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        found.append(e)
        for nxt in (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    names = {c.__name__ for e in found for c in type(e).__mro__}
    if any(isinstance(e, ConnectionRefusedError) for e in found):
        return "connection refused", True
    if any(isinstance(e, socket.gaierror) for e in found) or "NameResolutionError" in names:
        return "unknown host (name resolution failed)", True
    if "SSLError" in names or any(type(e).__module__ == "ssl" for e in found):
        return "TLS connection refused (certificate or protocol; see REQUESTS_CA_BUNDLE)", False
    if names & {"Timeout", "ConnectTimeout", "ReadTimeout", "TimeoutError", "timeout"}:
        return f"no answer within {CONNECT_TIMEOUT_S + ANSWER_TIMEOUT_S:.0f} s", True
    if any(isinstance(e, ConnectionResetError) for e in found):
        return "connection reset", True
    for e in found:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror.lower(), True
    return f"{type(exc).__name__}", True


def reach(base_url: str) -> None:
    """Raise a typed error naming the cause if ``base_url`` cannot be reached; else return."""
    import requests

    shown = strip_url_credentials(base_url)
    try:
        requests.head(base_url, timeout=(CONNECT_TIMEOUT_S, ANSWER_TIMEOUT_S),
                      allow_redirects=False).close()
    except requests.RequestException as e:
        what, transient = _cause(e)
        cls = TransientDestinationError if transient else DestinationError
        raise cls(f"cannot reach the W&B server: {what} at {shown} (WANDB_BASE_URL); "
                  "the run is synced by a later sync once it answers") from None
