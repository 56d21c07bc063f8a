"""Decoding of Stripe's form encoding (``application/x-www-form-urlencoded``).

The Stripe SDKs flatten nested parameters into bracketed keys::

    items[0][price]=price_123&items[0][quantity]=2
    expand[]=data.product            (or expand[0]=data.product)
    metadata[plan]=pro
    recurring[interval]=month

:func:`decode_form` turns such pairs back into nested ``dict``/``list`` values.
Values stay strings, except that :func:`coerce_bool` and :func:`coerce_int` help
endpoints interpret them. An empty string is kept as ``""``: for ``metadata``
it means "unset this key", as on Stripe.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["FormError", "coerce_bool", "coerce_int", "decode_form", "parse_key"]

_KEY_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART_RE = re.compile(r"\[([^\[\]]*)\]")

#: Keys whose children are free-form user keys: never turned into lists.
_FREEFORM_KEYS = frozenset({"metadata"})


class FormError(ValueError):
    """Raised for a key that cannot be decoded (e.g. ``a[b``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def parse_key(key: str) -> list[str]:
    """Split ``items[0][price]`` into ``["items", "0", "price"]``.

    An empty bracket pair (``expand[]``) yields an empty segment ``""`` that
    means "append".
    """
    match = _KEY_RE.match(key)
    if not match:
        raise FormError(f"Invalid parameter name: {key!r}", param=key)
    return [match.group(1), *_PART_RE.findall(match.group(2))]


def _insert(target: dict[str, Any], parts: list[str], value: str, raw_key: str) -> None:
    node: dict[str, Any] = target
    for index, part in enumerate(parts[:-1]):
        following = parts[index + 1]
        if part == "":
            # "a[][b]" : append a new dict unless the last one lacks this key.
            appended = node.setdefault("", {})
            part = str(len(appended) - 1) if appended else "0"
            last = appended.get(part)
            if last is None or following in last:
                part = str(len(appended))
            node = appended.setdefault(part, {})
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise FormError(f"Conflicting values for parameter {raw_key!r}", param=raw_key)
        node = child
    last_part = parts[-1]
    if last_part == "":
        bucket = node.setdefault("", {})
        if not isinstance(bucket, dict):
            raise FormError(f"Conflicting values for parameter {raw_key!r}", param=raw_key)
        bucket[str(len(bucket))] = value
        return
    existing = node.get(last_part)
    if isinstance(existing, dict):
        raise FormError(f"Conflicting values for parameter {raw_key!r}", param=raw_key)
    if existing is not None:
        # A repeated plain key (``include=a&include=b``, as the v2 SDK sends).
        node[last_part] = [*existing, value] if isinstance(existing, list) else [existing, value]
    else:
        node[last_part] = value


def _finalise(value: Any, parent_key: str | None = None) -> Any:
    """Turn dicts keyed ``"0", "1", ...`` (or ``""``) into lists, recursively."""
    if not isinstance(value, dict):
        return value
    if parent_key not in _FREEFORM_KEYS:
        if set(value) == {""} and isinstance(value[""], dict):
            value = value[""]
            return [_finalise(item) for _, item in sorted(value.items(), key=lambda kv: int(kv[0]))]
        if value and all(key.isdigit() for key in value):
            ordered = sorted(value.items(), key=lambda kv: int(kv[0]))
            return [_finalise(item) for _, item in ordered]
    return {key: _finalise(item, key) for key, item in value.items()}


def decode_form(data: str | bytes | list[tuple[str, str]]) -> dict[str, Any]:
    """Decode a Stripe form-encoded body or query string into nested values.

    >>> decode_form("items[0][price]=p&items[0][quantity]=2&expand[]=x&metadata[k]=")
    {'items': [{'price': 'p', 'quantity': '2'}], 'expand': ['x'], 'metadata': {'k': ''}}
    """
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    pairs = parse_qsl(data, keep_blank_values=True) if isinstance(data, str) else data
    result: dict[str, Any] = {}
    for key, value in pairs:
        _insert(result, parse_key(key), value, key)
    finalised: dict[str, Any] = _finalise(result)
    return finalised


def coerce_bool(value: Any, param: str) -> bool:
    """Interpret ``"true"``/``"false"`` (or real booleans) as a ``bool``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise FormError(f"Invalid boolean: {value!r}", param=param)


def coerce_int(value: Any, param: str) -> int:
    """Interpret a decimal string (or an int) as an ``int``."""
    if isinstance(value, bool):
        raise FormError(f"Invalid integer: {value!r}", param=param)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise FormError(f"Invalid integer: {value}", param=param)
