"""A run's structured result: the JSON object a script writes to result.json,
checked so that a protobuf Struct can carry it in the FINISHED event, and
redacted so that no secret value travels with it."""

from __future__ import annotations

import json
import math
from typing import Any

from google.protobuf import struct_pb2

from services.executor.output import Redactor

# Nesting a result may have: subscribers parse events with protobuf's recursion limit.
MAX_RESULT_DEPTH = 32


class ResultError(ValueError):
    """result.json that cannot become the run's structured result."""


def parse_result(data: bytes) -> dict[str, Any]:
    """result.json bytes -> a JSON object a Struct can carry, or ResultError.

    NaN, Infinity and numbers beyond a double are refused: Struct has no
    way to say them, and guessing would change the script's data."""
    try:
        value = json.loads(
            data.decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ResultError(f"result.json is not valid JSON ({_short(exc)})") from exc
    if not isinstance(value, dict):
        raise ResultError(f"result.json must hold a JSON object, not {_json_type(value)}")
    if _deeper_than(value, MAX_RESULT_DEPTH):
        raise ResultError(f"result.json is nested deeper than {MAX_RESULT_DEPTH} levels")
    try:
        struct_pb2.Struct().update(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ResultError(f"result.json has a value an event cannot carry ({_short(exc)})") from exc
    return value


def redact_result(value: Any, redactor: Redactor) -> Any:
    """The same structure with every secret form replaced in keys and strings."""
    if isinstance(value, str):
        return redactor.text(value)
    if isinstance(value, dict):
        return {redactor.text(k): redact_result(v, redactor) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_result(v, redactor) for v in value]
    return value


def result_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """The result as the FINISHED event carries it."""
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def _deeper_than(value: Any, limit: int) -> bool:
    """Iterative, so a hostile nesting cannot exhaust the stack here."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} does not fit a double")
    return value


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
