"""Processing stored webhook deliveries again (after a fix), as Stripe's own retry would."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from traceback import format_exc

from django.db import transaction
from djstripe.models import WebhookEventTrigger

from . import stripe_gateway


@dataclass(frozen=True, slots=True)
class ProcessAgainResult:
    processed: int
    failed: int
    refused: int  # bad signature: not trusted, so not processed (Stripe retries those)
    already_processed: int


def process_again(triggers: Iterable[WebhookEventTrigger]) -> ProcessAgainResult:
    """Run the receivers again for deliveries whose signature verified but that failed.

    Each delivery runs in its own transaction, like dj-stripe's view: a failure rolls
    back what it did and is recorded on the delivery (exception and traceback).
    """
    processed = failed = refused = done = 0
    for trigger in sorted(triggers, key=lambda t: (t.created, t.pk)):
        if trigger.processed:
            done += 1
            continue
        if not trigger.valid:
            refused += 1
            continue
        account = trigger.stripe_trigger_account
        livemode = bool(trigger.json_body.get("livemode", False))
        api_key = stripe_gateway.api_key_for(
            api_key=account.default_api_key if account else None, livemode=livemode
        )
        try:
            with transaction.atomic():
                trigger.process(save=False, api_key=api_key)
        except Exception as exc:
            max_length = WebhookEventTrigger._meta.get_field("exception").max_length or 128
            trigger.processed = False
            trigger.event = None
            trigger.exception = str(exc)[:max_length]
            trigger.traceback = format_exc()
            failed += 1
        else:
            processed += 1
        trigger.save()
    return ProcessAgainResult(
        processed=processed, failed=failed, refused=refused, already_processed=done
    )
