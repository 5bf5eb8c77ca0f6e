"""Template rendering in the Jinja2 sandbox, instance scripts, and the built-in templates."""

from __future__ import annotations

import pytest
from google.protobuf import field_mask_pb2

from runbox.catalogue.v1 import catalogue_pb2
from runbox.common.v1 import common_pb2
from services.catalogue import templates
from shared import parameters
from shared.errors import FailedPrecondition, InvalidArgument

SOURCE = b"""#!/bin/sh
{## a template comment ##}
echo "items: ${#ITEMS}"
host={{ host | shquote }}
ports={{ ports | default("22") | tojson }}
"""


def test_render_fills_placeholders_with_quoting_filters() -> None:
    out = templates.render("t", "d1", SOURCE, {"host": "db; rm -rf /"})
    assert (
        out
        == b"""#!/bin/sh

echo "items: ${#ITEMS}"
host='db; rm -rf /'
ports="22"
"""
    )
    assert templates.placeholders("d1", SOURCE) == ["host", "ports"]


def test_missing_and_unknown_placeholders_are_reported_together() -> None:
    with pytest.raises(InvalidArgument) as err:
        templates.render("t", "d2", SOURCE, {"nope": "x"})
    assert {(v.field, v.description.split(";")[0]) for v in err.value.violations} == {
        ("placeholders[nope]", "unknown placeholder"),
    }
    with pytest.raises(InvalidArgument) as err:
        templates.render("t", "d2", SOURCE, {})
    assert [(v.field, v.description) for v in err.value.violations] == [
        ("placeholders[host]", "required")
    ]
    # Also when the missing value goes through a filter first.
    with pytest.raises(InvalidArgument) as err:
        templates.render("t", "d3", b"x = {{ target | tojson }}", {})
    assert [v.field for v in err.value.violations] == ["placeholders[target]"]


@pytest.mark.parametrize(
    "source",
    [
        b"{{ ''.__class__.__mro__[1].__subclasses__() }}",
        b"{{ cycler.__init__.__globals__ }}",
        b"{% set x = [] %}{{ x.append(1) }}",
        b"{{ 1 / 0 }}",
    ],
)
def test_template_code_cannot_reach_python_internals(source: bytes) -> None:
    with pytest.raises(FailedPrecondition) as err:
        templates.render("t", source.hex()[:16], source, {})
    assert "unsafe" in err.value.message or "does not render" in err.value.message


def test_syntax_errors_are_refused_with_the_line() -> None:
    with pytest.raises(InvalidArgument) as err:
        templates.check(b"line one\n{% if %}\n")
    assert err.value.violations[0].field == "content"
    assert "line 2" in err.value.violations[0].description
    with pytest.raises(InvalidArgument):
        templates.check(b"\xff\xfe not utf-8")


def test_instance_script_copies_the_template_and_applies_overrides() -> None:
    template = catalogue_pb2.Script(
        name="tpl",
        description="from template",
        tags=["a"],
        owner="runbox",
        execution_type=common_pb2.EXECUTION_TYPE_PYTHON,
        is_template=True,
        latest_version="1.0.0",
        placeholders=["x"],
        default_limits=common_pb2.ResourceLimits(memory_bytes=1 << 20),
    )
    request = catalogue_pb2.InstantiateTemplateRequest(
        template_name="tpl",
        name="mine",
        overrides=catalogue_pb2.Script(description="mine", tags=["b", "c"]),
        override_mask=field_mask_pb2.FieldMask(paths=["description", "tags"]),
    )
    script = templates.instance_script(template, request)
    assert (script.name, script.description, list(script.tags)) == ("mine", "mine", ["b", "c"])
    assert not script.is_template and not script.latest_version and not script.placeholders
    assert script.owner == ""  # the caller becomes the owner
    assert script.default_limits.memory_bytes == 1 << 20
    bad = catalogue_pb2.InstantiateTemplateRequest(
        name="x", override_mask=field_mask_pb2.FieldMask(paths=["description", "is_template"])
    )
    with pytest.raises(InvalidArgument) as err:
        templates.instance_script(template, bad)
    assert [v.field for v in err.value.violations] == ["override_mask.paths[1]"]


def test_builtin_templates_are_valid_templates_with_valid_parameters() -> None:
    found = {b.script.name: b for b in templates.builtins()}
    assert set(found) == {"network-discovery", "config-backup"}
    for builtin in found.values():
        assert builtin.script.is_template
        templates.check(builtin.version.content)
        parameters.compile_definitions(builtin.version.parameters)
        assert builtin.script.default_limits.network == common_pb2.NETWORK_POLICY_EGRESS_ALLOWLIST
    backup = parameters.compile_definitions(found["config-backup"].version.parameters)
    # url applies to the http method only, command to the command method only.
    assert backup.validate({"url": "http://127.0.0.1:8080/c"}).values["method"] == "http"
    with pytest.raises(InvalidArgument) as err:
        backup.validate({"method": "command"})
    assert [v.field for v in err.value.violations] == ["values.command"]
