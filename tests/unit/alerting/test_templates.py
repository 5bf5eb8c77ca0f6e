"""Rule message templates: sandbox escapes and unbounded work refused with field details,
rendering capped, a failing template falling back to the safe default."""

from __future__ import annotations

import pytest

from services.alerting import templates
from services.alerting.templates import (
    DEFAULT_GROUP_KEY,
    DEFAULT_TEMPLATE,
    SAMPLE_CONTEXT,
    check_template,
    render,
)
from shared.errors import InvalidArgument

FIELD = "rule.message_template"


def violation(source: str) -> str:
    """check_template's single violation for the field, as text."""
    with pytest.raises(InvalidArgument) as caught:
        check_template(source, field=FIELD)
    [v] = caught.value.violations
    assert v.field == FIELD
    return v.description


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ labels.items.__self__ }}",
        "{{ title._private }}",
        "{{ labels['__class__'] }}",
        "{{ labels|attr('__class__') }}",
        "{% set n = '__cla' ~ 'ss__' %}{{ (title|attr(n)) }}",
        "{{ '{0.__class__}'.format(title) }}",
        "{{ title.ljust(100000) }}",
    ],
)
def test_check_template_rejects_sandbox_escape(source: str) -> None:
    """Templates reaching for Python internals or private names are refused."""
    assert "not allowed" in violation(source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ 'a' * 100000 }}",
        "{{ title|center(100000000) }}",
        "{{ '%099999d' % 1 }}",
        "{{ '%099999d'|format(1) }}",
        "{{ '{:>99999999}'.format(1) }}",
        "{{ 10 ** 64 ** 64 }}",
        "{{ range(100000)|list }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        "{% for a in range(1000) %}{% for b in range(1000) %}{% endfor %}{% endfor %}",
        "{{ title|replace('a', 'b' * 60000) }}",
    ],
)
def test_check_template_rejects_unbounded_work(source: str) -> None:
    """Templates that would build huge values or loop without bound are refused."""
    assert "not allowed in a template" in violation(source)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{{ title", "line 1"),
        ("{% if x %}", "line 1"),
        ("{{ title|nosuchfilter }}", "No filter named 'nosuchfilter'"),
        ("{{ parameters.password }}", "unknown name(s) parameters"),
        ("{% macro m() %}x{% endmacro %}{{ m() }}", "macros are not allowed"),
        ("{% include 'other' %}", "include is not allowed"),
        ("{% for t in script_tags recursive %}{{ loop(t) }}{% endfor %}", "recursive loops"),
        (
            "{% for a in script_tags %}{% for b in script_tags %}{% for c in script_tags %}"
            "{% endfor %}{% endfor %}{% endfor %}",
            "nested deeper than 2",
        ),
        ("{{ 1 / 0 }}", "fails on a sample alert: ZeroDivisionError"),
        ("x" * (templates.MAX_SOURCE + 1), "longer than"),
    ],
)
def test_check_template_rejects_bad_template_with_reason(source: str, expected: str) -> None:
    """Syntax errors, unknown filters and names, forbidden tags name the problem."""
    assert expected in violation(source)


def test_check_template_accepts_ordinary_template() -> None:
    """Names, filters, loops over labels and conditionals pass and render."""
    source = (
        "{{ severity|upper }}: {{ script_name }} run {{ run_id }} is {{ state|lower }}"
        "{% for k, v in labels|dictsort %} {{ k }}={{ v }}{% endfor %}"
        "{% if occurrences > 1 %} (x{{ occurrences }}){% endif %}"
    )
    check_template(source, field=FIELD)
    check_template(DEFAULT_TEMPLATE, field=FIELD)
    check_template(DEFAULT_GROUP_KEY, field="rule.group_key")
    assert render(source, SAMPLE_CONTEXT) == "CRITICAL: backup run c3a1-run is failed team=ops (x3)"


def test_render_default_template_shows_ids_not_parameters() -> None:
    """The default message names rule, script, run and state; extra keys never leak."""
    context = {**SAMPLE_CONTEXT, "parameters": {"password": "hunter2"}, "secret": "s3cr3t"}
    text = render("", context)
    assert text.startswith("[CRITICAL] backup failed\n")
    for expected in ("nightly-backup-failures", "backup 1.4.0", "c3a1-run", "FAILED, EXIT_CODE"):
        assert expected in text
    assert "hunter2" not in text and "s3cr3t" not in text


def test_render_default_template_survives_missing_keys() -> None:
    """Undefined names render empty (StrictUndefined is off): no exception."""
    text = render("", {})
    assert text.startswith("[] \nRule:  ()")


def test_render_falls_back_to_default_with_note_when_template_fails() -> None:
    """A template failing at send time yields the default message plus the reason."""
    text = render("{{ 1 / 0 }}", SAMPLE_CONTEXT)
    assert text.startswith("[CRITICAL] backup failed\n")
    assert "message template failed: ZeroDivisionError" in text


def test_render_falls_back_when_sandbox_refuses_at_send_time() -> None:
    """A stored template that escapes the sandbox still produces the default."""
    text = render("{{ ''.__class__.__mro__ }}", SAMPLE_CONTEXT)
    assert "__mro__" not in text.split("(")[0]
    assert "message template failed" in text and "not allowed" in text


def test_render_caps_output_at_limit() -> None:
    """Output is cut at the limit and marked; the loop stops being evaluated."""
    source = "{% for i in range(1000) %}{{ 'x' * 1000 }}{% endfor %}"
    text = render(source, SAMPLE_CONTEXT, limit=500)
    assert len(text) == 500
    assert text.endswith("[truncated]")
    assert len(render("{{ title }}", SAMPLE_CONTEXT, limit=5)) == 5
    assert render("{{ title }}", SAMPLE_CONTEXT, limit=13) == "backup failed"


def test_render_bounds_huge_context_values() -> None:
    """A 10 MB context string is cut before the template sees it."""
    context = {**SAMPLE_CONTEXT, "title": "y" * 10_000_000}
    text = render("{{ title|length }}", context)
    assert text == str(templates.MAX_CONTEXT_STRING)


def test_render_group_key_default() -> None:
    """The default group key combines rule id and script name."""
    assert render(DEFAULT_GROUP_KEY, SAMPLE_CONTEXT) == "5f0c1a7e-rule:backup"


def test_check_template_rejects_padding_taken_from_argument() -> None:
    """'%*d' takes its width from the arguments: refused like a literal wide width."""
    assert "not allowed in a template" in violation("{{ '%*d' % (100000000, 1) }}")
