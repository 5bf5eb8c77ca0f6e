"""One async client action per command: config loading, the event loop, error reporting.

Every command module uses `call`, so a failed RPC looks the same everywhere: the
status code, the server's message and each field violation, then exit code 2.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import grpc
import typer
from rich.markup import escape

from cli import config as cli_config
from cli import render
from shared.status import from_rpc_error

T = TypeVar("T")
# Exit code for user and server errors (bad input, refused calls, unreachable stack).
USAGE_ERROR = 2


def fail(message: str) -> typer.Exit:
    """Print an error and return the exit to raise (so callers read `raise fail(...)`)."""
    render.err_console.print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(USAGE_ERROR)


def call(
    fn: Callable[[cli_config.ClientConfig], Coroutine[Any, Any, T]],
    *,
    field_name: Callable[[str], str] = str,
) -> T:
    """Run one async client action; field_name rewrites violation fields for the user."""
    try:
        cfg = cli_config.load()
    except cli_config.ConfigError as exc:
        raise fail(str(exc)) from None
    try:
        return asyncio.run(fn(cfg))
    except grpc.aio.AioRpcError as exc:
        error = from_rpc_error(exc)
        render.err_console.print(
            f"[red]error:[/] {exc.code().name}: {escape(error.message)}",
            highlight=False,
            soft_wrap=True,
        )
        for violation in getattr(error, "violations", []):
            render.err_console.print(
                f"  - {escape(field_name(violation.field))}: {escape(violation.description)}",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(USAGE_ERROR) from None


async def every_page(method: Callable[[Any], Any], request: Any, items: str) -> list[Any]:
    """Call a List RPC page after page (following next_page_token); all items, in order."""
    found: list[Any] = []
    while True:
        reply = await method(request)
        found.extend(getattr(reply, items))
        request.page_token = reply.next_page_token
        if not request.page_token:
            return found


async def up_to(
    method: Callable[[Any], Any], request: Any, items: str, limit: int, page_size: int
) -> list[Any]:
    """Like every_page, but stop once `limit` items are in (0: no limit), asking each page
    only for what is still missing."""
    found: list[Any] = []
    while True:
        request.page_size = min(page_size, limit - len(found)) if limit else page_size
        reply = await method(request)
        found.extend(getattr(reply, items))
        request.page_token = reply.next_page_token
        if not request.page_token or (limit and len(found) >= limit):
            return found
