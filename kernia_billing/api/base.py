"""What every kernia_billing REST view shares: JSON only, the error shape, lazy settings.

DRF freezes ``authentication_classes``, ``throttle_classes`` and a throttle's
``THROTTLE_RATES`` at import time (encode/django-rest-framework#6030), so
``override_settings(REST_FRAMEWORK=...)`` would not reach them; this base view and
throttle read ``api_settings`` per request instead.

Throttling is optional: add a rate for the ``"kernia_billing"`` scope to enable it,

    REST_FRAMEWORK = {"DEFAULT_THROTTLE_RATES": {"kernia_billing": "600/minute"}}

Callers are counted per user (per IP when anonymous) across all billing endpoints;
over the rate they get 429 ``{"error": {"code": "throttled", ...}}`` with
``Retry-After``. The project's own ``DEFAULT_THROTTLE_CLASSES`` still apply.
"""

from __future__ import annotations

from typing import Any

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import NotFound, ParseError
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle
from rest_framework.views import APIView

from ..hygiene import validate_text
from .exceptions import exception_handler
from .schema import AutoSchema

THROTTLE_SCOPE = "kernia_billing"


class BillingJSONParser(JSONParser):
    """DRF's JSON parser, plus: absurdly nested JSON is a 400, not a RecursionError 500."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None


class BillingRateThrottle(SimpleRateThrottle):
    """Rate from ``DEFAULT_THROTTLE_RATES["kernia_billing"]``, read per request; none = off."""

    scope = THROTTLE_SCOPE

    def get_rate(self) -> str | None:
        rates: dict[str, Any] = api_settings.DEFAULT_THROTTLE_RATES or {}
        rate = rates.get(self.scope or "")
        return str(rate) if rate else None

    def get_cache_key(self, request: Request, view: Any) -> str:
        if request.user is not None and request.user.is_authenticated:
            ident = str(request.user.pk)
        else:
            ident = str(self.get_ident(request))
        return self.cache_format % {"scope": self.scope, "ident": ident}


class BillingAPIView(APIView):
    """JSON in, JSON out (never HTML), errors in the spec's shape, settings read lazily.

    Unauthenticated callers get 401 with ``WWW-Authenticate`` when any configured
    authentication scheme has a challenge (token does), else 403.

    Only ``application/json`` bodies are accepted: form data or text/plain get 415
    ``unsupported_media_type``; a body that is not JSON gets 400 ``invalid_json``.
    """

    parser_classes = [BillingJSONParser]
    renderer_classes = [JSONRenderer]
    # drf-spectacular's inspector on the views themselves: the schema is generated
    # without a project-wide REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"].
    schema = AutoSchema()

    def get_authenticators(self) -> list[BaseAuthentication]:
        classes: list[Any] = list(api_settings.DEFAULT_AUTHENTICATION_CLASSES)
        return [auth() for auth in classes]

    def get_authenticate_header(self, request: Request) -> str | None:  # type: ignore[override]
        # DRF asks only the first authenticator; session authentication has no header,
        # which turns "not signed in" into 403. Any scheme that has one makes it a 401.
        for authenticator in self.get_authenticators():
            header = authenticator.authenticate_header(request)
            if header:
                return str(header)
        return None

    def get_throttles(self) -> list[BaseThrottle]:
        classes: list[Any] = [*api_settings.DEFAULT_THROTTLE_CLASSES, BillingRateThrottle]
        return [throttle() for throttle in classes]

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        # Query strings cannot carry lone surrogates (Django decodes them with
        # replacement characters) but can carry NUL (%00), which PostgreSQL refuses.
        for name, values in request.query_params.lists():
            for value in values:
                validate_text(value, name)

    def get_exception_handler(self) -> Any:
        # The package's handler even if the host project configured another one:
        # these endpoints promise the error shape.
        return exception_handler


class UnknownPathView(BillingAPIView):
    """A path under the API's own namespaces that no route serves: 404 in the error shape.

    Answered before authentication: which endpoints exist is public (the schema).
    """

    schema = None  # type: ignore[assignment]  # not an endpoint

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        raise NotFound("No such endpoint.")
