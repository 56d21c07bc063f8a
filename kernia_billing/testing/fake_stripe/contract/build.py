"""Build ``schema.json``, the fake's request contract, from the installed ``stripe`` SDK.

The SDK's ``stripe.params`` TypedDicts are generated from Stripe's OpenAPI
spec: every parameter an endpoint accepts, at every nesting level, with its
type, its enum values and whether it is required. This module walks the
TypedDict named by each fake route and writes a compact, trimmed JSON schema
(no descriptions) for just those endpoints. Run it after upgrading the SDK::

    python -m kernia_billing.testing.fake_stripe.contract.build

Schema nodes (see :mod:`.validate`): ``"string"``, ``"integer"``,
``"number"``, ``"boolean"``, ``"any"``, ``{"enum": [...]}``,
``{"array": node}``, ``{"map": node}`` (free-form keys, as ``metadata``),
``{"object": {name: node}, "required": [...]}`` and ``{"anyOf": [node, ...]}``.
"""

from __future__ import annotations

import decimal
import importlib
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

import typing_extensions

__all__ = ["build_contract", "main", "params_schema"]

SCHEMA_PATH = Path(__file__).with_name("schema.json")
_NONE = type(None)


def _params_class(name: str) -> Any:
    """``"checkout.SessionCreateParams"`` -> the TypedDict in ``stripe.params``."""
    module_name, _, class_name = name.rpartition(".")
    module = importlib.import_module("stripe.params" + (f".{module_name}" if module_name else ""))
    return getattr(module, class_name)


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and typing_extensions.is_typeddict(tp)


class _Walker:
    def __init__(self) -> None:
        from stripe._request_options import RequestOptions

        self.request_options = set(RequestOptions.__annotations__)

    def evaluate(self, annotation: Any, owner: Any) -> Any:
        module = sys.modules[owner.__module__]
        namespace = {**vars(typing), **vars(typing_extensions), **vars(module)}
        while isinstance(annotation, (str, typing.ForwardRef)):
            code = annotation if isinstance(annotation, str) else annotation.__forward_arg__
            annotation = eval(code, namespace)  # generated SDK annotations only
        return annotation

    def fields(self, cls: Any) -> tuple[dict[str, Any], list[str]]:
        fields: dict[str, Any] = {}
        required: list[str] = []
        for key, annotation in cls.__annotations__.items():
            if key in self.request_options:
                continue
            tp = self.evaluate(annotation, cls)
            is_required = True
            origin = typing_extensions.get_origin(tp)
            if origin in (typing_extensions.NotRequired, typing.NotRequired):
                is_required = False
                tp = self.evaluate(typing_extensions.get_args(tp)[0], cls)
            elif origin in (typing_extensions.Required, typing.Required):
                tp = self.evaluate(typing_extensions.get_args(tp)[0], cls)
            fields[key] = self.node(tp, cls)
            if is_required:
                required.append(key)
        return fields, sorted(set(required))

    def node(self, tp: Any, owner: Any) -> Any:
        tp = self.evaluate(tp, owner)
        if _is_typeddict(tp):
            fields, required = self.fields(tp)
            obj: dict[str, Any] = {"object": fields}
            if required:
                obj["required"] = required
            return obj
        origin = typing_extensions.get_origin(tp)
        if origin is typing.Literal or origin is typing_extensions.Literal:
            return {"enum": [str(arg) for arg in typing_extensions.get_args(tp)]}
        args = [self.evaluate(arg, owner) for arg in typing_extensions.get_args(tp)]
        if origin in (typing.Union, types.UnionType):
            return self.union(args, owner)
        if origin in (list, typing.List):  # noqa: UP006
            return {"array": self.node(args[0], owner)}
        if origin in (dict, typing.Dict):  # noqa: UP006
            return {"map": self.node(args[1], owner)}
        if origin is not None and getattr(origin, "__name__", "") == "UntypedStripeObject":
            return {"map": self.node(args[0], owner)}
        if tp is str:
            return "string"
        if tp is bool:
            return "boolean"
        if tp is int:
            return "integer"
        if tp in (float, decimal.Decimal):
            return "number"
        return "any"

    def union(self, args: list[Any], owner: Any) -> Any:
        members = [arg for arg in args if arg is not _NONE]
        literals: list[str] = []
        others: list[Any] = []
        has_str = False
        for arg in members:
            origin = typing_extensions.get_origin(arg)
            if origin is typing.Literal or origin is typing_extensions.Literal:
                literals.extend(str(value) for value in typing_extensions.get_args(arg))
            elif arg is str:
                has_str = True
            else:
                others.append(self.node(arg, owner))
        nodes: list[Any] = []
        enum = [value for value in literals if value != ""]
        if "" in literals:
            nodes.append({"enum": [""]})
        if enum:
            # ``Literal[...]|str`` is the SDK's forward-compatibility escape; the
            # API itself accepts only the listed values.
            nodes.append({"enum": enum})
        elif has_str:
            nodes.append("string")
        for node in others:
            if node not in nodes:
                nodes.append(node)
        # ``Dict[...]|UntypedStripeObject[...]`` both give the same map node.
        return nodes[0] if len(nodes) == 1 else {"anyOf": nodes}


def params_schema(name: str) -> Any:
    """The schema node of one SDK params TypedDict (e.g. ``"PriceCreateParams"``)."""
    return _Walker().node(_params_class(name), _params_class(name))


def build_contract() -> dict[str, Any]:
    """The contract of every fake route, keyed by SDK params type name."""
    import stripe

    from ..server import routes

    names = sorted({name for _, _, name in routes() if name})
    walker = _Walker()
    params = {name: walker.node(_params_class(name), _params_class(name)) for name in names}
    return {
        "_comment": (
            "Generated by kernia_billing.testing.fake_stripe.contract.build from the "
            "stripe-python SDK's generated parameter types (MIT, see STRIPE_SDK_LICENSE)."
        ),
        "stripe_sdk_version": stripe.VERSION,
        "params": params,
    }


def main() -> int:
    """Write ``schema.json`` next to this module."""
    contract = build_contract()
    SCHEMA_PATH.write_text(json.dumps(contract, indent=0, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {SCHEMA_PATH.name}: {len(contract['params'])} endpoints", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
