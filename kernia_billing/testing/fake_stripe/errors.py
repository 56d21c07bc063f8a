"""The error Stripe answers with, in its ``{"error": {...}}`` shape."""

from __future__ import annotations

from typing import Any

__all__ = ["StripeError"]

JSON = dict[str, Any]


class StripeError(Exception):
    """An error the API answers in Stripe's ``{"error": {...}}`` shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        saved: bool = True,
    ) -> None:
        super().__init__(message)
        #: Whether Stripe saves this answer under the request's idempotency key
        #: (not for requests whose parameters failed validation).
        self.saved = saved
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def to_dict(self) -> JSON:
        """The JSON body Stripe would send."""
        error: JSON = {"type": self.type, "message": self.message}
        if self.code:
            error["code"] = self.code
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        if self.param:
            error["param"] = self.param
        return {"error": error}

    @classmethod
    def missing(cls, noun: str, object_id: str, param: str | None = "id") -> StripeError:
        """404 ``resource_missing``: ``No such price: 'price_x'``."""
        return cls(404, f"No such {noun}: '{object_id}'", code="resource_missing", param=param)

    @classmethod
    def required(cls, param: str) -> StripeError:
        """400 ``parameter_missing``."""
        return cls(400, f"Missing required param: {param}.", code="parameter_missing", param=param)

    @classmethod
    def invalid(
        cls, message: str, param: str | None = None, code: str = "parameter_invalid"
    ) -> StripeError:
        """400 with a custom message."""
        return cls(400, message, code=code, param=param)
