"""Key rewriting shared by every destination, and the ledger that reports what it did.

A tag (or param name) the destination takes as written keeps its name. One it must rewrite
(characters it rejects, a path-like name, a reserved name, a name over its length limit) gets
the destination's cleaned form plus ``-<8 hex digits of the tag's SHA-1>``
(:func:`suffixed`). The suffix is a function of the tag alone, so the key is the same at every
sync and whatever order tags are met in, and two tags that clean to the same text
(``loss#1``, ``loss$1``) stay apart from each other and from a tag that is valid as it is
(``loss_1``). Only a tag whose literal text is another tag's rewritten key (or a 32-bit hash
collision) can still meet one: the :class:`KeyLedger` reports that instead of merging silently.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Iterable

HASH_CHARS = 8
SEP = "-"  # accepted by every destination (MLflow takes letters, digits and ``_-./: `` only)


def tag_hash(tag: str) -> str:
    return hashlib.sha1(tag.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]


def suffixed(cleaned: str, tag: str, max_chars: int | None = None) -> str:
    """``cleaned`` + ``-<hash of tag>``, ``cleaned`` cut so the whole fits in ``max_chars``."""
    suffix = SEP + tag_hash(tag)
    if max_chars is not None and len(cleaned) + len(suffix) > max_chars:
        cleaned = cleaned[: max_chars - len(suffix)]
    return cleaned + suffix


def unsuffixed(key: str, tag: str) -> str:
    """The cleaned form of a rewritten key (what it would have been without the suffix)."""
    suffix = SEP + tag_hash(tag)
    if key != tag and key.endswith(suffix):
        return key[: -len(suffix)]
    return key


class KeyLedger:
    """What keys a run used on one destination: ``known`` is ``{"<ns>:<key>": source name}``,
    kept in the checkpoint (``ns`` is ``m`` for metric keys, ``p`` for params). ``note``
    returns one report line per new fact: a name rewritten, two names that would have met
    without the suffix, or two names that meet anyway."""

    def __init__(self, known: dict[str, str], destination: str):
        self.known = known
        self.dest = destination
        self._names: dict[str, set[str]] = {}
        self._bases: dict[str, dict[str, str]] = {}

    def _index(self, ns: str) -> tuple[set[str], dict[str, str]]:
        names = self._names.get(ns)
        if names is None:
            names, bases = set(), {}
            prefix = ns + ":"
            for k, name in self.known.items():
                if k.startswith(prefix):
                    names.add(name)
                    bases.setdefault(unsuffixed(k[len(prefix):], name), name)
            self._names[ns], self._bases[ns] = names, bases
        return names, self._bases[ns]

    def note(self, ns: str, names: Iterable[str], key_of: Callable[[str], str]) -> list[str]:
        seen, bases = self._index(ns)
        what = "param" if ns == "p" else "tag"
        lines: list[str] = []
        for name in names:
            if name in seen:
                continue
            seen.add(name)
            key = key_of(name)
            slot = f"{ns}:{key}"
            other = self.known.get(slot)
            if other is not None and other != name:
                lines.append(f"{what}s {other!r} and {name!r} both map to {self.dest} key {key!r}: "
                             "their values are stored together there; rename one of them")
                continue
            self.known[slot] = name
            base = unsuffixed(key, name)
            if key != name:
                lines.append(f"{what} {name!r} is {self.dest} key {key!r} ({self.dest} does not "
                             "take it as written)")
            first = bases.get(base)
            if first is not None and first != name:
                lines.append(f"{what}s {first!r} and {name!r} would both be {self.dest} key "
                             f"{base!r}: kept apart as {key_of(first)!r} and {key!r}")
            else:
                bases.setdefault(base, name)
        return lines
