"""Input validation of check and track, shared by every door."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ...conf import billing_settings
from ...exceptions import (
    InvalidRequest,
)

MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_PROPERTIES_BYTES = 8192


# --- input validation (every door shares it) ---------------------------------------------


def _validate_integer(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{name} must be an integer.", fields={name: "Must be an integer."})
    limit = billing_settings.MAX_TRACK_AMOUNT
    if abs(value) > limit:
        raise InvalidRequest(
            f"{name} must be at most {limit} in size.", fields={name: f"At most {limit}."}
        )
    return value


def _validate_amount(amount: Any) -> int:
    amount = _validate_integer(amount, "amount")
    if amount == 0:
        raise InvalidRequest("amount must not be zero.", fields={"amount": "Must not be zero."})
    return amount


def _validate_required(required: Any) -> int:
    required = _validate_integer(required, "required")
    if required < 0:
        raise InvalidRequest(
            "required must be zero or more.", fields={"required": "Must be zero or more."}
        )
    return required


def _validate_properties(properties: Any) -> dict[str, Any]:
    if properties is None:
        return {}
    if not isinstance(properties, dict):
        raise InvalidRequest(
            "properties must be an object.", fields={"properties": "Must be an object."}
        )
    try:
        size = len(json.dumps(properties, sort_keys=True))
    except (TypeError, ValueError):
        raise InvalidRequest(
            "properties must be JSON.", fields={"properties": "Must be JSON."}
        ) from None
    if size > MAX_PROPERTIES_BYTES:
        raise InvalidRequest(
            f"properties must be at most {MAX_PROPERTIES_BYTES} bytes of JSON.",
            fields={"properties": "Too large."},
        )
    if _has_nul(properties):
        # PostgreSQL's jsonb cannot store NUL: refuse it rather than fail in the database.
        raise InvalidRequest(
            "properties must not contain NUL characters.",
            fields={"properties": "Must not contain NUL characters."},
        )
    return properties


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def validate_idempotency_key(key: Any, *, field: str = "idempotencyKey") -> str | None:
    """A usable idempotency key, or None for none; ``field`` names it in errors."""
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise InvalidRequest(f"{field} must be a string.", fields={field: "Must be a string."})
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidRequest(
            f"{field} must be at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters.",
            fields={field: f"At most {MAX_IDEMPOTENCY_KEY_LENGTH} characters."},
        )
    if "\x00" in key:
        raise InvalidRequest(
            f"{field} must not contain NUL characters.",
            fields={field: "Must not contain NUL characters."},
        )
    return key


def _fingerprint(feature: str, amount: int, properties: dict[str, Any]) -> str:
    payload = json.dumps([feature, amount, properties], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()
