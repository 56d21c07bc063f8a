"""Billing meters: meters, v1 meter events, event summaries and event adjustments.

As on Stripe: a meter event names a meter by ``event_name`` and a customer through
the meter's ``customer_mapping.event_payload_key``; its ``identifier`` is unique for
24 hours (a repeat within that window is accepted and not counted again); its
``timestamp`` may be up to 35 days in the past and 5 minutes in the future; events of
an inactive meter are refused; a cancel adjustment removes an event received within
the last 24 hours (an unknown identifier, an older or an already cancelled event is
refused). Summaries aggregate (``sum``/``count``) over ``[start_time,
end_time)`` per customer; :meth:`MeterStore.metered_quantity` is what a metered
subscription item is invoiced for.
"""

from __future__ import annotations

from .core import (
    JSON,
    StoreCore,
    StripeError,
    _int,
    _require,
    _snapshot,
    generate_id,
    template,
)

DEDUP_SECONDS = 24 * 3600
PAST_WINDOW_SECONDS = 35 * 86400
FUTURE_WINDOW_SECONDS = 5 * 60
CANCEL_WINDOW_SECONDS = 24 * 3600


class MeterStore(StoreCore):
    """The billing meter resources of the fake account."""

    def reset(self) -> None:
        with self.lock:
            super().reset()
            # identifier -> stored event (with its meter id, value and received time)
            self._meter_events: dict[str, JSON] = {}

    # ----------------------------------------------------------------- meters

    def create_meter(self, params: JSON) -> JSON:
        """POST /v1/billing/meters."""
        event_name = str(_require(params, "event_name"))
        display_name = str(_require(params, "display_name"))
        formula = str(_require(params.get("default_aggregation") or {}, "formula"))
        if formula not in ("sum", "count", "last"):
            raise StripeError.invalid(
                "Invalid default_aggregation[formula]", param="default_aggregation[formula]"
            )
        with self.lock:
            if any(m["event_name"] == event_name for m in self._bucket("billing.meter").values()):
                raise StripeError.invalid(
                    f"A meter with event_name '{event_name}' already exists.", param="event_name"
                )
            meter = template("billing.meter")
            mapping = params.get("customer_mapping") or {}
            value_settings = params.get("value_settings") or {}
            now = self.now()
            meter.update(
                id=generate_id("mtr_"),
                created=now,
                updated=now,
                livemode=False,
                display_name=display_name,
                event_name=event_name,
                status="active",
                status_transitions={"deactivated_at": None},
                default_aggregation={"formula": formula},
                customer_mapping={
                    "event_payload_key": str(
                        mapping.get("event_payload_key") or "stripe_customer_id"
                    ),
                    "type": "by_id",
                },
                value_settings={
                    "event_payload_key": str(value_settings.get("event_payload_key") or "value")
                },
                event_time_window=params.get("event_time_window") or None,
            )
            self._bucket("billing.meter")[meter["id"]] = meter
            return _snapshot(meter)

    def set_meter_status(self, meter_id: str, active: bool) -> JSON:
        """POST /v1/billing/meters/{id}/deactivate and /reactivate."""
        with self.lock:
            meter = self._get("billing.meter", meter_id)
            meter["status"] = "active" if active else "inactive"
            meter["status_transitions"] = {"deactivated_at": None if active else self.now()}
            meter["updated"] = self.now()
            return _snapshot(meter)

    def _meter_named(self, event_name: str) -> JSON:
        for meter in self._bucket("billing.meter").values():
            if meter["event_name"] == event_name:
                return meter
        raise StripeError.invalid(
            f"No active meter was found matching event_name '{event_name}'.",
            param="event_name",
        )

    # ----------------------------------------------------------------- events

    def create_meter_event(self, params: JSON) -> JSON:
        """POST /v1/billing/meter_events."""
        event_name = str(_require(params, "event_name"))
        payload = params.get("payload")
        if not isinstance(payload, dict):
            raise StripeError.required("payload")
        with self.lock:
            now = self.now()
            meter = self._meter_named(event_name)
            if meter["status"] != "active":
                raise StripeError.invalid(
                    f"The meter for event_name '{event_name}' is inactive.", param="event_name"
                )
            customer_key = meter["customer_mapping"]["event_payload_key"]
            value_key = meter["value_settings"]["event_payload_key"]
            customer = str(_require(payload, customer_key))
            self._get("customer", customer, f"payload[{customer_key}]")
            if meter["default_aggregation"]["formula"] == "count":
                value = 1
            else:
                value = _int(_require(payload, value_key), f"payload[{value_key}]")
            timestamp = _int(params.get("timestamp", now), "timestamp")
            if timestamp < now - PAST_WINDOW_SECONDS or timestamp > now + FUTURE_WINDOW_SECONDS:
                raise StripeError.invalid(
                    "Timestamp must be within the past 35 calendar days and "
                    "no more than 5 minutes in the future.",
                    param="timestamp",
                )
            identifier = str(params.get("identifier") or generate_id("", 32))
            event = template("billing.meter_event")
            event.update(
                created=now,
                event_name=event_name,
                identifier=identifier,
                livemode=False,
                payload={str(k): str(v) for k, v in payload.items()},
                timestamp=timestamp,
            )
            seen = self._meter_events.get(identifier)
            if seen is not None and now - seen["received"] < DEDUP_SECONDS:
                return _snapshot(seen["event"])  # de-duplicated: counted once
            self._meter_events[identifier] = {
                "event": event,
                "meter": meter["id"],
                "customer": customer,
                "value": value,
                "received": now,
                "cancelled": False,
            }
            return _snapshot(event)

    def create_meter_event_adjustment(self, params: JSON) -> JSON:
        """POST /v1/billing/meter_event_adjustments (``type=cancel``)."""
        event_name = str(_require(params, "event_name"))
        if params.get("type", "cancel") != "cancel":
            raise StripeError.invalid("Invalid type: must be cancel", param="type")
        cancel = params.get("cancel")
        identifier = str(_require(cancel if isinstance(cancel, dict) else {}, "identifier"))
        with self.lock:
            self._meter_named(event_name)
            stored = self._meter_events.get(identifier)
            if stored is None or stored["event"]["event_name"] != event_name:
                raise StripeError.invalid(
                    f"No meter event with identifier '{identifier}' was found.",
                    param="cancel[identifier]",
                )
            if self.now() - stored["received"] > CANCEL_WINDOW_SECONDS:
                raise StripeError.invalid(
                    "Meter events can only be cancelled within 24 hours of being received.",
                    param="cancel[identifier]",
                )
            if stored["cancelled"]:
                raise StripeError.invalid(
                    f"The meter event with identifier '{identifier}' has already been cancelled.",
                    param="cancel[identifier]",
                )
            stored["cancelled"] = True
            adjustment = template("billing.meter_event_adjustment")
            adjustment.update(
                cancel={"identifier": identifier},
                event_name=event_name,
                livemode=False,
                status="complete",
                type="cancel",
            )
            return adjustment

    # ----------------------------------------------------------------- summaries

    def metered_quantity(self, meter_id: str, customer: str, start: int, end: int) -> int:
        """The meter's aggregated value for ``customer`` over ``[start, end)``."""
        with self.lock:
            meter = self._get("billing.meter", meter_id)
            values = [
                e["value"]
                for e in self._meter_events.values()
                if e["meter"] == meter_id
                and e["customer"] == customer
                and not e["cancelled"]
                and start <= e["event"]["timestamp"] < end
            ]
            formula = meter["default_aggregation"]["formula"]
            if formula == "count":
                return len(values)
            if formula == "last":
                return values[-1] if values else 0
            return sum(values)

    def meter_event_summaries(self, meter_id: str, params: JSON) -> list[JSON]:
        """GET /v1/billing/meters/{id}/event_summaries (one summary, or one per
        ``value_grouping_window`` of ``hour``/``day``)."""
        customer = str(_require(params, "customer"))
        start = _int(_require(params, "start_time"), "start_time")
        end = _int(_require(params, "end_time"), "end_time")
        if end <= start:
            raise StripeError.invalid("end_time must be after start_time.", param="end_time")
        window = {"hour": 3600, "day": 86400}.get(str(params.get("value_grouping_window")))
        with self.lock:
            self._get("billing.meter", meter_id)
            bounds = [(start, end)]
            if window:
                bounds = [(t, min(t + window, end)) for t in range(start, end, window)]
            summaries = []
            for low, high in bounds:
                summary = template("billing.meter_event_summary")
                summary.update(
                    id=f"mtrusg_{meter_id[4:]}{low}",
                    aggregated_value=self.metered_quantity(meter_id, customer, low, high),
                    start_time=low,
                    end_time=high,
                    livemode=False,
                    meter=meter_id,
                )
                summaries.append(summary)
            return list(reversed(summaries))  # newest first, as lists are
