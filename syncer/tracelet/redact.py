"""Keeping secrets out of run directories: params, git remotes, command lines.

Rules (also in the README):

* A param is redacted to ``"***REDACTED***"`` when its **flattened key path** (nested dicts joined
  with ``/``: ``{"db": {"Password": ..}}`` -> ``db/Password``) contains, case-insensitively, one of
  :data:`DEFAULT_SECRET_PATTERNS`. Each pattern is a regular expression searched anywhere in the
  path, so a plain word matches as a substring (``hf_token``, ``DB_PASSWORD``,
  ``credentials/user``). Over-redaction is the safe side: ``tokenizer`` and ``max_tokens`` match
  ``token`` too; narrow the list with ``redact_secrets=[...]`` when that matters.
* Values that are URLs with a password (``postgres://u:pw@host/db``) keep the URL, lose the
  password: :func:`strip_url_credentials`.
* Config: ``redact_secrets`` True (default patterns) | False (off) | list (exactly these
  patterns); ``secret_patterns``: extra patterns added to whichever list is in force.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

from .params import SEPARATOR, flatten_params  # noqa: F401  (re-exported)

REDACTED = "***REDACTED***"
DEFAULT_SECRET_PATTERNS: tuple[str, ...] = (
    "password", "passwd", "secret", "token", "api_key", "apikey", "api-key", "credential",
    "private_key", "private-key",
)

# scheme://userinfo@host...  (userinfo may hold user:password or a bare token)
_URL_WITH_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^/\s@]+)@")


def compile_secret_matcher(redact_secrets: bool | list[str] = True,
                           extra_patterns: Iterable[str] = ()) -> re.Pattern | None:
    """One case-insensitive regex for the patterns in force, or None when redaction is off."""
    if redact_secrets is False:
        return None
    patterns = list(DEFAULT_SECRET_PATTERNS if redact_secrets is True else redact_secrets)
    patterns += list(extra_patterns)
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE)


def redact_params(flat: Mapping[str, Any], matcher: re.Pattern | None) -> dict[str, Any]:
    """Flattened params with secret-named keys and URL passwords redacted."""
    if matcher is None:
        return dict(flat)
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if matcher.search(key):
            out[key] = REDACTED
        elif isinstance(value, str):
            out[key] = strip_url_credentials(value, keep_user=True)
        else:
            out[key] = value
    return out


def strip_url_credentials(text: str, keep_user: bool = False) -> str:
    """Remove credentials embedded in URLs inside ``text``.

    ``https://user:tok@host/x`` -> ``https://host/x``; ``https://ghp_xxx@host/x`` (a token as
    the user name, common with git) -> ``https://host/x``. ``ssh://git@host/x`` keeps ``git@``
    (a user name, not a secret). With ``keep_user`` a ``user:password`` pair keeps the user.
    scp-like ``git@host:org/x.git`` has no password and is left alone.
    """

    def repl(m: re.Match) -> str:
        scheme, userinfo = m.group(1), m.group(2)
        user, sep, _password = userinfo.partition(":")
        if sep:  # user:password
            return f"{scheme}{user}@" if keep_user and user else scheme
        if scheme.lower().startswith(("http", "ftp")):  # a bare token as user name
            return scheme
        return m.group(0)

    return _URL_WITH_USERINFO.sub(repl, text)


def redact_argv(argv: list[str], matcher: re.Pattern | None) -> list[str]:
    """A command line with values of secret-named options hidden.

    ``--api-key X``, ``--api-key=X`` and ``TOKEN=X`` (env assignments) -> value redacted; URLs lose
    their credentials.
    """
    if matcher is None:
        return list(argv)
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        name, eq, _value = arg.partition("=")
        if eq and matcher.search(name.lstrip("-")):
            out.append(f"{name}={REDACTED}")
        elif arg.startswith("-") and matcher.search(arg.lstrip("-")):
            out.append(arg)
            hide_next = True
        else:
            out.append(strip_url_credentials(arg))
    return out
