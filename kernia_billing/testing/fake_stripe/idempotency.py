"""Idempotent requests, as Stripe documents them.

* A key is scoped to the API key and remembered for about 24 hours (of the
  fake's clock), then it may be reused.
* Reusing a key on another endpoint, or with other parameters, is refused with
  400 ``idempotency_error``.
* The first answer is saved whatever its status, 4xx and 5xx included, and
  replayed with ``Idempotent-Replayed: true``; nothing is saved when the
  parameters failed validation (the endpoint never started executing).
* Requests with the same key wait for one another instead of running twice.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import StripeError

__all__ = ["IDEMPOTENCY_KEY_TTL", "IdempotencyCache"]

JSON = dict[str, Any]

#: How long Stripe keeps an idempotency key (seconds).
IDEMPOTENCY_KEY_TTL = 24 * 3600


@dataclass(frozen=True)
class _Saved:
    method: str
    path: str
    params: JSON
    status: int
    payload: JSON
    saved_at: int


class IdempotencyCache:
    """Saved first answers, keyed by ``(api_key, idempotency_key)``."""

    def __init__(self, clock: Callable[[], int], ttl: int = IDEMPOTENCY_KEY_TTL) -> None:
        self._clock = clock
        self.ttl = ttl
        self._lock = threading.Lock()
        self._locks: dict[tuple[str | None, str], threading.Lock] = {}
        self._saved: dict[tuple[str | None, str], _Saved] = {}

    def reset(self) -> None:
        """Forget every saved answer."""
        with self._lock:
            self._saved.clear()
            self._locks.clear()

    def run(
        self,
        api_key: str | None,
        key: str,
        method: str,
        path: str,
        params: JSON,
        call: Callable[[], tuple[int, JSON]],
    ) -> tuple[int, JSON, bool]:
        """Answer a request under ``key``: ``(status, payload, replayed)``."""
        cache_key = (api_key, key)
        with self._lock:
            lock = self._locks.setdefault(cache_key, threading.Lock())
        with lock:
            now = self._clock()
            saved = self._saved.get(cache_key)
            if saved is not None and now - saved.saved_at >= self.ttl:
                saved = None
                del self._saved[cache_key]
            if saved is not None:
                return self._replay(saved, key, method, path, params)
            try:
                status, payload = call()
            except StripeError as exc:
                if not exc.saved:
                    raise
                status, payload = exc.status, exc.to_dict()
            self._saved[cache_key] = _Saved(
                method, path, copy.deepcopy(params), status, copy.deepcopy(payload), now
            )
            return status, payload, False

    @staticmethod
    def _replay(
        saved: _Saved, key: str, method: str, path: str, params: JSON
    ) -> tuple[int, JSON, bool]:
        if (saved.method, saved.path) != (method, path):
            raise StripeError(
                400,
                "Keys for idempotent requests can only be used for the same endpoint they were "
                f"first used for ('{saved.method} {saved.path}' vs '{method} {path}'). Try using "
                f"a key other than '{key}' if you meant to execute a different request.",
                type="idempotency_error",
                saved=False,
            )
        if saved.params != params:
            raise StripeError(
                400,
                "Keys for idempotent requests can only be used with the same parameters they "
                f"were first used with. Try using a key other than '{key}' if you meant to "
                "execute a different request.",
                type="idempotency_error",
                saved=False,
            )
        return saved.status, copy.deepcopy(saved.payload), True
