"""Version selectors: exact, latest, partial, caret, tilde and comparison ranges."""

from __future__ import annotations

import pytest

from services.catalogue import versions
from shared.errors import InvalidArgument

PUBLISHED = [
    "0.0.3",
    "0.0.4",
    "0.2.3",
    "0.2.9",
    "0.3.0",
    "1.0.0",
    "1.2.0",
    "1.2.7",
    "1.3.0",
    "2.0.0-rc.1",
    "2.0.0",
    "2.1.0-beta.2",
]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", "2.0.0"),
        ("latest", "2.0.0"),
        ("*", "2.0.0"),
        ("1.2.0", "1.2.0"),
        ("=1.2.0", "1.2.0"),
        ("==1.2.0", "1.2.0"),
        ("1.2", "1.2.7"),
        ("1", "1.3.0"),
        ("^1.2", "1.3.0"),
        ("^1", "1.3.0"),
        ("^0.2.3", "0.2.9"),
        ("^0.0.3", "0.0.3"),
        ("^0.0", "0.0.4"),
        ("^0", "0.3.0"),
        ("~1.2.3", "1.2.7"),
        ("~1.2", "1.2.7"),
        ("~1", "1.3.0"),
        (">=1.0,<2", "1.3.0"),
        (">=1.0, <2", "1.3.0"),
        (">1.2.7,<=1.3", "1.3.0"),
        ("^1.2,!=1.3.0", "1.2.7"),
        ("2.0.0-rc.1", "2.0.0-rc.1"),
        (">=2.1.0-beta.1", "2.1.0-beta.2"),
        ("^2.1.0-beta.1", "2.1.0-beta.2"),
    ],
)
def test_best_match_picks_highest_matching_version(selector: str, expected: str) -> None:
    """Each selector form resolves to the highest version it admits."""
    assert versions.best_match(selector, PUBLISHED) == expected


@pytest.mark.parametrize("selector", [">=3", "^3.0.0", "1.2.8", "~0.1"])
def test_best_match_returns_none_when_nothing_matches(selector: str) -> None:
    """A well-formed selector that matches nothing resolves to no version."""
    assert versions.best_match(selector, PUBLISHED) is None


def test_best_match_skips_prereleases_unless_named() -> None:
    """Ranges and latest never pick a pre-release of another version."""
    candidates = ["1.9.0", "2.0.0-rc.1"]
    assert versions.best_match("latest", candidates) == "1.9.0"
    assert versions.best_match(">=1.0", candidates) == "1.9.0"
    assert versions.best_match("^1", candidates) == "1.9.0"
    assert versions.best_match("latest", ["2.0.0-rc.1"]) is None


@pytest.mark.parametrize("selector", ["banana", "1.2.3.4", "^", ">=", "1.0 - 2.0", "v1.2.3", "~x"])
def test_parse_selector_rejects_malformed_selector_naming_the_field(selector: str) -> None:
    """Malformed selectors are InvalidArgument on the given field."""
    with pytest.raises(InvalidArgument) as err:
        versions.parse_selector(selector, "ref.version")
    assert [v.field for v in err.value.violations] == ["ref.version"]


@pytest.mark.parametrize("version", ["1.0", "1", "01.0.0", "1.0.0.0", "latest", ""])
def test_parse_rejects_non_semver_versions(version: str) -> None:
    """Published versions must be full semantic versions."""
    with pytest.raises(InvalidArgument) as err:
        versions.parse(version)
    assert [v.field for v in err.value.violations] == ["version"]


def test_sort_key_orders_by_semver_precedence() -> None:
    """Versions sort by precedence, not text: 1.10.0 after 1.9.0, rc before release."""
    ordered = sorted(
        ["1.10.0", "1.9.0", "2.0.0", "2.0.0-rc.1", "1.9.0-alpha"], key=versions.sort_key
    )
    assert ordered == ["1.9.0-alpha", "1.9.0", "1.10.0", "2.0.0-rc.1", "2.0.0"]
