"""Guard Django views with entitlements.

    @requires_feature("exports")                   # 402 unless the plan grants it
    def export(request): ...

    @track_usage("messages", amount=1)              # check first, track on 2xx only
    def send_message(request): ...

    @track_usage("messages", owner=lambda request: request.user.organization)
    def send_team_message(request): ...

Both work on plain Django views and, placed *under* ``@api_view`` (or through
``method_decorator`` on an ``APIView`` method), on DRF views.

Answers when access is refused (a choice, the same for HTML and JSON views):

- not signed in: an HTML request (``Accept`` names ``text/html``, as browsers send)
  goes to the login page (``settings.LOGIN_URL``, with ``?next=``), like
  ``@login_required``; an API or JSON request gets 401 ``not_authenticated``;
- ``owner(request)`` returned None: 403;
- denied: **402** with the check's reason as code (``not_included``,
  ``insufficient_balance``, ``no_plan``), in the error shape
  ``{"error": {"code", "message", "fields"}}``;
- an unknown feature key: 404 ``unknown_feature`` (a programming error, made visible).

Plain Django views get a ``JsonResponse``; inside DRF the domain error is raised so
the project's exception handler renders it. HTML pages that prefer an upgrade page
pass ``on_denied=callable(request, check_result) -> HttpResponse``. For DRF class
permissions see :func:`kernia_billing.api.permissions.RequiresFeature`.

``track_usage`` follows the seed: usage is tracked where the product action
succeeded, i.e. when the view answered 2xx. ``KERNIA_BILLING["BILL_FAILED_ATTEMPTS"]
= True`` tracks failed attempts too (non-2xx answers and exceptions). An
``Idempotency-Key`` request header becomes the track's idempotency key, so a
client retry is counted once. The check before the view is what refuses work; if
a concurrent request spends the balance between that check and the track, the
action has already happened, so the view's response is returned and the refused
track is logged (``kernia_billing.decorators``) rather than turned into an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

from django.http import HttpRequest, HttpResponseBase, JsonResponse
from rest_framework import exceptions as drf_exceptions

from .api.exceptions import error_body
from .conf import billing_settings
from .exceptions import (
    BillingError,
)
from .types import CheckResult

logger = logging.getLogger(__name__)

OwnerCallable = Callable[[Any], Any]
AmountArg = int | Callable[[Any], int]
IDEMPOTENCY_HEADER = "Idempotency-Key"


def _is_drf(request: Any) -> bool:
    from rest_framework.request import Request

    return isinstance(request, Request)


def _refuse(request: Any, exc: Exception) -> HttpResponseBase:
    """Inside DRF: raise for the exception handler. Plain Django: the error shape as JSON."""
    if _is_drf(request):
        raise exc
    if isinstance(exc, BillingError):
        return JsonResponse(error_body(exc.code, exc.message, exc.fields), status=exc.status)
    if isinstance(exc, drf_exceptions.NotAuthenticated):
        if _wants_html(request):
            from django.contrib.auth.views import redirect_to_login

            return redirect_to_login(request.get_full_path())
        return JsonResponse(
            error_body("not_authenticated", str(exc.detail)),
            status=401,
            headers={"WWW-Authenticate": 'Session realm="api"'},
        )
    assert isinstance(exc, drf_exceptions.APIException)
    return JsonResponse(error_body("permission_denied", str(exc.detail)), status=exc.status_code)


def _wants_html(request: Any) -> bool:
    """A browser page request, not a JSON/API call (which keeps its 401)."""
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and not request.headers.get("X-Requested-With")


def _owner_of(request: Any, owner: OwnerCallable | None) -> Any:
    """The billing owner, or raise NotAuthenticated / PermissionDenied."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        raise drf_exceptions.NotAuthenticated()
    if owner is None:
        return user
    chosen = owner(request)
    if chosen is None:
        raise drf_exceptions.PermissionDenied("No billing owner for this request.")
    return chosen


def _amount_of(amount: AmountArg, request: Any) -> int:
    value = amount(request) if callable(amount) else amount
    return value  # validated by the service (strict integer)


def requires_feature(
    feature: str,
    *,
    required: AmountArg = 1,
    owner: OwnerCallable | None = None,
    on_denied: Callable[[Any, CheckResult], HttpResponseBase] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the view only if ``check(owner, feature, required)`` allows it (else 402)."""
    from .services.usage import check, denial_error

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            try:
                who = _owner_of(request, owner)
                result = check(who, feature, required=_amount_of(required, request))
            except (BillingError, drf_exceptions.APIException) as exc:
                return _refuse(request, exc)
            if not result.allowed:
                if on_denied is not None:
                    return on_denied(request, result)
                return _refuse(request, denial_error(result))
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def track_usage(
    feature: str,
    *,
    amount: AmountArg = 1,
    owner: OwnerCallable | None = None,
    idempotency_header: str | None = IDEMPOTENCY_HEADER,
    idempotency_key: Callable[[Any], str | None] | None = None,
    track_redirects: bool = False,
    on_denied: Callable[[Any, CheckResult], HttpResponseBase] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Check before the view; track ``amount`` after it answered 2xx.

    Failed attempts (non-2xx, exceptions) are tracked only when
    ``BILL_FAILED_ATTEMPTS`` is on. ``amount`` may be ``callable(request) -> int``.
    ``idempotency_key=callable(request)`` names the track (e.g. a token the form
    carries, so a resubmitted form counts once); it wins over the header. An HTML
    form view that answers with a redirect (post/redirect/get) passes
    ``track_redirects=True`` so a 3xx counts as success.
    """
    from .services.usage import check, denial_error, track

    def decorator(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            try:
                who = _owner_of(request, owner)
                units = _amount_of(amount, request)
                key = (
                    _validated_key(idempotency_key(request), "idempotencyKey")
                    if idempotency_key is not None
                    else _idempotency_key(request, idempotency_header)
                )
                # Removing seats needs no balance; the track itself keeps usage >= 0.
                required = units if isinstance(units, int) and units > 0 else 0
                result = check(who, feature, required=required)
            except (BillingError, drf_exceptions.APIException) as exc:
                return _refuse(request, exc)
            if not result.allowed:
                if on_denied is not None:
                    return on_denied(request, result)
                return _refuse(request, denial_error(result))

            def record() -> None:
                try:
                    track(who, feature, units, idempotency_key=key)
                except BillingError as exc:
                    # The action already happened; refusing the response would not undo it.
                    logger.warning(
                        "track_usage: %s of %r for %r was not recorded: %s (%s)",
                        units,
                        feature,
                        who,
                        exc.code,
                        exc.message,
                    )

            try:
                response = view(request, *args, **kwargs)
            except Exception:
                if billing_settings.BILL_FAILED_ATTEMPTS:
                    record()
                raise
            status = getattr(response, "status_code", 500)
            succeeded = 200 <= status < (400 if track_redirects else 300)
            if succeeded or billing_settings.BILL_FAILED_ATTEMPTS:
                record()
            return response

        return wrapped

    return decorator


def _idempotency_key(request: Any, header: str | None) -> str | None:
    from .services.usage.validation import validate_idempotency_key

    if not header:
        return None
    return validate_idempotency_key(request.headers.get(header), field=header)


def _validated_key(value: str | None, field: str) -> str | None:
    from .services.usage.validation import validate_idempotency_key

    return validate_idempotency_key(value, field=field)
