"""Input validation of check and track, shared by every door."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from ...conf import billing_settings
from ...exceptions import BillingError, Contention, InvalidRequest
from ...hygiene import validate_text

MAX_IDEMPOTENCY_KEY_LENGTH = 255
#: A request fingerprint's size (see _fingerprint).
FINGERPRINT_BYTES = 16


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
    validate_text(key, field)
    return key


def _fingerprint(feature: str, amount: int, properties: dict[str, Any]) -> bytes:
    """SHA-256 of the payload, its first 16 bytes (a ledger row's size counts).

    128 bits keep a replay with another payload from passing as the same one (odds of
    2^-128); the full 32 bytes cost every keyed ledger row 16 more.
    """
    if not properties:  # the common payload: the same few (feature, amount) pairs
        return _bare_fingerprint(feature, amount)
    payload = json.dumps([feature, amount, properties], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).digest()[:FINGERPRINT_BYTES]


def same_payload(stored: Any, fingerprint: bytes) -> bool:
    """Whether a stored fingerprint is this request's: a replay, not a conflict.

    Compares the first 16 bytes: a row written by a server still on the release before
    ``0010_ledger_storage`` (during a rolling deploy) holds the whole 32-byte SHA-256.
    """
    return bytes(stored)[:FINGERPRINT_BYTES] == fingerprint


@lru_cache(maxsize=1024, typed=True)  # typed: True and 1 are not the same payload
def _bare_fingerprint(feature: str, amount: int) -> bytes:
    payload = json.dumps([feature, amount, {}], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).digest()[:FINGERPRINT_BYTES]


def before_period_error(now: datetime | None, moment: datetime) -> BillingError:
    """What track, batch and confirm answer for a moment before the current period."""
    if now is not None:
        return InvalidRequest(
            "Usage cannot be recorded before the current period started.",
            fields={"now": moment.isoformat()},
        )
    # The period starts after the server's clock (Stripe's clock is ahead): retry later.
    return Contention("The current period has not started yet; retry the event.")
