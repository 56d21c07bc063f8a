"""One exception handler: every error leaves the API as
``{"error": {"code": "...", "message": "...", "fields": {...}}}``.

That includes what Django's request layer raises lazily while a view reads the
request: a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (413 ``request_too_large``),
more than ``DATA_UPLOAD_MAX_NUMBER_FIELDS`` query parameters and other malformed
requests (400 ``bad_request``), never Django's HTML error pages.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import BadRequest as DjangoBadRequest
from django.core.exceptions import PermissionDenied, RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import set_rollback

from ..exceptions import BillingError
from ..services.history.partitions import is_missing_partition


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."


class MalformedRequest(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "The request is malformed."


# DRF exception class -> our stable error code.
DRF_CODES: dict[type[exceptions.APIException], str] = {
    exceptions.ParseError: "invalid_json",
    exceptions.ValidationError: "invalid_request",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
    RequestTooLarge: "request_too_large",
    MalformedRequest: "bad_request",
}


def error_body(code: str, message: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _flatten(detail: Any) -> Any:
    """DRF's nested ErrorDetail lists -> plain strings (first message per field)."""
    if isinstance(detail, dict):
        return {key: _flatten(value) for key, value in detail.items()}
    if isinstance(detail, list):
        if detail and all(not isinstance(item, (dict, list)) for item in detail):
            return " ".join(str(item) for item in detail)
        return [_flatten(item) for item in detail]
    return str(detail)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """Map domain errors, DRF errors and database outages to the spec's error shape."""
    headers: dict[str, str] = {}
    if isinstance(exc, BillingError):
        set_rollback()
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = RequestTooLarge(f"The request body is larger than {limit} bytes.")
    elif isinstance(exc, (SuspiciousOperation, DjangoBadRequest)):
        # TooManyFieldsSent, TooManyFilesSent, DisallowedHost ... raised as the view reads.
        exc = MalformedRequest(str(exc) or None)
    elif isinstance(exc, UnicodeDecodeError):
        exc = MalformedRequest("The request is not valid UTF-8.")
    elif isinstance(exc, (OperationalError, InterfaceError)) or type(exc) is DatabaseError:
        # The database went away: say so clearly; the transaction is rolled back.
        set_rollback()
        return Response(
            error_body("service_unavailable", "The billing database is unavailable; retry."),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    elif isinstance(exc, IntegrityError) and is_missing_partition(exc):
        set_rollback()
        message = (
            "The usage ledger has no partition for this moment: run "
            "`manage.py kernia_partition_ledger --create-partitions`."
        )
        return Response(
            error_body("service_unavailable", message),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "60"},
        )
    if not isinstance(exc, exceptions.APIException):
        return None
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header  # type: ignore[attr-defined]
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))  # type: ignore[attr-defined]
    code, message, fields = describe_api_exception(exc)
    set_rollback()
    return Response(error_body(code, message, fields), status=exc.status_code, headers=headers)


def describe_api_exception(exc: exceptions.APIException) -> tuple[str, str, dict[str, Any]]:
    """``(code, message, fields)`` of a DRF error, as the error shape spells them."""
    code = DRF_CODES.get(type(exc)) or next(
        (c for cls, c in DRF_CODES.items() if isinstance(exc, cls)), "error"
    )
    if not isinstance(exc, exceptions.ValidationError):
        return code, str(_flatten(exc.detail)), {}
    fields = _flatten(exc.detail)
    if not isinstance(fields, dict):
        fields = {"non_field_errors": fields}
    first = next(iter(fields.values()), "Invalid input.")
    return code, first if isinstance(first, str) else "Invalid input.", fields
