"""Lists, cursor pagination and ``expand[]``, as Stripe answers them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .store import JSON, StripeError

# ----------------------------------------------------------------------- helpers


#: Fields Stripe includes only when asked (``expand[]``), by object type.
_INCLUDABLE: dict[str | None, frozenset[str]] = {
    "price": frozenset({"currency_options", "tiers"}),
    "checkout.session": frozenset({"line_items"}),
    "customer": frozenset(
        {"sources", "subscriptions", "tax_ids", "cash_balance", "invoice_credit_balance"}
    ),
    "invoice": frozenset({"payments"}),
    "item": frozenset({"discounts", "taxes"}),
    None: frozenset({"breakdown"}),  # inside hashes, e.g. ``total_details.breakdown``
}
_MAX_EXPAND_DEPTH = 4


def _cannot_expand(segment: str, hint: str | None = None) -> StripeError:
    message = f"This property cannot be expanded ({segment})."
    if hint:
        message += f" You may want to try expanding '{hint}' instead."
    return StripeError(400, message, saved=False)


def _expandable(value: Any) -> bool:
    if value is None or isinstance(value, str):
        return True
    if isinstance(value, dict):
        return "object" in value
    if isinstance(value, list):
        return all(_expandable(item) for item in value)
    return False


def _expand_path(
    node: Any, parts: list[str], resolve: Callable[[str], JSON | None], path: str
) -> None:
    if not parts or node is None:
        return
    if isinstance(node, list):
        for element in node:
            _expand_path(element, parts, resolve, path)
        return
    if not isinstance(node, dict):
        raise _cannot_expand(parts[0])
    head, rest = parts[0], parts[1:]
    if head not in node:
        if head in _INCLUDABLE.get(node.get("object"), ()):
            return
        hint = f"data.{path}" if node.get("object") == "list" and "data" in node else None
        raise _cannot_expand(head, hint)
    value = node[head]
    if not _expandable(value) and not (rest and isinstance(value, dict)):
        # A hash (``metadata``) is not expandable, but a path may go through one.
        raise _cannot_expand(head)
    if isinstance(value, str):
        resolved = resolve(value)
        if resolved is not None:
            node[head] = value = resolved
    elif isinstance(value, list):
        node[head] = value = [
            (resolve(item) or item) if isinstance(item, str) else item for item in value
        ]
    _expand_path(value, rest, resolve, path)


def expand(obj: JSON, paths: Iterable[str], resolve: Callable[[str], JSON | None]) -> JSON:
    """Replace ids at dotted ``paths`` (``data.product``, ``items.data.price``) by objects.

    As on Stripe, a path must lead through fields that hold an id, an object or
    nothing yet (``null``), at most four levels deep; anything else is refused
    with "This property cannot be expanded".
    """
    for path in paths:
        parts = [part for part in path.split(".") if part]
        if len(parts) > _MAX_EXPAND_DEPTH:
            raise StripeError(400, "You cannot expand more than 4 levels of a property.")
        _expand_path(obj, parts, resolve, path)
    return obj


def _list_object(data: list[JSON], url: str, has_more: bool = False) -> JSON:
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def paginate(items: list[JSON], params: JSON, url: str) -> JSON:
    """Stripe cursor pagination over ``items`` (already in list order)."""
    try:
        limit = int(params.get("limit", 10))
    except (TypeError, ValueError) as exc:
        raise StripeError(
            400,
            f"Invalid integer: {params.get('limit')}",
            code="parameter_invalid_integer",
            param="limit",
        ) from exc
    if not 1 <= limit <= 100:
        raise StripeError(
            400,
            "Invalid limit: must be between 1 and 100",
            code="parameter_invalid_integer",
            param="limit",
        )
    ids = [item.get("id") for item in items]
    starting_after, ending_before = params.get("starting_after"), params.get("ending_before")
    if starting_after and ending_before:
        raise StripeError(
            400,
            "You may only specify one of these parameters: ending_before, starting_after.",
            param="ending_before",
        )
    for cursor, param in ((starting_after, "starting_after"), (ending_before, "ending_before")):
        if cursor and cursor not in ids:
            raise StripeError(
                400, f"No such object: '{cursor}'", code="resource_missing", param=param
            )
    if starting_after:
        rest = items[ids.index(starting_after) + 1 :]
        return _list_object(rest[:limit], url, len(rest) > limit)
    if ending_before:
        before = items[: ids.index(ending_before)]
        return _list_object(before[-limit:], url, len(before) > limit)
    return _list_object(items[:limit], url, len(items) > limit)


def _as_list(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    return [str(value)]
