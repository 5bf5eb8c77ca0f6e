"""Pure logic of auth, settings and error mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.rpc import code_pb2, error_details_pb2

from shared.auth import Authenticator, hash_token, require
from shared.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from shared.settings import ServiceSettings
from shared.status import to_status


def test_authenticate_accepts_configured_token_only(tmp_path: Path) -> None:
    """A token whose hash is configured authenticates; others do not."""
    file = tmp_path / "p.json"
    file.write_text(
        json.dumps(
            {
                "principals": [
                    {
                        "name": "ops",
                        "token_sha256": hash_token("t1"),
                        "permissions": ["script:read"],
                    }
                ]
            }
        )
    )
    auth = Authenticator.from_config(str(file), [])
    assert auth.authenticate("Bearer t1").name == "ops"
    for bad in (None, "", "Bearer", "Basic t1", "Bearer t2"):
        with pytest.raises(Unauthenticated):
            auth.authenticate(bad)


def test_unknown_permission_name_rejected_at_config() -> None:
    """A typo in a permission name fails at startup, not at call time."""
    with pytest.raises(ValueError, match="unknown permissions"):
        Authenticator([("x", hash_token("t"), ["script:reed"])])


def test_require_checks_permission_and_wildcard() -> None:
    """Principals need the exact permission unless they hold '*'."""
    auth = Authenticator([("r", hash_token("r"), ["script:read"]), ("a", hash_token("a"), ["*"])])
    require(auth.authenticate("Bearer r"), "script:read")
    require(auth.authenticate("Bearer a"), "script_schedule:manage")
    with pytest.raises(PermissionDenied):
        require(auth.authenticate("Bearer r"), "script:write")


def test_settings_read_nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """RUNBOX_ prefix with __ nesting configures nested sections."""
    monkeypatch.setenv("RUNBOX_GRPC__PORT", "5123")
    monkeypatch.setenv("RUNBOX_DATABASE__URL", "sqlite+aiosqlite:///x.db")
    monkeypatch.setenv("RUNBOX_AUTH__SERVICE_TOKEN", "s3cret")
    settings = ServiceSettings()
    assert settings.grpc.port == 5123
    assert settings.database.url == "sqlite+aiosqlite:///x.db"
    assert settings.auth.service_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_invalid_argument_maps_to_bad_request_details() -> None:
    """InvalidArgument becomes code 3 with one BadRequest violation per field."""
    status = to_status(InvalidArgument("bad", [FieldViolation("a", "x"), FieldViolation("b", "y")]))
    assert status.code == code_pb2.INVALID_ARGUMENT
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    assert [v.field for v in detail.field_violations] == ["a", "b"]


def test_not_found_maps_to_resource_info() -> None:
    """NotFound names the resource in ResourceInfo."""
    status = to_status(NotFound("script", "hello"))
    assert status.code == code_pb2.NOT_FOUND
    info = error_details_pb2.ResourceInfo()
    assert status.details[0].Unpack(info)
    assert (info.resource_type, info.resource_name) == ("script", "hello")
