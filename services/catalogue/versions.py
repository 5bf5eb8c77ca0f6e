"""Semantic versions and selectors (exact, latest, ranges) via `semver`."""

from __future__ import annotations

import re
from collections.abc import Iterable

import semver

from shared.errors import InvalidArgument

_CLAUSE = re.compile(r"^(>=|<=|>|<|==|!=)?\s*v?(\d+(?:\.\d+){0,2}(?:-[0-9A-Za-z.-]+)?)$")


def parse(version: str, field: str = "version") -> semver.Version:
    """A strict semantic version, or InvalidArgument naming the field."""
    try:
        return semver.Version.parse(version)
    except (ValueError, TypeError):
        raise InvalidArgument.field(
            field, f"{version!r} is not a semantic version (MAJOR.MINOR.PATCH[-PRE][+BUILD])"
        ) from None


def _pad(partial: str) -> tuple[semver.Version, int]:
    """'1.2' -> (1.2.0, 2 parts given)."""
    core, _, pre = partial.partition("-")
    parts = core.split(".")
    padded = ".".join(parts + ["0"] * (3 - len(parts)))
    return semver.Version.parse(padded + (f"-{pre}" if pre else "")), len(parts)


def _expand(term: str) -> list[str]:
    """Turn ^X / ~X / bare partial versions into comparison clauses."""
    term = term.strip()
    if term.startswith("^"):
        low, _ = _pad(term[1:])
        if low.major:
            high = low.bump_major()
        elif low.minor:
            high = low.bump_minor()
        else:
            high = low.bump_patch()
        return [f">={low}", f"<{high}"]
    if term.startswith("~"):
        low, given = _pad(term[1:])
        high = low.bump_major() if given == 1 else low.bump_minor()
        return [f">={low}", f"<{high}"]
    match = _CLAUSE.match(term)
    if match is None:
        raise ValueError(term)
    op, ver = match.group(1) or "", match.group(2)
    low, given = _pad(ver)
    if op in ("", "==") and given < 3:
        high = low.bump_major() if given == 1 else low.bump_minor()
        return [f">={low}", f"<{high}"]
    return [f"{op or '=='}{low}"]


def parse_selector(selector: str, field: str = "version") -> list[str] | None:
    """Clauses of a selector; None means latest. InvalidArgument if malformed."""
    selector = selector.strip()
    if selector in ("", "latest", "*"):
        return None
    try:
        clauses: list[str] = []
        for term in selector.split(","):
            clauses.extend(_expand(term))
        return clauses
    except ValueError:
        raise InvalidArgument.field(
            field,
            f"{selector!r} is not a version, 'latest', or a range like ^1.2, ~1.2.3, >=1.0,<2",
        ) from None


def best_match(selector: str, candidates: Iterable[str], field: str = "version") -> str | None:
    """The highest candidate matching the selector. Pre-releases are chosen only
    when the selector names one exactly."""
    clauses = parse_selector(selector, field)
    parsed = sorted((semver.Version.parse(c) for c in candidates), reverse=True)
    for version in parsed:
        if clauses is None:
            if version.prerelease is None:
                return str(version)
            continue
        if version.prerelease is not None and not any(str(version) in c for c in clauses):
            continue
        if all(version.match(clause) for clause in clauses):
            return str(version)
    return None
