"""In-memory state of the fake Stripe: resources, ids, pagination, events, clock.

Every mutation goes through a :class:`Store` method that holds the store's one
lock, records the Stripe :class:`Event` the change would trigger and notifies
listeners (the webhook dispatcher) in the same order. The HTTP layer
(:mod:`.server`) and the Python helpers on ``FakeStripe`` call the same methods.

Objects are plain JSON-compatible dicts built from Stripe's own fixture objects
(``resources.json``), so they carry every key the real API returns. Callers get
deep copies; the store's own dicts never leave the lock.

The store is layered by resource family, one module each: :mod:`.core`
(plumbing, clock, lookups, account), :mod:`.catalog`, :mod:`.customers`,
:mod:`.invoices`, :mod:`.subscriptions`, :mod:`.lifecycle`, :mod:`.checkout`,
:mod:`.meters` (billing meters),
:mod:`.schedules` (prorations, previews, schedules), :mod:`.portal` (portal configurations),
and here webhook endpoints and events.
"""

from __future__ import annotations

import re

from .core import (
    DEFAULT_API_VERSION,
    JSON,
    RequestContext,
    StripeError,
    _bool,
    _match_created,
    _merge_metadata,
    _require,
    _snapshot,
    _str_list,
    generate_id,
    load_templates,
    period_boundary,
    template,
)
from .meters import MeterStore
from .portal import PortalStore
from .refunds import RefundStore

__all__ = [
    "DEFAULT_API_VERSION",
    "JSON",
    "RequestContext",
    "Store",
    "StripeError",
    "generate_id",
    "load_templates",
    "period_boundary",
]


class Store(PortalStore, RefundStore, MeterStore):
    """Thread-safe in-memory Stripe account.

    :param base_url: the fake server's URL, used for hosted page URLs.
    """

    # ----------------------------------------------------------------- webhook endpoints

    def create_webhook_endpoint(self, params: JSON, secret: str | None = None) -> JSON:
        """POST /v1/webhook_endpoints: the answer carries ``secret``, later reads do not."""
        url = str(_require(params, "url"))
        events = _str_list(_require(params, "enabled_events"), "enabled_events")
        with self.lock:
            endpoint = template("webhook_endpoint")
            endpoint.update(
                id=generate_id("we_"),
                api_version=params.get("api_version") or None,
                application=None,
                created=self.now(),
                description=params.get("description") or None,
                enabled_events=events,
                livemode=False,
                metadata=_merge_metadata({}, params.get("metadata")),
                status="enabled",
                url=url,
            )
            secret = secret or generate_id("whsec_", 32)
            self._webhook_secrets[endpoint["id"]] = secret
            self._bucket("webhook_endpoint")[endpoint["id"]] = endpoint
            return {**_snapshot(endpoint), "secret": secret}

    def update_webhook_endpoint(self, endpoint_id: str, params: JSON) -> JSON:
        """POST /v1/webhook_endpoints/{id}."""
        with self.lock:
            endpoint = self._get("webhook_endpoint", endpoint_id)
            if "url" in params:
                endpoint["url"] = str(_require(params, "url"))
            if "enabled_events" in params:
                endpoint["enabled_events"] = _str_list(params["enabled_events"], "enabled_events")
            if "description" in params:
                endpoint["description"] = params["description"] or None
            if "metadata" in params:
                endpoint["metadata"] = _merge_metadata(endpoint["metadata"], params["metadata"])
            if "disabled" in params:
                endpoint["status"] = (
                    "disabled" if _bool(params["disabled"], "disabled") else "enabled"
                )
            return _snapshot(endpoint)

    def delete_webhook_endpoint(self, endpoint_id: str) -> JSON:
        """DELETE /v1/webhook_endpoints/{id}."""
        with self.lock:
            self._get("webhook_endpoint", endpoint_id)
            del self._bucket("webhook_endpoint")[endpoint_id]
            self._webhook_secrets.pop(endpoint_id, None)
            return {"id": endpoint_id, "object": "webhook_endpoint", "deleted": True}

    def webhook_secret(self, endpoint_id: str) -> str:
        """The signing secret of an endpoint."""
        with self.lock:
            self._get("webhook_endpoint", endpoint_id)
            return self._webhook_secrets[endpoint_id]

    def endpoints_for(self, event_type: str) -> list[tuple[JSON, str]]:
        """Enabled endpoints (with secrets) subscribed to ``event_type``, oldest first."""
        with self.lock:
            return [
                (_snapshot(we), self._webhook_secrets[we["id"]])
                for we in self._bucket("webhook_endpoint").values()
                if we["status"] == "enabled"
                and ("*" in we["enabled_events"] or event_type in we["enabled_events"])
            ]

    # ----------------------------------------------------------------- events

    def list_events(self, params: JSON) -> list[JSON]:
        """GET /v1/events filters: type (``*`` wildcards), types[], created."""
        types = _str_list(params.get("types"), "types")
        single = params.get("type")
        created = params.get("created")

        def type_matches(event_type: str) -> bool:
            if single:
                pattern = "^" + re.escape(str(single)).replace(r"\*", ".*") + "$"
                if not re.match(pattern, event_type):
                    return False
            return not types or event_type in types

        return self.list_objects(
            "event",
            lambda e: (
                type_matches(e["type"])
                and (created is None or _match_created(e["created"], created))
            ),
        )
