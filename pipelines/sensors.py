"""The webhook sensor: queued events become runs that reindex only the documents they name."""

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import dagster as dg

from assets.factory import extract_op_name, job_name
from kb.events import events_after
from pipelines.resources import EventQueueResource


def build_webhook_sensor(jobs: Sequence[Any]) -> dg.SensorDefinition:
    known = {job.name for job in jobs}

    @dg.sensor(name="webhook_events", jobs=list(jobs), minimum_interval_seconds=5, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Turns queued webhook events into runs over the documents they name.")  # fmt: skip
    def webhook_events(context: dg.SensorEvaluationContext, events: EventQueueResource) -> dg.SensorResult | dg.SkipReason:
        after = int(context.cursor or 0)
        batch = events_after(events.database_url, after)
        if not batch:
            return dg.SkipReason(f"no webhook events after id {after}")
        doc_ids: dict[str, set[str]] = defaultdict(set)
        for event in batch:
            if job_name(event.collection) in known:
                doc_ids[event.collection].update(event.doc_ids)
            else:
                context.log.warning(f"event {event.id} names unknown collection {event.collection!r}; dropped")
        last = batch[-1].id
        requests = [
            dg.RunRequest(
                run_key=f"webhook-{collection}-{last}",
                job_name=job_name(collection),
                run_config={"ops": {extract_op_name(collection): {"config": {"paths": sorted(ids)}}}},
                tags={"kb/trigger": "webhook", "kb/documents": str(len(ids))},
            )
            for collection, ids in sorted(doc_ids.items())
        ]
        return dg.SensorResult(run_requests=requests, cursor=str(last))

    return webhook_events
