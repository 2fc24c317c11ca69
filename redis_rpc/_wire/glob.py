"""Redis' glob patterns, as ``PSUBSCRIBE`` matches channels against them.

Python's ``fnmatch`` is close but not the same (``[^a]`` is a negated set
in Redis, a set of ``^`` and ``a`` in fnmatch), so every match of a
channel against a pattern in the library goes through ``matches()``.
"""

from __future__ import annotations

import functools
import re


def matches(pattern: str, channel: str) -> bool:
    """Whether Redis delivers a message on *channel* to a subscriber of *pattern*."""
    return glob(pattern).fullmatch(channel) is not None


@functools.lru_cache(maxsize=1024)
def glob(pattern: str) -> re.Pattern[str]:
    """The expression matching what the Redis glob *pattern* matches (``PSUBSCRIBE``'s rules).

    ``*`` any text, ``?`` one character, ``[abc]``, ``[a-z]`` and ``[^a]``
    one character of a set, ``\\`` takes the next character as it is.
    An unclosed set runs to the end of the pattern, as in Redis.
    """
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if char == "*":
            out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":  # a set; an unclosed one runs to the end of the pattern
            end = _set_end(pattern, i + 1)
            out.append(_char_set(pattern[i + 1 : end]))
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def _set_end(pattern: str, start: int) -> int:
    """The index of the ``]`` closing a set that opens before *start*, or the pattern's length."""
    i = start
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "]":
            return i
        i += 1
    return len(pattern)


def _char_set(body: str) -> str:
    """A regex character class for the inside of a Redis glob set."""
    negate = body.startswith("^")
    if negate:
        body = body[1:]
    parts, i = [], 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            i += 1
            char = body[i]
        elif i + 2 < len(body) and body[i + 1] == "-":
            low, high = sorted((char, body[i + 2]))  # Redis takes z-a as a-z
            parts.append(f"{re.escape(low)}-{re.escape(high)}")
            i += 3
            continue
        parts.append(re.escape(char))
        i += 1
    if not parts:  # "[]" matches nothing, "[^]" any one character
        return "." if negate else "(?!)"
    return f"[{'^' if negate else ''}{''.join(parts)}]"
