"""The webhook sensor: queued events become runs that reindex only the documents they name.

A burst of deliveries is coalesced: each tick claims every pending event of a collection that has been quiet
for DEBOUNCE_S (or waited MAX_WAIT_S) into one batch, and requests one run per collection over the union of
their documents. The cursor is the last batch whose run requests the daemon stored, so events claimed by a
tick whose result was lost are claimed again by the next one (kb/events.py).
"""

from collections.abc import Sequence
from typing import Any

import dagster as dg

from assets.factory import extract_op_name, job_name
from kb.events import Batch, claim_batches
from pipelines.resources import EventQueueResource

# Quiet time after a collection's last delivery before its events become a run: a push storm becomes one run.
DEBOUNCE_S = 2.0
# The longest an event waits while deliveries keep arriving: a steady stream still gets a run this often.
MAX_WAIT_S = 30.0
# Above this many documents a run reads the whole source instead (unchanged documents are skipped by hash):
# the run config stays small, and the extract step lists the source once instead of testing each path.
MAX_SCOPED_DOCUMENTS = 1000
TICK_S = 5


def run_request(batch: Batch, number: int) -> dg.RunRequest:
    """One run over the batch's documents; its run key names the batch, so a tick the daemon evaluates twice
    does not start it twice."""
    scoped = len(batch.doc_ids) <= MAX_SCOPED_DOCUMENTS
    config = {"ops": {extract_op_name(batch.collection): {"config": {"paths": batch.doc_ids}}}} if scoped else {}
    return dg.RunRequest(
        run_key=f"webhook-{batch.collection}-{number}",
        job_name=job_name(batch.collection),
        run_config=config,
        tags={"kb/trigger": "webhook", "kb/documents": str(len(batch.doc_ids)), "kb/deliveries": str(batch.deliveries)},
    )


def build_webhook_sensor(
    jobs: Sequence[Any], debounce_s: float = DEBOUNCE_S, max_wait_s: float = MAX_WAIT_S
) -> dg.SensorDefinition:
    known = {job.name for job in jobs}

    @dg.sensor(name="webhook_events", jobs=list(jobs), minimum_interval_seconds=TICK_S,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description="Turns queued webhook events into runs over the documents they name, one run per "
                           "collection for a burst of deliveries.")  # fmt: skip
    def webhook_events(context: dg.SensorEvaluationContext, events: EventQueueResource) -> dg.SensorResult | dg.SkipReason:
        acknowledged = int(context.cursor or 0)
        number, batches = claim_batches(events.database_url, acknowledged, debounce_s, max_wait_s)
        if not batches:
            return dg.SkipReason(f"no webhook events ready (quiet for {debounce_s:g} s) after batch {acknowledged}")
        requests = []
        for batch in batches:
            if job_name(batch.collection) in known:
                requests.append(run_request(batch, number))
            else:
                context.log.warning(f"{batch.deliveries} event(s) name unknown collection {batch.collection!r}; dropped")
        return dg.SensorResult(run_requests=requests, cursor=str(number))

    return webhook_events
