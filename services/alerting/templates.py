"""Message templates of alert rules: sandboxed Jinja2 with bounded work and output.

A template sees only the notification context (SAMPLE_CONTEXT lists every name): ids,
states, script and schedule names, labels and timings, never run parameters or secrets.
Beyond Jinja's immutable sandbox, templates are refused statically when they name private
attributes (``_x``, ``__class__``), use macros, imports or recursive loops, nest loops more
than MAX_LOOP_DEPTH deep, or read names the context does not have; at render time strings
and lists are capped (``*``, ``+``, ``~``, ``%``, padding filters, ``range``), and the
output is cut at the limit. A template that fails when a notification is sent falls back to
DEFAULT_TEMPLATE with a note: a broken template never loses an alert.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import Any, cast

import jinja2
from jinja2 import meta, nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from shared.errors import InvalidArgument

DEFAULT_TEMPLATE = (
    "[{{ severity | upper }}] {{ title }}\n"
    "Rule: {{ rule_name }} ({{ rule_id }})\n"
    "{% if script_name %}Script: {{ script_name }}"
    "{% if script_version %} {{ script_version }}{% endif %}\n{% endif %}"
    "{% if schedule_id %}Schedule: {{ schedule_id }}\n{% endif %}"
    "{% if run_id %}Run: {{ run_id }}"
    "{% if state %} ({{ state }}{% if failure_reason %}, {{ failure_reason }}{% endif %})"
    "{% endif %}\n{% endif %}"
    "{% if occurrences is number and occurrences > 1 %}Occurrences: {{ occurrences }}\n{% endif %}"
    "Condition: {{ condition }}\n"
    "At: {{ occurred_at }}\n"
)
DEFAULT_GROUP_KEY = "{{ rule_id }}:{{ script_name }}"
# Every name a template may read; the engine builds contexts with exactly these keys.
SAMPLE_CONTEXT: dict[str, Any] = {
    "alert_id": "0b1d9c2e-alert",
    "rule_id": "5f0c1a7e-rule",
    "rule_name": "nightly-backup-failures",
    "kind": "firing",  # "firing" | "resolved" | "test"
    "severity": "critical",  # "info" | "warning" | "critical"
    "title": "backup failed",
    "condition": "run reached FAILED",
    "script_name": "backup",
    "script_version": "1.4.0",
    "script_tags": ["ops", "nightly"],
    "schedule_id": "7d2e-schedule",
    "run_id": "c3a1-run",
    "execution_type": "CONTAINER",
    "state": "FAILED",
    "failure_reason": "EXIT_CODE",
    "exit_code": 2,
    "attempt": 1,
    "duration_s": 42.5,
    "labels": {"team": "ops"},
    "occurrences": 3,
    "first_seen": "2026-01-01T02:00:00Z",
    "last_seen": "2026-01-01T02:10:00Z",
    "occurred_at": "2026-01-01T02:10:00Z",
}
# Names a template may use besides the context: the environment's remaining globals.
GLOBALS = frozenset({"range", "dict", "namespace", "loop"})
MAX_SOURCE = 8_192
MAX_LOOP_DEPTH = 2
MAX_RANGE = 1_000
# Longest string or list a template may build; context strings/lists are cut to these.
MAX_VALUE = 65_536
MAX_CONTEXT_STRING = 4_096
MAX_CONTEXT_ITEMS = 100
MAX_INT_ARGUMENT = 10_000
# Loop iterations one render may spend, over all loops together.
MAX_ITERATIONS = 100_000
LOOP_FILTER = "_runbox_loop_budget"
# Node types a message has no use for: they load other templates or recurse without bound.
FORBIDDEN_NODES: dict[type[nodes.Node], str] = {
    nodes.Macro: "macros are not allowed",
    nodes.CallBlock: "call blocks are not allowed",
    nodes.Include: "include is not allowed",
    nodes.Import: "import is not allowed",
    nodes.FromImport: "import is not allowed",
    nodes.Extends: "extends is not allowed",
}
# str methods that allocate by an argument (padding) or sidestep the format checks.
UNSAFE_STR_METHODS = frozenset(
    {"format", "format_map", "ljust", "rjust", "center", "zfill", "expandtabs", "replace"}
)
# Padding wider than 9999 or taken from an argument ("%*d"), in %-format or str.format.
_WIDE_SPEC = re.compile(r"%[^a-zA-Z%]*(\d{5,}|\*)|\{[^{}]*:[^{}]*\d{5,}")
_NOTE = "\n(The rule's message template failed: {reason}. The default message is shown.)\n"


@jinja2.pass_eval_context
def _loop_budget(eval_ctx: Any, iterable: Iterable[Any]) -> Iterator[Any]:
    """Every loop's iterable goes through this: one budget of iterations per render."""
    for item in iterable:
        spent = getattr(eval_ctx, "runbox_iterations", 0) + 1
        if spent > MAX_ITERATIONS:
            raise SecurityError(f"more than {MAX_ITERATIONS} loop iterations")
        eval_ctx.runbox_iterations = spent
        yield item


class _Generator(CodeGenerator):
    """Routes ``~`` through the environment so concatenation is size-checked."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict) else 0


def _check_size(value: Any) -> Any:
    if _size(value) > MAX_VALUE:
        raise SecurityError(f"value longer than {MAX_VALUE} is not allowed")
    return value


def _check_ints(args: Iterable[Any]) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_INT_ARGUMENT:
            raise SecurityError(f"argument {arg} is larger than {MAX_INT_ARGUMENT}")


def _check_format(spec: Any) -> None:
    if isinstance(spec, str) and _WIDE_SPEC.search(spec):
        raise SecurityError("format width or precision above 9999 is not allowed")


def _bounded_range(*args: int) -> range:
    result = range(*args)
    if len(result) > MAX_RANGE:
        raise SecurityError(f"range longer than {MAX_RANGE} is not allowed")
    return result


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter: bounded size arguments, bounded result, checked format strings."""
    skip = 2 if getattr(func, "jinja_pass_arg", None) is not None else 1

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _check_ints(args[skip:])
        _check_ints(kwargs.values())
        if name == "format" and len(args) >= skip:
            _check_format(args[skip - 1])
        if name == "replace" and len(args) >= skip + 2:
            value, old, new = (str(a) for a in args[skip - 1 : skip + 2])
            grow = value.count(old) * max(0, len(new) - len(old)) if old else len(value) * len(new)
            if len(value) + grow > MAX_VALUE:
                raise SecurityError(f"value longer than {MAX_VALUE} is not allowed")
        return _check_size(func(*args, **kwargs))

    return guarded


class _Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, failing loudly on unsafe attributes and big values."""

    code_generator_class = _Generator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} is not allowed")

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        if isinstance(obj, str) and attr in UNSAFE_STR_METHODS:
            return False
        return bool(super().is_safe_attribute(obj, attr, value))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format(getattr(value, "__self__", None))
        return wrapped

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "*":
            count = right if isinstance(left, str | list | tuple) else left
            longest = max(_size(left), _size(right))
            if isinstance(count, int) and longest and count * longest > MAX_VALUE:
                raise SecurityError(f"value longer than {MAX_VALUE} is not allowed")
        elif operator_ == "**" and isinstance(left, int | float) and isinstance(right, int | float):
            if abs(right) > 64 or abs(int(left)).bit_length() * abs(right) > 4_096:
                raise SecurityError("power too large")
        elif operator_ == "+":
            if _size(left) + _size(right) > MAX_VALUE:
                raise SecurityError(f"value longer than {MAX_VALUE} is not allowed")
        elif operator_ == "%" and isinstance(left, str):
            _check_format(left)
        return _check_size(self.binop_table[operator_](left, right))

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        _check_ints(args)
        _check_ints(kwargs.values())
        return _check_size(super().call(context, obj, *args, **kwargs))

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Parse, then route every loop's iterable through the iteration budget."""
        tree = super()._parse(source, name, filename)
        for loop in list(tree.find_all(nodes.For)):
            loop.iter = nodes.Filter(loop.iter, LOOP_FILTER, [], [], None, None)
        tree.set_environment(self)
        return tree

    def concat(self, parts: Iterable[Any]) -> str:
        pieces = [str(p) for p in parts]
        if sum(map(len, pieces)) > MAX_VALUE:
            raise SecurityError(f"value longer than {MAX_VALUE} is not allowed")
        return "".join(pieces)


def _environment() -> _Sandbox:
    env = _Sandbox(autoescape=False, keep_trailing_newline=True)
    for name in ("lipsum", "cycler", "joiner"):
        env.globals.pop(name, None)
    env.globals["range"] = _bounded_range
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    env.filters[LOOP_FILTER] = _loop_budget
    return env


_ENV = _environment()


@functools.lru_cache(maxsize=512)
def _compile(source: str) -> jinja2.Template:
    return _ENV.from_string(source)


def check_template(source: str, *, field: str) -> None:
    """Refuse a template that does not parse, escapes the sandbox, reads unknown names,
    or fails rendering SAMPLE_CONTEXT; the InvalidArgument names ``field``."""
    if len(source) > MAX_SOURCE:
        raise InvalidArgument.field(field, f"template longer than {MAX_SOURCE} characters")
    try:
        problem = _static_problem(_ENV.parse(source))
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidArgument.field(field, f"line {exc.lineno}: {exc.message}") from None
    if problem is not None:
        raise InvalidArgument.field(field, problem)
    try:
        _render_capped(source, SAMPLE_CONTEXT, MAX_VALUE)
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidArgument.field(field, f"line {exc.lineno}: {exc.message}") from None
    except SecurityError as exc:
        raise InvalidArgument.field(field, f"not allowed in a template: {exc}") from None
    except Exception as exc:
        raise InvalidArgument.field(field, f"fails on a sample alert: {_reason(exc)}") from None


def _static_problem(tree: nodes.Template) -> str | None:
    """What makes a parsed template unacceptable, or None."""
    for node in tree.find_all(nodes.Node):
        for kind, why in FORBIDDEN_NODES.items():
            if isinstance(node, kind):
                return why
        if isinstance(node, nodes.Getattr) and node.attr.startswith("_"):
            return f"access to attribute {node.attr!r} is not allowed"
        if isinstance(node, nodes.Getitem | nodes.Filter) and _private_constant(node):
            return "access to private names is not allowed"
        if isinstance(node, nodes.For) and node.recursive:
            return "recursive loops are not allowed"
    if _loop_depth(tree) > MAX_LOOP_DEPTH:
        return f"loops nested deeper than {MAX_LOOP_DEPTH} are not allowed"
    unknown = sorted(meta.find_undeclared_variables(tree) - SAMPLE_CONTEXT.keys() - GLOBALS)
    if unknown:
        return f"unknown name(s) {', '.join(unknown)}; available: {', '.join(SAMPLE_CONTEXT)}"
    return None


def _private_constant(node: nodes.Getitem | nodes.Filter) -> bool:
    """x['_y'] or x|attr('_y'): a constant private name used as an attribute."""
    if isinstance(node, nodes.Getitem):
        candidates: list[nodes.Node] = [node.arg]
    elif node.name == "attr":
        candidates = list(node.args)
    else:
        return False
    return any(
        isinstance(c, nodes.Const) and isinstance(c.value, str) and c.value.startswith("_")
        for c in candidates
    )


def _loop_depth(node: nodes.Node) -> int:
    deepest = max((_loop_depth(child) for child in node.iter_child_nodes()), default=0)
    return deepest + 1 if isinstance(node, nodes.For) else deepest


def render(source: str, context: Mapping[str, Any], *, limit: int = 16_384) -> str:
    """Render a rule's template (empty: the default), at most ``limit`` characters.

    Never raises: a failing template renders the default with a note saying why."""
    safe = _bounded_context(context)
    try:
        return _render_capped(source or DEFAULT_TEMPLATE, safe, limit)
    except Exception as exc:
        note = _NOTE.format(reason=_reason(exc))
    try:
        return _render_capped(DEFAULT_TEMPLATE, safe, max(0, limit - len(note))) + note
    except Exception:  # the default itself cannot fail on a mapping; keep the promise anyway
        return note.strip()[:limit]


def _render_capped(source: str, context: Mapping[str, Any], limit: int) -> str:
    """Stream the output and stop at ``limit`` characters, marking the cut."""
    parts: list[str] = []
    size = 0
    stream = cast(Generator[str, None, None], _compile(source).generate(dict(context)))
    try:
        for piece in stream:
            parts.append(piece)
            size += len(piece)
            if size > limit:
                break
    finally:
        stream.close()
    text = "".join(parts)
    if len(text) > limit:
        marker = "…[truncated]"
        text = text[: max(0, limit - len(marker))] + marker
    return text[:limit]


def _bounded_context(value: Any, depth: int = 0) -> Any:
    """A copy of the context with strings, lists and nesting cut to bounded sizes."""
    if isinstance(value, str):
        return value[:MAX_CONTEXT_STRING]
    if depth >= 4:
        return None
    if isinstance(value, Mapping):
        items = list(value.items())[:MAX_CONTEXT_ITEMS]
        return {str(k): _bounded_context(v, depth + 1) for k, v in items}
    if isinstance(value, list | tuple):
        return [_bounded_context(v, depth + 1) for v in value[:MAX_CONTEXT_ITEMS]]
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)[:MAX_CONTEXT_STRING]


def _reason(exc: BaseException) -> str:
    """A short, content-free description of a template failure."""
    if isinstance(exc, jinja2.TemplateError):
        text = exc.message or type(exc).__name__
    elif isinstance(exc, RecursionError):
        text = "recursion too deep"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return text[:200]
