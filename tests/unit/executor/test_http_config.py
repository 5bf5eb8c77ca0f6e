"""The http type's pure pieces: templating, the URL allow-list and the result."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from runbox.common.v1 import common_pb2
from services.executor.config import HttpSettings
from services.executor.output import Redactor
from services.executor.runners.base import Job, Limits
from services.executor.runners.http_runner import (
    HttpResponse,
    UrlAllowList,
    UrlPrefix,
    prepare,
    result_of,
)
from services.executor.runners.job_config import execution_config, referenced, render
from shared.errors import FailedPrecondition, InvalidArgument

ALLOW = UrlAllowList(["https://api.example.com/v1/", "http://127.0.0.1:8080"])


def job(config: dict[str, Any], params: Any = None, secrets: Any = None) -> Job:
    return Job(
        run_id="r1",
        attempt=1,
        script_name="s",
        script_version="1.0.0",
        sha256="",
        execution_type=common_pb2.EXECUTION_TYPE_HTTP,
        content=b"",
        parameters=params or {},
        secrets=secrets or {},
        limits=Limits(
            cpus=1, memory_bytes=1, pids=1, work_bytes=1, timeout_s=60, output_bytes=1024
        ),
        config=config,
    )


def violation(exc: pytest.ExceptionInfo[Any]) -> str:
    return str(exc.value.violations[0].field)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com/v1/users",
        "https://API.EXAMPLE.COM:443/v1/users?x=1",
        "https://api.example.com/v1",
        "http://127.0.0.1:8080/anything",
    ],
)
def test_allow_list_accepts_urls_under_a_prefix(url: str) -> None:
    """Same scheme, host and port and a path under the prefix is allowed."""
    ALLOW.check(httpx.URL(url), "url")


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.com/v1/users",  # scheme
        "https://api.example.com:8443/v1/users",  # port
        "https://api.example.com/v10/users",  # a prefix of a segment is not a prefix
        "https://api.example.com/v2",
        "https://api.example.com.evil.net/v1/",
        "https://evil.net/api.example.com/v1/",
        "http://127.0.0.1:8081/",
        "http://127.0.0.1/",
    ],
)
def test_allow_list_refuses_urls_outside_every_prefix(url: str) -> None:
    """Anything differing in scheme, host, port or path prefix is refused."""
    with pytest.raises(FailedPrecondition) as exc:
        ALLOW.check(httpx.URL(url), "config.http.url")
    assert violation(exc) == "config.http.url"


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com@evil.net/v1/",  # userinfo trick: the host is evil.net
        "https://user:pw@api.example.com/v1/",
        "https://api.example.com/v1/%2e%2e/admin",
        "https://api.example.com/v1/..%2Fadmin",
        "https://api.example.com/v1/a%5C..%5Cadmin",
        "file:///etc/passwd",
        "/v1/relative",
    ],
)
def test_allow_list_refuses_url_tricks(url: str) -> None:
    """Credentials, encoded dot segments, backslashes and non-http URLs never pass."""
    with pytest.raises((InvalidArgument, FailedPrecondition)):
        ALLOW.check(httpx.URL(url), "config.http.url")


def test_allow_list_is_empty_by_default() -> None:
    """No configured prefix refuses every URL."""
    with pytest.raises(FailedPrecondition):
        UrlAllowList([]).check(httpx.URL("https://api.example.com/"), "u")


@pytest.mark.parametrize(
    "entry", ["ftp://x.example/", "https://u:p@x.example/", "https://x.example/?q=1", "x.example"]
)
def test_allow_list_entry_must_be_a_plain_http_prefix(entry: str) -> None:
    """A malformed allow-list entry fails at startup, not at the first run."""
    with pytest.raises(ValueError):
        UrlPrefix.parse(entry)


def test_prepare_renders_url_headers_and_body_from_params_and_secrets() -> None:
    """Parameters and secrets fill the templates; JSON values render as JSON."""
    request = prepare(
        job(
            {
                "http": {
                    "method": "post",
                    "url": "https://api.example.com/v1/items/{{ id | urlquote }}",
                    "headers": {"Authorization": "Bearer {{ token }}"},
                    "body": '{"tags": {{ tags }}, "n": {{ n | tojson }}}',
                    "timeout": "5s",
                    "success_statuses": [201],
                }
            },
            params={"id": "a b/c", "tags": ["x", "y"], "n": 3},
            secrets={"token": "s3cr3t"},
        ),
        HttpSettings(),
        ALLOW,
    )
    assert request.method == "POST"
    assert str(request.url) == "https://api.example.com/v1/items/a%20b%2Fc"
    assert request.headers == {"Authorization": "Bearer s3cr3t"}
    assert request.body == b'{"tags": ["x", "y"], "n": 3}'
    assert request.timeout_s == 5
    assert request.success == frozenset({201})


def test_prepare_checks_the_rendered_url() -> None:
    """A parameter that moves the URL off the allow-list is refused after rendering."""
    config = {"http": {"url": "https://{{ host }}/v1/"}}
    with pytest.raises(FailedPrecondition):
        prepare(job(config, params={"host": "evil.net"}), HttpSettings(), ALLOW)
    prepare(job(config, params={"host": "api.example.com"}), HttpSettings(), ALLOW)


@pytest.mark.parametrize(
    ("config", "params", "field"),
    [
        ({"http": {"url": "https://api.example.com/v1/{{ missing }}"}}, {}, "config.http.url"),
        ({"http": {"url": "https://api.example.com/v1/{{ x"}}, {}, "config.http.url"),
        (
            {"http": {"url": "https://api.example.com/v1/", "method": "TRACE"}},
            {},
            "config.http.method",
        ),
        (
            {"http": {"url": "https://api.example.com/v1/", "headers": {"Host": "evil.net"}}},
            {},
            "config.http.headers[Host]",
        ),
        (
            {"http": {"url": "https://api.example.com/v1/", "headers": {"X-A": "{{ v }}"}}},
            {"v": "a\r\nX-Injected: 1"},
            "config.http.headers[X-A]",
        ),
        ({"http": {"url": "https://api.example.com/v1/", "bogus": 1}}, {}, "config"),
        ({"serverless": {"function_name": "f"}}, {}, "config.http"),
        ({}, {}, "config.http"),
    ],
)
def test_prepare_refuses_bad_config_with_the_field(
    config: dict[str, Any], params: dict[str, Any], field: str
) -> None:
    """Each problem names the config field at fault."""
    with pytest.raises(InvalidArgument) as exc:
        prepare(job(config, params=params), HttpSettings(), ALLOW)
    assert violation(exc) == field


def test_prepare_caps_the_timeout_at_the_run_timeout() -> None:
    """The request timeout never outlives the run's own timeout."""
    request = prepare(
        job({"http": {"url": "https://api.example.com/v1/", "timeout": "3600s"}}),
        HttpSettings(),
        ALLOW,
    )
    assert request.timeout_s == 60


def test_execution_config_accepts_camel_case_json() -> None:
    """MessageToDict's default spelling parses as well as the scheduler's snake_case."""
    config = execution_config(job({"http": {"url": "u", "successStatuses": [204]}}), "http")
    assert list(config.success_statuses) == [204]


def test_referenced_names_the_variables_a_template_reads() -> None:
    """Used to refuse secrets in argv before anything renders."""
    assert referenced("--user={{ user }} {{ token | upper }}", "f") == {"user", "token"}
    assert referenced("literal", "f") == set()


def test_render_runs_in_the_sandbox() -> None:
    """Templates cannot reach Python internals."""
    with pytest.raises(InvalidArgument):
        render("{{ x.__class__.__mro__ }}", {"x": "s"}, "f")


def test_result_redacts_secrets_and_encodes_binary_bodies() -> None:
    """A secret echoed in headers, body or URL never reaches the result; binary is base64."""
    request = prepare(
        job(
            {"http": {"url": "https://api.example.com/v1/?k={{ key }}"}},
            secrets={"key": "hunter22"},
        ),
        HttpSettings(),
        ALLOW,
    )
    redactor = Redactor(["hunter22"])
    response = HttpResponse(200, "OK", "HTTP/1.1", [("X-Echo", "hunter22")], b"got hunter22", 12)
    result = result_of(request, response, 100, redactor)
    assert "hunter22" not in repr(result)
    assert result["body"] == "got ***" and result["body_encoding"] == "utf-8"
    binary = HttpResponse(200, "OK", "HTTP/1.1", [], b"\xff\x00hunter22", 300)
    result = result_of(request, binary, 100, redactor)
    assert result["body_encoding"] == "base64" and result["body_truncated"]
    assert base64.b64decode(result["body"]) == b"\xff\x00***"
