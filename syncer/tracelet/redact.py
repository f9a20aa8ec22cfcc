"""The one redaction rule: what Tracelet never writes, sends or prints in clear.

It is applied, recursively, to every param (manifest and TensorBoard hparams from any writer),
manifest tag, recorded command line and exported hparams value, and (its value rules, whatever
the config) to every diagnostic Tracelet emits: report and checkpoint error text, destination
targets, log lines. Rules (also in the README, **Secrets**):

**Names.** A value is replaced by :data:`REDACTED` when its key path matches one of
:data:`DEFAULT_SECRET_PATTERNS` (case-insensitive regular expressions searched anywhere in the
path, so ``hf_token``, ``DB_PASSWORD`` and ``credentials/user`` match). The path is the
flattened key (nested dicts joined with ``/``: ``db/Password``); keys of dicts inside lists
extend their list's path (``servers: [{password: ..}]`` -> ``servers/password``), so names
count at any depth. Over-redaction is the safe side: ``tokenizer`` and ``max_tokens`` match
``token``; narrow the list with ``redact_secrets=[...]``.

**Values.** Every string leaf (whatever its key) goes through :meth:`Redactor.text`:

* a string holding a JSON object/array (``'{"password": "x"}'``) is parsed, redacted by these
  same rules, and written back as JSON (unchanged text when nothing matched);
* known token shapes (:data:`SECRET_VALUE_PATTERNS`: OpenAI ``sk-``, Hugging Face ``hf_``,
  GitHub ``ghp_``/``gho_``/``ghu_``/``ghs_``/``ghr_``/``github_pat_``, AWS key ids
  ``AKIA``/``ASIA``, Slack ``xox[baprs]-``, JWTs, ``Bearer <token>``, PEM private key blocks)
  become :data:`REDACTED` wherever they appear in the text;
* URLs lose the password of their user info (``postgres://u:pw@h/db`` -> ``postgres://u@h/db``);
  http(s)/ftp URLs lose all of it (``http://u:pw@host`` -> ``http://host``: a bare user name
  there is often a token, ``https://ghp_x@github.com``);
* ``NAME=VALUE``, ``--NAME=VALUE``, ``--NAME VALUE``, quoted ``"NAME": "VALUE"`` /
  ``'NAME': 'VALUE'`` and a line ``NAME: VALUE`` (an HTTP header) inside a text hide VALUE when
  NAME matches the name patterns (so ``"python train.py --token=abc"``,
  ``str(Config(password='x'))`` and ``"Authorization: Basic dXM6cHc="`` lose their secret).

**Command lines** (``tracelet record``): an argument matching a name pattern hides the next
argument (``--auth VALUE``), unless that one is a long option (``--lr``); ``--auth=VALUE``
hides VALUE; ``-p VALUE`` and ``-p=VALUE`` are hidden too (``sshpass -p``, ``mysqldump -p``:
``ssh -p 22`` loses its port, the documented over-redaction); every other argument goes through
:meth:`Redactor.text`.

Config: ``redact_secrets`` True (default names) | False (nothing is redacted in params, tags and
commands) | list (exactly these name patterns; value shapes still apply); ``secret_patterns``:
extra name patterns added to whichever list is in force. Diagnostics (:func:`scrub`: report and
checkpoint error text, targets, log lines) always get the value rules (token shapes, URL
credentials), whatever the config: ``--no-redact`` sends params as written but never prints a
target's credentials.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any, Iterable, Mapping

from .params import SEPARATOR, flatten_params  # noqa: F401  (re-exported)

REDACTED = "***REDACTED***"

# Name patterns (regexes, case-insensitive, searched anywhere in the key path).
DEFAULT_SECRET_PATTERNS: tuple[str, ...] = (
    "password", "passwd", "passphrase", "pwd", "secret", "token", "credential", "cookie",
    r"api[_-]?key", r"private[_-]?key", r"ssh[_-]?key", r"access[_-]?key",
    # auth, auth_header, oauth, authorization, authentication; not author/authority
    r"auth(?!or(?!i[sz]))",
)

_NOT_IN_WORD = r"(?<![A-Za-z0-9_-])"
_END_OF_WORD = r"(?![A-Za-z0-9_-])"
# Known token shapes. Each demands the vendor's prefix AND a long random-looking tail, so
# ordinary values (``sk-learn``, ``hf_hub``, ``AKIA`` in a word, hex digests, UUIDs) never match.
SECRET_VALUE_PATTERNS: dict[str, str] = {
    "pem_private_key": r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----"
                       r"(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY-----|.*)",
    "openai": _NOT_IN_WORD + r"sk-(?=[A-Za-z_-]*[0-9])[A-Za-z0-9_-]{20,}",
    "huggingface": _NOT_IN_WORD + r"hf_[A-Za-z0-9]{30,}" + _END_OF_WORD,
    "github": _NOT_IN_WORD + r"(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"
              + _END_OF_WORD,
    "aws_access_key_id": r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
    "slack": _NOT_IN_WORD + r"xox[baprs]-[A-Za-z0-9-]{10,}",
    "jwt": _NOT_IN_WORD + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",
}
_TOKENS = re.compile("|".join(f"(?:{p})" for p in SECRET_VALUE_PATTERNS.values()), re.DOTALL)
_BEARER = re.compile(r"\b(bearer\s+)[A-Za-z0-9._~+/-]{16,}=*", re.IGNORECASE)

# scheme://userinfo@host...  (userinfo may hold user:password or a bare token)
_URL_WITH_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^/\s@?#]+)@")

_NAME = r"[A-Za-z_][\w.-]*"
_QUOTED = r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'"
# NAME=VALUE / --NAME=VALUE (env assignments, query strings, flags inside a text)
_ASSIGN_EQ = re.compile(rf"(?<![\w.-])(?P<name>(?:--?)?{_NAME})(?P<op>\s*=\s*)"
                        rf"(?P<value>{_QUOTED}|[^\s&;,\"']+)")
# "NAME": "VALUE" / 'NAME': 'VALUE' (JSON-ish text that did not parse, Python reprs)
_ASSIGN_COLON = re.compile(rf"(?P<q>[\"'])(?P<name>[^\"'\n]{{1,200}})(?P=q)(?P<op>\s*:\s*)"
                           rf"(?P<value>{_QUOTED}|(?![\[{{])[^\s,}}\]]+)")
# --NAME VALUE inside a text (a command line kept as one string)
_ASSIGN_FLAG = re.compile(rf"(?<![\w.-])(?P<name>--?{_NAME})(?P<op>\s+)"
                          rf"(?P<value>{_QUOTED}|(?!-)\S+)")
# NAME: VALUE as a line of its own (HTTP headers: ``Authorization: Basic ...``): the rest of the line
_ASSIGN_LINE = re.compile(r"(?m)^(?P<name>[ \t]*[A-Za-z][\w-]*)(?P<op>[ \t]*:[ \t]*)(?P<value>[^\r\n]+)")
# Short options whose value is a password by convention (command lines only).
_SECRET_SHORT_OPTIONS = ("-p",)


def strip_url_credentials(text: str, keep_user: bool = False) -> str:
    """Remove credentials embedded in URLs inside ``text``.

    http(s)/ftp URLs lose their whole user info: ``https://user:tok@host/x`` and
    ``https://ghp_xxx@host/x`` (a token as the user name, common with git) -> ``https://host/x``.
    Other schemes lose the password: ``postgres://u:pw@h/db`` -> ``postgres://h/db``, or
    ``postgres://u@h/db`` with ``keep_user``; ``ssh://git@host/x`` keeps ``git@`` (a user name,
    not a secret). scp-like ``git@host:org/x.git`` has no password and is left alone. Applying
    it twice changes nothing more.
    """

    def repl(m: re.Match) -> str:
        scheme, userinfo = m.group(1), m.group(2)
        if scheme.lower().startswith(("http", "ftp")):  # a bare user there is often a token
            return scheme
        user, sep, _password = userinfo.partition(":")
        if sep:  # user:password
            return f"{scheme}{user}@" if keep_user and user else scheme
        return m.group(0)

    if "@" not in text:
        return text
    return _URL_WITH_USERINFO.sub(repl, text)


class Redactor:
    """The rule with one configuration compiled once (see the module doc)."""

    def __init__(self, redact_secrets: bool | list[str] | tuple[str, ...] = True,
                 secret_patterns: Iterable[str] = ()):
        self.enabled = redact_secrets is not False
        patterns = list(DEFAULT_SECRET_PATTERNS if redact_secrets in (True, None) else
                        redact_secrets or ()) if self.enabled else []
        patterns += list(secret_patterns or ()) if self.enabled else []
        self.names: re.Pattern | None = (
            re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None)

    def secret_name(self, name: str) -> bool:
        return self.names is not None and self.names.search(name) is not None

    # -- structures ---------------------------------------------------------------------------
    def params(self, flat: Mapping[str, Any]) -> dict[str, Any]:
        """Flattened params (or any str-keyed mapping, e.g. tags) with the rule applied."""
        if not self.enabled:
            return dict(flat)
        return {k: REDACTED if self.secret_name(str(k)) else self.value(v, str(k))
                for k, v in flat.items()}

    def value(self, value: Any, path: str = "") -> Any:
        """Any JSON-like value: dict keys are names (at any depth), strings go through text."""
        if not self.enabled:
            return value
        if isinstance(value, Mapping):
            out = {}
            for k, v in value.items():
                sub = f"{path}{SEPARATOR}{k}" if path else str(k)
                out[k] = REDACTED if self.secret_name(sub) else self.value(v, sub)
            return out
        if isinstance(value, (list, tuple)):
            return [self.value(v, path) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value

    # -- text ---------------------------------------------------------------------------------
    def text(self, text: str) -> str:
        """One string with the value rules applied (module doc, **Values**)."""
        if not self.enabled or not text:
            return text
        stripped = text.strip()
        if stripped[:1] in "{[" and stripped[-1:] in "}]":
            try:
                parsed = json.loads(stripped)
            except ValueError:
                parsed = None
            if isinstance(parsed, (dict, list)):
                clean = self.value(parsed)
                return text if clean == parsed else json.dumps(clean, ensure_ascii=False)
        text = _TOKENS.sub(REDACTED, text)
        text = _BEARER.sub(lambda m: m.group(1) + REDACTED, text)
        text = strip_url_credentials(text, keep_user=True)
        if self.names is not None:
            for rule in (_ASSIGN_EQ, _ASSIGN_COLON, _ASSIGN_FLAG, _ASSIGN_LINE):
                text = rule.sub(self._hide_assigned, text)
        return text

    def _hide_assigned(self, m: re.Match) -> str:
        if not self.secret_name(m.group("name").strip().lstrip("-")) or REDACTED in m.group("value"):
            return m.group(0)
        value = m.group("value")
        hidden = value[0] + REDACTED + value[0] if value[:1] in "\"'" else REDACTED
        return m.group(0)[: m.start("value") - m.start(0)] + hidden

    def argv(self, argv: Iterable[str]) -> list[str]:
        """A command line with secret option values hidden (module doc, **Command lines**)."""
        argv = [str(a) for a in argv]
        if not self.enabled:
            return argv
        out: list[str] = []
        hide_next = False
        for arg in argv:
            if hide_next and not arg.startswith("--"):
                out.append(REDACTED)
                hide_next = False
                continue
            hide_next = False
            name, eq, _value = arg.partition("=")
            if eq and arg.startswith("-") and self.secret_name(name.lstrip("-")):
                out.append(f"{name}={REDACTED}")
            elif arg in _SECRET_SHORT_OPTIONS:
                out.append(arg)
                hide_next = True
            elif arg.partition("=")[0] in _SECRET_SHORT_OPTIONS and eq:
                out.append(f"{name}={REDACTED}")  # -p=VALUE
            elif arg.startswith("-") and self.secret_name(arg.lstrip("-")):
                out.append(arg)
                hide_next = True
            else:
                out.append(self.text(arg))
        return out


DEFAULT = Redactor()
# Diagnostics: the value rules without the names. Tracelet's own messages quote names next to a
# colon (``run 'auth-svc': ...``, ``param 'token_count': ...``): the name rules would eat them.
_DIAGNOSTICS = Redactor([])


def scrub(value: Any) -> Any:
    """Diagnostics (report and checkpoint error text, targets, log lines): token shapes and URL
    credentials removed, whatever the run's ``redact_secrets``. Strings, and lists/dicts of
    them, recursively."""
    if isinstance(value, str):
        return _DIAGNOSTICS.text(value) if value else value
    if isinstance(value, Mapping):
        return {k: scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


class _ScrubLogRecords(logging.Filter):
    """Log lines are diagnostics too: the message and any traceback text, scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it itself
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(logging.Formatter().formatException(record.exc_info))
        return True


_LOG_FILTER = _ScrubLogRecords()


def scrubbed_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` whose records are scrubbed (filters do not propagate to child
    loggers, so each of Tracelet's loggers takes it)."""
    logger = logging.getLogger(name)
    if _LOG_FILTER not in logger.filters:
        logger.addFilter(_LOG_FILTER)
    return logger
