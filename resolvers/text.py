"""Text the gateway accepts from outside, and stored text made safe to show."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

# NUL, the C0 controls but tab and line breaks, DEL, the C1 controls, and UTF-16 surrogates
# (a Python str holds one only when a lone "\ud800" escape arrived: it is not Unicode text,
# PostgreSQL and every UTF-8 encoder refuse it).
_BAD_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
REPLACEMENT = "\ufffd"
# A JSON argument (CRO event properties) is a small flat-ish object, never a document.
MAX_JSON_DEPTH = 5
MAX_JSON_VALUES = 500


def text_problem(value: str) -> str | None:
    """Why this text is refused, or None when it is acceptable."""
    found = _BAD_CHARACTER.search(value)
    if found is None:
        return None
    character = found.group()
    if character == "\x00":
        return "contains a NUL character (U+0000)"
    if "\ud800" <= character <= "\udfff":
        return f"contains a lone surrogate (U+{ord(character):04X}), which is not valid Unicode"
    return f"contains the control character U+{ord(character):04X}"


def value_problem(value: Any, path: str) -> tuple[str, str] | None:
    """The first (path, reason) of text refused anywhere in a coerced GraphQL value.

    Input objects and JSON values arrive as dicts and lists; their keys are text too. JSON
    values are also bounded in depth and size, so a walk over them stays cheap.
    """
    if isinstance(value, str):
        problem = text_problem(value)
        return None if problem is None else (path, problem)
    if not isinstance(value, dict | list):
        return None  # numbers, booleans, enums, datetimes: coerced already
    for count, (item_path, item, depth) in enumerate(_walk(value, path, 1), start=1):
        if depth > MAX_JSON_DEPTH:
            return item_path, f"is nested deeper than {MAX_JSON_DEPTH} levels"
        if count > MAX_JSON_VALUES:
            return item_path, f"holds more than {MAX_JSON_VALUES} values"
        if isinstance(item, str) and (problem := text_problem(item)):
            return item_path, problem
    return None


def _walk(value: Any, path: str, depth: int) -> Iterator[tuple[str, Any, int]]:
    """Every key and value under `value` with its path and depth, parents first."""
    if isinstance(value, dict):
        for key, item in value.items():
            item_path = f"{path}.{_label(key)}"
            yield item_path, key, depth
            yield item_path, item, depth
            if isinstance(item, dict | list):
                yield from _walk(item, item_path, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            item_path = f"{path}[{index}]"
            yield item_path, item, depth
            if isinstance(item, dict | list):
                yield from _walk(item, item_path, depth + 1)


def _label(key: Any) -> str:
    """A key as a path shows it: a message must not carry the very text it refuses."""
    text = scrub(str(key))
    return text if len(text) <= 64 else text[:63] + "…"


def scrub(value: Any) -> Any:
    """A copy of a JSON-like value whose refused characters are replaced with U+FFFD.

    For rows stored before their text was checked: showing them must not break a page.
    """
    if isinstance(value, str):
        return _BAD_CHARACTER.sub(REPLACEMENT, value)
    if isinstance(value, dict):
        return {scrub(key): scrub(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    return value
