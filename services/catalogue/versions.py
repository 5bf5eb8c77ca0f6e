"""Semantic versions and selectors (exact, latest, ranges) via `semver`.

A selector is empty / "latest" / "*" (highest stable version), or a
comma-separated list of terms that must all hold:

- ``1.2.3`` exact; ``1.2`` or ``1`` a partial version (any patch / minor of it);
- ``^1.2.3`` compatible: below the next major (``^0.2.3`` below 0.3.0,
  ``^0.0.3`` below 0.0.4), as in npm and Cargo;
- ``~1.2.3`` / ``~1.2`` below the next minor, ``~1`` below the next major;
- ``>=1.0``, ``>1``, ``<=2.1``, ``<2``, ``==1.2.3``, ``!=1.2.4``.

Each term expands to comparison clauses checked with ``semver.Version.match``.
Pre-releases take part only when a clause names a pre-release of the same
MAJOR.MINOR.PATCH (npm's rule), so ``^1.2`` never picks ``2.0.0-rc.1`` and
``>=2.0.0-rc.1`` can.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import semver

from shared.errors import InvalidArgument

_TERM = re.compile(r"^(\^|~|>=|<=|>|<|==|!=|=)?\s*(\S+)$")
_LATEST = ("", "latest", "*")


@dataclass(frozen=True)
class Clause:
    """One comparison, e.g. (">=", 1.2.0)."""

    op: str
    version: semver.Version

    def holds(self, candidate: semver.Version) -> bool:
        return candidate.match(f"{self.op}{self.version}")


def parse(version: str, field: str = "version") -> semver.Version:
    """A strict semantic version, or InvalidArgument naming the field."""
    try:
        return semver.Version.parse(version)
    except (ValueError, TypeError):
        raise InvalidArgument.field(
            field, f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH[-PRE][+BUILD])"
        ) from None


def _partial(text: str) -> tuple[semver.Version, int]:
    """'1.2' -> (1.2.0, 2): the padded version and how many parts were given."""
    version = semver.Version.parse(text, optional_minor_and_patch=True)
    core = re.split(r"[-+]", text, maxsplit=1)[0]
    return version, core.count(".") + 1


def _caret_ceiling(low: semver.Version, given: int) -> semver.Version:
    if low.major or given == 1:
        return low.bump_major()
    if low.minor or given == 2:
        return low.bump_minor()
    return low.bump_patch()


def _expand(term: str) -> list[Clause]:
    """Turn one term into comparison clauses; ValueError if malformed."""
    match = _TERM.match(term.strip())
    if match is None:
        raise ValueError(term)
    op, low_text = match.group(1) or "", match.group(2)
    low, given = _partial(low_text)
    if op == "^":
        return [Clause(">=", low), Clause("<", _caret_ceiling(low, given))]
    if op == "~" or (op in ("", "=", "==") and given < 3):
        high = low.bump_major() if given == 1 else low.bump_minor()
        return [Clause(">=", low), Clause("<", high)]
    return [Clause("==" if op in ("", "=") else op, low)]


def parse_selector(selector: str, field: str = "version") -> list[Clause] | None:
    """Clauses of a selector; None means latest. InvalidArgument if malformed."""
    selector = selector.strip()
    if selector in _LATEST:
        return None
    try:
        return [clause for term in selector.split(",") for clause in _expand(term)]
    except ValueError:
        raise InvalidArgument.field(
            field,
            f"{selector!r} is not a version, 'latest', or a range like ^1.2, ~1.2.3, >=1.0,<2",
        ) from None


def _admits_prerelease(clauses: list[Clause], candidate: semver.Version) -> bool:
    core = (candidate.major, candidate.minor, candidate.patch)
    return any(
        c.version.prerelease is not None
        and (c.version.major, c.version.minor, c.version.patch) == core
        for c in clauses
    )


def matches(clauses: list[Clause] | None, candidate: semver.Version) -> bool:
    """Whether a version satisfies parsed clauses (None = any stable version)."""
    if clauses is None:
        return candidate.prerelease is None
    if candidate.prerelease is not None and not _admits_prerelease(clauses, candidate):
        return False
    return all(c.holds(candidate) for c in clauses)


def best_match(selector: str, candidates: Iterable[str], field: str = "version") -> str | None:
    """The highest candidate matching the selector, as it was given, or None."""
    clauses = parse_selector(selector, field)
    parsed = sorted(((semver.Version.parse(c), c) for c in candidates), reverse=True)
    return next((text for version, text in parsed if matches(clauses, version)), None)


def sort_key(version: str) -> semver.Version:
    """Key ordering version strings by semantic precedence."""
    return semver.Version.parse(version)
