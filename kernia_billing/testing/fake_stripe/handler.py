"""HTTP: requests decoded, authenticated, faulted, made idempotent, routed, recorded."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from . import pages
from .api import _ROUTES, check_contract
from .forms import FormError, decode_form
from .store import DEFAULT_API_VERSION, JSON, RequestContext, StripeError, generate_id

if TYPE_CHECKING:
    from .server import FakeStripe

__all__ = ["Fault", "RecordedRequest"]

_MAX_BODY = 10 * 1024 * 1024


@dataclass(frozen=True)
class RecordedRequest:
    """One API request the fake answered (hosted pages are not recorded)."""

    method: str
    path: str
    query: dict[str, Any]
    body: dict[str, Any]
    status: int
    api_key: str | None
    stripe_version: str | None
    idempotency_key: str | None
    headers: dict[str, str] = field(default_factory=dict)
    #: Stripe's error ``param`` when the request broke Stripe's request contract.
    contract_violation: str | None = None

    @property
    def params(self) -> dict[str, Any]:
        """Query and body parameters together."""
        return {**self.query, **self.body}


@dataclass
class Fault:
    """An injected failure: the next ``times`` matching requests fail."""

    path_prefix: str
    method: str | None
    status: int | None
    times: int
    delay: float = 0.0
    body: JSON | None = None
    #: The failure happened while Stripe executed the request, so its answer is
    #: saved under the idempotency key and replayed (otherwise it is a failure
    #: in front of the API, e.g. a network error, and a retry runs anew).
    saved: bool = False

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to a request."""
        return (
            self.times > 0
            and path.startswith(self.path_prefix)
            and (self.method is None or self.method.upper() == method)
        )


def _fault_payload(fault: Fault) -> JSON:
    return fault.body or {
        "error": {
            "type": "api_error",
            "message": "Injected fault: the fake Stripe failed this request.",
        }
    }


# ----------------------------------------------------------------------- HTTP


class _RequestHandler(BaseHTTPRequestHandler):
    """Translates HTTP requests into :class:`_Api` calls."""

    server_version = "FakeStripe/1.0"
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # avoid 40 ms delayed-ACK stalls on keep-alive
    fake: FakeStripe  # set on the per-server subclass

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ------------------------------------------------------------------ plumbing

    def _send(
        self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its timeout fired during an injected delay).
            self.close_connection = True

    def _send_json(self, status: int, payload: JSON, extra: dict[str, str] | None = None) -> None:
        body = json.dumps(payload, indent=2).encode("utf-8")
        self._send(status, body, "application/json", extra)

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            raise StripeError(413, "Request body too large.")
        return self.rfile.read(length) if length else b""

    def _api_key(self) -> str | None:
        header = self.headers.get("Authorization") or ""
        if header.startswith("Bearer "):
            return header[len("Bearer ") :].strip() or None
        if header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[len("Basic ") :]).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                return None
            return decoded.split(":", 1)[0] or None
        return None

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path = split.path.rstrip("/") or "/"
        try:
            raw_body = self._read_body()
        except StripeError as exc:
            self._send_json(exc.status, exc.to_dict())
            return
        if path.startswith("/v1/") or path.startswith("/v2/"):
            self._api(method, path, split.query, raw_body)
        else:
            self._page(method, path, raw_body)

    # ------------------------------------------------------------------ API

    def _api(self, method: str, path: str, query_string: str, raw_body: bytes) -> None:
        fake = self.fake
        request_id = generate_id("req_", 14)
        api_key = self._api_key()
        version = self.headers.get("Stripe-Version")
        idem_key = self.headers.get("Idempotency-Key")
        headers = {key: value for key, value in self.headers.items()}
        query: JSON = {}
        body: JSON = {}
        status = 500
        payload: JSON = {}
        violation: str | None = None
        extra = {"Request-Id": request_id, "Stripe-Version": version or DEFAULT_API_VERSION}
        try:
            try:
                query = decode_form(query_string)
                content_type = self.headers.get("Content-Type") or ""
                if raw_body and "json" in content_type:
                    body = json.loads(raw_body.decode("utf-8"))
                elif raw_body:
                    body = decode_form(raw_body)
            except (FormError, ValueError) as exc:
                raise StripeError(
                    400, str(exc), code="parameter_invalid", param=getattr(exc, "param", None)
                ) from exc
            fake._check_auth(api_key)
            fault = fake._take_fault(method, path)
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.status and not fault.saved:
                    status, payload = fault.status, _fault_payload(fault)
                    return
                if not fault.status:
                    fault = None

            def call() -> tuple[int, JSON]:
                if fault is not None:
                    return int(fault.status or 500), _fault_payload(fault)
                return self._call(method, path, {**query, **body}, request_id, idem_key, version)

            if method == "POST" and idem_key:
                status, payload, replayed = fake.idempotency.run(
                    api_key, idem_key, method, path, {**query, **body}, call
                )
                if replayed:
                    extra["Idempotent-Replayed"] = "true"
            else:
                status, payload = call()
        except StripeError as exc:
            status, payload = exc.status, exc.to_dict()
            if not exc.saved and exc.type == "invalid_request_error":
                violation = exc.param or ""
        except Exception as exc:  # pragma: no cover - a bug in the fake
            status = 500
            payload = {
                "error": {"type": "api_error", "message": f"Fake Stripe internal error: {exc!r}"}
            }
        finally:
            fake._log(
                RecordedRequest(
                    method=method,
                    path=path,
                    query=query,
                    body=body,
                    status=status,
                    api_key=api_key,
                    stripe_version=version,
                    idempotency_key=idem_key,
                    headers=headers,
                    contract_violation=violation,
                )
            )
            self._send_json(status, payload, extra)

    def _call(
        self,
        method: str,
        path: str,
        params: JSON,
        request_id: str,
        idem_key: str | None,
        version: str | None,
    ) -> tuple[int, JSON]:
        api = self.fake._api
        for route_method, pattern, handler, params_type in _ROUTES:
            match = pattern.match(path)
            if not match or route_method != method:
                continue
            if params_type is not None:
                check_contract(params_type, params)
            context = RequestContext(request_id, idem_key, version)
            with self.fake.store.request_context(context):
                return handler(api, match, params)
        # Stripe answers a wrong method on a known path like an unknown path.
        raise StripeError(
            404,
            f"Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
        )

    # ------------------------------------------------------------------ hosted pages

    def _page(self, method: str, path: str, raw_body: bytes) -> None:
        store = self.fake.store
        parts = [part for part in path.split("/") if part]
        try:
            if method == "GET" and path == "/":
                self._html(200, pages.message_page("Fake Stripe", f"API base: {self.fake.url}"))
            elif method == "GET" and len(parts) == 2 and parts[0] == "checkout":
                session = store.retrieve_checkout_session(parts[1])
                self._html(200, pages.checkout_page(session, store.checkout_line_items(parts[1])))
            elif (
                method == "POST"
                and len(parts) == 3
                and parts[0] == "checkout"
                and parts[2] == "complete"
            ):
                session = store.complete_checkout_session(parts[1])
                target = (session.get("success_url") or f"/checkout/{parts[1]}").replace(
                    "{CHECKOUT_SESSION_ID}", session["id"]
                )
                self._redirect(target)
            elif (
                method == "POST"
                and len(parts) == 3
                and parts[0] == "checkout"
                and parts[2] == "cancel"
            ):
                session = store.retrieve_checkout_session(parts[1])
                self._redirect(session.get("cancel_url") or f"/checkout/{parts[1]}")
            elif method == "GET" and len(parts) == 2 and parts[0] == "portal":
                self._portal(parts[1])
            elif (
                method == "POST"
                and len(parts) == 5
                and parts[0] == "portal"
                and parts[2] == "subscriptions"
                and parts[4] in ("cancel", "resume")
            ):
                portal = store.retrieve("billing_portal.session", parts[1])
                sub = store.retrieve("subscription", parts[3])
                if sub["customer"] != portal["customer"]:
                    raise StripeError.missing("subscription", parts[3])
                store.update_subscription(parts[3], {"cancel_at_period_end": parts[4] == "cancel"})
                self._redirect(f"/portal/{parts[1]}")
            elif (
                method == "POST"
                and len(parts) == 5
                and parts[0] == "portal"
                and parts[2] == "subscriptions"
                and parts[4] == "update"
            ):  # plan changes: switch price/quantity within the portal configuration
                form = parse_qs(raw_body.decode("utf-8", "replace"))
                store.portal_update_subscription(
                    parts[1],
                    parts[3],
                    price=(form.get("price") or [""])[0],
                    quantity=(form.get("quantity") or [""])[0],
                )
                self._redirect(f"/portal/{parts[1]}")
            else:
                self._html(404, pages.message_page("Not found", f"No page at {path}."))
        except StripeError as exc:
            self._html(exc.status, pages.message_page("Error", exc.message))

    def _portal(self, session_id: str) -> None:
        store = self.fake.store
        session = store.retrieve("billing_portal.session", session_id)
        customer = store.retrieve("customer", session["customer"])
        subs = store.list_subscriptions({"customer": session["customer"], "status": "all"})
        switch = store.portal_switch_forms(session_id)  # plan changes
        self._html(200, pages.portal_page(session, customer, subs, extra=switch))

    def _html(self, status: int, html: str) -> None:
        self._send(status, html.encode("utf-8"), "text/html; charset=utf-8")

    def _redirect(self, location: str) -> None:
        self._send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": location})


class _Server(ThreadingHTTPServer):
    # The default backlog (5) resets connections when many clients connect at once.
    request_queue_size = 128
