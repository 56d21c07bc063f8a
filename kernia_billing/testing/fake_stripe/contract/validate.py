"""Validate decoded request parameters against Stripe's contract (``schema.json``).

Errors are Stripe's: 400 ``invalid_request_error`` with ``param`` naming the
full bracketed path (``line_items[0][bogus]``) and Stripe's codes
(``parameter_unknown``, ``parameter_missing``, ``parameter_invalid_integer`` ...).
Values arrive form-encoded, so scalars are strings: ``"12"`` is a valid
integer and ``"true"`` a valid boolean, as on Stripe.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["ContractError", "contract_for", "known_params", "validate_params"]

_SCHEMA_PATH = Path(__file__).with_name("schema.json")
_INT_RE = re.compile(r"-?\d+")
_NUMBER_RE = re.compile(r"-?(\d+(\.\d*)?|\.\d+)")


class ContractError(ValueError):
    """A parameter Stripe would refuse; carries Stripe's ``code`` and ``param``."""

    def __init__(self, message: str, *, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@cache
def _contract() -> dict[str, Any]:
    with _SCHEMA_PATH.open(encoding="utf-8") as handle:
        params: dict[str, Any] = json.load(handle)["params"]
    return params


def known_params() -> frozenset[str]:
    """Names of the SDK params types the contract covers."""
    return frozenset(_contract())


def contract_for(name: str) -> Any:
    """The schema node of one endpoint, by SDK params type name."""
    try:
        return _contract()[name]
    except KeyError:
        raise KeyError(
            f"no contract for {name!r}: regenerate schema.json "
            "(python -m kernia_billing.testing.fake_stripe.contract.build)"
        ) from None


def validate_params(name: str, params: dict[str, Any]) -> None:
    """Raise :class:`ContractError` for the first parameter Stripe would refuse."""
    _check_object(contract_for(name), params, "")


def _child(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if path else str(key)


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _check_object(node: dict[str, Any], value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise ContractError("Invalid object", param=path)
    fields: dict[str, Any] = node["object"]
    for key in value:
        if key not in fields:
            raise ContractError(
                f"Received unknown parameter: {_child(path, key)}",
                param=_child(path, key),
                code="parameter_unknown",
            )
    for key in node.get("required", ()):
        if key not in value:
            raise ContractError(
                f"Missing required param: {_child(path, key)}.",
                param=_child(path, key),
                code="parameter_missing",
            )
    for key, item in value.items():
        check(fields[key], item, _child(path, key))


def check(node: Any, value: Any, path: str) -> None:
    """Validate ``value`` at ``path`` against a schema node."""
    if isinstance(node, str):
        _check_scalar(node, value, path)
    elif "object" in node:
        _check_object(node, value, path)
    elif "enum" in node:
        if not isinstance(value, str) or value not in node["enum"]:
            values = [v for v in node["enum"] if v] or ["an empty string"]
            listed = ", ".join(values[:-1]) + (" or " if len(values) > 1 else "") + values[-1]
            raise ContractError(
                f"Invalid {path.rsplit('[', 1)[-1].rstrip(']')}: must be one of {listed}",
                param=path,
            )
    elif "array" in node:
        if not isinstance(value, list):
            raise ContractError("Invalid array", param=path, code="parameter_invalid_array")
        for index, item in enumerate(value):
            check(node["array"], item, _child(path, index))
    elif "map" in node:
        if not isinstance(value, dict):
            raise ContractError("Invalid hash", param=path, code="parameter_invalid_hash")
        for key, item in value.items():
            check(node["map"], item, _child(path, key))
    elif "anyOf" in node:
        _check_any_of(node["anyOf"], value, path)


def _shape(node: Any) -> str:
    if isinstance(node, str):
        return "scalar"
    if "object" in node or "map" in node:
        return "dict"
    if "array" in node:
        return "list"
    return "scalar"


def _check_any_of(nodes: list[Any], value: Any, path: str) -> None:
    errors: list[tuple[Any, ContractError]] = []
    for node in nodes:
        try:
            check(node, value, path)
            return
        except ContractError as exc:
            errors.append((node, exc))
    shape = "dict" if isinstance(value, dict) else "list" if isinstance(value, list) else "scalar"
    for node, error in errors:
        if _shape(node) == shape and not (isinstance(node, dict) and node.get("enum") == [""]):
            raise error
    raise errors[-1][1]


def _check_scalar(kind: str, value: Any, path: str) -> None:
    if kind == "any":
        return
    if isinstance(value, (dict, list)):
        raise ContractError(
            f"Invalid {_type_word(kind)}: {_shown(value)}", param=path, code=_code(kind)
        )
    text = str(value).lower() if isinstance(value, bool) else str(value)
    ok = (
        kind == "string"
        or (kind == "integer" and _INT_RE.fullmatch(text.strip()) is not None)
        or (kind == "number" and _NUMBER_RE.fullmatch(text.strip()) is not None)
        or (kind == "boolean" and text.lower() in ("true", "false"))
    )
    if not ok:
        raise ContractError(f"Invalid {_type_word(kind)}: {text}", param=path, code=_code(kind))


def _type_word(kind: str) -> str:
    return {"number": "decimal", "string": "string"}.get(kind, kind)


def _code(kind: str) -> str | None:
    return {
        "integer": "parameter_invalid_integer",
        "boolean": "parameter_invalid_boolean",
        "string": "parameter_invalid_string",
    }.get(kind)
