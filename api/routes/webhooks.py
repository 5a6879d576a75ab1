"""POST /webhooks/{source}: HMAC-verified events that queue a reindex of just the changed documents."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from api.deps import StateDep
from api.metrics import WEBHOOKS
from api.security import verify
from kb.events import enqueue, route_push

router = APIRouter(tags=["webhooks"])

# Which collection an event that names no collection refreshes.
DEFAULT_COLLECTION = {"incident": "incidents", "argocd": "k8s_configs"}


@router.post("/webhooks/{source}", status_code=202)
async def webhook(source: str, request: Request, state: StateDep) -> dict[str, Any]:
    """gitea/github: a push payload; incident: {collection?, paths}; argocd: {collection?, paths} of a deploy."""
    body = await request.body()
    if not verify(body, request.headers, state.api.webhook_secret):
        WEBHOOKS.labels(source, "bad_signature").inc()
        await run_in_threadpool(state.audit.record, f"webhook:{source}", "webhook", outcome="denied",
                                detail={"reason": "bad signature", "bytes": len(body)})  # fmt: skip
        raise HTTPException(401, "missing or invalid HMAC-SHA256 signature")
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as exc:
        raise HTTPException(400, f"body is not JSON: {exc.msg}") from exc
    routed = _route(source, payload, state)
    if not routed:
        WEBHOOKS.labels(source, "ignored").inc()
        return {"queued": {}, "detail": "no indexed collection is affected"}
    ids = {name: await run_in_threadpool(enqueue, state.database_url, source, name, docs) for name, docs in routed.items()}
    WEBHOOKS.labels(source, "queued").inc()
    await run_in_threadpool(state.audit.record, f"webhook:{source}", "webhook", detail={"queued": routed})
    return {"queued": {name: {"event_id": ids[name], "documents": docs} for name, docs in routed.items()}}


def _route(source: str, payload: Any, state: Any) -> dict[str, list[str]]:
    if not isinstance(payload, dict):
        raise HTTPException(400, "payload must be a JSON object")
    if source in ("gitea", "github"):
        return route_push(payload, state.specs)
    if source not in DEFAULT_COLLECTION:
        raise HTTPException(404, f"unknown webhook source {source!r}; use gitea, github, incident or argocd")
    collection = str(payload.get("collection") or DEFAULT_COLLECTION[source])
    if collection not in {s.name for s in state.specs}:
        raise HTTPException(400, f"unknown collection {collection!r}")
    paths = payload.get("paths")
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
        raise HTTPException(400, "'paths' must be a non-empty list of document paths")
    return {collection: paths}
