"""Secrets read from files at start (compose secrets, Kubernetes Secret volumes):
RUNBOX_DATABASE__PASSWORD_FILE goes into the database URL, RUNBOX_AUTH__SERVICE_TOKEN_FILE
becomes the service token; neither value shows in a repr or an error."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from services.catalogue.config import CatalogueSettings
from shared.settings import AuthSettings, DatabaseSettings

PASSWORD = "p@ss:w/rd%20 é"


def _secret(tmp_path: Path, text: str, name: str = "secret") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_password_file_goes_into_url_escaped(tmp_path: Path) -> None:
    """The file's password (trailing newline stripped) is the URL's, special characters kept."""
    settings = DatabaseSettings(
        url="postgresql+asyncpg://runbox@db:5432/catalogue",
        password_file=_secret(tmp_path, PASSWORD + "\n"),
    )
    parsed = make_url(settings.url)
    assert parsed.password == PASSWORD
    assert (parsed.username, parsed.host, parsed.database) == ("runbox", "db", "catalogue")
    assert PASSWORD not in repr(settings)


def test_password_file_from_environment_reaches_service_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RUNBOX_DATABASE__PASSWORD_FILE works through a service's settings class."""
    monkeypatch.setenv("RUNBOX_DATABASE__URL", "mysql+aiomysql://runbox@db/catalogue")
    monkeypatch.setenv("RUNBOX_DATABASE__PASSWORD_FILE", _secret(tmp_path, PASSWORD))
    settings = CatalogueSettings()
    assert make_url(settings.database.url).password == PASSWORD
    assert PASSWORD not in repr(settings)


def test_password_in_url_and_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """A URL that already has a password plus a password file is an error naming both settings."""
    with pytest.raises(ValidationError) as caught:
        DatabaseSettings(
            url="postgresql+asyncpg://runbox:inline-secret@db/catalogue",
            password_file=_secret(tmp_path, PASSWORD),
        )
    message = str(caught.value)
    assert "RUNBOX_DATABASE__PASSWORD_FILE" in message
    assert "inline-secret" not in message and PASSWORD not in message


@pytest.mark.parametrize("content", [None, "", "  \n"])
def test_missing_or_empty_password_file_is_refused(tmp_path: Path, content: str | None) -> None:
    """A password file that cannot be read, or holds nothing, names the file."""
    path = str(tmp_path / "absent") if content is None else _secret(tmp_path, content)
    with pytest.raises(ValidationError, match="RUNBOX_DATABASE__PASSWORD_FILE") as caught:
        DatabaseSettings(url="postgresql+asyncpg://runbox@db/x", password_file=path)
    assert path in str(caught.value)


def test_no_password_file_leaves_url_unchanged() -> None:
    """Without a password file the URL is used as given."""
    url = "postgresql+asyncpg://runbox:inline@db/catalogue"
    assert DatabaseSettings(url=url).url == url


def test_service_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    """The token file's content, whitespace stripped, is the service token."""
    auth = AuthSettings(service_token_file=_secret(tmp_path, "  tok-123\n"))
    assert auth.service_token.get_secret_value() == "tok-123"
    assert "tok-123" not in repr(auth)


def test_service_token_and_token_file_together_are_refused(tmp_path: Path) -> None:
    """Setting both the token and the token file is an error, the token not echoed."""
    with pytest.raises(ValidationError, match="RUNBOX_AUTH__SERVICE_TOKEN_FILE") as caught:
        AuthSettings(service_token="inline-tok", service_token_file=_secret(tmp_path, "t"))
    assert "inline-tok" not in str(caught.value)


def test_unreadable_service_token_file_is_refused(tmp_path: Path) -> None:
    """A token file that does not exist names the file and the setting."""
    with pytest.raises(ValidationError, match="cannot read"):
        AuthSettings(service_token_file=str(tmp_path / "nope"))
