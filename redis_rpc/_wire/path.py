"""Path parameters: channel templates such as ``logs.{level}``, and ``Path()``.

A channel subscriber's name may hold placeholders, ``{name}``, as in
FastStream. Each stands for one dot-free segment of the channel a message
arrives on. The subscriber listens to the Redis pattern with a ``*`` in
each placeholder's place (``logs.*``), and a handler parameter whose
default is ``Path()`` receives the text found there (``"info"`` for a
message published to ``logs.info``).

``{{`` and ``}}`` stand for literal braces. A ``*`` in the fixed text stays
a wildcard, as FastStream has it; ``?``, ``[``, ``]`` and ``\\`` are escaped
in the pattern, so that they match themselves, as they do in the
expression that takes the values out. Anything else in braces is refused:
a typo should fail at registration, not subscribe to a name nobody
publishes to.
"""

from __future__ import annotations

import functools
import json
import re
from typing import TYPE_CHECKING, Any

import attrs

from redis_rpc._wire import convert
from redis_rpc.errors import SetupError, ValidationError

if TYPE_CHECKING:
    import cattrs

# An escaped brace, a braced part (a placeholder if it holds an identifier),
# or a lone brace.
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
# What a placeholder takes: one segment, up to the next dot (FastStream's rule).
_SEGMENT = "([^.]+)"
# Redis glob syntax other than ``*``, escaped in a template's fixed text.
_GLOB = re.compile(r"([?\[\]\\])")


class _Missing:
    def __repr__(self) -> str:
        return "<no default>"


MISSING: Any = _Missing()


@attrs.frozen
class PathParam:
    """What ``Path()`` returns: marks a handler parameter as a path parameter."""

    real_name: str = ""  # the placeholder's name, when not the parameter's
    default: Any = MISSING  # used when the channel gives no value


def Path(real_name: str = "", *, default: Any = MISSING) -> Any:  # noqa: N802 - FastStream's name
    """Mark a handler parameter as taking its value from the channel a message arrived on.

    Use it as the parameter's default: ``level: str = Path()`` receives the
    text that the channel has in the place of ``{level}`` in the
    subscriber's channel template. The value is structured into the
    parameter's annotation by the broker's converter, read as JSON for a
    type that does not take text (``n: int = Path()`` gets ``5`` from
    ``"5"``).

    Args:
        real_name: The placeholder's name, when it differs from the parameter's.
        default: The value when the channel has none, because it does not
            fit the template (``logs.a.b`` for ``logs.{level}``); without
            one, such a message fails validation.
    """
    return PathParam(real_name, default)


@attrs.frozen
class ChannelTemplate:
    """A channel name parsed for placeholders. Immutable.

    Attributes:
        template: The name as declared, such as ``"logs.{level}"``.
        subscription: What is subscribed to in Redis: ``"logs.*"``, or the
            declared name with its escaped braces undone when it has no
            placeholders.
        names: The placeholders' names, in order.
    """

    template: str
    subscription: str
    names: tuple[str, ...] = ()
    _regex: re.Pattern[str] | None = attrs.field(default=None, repr=False)

    def values(self, channel: str) -> dict[str, str]:
        """The placeholders' values in *channel*; empty when it does not fit the template."""
        if self._regex is None:
            return {}
        match = self._regex.fullmatch(channel)
        return (
            {} if match is None else dict(zip(self.names, match.groups(), strict=True))
        )


@functools.lru_cache(maxsize=1024)
def parse(template: str) -> ChannelTemplate:
    """Parse a channel name for ``{name}`` placeholders and ``{{``/``}}`` escapes.

    Raises:
        SetupError: A brace that is neither part of a placeholder nor
            escaped, a placeholder named twice, or two placeholders with
            nothing between them.
    """
    fixed = [""]  # the literal text before, between and after the placeholders
    names: list[str] = []
    end = 0
    for match in _TOKEN.finditer(template):
        fixed[-1] += template[end : match.start()]
        end = match.end()
        token, name = match.group(), match.group(1)
        if token in ("{{", "}}"):
            fixed[-1] += token[0]
        elif name is not None and name.isidentifier():
            if name in names:
                msg = f"Channel template {template!r} names {{{name}}} twice; give each placeholder its own name."
                raise SetupError(msg)
            if names and not fixed[-1]:
                msg = f"Channel template {template!r} has two placeholders with nothing between them, so their values could not be told apart."
                raise SetupError(msg)
            names.append(name)
            fixed.append("")
        else:
            msg = f"Channel template {template!r} has {token!r}, which is not a placeholder: write {{name}} with a Python identifier for one, and {{{{ or }}}} for a literal brace."
            raise SetupError(msg)
    fixed[-1] += template[end:]
    if not names:
        return ChannelTemplate(template, fixed[0])
    subscription = "*".join(_GLOB.sub(r"\\\1", part) for part in fixed)
    regex = _SEGMENT.join(
        ".*".join(re.escape(piece) for piece in part.split("*")) for part in fixed
    )
    return ChannelTemplate(
        template, subscription, tuple(names), re.compile(regex, re.DOTALL)
    )


def has_placeholders(name: str) -> bool:
    """Whether *name* holds a ``{name}`` placeholder; never raises."""
    try:
        return bool(parse(name).names)
    except SetupError:  # malformed: parse() says so where it matters
        return False


def value(converter: cattrs.Converter, text: str, target: Any, parameter: str) -> Any:
    """Structure the path value *text* into *target*, for the handler parameter *parameter*.

    Text first; a type that does not take text gets the text read as JSON,
    so that ``int`` takes ``"5"`` and ``bool`` takes ``"true"``.

    Raises:
        ValidationError: Neither fits.
    """
    if target is bytes:
        return text.encode()
    what = f"Path parameter {parameter!r} ({text[:100]!r})"
    try:
        return convert.structure(converter, text, target, what=what)
    except ValidationError as exc:
        error = exc
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):  # not JSON either: the text's error says why
        raise error from error.__cause__
    return convert.structure(converter, parsed, target, what=what)
