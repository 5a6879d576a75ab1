"""An idempotent consumer of the payments.events topic (see ADR-0007)."""

import json
import logging

from kafka import KafkaConsumer

log = logging.getLogger(__name__)


def build_consumer(bootstrap: str, group: str) -> KafkaConsumer:
    """Manual commits: offsets are committed only after an event was processed."""
    return KafkaConsumer(
        "payments.events",
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        value_deserializer=lambda b: json.loads(b),
    )


def process_events(consumer: KafkaConsumer, handle, seen: set[str]) -> None:
    """Handle each event once: duplicates (same event_id) are skipped, then the offset is committed."""
    for message in consumer:
        event = message.value
        if event["event_id"] in seen:
            log.info("duplicate event %s skipped", event["event_id"])
        else:
            handle(event)
            seen.add(event["event_id"])
        consumer.commit()
