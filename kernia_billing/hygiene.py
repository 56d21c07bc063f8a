"""Input hygiene: refuse what the database cannot store, before it gets there.

PostgreSQL refuses a NUL character in text and jsonb, and psycopg cannot encode a
lone UTF-16 surrogate (``"\\ud800"``, which JSON's ``\\uXXXX`` escapes can carry);
both would fail at the ``INSERT`` as a 500. SQLite stores them, so the same input
would behave differently on the two databases. Every string the API stores or
echoes is checked here, by every door (REST, batch, Python API), and free-form
``properties`` are bounded in depth, keys and size (settings ``MAX_PROPERTIES_*``).

The walk over nested JSON is iterative (an explicit stack), so no nesting can
raise ``RecursionError``.
"""

from __future__ import annotations

import json
from typing import Any

from .conf import billing_settings
from .exceptions import InvalidRequest


def unstorable(text: str) -> str | None:
    """Why ``text`` cannot be stored (``"NUL characters"``, ``"lone surrogates"``), or None."""
    if "\x00" in text:
        return "NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "lone surrogates"
    return None


def validate_text(value: Any, field: str) -> Any:
    """``value`` unchanged unless it is a string the database cannot store (then 400)."""
    if isinstance(value, str):
        reason = unstorable(value)
        if reason:
            raise InvalidRequest(
                f"{field} must not contain {reason}.",
                fields={field: f"Must not contain {reason}."},
            )
    return value


def validate_properties(properties: Any, field: str = "properties") -> dict[str, Any]:
    """A storable JSON object (``{}`` for None), or :class:`InvalidRequest` naming ``field``."""
    if properties is None:
        return {}
    if not isinstance(properties, dict):
        raise InvalidRequest(f"{field} must be an object.", fields={field: "Must be an object."})
    if not properties:
        return properties  # nothing to walk or measure
    _walk(properties, field)
    try:
        size = len(json.dumps(properties, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError):
        raise InvalidRequest(f"{field} must be JSON.", fields={field: "Must be JSON."}) from None
    limit = billing_settings.MAX_PROPERTIES_BYTES
    if size > limit:
        raise InvalidRequest(
            f"{field} must be at most {limit} bytes of JSON.", fields={field: "Too large."}
        )
    return properties


def _walk(root: dict[str, Any], field: str) -> None:
    """Depth, key count and every key and string value, without recursion."""
    max_depth = billing_settings.MAX_PROPERTIES_DEPTH
    max_keys = billing_settings.MAX_PROPERTIES_KEYS
    keys = 0
    stack: list[tuple[Any, int]] = [(root, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, str):
            validate_text(value, field)
        elif isinstance(value, (dict, list, tuple)):
            if depth > max_depth:
                raise InvalidRequest(
                    f"{field} must be nested at most {max_depth} levels deep.",
                    fields={field: f"At most {max_depth} levels deep."},
                )
            if isinstance(value, dict):
                keys += len(value)
                if keys > max_keys:
                    raise InvalidRequest(
                        f"{field} must have at most {max_keys} keys.",
                        fields={field: f"At most {max_keys} keys."},
                    )
                for key, item in value.items():
                    validate_text(key, field)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)
